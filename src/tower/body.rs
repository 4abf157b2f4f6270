//! The body type the layer hands on: the caller's stream untouched, or bytes it rewrote.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A body that is either streamed through untouched or replaced by whole bytes.
    ///
    /// Requests and responses the layer does not touch keep their own body, frame for frame;
    /// only Klarna exchanges carry [`full`](StepUpBody::full) bodies.
    pub struct StepUpBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Stream { #[pin] body: B },
        // `taken` (when watched) is set once the bytes are taken.
        Full { data: Option<Bytes>, taken: Option<Arc<AtomicBool>> },
        // What was read of `body` before it turned out too large to rewrite, then the rest.
        Prefixed { prefix: Option<Bytes>, body: Pin<Box<B>> },
    }
}

impl<B> StepUpBody<B> {
    /// Streams `body` through untouched.
    pub fn new(body: B) -> Self {
        StepUpBody {
            kind: Kind::Stream { body },
        }
    }

    /// `prefix` (already read from `body`), then the rest of `body`.
    pub(crate) fn prefixed(prefix: Bytes, body: Pin<Box<B>>) -> Self {
        StepUpBody {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// A body of exactly these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        StepUpBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                taken: None,
            },
        }
    }

    /// A body of exactly these bytes, and a flag set once the receiver takes them (at
    /// once for no bytes): whether the inner service read the body it was handed.
    pub(crate) fn watched(data: Bytes) -> (Self, Arc<AtomicBool>) {
        let taken = Arc::new(AtomicBool::new(data.is_empty()));
        let body = StepUpBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                taken: Some(taken.clone()),
            },
        };
        (body, taken)
    }
}

impl<B> Body for StepUpBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Stream { body } => body.poll_frame(cx),
            KindProj::Full { data, taken } => {
                let data = data.take();
                if let (Some(_), Some(taken)) = (&data, taken) {
                    taken.store(true, Ordering::Relaxed);
                }
                Poll::Ready(data.map(|d| Ok(Frame::data(d))))
            }
            KindProj::Prefixed { prefix, body } => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => body.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Full { data, .. } => data.is_none(),
            Kind::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { body } => body.size_hint(),
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Prefixed { prefix, body } => {
                let held = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + held);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held);
                }
                hint
            }
        }
    }
}

impl<B> std::fmt::Debug for StepUpBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Stream { .. } => f.write_str("StepUpBody::Stream"),
            Kind::Prefixed { .. } => f.write_str("StepUpBody::Prefixed"),
            Kind::Full { data, .. } => write!(
                f,
                "StepUpBody::Full({} bytes)",
                data.as_ref().map_or(0, Bytes::len)
            ),
        }
    }
}
