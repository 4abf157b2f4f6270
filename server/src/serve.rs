//! `serve`: the server the configuration describes, started, supervised and drained. Its
//! worker threads (see `worker`) serve the requests; the calling thread runs a control
//! runtime of its own: the balancer's discovery and health checks, the admin endpoint, the
//! upgrade socket, the signals.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle as Task;
use tokio_rustls::TlsAcceptor;

use super::admin::{self, Health};
use super::balance::{self, Balancer};
use super::config::{ProxyConfig, ServerConfig};
use super::error::{Error, UpgradeError};
use super::notify;
use super::upgrade;
use super::upstream::{Connector, Dialer};
use super::worker::{worker, Shared};
use crate::telemetry::Telemetry;

/// Builds the server the configuration describes and runs it until SIGTERM or SIGINT; then
/// `/readyz` answers 503 at once, the listeners close (after `server.drain_delay_ms`), and
/// the proxy stops once every request in flight is answered (each answer saying
/// `Connection: close`), at the latest after `server.grace_period_secs`. With
/// `server.upgrade_socket`, a successor started by [`serve_upgrade`] takes its listening
/// sockets over, and it drains the same way.
///
/// It blocks the calling thread and starts its own runtimes: call it from `main`, not from
/// inside a tokio runtime. An error is a setting the server cannot start with, named by its
/// key (`server.upstream: cannot resolve: …`).
pub fn serve(config: ProxyConfig) -> Result<(), Error> {
    run(config, false)
}

/// As [`serve`], taking over from the instance running on `server.upgrade_socket`: its
/// listening sockets (and its admin endpoint's, when the addresses are the same) are handed
/// over with the connections queued in them, and it drains once this one accepts. Everything
/// else is set up first: on any error here the running instance is not touched and keeps
/// serving. A `server.listen` that changed is listened on afresh (said in a log line).
pub fn serve_upgrade(config: ProxyConfig) -> Result<(), Error> {
    run(config, true)
}

fn run(config: ProxyConfig, upgrade: bool) -> Result<(), Error> {
    let s = &config.server;
    let addresses = Addresses::of(s)?;
    let connector = Connector::new(
        s.upstream_tls.as_ref(),
        Duration::from_millis(s.connect_timeout_ms),
        Duration::from_millis(s.read_timeout_ms),
        Duration::from_millis(s.write_timeout_ms),
    )?;
    let control = runtime().map_err(Error::start(None, "cannot start the control runtime"))?;
    // Resolved and checked once before the first request; then kept up to date on the
    // control runtime.
    let balancer = control.block_on(checked_balancer(s, connector.clone(), upgrade))?;
    let dialer = Dialer::new(connector, balancer.clone());
    let tls = match &s.tls {
        None => None,
        Some(t) => Some(TlsAcceptor::from(super::tls::server_config(t)?)),
    };
    if upgrade && !balance::any_healthy(&balancer) {
        return Err(Error::NoHealthyUpstream);
    }
    // Caught from before the listening sockets are open (the kernel completes connections
    // from then on): a SIGHUP then (a reload out of habit) must not stop the proxy, and a
    // SIGTERM drains it once it serves.
    let signals = {
        let _runtime = control.enter();
        Signals::install()
    };
    // Everything that can fail is done before the running instance is asked for anything.
    let mut sockets = Sockets::open(s, &addresses, upgrade)?;
    let telemetry = s
        .telemetry
        .as_ref()
        .map(Telemetry::start)
        .transpose()
        .map_err(Error::start(
            Some("server.telemetry"),
            "cannot start the span exporter",
        ))?;
    let shared = Shared::new(
        &config,
        dialer,
        balancer.clone(),
        tls,
        sockets.admin.is_some(),
        telemetry,
    );
    let shared = Arc::new(shared);
    let (stop, stopped) = watch::channel(false);
    let workers = start_workers(std::mem::take(&mut sockets.per_worker), &shared, stopped)?;
    tracing::info!(
        listen = %s.listen,
        threads = s.threads,
        upstreams = s.upstream.list().len(),
        tls = s.tls.is_some(),
        upstream_tls = s.upstream_tls.is_some(),
        admin = s.admin_address().unwrap_or("off"),
        upgraded_from = sockets.inherited.as_ref().map(|i| i.pid()),
        "klarna-stepup serving"
    );
    control.block_on(supervise(
        Control {
            balancer,
            health: shared.health.clone(),
            sockets,
            workers,
            stop,
            drain_delay: Duration::from_millis(s.drain_delay_ms),
        },
        signals,
    ));
    tracing::info!("stopped");
    Ok(())
}

