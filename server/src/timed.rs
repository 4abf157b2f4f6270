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
        // cannot hold its connection (and the budget its bytes take) for ever. `None` for a
        // body that had ended when it came (a `GET`'s: no clock read for it).
        until: Option<Instant>,
        whole: Duration,
        // Boxed: the body stays `Unpin`, and a body that never
        // waits (most: they come with the head) allocates nothing.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Timed<B> {
    /// `inner`, each wait at most `timeout`, all of it within `whole` from now.
    pub(crate) fn new(inner: B, timeout: Duration, whole: Duration) -> Self
    where
        B: Body,
    {
        let until = (!inner.is_end_stream()).then(|| Instant::now() + whole);
        Timed {
            inner,
            timeout,
            until,
            whole,
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
        let (timeout, whole) = (*this.timeout, *this.whole);
        let deadline = this.sleep.get_or_insert_with(|| {
            let now = Instant::now();
            // A body that said it had ended and waits after all is given its whole from now.
            let until = *this.until.get_or_insert(now + whole);
            Box::pin(sleep_until((now + timeout).min(until)))
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose next byte comes `every` after it is asked for, for ever.
    struct Trickle {
        every: Duration,
        next: Option<Pin<Box<Sleep>>>,
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let every = self.every;
            let next = self
                .next
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
            ready!(next.as_mut().poll(cx));
            self.next = None;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }

    /// A body whose every byte comes within the timeout ends, in error, at the whole
    /// body's deadline, counted from when it came (not from when it was first read); one
    /// that had ended when it came is read to its end.
    #[tokio::test(start_paused = true)]
    async fn a_trickle_within_each_timeout_ends_at_the_whole_deadline() {
        use http_body_util::BodyExt;
        let (timeout, whole) = (Duration::from_secs(1), Duration::from_secs(5));
        let start = Instant::now();
        let trickle = Trickle {
            every: Duration::from_millis(900),
            next: None,
        };
        let mut body = std::pin::pin!(Timed::new(trickle, timeout, whole));
        // Read a while after it came, as a service that looks at the head first does.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut bytes = 0;
        let end = tokio::time::timeout(whole * 2, async {
            loop {
                match body.frame().await {
                    Some(Ok(_)) => bytes += 1,
                    Some(Err(e)) => return e,
                    None => unreachable!("a trickle does not end"),
                }
            }
        })
        .await
        .expect("ended by the whole body's deadline");
        assert!(BodyTimeout::caused(&*end), "{end}");
        assert_eq!(start.elapsed(), whole);
        assert_eq!(bytes, 5);

        let ended = Timed::new(http_body_util::Empty::<Bytes>::new(), timeout, whole);
        assert!(ended.until.is_none(), "no clock read for it");
        assert!(ended.collect().await.unwrap().to_bytes().is_empty());
    }
}
