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
//! (`klarna_stepup_sandbox::demo_step_up_toml`, keys from `demo_secret`):
//! - [`start`]: the tower layer in an in-process hyper reverse proxy;
//! - [`start_binary`]: the shipped `klarna-stepup serve` as a child process, with
//!   the demo's configuration file and keys, as `./x demo` runs it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klarna_stepup::{StepUp, StepUpConfig};
use klarna_stepup_sandbox::{
    demo_secret, demo_step_up_toml, start_demo_backends, DemoBackends, DemoPorts,
};
use klarna_stepup_sandbox::{DEMO_RETURN_KEY_ENV, DEMO_WEBHOOK_KEY_ENV};
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
    /// The Klarna sandbox's handle (webhook delay, lost webhooks).
    pub klarna: klarna_stepup_sandbox::klarna::KlarnaSandbox,
    _running: Running,
}

enum Running {
    InProcess {
        _backends: DemoBackends,
        proxy: JoinHandle<()>,
    },
    Binary {
        child: std::process::Child,
        config_file: std::path::PathBuf,
        _backends: DemoBackends,
        /// The backends' own runtime, as in the demo binary.
        runtime: Option<tokio::runtime::Runtime>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        match self {
            Running::InProcess { proxy, .. } => proxy.abort(),
            Running::Binary {
                child,
                config_file,
                runtime,
                ..
            } => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(config_file);
                if let Some(runtime) = runtime.take() {
                    runtime.shutdown_background();
                }
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
    let config =
        StepUpConfig::from_toml(&demo_step_up_toml(&proxy_url)).expect("demo configuration");
    let step_up = StepUp::with_secrets(config, demo_secret).expect("demo configuration");
    let proxy = crate::common::tower_proxy::serve(step_up, listener, backends.payment_api_addr);
    backends
        .klarna
        .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));
    DemoStack {
        shop_url: format!("{proxy_url}/shop"),
        klarna_url: format!("http://{}", backends.klarna_addr),
        klarna: backends.klarna.clone(),
        proxy_url,
        _running: Running::InProcess {
            _backends: backends,
            proxy,
        },
    }
}

/// The demo as shipped: the sandbox backends on their own runtime in this process, and the
/// production binary `klarna-stepup serve` in front of them as a child process, with the
/// demo's configuration file and keys (what `./x demo` runs, in two processes); free ports;
/// returns once the shop answers through the proxy.
pub async fn start_binary() -> DemoStack {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let proxy = port();
    let proxy_url = format!("http://127.0.0.1:{proxy}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the backends' runtime");
    let backends = runtime
        .spawn(start_demo_backends(DemoPorts::default()))
        .await
        .expect("the backends' start task")
        .expect("start the demo backends on 127.0.0.1");
    // Klarna's webhooks go through the proxy, which verifies them and relays them on.
    backends
        .klarna
        .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));
    let config_file = std::env::temp_dir().join(format!(
        "klarna-stepup-demo-{}-{proxy}.toml",
        std::process::id()
    ));
    std::fs::write(
        &config_file,
        format!(
            "{}\n[server]\nlisten = \"127.0.0.1:{proxy}\"\nupstream = \"{}\"\ngrace_period_secs = 1\n",
            demo_step_up_toml(&proxy_url),
            backends.payment_api_addr
        ),
    )
    .expect("write the demo configuration");
    let secret = |name| demo_secret(name).expect("a demo key");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_klarna-stepup"))
        .arg("serve")
        .arg("--config")
        .arg(&config_file)
        .env(DEMO_RETURN_KEY_ENV, secret(DEMO_RETURN_KEY_ENV))
        .env(DEMO_WEBHOOK_KEY_ENV, secret(DEMO_WEBHOOK_KEY_ENV))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn klarna-stepup serve");
    let stack = DemoStack {
        shop_url: format!("{proxy_url}/shop"),
        klarna_url: format!("http://{}", backends.klarna_addr),
        klarna: backends.klarna.clone(),
        proxy_url,
        _running: Running::Binary {
            child,
            config_file,
            _backends: backends,
            runtime: Some(runtime),
        },
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
            "klarna-stepup serve (demo configuration) did not come up in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
