//! End-to-end proxy benchmark over loopback: an upstream, Pingora with and without step-up,
//! and the tower adapter, driven by a hyper-util client with a bounded load.
//!
//! `cargo bench --features pingora --bench proxy`
//!
//! Everything runs in this one process, each part on threads of its own name; CPU time per
//! request is the scheduler's account of each thread (`se.sum_exec_runtime` in
//! `/proc/self/task/*/sched`), summed over the proxy's threads only, so the client's and the
//! upstream's CPU is not counted. Scenarios run in interleaved slices, so that outside load
//! on a shared machine weighs on all of them alike: compare ratios from one run.
//!
//! `PROXY_BENCH_ONLY="passthrough|klarna route"` runs only the scenarios whose name contains
//! one of the `|`-separated words (ratios need `passthrough` among them).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::StepUp;
use pingora::prelude::*;
use pingora::proxy::http_proxy_service_with_name;
use pingora::server::configuration::ServerConf;
use serde_json::value::RawValue;
use tower::ServiceBuilder;

/// Per scenario: stop after this many requests or this long, whichever comes first.
const MAX_REQUESTS: usize = 20_000;
const MAX_TIME: Duration = Duration::from_secs(2);
/// Scenarios run in turns of this many slices (a round runs each scenario once for
/// 1/ROUNDS of its budget), so that load from outside this process drifts over all of them
/// alike and the ratios stay comparable on a shared machine.
const ROUNDS: u32 = 20;
const WARMUP: usize = 300;
const CONNECTIONS: usize = 4;

// ---------------------------------------------------------------------------------------
// The fixture: the step_up_required request and Klarna's answer
// ---------------------------------------------------------------------------------------

struct Fixture {
    request: Bytes,
    answer: Bytes,
    answer_headers: Vec<(String, String)>,
}

fn fixture() -> Fixture {
    fn bytes(raw: &RawValue) -> Bytes {
        match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => Bytes::from(s),
            Err(_) => Bytes::copy_from_slice(raw.get().as_bytes()),
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/step_up_required.json");
    let text = std::fs::read_to_string(path).expect("fixture");
    #[derive(serde::Deserialize)]
    struct File<'a> {
        #[serde(borrow)]
        request: Part<'a>,
        #[serde(borrow)]
        upstream: Part<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Part<'a> {
        #[serde(borrow)]
        body: &'a RawValue,
        #[serde(default)]
        headers: HashMap<String, String>,
    }
    let f: File<'_> = serde_json::from_str(&text).expect("fixture json");
    Fixture {
        request: bytes(f.request.body),
        answer: bytes(f.upstream.body),
        answer_headers: f.upstream.headers.into_iter().collect(),
    }
}

// ---------------------------------------------------------------------------------------
// Parts
// ---------------------------------------------------------------------------------------

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bind() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Nanoseconds the step-up proxy spent in the engine (from `StepUpProxy::observe`).
static ENGINE_NS: AtomicU64 = AtomicU64::new(0);

/// Connections the upstream accepted (a proxy that does not reuse them pays for it).
static UPSTREAM_CONNS: AtomicUsize = AtomicUsize::new(0);

/// The payment API: every request gets Klarna's STEP_UP_REQUIRED answer.
fn start_upstream(f: &Fixture) -> SocketAddr {
    let listener = bind();
    let addr = listener.local_addr().expect("addr");
    let answer = f.answer.clone();
    let headers = f.answer_headers.clone();
    std::thread::spawn(move || {
        runtime("bench-upstream").block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                UPSTREAM_CONNS.fetch_add(1, Ordering::Relaxed);
                let (answer, headers) = (answer.clone(), headers.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (answer, headers) = (answer.clone(), headers.clone());
                        async move {
                            let _ = req.into_body().collect().await;
                            let mut res = Response::builder();
                            for (k, v) in &headers {
                                res = res.header(k, v);
                            }
                            Ok::<_, Infallible>(res.body(Full::new(answer)).expect("response"))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    });
    addr
}

/// The plain Pingora proxy an acquirer already has.
struct PaymentApi {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for PaymentApi {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(10));
        Ok(Box::new(peer))
    }
}

fn start_pingora<P>(name: &str, proxy: P) -> SocketAddr
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let addr = bind().local_addr().expect("addr");
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service_with_name(&server.configuration, proxy, name);
    svc.add_tcp(&addr.to_string());
    server.add_service(svc);
    std::thread::spawn(move || server.run_forever());
    wait_listening(addr);
    addr
}

