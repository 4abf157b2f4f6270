//! The Pingora adapter over real loopback sockets: parity with the tower adapter on every
//! fixture, passthrough fidelity, both body paths, refusals, upstream failures, compression.
#![cfg(feature = "pingora")]

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::{self, Fixture};
use common::pingora_proxy::{start_pingora, PaymentApi};
use common::ports::free_addr;
use common::upstream::{self, Answer};
use klarna_stepup::engine::MARKER_HEADER;
use klarna_stepup::pingora::{LargeBodies, StepUpProxy};
use klarna_stepup::{Refusal, RequestVerdict, Route, StepUp};

use common::raw_http::{
    self, assert_hop_by_hop_stopped, raw_request, RawResponse, ReqBody, HOP_BY_HOP_ANSWER,
    HOP_BY_HOP_REQUEST,
};

const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Harness: an "existing" Pingora proxy, a server in a thread, the tower proxy
// ---------------------------------------------------------------------------------------

fn pingora_step_up(step_up: StepUp, upstream: SocketAddr, read_timeout: Duration) -> SocketAddr {
    let inner = PaymentApi {
        upstream,
        read_timeout,
    };
    start_pingora(StepUpProxy::new(inner, step_up))
}

async fn send_fixture(addr: SocketAddr, f: &Fixture, extra: &[(&str, &str)]) -> RawResponse {
    raw_http::send_fixture(addr, f, extra, LIMIT).await
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

// ---------------------------------------------------------------------------------------
// Parity
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_every_fixture_through_tower_and_pingora() {
    let up = upstream::start().await;
    let mut proxies = std::collections::HashMap::new();
    for f in fixtures::all() {
        if !proxies.contains_key(&f.config) {
            let step_up = StepUp::from_toml(&f.config).unwrap();
            let t = common::tower_proxy::start(step_up.clone(), up.addr).await;
            let p = pingora_step_up(step_up, up.addr, Duration::from_secs(5));
            proxies.insert(f.config.clone(), (t, p));
        }
        let (tower_addr, pingora_addr) = proxies[&f.config];
        up.set_answer(Answer::of(&f));
        up.take_received();

        let t = send_fixture(tower_addr, &f, &[]).await;
        let t_seen = up.take_received();
        let p = send_fixture(pingora_addr, &f, &[]).await;
        let p_seen = up.take_received();

        let n = &f.name;
        assert_eq!(t.status, f.expect.status, "{n}: tower status");
        assert_eq!(p.status, t.status, "{n}: status differs");
        assert_eq!(show(&t.body), show(&f.expect.body), "{n}: tower body");
        assert_eq!(show(&p.body), show(&t.body), "{n}: partner body differs");
        let (tm, pm) = (t.header("x-klarna-stepup"), p.header("x-klarna-stepup"));
        assert_eq!(tm, f.expect.marker.as_deref(), "{n}: tower marker");
        assert_eq!(pm, tm, "{n}: marker differs");
        // Refusals: same head fields, same bytes.
        if t.status >= 400 && f.forwarded == fixtures::Forwarded::None {
            for h in ["content-type", "cache-control", "content-length"] {
                assert_eq!(p.header(h), t.header(h), "{n}: refusal {h}");
            }
        }
        // What reached the upstream.
        assert_eq!(t_seen.len(), p_seen.len(), "{n}: upstream request count");
        match f.forwarded_body() {
            None => assert!(p_seen.is_empty(), "{n}: upstream contacted"),
            Some(want) => {
                assert_eq!(show(&t_seen[0].body), show(want), "{n}: tower forwarded");
                assert_eq!(show(&p_seen[0].body), show(want), "{n}: forwarded differs");
                let cl = p_seen[0].headers.get("content-length");
                assert_eq!(
                    cl.map(|v| v.to_str().unwrap().to_owned()),
                    Some(want.len().to_string()),
                    "{n}: forwarded content-length"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Passthrough fidelity
// ---------------------------------------------------------------------------------------

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_klarna_get_is_byte_identical_gzip_and_5mb() {
    let up = upstream::start().await;
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up.addr, LIMIT);
    let big = pattern(5 * 1024 * 1024);
    let gz = gzip(&big);
    up.set_answer(Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
            ("etag".into(), "\"x\"".into()),
        ],
        body: gz.clone(),
        delay: None,
    });
    for ae in ["gzip", "identity"] {
        let res = raw_request(
            proxy,
            "GET",
            "/payments/1",
            &[("accept-encoding", ae)],
            ReqBody::None,
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200);
        assert!(res.header("x-klarna-stepup").is_none());
        assert_eq!(res.header("content-encoding"), Some("gzip"), "{ae}");
        assert_eq!(res.header("etag"), Some("\"x\""));
        assert_eq!(res.header("content-length"), Some(&*gz.len().to_string()));
        assert!(res.body == gz, "gzip body changed ({ae})");
    }
    let got = up.take_received();
    assert_eq!(
        got[0].headers["accept-encoding"], "gzip",
        "client's AE forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_klarna_post_is_byte_identical_chunked_and_5mb() {
    let up = chunked::start().await;
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up, LIMIT);
    let big = pattern(5 * 1024 * 1024);
    // A chunked 5 MB upload: streamed, echoed back chunked.
    let res = raw_request(
        proxy,
        "POST",
        "/files/echo",
        &[("content-type", "application/octet-stream")],
        ReqBody::Chunked(&big, 100_000),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200);
    assert!(res.chunked, "chunked answer stays chunked");
    assert!(res.header("x-klarna-stepup").is_none());
    assert_eq!(
        res.header("x-upload-te"),
        Some("chunked"),
        "upload stays chunked"
    );
    assert!(res.body == big, "5 MB chunked echo changed");
    // A JSON POST with Content-Length on a route that is not a candidate.
    let json = br#"{"payment_method":"klarna","amount":  1.50}"#;
    let res = raw_request(
        proxy,
        "POST",
        "/refunds/echo",
        &[("content-type", "application/json")],
        ReqBody::Length(json),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.body, json);
    assert_eq!(res.header("x-upload-cl"), Some(&*json.len().to_string()));
    assert!(res.header("x-klarna-stepup").is_none());
}

// ---------------------------------------------------------------------------------------
// Klarna requests
// ---------------------------------------------------------------------------------------

fn step_up_answer() -> (Fixture, Answer) {
    let f = fixtures::by_name("step_up_required");
    let a = Answer::of(&f);
    (f, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn klarna_request_injected_with_exact_content_length_chunked_upload_too() {
    let up = upstream::start().await;
    let (f, answer) = step_up_answer();
    up.set_answer(answer);
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up.addr, LIMIT);
    for body in [ReqBody::Length(&f.body), ReqBody::Chunked(&f.body, 100)] {
        let res = raw_request(
            proxy,
            "POST",
            "/payments",
            &[
                ("content-type", "application/json"),
                ("accept-encoding", "gzip"),
            ],
            body,
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
        let plain = match res.header("content-encoding") {
            Some("gzip") => gunzip(&res.body),
            _ => res.body.clone(),
        };
        assert_eq!(show(&plain), show(&f.expect.body));
        let got = up.take_received();
        assert_eq!(got.len(), 1);
        assert_eq!(show(&got[0].body), show(f.forwarded_body().unwrap()));
        assert_eq!(
            got[0].headers["content-length"],
            got[0].body.len().to_string().as_str()
        );
        assert!(got[0].headers.get("transfer-encoding").is_none());
        // The client's gzip is not the layer's: the answer is asked for plain.
        assert_eq!(got[0].headers["accept-encoding"], "identity");
    }
}

/// A Klarna request's hop-by-hop headers (`Connection` and what it names, `Keep-Alive`,
/// `TE`, `Trailer`, every `Proxy-*`) reach the payment API through neither adapter: the
/// Pingora adapter sends the injected request itself, and strips what the tower one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_klarna_requests_hop_by_hop_headers_stop_at_either_adapter() {
    let up = upstream::start().await;
    let (f, mut answer) = step_up_answer();
    answer.headers.extend(
        HOP_BY_HOP_ANSWER
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    up.set_answer(answer);
    let step_up = StepUp::from_toml("").unwrap();
    let tower = common::tower_proxy::start(step_up.clone(), up.addr).await;
    let pingora = pingora_step_up(step_up, up.addr, LIMIT);
    for (adapter, proxy) in [("tower", tower), ("pingora", pingora)] {
        let res = send_fixture(proxy, &f, HOP_BY_HOP_REQUEST).await;
        assert_eq!(res.status, 200, "{}", show(&res.body));
        assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
        let got = up.take_received();
        assert_eq!(got.len(), 1);
        assert_hop_by_hop_stopped(&got[0].headers, &res, adapter);
    }
}

/// The step_up_required request, padded to about `size` bytes with an extra field.
fn padded_klarna_request(size: usize) -> Vec<u8> {
    let f = fixtures::by_name("step_up_required");
    let pad = size.saturating_sub(f.body.len() + 20);
    let mut body = br#"{"padding":""#.to_vec();
    body.extend(std::iter::repeat_n(b'p', pad));
    body.extend_from_slice(b"\",");
    body.extend_from_slice(&f.body[1..]);
    body
}

fn expected_injection(step_up: &StepUp, body: &[u8]) -> Vec<u8> {
    let uri = "/payments".parse().unwrap();
    let mut h = http::HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    let Route::Candidate(c) = step_up.classify(&http::Method::POST, &uri, &h) else {
        panic!("not a candidate")
    };
    match step_up.rewrite_request(c, body, 1_800_000_000) {
        RequestVerdict::Injected { body, .. } => body,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70kb_klarna_request_takes_the_streaming_path() {
    let up = upstream::start().await;
    let (f, answer) = step_up_answer();
    up.set_answer(answer);
    let step_up = StepUp::from_toml("").unwrap();
    let proxy = pingora_step_up(step_up.clone(), up.addr, LIMIT);
    let body = padded_klarna_request(70 * 1024);
    assert!(body.len() > 64 * 1024);
    let want = expected_injection(&step_up, &body);
    for upload in [ReqBody::Length(&body), ReqBody::Chunked(&body, 8 * 1024)] {
        let res = raw_request(
            proxy,
            "POST",
            "/payments",
            &[("content-type", "application/json")],
            upload,
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200, "{}", show(&res.body));
        // The header left before the engine's verdict: it carries none.
        assert_eq!(res.header("x-klarna-stepup"), None);
        assert_eq!(show(&res.body), show(&f.expect.body));
        let got = up.take_received();
        assert_eq!(got.len(), 1);
        assert!(got[0].body == want, "streamed injection differs");
        assert_eq!(got[0].headers["transfer-encoding"], "chunked");
        assert!(got[0].headers.get("content-length").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70kb_klarna_request_with_a_bad_return_url_is_refused_on_the_streaming_path() {
    let up = upstream::start().await;
    let (_, answer) = step_up_answer();
    up.set_answer(answer);
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up.addr, LIMIT);
    let body = String::from_utf8(padded_klarna_request(70 * 1024))
        .unwrap()
        .replace(
            "https://partner.example/klarna/return",
            "javascript:alert(1)",
        );
    let res = raw_request(
        proxy,
        "POST",
        "/payments",
        &[("content-type", "application/json")],
        ReqBody::Length(body.as_bytes()),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 400, "{}", show(&res.body));
    assert_eq!(res.header("x-klarna-stepup"), Some("invalid_return_url"));
    assert!(show(&res.body).contains(r#""param":"klarna_return_url""#));
    // The upstream was contacted (streaming) but never got a complete request.
    for got in up.take_received() {
        assert!(
            got.body.len() < body.len(),
            "a complete request reached the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_70kb_klarna_request_gets_413_when_large_bodies_are_rejected() {
    let up = upstream::start().await;
    let inner = PaymentApi {
        upstream: up.addr,
        read_timeout: LIMIT,
    };
    let proxy = start_pingora(
        StepUpProxy::new(inner, StepUp::from_toml("").unwrap()).large_bodies(LargeBodies::Reject),
    );
    let body = padded_klarna_request(70 * 1024);
    for upload in [ReqBody::Length(&body), ReqBody::Chunked(&body, 8 * 1024)] {
        let res = raw_request(
            proxy,
            "POST",
            "/payments",
            &[("content-type", "application/json")],
            upload,
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 413);
        assert_eq!(res.header("x-klarna-stepup"), Some("body_too_large"));
    }
    assert!(up.take_received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_return_url_never_reaches_the_upstream() {
    let up = upstream::start().await;
    let f = fixtures::by_name("invalid_return_url");
    let proxy = pingora_step_up(StepUp::from_toml(&f.config).unwrap(), up.addr, LIMIT);
    let res = send_fixture(proxy, &f, &[("accept-encoding", "gzip")]).await;
    assert_eq!(res.status, 400);
    assert_eq!(res.header("x-klarna-stepup"), Some("invalid_return_url"));
    assert!(
        res.header("content-encoding").is_none(),
        "refusals are not compressed"
    );
    assert_eq!(show(&res.body), show(&f.expect.body));
    assert!(up.take_received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_before_the_upstream() {
    let up = upstream::start().await;
    let proxy = pingora_step_up(
        StepUp::from_toml("body_limit = 100").unwrap(),
        up.addr,
        LIMIT,
    );
    let body = padded_klarna_request(2000);
    let res = raw_request(
        proxy,
        "POST",
        "/payments",
        &[("content-type", "application/json")],
        ReqBody::Chunked(&body, 64),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 413);
    assert_eq!(res.body, Refusal::too_large(100).to_json());
    assert!(up.take_received().is_empty());
}

// ---------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_json() {
    let dead = free_addr();
    let f = fixtures::by_name("step_up_required");
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), dead, LIMIT);
    let started = std::time::Instant::now();
    let res = send_fixture(proxy, &f, &[]).await;
    assert_eq!(res.status, 502);
    assert_eq!(res.header("x-klarna-stepup"), Some("upstream_unreachable"));
    assert_eq!(res.body, Refusal::upstream_unreachable().to_json());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_that_is_not_http_gives_502_json_saying_so() {
    let up = upstream::start_raw(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let f = fixtures::by_name("step_up_required");
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up, LIMIT);
    let res = send_fixture(proxy, &f, &[]).await;
    assert_eq!(res.status, 502);
    assert_eq!(res.header("x-klarna-stepup"), Some("upstream_unreachable"));
    assert_eq!(res.body, Refusal::upstream_unreadable_answer().to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_too_slow_gives_504_json() {
    let up = upstream::start().await;
    let (f, mut answer) = step_up_answer();
    answer.delay = Some(Duration::from_millis(900));
    up.set_answer(answer);
    let proxy = pingora_step_up(
        StepUp::from_toml("").unwrap(),
        up.addr,
        Duration::from_millis(200),
    );
    let res = send_fixture(proxy, &f, &[]).await;
    assert_eq!(res.status, 504);
    assert_eq!(res.header("x-klarna-stepup"), Some("upstream_timeout"));
    assert_eq!(res.body, Refusal::upstream_timeout().to_json());
}

// ---------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_step_up_answer_is_rewritten_and_recompressed_for_the_client() {
    let up = upstream::start().await;
    let (f, mut answer) = step_up_answer();
    answer.body = gzip(&answer.body);
    answer
        .headers
        .push(("content-encoding".into(), "gzip".into()));
    up.set_answer(answer);
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up.addr, LIMIT);

    let res = send_fixture(proxy, &f, &[("accept-encoding", "gzip")]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
    assert_eq!(res.header("content-encoding"), Some("gzip"));
    assert!(res.header("etag").is_none());
    assert_eq!(show(&gunzip(&res.body)), show(&f.expect.body));
    let got = up.take_received();
    assert_eq!(got[0].headers["accept-encoding"], "identity");

    // A client that did not ask for gzip gets it plain.
    let res = send_fixture(proxy, &f, &[]).await;
    assert!(res.header("content-encoding").is_none());
    assert_eq!(show(&res.body), show(&f.expect.body));
    assert_eq!(res.header(MARKER_HEADER.as_str()), Some("rewritten"));
}

// ---------------------------------------------------------------------------------------
// A chunked echo upstream (tests/common/upstream.rs always answers with a length)
// ---------------------------------------------------------------------------------------

mod chunked {
    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;

    /// Echoes the request body back, chunked in 64 KiB frames, and reports the upload's
    /// framing in `x-upload-te` / `x-upload-cl`.
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
                            let te = req.headers().get("transfer-encoding").cloned();
                            let cl = req.headers().get("content-length").cloned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
                                .chunks(64 * 1024)
                                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                                .collect();
                            let mut res = hyper::Response::builder()
                                .header("content-type", "application/octet-stream");
                            if let Some(te) = te {
                                res = res.header("x-upload-te", te);
                            }
                            if let Some(cl) = cl {
                                res = res.header("x-upload-cl", cl);
                            }
                            Ok::<_, Infallible>(
                                res.body(StreamBody::new(futures_util::stream::iter(frames)))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn klarna_requests_keep_the_client_connection_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream::start().await;
    let (f, answer) = step_up_answer();
    up.set_answer(answer);
    let proxy = pingora_step_up(StepUp::from_toml("").unwrap(), up.addr, LIMIT);
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        f.body.len()
    );
    for i in 0..2 {
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&f.body).await.unwrap();
        // Read the head, then exactly Content-Length bytes: the rewritten answer is sent
        // whole, with its length (not chunked).
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let complete = |buf: &[u8]| {
            let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
            let (head, body) = text.split_once("\r\n\r\n")?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))?
                .trim()
                .parse()
                .ok()?;
            (body.len() >= len).then_some(())
        };
        while complete(&buf).is_none() {
            let n = tokio::time::timeout(LIMIT, s.read(&mut tmp))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "request {i}: connection closed after {}", show(&buf));
            buf.extend_from_slice(&tmp[..n]);
        }
        let text = show(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(!text.contains("transfer-encoding"), "request {i}: {text}");
        assert!(
            text.contains("connection: keep-alive"),
            "request {i}: {text}"
        );
        assert!(
            text.ends_with(&show(&f.expect.body).to_ascii_lowercase()),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_reaches_the_upstream_byte_identical_through_both_adapters() {
    // Without a partner reference, with the acquirer return on: the two things that used to
    // change between sends (a fresh UUID, an expiry to the second).
    let config = klarna_stepup::StepUpConfig::from_toml(
        r#"
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r1", env = "RETURN_KEY" }]
        "#,
    )
    .unwrap();
    let step_up = StepUp::with_secrets(config, |_| Some("k".repeat(32))).unwrap();
    let up = upstream::start().await;
    let (_, answer) = step_up_answer();
    up.set_answer(answer);
    let tower = common::tower_proxy::start(step_up.clone(), up.addr).await;
    let pingora = pingora_step_up(step_up, up.addr, LIMIT);
    let small = br#"{"payment_method":"klarna","amount":11800,"currency":"USD","return_url":"https://shop.example/done?id={klarna.payment_request.id}"}"#.to_vec();
    // Over 64 KiB: Pingora's streaming path.
    let mut large = small.clone();
    large.pop();
    large.extend_from_slice(br#","padding":""#);
    large.extend(std::iter::repeat_n(b'p', 70 * 1024));
    large.extend_from_slice(br#""}"#);

    common::return_webhook::clear_of_bucket_boundary(3600, 30).await;
    let mut first_seen = std::collections::HashMap::new();
    for (name, key) in [("keyed", Some("retry-me-1")), ("unkeyed", None)] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = key {
            headers.push(("Idempotency-Key", key));
        }
        for (proxy, adapter) in [(tower, "tower"), (pingora, "pingora")] {
            for body in [&small, &large] {
                let mut seen = Vec::new();
                for attempt in 0..2 {
                    if attempt == 1 {
                        // The clock moves on: a second later, the same request again.
                        tokio::time::sleep(Duration::from_millis(1100)).await;
                    }
                    let res = raw_request(
                        proxy,
                        "POST",
                        "/payments",
                        &headers,
                        ReqBody::Length(body),
                        LIMIT,
                    )
                    .await
                    .unwrap();
                    assert_eq!(res.status, 200, "{adapter} {name}: {}", show(&res.body));
                    let got = up.take_received();
                    assert_eq!(got.len(), 1);
                    seen.push(got[0].body.clone());
                }
                let n = body.len();
                assert!(
                    seen[0] == seen[1],
                    "{adapter} {name} ({n} bytes): a retry forwarded other bytes:\n{}\n{}",
                    show(&seen[0][..seen[0].len().min(600)]),
                    show(&seen[1][..seen[1].len().min(600)])
                );
                // And the same bytes whichever adapter forwarded them.
                let tower_bytes = first_seen
                    .entry((name, n))
                    .or_insert_with(|| seen[0].clone());
                assert!(
                    *tower_bytes == seen[0],
                    "{adapter} {name} ({n} bytes): adapters differ"
                );
                let text = show(&seen[0]);
                let prefix = if key.is_some() { "\"idem-" } else { "\"req-" };
                assert!(
                    text.contains(&format!("\"payment_request_reference\":{prefix}")),
                    "{adapter} {name}: {}",
                    &text[text.len().saturating_sub(600)..]
                );
            }
        }
    }
}
