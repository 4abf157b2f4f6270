//! [`KlarnaStepUp`]: the middleware service. Framing only: it reads and replaces bodies and
//! heads as the engine says.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use tracing::Instrument;

use super::mount::{Local, Mount};
use super::{ResponseFuture, StepUpBody};
use crate::budget::{BufferBudget, Held};
use crate::engine::{self, unix_now, Candidate, Exchange};
use crate::observe::{Notified, Observer, Outcome, Record};
use crate::{Refusal, RequestVerdict, ResponsePlan, ResponseVerdict, Route, StepUp};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Klarna step-up in front of a payment API service: see [the module docs](crate::tower).
#[derive(Clone)]
pub struct KlarnaStepUp<S> {
    inner: S,
    step_up: StepUp,
    observer: Option<Observer>,
    budget: BufferBudget,
    mount: Mount,
}

impl<S: std::fmt::Debug> std::fmt::Debug for KlarnaStepUp<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlarnaStepUp")
            .field("inner", &self.inner)
            .field("step_up", &self.step_up)
            .finish_non_exhaustive()
    }
}

impl<S> KlarnaStepUp<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, step_up: StepUp) -> Self {
        KlarnaStepUp {
            inner,
            step_up,
            observer: None,
            budget: BufferBudget::default(),
            mount: Mount::default(),
        }
    }

    /// The path prefix the wrapped service is mounted under, when the layer wraps a router
    /// from outside its mount point (an axum `Router::nest("/api", payments)` wrapped as a
    /// whole): step-up's routes (candidate routes, the acquirer return, the webhook path and
    /// the payment API's relay and notification paths) are then read under it, so
    /// `POST /api/payments` is the candidate route `POST /payments`. The prefix is matched
    /// without regard to ASCII case and must be followed by `/`, `?` or the end; requests
    /// outside it are not step-up's and stream through. Requests keep their whole path on the
    /// way in; the relay and notification requests step-up makes get the prefix. A layer
    /// inside the nested router needs none: axum hands it the path without the prefix. See
    /// the [module docs](crate::tower) for both.
    pub fn mounted_at(mut self, prefix: &str) -> Self {
        self.mount = Mount::new(prefix);
        self
    }

    pub(super) fn with_mount(mut self, mount: Mount) -> Self {
        self.mount = mount;
        self
    }

    /// The process-wide budget of buffered candidate bytes (default 64 MiB, this service's
    /// own and its clones'): past it, new candidates get 503 JSON `overloaded` with
    /// `Retry-After`; candidates already accepted go on.
    pub fn buffer_budget(mut self, budget: BufferBudget) -> Self {
        self.budget = budget;
        self
    }

    /// A [`KlarnaStepUpLayer`](super::KlarnaStepUpLayer) for `step_up`.
    pub fn layer(step_up: StepUp) -> super::KlarnaStepUpLayer {
        super::KlarnaStepUpLayer::new(step_up)
    }

    /// Calls `observer` once per request, when its response head is ready (for rewritten
    /// answers: when the rewrite is done), with step-up's [`Record`] of it: the place for
    /// metrics. The same record the Pingora adapter's `observe` gets.
    pub fn observe(mut self, observer: impl Fn(&Record) + Send + Sync + 'static) -> Self {
        self.observer = Some(std::sync::Arc::new(observer));
        self
    }

    pub(super) fn with_observer(mut self, observer: Option<Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> KlarnaStepUp<S> {
    /// The service that was polled ready, for a call made after the body is read; a clone
    /// takes its place (see tower's docs on `Service`).
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for KlarnaStepUp<S>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<StepUpBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let step_up = self.step_up.clone();
        let observer = self.observer.clone();
        // x-klarna-stepup-* headers are step-up's alone: none comes in from outside.
        engine::strip_forged_headers(req.headers_mut());
        let route = match self.mount.local(req.uri()) {
            Local::Unmounted => step_up.classify(req.method(), req.uri(), req.headers()),
            Local::Under(uri) => step_up.classify(req.method(), &uri, req.headers()),
            Local::Outside => Route::PassThrough,
        };
        match route {
            Route::Candidate(candidate) => {
                let pattern = step_up.candidate_pattern(candidate);
                let mut record = Record::acting(pattern, Outcome::NotKlarna);
                record.candidate(&candidate);
                let span = record.span().clone();
                let inner = self.take_ready();
                let budget = self.budget.clone();
                let fut = exchange(step_up, inner, candidate, req, record, budget);
                ResponseFuture::step_up(Box::pin(observed(fut, observer).instrument(span)))
            }
            Route::Return => {
                let record = Record::acting("acquirer_return", Outcome::NotCandidate);
                let span = record.span().clone();
                let mount = self.mount.clone();
                let fut = acquirer_return(step_up, self.take_ready(), req, record, mount);
                ResponseFuture::step_up(Box::pin(observed(fut, observer).instrument(span)))
            }
            Route::Webhook => {
                let record = Record::acting("webhook", Outcome::NotCandidate);
                let span = record.span().clone();
                let mount = self.mount.clone();
                let fut = webhook(step_up, self.take_ready(), req, record, mount);
                ResponseFuture::step_up(Box::pin(observed(fut, observer).instrument(span)))
            }
            Route::Refused(refused) => {
                // Answered at once: nothing is read, nothing goes upstream.
                let pattern = step_up.candidate_pattern(refused.candidate());
                let mut record = Record::acting(pattern, Outcome::NotKlarna);
                let res = refuse(&mut record, &refused.refusal());
                let fut = std::future::ready(Ok((record, res)));
                ResponseFuture::step_up(Box::pin(observed(fut, observer)))
            }
            Route::RelayPathFromOutside => {
                // Answered at once: only verified webhooks reach the payment API's relay path.
                let mut record = Record::acting("webhook_relay_path", Outcome::NotCandidate);
                let res = refuse(&mut record, &Refusal::not_found());
                let fut = std::future::ready(Ok((record, res)));
                ResponseFuture::step_up(Box::pin(observed(fut, observer)))
            }
            _ => ResponseFuture::passthrough(self.inner.call(req.map(StepUpBody::new)), observer),
        }
    }
}

