//! A request body whose every next frame must arrive within a timeout, and the whole of it
//! within a deadline (past either: 408).
//!
//! Not tower-http's `TimeoutBody`: that one bounds each frame only (a client sending a byte
//! just within each timeout would hold its connection, and the budget its bytes take, for
//! ever), and arms a timer at every frame, also for the frames that are there at once (most
//! bodies come with their head); this one arms a timer only when the body waits.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{sleep_until, Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a [`Timed`] body whose next bytes did not come in time: an `io::Error` of
/// kind `TimedOut` (as the tower layer reads a request body's timeout: 408) carrying this,
/// which the server looks for ([`BodyTimeout::caused`]).
#[derive(Debug)]
pub(crate) struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not come in time")
    }
}

impl std::error::Error for BodyTimeout {}

impl BodyTimeout {
    /// Whether `e` or one of its causes is a body read timeout.
    pub(crate) fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        super::error::causes(e).any(|c| c.is::<BodyTimeout>())
    }
}

pin_project_lite::pin_project! {
    /// `B`, each frame within `timeout` of asking for it, and all of it by `until`.
    pub(crate) struct Timed<B> {
        #[pin]
        inner: B,
        timeout: Duration,
        // The whole body's deadline: a client that sends a byte just within each timeout
        // cannot hold its connection (and the budget its bytes take) for ever.
        until: Instant,
        // Boxed: the body stays `Unpin`, and a body that never
        // waits (most: they come with the head) allocates nothing.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Timed<B> {
    /// `inner`, each wait at most `timeout`, all of it within `whole` from now.
    pub(crate) fn new(inner: B, timeout: Duration, whole: Duration) -> Self {
        Timed {
            inner,
            timeout,
            until: Instant::now() + whole,
            sleep: None,
        }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.sleep = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // Armed when the body first waits, cleared by the next frame: each wait has its own
        // deadline, never later than the whole body's.
        let (timeout, until) = (*this.timeout, *this.until);
        let deadline = this
            .sleep
            .get_or_insert_with(|| Box::pin(sleep_until((Instant::now() + timeout).min(until))));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            BodyTimeout,
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
