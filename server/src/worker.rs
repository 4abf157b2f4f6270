//! A worker thread: the tower layer on hyper, on a single-threaded tokio runtime with its own
//! listening socket (`SO_REUSEPORT`: the kernel spreads connections over the workers) and its
//! own connection pool to the payment API. A request stays on the thread that accepted it: no
//! work stealing, no cross-thread wake-ups.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::admin::Health;
use super::balance::{self, Balancer};
use super::config::ProxyConfig;
use super::idle::{Activity, InFlight, ResetBudget, Seen, Tracked};
use super::metrics::{Closed, Metrics};
use super::park::{Lot, Parked};
use super::pool::{Busy, OpenConnections, Pool, Pooled, PURGE_EVERY};
use super::timed::{BodyTimeout, Timed};
use super::upstream::{Dialer, UpstreamTimeout};
use klarna_stepup::engine::{check_request_head, one_content_length, strip_hop_by_hop, HeadLimits};
use klarna_stepup::tower::{KlarnaStepUp, StepUpBody};
use klarna_stepup::{BufferBudget, Record, Refusal, StepUp};

use crate::telemetry::Telemetry;

/// A request's body as the layer and the client see it: each wait bounded.
type ReqBody = StepUpBody<Timed<Tracked<Incoming>>>;
/// The payment API's answer as the layer sees it.
type UpBody = StepUpBody<Pooled>;
/// The answer as the layer gives it.
type ResBody = StepUpBody<UpBody>;
/// The answer as the client gets it, holding its half of the exchange's [`InFlight`].
type ClientBody = Tracked<ResBody>;

/// The payment API's side of the stack: the request pointed at the upstream, hop-by-hop
/// headers off both ways, failures as step-up's JSON 502/504 (408 when it was the client's
/// body that did not come).
#[derive(Clone)]
struct Forward(Arc<ForwardParts>);

/// One allocation shared by the clones the layer makes per request.
struct ForwardParts {
    pool: Arc<Pool>,
    balancer: Arc<Balancer>,
    metrics: Option<Metrics>,
}

impl std::ops::Deref for Forward {
    type Target = ForwardParts;
    fn deref(&self) -> &ForwardParts {
        &self.0
    }
}

impl Forward {
    /// No upstream address known at all: 502 at once.
    fn unreachable(&self) -> Response<UpBody> {
        upstream_failed(&self.metrics, Refusal::upstream_unreachable())
    }
}

/// The proxy's own answer `r`, marked as such for the layer (it keeps its code in
/// `x-klarna-stepup` and the record says so).
fn refused(r: Refusal) -> Response<UpBody> {
    let mut res = r.to_response().map(StepUpBody::full);
    res.extensions_mut().insert(r);
    res
}

/// [`refused`] for what the payment API did (or did not), counted as its failure.
fn upstream_failed(metrics: &Option<Metrics>, r: Refusal) -> Response<UpBody> {
    if let Some(m) = metrics {
        m.upstream_failed(r.code().as_str());
    }
    refused(r)
}

impl tower_service::Service<Request<ReqBody>> for Forward {
    type Response = Response<UpBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        strip_hop_by_hop(req.headers_mut());
        // A request target with an authority (HTTP/2's, or an absolute URL) names the host,
        // whatever `Host` says (RFC 9112 section 3.2.2, RFC 9113 section 8.3.1): the
        // upstream request, in origin form, carries it as its `Host`.
        // (One with user information is refused before: see `Front::call`.)
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        // The backend for this request (its address is the pool's key).
        let Some(backend) = balance::pick(&self.balancer) else {
            let res = self.unreachable();
            return Box::pin(std::future::ready(Ok(res)));
        };
        // An HTTP/1.1 request has a `Host` (RFC 9112 section 3.2; a client's in HTTP/1.1 was
        // checked to): an HTTP/1.0 client's without one (or an HTTP/2 client's without
        // `:authority`) names the payment API's address it goes to.
        if req.version() != http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(&backend.to_string()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        // Origin-form on the upstream connection.
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::from(target);
        *req.version_mut() = http::Version::HTTP_11;
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        // The pool's future is built where it runs, not moved in.
        Box::pin(async move {
            let since = metrics.as_ref().map(|_| Instant::now());
            let res = match pool.send(backend, req).await {
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        // No request it gets asks for an upgrade (`Upgrade` is hop-by-hop):
                        // a 101 is an answer the proxy cannot carry (RFC 9110 section
                        // 15.2.2; RFC 9113 section 8.6 has none).
                        return Ok(upstream_failed(
                            &metrics,
                            Refusal::upstream_unreadable_answer(),
                        ));
                    }
                    if let (Some(m), Some(since)) = (&metrics, since) {
                        m.upstream_answered(parts.status.as_u16(), since.elapsed());
                    }
                    strip_hop_by_hop(&mut parts.headers);
                    one_content_length(&mut parts.headers);
                    // The proxy's own version, not the payment API's (RFC 9110 section
                    // 6.2): hyper answers each client in the version it asked in.
                    parts.version = http::Version::HTTP_11;
                    Response::from_parts(parts, StepUpBody::new(body))
                }
                Err(e) if BodyTimeout::caused(&*e) => refused(Refusal::request_timeout()),
                Err(e) if Busy::caused(&*e) => refused(Refusal::overloaded()),
                Err(e) => upstream_failed(
                    &metrics,
                    if UpstreamTimeout::caused(&*e) {
                        Refusal::upstream_timeout()
                    } else if crate::client::Error::unreadable(&*e) {
                        Refusal::upstream_unreadable_answer()
                    } else {
                        Refusal::upstream_unreachable()
                    },
                ),
            };
            Ok(res)
        })
    }
}

