//! A worker thread: the tower layer on hyper, on a single-threaded tokio runtime with its own
//! listening socket (`SO_REUSEPORT`: the kernel spreads connections over the workers) and its
//! own connection pool to the payment API. A request stays on the thread that accepted it: no
//! work stealing, no cross-thread wake-ups.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
use super::metrics::Metrics;
use super::pool::{OpenConnections, Pool, Pooled};
use super::timed::{BodyTimeout, Timed};
use super::upstream::{Dialer, UpstreamTimeout};
use klarna_stepup::engine::{check_request_head, strip_hop_by_hop, HeadLimits};
use klarna_stepup::tower::{KlarnaStepUp, StepUpBody};
use klarna_stepup::{BufferBudget, Record, Refusal, StepUp};

use crate::telemetry::Telemetry;

/// A request's body as the layer and the client see it: each wait bounded.
type ReqBody = StepUpBody<Timed<Incoming>>;
/// The payment API's answer as the layer sees it.
type UpBody = StepUpBody<Pooled<ReqBody>>;
/// The answer as the client gets it.
type ResBody = StepUpBody<UpBody>;

/// The payment API's side of the stack: the request pointed at the upstream, hop-by-hop
/// headers off both ways, failures as step-up's JSON 502/504 (408 when it was the client's
/// body that did not come).
#[derive(Clone)]
struct Forward(Arc<ForwardParts>);