fn start_tower(step_up: StepUp, upstream: SocketAddr) -> SocketAddr {
    let listener = bind();
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        runtime("bench-tower").block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let client = Client::builder(TokioExecutor::new()).build_http::<StepUpBody<Incoming>>();
            let svc = ServiceBuilder::new()
                .layer(KlarnaStepUpLayer::new(step_up))
                .map_request(move |mut req: Request<StepUpBody<Incoming>>| {
                    let path = req
                        .uri()
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_owned();
                    if let Ok(uri) = format!("http://{upstream}{path}").parse() {
                        *req.uri_mut() = uri;
                    }
                    req
                })
                .service(client);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
    });
    wait_listening(addr);
    addr
}

fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{addr} never listened");
}

// ---------------------------------------------------------------------------------------
// CPU per thread
// ---------------------------------------------------------------------------------------

/// CPU time in nanoseconds, per thread name: `se.sum_exec_runtime` of
/// `/proc/self/task/*/sched` (the scheduler's own account, in ms with ns digits; utime and
/// stime in `stat` count whole clock ticks, too coarse for slices of a quarter second).
fn cpu_ns_by_thread() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("sched")),
        ) else {
            continue;
        };
        let ns = sched
            .lines()
            .find_map(|l| l.strip_prefix("se.sum_exec_runtime"))
            .and_then(|l| l.trim_start_matches([' ', ':']).trim().parse::<f64>().ok())
            .map_or(0, |ms| (ms * 1e6) as u64);
        out.push((comm.trim().to_owned(), ns));
    }
    out
}

fn cpu_ns_of(prefix: &str) -> u64 {
    cpu_ns_by_thread()
        .iter()
        .filter(|(c, _)| c.starts_with(prefix))
        .map(|(_, t)| t)
        .sum()
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    proxy_ns: u64,
}

