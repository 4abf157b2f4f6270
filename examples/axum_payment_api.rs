//! An axum "payment API" with Klarna step-up in front of it.
//!
//! The handler plays the acquirer's payment API: it receives the partner's body with the
//! injected `step_up_config` and answers what Klarna would, STEP_UP_REQUIRED. The layer turns
//! that into the partner block.
//!
//! ```sh
//! cargo run --example axum_payment_api            # listens on 127.0.0.1:8080 (PORT to change)
//! curl -s localhost:8080/payments -H 'content-type: application/json' \
//!   -d '{"payment_method":"klarna","amount":11800,"currency":"USD","reference":"order-1",
//!        "klarna_return_url":"https://shop.example/return?id={klarna.payment_request.id}"}'
//! ```

use axum::routing::post;
use axum::{Json, Router};
use klarna_stepup::{tower::KlarnaStepUpLayer, StepUp};
use serde_json::{json, Value};

/// What the payment API does with a Klarna payment: call Klarna's authorize with the body it
/// got (here: answer as Klarna's sandbox would).
async fn create_payment(Json(body): Json<Value>) -> Json<Value> {
    let reference = body["step_up_config"]["payment_request_reference"].clone();
    let id = "krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4";
    Json(json!({
        "payment_transaction_response": {"result": "STEP_UP_REQUIRED"},
        "payment_request": {
            "payment_request_id": id,
            "payment_request_reference": reference,
            "amount": body["amount"],
            "currency": body["currency"],
            "state": "SUBMITTED",
            "state_context": {"customer_interaction": {
                "method": "HANDOVER",
                "payment_request_id": id,
                "payment_request_url": "https://pay.klarna.com/eu/requests/552603c0-fe8b-4ab1-aacb-41d55fafbdb4/start"
            }}
        }
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let step_up = StepUp::from_toml(
        r#"
        [return_url_policy]
        http_hosts = ["localhost", "127.0.0.1"]
        "#,
    )?;
    let app = Router::new()
        .route("/payments", post(create_payment))
        .layer(KlarnaStepUpLayer::new(step_up));
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "payment API with Klarna step-up on http://{}",
        listener.local_addr()?
    );
    println!(
        r#"try: curl -s localhost:{port}/payments -H 'content-type: application/json' -d '{{"payment_method":"klarna","amount":11800,"currency":"USD","reference":"order-1","klarna_return_url":"https://shop.example/return?id={{klarna.payment_request.id}}"}}'"#
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
