//! The exchange driver: step-up's per-request sequence as a state machine with no I/O, in
//! the manner of `rustls`'s and `quinn-proto`'s connections. An adapter feeds it what it
//! reads and does what it answers; it decides nothing itself.
//!
//! One [`Driver`] per request step-up acts on ([`Driver::start`] says whether it does):
//!
//! ```text
//! start(method, uri, head)           → None: not step-up's, stream it through untouched
//! begin(budget, holding)             → ReadBody{limit} | StreamBody | Notify | Answer
//! on_request_body(bytes, end)        → ReadMore | StreamBody | Forward | Answer
//! on_notified(result)                → Answer (the acquirer return's redirect)
//! upstream_request_head(&mut head)      the forwarded head's edits
//! on_response_head(head)             → Stream | Read{limit} | Answer
//! on_response_body(bytes, end)       → ReadMore | Pass | Send | SendThenStream | Abort
//! response_head(&mut head)              the client-facing head's edits
//! on_upstream_error(failure)         → the 502/503/504 to answer, if any
//! finish(status, failure)            → the Record (outcome, sizes, partner, ids, timings)
//! ```
//!
//! The driver holds the request's share of the [`BufferBudget`](crate::BufferBudget), its [`Record`] and its
//! [`Exchange`]; it owns the acquirer return (resolve, notify, confirm) and the webhook
//! (verify, relay, accepted?) as well as the candidate exchange. Bodies are passed as
//! [`Bytes`] and handed back without a copy when they go on unchanged.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, Method, StatusCode};
//! use klarna_stepup::driver::{Action, Driver, Holding, ResponseAction, ResponseHead};
//! use klarna_stepup::{BufferBudget, StepUp};
//!
//! let step_up = StepUp::from_toml("[return_url_policy]\nallowed_hosts = [\"shop.example\"]")?;
//! let mut head = HeaderMap::new();
//! head.insert("content-type", "application/json".parse()?);
//! let uri = "/payments".parse()?;
//! let mut driver = Driver::start(&step_up, &Method::POST, Some(&uri), &mut head)
//!     .expect("a candidate route");
//! assert!(matches!(driver.begin(&BufferBudget::default(), Holding::Whole), Action::ReadBody { .. }));
//! let body = Bytes::from_static(
//!     br#"{"payment_method":"klarna","return_url":"https://shop.example/done"}"#,
//! );
//! let Action::Forward(forward) = driver.on_request_body(body, true) else { panic!() };
//! assert!(forward.rewritten());
//! driver.upstream_request_head(&mut head); // exact length, answer asked for plain
//!
//! let answer = HeaderMap::new();
//! let action = driver.on_response_head(ResponseHead::new(StatusCode::OK, &answer));
//! assert!(matches!(action, ResponseAction::Read { .. }));
//! let klarna = Bytes::from_static(br#"{"payment_transaction_response":{"result":"DECLINED"}}"#);
//! let ResponseAction::Send(partner_block) = driver.on_response_body(klarna, true) else { panic!() };
//! assert!(partner_block.starts_with(br#"{"status":"declined""#));
//! assert_eq!(driver.finish(Some(200), None).outcome().label(), "rewritten");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod answer;
mod own_routes;
mod request;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::budget::Held;
use crate::config::Mode;
use crate::engine::{self, Candidate, Exchange, HeadLimits, ReturnRedirect, Route, WebhookEvent};
use crate::observe::{Outcome, Record};
use crate::{Refusal, StepUp};

pub use crate::engine::Head;
pub use answer::{AnswerHead, ResponseAction, ResponseHead};
pub use own_routes::Notified;

/// A request head that carries its method and target: see [`Driver::start_head`].
pub trait RequestHead: Head {
    /// The request's method.
    fn method(&self) -> &Method;
    /// The request's target.
    fn uri(&self) -> &Uri;
}

/// How much of a candidate's body the adapter can hold before its upstream request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Holding {
    /// The whole body, up to the body limit, before anything goes upstream (the tower
    /// adapter).
    #[default]
    Whole,
    /// Up to this many bytes; a longer candidate body streams: the upstream head goes first
    /// ([`Action::StreamBody`]) and the body at its end. A longer webhook body is refused.
    ThenStream(usize),
    /// Up to this many bytes; a longer body is refused 413 before any upstream contact.
    ThenRefuse(usize),
}

