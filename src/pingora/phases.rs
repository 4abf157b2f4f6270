//! [`StepUpPhases`]: step-up as one call per Pingora phase, for wrappers and hand-written
//! `ProxyHttp` implementations alike.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OkOrErr, OrErr, Result};

use crate::engine::webhook::relay_headers;
use crate::engine::ReturnRedirect;
use crate::engine::{Candidate, Exchange, MARKER_HEADER, STALE_RESPONSE_HEADERS};
use crate::{Refusal, RequestVerdict, ResponseVerdict, Route, StepUp};

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

/// What step-up did with one request; see [`StepUpCtx::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// Not a candidate route: streamed through untouched.
    #[default]
    NotCandidate,
    /// A candidate whose body is not a Klarna payment: forwarded byte for byte.
    NotKlarna,
    /// Klarna request injected; the answer was rewritten into the partner block.
    Rewritten,
    /// Klarna request injected; the answer passed through untouched.
    Passthrough,
    /// Answered by step-up itself (400/413) with this code.
    Refused(&'static str),
    /// The upstream could not be reached or timed out (502/504 with this code); for a
    /// webhook, also a payment API that did not accept it (503 `webhook_not_accepted`).
    UpstreamError(&'static str),
    /// An acquirer return answered with its 303 redirect.
    Redirected,
    /// A verified webhook relayed to the payment API, which accepted it (2xx).
    Relayed,
}

impl Outcome {
    /// The metric label: `rewritten`, `passthrough`, `refused` or `upstream_error`
    /// (requests that were not Klarna, acquirer returns that redirected and webhooks the
    /// payment API accepted count as `passthrough`).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Rewritten => "rewritten",
            Outcome::NotCandidate
            | Outcome::NotKlarna
            | Outcome::Passthrough
            | Outcome::Redirected
            | Outcome::Relayed => "passthrough",
            Outcome::Refused(_) => "refused",
            Outcome::UpstreamError(_) => "upstream_error",
        }
    }
}

#[derive(Debug, Default)]
enum Req {
    /// Not a candidate, or not Klarna: untouched.
    #[default]
    Untouched,
    /// A candidate whose body has not been read yet.
    Candidate(Candidate),
    /// Recipe A: the body was read in `request_filter`; this replaces it upstream.
    Buffered(Bytes),
    /// Recipe B: accumulate in `request_body_filter`, rewrite at the end.
    Streaming {
        candidate: Candidate,
        /// What `request_filter` read before switching to streaming.
        prefix: Bytes,
        acc: BytesMut,
    },
}

/// The routes step-up answers or relays itself (see [`Route`]).
#[derive(Debug, Default)]
enum Own {
    #[default]
    None,
    /// The acquirer return, its token checked in `early_request_filter`.
    Return(Result<ReturnRedirect, Refusal>),
    /// Klarna's webhook path; `Some` once verified: the headers to relay (values marked
    /// sensitive, they carry the session token).
    Webhook(Option<Vec<(HeaderName, HeaderValue)>>),
    /// The payment API's webhook relay path, reached from outside.
    Internal,
}

#[derive(Debug, Default)]
enum Resp {
    #[default]
    Untouched,
    /// Reading the answer to a Klarna exchange to the end.
    Buffering {
        status: StatusCode,
        /// Only what the engine reads (the Content-Type).
        headers: HeaderMap,
        acc: BytesMut,
    },
    /// Too large to rewrite: the rest streams through.
    Flushed,
}

/// Step-up's per-request state. Keep one in your `CTX` when you call [`StepUpPhases`]
/// yourself; [`StepUpProxy`](super::StepUpProxy) keeps it for you.
#[derive(Debug)]
pub struct StepUpCtx {
    /// A route step-up acts on: a candidate, the acquirer return or a webhook path.
    candidate: bool,
    own: Own,
    /// Where the acquirer-return notification goes; see [`StepUpCtx::set_notify_peer`].
    notify_peer: Option<Box<HttpPeer>>,
    req: Req,
    resp: Resp,
    exchange: Option<Exchange>,
    /// A refusal decided in a body phase, answered in `fail_to_proxy`.
    pending: Option<Refusal>,
    outcome: Outcome,
    compression_enabled_by_us: bool,
    request_body_len: Option<usize>,
    response_body_len: Option<usize>,
    engine_time: Duration,
    span: tracing::Span,
}

