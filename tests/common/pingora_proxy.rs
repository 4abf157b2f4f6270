//! Pingora servers for tests: an "existing" acquirer proxy in front of one upstream, run in a
//! thread on a free loopback port.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use klarna_stepup::pingora::{StepUpCtx, StepUpPhases};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::server::configuration::ServerConf;

use super::ports::free_addr;

/// The proxy an acquirer already has: one upstream, timeouts, no retry to a dead peer.
pub struct PaymentApi {
    pub upstream: SocketAddr,
    pub read_timeout: Duration,
}

#[async_trait]
impl ProxyHttp for PaymentApi {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(self.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        _: &mut (),
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(false);
        e
    }
}

/// Starts a Pingora server with `proxy` on a free loopback port; it lives until the test
/// process ends.
pub fn start_pingora<P>(proxy: P) -> SocketAddr
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let addr = free_addr();
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, proxy);
    svc.add_tcp(&addr.to_string());
    server.add_service(svc);
    std::thread::spawn(move || server.run_forever());
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    addr
}

/// The module docs' recipe: step-up called from a hand-written proxy's phases (`StepUpPhases`),
/// pointed at one upstream.
pub struct Recipe {
    pub step_up: StepUpPhases,
    pub upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Recipe {
    type CTX = StepUpCtx;
    fn new_ctx(&self) -> StepUpCtx {
        StepUpCtx::default()
    }
    async fn upstream_peer(&self, _: &mut Session, _: &mut StepUpCtx) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.read_timeout = Some(Duration::from_secs(10));
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
        s: &mut Session,
        res: &mut ResponseHeader,
        ctx: &mut StepUpCtx,
    ) -> Result<()> {
        self.step_up.note_upstream_decoding(s, ctx);
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
        if self.step_up.response_aborted(ctx) {
            return Error::e_explain(ErrorType::Custom("aborted"), "answer stopped");
        }
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
