//! A worker's connections to the payment API: hyper's HTTP/1.1 client connections, kept
//! alive and reused per backend address.
//!
//! A request takes a ready idle connection to its backend, or dials one (another healthy
//! backend on connect failure, see [`Dialer`]). The connection goes back when the answer's
//! body has been read to its end; an answer dropped before its end (the client went away,
//! the layer refused it) closes its connection, as what is left of it on the wire would
//! corrupt the next exchange. An idle connection closes at the upstream read timeout (its
//! reads are timed, see [`super::upstream::UpstreamIo`]) and leaves the pool at the next
//! look. A request that a reused connection could not even send (the payment API had
//! closed it) goes once more on a fresh one.
//!
//! Each worker has its own pool, only ever touched by its own thread: no task hop, no
//! spawned task per request, and an uncontended lock (hyper-util's pool spawns a task per
//! request to watch a used connection become ready again).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};

use super::upstream::Dialer;

/// Why a request got no answer from the payment API.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per backend; more are closed once used. Each idle connection was
/// in use by a request of this worker, so this only bites after a burst.
const MAX_IDLE: usize = 256;
/// Backends with idle connections remembered; should DNS hand out ever new addresses, the
/// ones without a live idle connection are forgotten. Looked up by a scan: a payment API
/// has a handful of addresses, and a scan of those costs less than hashing one.
const MAX_BACKENDS: usize = 256;

/// A worker's connections to the payment API.
pub(crate) struct Pool<B> {
    dialer: Dialer,
    idle: Mutex<Vec<(SocketAddr, Vec<SendRequest<B>>)>>,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Error>,
{
    pub(crate) fn new(dialer: Dialer) -> Arc<Self> {
        Arc::new(Pool {
            dialer,
            idle: Mutex::default(),
        })
    }

    /// `req` (origin-form URI, `Host` set) to `backend`, or to another healthy one if that
    /// cannot be reached. The answer's body gives the connection back at its end.
    pub(crate) async fn send(
        self: Arc<Self>,
        backend: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<Pooled<B>>, Error> {
        let req = match self.take(backend) {
            None => req,
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.hold(backend, sender, res)),
                // Not sent at all: the connection had closed meanwhile.
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(e.into_error().into()),
                },
            },
        };
        // Boxed: the dial (connect, TLS handshake) is the largest state of this future, and
        // the future of a request on a pooled connection, moved as it is built, stays small.
        Box::pin(self.send_on_new(backend, req)).await
    }

    /// `req` on a new connection to `backend` (or another healthy one).
    async fn send_on_new(
        self: Arc<Self>,
        backend: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<Pooled<B>>, Error> {
        let (addr, io) = self.dialer.dial(backend).await?;
        let (mut sender, conn) = http1::handshake(io).await?;
        // The connection's own task: it ends when the connection closes, and its error, if
        // any, is the request's.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let res = sender.send_request(req).await?;
        Ok(self.hold(addr, sender, res))
    }
}

/// The pool's bookkeeping: nothing here needs to know what a request body is.
impl<B> Pool<B> {
    /// A ready idle connection to `addr`, the most recently used first; closed ones go.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<B>> {
        let mut idle = self.idle.lock().ok()?;
        let (_, list) = idle.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(i) = list.iter().rposition(|s| s.is_ready() || s.is_closed()) {
            let sender = list.swap_remove(i);
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// The connection back in the pool, unless it is closed or the pool is full.
    fn put(&self, addr: SocketAddr, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let i = match idle.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                if idle.len() >= MAX_BACKENDS {
                    idle.retain_mut(|(_, list)| {
                        list.retain(|s| !s.is_closed());
                        !list.is_empty()
                    });
                    if idle.len() >= MAX_BACKENDS {
                        return;
                    }
                }
                idle.push((addr, Vec::new()));
                idle.len() - 1
            }
        };
        let list = &mut idle[i].1;
        if list.len() < MAX_IDLE {
            list.push(sender);
        }
    }

    /// The answer, its body holding the connection until its end.
    fn hold(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: SendRequest<B>,
        res: Response<Incoming>,
    ) -> Response<Pooled<B>> {
        let giver = if res.body().is_end_stream() {
            self.put(addr, sender);
            None
        } else {
            Some(GiveBack {
                pool: self.clone(),
                addr,
                sender,
            })
        };
        res.map(|body| Pooled { body, giver })
    }
}

/// What goes back to the pool at the end of an answer.
struct GiveBack<B> {
    pool: Arc<Pool<B>>,
    addr: SocketAddr,
    sender: SendRequest<B>,
}

/// An answer's body from a pooled connection: at its end, the connection goes back.
pub(crate) struct Pooled<B> {
    body: Incoming,
    giver: Option<GiveBack<B>>,
}

impl<B> Pooled<B> {
    fn give_back(&mut self) {
        if let Some(g) = self.giver.take() {
            g.pool.put(g.addr, g.sender);
        }
    }
}

impl<B> Body for Pooled<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // `Incoming` and `GiveBack` are both `Unpin`.
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            // The end: hyper's server stops polling once the body says so.
            None => this.give_back(),
            Some(Ok(_)) if this.body.is_end_stream() => this.give_back(),
            // A broken answer: its connection goes with it.
            Some(Err(_)) => this.giver = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
        let pool = Pool::<Empty<Bytes>>::new(Dialer::new(connector, balancer));
        let send = pool.send(addr, Request::new(Empty::new()));
        let size = std::mem::size_of_val(&send);
        assert!(size <= 1024, "a request's future is {size} bytes");
    }
}
