//! A worker's connections to the payment API: HTTP/1.1 connections (see [`super::client`]),
//! kept alive and reused per backend address.
//!
//! A request takes an idle connection to its backend that is still open, or dials one
//! (another healthy backend on connect failure, see [`Dialer`]). The connection goes back
//! when the answer's body has been read to its end (at once when the answer came whole with
//! its head); an answer dropped before its end (the client went away, the layer refused it)
//! closes its connection, as what is left of it on the wire would corrupt the next
//! exchange. An idle connection is looked at before it is taken, and at each purge: one the
//! payment API closed (or sent anything on), or idle for the upstream read timeout, closes
//! then; one that no request took for a whole [`PURGE_EVERY`] closes at the purge (see
//! [`Pool::purge`]).
//!
//! Each worker has its own pool, only ever touched by its own thread: no task hop, no
//! spawned task per request or per connection, and an uncontended lock.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::client::{self, Answer, Exchanged, Reading};
use super::upstream::Dialer;

/// Why a request got no answer from the payment API.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Backends with idle connections remembered; should DNS hand out ever new addresses, the
/// ones without a live idle connection are forgotten. Looked up by a scan: a payment API
/// has a handful of addresses, and a scan of those costs less than hashing one.
const MAX_BACKENDS: usize = 256;

/// The most a connection to the payment API reads ahead of what its answer's reader took
/// (hyper's buffer, which also bounds an answer's head): a client that reads its answer
/// slowly, or not at all, makes the proxy hold at most this much of it (hyper's default,
/// about 400 KB, made a slow HTTP/1 reader hold about 1 MB). nginx's `proxy_buffers` are
/// 8 × 4 KiB by default, and its head's buffer 4 KiB.
const UPSTREAM_READ_BUFFER: usize = 64 << 10;

/// How often each pool closes the connections no request took since the last time: a load
/// that fell leaves its connections (and their buffers) open no longer than this, twice at
/// most, rather than until the read timeout; a load that goes on keeps what it uses.
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(5);

/// The process's open connections to the payment API, in use or idle, over every worker's
/// pool. A used connection goes back to its pool only while there are at most `keep` of
/// them: the open-file budget gives each client connection one upstream connection.
///
/// A fixed number of idle connections per pool would close connections a sustained load
/// needs (thousands of clients, answers coming back in batches) only to dial them again;
/// this bound keeps what the load uses, no more than the descriptors allow. Idle
/// connections close at the upstream read timeout, so the pools shrink when the load does.
///
/// And at most `most` sockets are open at all, counted until they close: an HTTP/1 client
/// has one request in flight at a time, but an HTTP/2 client one per stream, each on a
/// connection of its own, so a few clients sending their bodies slowly would otherwise open
/// connections without end (and take every descriptor the process has). A request that
/// would open one more waits for one to close (a used one then closes rather than going
/// idle, and an idle one closes in whichever worker's pool has one), up to the connect
/// timeout: [`Busy`].
pub(crate) struct OpenConnections {
    open: AtomicUsize,
    keep: usize,
    /// Sockets open: from before the dial until the connection closes.
    sockets: AtomicUsize,
    most: usize,
    /// Requests waiting for a connection to close, and their wake-up.
    waiting: AtomicUsize,
    closed: tokio::sync::Notify,
    /// Every worker's pool, for a waiting request to close an idle connection of.
    pools: Mutex<Vec<Weak<dyn CloseIdle>>>,
}

/// A pool that can close one of its idle connections.
trait CloseIdle: Send + Sync {
    /// Closes the least recently used idle connection, if there is one.
    fn close_one(&self) -> bool;
}

impl OpenConnections {
    /// At most `keep` connections kept, `most` open (each the client connections the server
    /// serves).
    pub(crate) fn new(keep: usize, most: usize) -> Arc<Self> {
        Arc::new(OpenConnections {
            open: AtomicUsize::new(0),
            keep,
            sockets: AtomicUsize::new(0),
            most,
            waiting: AtomicUsize::new(0),
            closed: tokio::sync::Notify::new(),
            pools: Mutex::default(),
        })
    }

