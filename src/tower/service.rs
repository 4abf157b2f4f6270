//! [`KlarnaStepUp`]: the middleware service, an I/O loop over step-up's
//! [`Driver`]: it reads and replaces bodies and heads as the driver says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;
use tracing::Instrument;

use super::mount::{Local, Mount};
use super::{ResponseFuture, StepUpBody};
use crate::budget::BufferBudget;
use crate::driver::{Action, Driver, Forward, Holding, Notified, ResponseAction, ResponseHead};

/// What goes to the wrapped service.
enum Sending {
    /// The body the driver gives (the caller's bytes, or its rewrite).
    Forward(Forward),
    /// The caller's body untouched: what was read, then the rest.
    Untouched(Bytes),
}
use crate::observe::{Observer, Record};
use crate::{Refusal, StepUp};

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

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let local = self.mount.local(&parts.uri);
        let uri = match &local {
            Local::Unmounted => Some(&parts.uri),
            Local::Under(uri) => Some(uri),
            Local::Outside => None,
        };
        let Some(driver) = Driver::start(&self.step_up, &parts.method, uri, &mut parts.headers)
        else {
            let req = Request::from_parts(parts, StepUpBody::new(body));
            return ResponseFuture::passthrough(self.inner.call(req), self.observer.clone());
        };
        let span = driver.span().clone();
        let mut exchange = Exchange {
            driver,
            inner: self.take_ready(),
            budget: self.budget.clone(),
            mount: self.mount.clone(),
        };
        let req = Request::from_parts(parts, body);
        let observer = self.observer.clone();
        // One future, moved whole into its box: it is large (the driver, the exchange's
        // state), and each wrapper around it would be one more copy per request.
        let fut = async move {
            let res = exchange.run(req).await?;
            // The route's end: its record closed and handed to the observer.
            let record = super::future::finish(&mut exchange.driver, &res);
            if let Some(observe) = &observer {
                observe(record);
            }
            Ok(res)
        };
        ResponseFuture::step_up(Box::pin(fut.instrument(span)))
    }
}

type Answer<B, E> = Result<Response<StepUpBody<B>>, E>;

/// One request step-up acts on: an I/O loop over its [`Driver`], which decides.
struct Exchange<S> {
    driver: Driver,
    inner: S,
    budget: BufferBudget,
    mount: Mount,
}

/// Step-up's own answer.
fn answer<B>(a: &crate::driver::Answer) -> Response<StepUpBody<B>> {
    a.to_response().map(StepUpBody::full)
}

