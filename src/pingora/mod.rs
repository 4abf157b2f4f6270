//! The Pingora adapter: [`StepUpProxy`] adds step-up to an existing `ProxyHttp` in one line.
//!
//! ```no_run
//! use async_trait::async_trait;
//! use klarna_stepup::pingora::StepUpProxy;
//! use klarna_stepup::StepUp;
//! use pingora::prelude::*;
//!
//! /// The proxy you already have.
//! struct PaymentApi;
//!
//! #[async_trait]
//! impl ProxyHttp for PaymentApi {
//!     type CTX = ();
//!     fn new_ctx(&self) {}
//!     async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
//!         Ok(Box::new(HttpPeer::new("127.0.0.1:9000", false, String::new())))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let step_up = StepUp::from_toml(r#"
//!     [defaults]
//!     return_url = "https://pay.acquirer.example/klarna/return"
//! "#)?;
//! let mut server = Server::new(None)?;
//! server.bootstrap();
//! let proxy = StepUpProxy::new(PaymentApi, step_up); // the one line
//! let mut service = http_proxy_service(&server.configuration, proxy);
//! service.add_tcp("127.0.0.1:8080");
//! server.add_service(service);
//! server.run_forever();
//! # }
//! ```
//!
//! [`StepUpProxy`] delegates every phase of `ProxyHttp` to the inner proxy (its `CTX` is kept
//! in [`StepUpProxyCtx::inner`]; a test holds the wrapper to every method of the pinned
//! Pingora's trait, so a method a release adds cannot be skipped silently) and adds, per
//! request:
//!
//! - **Every request**: its head checked as the binary's server checks it (see
//!   [`StepUpPhases::early_request_filter`]), refused with the same JSON before the inner
//!   proxy's `request_filter` runs.
//! - **Not a candidate route**: nothing. The body is not buffered, headers and bytes are the
//!   inner proxy's business. Cost: one route lookup on method and path.
//! - **A candidate the inner proxy's `request_filter` answers** (an authentication 401,
//!   say): its answer, untouched, recorded as
//!   [`Outcome::AnsweredByInner`](crate::Outcome::AnsweredByInner).
//! - **Candidate, body up to 64 KiB** (Pingora's retry buffer): the body is read in
//!   `request_filter`. Not Klarna: forwarded byte for byte. Refused (bad return URL, over
//!   `body_limit`): the JSON error is answered there and the upstream is never contacted.
//!   Klarna: the injected body goes upstream with an exact `Content-Length`.
//! - **Candidate, body over 64 KiB** (within `body_limit`): by default it streams upstream
//!   with chunked framing and is rewritten at its end ([`LargeBodies::Stream`]). The upstream
//!   connection is opened before the body is known, so a refusal then aborts the upstream
//!   request half-way (never a complete request) before the client gets the JSON error.
//!   [`LargeBodies::Reject`] answers 413 instead, before any upstream contact.
//! - **A Klarna request read whole** (up to 64 KiB) is carried to the upstream by
//!   [`StepUpProxy`] itself, on Pingora's connector, with the inner proxy's phases called in
//!   Pingora's order: the *direct exchange* (see [`StepUpProxy::direct_exchange`] and the
//!   `exchange` module's source for the exact list). Peers that may speak HTTP/2 take
//!   Pingora's pipeline instead, with the peer the inner proxy chose.
//! - **The answer to a Klarna request**: sent upstream without `Accept-Encoding`, decoded if
//!   compressed anyway, read to its end (bounded by `body_limit`; a larger answer streams
//!   through untouched), rewritten by the engine, and sent with an exact `Content-Length`,
//!   re-compressed for the client as its `Accept-Encoding` asks by Pingora's
//!   `ResponseCompression` module. On Pingora's pipeline (large streamed bodies, HTTP/2
//!   peers, or [`StepUpPhases`] in your own filters) the header goes out before the body is
//!   read: the answer is then chunked, and its header carries no marker (see below).
//! - **Upstream failures of candidate requests**: 502/504 with the JSON error
//!   ([`Refusal::upstream_unreachable`](crate::Refusal::upstream_unreachable),
//!   [`Refusal::upstream_timeout`](crate::Refusal::upstream_timeout)); other requests' failures
//!   are the inner proxy's `fail_to_proxy`.
//!
//! - **Acquirer return** (`GET`/`HEAD` on the return endpoint): answered in `request_filter`,
//!   with the same 303 (or 400 for a bad token, never a redirect) as the tower adapter. With
//!   a notification path configured, the notification JSON is first POSTed to the payment
//!   API: the peer is the inner proxy's `upstream_peer` (called once more, in
//!   `request_filter`), the client is Pingora's HTTP connector, and the redirect waits for
//!   it at most the configured timeout (the notification is then abandoned). The inner
//!   proxy's upstream filters do not run for the notification.
//! - **Webhook** (`POST` on the webhook path): the body is read in `request_filter` (up to
//!   `webhooks.body_limit`, but at most 64 KiB, the retry buffer: larger bodies get 413),
//!   verified (400, not relayed, if it does not hold), and proxied to the payment API's
//!   relay path (query dropped) with its original bytes, an exact `Content-Length` and the
//!   `x-klarna-stepup-*` headers set by step-up (incoming ones removed). A 2xx answer goes
//!   to Klarna marked `relayed`; any other answer, an unreachable payment API or a timeout
//!   is answered 503 [`Refusal::webhook_not_accepted`](crate::Refusal::webhook_not_accepted)
//!   so that Klarna retries. A non-2xx answer is replaced in `response_filter`: the 503 is
//!   written there (exact `Content-Length`, connection closed) and an error stops the
//!   upstream answer; Pingora's error log line for it is suppressed by
//!   [`StepUpPhases::suppress_error_log`].
//! - **The payment API's relay path**, requested from outside: 404, the upstream is never
//!   contacted.
//!
//! Responses carry the `x-klarna-stepup` header ([`MARKER_HEADER`](crate::engine::MARKER_HEADER))
//! exactly as with the tower adapter, and refusals are the same bytes
//! ([`Refusal::to_response`](crate::Refusal::to_response)). Off the direct exchange, on
//! Pingora's pipeline (bodies over 64 KiB, HTTP/2-capable peers, `direct_exchange(false)`,
//! or [`StepUpPhases`] in your own filters), one difference remains that Pingora's phase
//! order imposes: the header of an answer that is being read for a rewrite goes to the
//! client before its body has been read, so it says only what holds either way. It is sent
//! chunked, without `Content-Length`, `Content-Encoding`, `ETag` or `Accept-Ranges`, and
//! without the marker; the body is the rewritten answer, or the upstream's bytes (decoded,
//! if they came in an encoding Pingora does not decode, such as `zstd` or `deflate`: an
//! answer that cannot be decoded within `body_limit` is cut short). What the engine decided
//! is in the `request done` log line and the [`Record`](crate::Record)'s
//! [`Outcome`](crate::Outcome). An answer not read for a rewrite (not a 2xx JSON answer,
//! declared too large) is marked `passthrough` as usual. For the same reason the pipeline
//! cannot send a status configured in `partner_response.http_status`: a rewritten answer
//! whose configured status differs from the payment API's is cut short (a failed request: a
//! 5xx, or the connection closed; a warning in the log), never sent under the status that
//! already left, which could read as a success. With `http_status` set, keep Klarna requests
//! on the direct exchange, which sends it.
//!
//! # Calling step-up from your own filters
//!
//! If you would rather not wrap your proxy, keep a [`StepUpCtx`] in your `CTX` and call the
//! [`StepUpPhases`] method of each phase (plus [`respond`] and [`upstream_refusal`] if you
//! answer errors yourself). This runs on Pingora's pipeline, without the direct exchange;
//! `tests/it/pingora_phases.rs` runs the whole fixture table through this recipe:
//!
//! ```no_run
//! use async_trait::async_trait;
//! use bytes::Bytes;
//! use klarna_stepup::pingora::{StepUpCtx, StepUpPhases};
//! use pingora::prelude::*;
//! use pingora::proxy::FailToProxy;
//!
//! struct MyProxy {
//!     step_up: StepUpPhases,
//! }
//!
//! #[async_trait]
//! impl ProxyHttp for MyProxy {
//!     type CTX = StepUpCtx;
//!     fn new_ctx(&self) -> StepUpCtx {
//!         StepUpCtx::default()
//!     }
//!     async fn upstream_peer(&self, _: &mut Session, _: &mut StepUpCtx) -> Result<Box<HttpPeer>> {
//!         Ok(Box::new(HttpPeer::new("127.0.0.1:9000", false, String::new())))
//!     }
//!     async fn early_request_filter(&self, s: &mut Session, ctx: &mut StepUpCtx) -> Result<()> {
//!         self.step_up.early_request_filter(s, ctx);
//!         Ok(())
//!     }
//!     async fn request_filter(&self, s: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
//!         if self.step_up.wants_notify_peer(ctx) {
//!             // Where the acquirer-return notification goes (your payment API).
//!             ctx.set_notify_peer(Box::new(HttpPeer::new("127.0.0.1:9000", false, String::new())));
//!         }
//!         self.step_up.request_filter(s, ctx).await
//!     }
//!     async fn upstream_request_filter(
//!         &self, _: &mut Session, req: &mut RequestHeader, ctx: &mut StepUpCtx,
//!     ) -> Result<()> {
//!         self.step_up.upstream_request_filter(req, ctx)
//!     }
//!     async fn request_body_filter(
//!         &self, _: &mut Session, body: &mut Option<Bytes>, eos: bool, ctx: &mut StepUpCtx,
//!     ) -> Result<()> {
//!         self.step_up.request_body_filter(body, eos, ctx)
//!     }
//!     async fn upstream_response_filter(
//!         &self, s: &mut Session, res: &mut ResponseHeader, ctx: &mut StepUpCtx,
//!     ) -> Result<()> {
//!         self.step_up.note_upstream_decoding(s, ctx);
//!         self.step_up.upstream_response_filter(res, ctx);
//!         Ok(())
//!     }
//!     async fn response_filter(
//!         &self, s: &mut Session, res: &mut ResponseHeader, ctx: &mut StepUpCtx,
//!     ) -> Result<()> {
//!         self.step_up.response_filter(s, res, ctx).await
//!     }
//!     fn response_body_filter(
//!         &self, _: &mut Session, body: &mut Option<Bytes>, eos: bool, ctx: &mut StepUpCtx,
//!     ) -> Result<Option<std::time::Duration>> {
//!         self.step_up.response_body_filter(body, eos, ctx);
//!         if self.step_up.response_aborted(ctx) {
//!             // An answer that cannot be sent as its header announced it: cut short.
//!             return Error::e_explain(ErrorType::Custom("answer_aborted"), "answer stopped");
//!         }
//!         Ok(None)
//!     }
//!     async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut StepUpCtx) -> FailToProxy {
//!         let error_code = match self.step_up.fail_to_proxy(s, e, ctx).await {
//!             Some(code) => code,
//!             None => 502, // your own error handling
//!         };
//!         FailToProxy { error_code, can_reuse_downstream: false }
//!     }
//!     fn suppress_error_log(&self, _: &Session, _: &StepUpCtx, e: &Error) -> bool {
//!         self.step_up.suppress_error_log(e)
//!     }
//!     async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut StepUpCtx) {
//!         self.step_up.logging(s, e, ctx);
//!     }
//! }
//! ```
//!
//! # Security considerations
//! Return URLs are validated before anything is sent upstream (buffered path). Logs carry the
//! route, the `payment_request_reference` and the outcome, never URLs, tokens or bodies.
//! Upstream answers to Klarna requests are buffered up to `body_limit`; set read timeouts on
//! your `HttpPeer`s (Pingora's default is to wait forever).

// The parts, by concern: the per-request state; step-up's own upstream client; the phases
// of Pingora's pipeline; the routes step-up answers itself; the direct exchange; session
// I/O; and the delegating wrapper.
mod client;
mod ctx;
mod delegate;
mod exchange;
mod io;
mod own_routes;
mod phases;
mod proxy;

pub use ctx::StepUpCtx;
pub use io::{client_timeout_refusal, respond, upstream_refusal};
pub use phases::{LargeBodies, StepUpPhases, RETRY_BUFFER_LIMIT};
pub use proxy::{StepUpProxy, StepUpProxyCtx};