type Answer<B, E> = Result<(Record, Response<StepUpBody<B>>), E>;

/// Runs a step-up route's future, then closes its record and hands it to the observer.
async fn observed<B, E>(
    route: impl std::future::Future<Output = Answer<B, E>>,
    observer: Option<Observer>,
) -> Result<Response<StepUpBody<B>>, E> {
    let (mut record, res) = route.await?;
    if let Some(r) = res.extensions().get::<Refusal>() {
        record.failed_upstream(r);
    }
    record.done(Some(res.status().as_u16()));
    if let Some(observe) = &observer {
        observe(&record);
    }
    Ok(res)
}

/// The acquirer return: verify the token, tell the payment API (bounded wait), redirect.
async fn acquirer_return<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    req: Request<ReqB>,
    mut record: Record,
    mount: Mount,
) -> Answer<ResB, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let resolved = match mount.local(req.uri()) {
        Local::Under(local) => step_up.resolve_return(&local, unix_now()),
        _ => step_up.resolve_return(req.uri(), unix_now()),
    };
    let mut redirect = match resolved {
        Ok(r) => r,
        Err(r) => {
            let res = refuse(&mut record, &r);
            return Ok((record, res));
        }
    };
    let host = req.headers().get(http::header::HOST);
    let notification = step_up.return_notification(req.method(), &redirect, host, unix_now());
    if let Some((notify, timeout)) = notification {
        let (mut parts, body) = notify.into_parts();
        parts.uri = with_path(req.uri(), &mount.outer(parts.uri.path()));
        let notify = Request::from_parts(parts, StepUpBody::full(body));
        // The redirect waits for the payment API's answer at most `timeout`, its body
        // included: the state it confirms is what the partner's page gets.
        let answered = tokio::time::timeout(timeout, async {
            match inner.call(notify).await {
                Ok(res) if res.status().is_success() => {
                    let limit = engine::NOTIFICATION_ANSWER_LIMIT;
                    (Notified::Accepted, read_small(res.into_body(), limit).await)
                }
                Ok(res) => (Notified::Refused(res.status().as_u16()), None),
                Err(_) => (Notified::Failed, None),
            }
        })
        .await;
        let (notified, answer) = answered.unwrap_or((Notified::TimedOut, None));
        record.notified(notified);
        redirect = match step_up.confirm_return(&redirect, answer.as_deref()) {
            Ok(r) => r,
            Err(r) => {
                let res = refuse(&mut record, &r);
                return Ok((record, res));
            }
        };
    }
    record.redirected(&redirect);
    Ok((record, redirect.to_response().map(StepUpBody::full)))
}

