//! The acquirer-controlled return: a signed, self-contained token in the return URL, so that
//! any instance can verify it with no shared store.
//!
//! Token bytes (then base64url, no padding):
//! `version(1) | key id length(1) | key id | expiry, unix seconds, u64 BE | reference length(2)
//!  | reference | partner return URL | HMAC-SHA256 over everything before it (32)`.
//!
//! Version 2, minted when `[partners]` is on, adds the partner after the expiry:
//! `version(2) | key id length(1) | key id | expiry(8) | partner length(1) | partner |
//!  reference length(2) | reference | partner return URL | HMAC(32)`. Version 1 tokens (no
//! partner) are still minted without partners, and both are verified.
//! The key id picks the verifying key, so keys rotate without invalidating live tokens.
//!
//! Version 3 is the acquirer's own redirect to the Purchase Journey (`[acquirer_redirect]`):
//! the layout of version 1 with Klarna's `payment_request_url` in place of the partner's
//! return URL. A token of one kind never opens the other's endpoint.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, LOCATION, REFERRER_POLICY};
use http::{StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use super::return_url::PLACEHOLDERS;
use super::{Refusal, RefusalCode, MARKER_HEADER};

const VERSION: u8 = 1;
/// The version that carries the partner.
const VERSION_PARTNER: u8 = 2;
/// The acquirer's redirect to Klarna's Purchase Journey.
const VERSION_PAY: u8 = 3;
/// The state the partner's URL gets when the payment API did not confirm one in time.
pub const UNCONFIRMED: &str = "UNCONFIRMED";
const TAG: usize = 32;
/// Characters escaped in a value put into a URL: everything but RFC 3986 unreserved.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The validated return endpoint.
pub(crate) struct ReturnEndpoint {
    pub base: String,
    pub path: String,
    /// (id, key); the first signs.
    pub keys: Vec<(String, Vec<u8>)>,
    /// How long a Payment Request lives when neither the partner nor the configuration set
    /// its `interaction_expiry` (Klarna's default, 3 hours).
    pub default_request_secs: u64,
    /// Added to the Payment Request's lifetime to give the token's.
    pub margin_secs: u64,
    /// Expiries are rounded up to a multiple of this (at least 1).
    pub bucket_secs: u64,
    /// The acquirer's own placeholders (`return_url_policy.extra_placeholders`).
    pub extra_placeholders: Vec<String>,
    pub notify_path: Option<String>,
    pub notify_timeout_ms: u64,
    /// `[acquirer_redirect] path`, when on.
    pub pay_path: Option<String>,
}

/// Query parameters of the layer's return URL that Klarna always fills: the acquirer needs
/// the Payment Request's id and state whatever the partner's URL uses.
const ALWAYS: [(&str, &str); 2] = [
    ("id", "{klarna.payment_request.id}"),
    ("state", "{klarna.payment_request.state}"),
];
/// The session token: always asked for, so that the payment API can finalize on the return
/// notification; it reaches the partner's URL only when that URL uses one of its names.
const TOKEN: (&str, &str) = (
    "token",
    "{klarna.payment_request.klarna_network_session_token}",
);
/// Names of the session token that Klarna documents as the same value.
const TOKEN_NAMES: [&str; 3] = [
    "{klarna.payment_request.klarna_network_session_token}",
    "{klarna.payment_request.payment_token}",
    "{klarna.payment_request.interoperability_token}",
];
/// Whether a partner URL asks for the session token (under any of its names).
pub(crate) fn asks_for_token(url: &str) -> bool {
    TOKEN_NAMES.iter().any(|p| url.contains(p))
}

/// The signed reference fills this one; the layer knows it.
const REFERENCE: &str = "{klarna.payment_request.payment_request_reference}";

/// How the layer fills a placeholder of the partner's URL on the return.
enum Source {
    /// From the query parameter of this name, as Klarna filled it.
    Query(&'static str),
    /// The signed reference.
    Reference,
    /// Passed through: Klarna fills the same placeholder on the layer's URL, under the
    /// placeholder's name (without braces) as the query parameter.
    Same,
}

fn source(placeholder: &str) -> Source {
    match placeholder {
        "{klarna.payment_request.id}" => Source::Query("id"),
        "{klarna.payment_request.state}" => Source::Query("state"),
        REFERENCE => Source::Reference,
        p if TOKEN_NAMES.contains(&p) => Source::Query("token"),
        _ => Source::Same,
    }
}

/// `{name}` → `name`.
fn inner(placeholder: &str) -> &str {
    &placeholder[1..placeholder.len() - 1]
}

/// Where the customer goes after the acquirer endpoint: the partner's URL, filled in.
#[derive(Clone, PartialEq, Eq)]
pub struct ReturnRedirect {
    /// The partner's URL with Klarna's values filled in (URL-encoded).
    pub location: String,
    /// The `payment_request_reference` from the token.
    pub reference: String,
    /// `payment_request_id` as Klarna reported it on the return, if it did.
    pub payment_request_id: Option<String>,
    /// The payment request state as Klarna reported it on the return, if it did.
    pub state: Option<String>,
    /// The partner the token was minted for, when `[partners]` is on.
    pub partner: Option<String>,
    token: Option<String>,
    /// What fills the partner's URL again once the payment API confirmed a state; `None`
    /// for the acquirer's redirect to the Purchase Journey (nothing to notify or confirm).
    fill: Option<Fill>,
}

/// The signed partner URL and the query Klarna filled, kept to fill the URL again with a
/// confirmed state.
#[derive(Clone, PartialEq, Eq)]
struct Fill {
    partner_url: String,
    query: Vec<(String, String)>,
}

impl std::fmt::Debug for ReturnRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location may carry the session token: never printed.
        f.debug_struct("ReturnRedirect")
            .field("reference", &self.reference)
            .field("payment_request_id", &self.payment_request_id)
            .field("state", &self.state)
            .field("partner", &self.partner)
            .finish_non_exhaustive()
    }
}