impl Default for StepUpCtx {
    fn default() -> Self {
        StepUpCtx {
            candidate: false,
            own: Own::default(),
            notify_peer: None,
            req: Req::default(),
            resp: Resp::default(),
            exchange: None,
            pending: None,
            outcome: Outcome::default(),
            compression_enabled_by_us: false,
            request_body_len: None,
            response_body_len: None,
            engine_time: Duration::ZERO,
            span: tracing::Span::none(),
        }
    }
}

impl StepUpCtx {
    /// What step-up did (final once the request is logged; an upstream failure of any
    /// request, candidate or not, is [`Outcome::UpstreamError`]).
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The Klarna exchange, once a request was injected.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }

    /// Size of the candidate request body the engine read, if it read one.
    pub fn request_body_len(&self) -> Option<usize> {
        self.request_body_len
    }

    /// Size of the upstream answer the engine read, if it read one.
    pub fn response_body_len(&self) -> Option<usize> {
        self.response_body_len
    }

    /// Time spent in the engine (request injection and response rewrite).
    pub fn engine_time(&self) -> Duration {
        self.engine_time
    }

    /// The request's `klarna_stepup` tracing span (disabled for requests that are not
    /// candidates).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The payment API peer the acquirer-return notification is sent to. Needed only when
    /// [`StepUpPhases::wants_notify_peer`] says so, before `request_filter`;
    /// [`StepUpProxy`](super::StepUpProxy) asks its inner proxy's `upstream_peer` for it.
    pub fn set_notify_peer(&mut self, peer: Box<HttpPeer>) {
        self.notify_peer = Some(peer);
    }

    /// Whether step-up acts on this request (a candidate, the acquirer return, a webhook
    /// path); known from `early_request_filter` on. Other requests are the inner proxy's
    /// alone, and [`StepUpProxy`](super::StepUpProxy) hands them its phases unwrapped.
    pub(crate) fn acts(&self) -> bool {
        self.candidate
    }

    fn relayed_webhook(&self) -> bool {
        matches!(self.own, Own::Webhook(Some(_)))
    }
}

/// Pingora's HTTP connector for the acquirer-return notification and the direct exchange,
/// made on first use.
#[derive(Default)]
struct Notifier {
    connector: OnceLock<Connector>,
    options: Option<ConnectorOptions>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

impl Notifier {
    fn connector(&self) -> &Connector {
        self.connector
            .get_or_init(|| Connector::new(self.options.clone()))
    }

    /// POSTs `body` (JSON) to `path` on `peer`; the answer's status. Unbounded: the caller
    /// puts the timeout around it.
    async fn notify(
        &self,
        peer: &HttpPeer,
        path: &str,
        host: Option<HeaderValue>,
        body: Vec<u8>,
    ) -> Result<StatusCode> {
        let connector = self.connector();
        let (mut s, _reused) = connector.get_http_session(peer).await?;
        let mut req = RequestHeader::build("POST", path.as_bytes(), Some(3))?;
        if let Some(host) = host {
            req.insert_header(header::HOST, host)?;
        }
        req.insert_header(header::CONTENT_TYPE, "application/json")?;
        req.insert_header(header::CONTENT_LENGTH, body.len())?;
        s.write_request_header(Box::new(req)).await?;
        s.write_request_body(Bytes::from(body), true).await?;
        s.finish_request_body().await?;
        s.read_response_header().await?;
        let status = s
            .response_header()
            .map(|r| r.status)
            .or_err(ErrorType::InvalidHTTPHeader, "no response header")?;
        // Drain the answer so the connection can be reused.
        while s.read_response_body().await?.is_some() {}
        connector.release_http_session(s, peer, None).await;
        Ok(status)
    }
}

/// Step-up, one method per Pingora phase. [`StepUpProxy`](super::StepUpProxy) calls these
/// around its inner proxy; call them yourself from your own `ProxyHttp` if you prefer (see
/// the [module docs](super)). Cheap to clone.
#[derive(Debug, Clone)]
pub struct StepUpPhases {
    step_up: StepUp,
    large_bodies: LargeBodies,
    notifier: Arc<Notifier>,
}

impl StepUpPhases {
    /// Phases for `step_up`, streaming large candidate bodies.
    pub fn new(step_up: StepUp) -> Self {
        StepUpPhases {
            step_up,
            large_bodies: LargeBodies::default(),
            notifier: Arc::default(),
        }
    }

