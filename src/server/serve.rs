//! `serve`: the server the configuration describes. The tower layer on hyper, one
//! single-threaded tokio runtime per worker thread, each with its own listening socket
//! (`SO_REUSEPORT`: the kernel spreads connections over the workers) and its own connection
//! pool to the payment API. A request stays on the thread that accepted it: no work
//! stealing, no cross-thread wake-ups.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::admin::{self, Health};
use super::balance::{self, Balancer};
use super::config::ProxyConfig;
use super::metrics::Metrics;
use super::pool::{Pool, Pooled};
use super::timed::{BodyTimeout, Timed};
use super::upgrade;
use super::upstream::{Connector, Dialer};
use crate::engine::{check_request_head, strip_hop_by_hop, HeadLimits};
use crate::tower::{upstream_refusal, KlarnaStepUp, StepUpBody};
use crate::{BufferBudget, Record, Refusal, StepUp};

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
        // An HTTP/2 request names its host in the URI: HTTP/1.1 upstream wants `Host`.
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
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
        let answer = self.pool.clone().send(backend, req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let since = metrics.as_ref().map(|_| Instant::now());
            let res = match answer.await {
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
                        let r = upstream_refusal(&*e);
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
struct Shared {
    step_up: StepUp,
    dialer: Dialer,
    balancer: Arc<Balancer>,
    metrics: Option<Metrics>,
    budget: BufferBudget,
    tls: Option<TlsAcceptor>,
    connections: Arc<Semaphore>,
    limits: HeadLimits,
    body_timeout: Duration,
    body_deadline: Duration,
    idle_timeout: Duration,
    grace: Duration,
    health: Arc<Health>,
}

impl Shared {
    /// A worker's own stack: its own connection pool over the shared dialer.
    fn front(&self) -> Front {
        let forward = Forward(Arc::new(ForwardParts {
            pool: Pool::new(self.dialer.clone()),
            balancer: self.balancer.clone(),
            metrics: self.metrics.clone(),
        }));
        let mut stack =
            KlarnaStepUp::new(forward, self.step_up.clone()).buffer_budget(self.budget.clone());
        if let Some(m) = self.metrics.clone() {
            stack = stack.observe(move |r: &Record| m.record(r));
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
async fn worker(
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
    let front = shared.front();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // From the connection's start or the previous answer's end to a complete head.
        .header_read_timeout(shared.idle_timeout)
        // hyper's own size bound sits above ours, so that ours answers first, with JSON;
        // beyond twice ours, hyper answers 431 itself.
        .max_buf_size((shared.limits.max_bytes * 2).max(8192));
    // Its header count: without this call 100 (parsed into an uninitialised array on the
    // stack); set only for more, as it costs an initialised array of that size per request
    // (about 1% of the CPU, measured). Over hyper's count: hyper's own 431, without JSON.
    if shared.limits.max_count > HYPER_MAX_HEADERS {
        http1.max_headers(shared.limits.max_count * 2);
    }
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(shared.limits.max_bytes * 2).unwrap_or(u32::MAX));
    // Every connection task holds a receiver: all gone = every connection done.
    let (alive, _) = watch::channel(());
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
        let (front, http1, http2, tls, stop, alive) = (
            front.clone(),
            http1.clone(),
            http2.clone(),
            shared.tls.clone(),
            stop.clone(),
            alive.subscribe(),
        );
        let head_timeout = shared.idle_timeout;
        tokio::spawn(async move {
            let (_permit, _alive) = (permit, alive);
            let Some(acceptor) = tls else {
                let (io, seen) = Seen::new(stream);
                let conn = http1.serve_connection(TokioIo::new(io), front);
                return until_stopped(conn, stop, &seen).await;
            };
            let Ok(Ok(stream)) = tokio::time::timeout(head_timeout, acceptor.accept(stream)).await
            else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let (io, seen) = Seen::new(stream);
            if h2 {
                until_stopped(http2.serve_connection(TokioIo::new(io), front), stop, &seen).await;
            } else {
                until_stopped(http1.serve_connection(TokioIo::new(io), front), stop, &seen).await;
            }
        });
        if stopping {
            break;
        }
    }
    // No new connections; answers on the open ones from now on close them.
    drop(listeners);
    if tokio::time::timeout(shared.grace, alive.closed())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; stopping with requests in flight");
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
/// [`Seen`]) gets [`LATE_FIRST_BYTES`] to send them before hyper is told.
async fn until_stopped<C: GracefulConnection>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    seen: &AtomicBool,
) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    // Polled on: hyper reads the first bytes as they come (and answers them).
    let first_bytes = std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
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
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
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

/// A listening socket for `addr` that other workers (and, during an upgrade, another
/// instance of the proxy run by the same user) may share: `SO_REUSEPORT`.
fn listen_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Fails when some socket listens on `addr` already, `SO_REUSEPORT` or not: a second
/// instance started on the address of a running one would otherwise share its traffic
/// silently (only a hand-over, `serve --upgrade`, shares the sockets, and it takes them over
/// rather than binding its own).
///
/// A probe bind without `SO_REUSEPORT`: Linux refuses it (`EADDRINUSE`) while any socket
/// listens on the address, whatever that socket's options; with `SO_REUSEADDR`, connections
/// of an earlier run still in `TIME_WAIT` do not count. The probe is closed before the
/// listeners are bound: two instances started at the very same moment may both pass it.
fn not_served(addr: SocketAddr) -> Result<(), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| e.to_string())?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "it is served already (another klarna-stepup? `serve --upgrade` takes over \
             from a running instance): {e}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for SIGTERM or SIGINT (SIGHUP is logged and ignored).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return tracing::error!("cannot install signal handlers; stopping");
    };
    loop {
        tokio::select! {
            _ = term.recv() => break tracing::info!("SIGTERM: graceful shutdown"),
            _ = int.recv() => break tracing::info!("SIGINT: graceful shutdown"),
            // SIGHUP's default action would end the process silently.
            _ = hup.recv() => tracing::warn!(
                "SIGHUP ignored: the configuration is read at start only; \
                 restart to change it"
            ),
        }
    }
}