/// A Klarna webhook: verify, relay the original bytes, and acknowledge only what the payment
/// API accepted; anything else is a 503 so that Klarna retries.
async fn webhook<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    req: Request<ReqB>,
    mut record: Record,
    mount: Mount,
) -> Answer<ResB, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, step_up.webhook_body_limit(), None).await {
        Ok(body) => body,
        Err(r) => {
            let res = refuse(&mut record, &r);
            return Ok((record, res));
        }
    };
    record.read_request(body.len());
    let verified = record.timed(|| step_up.verify_webhook(&parts.headers, &body));
    let event = match verified {
        Ok(event) => event,
        Err(r) => {
            let res = refuse(&mut record, &r);
            return Ok((record, res));
        }
    };
    record.webhook_verified(&event);
    engine::relay_request(&mut parts.headers, &event);
    parts.uri = with_path(&parts.uri, &mount.outer(step_up.webhook_relay_path()));
    // Bounded: Klarna must hear back (and retry on a 503) even if the payment API hangs.
    let relayed = tokio::time::timeout(
        step_up.webhook_relay_timeout(),
        inner.call(Request::from_parts(parts, StepUpBody::full(body))),
    )
    .await;
    let res = match relayed {
        Ok(Ok(res)) => match step_up.webhook_accepted(res.status()) {
            Ok(()) => {
                record.relayed(res.status().as_u16());
                let mut res = res.map(StepUpBody::new);
                engine::mark_relayed(res.headers_mut());
                res
            }
            Err(r) => {
                record.not_relayed(Some(res.status().as_u16()));
                r.to_response().map(StepUpBody::full)
            }
        },
        Ok(Err(_)) | Err(_) => {
            record.not_relayed(None);
            Refusal::webhook_not_accepted()
                .to_response()
                .map(StepUpBody::full)
        }
    };
    Ok((record, res))
}

/// `uri` with its path (and query) replaced by `path`; scheme and authority kept.
fn with_path(uri: &http::Uri, path: &str) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| http::Uri::from_static("/"))
}

