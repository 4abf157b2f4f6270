//! `examples/hyper_proxy.rs`, compiled in and run over loopback: a Klarna payment is
//! rewritten for an HTTP/1.1 client and for an HTTP/2 (h2c) client alike, the payment API
//! reached in HTTP/1.1 both times.

use crate::common;

#[allow(dead_code)]
#[path = "../../examples/hyper_proxy.rs"]
mod hyper_proxy;

use std::time::Duration;

use bytes::Bytes;
use common::fixtures;
use common::raw_http::{raw_request, ReqBody};
use common::upstream::{self, Answer};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_serves_http1_and_h2c_end_to_end() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = tokio::spawn(hyper_proxy::serve(
        listener,
        up.addr.to_string(),
        Some(StepUp::from_toml(&f.config).unwrap()),
        async move {
            let _ = stopped.await;
        },
    ));

    // HTTP/1.1.
    let headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let res = raw_request(
        addr,
        "POST",
        "/payments",
        &headers,
        ReqBody::Length(&f.body),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
    assert_eq!(res.body, f.expect.body);
    let seen = up.take_received();
    assert_eq!(seen.len(), 1);

    // HTTP/2 with prior knowledge (h2c).
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}/payments"));
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::from(f.body.clone()))).unwrap();
    let res = tokio::time::timeout(LIMIT, send.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-klarna-stepup"], "rewritten");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, f.expect.body);
    let seen = up.take_received();
    assert_eq!(seen.len(), 1, "the payment API was reached");
    assert_eq!(seen[0].body, f.forwarded_body().unwrap());
    assert_eq!(seen[0].headers["host"], addr.to_string().as_str());

    let _ = stop.send(());
    tokio::time::timeout(LIMIT, proxy)
        .await
        .expect("stopped in time")
        .unwrap()
        .unwrap();
}

/// The example's forwarding: an answer in HTTP/1.0 goes out in the proxy's version, a
/// `101` nobody asked for is a 502, user information in an absolute target never reaches
/// the payment API's `Host`, and a `CONNECT` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_forwards_in_its_own_version_and_host() {
    let start = |upstream: std::net::SocketAddr| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(hyper_proxy::serve(
            listener,
            upstream.to_string(),
            Some(StepUp::from_toml("").unwrap()),
            std::future::pending(),
        ));
        addr
    };
    let exchange =
        |addr, request: &'static [u8]| common::raw_http::raw_exchange(addr, request, LIMIT);
    let get = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    let old = upstream::start_raw(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let answer = exchange(start(old).await, get).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    let switching = upstream::start_raw(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nraw",
    )
    .await;
    let answer = exchange(start(switching).await, get).await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");

    let up = upstream::start().await;
    let answer = exchange(
        start(up.addr).await,
        b"GET http://user:pw@api.example/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let seen = up.take_received();
    assert_eq!(seen[0].headers["host"], "api.example");

    // A `CONNECT`: refused, never forwarded.
    let answer = exchange(
        start(up.addr).await,
        b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(up.take_received().is_empty());
}
