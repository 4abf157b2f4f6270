//! [`Refusal`]: an answer the layer gives by itself, as JSON naming the field and the reason.

use http::header::HeaderValue;
use http::StatusCode;

use super::MARKER_HEADER;

/// [`Refusal::overloaded`]'s code.
const OVERLOADED: &str = "overloaded";

/// An answer the layer gives by itself: a JSON error naming the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 400, 403, 404, 408, 413, 415, 431, 502, 503 or 504.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `invalid_return_url`.
    pub code: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// What is wrong, for a human. Never contains a secret or the offending value.
    pub message: String,
}

impl Refusal {
    /// A 400 about one field.
    pub fn invalid(
        code: &'static str,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code,
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// A 403 `unknown_partner`: the partner named by `field` (the partner header or route
    /// parameter) has no entry in `[partners]`, and `partners.unknown` is `"refuse"`.
    pub fn unknown_partner(field: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::FORBIDDEN,
            code: "unknown_partner",
            param: Some(field.into()),
            message: "names a partner this acquirer does not serve".into(),
        }
    }

    /// A 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            param: None,
            message: format!("the request body is larger than {limit} bytes"),
        }
    }

    /// A 404: a path only the layer itself may call.
    pub fn not_found() -> Self {
        Refusal {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            param: None,
            message: "not found".into(),
        }
    }

    /// A 503 to Klarna: the payment API did not accept a webhook, so Klarna must retry.
    pub fn webhook_not_accepted() -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "webhook_not_accepted",
            param: None,
            message: "the payment API did not accept the webhook; retry later".into(),
        }
    }

    /// A 400 for a request body that could not be read.
    pub fn unreadable_body() -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "unreadable_body",
            param: None,
            message: "the request body could not be read".into(),
        }
    }

    /// A 400 for a candidate body that is not one strict JSON object (RFC 8259, UTF-8, no
    /// BOM): a lenient parser behind the layer could read in it what the layer never checked.
    /// `why` says what is wrong, never what the body holds.
    pub fn unreadable_json(why: impl Into<String>) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "unreadable_json",
            param: None,
            message: why.into(),
        }
    }

    /// A 400 for a key the layer reads that appears more than once in its object: parsers
    /// disagree on which copy counts.
    pub fn duplicate_key(param: impl Into<String>) -> Self {
        Refusal::invalid(
            "duplicate_key",
            param,
            "appears more than once in its object",
        )
    }

    /// A 400 for a candidate request whose query string carries a field the layer reads in
    /// the body: frameworks that merge query and body parameters (Rails, and many others)
    /// would read it where the layer never checked it.
    pub fn query_field() -> Self {
        Refusal::invalid(
            "query_field",
            "query",
            "carries a payment field the layer reads in the body (the payment method, a \
             return URL, the reference or step_up_config): send it in the JSON body only",
        )
    }

    /// A 400 for a candidate body sent without a `Content-Type` that, read as a form (as
    /// Rack and PHP read such a POST), carries a field the layer reads.
    pub fn form_field() -> Self {
        Refusal::invalid(
            "form_field",
            "body",
            "read as a form (the request has no Content-Type), carries a payment field the \
             layer reads: send Content-Type: application/json",
        )
    }

    /// A 400 for an ambiguous spelling of a candidate route's path (case, trailing `/`,
    /// `//`, dot segments, `;parameters`, percent-escapes) or method (case).
    pub fn non_canonical_path() -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "non_canonical_path",
            param: None,
            message: "the request target is an ambiguous form of a payment route: send the \
                      route's exact path"
                .into(),
        }
    }

    /// A 415 for a candidate body in a content type the layer does not read.
    pub fn unsupported_media_type() -> Self {
        Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            param: Some("Content-Type".into()),
            message: "must be application/json (UTF-8) or absent".into(),
        }
    }

    /// A 415 for a candidate body with a `Content-Encoding`.
    pub fn unsupported_content_encoding() -> Self {
        Refusal {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_content_encoding",
            param: Some("Content-Encoding".into()),
            message: "payment requests must be sent without a content encoding".into(),
        }
    }

    /// A 502: the upstream could not be reached or broke the connection.
    pub fn upstream_unreachable() -> Self {
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            code: "upstream_unreachable",
            param: None,
            message: "the payment API could not be reached".into(),
        }
    }

    /// A 504: the upstream did not answer in time.
    pub fn upstream_timeout() -> Self {
        Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "upstream_timeout",
            param: None,
            message: "the payment API did not answer in time".into(),
        }
    }

    /// A 408: the client did not send its request body in time (not the payment API's
    /// fault: never reported as a 504). The connection is closed.
    pub fn request_timeout() -> Self {
        Refusal {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            param: None,
            message: "the request body did not arrive in time".into(),
        }
    }

    /// A 431: the request head is larger than the proxy takes (`max_bytes` bytes, or
    /// `max_count` header fields).
    pub fn headers_too_large(max_bytes: usize, max_count: usize) -> Self {
        Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "headers_too_large",
            param: None,
            message: format!(
                "the request head is larger than {max_bytes} bytes or has more than \
                 {max_count} header fields"
            ),
        }
    }

    /// A 400 for an HTTP/1 request head RFC 9112 says to reject: no `Host` in HTTP/1.1, more
    /// than one `Host`, or a `Content-Length` list whose values differ.
    pub fn bad_request_head(param: &'static str, message: &'static str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request_head",
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// A 503 with `Retry-After`: the process holds as many candidate bytes in memory as its
    /// budget allows. Nothing was sent upstream; requests already accepted are unaffected.
    pub fn overloaded() -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: OVERLOADED,
            param: None,
            message: "the proxy is busy; retry later".into(),
        }
    }

    /// Whether the answer ends its connection (`Connection: close`, and the adapter does not
    /// keep it alive): the proxy's own 502/504 (the next request may fare no better on this
    /// connection, and a client must not take it for the payment API's answer on a kept
    /// one) and the 408 (the body's framing is lost).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT
        )
    }

    /// The `Retry-After` the answer carries, in seconds ([`Refusal::overloaded`] only).
    pub fn retry_after_secs(&self) -> Option<u32> {
        (self.code == OVERLOADED).then_some(1)
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
        let kind = if self.status.is_server_error() {
            "upstream_error"
        } else {
            "invalid_request"
        };
        serde_json::to_vec(&Body {
            error: Inner {
                kind,
                code: self.code,
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
        *res.status_mut() = self.status;
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
        h.insert(MARKER_HEADER, HeaderValue::from_static(self.code));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_json_shape() {
        let r = Refusal::invalid(
            "invalid_return_url",
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
}
