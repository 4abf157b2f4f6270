//! [`StepUpCtx`]: step-up's per-request state in a Pingora `CTX`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use pingora::upstreams::peer::HttpPeer;

use crate::engine::{Candidate, Exchange, ReturnRedirect};
use crate::observe::{Outcome, Record};
use crate::{Refusal, WebhookEvent};

/// The request body, as far as step-up is concerned.
#[derive(Debug, Default)]
pub(super) enum Req {
    /// Not a candidate, or not Klarna: untouched.
    #[default]
    Untouched,
    /// A candidate whose body has not been read yet.
    Candidate(Candidate),
    /// Read whole in `request_filter` (within Pingora's retry buffer): this replaces it
    /// upstream.
    Buffered(Bytes),
    /// Too large for the retry buffer: accumulated in `request_body_filter` as it streams
    /// upstream, rewritten at its end.
    Streaming {
        candidate: Candidate,
        /// What `request_filter` read before switching to streaming.
        prefix: Bytes,
        acc: BytesMut,
    },
}

/// The routes step-up answers or relays itself (see [`Route`](crate::Route)).
#[derive(Debug, Default)]
pub(super) enum Own {
    #[default]
    None,
    /// The acquirer return, its token checked in `early_request_filter`.
    Return(Result<ReturnRedirect, Refusal>),
    /// Klarna's webhook path; `Some` once verified.
    Webhook(Option<WebhookEvent>),
    /// The payment API's webhook relay path, reached from outside.
    RelayPathFromOutside,
    /// A candidate route refused from its head (ambiguous path, content type or encoding).
    Refused(Refusal),
    /// Any request whose head the binary's server would refuse (request target, `Host`,
    /// size): answered before the inner proxy's `request_filter`.
    BadHead(Refusal),
}

/// The answer to a Klarna exchange on Pingora's pipeline.
#[derive(Debug, Default)]
pub(super) enum Resp {
    #[default]
    Untouched,
    /// Reading the answer to its end.
    Buffering {
        status: StatusCode,
        /// Only what the engine reads (Content-Type).
        headers: HeaderMap,
        acc: BytesMut,
    },
    /// Too large to rewrite: the rest streams through.
    Flushed,
    /// The answer, decoded by Pingora, went over the body limit: stopped.
    Aborted,
}

/// Step-up's per-request state. Keep one in your `CTX` when you call
/// [`StepUpPhases`](super::StepUpPhases) yourself; [`StepUpProxy`](super::StepUpProxy) keeps
/// it for you.
#[derive(Debug, Default)]
pub struct StepUpCtx {
    pub(super) own: Own,
    /// Where the acquirer-return notification goes; see [`StepUpCtx::set_notify_peer`].
    pub(super) notify_peer: Option<Box<HttpPeer>>,
    pub(super) req: Req,
    pub(super) resp: Resp,
    pub(super) exchange: Option<Exchange>,
    /// A refusal decided in a body phase, answered in `fail_to_proxy`.
    pub(super) pending: Option<Refusal>,
    pub(super) record: Record,
    pub(super) compression_enabled_by_us: bool,
    /// This candidate's share of the process-wide buffer budget.
    pub(super) held: Option<crate::budget::Held>,
    /// Pingora decodes the upstream answer (its decompression is on and it was encoded).
    pub(super) decoded_by_pingora: bool,
    /// Decoded bytes of an answer passed on untouched.
    pub(super) decoded_passed: usize,
}

impl StepUpCtx {
    /// Step-up's record of this request (final once the request is logged): what
    /// [`StepUpProxy::observe`](super::StepUpProxy::observe) hands to its observer.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// What step-up did (final once the request is logged; an upstream failure of any
    /// request, candidate or not, is [`Outcome::UpstreamError`]).
    pub fn outcome(&self) -> Outcome {
        self.record.outcome()
    }

    /// The Klarna exchange, once a request was injected.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }

    /// Time spent in the engine (request injection and response rewrite).
    pub fn engine_time(&self) -> Duration {
        self.record.engine_time()
    }

    /// The request's `klarna_stepup` tracing span (disabled for requests that step-up leaves
    /// alone).
    pub fn span(&self) -> &tracing::Span {
        self.record.span()
    }

    /// The payment API peer the acquirer-return notification is sent to. Needed only when
    /// [`StepUpPhases::wants_notify_peer`](super::StepUpPhases::wants_notify_peer) says so,
    /// before `request_filter`; [`StepUpProxy`](super::StepUpProxy) asks its inner proxy's
    /// `upstream_peer` for it.
    pub fn set_notify_peer(&mut self, peer: Box<HttpPeer>) {
        self.notify_peer = Some(peer);
    }

    /// Whether step-up acts on this request (a candidate, the acquirer return, a webhook
    /// path); known from `early_request_filter` on. Other requests are the inner proxy's
    /// alone, and [`StepUpProxy`](super::StepUpProxy) hands them its phases unwrapped.
    pub(crate) fn acts(&self) -> bool {
        self.record.acts()
    }

    /// Whether the request's head is refused: answered before anything else looks at it.
    pub(super) fn bad_head(&self) -> bool {
        matches!(self.own, Own::BadHead(_))
    }

    pub(super) fn relayed_webhook(&self) -> bool {
        matches!(self.own, Own::Webhook(Some(_)))
    }
}
