//! [`Refusal`]: an answer the layer gives by itself, as JSON naming the field and the reason,
//! and its [`RefusalCode`].

use std::fmt;

use http::header::HeaderValue;
use http::StatusCode;

use super::MARKER_HEADER;

/// What a [`Refusal`] says, machine-readably: the `error.code` of its JSON body and the value
/// of its `X-Klarna-Stepup` header. Each code has one HTTP status ([`status`](Self::status)).
///
/// ```
/// use klarna_stepup::RefusalCode;
///
/// assert_eq!(RefusalCode::InvalidReturnUrl.as_str(), "invalid_return_url");
/// assert_eq!(RefusalCode::InvalidReturnUrl.to_string(), "invalid_return_url");
/// assert_eq!(RefusalCode::UpstreamTimeout.status(), 504);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// 400 `invalid_step_up_config`: the caller's own `step_up_config`, or its
    /// `customer_interaction_config`, is not an object.
    InvalidStepUpConfig,
    /// 400 `invalid_request_body`: a member on the `inject_at` path is there but not an
    /// object.
    InvalidRequestBody,
    /// 400 `invalid_reference`: the payment request reference is not a string of 1 to 255
    /// characters.
    InvalidReference,
    /// 400 `missing_return_url`: the partner sent no return URL and there is no default.
    MissingReturnUrl,
    /// 400 `invalid_return_url`: the return URL is not allowed by the policy.
    InvalidReturnUrl,
    /// 400 `invalid_app_return_url`: the app return URL is not allowed by the policy.
    InvalidAppReturnUrl,
    /// 400 `invalid_partner`: the partner id is missing, malformed or given twice.
    InvalidPartner,
    /// 403 `unknown_partner`: the partner has no entry in `[partners]` and unknown partners
    /// are refused.
    UnknownPartner,
    /// 400 `invalid_return_token`: an acquirer return or redirect link that does not verify.
    InvalidReturnToken,
    /// 400 `expired_return_token`: an acquirer return or redirect link past its expiry.
    ExpiredReturnToken,
    /// 400 `invalid_signature`: a webhook whose Klarna signature is missing or wrong.
    InvalidSignature,
    /// 503 `webhook_not_accepted`: the payment API did not accept a verified webhook, so
    /// Klarna retries.
    WebhookNotAccepted,
    /// 413 `body_too_large`: a candidate body over the body limit.
    BodyTooLarge,
    /// 404 `not_found`: a path only the layer itself may call, or a disabled own route.
    NotFound,
    /// 400 `unreadable_body`: the request body could not be read.
    UnreadableBody,
    /// 400 `unreadable_json`: a candidate body that is not one strict JSON object.
    UnreadableJson,
    /// 400 `duplicate_key`: a key the layer reads appears twice in its object.
    DuplicateKey,
    /// 400 `query_field`: the query string carries a payment field the layer reads in the
    /// body.
    QueryField,
    /// 400 `form_field`: a body without `Content-Type` that, read as a form, carries a payment
    /// field.
    FormField,
    /// 400 `non_canonical_path`: an ambiguous spelling of a candidate route.
    NonCanonicalPath,
    /// 415 `unsupported_media_type`: a candidate body that is not JSON.
    UnsupportedMediaType,
    /// 415 `unsupported_content_encoding`: a candidate body with a `Content-Encoding`.
    UnsupportedContentEncoding,
    /// 400 `bad_request_head`: an HTTP/1 request head RFC 9112 says to reject.
    BadRequestHead,
    /// 405 `method_not_allowed`: a method the proxy does not forward (`CONNECT`: it opens no
    /// tunnels).
    MethodNotAllowed,
    /// 431 `headers_too_large`: a request head over the proxy's limits.
    HeadersTooLarge,
    /// 408 `request_timeout`: the request body did not arrive in time.
    RequestTimeout,
    /// 502 `upstream_unreachable`: the payment API could not be reached, broke the
    /// connection, or answered with a head the proxy cannot read.
    UpstreamUnreachable,
    /// 504 `upstream_timeout`: the payment API did not answer in time.
    UpstreamTimeout,
    /// 503 `overloaded`: the process holds as many candidate bytes as its budget allows.
    Overloaded,
}

