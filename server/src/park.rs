//! Plain HTTP/1 connections parked between requests: the socket alone, with no task.
//!
//! Once a connection's task has let go of hyper's connection (see `serve_http1` in `worker`
//! and [`crate::idle`]), what is left is the socket, its place among the worker's
//! connections and when its last answer ended (its next head is due an idle timeout after
//! that). A task waiting on the socket still costs its state (640 bytes) and tokio's
//! registration of the socket (about 260): more than nginx keeps for a whole idle
//! connection. So once the connection has sat idle a while longer (`Conn::lot_after` in
//! `worker`: a client that comes back sooner is served without the move), the task hands
//! the socket to the worker's [`Lot`] and ends: an epoll instance of the lot's own (mio's),
//! which the worker's loop watches through one tokio registration, and the deadlines in a
//! heap. A parked connection then costs its entry here and its deadline (64 bytes) and the
//! kernel's socket.
//!
//! When a parked socket turns readable (a request comes, or the client closes), the worker
//! serves it with a new task; when its deadline passes, or the worker stops (after a moment
//! in which a request that comes is still served), it closes. The worker tends its lot
//! whatever else it waits for (`tending` in `worker`): a worker waiting for a place among
//! its connections must not hold the places its parked ones give back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

/// A connection parked, or handed back to be served.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) stream: std::net::TcpStream,
    /// Its place among the worker's connections (see `Shared::connections` in `worker`).
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// Its last answer's end: its next request's head is due an idle timeout after it.
    pub(crate) quiet_since: Instant,
}

/// One worker's parked connections (one thread uses it: the lock is never contended).
pub(crate) struct Lot {
    inner: Mutex<Inner>,
    /// How long after its last answer's end a parked connection closes.
    idle_timeout: Duration,
}

struct Inner {
    /// The lot's epoll instance, registered with the worker's runtime.
    epoll: AsyncFd<mio::Poll>,
    events: Events,
    parked: Slab<Parked>,
    /// Keys of parked sockets that turned readable, not yet handed back.
    readable: Vec<usize>,
    /// Deadlines and their keys. An entry whose connection has left (handed back, its key
    /// reused) stays until its time and is then passed over; the heap is rebuilt when such
    /// entries outnumber the live ones.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Set for the earliest deadline.
    timer: Pin<Box<Sleep>>,
    /// The deadline `timer` was set for when the worker last looked, if any: a connection
    /// parked with an earlier one wakes the worker.
    armed: Option<Instant>,
    waker: Option<Waker>,
    /// The worker stopped: nothing is parked any more.
    closed: bool,
}

/// Readiness events taken from the lot's epoll at a time.
const EVENTS: usize = 256;

impl Lot {
    /// An empty lot on the current runtime, whose connections close `idle_timeout` after
    /// their last answer's end.
    pub(crate) fn new(idle_timeout: Duration) -> io::Result<Self> {
        // Deprecated for any `AsRawFd` whose descriptor might change or close under it (the
        // replacement is `unsafe`, which this crate forbids); `mio::Poll` owns its epoll
        // descriptor for its whole life and always gives that one.
        #[allow(deprecated)]
        let epoll = AsyncFd::with_interest(mio::Poll::new()?, tokio::io::Interest::READABLE)?;
        let inner = Mutex::new(Inner {
            epoll,
            events: Events::with_capacity(EVENTS),
            parked: Slab::new(),
            readable: Vec::new(),
            due: BinaryHeap::new(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            waker: None,
            closed: false,
        });
        Ok(Lot {
            inner,
            idle_timeout,
        })
    }

    /// The lot's state, even if a panic poisoned the lock: a lot that stopped working would
    /// hold its connections, and their places, for good.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Parks `stream`, quiet since `quiet_since` (its last answer's end), until it turns
    /// readable or its next head is due (an idle timeout after that); closes it at once if
    /// the worker has stopped (an idle connection closes then) or it cannot be watched.
    pub(crate) fn park(
        &self,
        stream: tokio::net::TcpStream,
        permit: Option<OwnedSemaphorePermit>,
        quiet_since: Instant,
    ) {
        let head_by = quiet_since + self.idle_timeout;
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.closed {
            return;
        }
        let entry = inner.parked.vacant_entry();
        let key = entry.key();
        let watched = inner.epoll.get_ref().registry().register(
            &mut SourceFd(&stream.as_raw_fd()),
            Token(key),
            Interest::READABLE,
        );
        if watched.is_err() {
            return;
        }
        entry.insert(Parked {
            stream,
            permit,
            quiet_since,
        });
        inner.due.push(Reverse((head_by, key)));
        if inner.due.len() > 2 * inner.parked.len() + 64 {
            let timeout = self.idle_timeout;
            inner.due = inner
                .parked
                .iter()
                .map(|(key, p)| Reverse((p.quiet_since + timeout, key)))
                .collect();
        }
        if inner.armed.is_none_or(|at| head_by < at) {
            if let Some(w) = inner.waker.take() {
                w.wake();
            }
        }
    }

    /// The next parked connection that turned readable, taken out of the lot; meanwhile the
    /// ones whose deadline passed close.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Parked> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.closed {
            return Poll::Pending;
        }
        loop {
            while let Some(key) = inner.readable.pop() {
                if let Some(p) = inner.parked.try_remove(key) {
                    let _ = inner
                        .epoll
                        .get_ref()
                        .registry()
                        .deregister(&mut SourceFd(&p.stream.as_raw_fd()));
                    return Poll::Ready(p);
                }
            }
            let Poll::Ready(Ok(mut ready)) = inner.epoll.poll_read_ready_mut(cx) else {
                break;
            };
            if let Err(e) = ready
                .get_inner_mut()
                .poll(&mut inner.events, Some(Duration::ZERO))
            {
                if e.kind() == io::ErrorKind::Interrupted {
                    // Looked at again on the next turn.
                    cx.waker().wake_by_ref();
                } else {
                    // Not expected of an epoll instance; its sockets still close on time.
                    tracing::warn!(error = %e, "cannot read parked connections' readiness");
                    ready.clear_ready();
                }
                break;
            }
            let before = inner.readable.len();
            inner
                .readable
                .extend(inner.events.iter().map(|e| e.token().0));
            if inner.readable.len() - before < EVENTS {
                // All taken: wait for the next.
                ready.clear_ready();
            }
        }
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = inner.due.peek() {
            if at > now {
                break;
            }
            inner.due.pop();
            if inner
                .parked
                .get(key)
                .is_some_and(|p| p.quiet_since + self.idle_timeout <= now)
            {
                // Closed (and out of the epoll instance with its last descriptor).
                inner.parked.remove(key);
            }
        }
        inner.armed = inner.due.peek().map(|r| r.0 .0);
        if let Some(at) = inner.armed {
            let at = tokio::time::Instant::from_std(at);
            if inner.timer.deadline() != at {
                inner.timer.as_mut().reset(at);
            }
            if Future::poll(inner.timer.as_mut(), cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        if !inner
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The worker stops: every parked connection closes, and any parked later.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.parked.clear();
        inner.readable.clear();
        inner.due.clear();
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.lock().parked.len()
    }

    /// No connection parked now.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the client's end and the served one.
    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (client, listener.accept().await.unwrap().0)
    }

