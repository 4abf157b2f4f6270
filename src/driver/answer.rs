//! The answer side: what is read of the payment API's answer, the rewrite, and the
//! client-facing head.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, StatusCode};

use super::{Answer, AnswerStep, Driver, Gathered, RequestStep, Upstream};
use crate::config::Mode;
use crate::engine::{self, Head};
use crate::{KeepReason, Refusal, ResponsePlan, ResponseVerdict};

/// The head of the upstream's answer, as the adapter has it: fed to
/// [`Driver::on_response_head`].
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    status: StatusCode,
    headers: &'a HeaderMap,
    length: Option<u64>,
    head_first: bool,
    decoded: bool,
    proxy_error: Option<&'a Refusal>,
    inner_answered: bool,
}

impl<'a> ResponseHead<'a> {
    /// An answer's status and headers.
    pub fn new(status: StatusCode, headers: &'a HeaderMap) -> Self {
        ResponseHead {
            status,
            headers,
            length: None,
            head_first: false,
            decoded: false,
            proxy_error: None,
            inner_answered: false,
        }
    }

    /// The body's length when the adapter knows it (an exact size hint, or a body it read
    /// already).
    pub fn length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }

    /// The head goes to the client before the body is read (Pingora's proxy pipeline): it
    /// says only what holds whatever step-up then decides.
    pub fn head_first(mut self) -> Self {
        self.head_first = true;
        self
    }

    /// The adapter decodes the answer before step-up sees its bytes (Pingora's upstream
    /// decompression): bounded by the body limit, or a small compressed answer reaches the
    /// client huge.
    pub fn decoded(mut self, decoded: bool) -> Self {
        self.decoded = decoded;
        self
    }

    /// The wrapped proxy's own answer for a request it could not carry (its 502/504, with
    /// this refusal), not the payment API's.
    pub fn proxy_error(mut self, refusal: Option<&'a Refusal>) -> Self {
        self.proxy_error = refusal;
        self
    }

    /// The wrapped service answered a candidate without taking the body step-up handed it:
    /// its own answer (see [`Driver::on_inner_answer`]).
    pub fn inner_answered(mut self, answered: bool) -> Self {
        self.inner_answered = answered;
        self
    }
}

/// What the adapter does next with the answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum ResponseAction {
    /// Pass the answer on as it comes, after [`Driver::response_head`]. An adapter whose
    /// body is decoded for it ([`ResponseHead::decoded`]) feeds its parts to
    /// [`Driver::on_response_body`] still (they are counted).
    Stream,
    /// Read the answer, feeding it to [`Driver::on_response_body`] (at most `limit` bytes
    /// are held).
    Read {
        /// The most held before deciding.
        limit: usize,
    },
    /// Feed the next part.
    ReadMore,
    /// Leave this part as it is.
    Pass,
    /// The answer's whole body: send this, after [`Driver::response_head`].
    Send(Bytes),
    /// Too large to rewrite: send this (what was read), then the rest as it comes,
    /// untouched, after [`Driver::response_head`].
    SendThenStream(Bytes),
    /// Stop the answer: the client must see it cut short, not complete.
    Abort,
    /// Answer the client with this instead of the upstream's answer.
    Answer(Answer),
}

/// What [`Driver::response_head`] made of the client-facing head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerHead {
    /// Left as it is (or marked with a proxy error's code).
    Untouched,
    /// Marked `passthrough`: the upstream's bytes, untouched.
    Passthrough,
    /// Marked `relayed`: the payment API accepted a webhook.
    Relayed,
    /// Marked `rewritten`, with the new length: the body is step-up's.
    Rewritten,
    /// Sent before the body was read for a rewrite: chunked, no length, encoding,
    /// validators or marker.
    BeingRead,
}