/// A runtime on the calling thread.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `server.listen`, and the admin endpoint's address with the key it was given by.
struct Addresses {
    listen: SocketAddr,
    admin: Option<(SocketAddr, &'static str)>,
}

impl Addresses {
    fn of(s: &ServerConfig) -> Result<Self, Error> {
        let listen = s.listen.parse().map_err(|source| Error::Address {
            key: "server.listen",
            source,
        })?;
        let key = if s.admin.is_some() {
            "server.admin"
        } else {
            "server.metrics"
        };
        let admin = s
            .admin_address()
            .map(|a| a.parse().map_err(|source| Error::Address { key, source }))
            .transpose()?
            .map(|addr| (addr, key));
        Ok(Addresses { listen, admin })
    }
}

/// The balancer of `server.upstream`, its addresses resolved and checked: once, or for an
/// upgrade (which replaces a running instance only with one that reaches an upstream) as
/// many rounds as it takes to call an address unhealthy.
async fn checked_balancer(
    s: &ServerConfig,
    connector: Connector,
    upgrade: bool,
) -> Result<Arc<Balancer>, Error> {
    let dns_refresh = Duration::from_secs(s.dns_refresh_secs);
    let lb = balance::balancer(
        s.upstream.list(),
        connector,
        s.health_check.clone(),
        dns_refresh,
    )
    .await?;
    let rounds = if upgrade { s.health_check.fails } else { 1 };
    for _ in 0..rounds.max(1) {
        lb.backends().run_health_check(true).await;
    }
    Ok(lb)
}

/// What the server listens on: its workers' sockets (bound here, or handed over by the
/// running instance), the admin endpoint's, and the upgrade socket.
struct Sockets {
    per_worker: Vec<Vec<std::net::TcpListener>>,
    admin: Option<std::net::TcpListener>,
    upgrade_socket: Option<upgrade::Socket>,
    /// The running instance this one takes over from.
    inherited: Option<upgrade::Inherited>,
    /// Kept to hand over; without an upgrade socket, the workers' copies are all there is.
    handover: Option<Arc<upgrade::Handover>>,
}

impl Sockets {
    fn open(s: &ServerConfig, addresses: &Addresses, upgrade: bool) -> Result<Self, Error> {
        let (upgrade_socket, mut inherited) = upgrade_socket(s, upgrade)?;
        let listen = addresses.listen;
        let sockets = match inherited.as_mut().and_then(|i| i.listeners_for(listen)) {
            Some(l) => l,
            None => listeners(listen, s.threads)?,
        };
        let admin = match addresses.admin {
            None => None,
            Some((addr, key)) => Some(admin_listener(addr, key, inherited.as_mut())?),
        };
        let per_worker = upgrade::spread(&sockets, s.threads).map_err(Error::start(
            Some("server.listen"),
            "cannot share the listening sockets",
        ))?;
        let handover = upgrade_socket.as_ref().map(|_| {
            let admin = admin.as_ref().and_then(|a| a.try_clone().ok());
            upgrade::Handover::new(sockets, admin)
        });
        Ok(Sockets {
            per_worker,
            admin,
            upgrade_socket,
            inherited,
            handover,
        })
    }
}

/// The upgrade socket, if configured: published at once on a start; bound but named only
/// once this instance serves on an upgrade (see [`take_over`]: should it fail before, the
/// running instance keeps its name for the next attempt), with what the running instance
/// handed over.
fn upgrade_socket(
    s: &ServerConfig,
    upgrade: bool,
) -> Result<(Option<upgrade::Socket>, Option<upgrade::Inherited>), Error> {
    let Some(path) = &s.upgrade_socket else {
        return match upgrade {
            true => Err(UpgradeError::NotSet.into()),
            false => Ok((None, None)),
        };
    };
    if !upgrade {
        upgrade::clear_stale(path)?;
    }
    let mut socket = upgrade::Socket::bind(path)?;
    if upgrade {
        let inherited = upgrade::take_over(path)?;
        return Ok((Some(socket), Some(inherited)));
    }
    socket.publish()?;
    Ok((Some(socket), None))
}

/// One listening socket per worker thread on `addr`, which nothing may serve yet.
fn listeners(addr: SocketAddr, threads: usize) -> Result<Vec<std::net::TcpListener>, Error> {
    not_served(addr)?;
    (0..threads)
        .map(|_| listen_shared(addr))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Listen {
            key: "server.listen",
            addr,
            source,
        })
}