impl Holding {
    fn bound(self) -> Option<usize> {
        match self {
            Holding::Whole => None,
            Holding::ThenStream(n) | Holding::ThenRefuse(n) => Some(n),
        }
    }
}

/// What the adapter does next on the request side.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Nothing more for step-up to do with the request: let it go on as it is.
    PassThrough,
    /// Read the request body and feed it to [`Driver::on_request_body`] (the driver stops
    /// the reading at `limit` bytes).
    ReadBody {
        /// The most the driver holds before it decides.
        limit: usize,
    },
    /// Feed the next part of the body.
    ReadMore,
    /// Too large to hold ([`Holding::ThenStream`]): send the upstream request's head now
    /// (with [`Driver::upstream_request_head`]) and keep feeding the body as it comes; it
    /// goes upstream whole, at its end ([`Action::Forward`]).
    StreamBody,
    /// Tell the payment API of an acquirer return: send `request`, wait for its answer at
    /// most `timeout` (reading at most `answer_limit` bytes of a 2xx answer's body), and
    /// feed the result to [`Driver::on_notified`].
    Notify {
        /// The signed notification (its path is the configured `notify_path`).
        request: http::Request<Vec<u8>>,
        /// How long the redirect may wait.
        timeout: Duration,
        /// The most of a 2xx answer's body to read for its confirmed state.
        answer_limit: usize,
    },
    /// Send the request upstream with this body, after [`Driver::upstream_request_head`].
    Forward(Forward),
    /// Send the request upstream untouched: these bytes (what was read of its body), then
    /// the rest of its body as it comes. Step-up changes nothing (`shadow` mode, which
    /// records what it would have done).
    Release(Bytes),
    /// Let the request go upstream untouched as it comes, and feed every part of its body to
    /// [`Driver::on_request_body`] as it passes (a copy is kept, up to the body limit, to
    /// judge it): `shadow` mode for an adapter that cannot hold a body ([`Holding`] other
    /// than `Whole`).
    Watch,
    /// Leave this part of the body as it is (a watched body).
    Pass,
    /// Answer the client with this, and send nothing (more) upstream. After
    /// [`Action::StreamBody`] the upstream request is under way: abort it, then answer.
    Answer(Answer),
}

/// A request body to send upstream: see [`Action::Forward`].
#[derive(Debug, Clone)]
pub struct Forward {
    body: Bytes,
    rewritten: bool,
    timeout: Option<Duration>,
}

impl Forward {
    /// The body to send: the caller's bytes as read, or the rewritten body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The body, owned.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// Whether the body is step-up's rewrite (a Klarna request; its answer is read), not the
    /// caller's bytes.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    /// How long the upstream may take to answer, when step-up bounds it (a relayed webhook:
    /// Klarna must hear back); `None`: the adapter's own timeouts.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// An answer step-up gives by itself: a [`Refusal`] or the acquirer return's redirect.
#[derive(Debug, Clone)]
pub struct Answer(AnswerKind);

#[derive(Debug, Clone)]
enum AnswerKind {
    Refusal(Refusal),
    Redirect(ReturnRedirect),
}

impl Answer {
    /// The complete response, head and body, as every adapter sends it.
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        match &self.0 {
            AnswerKind::Refusal(r) => r.to_response(),
            AnswerKind::Redirect(r) => r.to_response(),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            AnswerKind::Refusal(r) => r.status(),
            AnswerKind::Redirect(_) => StatusCode::SEE_OTHER,
        }
    }

    /// Whether the connection must not carry another request after this answer.
    pub fn closes_connection(&self) -> bool {
        matches!(&self.0, AnswerKind::Refusal(r) if r.closes_connection())
    }

    /// The refusal, when the answer is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.0 {
            AnswerKind::Refusal(r) => Some(r),
            AnswerKind::Redirect(_) => None,
        }
    }
}

impl From<Refusal> for Answer {
    fn from(refusal: Refusal) -> Self {
        Answer(AnswerKind::Refusal(refusal))
    }
}

