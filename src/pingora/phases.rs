//! [`StepUpPhases`]: step-up as one call per Pingora phase, for wrappers and hand-written
//! `ProxyHttp` implementations alike. This file is the pipeline; the acquirer's own routes
//! are in `own_routes.rs`, the direct exchange in `exchange.rs`.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;
use pingora::server::configuration::ServerConf;
use pingora::{Error, ErrorType, OrErr, Result};

use super::client::UpstreamClient;
use super::ctx::StepUpCtx;
use super::io::{client_timeout_refusal, upstream_refusal, write_answer};
use crate::budget::BufferBudget;
use crate::driver::{Action, Answer, Driver, Holding, ResponseAction, ResponseHead};
use crate::engine::HeadLimits;
use crate::StepUp;

/// Pingora's retry buffer: a body read in `request_filter` reaches the upstream only if it
/// fits (`BODY_BUF_LIMIT` in pingora-core). Candidate bodies up to this size take the
/// buffered path, with an exact `Content-Length` and refusals answered before any upstream
/// contact.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// The error a body phase returns to abort the upstream request after a refusal.
const REFUSED: ErrorType = ErrorType::Custom("klarna_stepup_refused");

/// The error `response_filter` returns after it answered a webhook the payment API did not
/// accept (the 503 is already written; this only stops the upstream answer).
const WEBHOOK_ANSWERED: ErrorType = ErrorType::Custom("klarna_stepup_webhook_not_accepted");

/// The level the client-facing compression module uses for rewritten Klarna answers.
const COMPRESSION_LEVEL: u32 = 6;

/// What to do with a candidate body larger than [`RETRY_BUFFER_LIMIT`] (but within
/// [`StepUp::body_limit`]). In a configuration file: `"stream"` or `"reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LargeBodies {
    /// Stream it to the upstream with chunked framing and rewrite it at its end. The upstream
    /// is contacted before the body is known: a refusal (bad return URL, over the limit) then
    /// aborts the upstream request half-way (the upstream never gets a complete request) and
    /// the client gets the refusal.
    #[default]
    Stream,
    /// Answer 413 before contacting the upstream.
    Reject,
}

/// Step-up, one method per Pingora phase. [`StepUpProxy`](super::StepUpProxy) calls these
/// around its inner proxy; call them yourself from your own `ProxyHttp` if you prefer (see
/// the [module docs](super)). Cheap to clone.
#[derive(Debug, Clone)]
pub struct StepUpPhases {
    pub(super) step_up: StepUp,
    large_bodies: LargeBodies,
    budget: BufferBudget,
    head_limits: HeadLimits,
    pub(super) client: Arc<UpstreamClient>,
}

impl StepUpPhases {
    /// Phases for `step_up`, streaming large candidate bodies.
    pub fn new(step_up: StepUp) -> Self {
        StepUpPhases {
            step_up,
            large_bodies: LargeBodies::default(),
            budget: BufferBudget::default(),
            head_limits: HeadLimits::default(),
            client: Arc::default(),
        }
    }

    /// Bounds on a request head (default: 32 KiB and 100 fields, as the binary's server):
    /// a larger head gets 431 [`Refusal::headers_too_large`](crate::Refusal::headers_too_large) before anything else runs.
    /// Pingora's own parser takes up to 1 MiB and 256 fields.
    pub fn head_limits(mut self, limits: HeadLimits) -> Self {
        self.head_limits = limits;
        self
    }

    /// What to do with candidate bodies over 64 KiB.
    pub fn large_bodies(mut self, large_bodies: LargeBodies) -> Self {
        self.large_bodies = large_bodies;
        self
    }

    /// Takes the server's configuration for the connections step-up opens itself (the
    /// acquirer-return notification, and [`StepUpProxy`](super::StepUpProxy)'s direct
    /// exchange): its CA file and pool size, and `max_retries` as the number of attempts
    /// of one exchange. Default: Pingora's defaults.
    pub fn server_conf(mut self, conf: &ServerConf) -> Self {
        self.client = Arc::new(UpstreamClient::from_server_conf(conf));
        self
    }