/// The admin endpoint's listening socket: the running instance's when it listened on the
/// same address, else a new one.
fn admin_listener(
    addr: SocketAddr,
    key: &'static str,
    inherited: Option<&mut upgrade::Inherited>,
) -> Result<std::net::TcpListener, Error> {
    if let Some(l) = inherited.and_then(|i| i.admin_for(addr)) {
        return Ok(l);
    }
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| Error::Listen { key, addr, source })
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
fn not_served(addr: SocketAddr) -> Result<(), Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let fail = |source| Error::Listen {
        key: "server.listen",
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    match socket.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(Error::Served { addr, source: e })
        }
        Err(e) => Err(fail(e)),
    }
}

/// One thread per worker, each with its own single-threaded runtime.
fn start_workers(
    per_worker: Vec<Vec<std::net::TcpListener>>,
    shared: &Arc<Shared>,
    stopped: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    let mut workers = Vec::with_capacity(per_worker.len());
    for (i, listeners) in per_worker.into_iter().enumerate() {
        let (shared, stopped) = (shared.clone(), stopped.clone());
        let runtime = runtime().map_err(Error::start(
            Some("server.threads"),
            "cannot start a runtime",
        ))?;
        let handle = std::thread::Builder::new()
            .name(format!("klarna-stepup-{i}"))
            .spawn(move || runtime.block_on(worker(listeners, shared, stopped)))
            .map_err(Error::start(
                Some("server.threads"),
                "cannot start a thread",
            ))?;
        workers.push(handle);
    }
    Ok(workers)
}

/// What the control runtime looks after while the workers serve.
struct Control {
    balancer: Arc<Balancer>,
    health: Arc<Health>,
    sockets: Sockets,
    workers: Vec<JoinHandle<()>>,
    /// Tells the workers to stop accepting and drain.
    stop: watch::Sender<bool>,
    drain_delay: Duration,
}

