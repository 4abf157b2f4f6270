//! `StepUpPhases` called from a hand-written `ProxyHttp`, as the `klarna_stepup::pingora`
//! module docs show it (the recipe for acquirers who would rather not wrap their proxy): the
//! whole fixture table gives the partner the same status and bytes as through tower. This
//! recipe is Pingora's pipeline, so an answer read for a rewrite carries no marker (its
//! header leaves before the engine's verdict), as the module docs say.
#![cfg(feature = "pingora")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::fixtures::{self, Forwarded};
use common::pingora_proxy::start_pingora;
use common::raw_http::send_fixture;
use common::upstream::{self, Answer};
use klarna_stepup::pingora::{StepUpCtx, StepUpPhases};
use klarna_stepup::StepUp;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

const LIMIT: Duration = Duration::from_secs(10);

/// The module docs' `MyProxy`, pointed at the test upstream.
struct MyProxy {
    step_up: StepUpPhases,
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    type CTX = StepUpCtx;
    fn new_ctx(&self) -> StepUpCtx {
        StepUpCtx::default()
    }
    async fn upstream_peer(&self, _: &mut Session, _: &mut StepUpCtx) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.read_timeout = Some(LIMIT);
        Ok(Box::new(peer))
    }
    async fn early_request_filter(&self, s: &mut Session, ctx: &mut StepUpCtx) -> Result<()> {
        self.step_up.early_request_filter(s, ctx);
        Ok(())
    }
    async fn request_filter(&self, s: &mut Session, ctx: &mut StepUpCtx) -> Result<bool> {
        self.step_up.request_filter(s, ctx).await
    }
    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        self.step_up.upstream_request_filter(req, ctx)
    }
    async fn request_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        self.step_up.request_body_filter(body, eos, ctx)
    }
    async fn upstream_response_filter(
        &self,
        _: &mut Session,
        res: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        self.step_up.upstream_response_filter(res, ctx);
        Ok(())
    }
    async fn response_filter(
        &self,
        s: &mut Session,
        res: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        self.step_up.response_filter(s, res, ctx).await
    }
    fn response_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut StepUpCtx,
    ) -> Result<Option<Duration>> {
        self.step_up.response_body_filter(body, eos, ctx);
        Ok(None)
    }
    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut StepUpCtx) -> FailToProxy {
        let error_code = self.step_up.fail_to_proxy(s, e, ctx).await.unwrap_or(502);
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }
    fn suppress_error_log(&self, _: &Session, _: &StepUpCtx, e: &Error) -> bool {
        self.step_up.suppress_error_log(e)
    }
    async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut StepUpCtx) {
        self.step_up.logging(s, e, ctx);
    }
}

/// Fixtures whose Klarna answer the engine reads and then keeps: unmarked on the pipeline,
/// as the rewritten ones.
const KEPT: [&str; 3] = [
    "html_answer",
    "unknown_result",
    "untrusted_payment_request_url",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_recipe_runs_the_whole_fixture_table() {
    let up = upstream::start().await;
    let mut proxies = std::collections::HashMap::new();
    for f in fixtures::all() {
        let proxy = *proxies.entry(f.config.clone()).or_insert_with(|| {
            start_pingora(MyProxy {
                step_up: StepUpPhases::new(StepUp::from_toml(&f.config).unwrap()),
                upstream: up.addr,
            })
        });
        up.set_answer(Answer::of(&f));
        up.take_received();
        let res = send_fixture(proxy, &f, &[], LIMIT).await;
        let seen = up.take_received();

        let n = &f.name;
        assert_eq!(res.status, f.expect.status, "{n}: status");
        assert_eq!(
            String::from_utf8_lossy(&res.body),
            String::from_utf8_lossy(&f.expect.body),
            "{n}: body"
        );
        let marker = match f.expect.marker.as_deref() {
            Some("rewritten") => None,
            _ if KEPT.contains(&n.as_str()) => None,
            marker => marker,
        };
        assert_eq!(res.header("x-klarna-stepup"), marker, "{n}: marker");
        match &f.forwarded {
            Forwarded::None => assert!(seen.is_empty(), "{n}: upstream contacted"),
            _ => assert_eq!(seen[0].body, f.forwarded_body().unwrap(), "{n}: forwarded"),
        }
    }
}