async fn drive(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
    count: usize,
    deadline: Instant,
) -> Vec<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        let uri: http::Uri = format!("http://{addr}{path}").parse().expect("uri");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count && Instant::now() < deadline {
                let req = Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
                    .expect("request");
                let t = Instant::now();
                let res = client.request(req).await.expect("response");
                assert!(res.status().is_success(), "{}", res.status());
                let _ = res.into_body().collect().await.expect("body");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

/// Warms `addr` up with `WARMUP` requests.
fn warm_up(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    body: &Bytes,
) {
    rt.block_on(drive(
        client,
        addr,
        path,
        body,
        WARMUP,
        Instant::now() + MAX_TIME,
    ));
}

/// One slice of a scenario, added to `run`.
fn measure_slice(
    rt: &tokio::runtime::Runtime,
    client: &HttpClient,
    s: &Scenario<'_>,
    run: &mut Run,
) {
    let before = s.thread.map_or(0, cpu_ns_of);
    let started = Instant::now();
    let latencies = rt.block_on(drive(
        client,
        s.addr,
        s.path,
        s.body,
        MAX_REQUESTS / ROUNDS as usize,
        started + MAX_TIME / ROUNDS,
    ));
    run.elapsed += started.elapsed();
    run.proxy_ns += s.thread.map_or(0, cpu_ns_of) - before;
    run.requests += latencies.len();
    run.latencies.extend(latencies);
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Scenario<'a> {
    name: &'a str,
    addr: SocketAddr,
    path: &'a str,
    thread: Option<&'a str>,
    body: &'a Bytes,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let f = fixture();
    let step_up = StepUp::from_toml("").expect("config");
    let upstream = start_upstream(&f);
    let plain = start_pingora("pg-plain", PaymentApi { upstream });
    // The same plain proxy again: how far two identical proxies drift apart in one run is the
    // noise floor the other ratios are read against.
    let control = start_pingora("pg-control", PaymentApi { upstream });
    let stepup = start_pingora(
        "pg-stepup",
        StepUpProxy::new(PaymentApi { upstream }, step_up.clone()).observe(|ctx| {
            ENGINE_NS.fetch_add(ctx.engine_time().as_nanos() as u64, Ordering::Relaxed);
        }),
    );
    let tower = start_tower(step_up, upstream);
    let client_rt = runtime("bench-client");

    // The same body without the Klarna marks: the candidate body is read and replayed, the
    // answer is not buffered. Splits the Klarna route's cost into request and response side.
    let card = Bytes::from(
        String::from_utf8_lossy(&f.request)
            .replace("\"klarna\"", "\"card\"")
            .replace("klarna_return_url", "card_return_url"),
    );
    let scenarios: [(&str, SocketAddr, &str, Option<&str>, &Bytes); 7] = [
        ("direct upstream", upstream, "/payments", None, &f.request),
        (
            "pingora passthrough",
            plain,
            "/payments",
            Some("pg-plain"),
            &f.request,
        ),
        (
            "  (control) pingora passthrough again",
            control,
            "/payments",
            Some("pg-control"),
            &f.request,
        ),
        (
            "pingora + step-up, klarna route",
            stepup,
            "/payments",
            Some("pg-stepup"),
            &f.request,
        ),
        (
            "pingora + step-up, other route",
            stepup,
            "/refunds",
            Some("pg-stepup"),
            &f.request,
        ),
        (
            "  (diag) klarna route, card body",
            stepup,
            "/payments",
            Some("pg-stepup"),
            &card,
        ),
        (
            "tower + step-up, klarna route",
            tower,
            "/payments",
            Some("bench-tower"),
            &f.request,
        ),
    ];
    println!(
        "\n{CONNECTIONS} connections, body {} B (step_up_required fixture), answer {} B; \
         at most {MAX_REQUESTS} requests or {MAX_TIME:?} per scenario, in {ROUNDS} interleaved \
         slices\n",
        f.request.len(),
        f.answer.len()
    );
    println!(
        "{:<34} {:>9} {:>10} {:>10} {:>14} {:>10} {:>10} {:>8} {:>10}",
        "scenario",
        "req/s",
        "p50 µs",
        "p99 µs",
        "proxy CPU µs/req",
        "req/s %",
        "CPU %",
        "up conns",
        "engine µs"
    );
    // `PROXY_BENCH_ONLY="passthrough|klarna route"`: only the scenarios whose name contains one of
    // these (for profiling one scenario at a time).
    let only = std::env::var("PROXY_BENCH_ONLY").ok();
    let scenarios: Vec<Scenario<'_>> = scenarios
        .into_iter()
        .filter(|(name, ..)| {
            only.as_ref()
                .is_none_or(|only| only.split('|').any(|w| name.contains(w.trim())))
        })
        .map(|(name, addr, path, thread, body)| Scenario {
            name,
            addr,
            path,
            thread,
            body,
        })
        .collect();
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONNECTIONS)
        .build_http::<Full<Bytes>>();
    let mut runs: Vec<Run> = scenarios.iter().map(|_| Run::default()).collect();
    let mut conns = vec![0; scenarios.len()];
    let mut engine_ns = vec![0u64; scenarios.len()];
    for s in &scenarios {
        warm_up(&client_rt, &client, s.addr, s.path, s.body);
    }
    for round in 0..ROUNDS as usize {
        // Each round starts one scenario later: no scenario always follows the same one.
        for k in 0..scenarios.len() {
            let i = (round + k) % scenarios.len();
            let s = &scenarios[i];
            let (c, e) = (
                UPSTREAM_CONNS.load(Ordering::Relaxed),
                ENGINE_NS.load(Ordering::Relaxed),
            );
            measure_slice(&client_rt, &client, s, &mut runs[i]);
            conns[i] += UPSTREAM_CONNS.load(Ordering::Relaxed) - c;
            engine_ns[i] += ENGINE_NS.load(Ordering::Relaxed) - e;
        }
    }
    let mut base: Option<(f64, f64)> = None;
    for (i, s) in scenarios.iter().enumerate() {
        let run = &mut runs[i];
        run.latencies.sort();
        let run = &*run;
        let (name, thread) = (s.name, s.thread);
        let conns = conns[i];
        let engine_us = engine_ns[i] as f64 / 1e3 / run.requests as f64;
        let rps = run.requests as f64 / run.elapsed.as_secs_f64();
        let pct = |p: f64| {
            let i = ((run.latencies.len() as f64 * p) as usize).min(run.latencies.len() - 1);
            run.latencies[i].as_micros()
        };
        let cpu = run.proxy_ns as f64 / 1e3 / run.requests as f64;
        if name == "pingora passthrough" {
            base = Some((rps, cpu));
        }
        let (rps_pct, cpu_pct) = match (base, thread) {
            (Some((brps, bcpu)), Some(_)) => (
                format!("{:.0}%", rps / brps * 100.0),
                format!("{:.0}%", cpu / bcpu * 100.0),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:<34} {:>9.0} {:>10} {:>10} {:>14} {:>10} {:>10} {:>8} {:>10}",
            name,
            rps,
            pct(0.50),
            pct(0.99),
            if thread.is_some() {
                format!("{cpu:.1}")
            } else {
                "-".into()
            },
            rps_pct,
            cpu_pct,
            conns,
            if engine_us >= 0.05 {
                format!("{engine_us:.1}")
            } else {
                "-".into()
            },
        );
    }
    println!("\n(ratios vs. pingora passthrough; CPU = the proxy's own threads only)");
    println!(
        "A regression check of the adapters in one process, NOT a capacity figure: 4 \
         connections, client and proxies sharing the cores. What an operator sees is the peer \
         benchmark, `./x peer-bench` (wrk -t2 -c50 against nginx and nginx + Lua)."
    );
    std::process::exit(0);
}