    /// One socket more, if fewer than `most` are open: counted until the guard drops.
    fn try_open(self: &Arc<Self>) -> Option<Socket> {
        self.sockets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.most).then_some(n + 1)
            })
            .ok()?;
        Some(Socket(self.clone()))
    }

    /// [`try_open`](Self::try_open), waiting up to `wait` for a socket to close.
    async fn open_one(self: &Arc<Self>, wait: Duration) -> Result<Socket, Busy> {
        let _waiting = Waiting::new(&self.waiting);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the look: a close between the two still wakes this one.
            closed.as_mut().enable();
            if let Some(socket) = self.try_open() {
                return Ok(socket);
            }
            // An idle connection of some worker's pool closes for this one (its task ends
            // there, and the close wakes this request).
            self.close_idle();
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return Err(Busy);
            }
        }
    }

    /// Counts one connection open until the first of the guard's clones drops.
    fn opened(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::new(Count {
            open: self.clone(),
            counted: AtomicBool::new(true),
        }))
    }

    /// Closes an idle connection of the first pool that has one.
    fn close_idle(&self) {
        let pools: Vec<_> = match self.pools.lock() {
            Ok(mut pools) => {
                pools.retain(|p| p.strong_count() > 0);
                pools.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return,
        };
        let _ = pools.iter().any(|p| p.close_one());
    }

    /// Whether a request waits for a connection to close.
    fn wanted(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    /// The connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// More connections open than may be kept.
    fn over(&self) -> bool {
        self.open() > self.keep
    }
}

/// One open connection, counted until the first of its holders lets go: the pool (the
/// connection is given up) or the connection's task (it closed, idle or not).
#[derive(Clone)]
struct Counted(Arc<Count>);

struct Count {
    open: Arc<OpenConnections>,
    counted: AtomicBool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.counted.swap(false, Ordering::Relaxed) {
            self.0.open.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One socket to the payment API, counted among [`OpenConnections`]' sockets until the
/// connection's task, which holds it, ends.
struct Socket(Arc<OpenConnections>);

impl Drop for Socket {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::SeqCst);
        if self.0.wanted() {
            self.0.closed.notify_one();
        }
    }
}

/// One request counted among the ones waiting for a connection to close, while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// As many connections to the payment API open as [`OpenConnections`] allows, none closed
/// within the connect timeout: the request is not sent.
#[derive(Debug)]
pub(crate) struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("as many connections to the payment API open as the proxy may open")
    }
}

impl std::error::Error for Busy {}

impl Busy {
    /// Whether `e` or one of its causes is [`Busy`].
    pub(crate) fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        super::error::causes(e).any(|c| c.is::<Busy>())
    }
}

/// A worker's connections to the payment API.
pub(crate) struct Pool {
    dialer: Dialer,
    open: Arc<OpenConnections>,
    idle: Mutex<Vec<Idle>>,
}

/// The idle connections to one backend, the most recently used last.
struct Idle {
    addr: SocketAddr,
    conns: Vec<Conn>,
    /// The fewest idle since the last purge: that many at the bottom were not taken since.
    untaken: usize,
}

/// A connection to the payment API, counted among the open ones and among the sockets
/// while it is held (once dropped, its socket is closed).
struct Conn {
    client: client::Conn,
    counted: Counts,
    /// Since when it is idle.
    idle_since: Instant,
}

/// What a connection is counted as while it is open.
struct Counts {
    _open: Counted,
    _socket: Socket,
}

impl Conn {
    /// Whether an idle connection can carry a request: open, nothing unasked on it, idle for
    /// less than `most`.
    fn usable(&mut self, most: Duration) -> bool {
        self.idle_since.elapsed() < most && self.client.idle_open()
    }
}

impl Pool {
    pub(crate) fn new(dialer: Dialer, open: Arc<OpenConnections>) -> Arc<Self> {
        let pool = Arc::new(Pool {
            dialer,
            open: open.clone(),
            idle: Mutex::default(),
        });
        if let Ok(mut pools) = open.pools.lock() {
            let weak: Weak<dyn CloseIdle> = Arc::downgrade(&pool) as Weak<Pool>;
            pools.push(weak);
        }
        pool
    }

