//! The demo stack for end-to-end tests: the Klarna sandbox and the demo payment API (with its
//! shop) on ephemeral 127.0.0.1 ports, and a step-up proxy in front of the payment API.
//!
//! ```text
//! browser ──▶ proxy (step-up) ──▶ payment API + shop ──▶ Klarna sandbox
//!    └──────────────── purchase journey ─────────────────────▲
//!    ◀── 303 ── proxy /klarna/return/{token} ◀── return ──┘
//!                        Klarna webhooks ──▶ proxy /klarna/webhooks (verified) ──▶ payment API
//! ```
//!
//! The proxy is the tower layer in an in-process hyper reverse proxy. Everything that knows
//! that lives in [`start_proxy`]: to test the shipped binary instead, make it spawn the
//! binary on `upstream` with the demo configuration and return a [`Proxy`] whose guard kills the
//! child on drop.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use klarna_stepup::sandbox::{start_demo_backends, DemoBackends, DemoPorts};
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::StepUp;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

/// A running demo stack. Dropping it stops the proxy; the backends' tasks end with the
/// runtime of the test.
#[allow(dead_code)] // not every test reads every field
pub struct DemoStack {
    /// The shop page, through the proxy: `http://127.0.0.1:{proxy}/shop`.
    pub shop_url: String,
    /// The proxy's base URL (no trailing slash): what partners and the shop talk to.
    pub proxy_url: String,
    /// The payment API's own base URL, behind the proxy.
    pub payment_api_url: String,
    /// The Klarna sandbox's base URL; purchase journey pages live under `{klarna_url}/pay/`.
    pub klarna_url: String,
    /// The sandbox and the payment API, with their handles.
    pub backends: DemoBackends,
    /// The proxy in front of the payment API.
    pub proxy: Proxy,
}

/// A running step-up proxy.
pub struct Proxy {
    /// Where it listens.
    #[allow(dead_code)] // read by some test binaries, not all
    pub addr: SocketAddr,
    /// Stops it when dropped.
    _guard: ProxyGuard,
}

/// What keeps a proxy running; dropping it stops the proxy.
enum ProxyGuard {
    /// An in-process server task.
    Task(JoinHandle<()>),
}

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        match self {
            ProxyGuard::Task(task) => task.abort(),
        }
    }
}

/// Starts the demo backends on ephemeral ports and the step-up proxy in front of the payment
/// API; Klarna's returns and webhooks go through the proxy.
pub async fn start() -> DemoStack {
    let backends = start_demo_backends(DemoPorts::default())
        .await
        .expect("start the demo backends on 127.0.0.1");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let proxy_url = format!("http://{}", listener.local_addr().expect("proxy address"));
    let step_up = klarna_stepup::sandbox::demo_step_up(&proxy_url).expect("demo configuration");
    let proxy = start_proxy(step_up, listener, backends.payment_api_addr).await;
    backends
        .klarna
        .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));
    DemoStack {
        shop_url: format!("{proxy_url}/shop"),
        proxy_url,
        payment_api_url: format!("http://{}", backends.payment_api_addr),
        klarna_url: format!("http://{}", backends.klarna_addr),
        backends,
        proxy,
    }
}

/// Starts a step-up proxy running `step_up` in front of `upstream` on `listener`.
///
/// Today: [`KlarnaStepUpLayer`] over a hyper-util client, served by hyper in this process.
pub async fn start_proxy(step_up: StepUp, listener: TcpListener, upstream: SocketAddr) -> Proxy {
    let addr = listener.local_addr().expect("proxy address");
    let client = Client::builder(TokioExecutor::new()).build_http::<StepUpBody<Incoming>>();
    let svc = ServiceBuilder::new()
        .layer(KlarnaStepUpLayer::new(step_up))
        .map_request(move |mut req: Request<StepUpBody<Incoming>>| {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{upstream}{path}")
                .parse()
                .expect("valid upstream URI");
            req
        })
        .service(client);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Proxy {
        addr,
        _guard: ProxyGuard::Task(task),
    }
}