/// Where the request side stands.
#[derive(Debug, Default)]
enum RequestStep {
    /// Nothing to do: not step-up's, or done.
    #[default]
    Idle,
    /// Refused from its head alone (bounds, route spelling, the relay path from outside).
    Refused(Refusal),
    /// A candidate, its body not read yet.
    Candidate(Candidate),
    /// The acquirer return, its token checked.
    Return {
        resolved: Result<ReturnRedirect, Refusal>,
        method: Method,
        host: Option<HeaderValue>,
    },
    /// The acquirer return, waiting for the payment API's answer to the notification.
    Notifying(ReturnRedirect),
    /// Klarna's webhook, its body not read yet.
    Webhook(HeaderMap),
    /// Reading a body.
    Reading {
        what: Reading,
        body: Gathered,
        /// The most held before deciding.
        limit: usize,
        /// Streaming upstream (the head went first): what had been read when it began.
        streamed: Option<Bytes>,
        /// Passing upstream untouched as it comes ([`Action::Watch`]): a copy is judged.
        watching: bool,
    },
    /// The request went upstream (or is about to).
    Forwarded(Upstream),
    /// Step-up answered the request itself.
    Answered,
}

#[derive(Debug)]
enum Reading {
    Candidate(Candidate),
    Webhook(HeaderMap),
}

/// What went upstream.
#[derive(Debug)]
enum Upstream {
    /// The caller's bytes (not Klarna).
    Untouched,
    /// The rewritten Klarna request, held whole (its head has an exact length).
    Injected(Bytes),
    /// A body that streamed upstream (chunked), rewritten or not.
    Streamed,
    /// A verified webhook, relayed.
    Relay(WebhookEvent),
}

/// Where the answer side stands.
#[derive(Debug, Default)]
enum AnswerStep {
    /// Nothing seen yet, or an answer step-up leaves alone.
    #[default]
    Untouched,
    /// The wrapped service or proxy answered by itself: untouched and unmarked.
    Inner,
    /// The wrapped proxy's own 502/504 for a Klarna request: marked with its code.
    ProxyError(&'static str),
    /// Passed through untouched, marked `passthrough`.
    Kept,
    /// Passed on as Pingora decodes it: counted, stopped past the body limit.
    Counting { passed: usize },
    /// A small Klarna error, read for its `error_id` and passed on untouched.
    ReadingError { body: Gathered },
    /// Read for a rewrite.
    Reading {
        status: StatusCode,
        /// Only what the rewrite reads: `Content-Type`, `Content-Encoding`.
        headers: HeaderMap,
        body: Gathered,
        /// The declared length (within the limit), reserved once the body comes in parts.
        expected: usize,
        /// The head went before the body ([`ResponseHead::head_first`]).
        head_first: bool,
        /// The adapter decodes the body ([`ResponseHead::decoded`]).
        decoded: bool,
    },
    /// Rewritten: the new body's length, and the status it goes with.
    Rewritten { len: usize, status: StatusCode },
    /// A relayed webhook the payment API accepted.
    Relayed,
    /// Stopped: the client sees the answer cut short.
    Aborted,
    /// Step-up answered instead of the upstream.
    Answered,
}

/// Step-up's state machine for one request: see the [module docs](self).
#[derive(Debug, Default)]
pub struct Driver {
    step_up: Option<StepUp>,
    record: Record,
    request: RequestStep,
    answer: AnswerStep,
    exchange: Option<Exchange>,
    held: Option<Held>,
    /// The body's declared length, from the request head.
    declared: Option<u64>,
    /// What the adapter can hold of a body before its upstream request goes.
    holding: Holding,
    /// The upstream request's head went before its body was known ([`Action::StreamBody`]).
    upstream_started: bool,
    /// The candidate's mode (its partner's, or the top-level one).
    mode: Mode,
    /// A refusal decided after the upstream request went out (a streamed body): answered
    /// when the adapter reports the aborted upstream ([`Driver::on_upstream_error`]).
    pending: Option<Answer>,
}

impl Driver {
    /// Takes a request head: `None` when step-up does not act on the request (not one of
    /// its routes: stream it through untouched; the cost is a route lookup). Whatever the
    /// route, removes every `x-klarna-stepup-*` header the client sent: those are
    /// step-up's alone. `uri` is the request target as step-up's routes read it; `None`
    /// when the request is outside the paths step-up serves (a mount prefix it is not
    /// under).
    pub fn start(
        step_up: &StepUp,
        method: &Method,
        uri: Option<&Uri>,
        head: &mut impl Head,
    ) -> Option<Driver> {
        engine::strip_forged_headers(head);
        let mut d = Driver::classify(step_up, method, uri?, head.headers())?;
        d.trace(step_up, head.headers());
        Some(d)
    }