    /// Every `period`, [`Pool::purge`]s `pool` while it lasts.
    pub(crate) async fn purge_every(pool: Weak<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = pool.upgrade() else {
                return;
            };
            pool.purge();
        }
    }

    /// `req` (origin-form URI, `Host` set) to `backend`, or to another healthy one if that
    /// cannot be reached. The answer's body gives the connection back at its end.
    pub(crate) async fn send<B>(
        self: Arc<Self>,
        backend: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<Pooled>, Error>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Error>,
    {
        let (addr, client, counted) = match self.take(backend) {
            Some(Conn {
                client, counted, ..
            }) => (backend, client, counted),
            // Boxed: the dial (connect, TLS handshake) is the largest state of this future,
            // and the future of a request on a pooled connection, moved as it is built,
            // stays small.
            None => Box::pin(self.dial(backend)).await?,
        };
        let exchanged = Box::pin(client.exchange(req)).await?;
        Ok(self.hold(addr, counted, exchanged))
    }

    /// A new connection to `backend` (or another healthy one), the address it went to, and
    /// what it is counted as.
    async fn dial(&self, backend: SocketAddr) -> Result<(SocketAddr, client::Conn, Counts), Error> {
        let socket = match self.open.try_open() {
            Some(socket) => socket,
            // An idle connection closes to make room, if a pool has one.
            None => self.open.open_one(self.dialer.connect_timeout()).await?,
        };
        let (addr, io) = self.dialer.dial(backend).await?;
        let counted = Counts {
            _open: self.open.opened(),
            _socket: socket,
        };
        Ok((addr, client::Conn::new(io, UPSTREAM_READ_BUFFER), counted))
    }
}

impl CloseIdle for Pool {
    fn close_one(&self) -> bool {
        let Ok(mut idle) = self.idle.lock() else {
            return false;
        };
        let Some(backend) = idle.iter_mut().find(|b| !b.conns.is_empty()) else {
            return false;
        };
        backend.conns.remove(0);
        backend.untaken = backend.untaken.saturating_sub(1);
        true
    }
}

/// The pool's bookkeeping.
impl Pool {
    /// An idle connection to `addr` that can carry a request, the most recently used
    /// first; the ones looked at that cannot close.
    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let most = self.dialer.read_timeout();
        let mut idle = self.idle.lock().ok()?;
        let backend = idle.iter_mut().find(|b| b.addr == addr)?;
        while let Some(mut conn) = backend.conns.pop() {
            // In order: the bottom stays the least recently used (see `purge`).
            if backend.conns.len() < backend.untaken {
                // One of the bottom ones taken after all: one fewer untaken.
                backend.untaken -= 1;
            }
            if conn.usable(most) {
                return Some(conn);
            }
        }
        None
    }

    /// Closes the connections no request took since the last purge (the ones at the
    /// bottom of each list, as many as the list's fewest since then), and those that can
    /// no longer carry a request.
    fn purge(&self) {
        let most = self.dialer.read_timeout();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        for backend in idle.iter_mut() {
            let n = backend.untaken.min(backend.conns.len());
            backend.conns.drain(..n);
            backend.conns.retain_mut(|c| c.usable(most));
            backend.untaken = backend.conns.len();
        }
    }

    /// The connection back in the pool, idle from now, unless more are open than may be
    /// kept, or a request waits for one to close (then it closes).
    fn put(&self, addr: SocketAddr, client: client::Conn, counted: Counts) {
        if self.open.over() || self.open.wanted() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let i = match idle.iter().position(|b| b.addr == addr) {
            Some(i) => i,
            None => {
                if idle.len() >= MAX_BACKENDS {
                    let most = self.dialer.read_timeout();
                    idle.retain_mut(|b| {
                        b.conns.retain_mut(|c| c.usable(most));
                        b.untaken = b.untaken.min(b.conns.len());
                        !b.conns.is_empty()
                    });
                    if idle.len() >= MAX_BACKENDS {
                        return;
                    }
                }
                idle.push(Idle {
                    addr,
                    conns: Vec::new(),
                    untaken: 0,
                });
                idle.len() - 1
            }
        };
        idle[i].conns.push(Conn {
            client,
            counted,
            idle_since: Instant::now(),
        });
    }

    /// The answer, its body holding the connection until its end (or the connection back
    /// now, when the answer came whole).
    fn hold(
        self: &Arc<Self>,
        addr: SocketAddr,
        counted: Counts,
        ex: Exchanged,
    ) -> Response<Pooled> {
        let body = match ex.body {
            Answer::Whole(bytes, conn) => {
                if let Some(client) = conn {
                    self.put(addr, client, counted);
                }
                Kind::Whole((!bytes.is_empty()).then_some(bytes))
            }
            Answer::Early(reading) => {
                // The rest of the request and the answer's body, carried on by a task of
                // their own (rare: a payment API answering before it has read the request).
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Some(client) = reading.finish(tx).await {
                        pool.put(addr, client, counted);
                    }
                });
                Kind::Early(rx)
            }
            Answer::Reading(reading) => Kind::Reading(Box::new((
                reading,
                GiveBack {
                    pool: self.clone(),
                    addr,
                    counted,
                },
            ))),
        };
        ex.head.map(|()| Pooled(body))
    }
}