impl ReturnRedirect {
    /// The 303 to the partner's URL: no caching, no referrer (the URL may carry a token).
    /// The location is ASCII ([`StepUp::resolve_return`](crate::StepUp::resolve_return)
    /// percent-encodes the rest); one that is still not a header value (only possible for a
    /// hand-made `ReturnRedirect`) gets the 400 of an invalid return link, never a 303
    /// without a `Location`.
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        let Ok(location) = HeaderValue::from_str(&self.location) else {
            return invalid().to_response();
        };
        let mut res = http::Response::new(Vec::new());
        *res.status_mut() = StatusCode::SEE_OTHER;
        let h = res.headers_mut();
        h.insert(LOCATION, location);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(MARKER_HEADER, HeaderValue::from_static("return"));
        res
    }

    /// Whether this is a customer's return from Klarna (not the acquirer's redirect to the
    /// Purchase Journey): only a return is notified and confirmed.
    pub fn is_return(&self) -> bool {
        self.fill.is_some()
    }

    /// The notification body for the payment API:
    /// `{"payment_request_reference","payment_request_id","state","klarna_network_session_token"}`,
    /// and `"partner"` when the token carries one.
    pub fn notification(&self) -> Vec<u8> {
        let mut body = serde_json::json!({
            "payment_request_reference": self.reference,
            "payment_request_id": self.payment_request_id,
            "state": self.state,
            "klarna_network_session_token": self.token,
        });
        if let Some(partner) = &self.partner {
            body["partner"] = serde_json::Value::from(partner.as_str());
        }
        serde_json::to_vec(&body).expect("serializing strings cannot fail")
    }
}

fn invalid() -> Refusal {
    Refusal::invalid(
        RefusalCode::InvalidReturnToken,
        "token",
        "the return link is invalid",
    )
}

impl ReturnEndpoint {
    /// Every placeholder a partner URL may hold: Klarna's documented ones and the acquirer's.
    fn placeholders(&self) -> impl Iterator<Item = &str> {
        PLACEHOLDERS
            .iter()
            .copied()
            .chain(self.extra_placeholders.iter().map(String::as_str))
    }