/// hyper's HTTP/1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// What hyper calls per request: the head checked (RFC 9112 and the configured bounds),
/// then step-up around the payment API.
#[derive(Clone)]
struct Front {
    stack: KlarnaStepUp<Forward>,
    limits: HeadLimits,
    body_timeout: Duration,
    body_deadline: Duration,
    /// While it drains, HTTP/1 answers say `Connection: close`: kept-alive clients leave
    /// after their answer rather than meet the close of an idle connection.
    health: Arc<Health>,
    /// An HTTP/1 connection's exchanges, told when each begins and ends (see
    /// [`serve_http1`]).
    activity: Option<Arc<Activity>>,
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<ClientBody>;
    type Error = Infallible;
    type Future = FrontFuture<
        <KlarnaStepUp<Forward> as tower_service::Service<Request<Timed<Tracked<Incoming>>>>>::Future,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < http::Version::HTTP_2;
        let (reading, in_flight) = match &self.activity {
            Some(a) => {
                let (reading, answering) = a.begin();
                // An HTTP/2 answer is watched for a client that takes none of it, and for
                // one that gives it up (see `Activity::reset`).
                let answering = if http1 {
                    answering
                } else {
                    answering.watched()
                };
                (Some(reading), Some(answering))
            }
            None => (None, None),
        };
        let (mut parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + parts.uri.authority().map_or(0, |a| a.as_str().len());
        let checked = if parts.method == http::Method::CONNECT {
            // Forwarded, it would reach the payment API as `CONNECT /` (origin form) and
            // its 2xx would turn the client's connection into a tunnel the proxy does not
            // carry: refused, as nginx does.
            Err(Refusal::connect_not_proxied())
        } else if parts
            .uri
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            // `http://user:pass@host/`: user information is an error in a request target
            // (RFC 9110 section 4.2.4; RFC 9113 section 8.3.1), and would have become part
            // of the `Host` the payment API reads.
            Err(Refusal::bad_request_head(
                "Host",
                "the request target has user information",
            ))
        } else {
            check_request_head(&mut parts.headers, parts.version, target, self.limits)
        };
        if let Err(r) = checked {
            // The body is not read: the connection cannot carry another request (after a
            // `CONNECT`, what follows may be a tunnel's bytes).
            let mut res = r.to_response().map(StepUpBody::full);
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return FrontFuture::Answered {
                res: Some(res.map(|b| Tracked::new(b, in_flight))),
            };
        }
        // What the HTTP/2 flood bound credits (see `flood`); nothing an HTTP/1 one reads.
        if let (Some(a), false) = (&self.activity, http1) {
            a.took();
        }
        let req = Request::from_parts(
            parts,
            Timed::new(
                Tracked::new(body, reading),
                self.body_timeout,
                self.body_deadline,
            ),
        );
        // `Forward` is always ready, and so is the layer over it.
        let mut stack = self.stack.clone();
        FrontFuture::Stack {
            fut: tower_service::Service::call(&mut stack, req),
            draining: http1.then(|| self.health.clone()),
            in_flight,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Front`]'s answer: at once, or the stack's.
    #[project = FrontProj]
    enum FrontFuture<F> {
        Answered { res: Option<Response<ClientBody>> },
        Stack { #[pin] fut: F, draining: Option<Arc<Health>>, in_flight: Option<InFlight> },
    }
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
{
    type Output = Result<Response<ClientBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FrontProj::Answered { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            FrontProj::Stack {
                fut,
                draining,
                in_flight,
            } => {
                let mut res = match std::task::ready!(fut.poll(cx)) {
                    Ok(res) => res,
                    Err(e) => match e {},
                };
                if let Some(h) = draining {
                    if h.draining.load(Ordering::Relaxed) {
                        res.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                let in_flight = in_flight.take();
                Poll::Ready(Ok(res.map(|b| Tracked::new(b, in_flight))))
            }
        }
    }
}

/// Everything a worker needs, shared by all of them.
pub(super) struct Shared {
    step_up: StepUp,
    dialer: Dialer,
    balancer: Arc<Balancer>,
    metrics: Option<Metrics>,
    telemetry: Option<Telemetry>,
    budget: BufferBudget,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    upstream_connections: Arc<OpenConnections>,
    limits: HeadLimits,
    body_timeout: Duration,
    body_deadline: Duration,
    idle_timeout: Duration,
    grace: Duration,
    /// `[server.tls]`'s HTTP/2 limits: streams open at once, and the reset budget.
    h2_max_streams: u32,
    h2_resets: ResetBudget,
    pub(super) health: Arc<Health>,
}

impl Shared {
    /// What the workers of the server `config` describes share.
    pub(super) fn new(
        config: &ProxyConfig,
        dialer: Dialer,
        balancer: Arc<Balancer>,
        tls: Option<TlsAcceptor>,
        metrics: bool,
        telemetry: Option<Telemetry>,
    ) -> Self {
        let s = &config.server;
        let max_connections = super::limits::open_files_for(s.max_connections);
        let upstream_connections = OpenConnections::new(max_connections, max_connections);
        Shared {
            step_up: config.step_up.clone(),
            dialer,
            balancer: balancer.clone(),
            metrics: metrics.then(|| {
                let partners = &config.step_up.config().partners;
                Metrics::register(
                    partners
                        .enabled()
                        .then(|| partners.entries.iter().map(|e| e.id.clone()).collect()),
                )
            }),
            telemetry,
            budget: BufferBudget::new(s.buffer_budget_bytes),
            tls,
            connections: Arc::new(Semaphore::new(max_connections)),
            upstream_connections: upstream_connections.clone(),
            limits: HeadLimits {
                max_bytes: s.max_header_bytes,
                max_count: s.max_headers,
            },
            body_timeout: Duration::from_millis(s.request_body_timeout_ms),
            body_deadline: Duration::from_millis(s.request_body_deadline_ms),
            idle_timeout: Duration::from_secs(s.idle_timeout_secs),
            grace: Duration::from_secs(s.grace_period_secs),
            h2_max_streams: s
                .tls
                .as_ref()
                .map_or_else(super::config::default_h2_max_streams, |t| t.h2_max_streams),
            h2_resets: s
                .tls
                .as_ref()
                .map_or_else(ResetBudget::default, |t| ResetBudget {
                    burst: t.h2_reset_budget,
                    every: Duration::from_millis(t.h2_reset_refill_ms),
                }),
            health: Arc::new(Health::new(s.threads, balancer, upstream_connections)),
        }
    }

    /// A worker's own stack: its own connection pool over the shared dialer (purged on the
    /// worker's runtime while it lasts).
    fn front(&self) -> Front {
        let pool = Pool::new(self.dialer.clone(), self.upstream_connections.clone());
        tokio::spawn(Pool::purge_every(Arc::downgrade(&pool), PURGE_EVERY));
        let forward = Forward(Arc::new(ForwardParts {
            pool,
            balancer: self.balancer.clone(),
            metrics: self.metrics.clone(),
        }));
        // The engine through a reference count of the worker's own: a clone would share its
        // count, which every request touches, with the other workers' cores.
        let mut stack =
            KlarnaStepUp::new(forward, self.step_up.fork()).buffer_budget(self.budget.clone());
        let (metrics, telemetry) = (self.metrics.clone(), self.telemetry.clone());
        if metrics.is_some() || telemetry.is_some() {
            stack = stack.observe(move |r: &Record| {
                if let Some(m) = &metrics {
                    m.record(r);
                }
                if let Some(t) = &telemetry {
                    t.record(r);
                }
            });
        }
        Front {
            stack,
            limits: self.limits,
            body_timeout: self.body_timeout,
            body_deadline: self.body_deadline,
            health: self.health.clone(),
            activity: None,
        }
    }
}

/// One worker thread's life: accept until told to stop, then let the connections finish
/// (at most the grace period). A worker has one listening socket, or several after a
/// hand-over from an instance with more threads (see `upgrade`).
pub(super) async fn worker(
    listeners: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let listeners = match listeners
        .into_iter()
        .map(tokio::net::TcpListener::from_std)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot register the listener"),
    };
    let mut next = 0;
    let conn = match Conn::new(&shared) {
        Ok(c) => Arc::new(c),
        Err(e) => return tracing::error!(error = %e, "cannot watch parked connections"),
    };
    shared.health.workers_up.fetch_add(1, Ordering::Relaxed);
    // Every connection is watched: told to finish when the worker stops, and waited for.
    let graceful = GracefulShutdown::new();
    // What the worker's parked connections are resumed with.
    let resumed = stop.clone();
    loop {
        let accepted = tending(&conn, &resumed, &graceful, async {
            tokio::select! {
                biased;
                _ = stop.changed() => None,
                accepted = accept_any(&listeners, &mut next) => Some(accepted),
            }
        });
        let stream = match accepted.await {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                let pause = tokio::time::sleep(Duration::from_millis(50));
                tending(&conn, &resumed, &graceful, pause).await;
                continue;
            }
        };
        // The place is taken after the accept, not before: a worker waiting on an empty
        // socket must not hold a place that a connection queued on another worker's socket
        // needs (with the cap reached, each worker holds at most one accepted connection
        // back until a place is free).
        // A connection accepted is answered: should the stop come while it waits for its
        // place, it is served without one (the drain answers it), and the loop ends after.
        let place = tending(&conn, &resumed, &graceful, async {
            tokio::select! {
                biased;
                p = shared.connections.clone().acquire_owned() => (p.ok(), false),
                _ = stop.changed() => (None, true),
            }
        });
        let (permit, stopping) = place.await;
        let _ = stream.set_nodelay(true);
        conn.spawn(stream, permit, stop.clone(), graceful.watcher());
        if stopping {
            break;
        }
    }
    // No new connections; answers on the open ones from now on close them. A parked
    // connection whose request comes as the drain begins is served (and closed after it);
    // the others close.
    drop(listeners);
    let grace_over = tokio::time::Instant::now() + shared.grace;
    if !conn.lot.is_empty() {
        let late = tokio::time::sleep(LATE_FIRST_BYTES);
        tending(&conn, &resumed, &graceful, late).await;
    }
    conn.lot.close();
    if tokio::time::timeout_at(grace_over, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; stopping with requests in flight");
    }
}

/// `wait`, the worker's parked connections tended meanwhile (the readable ones served with
/// `stop`, the ones past their deadline closed): whatever the worker waits for (a new
/// connection, a place for one, a pause), its parked connections keep their deadlines and
/// give back their places.
async fn tending<T>(
    conn: &Arc<Conn>,
    stop: &watch::Receiver<bool>,
    graceful: &GracefulShutdown,
    wait: impl Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    std::future::poll_fn(|cx| {
        while let Poll::Ready(parked) = conn.lot.poll_ready(cx) {
            conn.resume(parked, stop.clone(), graceful.watcher());
        }
        wait.as_mut().poll(cx)
    })
    .await
}

/// How a worker serves each connection: its stack, hyper's HTTP/1 and HTTP/2 settings, the
/// listener's TLS, its parked connections.
struct Conn {
    front: Front,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    /// `idle_timeout_secs`: the head's bound, from the connection's start or the last
    /// answer's end, and the TLS handshake's.
    idle_timeout: Duration,
    /// Plain HTTP/1 connections idle between requests, held by their socket alone.
    lot: Lot,
    /// Where connections closed for what their client did are counted.
    metrics: Option<Metrics>,
    /// How many streams an HTTP/2 client may reset soon after opening them.
    h2_resets: ResetBudget,
}

impl Conn {
    /// A worker's, on its runtime.
    fn new(shared: &Shared) -> std::io::Result<Self> {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // The head's bound (from the connection's start or the previous answer's end
            // to a complete head) is kept by the connection's task (see `serve_http1`):
            // hyper's own makes a timer for every request.
            .header_read_timeout(None::<Duration>)
            // hyper's own size bound sits above ours, so that ours answers first, with JSON;
            // beyond twice ours, hyper answers 431 itself.
            .max_buf_size((shared.limits.max_bytes * 2).max(8192));
        // Its header count: without this call 100 (parsed into an uninitialised array on
        // the stack); set only for more, as it costs an initialised array of that size per
        // request (about 1% of the CPU, measured). Over hyper's count: hyper's own 431,
        // without JSON.
        if shared.limits.max_count > HYPER_MAX_HEADERS {
            http1.max_headers(shared.limits.max_count * 2);
        }
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(shared.limits.max_bytes * 2).unwrap_or(u32::MAX))
            // What one connection can make the proxy hold is its streams times what each
            // holds: an answer's bytes waiting for the client (hyper's 400 KB by default),
            // and the payment API's chunk read meanwhile (at most the payment API
            // connection's read buffer, see `pool`). A client that opened every stream and
            // read nothing made hyper's defaults hold some 750 KB a stream, 150 MB a
            // connection; now about 200 KB a stream.
            .max_concurrent_streams(shared.h2_max_streams)
            .max_send_buf_size(H2_SEND_BUFFER);
        Ok(Conn {
            front: shared.front(),
            http1,
            http2,
            tls: shared.tls.clone(),
            idle_timeout: shared.idle_timeout,
            lot: Lot::new(shared.idle_timeout)?,
            metrics: shared.metrics.clone(),
            h2_resets: shared.h2_resets,
        })
    }

    /// Spawns the task that serves `stream` to its end, holding its place (`permit`) until
    /// then: [`serve_http1`], or [`Conn::serve_tls`] (the handshake, rustls' state, HTTP/2:
    /// a task type of its own).
    fn spawn(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        permit: Option<OwnedSemaphorePermit>,
        stop: watch::Receiver<bool>,
        watcher: Watcher,
    ) {
        let Some(acceptor) = &self.tls else {
            let io = Seen::new(stream, Activity::new());
            tokio::spawn(serve_http1(self.clone(), io, stop, watcher, permit));
            return;
        };
        tokio::spawn(
            self.clone()
                .serve_tls(acceptor.clone(), stream, stop, watcher, permit),
        );
    }

    /// Serves a parked connection that turned readable, its head due as it was.
    fn resume(self: &Arc<Self>, parked: Parked, stop: watch::Receiver<bool>, watcher: Watcher) {
        let Ok(stream) = tokio::net::TcpStream::from_std(parked.stream) else {
            return;
        };
        let io = Seen::new(stream, Activity::resumed(parked.quiet_since));
        let permit = parked.permit;
        tokio::spawn(serve_http1(self.clone(), io, stop, watcher, permit));
    }

    /// How long a plain HTTP/1 connection sits idle after an answer before its task lets go
    /// of hyper's connection: [`PARK_AFTER`], at most half the idle timeout.
    fn park_after(&self) -> Duration {
        PARK_AFTER.min(self.idle_timeout / 2)
    }

    /// How long after an answer an idle plain HTTP/1 connection, hyper's connection let go
    /// of, moves to the worker's [`Lot`]: [`LOT_AFTER`], at most half the idle timeout
    /// (and not before [`Conn::park_after`]).
    fn lot_after(&self) -> Duration {
        LOT_AFTER.min(self.idle_timeout / 2).max(self.park_after())
    }

    /// When a served HTTP/1 connection is looked at next: at `at` (a [`Conn::park_after`]
    /// from now without one), or sooner when its head is due ([`Activity::head_due`]).
    fn next_look(&self, activity: &Activity, at: Option<Instant>) -> tokio::time::Instant {
        let at = at.unwrap_or_else(|| Instant::now() + self.park_after());
        let due = activity.head_due(self.idle_timeout);
        due.map_or(at, |due| due.min(at)).into()
    }

    /// Counts a connection closed for what its client did.
    fn closed(&self, why: Closed) {
        if let Some(m) = &self.metrics {
            m.client_closed(why);
        }
    }

    /// The worker's service for one connection, its exchanges told to `activity`.
    fn front_for(&self, activity: &Arc<Activity>) -> Front {
        Front {
            activity: Some(activity.clone()),
            ..self.front.clone()
        }
    }

    /// A new hyper connection serving `io`, its exchanges told to `io`'s [`Activity`].
    fn http1_connection<T: Transport>(
        &self,
        io: Seen<T>,
    ) -> hyper::server::conn::http1::Connection<TokioIo<Seen<T>>, Front> {
        let front = self.front_for(&io.activity);
        self.http1.serve_connection(TokioIo::new(io), front)
    }

    /// A connection let go of, served as the worker stops: the time a connection that has
    /// sent nothing yet gets to send a request (the lot's, for a parked one), then closed.
    fn late_first_bytes<T: Transport>(
        &self,
        io: Seen<T>,
        watcher: Watcher,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let reads = io.activity.reads();
        let activity = io.activity.clone();
        let served = self.http1_connection(io);
        let idle_timeout = self.idle_timeout;
        Box::pin(async move {
            let _permit = permit;
            drain(served, activity, reads, watcher, idle_timeout).await;
        })
    }

    /// Serves one TLS connection to its end.
    async fn serve_tls(
        self: Arc<Self>,
        acceptor: TlsAcceptor,
        stream: tokio::net::TcpStream,
        stop: watch::Receiver<bool>,
        watcher: Watcher,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let Ok(Ok(stream)) = tokio::time::timeout(self.idle_timeout, acceptor.accept(stream)).await
        else {
            return;
        };
        let activity = Activity::with_budget(self.h2_resets);
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            let front = self.front_for(&activity);
            let io = TokioIo::new(Seen::counting_frames(stream, activity.clone()));
            let conn = self.http2.serve_connection(io, front);
            serve_h2(Box::new(conn), stop, activity, watcher, permit, &self).await;
        } else {
            // As a plain connection, but in this task while idle (rustls' state stays).
            serve_http1(self, Seen::new(stream, activity), stop, watcher, permit).await;
        }
    }
}

/// The most of an answer an HTTP/2 stream holds for the client beyond what the socket took.
const H2_SEND_BUFFER: usize = 64 << 10;

/// How long a plain HTTP/1 connection sits idle after an answer before its task lets go of
/// hyper's connection (see [`Conn::park_after`]).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a plain HTTP/1 connection sits idle after an answer before its socket moves to
/// the worker's lot (see [`Conn::lot_after`]).
const LOT_AFTER: Duration = Duration::from_secs(10);

/// What an HTTP/1 connection's task needs of its transport to let go of hyper's connection
/// while the client is idle (see [`serve_http1`]): plain TCP, or TLS over it.
trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// Ready once the client has sent something (or closed, or failed).
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// The socket alone, for the worker's [`Lot`], when nothing else of the connection needs
    /// keeping; else the transport back.
    fn into_socket(self) -> Result<tokio::net::TcpStream, Self>
    where
        Self: Sized;

    /// Closes an idle connection.
    fn close(self)
    where
        Self: Sized,
    {
    }
}

impl Transport for tokio::net::TcpStream {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_read_ready(cx).map(drop)
    }

    fn into_socket(self) -> Result<tokio::net::TcpStream, Self> {
        Ok(self)
    }
}

/// rustls' state (keys, sequence numbers) is the connection's own: it stays with its task.
impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (tcp, tls) = self.get_ref();
        // Decrypted bytes not read yet, or the client's close_notify: sent already. (hyper
        // lets go only once a read found nothing, so neither is expected here.)
        if !tls.wants_read() {
            return Poll::Ready(());
        }
        tcp.poll_read_ready(cx).map(drop)
    }

    fn into_socket(self) -> Result<tokio::net::TcpStream, Self> {
        Err(self)
    }

    /// With its `close_notify` first, if the socket takes it at once (it is idle: nothing
    /// else waits to be sent), so that the client reads a clean end.
    fn close(mut self) {
        let (tcp, tls) = self.get_mut();
        tls.send_close_notify();
        let _ = tls.write_tls(&mut TryWrite(tcp));
    }
}

/// A socket as [`std::io::Write`], without waiting: what it does not take at once is not sent.
struct TryWrite<'a>(&'a tokio::net::TcpStream);

impl std::io::Write for TryWrite<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `io`'s socket alone, if its transport can be reduced to it (see [`Transport`]).
fn socket_alone<T: Transport>(io: Seen<T>) -> Result<tokio::net::TcpStream, Seen<T>> {
    let Seen {
        io,
        unread,
        activity,
        frames,
    } = io;
    io.into_socket().map_err(|io| Seen {
        io,
        unread,
        activity,
        frames,
    })
}

/// Serves an HTTP/1 connection, plain or TLS, to its end (once the worker stops, see
/// [`drain`]).
///
/// An idle connection's memory would be its task's state and what the task holds: hyper's
/// connection keeps two buffers and its state (about 12 KB) for as long as it lives. So
/// once the client has sent nothing for [`Conn::park_after`] since its last exchange ended
/// (its request's body and its answer's both let go of), the task lets go of hyper's
/// connection (see [`crate::idle`]) and waits on the socket alone; a request that comes is
/// served by a new hyper connection. Idle until [`Conn::lot_after`], a plain connection parks
/// its socket in the worker's [`Lot`] and ends. When the socket turns readable, the worker
/// serves it with a new task (its head due by the same deadline as before, the exchange's
/// end plus the idle timeout: see [`Activity::resumed`]); when that passes, or the worker
/// stops, it closes (as hyper closes its idle connections). A TLS connection waits in its
/// task until then (see [`Transport`]); when the worker stops, it gets the time a
/// connection that has sent nothing yet gets to send a request (see [`drain`]).
///
/// hyper's connection, polled once more, is told to shut down and polled once without the
/// shutdown: an idle one ends at once and hands back the socket and any bytes it read and
/// did not parse (served at once by a new one, the socket not parked); one that does not end
/// at once was in an exchange after all, finishes it as told (closing after it) and is not
/// let go.
///
/// The same look, once a second while hyper serves, closes a connection whose client has
/// taken none of its answer for the idle timeout (see [`Activity::stalled`]).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice in its state"
)]
fn serve_http1<T: Transport>(
    conn: Arc<Conn>,
    mut io: Seen<T>,
    mut stop: watch::Receiver<bool>,
    watcher: Watcher,
    permit: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = ()> + Send {
    // An `async` block rather than an `async fn`: an `async fn` keeps its arguments twice in
    // its state, as it received them and as its locals.
    async move {
        let _ = &permit;
        let activity = io.activity.clone();
        // One of each for the task's whole life: what an idle connection costs is their size.
        let check = tokio::time::sleep(conn.park_after());
        // The stop is waited for by one receiver and looked at through the other: polling
        // the wait at every wake-up costs a lock, looking costs a load.
        let stopping = stop.clone();
        let stopped = async move {
            if !*stop.borrow_and_update() {
                // An error: the worker is gone, as good as stopped.
                let _ = stop.changed().await;
            }
        };
        tokio::pin!(check, stopped);
        loop {
            // What this hyper connection reads, the drain looks for.
            let reads = activity.reads();
            let mut served = Box::new(conn.http1_connection(io));
            // The next look: whether it went idle, whether the head came in time, whether the
            // client stopped reading.
            check.as_mut().reset(conn.next_look(&activity, None));
            let mut parkable = true;
            // Whether `check` and `stopped` were polled since they were set: they then hold
            // this task's waker, and are only looked at (a poll at every wake-up costs more
            // than the rest of the loop).
            let (mut armed, mut waiting) = (false, false);
            let idle_since = loop {
                let woke = std::future::poll_fn(|cx| {
                    if Pin::new(&mut *served).poll(cx).is_ready() {
                        return Poll::Ready(Woke::Ended);
                    }
                    if !waiting || stopping.has_changed().unwrap_or(true) {
                        waiting = true;
                        if stopped.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::Stopped);
                        }
                    }
                    if !armed {
                        armed = true;
                        if check.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Woke::Look);
                        }
                    } else if check.is_elapsed() {
                        return Poll::Ready(Woke::Look);
                    }
                    Poll::Pending
                });
                match woke.await {
                    Woke::Ended => return,
                    Woke::Stopped => break None,
                    Woke::Look => armed = false,
                }
                if activity.stalled(Instant::now(), conn.idle_timeout) {
                    // The client took none of its answer for the idle timeout (it stopped
                    // reading): closed, as nginx's `send_timeout` closes it.
                    conn.closed(Closed::Stalled);
                    return;
                }
                if activity
                    .head_due(conn.idle_timeout)
                    .is_some_and(|due| Instant::now() >= due)
                {
                    // No complete head within the idle timeout of the connection's start or
                    // the last answer's end: a client sending nothing, or a head a few bytes
                    // at a time (closed without a word, as hyper's own timer closed it).
                    return;
                }
                if !parkable {
                    // Closing after its exchange: still looked at, for a client that stops
                    // reading.
                    check.as_mut().reset(conn.next_look(&activity, None));
                    continue;
                }
                match activity.idle_since(Instant::now(), conn.park_after()) {
                    Err(at) => check.as_mut().reset(conn.next_look(&activity, Some(at))),
                    Ok(_) => {
                        // hyper polled once more first: whatever it has not seen yet (a
                        // request's body given up, which closes its reading) it sees now,
                        // before it is asked to let go.
                        let again =
                            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *served).poll(cx)));
                        if again.await.is_ready() {
                            return;
                        }
                        let at = match activity.idle_since(Instant::now(), conn.park_after()) {
                            Ok(at) => at,
                            Err(at) => {
                                check.as_mut().reset(conn.next_look(&activity, Some(at)));
                                continue;
                            }
                        };
                        Pin::new(&mut *served).graceful_shutdown();
                        let once = std::future::poll_fn(|cx| {
                            Poll::Ready(served.poll_without_shutdown(cx))
                        });
                        match once.await {
                            Poll::Ready(Ok(())) => break Some(at),
                            Poll::Ready(Err(_)) => return,
                            // Not idle after all: it closes after its exchange.
                            Poll::Pending => parkable = false,
                        }
                    }
                }
            };
            let Some(idle_since) = idle_since else {
                // The drain's state (its timer, the watched connection) on the heap too.
                let idle = conn.idle_timeout;
                return Box::pin(drain(*served, activity, reads, watcher, idle)).await;
            };
            // The rest of hyper's connection (its service, and the box it was in) goes here.
            let hyper::server::conn::http1::Parts {
                io: parked,
                read_buf,
                ..
            } = unbox(served).into_parts();
            io = parked.into_inner();
            // The next head is due an idle timeout after `idle_since` (what
            // `Activity::head_due` says of an idle connection).
            if read_buf.is_empty() {
                drop(read_buf);
                // The task waits on the socket a while: a client that comes back soon is
                // served without the moves to the lot and back (two system calls each way,
                // the task's state and tokio's registration made again). Then, or when the
                // worker stops (the lot answers a request that comes as it does), a plain
                // connection's socket goes to the lot alone, this task's state with it; a
                // TLS connection waits on until its deadline.
                check
                    .as_mut()
                    .reset((idle_since + conn.idle_timeout.min(conn.lot_after())).into());
                loop {
                    let woke = std::future::poll_fn(|cx| {
                        if io.io.poll_sent(cx).is_ready() {
                            Poll::Ready(Woke::Ended)
                        } else if stopped.as_mut().poll(cx).is_ready() {
                            Poll::Ready(Woke::Stopped)
                        } else if check.as_mut().poll(cx).is_ready() {
                            Poll::Ready(Woke::Look)
                        } else {
                            Poll::Pending
                        }
                    });
                    let stopping = match woke.await {
                        Woke::Ended => break,
                        Woke::Stopped => true,
                        Woke::Look => false,
                    };
                    if Instant::now() >= idle_since + conn.idle_timeout {
                        return io.io.close();
                    }
                    io = match socket_alone(io) {
                        Ok(socket) => return conn.lot.park(socket, permit, idle_since),
                        Err(io) => io,
                    };
                    if stopping {
                        // In a task of its own: this one's state stays the size of a plain
                        // connection's (the worker waits for it as for this one).
                        tokio::spawn(conn.late_first_bytes(io, watcher, permit));
                        return;
                    }
                    check
                        .as_mut()
                        .reset((idle_since + conn.idle_timeout).into());
                }
            } else {
                // hyper waits for bytes only once it has read all of `unread`.
                debug_assert!(io.unread.is_empty());
                io.unread = read_buf;
            }
        }
    }
}

/// How long a connection that has sent nothing yet when the worker stops may still take to
/// send its first bytes.
const LATE_FIRST_BYTES: Duration = Duration::from_millis(250);

/// Serves an HTTP/2 connection to its end.
///
/// Bounded as an HTTP/1 connection is, by the idle timeout: once nothing has been in flight
/// for it, from the connection's start or its last exchange's end (what else the client
/// sends, PINGs, SETTINGS, window updates, does not count; see [`Activity::quiet_since`]),
/// the client is told to go away (GOAWAY: a request it sent meanwhile is still answered),
/// and the connection closes once it has, or once nothing has been in flight for
/// [`GOAWAY_GRACE`] since (a client that has not sent its preface yet, or does not answer
/// the GOAWAY's PING); a client that has taken nothing of what was written for the idle
/// timeout is closed at once, as an HTTP/1 one is, and so is one that has taken nothing of
/// one of its answers for as long (it waits for the client's flow-control window; see
/// [`Activity::next_epoch`]), though the client may still read the socket and take others.
///
/// A client that resets streams past its budget (see [`Activity::reset`]) is closed at once,
/// and so is one whose frames are a flood (see `flood`: its transport ends it).
/// Each close for what the client did is counted in the worker's metrics.
///
/// When the worker stops, the client is told to go away at once (after [`LATE_FIRST_BYTES`]
/// if it has sent nothing yet, as in [`drain`]), and the connection closes as above: what
/// is in flight is finished, a client that does not answer the GOAWAY's PING does not hold
/// the worker's shutdown up.
async fn serve_h2<C: GracefulConnection + Unpin>(
    mut conn: Box<C>,
    mut stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
    watcher: Watcher,
    _permit: Option<OwnedSemaphorePermit>,
    served: &Conn,
) {
    let idle_timeout = served.idle_timeout;
    // Held until the connection ends: the worker's shutdown waits for it.
    let _watcher = watcher;
    // The first look after a second: a request's answer may wait for the client by then.
    let look = tokio::time::sleep(PARK_AFTER.min(idle_timeout));
    tokio::pin!(look);
    // Whether the worker stops.
    let mut stopping = false;
    // Since when the client has been told to go away.
    let mut going_away = None;
    // When the next epoch begins (see `Activity::next_epoch`).
    let mut epoch_ends = Instant::now() + idle_timeout;
    loop {
        tokio::select! {
            biased;
            _ = &mut *conn => {
                if activity.flooded() {
                    // See `flood`: ended by its transport, as nginx ends it.
                    tracing::warn!(
                        "closed an HTTP/2 connection whose client sent frames that carry no request, past what its requests allow"
                    );
                    served.closed(Closed::Flood);
                }
                return;
            }
            () = activity.too_many_resets() => {
                // The rapid reset (see `Activity::reset`): closed, as Varnish closes it;
                // the streams it has in flight are its own.
                tracing::warn!(
                    budget = served.h2_resets.burst,
                    refill_ms = served.h2_resets.every.as_millis() as u64,
                    "closed an HTTP/2 connection whose client reset more streams soon after opening them than its budget allows (server.tls.h2_reset_budget)"
                );
                served.closed(Closed::ResetStreams);
                return;
            }
            _ = stop.wait_for(|stopped| *stopped), if !stopping => {
                stopping = true;
                if activity.reads() == 0 {
                    // Sent nothing yet: the time to send its first bytes (see `drain`).
                    look.as_mut().reset((Instant::now() + LATE_FIRST_BYTES).into());
                    continue;
                }
            }
            () = &mut look => {}
        }
        let now = Instant::now();
        if activity.stalled(now, idle_timeout) {
            served.closed(Closed::Stalled);
            return;
        }
        if now >= epoch_ends {
            if !activity.next_epoch() {
                // An answer has waited for the client for the idle timeout at least, though
                // the socket would take it (the client gives it no flow-control window).
                served.closed(Closed::Stalled);
                return;
            }
            epoch_ends = now + idle_timeout;
        }
        let blocked = activity.blocked_since().is_some();
        // The next look: when the quiet would have lasted long enough, or, while an exchange
        // is in flight or writes wait, in a second (whether the client stopped reading).
        let soon = now + PARK_AFTER.min(idle_timeout);
        let next = match (activity.quiet_since(), going_away) {
            (quiet, None) if stopping || quiet.is_some_and(|at| now >= at + idle_timeout) => {
                GracefulConnection::graceful_shutdown(Pin::new(&mut *conn));
                going_away = Some(now);
                now + GOAWAY_GRACE
            }
            (Some(at), None) => at + idle_timeout,
            // Not while writes wait: the end of an answer the client still reads (one it
            // asked for as the GOAWAY went out), until it stops reading.
            (Some(at), Some(since)) if now >= at.max(since) + GOAWAY_GRACE && !blocked => return,
            (Some(at), Some(since)) => at.max(since) + GOAWAY_GRACE,
            (None, _) => soon,
        };
        let next = if blocked { next.min(soon) } else { next };
        look.as_mut().reset(next.into());
    }
}

/// How long an HTTP/2 connection told to go away for its idle timeout is kept once nothing
/// is in flight (see [`serve_h2`]): a round trip for the GOAWAY's PING, with room. (hyper
/// names the last stream it takes only once the PING is answered: a client over a second
/// away whose request crosses the first GOAWAY finds the connection closed without it.)
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Why [`serve_http1`]'s connection woke it.
enum Woke {
    /// hyper's connection ended (or, while it is let go of, the client sent something).
    Ended,
    /// The worker stops.
    Stopped,
    /// Time to look whether it went idle, or whether the head came in time.
    Look,
}

/// `b`'s content, its box freed at once (a moved-out box is freed only at the end of its
/// scope).
#[allow(clippy::boxed_local, reason = "the point: the box is freed here")]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Serves an HTTP/1 connection once the worker stops, until it has finished the answer in
/// progress (with `Connection: close`); `conn` began when `activity` had counted `reads`.
///
/// Told to shut down, hyper closes at once a connection it has read nothing from. So that a
/// request sent as the drain begins (its connection accepted, its bytes on the way or not
/// read yet) is answered rather than cut off, a connection that has sent nothing yet (see
/// [`Seen`]) gets [`LATE_FIRST_BYTES`] to send them before hyper is told. Then hyper-util's
/// graceful shutdown tells it (`watcher`: the worker's [`GracefulShutdown`], which also
/// waits for every connection); a connection is watched only from then on, as
/// `GracefulConnection` is sealed and cannot be wrapped to wait for the first bytes itself.
/// A head still not complete `idle_timeout` after the connection's start or its last
/// answer's end closes it, as while it was served (see [`Activity::head_due`]).
async fn drain<C: GracefulConnection + Unpin>(
    mut conn: C,
    activity: Arc<Activity>,
    reads: u32,
    watcher: Watcher,
    idle_timeout: Duration,
) {
    let due = || activity.head_due(idle_timeout);
    // Polled on: hyper reads the first bytes as they come (and answers them).
    let first_bytes = std::future::poll_fn(|cx| {
        if Pin::new(&mut conn).poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if activity.reads() != reads {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    });
    if let Ok(true) = tokio::time::timeout(LATE_FIRST_BYTES, first_bytes).await {
        return;
    }
    // The worker's shutdown is out (or comes at once): told to finish, polled to its end.
    let watched = watcher.watch(conn);
    tokio::pin!(watched);
    loop {
        // While an exchange is in flight, looked at again as an idle one would be.
        let next = due().unwrap_or_else(|| Instant::now() + PARK_AFTER.min(idle_timeout / 2));
        if tokio::time::timeout_at(next.into(), watched.as_mut())
            .await
            .is_ok()
        {
            return;
        }
        if due().is_some_and(|due| Instant::now() >= due) {
            // No head in time: closed (the connection goes with `watched`).
            return;
        }
    }
}

/// The next connection on any of `listeners`, polled from a rotating start so that none
/// starves.
fn accept_any<'a>(
    listeners: &'a [tokio::net::TcpListener],
    next: &'a mut usize,
) -> impl Future<Output = std::io::Result<tokio::net::TcpStream>> + 'a {
    std::future::poll_fn(move |cx| {
        let n = listeners.len();
        for i in 0..n {
            let at = (*next + i) % n;
            if let Poll::Ready(r) = listeners[at].poll_accept(cx) {
                *next = (at + 1) % n;
                return Poll::Ready(r.map(|(s, _)| s));
            }
        }
        Poll::Pending
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::tls_table;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    use crate::upstream::Connector;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long `/big` answers are.
    const BIG: usize = 48 << 10;
    /// How long `/huge` answers are: more than hyper and two small socket buffers hold.
    const HUGE: usize = 128 << 10;
    /// How long `/vast` answers are: more than an HTTP/2 stream's send buffer holds besides.
    const VAST: usize = 1 << 20;

    /// A payment API answering `200 ok`, or [`BIG`] bytes to `/big` ([`HUGE`] to `/huge`,
    /// [`VAST`] to `/vast`); to `/early` before it has read the request's body, to `/slow`
    /// after a second and a half; `/pause` in two parts (see [`Paused`]); to `/head/N` with
    /// a head of N KiB.
    async fn upstream() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let ok = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/early" {
                        // Answered at once; the request's body is held, unread, a while.
                        let held = req.into_body();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            drop(held);
                        });
                        return Ok(Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
                        ));
                    }
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    if req.uri().path() == "/read" {
                        // Answered once the whole body is in.
                        let _ = req.into_body().collect().await;
                        return Ok(Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
                        ));
                    }
                    if req.uri().path() == "/pause" {
                        return Ok(Response::new(Paused::new().boxed()));
                    }
                    if let Some(kb) = req.uri().path().strip_prefix("/head/") {
                        // An answer whose head is that many KiB.
                        let kb: usize = kb.parse().unwrap();
                        let mut res = Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")).boxed(),
                        );
                        let value = "a".repeat(1000);
                        for i in 0..kb {
                            res.headers_mut().insert(
                                http::HeaderName::try_from(format!("x-{i}")).unwrap(),
                                value.parse().unwrap(),
                            );
                        }
                        return Ok(res);
                    }
                    let body = match req.uri().path() {
                        "/big" => Bytes::from(vec![b'a'; BIG]),
                        "/huge" => Bytes::from(vec![b'a'; HUGE]),
                        "/vast" => Bytes::from(vec![b'a'; VAST]),
                        _ => Bytes::from_static(b"ok"),
                    };
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(body).boxed()))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), ok),
                );
            }
        });
        addr
    }

    /// `/pause`'s answer: [`BIG`] bytes, then, after a pause of two and a half seconds,
    /// [`BIG`] more.
    struct Paused {
        pause: Pin<Box<tokio::time::Sleep>>,
        sent: usize,
    }

    impl Paused {
        fn new() -> Self {
            let pause = Box::pin(tokio::time::sleep(Duration::from_millis(2500)));
            Paused { pause, sent: 0 }
        }
    }

    impl http_body::Body for Paused {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            match self.sent {
                0 => {}
                1 => std::task::ready!(self.pause.as_mut().poll(cx)),
                _ => return Poll::Ready(None),
            }
            self.sent += 1;
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
                b'a';
                BIG
            ])))))
        }
    }

    /// A worker's shared state and connection settings in front of `upstream`.
    fn worker_for(upstream: std::net::SocketAddr, more: &str) -> (Arc<Shared>, Arc<Conn>) {
        worker_with(upstream, more, Duration::from_secs(2))
    }

    /// [`worker_for`], with `t` the payment API's connect, read and write timeouts.
    fn worker_with(
        upstream: std::net::SocketAddr,
        more: &str,
        t: Duration,
    ) -> (Arc<Shared>, Arc<Conn>) {
        worker_counted(upstream, more, t, false)
    }

    /// [`worker_with`], with metrics if `metrics`.
    fn worker_counted(
        upstream: std::net::SocketAddr,
        more: &str,
        t: Duration,
        metrics: bool,
    ) -> (Arc<Shared>, Arc<Conn>) {
        let config = ProxyConfig::parse(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"{upstream}\"\n{more}"
        ))
        .unwrap();
        let balancer = Arc::new(Balancer::try_from_iter([upstream]).unwrap());
        let dialer = Dialer::new(Connector::new(None, t, t, t).unwrap(), balancer.clone());
        let shared = Arc::new(Shared::new(&config, dialer, balancer, None, metrics, None));
        let conn = Arc::new(Conn::new(&shared).unwrap());
        (shared, conn)
    }

    /// A worker of `shared` running on a listener of its own: its address, its stop and
    /// its task.
    fn running(
        shared: &Arc<Shared>,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(worker(vec![listener], shared.clone(), stop));
        (addr, stop_tx, task)
    }

    /// Reads from `s` until `answers` whole `200 ok` answers came, or the connection ends.
    async fn read_answers<S: tokio::io::AsyncRead + Unpin>(s: &mut S, answers: usize) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let whole = |got: &[u8]| String::from_utf8_lossy(got).matches("\r\n\r\nok").count();
        while whole(&got) < answers {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A connected pair of sockets on loopback, the client's and the served one; the
    /// client's receive buffer and the served one's send buffer small if asked (so that an
    /// answer the client does not read soon blocks the server's writes).
    async fn socket_pair(small_buffers: bool) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if small_buffers {
            socket.set_recv_buffer_size(8 << 10).unwrap();
        }
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (served, _) = listener.accept().await.unwrap();
        if small_buffers {
            socket2::SockRef::from(&served)
                .set_send_buffer_size(8 << 10)
                .unwrap();
        }
        (client, served)
    }

    /// A client connected to a task serving its connection as a worker's does.
    struct Client {
        stream: tokio::net::TcpStream,
        conn: Arc<Conn>,
        shared: Arc<Shared>,
        /// The worker's health's holders but the hyper connections serving this client
        /// (each holds a clone of the worker's service, and with it the health).
        without: usize,
        /// The task that served the connection first.
        task: tokio::task::JoinHandle<()>,
        /// Tells the worker to stop.
        stop: watch::Sender<bool>,
    }

    impl Client {
        /// A client of a worker in front of [`upstream`], with `more` in its `[server]`;
        /// its socket's and the served one's buffers small if asked.
        async fn connect(more: &str, small_buffers: bool) -> Client {
            let two = Duration::from_secs(2);
            let (shared, conn) = worker_counted(upstream().await, more, two, true);
            let (stream, served) = socket_pair(small_buffers).await;
            let (stop_tx, stop) = watch::channel(false);
            let graceful = GracefulShutdown::new();
            let without = Arc::strong_count(&shared.health);
            let io = Seen::new(served, Activity::new());
            let task = tokio::spawn(serve_http1(
                conn.clone(),
                io,
                stop.clone(),
                graceful.watcher(),
                None,
            ));
            // The worker's part: parked connections that turn readable are served.
            let lot = conn.clone();
            tokio::spawn(async move {
                loop {
                    let parked = std::future::poll_fn(|cx| lot.lot.poll_ready(cx)).await;
                    lot.resume(parked, stop.clone(), graceful.watcher());
                }
            });
            Client {
                stream,
                conn,
                shared,
                without,
                task,
                stop: stop_tx,
            }
        }

        /// hyper connections serving this client now: 0 once let go.
        fn hyper_connections(&self) -> usize {
            Arc::strong_count(&self.shared.health) - self.without
        }

        async fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.unwrap();
        }

        /// A `GET`, answered `200`.
        async fn get_ok(&mut self) {
            self.send(GET).await;
            let r = read_answers(&mut self.stream, 1).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }

        /// The connection closes, answering nothing, at a second's idle timeout from
        /// `answered` (give or take the test's slack), and nothing of it is left.
        async fn closes_a_second_after(&mut self, answered: Instant) {
            let rest = read_answers(&mut self.stream, 1).await;
            let closed = answered.elapsed();
            assert!(rest.is_empty(), "{rest}");
            assert!(
                closed >= Duration::from_millis(900) && closed < Duration::from_millis(1500),
                "closed {closed:?} after the last answer"
            );
            assert_eq!(self.hyper_connections(), 0);
            assert_eq!(self.conn.lot.len(), 0);
        }

        /// Parked: no hyper connection, no task, the socket in the worker's lot.
        fn parked(&self) -> bool {
            self.hyper_connections() == 0 && self.task.is_finished() && self.conn.lot.len() == 1
        }

        /// Past the wait before an idle connection is let go.
        async fn idle(&self) {
            tokio::time::sleep(self.conn.park_after() + Duration::from_millis(200)).await;
        }
    }

    const GET: &[u8] = b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A TLS server (a certificate for `localhost` made now) and a client trusting it, both
    /// offering `alpn`.
    fn tls_pair(alpn: &[&[u8]]) -> (TlsAcceptor, tokio_rustls::TlsConnector) {
        use tokio_rustls::rustls;
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = server.alpn_protocols.clone();
        (
            TlsAcceptor::from(Arc::new(server)),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    /// An HTTP/2 client speaking frames itself (so that it can stop reading, or ping
    /// instead of asking), to a task serving its connection as a worker's does.
    struct H2 {
        s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        task: tokio::task::JoinHandle<()>,
        stop: watch::Sender<bool>,
        /// The worker's connection settings, its metrics among them.
        served: Arc<Conn>,
    }

    impl H2 {
        /// Frame types.
        const DATA: u8 = 0;
        const HEADERS: u8 = 1;
        const PING: u8 = 6;
        const GOAWAY: u8 = 7;
        /// Flags.
        const END_STREAM: u8 = 1;
        const ACK: u8 = 1;

        /// Connected (TLS, ALPN `h2`) to a worker in front of [`upstream`], with `more` in
        /// its `[server]`; its socket's and the served one's buffers small if asked. Nothing
        /// sent yet.
        async fn connect(more: &str, small_buffers: bool) -> H2 {
            let (acceptor, connector) = tls_pair(&[b"h2"]);
            // The payment API's timeouts longer than its pauses (`/pause`); metrics on.
            let five = Duration::from_secs(5);
            let (_, conn) = worker_counted(upstream().await, more, five, true);
            let (tcp, served) = socket_pair(small_buffers).await;
            let (stop_tx, stop) = watch::channel(false);
            let graceful = GracefulShutdown::new();
            let task = tokio::spawn(conn.clone().serve_tls(
                acceptor,
                served,
                stop,
                graceful.watcher(),
                None,
            ));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let s = connector.connect(name, tcp).await.unwrap();
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            H2 {
                s,
                task,
                stop: stop_tx,
                served: conn,
            }
        }

        /// Connections the worker closed for `why`.
        fn closed(&self, why: Closed) -> u64 {
            let metrics = self.served.metrics.as_ref().expect("metrics on");
            metrics.client_closed_count(why)
        }

        async fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
            let f = Self::framed(ty, flags, stream, payload);
            self.s.write_all(&f).await.unwrap();
        }

        /// A frame's bytes.
        fn framed(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([ty, flags]);
            f.extend(stream.to_be_bytes());
            f.extend(payload);
            f
        }

        /// The preface, with the largest windows a client may give, or HTTP/2's initial ones
        /// (65,535 bytes) if not `wide`.
        async fn preface(&mut self, wide: bool) {
            self.s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            if !wide {
                return self.frame(4, 0, 0, &[]).await;
            }
            // SETTINGS_INITIAL_WINDOW_SIZE, and the connection's window raised to match.
            let window = 0x7fff_ffffu32;
            let mut settings = 4u16.to_be_bytes().to_vec();
            settings.extend(window.to_be_bytes());
            self.frame(4, 0, 0, &settings).await;
            self.grant(0, window - 65_535).await;
        }

        /// `bytes` more of flow-control window for `stream` (0: the connection).
        async fn grant(&mut self, stream: u32, bytes: u32) {
            self.frame(8, 0, stream, &bytes.to_be_bytes()).await;
        }

        /// `GET path` on `stream`, with nothing more to come.
        async fn get(&mut self, stream: u32, path: &str) {
            self.s
                .write_all(&Self::get_frame(stream, path))
                .await
                .unwrap();
        }

        /// `get`'s frame.
        fn get_frame(stream: u32, path: &str) -> Vec<u8> {
            // HPACK: :method GET, :scheme https, :path and :authority literal, not indexed.
            let mut block = vec![0x82, 0x87, 0x04, path.len() as u8];
            block.extend(path.as_bytes());
            block.extend([0x01, 1, b'x']);
            Self::framed(Self::HEADERS, 0x4 | Self::END_STREAM, stream, &block)
        }

        /// `GET /slow` on `stream`, reset (`CANCEL`) once the server has taken it (a PING
        /// sent after it answered), or, `in_body`, `GET /vast` reset once its answer's head
        /// came; if `made`, not reset by the client but made to be reset by the server (a
        /// `WINDOW_UPDATE` that overflows the stream's window, a stream error:
        /// "MadeYouReset"). Whether the connection was still open.
        async fn opened_and_reset(&mut self, stream: u32, in_body: bool, made: bool) -> bool {
            let mut sent = Self::get_frame(stream, if in_body { "/vast" } else { "/slow" });
            sent.extend(Self::framed(Self::PING, 0, 0, b"taken-it"));
            if self.s.write_all(&sent).await.is_err() {
                return false;
            }
            let mut pinged = false;
            let mut head = !in_body;
            while !(pinged && head) {
                let Some((ty, flags, on, payload)) = self.next().await else {
                    return false;
                };
                assert_ne!(ty, Self::GOAWAY, "told to go away: not the reset budget");
                pinged |= ty == Self::PING && flags & Self::ACK != 0 && payload == b"taken-it";
                head |= ty == Self::HEADERS && on == stream;
                if ty == Self::DATA && !payload.is_empty() {
                    // The connection's window back, for the answers to come.
                    let n = (payload.len() as u32).to_be_bytes();
                    if self.s.write_all(&Self::framed(8, 0, 0, &n)).await.is_err() {
                        return false;
                    }
                }
            }
            let reset = if made {
                // The stream's window past 2^31 - 1: a stream error (FLOW_CONTROL_ERROR).
                Self::framed(8, 0, stream, &0x7fff_ffffu32.to_be_bytes())
            } else {
                Self::framed(3, 0, stream, &8u32.to_be_bytes())
            };
            self.s.write_all(&reset).await.is_ok()
        }

        /// The next frame (type, flags, stream, payload); `None` once the connection ends.
        async fn next(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
            let mut head = [0u8; 9];
            let read = tokio::time::timeout(Duration::from_secs(5), self.s.read_exact(&mut head))
                .await
                .expect("a frame, or the end, in time");
            if read.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0; len];
            self.s.read_exact(&mut payload).await.ok()?;
            Some((head[3], head[4], stream, payload))
        }

        /// The task serving the connection ends within a second.
        async fn served_to_its_end(self) {
            tokio::time::timeout(Duration::from_secs(1), self.task)
                .await
                .expect("the connection's task ended")
                .unwrap();
        }

        /// The next frame, a PING from the server answered: (type, flags, stream,
        /// payload, whether it ends its stream's answer).
        async fn next_answering(&mut self) -> (u8, u8, u32, Vec<u8>, bool) {
            let (ty, flags, on, payload) = self.next().await.expect("a frame");
            if ty == Self::PING && flags & Self::ACK == 0 {
                self.frame(Self::PING, Self::ACK, 0, &payload).await;
            }
            let ends = (ty == Self::DATA || ty == Self::HEADERS) && flags & Self::END_STREAM != 0;
            (ty, flags, on, payload, ends)
        }

        /// Sends a PING and reads until it is answered: the streams whose answers ended
        /// meanwhile.
        async fn until_pinged(&mut self) -> Vec<u32> {
            self.frame(Self::PING, 0, 0, b"until-it").await;
            let mut ended = Vec::new();
            loop {
                let (ty, flags, on, payload, ends) = self.next_answering().await;
                if ty == Self::PING && flags & Self::ACK != 0 && payload == b"until-it" {
                    return ended;
                }
                if ends {
                    ended.push(on);
                }
            }
        }

        /// Reads until `stream`'s answer has ended, answering PINGs: the streams whose
        /// answers ended meanwhile, `stream` last.
        async fn until_ended(&mut self, stream: u32) -> Vec<u32> {
            let mut ended = Vec::new();
            while ended.last() != Some(&stream) {
                let (.., on, _, ends) = self.next_answering().await;
                if ends {
                    ended.push(on);
                }
            }
            ended
        }

        /// Reads until `stream`'s answer has ended, answering PINGs; its body's length.
        async fn answer(&mut self, stream: u32) -> usize {
            let mut body = 0;
            loop {
                let (ty, _, on, payload, ends) = self.next_answering().await;
                if on == stream && ty == Self::DATA {
                    body += payload.len();
                }
                if on == stream && ends {
                    return body;
                }
            }
        }
    }

    /// Once a kept-alive client has sent nothing for a while after its answer, its task
    /// lets go of hyper's connection (its service, buffers and state) and keeps the socket;
    /// the next request, bytes read before and all, is served by a new one, with its head
    /// still due by the previous answer's end plus the idle timeout.
    #[tokio::test]
    async fn an_idle_connection_keeps_its_socket_and_nothing_else() {
        let mut c = Client::connect("idle_timeout_secs = 1\n", false).await;
        c.get_ok().await;
        assert_eq!(c.hyper_connections(), 1, "served by a hyper connection");
        c.idle().await;
        assert!(
            c.parked(),
            "hyper's connection and the task let go while idle"
        );

        // Two requests in one write, answered by a new task and hyper connection.
        c.send(&[GET, GET].concat()).await;
        let r = read_answers(&mut c.stream, 2).await;
        assert_eq!(r.matches("HTTP/1.1 200").count(), 2, "{r}");
        assert_eq!(c.hyper_connections(), 1);
        assert_eq!(c.conn.lot.len(), 0);

        // A request and the start of the next in one write: the start is read with the
        // first and handed over when its hyper connection goes; the rest is the same head.
        c.send(&[GET, &GET[..10]].concat()).await;
        let r = read_answers(&mut c.stream, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        c.idle().await;
        c.send(&GET[10..]).await;
        let r = read_answers(&mut c.stream, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // Parked, then half a head: due by the last answer's end plus the idle timeout,
        // not a whole timeout from when it came (closed, as hyper closes a connection it
        // kept).
        let answered = Instant::now();
        c.idle().await;
        assert_eq!(c.conn.lot.len(), 1, "parked");
        c.send(&GET[..10]).await;
        c.closes_a_second_after(answered).await;
    }

    /// A head that never completes, sent a few bytes at a time so that the connection is
    /// never idle, is due within the idle timeout of the connection's start, and of the
    /// last answer's end: the connection is closed then, without a word.
    #[tokio::test]
    async fn a_head_trickled_without_end_is_closed_at_the_idle_timeout() {
        // Five bytes over 0.75 s, done before the head is due (a byte written after the
        // close would be answered with a reset, not the close looked for).
        async fn trickle(c: &mut Client) {
            for b in GET[..5].chunks(1) {
                c.send(b).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        let mut c = Client::connect("idle_timeout_secs = 1\n", false).await;
        let start = Instant::now();
        trickle(&mut c).await;
        c.closes_a_second_after(start).await;

        let mut c = Client::connect("idle_timeout_secs = 1\n", false).await;
        c.get_ok().await;
        let answered = Instant::now();
        trickle(&mut c).await;
        c.closes_a_second_after(answered).await;
    }

    /// A connection served again from the lot keeps its first head's deadline (the last
    /// answer's end plus the idle timeout) when the worker stops as the head trickles in:
    /// closed then, not an idle timeout after it came back.
    #[tokio::test]
    async fn a_head_trickled_from_the_lot_into_a_drain_keeps_its_deadline() {
        let mut c = Client::connect("idle_timeout_secs = 1\n", false).await;
        c.get_ok().await;
        let answered = Instant::now();
        tokio::time::sleep(c.conn.lot_after() + Duration::from_millis(100)).await;
        assert!(c.parked(), "in the lot");
        // Four bytes over about a third of a second, done before the head is due.
        for (i, b) in GET[..4].chunks(1).enumerate() {
            c.send(b).await;
            if i == 1 {
                c.stop.send(true).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        c.closes_a_second_after(answered).await;
    }

    /// An answer the client is slow to read keeps its connection: while hyper holds bytes
    /// not yet sent (here: the whole body taken, part of it stuck behind small socket
    /// buffers while the client reads nothing for longer than the wait), the connection is
    /// not idle, and hyper is not told to let it go (it would close it after the answer).
    #[tokio::test]
    async fn an_answer_read_slowly_keeps_its_connection() {
        let mut c = Client::connect("idle_timeout_secs = 4\n", true).await;
        c.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // Past the time to let an idle connection go, with the answer's end taken from its
        // body and not all of it sent (the socket buffers hold less).
        tokio::time::sleep(c.conn.park_after() * 2).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let whole = loop {
            let n = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut buf))
                .await
                .expect("the answer in time")
                .unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() >= i + 4 + BIG {
                    break i + 4 + BIG;
                }
            }
        };
        assert_eq!(got.len(), whole, "the whole answer, and nothing more");
        c.get_ok().await;
        c.idle().await;
        assert_eq!(c.hyper_connections(), 0, "let go once idle");
    }

    /// An idle connection first keeps its task, waiting on the socket alone (a request then
    /// is served by a new hyper connection in the same task), and moves to the lot only
    /// once idle for [`Conn::lot_after`] (a request then is served by a new task).
    #[tokio::test]
    async fn an_idle_connection_moves_to_the_lot_only_after_a_while() {
        let mut c = Client::connect("idle_timeout_secs = 6\n", false).await;
        assert_eq!(c.conn.lot_after(), Duration::from_secs(3));
        c.get_ok().await;
        c.idle().await;
        assert_eq!(c.hyper_connections(), 0, "hyper's connection let go");
        assert!(!c.task.is_finished(), "the task waits on the socket");
        assert_eq!(c.conn.lot.len(), 0);
        c.get_ok().await;
        assert!(!c.task.is_finished(), "served in the same task");
        tokio::time::sleep(c.conn.lot_after() + Duration::from_millis(300)).await;
        assert!(c.parked(), "in the lot, the task ended");
        c.get_ok().await;
        assert_eq!(c.conn.lot.len(), 0);
    }

    /// A TLS connection (HTTP/1) lets go of hyper's connection while idle as a plain one
    /// does, but keeps rustls' state in its task rather than move to the lot: served again
    /// after either moment, closed at the idle timeout from its last answer; when the worker
    /// stops, one that sends a request as it does is answered, one that does not closes.
    #[tokio::test]
    async fn an_idle_tls_connection_lets_go_of_hyper_and_keeps_its_task() {
        let (acceptor, connector) = tls_pair(&[]);
        let (shared, conn) = worker_for(upstream().await, "idle_timeout_secs = 4\n");
        let without = Arc::strong_count(&shared.health);
        let hyper_connections = || Arc::strong_count(&shared.health) - without;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let graceful = GracefulShutdown::new();
        let mut tasks = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (served, _) = listener.accept().await.unwrap();
            let task = conn.clone().serve_tls(
                acceptor.clone(),
                served,
                stop.clone(),
                graceful.watcher(),
                None,
            );
            tasks.push(tokio::spawn(task));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            clients.push(connector.connect(name, tcp).await.unwrap());
        }
        for c in &mut clients {
            c.write_all(GET).await.unwrap();
            let r = read_answers(c, 1).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        }
        assert_eq!(hyper_connections(), 2);
        tokio::time::sleep(conn.park_after() + Duration::from_millis(300)).await;
        assert_eq!(hyper_connections(), 0, "hyper's connections let go");
        assert!(tasks.iter().all(|t| !t.is_finished()), "the tasks wait");
        clients[0].write_all(GET).await.unwrap();
        let r = read_answers(&mut clients[0], 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "served again: {r}");
        let answered = Instant::now();
        // Past the moment a plain connection moves to the lot: still in its task.
        tokio::time::sleep(conn.lot_after() + Duration::from_millis(300)).await;
        assert_eq!(conn.lot.len(), 0);
        assert!(tasks.iter().all(|t| !t.is_finished()), "in their tasks");
        assert_eq!(hyper_connections(), 0);
        clients[1].write_all(GET).await.unwrap();
        let r = read_answers(&mut clients[1], 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "served again: {r}");
        // Idle for the whole idle timeout since its last answer: closed.
        let rest = read_answers(&mut clients[0], 1).await;
        assert!(rest.is_empty(), "{rest}");
        let closed = answered.elapsed();
        assert!(
            closed >= Duration::from_millis(3900) && closed < Duration::from_millis(4600),
            "closed {closed:?} after its last answer"
        );
        // The worker stops: a request sent as it does is answered, and the connection closed
        // after it (cleanly, as at the idle timeout: rustls reads a missing close_notify as
        // an error).
        tokio::time::sleep(conn.park_after() + Duration::from_millis(300)).await;
        assert_eq!(hyper_connections(), 0);
        stop_tx.send(true).unwrap();
        // As the worker does: its connections told to finish.
        let done = tokio::spawn(graceful.shutdown());
        tokio::time::sleep(Duration::from_millis(50)).await;
        clients[1].write_all(GET).await.unwrap();
        let r = read_answers(&mut clients[1], 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let rest = read_answers(&mut clients[1], 1).await;
        assert!(rest.is_empty(), "{rest}");
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .unwrap()
                .unwrap();
        }
        tokio::time::timeout(Duration::from_secs(2), done)
            .await
            .expect("every connection done")
            .unwrap();
    }

    /// A client that reads a long answer slowly, for longer than the idle timeout, has the
    /// whole idle timeout for its next request from the moment the answer's last bytes left
    /// (not from the moment hyper took them from the payment API's answer).
    #[tokio::test]
    async fn a_slow_readers_next_request_has_the_whole_idle_timeout() {
        let mut c = Client::connect("idle_timeout_secs = 2\n", true).await;
        c.send(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (mut got, mut buf) = (Vec::new(), [0u8; 2048]);
        let start = Instant::now();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(2), c.stream.read(&mut buf))
                .await
                .expect("bytes in time")
                .unwrap();
            assert!(n > 0, "closed mid-answer");
            got.extend_from_slice(&buf[..n]);
            let head = got.windows(4).position(|w| w == b"\r\n\r\n");
            if head.is_some_and(|h| got.len() - h - 4 >= HUGE) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            start.elapsed() > Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.get_ok().await;
    }

    /// A client that stops reading its answer is closed once it has taken none of it for the
    /// idle timeout, its place and hyper's buffers freed; one that reads with pauses shorter
    /// than that gets the whole answer.
    #[tokio::test]
    async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
        const HUGE_GET: &[u8] = b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut c = Client::connect("idle_timeout_secs = 1\n", true).await;
        c.send(HUGE_GET).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!c.task.is_finished(), "closed too soon");
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(
            c.task.is_finished(),
            "a client that reads nothing is closed"
        );
        assert_eq!(c.hyper_connections(), 0);
        let counted = |c: &Client| {
            c.conn
                .metrics
                .as_ref()
                .unwrap()
                .client_closed_count(Closed::Stalled)
        };
        assert_eq!(counted(&c), 1);

        let mut c = Client::connect("idle_timeout_secs = 1\n", true).await;
        c.send(HUGE_GET).await;
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 64 << 10]);
        let whole = |got: &[u8]| {
            let head = got.windows(4).position(|w| w == b"\r\n\r\n");
            head.is_some_and(|h| got.len() - h - 4 >= HUGE)
        };
        while !whole(&got) {
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Whatever has come, then the next pause.
            while let Ok(n) =
                tokio::time::timeout(Duration::from_millis(20), c.stream.read(&mut buf)).await
            {
                let n = n.unwrap();
                assert!(n > 0, "closed after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
        }
        c.get_ok().await;
        assert_eq!(counted(&c), 0);
    }

    /// An HTTP/2 connection with nothing in flight for the idle timeout is told to go away
    /// and closed, however much else its client sends (here a PING every 300 ms); one that
    /// has not even sent its preface is closed too; a request in flight for longer than the
    /// idle timeout is answered.
    #[tokio::test]
    async fn an_idle_http2_connection_is_told_to_go_away_and_closed() {
        let mut c = H2::connect("idle_timeout_secs = 1\n", false).await;
        c.preface(true).await;
        c.get(1, "/slow").await;
        assert_eq!(c.answer(1).await, 2, "answered after 1.5 s");
        let answered = Instant::now();
        c.get(3, "/orders").await;
        assert_eq!(c.answer(3).await, 2);
        let answered_again = Instant::now();
        assert!(answered_again - answered < Duration::from_millis(300));
        let mut goaway = None;
        loop {
            let pinged = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
            match pinged {
                Err(_) => c.frame(H2::PING, 0, 0, b"12345678").await,
                Ok(None) => break,
                Ok(Some((ty, flags, _, payload))) => {
                    if ty == H2::GOAWAY && goaway.is_none() {
                        goaway = Some(answered_again.elapsed());
                    }
                    if ty == H2::PING && flags & H2::ACK == 0 {
                        c.frame(H2::PING, H2::ACK, 0, &payload).await;
                    }
                }
            }
            assert!(
                answered_again.elapsed() < Duration::from_secs(4),
                "not closed"
            );
        }
        let goaway = goaway.expect("told to go away first");
        assert!(
            goaway >= Duration::from_millis(950) && goaway < Duration::from_millis(1500),
            "told to go away {goaway:?} after the last answer"
        );
        c.served_to_its_end().await;

        // Nothing sent after the TLS handshake: closed once it has had the idle timeout and
        // the GOAWAY's grace.
        let mut c = H2::connect("idle_timeout_secs = 1\n", false).await;
        let start = Instant::now();
        while c.next().await.is_some() {}
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_millis(950)
                && closed < GOAWAY_GRACE + Duration::from_millis(1500),
            "closed {closed:?} after the handshake"
        );
        c.served_to_its_end().await;
    }

    /// An HTTP/2 client that stops reading an answer larger than the connection holds for
    /// it is closed once it has taken none of it for the idle timeout; one that reads with
    /// pauses shorter than that gets the whole answer.
    #[tokio::test]
    async fn an_http2_client_that_stops_reading_is_closed_after_the_idle_timeout() {
        let mut c = H2::connect("idle_timeout_secs = 1\n", true).await;
        c.preface(true).await;
        c.get(1, "/vast").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!c.task.is_finished(), "closed too soon");
        tokio::time::sleep(Duration::from_millis(5400)).await;
        assert!(
            c.task.is_finished(),
            "a client that reads nothing is closed"
        );
        assert_eq!(c.closed(Closed::Stalled), 1, "counted");

        let mut c = H2::connect("idle_timeout_secs = 1\n", true).await;
        c.preface(true).await;
        c.get(1, "/vast").await;
        let mut body = 0;
        let mut ended = false;
        while !ended {
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Whatever has come, then the next pause.
            while let Ok(frame) = tokio::time::timeout(Duration::from_millis(20), c.next()).await {
                let (ty, flags, stream, payload) = frame.expect("not closed");
                if ty == H2::DATA && stream == 1 {
                    body += payload.len();
                    ended = flags & H2::END_STREAM != 0;
                }
            }
        }
        assert_eq!(body, VAST);
        c.get(3, "/orders").await;
        assert_eq!(c.answer(3).await, 2);
        assert_eq!(c.closed(Closed::Stalled), 0);
    }

    /// An idle HTTP/2 client that makes the server's writes block and go out again (bursts
    /// of PINGs it reads only later) is still told to go away at the idle timeout: only an
    /// answer's end going out counts as its end.
    #[tokio::test]
    async fn pings_the_client_reads_late_do_not_keep_an_http2_connection() {
        let mut c = H2::connect("idle_timeout_secs = 1\n", true).await;
        c.preface(true).await;
        let mut burst = Vec::new();
        for i in 0..6000u64 {
            burst.extend([0, 0, 8, H2::PING, 0, 0, 0, 0, 0]);
            burst.extend(i.to_be_bytes());
        }
        let start = Instant::now();
        'bursts: loop {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "not told to go away"
            );
            c.s.write_all(&burst).await.unwrap();
            // Not read for a while: the answers block the server's writes.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while let Ok(frame) = tokio::time::timeout(Duration::from_millis(150), c.next()).await {
                match frame {
                    Some((H2::GOAWAY, ..)) | None => break 'bursts,
                    Some(_) => {}
                }
            }
        }
        let goaway = start.elapsed();
        assert!(
            goaway >= Duration::from_millis(950),
            "told to go away after {goaway:?}"
        );
    }

    /// A request sent as the GOAWAY of an idle HTTP/2 connection goes out is answered whole,
    /// its answer read with pauses longer than the GOAWAY's grace (and shorter than the idle
    /// timeout).
    #[tokio::test]
    async fn an_answer_asked_for_as_the_goaway_goes_out_is_read_whole() {
        let mut c = H2::connect("idle_timeout_secs = 3\n", true).await;
        c.preface(true).await;
        // The GOAWAY goes out at three seconds (looks at one and three).
        tokio::time::sleep(Duration::from_millis(3050)).await;
        c.get(1, "/vast").await;
        let (mut body, mut ended) = (0, false);
        let start = Instant::now();
        while !ended {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{body} bytes came"
            );
            let mut round = 0;
            while round < 384 << 10 && !ended {
                let Ok(frame) = tokio::time::timeout(Duration::from_millis(200), c.next()).await
                else {
                    break;
                };
                let (ty, flags, stream, payload) = frame.expect("not closed mid-answer");
                if ty == H2::PING && flags & H2::ACK == 0 {
                    c.frame(H2::PING, H2::ACK, 0, &payload).await;
                }
                if ty == H2::DATA && stream == 1 {
                    round += payload.len();
                    ended = flags & H2::END_STREAM != 0;
                }
            }
            body += round;
            if !ended {
                // Longer than the grace by more than the time between two looks.
                tokio::time::sleep(GOAWAY_GRACE + Duration::from_millis(1200)).await;
            }
        }
        assert_eq!(body, VAST);
    }

    /// When the worker stops, an HTTP/2 client is told to go away: what it asked for is
    /// answered, and one that does not answer the GOAWAY's PING, or has sent nothing, does
    /// not keep its connection (the worker's shutdown waits for it) for long.
    #[tokio::test]
    async fn a_stopping_worker_tells_http2_clients_to_go_away() {
        let mut c = H2::connect("idle_timeout_secs = 60\n", false).await;
        c.preface(true).await;
        c.get(1, "/slow").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.stop.send(true).unwrap();
        let stopped = Instant::now();
        let (mut goaway, mut answered) = (false, false);
        while let Some((ty, flags, stream, _)) = c.next().await {
            goaway |= ty == H2::GOAWAY;
            answered |= ty == H2::DATA && stream == 1 && flags & H2::END_STREAM != 0;
        }
        assert!(goaway && answered, "GOAWAY {goaway}, answered {answered}");
        let closed = stopped.elapsed();
        assert!(
            closed < Duration::from_secs(4),
            "closed {closed:?} after the stop"
        );
        c.served_to_its_end().await;

        let mut c = H2::connect("idle_timeout_secs = 60\n", false).await;
        c.stop.send(true).unwrap();
        let stopped = Instant::now();
        while c.next().await.is_some() {}
        let closed = stopped.elapsed();
        assert!(
            closed < LATE_FIRST_BYTES + GOAWAY_GRACE + Duration::from_millis(500),
            "closed {closed:?} after the stop, having sent nothing"
        );
    }

    /// An HTTP/2 client that takes one answer and gives another no flow-control window is
    /// closed once that one has waited for the idle timeout: the stream it starves holds a
    /// connection to the payment API.
    #[tokio::test]
    async fn an_http2_client_that_starves_one_stream_is_closed() {
        let mut c = H2::connect("idle_timeout_secs = 1\n", false).await;
        c.preface(false).await;
        c.get(1, "/vast").await;
        c.get(3, "/vast").await;
        let start = Instant::now();
        let mut taken = [0, 0];
        loop {
            assert!(start.elapsed() < Duration::from_secs(8), "not closed");
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(300), c.next()).await else {
                // Window for stream 3 alone, a little at a time.
                c.grant(0, 16 << 10).await;
                c.grant(3, 16 << 10).await;
                continue;
            };
            let Some((ty, _, stream, payload)) = frame else {
                break;
            };
            if ty == H2::DATA {
                taken[(stream / 2) as usize] += payload.len();
            }
        }
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_millis(950) && closed < Duration::from_secs(4),
            "closed {closed:?} after the requests"
        );
        assert!(taken[1] > 65_535, "stream 3 moved: {taken:?}");
        assert!(taken[1] < VAST, "stream 3 had not ended: {taken:?}");
    }

    /// The payment API's answer is read at most [`crate::pool`]'s buffer ahead of its
    /// reader, a buffer that also bounds its head: an answer with a 60 KiB head is passed
    /// on, one with a 70 KiB head is answered 502, as nginx answers one over its buffer.
    #[tokio::test]
    async fn the_payment_apis_answer_head_is_bounded_by_its_read_buffer() {
        let mut c = Client::connect("", false).await;
        c.send(b"GET /head/60 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let r = read_answers(&mut c.stream, 1).await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "{}",
            r.lines().next().unwrap_or("")
        );
        c.send(b"GET /head/70 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut got = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        let r = String::from_utf8_lossy(&got[..n]);
        assert!(
            r.starts_with("HTTP/1.1 502"),
            "{}",
            r.lines().next().unwrap_or("")
        );
        let said = Refusal::upstream_unreadable_answer().to_json();
        assert!(r.ends_with(std::str::from_utf8(&said).unwrap()), "{r}");
    }

    /// An HTTP/2 client may have at most `h2_max_streams` streams open at once (100 by
    /// default): the server's SETTINGS say so.
    #[tokio::test]
    async fn an_http2_client_is_told_how_many_streams_it_may_open() {
        for (config, streams) in [(String::new(), 100), (tls_table("h2_max_streams = 7\n"), 7)] {
            let mut c = H2::connect(&config, false).await;
            c.preface(false).await;
            let (ty, _, _, settings) = c.next().await.unwrap();
            assert_eq!(ty, 4, "SETTINGS first");
            let max = settings
                .chunks(6)
                .find(|s| s[..2] == [0, 3])
                .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
            assert_eq!(max, Some(streams));
        }
    }

    /// Each HTTP/2 stream in flight takes a connection to the payment API, and those count
    /// against `max_connections` (the descriptors are budgeted two per client connection):
    /// with room for one, a stream whose body is still on its way keeps it, and the next
    /// stream waits for it.
    #[tokio::test]
    async fn http2_streams_open_no_more_payment_api_connections_than_max_connections() {
        let mut c = H2::connect("max_connections = 1\n", false).await;
        c.preface(false).await;
        // `POST /read` with `content-length: 100` (HPACK literal, name index 28), one byte
        // of it sent: the payment API answers once it has the whole body.
        let mut block = vec![0x83, 0x87, 0x04, 5];
        block.extend(b"/read");
        block.extend([0x01, 1, b'x', 0x0f, 0x0d, 3]);
        block.extend(b"100");
        c.frame(H2::HEADERS, 0x4, 1, &block).await;
        c.frame(H2::DATA, 0, 1, b"a").await;
        // A `GET /` would be answered at once, well before a PING sent 300 ms later is.
        c.get(3, "/").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(c.until_pinged().await.is_empty(), "answered meanwhile");
        c.frame(H2::DATA, H2::END_STREAM, 1, &[b'a'; 99]).await;
        assert_eq!(c.until_ended(3).await, [1, 3]);
    }

    /// A client that resets its streams soon after opening them, before their answers or in
    /// their bodies (the rapid reset: each sets off a request to the payment API, and the
    /// reset abandons it with its connection; one at a time, it passes
    /// `max_concurrent_streams` and h2's bound on reset streams waiting to be taken) is
    /// served while within its budget, and closed once past it.
    #[tokio::test]
    async fn an_http2_client_that_resets_its_streams_rapidly_is_closed() {
        closed_past_the_reset_budget(false, "").await;
    }

    /// The budget is `h2_reset_budget` at once, one more every `h2_reset_refill_ms`: with
    /// 6 and a minute, the seventh reset closes the connection. (The client may still see
    /// the answer to its PING sent with the next stream, if the server read both at once,
    /// hence one or two resets past the budget as it counts them.)
    #[tokio::test]
    async fn an_http2_clients_reset_budget_is_the_configured_one() {
        let small = tls_table("h2_reset_budget = 6\nh2_reset_refill_ms = 60000\n");
        let (_, conn) = worker_counted(upstream().await, &small, Duration::from_secs(1), false);
        let minute = Duration::from_secs(60);
        assert_eq!(
            conn.h2_resets,
            ResetBudget {
                burst: 6,
                every: minute
            }
        );
        let past = closed_past_the_reset_budget(false, &small).await;
        assert!(
            (1..=2).contains(&past),
            "closed {past} resets past the budget"
        );
    }

    /// With `h2_reset_budget = 0` resets are not counted (a load balancer in front that
    /// cancels many clients' requests on one connection): however many, the connection
    /// goes on.
    #[tokio::test]
    async fn an_http2_client_without_a_reset_budget_is_not_closed_for_resets() {
        let mut c = H2::connect(&tls_table("h2_reset_budget = 0\n"), false).await;
        c.preface(false).await;
        let mut stream = 1;
        for i in 0..3 * ResetBudget::default().burst {
            assert!(
                c.opened_and_reset(stream, i % 2 == 0, false).await,
                "closed after {i} resets"
            );
            stream += 2;
        }
        c.get(stream, "/orders").await;
        assert_eq!(c.answer(stream).await, 2);
        assert_eq!(c.closed(Closed::ResetStreams), 0);
    }

    /// The same with streams the client makes the server reset (a stream error after the
    /// stream was taken: "MadeYouReset", which hyper's bound on the server's own resets
    /// takes only at 1,024): each also sets off a request the reset abandons.
    #[tokio::test]
    async fn an_http2_client_that_makes_the_server_reset_its_streams_is_closed() {
        closed_past_the_reset_budget(true, "").await;
    }

    /// A client resetting streams (or making the server reset them, if `made`) to a server
    /// configured with `config` (its reset budget: `h2_reset_budget`, else the default's):
    /// served within its budget, closed once past it, the close counted. How many resets
    /// past the burst it took.
    async fn closed_past_the_reset_budget(made: bool, config: &str) -> usize {
        let burst = ProxyConfig::parse(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n{config}"
        ))
        .unwrap()
        .server
        .tls
        .map_or(ResetBudget::default().burst, |t| t.h2_reset_budget);
        let mut c = H2::connect(config, false).await;
        c.preface(false).await;
        let mut stream = 1;
        for i in 0..burst {
            // The last one before the answer: its PING comes after the body frames before.
            // (A stream the server is made to reset: before its answer, while its window is
            // the whole initial one, which the `WINDOW_UPDATE` overflows.)
            let in_body = i % 2 == 0 && !made;
            assert!(
                c.opened_and_reset(stream, in_body, made).await,
                "closed within its budget"
            );
            stream += 2;
        }
        c.get(stream, "/orders").await;
        assert_eq!(c.answer(stream).await, 2, "served within its budget");
        // Past it (one more comes every `h2_reset_refill_ms`, 600 ms by default, so a slow
        // run may take a few more): closed.
        let mut more = 0;
        assert_eq!(c.closed(Closed::ResetStreams), 0);
        while c
            .opened_and_reset(stream + 2, more % 2 == 1 && !made, made)
            .await
        {
            stream += 2;
            more += 1;
            assert!(more < 50, "still open after {more} more resets");
        }
        let served = c.served.clone();
        c.served_to_its_end().await;
        let metrics = served.metrics.as_ref().unwrap();
        assert_eq!(metrics.client_closed_count(Closed::ResetStreams), 1);
        assert_eq!(metrics.client_closed_count(Closed::Stalled), 0);
        more
    }

    /// A client sending HTTP/2 frames that carry no request, as fast as it can (one-byte
    /// `WINDOW_UPDATE`s for the connection; `RST_STREAM`s of a stream already answered)
    /// is closed once they pass nginx's rule (see `flood`), and counted: before, either
    /// kept a worker thread busy for as long as it sent them. (Small or empty `DATA`
    /// frames, refused streams and endless `CONTINUATION`s h2 bounds itself.)
    #[tokio::test]
    async fn an_http2_client_flooding_frames_without_requests_is_closed() {
        for kind in ["updates", "resets of an answered stream"] {
            let mut c = H2::connect("", false).await;
            c.preface(false).await;
            let one = if kind == "updates" {
                H2::framed(8, 0, 0, &1u32.to_be_bytes())
            } else {
                c.get(1, "/orders").await;
                assert_eq!(c.answer(1).await, 2);
                H2::framed(3, 0, 1, &8u32.to_be_bytes())
            };
            let mebibyte = one.repeat((1 << 20) / one.len());
            let mut sent = 0;
            while c.s.write_all(&mebibyte).await.is_ok() {
                sent += 1;
                assert!(sent < 16, "{kind}: still open after {sent} MiB");
            }
            assert!(sent >= 7, "{kind}: closed after {sent} MiB");
            while c.next().await.is_some() {}
            assert_eq!(c.closed(Closed::Flood), 1);
            c.served_to_its_end().await;
        }
    }

    /// A `CONNECT` is answered 405 `method_not_allowed` by the proxy itself (the payment
    /// API answers everything `200`), over HTTP/2 as over HTTP/1: over HTTP/2 the
    /// connection goes on, however many come (none is a reset); over HTTP/1 it closes (what
    /// follows a `CONNECT` may be a tunnel's bytes).
    #[tokio::test]
    async fn a_connect_is_refused_not_forwarded() {
        let mut c = H2::connect("", false).await;
        c.preface(false).await;
        // HPACK: `:method CONNECT` and `:authority x:443`, literal, not indexed.
        let mut block = vec![0x02, 7];
        block.extend(b"CONNECT");
        block.extend([0x01, 5]);
        block.extend(b"x:443");
        let mut stream = 1;
        for _ in 0..ResetBudget::default().burst + 20 {
            c.frame(H2::HEADERS, 0x4, stream, &block).await;
            let mut body = Vec::new();
            loop {
                let (ty, _, on, payload, ends) = c.next_answering().await;
                if on == stream && ty == H2::HEADERS {
                    // Not `:status 200` (405 is not in HPACK's static table: its bytes
                    // vary; the body says which refusal it is).
                    assert_ne!(payload[0], 0x88, "the payment API's 200");
                }
                if on == stream && ty == H2::DATA {
                    body.extend(payload);
                }
                if on == stream && ends {
                    break;
                }
            }
            let body = String::from_utf8(body).unwrap();
            assert!(
                body.contains(r#""code":"method_not_allowed","param":"CONNECT""#),
                "{body}"
            );
            stream += 2;
        }
        c.get(stream, "/orders").await;
        assert_eq!(c.answer(stream).await, 2);

        let mut c = Client::connect("", false).await;
        c.send(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n")
            .await;
        let r = read_answers(&mut c.stream, 1).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.contains("connection: close"), "{r}");
        assert!(r.contains(r#""code":"method_not_allowed""#), "{r}");
        assert!(read_answers(&mut c.stream, 1).await.is_empty(), "closed");
    }

    /// An HTTP/2 answer the payment API pauses in for longer than the idle timeout is not
    /// taken for one the client stopped taking: it comes whole.
    #[tokio::test]
    async fn an_http2_answer_the_payment_api_pauses_in_comes_whole() {
        let mut c = H2::connect("idle_timeout_secs = 1\n", false).await;
        c.preface(true).await;
        c.get(1, "/pause").await;
        assert_eq!(c.answer(1).await, 2 * BIG);
        c.get(3, "/orders").await;
        assert_eq!(c.answer(3).await, 2);
    }

    /// An HTTP/2 client that reads the socket but gives no flow-control window for its
    /// answer is closed once it has taken none of it for the idle timeout; one that gives
    /// window with pauses shorter than that gets the whole answer.
    #[tokio::test]
    async fn an_http2_client_that_gives_no_window_is_closed_after_the_idle_timeout() {
        for grants in [false, true] {
            let mut c = H2::connect("idle_timeout_secs = 1\n", false).await;
            c.preface(false).await;
            c.get(1, "/vast").await;
            let start = Instant::now();
            let (mut body, mut granted) = (0, 0);
            let ended = loop {
                assert!(start.elapsed() < Duration::from_secs(8), "not closed");
                let Ok(frame) = tokio::time::timeout(Duration::from_millis(600), c.next()).await
                else {
                    // A pause in what comes: window given, if it gives any (256 KiB more
                    // than it had).
                    if grants {
                        let more = (body - granted + (256 << 10)) as u32;
                        c.grant(0, more).await;
                        c.grant(1, more).await;
                        granted = body + (256 << 10);
                    }
                    continue;
                };
                let Some((ty, flags, stream, payload)) = frame else {
                    break false;
                };
                if ty == H2::DATA && stream == 1 {
                    body += payload.len();
                    if flags & H2::END_STREAM != 0 {
                        break true;
                    }
                }
            };
            if grants {
                assert!(ended, "closed after {body} bytes");
                assert_eq!(body, VAST);
                c.get(3, "/orders").await;
                assert_eq!(c.answer(3).await, 2);
            } else {
                assert!(!ended);
                assert_eq!(body, 65_535, "what the window let through");
                let closed = start.elapsed();
                assert!(
                    closed >= Duration::from_millis(950) && closed < Duration::from_secs(4),
                    "closed {closed:?} after the request"
                );
                c.served_to_its_end().await;
            }
        }
    }

    /// A connection whose request's body has not all come is not between two requests,
    /// even once its answer has ended: it is not let go, and what comes next is read as
    /// body, never as a request (here with the answer the last one, `Connection: close`, and
    /// the client sending nothing for longer than the wait before the rest of the body,
    /// which reads as a request).
    #[tokio::test]
    async fn a_request_body_still_to_come_is_never_read_as_a_request() {
        let mut c = Client::connect("idle_timeout_secs = 4\n", false).await;
        let head = "POST /early HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                    Content-Length: 100000\r\n\r\n";
        c.send(&[head.as_bytes(), &[b'a'; 1000]].concat()).await;
        let r = read_answers(&mut c.stream, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::sleep(c.conn.park_after() * 2).await;
        // Still in its exchange, or closed (the payment API's connection may go), not let go
        // to wait for a next request.
        assert!(c.hyper_connections() <= 1);
        let _ = c.stream.write_all(&[GET, GET].concat()).await;
        let mut buf = [0u8; 256];
        let more = tokio::time::timeout(Duration::from_secs(1), c.stream.read(&mut buf)).await;
        if let Ok(Ok(n)) = more {
            assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
        }
    }

    /// A parked connection closes at the idle timeout from its last answer.
    #[tokio::test]
    async fn a_parked_connection_closes_at_the_idle_timeout() {
        let mut c = Client::connect("idle_timeout_secs = 1\n", false).await;
        c.get_ok().await;
        let answered = Instant::now();
        c.idle().await;
        assert!(c.parked());
        c.closes_a_second_after(answered).await;
    }

    /// Through a worker's own loop: a parked connection keeps its place among the worker's
    /// connections, is served again when its next request comes, and closes soon after the
    /// worker stops (as an idle connection does), not when the worker is done (here after a
    /// request in flight); one whose request comes as the worker stops is answered.
    #[tokio::test]
    async fn a_worker_serves_its_parked_connections_and_closes_them_when_it_stops() {
        let (shared, _) = worker_for(upstream().await, "idle_timeout_secs = 4\n");
        let all = shared.connections.available_permits();
        let (addr, stop_tx, worker) = running(&shared);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
        late.write_all(GET).await.unwrap();
        let r = read_answers(&mut late, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let park_after = PARK_AFTER.min(Duration::from_secs(4) / 2);
        for _ in 0..2 {
            s.write_all(GET).await.unwrap();
            let r = read_answers(&mut s, 1).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            tokio::time::sleep(park_after + Duration::from_millis(300)).await;
            assert_eq!(
                shared.connections.available_permits(),
                all - 2,
                "a parked connection keeps its place"
            );
        }
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopped = Instant::now();
        stop_tx.send(true).unwrap();
        late.write_all(GET).await.unwrap();
        let r = read_answers(&mut late, 2).await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "sent as the worker stops: {r}"
        );
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .expect("closed when the worker stops")
            .unwrap();
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
        let r = read_answers(&mut slow, 1).await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "the request in flight answered: {r}"
        );
        tokio::time::timeout(Duration::from_secs(3), worker)
            .await
            .expect("the worker done")
            .unwrap();
        assert!(stopped.elapsed() < Duration::from_secs(3));
        assert_eq!(shared.connections.available_permits(), all);
    }

    /// With every place taken, a worker waiting for one for a new connection still tends
    /// its parked ones: a request on one is answered, and one idle past its deadline
    /// closes and gives its place to the waiting connection.
    #[tokio::test]
    async fn a_worker_waiting_for_a_place_tends_its_parked_connections() {
        let more = "idle_timeout_secs = 2\nmax_connections = 1\n";
        let (shared, _) = worker_for(upstream().await, more);
        assert_eq!(shared.connections.available_permits(), 1);
        let (addr, _stop, _) = running(&shared);
        let mut parked = tokio::net::TcpStream::connect(addr).await.unwrap();
        parked.write_all(GET).await.unwrap();
        let r = read_answers(&mut parked, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        // Accepted; the worker waits for the place the parked one holds.
        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        waiting.write_all(GET).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        parked.write_all(GET).await.unwrap();
        let r = read_answers(&mut parked, 1).await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "the parked one answered: {r}"
        );
        let answered = Instant::now();
        let rest = read_answers(&mut parked, 1).await;
        assert!(rest.is_empty(), "{rest}");
        assert!(
            answered.elapsed() < Duration::from_millis(2500),
            "closed at its deadline"
        );
        let r = read_answers(&mut waiting, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "the waiting one served: {r}");
    }

    /// A worker's pool is purged: a connection to the payment API that no request took
    /// for a purge period closes, long before the read timeout.
    #[tokio::test]
    async fn a_workers_unused_upstream_connections_close() {
        let (shared, _) = worker_with(upstream().await, "", Duration::from_secs(60));
        let (addr, _stop, _) = running(&shared);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(GET).await.unwrap();
        let r = read_answers(&mut s, 1).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let open = || shared.upstream_connections.open();
        assert_eq!(open(), 1);
        let until = Instant::now() + PURGE_EVERY * 2 + Duration::from_secs(1);
        while open() != 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(open(), 0, "closed within two purge periods");
    }

    /// An idle connection costs its task's state: the task of a plain connection holds
    /// hyper's connection boxed (once, whatever its size), its timer, its wait for the
    /// worker's stop and little else. At most 536 bytes in an optimised build: tokio's task
    /// (the state, its header and trailer, 128-byte aligned) is then 640 bytes; past it, 768
    /// (a debug build lays the state out in a few bytes more).
    #[tokio::test]
    async fn a_connection_task_holds_its_connection_once_and_little_else() {
        let (_shared, conn) = worker_for("127.0.0.1:9".parse().unwrap(), "");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let graceful = GracefulShutdown::new();
        let task = serve_http1(
            conn,
            Seen::new(stream, Activity::new()),
            stop,
            graceful.watcher(),
            None,
        );
        let task_size = std::mem::size_of_val(&task);
        let most = if cfg!(debug_assertions) { 544 } else { 536 };
        assert!(
            task_size <= most,
            "a connection's task is {task_size} bytes"
        );
    }
}
