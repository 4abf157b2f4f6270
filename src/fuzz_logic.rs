//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`), each checking the
//! invariants that must hold for any input, not just "no panic".

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::{RequestVerdict, ResponseVerdict, Route, StepUp, StepUpConfig};

const WEBHOOK_KEY: &str = "fuzz-webhook-key";
const RETURN_KEY: &str = "fuzz-return-key-0123456789abcdef0123";

fn engine() -> &'static StepUp {
    static ENGINE: std::sync::OnceLock<StepUp> = std::sync::OnceLock::new();
    ENGINE.get_or_init(build)
}

fn build() -> StepUp {
    let toml = r#"
        [webhooks]
        enabled = true
        keys = [{ id = "k", env = "W" }]
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r", env = "R" }]
    "#;
    let config = StepUpConfig::from_toml(toml).expect("fuzz config");
    StepUp::with_secrets(config, |n| match n {
        "W" => Some(WEBHOOK_KEY.into()),
        "R" => Some(RETURN_KEY.into()),
        _ => None,
    })
    .expect("fuzz engine")
}

fn candidate(e: &StepUp) -> crate::Candidate {
    match e.classify(
        &Method::POST,
        &http::Uri::from_static("/payments"),
        &HeaderMap::new(),
    ) {
        Route::Candidate(c) => c,
        _ => unreachable!("/payments is a default route"),
    }
}

/// The clock the fuzz targets run at (unix seconds): fixed, so that a run is repeatable.
const NOW: u64 = 1_800_000_000;

/// Request injection: an injected body is JSON; everything else is left alone. The JSON
/// scanner under it accepts exactly what serde_json accepts, with the same member spans.
pub fn request(data: &[u8]) {
    crate::engine::json::assert_parses_as_serde(data);
    let e = engine();
    if let RequestVerdict::Injected { body, .. } = e.rewrite_request(candidate(e), data, NOW) {
        // serde_json's own reading (not `Value`, which refuses numbers beyond f64, such as
        // 7e6576666666: JSON's grammar has no range, and the bytes are forwarded as sent).
        let members =
            crate::engine::json::serde_members(&body).expect("injected body is a JSON object");
        assert!(members
            .iter()
            .any(|(k, v)| k == "step_up_config" && v.starts_with('{')));
    }
}

/// Response rewrite: never panics; a rewrite is JSON.
pub fn response(data: &[u8]) {
    let e = engine();
    let RequestVerdict::Injected { exchange, .. } = e.rewrite_request(
        candidate(e),
        br#"{"payment_method":"klarna","return_url":"https://shop.example/r"}"#,
        NOW,
    ) else {
        unreachable!("a valid Klarna request")
    };
    if let ResponseVerdict::Rewritten { body, .. } =
        e.rewrite_response(&exchange, StatusCode::OK, &HeaderMap::new(), data)
    {
        // Validated, not built: Klarna's raw values pass through, whatever their numbers.
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).expect("rewritten body is JSON");
    }
}

/// Return tokens: arbitrary paths and queries never redirect anywhere but a signed URL's
/// origin, and a token minted here always resolves.
pub fn return_token(data: &[u8]) {
    let e = engine();
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    for candidate in [
        format!("/klarna/return/{path}?{query}"),
        format!("/klarna/return/{text}"),
    ] {
        let Ok(uri) = candidate.parse::<http::Uri>() else {
            continue;
        };
        if let Ok(r) = e.resolve_return(&uri, 0) {
            // Only a real signature gets here; fuzzing should never forge one.
            panic!("forged token accepted: {}", r.reference);
        }
    }
    // A minted token round-trips whatever the query holds.
    let RequestVerdict::Injected { body, .. } = e.rewrite_request(
        candidate(e),
        br#"{"payment_method":"klarna","reference":"r1","return_url":"https://shop.example/r?id={klarna.payment_request.id}"}"#,
        NOW,
    ) else {
        unreachable!()
    };
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let sent = v["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .expect("return_url");
    let encoded: String = url::form_urlencoded::byte_serialize(data).collect();
    let uri = sent
        .trim_start_matches("https://pay.acquirer.example")
        .replace("{klarna.payment_request.id}", &encoded);
    let uri: http::Uri = uri.parse().expect("minted URL parses");
    let r = e.resolve_return(&uri, NOW).expect("minted token resolves");
    let to = url::Url::parse(&r.location).expect("location parses");
    assert_eq!(to.host_str(), Some("shop.example"));
}

/// Webhooks: arbitrary signatures and bodies are refused unless really signed.
pub fn webhook(data: &[u8]) {
    let e = engine();
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (sig, body) = data.split_at(split);
    let mut h = HeaderMap::new();
    h.insert("klarna-signing-key-id", HeaderValue::from_static("k"));
    if let Ok(v) = HeaderValue::from_bytes(sig) {
        h.insert("klarna-signature", v);
    }
    assert!(
        e.verify_webhook(&h, body).is_err(),
        "unsigned webhook accepted"
    );
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_KEY.as_bytes()).expect("key");
    m.update(body);
    let good = hex::encode(m.finalize().into_bytes());
    h.insert(
        "klarna-signature",
        HeaderValue::from_str(&good).expect("hex"),
    );
    e.verify_webhook(&h, body).expect("signed webhook verifies");
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds() {
        let seeds: [&[u8]; 6] = [
            b"",
            b"{}",
            br#"{"payment_method":"klarna","return_url":"https://a.example/{klarna.payment_request.id}"}"#,
            br#"{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"x","payment_request_url":"https://p.example/"}}"#,
            b"AQFr\x00\xff/../?id=%0d%0a",
            b"\x40aaaa",
        ];
        for s in seeds {
            super::request(s);
            super::response(s);
            super::return_token(s);
            super::webhook(s);
        }
    }
}