/// One candidate exchange: read the body, ask the engine, call the payment API, rewrite.
async fn exchange<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    candidate: Candidate,
    req: Request<ReqB>,
    mut record: Record,
    budget: BufferBudget,
) -> Answer<ResB, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    let (mut parts, body) = req.into_parts();
    // Charged by the bytes it holds, as they arrive, declared length or not: a slow client
    // holding little takes little of the budget, and one without a `Content-Length` cannot
    // go past it. Its answer is counted as it arrives.
    let Some(mut held) = budget.admit(0) else {
        let res = refuse(&mut record, &Refusal::overloaded());
        return Ok((record, res));
    };
    let read = read_body(&parts.headers, body, step_up.body_limit(), Some(&mut held)).await;
    let body = match read {
        Ok(body) => body,
        Err(r) => {
            let res = refuse(&mut record, &r);
            return Ok((record, res));
        }
    };
    record.read_request(body.len());
    let verdict = record.timed(|| step_up.rewrite_request(candidate, &body, unix_now()));
    // The partner's bytes are not needed once injected: one copy in memory, not two.
    let body = match verdict {
        RequestVerdict::Injected { .. } => {
            drop(body);
            Bytes::new()
        }
        _ => body,
    };
    let (body, exchange) = match verdict {
        RequestVerdict::NotKlarna => {
            let (body, taken) = StepUpBody::watched(body);
            let res = inner.call(Request::from_parts(parts, body)).await?;
            if answered_by_inner(&taken, &res) {
                record.answered_by_inner();
            }
            return Ok((record, res.map(StepUpBody::new)));
        }
        RequestVerdict::Refused(r) => {
            let res = refuse(&mut record, &r);
            return Ok((record, res));
        }
        RequestVerdict::Injected { body, exchange } => {
            record.injected(&exchange);
            (body, exchange)
        }
    };
    engine::injected_request(&mut parts.headers, body.len());
    let (body, taken) = StepUpBody::watched(Bytes::from(body));
    let res = inner.call(Request::from_parts(parts, body)).await?;
    if let Some(r) = res.extensions().get::<Refusal>().cloned() {
        // The proxy's own 502/504 (see `upstream_refusal`): not Klarna's answer, so neither
        // rewritten nor marked `passthrough`; it says its own code.
        record.refused(&r);
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(
            engine::MARKER_HEADER,
            http::HeaderValue::from_static(r.code().as_str()),
        );
        return Ok((record, Response::from_parts(parts, StepUpBody::new(body))));
    }
    if answered_by_inner(&taken, &res) {
        // The inner service's own answer (say an authentication 401): nothing reached the
        // payment API, there is nothing of Klarna's to read; untouched and unmarked.
        record.answered_by_inner();
        return Ok((record, res.map(StepUpBody::new)));
    }
    let res = rewrite_response(&step_up, &exchange, &mut record, res, &mut held).await;
    Ok((record, res))
}

/// The answer to an injected request: read (bounded by the body limit) and rewritten when
/// the engine says so; otherwise, or when it turns out larger, passed on untouched.
async fn rewrite_response<B>(
    step_up: &StepUp,
    exchange: &Exchange,
    record: &mut Record,
    res: Response<B>,
    held: &mut Held,
) -> Response<StepUpBody<B>>
where
    B: Body<Data = Bytes>,
{
    let (mut parts, body) = res.into_parts();
    record.answer_head(&parts.headers);
    if let ResponsePlan::Keep(reason) =
        step_up.response_plan(exchange, parts.status, &parts.headers)
    {
        record.kept(reason);
        engine::mark_passthrough(&mut parts.headers);
        let length = body.size_hint().exact();
        if !step_up.reads_error(parts.status, &parts.headers, length) {
            return Response::from_parts(parts, StepUpBody::new(body));
        }
        // A small Klarna error: read for its error_id (logs, record), passed on untouched.
        let mut body = Box::pin(body);
        let mut raw = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return refuse(record, &Refusal::upstream_unreachable());
            };
            if let Ok(data) = frame.into_data() {
                raw.extend_from_slice(&data);
            }
            if raw.len() > step_up.body_limit() {
                // Longer than it said: not read further, passed on as it comes.
                return Response::from_parts(parts, StepUpBody::prefixed(raw.freeze(), body));
            }
        }
        record.klarna_error(step_up.klarna_error_id(&raw));
        return Response::from_parts(parts, StepUpBody::full(raw.freeze()));
    }
    let limit = step_up.body_limit();
    // Pinned on the heap: if the answer turns out too large, the rest of it is passed on.
    let mut body = Box::pin(body);
    let mut raw = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let r = Refusal::upstream_unreachable();
            return refuse(record, &r);
        };
        if let Ok(data) = frame.into_data() {
            raw.extend_from_slice(&data);
            held.grow_to(raw.len());
        }
        if raw.len() > limit {
            // Too large to be an answer we rewrite: what was read, then the rest, untouched.
            record.read_response(raw.len());
            record.kept(crate::KeepReason::TooLarge);
            engine::mark_passthrough(&mut parts.headers);
            return Response::from_parts(parts, StepUpBody::prefixed(raw.freeze(), body));
        }
    }
    let raw = raw.freeze();
    record.read_response(raw.len());
    let verdict =
        record.timed(|| step_up.rewrite_response(exchange, parts.status, &parts.headers, &raw));
    match verdict {
        ResponseVerdict::Rewritten {
            body,
            status,
            result,
            payment_request_id,
        } => {
            record.rewritten(result, payment_request_id);
            parts.status = status;
            engine::mark_rewritten(&mut parts.headers);
            parts
                .headers
                .insert(CONTENT_LENGTH, http::HeaderValue::from(body.len()));
            Response::from_parts(parts, StepUpBody::full(body))
        }
        ResponseVerdict::Keep(reason) => {
            record.kept(reason);
            engine::mark_passthrough(&mut parts.headers);
            Response::from_parts(parts, StepUpBody::full(raw))
        }
    }
}

