//! The acquirer return and webhook relay, as both adapters' tests configure them: one
//! engine with both on, its keys, a signed `completed` webhook, and minted return paths.

use hmac::{Hmac, Mac};
use klarna_stepup::{RequestVerdict, Route, StepUp, StepUpConfig};
use sha2::Sha256;

/// Klarna's signing key, id `a`.
pub const WEBHOOK_KEY: &str = "klarna-signing-key-a";
/// The return-token key, id `r1`.
pub const RETURN_KEY: &str = "return-key-0123456789abcdef0123456789abcdef";
/// A `payment.request.state-change.completed` webhook body.
pub const COMPLETED: &str = r#"{"metadata":{"event_id":"e1","event_type":"payment.request.state-change.completed"},"payload":{"payment_request_id":"krn:payment:eu1:request:1","payment_request_reference":"order-1","state":"COMPLETED","klarna_network_session_token":"tok-1"}}"#;

/// An engine with webhooks and the acquirer return on (`public_base_url` is
/// `https://pay.acquirer.example`), plus `extra` TOML in the `[acquirer_return]` table.
pub fn step_up(extra: &str) -> StepUp {
    let toml = format!(
        r#"
        [webhooks]
        enabled = true
        keys = [{{ id = "a", env = "WH" }}]
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{{ id = "r1", env = "RET" }}]
        {extra}
        "#
    );
    StepUp::with_secrets(StepUpConfig::from_toml(&toml).unwrap(), |n| match n {
        "WH" => Some(WEBHOOK_KEY.into()),
        "RET" => Some(RETURN_KEY.into()),
        _ => None,
    })
    .unwrap()
}

/// `Klarna-Signature` of `body` with [`WEBHOOK_KEY`].
pub fn signature(body: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(WEBHOOK_KEY.as_bytes()).unwrap();
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

/// Mints a return token the way a payment creation does (reference `order-9`) and gives the
/// request path of the layer's return URL as Klarna fills it (state `COMPLETED`), for a
/// configuration whose `public_base_url` is `https://pay.acquirer.example`.
pub fn minted_return_path(engine: &StepUp, partner_url: &str) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let Route::Candidate(c) = engine.classify(
        &http::Method::POST,
        &"/payments".parse().ok()?,
        &http::HeaderMap::new(),
    ) else {
        return None;
    };
    let body = serde_json::json!({"payment_method": "klarna", "reference": "order-9", "return_url": partner_url});
    let RequestVerdict::Injected { body, .. } =
        engine.rewrite_request(c, body.to_string().as_bytes(), now)
    else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let sent = v["step_up_config"]["customer_interaction_config"]["return_url"].as_str()?;
    Some(
        sent.trim_start_matches("https://pay.acquirer.example")
            .replace("{klarna.payment_request.state}", "COMPLETED"),
    )
}

/// Checks the layer's `X-Klarna-Stepup-Signature` on a return notification, as a payment
/// API would: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with [`RETURN_KEY`],
/// `t` within five minutes.
pub fn assert_notification_signed(headers: &http::HeaderMap, body: &[u8]) {
    let header = headers["x-klarna-stepup-signature"].to_str().unwrap();
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("{header}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(t.parse().unwrap()) < 300, "{header}");
    let mut m = Hmac::<Sha256>::new_from_slice(RETURN_KEY.as_bytes()).unwrap();
    m.update(format!("{t}.").as_bytes());
    m.update(body);
    m.verify_slice(&hex::decode(v1).unwrap())
        .unwrap_or_else(|_| panic!("the notification signature does not verify: {header}"));
}

/// Waits until the clock is at least `margin` seconds past, and `margin` before, a multiple of
/// `bucket` (return tokens' expiries are rounded to it: a test that straddles a boundary would
/// see two tokens, as documented). With the default lifetime and margin (whole hours), the
/// expiry's boundaries fall on the clock's.
pub async fn clear_of_bucket_boundary(bucket: u64, margin: u64) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let into = now % bucket;
        if into >= margin && bucket - into > margin {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