    /// The URL sent to Klarna instead of `partner_url`: the endpoint, a token, and Klarna's
    /// placeholders: always the id and state, the session token when the partner's URL uses
    /// it, and any other placeholder the partner's URL uses, passed through under its own
    /// name. `request_secs` is the Payment Request's `interaction_expiry` when the partner or
    /// the configuration set one: the token lives that long (else Klarna's 3 hours) plus the
    /// margin, rounded up to the bucket.
    #[cfg(test)]
    pub fn return_url(
        &self,
        partner_url: &str,
        reference: &str,
        request_secs: Option<u64>,
        now: u64,
    ) -> String {
        self.return_url_for(None, partner_url, reference, request_secs, now)
    }

    /// [`return_url`](Self::return_url), for `partner` (a valid partner id, at most 64
    /// bytes) when `[partners]` is on: the token is then of version 2 and carries it.
    pub fn return_url_for(
        &self,
        partner: Option<&str>,
        partner_url: &str,
        reference: &str,
        request_secs: Option<u64>,
        now: u64,
    ) -> String {
        let version = if partner.is_some() {
            VERSION_PARTNER
        } else {
            VERSION
        };
        let expiry = self.expiry(request_secs, now);
        let token = self.mint(version, partner, reference, partner_url, expiry);
        let mut url = format!("{}{}/{token}", self.base, self.path);
        let mut sep = '?';
        let mut param = |url: &mut String, name: &str, placeholder: &str| {
            url.push(sep);
            url.push_str(name);
            url.push('=');
            url.push_str(placeholder);
            sep = '&';
        };
        for (name, placeholder) in ALWAYS {
            param(&mut url, name, placeholder);
        }
        param(&mut url, TOKEN.0, TOKEN.1);
        for p in self.placeholders() {
            if matches!(source(p), Source::Same) && partner_url.contains(p) {
                param(&mut url, inner(p), p);
            }
        }
        url
    }

    /// The acquirer's own redirect URL for a Payment Request (`[acquirer_redirect]`), when
    /// on: `{base}{pay_path}/{token}`, the token signing Klarna's `payment_request_url` for
    /// as long as a return token minted at `now` lives.
    pub fn pay_url(
        &self,
        reference: &str,
        payment_request_url: &str,
        request_secs: Option<u64>,
        now: u64,
    ) -> Option<String> {
        let path = self.pay_path.as_deref()?;
        let expiry = self.expiry(request_secs, now);
        let token = self.mint(VERSION_PAY, None, reference, payment_request_url, expiry);
        Some(format!("{}{path}/{token}", self.base))
    }

    /// A token: the layout in the module docs, signed with the first key, base64url.
    fn mint(
        &self,
        version: u8,
        partner: Option<&str>,
        reference: &str,
        url: &str,
        expiry: u64,
    ) -> String {
        let (key_id, key) = &self.keys[0];
        let mut msg = Vec::with_capacity(url.len() + reference.len() + key_id.len() + 76 + TAG);
        msg.push(version);
        msg.push(key_id.len() as u8);
        msg.extend_from_slice(key_id.as_bytes());
        msg.extend_from_slice(&expiry.to_be_bytes());
        if let Some(p) = partner {
            msg.push(p.len() as u8);
            msg.extend_from_slice(p.as_bytes());
        }
        msg.extend_from_slice(&(reference.len() as u16).to_be_bytes());
        msg.extend_from_slice(reference.as_bytes());
        msg.extend_from_slice(url.as_bytes());
        let tag = mac(key, &msg).finalize().into_bytes();
        msg.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(&msg)
    }

    /// The expiry of a token minted at `now`: at least the lifetime away, rounded up to the
    /// bucket, so that every send within one bucket mints the same token.
    pub fn expiry(&self, request_secs: Option<u64>, now: u64) -> u64 {
        let lifetime = request_secs
            .unwrap_or(self.default_request_secs)
            .saturating_add(self.margin_secs);
        let at_least = now.saturating_add(lifetime);
        at_least
            .div_ceil(self.bucket_secs)
            .saturating_mul(self.bucket_secs)
    }

