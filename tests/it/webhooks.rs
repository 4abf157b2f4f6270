//! Webhook verification: signature vectors, key rotation, and where the token is found.

use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method};
use klarna_stepup::{Route, StepUp};
use sha2::Sha256;

const KEY_A: &str = "klarna-signing-key-a";
const KEY_B: &str = "klarna-signing-key-b";

pub fn engine() -> StepUp {
    let toml = r#"
        [webhooks]
        enabled = true
        keys = [{ id = "a", env = "WH_A" }, { id = "b", env = "WH_B" }]
    "#;
    StepUp::with_secrets(
        klarna_stepup::StepUpConfig::from_toml(toml).unwrap(),
        |n| match n {
            "WH_A" => Some(KEY_A.into()),
            "WH_B" => Some(KEY_B.into()),
            _ => None,
        },
    )
    .unwrap()
}

fn sign(key: &str, body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

fn headers(key_id: Option<&str>, signature: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(id) = key_id {
        h.insert("klarna-signing-key-id", HeaderValue::from_str(id).unwrap());
    }
    if let Some(s) = signature {
        h.insert("klarna-signature", HeaderValue::from_str(s).unwrap());
    }
    h
}

const BODY: &[u8] = br#"{"metadata":{"event_id":"ev-1","event_type":"payment.request.state-change.completed","event_version":"v2"},"payload":{"payment_request_id":"krn:payment:eu1:request:abc","payment_request_reference":"order-1","state":"COMPLETED","klarna_network_session_token":"krn:network:session-token:xyz"}}"#;

#[test]
fn routes() {
    let e = engine();
    let h = HeaderMap::new();
    assert_eq!(
        e.classify(&Method::POST, &"/klarna/webhooks".parse().unwrap(), &h),
        Route::Webhook
    );
    assert_eq!(
        e.classify(&Method::POST, &"/webhooks/klarna".parse().unwrap(), &h),
        Route::RelayPathFromOutside
    );
    assert_eq!(
        e.classify(&Method::GET, &"/webhooks/klarna".parse().unwrap(), &h),
        Route::RelayPathFromOutside
    );
    assert_eq!(
        e.classify(&Method::GET, &"/klarna/webhooks".parse().unwrap(), &h),
        Route::PassThrough
    );
}

#[test]
fn signature_vectors() {
    let e = engine();
    let good = sign(KEY_A, BODY);
    let ev = e
        .verify_webhook(&headers(Some("a"), Some(&good)), BODY)
        .unwrap();
    assert_eq!(
        ev.event_type.as_deref(),
        Some("payment.request.state-change.completed")
    );
    assert_eq!(ev.token.as_deref(), Some("krn:network:session-token:xyz"));
    assert!(
        !format!("{ev:?}").contains("session-token"),
        "token printed"
    );
    // Upper-case hex is the same signature.
    assert!(e
        .verify_webhook(&headers(Some("a"), Some(&good.to_uppercase())), BODY)
        .is_ok());
    // The second active key verifies its own signatures (rotation).
    assert!(e
        .verify_webhook(&headers(Some("b"), Some(&sign(KEY_B, BODY))), BODY)
        .is_ok());

    let mut tampered_body = BODY.to_vec();
    tampered_body[20] ^= 1;
    let mut tampered_sig = good.clone().into_bytes();
    tampered_sig[5] = if tampered_sig[5] == b'0' { b'1' } else { b'0' };
    let tampered_sig = String::from_utf8(tampered_sig).unwrap();
    let cases: Vec<(&str, HeaderMap, &[u8])> = vec![
        (
            "tampered body",
            headers(Some("a"), Some(&good)),
            &tampered_body,
        ),
        (
            "tampered signature",
            headers(Some("a"), Some(&tampered_sig)),
            BODY,
        ),
        ("empty signature", headers(Some("a"), Some("")), BODY),
        ("missing signature", headers(Some("a"), None), BODY),
        (
            "prefix of the signature",
            headers(Some("a"), Some(&good[..32])),
            BODY,
        ),
        (
            "one byte short",
            headers(Some("a"), Some(&good[..62])),
            BODY,
        ),
        ("odd length", headers(Some("a"), Some(&good[..63])), BODY),
        (
            "signature plus a byte",
            headers(Some("a"), Some(&format!("{good}00"))),
            BODY,
        ),
        ("not hex", headers(Some("a"), Some(&"zz".repeat(32))), BODY),
        ("wrong key id", headers(Some("b"), Some(&good)), BODY),
        ("unknown key id", headers(Some("c"), Some(&good)), BODY),
        ("missing key id", headers(None, Some(&good)), BODY),
    ];
    for (name, h, body) in cases {
        let err = e.verify_webhook(&h, body).expect_err(name);
        assert_eq!(err.status(), 400, "{name}");
        assert_eq!(err.code().as_str(), "invalid_signature", "{name}");
        assert!(
            !err.message().contains(&good[..16]),
            "{name}: signature echoed"
        );
    }
}

#[test]
fn the_token_is_found_where_klarna_puts_it() {
    let e = engine();
    for (payload, want) in [
        (
            r#"{"klarna_network_session_token":"t1","state_context":{"klarna_network_session_token":"t2"}}"#,
            Some("t1"),
        ),
        (
            r#"{"state_context":{"klarna_network_session_token":"t2","payment_token":"t3"}}"#,
            Some("t2"),
        ),
        (
            r#"{"payment_token":"t3","state_context":{"payment_token":"t4"}}"#,
            Some("t3"),
        ),
        (
            r#"{"state_context":{"payment_token":"t4"},"interoperability_token":"t5"}"#,
            Some("t4"),
        ),
        // Where an older revision puts it.
        (r#"{"interoperability_token":"t5"}"#, Some("t5")),
        (r#"{"state":"DECLINED"}"#, None),
    ] {
        let body = format!(r#"{{"metadata":{{"event_type":"x"}},"payload":{payload}}}"#);
        let ev = e
            .verify_webhook(
                &headers(Some("a"), Some(&sign(KEY_A, body.as_bytes()))),
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!(ev.token.as_deref(), want, "{payload}");
    }
    // A signed body that is not an envelope still verifies (and is relayed as is).
    let odd = b"[1,2,3]";
    let ev = e
        .verify_webhook(&headers(Some("a"), Some(&sign(KEY_A, odd))), odd)
        .unwrap();
    assert_eq!(ev, Default::default());
    let relay = ev.relay_headers();
    assert_eq!(relay.len(), 1);
    assert_eq!(relay[0].0, "x-klarna-stepup-verified");
}
