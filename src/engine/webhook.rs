//! Klarna's webhooks: signature verification and the normalized fields relayed with them.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use serde::Deserialize;
use sha2::Sha256;

use super::{Refusal, RefusalCode};

/// Klarna's signature header: HMAC-SHA256 of the raw body, hex (or base64) encoded.
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("klarna-signature");
/// Klarna's header naming the signing key.
pub const SIGNING_KEY_ID_HEADER: HeaderName = HeaderName::from_static("klarna-signing-key-id");

/// Headers the layer sets on a relayed webhook. Incoming values are always replaced.
pub mod relay_headers {
    use http::header::HeaderName;
    /// `true`: the layer verified the signature.
    pub const VERIFIED: HeaderName = HeaderName::from_static("x-klarna-stepup-verified");
    /// `metadata.event_id`.
    pub const EVENT_ID: HeaderName = HeaderName::from_static("x-klarna-stepup-event-id");
    /// `metadata.event_type`, e.g. `payment.request.state-change.completed`.
    pub const EVENT_TYPE: HeaderName = HeaderName::from_static("x-klarna-stepup-event-type");
    /// `payload.payment_request_id`.
    pub const PAYMENT_REQUEST_ID: HeaderName =
        HeaderName::from_static("x-klarna-stepup-payment-request-id");
    /// `payload.payment_request_reference`.
    pub const REFERENCE: HeaderName = HeaderName::from_static("x-klarna-stepup-reference");
    /// `payload.state`.
    pub const STATE: HeaderName = HeaderName::from_static("x-klarna-stepup-state");
    /// The Klarna network session token for the final authorize call.
    pub const TOKEN: HeaderName = HeaderName::from_static("x-klarna-stepup-token");
    /// The partner, from the namespaced `payload.payment_request_reference`
    /// (`<partner>:<reference>`), when `[partners]` is on.
    pub const PARTNER: HeaderName = HeaderName::from_static("x-klarna-stepup-partner");
    /// All of them.
    pub const ALL: [HeaderName; 8] = [
        VERIFIED,
        EVENT_ID,
        EVENT_TYPE,
        PAYMENT_REQUEST_ID,
        REFERENCE,
        STATE,
        TOKEN,
        PARTNER,
    ];
}

/// The validated webhook settings.
pub(crate) struct Webhooks {
    pub path: String,
    pub relay_path: String,
    pub keys: Vec<(String, Vec<u8>)>,
    pub body_limit: usize,
}

/// A verified webhook, with the fields the payment API needs, found where Klarna puts them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `metadata.event_id`.
    pub event_id: Option<String>,
    /// `metadata.event_type`.
    pub event_type: Option<String>,
    /// `payload.payment_request_id`.
    pub payment_request_id: Option<String>,
    /// `payload.payment_request_reference`.
    pub reference: Option<String>,
    /// `payload.state`.
    pub state: Option<String>,
    /// The session token: `payload.klarna_network_session_token`, then
    /// `payload.state_context.klarna_network_session_token`, then the legacy `payment_token`
    /// in both places, then `payload.interoperability_token` (an older revision). Never
    /// printed.
    pub token: Option<String>,
    /// The partner named by the namespaced reference (`<partner>:<reference>`), when
    /// `[partners]` is on.
    pub partner: Option<String>,
}

impl std::fmt::Debug for WebhookEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("payment_request_id", &self.payment_request_id)
            .field("reference", &self.reference)
            .field("state", &self.state)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("partner", &self.partner)
            .finish()
    }
}

impl WebhookEvent {
    /// The headers to set on the relayed request (see [`relay_headers`]). Values that are not
    /// valid header values are left out; the body carries them anyway.
    pub fn relay_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        use relay_headers::*;
        let mut out = vec![(VERIFIED, HeaderValue::from_static("true"))];
        for (name, value) in [
            (EVENT_ID, &self.event_id),
            (EVENT_TYPE, &self.event_type),
            (PAYMENT_REQUEST_ID, &self.payment_request_id),
            (REFERENCE, &self.reference),
            (STATE, &self.state),
            (TOKEN, &self.token),
            (PARTNER, &self.partner),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                out.push((name, v));
            }
        }
        out
    }
}

/// A 400 `invalid_signature` about `param` (a signature header).
fn bad_signature(param: &str, message: &str) -> Refusal {
    Refusal::invalid(RefusalCode::InvalidSignature, param, message)
}