/// From serving to stopped: the balancer's loop and the admin endpoint run, the running
/// instance (after an upgrade) is told to drain, the upgrade socket is served; a signal or
/// a successor's take-over starts the drain.
async fn supervise(mut c: Control, mut signals: Option<Signals>) {
    // Signals are caught from before the workers start (see `run`): one during the
    // take-over drains once it is done.
    let (maintaining, maintained) = watch::channel(false);
    tokio::spawn(balance::maintain(c.balancer.clone(), maintained));
    let admin = match c
        .sockets
        .admin
        .take()
        .map(tokio::net::TcpListener::from_std)
    {
        None => None,
        Some(Ok(l)) => Some(tokio::spawn(admin::serve(l, c.health.clone()))),
        Some(Err(e)) => {
            tracing::error!(error = %e, "admin endpoint not served");
            None
        }
    };
    match c.sockets.inherited.take() {
        Some(predecessor) => {
            take_over(predecessor, &c.health, c.sockets.upgrade_socket.as_mut()).await;
        }
        None => notify::ready(),
    }
    let successor = serve_upgrade_socket(&mut c.sockets);
    let handed_over = tokio::select! {
        () = shutdown_signal(signals.as_mut()) => {
            notify::stopping();
            false
        }
        pid = successor => {
            tracing::info!(pid, "handed over to the successor: graceful shutdown");
            true
        }
    };
    drain(c, admin, handed_over).await;
    let _ = maintaining.send(true);
}

/// After a hand-over: once this instance's workers accept, the upgrade socket takes its
/// configured name and the running instance is told to drain; then systemd hears that this
/// process is the service's main one.
async fn take_over(
    predecessor: upgrade::Inherited,
    health: &Health,
    upgrade_socket: Option<&mut upgrade::Socket>,
) {
    let since = Instant::now();
    while health.workers_up.load(Ordering::Relaxed) < health.workers
        && since.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some(Err(e)) = upgrade_socket.map(|u| u.publish()) {
        let e = Error::from(e);
        tracing::error!(error = %e, "this instance cannot be upgraded in turn");
    }
    let _ = tokio::task::spawn_blocking(move || predecessor.ready()).await;
    notify::took_over();
}

/// Serves the upgrade socket, once it is this instance's: the future is the pid of a
/// successor that took over (pending for ever without an upgrade socket).
fn serve_upgrade_socket(sockets: &mut Sockets) -> impl std::future::Future<Output = u32> {
    let (ready, mut successor) = mpsc::unbounded_channel();
    if let (Some(u), Some(h)) = (sockets.upgrade_socket.as_mut(), &sockets.handover) {
        if let Some((listener, uid)) = u.take_listener() {
            drop(tokio::spawn(upgrade::serve(
                listener,
                uid,
                h.clone(),
                ready,
            )));
        }
    }
    async move {
        match successor.recv().await {
            Some(pid) => pid,
            None => std::future::pending().await,
        }
    }
}

/// The drain: unready, the hand-over closed, the listeners closed after the drain delay,
/// then every worker finished (each at most the grace period).
async fn drain(c: Control, admin: Option<Task<()>>, handed_over: bool) {
    // Unready first, so that load balancers stop sending before the listeners close.
    c.health.draining.store(true, Ordering::Relaxed);
    if let Some(h) = &c.sockets.handover {
        h.close();
    }
    if handed_over {
        // The successor answers on the admin socket now.
        if let Some(a) = admin {
            a.abort();
        }
    }
    if !c.drain_delay.is_zero() {
        tracing::info!(
            ms = c.drain_delay.as_millis() as u64,
            "unready; still accepting for drain_delay_ms"
        );
        tokio::time::sleep(c.drain_delay).await;
    }
    let _ = c.stop.send(true);
    let workers = c.workers;
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    drop(c.sockets);
}

/// SIGTERM, SIGINT and SIGHUP, caught (none ends the process by itself).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Option<Self> {
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Waits for SIGTERM or SIGINT (SIGHUP is logged and ignored).
async fn shutdown_signal(signals: Option<&mut Signals>) {
    let Some(s) = signals else {
        return tracing::error!("cannot install signal handlers; stopping");
    };
    loop {
        tokio::select! {
            _ = s.term.recv() => break tracing::info!("SIGTERM: graceful shutdown"),
            _ = s.int.recv() => break tracing::info!("SIGINT: graceful shutdown"),
            // SIGHUP's default action would end the process silently.
            _ = s.hup.recv() => tracing::warn!(
                "SIGHUP ignored: the configuration is read at start only; \
                 restart to change it"
            ),
        }
    }
}
