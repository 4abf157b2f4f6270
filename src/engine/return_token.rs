//! The acquirer-controlled return: a signed, self-contained token in the return URL, so that
//! any instance can verify it with no shared store.
//!
//! Token bytes (then base64url, no padding):
//! `version(1) | key id length(1) | key id | expiry, unix seconds, u64 BE | reference length(2)
//!  | reference | partner return URL | HMAC-SHA256 over everything before it (32)`.
//! The key id picks the verifying key, so keys rotate without invalidating live tokens.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, LOCATION, REFERRER_POLICY};
use http::{StatusCode, Uri};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use super::return_url::PLACEHOLDERS;
use super::{Refusal, MARKER_HEADER};

const VERSION: u8 = 1;
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
    pub lifetime_secs: u64,
    /// Expiries are rounded up to a multiple of this (at least 1).
    pub bucket_secs: u64,
    pub notify_path: Option<String>,
    pub notify_timeout_ms: u64,
}

/// Query parameter names on the layer's return URL, and the placeholders Klarna fills there.
const QUERY: [(&str, &str); 3] = [
    ("id", "{klarna.payment_request.id}"),
    ("state", "{klarna.payment_request.state}"),
    (
        "token",
        "{klarna.payment_request.klarna_network_session_token}",
    ),
];

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
    token: Option<String>,
}

impl std::fmt::Debug for ReturnRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location may carry the session token: never printed.
        f.debug_struct("ReturnRedirect")
            .field("reference", &self.reference)
            .field("payment_request_id", &self.payment_request_id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ReturnRedirect {
    /// The 303 to the partner's URL: no caching, no referrer (the URL may carry a token).
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        let mut res = http::Response::new(Vec::new());
        *res.status_mut() = StatusCode::SEE_OTHER;
        let h = res.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&self.location) {
            h.insert(LOCATION, location);
        }
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        h.insert(MARKER_HEADER, HeaderValue::from_static("return"));
        res
    }

    /// The notification body for the payment API:
    /// `{"payment_request_reference","payment_request_id","state","klarna_network_session_token"}`.
    pub fn notification(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "payment_request_reference": self.reference,
            "payment_request_id": self.payment_request_id,
            "state": self.state,
            "klarna_network_session_token": self.token,
        }))
        .expect("serializing strings cannot fail")
    }
}

fn invalid() -> Refusal {
    Refusal::invalid(
        "invalid_return_token",
        "token",
        "the return link is invalid",
    )
}

impl ReturnEndpoint {
    /// The URL sent to Klarna instead of `partner_url`: the endpoint, a token, and Klarna's
    /// placeholders for just the values the partner's URL uses.
    pub fn return_url(&self, partner_url: &str, reference: &str, now: u64) -> String {
        let (key_id, key) = &self.keys[0];
        let mut msg =
            Vec::with_capacity(partner_url.len() + reference.len() + key_id.len() + 11 + TAG);
        msg.push(VERSION);
        msg.push(key_id.len() as u8);
        msg.extend_from_slice(key_id.as_bytes());
        msg.extend_from_slice(&self.expiry(now).to_be_bytes());
        msg.extend_from_slice(&(reference.len() as u16).to_be_bytes());
        msg.extend_from_slice(reference.as_bytes());
        msg.extend_from_slice(partner_url.as_bytes());
        let tag = mac(key, &msg).finalize().into_bytes();
        msg.extend_from_slice(&tag);
        let mut url = format!(
            "{}{}/{}",
            self.base,
            self.path,
            URL_SAFE_NO_PAD.encode(&msg)
        );
        let mut sep = '?';
        for (name, placeholder) in QUERY {
            let used = PLACEHOLDERS
                .iter()
                .filter(|p| partner_url.contains(*p))
                .any(|p| *p == placeholder || (name == "token" && p.ends_with("_token}")));
            if used {
                url.push(sep);
                url.push_str(name);
                url.push('=');
                url.push_str(placeholder);
                sep = '&';
            }
        }
        url
    }

    /// The expiry of a token minted at `now`: at least the lifetime away, rounded up to the
    /// bucket, so that every send within one bucket mints the same token.
    pub fn expiry(&self, now: u64) -> u64 {
        let at_least = now.saturating_add(self.lifetime_secs);
        at_least
            .div_ceil(self.bucket_secs)
            .saturating_mul(self.bucket_secs)
    }