impl AnswerHead {
    /// Whether the body is (or may be) step-up's own bytes: an adapter may compress it for
    /// the client; anything else keeps the upstream's encoding.
    pub fn body_is_step_ups(self) -> bool {
        matches!(self, AnswerHead::Rewritten | AnswerHead::BeingRead)
    }
}

// === impl Driver: the answer ===

impl Driver {
    /// The head of the upstream's answer: pass it on, read it (a 2xx JSON answer to a
    /// Klarna request, or a small Klarna error read for its `error_id`), or answer instead
    /// (a webhook the payment API did not accept). Informational (1xx) heads pass on.
    pub fn on_response_head(&mut self, head: ResponseHead<'_>) -> ResponseAction {
        if !self.acts() || head.status.is_informational() {
            return ResponseAction::Stream;
        }
        if let RequestStep::Forwarded(Upstream::Relay(_)) = self.request {
            // Whoever answered, only a 2xx is an accepted webhook.
            return self.relay_answered(head.status);
        }
        if head.inner_answered && head.proxy_error.is_none() {
            self.on_inner_answer();
            return ResponseAction::Stream;
        }
        if let Some(r) = head.proxy_error {
            if self.exchange.is_some() {
                // Not Klarna's answer: neither rewritten nor marked `passthrough`.
                self.record.refused(r);
                self.answer = AnswerStep::ProxyError(r.code().as_str());
            }
            return ResponseAction::Stream;
        }
        let Some(exchange) = &self.exchange else {
            return ResponseAction::Stream;
        };
        let step_up = self
            .step_up
            .clone()
            .expect("a driver that acts has its engine");
        let limit = step_up.body_limit();
        self.record.answer_head(head.headers);
        match step_up.response_plan(exchange, head.status, head.headers) {
            ResponsePlan::Keep(reason) if !self.klarnas(reason) => ResponseAction::Stream,
            ResponsePlan::Keep(reason) => {
                self.record.kept(reason);
                self.answer = AnswerStep::Kept;
                if self.mode == Mode::Shadow {
                    return ResponseAction::Stream;
                }
                if head.head_first {
                    if head.decoded {
                        self.answer = AnswerStep::Counting { passed: 0 };
                    }
                    return ResponseAction::Stream;
                }
                if step_up.reads_error(head.status, head.headers, head.length) {
                    self.answer = AnswerStep::ReadingError {
                        body: Gathered::default(),
                    };
                    return ResponseAction::Read { limit };
                }
                ResponseAction::Stream
            }
            ResponsePlan::Read => {
                // The rewrite reads the answer's Content-Type and Content-Encoding only:
                // those are kept, not a copy of every header.
                let mut kept = HeaderMap::with_capacity(2);
                for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING] {
                    if let Some(v) = head.headers.get(&name) {
                        kept.insert(name, v.clone());
                    }
                }
                let expected = engine::content_length(head.headers).map_or(0, |n| n as usize);
                self.answer = AnswerStep::Reading {
                    status: head.status,
                    headers: kept,
                    body: Gathered::default(),
                    expected: expected.min(limit),
                    head_first: head.head_first,
                    decoded: head.decoded,
                };
                ResponseAction::Read { limit }
            }
        }
    }

    /// Whether an answer kept for `reason` is one to mark and count as a Klarna answer
    /// passed through. In `answers_only` mode step-up does not know whether the request
    /// was Klarna's: only an answer in Klarna's shape is (one it could not rewrite).
    fn klarnas(&self, reason: KeepReason) -> bool {
        self.mode != Mode::AnswersOnly
            || matches!(
                reason,
                KeepReason::UnknownResult
                    | KeepReason::MissingField(_)
                    | KeepReason::UntrustedPaymentRequestUrl
            )
    }

    /// The next part of the answer (`end`: the answer ends with it).
    pub fn on_response_body(&mut self, part: Bytes, end: bool) -> ResponseAction {
        let limit = self.step_up.as_ref().map_or(0, |s| s.body_limit());
        match &mut self.answer {
            AnswerStep::Counting { passed } => {
                *passed += part.len();
                if *passed > limit {
                    self.answer = AnswerStep::Aborted;
                    return ResponseAction::Abort;
                }
                ResponseAction::Pass
            }
            AnswerStep::Aborted => ResponseAction::Abort,
            AnswerStep::ReadingError { body } => {
                body.push(part, 0);
                if body.len() > limit {
                    // Longer than it said: not read further, passed on as it comes.
                    let prefix = body.take();
                    self.answer = AnswerStep::Kept;
                    return ResponseAction::SendThenStream(prefix);
                }
                if !end {
                    return ResponseAction::ReadMore;
                }
                let raw = body.take();
                self.answer = AnswerStep::Kept;
                let id = self.step_up().klarna_error_id(&raw);
                self.record.klarna_error(id);
                ResponseAction::Send(raw)
            }
            AnswerStep::Reading { .. } => self.read_answer(part, end, limit),
            _ => ResponseAction::Pass,
        }
    }

    fn read_answer(&mut self, part: Bytes, end: bool, limit: usize) -> ResponseAction {
        let AnswerStep::Reading {
            headers,
            body,
            expected,
            head_first,
            decoded,
            ..
        } = &mut self.answer
        else {
            return ResponseAction::Pass;
        };
        body.push(part, *expected);
        let len = body.len();
        if let Some(held) = &mut self.held {
            held.grow_to(len);
        }
        let shadow = self.mode == Mode::Shadow;
        if len > limit {
            // Too large to be an answer step-up rewrites.
            let stopped =
                *head_first && (*decoded || headers.contains_key(header::CONTENT_ENCODING));
            let prefix = body.take();
            self.record.read_response(len);
            self.record.kept(KeepReason::TooLarge);
            if shadow && *head_first {
                // Watched as it passed: it goes on as it is.
                self.answer = AnswerStep::Kept;
                return ResponseAction::Pass;
            }
            if stopped && !shadow {
                // Decoded past the limit (an inflation, not a Klarna answer), or still
                // encoded after its head left without its encoding: cut short.
                self.answer = AnswerStep::Aborted;
                return ResponseAction::Abort;
            }
            self.answer = AnswerStep::Kept;
            return ResponseAction::SendThenStream(prefix);
        }
        if !end {
            return match shadow && *head_first {
                true => ResponseAction::Pass,
                false => ResponseAction::ReadMore,
            };
        }
        let AnswerStep::Reading {
            status,
            headers,
            mut body,
            head_first,
            ..
        } = std::mem::take(&mut self.answer)
        else {
            unreachable!("reading the answer")
        };
        let raw = body.take();
        self.record.read_response(raw.len());
        if !shadow {
            return self.rewrite_answer(status, &headers, raw, head_first, limit);
        }
        // What step-up would have done is recorded; the answer goes on as it came.
        let _ = self.rewrite_answer(status, &headers, raw.clone(), head_first, limit);
        self.answer = AnswerStep::Kept;
        match head_first {
            true => ResponseAction::Pass,
            false => ResponseAction::SendThenStream(raw),
        }
    }

    /// The whole answer, read: rewritten when the engine says so, else passed on (decoded,
    /// when its head went out without its encoding).
    fn rewrite_answer(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        raw: Bytes,
        head_first: bool,
        limit: usize,
    ) -> ResponseAction {
        let step_up = self.step_up().clone();
        let Some(exchange) = &self.exchange else {
            self.answer = AnswerStep::Kept;
            return ResponseAction::Send(raw);
        };
        let verdict = self
            .record
            .timed(|| step_up.rewrite_response(exchange, status, headers, &raw));
        match verdict {
            ResponseVerdict::Rewritten {
                body,
                status: configured,
                result,
                payment_request_id,
            } => {
                self.record.rewritten(result, payment_request_id);
                if head_first && configured != status && self.mode != Mode::Shadow {
                    // `partner_response.http_status` asks for another status than the one
                    // whose head already left: never a step-up or a decline under the status
                    // of a success. Cut short, the client sees a failed answer.
                    self.record.status_not_sent(configured);
                    self.answer = AnswerStep::Aborted;
                    return ResponseAction::Abort;
                }
                self.answer = AnswerStep::Rewritten {
                    len: body.len(),
                    status: configured,
                };
                ResponseAction::Send(Bytes::from(body))
            }
            ResponseVerdict::Keep(reason) => {
                self.answer = AnswerStep::Untouched;
                if self.klarnas(reason) {
                    self.record.kept(reason);
                    self.answer = AnswerStep::Kept;
                }
                let encoding = headers.get(header::CONTENT_ENCODING);
                if !head_first || encoding.is_none() {
                    return ResponseAction::Send(raw);
                }
                // The head already went out without its `Content-Encoding`: the answer goes
                // out decoded, or not at all.
                match engine::decode::decode(encoding, &raw, limit) {
                    Some(plain) => ResponseAction::Send(Bytes::from(plain.into_owned())),
                    None => {
                        self.answer = AnswerStep::Aborted;
                        ResponseAction::Abort
                    }
                }
            }
        }
    }

    /// Whether the answer's body is fed to [`on_response_body`](Self::on_response_body)
    /// (read, counted, or stopped); an adapter that passes every part through a filter may
    /// skip the call otherwise.
    pub fn reads_answer(&self) -> bool {
        matches!(
            self.answer,
            AnswerStep::Counting { .. }
                | AnswerStep::ReadingError { .. }
                | AnswerStep::Reading { .. }
                | AnswerStep::Aborted
        )
    }

    /// The status the client gets instead of the upstream's, when step-up says one: a
    /// rewritten answer's (`partner_response.http_status`). Set it with the head's edits.
    pub fn answer_status(&self) -> Option<StatusCode> {
        match (&self.answer, self.mode) {
            (_, Mode::Shadow) => None,
            (AnswerStep::Rewritten { status, .. }, _) => Some(*status),
            _ => None,
        }
    }

    /// Whether the answer was stopped ([`ResponseAction::Abort`]).
    pub fn aborted(&self) -> bool {
        matches!(self.answer, AnswerStep::Aborted)
    }

    /// Edits the client-facing head of the upstream's answer as step-up's handling of it
    /// requires: its hop-by-hop headers out (as the request's, see
    /// [`upstream_request_head`](Self::upstream_request_head)), then `rewritten` with the new
    /// length, `passthrough`, `relayed`, a proxy error's code, or (sent before the body is
    /// read) only what holds either way.
    pub fn response_head(&mut self, head: &mut impl Head) -> AnswerHead {
        if self.mode == Mode::Shadow {
            return AnswerHead::Untouched;
        }
        self.strip_connection(head);
        match &self.answer {
            AnswerStep::ProxyError(code) => {
                engine::mark_code(head, code);
                AnswerHead::Untouched
            }
            AnswerStep::Relayed => {
                engine::mark_relayed(head);
                AnswerHead::Relayed
            }
            AnswerStep::Kept | AnswerStep::Counting { .. } | AnswerStep::ReadingError { .. } => {
                engine::mark_passthrough(head);
                AnswerHead::Passthrough
            }
            AnswerStep::Rewritten { len, .. } => {
                engine::mark_rewritten(head);
                head.set(header::CONTENT_LENGTH, HeaderValue::from(*len));
                AnswerHead::Rewritten
            }
            AnswerStep::Reading { .. } => {
                engine::answer_being_read(head);
                AnswerHead::BeingRead
            }
            AnswerStep::Untouched
            | AnswerStep::Inner
            | AnswerStep::Aborted
            | AnswerStep::Answered => AnswerHead::Untouched,
        }
    }
}