/// One allocation shared by the clones the layer makes per request.
struct ForwardParts {
    pool: Arc<Pool<ReqBody>>,
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
        let r = Refusal::upstream_unreachable();
        if let Some(m) = &self.metrics {
            m.upstream_failed(r.code().as_str());
        }
        let mut res = r.to_response().map(StepUpBody::full);
        res.extensions_mut().insert(r);
        res
    }
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
                    if let (Some(m), Some(since)) = (&metrics, since) {
                        m.upstream_answered(res.status().as_u16(), since.elapsed());
                    }
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, StepUpBody::new(body))
                }
                Err(e) => {
                    let r = if BodyTimeout::caused(&*e) {
                        Refusal::request_timeout()
                    } else {
                        let r = if UpstreamTimeout::caused(&*e) {
                            Refusal::upstream_timeout()
                        } else {
                            Refusal::upstream_unreachable()
                        };
                        if let Some(m) = &metrics {
                            m.upstream_failed(r.code().as_str());
                        }
                        r
                    };
                    let mut res = r.to_response().map(StepUpBody::full);
                    res.extensions_mut().insert(r);
                    res
                }
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
}

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = FrontFuture<
        <KlarnaStepUp<Forward> as tower_service::Service<Request<Timed<Incoming>>>>::Future,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + parts.uri.authority().map_or(0, |a| a.as_str().len());
        if let Err(r) = check_request_head(&mut parts.headers, parts.version, target, self.limits) {
            // The body is not read: the connection cannot carry another request.
            let mut res = r.to_response().map(StepUpBody::full);
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return FrontFuture::Answered { res: Some(res) };
        }
        let http1 = parts.version < http::Version::HTTP_2;
        let req = Request::from_parts(
            parts,
            Timed::new(body, self.body_timeout, self.body_deadline),
        );
        // `Forward` is always ready, and so is the layer over it.
        let mut stack = self.stack.clone();
        FrontFuture::Stack {
            fut: tower_service::Service::call(&mut stack, req),
            draining: http1.then(|| self.health.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Front`]'s answer: at once, or the stack's.
    #[project = FrontProj]
    enum FrontFuture<F> {
        Answered { res: Option<Response<ResBody>> },
        Stack { #[pin] fut: F, draining: Option<Arc<Health>> },
    }
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
{
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FrontProj::Answered { res } => {
                Poll::Ready(Ok(res.take().expect("polled after completion")))
            }
            FrontProj::Stack { fut, draining } => {
                let mut res = std::task::ready!(fut.poll(cx));
                if let (Ok(res), Some(h)) = (&mut res, draining) {
                    if h.draining.load(Ordering::Relaxed) {
                        res.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                }
                Poll::Ready(res)
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
        let upstream_connections = OpenConnections::new(max_connections);
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
            health: Arc::new(Health::new(s.threads, balancer, upstream_connections)),
        }
    }

    /// A worker's own stack: its own connection pool over the shared dialer.
    fn front(&self) -> Front {
        let forward = Forward(Arc::new(ForwardParts {
            pool: Pool::new(self.dialer.clone(), self.upstream_connections.clone()),
            balancer: self.balancer.clone(),
            metrics: self.metrics.clone(),
        }));
        let mut stack =
            KlarnaStepUp::new(forward, self.step_up.clone()).buffer_budget(self.budget.clone());
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
    shared.health.workers_up.fetch_add(1, Ordering::Relaxed);
    let conn = Conn::new(&shared);
    // Every connection is watched: told to finish when the worker stops, and waited for.
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = accept_any(&listeners, &mut next) => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The place is taken after the accept, not before: a worker waiting on an empty
        // socket must not hold a place that a connection queued on another worker's socket
        // needs (with the cap reached, each worker holds at most one accepted connection
        // back until a place is free).
        // A connection accepted is answered: should the stop come while it waits for its
        // place, it is served without one (the drain answers it), and the loop ends after.
        let (permit, stopping) = tokio::select! {
            biased;
            p = shared.connections.clone().acquire_owned() => (p.ok(), false),
            _ = stop.changed() => (None, true),
        };
        let _ = stream.set_nodelay(true);
        conn.spawn(stream, permit, stop.clone(), graceful.watcher());
        if stopping {
            break;
        }
    }
    // No new connections; answers on the open ones from now on close them.
    drop(listeners);
    if tokio::time::timeout(shared.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; stopping with requests in flight");
    }
}

/// How a worker serves each connection: its stack, hyper's HTTP/1 and HTTP/2 settings, the
/// listener's TLS.
#[derive(Clone)]
struct Conn {
    front: Front,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    /// The TLS handshake's bound (as the head's: `idle_timeout_secs`).
    handshake_timeout: Duration,
}

impl Conn {
    fn new(shared: &Shared) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // From the connection's start or the previous answer's end to a complete head.
            .header_read_timeout(shared.idle_timeout)
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
            .max_header_list_size(u32::try_from(shared.limits.max_bytes * 2).unwrap_or(u32::MAX));
        Conn {
            front: shared.front(),
            http1,
            http2,
            tls: shared.tls.clone(),
            handshake_timeout: shared.idle_timeout,
        }
    }

    /// Spawns the task that serves `stream` to its end (see [`until_stopped`]), holding
    /// its place (`permit`) until then.
    ///
    /// An idle connection's memory is its task's state (the size of the largest thing the
    /// task ever holds, copies included) and hyper's buffers. So a plain connection's task
    /// holds hyper's connection on the heap, once, and little else; a TLS connection (the
    /// handshake, rustls' state, HTTP/2) has a task type of its own.
    fn spawn(
        &self,
        stream: tokio::net::TcpStream,
        permit: Option<OwnedSemaphorePermit>,
        stop: watch::Receiver<bool>,
        watcher: Watcher,
    ) {
        let Some(acceptor) = &self.tls else {
            let (io, seen) = Seen::new(stream);
            let conn = self
                .http1
                .serve_connection(TokioIo::new(io), self.front.clone());
            tokio::spawn(until_stopped(Box::new(conn), stop, seen, watcher, permit));
            return;
        };
        tokio::spawn(
            self.clone()
                .serve_tls(acceptor.clone(), stream, stop, watcher, permit),
        );
    }

    /// Serves one TLS connection to its end.
    async fn serve_tls(
        self,
        acceptor: TlsAcceptor,
        stream: tokio::net::TcpStream,
        stop: watch::Receiver<bool>,
        watcher: Watcher,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let Ok(Ok(stream)) =
            tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await
        else {
            return;
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let (io, seen) = Seen::new(stream);
        let io = TokioIo::new(io);
        if h2 {
            let conn = self.http2.serve_connection(io, self.front);
            until_stopped(Box::new(conn), stop, seen, watcher, permit).await;
        } else {
            let conn = self.http1.serve_connection(io, self.front);
            until_stopped(Box::new(conn), stop, seen, watcher, permit).await;
        }
    }
}

/// How long a connection that has sent nothing yet when the worker stops may still take to
/// send its first bytes.
const LATE_FIRST_BYTES: Duration = Duration::from_millis(250);

/// Serves a connection to its end; once the worker stops, it finishes what it has begun
/// (HTTP/1: the answer in progress, with `Connection: close`; HTTP/2: GOAWAY).
///
/// Told to shut down, hyper closes at once a connection it has read nothing from. So that a
/// request sent as the drain begins (its connection accepted, its bytes on the way or not
/// read yet) is answered rather than cut off, a connection that has sent nothing yet (see
/// [`Seen`]) gets [`LATE_FIRST_BYTES`] to send them before hyper is told. Then hyper-util's
/// graceful shutdown tells it (`watcher`: the worker's [`GracefulShutdown`], which also
/// waits for every connection); a connection is watched only from then on, as
/// `GracefulConnection` is sealed and cannot be wrapped to wait for the first bytes itself.
async fn until_stopped<C: GracefulConnection + Unpin>(
    mut conn: Box<C>,
    mut stop: watch::Receiver<bool>,
    seen: Arc<AtomicBool>,
    watcher: Watcher,
    _permit: Option<OwnedSemaphorePermit>,
) {
    tokio::select! {
        biased;
        _ = &mut *conn => return,
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    // The drain's state (its timer, the watched connection) on the heap too.
    Box::pin(drain(*conn, seen, watcher)).await;
}

/// [`until_stopped`] once the worker stops.
async fn drain<C: GracefulConnection + Unpin>(
    mut conn: C,
    seen: Arc<AtomicBool>,
    watcher: Watcher,
) {
    // Polled on: hyper reads the first bytes as they come (and answers them).
    let first_bytes = std::future::poll_fn(|cx| {
        if Pin::new(&mut conn).poll(cx).is_ready() {
            return Poll::Ready(true);
        }
        if seen.load(Ordering::Relaxed) {
            Poll::Ready(false)
        } else {
            Poll::Pending
        }
    });
    if let Ok(true) = tokio::time::timeout(LATE_FIRST_BYTES, first_bytes).await {
        return;
    }
    // The worker's shutdown is out (or comes at once): told to finish, polled to its end.
    let _ = watcher.watch(conn).await;
}

pin_project_lite::pin_project! {
    /// A connection's transport that notes whether any byte has been read from it.
    struct Seen<T> {
        #[pin]
        io: T,
        seen: Arc<AtomicBool>,
    }
}

impl<T> Seen<T> {
    fn new(io: T) -> (Self, Arc<AtomicBool>) {
        let seen = Arc::new(AtomicBool::new(false));
        (
            Seen {
                io,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl<T: tokio::io::AsyncRead> tokio::io::AsyncRead for Seen<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.seen.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Seen<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
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
    use bytes::Bytes;
    use http_body_util::Empty;

    /// An idle connection costs its task's state: the task of a plain connection holds
    /// hyper's connection boxed (once, whatever its size) and little else.
    #[tokio::test]
    async fn a_connection_task_holds_its_connection_once_and_little_else() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn_size = std::mem::size_of_val(&conn);
        let (_stop_tx, stop) = watch::channel(false);
        let graceful = GracefulShutdown::new();
        let task = until_stopped(
            Box::new(conn),
            stop,
            Arc::new(AtomicBool::new(false)),
            graceful.watcher(),
            None,
        );
        let task_size = std::mem::size_of_val(&task);
        assert!(
            task_size <= 512 && task_size < conn_size,
            "a connection's task is {task_size} bytes (its connection {conn_size})"
        );
    }
}