    /// What to do with candidate bodies over 64 KiB.
    pub fn large_bodies(mut self, large_bodies: LargeBodies) -> Self {
        self.large_bodies = large_bodies;
        self
    }

    /// Options for the connector step-up opens its own upstream connections with (the
    /// acquirer-return notification, and [`StepUpProxy`](super::StepUpProxy)'s direct
    /// exchange), e.g. `ConnectorOptions::from_server_conf(&server.configuration)` for the
    /// server's CA file and pool size. Default: Pingora's defaults.
    pub fn connector_options(mut self, options: ConnectorOptions) -> Self {
        self.notifier = Arc::new(Notifier {
            connector: OnceLock::new(),
            options: Some(options),
        });
        self
    }

    /// The connector step-up opens its own upstream connections with.
    pub(crate) fn connector(&self) -> &Connector {
        self.notifier.connector()
    }

    /// The body of an injected Klarna request read whole in `request_filter`: an exchange
    /// [`StepUpProxy`](super::StepUpProxy) may carry out by itself.
    pub(crate) fn direct_body(&self, ctx: &StepUpCtx) -> Option<Bytes> {
        match (&ctx.req, &ctx.exchange) {
            (Req::Buffered(body), Some(_)) => Some(body.clone()),
            _ => None,
        }
    }

    /// The direct exchange's answer when it is larger than `body_limit`: it passes through
    /// untouched, streamed (chunked unless the upstream gave its length).
    pub(crate) fn direct_too_large(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) {
        self.passed_through(ctx, "answer over the body limit");
        self.passthrough_head(session, head, ctx);
        if !head.headers.contains_key(header::CONTENT_LENGTH) {
            let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
        }
    }

    /// The direct exchange's answer, read whole: decoded and rewritten when it is a 2xx JSON
    /// Klarna answer, else the upstream's bytes untouched. Edits `head` to match (marker,
    /// no stale validators, exact framing is the caller's) and returns the body.
    pub(crate) fn direct_answer(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        raw: Bytes,
        ctx: &mut StepUpCtx,
    ) -> Bytes {
        ctx.response_body_len = Some(raw.len());
        let Some(exchange) = &ctx.exchange else {
            return raw;
        };
        let limit = self.step_up.body_limit();
        let reason = if !self
            .step_up
            .wants_response(exchange, head.status, &head.headers)
        {
            "not a 2xx JSON answer".to_owned()
        } else {
            match crate::decode::decode(head.headers.get(header::CONTENT_ENCODING), &raw, limit) {
                None => "a compressed answer that does not decode within the limit".to_owned(),
                Some(plain) => {
                    let started = Instant::now();
                    let verdict =
                        self.step_up
                            .rewrite_response(exchange, head.status, &head.headers, &plain);
                    ctx.engine_time += started.elapsed();
                    match verdict {
                        ResponseVerdict::Rewritten { body, result } => {
                            ctx.span.in_scope(|| {
                                tracing::debug!(?result, "klarna answer rewritten");
                            });
                            ctx.outcome = Outcome::Rewritten;
                            // Only fails on invalid values; these are constants.
                            let _ = mark_rewritten(head);
                            return Bytes::from(body);
                        }
                        ResponseVerdict::Keep(reason) => reason.to_string(),
                    }
                }
            }
        };
        self.passed_through(ctx, &reason);
        self.passthrough_head(session, head, ctx);
        raw
    }

