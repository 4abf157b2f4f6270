//! Header parity between the tower adapter (the shape of the proxy binary: the layer over a
//! hyper client, hop-by-hop headers stripped by the service inside it) and the Pingora
//! adapter, on every path a request can take through `StepUpProxy`: a route step-up does not
//! act on (Pingora's pipeline), a small Klarna request (the direct exchange), a candidate
//! body over 64 KiB (the pipeline, streamed), and the webhook relay (the pipeline). Each test
//! sends the same request through both adapters over loopback and checks what the payment
//! API and the client get; failures are collected per adapter and path, and reported
//! together.
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

/// The paths a request takes through `StepUpProxy`.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `GET /status`: not a candidate; Pingora's pipeline.
    Passthrough,
    /// The `step_up_required` fixture's Klarna request: the direct exchange.
    SmallKlarna,
    /// The same request padded past 64 KiB: the pipeline, streamed upstream.
    LargeKlarna,
}

const PATHS: [Path; 3] = [Path::Passthrough, Path::SmallKlarna, Path::LargeKlarna];

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
        Path::Passthrough => ("GET", "/status", ReqBody::None),
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

/// The tower proxy strips an answer's hop-by-hop headers (`strip_hop_by_hop` on the way
/// back) on every path, the direct exchange too (428727b); Pingora's pipeline does not: its
/// server only replaces `Connection`, so what the payment API's `Connection` names,
/// `Keep-Alive` and `Proxy-Authenticate` reach the client on a passthrough route and on a
/// large Klarna body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answers_hop_by_hop_headers_stop_at_either_adapter_on_every_path() {
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
/// carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_webhooks_answer_loses_its_hop_by_hop_headers_at_either_adapter() {
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
            ],
            ReqBody::Length(body),
            LIMIT,
        )
        .await
        .unwrap();
        let _ = up.take_received();
        assert_eq!(res.status, 200, "{adapter}: {}", show(&res.body));
        assert_eq!(res.header("x-klarna-stepup"), Some("relayed"), "{adapter}");
        for gone in ["x-upstream-hop", "keep-alive", "proxy-authenticate"] {
            if let Some(v) = res.header(gone) {
                failures.push(format!("{adapter} webhook: {gone}: {v} reached Klarna"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 2. A client's Proxy-* headers, and HTTP2-Settings
// ---------------------------------------------------------------------------------------

/// The tower proxy strips every `Proxy-*` request header (as documented in security.md);
/// so does the direct exchange (`hop_by_hop_names`). Pingora's pipeline strips only
/// `Proxy-Authorization`, `Proxy-Authenticate` and `Proxy-Connection`: any other `Proxy-*`
/// header reaches the payment API on a passthrough route and on a large Klarna body.
/// Conversely, Pingora's pipeline strips `HTTP2-Settings`, which the tower proxy and the
/// direct exchange forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_proxy_headers_stop_at_either_adapter_on_every_path() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let mut failures = Vec::new();
    let mut settings = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in PATHS {
            let what = format!("{adapter} {path:?}");
            let sent = send(
                proxy,
                path,
                &[
                    ("Proxy-Token", "secret"),
                    ("Proxy-Authorization", "Basic c2VjcmV0"),
                    ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
                ],
            )
            .await;
            let got = one(&up, &what);
            let (res, got) = match (sent, got) {
                (Ok(res), Ok(got)) => (res, got),
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            assert_eq!(res.status, 200, "{what}: {}", show(&res.body));
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
// 3. What `Connection` may name
// ---------------------------------------------------------------------------------------

/// `Connection: Host` is ignored (security.md: `Host` is never removed as hop-by-hop), and
/// a `Connection` with many names or naming `X-Forwarded-For` is served: so the tower proxy
/// and the direct exchange. Pingora's pipeline refuses all three (its request policy rejects
/// nominations of `Host` and `X-Forwarded-*` and ten or more tokens) before the upstream, so
/// the same request gets an error on a passthrough route and on a large Klarna body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_connection_names_is_served_alike_on_every_path() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let cases: [&[(&str, &str)]; 3] = [
        &[("Connection", "Host")],
        &[("Connection", "x-a, x-b, x-c, x-d, x-e, x-f, x-g, x-h, x-i")],
        &[
            ("X-Forwarded-For", "203.0.113.7"),
            ("Connection", "X-Forwarded-For"),
        ],
    ];
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in PATHS {
            for extra in cases {
                let what = format!("{adapter} {path:?} {extra:?}");
                match send(proxy, path, extra).await {
                    Ok(res) if res.status == 200 => {}
                    Ok(res) => failures.push(format!("{what}: {} {}", res.status, show(&res.body))),
                    Err(e) => failures.push(format!("{what}: {e}")),
                }
                let _ = up.take_received();
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 4. Step-up's own request headers against the client's `Connection`
// ---------------------------------------------------------------------------------------

/// Step-up's own edits of a Klarna request (`Accept-Encoding: identity`, its
/// `traceparent`) are made after the Pingora adapter strips the client's hop-by-hop
/// headers, so they reach the payment API whatever the client's `Connection` names. In the
/// tower proxy (and the binary, whose `Forward` is the same shape) the hop-by-hop headers
/// are stripped by the service inside the layer, after the layer's edits: a client's
/// `Connection: accept-encoding, traceparent` removes step-up's own headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ups_own_request_headers_survive_what_the_clients_connection_names() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let step_up = StepUp::from_toml("[trace_context]\npropagate = true\n").unwrap();
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(step_up, up.addr).await {
        for path in [Path::SmallKlarna, Path::LargeKlarna] {
            let what = format!("{adapter} {path:?}");
            let sent = send(
                proxy,
                path,
                &[
                    ("Accept-Encoding", "gzip"),
                    (
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    ),
                    ("Connection", "accept-encoding, traceparent"),
                ],
            )
            .await;
            let got = one(&up, &what);
            let (res, got) = match (sent, got) {
                (Ok(res), Ok(got)) => (res, got),
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            assert_eq!(res.status, 200, "{what}: {}", show(&res.body));
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

/// The same for a relayed webhook's `x-klarna-stepup-*` headers: through the tower proxy,
/// a `Connection` naming them removes step-up's own, and the payment API gets the webhook
/// without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_webhook_keeps_step_ups_headers_whatever_connection_names() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        body: b"ok".to_vec(),
        ..Answer::default()
    });
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
        for name in ["x-klarna-stepup-verified", "x-klarna-stepup-token"] {
            if !got.headers.contains_key(name) {
                failures.push(format!("{adapter} webhook: step-up's {name} lost"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 5. Framing of a forwarded body that came chunked
// ---------------------------------------------------------------------------------------

/// A candidate body that is not Klarna's (a card payment), and a verified webhook, both
/// uploaded chunked and read whole by either adapter: the tower proxy forwards them with an
/// exact `Content-Length` (hyper frames the whole body it is handed); the Pingora adapter
/// forwards them chunked (Pingora's pipeline re-chunks a body whose head has no length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_read_whole_is_framed_alike_by_either_adapter() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        body: b"{}".to_vec(),
        headers: vec![("content-type".into(), "application/json".into())],
        ..Answer::default()
    });
    let card = fixtures::by_name("card_payment");
    let webhook = COMPLETED.as_bytes();
    let sig = signature(webhook);
    let mut framing = Vec::new();
    for (adapter, proxy) in adapters(return_webhook::step_up(""), up.addr).await {
        let mut headers: Vec<(&str, &str)> = card
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
        let res = raw_request(
            proxy,
            &card.method,
            &card.path,
            &headers,
            ReqBody::Chunked(&card.body, 16),
            LIMIT,
        )
        .await
        .unwrap();
        assert!(
            res.status < 400,
            "{adapter}: {} {}",
            res.status,
            show(&res.body)
        );
        let got = one(&up, adapter).unwrap();
        assert_eq!(got.body, card.body, "{adapter}: card body");
        framing.push((adapter, "card", framing_of(&got)));

        let res = raw_request(
            proxy,
            "POST",
            "/klarna/webhooks",
            &[
                ("content-type", "application/json"),
                ("klarna-signing-key-id", "a"),
                ("klarna-signature", &sig),
            ],
            ReqBody::Chunked(webhook, 16),
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200, "{adapter}: {}", show(&res.body));
        let got = one(&up, adapter).unwrap();
        framing.push((adapter, "webhook", framing_of(&got)));
    }
    let want: Vec<_> = framing
        .iter()
        .filter(|f| f.0 == "tower")
        .map(|f| (f.1, &f.2))
        .collect();
    for adapter in ["pingora", "pingora-pipeline"] {
        let got: Vec<_> = framing
            .iter()
            .filter(|f| f.0 == adapter)
            .map(|f| (f.1, &f.2))
            .collect();
        assert_eq!(got, want, "{adapter}: framing differs: {framing:#?}");
    }
}

/// `Content-Length: n` or `Transfer-Encoding: chunked`, as the payment API got it.
fn framing_of(got: &Received) -> String {
    let h = &got.headers;
    match (h.get("content-length"), h.get("transfer-encoding")) {
        (Some(n), None) => format!("content-length: {}", n.to_str().unwrap_or("?")),
        (None, Some(te)) => format!("transfer-encoding: {}", te.to_str().unwrap_or("?")),
        (cl, te) => format!("{cl:?} {te:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 6. An absolute-form request target, and Host
// ---------------------------------------------------------------------------------------

/// An absolute-form request target, its authority the `Host`'s (`http://example.test/payments`)
/// or another one (`http://other.example/payments`), with `Host: example.test`. The tower
/// proxy (and the binary) serves both and sends the payment API origin-form `/payments` with
/// the client's `Host`. The Pingora adapter sends the absolute-form target on, on the direct
/// exchange and on the pipeline, and refuses the one whose authority is not the `Host`'s
/// with a bare 400 (Pingora's own check, not step-up's JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_reaches_the_payment_api_alike() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[]));
    let f = fixtures::by_name("step_up_required");
    let large = large_klarna();
    let mut seen = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for target in [
            "http://example.test/payments",
            "http://other.example/payments",
        ] {
            for (path, body) in [("SmallKlarna", &f.body), ("LargeKlarna", &large)] {
                let res = raw_request(
                    proxy,
                    "POST",
                    target,
                    &[("content-type", "application/json")],
                    ReqBody::Length(body),
                    LIMIT,
                )
                .await;
                let got = up.take_received();
                let what = match (res, got.as_slice()) {
                    (Ok(res), [got]) => format!(
                        "{} upstream got target {} Host {:?}",
                        res.status,
                        got.target,
                        got.headers.get("host")
                    ),
                    (Ok(res), []) => {
                        format!("{} {}, nothing upstream", res.status, show(&res.body))
                    }
                    (Ok(res), got) => format!("{}, {} requests upstream", res.status, got.len()),
                    (Err(e), _) => e,
                };
                seen.push((format!("{target} {path}"), adapter, what));
            }
        }
    }
    let mut failures = Vec::new();
    for (case, adapter, what) in &seen {
        let (_, _, want) = seen
            .iter()
            .find(|s| s.0 == *case && s.1 == "tower")
            .unwrap();
        if what != want {
            failures.push(format!("{adapter} {case}: {what}; tower: {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// 7. The marker header from upstream
// ---------------------------------------------------------------------------------------

/// `x-klarna-stepup` on an answer the layer rewrote is step-up's: the tower adapter and the
/// direct exchange set `rewritten` over whatever the upstream sent. On Pingora's pipeline
/// the rewritten answer's head goes out before the verdict without a marker
/// (`answer_being_read`), but the upstream's own `x-klarna-stepup` is not removed: the
/// client reads the upstream's value as step-up's verdict.
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

// ---------------------------------------------------------------------------------------
// 8. Framing of a kept answer that came chunked
// ---------------------------------------------------------------------------------------

/// A Klarna request whose answer step-up keeps (a `402 text/plain`, sent chunked): the tower
/// proxy streams it through chunked; the direct exchange reads it whole and sends it with a
/// `Content-Length` (and without the trailers a chunked answer may carry, as documented).
/// The body's bytes are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_chunked_answer_is_framed_alike_by_either_adapter() {
    let up = chunked::start().await;
    let mut seen = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up).await {
        for path in PATHS {
            let res = send(proxy, path, &[]).await.unwrap();
            assert_eq!(res.status, 402, "{adapter} {path:?}");
            assert_eq!(res.body, b"plain text", "{adapter} {path:?}");
            let framing = match res.header("content-length") {
                Some(n) => format!("content-length: {n}"),
                None if res.chunked => "chunked".to_owned(),
                None => "close-delimited".to_owned(),
            };
            seen.push((format!("{path:?}"), adapter, framing));
        }
    }
    let mut failures = Vec::new();
    for (path, adapter, framing) in &seen {
        let (_, _, want) = seen
            .iter()
            .find(|s| s.0 == *path && s.1 == "tower")
            .unwrap();
        if framing != want {
            failures.push(format!("{adapter} {path}: {framing}; tower: {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// An upstream that answers every request `402 text/plain`, chunked.
mod chunked {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;

    pub async fn start() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let _ = req.into_body().collect().await;
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                                Ok(Frame::data(Bytes::from_static(b"plain "))),
                                Ok(Frame::data(Bytes::from_static(b"text"))),
                            ];
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(402)
                                    .header("content-type", "text/plain")
                                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }
}

// ---------------------------------------------------------------------------------------
// 9. The payment API's Date
// ---------------------------------------------------------------------------------------

/// The tower proxy (hyper's server) keeps the payment API's `Date`; Pingora's server
/// replaces it with its own on every answer it relays, on every path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payment_apis_date_reaches_the_client_through_either_adapter() {
    let up = upstream::start().await;
    up.set_answer(klarna_answer(&[("date", "Tue, 01 Jan 2030 00:00:00 GMT")]));
    let mut failures = Vec::new();
    for (adapter, proxy) in adapters(StepUp::from_toml("").unwrap(), up.addr).await {
        for path in PATHS {
            let res = send(proxy, path, &[]).await.unwrap();
            let _ = up.take_received();
            assert_eq!(res.status, 200, "{adapter} {path:?}");
            let date = res.header("date");
            if date != Some("Tue, 01 Jan 2030 00:00:00 GMT") {
                failures.push(format!("{adapter} {path:?}: date {date:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
