//! [`ResponseFuture`]: passthrough without allocation, Klarna exchanges boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::StepUpBody;
use crate::driver::Driver;
use crate::observe::Observer;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`KlarnaStepUp`](super::KlarnaStepUp).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        // Not a candidate: the inner future, its body wrapped on the way out; the observer
        // (if any) hears of it once the head is ready. The driver (its record) is boxed: the
        // future is moved per request (a server keeps it in its connection), and small
        // unless somebody observes.
        Passthrough { #[pin] future: F, observer: Option<(Observer, Box<Driver>)> },
        // A candidate: body reading, the inner call and the rewrite, in one boxed future. The
        // box is one allocation on a path that buffers bodies anyway.
        StepUp { future: BoxFuture<Result<Response<StepUpBody<B>>, E>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(super) fn passthrough(future: F, observer: Option<Observer>) -> Self {
        // The record (its clock) is made only when someone observes.
        let observer = observer.map(|o| (o, Box::default()));
        ResponseFuture {
            kind: Kind::Passthrough { future, observer },
        }
    }

    pub(super) fn step_up(future: BoxFuture<Result<Response<StepUpBody<B>>, E>>) -> Self {
        ResponseFuture {
            kind: Kind::StepUp { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<StepUpBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future, observer } => {
                let res = ready!(future.poll(cx))?;
                if let Some((observe, mut driver)) = observer.take() {
                    observe(finish(&mut driver, &res));
                }
                Poll::Ready(Ok(res.map(StepUpBody::new)))
            }
            KindProj::StepUp { future } => future.as_mut().poll(cx),
        }
    }
}

/// The route's record, closed with its answer (status, and the refusal it carries if any).
pub(super) fn finish<'d, B>(driver: &'d mut Driver, res: &Response<B>) -> &'d crate::Record {
    let refusal = res.extensions().get::<crate::Refusal>();
    driver.finish(Some(res.status().as_u16()), refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::Ready;

    type Body = http_body_util::Empty<bytes::Bytes>;

    /// Servers keep the future and move it per request: what passes through is small (the
    /// record boxed, made only when observed).
    #[test]
    fn the_passthrough_future_is_small() {
        type Inner = Ready<Result<Response<Body>, Infallible>>;
        let size = std::mem::size_of::<ResponseFuture<Inner, Body, Infallible>>();
        let inner = std::mem::size_of::<Inner>();
        assert!(size <= inner + 64, "{size} bytes around {inner}");
    }
}