    /// Options for the connector step-up opens its own upstream connections with, when you
    /// do not pass a [`server_conf`](Self::server_conf).
    pub fn connector_options(mut self, options: ConnectorOptions) -> Self {
        self.client = Arc::new(UpstreamClient::with_options(options));
        self
    }

    /// The process-wide budget of buffered candidate bytes (default 64 MiB, its own): past
    /// it, new candidates get 503 [`Refusal::overloaded`](crate::Refusal::overloaded). Pass clones of one budget to
    /// share it between services.
    pub fn buffer_budget(mut self, budget: BufferBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The engine.
    pub fn step_up(&self) -> &StepUp {
        &self.step_up
    }

    /// `early_request_filter`: classifies the request; for candidates, arms client-facing
    /// compression (it must be on before Pingora's compression module reads
    /// `Accept-Encoding`, which happens between this phase and `request_filter`).
    ///
    /// Removes every `x-klarna-stepup-*` header the client sent, whatever the route: those
    /// are step-up's alone.
    ///
    /// First of all, checks the request head as the binary's server does, whatever the
    /// route: a request target that is not a path, an absolute URL or `*` (Pingora escapes
    /// a malformed request line such as `POST  /payments` rather than refuse it), no `Host`
    /// in HTTP/1.1 or more than one, differing `Content-Length`s, a head over
    /// [`head_limits`](Self::head_limits). Such a request is answered 400 or 431 by
    /// `request_filter`, with the same JSON as the binary.
    pub fn early_request_filter(&self, session: &mut Session, ctx: &mut StepUpCtx) {
        let req = session.req_header_mut();
        let step_up = &self.step_up;
        let refused = Driver::check_target(step_up, &req.method, req.raw_path()).or_else(|| {
            let (version, target_len) = (req.version, req.raw_path().len());
            Driver::check_head(step_up, req, version, target_len, self.head_limits)
        });
        if let Some(driver) = refused {
            ctx.driver = driver;
            return;
        }
        let Some(driver) = Driver::start_head(step_up, req) else {
            return;
        };
        ctx.driver = driver;
        if !ctx.driver.is_candidate() || !ctx.driver.may_change_answer() {
            return;
        }
        // Only clients that ask for an encoding need the compression module armed.
        let wants_encoding = session
            .req_header()
            .headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("identity"));
        if !wants_encoding {
            return;
        }
        if let Some(c) = session
            .downstream_modules_ctx
            .get_mut::<ResponseCompression>()
        {
            if c.is_header_phase() && !c.is_enabled() {
                c.adjust_level(COMPRESSION_LEVEL);
                ctx.compression_enabled_by_us = true;
            }
        }
    }

    /// `request_filter`: reads a candidate body (up to 64 KiB), asks the engine, and answers
    /// a refusal by itself. Answers the acquirer return (303 or 400) and the payment API's
    /// relay path (404) itself; reads and verifies a webhook (400 when the signature does not
    /// hold). `Ok(true)` means the response was sent: return `Ok(true)` too.
    pub async fn request_filter(&self, session: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        if !ctx.driver.acts() {
            return Ok(false);
        }
        let holding = match self.large_bodies {
            LargeBodies::Stream => Holding::ThenStream(RETRY_BUFFER_LIMIT),
            LargeBodies::Reject => Holding::ThenRefuse(RETRY_BUFFER_LIMIT),
        };
        let mut action = ctx.driver.begin(&self.budget, holding);
        loop {
            action = match action {
                Action::ReadBody { .. } | Action::ReadMore => {
                    // Into Pingora's retry buffer: only then do the bytes read here reach the
                    // upstream, replayed into `request_body_filter`.
                    session.enable_retry_buffering();
                    match session.read_request_body().await {
                        Ok(Some(part)) => ctx.driver.on_request_body(part, false),
                        Ok(None) => ctx.driver.on_request_body(Bytes::new(), true),
                        Err(e) => ctx
                            .driver
                            .on_request_body_error(e.etype() == &ErrorType::ReadTimedout),
                    }
                }
                Action::Notify {
                    request,
                    timeout,
                    answer_limit,
                } => self.notify(ctx, request, timeout, answer_limit).await,
                Action::Forward(forward) => {
                    if forward.rewritten() {
                        // Must be on before Pingora parses the upstream answer (after
                        // upstream_request_filter); on the pipeline it decodes the answer
                        // before our response filters.
                        session.upstream_compression.adjust_decompression(true);
                    }
                    return Ok(false);
                }
                Action::StreamBody => {
                    // Whether this is Klarna is known only at the end of the body, after the
                    // upstream request went out: decode any answer, in case it is.
                    session.upstream_compression.adjust_decompression(true);
                    return Ok(false);
                }
                Action::Answer(answer) => return self.answer(session, ctx, &answer).await,
                _ => return Ok(false),
            };
        }
    }

