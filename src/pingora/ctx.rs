//! [`StepUpCtx`]: step-up's per-request state in a Pingora `CTX`.

use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::driver::{Answer, Driver};
use crate::engine::Exchange;
use crate::observe::{Outcome, Record};

/// Step-up's per-request state. Keep one in your `CTX` when you call
/// [`StepUpPhases`](super::StepUpPhases) yourself; [`StepUpProxy`](super::StepUpProxy) keeps
/// it for you.
#[derive(Debug, Default)]
pub struct StepUpCtx {
    /// Step-up's state machine for the request: it decides, the phases obey.
    pub(super) driver: Driver,
    /// Where the acquirer-return notification goes; see [`StepUpCtx::set_notify_peer`].
    pub(super) notify_peer: Option<Box<HttpPeer>>,
    /// The answer step-up gives instead of the upstream's, decided on its head (a webhook
    /// the payment API did not accept): written by `response_filter`.
    pub(super) answer: Option<Answer>,
    pub(super) compression_enabled_by_us: bool,
    /// Pingora decodes the upstream answer (its decompression is on and it was encoded).
    pub(super) decoded_by_pingora: bool,
}

impl StepUpCtx {
    /// Step-up's record of this request (final once the request is logged): what
    /// [`StepUpProxy::observe`](super::StepUpProxy::observe) hands to its observer.
    pub fn record(&self) -> &Record {
        self.driver.record()
    }

    /// What step-up did (final once the request is logged; an upstream failure of any
    /// request, candidate or not, is [`Outcome::UpstreamError`]).
    pub fn outcome(&self) -> Outcome {
        self.driver.outcome()
    }

    /// The Klarna exchange, once a request was injected.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.driver.exchange()
    }

    /// Time spent in the engine (request injection and response rewrite).
    pub fn engine_time(&self) -> Duration {
        self.driver.record().engine_time()
    }

    /// The request's `klarna_stepup` tracing span (disabled for requests that step-up leaves
    /// alone).
    pub fn span(&self) -> &tracing::Span {
        self.driver.span()
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
        self.driver.acts()
    }

    /// Whether the request's head is refused: answered before anything else looks at it.
    pub(super) fn bad_head(&self) -> bool {
        self.driver.refuses_head()
    }
}
