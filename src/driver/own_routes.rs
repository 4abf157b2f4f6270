//! The routes step-up answers or relays itself: the acquirer return (resolve, notify,
//! confirm) and Klarna's webhook (verify, relay, accepted?).

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};

use super::{Action, Answer, AnswerKind, Driver, Forward, RequestStep, Upstream};
use crate::engine::{self, ReturnRedirect};
use crate::observe::Notified as Told;
use crate::Refusal;

/// How telling the payment API of a return went: fed to [`Driver::on_notified`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Notified<'a> {
    /// The payment API answered `status`; `body` is its answer's body when it was read
    /// whole within the limit (only a 2xx's is: [`Driver::reads_notification_answer`]).
    Answered {
        /// The answer's status.
        status: StatusCode,
        /// The answer's body, when read.
        body: Option<&'a [u8]>,
    },
    /// It could not be sent, or its answer not read.
    Failed,
    /// No answer within the timeout.
    TimedOut,
    /// The adapter has no payment API to send it to.
    NoPeer,
}

// === impl Driver: the acquirer return ===

impl Driver {
    pub(super) fn begin_return(
        &mut self,
        resolved: Result<ReturnRedirect, Refusal>,
        method: &Method,
        host: Option<&HeaderValue>,
    ) -> Action {
        let redirect = match resolved {
            Ok(redirect) => redirect,
            Err(r) => return self.refuse(r),
        };
        let notification =
            self.step_up()
                .return_notification(method, &redirect, host, engine::unix_now());
        let Some((mut request, timeout)) = notification else {
            return self.redirect(redirect);
        };
        self.pass_trace(request.headers_mut());
        self.request = RequestStep::Notifying(redirect);
        Action::Notify {
            request,
            timeout,
            answer_limit: engine::NOTIFICATION_ANSWER_LIMIT,
        }
    }

    /// Whether [`begin`](Self::begin) will ask to notify the payment API of this return
    /// (an acquirer return with a valid token, and a notification path configured): an
    /// adapter that must find the payment API's address first does it now.
    pub fn wants_notify_peer(&self) -> bool {
        matches!(
            self.request,
            RequestStep::Return {
                resolved: Ok(_),
                ..
            }
        ) && self.step_up.as_ref().is_some_and(|s| s.notifies_returns())
    }

    /// Whether the body of the payment API's answer to the notification is read (a 2xx:
    /// its confirmed state), and then at most how much.
    pub fn reads_notification_answer(&self, status: StatusCode) -> Option<usize> {
        status
            .is_success()
            .then_some(engine::NOTIFICATION_ANSWER_LIMIT)
    }

    /// How the notification went: the redirect, with the state the payment API confirmed
    /// (never the browser's claim as if confirmed).
    pub fn on_notified(&mut self, result: Notified<'_>) -> Action {
        let RequestStep::Notifying(redirect) = std::mem::take(&mut self.request) else {
            return Action::PassThrough;
        };
        let (told, answer) = match result {
            Notified::Answered { status, body } if status.is_success() => (Told::Accepted, body),
            Notified::Answered { status, .. } => (Told::Refused(status.as_u16()), None),
            Notified::Failed => (Told::Failed, None),
            Notified::TimedOut => (Told::TimedOut, None),
            Notified::NoPeer => (Told::NoPeer, None),
        };
        self.record.notified(told);
        match self.step_up().confirm_return(&redirect, answer) {
            Ok(confirmed) => self.redirect(confirmed),
            Err(r) => self.refuse(r),
        }
    }

    fn redirect(&mut self, redirect: ReturnRedirect) -> Action {
        self.record.redirected(&redirect);
        self.request = RequestStep::Answered;
        self.answer = super::AnswerStep::Answered;
        Action::Answer(Answer(AnswerKind::Redirect(redirect)))
    }
}

// === impl Driver: Klarna's webhook ===

impl Driver {
    pub(super) fn verify_webhook(&mut self, body: Bytes, headers: &http::HeaderMap) -> Action {
        let step_up = self.step_up().clone();
        let verified = self.record.timed(|| step_up.verify_webhook(headers, &body));
        match verified {
            Ok(event) => {
                self.record.webhook_verified(&event);
                self.request = RequestStep::Forwarded(Upstream::Relay(event));
                Action::Forward(Forward {
                    body,
                    rewritten: false,
                    timeout: Some(step_up.webhook_relay_timeout()),
                })
            }
            Err(r) => self.refuse(r),
        }
    }

    /// The payment API's answer to a relayed webhook: a 2xx goes to Klarna (marked
    /// `relayed`), anything else is answered 503 so that Klarna retries.
    pub(super) fn relay_answered(&mut self, status: StatusCode) -> super::ResponseAction {
        match self.step_up().webhook_accepted(status) {
            Ok(()) => {
                self.record.relayed(status.as_u16());
                self.answer = super::AnswerStep::Relayed;
                super::ResponseAction::Stream
            }
            Err(r) => {
                self.record.not_relayed(Some(status.as_u16()));
                self.answer = super::AnswerStep::Answered;
                super::ResponseAction::Answer(Answer(AnswerKind::Refusal(r)))
            }
        }
    }
}