    /// Verifies the token in `uri` and fills the partner's URL. Forged, truncated, expired
    /// and unknown-key tokens are refused: there is no redirect without a valid signature.
    pub fn resolve(&self, uri: &Uri, now: u64) -> Result<ReturnRedirect, Refusal> {
        let token = uri
            .path()
            .strip_prefix(self.path.as_str())
            .and_then(|t| t.strip_prefix('/'))
            .filter(|t| !t.is_empty() && !t.contains('/'))
            .ok_or_else(invalid)?;
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (msg, tag) = bytes
            .split_at_checked(bytes.len().checked_sub(TAG).ok_or_else(invalid)?)
            .ok_or_else(invalid)?;
        let mut r = Reader(msg);
        if r.take(1)? != [VERSION] {
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
        let ref_len = u16::from_be_bytes([r.take(1)?[0], r.take(1)?[0]]) as usize;
        let reference = std::str::from_utf8(r.take(ref_len)?).map_err(|_| invalid())?;
        let partner_url = std::str::from_utf8(r.0).map_err(|_| invalid())?;
        if now > expiry {
            return Err(Refusal::invalid(
                "expired_return_token",
                "token",
                "the return link has expired",
            ));
        }

        let mut id = None;
        let mut state = None;
        let mut session = None;
        for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match &*k {
                "id" => id = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                "token" => session = Some(v.into_owned()),
                _ => {}
            }
        }
        let location = fill(partner_url, |p| match p {
            "{klarna.payment_request.id}" => id.as_deref(),
            "{klarna.payment_request.state}" => state.as_deref(),
            "{klarna.payment_request.payment_request_reference}" => Some(reference),
            _ => session.as_deref(),
        });
        // The filled URL must still point where the signed one did.
        let same_origin = match (
            url::Url::parse(&location),
            url::Url::parse(&fill(partner_url, |_| Some("x"))),
        ) {
            (Ok(a), Ok(b)) => a.origin() == b.origin() && a.scheme() == b.scheme(),
            _ => false,
        };
        if !same_origin {
            return Err(invalid());
        }
        Ok(ReturnRedirect {
            location,
            reference: reference.to_owned(),
            payment_request_id: id,
            state,
            token: session,
        })
    }
}

/// `url` with each Klarna placeholder replaced by its value, URL-encoded (empty if unknown).
fn fill<'a>(url: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = Cow::Borrowed(url);
    for p in PLACEHOLDERS {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(lifetime_secs: u64, bucket_secs: u64) -> ReturnEndpoint {
        ReturnEndpoint {
            base: "https://acq.example".into(),
            path: "/klarna/return".into(),
            keys: vec![("k1".into(), vec![7; 32])],
            lifetime_secs,
            bucket_secs,
            notify_path: None,
            notify_timeout_ms: 500,
        }
    }

    #[test]
    fn expiries_round_up_to_the_bucket_so_retries_mint_the_same_url() {
        let e = endpoint(4 * 3600, 3600);
        let t = 1_800_000_100;
        assert_eq!(e.expiry(t), 1_800_000_000 + 5 * 3600);
        assert_eq!(e.expiry(t + 5), e.expiry(t));
        assert!(e.expiry(t) >= t + 4 * 3600);
        assert_eq!(e.expiry(1_800_000_000), 1_800_000_000 + 4 * 3600);
        assert_eq!(endpoint(10, 1).expiry(t), t + 10);
        let url = |now| {
            e.return_url(
                "https://p.example/r?s={klarna.payment_request.state}",
                "ref-1",
                now,
            )
        };
        assert_eq!(url(t), url(t + 5));
        assert_ne!(url(t), url(t + 3600));
        // A token minted early in its bucket still resolves until its (rounded) expiry.
        let uri: Uri = url(t)
            .strip_prefix("https://acq.example")
            .unwrap()
            .replace("{klarna.payment_request.state}", "COMPLETED")
            .parse()
            .unwrap();
        assert!(e.resolve(&uri, e.expiry(t)).is_ok());
        assert!(e.resolve(&uri, e.expiry(t) + 1).is_err());
    }
}
