//! The demo stack for end-to-end tests: the Klarna sandbox and the demo payment API (with its
//! shop), and a step-up proxy in front of the payment API, all on 127.0.0.1.
//!
//! ```text
//! browser ──▶ proxy (step-up) ──▶ payment API + shop ──▶ Klarna sandbox
//!    └──────────────── purchase journey ─────────────────────▲
//!    ◀── 303 ── proxy /klarna/return/{token} ◀── return ──┘
//!                        Klarna webhooks ──▶ proxy /klarna/webhooks (verified) ──▶ payment API
//! ```
//!
//! Two ways to run it, with the same URLs and the same demo configuration
//! (`klarna_stepup::sandbox::demo_step_up`):
//! - [`start`]: the tower layer in an in-process hyper reverse proxy;
//! - [`start_binary`]: the shipped `klarna-stepup demo` (Pingora), as a child process.
#![allow(dead_code)] // each test binary uses a part

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klarna_stepup::sandbox::{start_demo_backends, DemoBackends, DemoPorts};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running demo stack; dropping it stops what it started.
pub struct DemoStack {
    /// The shop page, through the proxy: `{proxy_url}/shop`.
    pub shop_url: String,
    /// The proxy's base URL (no trailing slash): what partners and the shop talk to.
    pub proxy_url: String,
    /// The Klarna sandbox's base URL; purchase journey pages live under `{klarna_url}/pay/`.
    pub klarna_url: String,
    _running: Running,
}

enum Running {
    InProcess {
        _backends: DemoBackends,
        proxy: JoinHandle<()>,
    },
    Binary(std::process::Child),
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::InProcess { proxy, .. } => proxy.abort(),
            Running::Binary(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl DemoStack {
    /// The payment API's record of an order (`GET /payments/{reference}` through the proxy).
    pub async fn order_state(&self, reference: &str) -> Option<String> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri = format!("{}/payments/{reference}", self.proxy_url)
            .parse()
            .ok()?;
        let res = client.get(uri).await.ok()?;
        let body = res.into_body().collect().await.ok()?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        v["state"].as_str().map(str::to_owned)
    }
}

/// The demo with the tower layer as the proxy, in this process.
pub async fn start() -> DemoStack {
    let backends = start_demo_backends(DemoPorts::default())
        .await
        .expect("start the demo backends on 127.0.0.1");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let proxy_url = format!("http://{}", listener.local_addr().expect("proxy address"));
    let step_up = klarna_stepup::sandbox::demo_step_up(&proxy_url).expect("demo configuration");
    let proxy = super::tower_proxy::serve(step_up, listener, backends.payment_api_addr);
    backends
        .klarna
        .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));
    DemoStack {
        shop_url: format!("{proxy_url}/shop"),
        klarna_url: format!("http://{}", backends.klarna_addr),
        proxy_url,
        _running: Running::InProcess {
            _backends: backends,
            proxy,
        },
    }
}

/// The demo as shipped: `klarna-stepup demo` on free ports, as a child process; returns once
/// the shop answers through the proxy.
#[cfg(feature = "cli")]
pub async fn start_binary() -> DemoStack {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (proxy, klarna, api) = (port(), port(), port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_klarna-stepup"))
        .args([
            "demo",
            "--port",
            &proxy.to_string(),
            "--klarna-port",
            &klarna.to_string(),
        ])
        .args(["--api-port", &api.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn klarna-stepup demo");
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    let stack = DemoStack {
        shop_url: format!("{proxy_url}/shop"),
        klarna_url: format!("http://127.0.0.1:{klarna}"),
        proxy_url,
        _running: Running::Binary(child),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(stack.shop_url.parse().unwrap())
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return stack;
        }
        assert!(
            Instant::now() < deadline,
            "klarna-stepup demo did not come up in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
