//! The request side: admission, the body as it arrives, the verdict, and the forwarded
//! head.

use bytes::Bytes;

use super::{Action, Driver, Forward, Gathered, Holding, Reading, RequestStep, Upstream};
use crate::budget::BufferBudget;
use crate::config::Mode;
use crate::engine::{self, Head};
use crate::{Refusal, RequestVerdict};

// === impl Driver: the request ===

impl Driver {
    /// The first step after the head (and after a wrapped proxy's own request filters, if
    /// any): answer it at once, tell the payment API of a return, or read the body.
    /// `budget` is the process-wide budget a candidate's buffered bytes are charged to (as
    /// they arrive); `holding` says how much the adapter can hold before the upstream
    /// request must go.
    pub fn begin(&mut self, budget: &BufferBudget, holding: Holding) -> Action {
        match std::mem::take(&mut self.request) {
            RequestStep::Refused(r) => self.refuse(r),
            RequestStep::Candidate(candidate) => self.begin_candidate(candidate, budget, holding),
            RequestStep::Webhook(head) => {
                // Read whole before it is relayed: the adapter's bound applies.
                let mut limit = self.step_up().webhook_body_limit();
                if let Some(bound) = holding.bound() {
                    limit = limit.min(bound);
                }
                if self.declared.is_some_and(|n| n > limit as u64) {
                    return self.refuse(Refusal::too_large(limit));
                }
                // Charged to the budget as it arrives, as a candidate's body is: many
                // clients sending webhook-sized bodies slowly would otherwise hold memory
                // beyond it (503: Klarna retries).
                match budget.admit(0) {
                    Some(held) => self.held = Some(held),
                    None => return self.refuse(Refusal::overloaded()),
                }
                self.reading(Reading::Webhook(head), limit)
            }
            RequestStep::Return {
                resolved,
                method,
                host,
            } => self.begin_return(resolved, &method, host.as_ref()),
            other => {
                self.request = other;
                Action::PassThrough
            }
        }
    }

    fn begin_candidate(
        &mut self,
        candidate: crate::Candidate,
        budget: &BufferBudget,
        holding: Holding,
    ) -> Action {
        if self.mode == Mode::AnswersOnly {
            // The payment API sends its own step_up_config: the request goes on unread, its
            // answer is read as a Klarna exchange's.
            let exchange = self
                .step_up()
                .unread_exchange(candidate, engine::unix_now());
            self.exchange = Some(exchange);
            self.request = RequestStep::Forwarded(Upstream::Untouched);
            return Action::PassThrough;
        }
        let limit = self.step_up().body_limit();
        if self.declared.is_some_and(|n| n > limit as u64) {
            return self.refuse(Refusal::too_large(limit));
        }
        // Charged by the bytes it holds, as they arrive, declared length or not: a slow
        // client holding little takes little of the budget, and one without a length cannot
        // go past it. Its answer is counted as it arrives.
        match budget.admit(0) {
            Some(held) => self.held = Some(held),
            None => return self.refuse(Refusal::overloaded()),
        }
        self.holding = holding;
        let Some(bound) = holding.bound() else {
            return self.reading(Reading::Candidate(candidate), limit);
        };
        if self.mode == Mode::Shadow {
            // Nothing is held: the body passes as it comes, a copy is judged.
            self.reading(Reading::Candidate(candidate), limit);
            if let RequestStep::Reading { watching, .. } = &mut self.request {
                *watching = true;
            }
            return Action::Watch;
        }
        let large = self.declared.is_some_and(|n| n > bound as u64);
        match holding {
            Holding::ThenRefuse(_) if large => self.refuse(Refusal::too_large(bound.min(limit))),
            Holding::ThenStream(_) if large => {
                // Nothing read yet: the whole body streams.
                self.reading(Reading::Candidate(candidate), limit);
                self.stream(Bytes::new())
            }
            _ => self.reading(Reading::Candidate(candidate), limit.min(bound)),
        }
    }