impl RefusalCode {
    /// The code as it goes on the wire, e.g. `invalid_return_url`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCode::InvalidStepUpConfig => "invalid_step_up_config",
            RefusalCode::InvalidRequestBody => "invalid_request_body",
            RefusalCode::InvalidReference => "invalid_reference",
            RefusalCode::MissingReturnUrl => "missing_return_url",
            RefusalCode::InvalidReturnUrl => "invalid_return_url",
            RefusalCode::InvalidAppReturnUrl => "invalid_app_return_url",
            RefusalCode::InvalidPartner => "invalid_partner",
            RefusalCode::UnknownPartner => "unknown_partner",
            RefusalCode::InvalidReturnToken => "invalid_return_token",
            RefusalCode::ExpiredReturnToken => "expired_return_token",
            RefusalCode::InvalidSignature => "invalid_signature",
            RefusalCode::WebhookNotAccepted => "webhook_not_accepted",
            RefusalCode::BodyTooLarge => "body_too_large",
            RefusalCode::NotFound => "not_found",
            RefusalCode::UnreadableBody => "unreadable_body",
            RefusalCode::UnreadableJson => "unreadable_json",
            RefusalCode::DuplicateKey => "duplicate_key",
            RefusalCode::QueryField => "query_field",
            RefusalCode::FormField => "form_field",
            RefusalCode::NonCanonicalPath => "non_canonical_path",
            RefusalCode::UnsupportedMediaType => "unsupported_media_type",
            RefusalCode::UnsupportedContentEncoding => "unsupported_content_encoding",
            RefusalCode::BadRequestHead => "bad_request_head",
            RefusalCode::MethodNotAllowed => "method_not_allowed",
            RefusalCode::HeadersTooLarge => "headers_too_large",
            RefusalCode::RequestTimeout => "request_timeout",
            RefusalCode::UpstreamUnreachable => "upstream_unreachable",
            RefusalCode::UpstreamTimeout => "upstream_timeout",
            RefusalCode::Overloaded => "overloaded",
        }
    }

    /// The HTTP status a refusal with this code has.
    pub const fn status(self) -> StatusCode {
        match self {
            RefusalCode::UnknownPartner => StatusCode::FORBIDDEN,
            RefusalCode::WebhookNotAccepted | RefusalCode::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RefusalCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RefusalCode::NotFound => StatusCode::NOT_FOUND,
            RefusalCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RefusalCode::UnsupportedMediaType | RefusalCode::UnsupportedContentEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            RefusalCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RefusalCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            RefusalCode::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            RefusalCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            RefusalCode::InvalidStepUpConfig
            | RefusalCode::InvalidRequestBody
            | RefusalCode::InvalidReference
            | RefusalCode::MissingReturnUrl
            | RefusalCode::InvalidReturnUrl
            | RefusalCode::InvalidAppReturnUrl
            | RefusalCode::InvalidPartner
            | RefusalCode::InvalidReturnToken
            | RefusalCode::ExpiredReturnToken
            | RefusalCode::InvalidSignature
            | RefusalCode::UnreadableBody
            | RefusalCode::UnreadableJson
            | RefusalCode::DuplicateKey
            | RefusalCode::QueryField
            | RefusalCode::FormField
            | RefusalCode::NonCanonicalPath
            | RefusalCode::BadRequestHead => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An answer the layer gives by itself: a JSON error naming the field and the reason.
///
/// Adapters send it as [`to_response`](Self::to_response) gives it; as an error it displays
/// as `<status> <code>: <param>: <message>`.
///
/// ```
/// use klarna_stepup::{Refusal, RefusalCode};
///
/// let r = Refusal::upstream_timeout();
/// assert_eq!(r.status(), 504);
/// assert_eq!(r.code(), RefusalCode::UpstreamTimeout);
/// assert_eq!(r.to_string(), "504 upstream_timeout: the payment API did not answer in time");
/// let e: Box<dyn std::error::Error> = Box::new(r);
/// # drop(e);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    code: RefusalCode,
    param: Option<String>,
    message: String,
}

impl Refusal {
    /// A refusal with `code`, naming `param` when there is a field at fault.
    fn with(code: RefusalCode, param: Option<String>, message: impl Into<String>) -> Self {
        Refusal {
            code,
            param,
            message: message.into(),
        }
    }

    /// HTTP status: 400, 403, 404, 405, 408, 413, 415, 431, 502, 503 or 504 (the code's).
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Machine-readable code, e.g. [`RefusalCode::InvalidReturnUrl`].
    pub fn code(&self) -> RefusalCode {
        self.code
    }

    /// The request field at fault, when there is one (the JSON body's `param`).
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// What is wrong, for a human (the JSON body's `message`). Never contains a secret or
    /// the offending value.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A 400 about one field.
    pub(crate) fn invalid(
        code: RefusalCode,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Refusal::with(code, Some(param.into()), message)
    }

    /// A 403 `unknown_partner`: the partner named by `field` (the partner header or route
    /// parameter) has no entry in `[partners]`, and `partners.unknown` is `"refuse"`.
    pub(crate) fn unknown_partner(field: impl Into<String>) -> Self {
        Refusal::invalid(
            RefusalCode::UnknownPartner,
            field,
            "names a partner this acquirer does not serve",
        )
    }

    /// A 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Refusal::with(
            RefusalCode::BodyTooLarge,
            None,
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// A 404: a path only the layer itself may call.
    pub fn not_found() -> Self {
        Refusal::with(RefusalCode::NotFound, None, "not found")
    }

    /// A 503 to Klarna: the payment API did not accept a webhook, so Klarna must retry.
    pub fn webhook_not_accepted() -> Self {
        Refusal::with(
            RefusalCode::WebhookNotAccepted,
            None,
            "the payment API did not accept the webhook; retry later",
        )
    }

    /// A 400 for a request body that could not be read.
    pub fn unreadable_body() -> Self {
        Refusal::with(
            RefusalCode::UnreadableBody,
            None,
            "the request body could not be read",
        )
    }

    /// A 400 for a candidate body that is not one strict JSON object (RFC 8259, UTF-8, no
    /// BOM): a lenient parser behind the layer could read in it what the layer never checked.
    /// `why` says what is wrong, never what the body holds.
    pub(crate) fn unreadable_json(why: impl Into<String>) -> Self {
        Refusal::with(RefusalCode::UnreadableJson, None, why)
    }

    /// A 400 for a key the layer reads that appears more than once in its object: parsers
    /// disagree on which copy counts.
    pub(crate) fn duplicate_key(param: impl Into<String>) -> Self {
        Refusal::invalid(
            RefusalCode::DuplicateKey,
            param,
            "appears more than once in its object",
        )
    }

    /// A 400 for a candidate request whose query string carries a field the layer reads in
    /// the body: frameworks that merge query and body parameters (Rails, and many others)
    /// would read it where the layer never checked it.
    pub(crate) fn query_field() -> Self {
        Refusal::invalid(
            RefusalCode::QueryField,
            "query",
            "carries a payment field the layer reads in the body (the payment method, a \
             return URL, the reference or step_up_config): send it in the JSON body only",
        )
    }

    /// A 400 for a candidate body sent without a `Content-Type` that, read as a form (as
    /// Rack and PHP read such a POST), carries a field the layer reads.
    pub(crate) fn form_field() -> Self {
        Refusal::invalid(
            RefusalCode::FormField,
            "body",
            "read as a form (the request has no Content-Type), carries a payment field the \
             layer reads: send Content-Type: application/json",
        )
    }

    /// A 400 for an ambiguous spelling of a candidate route's path (case, trailing `/`,
    /// `//`, dot segments, `;parameters`, percent-escapes) or method (case).
    pub(crate) fn non_canonical_path() -> Self {
        Refusal::with(
            RefusalCode::NonCanonicalPath,
            None,
            "the request target is an ambiguous form of a payment route: send the \
             route's exact path",
        )
    }

    /// A 415 for a candidate body in a content type the layer does not read.
    pub(crate) fn unsupported_media_type() -> Self {
        Refusal::invalid(
            RefusalCode::UnsupportedMediaType,
            "Content-Type",
            "must be application/json (UTF-8) or absent",
        )
    }

    /// A 415 for a candidate body with a `Content-Encoding`.
    pub(crate) fn unsupported_content_encoding() -> Self {
        Refusal::invalid(
            RefusalCode::UnsupportedContentEncoding,
            "Content-Encoding",
            "payment requests must be sent without a content encoding",
        )
    }

    /// A 502: the upstream could not be reached or broke the connection.
    pub fn upstream_unreachable() -> Self {
        Refusal::with(
            RefusalCode::UpstreamUnreachable,
            None,
            "the payment API could not be reached",
        )
    }

    /// A 502 with the code of [`upstream_unreachable`](Self::upstream_unreachable): the
    /// upstream answered, but with a head that is not HTTP or is over the proxy's limit.
    pub fn upstream_unreadable_answer() -> Self {
        Refusal::with(
            RefusalCode::UpstreamUnreachable,
            None,
            "the payment API's answer head is not HTTP or is over the proxy's limit",
        )
    }

    /// A 504: the upstream did not answer in time.
    pub fn upstream_timeout() -> Self {
        Refusal::with(
            RefusalCode::UpstreamTimeout,
            None,
            "the payment API did not answer in time",
        )
    }

    /// A 408: the client did not send its request body in time (not the payment API's
    /// fault: never reported as a 504). The connection is closed.
    pub fn request_timeout() -> Self {
        Refusal::with(
            RefusalCode::RequestTimeout,
            None,
            "the request body did not arrive in time",
        )
    }

    /// A 431: the request head is larger than the proxy takes (`max_bytes` bytes, or
    /// `max_count` header fields).
    pub fn headers_too_large(max_bytes: usize, max_count: usize) -> Self {
        Refusal::with(
            RefusalCode::HeadersTooLarge,
            None,
            format!(
                "the request head is larger than {max_bytes} bytes or has more than \
                 {max_count} header fields"
            ),
        )
    }

    /// A 400 for an HTTP/1 request head RFC 9112 says to reject: no `Host` in HTTP/1.1, more
    /// than one `Host`, or a `Content-Length` list whose values differ.
    pub fn bad_request_head(param: &'static str, message: &'static str) -> Self {
        Refusal::invalid(RefusalCode::BadRequestHead, param, message)
    }

    /// A 405 for a `CONNECT` (the proxy, like nginx, forwards requests to the payment API
    /// and opens no tunnels). Nothing is sent upstream.
    pub fn connect_not_proxied() -> Self {
        Refusal::invalid(
            RefusalCode::MethodNotAllowed,
            "CONNECT",
            "the proxy forwards requests to the payment API and opens no tunnels",
        )
    }

    /// A 503 with `Retry-After`: the process holds as many candidate bytes in memory as its
    /// budget allows. Nothing was sent upstream; requests already accepted are unaffected.
    pub fn overloaded() -> Self {
        Refusal::with(
            RefusalCode::Overloaded,
            None,
            "the proxy is busy; retry later",
        )
    }

    /// Whether the answer ends its connection (`Connection: close`, and the adapter does not
    /// keep it alive): the proxy's own 502/504 (the next request may fare no better on this
    /// connection, and a client must not take it for the payment API's answer on a kept
    /// one) and the 408 (the body's framing is lost).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.code,
            RefusalCode::RequestTimeout
                | RefusalCode::UpstreamUnreachable
                | RefusalCode::UpstreamTimeout
        )
    }

    /// The `Retry-After` the answer carries, in seconds ([`Refusal::overloaded`] only).
    pub fn retry_after_secs(&self) -> Option<u32> {
        (self.code == RefusalCode::Overloaded).then_some(1)
    }

    /// The JSON body: `{"error":{"type","code","param","message"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            code: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            param: Option<&'a str>,
            message: &'a str,
        }
        let kind = if self.status().is_server_error() {
            "upstream_error"
        } else {
            "invalid_request"
        };
        serde_json::to_vec(&Body {
            error: Inner {
                kind,
                code: self.code.as_str(),
                param: self.param.as_deref(),
                message: &self.message,
            },
        })
        .expect("serializing strings cannot fail")
    }

    /// The full response head and body, as both adapters send it.
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        let body = self.to_json();
        let mut res = http::Response::new(Vec::new());
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        h.insert(MARKER_HEADER, HeaderValue::from_static(self.code.as_str()));
        if self.closes_connection() {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after_secs() {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        *res.body_mut() = body;
        res
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.status().as_u16(), self.code)?;
        if let Some(param) = &self.param {
            write!(f, "{param}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_json_shape() {
        let r = Refusal::invalid(
            RefusalCode::InvalidReturnUrl,
            "klarna_return_url",
            "is not an absolute URL",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"type": "invalid_request", "code": "invalid_return_url",
                "param": "klarna_return_url", "message": "is not an absolute URL"}})
        );
        let res = Refusal::upstream_timeout().to_response();
        assert_eq!(res.status(), 504);
        assert_eq!(res.headers()[MARKER_HEADER], "upstream_timeout");
        assert_eq!(res.headers()["connection"], "close");
        let busy = Refusal::overloaded().to_response();
        assert_eq!(busy.status(), 503);
        assert_eq!(busy.headers()["retry-after"], "1");
        assert!(busy.headers().get("connection").is_none());
        assert!(Refusal::request_timeout().closes_connection());
        assert_eq!(
            res.headers()["content-length"],
            res.body().len().to_string().as_str()
        );
    }

    #[test]
    fn codes_are_distinct_snake_case_and_shown_as_sent() {
        const ALL: &[RefusalCode] = &[
            RefusalCode::InvalidStepUpConfig,
            RefusalCode::InvalidRequestBody,
            RefusalCode::InvalidReference,
            RefusalCode::MissingReturnUrl,
            RefusalCode::InvalidReturnUrl,
            RefusalCode::InvalidAppReturnUrl,
            RefusalCode::InvalidPartner,
            RefusalCode::UnknownPartner,
            RefusalCode::InvalidReturnToken,
            RefusalCode::ExpiredReturnToken,
            RefusalCode::InvalidSignature,
            RefusalCode::WebhookNotAccepted,
            RefusalCode::BodyTooLarge,
            RefusalCode::NotFound,
            RefusalCode::UnreadableBody,
            RefusalCode::UnreadableJson,
            RefusalCode::DuplicateKey,
            RefusalCode::QueryField,
            RefusalCode::FormField,
            RefusalCode::NonCanonicalPath,
            RefusalCode::UnsupportedMediaType,
            RefusalCode::UnsupportedContentEncoding,
            RefusalCode::BadRequestHead,
            RefusalCode::MethodNotAllowed,
            RefusalCode::HeadersTooLarge,
            RefusalCode::RequestTimeout,
            RefusalCode::UpstreamUnreachable,
            RefusalCode::UpstreamTimeout,
            RefusalCode::Overloaded,
        ];
        let guide = include_str!("../../docs/partner-contract.md");
        let mut seen = std::collections::HashSet::new();
        for &code in ALL {
            let row = format!("| `{code}` | {} |", code.status().as_u16());
            assert!(
                guide.contains(&row),
                "docs/partner-contract.md lacks the row {row}"
            );
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(code.to_string(), s);
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
        let r = Refusal::invalid(
            RefusalCode::InvalidReference,
            "reference",
            "must be a string",
        );
        assert_eq!(
            r.to_string(),
            "400 invalid_reference: reference: must be a string"
        );
        let e: &dyn std::error::Error = &r;
        assert!(e.source().is_none());
    }
}
