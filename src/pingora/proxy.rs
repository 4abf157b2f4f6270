//! [`StepUpProxy`]: any `ProxyHttp` with step-up added, every phase delegated.

use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

use super::{LargeBodies, StepUpCtx, StepUpPhases};
use crate::observe::{Observer, Record};
use crate::StepUp;

/// An existing `ProxyHttp` with Klarna step-up added: `StepUpProxy::new(existing, step_up)`.
///
/// Every phase of Pingora's `ProxyHttp` is delegated to the inner proxy, whose `CTX` lives
/// in [`StepUpProxyCtx::inner`]; step-up runs around it as [`StepUpPhases`] describes
/// (after the inner proxy on the way in, before it on the way out, except where noted).
pub struct StepUpProxy<P> {
    pub(super) inner: P,
    pub(super) phases: StepUpPhases,
    pub(super) observer: Option<Observer>,
    direct_exchange: bool,
}

impl<P> StepUpProxy<P> {
    /// Wraps `inner`, the proxy you already have:
    ///
    /// ```no_run
    /// use async_trait::async_trait;
    /// use klarna_stepup::pingora::StepUpProxy;
    /// use klarna_stepup::StepUp;
    /// use pingora::prelude::*;
    ///
    /// struct PaymentApi;
    ///
    /// #[async_trait]
    /// impl ProxyHttp for PaymentApi {
    ///     type CTX = ();
    ///     fn new_ctx(&self) {}
    ///     async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
    ///         Ok(Box::new(HttpPeer::new("127.0.0.1:9000", false, String::new())))
    ///     }
    /// }
    ///
    /// let mut server = Server::new(None).unwrap();
    /// server.bootstrap();
    /// let step_up = StepUp::from_toml("[return_url_policy]\nallowed_hosts = [\"*.partner.example\"]")
    ///     .unwrap();
    /// let proxy = StepUpProxy::new(PaymentApi, step_up)
    ///     .server_conf(&server.configuration)
    ///     .observe(|record| tracing::info!(outcome = record.outcome().label(), "done"));
    /// let mut service = http_proxy_service(&server.configuration, proxy);
    /// service.add_tcp("127.0.0.1:8080");
    /// server.add_service(service);
    /// server.run_forever();
    /// ```
    pub fn new(inner: P, step_up: StepUp) -> Self {
        StepUpProxy {
            inner,
            phases: StepUpPhases::new(step_up),
            observer: None,
            direct_exchange: true,
        }
    }

    /// Whether an injected Klarna request read whole (up to 64 KiB) is carried to the
    /// upstream by step-up itself, on Pingora's connector, with the inner proxy's phases
    /// called in Pingora's order (default: on). The answer then goes back with an exact
    /// `Content-Length` in one write. Pingora's proxy pipeline writes the header before any
    /// body filter, so it sends a rewritten answer chunked, and in the end-to-end benchmark
    /// it cost step-up about 28 µs of CPU per Klarna request against about 6 µs this way.
    /// Off: every request takes the pipeline (e.g. when the inner proxy caches, or
    /// relies on phases the direct exchange does not call; see the [module docs](super)).
    pub fn direct_exchange(mut self, on: bool) -> Self {
        self.direct_exchange = on;
        self
    }

    /// Takes the server's configuration for the connections step-up opens itself (the
    /// direct exchange and the acquirer-return notification): its CA file and pool size, and
    /// `max_retries` as the number of attempts of one direct exchange. Pass
    /// `&server.configuration`. Default: Pingora's defaults.
    pub fn server_conf(mut self, conf: &pingora::server::configuration::ServerConf) -> Self {
        self.phases = self.phases.server_conf(conf);
        self
    }

    /// The process-wide budget of buffered candidate bytes (default 64 MiB): past it, new
    /// candidates get 503 JSON `overloaded` with `Retry-After`.
    pub fn buffer_budget(mut self, budget: crate::BufferBudget) -> Self {
        self.phases = self.phases.buffer_budget(budget);
        self
    }

    /// Bounds on a request head (default: 32 KiB and 100 fields, as the binary's server);
    /// see [`StepUpPhases::head_limits`].
    pub fn head_limits(mut self, limits: crate::engine::HeadLimits) -> Self {
        self.phases = self.phases.head_limits(limits);
        self
    }

    /// What to do with candidate bodies over 64 KiB (default: stream them).
    pub fn large_bodies(mut self, large_bodies: LargeBodies) -> Self {
        self.phases = self.phases.large_bodies(large_bodies);
        self
    }

    /// Calls `observer` once per request, in the `logging` phase, with step-up's [`Record`]
    /// of it (outcome, body sizes, engine time): the place for metrics. The tower adapter's
    /// `observe` gets the same record.
    pub fn observe(mut self, observer: impl Fn(&Record) + Send + Sync + 'static) -> Self {
        self.observer = Some(std::sync::Arc::new(observer));
        self
    }

    /// The step-up phases this proxy runs.
    pub fn phases(&self) -> &StepUpPhases {
        &self.phases
    }

    /// The wrapped proxy.
    pub fn get_ref(&self) -> &P {
        &self.inner
    }

    /// The wrapped proxy, mutably.
    pub fn get_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// The wrapped proxy, unwrapped.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: std::fmt::Debug> std::fmt::Debug for StepUpProxy<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepUpProxy")
            .field("inner", &self.inner)
            .field("phases", &self.phases)
            .finish_non_exhaustive()
    }
}

/// The `CTX` of a [`StepUpProxy`]: the inner proxy's and step-up's.
#[derive(Debug)]
pub struct StepUpProxyCtx<C> {
    /// The inner proxy's `CTX`.
    pub inner: C,
    /// Step-up's state.
    pub step_up: StepUpCtx,
    /// A peer the inner proxy chose for a direct exchange that Pingora's pipeline carries
    /// instead (an HTTP/2-capable peer): handed to Pingora by `upstream_peer`, so that the
    /// inner proxy is not asked twice.
    pub(super) peer: Option<Box<HttpPeer>>,
    /// The inner proxy's `proxy_upstream_filter` declined the request in the direct
    /// exchange: said again to Pingora without asking twice.
    pub(super) declined: bool,
}

impl<P> StepUpProxy<P>
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    /// `request_filter` for the requests step-up acts on, after the inner proxy's.
    pub(super) async fn step_up_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut StepUpProxyCtx<P::CTX>,
    ) -> Result<bool> {
        if self.phases.wants_notify_peer(&ctx.step_up) {
            // The acquirer-return notification goes where the inner proxy sends requests.
            // Without a peer the notification is skipped (and logged as such).
            if let Ok(peer) = self.inner.upstream_peer(session, &mut ctx.inner).await {
                ctx.step_up.set_notify_peer(peer);
            }
        }
        if self
            .phases
            .request_filter(session, &mut ctx.step_up)
            .await?
        {
            return Ok(true);
        }
        if self.direct_exchange {
            return self.direct(session, ctx).await;
        }
        Ok(false)
    }
}