    fn reading(&mut self, what: Reading, limit: usize) -> Action {
        self.request = RequestStep::Reading {
            what,
            body: Gathered::default(),
            limit,
            streamed: None,
            watching: false,
        };
        Action::ReadBody { limit }
    }

    fn stream(&mut self, prefix: Bytes) -> Action {
        self.record.span().in_scope(|| {
            tracing::debug!(read = prefix.len(), "large candidate body: streaming path");
        });
        if let RequestStep::Reading {
            streamed, limit, ..
        } = &mut self.request
        {
            *streamed = Some(prefix);
            *limit = self.step_up.as_ref().map_or(0, |s| s.body_limit());
        }
        self.upstream_started = true;
        Action::StreamBody
    }

    /// The next part of the request body (`end`: the body ends with it; an empty part is
    /// fine). Refuses a body past its limit (413) or past the buffer budget (503); at the
    /// end, asks the engine: forward the caller's bytes, forward the rewritten body, or
    /// answer a refusal.
    pub fn on_request_body(&mut self, part: Bytes, end: bool) -> Action {
        let RequestStep::Reading {
            what,
            body,
            limit,
            streamed,
            watching,
        } = &mut self.request
        else {
            // A body step-up let go of (`shadow`) passes as it is.
            return Action::Pass;
        };
        let (webhook, limit, streaming, watching) = (
            matches!(what, Reading::Webhook(_)),
            *limit,
            streamed.is_some(),
            *watching,
        );
        let expected = self.declared.map_or(0, |n| n as usize).min(limit);
        body.push(part, expected);
        let len = body.len();
        let body_limit = self.step_up().body_limit();
        match webhook {
            true if len > limit => return self.refuse(Refusal::too_large(limit)),
            true => {
                if !self.held.as_mut().is_none_or(|h| h.try_grow_to(len)) {
                    return self.refuse(Refusal::overloaded());
                }
            }
            false => {
                if len > body_limit {
                    return self.refuse(Refusal::too_large(body_limit));
                }
                if !self.held.as_mut().is_none_or(|h| h.try_grow_to(len)) {
                    return self.refuse(Refusal::overloaded());
                }
                if !streaming && !watching && len > limit {
                    // More than the adapter can hold before the upstream request goes.
                    return match self.holding {
                        Holding::ThenStream(_) => {
                            let RequestStep::Reading { body, .. } = &mut self.request else {
                                unreachable!("reading")
                            };
                            let prefix = body.snapshot();
                            self.stream(prefix)
                        }
                        _ => self.refuse(Refusal::too_large(limit)),
                    };
                }
            }
        }
        if !end {
            return match watching {
                true => Action::Pass,
                false => Action::ReadMore,
            };
        }
        let RequestStep::Reading { what, mut body, .. } = std::mem::take(&mut self.request) else {
            unreachable!("reading")
        };
        let whole = body.take();
        self.record.read_request(whole.len());
        match what {
            Reading::Candidate(candidate) if self.mode == Mode::Shadow => {
                self.judge_shadow(candidate, whole, watching)
            }
            Reading::Candidate(candidate) => self.judge(candidate, whole, streaming),
            Reading::Webhook(head) => self.verify_webhook(whole, &head),
        }
    }

    /// The request body could not be read: 408 when the client did not send it in time
    /// (`timed_out`), else 400.
    pub fn on_request_body_error(&mut self, timed_out: bool) -> Action {
        if !matches!(self.request, RequestStep::Reading { .. }) {
            return Action::PassThrough;
        }
        self.refuse(if timed_out {
            Refusal::request_timeout()
        } else {
            Refusal::unreadable_body()
        })
    }