    /// The lot, watched as a worker does: what turns readable is sent on.
    fn watched(lot: &Arc<Lot>) -> tokio::sync::mpsc::UnboundedReceiver<Parked> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let lot = lot.clone();
        tokio::spawn(async move {
            loop {
                let p = std::future::poll_fn(|cx| lot.poll_ready(cx)).await;
                if tx.send(p).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// When `client`'s parked end closes, from now.
    async fn closed_after(client: &mut TcpStream) -> Duration {
        let from = Instant::now();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(n, 0);
        from.elapsed()
    }

    /// A connection parked after another with a later deadline closes at its own (an idle
    /// timeout after its last answer's end): the worker, waiting for the later one, is
    /// woken to wait for it.
    #[tokio::test]
    async fn each_parked_connection_closes_at_its_own_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lot = Arc::new(Lot::new(Duration::from_secs(3)).unwrap());
        let _ready = watched(&lot);
        let (mut late, served) = pair(&listener).await;
        lot.park(served, None, Instant::now());
        // The worker waits for the 3 s deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut early, served) = pair(&listener).await;
        lot.park(served, None, Instant::now() - Duration::from_millis(2700));
        let at = closed_after(&mut early).await;
        assert!(
            at >= Duration::from_millis(250) && at < Duration::from_millis(1000),
            "{at:?}"
        );
        assert_eq!(lot.len(), 1);
        assert!(closed_after(&mut late).await < Duration::from_secs(3));
        assert_eq!(lot.len(), 0);
    }

    /// A parked connection that turns readable is handed back with what it was parked
    /// with, its bytes unread; one closed by its client is handed back too (its reader
    /// finds the end). Parking and handing back over and over leaves the deadlines' heap
    /// bounded by the connections parked.
    #[tokio::test]
    async fn a_readable_connection_is_handed_back_as_it_was_parked() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lot = Arc::new(Lot::new(Duration::from_secs(60)).unwrap());
        let mut ready = watched(&lot);
        let (mut client, mut served) = pair(&listener).await;
        let quiet_since = Instant::now();
        for round in 0..500u32 {
            lot.park(served, None, quiet_since);
            assert_eq!(lot.len(), 1);
            client.write_all(&round.to_be_bytes()).await.unwrap();
            let p = tokio::time::timeout(Duration::from_secs(5), ready.recv())
                .await
                .expect("handed back in time")
                .unwrap();
            assert_eq!(p.quiet_since, quiet_since);
            assert_eq!(lot.len(), 0);
            served = TcpStream::from_std(p.stream).unwrap();
            let mut buf = [0u8; 4];
            served.read_exact(&mut buf).await.unwrap();
            assert_eq!(u32::from_be_bytes(buf), round);
        }
        let due = lot.lock().due.len();
        assert!(due <= 64 + 1, "{due} deadlines kept for nothing parked");

        lot.park(served, None, quiet_since);
        drop(client);
        let p = tokio::time::timeout(Duration::from_secs(5), ready.recv())
            .await
            .expect("handed back in time")
            .unwrap();
        let mut served = TcpStream::from_std(p.stream).unwrap();
        assert_eq!(served.read(&mut [0u8; 8]).await.unwrap(), 0);
    }

    /// Once closed (the worker stops), the lot closes what it holds and whatever is parked
    /// later.
    #[tokio::test]
    async fn a_closed_lot_closes_what_it_holds_and_what_comes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lot = Lot::new(Duration::from_secs(60)).unwrap();
        let quiet_since = Instant::now();
        let (mut before, served) = pair(&listener).await;
        lot.park(served, None, quiet_since);
        lot.close();
        let (mut after, served) = pair(&listener).await;
        lot.park(served, None, quiet_since);
        assert_eq!(lot.len(), 0);
        assert!(closed_after(&mut before).await < Duration::from_secs(1));
        assert!(closed_after(&mut after).await < Duration::from_secs(1));
    }
}
