//! [`StepUpPhases`]: step-up as one call per Pingora phase, for wrappers and hand-written
//! `ProxyHttp` implementations alike. This file is the pipeline; the acquirer's own routes
//! are in `own_routes.rs`, the direct exchange in `exchange.rs`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;
use pingora::server::configuration::ServerConf;
use pingora::{Error, ErrorType, OrErr, Result};

use super::client::UpstreamClient;
use super::ctx::{Own, Req, Resp, StepUpCtx};
use super::io::{client_timeout_refusal, read_retry_buffered, respond, upstream_refusal, Read};
use crate::budget::BufferBudget;
use crate::engine::{self, unix_now, Candidate, HeadLimits};
use crate::observe::{Outcome, Record};
use crate::{KeepReason, Refusal, RequestVerdict, ResponsePlan, ResponseVerdict, Route, StepUp};

/// Pingora's retry buffer: a body read in `request_filter` reaches the upstream only if it
/// fits (`BODY_BUF_LIMIT` in pingora-core). Candidate bodies up to this size take the
/// buffered path, with an exact `Content-Length` and refusals answered before any upstream
/// contact.
pub const RETRY_BUFFER_LIMIT: usize = 64 * 1024;

/// The error a body phase returns to abort the upstream request after a refusal.
const REFUSED: ErrorType = ErrorType::Custom("klarna_stepup_refused");