/// Builds the server the configuration describes and runs it until SIGTERM or SIGINT; then
/// `/readyz` answers 503 at once, the listeners close (after `server.drain_delay_ms`), and
/// the proxy stops once every request in flight is answered (each answer saying
/// `Connection: close`), at the latest after `server.grace_period_secs`. With
/// `server.upgrade_socket`, a successor started by [`serve_upgrade`] takes its listening
/// sockets over, and it drains the same way.
///
/// It blocks the calling thread and starts its own runtimes: call it from `main`, not from
/// inside a tokio runtime. An error is a configuration the server cannot start with, named by
/// its key (`server.upstream: cannot resolve: …`).
pub fn serve(config: ProxyConfig) -> Result<(), String> {
    run(config, false)
}

/// As [`serve`], taking over from the instance running on `server.upgrade_socket`: its
/// listening sockets (and its admin endpoint's, when the addresses are the same) are handed
/// over with the connections queued in them, and it drains once this one accepts. Everything
/// else is set up first: on any error here the running instance is not touched and keeps
/// serving. A `server.listen` that changed is listened on afresh (said in a log line).
pub fn serve_upgrade(config: ProxyConfig) -> Result<(), String> {
    run(config, true)
}

fn run(config: ProxyConfig, upgrade: bool) -> Result<(), String> {
    let s = &config.server;
    let listen: SocketAddr = s
        .listen
        .parse()
        .map_err(|e| format!("server.listen: {e}"))?;
    let admin_key = if s.admin.is_some() {
        "server.admin"
    } else {
        "server.metrics"
    };
    let admin_addr: Option<SocketAddr> = s
        .admin_address()
        .map(|a| a.parse().map_err(|e| format!("{admin_key}: {e}")))
        .transpose()?;
    let connector = Connector::new(
        s.upstream_tls.as_ref(),
        Duration::from_millis(s.connect_timeout_ms),
        Duration::from_millis(s.read_timeout_ms),
        Duration::from_millis(s.write_timeout_ms),
    )?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    // Resolved and checked once before the first request; then kept up to date on the
    // control runtime.
    let balancer = control.block_on(async {
        let lb =
            balance::balancer(s.upstream.list(), connector.clone(), s.health_check.clone()).await?;
        // An upgrade replaces a running instance only with one that reaches an upstream: as
        // many rounds as it takes to call an address unhealthy.
        let rounds = if upgrade { s.health_check.fails } else { 1 };
        for _ in 0..rounds.max(1) {
            lb.backends().run_health_check(true).await;
        }
        Ok::<_, String>(lb)
    })?;
    let dialer = Dialer::new(connector, balancer.clone());
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(TlsAcceptor::from(super::tls::server_config(t)?)),
    };
    if upgrade && !balance::any_healthy(&balancer) {
        let e = "server.upstream: no upstream is healthy: not taking over from the running one";
        return Err(e.into());
    }
    // Everything that can fail is done before the running instance is asked for anything.
    let mut inherited = None;
    let mut upgrade_socket = None;
    match &s.upgrade_socket {
        None if upgrade => {
            let e = "server.upgrade_socket: not set; --upgrade takes over from the instance on it";
            return Err(e.into());
        }
        None => {}
        Some(path) => {
            if !upgrade {
                upgrade::clear_stale(path)?;
            }
            let mut socket = upgrade::Socket::bind(path)?;
            if upgrade {
                // Named only once this instance serves (below): should it fail before, the
                // running instance keeps its name for the next attempt.
                inherited = Some(upgrade::take_over(path)?);
            } else {
                socket.publish()?;
            }
            upgrade_socket = Some(socket);
        }
    }
    let sockets = match inherited.as_mut().and_then(|i| i.listeners_for(listen)) {
        Some(l) => l,
        None => {
            let fail = |e| format!("server.listen: cannot listen on {listen}: {e}");
            not_served(listen).map_err(fail)?;
            (0..s.threads)
                .map(|_| listen_shared(listen))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?
        }
    };
    let admin = match admin_addr {
        None => None,
        Some(addr) => Some(
            match inherited.as_mut().and_then(|i| i.admin_for(addr)) {
                Some(l) => Ok(l),
                None => std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l)),
            }
            .map_err(|e| format!("{admin_key}: cannot listen on {addr}: {e}"))?,
        ),
    };
    let per_worker = upgrade::spread(&sockets, s.threads)
        .map_err(|e| format!("server.listen: cannot share the listening sockets: {e}"))?;
    // Kept to hand over; without an upgrade socket, the workers' copies are all there is.
    let handover = upgrade_socket.as_ref().map(|_| {
        let admin = admin.as_ref().and_then(|a| a.try_clone().ok());
        upgrade::Handover::new(sockets, admin)
    });
    let health = Arc::new(Health::new(s.threads, balancer.clone()));
    let shared = Arc::new(Shared {
        step_up: config.step_up.clone(),
        dialer,
        balancer: balancer.clone(),
        metrics: admin.as_ref().map(|_| {
            let partners = &config.step_up.config().partners;
            Metrics::register(
                partners
                    .enabled()
                    .then(|| partners.entries.iter().map(|e| e.id.clone()).collect()),
            )
        }),
        budget: BufferBudget::new(s.buffer_budget_bytes),
        tls,
        connections: Arc::new(Semaphore::new(super::limits::open_files_for(
            s.max_connections,
        ))),
        limits: HeadLimits {
            max_bytes: s.max_header_bytes,
            max_count: s.max_headers,
        },
        body_timeout: Duration::from_millis(s.request_body_timeout_ms),
        body_deadline: Duration::from_millis(s.request_body_deadline_ms),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        grace: Duration::from_secs(s.grace_period_secs),
        health: health.clone(),
    });
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::with_capacity(s.threads);
    for (i, listeners) in per_worker.into_iter().enumerate() {
        let (shared, stopped) = (shared.clone(), stopped.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("server.threads: cannot start a runtime: {e}"))?;
        let handle = std::thread::Builder::new()
            .name(format!("klarna-stepup-{i}"))
            .spawn(move || runtime.block_on(worker(listeners, shared, stopped)))
            .map_err(|e| format!("server.threads: cannot start a thread: {e}"))?;
        workers.push(handle);
    }
    tracing::info!(
        listen = %s.listen,
        threads = s.threads,
        upstreams = s.upstream.list().len(),
        tls = s.tls.is_some(),
        upstream_tls = s.upstream_tls.is_some(),
        admin = s.admin_address().unwrap_or("off"),
        upgraded_from = inherited.as_ref().map(|i| i.pid()),
        "klarna-stepup serving"
    );
    let maintained = balance::maintain(
        balancer,
        Duration::from_millis(s.health_check.interval_ms),
        Duration::from_secs(s.dns_refresh_secs),
    );
    let drain_delay = Duration::from_millis(s.drain_delay_ms);
    control.block_on(async move {
        tokio::spawn(maintained);
        let admin = match admin.map(tokio::net::TcpListener::from_std) {
            None => None,
            Some(Ok(l)) => Some(tokio::spawn(admin::serve(l, health.clone()))),
            Some(Err(e)) => {
                tracing::error!(error = %e, "admin endpoint not served");
                None
            }
        };
        if let Some(predecessor) = inherited {
            // Its workers accept before the predecessor is told to stop.
            let since = Instant::now();
            while health.workers_up.load(Ordering::Relaxed) < health.workers
                && since.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(Err(e)) = upgrade_socket.as_mut().map(|u| u.publish()) {
                tracing::error!(error = %e, "this instance cannot be upgraded in turn");
            }
            let _ = tokio::task::spawn_blocking(move || predecessor.ready()).await;
        }
        let (ready_tx, mut successor) = tokio::sync::mpsc::unbounded_channel();
        if let (Some(u), Some(h)) = (upgrade_socket.as_mut(), &handover) {
            if let Some((listener, uid)) = u.take_listener() {
                drop(tokio::spawn(upgrade::serve(
                    listener,
                    uid,
                    h.clone(),
                    ready_tx,
                )));
            }
        }
        let handed_over = tokio::select! {
            () = shutdown_signal() => false,
            Some(pid) = successor.recv() => {
                tracing::info!(pid, "handed over to the successor: graceful shutdown");
                true
            }
        };
        // Unready first, so that load balancers stop sending before the listeners close.
        health.draining.store(true, Ordering::Relaxed);
        if let Some(h) = &handover {
            h.close();
        }
        if handed_over {
            // The successor answers on the admin socket now.
            if let Some(a) = admin {
                a.abort();
            }
        }
        if !drain_delay.is_zero() {
            tracing::info!(
                ms = drain_delay.as_millis() as u64,
                "unready; still accepting for drain_delay_ms"
            );
            tokio::time::sleep(drain_delay).await;
        }
        let _ = stop.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        drop(upgrade_socket);
    });
    tracing::info!("stopped");
    Ok(())
}