/// What goes back to the pool, with the connection, at the end of an answer.
struct GiveBack {
    pool: Arc<Pool>,
    addr: SocketAddr,
    counted: Counts,
}

/// An answer's body from a pooled connection: at its end, the connection goes back.
pub(crate) struct Pooled(Kind);

enum Kind {
    /// Read whole with the head.
    Whole(Option<Bytes>),
    /// Read from the connection (boxed: the usual answer comes whole, and what moves it
    /// stays small). Dropped before its end, the connection closes: its socket first, then
    /// its counts.
    Reading(Box<(Reading, GiveBack)>),
    /// Sent by the task that carries on an exchange answered before its request was all
    /// written ([`Reading::finish`]).
    Early(tokio::sync::mpsc::Receiver<Result<Bytes, client::Error>>),
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = client::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, client::Error>>> {
        let kind = &mut self.get_mut().0;
        let polled = match kind {
            Kind::Whole(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Early(rx) => return rx.poll_recv(cx).map(|d| d.map(|d| d.map(Frame::data))),
            Kind::Reading(r) => {
                let reading = &mut r.0;
                let polled = reading.poll_data(cx);
                match &polled {
                    Poll::Pending => return Poll::Pending,
                    // hyper's server stops polling once the body says it ended.
                    Poll::Ready(Some(Ok(_))) if !reading.is_end() => {}
                    _ => {
                        // The end (the connection goes back), or a broken answer (the
                        // connection goes with it).
                        if let Kind::Reading(r) = std::mem::replace(kind, Kind::Whole(None)) {
                            let (reading, g) = *r;
                            if let Some(client) = reading.into_conn() {
                                g.pool.put(g.addr, client, g.counted);
                            }
                        }
                    }
                }
                polled
            }
        };
        polled.map(|d| d.map(|d| d.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Reading(r) => r.0.is_end(),
            Kind::Early(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let left = match &self.0 {
            Kind::Whole(bytes) => Some(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Reading(r) => r.0.left(),
            Kind::Early(_) => None,
        };
        left.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::Empty;

    use super::*;
    use crate::balance::Balancer;
    use crate::upstream::Connector;

    /// A request's future is built, then moved (into the forwarding future, onto the heap)
    /// before it runs: each move copies all of it. A new connection's dial, by far its
    /// largest state, is boxed apart, so that what is moved for a request on a pooled
    /// connection is small.
    #[test]
    fn a_request_future_is_small_to_move() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let balancer = Arc::new(Balancer::try_from_iter([addr]).unwrap());
        let t = Duration::from_secs(1);
        let connector = Connector::new(None, t, t, t).unwrap();
        let open = OpenConnections::new(1, 1);
        let pool = Pool::new(Dialer::new(connector, balancer), open);
        let send = pool.send(addr, Request::new(Empty::new()));
        let size = std::mem::size_of_val(&send);
        assert!(size <= 1024, "a request's future is {size} bytes");
    }

    /// What [`burst_upstream`] hands back.
    struct Burst {
        addr: SocketAddr,
        /// The connections the upstream accepted.
        accepted: Arc<AtomicUsize>,
        pool: Arc<Pool>,
        /// Tells the upstream to close the connection that carried a `/close` request.
        close: Arc<tokio::sync::Notify>,
    }

    /// An upstream on loopback answering `ok` to each request, the first answer of each of
    /// its first `at_once` connections held until all of them are in (that many in use at
    /// once), and a pool to it keeping at most `keep` connections open.
    async fn burst_upstream(at_once: usize, keep: usize) -> Burst {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(tokio::sync::Notify::new());
        let all_in = Arc::new(tokio::sync::Barrier::new(at_once));
        let (count, close_one) = (accepted.clone(), close.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                // Only the first `at_once` connections wait (a later one would wait forever).
                let mut first = count.fetch_add(1, Ordering::SeqCst) < at_once;
                let (all_in, close_one) = (all_in.clone(), close_one.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        assert!(buf[..n].ends_with(b"\r\n\r\n"));
                        if std::mem::take(&mut first) {
                            all_in.wait().await;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        if buf.starts_with(b"GET /close ") {
                            close_one.notified().await;
                            return;
                        }
                    }
                });
            }
        });
        let balancer = Arc::new(Balancer::try_from_iter([addr]).unwrap());
        let t = Duration::from_secs(5);
        let connector = Connector::new(None, t, t, t).unwrap();
        let pool = Pool::new(
            Dialer::new(connector, balancer),
            OpenConnections::new(keep, usize::MAX),
        );
        Burst {
            addr,
            accepted,
            pool,
            close,
        }
    }

    /// `n` requests for `path` through `pool` at once, each answer read to its end.
    async fn requests(pool: &Arc<Pool>, addr: SocketAddr, n: usize, path: &str) {
        use http_body_util::BodyExt;
        let all: Vec<_> = (0..n)
            .map(|_| {
                let req = Request::builder()
                    .uri(path)
                    .header("host", "x")
                    .body(Empty::new())
                    .unwrap();
                let send = pool.clone().send(addr, req);
                tokio::spawn(async move {
                    let body = send.await.unwrap().into_body();
                    assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
                })
            })
            .collect();
        for r in all {
            r.await.unwrap();
        }
    }

    fn idle(pool: &Pool) -> usize {
        pool.idle
            .lock()
            .unwrap()
            .iter()
            .map(|b| b.conns.len())
            .sum()
    }

    /// The idle connections, each by the address of its count.
    fn idle_ones(pool: &Pool) -> Vec<usize> {
        let idle = pool.idle.lock().unwrap();
        let conns = idle.iter().flat_map(|b| b.conns.iter());
        conns
            .map(|c| Arc::as_ptr(&c.counted._open.0) as usize)
            .collect()
    }

    /// Five requests at once on five new connections, with room for three: the pool keeps
    /// three of them once the answers are read, the other two close; the next request takes
    /// a kept one.
    #[tokio::test]
    async fn a_pool_keeps_no_more_connections_than_may_be_open() {
        let Burst {
            addr,
            accepted,
            pool,
            close,
        } = burst_upstream(5, 3).await;
        requests(&pool, addr, 5, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
        assert_eq!(idle(&pool), 3, "connections kept");
        assert_eq!(pool.open.open(), 3, "connections open");
        requests(&pool, addr, 1, "/").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 5, "a kept one was used");
        assert_eq!(idle(&pool), 3);

        // A kept connection the payment API closes is let go when the pool next looks at
        // it: the next request (which takes another kept one) finds it closed.
        requests(&pool, addr, 1, "/close").await;
        assert_eq!(idle(&pool), 3, "the connection was kept");
        close.notify_one();
        // The close reaches the proxy's socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.open.open(), 3, "not looked at yet");
        requests(&pool, addr, 1, "/").await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            5,
            "a kept open one was used"
        );
        assert_eq!(pool.open.open(), 2, "open");
        assert_eq!(idle(&pool), 2);
    }

    /// Connections no request took for a whole purge period close; the one a load goes on
    /// using stays (none dialed again); once the load stops, it closes too.
    #[tokio::test]
    async fn a_pool_closes_what_no_request_took_for_a_period() {
        const PERIOD: Duration = Duration::from_millis(300);
        let Burst {
            addr,
            accepted,
            pool,
            ..
        } = burst_upstream(5, 100).await;
        tokio::spawn(Pool::purge_every(Arc::downgrade(&pool), PERIOD));
        requests(&pool, addr, 5, "/").await;
        assert_eq!(idle(&pool), 5);
        // One request at a time for three periods: one connection in use, four untaken.
        requests(&pool, addr, 1, "/").await;
        let used = *idle_ones(&pool).last().unwrap();
        let until = tokio::time::Instant::now() + PERIOD * 3;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            requests(&pool, addr, 1, "/").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5, "none dialed again");
        assert_eq!(idle_ones(&pool), [used], "the one in use kept");
        assert_eq!(pool.open.open(), 1, "connections open");
        tokio::time::sleep(PERIOD * 2 + Duration::from_millis(100)).await;
        assert_eq!(idle(&pool), 0);
        assert_eq!(pool.open.open(), 0);
    }