    /// Whether `path` is this endpoint's: the return, or the acquirer's redirect.
    pub fn serves(&self, path: &str) -> bool {
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|t| t.starts_with('/'))
        };
        under(&self.path) || self.pay_path.as_deref().is_some_and(under)
    }

    /// Verifies the token in `uri` and says where the customer goes: for a return, the
    /// partner's URL filled with what Klarna reported (the state as the browser claims it,
    /// until [`confirm`](Self::confirm)); for the acquirer's redirect, Klarna's
    /// `payment_request_url` (the caller checks it is still a Purchase Journey URL). Forged,
    /// truncated, expired, unknown-key and other-kind tokens are refused: there is no
    /// redirect without a valid signature.
    pub fn resolve(&self, uri: &Uri, now: u64) -> Result<ReturnRedirect, Refusal> {
        let token_of = |prefix: &str| {
            uri.path()
                .strip_prefix(prefix)
                .and_then(|t| t.strip_prefix('/'))
        };
        if let Some(token) = self.pay_path.as_deref().and_then(token_of) {
            let t = self.open(token, now)?;
            if t.version != VERSION_PAY {
                return Err(invalid());
            }
            return Ok(ReturnRedirect {
                location: t.url,
                reference: t.reference,
                payment_request_id: None,
                state: None,
                partner: None,
                token: None,
                fill: None,
            });
        }
        let t = self.open(token_of(&self.path).ok_or_else(invalid)?, now)?;
        if t.version == VERSION_PAY {
            return Err(invalid());
        }
        let query: Vec<(String, String)> =
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let fill = Fill {
            partner_url: t.url,
            query,
        };
        let id = fill.param("id", ALWAYS[0].1).map(str::to_owned);
        let state = fill.param("state", ALWAYS[1].1).map(str::to_owned);
        let session = fill.param(TOKEN.0, TOKEN.1).map(str::to_owned);
        let location = self.locate(
            &fill,
            &t.reference,
            id.as_deref(),
            state.as_deref(),
            session.as_deref(),
        )?;
        Ok(ReturnRedirect {
            location,
            reference: t.reference,
            payment_request_id: id,
            state,
            partner: t.partner,
            token: session,
            fill: Some(fill),
        })
    }

    /// `redirect` with the state the payment API confirmed in place of the browser's claim:
    /// `state` when it is a state word (letters, digits, `_`, at most 64), else
    /// [`UNCONFIRMED`]. The acquirer's redirect is returned as it is.
    pub fn confirm(
        &self,
        redirect: &ReturnRedirect,
        state: Option<&str>,
    ) -> Result<ReturnRedirect, Refusal> {
        let Some(fill) = &redirect.fill else {
            return Ok(redirect.clone());
        };
        let state = state
            .filter(|s| {
                (1..=64).contains(&s.len())
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
            .unwrap_or(UNCONFIRMED);
        let location = self.locate(
            fill,
            &redirect.reference,
            redirect.payment_request_id.as_deref(),
            Some(state),
            redirect.token.as_deref(),
        )?;
        Ok(ReturnRedirect {
            location,
            state: Some(state.to_owned()),
            ..redirect.clone()
        })
    }

    /// The `X-Klarna-Stepup-Signature` of a notification body sent at `now`:
    /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the signing key.
    pub fn notification_signature(&self, body: &[u8], now: u64) -> HeaderValue {
        let t = now.to_string();
        let mut m = mac(&self.keys[0].1, t.as_bytes());
        m.update(b".");
        m.update(body);
        let v1 = hex::encode(m.finalize().into_bytes());
        HeaderValue::from_str(&format!("t={t},v1={v1}")).expect("digits and hex")
    }

    /// Verifies a token's signature and expiry and reads it.
    fn open(&self, token: &str, now: u64) -> Result<Opened, Refusal> {
        if token.is_empty() || token.contains('/') {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (msg, tag) = bytes
            .split_at_checked(bytes.len().checked_sub(TAG).ok_or_else(invalid)?)
            .ok_or_else(invalid)?;
        let mut r = Reader(msg);
        let version = r.take(1)?[0];
        if !matches!(version, VERSION | VERSION_PARTNER | VERSION_PAY) {
            return Err(invalid());
        }
        let id_len = r.take(1)?[0] as usize;
        let key_id = r.take(id_len)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id.as_bytes() == key_id)
            .ok_or_else(invalid)?;
        // Constant time, length included.
        mac(key, msg).verify_slice(tag).map_err(|_| invalid())?;
        let expiry = u64::from_be_bytes(r.take(8)?.try_into().map_err(|_| invalid())?);
        let partner = if version == VERSION_PARTNER {
            let len = r.take(1)?[0] as usize;
            let id = std::str::from_utf8(r.take(len)?).map_err(|_| invalid())?;
            Some(id.to_owned())
        } else {
            None
        };
        let ref_len = u16::from_be_bytes([r.take(1)?[0], r.take(1)?[0]]) as usize;
        let reference = std::str::from_utf8(r.take(ref_len)?).map_err(|_| invalid())?;
        let url = std::str::from_utf8(r.0).map_err(|_| invalid())?;
        if now > expiry {
            return Err(Refusal::invalid(
                RefusalCode::ExpiredReturnToken,
                "token",
                "the return link has expired",
            ));
        }
        Ok(Opened {
            version,
            partner,
            reference: reference.to_owned(),
            url: url.to_owned(),
        })
    }

    /// The partner's URL filled with Klarna's values, checked to point where the signed one
    /// did, ASCII.
    fn locate(
        &self,
        fill: &Fill,
        reference: &str,
        id: Option<&str>,
        state: Option<&str>,
        session: Option<&str>,
    ) -> Result<String, Refusal> {
        let partner_url = fill.partner_url.as_str();
        let location = self::fill(partner_url, self.placeholders(), |p| match source(p) {
            Source::Query("id") => id,
            Source::Query("state") => state,
            Source::Query(_) => session,
            Source::Reference => Some(reference),
            Source::Same => fill.param(inner(p), p),
        });
        // The filled URL must still point where the signed one did.
        let same_origin = match (
            url::Url::parse(&location),
            url::Url::parse(&self::fill(partner_url, self.placeholders(), |_| Some("x"))),
        ) {
            (Ok(a), Ok(b)) => a.origin() == b.origin() && a.scheme() == b.scheme(),
            _ => false,
        };
        if !same_origin {
            return Err(invalid());
        }
        // A Location header is ASCII: a partner URL with non-ASCII text (allowed by the
        // policy) goes out as the URL parser serializes it, IDNA host and percent-escapes.
        let location = if location.is_ascii() {
            location
        } else {
            url::Url::parse(&location)
                .map_err(|_| invalid())?
                .as_str()
                .to_owned()
        };
        if HeaderValue::from_str(&location).is_err() {
            return Err(invalid());
        }
        Ok(location)
    }
}

/// A verified token's contents.
struct Opened {
    version: u8,
    partner: Option<String>,
    reference: String,
    url: String,
}

impl Fill {
    /// The first value of a query parameter, unless Klarna left the placeholder unfilled.
    fn param(&self, name: &str, placeholder: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| *v != placeholder)
    }
}

