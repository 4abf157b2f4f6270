//! Header parity between the tower adapter (the shape of the proxy binary: the layer over a
//! hyper client, hop-by-hop headers stripped by the service inside it) and the Pingora
//! adapter, on every path a request step-up acts on can take through `StepUpProxy`: a small
//! Klarna request (the direct exchange, or Pingora's pipeline with `direct_exchange(false)`),
//! a candidate body over 64 KiB (the pipeline, streamed), and the webhook relay (the
//! pipeline). On a route step-up does not act on, the headers are the host proxy's business
//! (Pingora's own sanitizing, or the service inside the tower layer). Each test sends the
//! same request through the adapters over loopback and checks what the payment API and the
//! client get; failures are collected per adapter and path, and reported together.
#![cfg(feature = "pingora")]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures;
use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::{raw_request, RawResponse, ReqBody};
use common::return_webhook::{self, signature, COMPLETED};
use common::upstream::{self, Answer, Received};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);

/// The tower proxy and `StepUpProxy` (over the usual inner proxy), in front of `up`; the
/// latter twice: as it comes, and with `direct_exchange(false)` (`pingora-pipeline`: every
/// request on Pingora's pipeline, as with the `StepUpPhases` recipe or an HTTP/2 peer).
async fn adapters(step_up: StepUp, up: SocketAddr) -> [(&'static str, SocketAddr); 3] {
    let tower = common::tower_proxy::start(step_up.clone(), up).await;
    let inner = || PaymentApi {
        upstream: up,
        read_timeout: LIMIT,
    };
    let pingora = start_pingora(StepUpProxy::new(inner(), step_up.clone()));
    let pipeline = start_pingora(StepUpProxy::new(inner(), step_up).direct_exchange(false));
    [
        ("tower", tower),
        ("pingora", pingora),
        ("pingora-pipeline", pipeline),
    ]
}

/// The paths a request step-up acts on takes through `StepUpProxy`.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// The `step_up_required` fixture's Klarna request: the direct exchange.
    SmallKlarna,
    /// The same request padded past 64 KiB: the pipeline, streamed upstream.
    LargeKlarna,
}

const PATHS: [Path; 2] = [Path::SmallKlarna, Path::LargeKlarna];

/// The `step_up_required` request, padded past Pingora's 64 KiB retry buffer.
fn large_klarna() -> Vec<u8> {
    let f = fixtures::by_name("step_up_required");
    let mut body = br#"{"padding":""#.to_vec();
    body.extend(std::iter::repeat_n(b'p', 70 * 1024));
    body.extend_from_slice(b"\",");
    body.extend_from_slice(&f.body[1..]);
    body
}

/// Sends `path`'s request with `extra` headers (after the raw client's `Host` and
/// `Connection: close`).
async fn send(
    proxy: SocketAddr,
    path: Path,
    extra: &[(&str, &str)],
) -> Result<RawResponse, String> {
    let f = fixtures::by_name("step_up_required");
    let large = large_klarna();
    let mut headers: Vec<(&str, &str)> = Vec::new();
    let (method, target, body) = match path {
        Path::SmallKlarna => {
            headers.push(("content-type", "application/json"));
            ("POST", "/payments", ReqBody::Length(&f.body))
        }
        Path::LargeKlarna => {
            headers.push(("content-type", "application/json"));
            ("POST", "/payments", ReqBody::Length(&large))
        }
    };
    headers.extend_from_slice(extra);
    raw_request(proxy, method, target, &headers, body, LIMIT).await
}

/// The one request the upstream received since the last call.
fn one(up: &upstream::Upstream, what: &str) -> Result<Received, String> {
    let mut got = up.take_received();
    match got.len() {
        1 => Ok(got.remove(0)),
        n => Err(format!("{what}: the payment API got {n} requests")),
    }
}