/// The error `response_filter` returns after it answered a webhook the payment API did not
/// accept (the 503 is already written; this only stops the upstream answer).
pub(super) const WEBHOOK_ANSWERED: ErrorType =
    ErrorType::Custom("klarna_stepup_webhook_not_accepted");

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
    /// a larger head gets 431 [`Refusal::headers_too_large`] before anything else runs.
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
    /// it, new candidates get 503 [`Refusal::overloaded`]. Pass clones of one budget to
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
        if let Err(refusal) = self.check_head(session.req_header_mut()) {
            ctx.own = Own::BadHead(refusal);
            ctx.record = Record::acting("request_head", Outcome::NotCandidate);
            return;
        }
        engine::strip_forged_headers(session.req_header_mut());
        let req = session.req_header();
        let candidate = match self.step_up.classify(&req.method, &req.uri, &req.headers) {
            Route::Candidate(candidate) => candidate,
            Route::Return => {
                let resolved = self.step_up.resolve_return(&req.uri, unix_now());
                return own(ctx, Own::Return(resolved), "acquirer_return");
            }
            Route::Webhook => return own(ctx, Own::Webhook(None), "webhook"),
            Route::RelayPathFromOutside => {
                return own(ctx, Own::RelayPathFromOutside, "webhook_relay_path")
            }
            Route::Refused(refused) => {
                let pattern = self.step_up.candidate_pattern(refused.candidate());
                ctx.own = Own::Refused(refused.refusal());
                ctx.record = Record::acting(pattern, Outcome::NotKlarna);
                return;
            }
            _ => return,
        };
        ctx.req = Req::Candidate(candidate);
        ctx.record = Record::acting(
            self.step_up.candidate_pattern(candidate),
            Outcome::NotKlarna,
        );
        ctx.record.candidate(&candidate);
        // Only clients that ask for an encoding need the compression module armed.
        let wants_encoding = req
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
        match &ctx.own {
            Own::None => {}
            Own::RelayPathFromOutside => {
                return self.refuse(session, ctx, Refusal::not_found()).await
            }
            Own::Refused(r) | Own::BadHead(r) => {
                let r = r.clone();
                return self.refuse(session, ctx, r).await;
            }
            Own::Return(_) => return self.acquirer_return(session, ctx).await,
            Own::Webhook(_) => return self.webhook(session, ctx).await,
        }
        let Req::Candidate(candidate) = ctx.req else {
            return Ok(false);
        };
        let limit = self.step_up.body_limit();
        let declared = engine::content_length(&session.req_header().headers);
        if declared.is_some_and(|n| n > limit as u64) {
            return self.refuse(session, ctx, Refusal::too_large(limit)).await;
        }
        // What this candidate is about to buffer in this phase: the retry buffer's size at
        // most (its declared length when shorter). A larger body is charged as its bytes
        // arrive (`request_body_filter`), so a slow client that declares much holds little;
        // its answer is counted as it arrives.
        let reserve = declared.map_or(RETRY_BUFFER_LIMIT, |n| (n as usize).min(RETRY_BUFFER_LIMIT));
        match self.budget.admit(reserve) {
            Some(held) => ctx.held = Some(held),
            None => return self.refuse(session, ctx, Refusal::overloaded()).await,
        }
        let large = declared.is_some_and(|n| n > RETRY_BUFFER_LIMIT as u64);
        let too_large_to_buffer = || Refusal::too_large(RETRY_BUFFER_LIMIT.min(limit));
        if large && self.large_bodies == LargeBodies::Reject {
            return self.refuse(session, ctx, too_large_to_buffer()).await;
        }
        if large {
            // Nothing read yet: the whole body streams through request_body_filter.
            self.start_streaming(session, ctx, candidate, Bytes::new());
            return Ok(false);
        }
        let body = match read_retry_buffered(session, limit.min(RETRY_BUFFER_LIMIT)).await {
            Read::Whole(body) => body,
            Read::Failed => return self.refuse(session, ctx, Refusal::unreadable_body()).await,
            Read::TimedOut => return self.refuse(session, ctx, Refusal::request_timeout()).await,
            Read::Over(body) if body.len() > limit => {
                return self.refuse(session, ctx, Refusal::too_large(limit)).await
            }
            // A chunked body over the retry buffer: what was read is ours to forward.
            Read::Over(_) if self.large_bodies == LargeBodies::Reject => {
                return self.refuse(session, ctx, too_large_to_buffer()).await
            }
            Read::Over(prefix) => {
                self.start_streaming(session, ctx, candidate, prefix);
                return Ok(false);
            }
        };
        ctx.record.read_request(body.len());
        let verdict = ctx
            .record
            .timed(|| self.step_up.rewrite_request(candidate, &body, unix_now()));
        match verdict {
            RequestVerdict::NotKlarna => {
                // Replayed untouched from the retry buffer.
                ctx.req = Req::Untouched;
                Ok(false)
            }
            RequestVerdict::Refused(r) => self.refuse(session, ctx, r).await,
            RequestVerdict::Injected { body, exchange } => {
                ctx.record.injected(&exchange);
                ctx.exchange = Some(exchange);
                // Must be on before Pingora parses the upstream answer (after
                // upstream_request_filter); on the pipeline it decodes the answer before our
                // response filters.
                session.upstream_compression.adjust_decompression(true);
                ctx.req = Req::Buffered(Bytes::from(body));
                Ok(false)
            }
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
        match &mut ctx.req {
            Req::Buffered(body) => engine::injected_request(upstream_request, body.len()),
            Req::Streaming { prefix, acc, .. } => {
                acc.clear();
                acc.extend_from_slice(prefix);
                upstream_request.remove_header(&header::CONTENT_LENGTH);
                upstream_request.insert_header(header::TRANSFER_ENCODING, "chunked")?;
                // Whether this is Klarna is known only at the end of the body: the answer is
                // asked for plain in case it is, as for an injected request.
                upstream_request.insert_header(header::ACCEPT_ENCODING, "identity")?;
            }
            Req::Untouched | Req::Candidate(_) => {}
        }
        if let Own::Webhook(Some(event)) = &ctx.own {
            let path = self.step_up.webhook_relay_path();
            let uri = http::Uri::try_from(path).or_err(
                ErrorType::InternalError,
                "webhook relay path is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
            engine::relay_request(upstream_request, event);
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
        match &mut ctx.req {
            Req::Buffered(new) => {
                // Non-final: `Some(empty)` is "nothing now"; `None` would end the body.
                *body = Some(if end_of_stream {
                    new.clone()
                } else {
                    Bytes::new()
                });
            }
            Req::Streaming { candidate, acc, .. } => {
                let candidate = *candidate;
                if let Some(b) = body.take() {
                    acc.extend_from_slice(&b);
                }
                let limit = self.step_up.body_limit();
                if acc.len() > limit {
                    ctx.pending = Some(Refusal::too_large(limit));
                    return Error::e_explain(REFUSED, "candidate body over the limit");
                }
                // Charged as it arrives, within the budget: a body without a length cannot
                // go past it unseen.
                if !ctx.held.as_mut().is_none_or(|h| h.try_grow_to(acc.len())) {
                    ctx.pending = Some(Refusal::overloaded());
                    return Error::e_explain(REFUSED, "buffer budget spent");
                }
                if !end_of_stream {
                    *body = Some(Bytes::new());
                    return Ok(());
                }
                let whole = std::mem::take(acc).freeze();
                ctx.record.read_request(whole.len());
                let verdict = ctx
                    .record
                    .timed(|| self.step_up.rewrite_request(candidate, &whole, unix_now()));
                *body = Some(match verdict {
                    RequestVerdict::Injected { body, exchange } => {
                        ctx.record.injected(&exchange);
                        ctx.exchange = Some(exchange);
                        Bytes::from(body)
                    }
                    RequestVerdict::Refused(r) => {
                        ctx.pending = Some(r);
                        return Error::e_explain(REFUSED, "candidate body refused");
                    }
                    RequestVerdict::NotKlarna => whole,
                });
            }
            Req::Untouched | Req::Candidate(_) => {}
        }
        Ok(())
    }

    /// `upstream_response_filter` (the header Pingora already decompressed): asks the engine
    /// whether the answer to a Klarna exchange is read and rewritten.
    pub fn upstream_response_filter(
        &self,
        upstream_response: &ResponseHeader,
        ctx: &mut StepUpCtx,
    ) {
        let Some(exchange) = &ctx.exchange else {
            return;
        };
        let status = upstream_response.status;
        if status.is_informational() {
            return;
        }
        let headers = &upstream_response.headers;
        ctx.record.answer_head(headers);
        match self.step_up.response_plan(exchange, status, headers) {
            ResponsePlan::Read => {
                // The engine reads the answer's Content-Type and Content-Encoding only: keep
                // those, not a copy of every header.
                let mut kept = HeaderMap::with_capacity(2);
                for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                    if let Some(v) = headers.get(&name) {
                        kept.insert(name, v.clone());
                    }
                }
                let capacity = engine::content_length(headers).map_or(0, |n| n as usize);
                ctx.resp = Resp::Buffering {
                    status,
                    headers: kept,
                    acc: BytesMut::with_capacity(capacity),
                };
            }
            ResponsePlan::Keep(reason) => ctx.record.kept(reason),
        }
    }

    /// `response_filter`: the client-facing header. For an answer read for a rewrite: the
    /// header goes out before the body is read, so it carries only what holds whatever the
    /// engine then decides: chunked, no length, encoding or validators (the body is sent
    /// rewritten, or as the upstream's bytes decoded), and no marker (the verdict is in the
    /// log line and the [`Record`]). An answer not read: marked `passthrough`, compression
    /// left off.
    ///
    /// For a relayed webhook: a 2xx goes to Klarna marked `relayed`; anything else is
    /// answered here with the 503 [`Refusal::webhook_not_accepted`] (exact
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
        if ctx.relayed_webhook() {
            return self.webhook_answer(session, response, ctx).await;
        }
        if ctx.exchange.is_none() {
            self.compression_off(session, ctx);
            return Ok(());
        }
        if let Resp::Buffering { .. } = ctx.resp {
            for name in &engine::STALE_RESPONSE_HEADERS {
                if response.headers.contains_key(name) {
                    response.remove_header(name);
                }
            }
            response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        } else {
            self.passthrough_head(session, response, ctx);
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
        let limit = self.step_up.body_limit();
        if let Resp::Aborted = ctx.resp {
            *body = None;
            return;
        }
        let Resp::Buffering { acc, headers, .. } = &mut ctx.resp else {
            if ctx.decoded_by_pingora && ctx.exchange.is_some() {
                // An answer step-up passes on that Pingora decodes (decompression is on
                // for every Klarna exchange): bounded too, or 1 MB of gzip reaches the
                // client as 1 GiB.
                ctx.decoded_passed += body.as_ref().map_or(0, Bytes::len);
                if ctx.decoded_passed > limit {
                    *body = None;
                    ctx.resp = Resp::Aborted;
                }
            }
            return;
        };
        if let Some(b) = body.take() {
            acc.extend_from_slice(&b);
        }
        if let Some(held) = &mut ctx.held {
            held.grow_to(acc.len());
        }
        // Decoded by Pingora past the limit (an inflation, not a Klarna answer), or still
        // encoded and too large to decode within it (its header went out without its
        // `Content-Encoding`, so its bytes cannot follow): stopped, the client sees the
        // answer cut short.
        let encoded = headers.contains_key(header::CONTENT_ENCODING);
        if acc.len() > limit && (ctx.decoded_by_pingora || encoded) {
            ctx.record.read_response(acc.len());
            ctx.record.kept(KeepReason::TooLarge);
            ctx.resp = Resp::Aborted;
            return;
        }
        if acc.len() > limit {
            // Too large to be a Klarna answer we rewrite: send what we hold, stream the rest.
            ctx.record.read_response(acc.len());
            *body = Some(std::mem::take(acc).freeze());
            ctx.resp = Resp::Flushed;
            ctx.record.kept(KeepReason::TooLarge);
            return;
        }
        if !end_of_stream {
            return; // `None`: nothing is written now
        }
        let Resp::Buffering {
            status,
            headers,
            acc,
        } = std::mem::take(&mut ctx.resp)
        else {
            return;
        };
        let raw = acc.freeze();
        ctx.record.read_response(raw.len());
        let Some(exchange) = &ctx.exchange else {
            *body = Some(raw);
            return;
        };
        let verdict = ctx.record.timed(|| {
            self.step_up
                .rewrite_response(exchange, status, &headers, &raw)
        });
        match verdict {
            ResponseVerdict::Rewritten {
                body: new,
                status: configured,
                result,
                payment_request_id,
            } => {
                ctx.record.rewritten(result, payment_request_id);
                if configured != status {
                    // `partner_response.http_status` asks for another status than the one
                    // whose header already left: never a step-up or a decline under the
                    // status of a success. Cut short, the client sees a failed answer.
                    ctx.record.status_not_sent(configured);
                    ctx.resp = Resp::Aborted;
                    return;
                }
                *body = Some(Bytes::from(new));
            }
            ResponseVerdict::Keep(reason) => {
                ctx.record.kept(reason);
                // The header already went out without `Content-Encoding` (Pingora writes it
                // before any body filter runs): an answer still encoded goes out decoded, or
                // not at all.
                let encoding = headers.get(header::CONTENT_ENCODING);
                if encoding.is_none() {
                    *body = Some(raw);
                    return;
                }
                match engine::decode::decode(encoding, &raw, limit) {
                    Some(plain) => *body = Some(Bytes::copy_from_slice(&plain)),
                    None => ctx.resp = Resp::Aborted,
                }
            }
        }
    }

    /// Whether the answer must stop now: Pingora decoded it past the body limit, or it is
    /// still encoded in a way that cannot be decoded within it after its header left without
    /// its `Content-Encoding` (see [`response_body_filter`](Self::response_body_filter)).
    /// Return an `Err` from your `response_body_filter` then
    /// ([`StepUpProxy`](super::StepUpProxy) does), so that the client sees the answer cut
    /// short rather than complete.
    pub fn response_aborted(&self, ctx: &StepUpCtx) -> bool {
        matches!(ctx.resp, Resp::Aborted)
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
        if !ctx.acts() {
            return None;
        }
        let refusal = match ctx.pending.take() {
            Some(r) => r,
            None if ctx.relayed_webhook() => {
                // Whatever went wrong (unreachable, timeout, not accepted), Klarna must retry.
                if e.etype() != &WEBHOOK_ANSWERED {
                    ctx.record.not_relayed(None);
                }
                Refusal::webhook_not_accepted()
            }
            None => client_timeout_refusal(e).or_else(|| upstream_refusal(e))?,
        };
        let code = refusal.status().as_u16();
        if session.response_written().is_none() {
            let _ = self.refuse(session, ctx, refusal).await;
        } else {
            ctx.record.failed_upstream(&refusal);
        }
        Some(code)
    }

    /// `logging`: closes the request's record with its outcome.
    pub fn logging(&self, session: &Session, e: Option<&Error>, ctx: &mut StepUpCtx) {
        if let (
            Some(e),
            Outcome::NotCandidate
            | Outcome::Rewritten
            | Outcome::Passthrough
            | Outcome::NotKlarna
            | Outcome::Relayed,
        ) = (e, ctx.outcome())
        {
            if let Some(r) = upstream_refusal(e) {
                ctx.record.failed_upstream(&r);
            }
        }
        let status = session.response_written().map(|r| r.status.as_u16());
        ctx.record.done(status);
    }

    /// Whether Pingora's error log line for `e` is noise: the webhook 503 that
    /// `response_filter` already answered (logged by step-up itself).
    pub fn suppress_error_log(&self, e: &Error) -> bool {
        e.etype() == &WEBHOOK_ANSWERED
    }

    /// The binary's head rules, through the engine: the request target's form, then `Host`,
    /// `Content-Length` and the size bounds.
    fn check_head(&self, head: &mut RequestHeader) -> std::result::Result<(), Refusal> {
        let target = head.raw_path();
        engine::check_request_target(&head.method, target)?;
        let (version, target_len) = (head.version, target.len());
        engine::check_request_head(head, version, target_len, self.head_limits)
    }

    fn start_streaming(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
        candidate: Candidate,
        prefix: Bytes,
    ) {
        ctx.record.span().in_scope(|| {
            tracing::debug!(read = prefix.len(), "large candidate body: streaming path");
        });
        // Whether this is Klarna is known only at the end of the body, after the upstream
        // request went out: decode any answer, in case it is.
        session.upstream_compression.adjust_decompression(true);
        ctx.req = Req::Streaming {
            candidate,
            acc: BytesMut::from(&prefix[..]),
            prefix,
        };
    }

    /// The head of an answer to a Klarna exchange that goes out untouched: marked
    /// `passthrough`, and not compressed by us (the upstream's encoding, if any, stays).
    pub(super) fn passthrough_head(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) {
        self.compression_off(session, ctx);
        engine::mark_passthrough(head);
    }

    fn compression_off(&self, session: &mut Session, ctx: &mut StepUpCtx) {
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

    /// Sends `refusal` as the whole response and records it.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        ctx.record.refused(&refusal);
        self.compression_off(session, ctx);
        if !session.is_body_done() {
            // The rest of the body is not read: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        respond(session, &refusal).await?;
        Ok(true)
    }
}

/// Marks the request as one of step-up's own routes.
fn own(ctx: &mut StepUpCtx, own: Own, route: &'static str) {
    ctx.own = own;
    ctx.record = Record::acting(route, Outcome::NotCandidate);
}