    /// An upstream on loopback answering `ok` to each request `delay` after it came, and
    /// the most connections it had open at once.
    async fn paced_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let most = peak.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(open, Ordering::SeqCst);
                let now = now.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(1..) = s.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, peak)
    }

    /// A pool to `addr` with `connect` as its connect timeout (5 s to read and write), over
    /// [`OpenConnections`] allowing `most` open.
    fn pool_to(addr: SocketAddr, connect: Duration, most: usize) -> Arc<Pool> {
        let balancer = Arc::new(Balancer::try_from_iter([addr]).unwrap());
        let t = Duration::from_secs(5);
        let connector = Connector::new(None, connect, t, t).unwrap();
        Pool::new(
            Dialer::new(connector, balancer),
            OpenConnections::new(most, most),
        )
    }

    /// Six requests at once with room for two connections: the others wait for one to
    /// close, and every one is answered; never more than two sockets were open (the
    /// payment API may see a close a moment after the next connection).
    #[tokio::test]
    async fn a_pool_opens_no_more_connections_than_it_may() {
        let (addr, peak) = paced_upstream(Duration::from_millis(200)).await;
        let pool = pool_to(addr, Duration::from_secs(5), 2);
        // The count, looked at every millisecond while the requests run.
        let (watched, done) = (pool.clone(), Arc::new(AtomicBool::new(false)));
        let finished = done.clone();
        let most = tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..5000 {
                most = most.max(watched.open.sockets.load(Ordering::SeqCst));
                if finished.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        });
        requests(&pool, addr, 6, "/").await;
        done.store(true, Ordering::SeqCst);
        let most = most.await.unwrap();
        assert_eq!(most, 2, "sockets open at once");
        assert!(peak.load(Ordering::SeqCst) <= 3, "sockets open at once");
    }

    /// With room for one connection, in use for longer than the connect timeout: the next
    /// request is not sent, [`Busy`]; once the first is answered, a request goes again.
    #[tokio::test]
    async fn a_request_that_finds_no_room_within_the_connect_timeout_is_busy() {
        let (addr, peak) = paced_upstream(Duration::from_millis(1500)).await;
        let pool = pool_to(addr, Duration::from_millis(300), 1);
        let first = tokio::spawn(requests_owned(pool.clone(), addr));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap();
        let started = tokio::time::Instant::now();
        let e = pool.clone().send(addr, req).await.err().expect("busy");
        assert!(Busy::caused(&*e), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        first.await.unwrap();
        requests(&pool, addr, 1, "/").await;
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }

    async fn requests_owned(pool: Arc<Pool>, addr: SocketAddr) {
        requests(&pool, addr, 1, "/").await;
    }

    /// A burst of many requests at once (a sustained load's answers come back in such
    /// batches): every connection is kept, and the next burst dials none.
    #[tokio::test]
    async fn a_pool_keeps_what_a_burst_used() {
        const AT_ONCE: usize = 300;
        let Burst {
            addr,
            accepted,
            pool,
            ..
        } = burst_upstream(AT_ONCE, 10_000).await;
        requests(&pool, addr, AT_ONCE, "/").await;
        assert_eq!(idle(&pool), AT_ONCE, "connections kept");
        // Kept connections turn ready to send once their tasks have seen the answer's end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        requests(&pool, addr, AT_ONCE, "/").await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            AT_ONCE,
            "connections dialed"
        );
    }

    /// An upstream on loopback that answers its first request with `answer` once it has
    /// its head (the body, if any, left unread), then, when `go` is notified, sends `rest`
    /// and keeps the connection open (`None`: closes it).
    async fn scripted_upstream(
        answer: &'static [u8],
        rest: Option<&'static [u8]>,
    ) -> (SocketAddr, Arc<tokio::sync::Notify>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let go = Arc::new(tokio::sync::Notify::new());
        let wait = go.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            wait.notified().await;
            if let Some(rest) = rest {
                let _ = s.write_all(rest).await;
                // Held open until the proxy closes it.
                let _ = s.read(&mut buf).await;
            }
        });
        (addr, go)
    }

    fn get() -> Request<Empty<Bytes>> {
        Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Empty::new())
            .unwrap()
    }

    /// An answer that came whole with its head gives its connection back before its body
    /// is read; one whose body is still to come, only at the body's end.
    #[tokio::test]
    async fn a_connection_goes_back_when_its_answer_is_whole() {
        use http_body_util::BodyExt;
        let (addr, _go) =
            scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", Some(b"")).await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        let res = pool.clone().send(addr, get()).await.unwrap();
        assert_eq!(idle(&pool), 1, "back before the body is read");
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");

        let (addr, go) = scripted_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab",
            Some(b"cd"),
        )
        .await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        let res = pool.clone().send(addr, get()).await.unwrap();
        assert_eq!(idle(&pool), 0, "held by the body");
        go.notify_one();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(idle(&pool), 1, "back at the body's end");
        assert_eq!(pool.open.open(), 1);
    }

    /// A body that sends its first bytes, then never ends; of the size given, if any.
    struct Stuck(Option<Bytes>, Option<u64>);

    impl Body for Stuck {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
        fn size_hint(&self) -> SizeHint {
            self.1.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    /// A body that sends its first bytes, then fails when told to.
    struct FailsLater(Option<Bytes>, tokio::sync::oneshot::Receiver<()>);

    impl Body for FailsLater {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(b) = self.0.take() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            std::task::ready!(std::future::Future::poll(Pin::new(&mut self.1), cx)).ok();
            Poll::Ready(Some(Err(std::io::ErrorKind::TimedOut.into())))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(100)
        }
    }

    /// An answer that comes before the request's body has all been sent goes to the client
    /// at once; the connection is not kept while the request is still being written, nor
    /// once its body failed (the payment API waits for bytes that never come). A
    /// connection whose answer says `Connection: close` is not kept either.
    #[tokio::test]
    async fn a_connection_whose_exchange_was_cut_short_is_not_kept() {
        use http_body_util::BodyExt;
        let (addr, _go) = scripted_upstream(
            b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n",
            Some(b""),
        )
        .await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        let (fail, failed) = tokio::sync::oneshot::channel();
        let req = Request::post("/")
            .header("host", "x")
            .body(FailsLater(Some(Bytes::from_static(b"0123456789")), failed))
            .unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        assert_eq!(res.status(), 413);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
        assert_eq!((idle(&pool), pool.open.open()), (0, 1), "still writing");
        fail.send(()).unwrap();
        for _ in 0..100 {
            if pool.open.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((idle(&pool), pool.open.open()), (0, 0), "closed");

        let (addr, _go) = scripted_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            Some(b""),
        )
        .await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        let res = pool.clone().send(addr, get()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!((idle(&pool), pool.open.open()), (0, 0), "connection: close");
    }

    /// A purge lets go of an idle connection the payment API closed, though a request took
    /// it since the last purge.
    #[tokio::test]
    async fn a_purge_closes_what_the_payment_api_closed() {
        let (addr, go) =
            scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", None).await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        pool.clone().send(addr, get()).await.unwrap();
        assert_eq!(idle(&pool), 1);
        go.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.open.open(), 1, "not looked at yet");
        pool.purge();
        assert_eq!((idle(&pool), pool.open.open()), (0, 0));
    }

    /// An upstream that reads a request's head, answers at once with `answer`, then reads
    /// whatever else comes until the connection closes (echoing it when `echo`), and counts
    /// the requests it got.
    async fn early_upstream(
        answer: &'static [u8],
        echo: bool,
        rcvbuf: Option<u32>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(16).unwrap();
        let heads = Arc::new(AtomicUsize::new(0));
        let count = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 64 << 10];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n @ 1..) => got.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    s.write_all(answer).await.unwrap();
                    if echo {
                        s.write_all(&got[at..]).await.unwrap();
                    }
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if echo {
                            s.write_all(&buf[..n]).await.unwrap();
                        }
                    }
                });
            }
        });
        (addr, heads)
    }

    /// A request whose answer's head comes before the request is all on the wire (here a
    /// body larger than the sockets hold, the payment API reading it only after its answer):
    /// the connection carries no other request before the rest is written.
    #[tokio::test]
    async fn a_connection_is_not_kept_before_its_request_is_written_whole() {
        use http_body_util::{BodyExt, Full};
        let (addr, heads) = early_upstream(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            Some(4096),
        )
        .await;
        let pool = pool_to(addr, Duration::from_secs(5), 10);
        let big = Bytes::from(vec![b'a'; 32 << 20]);
        let req = Request::post("/")
            .header("host", "x")
            .body(Full::new(big))
            .unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // The next request is one of its own, not inside the first one's body (on a new
        // connection, or on the first once its request is all written).
        let res = pool.clone().send(addr, get()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(heads.load(Ordering::SeqCst), 2);
    }

    /// A body from a channel, of the size given.
    struct Chan(tokio::sync::mpsc::Receiver<Bytes>, u64);

    impl Body for Chan {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.1)
        }
    }

    /// An answer whose head comes before the request's end: the request's body goes on
    /// being written as the answer's body is read (a payment API may answer as it reads),
    /// and with both ended the connection is kept.
    #[tokio::test]
    async fn a_request_is_written_on_after_an_early_answer_head() {
        use http_body_util::BodyExt;
        let (addr, _) =
            early_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true, None).await;
        let pool = pool_to(addr, Duration::from_secs(5), 10);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        let req = Request::post("/")
            .header("host", "x")
            .body(Chan(rx, 10))
            .unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        assert_eq!(res.status(), 200);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send(Bytes::from_static(b"world")).await.unwrap();
        });
        let body = tokio::time::timeout(Duration::from_secs(3), res.into_body().collect());
        assert_eq!(body.await.unwrap().unwrap().to_bytes(), "helloworld");
        assert_eq!(idle(&pool), 1, "kept: both ended");
    }

    /// A `GET` whose body's size is unknown goes without it (hyper's client's rule: a
    /// `GET` is framed without a body unless its length says otherwise), and its connection is kept.
    #[tokio::test]
    async fn a_get_with_a_body_of_unknown_size_goes_without_it() {
        use http_body_util::BodyExt;
        let (addr, _go) =
            scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", Some(b"")).await;
        let pool = pool_to(addr, Duration::from_secs(1), 10);
        let req = Request::get("/")
            .header("host", "x")
            .body(Stuck(Some(Bytes::from_static(b"abc")), None))
            .unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(idle(&pool), 1);
    }

    /// An upstream that reads a request's head, then at once answers `answer_len` bytes
    /// while it reads `request_len` bytes of the request's body; the bytes it read.
    async fn duplex_upstream(
        answer_len: usize,
        request_len: usize,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let count = read.clone();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            count.fetch_add(got.len() - at, Ordering::SeqCst);
            tokio::spawn(async move {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {answer_len}\r\n\r\n");
                w.write_all(head.as_bytes()).await.unwrap();
                let _ = w.write_all(&vec![b'b'; answer_len]).await;
                // Held open until the proxy closes it.
                std::future::pending::<()>().await;
            });
            while count.load(Ordering::SeqCst) < request_len {
                match r.read(&mut buf).await {
                    Ok(n @ 1..) => count.fetch_add(n, Ordering::SeqCst),
                    _ => return,
                };
            }
        });
        (addr, read)
    }

    /// A body of `len` bytes fed by a task in pieces: the task ends once all are taken.
    fn fed(len: usize) -> (Chan, tokio::task::JoinHandle<()>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            for _ in 0..len / (64 << 10) {
                tx.send(Bytes::from(vec![b'a'; 64 << 10])).await.unwrap();
            }
        });
        (Chan(rx, len as u64), feeder)
    }

    /// A payment API that answers before it has read the request, with an answer larger
    /// than the sockets hold: the request's body is all sent though the client reads none
    /// of the answer until it has sent its body (as a simple client does).
    #[tokio::test]
    async fn a_request_answered_early_is_sent_before_its_answer_is_read() {
        use http_body_util::BodyExt;
        const LEN: usize = 8 << 20;
        let (addr, read) = duplex_upstream(LEN, LEN).await;
        let pool = pool_to(addr, Duration::from_secs(5), 10);
        let (body, feeder) = fed(LEN);
        let req = Request::post("/").header("host", "x").body(body).unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), feeder)
            .await
            .expect("the request's body was taken whole before its answer was read")
            .unwrap();
        let answer = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer.len(), LEN);
        for _ in 0..100 {
            if read.load(Ordering::SeqCst) == LEN {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(read.load(Ordering::SeqCst), LEN);
    }

    /// An answer that comes whole before the request is (a `401` at the head): the client
    /// has it at once, and the rest of the request is still written (the client's body is
    /// taken whole, its connection kept), then the connection goes back.
    #[tokio::test]
    async fn a_request_answered_whole_early_is_still_sent_whole() {
        use http_body_util::BodyExt;
        const LEN: usize = 4 << 20;
        let (addr, read) = duplex_upstream(2, LEN).await;
        let pool = pool_to(addr, Duration::from_secs(5), 10);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Bytes::from(vec![b'a'; 64 << 10])).await.unwrap();
        let req = Request::post("/")
            .header("host", "x")
            .body(Chan(rx, LEN as u64))
            .unwrap();
        let res = pool.clone().send(addr, req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "bb");
        // The rest of the body after the answer has ended.
        for _ in 1..LEN / (64 << 10) {
            tokio::time::timeout(
                Duration::from_secs(5),
                tx.send(Bytes::from(vec![b'a'; 64 << 10])),
            )
            .await
            .expect("the request's body is still taken")
            .unwrap();
        }
        for _ in 0..200 {
            if read.load(Ordering::SeqCst) == LEN && idle(&pool) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            read.load(Ordering::SeqCst),
            LEN,
            "the request written whole"
        );
        assert_eq!(idle(&pool), 1, "then the connection went back");
    }
}