    /// The engine.
    pub fn step_up(&self) -> &StepUp {
        &self.step_up
    }

    /// `early_request_filter`: classifies the request; for candidates, arms client-facing
    /// compression (it must be on before Pingora's compression module reads
    /// `Accept-Encoding`, which happens between this phase and `request_filter`).
    pub fn early_request_filter(&self, session: &mut Session, ctx: &mut StepUpCtx) {
        let req = session.req_header();
        let candidate = match self.step_up.classify(&req.method, &req.uri, &req.headers) {
            Route::Candidate(candidate) => candidate,
            Route::Return => {
                let resolved = self
                    .step_up
                    .resolve_return(&req.uri, crate::engine::unix_now());
                self.own(ctx, Own::Return(resolved), "acquirer_return");
                return;
            }
            Route::Webhook => return self.own(ctx, Own::Webhook(None), "webhook"),
            Route::Internal => return self.own(ctx, Own::Internal, "webhook_relay_path"),
            _ => return,
        };
        ctx.req = Req::Candidate(candidate);
        ctx.candidate = true;
        ctx.outcome = Outcome::NotKlarna;
        ctx.span = tracing::info_span!(
            "klarna_stepup",
            route = self.step_up.candidate_pattern(candidate),
            payment_request_reference = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
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

    /// Whether `request_filter` needs [`StepUpCtx::set_notify_peer`] first: an acquirer
    /// return with a valid token, and a notification path configured.
    pub fn wants_notify_peer(&self, ctx: &StepUpCtx) -> bool {
        matches!(ctx.own, Own::Return(Ok(_)))
            && ctx.notify_peer.is_none()
            && self.step_up.return_notification().is_some()
    }

    /// `request_filter`: reads a candidate body (up to 64 KiB), asks the engine, and answers
    /// a refusal by itself. Answers the acquirer return (303 or 400) and the payment API's
    /// relay path (404) itself; reads and verifies a webhook (400 when the signature does not
    /// hold). `Ok(true)` means the response was sent: return `Ok(true)` too.
    pub async fn request_filter(&self, session: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        match &ctx.own {
            Own::None => {}
            Own::Internal => return self.refuse(session, ctx, Refusal::not_found()).await,
            Own::Return(_) => return self.acquirer_return(session, ctx).await,
            Own::Webhook(_) => return self.webhook(session, ctx).await,
        }
        let Req::Candidate(candidate) = ctx.req else {
            return Ok(false);
        };
        let limit = self.step_up.body_limit();
        let declared = content_length(&session.req_header().headers);
        if declared.is_some_and(|n| n > limit as u64) {
            return self.refuse(session, ctx, Refusal::too_large(limit)).await;
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
        ctx.request_body_len = Some(body.len());
        match self.rewrite_request(ctx, candidate, &body) {
            RequestVerdict::NotKlarna => {
                // Replayed untouched from the retry buffer.
                ctx.req = Req::Untouched;
                Ok(false)
            }
            RequestVerdict::Refused(r) => self.refuse(session, ctx, r).await,
            RequestVerdict::Injected { body, exchange } => {
                self.start_exchange(session, ctx, exchange);
                ctx.req = Req::Buffered(Bytes::from(body));
                Ok(false)
            }
        }
    }

    /// `upstream_request_filter`: framing of the forwarded body (exact `Content-Length` for
    /// buffered bodies, chunked for streamed ones) and no `Accept-Encoding` for Klarna
    /// exchanges. Runs once per upstream attempt.
    pub fn upstream_request_filter(
        &self,
        upstream_request: &mut RequestHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        match &mut ctx.req {
            Req::Buffered(body) => {
                upstream_request.remove_header(&header::TRANSFER_ENCODING);
                upstream_request.insert_header(header::CONTENT_LENGTH, body.len())?;
            }
            Req::Streaming { prefix, acc, .. } => {
                acc.clear();
                acc.extend_from_slice(prefix);
                upstream_request.remove_header(&header::CONTENT_LENGTH);
                upstream_request.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
            Req::Untouched | Req::Candidate(_) => {}
        }
        if let Own::Webhook(Some(relay)) = &ctx.own {
            let path = self.step_up.webhook_relay_path();
            let uri = http::Uri::try_from(path).or_err(
                ErrorType::InternalError,
                "webhook relay path is not a valid URI",
            )?;
            upstream_request.set_uri(uri);
            for name in relay_headers::ALL {
                upstream_request.remove_header(&name);
            }
            for (name, value) in relay {
                upstream_request.insert_header(name.clone(), value.clone())?;
            }
        }
        if ctx.exchange.is_some() || matches!(ctx.req, Req::Streaming { .. }) {
            // Pingora decompresses the answer only for encodings not listed here.
            upstream_request.remove_header(&header::ACCEPT_ENCODING);
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
                if !end_of_stream {
                    *body = Some(Bytes::new());
                    return Ok(());
                }
                let whole = std::mem::take(acc).freeze();
                ctx.request_body_len = Some(whole.len());
                *body = Some(match self.rewrite_request(ctx, candidate, &whole) {
                    RequestVerdict::NotKlarna => whole,
                    RequestVerdict::Injected { body, exchange } => {
                        ctx.span
                            .record("payment_request_reference", exchange.reference());
                        ctx.exchange = Some(exchange);
                        Bytes::from(body)
                    }
                    RequestVerdict::Refused(r) => {
                        ctx.pending = Some(r);
                        return Error::e_explain(REFUSED, "candidate body refused");
                    }
                });
            }
            Req::Untouched | Req::Candidate(_) => {}
        }
        Ok(())
    }

    /// `upstream_response_filter` (the header Pingora already decompressed): decides whether
    /// the answer to a Klarna exchange is read and rewritten.
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
        let limit = self.step_up.body_limit() as u64;
        let wanted = self.step_up.wants_response(exchange, status, headers)
            && !headers.contains_key(header::CONTENT_ENCODING)
            && content_length(headers).is_none_or(|n| n <= limit);
        if wanted {
            // The engine looks at the answer's Content-Type only: keep that, not a copy of
            // every header.
            let mut kept = HeaderMap::with_capacity(1);
            if let Some(v) = headers.get(header::CONTENT_TYPE) {
                kept.insert(header::CONTENT_TYPE, v.clone());
            }
            ctx.resp = Resp::Buffering {
                status,
                headers: kept,
                acc: BytesMut::with_capacity(content_length(headers).map_or(0, |n| n as usize)),
            };
        } else {
            self.passed_through(ctx, "not a 2xx JSON answer within the limit");
        }
    }

    /// `response_filter`: the client-facing header. For an answer being rewritten: no stale
    /// length or validators, chunked (the header goes out before the body is read), marked
    /// `rewritten`. Otherwise the marker says `passthrough` and compression is left off.
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
            mark_rewritten(response)?;
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
        let Resp::Buffering { acc, .. } = &mut ctx.resp else {
            return;
        };
        if let Some(b) = body.take() {
            acc.extend_from_slice(&b);
        }
        if acc.len() > self.step_up.body_limit() {
            // Too large to be a Klarna answer we rewrite: send what we hold, stream the rest.
            *body = Some(std::mem::take(acc).freeze());
            ctx.resp = Resp::Flushed;
            self.passed_through(ctx, "answer over the body limit");
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
        ctx.response_body_len = Some(raw.len());
        let Some(exchange) = &ctx.exchange else {
            *body = Some(raw);
            return;
        };
        let started = Instant::now();
        let verdict = self
            .step_up
            .rewrite_response(exchange, status, &headers, &raw);
        ctx.engine_time += started.elapsed();
        match verdict {
            ResponseVerdict::Rewritten { body: new, result } => {
                ctx.span.in_scope(|| {
                    tracing::debug!(?result, "klarna answer rewritten");
                });
                ctx.outcome = Outcome::Rewritten;
                *body = Some(Bytes::from(new));
            }
            ResponseVerdict::Keep(reason) => {
                // The header already went out marked `rewritten`: Pingora writes it before
                // any body filter runs. The bytes are the upstream's, untouched.
                self.passed_through(ctx, &reason.to_string());
                *body = Some(raw);
            }
        }
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
                    ctx.span.in_scope(|| {
                        tracing::warn!(error = ?e.etype(), "webhook relay failed");
                    });
                }
                Refusal::webhook_not_accepted()
            }
            None => upstream_refusal(e)?,
        };
        let code = refusal.status.as_u16();
        if session.response_written().is_none() {
            let _ = self.refuse(session, ctx, refusal).await;
        } else {
            ctx.outcome = outcome_of(&refusal);
        }
        Some(code)
    }