impl<S> Exchange<S> {
    /// Reads the request as the driver asks, forwards it, and hands the answer back.
    async fn run<ReqB, ResB>(&mut self, req: Request<ReqB>) -> Answer<ResB, S::Error>
    where
        S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
        ReqB: Body<Data = Bytes>,
        ReqB::Error: Into<BoxError>,
        ResB: Body<Data = Bytes>,
    {
        let (mut parts, body) = req.into_parts();
        // On the heap: a body step-up lets go of (`shadow`) goes on after what was read.
        let mut body = Box::pin(body);
        let d = &mut self.driver;
        let mut action = d.begin(&self.budget, Holding::Whole);
        let forward = loop {
            action = match action {
                Action::ReadBody { .. } | Action::ReadMore => match body.frame().await {
                    None => d.on_request_body(Bytes::new(), true),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => d.on_request_body(data, false),
                        Err(_) => Action::ReadMore,
                    },
                    Some(Err(e)) => d.on_request_body_error(timed_out(&*e.into())),
                },
                Action::Notify {
                    request, timeout, ..
                } => {
                    let told = notify(
                        d,
                        &mut self.inner,
                        request,
                        timeout,
                        &parts.uri,
                        &self.mount,
                    );
                    match told.await {
                        Told::Answered(status, body) => d.on_notified(Notified::Answered {
                            status,
                            body: body.as_deref(),
                        }),
                        Told::Failed => d.on_notified(Notified::Failed),
                        Told::TimedOut => d.on_notified(Notified::TimedOut),
                    }
                }
                Action::Forward(forward) => break Sending::Forward(forward),
                Action::Release(read) => break Sending::Untouched(read),
                Action::PassThrough => break Sending::Untouched(Bytes::new()),
                Action::Answer(a) => return Ok(answer(&a)),
                other => unreachable!("{other:?}: the tower adapter holds whole bodies"),
            };
        };
        d.upstream_request_head(&mut parts.headers);
        if let Some(path) = d.upstream_path() {
            parts.uri = with_path(&parts.uri, &self.mount.outer(path));
        }
        let (body, taken, timeout) = match forward {
            Sending::Forward(forward) => {
                let timeout = forward.timeout();
                let (body, taken) = StepUpBody::watched(forward.into_body());
                (body, Some(taken), timeout)
            }
            // Untouched: what was read, then the rest as it comes.
            Sending::Untouched(read) => (StepUpBody::prefixed(read, body), None, None),
        };
        let call = self.inner.call(Request::from_parts(parts, body));
        let called = match timeout {
            None => Some(call.await),
            // Bounded: Klarna must hear back (and retry) even if the payment API hangs.
            Some(t) => tokio::time::timeout(t, call).await.ok(),
        };
        let res = match called {
            Some(Ok(res)) => res,
            Some(Err(e)) => match d.on_upstream_error(None, true) {
                Some(a) => return Ok(answer(&a)),
                None => return Err(e),
            },
            None => {
                let timed_out = Refusal::upstream_timeout();
                let a = d.on_upstream_error(Some(timed_out.clone()), true);
                return Ok(answer(&a.unwrap_or(timed_out.into())));
            }
        };
        Ok(self.respond(res, taken.as_deref()).await)
    }

    /// The answer, as the driver has it passed on, read, rewritten or replaced.
    async fn respond<B>(
        &mut self,
        res: Response<B>,
        taken: Option<&AtomicBool>,
    ) -> Response<StepUpBody<B>>
    where
        B: Body<Data = Bytes>,
    {
        let d = &mut self.driver;
        let (mut parts, body) = res.into_parts();
        let head = ResponseHead::new(parts.status, &parts.headers)
            .length(body.size_hint().exact())
            .proxy_error(parts.extensions.get::<Refusal>())
            .inner_answered(taken.is_some_and(|t| !t.load(Ordering::Relaxed)));
        match d.on_response_head(head) {
            ResponseAction::Read { .. } => {}
            ResponseAction::Answer(a) => return answer(&a),
            _ => {
                d.response_head(&mut parts.headers);
                return Response::from_parts(parts, StepUpBody::new(body));
            }
        }
        // Pinned on the heap: if the answer turns out too large, the rest of it is passed on.
        let mut body = Box::pin(body);
        loop {
            let action = match body.frame().await {
                None => d.on_response_body(Bytes::new(), true),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => d.on_response_body(data, false),
                    Err(_) => continue,
                },
                Some(Err(_)) => {
                    let failed = Refusal::upstream_unreachable();
                    let a = d.on_upstream_error(Some(failed.clone()), true);
                    return answer(&a.unwrap_or(failed.into()));
                }
            };
            let body = match action {
                ResponseAction::ReadMore | ResponseAction::Pass => continue,
                ResponseAction::Send(bytes) => StepUpBody::full(bytes),
                ResponseAction::SendThenStream(prefix) => StepUpBody::prefixed(prefix, body),
                ResponseAction::Answer(a) => return answer(&a),
                other => unreachable!("{other:?}: the tower adapter holds the head"),
            };
            d.response_head(&mut parts.headers);
            if let Some(status) = d.answer_status() {
                parts.status = status;
            }
            return Response::from_parts(parts, body);
        }
    }
}

/// What came of a return notification.
enum Told {
    Answered(http::StatusCode, Option<Bytes>),
    Failed,
    TimedOut,
}

/// Sends the acquirer-return notification through the wrapped service (its path under the
/// mount), waiting for its answer (its body included) at most `timeout`.
async fn notify<S, ReqB, ResB>(
    driver: &Driver,
    inner: &mut S,
    request: Request<Vec<u8>>,
    timeout: std::time::Duration,
    uri: &http::Uri,
    mount: &Mount,
) -> Told
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let (mut parts, body) = request.into_parts();
    parts.uri = with_path(uri, &mount.outer(parts.uri.path()));
    let notify = Request::from_parts(parts, StepUpBody::full(body));
    let answered = tokio::time::timeout(timeout, async {
        match inner.call(notify).await {
            Ok(res) => {
                let status = res.status();
                let body = match driver.reads_notification_answer(status) {
                    Some(limit) => read_small(res.into_body(), limit).await,
                    None => None,
                };
                Told::Answered(status, body)
            }
            Err(_) => Told::Failed,
        }
    })
    .await;
    answered.unwrap_or(Told::TimedOut)
}

/// `uri` with its path (and query) replaced by `path`; scheme and authority kept.
fn with_path(uri: &http::Uri, path: &str) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| http::Uri::from_static("/"))
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
