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
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
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
    backends.put_behind(&proxy_url);
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
    let proxy = crate::common::ports::free_addr().port();
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
    // Klarna's webhooks go through the proxy, which verifies them and relays them on; the
    // shop sends its payments through it.
    backends.put_behind(&proxy_url);
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

/// One request on a fresh client; the status, headers and body (as text).
pub async fn call(
    method: &str,
    url: &str,
    content_type: &str,
    body: String,
) -> (StatusCode, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn location(headers: &http::HeaderMap) -> String {
    headers["location"].to_str().unwrap().to_owned()
}

/// The kinds of order whose timelines the tests read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeline {
    /// Klarna asks for step-up; the customer approves in the purchase journey.
    StepUpApproved,
    /// Klarna approves at once (the sandbox's `approve` trigger): no step-up, no return, no
    /// webhook.
    ApprovedAtOnce,
}

impl Timeline {
    /// The shop's choice of the sandbox's outcome (its form's `scenario`).
    pub fn scenario(self) -> &'static str {
        match self {
            Timeline::StepUpApproved => "step-up",
            Timeline::ApprovedAtOnce => "approve",
        }
    }
}

impl DemoStack {
    /// An order through the demo shop, over HTTP as a browser makes it (the shop is the
    /// partner): checkout, the purchase journey approved when Klarna asks for it, the return,
    /// the confirmation page. Returns the order's reference.
    pub async fn shop_order(&self, kind: Timeline) -> String {
        let (status, headers, body) = call(
            "POST",
            &format!("{}/shop/checkout", self.proxy_url),
            "application/x-www-form-urlencoded",
            format!("scenario={}", kind.scenario()),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "checkout: {body}");
        let mut next = location(&headers);
        if kind == Timeline::StepUpApproved {
            assert!(
                next.starts_with(&format!("{}/pay/", self.klarna_url)),
                "{next}"
            );
            let (status, _, _) = call("GET", &next, "text/html", String::new()).await;
            assert_eq!(status, StatusCode::OK, "the purchase journey");
            let (status, headers, _) = call(
                "POST",
                &next,
                "application/x-www-form-urlencoded",
                "action=approve&phone=%2B15555550100".into(),
            )
            .await;
            assert_eq!(status, StatusCode::SEE_OTHER, "approve");
            let (status, headers, _) =
                call("GET", &location(&headers), "text/html", String::new()).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "the return");
            next = location(&headers);
        }
        let confirmation = format!("{}/shop/confirmation?reference=", self.proxy_url);
        let reference = next
            .strip_prefix(&confirmation)
            .unwrap_or_else(|| panic!("expected the confirmation page, got {next}"))
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        let (status, _, page) = call("GET", &next, "text/html", String::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            page.contains(&format!(r#"href="/demo/orders/{reference}""#)),
            "the confirmation page links to the timeline: {page}"
        );
        reference
    }

    /// The order's timeline page, through the proxy.
    pub async fn timeline(&self, reference: &str) -> String {
        let url = format!("{}/demo/orders/{reference}", self.proxy_url);
        let (status, _, page) = call("GET", &url, "text/html", String::new()).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        page
    }

    /// The order's timeline once it shows every step of `kind` (webhooks come a second or
    /// so after the customer): at most 15 s.
    pub async fn complete_timeline(&self, reference: &str, kind: Timeline) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let page = self.timeline(reference).await;
            match check_timeline(&page, kind, &self.klarna_url) {
                Ok(()) => return page,
                Err(e) if Instant::now() >= deadline => {
                    panic!("the timeline of {reference}: {e}\n{page}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// The steps of a timeline page (its HTML, as served or as a browser serializes it): each
/// step's kind (`partner-request`, …) and its markup.
fn timeline_steps(page: &str) -> Vec<(&str, &str)> {
    page.split(r#"<li class="step step-"#)
        .skip(1)
        .map(|step| {
            let kind = step.split(' ').next().unwrap_or("");
            (kind, step.split("</li>").next().unwrap_or(step))
        })
        .collect()
}

/// Whether a timeline page shows each step of `kind`, in order, with its time: the
/// partner's request; what reached the payment API, the injected `step_up_config` marked
/// added against it; Klarna's answer; the partner block (for step-up, its redirect URL to
/// the purchase journey under `klarna_url`); for step-up, the customer's choice at Klarna,
/// the customer's return, the customer back at the shop and the completed webhook; for an
/// order approved at once, the customer back at the shop and no journey, return or webhook.
pub fn check_timeline(page: &str, kind: Timeline, klarna_url: &str) -> Result<(), String> {
    let steps = timeline_steps(page);
    let find = |wanted: &str, marks: &[&str]| {
        steps
            .iter()
            .position(|(k, step)| *k == wanted && marks.iter().all(|m| step.contains(m)))
            .ok_or_else(|| format!("no {wanted} step showing {marks:?}"))
    };
    let redirect = format!("redirect_url <strong>{klarna_url}/pay/");
    let (answer, block) = match kind {
        Timeline::StepUpApproved => (
            "<strong>STEP_UP_REQUIRED</strong>",
            vec!["<strong>pending</strong>", redirect.as_str()],
        ),
        Timeline::ApprovedAtOnce => (
            "<strong>APPROVED</strong>",
            vec!["<strong>authorized</strong>"],
        ),
    };
    let mut order = vec![
        ("partner request", find("partner-request", &[])?),
        (
            "payment API",
            find("reached-api", &["<pre class=\"diff\""])?,
        ),
        ("Klarna's answer", find("klarna-answer", &[answer])?),
        ("partner block", find("partner-block", &block)?),
    ];
    let (_, reached) = steps[order[1].1];
    let injected = reached.split("<ins>").skip(1).any(|added| {
        added
            .split("</ins>")
            .next()
            .unwrap_or("")
            .contains("step_up_config")
    });
    if !injected {
        return Err("the diff does not mark step_up_config as added".into());
    }
    match kind {
        Timeline::StepUpApproved => {
            order.push(("journey", find("journey", &["<strong>approve</strong>"])?));
            order.push(("return", find("return", &["<strong>AUTHORIZED</strong>"])?));
            order.push((
                "customer back",
                find("customer-back", &["<strong>state=AUTHORIZED</strong>"])?,
            ));
            let webhook = find(
                "webhook",
                &["state-change.completed", "answered <strong>200</strong>"],
            )?;
            if webhook < order[2].1 {
                return Err("the completed webhook comes before Klarna's first answer".into());
            }
        }
        Timeline::ApprovedAtOnce => {
            order.push(("customer back", find("customer-back", &[])?));
            if let Some((k, _)) = steps
                .iter()
                .find(|(k, _)| matches!(*k, "journey" | "return" | "webhook" | "final-authorize"))
            {
                return Err(format!("a {k} step for an order approved at once"));
            }
        }
    }
    if let Some(w) = order.windows(2).find(|w| w[0].1 > w[1].1) {
        return Err(format!("{} shown after {}", w[0].0, w[1].0));
    }
    for (k, step) in &steps {
        if !step.contains(r#"<span class="offset">+"#) || !step.contains("<time>") {
            return Err(format!("a {k} step without its time"));
        }
    }
    for (name, at) in &order {
        let exchange = matches!(*name, "Klarna's answer" | "partner block" | "return");
        if exchange && !steps[*at].1.contains(r#"<span class="took">took "#) {
            return Err(format!("the {name} step without its duration"));
        }
    }
    Ok(())
}
