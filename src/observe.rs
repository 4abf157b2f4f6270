//! What step-up did with one request: the [`Outcome`], sizes and engine time, handed to an
//! adapter's observation hook, and the log lines both adapters write for the same events.
//!
//! Logs name the route pattern, the `payment_request_reference`, the `payment_request_id`,
//! Klarna's `klarna-correlation-id`, outcomes, reasons and status codes; never URLs, tokens,
//! keys or bodies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{AuthorizeResult, Exchange, KeepReason, Refusal, RefusalCode, ReturnRedirect};

/// What step-up did with one request; see [`Record::outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// Not a route step-up acts on: streamed through untouched.
    #[default]
    NotCandidate,
    /// A candidate whose body is not a Klarna payment: forwarded byte for byte.
    NotKlarna,
    /// Klarna request injected; the answer was rewritten into the partner block.
    Rewritten,
    /// Klarna request injected; the answer passed through untouched (not understood, not a
    /// 2xx JSON answer, or too large). The one to alert on when it is a 2xx.
    Passthrough,
    /// Answered by step-up itself (4xx) with this code.
    Refused(RefusalCode),
    /// The upstream could not be reached or timed out (502/504 with this code); for a
    /// webhook, also a payment API that did not accept it (503 `webhook_not_accepted`).
    UpstreamError(RefusalCode),
    /// An acquirer return answered with its 303 redirect.
    Redirected,
    /// A verified webhook relayed to the payment API, which accepted it (2xx).
    Relayed,
    /// A candidate the wrapped proxy or service answered by itself, without taking the body
    /// step-up had for the payment API: on Pingora, the inner proxy's `request_filter`
    /// answered (say an authentication 401) before step-up read the body; with tower, the
    /// inner service answered without reading the body the layer handed it. Its answer
    /// goes to the client untouched and unmarked.
    AnsweredByInner,
}

impl Outcome {
    /// The metric label: `not_candidate`, `not_klarna`, `rewritten`, `passthrough`,
    /// `refused`, `upstream_error`, `redirected`, `relayed` or `answered_by_inner`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::NotCandidate => "not_candidate",
            Outcome::NotKlarna => "not_klarna",
            Outcome::Rewritten => "rewritten",
            Outcome::Passthrough => "passthrough",
            Outcome::Refused(_) => "refused",
            Outcome::UpstreamError(_) => "upstream_error",
            Outcome::Redirected => "redirected",
            Outcome::Relayed => "relayed",
            Outcome::AnsweredByInner => "answered_by_inner",
        }
    }

    /// The refusal or upstream error code, if the outcome has one (its
    /// [`as_str`](RefusalCode::as_str) is the metric label).
    pub fn code(self) -> Option<RefusalCode> {
        match self {
            Outcome::Refused(code) | Outcome::UpstreamError(code) => Some(code),
            _ => None,
        }
    }

    fn of(refusal: &Refusal) -> Outcome {
        if refusal.status().is_server_error() {
            Outcome::UpstreamError(refusal.code())
        } else {
            Outcome::Refused(refusal.code())
        }
    }
}

/// An observation hook: called once per request when it is done.
#[cfg_attr(not(any(feature = "tower", feature = "pingora")), allow(dead_code))]
pub(crate) type Observer = Arc<dyn Fn(&Record) + Send + Sync>;

/// Step-up's record of one request: what it did, the body sizes it read, the time spent in
/// the engine, and the request's `klarna_stepup` tracing span. Both adapters hand it to their
/// observation hook (`observe`), the place for metrics.
#[derive(Debug)]
pub struct Record {
    outcome: Outcome,
    acting: bool,
    request_body_len: Option<usize>,
    response_body_len: Option<usize>,
    engine_time: Duration,
    started: Instant,
    duration: Option<Duration>,
    status: Option<u16>,
    payment_request_id: Option<String>,
    klarna_correlation_id: Option<String>,
    klarna_error_id: Option<String>,
    partner: Option<String>,
    mode: crate::config::Mode,
    route: String,
    reference: Option<String>,
    trace: Option<crate::engine::trace::TraceContext>,
    span: tracing::Span,
}

/// Klarna's response header worth logging.
const KLARNA_CORRELATION_ID: http::HeaderName =
    http::HeaderName::from_static("klarna-correlation-id");