/// `path`'s request through `proxy`: its answer (a 200) and what the payment API got.
async fn through(
    up: &upstream::Upstream,
    proxy: SocketAddr,
    path: Path,
    extra: &[(&str, &str)],
    what: &str,
) -> Result<(RawResponse, Received), String> {
    let sent = send(proxy, path, extra).await;
    let got = one(up, what)?;
    let res = sent.map_err(|e| format!("{what}: {e}"))?;
    if res.status != 200 {
        return Err(format!("{what}: {} {}", res.status, show(&res.body)));
    }
    Ok((res, got))
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

/// The step_up_required answer, with `extra` headers.
fn klarna_answer(extra: &[(&str, &str)]) -> Answer {
    let mut a = Answer::of(&fixtures::by_name("step_up_required"));
    for (k, v) in extra {
        a.headers.push((k.to_string(), v.to_string()));
    }
    a
}

/// The hop-by-hop headers of an upstream answer: a header its `Connection` names, and
/// `Keep-Alive` and `Proxy-Authenticate`.
const ANSWER_HOPS: [(&str, &str); 4] = [
    ("connection", "x-upstream-hop"),
    ("x-upstream-hop", "internal"),
    ("keep-alive", "timeout=5"),
    ("proxy-authenticate", "Basic realm=\"internal\""),
];

// ---------------------------------------------------------------------------------------
// 1. An upstream answer's hop-by-hop headers
// ---------------------------------------------------------------------------------------

/// What the payment API's `Connection` names, its `Keep-Alive` and `Proxy-Authenticate`
/// reach the client through no adapter: step-up strips them from every answer it handles
/// (Pingora's server only replaces `Connection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answers_hop_by_hop_headers_stop_at_either_adapter() {
    let up = upstream::start().await;
    let mut answer = klarna_answer(&ANSWER_HOPS);
    answer.headers.push(("x-end".into(), "kept".into()));
    up.set_answer(answer);
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in PATHS {
            let what = format!("{adapter} {path:?}");
            let res = match send(proxy, path, &[]).await {
                Ok(res) => res,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let _ = up.take_received();
            if res.status != 200 {
                failures.push(format!("{what}: {} {}", res.status, show(&res.body)));
                continue;
            }
            for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
                if let Some(v) = res.header(gone) {
                    failures.push(format!("{what}: {gone}: {v} reached the client"));
                }
            }
            if res.header("x-end") != Some("kept") {
                failures.push(format!("{what}: x-end lost"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The same for the payment API's answer to a relayed webhook, which Pingora's pipeline
/// carries; and the other way, step-up's own `x-klarna-stepup-*` headers on the relayed
/// webhook reach the payment API whatever Klarna's `Connection` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_webhook_and_its_answer_lose_their_hop_by_hop_headers_at_either_adapter() {
    let up = upstream::start().await;
    let mut answer = Answer {
        status: 200,
        body: b"ok".to_vec(),
        ..Answer::default()
    };
    for (k, v) in ANSWER_HOPS {
        answer.headers.push((k.into(), v.into()));
    }
    up.set_answer(answer);
    let body = COMPLETED.as_bytes();
    let sig = signature(body);
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(return_webhook::step_up(""), up.addr).await {
        let res = raw_request(
            proxy,
            "POST",
            "/klarna/webhooks",
            &[
                ("content-type", "application/json"),
                ("klarna-signing-key-id", "a"),
                ("klarna-signature", &sig),
                (
                    "Connection",
                    "x-klarna-stepup-verified, x-klarna-stepup-token",
                ),
            ],
            ReqBody::Length(body),
            LIMIT,
        )
        .await
        .unwrap();
        let got = one(&up, adapter).unwrap();
        assert_eq!(res.status, 200, "{adapter}: {}", show(&res.body));
        assert_eq!(res.header("x-klarna-stepup"), Some("relayed"), "{adapter}");
        for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
            if let Some(v) = res.header(gone) {
                failures.push(format!("{adapter} webhook: {gone}: {v} reached Klarna"));
            }
        }
        for name in ["x-klarna-stepup-verified", "x-klarna-stepup-token"] {
            if !got.headers.contains_key(name) {
                failures.push(format!("{adapter} webhook: step-up's {name} lost"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 2. A client's Proxy-* headers, and HTTP2-Settings
// ---------------------------------------------------------------------------------------

/// Every `Proxy-*` request header, and `HTTP2-Settings`, stop at either adapter (Pingora's
/// own sanitizing strips only `Proxy-Authorization`, `Proxy-Authenticate` and
/// `Proxy-Connection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_proxy_headers_stop_at_either_adapter() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let mut failures = Vec::new();
    let mut settings = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in PATHS {
            let what = format!("{adapter} {path:?}");
            let extra = [
                ("Proxy-Token", "secret"),
                ("Proxy-Authorization", "Basic c2VjcmV0"),
                ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ];
            let got = match through(&up, proxy, path, &extra, &what).await {
                Ok((_, got)) => got,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            for name in got.headers.keys() {
                if name.as_str().starts_with("proxy-") {
                    failures.push(format!("{what}: {name} reached the payment API"));
                }
            }
            settings.push((what, got.headers.contains_key("http2-settings")));
        }
    }
    // Whatever the rule for HTTP2-Settings, one rule on every path.
    let forwarded: Vec<_> = settings.iter().filter(|(_, f)| *f).collect();
    if !forwarded.is_empty() && forwarded.len() != settings.len() {
        failures.push(format!(
            "HTTP2-Settings forwarded on some paths only: {settings:?}"
        ));
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 3. Step-up's own request headers against the client's `Connection`
// ---------------------------------------------------------------------------------------

/// Step-up's own edits of a Klarna request (`Accept-Encoding: identity`, its
/// `traceparent`) reach the payment API whatever the client's `Connection` names: the
/// client's hop-by-hop headers are stripped before them, also where the service inside the
/// tower layer (as the binary's) strips hop-by-hop headers again after the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ups_own_request_headers_survive_what_the_clients_connection_names() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let step_up = StepUp::from_toml("[trace_context]\npropagate = true\n").unwrap();
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(step_up, up.addr).await {
        for path in [Path::SmallKlarna, Path::LargeKlarna] {
            let what = format!("{adapter} {path:?}");
            let extra = [
                ("Accept-Encoding", "gzip"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("Connection", "accept-encoding, traceparent"),
            ];
            let got = match through(&up, proxy, path, &extra, &what).await {
                Ok((_, got)) => got,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            let h = &got.headers;
            if h.get("accept-encoding").is_none_or(|v| v != "identity") {
                failures.push(format!(
                    "{what}: accept-encoding {:?}, not step-up's identity",
                    h.get("accept-encoding")
                ));
            }
            if !h.contains_key("traceparent") {
                failures.push(format!("{what}: step-up's traceparent lost"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 4. The marker header from upstream
// ---------------------------------------------------------------------------------------

/// `x-klarna-stepup` on an answer the layer rewrote is step-up's: the tower adapter and the
/// direct exchange set `rewritten` over whatever the upstream sent, and on Pingora's
/// pipeline, where the head goes out before the verdict without a marker
/// (`answer_being_read`), the upstream's own is removed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_marker_never_reaches_the_client_as_step_ups_verdict() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[("x-klarna-stepup", "passthrough")]));
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in [Path::SmallKlarna, Path::LargeKlarna] {
            let what = format!("{adapter} {path:?}");
            let res = send(proxy, path, &[]).await.unwrap();
            let _ = up.take_received();
            assert_eq!(res.status, 200, "{what}: {}", show(&res.body));
            let want = fixtures::by_name("step_up_required").expect.body;
            assert_eq!(show(&res.body), show(&want), "{what}: rewritten");
            let markers: Vec<_> = res
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-klarna-stepup"))
                .map(|(_, v)| v.as_str())
                .collect();
            if markers.contains(&"passthrough") {
                failures.push(format!(
                    "{what}: the upstream's marker reached the client on a rewritten answer: {markers:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
