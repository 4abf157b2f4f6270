//! What the integration tests share: the fixture table, a recording upstream, a raw HTTP
//! client, the tower adapter as a proxy, and the demo stack.
#[cfg(feature = "sandbox")]
pub mod demo_stack;
pub mod fixtures;
#[cfg(feature = "pingora")]
pub mod pingora_proxy;
pub mod raw_http;
pub mod tower_proxy;
pub mod upstream;

/// Mints a return token the way a payment creation does (reference `order-9`) and gives the
/// request path of the layer's return URL as Klarna fills it (state `COMPLETED`), for a
/// configuration whose `public_base_url` is `https://pay.acquirer.example`.
#[allow(dead_code)]
pub fn minted_return_path(engine: &klarna_stepup::StepUp, partner_url: &str) -> Option<String> {
    use klarna_stepup::{RequestVerdict, Route};
    let Route::Candidate(c) = engine.classify(
        &http::Method::POST,
        &"/payments".parse().ok()?,
        &http::HeaderMap::new(),
    ) else {
        return None;
    };
    let body = serde_json::json!({"payment_method": "klarna", "reference": "order-9", "return_url": partner_url});
    let RequestVerdict::Injected { body, .. } =
        engine.rewrite_request(c, body.to_string().as_bytes())
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
