//! `ProxyHttp` for [`StepUpProxy`]: every phase delegated to the inner proxy, with step-up's
//! phases around it where it acts. Phases step-up leaves alone for a request return the inner
//! proxy's future unwrapped (written as the desugared `async_trait` signatures), so that
//! they box once, not twice.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::cache::{
    key::HashBinary, CacheKey, CacheMeta, ForcedFreshness, HitHandler, PurgeAction, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::protocols::Digest;
use pingora::proxy::{
    FailToProxy, ProxyHttp, ProxyWarnLogContext, PurgeStatus, RangeType, Session,
};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};
use tokio::sync::mpsc;

use super::proxy::{StepUpProxy, StepUpProxyCtx};
use super::StepUpCtx;

/// A phase's future, as `async_trait` boxes it.
type Phase<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[async_trait]
impl<P> ProxyHttp for StepUpProxy<P>
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    type CTX = StepUpProxyCtx<P::CTX>;

    // required
    fn new_ctx(&self) -> Self::CTX {
        StepUpProxyCtx {
            inner: self.inner.new_ctx(),
            step_up: StepUpCtx::default(),
            peer: None,
            declined: false,
        }
    }

    // required
    // Not `async`: the inner proxy's boxed future is returned as it is (one allocation per
    // phase, not two). Step-up's own work in these phases is synchronous.
    fn upstream_peer<'a, 'b, 'c, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        ctx: &'c mut Self::CTX,
    ) -> Phase<'async_trait, Result<Box<HttpPeer>>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
    {
        match ctx.peer.take() {
            Some(peer) => Box::pin(std::future::ready(Ok(peer))),
            None => self.inner.upstream_peer(session, &mut ctx.inner),
        }
    }

    // Pingora's default adds its response compression module, disabled; delegating keeps
    // whatever the inner proxy sets up.
    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        self.inner.init_downstream_modules(modules);
    }

    // Only with Pingora's `upstream_modules` feature.
    #[cfg(feature = "pingora-upstream-modules")]
    fn init_upstream_modules(&self, modules: &mut HttpModules) {
        self.inner.init_upstream_modules(modules);
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .early_request_filter(session, &mut ctx.inner)
            .await?;
        self.phases.early_request_filter(session, &mut ctx.step_up);
        Ok(())
    }

    fn allow_spawning_subrequest(&self, session: &Session, ctx: &Self::CTX) -> bool
    where
        Self::CTX: Send + Sync,
    {
        self.inner.allow_spawning_subrequest(session, &ctx.inner)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool>
    where
        Self::CTX: Send + Sync,
    {
        if ctx.step_up.bad_head() {
            // Refused before the inner proxy looks at it, as the binary's server does.
            return Box::pin(self.step_up_request_filter(session, ctx)).await;
        }
        if self.inner.request_filter(session, &mut ctx.inner).await? {
            if ctx.step_up.acts() {
                // Before step-up read or answered anything: the inner proxy's own answer.
                ctx.step_up.record.answered_by_inner();
            }
            return Ok(true);
        }
        if !ctx.step_up.acts() {
            return Ok(false);
        }
        // Boxed: what step-up does here (read a body, relay, notify, the direct exchange) is
        // a large future that requests step-up leaves alone should not carry.
        Box::pin(self.step_up_request_filter(session, ctx)).await
    }

    // Called once per chunk, and once more with the replayed retry buffer at the start of
    // every upstream attempt (pingora-proxy's proxy_h1.rs).
    fn request_body_filter<'a, 'b, 'c, 'd, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        body: &'c mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &'d mut Self::CTX,
    ) -> Phase<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        if let Err(e) = self
            .phases
            .request_body_filter(body, end_of_stream, &mut ctx.step_up)
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        self.inner
            .request_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()>
    where
        Self::CTX: Send + Sync,
    {
        self.inner.request_cache_filter(session, &mut ctx.inner)
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Self::CTX) -> Result<CacheKey> {
        self.inner.cache_key_callback(session, &mut ctx.inner)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Self::CTX) {
        self.inner.cache_miss(session, &mut ctx.inner)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<ForcedFreshness>>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .cache_hit_filter(session, meta, hit_handler, is_fresh, &mut ctx.inner)
            .await
    }

    fn proxy_upstream_filter<'a, 'b, 'c, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        ctx: &'c mut Self::CTX,
    ) -> Phase<'async_trait, Result<bool>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        if ctx.declined {
            return Box::pin(std::future::ready(Ok(false)));
        }
        self.inner.proxy_upstream_filter(session, &mut ctx.inner)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<RespCacheable> {
        self.inner
            .response_cache_filter(session, resp, &mut ctx.inner)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Self::CTX,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.inner.cache_vary_filter(meta, &mut ctx.inner, req)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        self.inner
            .cache_not_modified_filter(session, resp, &mut ctx.inner)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> RangeType {
        self.inner
            .range_header_filter(session, resp, &mut ctx.inner)
    }

    // Called once per upstream attempt, after Pingora's own header sanitizing and before it
    // finalizes the request framing (pingora-proxy's proxy_h1.rs).
    fn upstream_request_filter<'a, 'b, 'c, 'd, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        upstream_request: &'c mut RequestHeader,
        ctx: &'d mut Self::CTX,
    ) -> Phase<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        if !ctx.step_up.acts() {
            return self
                .inner
                .upstream_request_filter(session, upstream_request, &mut ctx.inner);
        }
        Box::pin(async move {
            self.inner
                .upstream_request_filter(session, upstream_request, &mut ctx.inner)
                .await?;
            self.phases
                .upstream_request_filter(upstream_request, &mut ctx.step_up)
        })
    }

    // Only with Pingora's `upstream_modules` feature.
    #[cfg(feature = "pingora-upstream-modules")]
    async fn adjust_upstream_modules(
        &self,
        session: &mut Session,
        upstream_response: &ResponseHeader,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .adjust_upstream_modules(session, upstream_response, end_of_stream, &mut ctx.inner)
            .await
    }

    // Runs after Pingora's upstream decompression rewrote the header (Content-Encoding and
    // Content-Length removed, chunked).
    fn upstream_response_filter<'a, 'b, 'c, 'd, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        upstream_response: &'c mut ResponseHeader,
        ctx: &'d mut Self::CTX,
    ) -> Phase<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        if !ctx.step_up.acts() {
            return self
                .inner
                .upstream_response_filter(session, upstream_response, &mut ctx.inner);
        }
        Box::pin(async move {
            self.inner
                .upstream_response_filter(session, upstream_response, &mut ctx.inner)
                .await?;
            self.phases
                .note_upstream_decoding(session, &mut ctx.step_up);
            self.phases
                .upstream_response_filter(upstream_response, &mut ctx.step_up);
            Ok(())
        })
    }

    fn response_filter<'a, 'b, 'c, 'd, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        upstream_response: &'c mut ResponseHeader,
        ctx: &'d mut Self::CTX,
    ) -> Phase<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        if !ctx.step_up.acts() {
            return self
                .inner
                .response_filter(session, upstream_response, &mut ctx.inner);
        }
        Box::pin(async move {
            self.inner
                .response_filter(session, upstream_response, &mut ctx.inner)
                .await?;
            self.phases
                .response_filter(session, upstream_response, &mut ctx.step_up)
                .await
        })
    }

    // (D, doc(hidden))
    async fn custom_forwarding(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        custom_message_to_upstream: Option<mpsc::Sender<Bytes>>,
        custom_message_to_downstream: mpsc::Sender<Bytes>,
    ) -> Result<()>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .custom_forwarding(
                session,
                &mut ctx.inner,
                custom_message_to_upstream,
                custom_message_to_downstream,
            )
            .await
    }

    // (D, doc(hidden))
    async fn downstream_custom_message_proxy_filter(
        &self,
        session: &mut Session,
        custom_message: Bytes,
        ctx: &mut Self::CTX,
        final_hop: bool,
    ) -> Result<Option<Bytes>>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .downstream_custom_message_proxy_filter(
                session,
                custom_message,
                &mut ctx.inner,
                final_hop,
            )
            .await
    }

    // (D, doc(hidden))
    async fn upstream_custom_message_proxy_filter(
        &self,
        session: &mut Session,
        custom_message: Bytes,
        ctx: &mut Self::CTX,
        final_hop: bool,
    ) -> Result<Option<Bytes>>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .upstream_custom_message_proxy_filter(
                session,
                custom_message,
                &mut ctx.inner,
                final_hop,
            )
            .await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        self.inner
            .upstream_response_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut header::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.inner
            .upstream_response_trailer_filter(session, upstream_trailers, &mut ctx.inner)
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>>
    where
        Self::CTX: Send + Sync,
    {
        self.phases
            .response_body_filter(body, end_of_stream, &mut ctx.step_up);
        if self.phases.response_aborted(&ctx.step_up) {
            return Error::e_explain(
                pingora::ErrorType::Custom("klarna_stepup_inflated"),
                "answer stopped: it cannot be sent as its header announced it",
            );
        }
        self.inner
            .response_body_filter(session, body, end_of_stream, &mut ctx.inner)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut header::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Bytes>>
    where
        Self::CTX: Send + Sync,
    {
        self.inner
            .response_trailer_filter(session, upstream_trailers, &mut ctx.inner)
            .await
    }

    fn logging<'a, 'b, 'c, 'd, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        e: Option<&'c Error>,
        ctx: &'d mut Self::CTX,
    ) -> Phase<'async_trait, ()>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        self.phases.logging(session, e, &mut ctx.step_up);
        if let Some(observe) = &self.observer {
            observe(ctx.step_up.record());
        }
        self.inner.logging(session, e, &mut ctx.inner)
    }

    fn persist_connection_context(
        &self,
        session: &Session,
        ctx: &Self::CTX,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.persist_connection_context(session, &ctx.inner)
    }

    fn on_connection_reuse(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        prev_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        self.inner
            .on_connection_reuse(session, &mut ctx.inner, prev_ctx)
    }

    fn suppress_error_log(&self, session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        self.phases.suppress_error_log(error)
            || self.inner.suppress_error_log(session, &ctx.inner, error)
    }

    fn suppress_proxy_warn_log(
        &self,
        session: &Session,
        ctx: &Self::CTX,
        error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        self.inner
            .suppress_proxy_warn_log(session, &ctx.inner, error, context)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        self.inner
            .error_while_proxy(peer, session, e, &mut ctx.inner, client_reused)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        self.inner.fail_to_connect(session, peer, &mut ctx.inner, e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        // Candidates get step-up's JSON answer (a refusal decided in a body phase, 502/504);
        // everything else is the inner proxy's to answer.
        match self
            .phases
            .fail_to_proxy(session, e, &mut ctx.step_up)
            .await
        {
            Some(code) => FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            },
            None => self.inner.fail_to_proxy(session, e, &mut ctx.inner).await,
        }
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
        error: Option<&Error>,
    ) -> bool {
        self.inner
            .should_serve_stale(session, &mut ctx.inner, error)
    }

    fn connected_to_upstream<'a, 'b, 'c, 'd, 'e, 'async_trait>(
        &'a self,
        session: &'b mut Session,
        reused: bool,
        peer: &'c HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] sock: std::os::windows::io::RawSocket,
        digest: Option<&'d Digest>,
        ctx: &'e mut Self::CTX,
    ) -> Phase<'async_trait, Result<()>>
    where
        'a: 'async_trait,
        'b: 'async_trait,
        'c: 'async_trait,
        'd: 'async_trait,
        'e: 'async_trait,
        Self: 'async_trait,
        Self::CTX: Send + Sync,
    {
        self.inner.connected_to_upstream(
            session,
            reused,
            peer,
            #[cfg(unix)]
            fd,
            #[cfg(windows)]
            sock,
            digest,
            &mut ctx.inner,
        )
    }

    fn request_summary(&self, session: &Session, ctx: &Self::CTX) -> String {
        self.inner.request_summary(session, &ctx.inner)
    }

    fn is_purge(&self, session: &Session, ctx: &Self::CTX) -> bool {
        self.inner.is_purge(session, &ctx.inner)
    }

    fn purge_action(&self, session: &Session, ctx: &Self::CTX) -> PurgeAction {
        self.inner.purge_action(session, &ctx.inner)
    }

    fn purge_response_filter(
        &self,
        session: &Session,
        ctx: &mut Self::CTX,
        purge_status: PurgeStatus,
        purge_response: &mut std::borrow::Cow<'static, ResponseHeader>,
    ) -> Result<()> {
        self.inner
            .purge_response_filter(session, &mut ctx.inner, purge_status, purge_response)
    }
}