/// `url` with each of `placeholders` replaced by its value, URL-encoded (empty if unknown).
fn fill<'a, 'p>(
    url: &str,
    placeholders: impl Iterator<Item = &'p str>,
    value: impl Fn(&str) -> Option<&'a str>,
) -> String {
    let mut out = Cow::Borrowed(url);
    for p in placeholders {
        if out.contains(p) {
            let v: String = utf8_percent_encode(value(p).unwrap_or(""), COMPONENT).collect();
            out = Cow::Owned(out.replace(p, &v));
        }
    }
    out.into_owned()
}

fn mac(key: &[u8], msg: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(msg);
    m
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refusal> {
        let (head, rest) = self.0.split_at_checked(n).ok_or_else(invalid)?;
        self.0 = rest;
        Ok(head)
    }
}

// === impl StepUp: the acquirer return ===

impl super::StepUp {
    /// Verifies an acquirer return (`Route::Return`) and says where the customer goes. `now`
    /// is the current time in unix seconds.
    ///
    /// The same route serves the acquirer's own redirect (`[acquirer_redirect]`): its
    /// verified token answers with Klarna's `payment_request_url`, still on a Purchase
    /// Journey host ([`ReturnRedirect::is_return`] is false for it: nothing to notify).
    pub fn resolve_return(&self, uri: &Uri, now: u64) -> Result<ReturnRedirect, Refusal> {
        let Some(r) = &self.inner.acquirer_return else {
            return Err(Refusal::not_found());
        };
        let redirect = r.resolve(uri, now)?;
        if !redirect.is_return() && !self.inner.journey.allows(&redirect.location) {
            return Err(invalid());
        }
        Ok(redirect)
    }

