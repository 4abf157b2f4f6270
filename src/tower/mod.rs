//! The tower adapter: [`KlarnaStepUpLayer`] for services built on tower, hyper or axum.
//!
//! [`KlarnaStepUpLayer`] wraps any service that takes `http::Request`s and answers with
//! Klarna's authorize answer as JSON; the crate's README has a complete axum example, and
//! `examples/hyper_proxy.rs` puts the layer in front of a remote payment API:
//!
//! ```no_run
//! use axum::{routing::post, Json, Router};
//! use klarna_stepup::{tower::KlarnaStepUpLayer, StepUp};
//! use serde_json::Value;
//!
//! async fn create_payment(Json(payment): Json<Value>) -> Json<Value> {
//!     // Send `payment` (now with step_up_config) to Klarna; answer with Klarna's JSON.
//!     Json(payment)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let step_up = StepUp::from_toml(r#"
//!         [return_url_policy]
//!         allowed_hosts = ["*.partner.example"]
//!     "#)?;
//!     let app = Router::new()
//!         .route("/payments", post(create_payment))
//!         .layer(KlarnaStepUpLayer::new(step_up));
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Under a prefix: axum's `Router::nest`
//!
//! Step-up's routes (`POST /payments` by default, the acquirer return, the webhook path) are
//! paths as the layer sees them. Inside a router nested with `Router::nest("/api", ..)`,
//! axum hands the layer the path without the prefix, and the routes need nothing more.
//! Around the outer router, the layer sees `/api/payments`: tell it where the payment API is
//! mounted with [`KlarnaStepUpLayer::mounted_at`], or it sees no candidate route there and
//! the partner gets Klarna's answer unrewritten.
//!
//! ```no_run
//! use axum::{routing::post, Json, Router};
//! use klarna_stepup::{tower::KlarnaStepUpLayer, StepUp};
//! use serde_json::Value;
//!
//! async fn create_payment(Json(payment): Json<Value>) -> Json<Value> {
//!     Json(payment)
//! }
//!
//! # fn main() -> Result<(), klarna_stepup::ConfigErrors> {
//! let step_up = StepUp::from_toml("")?;
//! let payments = Router::new().route("/payments", post(create_payment));
//!
//! // Inside the nested router: the layer sees `/payments`.
//! let inside: Router = Router::new().nest(
//!     "/api",
//!     payments.clone().layer(KlarnaStepUpLayer::new(step_up.clone())),
//! );
//!
//! // Around the outer router: the layer sees `/api/payments`, and is told so.
//! let around: Router = Router::new()
//!     .nest("/api", payments)
//!     .layer(KlarnaStepUpLayer::new(step_up).mounted_at("/api"));
//! # let _ = (inside, around);
//! # Ok(())
//! # }
//! ```
//!
//! axum's `Router::layer` wraps each route's endpoint (and the fallback), after routing:
//! enough for candidate routes. Step-up's own routes are not routes of your router, and the
//! webhook relay and the return notification are requests step-up sends through the service
//! it wraps: for those, wrap the router as a whole and serve it as the fallback service of an
//! outer router, which takes every request:
//!
//! ```no_run
//! # use axum::{routing::post, Router};
//! # use klarna_stepup::{tower::KlarnaStepUpLayer, StepUp};
//! use tower::Layer;
//! # fn main() -> Result<(), klarna_stepup::ConfigErrors> {
//! # let step_up = StepUp::from_toml("")?;
//! # let payments: Router = Router::new().route("/payments", post(|| async { "" }));
//! let api = Router::new().nest("/api", payments);
//! let app: Router = Router::new()
//!     .fallback_service(KlarnaStepUpLayer::new(step_up).mounted_at("/api").layer(api));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! What it does per request:
//! - Not a candidate route: nothing is buffered; request and response stream through.
//! - A candidate the inner service answers without reading the body it was handed (an
//!   authentication middleware's 401, say): that answer goes out untouched and unmarked,
//!   recorded as [`Outcome::AnsweredByInner`](crate::Outcome::AnsweredByInner), as the
//!   Pingora adapter records a candidate its inner proxy's `request_filter` answered.
//! - Candidate: the body is read up to the limit (413 beyond it). Not Klarna: forwarded
//!   byte for byte. Refused: a 400 JSON error, the inner service is not called. Klarna: the
//!   new body goes on with an exact `Content-Length` and `Accept-Encoding: identity`.
//! - The answer to a Klarna request, when it is a 2xx JSON: read, decoded if compressed
//!   (gzip, deflate, br, zstd), rewritten, sent uncompressed with an exact length and no
//!   stale validators. Anything else goes through untouched with `x-klarna-stepup:
//!   passthrough`. Put a compression layer outside this one to compress for clients.
//!
//! # Security considerations
//! Return URLs are validated before anything is sent upstream (scheme, host allow-list, no
//! user info, no control characters, known placeholders only). Logs carry the route, the
//! `payment_request_reference` and the outcome, never URLs, tokens or bodies.

mod body;
mod future;
mod layer;
mod mount;
mod service;

pub use body::StepUpBody;
pub use future::ResponseFuture;
pub use layer::KlarnaStepUpLayer;
pub use service::KlarnaStepUp;

/// The JSON answer for a request the payment API did not answer, for a tower-based proxy's
/// client errors (as `pingora::upstream_refusal`, with the `pingora` feature, is for
/// Pingora's): 504
/// [`Refusal::upstream_timeout`](crate::Refusal::upstream_timeout) when a timeout is among
/// the error's causes (e.g. the connector's connect timeout), else 502
/// [`Refusal::upstream_unreachable`](crate::Refusal::upstream_unreachable).
///
/// Put the refusal in its response's extensions (`res.extensions_mut().insert(refusal)`) and
/// the layer's [`Record`](crate::Record) says `upstream_error` with its code, as for the
/// Pingora adapter.
pub fn upstream_refusal(e: &(dyn std::error::Error + 'static)) -> crate::Refusal {
    if service::timed_out(e) {
        crate::Refusal::upstream_timeout()
    } else {
        crate::Refusal::upstream_unreachable()
    }
}
