//! The acquirer-return notification on Pingora: sent on step-up's own upstream client to
//! the peer the inner proxy chose.

use std::time::Duration;

use super::ctx::StepUpCtx;
use super::phases::StepUpPhases;
use crate::driver::{Action, Notified};

impl StepUpPhases {
    /// Whether `request_filter` needs [`StepUpCtx::set_notify_peer`] first: an acquirer
    /// return with a valid token, and a notification path configured.
    pub fn wants_notify_peer(&self, ctx: &StepUpCtx) -> bool {
        ctx.notify_peer.is_none() && ctx.driver.wants_notify_peer()
    }

    /// Sends the notification the driver asked for, waiting at most `timeout`, and tells
    /// the driver how it went.
    pub(super) async fn notify(
        &self,
        ctx: &mut StepUpCtx,
        request: http::Request<Vec<u8>>,
        timeout: Duration,
        answer_limit: usize,
    ) -> Action {
        let Some(peer) = ctx.notify_peer.take() else {
            return ctx.driver.on_notified(Notified::NoPeer);
        };
        let sent = tokio::time::timeout(timeout, self.client.send(&peer, request, answer_limit));
        match sent.await {
            Ok(Ok((status, body))) => ctx.driver.on_notified(Notified::Answered {
                status,
                body: body.as_deref(),
            }),
            Ok(Err(_)) => ctx.driver.on_notified(Notified::Failed),
            Err(_) => ctx.driver.on_notified(Notified::TimedOut),
        }
    }
}