/// The body of a small answer, when it reads to its end within `limit` bytes.
async fn read_small<B: Body<Data = Bytes>>(body: B, limit: usize) -> Option<Bytes> {
    let mut body = std::pin::pin!(body);
    let mut raw = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            raw.extend_from_slice(&data);
        }
        if raw.len() > limit {
            return None;
        }
    }
    Some(raw.freeze())
}

/// Reads a request body within `limit`: 413 beyond it (declared or counted), 408 when the
/// body's error is a timeout (an `io::Error` of kind `TimedOut` among its causes, as a body
/// read timeout of the server gives), 400 when it cannot be read otherwise. With `held`, the
/// bytes held are charged to the buffer budget as they come: 503 `overloaded` when it is
/// spent.
async fn read_body<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    mut held: Option<&mut Held>,
) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if engine::content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(Refusal::too_large(limit));
    }
    // Frame by frame into one buffer of the declared size: the body is held once, not
    // once in frames and again when joined. (Of a large buffer, only the pages written to
    // are resident: what is charged is what arrived.)
    let declared = engine::content_length(headers).map_or(0, |n| n as usize);
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) => {
                let e: BoxError = e.into();
                return Err(if timed_out(&*e) {
                    Refusal::request_timeout()
                } else {
                    Refusal::unreadable_body()
                });
            }
        };
        let len = first.as_ref().map_or(0, Bytes::len) + joined.len() + data.len();
        if len > limit {
            return Err(Refusal::too_large(limit));
        }
        if let Some(held) = held.as_deref_mut() {
            if !held.try_grow_to(len) {
                return Err(Refusal::overloaded());
            }
        }
        // A body in one frame (the usual case) is taken as it is, without a copy.
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            prev => {
                if joined.is_empty() {
                    joined.reserve(declared.max(len));
                }
                if let Some(prev) = prev {
                    joined.extend_from_slice(&prev);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}

/// Whether `e` or one of its causes satisfies `test`.
pub(crate) fn any_cause(
    e: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if test(c) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether a timeout is among the causes of `e`.
pub(super) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    any_cause(e, |c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// Whether the inner service answered without taking the body it was handed (`taken`):
/// its own answer, not the payment API's. A proxy's own error answer (it carries its
/// [`Refusal`]) is not: that request failed upstream.
fn answered_by_inner<B>(taken: &std::sync::atomic::AtomicBool, res: &Response<B>) -> bool {
    !taken.load(Ordering::Relaxed) && res.extensions().get::<Refusal>().is_none()
}

/// Step-up's own answer, recorded.
fn refuse<B>(record: &mut Record, r: &Refusal) -> Response<StepUpBody<B>> {
    record.refused(r);
    r.to_response().map(StepUpBody::full)
}