    /// `logging`: closes the request's span with its outcome.
    pub fn logging(&self, session: &Session, e: Option<&Error>, ctx: &mut StepUpCtx) {
        if let (
            Some(e),
            Outcome::NotCandidate
            | Outcome::Rewritten
            | Outcome::Passthrough
            | Outcome::NotKlarna
            | Outcome::Relayed,
        ) = (e, ctx.outcome)
        {
            if let Some(r) = upstream_refusal(e) {
                ctx.outcome = outcome_of(&r);
            }
        }
        if !ctx.acts() {
            return;
        }
        let outcome = ctx.outcome;
        let status = session.response_written().map(|r| r.status.as_u16());
        ctx.span.record("outcome", outcome.label());
        ctx.span.in_scope(|| {
            tracing::info!(
                ?outcome,
                status,
                engine_us = ctx.engine_time.as_micros() as u64,
                "request done"
            );
        });
    }

    /// Whether Pingora's error log line for `e` is noise: the webhook 503 that
    /// `response_filter` already answered (logged by step-up itself).
    pub fn suppress_error_log(&self, e: &Error) -> bool {
        e.etype() == &WEBHOOK_ANSWERED
    }

    fn own(&self, ctx: &mut StepUpCtx, own: Own, route: &'static str) {
        ctx.own = own;
        ctx.candidate = true;
        ctx.span = tracing::info_span!(
            "klarna_stepup",
            route,
            payment_request_reference = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
    }

    /// The acquirer return: refuse a bad token, notify the payment API (bounded wait),
    /// redirect.
    async fn acquirer_return(&self, session: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        let redirect = match &ctx.own {
            Own::Return(Ok(r)) => r.clone(),
            Own::Return(Err(r)) => {
                let r = r.clone();
                return self.refuse(session, ctx, r).await;
            }
            _ => return Ok(false),
        };
        ctx.span
            .record("payment_request_reference", redirect.reference.as_str());
        if let Some((path, timeout)) = self.step_up.return_notification() {
            self.notify(session, ctx, &redirect, path, timeout).await;
        }
        ctx.outcome = Outcome::Redirected;
        ctx.span.in_scope(|| {
            tracing::info!(state = redirect.state.as_deref(), "acquirer return");
        });
        write_response(session, redirect.to_response()).await?;
        Ok(true)
    }

    /// Tells the payment API about a return; never waits longer than `timeout`.
    async fn notify(
        &self,
        session: &Session,
        ctx: &mut StepUpCtx,
        redirect: &ReturnRedirect,
        path: &str,
        timeout: Duration,
    ) {
        let Some(peer) = ctx.notify_peer.take() else {
            ctx.span.in_scope(|| {
                tracing::warn!("return notification skipped: no payment API peer");
            });
            return;
        };
        let host = session.req_header().headers.get(header::HOST).cloned();
        let sent = self
            .notifier
            .notify(&peer, path, host, redirect.notification());
        let result = tokio::time::timeout(timeout, sent).await;
        ctx.span.in_scope(|| match result {
            Ok(Ok(status)) if status.is_success() => {}
            Ok(Ok(status)) => {
                tracing::warn!(status = status.as_u16(), "return notification refused")
            }
            Ok(Err(e)) => tracing::warn!(error = ?e.etype(), "return notification failed"),
            Err(_) => tracing::warn!("return notification timed out"),
        });
    }

    /// A Klarna webhook: read the body into the retry buffer, verify it, and let Pingora
    /// relay it (path and headers are set in `upstream_request_filter`).
    async fn webhook(&self, session: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        // The body reaches the upstream from the retry buffer: it must fit.
        let limit = self.step_up.webhook_body_limit().min(RETRY_BUFFER_LIMIT);
        if content_length(&session.req_header().headers).is_some_and(|n| n > limit as u64) {
            return self.refuse(session, ctx, Refusal::too_large(limit)).await;
        }
        let body = match read_retry_buffered(session, limit).await {
            Read::Whole(body) => body,
            Read::Failed => return self.refuse(session, ctx, Refusal::unreadable_body()).await,
            Read::Over(_) => return self.refuse(session, ctx, Refusal::too_large(limit)).await,
        };
        ctx.request_body_len = Some(body.len());
        let started = Instant::now();
        let verified = self
            .step_up
            .verify_webhook(&session.req_header().headers, &body);
        ctx.engine_time += started.elapsed();
        let event = match verified {
            Ok(event) => event,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
        if let Some(reference) = event.reference.as_deref() {
            ctx.span.record("payment_request_reference", reference);
        }
        ctx.span.in_scope(|| {
            tracing::debug!(event_type = event.event_type.as_deref(), "webhook verified");
        });
        let relay = event
            .relay_headers()
            .into_iter()
            .map(|(name, mut value)| {
                value.set_sensitive(true);
                (name, value)
            })
            .collect();
        ctx.own = Own::Webhook(Some(relay));
        ctx.req = Req::Buffered(body);
        Ok(false)
    }

    /// The payment API's answer to a relayed webhook: a 2xx goes to Klarna, anything else
    /// becomes a 503 so that Klarna retries.
    async fn webhook_answer(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        if response.status.is_success() {
            ctx.outcome = Outcome::Relayed;
            ctx.span
                .in_scope(|| tracing::info!(status, "webhook relayed"));
            response.insert_header(MARKER_HEADER, "relayed")?;
            return Ok(());
        }
        ctx.span.in_scope(|| {
            tracing::warn!(status, "webhook not accepted by the payment API");
        });
        // Pingora writes this header with the upstream's framing, and an upstream answer
        // without a body ends with its header (no body filter runs): answer the 503 here,
        // whole, and stop the upstream answer with an error.
        let refusal = Refusal::webhook_not_accepted();
        ctx.outcome = outcome_of(&refusal);
        session.set_keepalive(None);
        respond(session, &refusal).await?;
        Error::e_explain(WEBHOOK_ANSWERED, "payment API did not accept the webhook")
    }

    fn rewrite_request(
        &self,
        ctx: &mut StepUpCtx,
        candidate: Candidate,
        body: &[u8],
    ) -> RequestVerdict {
        let started = Instant::now();
        let verdict = self.step_up.rewrite_request(candidate, body);
        ctx.engine_time += started.elapsed();
        verdict
    }

    fn start_exchange(&self, session: &mut Session, ctx: &mut StepUpCtx, exchange: Exchange) {
        ctx.span
            .record("payment_request_reference", exchange.reference());
        ctx.outcome = Outcome::Passthrough;
        // Must be on before Pingora parses the upstream request (after
        // upstream_request_filter); it decodes the answer before our response filters.
        session.upstream_compression.adjust_decompression(true);
        ctx.exchange = Some(exchange);
    }

    fn start_streaming(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
        candidate: Candidate,
        prefix: Bytes,
    ) {
        ctx.span.in_scope(|| {
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

    fn passed_through(&self, ctx: &mut StepUpCtx, reason: &str) {
        ctx.outcome = Outcome::Passthrough;
        ctx.span.in_scope(|| {
            tracing::warn!(reason, "klarna answer passed through untouched");
        });
    }

    /// The head of an answer to a Klarna exchange that goes out untouched: marked
    /// `passthrough`, and not compressed by us (the upstream's encoding, if any, stays).
    fn passthrough_head(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) {
        self.compression_off(session, ctx);
        // Only fails on invalid values; these are constants.
        let _ = head.insert_header(MARKER_HEADER, "passthrough");
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
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
        refusal: Refusal,
    ) -> Result<bool> {
        ctx.outcome = outcome_of(&refusal);
        ctx.span.in_scope(|| {
            tracing::info!(
                code = refusal.code,
                param = refusal.param.as_deref(),
                "request refused"
            );
        });
        self.compression_off(session, ctx);
        if !session.is_body_done() {
            // The rest of the body is not read: the connection cannot carry another request.
            session.set_keepalive(None);
        }
        respond(session, &refusal).await?;
        Ok(true)
    }
}

/// What [`read_retry_buffered`] read.
enum Read {
    /// The whole body.
    Whole(Bytes),
    /// More than the bound: what was read so far (the rest is still to come).
    Over(Bytes),
    /// The client's body could not be read.
    Failed,
}

/// Reads the request body into Pingora's retry buffer (turned on first: only then do the
/// bytes read here reach the upstream, replayed into `request_body_filter`), stopping once
/// more than `stop_over` bytes are in. A body that arrives in one chunk is not copied.
async fn read_retry_buffered(session: &mut Session, stop_over: usize) -> Read {
    session.enable_retry_buffering();
    let mut first: Option<Bytes> = None;
    let mut acc = BytesMut::new();
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => return Read::Failed,
        };
        let read = match first.take() {
            None if acc.is_empty() => {
                let n = chunk.len();
                first = Some(chunk);
                n
            }
            held => {
                if let Some(held) = held {
                    acc.extend_from_slice(&held);
                }
                acc.extend_from_slice(&chunk);
                acc.len()
            }
        };
        if read > stop_over {
            return Read::Over(first.unwrap_or_else(|| acc.freeze()));
        }
    }
    Read::Whole(first.unwrap_or_else(|| acc.freeze()))
}

/// The head of a rewritten answer: JSON, marked `rewritten`, without the upstream's length
/// or validators (the caller sets the framing).
fn mark_rewritten(head: &mut ResponseHeader) -> Result<()> {
    for name in STALE_RESPONSE_HEADERS {
        // A lookup is cheaper than Pingora's removal (it also edits its case map).
        if head.headers.contains_key(&name) {
            head.remove_header(&name);
        }
    }
    head.insert_header(header::CONTENT_TYPE, "application/json")?;
    head.insert_header(MARKER_HEADER, "rewritten")
}

fn outcome_of(r: &Refusal) -> Outcome {
    if r.status.is_server_error() {
        Outcome::UpstreamError(r.code)
    } else {
        Outcome::Refused(r.code)
    }
}

/// The 502/504 answer for a proxy error that the upstream caused: a timeout gives
/// [`Refusal::upstream_timeout`], any other upstream failure
/// [`Refusal::upstream_unreachable`]. `None` for errors of the client or of the proxy itself.
pub fn upstream_refusal(e: &Error) -> Option<Refusal> {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(Refusal::upstream_timeout())
        }
        _ if *e.esource() == ErrorSource::Upstream => Some(Refusal::upstream_unreachable()),
        _ => None,
    }
}

/// Writes `refusal` as the complete response, with the same head and bytes as the tower
/// adapter ([`Refusal::to_response`]).
pub async fn respond(session: &mut Session, refusal: &Refusal) -> Result<()> {
    write_response(session, refusal.to_response()).await
}

/// Writes `res` as the complete response.
async fn write_response(session: &mut Session, res: http::Response<Vec<u8>>) -> Result<()> {
    let mut head = ResponseHeader::build(res.status(), Some(res.headers().len()))?;
    for (name, value) in res.headers() {
        head.append_header(name.clone(), value.clone())?;
    }
    let body = res.into_body();
    if body.is_empty() {
        session.write_response_header(Box::new(head), true).await?;
    } else {
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