/// `value` if it is fit for a log field: 1 to 128 visible ASCII characters (ids are; anything
/// else is not Klarna's id and is left out).
fn loggable(value: &str) -> Option<String> {
    ((1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_owned())
}

impl Default for Record {
    fn default() -> Self {
        Record {
            outcome: Outcome::NotCandidate,
            acting: false,
            request_body_len: None,
            response_body_len: None,
            engine_time: Duration::ZERO,
            started: Instant::now(),
            duration: None,
            status: None,
            payment_request_id: None,
            klarna_correlation_id: None,
            klarna_error_id: None,
            partner: None,
            mode: crate::config::Mode::Enforce,
            route: String::new(),
            reference: None,
            trace: None,
            span: tracing::Span::none(),
        }
    }
}

impl Record {
    /// What step-up did (final once the request is done).
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Size of the candidate request (or webhook) body the engine read, if it read one.
    pub fn request_body_len(&self) -> Option<usize> {
        self.request_body_len
    }

    /// Size of the upstream answer the engine read, if it read one.
    pub fn response_body_len(&self) -> Option<usize> {
        self.response_body_len
    }

    /// Time spent in the engine (request injection and response rewrite).
    pub fn engine_time(&self) -> Duration {
        self.engine_time
    }

    /// How long the request took, from the adapter's first look at it to its answer's head
    /// (Pingora: to the end of the answer); until the request is done, the time so far.
    pub fn duration(&self) -> Duration {
        self.duration.unwrap_or_else(|| self.started.elapsed())
    }

    /// The status of the answer the client got, once the request is done (`None` when
    /// nothing was answered, e.g. the client went away).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The Klarna Payment Request this request was about, when step-up saw its id: in a
    /// `STEP_UP_REQUIRED` answer it rewrote, on an acquirer return, or in a webhook.
    pub fn payment_request_id(&self) -> Option<&str> {
        self.payment_request_id.as_deref()
    }

    /// The `klarna-correlation-id` header of the answer to a Klarna request, when the payment
    /// API passed Klarna's on (quote it to Klarna's support).
    pub fn klarna_correlation_id(&self) -> Option<&str> {
        self.klarna_correlation_id.as_deref()
    }

    /// Klarna's `error_id` of an error answer to a Klarna request, when the layer read it
    /// (a small JSON error of declared length; quote it to Klarna's support).
    pub fn klarna_error_id(&self) -> Option<&str> {
        self.klarna_error_id.as_deref()
    }

    /// The partner (`[partners]`) the request was for, when step-up knew it: of a candidate
    /// (refused or not), an acquirer return, or a webhook.
    pub fn partner(&self) -> Option<&str> {
        self.partner.as_deref()
    }

    /// The request's `klarna_stepup` tracing span (disabled for requests step-up leaves
    /// alone).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The mode step-up ran the request in (`mode`, or its partner's). In
    /// [`Mode::Shadow`](crate::config::Mode::Shadow) the [`outcome`](Self::outcome) is what
    /// step-up would have done (`rewritten`: it would have injected the request and rewritten
    /// the answer; `passthrough`: injected it and passed the answer on; `refused` with the
    /// code it would have answered), and nothing was changed.
    pub fn mode(&self) -> crate::config::Mode {
        self.mode
    }

    pub(crate) fn set_mode(&mut self, mode: crate::config::Mode) {
        self.mode = mode;
    }

    /// A request on one of step-up's routes (`route`: the candidate route's pattern, or
    /// `acquirer_return`, `webhook`, `webhook_relay_path`).
    pub(crate) fn acting(route: &str, outcome: Outcome) -> Record {
        Record {
            outcome,
            acting: true,
            route: route.to_owned(),
            // At `debug`: formatting a span and its fields costs more than the request's
            // own work; the `request done` line carries the same fields.
            span: tracing::debug_span!(
                "klarna_stepup",
                route,
                payment_request_reference = tracing::field::Empty,
                payment_request_id = tracing::field::Empty,
                klarna_correlation_id = tracing::field::Empty,
                klarna_error_id = tracing::field::Empty,
                partner = tracing::field::Empty,
                outcome = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            ),
            ..Record::default()
        }
    }

    /// The route step-up served the request on: a candidate route's pattern, or
    /// `acquirer_return`, `webhook`, `webhook_relay_path`, `request_head` (`""` when step-up
    /// does not act on the request).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// The `payment_request_reference` sent to Klarna, once known.
    pub fn payment_request_reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }

    /// The W3C trace context step-up gave the payment API (`[trace_context] propagate`).
    pub fn trace(&self) -> Option<&crate::engine::trace::TraceContext> {
        self.trace.as_ref()
    }

    pub(crate) fn set_trace(&mut self, trace: crate::engine::trace::TraceContext) {
        self.span.record("trace_id", trace.trace_id().as_str());
        self.span.record("span_id", trace.span_id().as_str());
        self.trace = Some(trace);
    }

    /// Whether step-up acts on this request.
    pub(crate) fn acts(&self) -> bool {
        self.acting
    }

    /// Runs `f` (an engine call), adding its time to [`engine_time`](Self::engine_time).
    pub(crate) fn timed<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        self.engine_time += started.elapsed();
        out
    }

    pub(crate) fn read_request(&mut self, len: usize) {
        self.request_body_len = Some(len);
    }

    pub(crate) fn read_response(&mut self, len: usize) {
        self.response_body_len = Some(len);
    }

    fn reference(&mut self, reference: &str) {
        self.span.record("payment_request_reference", reference);
        self.reference = Some(reference.to_owned());
    }

    /// The partner a candidate names, known before anything is decided (so a refused
    /// request is counted for it too).
    pub(crate) fn candidate(&mut self, candidate: &crate::Candidate) {
        self.set_partner(candidate.partner());
    }

    fn set_partner(&mut self, partner: Option<&str>) {
        // A partner id is loggable by construction (validated by the engine).
        if let Some(p) = partner.and_then(loggable) {
            self.span.record("partner", p.as_str());
            self.partner = Some(p);
        }
    }

    fn payment_request(&mut self, id: Option<&str>) {
        if let Some(id) = id.and_then(loggable) {
            self.span.record("payment_request_id", id.as_str());
            self.payment_request_id = Some(id);
        }
    }

    /// The head of the answer to a Klarna request: Klarna's correlation id, if passed on.
    pub(crate) fn answer_head(&mut self, headers: &http::HeaderMap) {
        let id = headers
            .get(KLARNA_CORRELATION_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(loggable);
        if let Some(id) = id {
            self.span.record("klarna_correlation_id", id.as_str());
            self.klarna_correlation_id = Some(id);
        }
    }

    /// Klarna's `error_id`, read from an error answer (`StepUp::klarna_error_id`).
    pub(crate) fn klarna_error(&mut self, id: Option<String>) {
        if let Some(id) = id {
            self.span.record("klarna_error_id", id.as_str());
            self.klarna_error_id = Some(id);
        }
    }

    /// A Klarna request was injected; its answer is still to come.
    pub(crate) fn injected(&mut self, exchange: &Exchange) {
        self.reference(exchange.reference());
        self.set_partner(exchange.partner());
        self.outcome = Outcome::Passthrough;
    }

    /// Step-up answered by itself (a refusal, or a proxy-made 502/503/504).
    pub(crate) fn refused(&mut self, refusal: &Refusal) {
        self.outcome = Outcome::of(refusal);
        self.span.in_scope(|| {
            tracing::info!(
                mode = self.mode.label(),
                code = refusal.code().as_str(),
                param = refusal.param(),
                status = refusal.status().as_u16(),
                "request refused"
            );
        });
    }

    /// A request failed upstream after step-up had nothing more to say: only the outcome.
    pub(crate) fn failed_upstream(&mut self, refusal: &Refusal) {
        self.outcome = Outcome::of(refusal);
    }

    /// The answer to a Klarna request was rewritten.
    pub(crate) fn rewritten(
        &mut self,
        result: AuthorizeResult,
        payment_request_id: Option<String>,
    ) {
        self.payment_request(payment_request_id.as_deref());
        self.outcome = Outcome::Rewritten;
        self.span.in_scope(|| {
            tracing::debug!(result = result.label(), "klarna answer rewritten");
        });
    }

    /// The rewritten answer's configured status could not be sent (on Pingora's pipeline
    /// the header leaves before the body is read): the answer is cut short.
    pub(crate) fn status_not_sent(&mut self, status: http::StatusCode) {
        self.span.in_scope(|| {
            tracing::warn!(
                status = status.as_u16(),
                "the configured status of a rewritten klarna answer cannot be sent once the \
                 header left (Pingora's pipeline): answer cut short"
            );
        });
    }

    /// The answer to a Klarna request passes through untouched.
    pub(crate) fn kept(&mut self, reason: KeepReason) {
        self.outcome = Outcome::Passthrough;
        self.span.in_scope(|| {
            tracing::warn!(reason = %reason, "klarna answer passed through untouched");
        });
    }

    /// The wrapped proxy or service answered a candidate by itself (see
    /// [`Outcome::AnsweredByInner`]).
    pub(crate) fn answered_by_inner(&mut self) {
        self.outcome = Outcome::AnsweredByInner;
    }

    /// An acquirer return, redirected.
    pub(crate) fn redirected(&mut self, redirect: &ReturnRedirect) {
        self.reference(&redirect.reference);
        self.set_partner(redirect.partner.as_deref());
        self.payment_request(redirect.payment_request_id.as_deref());
        self.outcome = Outcome::Redirected;
        self.span.in_scope(|| {
            tracing::info!(state = redirect.state.as_deref(), "acquirer return");
        });
    }

    /// How telling the payment API of a return went (the redirect follows either way).
    pub(crate) fn notified(&self, result: Notified) {
        self.span.in_scope(|| match result {
            Notified::Accepted => {}
            Notified::Refused(status) => tracing::warn!(status, "return notification refused"),
            Notified::Failed => tracing::warn!("return notification failed"),
            Notified::TimedOut => tracing::warn!("return notification timed out"),
            Notified::NoPeer => tracing::warn!("return notification skipped: no payment API"),
        });
    }

    /// A webhook whose signature holds, about to be relayed.
    pub(crate) fn webhook_verified(&mut self, event: &crate::WebhookEvent) {
        if let Some(reference) = event.reference.as_deref() {
            self.reference(reference);
        }
        self.set_partner(event.partner.as_deref());
        self.payment_request(event.payment_request_id.as_deref());
        self.span.in_scope(|| {
            tracing::debug!(event_type = event.event_type.as_deref(), "webhook verified");
        });
    }

    /// The payment API accepted a relayed webhook.
    pub(crate) fn relayed(&mut self, status: u16) {
        self.outcome = Outcome::Relayed;
        self.span
            .in_scope(|| tracing::info!(status, "webhook relayed"));
    }

    /// The payment API did not accept a relayed webhook (`status`), or could not be reached
    /// (`None`): Klarna gets the 503 and retries.
    pub(crate) fn not_relayed(&mut self, status: Option<u16>) {
        self.outcome = Outcome::of(&Refusal::webhook_not_accepted());
        self.span.in_scope(|| match status {
            Some(status) => tracing::warn!(status, "webhook not accepted by the payment API"),
            None => tracing::warn!("webhook relay failed: payment API unreachable"),
        });
    }

    /// The request is done: the outcome goes into the span, and one line is logged.
    pub(crate) fn done(&mut self, status: Option<u16>) {
        self.duration = Some(self.started.elapsed());
        self.status = status;
        if !self.acts() {
            return;
        }
        let outcome = self.outcome;
        self.span.record("outcome", outcome.label());
        let _in = self.span.enter();
        // One line per request: at `info` when it did not go as planned (refused, passed
        // through, upstream error), at `debug` when it did: formatting and writing a line
        // costs about as much as the rest of the request (the metrics count every request).
        macro_rules! done_line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    route = %self.route,
                    payment_request_reference = self.reference.as_deref(),
                    payment_request_id = self.payment_request_id.as_deref(),
                    partner = self.partner.as_deref(),
                    mode = self.mode.label(),
                    klarna_correlation_id = self.klarna_correlation_id.as_deref(),
                    klarna_error_id = self.klarna_error_id.as_deref(),
                    trace_id = self.trace.as_ref().map(|t| tracing::field::display(t.trace_id())),
                    outcome = outcome.label(),
                    code = outcome.code().map(RefusalCode::as_str),
                    status,
                    engine_us = self.engine_time.as_micros() as u64,
                    "request done"
                )
            };
        }
        match outcome {
            Outcome::Refused(_) | Outcome::UpstreamError(_) | Outcome::Passthrough => {
                done_line!(tracing::Level::INFO)
            }
            _ => done_line!(tracing::Level::DEBUG),
        }
    }
}

/// How a return notification went: [`Record::notified`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Notified {
    Accepted,
    Refused(u16),
    Failed,
    TimedOut,
    NoPeer,
}