    fn judge(&mut self, candidate: crate::Candidate, whole: Bytes, streamed: bool) -> Action {
        let step_up = self.step_up().clone();
        let verdict = self
            .record
            .timed(|| step_up.rewrite_request(candidate, &whole, engine::unix_now()));
        match verdict {
            RequestVerdict::NotKlarna => {
                self.request = RequestStep::Forwarded(if streamed {
                    Upstream::Streamed
                } else {
                    Upstream::Untouched
                });
                Action::Forward(Forward {
                    body: whole,
                    rewritten: false,
                    timeout: None,
                })
            }
            RequestVerdict::Injected { body, exchange } => {
                // The partner's bytes are not needed once injected: one copy in memory.
                drop(whole);
                self.record.injected(&exchange);
                self.exchange = Some(exchange);
                let body = Bytes::from(body);
                self.request = RequestStep::Forwarded(if streamed {
                    Upstream::Streamed
                } else {
                    Upstream::Injected(body.clone())
                });
                Action::Forward(Forward {
                    body,
                    rewritten: true,
                    timeout: None,
                })
            }
            RequestVerdict::Refused(r) => self.refuse(r),
        }
    }

    /// `shadow`: the verdict recorded (would-refuse, would-inject: the exchange is kept to
    /// judge the answer), the caller's bytes let go untouched.
    fn judge_shadow(
        &mut self,
        candidate: crate::Candidate,
        whole: Bytes,
        watching: bool,
    ) -> Action {
        let step_up = self.step_up().clone();
        let verdict = self
            .record
            .timed(|| step_up.rewrite_request(candidate, &whole, engine::unix_now()));
        match verdict {
            RequestVerdict::NotKlarna => {}
            RequestVerdict::Injected { exchange, .. } => {
                self.record.injected(&exchange);
                self.exchange = Some(exchange);
            }
            RequestVerdict::Refused(r) => self.record.refused(&r),
        }
        self.request = RequestStep::Forwarded(Upstream::Untouched);
        match watching {
            true => Action::Pass,
            false => Action::Release(whole),
        }
    }

    /// The body the upstream gets instead of the caller's, when step-up holds one whole: a
    /// rewritten Klarna request (its head has an exact length).
    pub fn forward_body(&self) -> Option<&Bytes> {
        match &self.request {
            RequestStep::Forwarded(Upstream::Injected(body)) => Some(body),
            _ => None,
        }
    }

    /// Whether the body streams upstream as it arrives ([`Action::StreamBody`],
    /// [`Action::Watch`]): feed every part to [`on_request_body`](Self::on_request_body).
    pub fn streams_body(&self) -> bool {
        matches!(
            self.request,
            RequestStep::Reading {
                streamed: Some(_),
                ..
            }
        )
    }

    /// Edits the head of the upstream request (call it for each attempt): the client's
    /// hop-by-hop headers out (`Connection` and what it names, `Keep-Alive`, `TE`,
    /// `Trailer`, `Upgrade`, every `Proxy-*`; `Transfer-Encoding` is the adapter's framing),
    /// then an exact length and the answer asked for plain for a rewritten Klarna request,
    /// chunked framing for a body that streams, step-up's own headers for a relayed webhook.
    pub fn upstream_request_head(&mut self, head: &mut impl Head) {
        self.strip_connection(head);
        self.pass_trace(head);
        match &mut self.request {
            RequestStep::Forwarded(Upstream::Injected(body)) => {
                engine::injected_request(head, body.len())
            }
            RequestStep::Forwarded(Upstream::Relay(event)) => engine::relay_request(head, event),
            RequestStep::Reading {
                body,
                streamed: Some(prefix),
                ..
            } => {
                // A new attempt: the body is gathered again from what was read before it
                // began streaming.
                *body = Gathered::from(prefix.clone());
                engine::streamed_request(head);
            }
            _ => {}
        }
    }

    /// [`upstream_request_head`](Self::upstream_request_head) for an adapter whose own
    /// filters may have changed the body after step-up: a rewritten Klarna request's
    /// length is `body_len`.
    pub fn upstream_request_head_for(&mut self, head: &mut impl Head, body_len: usize) {
        match &self.request {
            RequestStep::Forwarded(Upstream::Injected(_)) => {
                self.strip_connection(head);
                self.pass_trace(head);
                engine::injected_request(head, body_len)
            }
            _ => self.upstream_request_head(head),
        }
    }
}