/// Verifies `Klarna-Signature` over `body` with the key named by `Klarna-Signing-Key-Id`.
pub(crate) fn verify(
    keys: &[(String, Vec<u8>)],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refusal> {
    let key_id = headers
        .get(SIGNING_KEY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad_signature("Klarna-Signing-Key-Id", "is missing"))?;
    let (_, key) = keys
        .iter()
        .find(|(id, _)| id == key_id)
        .ok_or_else(|| bad_signature("Klarna-Signing-Key-Id", "names no known key"))?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .map(|v| v.as_bytes())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad_signature("Klarna-Signature", "is missing"))?;
    let signature = decode_signature(signature.trim_ascii())
        .ok_or_else(|| bad_signature("Klarna-Signature", "is neither hex nor base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    // verify_slice compares in constant time and refuses any other length.
    mac.verify_slice(&signature)
        .map_err(|_| bad_signature("Klarna-Signature", "does not match the body"))
}

/// A signature as Klarna may send it: hex (its documented form), or base64 (standard or
/// URL-safe alphabet, padded or not), as other revisions and webhook senders write an
/// HMAC-SHA256. Accepting both costs nothing in safety (the bytes are then compared in
/// constant time, length included) and spares hours of Klarna's retries over a format.
fn decode_signature(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    if text.len() % 2 == 0 && text.iter().all(u8::is_ascii_hexdigit) {
        return hex::decode(text).ok();
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// Refuses a duplicate key in the objects the envelope's fields are read from (the
/// envelope, `metadata`, `payload`, `payload.state_context`): serde would drop every field
/// then, and the payment API, reading the body, could take another copy than the headers
/// say. Never relayed half-normalized.
fn no_duplicate_keys(body: &[u8]) -> Result<(), Refusal> {
    use super::json::Object;
    let Some(root) = Object::parse(body) else {
        return Ok(());
    };
    let dup = |o: &Object<'_>| {
        o.members
            .iter()
            .enumerate()
            .find(|(i, m)| o.members[..*i].iter().any(|p| p.key == m.key))
            .map(|(_, m)| m.key.clone().into_owned())
    };
    let metadata = root.get("metadata").and_then(Object::from_raw);
    let payload = root.get("payload").and_then(Object::from_raw);
    let context = payload
        .as_ref()
        .and_then(|p| p.get("state_context"))
        .and_then(Object::from_raw);
    for (prefix, obj) in [
        ("", Some(&root)),
        ("metadata.", metadata.as_ref()),
        ("payload.", payload.as_ref()),
        ("payload.state_context.", context.as_ref()),
    ] {
        if let Some(key) = obj.and_then(dup) {
            return Err(Refusal::duplicate_key(format!("{prefix}{key}")));
        }
    }
    Ok(())
}

/// Reads the envelope's fields. A body that is not the expected envelope still verifies and
/// is relayed (nothing is lost); it just carries fewer normalized fields. One with a
/// duplicate key where the fields are read is refused (400 `duplicate_key`).
pub(crate) fn parse(body: &[u8]) -> Result<WebhookEvent, Refusal> {
    no_duplicate_keys(body)?;
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Envelope<'a> {
        #[serde(borrow)]
        metadata: Metadata<'a>,
        #[serde(borrow)]
        payload: Payload<'a>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Metadata<'a> {
        #[serde(borrow)]
        event_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        event_type: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Payload<'a> {
        #[serde(borrow)]
        payment_request_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        payment_request_reference: Option<Cow<'a, str>>,
        #[serde(borrow)]
        state: Option<Cow<'a, str>>,
        #[serde(borrow)]
        klarna_network_session_token: Option<Cow<'a, str>>,
        #[serde(borrow)]
        payment_token: Option<Cow<'a, str>>,
        #[serde(borrow)]
        state_context: Option<Tokens<'a>>,
        #[serde(borrow)]
        interoperability_token: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Tokens<'a> {
        #[serde(borrow)]
        klarna_network_session_token: Option<Cow<'a, str>>,
        #[serde(borrow)]
        payment_token: Option<Cow<'a, str>>,
    }
    let e: Envelope<'_> = serde_json::from_slice(body).unwrap_or_default();
    let ctx = e.payload.state_context.unwrap_or_default();
    let own = |v: Option<Cow<'_, str>>| v.map(Cow::into_owned);
    Ok(WebhookEvent {
        event_id: own(e.metadata.event_id),
        event_type: own(e.metadata.event_type),
        payment_request_id: own(e.payload.payment_request_id),
        reference: own(e.payload.payment_request_reference),
        state: own(e.payload.state),
        token: own(e
            .payload
            .klarna_network_session_token
            .or(ctx.klarna_network_session_token)
            .or(e.payload.payment_token)
            .or(ctx.payment_token)
            .or(e.payload.interoperability_token)),
        // Set by `StepUp::verify_webhook` when partners are on.
        partner: None,
    })
}

// === impl StepUp: Klarna's webhooks ===

impl super::StepUp {
    /// Whether the payment API accepted a relayed webhook (any 2xx). Anything else must be
    /// answered to Klarna with [`Refusal::webhook_not_accepted`], so that Klarna retries.
    pub fn webhook_accepted(&self, status: http::StatusCode) -> Result<(), Refusal> {
        if status.is_success() {
            Ok(())
        } else {
            Err(Refusal::webhook_not_accepted())
        }
    }

    /// Verifies a webhook (`Route::Webhook`): the signature over the raw body, with the key
    /// named by `Klarna-Signing-Key-Id`; then reads its fields. A signed body with a
    /// duplicate key where the fields are read (the envelope, `metadata`, `payload`,
    /// `payload.state_context`) is refused, 400 `duplicate_key`: never relayed with headers
    /// that may not say what the payment API reads in the body.
    pub fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<WebhookEvent, Refusal> {
        let w = self
            .inner
            .webhooks
            .as_ref()
            .ok_or_else(Refusal::not_found)?;
        verify(&w.keys, headers, body)?;
        let mut event = parse(body)?;
        if self.inner.partners.is_some() {
            event.partner = event
                .reference
                .as_deref()
                .and_then(super::partners::of_reference)
                .map(str::to_owned);
        }
        Ok(event)
    }

    /// The payment API's path for verified webhooks.
    pub fn webhook_relay_path(&self) -> &str {
        self.inner.webhooks.as_ref().map_or("", |w| &w.relay_path)
    }

    /// How long a relayed webhook may wait for the payment API (`webhooks.relay_timeout_ms`;
    /// the tower adapter's bound, Pingora's relay has the proxy's upstream timeouts).
    pub fn webhook_relay_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.inner.config.webhooks.relay_timeout_ms)
    }

    /// The largest webhook body accepted.
    pub fn webhook_body_limit(&self) -> usize {
        self.inner.webhooks.as_ref().map_or(0, |w| w.body_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_hex_or_base64_in_constant_time() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        let keys = vec![("k".to_owned(), b"signing-key".to_vec())];
        let body = br#"{"metadata":{"event_id":"e1"},"payload":{}}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"signing-key").unwrap();
        mac.update(body);
        let raw = mac.finalize().into_bytes();
        let check = |sig: &str| {
            let mut h = HeaderMap::new();
            h.insert(SIGNING_KEY_ID_HEADER, HeaderValue::from_static("k"));
            h.insert(SIGNATURE_HEADER, HeaderValue::from_str(sig).unwrap());
            verify(&keys, &h, body)
        };
        for good in [
            hex::encode(raw),
            hex::encode_upper(raw),
            STANDARD.encode(raw),
            URL_SAFE_NO_PAD.encode(raw),
            format!(" {} ", STANDARD.encode(raw)),
        ] {
            assert!(check(&good).is_ok(), "{good}");
        }
        let mut wrong = raw.to_vec();
        wrong[0] ^= 1;
        for (bad, why) in [
            (hex::encode(&wrong), "does not match"),
            (STANDARD.encode(&wrong), "does not match"),
            (STANDARD.encode(&raw[..31]), "does not match"),
            (hex::encode(&raw[..16]), "does not match"),
            ("not a signature!".to_owned(), "neither hex nor base64"),
        ] {
            let r = check(&bad).expect_err(&bad);
            assert!(r.message().contains(why), "{bad}: {}", r.message());
        }
    }

    #[test]
    fn duplicate_keys_where_fields_are_read_are_refused() {
        for (body, param) in [
            (r#"{"payload":{},"payload":{}}"#, "payload"),
            (
                r#"{"metadata":{"event_type":"a","event_type":"b"}}"#,
                "metadata.event_type",
            ),
            (
                r#"{"payload":{"state":"COMPLETED","st\u0061te":"DECLINED"}}"#,
                "payload.state",
            ),
            (
                r#"{"payload":{"state_context":{"payment_token":"a","payment_token":"b"}}}"#,
                "payload.state_context.payment_token",
            ),
        ] {
            let r = parse(body.as_bytes()).expect_err(body);
            assert_eq!(
                (r.status().as_u16(), r.code().as_str()),
                (400, "duplicate_key")
            );
            assert_eq!(r.param(), Some(param), "{body}");
        }
        // Deeper duplicates are not read, and not the layer's business; nor is a body that
        // is not the envelope (relayed with fewer fields).
        for body in [
            r#"{"payload":{"x":{"a":1,"a":2},"state":"COMPLETED"}}"#,
            "not json",
            "[1,1]",
        ] {
            parse(body.as_bytes()).expect(body);
        }
        assert_eq!(
            parse(br#"{"payload":{"x":{"a":1,"a":2},"state":"COMPLETED"}}"#)
                .unwrap()
                .state
                .as_deref(),
            Some("COMPLETED")
        );
    }
}
