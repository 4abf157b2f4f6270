//! The routes step-up answers or relays itself on Pingora: the acquirer return and Klarna's
//! webhook.

use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, Result};

use super::ctx::{Own, Req, StepUpCtx};
use super::io::{read_retry_buffered, respond, write_response, Read};
use super::phases::{StepUpPhases, RETRY_BUFFER_LIMIT, WEBHOOK_ANSWERED};
use crate::engine;
use crate::observe::Notified;
use crate::Refusal;

impl StepUpPhases {
    /// Whether `request_filter` needs [`StepUpCtx::set_notify_peer`] first: an acquirer
    /// return with a valid token, and a notification path configured.
    pub fn wants_notify_peer(&self, ctx: &StepUpCtx) -> bool {
        matches!(ctx.own, Own::Return(Ok(_)))
            && ctx.notify_peer.is_none()
            && self.step_up.notifies_returns()
    }

    /// The acquirer return: refuse a bad token, notify the payment API (bounded wait),
    /// redirect.
    pub(super) async fn acquirer_return(
        &self,
        session: &mut Session,
        ctx: &mut StepUpCtx,
    ) -> Result<bool> {
        let mut redirect = match &ctx.own {
            Own::Return(Ok(r)) => r.clone(),
            Own::Return(Err(r)) => {
                let r = r.clone();
                return self.refuse(session, ctx, r).await;
            }
            _ => return Ok(false),
        };
        let req = session.req_header();
        let notification = self.step_up.return_notification(
            &req.method,
            &redirect,
            req.headers.get(header::HOST),
            engine::unix_now(),
        );
        if let Some((notify, timeout)) = notification {
            let sent = match ctx.notify_peer.take() {
                None => None,
                Some(peer) => Some(
                    tokio::time::timeout(
                        timeout,
                        self.client
                            .send(&peer, notify, engine::NOTIFICATION_ANSWER_LIMIT),
                    )
                    .await,
                ),
            };
            let (notified, answer) = match sent {
                None => (Notified::NoPeer, None),
                Some(Ok(Ok((status, body)))) if status.is_success() => (Notified::Accepted, body),
                Some(Ok(Ok((status, _)))) => (Notified::Refused(status.as_u16()), None),
                Some(Ok(Err(_))) => (Notified::Failed, None),
                Some(Err(_)) => (Notified::TimedOut, None),
            };
            ctx.record.notified(notified);
            // The state the payment API confirmed, not the browser's claim.
            redirect = match self.step_up.confirm_return(&redirect, answer.as_deref()) {
                Ok(r) => r,
                Err(r) => return self.refuse(session, ctx, r).await,
            };
        }
        ctx.record.redirected(&redirect);
        write_response(session, redirect.to_response()).await?;
        Ok(true)
    }

    /// A Klarna webhook: read the body into the retry buffer, verify it, and let Pingora
    /// relay it (path and headers are set in `upstream_request_filter`).
    pub(super) async fn webhook(&self, session: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        // The body reaches the upstream from the retry buffer: it must fit.
        let limit = self.step_up.webhook_body_limit().min(RETRY_BUFFER_LIMIT);
        if engine::content_length(&session.req_header().headers).is_some_and(|n| n > limit as u64) {
            return self.refuse(session, ctx, Refusal::too_large(limit)).await;
        }
        let body = match read_retry_buffered(session, limit).await {
            Read::Whole(body) => body,
            Read::Failed => return self.refuse(session, ctx, Refusal::unreadable_body()).await,
            Read::TimedOut => return self.refuse(session, ctx, Refusal::request_timeout()).await,
            Read::Over(_) => return self.refuse(session, ctx, Refusal::too_large(limit)).await,
        };
        ctx.record.read_request(body.len());
        let headers = &session.req_header().headers;
        let verified = ctx
            .record
            .timed(|| self.step_up.verify_webhook(headers, &body));
        let event = match verified {
            Ok(event) => event,
            Err(r) => return self.refuse(session, ctx, r).await,
        };
        ctx.record.webhook_verified(&event);
        ctx.own = Own::Webhook(Some(event));
        ctx.req = Req::Buffered(body);
        Ok(false)
    }

    /// The payment API's answer to a relayed webhook: a 2xx goes to Klarna, anything else
    /// becomes a 503 so that Klarna retries.
    pub(super) async fn webhook_answer(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        let status = response.status;
        let refusal = match self.step_up.webhook_accepted(status) {
            Ok(()) => {
                ctx.record.relayed(status.as_u16());
                engine::mark_relayed(response);
                return Ok(());
            }
            Err(refusal) => refusal,
        };
        ctx.record.not_relayed(Some(status.as_u16()));
        // Pingora writes this header with the upstream's framing, and an upstream answer
        // without a body ends with its header (no body filter runs): answer the 503 here,
        // whole, and stop the upstream answer with an error.
        session.set_keepalive(None);
        respond(session, &refusal).await?;
        Error::e_explain(WEBHOOK_ANSWERED, "payment API did not accept the webhook")
    }
}