    /// `upstream_request_filter`: framing of the forwarded body (exact `Content-Length` for
    /// buffered bodies, chunked for streamed ones), the answer asked for plain for Klarna
    /// exchanges, and a relayed webhook's path and headers. Runs once per upstream attempt.
    pub fn upstream_request_filter(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        ctx.driver.upstream_request_head(upstream_request);
        if let Some(path) = ctx.driver.upstream_path() {
            let uri = http::Uri::try_from(path).or_err(
                ErrorType::InternalError,
                "webhook relay path is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    /// `request_body_filter`: sends the rewritten body (buffered path), or accumulates and
    /// rewrites at the end (streaming path). An `Err` aborts the upstream request; answer it
    /// with [`fail_to_proxy`](Self::fail_to_proxy).
    pub fn request_body_filter(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        let d = &mut ctx.driver;
        if d.streams_body() {
            let part = body.clone().unwrap_or_default();
            match d.on_request_body(part, end_of_stream) {
                Action::Forward(forward) => *body = Some(forward.into_body()),
                Action::Answer(_) => {
                    return Error::e_explain(REFUSED, "candidate body refused");
                }
                // Watched as it passes (`shadow`): left as it is.
                Action::Pass => {}
                // Non-final: `Some(empty)` is "nothing now"; `None` would end the body.
                _ => *body = Some(Bytes::new()),
            }
        } else if let Some(new) = d.forward_body() {
            *body = Some(if end_of_stream {
                new.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    /// `upstream_response_filter` (the header Pingora already decompressed): tells the
    /// driver of the answer's head (whether the answer to a Klarna exchange is read and
    /// rewritten, whether a relayed webhook was accepted).
    pub fn upstream_response_filter(
        &self,
        upstream_response: &ResponseHeader,
        ctx: &mut StepUpCtx,
    ) {
        if upstream_response.status.is_informational() {
            return;
        }
        let head = ResponseHead::new(upstream_response.status, &upstream_response.headers)
            .head_first()
            .decoded(ctx.decoded_by_pingora);
        if let ResponseAction::Answer(answer) = ctx.driver.on_response_head(head) {
            ctx.answer = Some(answer);
        }
    }

    /// `response_filter`: the client-facing header. For an answer read for a rewrite: the
    /// header goes out before the body is read, so it carries only what holds whatever the
    /// engine then decides: chunked, no length, encoding or validators (the body is sent
    /// rewritten, or as the upstream's bytes decoded), and no marker (the verdict is in the
    /// log line and the [`Record`](crate::Record)). An answer not read: marked
    /// `passthrough`, compression left off.
    ///
    /// For a relayed webhook: a 2xx goes to Klarna marked `relayed`; anything else is
    /// answered here with the 503 [`Refusal::webhook_not_accepted`](crate::Refusal::webhook_not_accepted) (exact
    /// `Content-Length`, connection closed), and an `Err` stops the upstream answer: hand it
    /// to [`fail_to_proxy`](Self::fail_to_proxy) as usual, which then writes nothing more.
    pub async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        if response.status.is_informational() {
            return Ok(());
        }
        if let Some(answer) = ctx.answer.take() {
            // Pingora writes this header with the upstream's framing, and an upstream answer
            // without a body ends with its header (no body filter runs): the answer is
            // written here, whole, and an error stops the upstream answer.
            session.set_keepalive(None);
            write_answer(session, &answer).await?;
            return Error::e_explain(WEBHOOK_ANSWERED, "payment API did not accept the webhook");
        }
        if !ctx.driver.response_head(response).body_is_step_ups() {
            self.compression_off(session, ctx);
        }
        Ok(())
    }

    /// `response_body_filter` (synchronous): buffers the answer to its end (bounded by the
    /// body limit) and puts the rewritten bytes in its place.
    pub fn response_body_filter(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut StepUpCtx,
    ) {
        if !ctx.driver.reads_answer() {
            return;
        }
        let part = body.clone().unwrap_or_default();
        match ctx.driver.on_response_body(part, end_of_stream) {
            ResponseAction::Send(bytes) | ResponseAction::SendThenStream(bytes) => {
                *body = Some(bytes)
            }
            // `None`: nothing is written now.
            ResponseAction::ReadMore | ResponseAction::Abort => *body = None,
            _ => {}
        }
    }

    /// Whether the answer must stop now: Pingora decoded it past the body limit, or it is
    /// still encoded in a way that cannot be decoded within it after its header left without
    /// its `Content-Encoding` (see [`response_body_filter`](Self::response_body_filter)).
    /// Return an `Err` from your `response_body_filter` then
    /// ([`StepUpProxy`](super::StepUpProxy) does), so that the client sees the answer cut
    /// short rather than complete.
    pub fn response_aborted(&self, ctx: &StepUpCtx) -> bool {
        ctx.driver.aborted()
    }

    /// `upstream_response_filter`'s companion for hand-written proxies: tells step-up whether
    /// Pingora decodes this answer (call it with the session after Pingora's header phase;
    /// [`StepUpProxy`](super::StepUpProxy) does).
    pub fn note_upstream_decoding(&self, session: &Session, ctx: &mut StepUpCtx) {
        ctx.decoded_by_pingora = session.upstream_compression.get_info().is_some();
    }

    /// `fail_to_proxy`: the answer for a candidate request that failed: a refusal decided in
    /// a body phase, or 502/504 JSON for upstream failures. `None` when step-up has nothing
    /// to say (not a candidate, or the client went away): let the inner proxy answer.
    pub async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut StepUpCtx,
    ) -> Option<u16> {
        let failure = client_timeout_refusal(e).or_else(|| upstream_refusal(e));
        let unanswered = session.response_written().is_none();
        let answer = ctx.driver.on_upstream_error(failure, unanswered)?;
        if unanswered {
            let _ = self.answer(session, ctx, &answer).await;
        }
        Some(answer.status().as_u16())
    }

    /// `logging`: closes the request's record with its outcome.
    pub fn logging(&self, session: &Session, e: Option<&Error>, ctx: &mut StepUpCtx) {
        let status = session.response_written().map(|r| r.status.as_u16());
        let failure = e.and_then(upstream_refusal);
        ctx.driver.finish(status, failure.as_ref());
    }

    /// Whether Pingora's error log line for `e` is noise: the webhook 503 that
    /// `response_filter` already answered (logged by step-up itself).
    pub fn suppress_error_log(&self, e: &Error) -> bool {
        e.etype() == &WEBHOOK_ANSWERED
    }

    pub(super) fn compression_off(&self, session: &mut Session, ctx: &mut StepUpCtx) {
        if !ctx.compression_enabled_by_us {
            return;
        }
        if let Some(c) = session
            .downstream_modules_ctx
            .get_mut::<ResponseCompression>()
        {
            if c.is_header_phase() {
                c.adjust_level(0);
                ctx.compression_enabled_by_us = false;
            }
        }
    }

    /// Sends step-up's own answer as the whole response.
    pub(super) async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
        answer: &Answer,
    ) -> Result<bool> {
        self.compression_off(session, ctx);
        if !session.is_body_done() {
            // The rest of the body is not read: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        write_answer(session, answer).await?;
        Ok(true)
    }
}