    /// [`start`](Self::start) for a head that carries its own method and target (Pingora's
    /// `RequestHeader`), read as they are.
    pub fn start_head(step_up: &StepUp, head: &mut impl RequestHead) -> Option<Driver> {
        engine::strip_forged_headers(head);
        let mut d = Driver::classify(step_up, head.method(), head.uri(), head.headers())?;
        d.trace(step_up, head.headers());
        Some(d)
    }

    /// The W3C trace context of a request step-up acts on, with `[trace_context]
    /// propagate` on: continued from the partner's `traceparent`, or new.
    fn trace(&mut self, step_up: &StepUp, headers: &HeaderMap) {
        if step_up.config().trace_context.propagate {
            let mut random = [0u8; 24];
            random[..16].copy_from_slice(&fastrand::u128(..).to_le_bytes());
            random[16..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
            self.record
                .set_trace(engine::trace::TraceContext::of_request(headers, random));
        }
    }

    /// Strips the hop-by-hop headers of a head step-up edits (see
    /// [`upstream_request_head`](Self::upstream_request_head) and
    /// [`response_head`](Self::response_head)); never in `shadow` mode: nothing is changed
    /// there.
    fn strip_connection(&self, head: &mut impl Head) {
        if self.mode != Mode::Shadow {
            engine::strip_connection_headers(head);
        }
    }

    /// Puts the trace context on a request step-up sends to the payment API (never in
    /// `shadow` mode: nothing is changed there).
    fn pass_trace(&self, head: &mut impl Head) {
        if let (Some(t), false) = (self.record.trace(), self.mode == Mode::Shadow) {
            t.apply(head);
        }
    }

    fn classify(
        step_up: &StepUp,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Driver> {
        let (route, request) = match step_up.classify(method, uri, headers) {
            Route::Candidate(candidate) => {
                let pattern = step_up.candidate_pattern(candidate);
                let mut d = Driver::acting(step_up, pattern, Outcome::NotKlarna);
                d.record.candidate(&candidate);
                d.set_mode(step_up.mode(candidate));
                d.request = RequestStep::Candidate(candidate);
                d.declared = engine::content_length(headers);
                return Some(d);
            }
            Route::Refused(refused) => {
                let pattern = step_up.candidate_pattern(refused.candidate());
                let mut d = Driver::acting(step_up, pattern, Outcome::NotKlarna);
                d.set_mode(step_up.mode(refused.candidate()));
                d.request = match d.mode {
                    // The payment API reads the request: nothing to refuse.
                    Mode::AnswersOnly => RequestStep::Idle,
                    _ => RequestStep::Refused(refused.refusal()),
                };
                return Some(d);
            }
            Route::Return => (
                "acquirer_return",
                RequestStep::Return {
                    resolved: step_up.resolve_return(uri, engine::unix_now()),
                    method: method.clone(),
                    host: headers.get(http::header::HOST).cloned(),
                },
            ),
            // Its signature is checked over the body with the head's key id: the head is
            // kept until then.
            Route::Webhook => ("webhook", RequestStep::Webhook(headers.clone())),
            Route::RelayPathFromOutside => (
                "webhook_relay_path",
                RequestStep::Refused(Refusal::not_found()),
            ),
            _ => return None,
        };
        let mut d = Driver::acting(step_up, route, Outcome::NotCandidate);
        d.request = request;
        d.declared = engine::content_length(headers);
        Some(d)
    }

    /// Checks a request target as it came on the wire (`raw_target`), before anything
    /// else looks at the request: a path, an absolute URL, `*` for `OPTIONS`, or
    /// `CONNECT`'s authority (a parser that takes a malformed request line would hand the
    /// payment API a path no route check saw for what it is). `Some` driver, whose
    /// [`begin`](Self::begin) answers the 400, when it does not hold; then check the rest
    /// of the head with [`check_head`](Self::check_head).
    pub fn check_target(step_up: &StepUp, method: &Method, raw_target: &[u8]) -> Option<Driver> {
        let refusal = engine::check_request_target(method, raw_target).err()?;
        Some(Driver::refused_head(step_up, refusal))
    }

    /// Checks a request head as the binary's server does (see [`HeadLimits`]): at most one
    /// `Host` (and one in HTTP/1.1), one `Content-Length` (identical listed values are made
    /// one), no transfer coding but `chunked`, and the size bounds (`target_len`: the
    /// request target's length). `Some` driver, whose [`begin`](Self::begin) answers the
    /// refusal, when the head does not hold.
    pub fn check_head(
        step_up: &StepUp,
        head: &mut impl Head,
        version: http::Version,
        target_len: usize,
        limits: HeadLimits,
    ) -> Option<Driver> {
        let refusal = engine::check_request_head(head, version, target_len, limits).err()?;
        Some(Driver::refused_head(step_up, refusal))
    }

    fn refused_head(step_up: &StepUp, refusal: Refusal) -> Driver {
        let mut d = Driver::acting(step_up, "request_head", Outcome::NotCandidate);
        d.request = RequestStep::Refused(refusal);
        d
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.record.set_mode(mode);
    }

    /// The mode the request is served in ([`Mode`]: a candidate's partner's, or the
    /// top-level one; `enforce` for step-up's own routes).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether step-up may change the answer's bytes (not in `shadow` mode): an adapter
    /// that compresses rewritten answers for the client arms its compression only then.
    pub fn may_change_answer(&self) -> bool {
        self.mode != Mode::Shadow
    }

    fn acting(step_up: &StepUp, route: &str, outcome: Outcome) -> Driver {
        Driver {
            step_up: Some(step_up.clone()),
            record: Record::acting(route, outcome),
            ..Driver::default()
        }
    }

    /// Whether step-up acts on this request (a [`Driver::default`] does not: a request it
    /// streams through, kept only for its [`Record`]).
    pub fn acts(&self) -> bool {
        self.record.acts()
    }

    /// Whether the request is a candidate whose body is still to be read.
    pub fn is_candidate(&self) -> bool {
        matches!(self.request, RequestStep::Candidate(_))
    }

    /// Whether the request's head is refused from its head alone: answered before anything
    /// else (a wrapped proxy's own filters included) looks at it.
    pub fn refuses_head(&self) -> bool {
        matches!(self.request, RequestStep::Refused(_)) && self.record.route() == "request_head"
    }

    /// The Klarna exchange, once a request was injected.
    pub fn exchange(&self) -> Option<&Exchange> {
        self.exchange.as_ref()
    }

    /// Step-up's record of the request (final once [`finish`](Self::finish) ran).
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// What step-up did so far.
    pub fn outcome(&self) -> Outcome {
        self.record.outcome()
    }

    /// The request's `klarna_stepup` tracing span.
    pub fn span(&self) -> &tracing::Span {
        self.record.span()
    }

    /// The path the upstream request goes to instead of the caller's, when step-up sets one
    /// (a relayed webhook: the payment API's relay path; query dropped).
    pub fn upstream_path(&self) -> Option<&str> {
        match (&self.request, &self.step_up) {
            (RequestStep::Forwarded(Upstream::Relay(_)), Some(s)) => Some(s.webhook_relay_path()),
            _ => None,
        }
    }

    /// The wrapped service or proxy answered the request itself, without taking the body
    /// step-up had for the payment API (an authentication 401, say): its answer goes to the
    /// client untouched and unmarked.
    pub fn on_inner_answer(&mut self) {
        self.record.answered_by_inner();
        self.request = RequestStep::Idle;
        self.answer = AnswerStep::Inner;
    }

    /// The upstream request failed, or was aborted after step-up refused a body that
    /// streamed: the answer to give, if step-up has one (a refusal it decided, 503 for a
    /// webhook so that Klarna retries, else the 502/504 `failure` for requests it acts on).
    /// `failure` is the adapter's reading of its error (timeout or not); `can_answer`: no
    /// response head went out yet. `None`: the adapter answers as it would without step-up.
    pub fn on_upstream_error(
        &mut self,
        failure: Option<Refusal>,
        can_answer: bool,
    ) -> Option<Answer> {
        if !self.acts() {
            return None;
        }
        if let Some(answer) = self.pending.take() {
            return Some(answer);
        }
        if let RequestStep::Forwarded(Upstream::Relay(_)) = self.request {
            let refusal = Refusal::webhook_not_accepted();
            if !matches!(self.answer, AnswerStep::Answered) {
                self.record.not_relayed(None);
                self.answer = AnswerStep::Answered;
            }
            return Some(Answer(AnswerKind::Refusal(refusal)));
        }
        let refusal = failure?;
        if can_answer {
            self.record.refused(&refusal);
        } else {
            self.record.failed_upstream(&refusal);
        }
        self.answer = AnswerStep::Answered;
        Some(Answer(AnswerKind::Refusal(refusal)))
    }

    /// The request is done: `status` is the status the client got (`None`: nothing was
    /// answered), `failure` what the adapter makes of an error that ended it, if any. Closes
    /// the record (one log line) and hands it back, for the observer.
    pub fn finish(&mut self, status: Option<u16>, failure: Option<&Refusal>) -> &Record {
        if let Some(r) = failure {
            if matches!(
                self.record.outcome(),
                Outcome::NotCandidate
                    | Outcome::Rewritten
                    | Outcome::Passthrough
                    | Outcome::NotKlarna
                    | Outcome::Relayed
            ) {
                self.record.failed_upstream(r);
            }
        }
        self.record.done(status);
        &self.record
    }

    fn step_up(&self) -> &StepUp {
        self.step_up
            .as_ref()
            .expect("a driver that acts has its engine")
    }

    /// Answers `refusal` (recorded); kept for [`on_upstream_error`](Self::on_upstream_error)
    /// when the upstream request is already under way.
    fn refuse(&mut self, refusal: Refusal) -> Action {
        if self.mode == Mode::Shadow {
            self.record.refused(&refusal);
            return self.let_go();
        }
        self.record.refused(&refusal);
        let answer = Answer(AnswerKind::Refusal(refusal));
        if self.upstream_started {
            self.pending = Some(answer.clone());
        }
        self.request = RequestStep::Answered;
        self.answer = AnswerStep::Answered;
        Action::Answer(answer)
    }
}

// === impl Driver: shadow mode ===

impl Driver {
    /// Lets the request go on untouched, with what was read of its body (`shadow`: what
    /// step-up would have done is recorded already).
    fn let_go(&mut self) -> Action {
        let step = std::mem::replace(
            &mut self.request,
            RequestStep::Forwarded(Upstream::Untouched),
        );
        match step {
            RequestStep::Reading { watching: true, .. } => Action::Pass,
            RequestStep::Reading { mut body, .. } => Action::Release(body.take()),
            _ => Action::PassThrough,
        }
    }
}

/// A body as it arrives: a body in one part is held as it is (no copy); more parts are
/// joined in one buffer of the declared size.
#[derive(Debug, Default)]
struct Gathered {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Gathered {
    fn from(bytes: Bytes) -> Self {
        Gathered {
            first: (!bytes.is_empty()).then_some(bytes),
            joined: BytesMut::new(),
        }
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    fn push(&mut self, part: Bytes, expected: usize) {
        if part.is_empty() {
            return;
        }
        match self.first.take() {
            None if self.joined.is_empty() => self.first = Some(part),
            prev => {
                if self.joined.is_empty() {
                    // The declared length once, but never more than twice what came: a
                    // client declaring a large body and sending little makes the proxy hold
                    // little (the buffer budget is charged by the bytes that came).
                    let len = prev.as_ref().map_or(0, Bytes::len) + part.len();
                    self.joined.reserve(expected.min(len * 2).max(len));
                }
                if let Some(prev) = prev {
                    self.joined.extend_from_slice(&prev);
                }
                self.joined.extend_from_slice(&part);
            }
        }
    }

    /// What was gathered, leaving it empty.
    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(first) => first,
            None => std::mem::take(&mut self.joined).freeze(),
        }
    }

    /// What was gathered so far, kept (a part is copied into the joined buffer next).
    fn snapshot(&mut self) -> Bytes {
        let all = self.take();
        self.first = (!all.is_empty()).then(|| all.clone());
        all
    }
}

#[cfg(test)]
mod tests;