    /// A return with the state the payment API confirmed in place of the browser's claim:
    /// `answer` is the body of the payment API's 2xx answer to the
    /// [notification](Self::return_notification) (its `state` member is taken when it is a
    /// state word), `None` when it did not answer 2xx in time: the partner's URL then gets
    /// the state [`UNCONFIRMED`], never the browser's claim as if confirmed.
    pub fn confirm_return(
        &self,
        redirect: &ReturnRedirect,
        answer: Option<&[u8]>,
    ) -> Result<ReturnRedirect, Refusal> {
        let Some(r) = &self.inner.acquirer_return else {
            return Ok(redirect.clone());
        };
        let root = answer.and_then(super::json::Object::parse);
        let state = root.as_ref().and_then(|o| o.get_str("state"));
        r.confirm(redirect, state.as_deref())
    }

    /// Whether returns are told to the payment API (a notification path is configured).
    pub fn notifies_returns(&self) -> bool {
        self.inner
            .acquirer_return
            .as_ref()
            .is_some_and(|r| r.notify_path.is_some())
    }

    /// The request that tells the payment API of a return, and how long the redirect may
    /// wait for its answer, when a notification path is configured and the customer's
    /// request is a `GET` of a return (a `HEAD`, a link preview say, tells nothing): `POST`
    /// of [`ReturnRedirect::notification`] as JSON, with the client's `Host`, signed in
    /// `X-Klarna-Stepup-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
    /// with the first `acquirer_return` key, so that the payment API can tell it from
    /// anything else (the path itself answers 404 from outside). `now` is the current time
    /// in unix seconds. Feed the answer to [`confirm_return`](Self::confirm_return).
    pub fn return_notification(
        &self,
        method: &http::Method,
        redirect: &ReturnRedirect,
        host: Option<&HeaderValue>,
        now: u64,
    ) -> Option<(http::Request<Vec<u8>>, std::time::Duration)> {
        let r = self.inner.acquirer_return.as_ref()?;
        let path = r.notify_path.as_deref()?;
        if *method != http::Method::GET || !redirect.is_return() {
            return None;
        }
        let body = redirect.notification();
        let mut req = http::Request::new(Vec::new());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = Uri::try_from(path).ok()?;
        let h = req.headers_mut();
        if let Some(host) = host {
            h.insert(http::header::HOST, host.clone());
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut signature = r.notification_signature(&body, now);
        signature.set_sensitive(true);
        h.insert(super::NOTIFICATION_SIGNATURE_HEADER, signature);
        *req.body_mut() = body;
        Some((req, std::time::Duration::from_millis(r.notify_timeout_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(lifetime_secs: u64, bucket_secs: u64) -> ReturnEndpoint {
        ReturnEndpoint {
            base: "https://acq.example".into(),
            path: "/klarna/return".into(),
            keys: vec![("k1".into(), vec![7; 32])],
            default_request_secs: lifetime_secs,
            margin_secs: 0,
            bucket_secs,
            extra_placeholders: vec!["{klarna.payment_request.locale}".into()],
            notify_path: None,
            notify_timeout_ms: 500,
            pay_path: Some("/klarna/pay".into()),
        }
    }

    #[test]
    fn expiries_round_up_to_the_bucket_so_retries_mint_the_same_url() {
        let e = endpoint(4 * 3600, 3600);
        let t = 1_800_000_100;
        assert_eq!(e.expiry(None, t), 1_800_000_000 + 5 * 3600);
        assert_eq!(e.expiry(None, t + 5), e.expiry(None, t));
        assert!(e.expiry(None, t) >= t + 4 * 3600);
        assert_eq!(e.expiry(None, 1_800_000_000), 1_800_000_000 + 4 * 3600);
        assert_eq!(endpoint(10, 1).expiry(None, t), t + 10);
        // The Payment Request's own lifetime, when set, replaces the default.
        assert_eq!(e.expiry(Some(48 * 3600), t), 1_800_000_000 + 49 * 3600);
        let url = |now| {
            e.return_url(
                "https://p.example/r?s={klarna.payment_request.state}",
                "ref-1",
                None,
                now,
            )
        };
        assert_eq!(url(t), url(t + 5));
        assert_ne!(url(t), url(t + 3600));
        // A token minted early in its bucket still resolves until its (rounded) expiry.
        let uri: Uri = url(t)
            .strip_prefix("https://acq.example")
            .unwrap()
            .replace("{klarna.payment_request.id}", "krn")
            .replace("{klarna.payment_request.state}", "COMPLETED")
            .parse()
            .unwrap();
        assert!(e.resolve(&uri, e.expiry(None, t)).is_ok());
        assert!(e.resolve(&uri, e.expiry(None, t) + 1).is_err());
    }

    #[test]
    fn every_placeholder_the_partner_uses_comes_back_filled() {
        let e = endpoint(3600, 1);
        let partner = "https://p.example/r?a={klarna.payment_request.payment_reference}\
            &b={klarna.payment_request.payment_confirmation_token}\
            &c={klarna.payment_request.locale}&d={klarna.payment_request.payment_token}";
        let sent = e.return_url(partner, "ref-1", None, 0);
        let query = sent.split_once('?').unwrap().1;
        assert_eq!(
            query,
            "id={klarna.payment_request.id}&state={klarna.payment_request.state}\
            &token={klarna.payment_request.klarna_network_session_token}\
            &klarna.payment_request.payment_reference={klarna.payment_request.payment_reference}\
            &klarna.payment_request.payment_confirmation_token={klarna.payment_request.payment_confirmation_token}\
            &klarna.payment_request.locale={klarna.payment_request.locale}"
        );
        // Klarna fills what it knows; one it left as it was comes back empty.
        let filled = sent
            .strip_prefix("https://acq.example")
            .unwrap()
            .replace("{klarna.payment_request.id}", "krn%3Ax")
            .replace("{klarna.payment_request.state}", "COMPLETED")
            .replace(
                "{klarna.payment_request.klarna_network_session_token}",
                "tok",
            )
            .replace("={klarna.payment_request.payment_reference}", "=pay%20ref")
            .replace(
                "={klarna.payment_request.payment_confirmation_token}",
                "=ctok",
            )
            .replace(
                "{klarna.payment_request.locale}",
                "%7Bklarna.payment_request.locale%7D",
            );
        let r = e.resolve(&filled.parse().unwrap(), 0).unwrap();
        assert_eq!(
            r.location,
            "https://p.example/r?a=pay%20ref&b=ctok&c=&d=tok"
        );
        assert_eq!(r.payment_request_id.as_deref(), Some("krn:x"));
        assert_eq!(r.state.as_deref(), Some("COMPLETED"));
        // With a plain partner URL, the id, state and session token are still asked for;
        // the token reaches the payment API (notification), not the partner's URL.
        let plain = e.return_url(
            "https://p.example/done?s={klarna.payment_request.state}",
            "ref-1",
            None,
            0,
        );
        assert!(
            plain.ends_with(
                "?id={klarna.payment_request.id}&state={klarna.payment_request.state}\
                 &token={klarna.payment_request.klarna_network_session_token}"
            ),
            "{plain}"
        );
        let back: Uri = plain
            .strip_prefix("https://acq.example")
            .unwrap()
            .replace("{klarna.payment_request.id}", "krn")
            .replace("{klarna.payment_request.state}", "COMPLETED")
            .replace(
                "{klarna.payment_request.klarna_network_session_token}",
                "secret-tok",
            )
            .parse()
            .unwrap();
        let r = e.resolve(&back, 0).unwrap();
        assert_eq!(r.location, "https://p.example/done?s=COMPLETED");
        assert!(String::from_utf8(r.notification())
            .unwrap()
            .contains(r#""klarna_network_session_token":"secret-tok""#));
    }

    #[test]
    fn the_partner_gets_the_state_the_payment_api_confirmed() {
        let e = endpoint(3600, 1);
        let sent = e.return_url(
            "https://p.example/done?state={klarna.payment_request.state}&id={klarna.payment_request.id}",
            "ref-1",
            None,
            0,
        );
        // The browser claims COMPLETED (an edited decline, say).
        let back: Uri = sent
            .strip_prefix("https://acq.example")
            .unwrap()
            .replace("{klarna.payment_request.id}", "krn")
            .replace("{klarna.payment_request.state}", "COMPLETED")
            .parse()
            .unwrap();
        let claimed = e.resolve(&back, 0).unwrap();
        assert!(claimed.is_return());
        assert_eq!(
            claimed.location,
            "https://p.example/done?state=COMPLETED&id=krn"
        );
        for (answer, state) in [
            (Some("DECLINED"), "DECLINED"),
            (Some("AUTHORIZED"), "AUTHORIZED"),
            (None, UNCONFIRMED),
            (Some("COMPLETED&x=1"), UNCONFIRMED),
            (Some(""), UNCONFIRMED),
        ] {
            let r = e.confirm(&claimed, answer).unwrap();
            assert_eq!(
                r.location,
                format!("https://p.example/done?state={state}&id=krn")
            );
            assert_eq!(r.state.as_deref(), Some(state));
        }
    }

    #[test]
    fn the_acquirer_redirect_is_signed_and_of_its_own_kind() {
        let e = endpoint(3600, 1);
        let klarna = "https://pay.klarna.com/eu/requests/1/start";
        let pay = e.pay_url("ref-1", klarna, None, 0).unwrap();
        let path = pay.strip_prefix("https://acq.example").unwrap();
        assert!(path.starts_with("/klarna/pay/"), "{pay}");
        assert!(e.serves(path));
        let r = e.resolve(&path.parse().unwrap(), 0).unwrap();
        assert!(!r.is_return());
        assert_eq!(r.location, klarna);
        assert_eq!(r, e.confirm(&r, Some("COMPLETED")).unwrap());
        // Tampered, expired, or a token of the other kind on either path: refused.
        let mut tampered = path.to_owned();
        tampered.push('A');
        assert!(e.resolve(&tampered.parse().unwrap(), 0).is_err());
        assert_eq!(
            e.resolve(&path.parse().unwrap(), 3601)
                .unwrap_err()
                .code()
                .as_str(),
            "expired_return_token"
        );
        let as_return = path.replace("/klarna/pay/", "/klarna/return/");
        assert!(e.resolve(&as_return.parse().unwrap(), 0).is_err());
        let ret = e.return_url("https://p.example/done", "ref-1", None, 0);
        let ret_path = ret.strip_prefix("https://acq.example").unwrap();
        let as_pay = ret_path.replace("/klarna/return/", "/klarna/pay/");
        assert!(e.resolve(&as_pay.parse().unwrap(), 0).is_err());
    }

    #[test]
    fn notifications_are_signed_over_time_and_body() {
        let e = endpoint(3600, 1);
        let sig = e.notification_signature(b"{}", 1_700_000_000);
        let mut m = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        m.update(b"1700000000.{}");
        let want = format!("t=1700000000,v1={}", hex::encode(m.finalize().into_bytes()));
        assert_eq!(sig.to_str().unwrap(), want);
        assert_ne!(e.notification_signature(b"{ }", 1_700_000_000), sig);
        assert_ne!(e.notification_signature(b"{}", 1_700_000_001), sig);
    }

    #[test]
    fn a_hand_made_redirect_that_is_no_header_value_is_never_a_303_without_location() {
        let r = ReturnRedirect {
            location: "https://shop.example/\u{7f}".into(),
            reference: "r".into(),
            payment_request_id: None,
            state: None,
            partner: None,
            token: None,
            fill: None,
        };
        let res = r.to_response();
        assert_eq!(res.status(), 400);
        assert!(res.headers().get(LOCATION).is_none());
    }

    #[test]
    fn the_location_is_ascii_for_a_non_ascii_partner_url() {
        let e = endpoint(60, 1);
        let url = e.return_url("https://bücher.example/größe?x=ü", "ref", None, 0);
        let path = url.trim_start_matches("https://acq.example");
        let r = e.resolve(&path.parse().unwrap(), 0).unwrap();
        assert_eq!(
            r.location,
            "https://xn--bcher-kva.example/gr%C3%B6%C3%9Fe?x=%C3%BC"
        );
        let res = r.to_response();
        assert_eq!(res.status(), 303);
        assert_eq!(res.headers()[LOCATION], r.location.as_str());
    }
}
