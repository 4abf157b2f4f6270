//! Issue 13 point 8: the tower path as a real proxy (tests/common/tower_proxy.rs, the shape
//! of examples/hyper_proxy.rs): JSON 502/504 on upstream failures, hop-by-hop headers
//! stripped both ways, graceful shutdown that finishes in-flight requests. Loopback only.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw_http::{
    assert_hop_by_hop_stopped, raw_request, ReqBody, HOP_BY_HOP_ANSWER, HOP_BY_HOP_REQUEST,
};
use common::tower_proxy::{serve_until, Timeouts};
use common::upstream::{self, Answer};
use klarna_stepup::StepUp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

async fn proxy(
    upstream: SocketAddr,
    timeouts: Timeouts,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = serve_until(
        StepUp::from_toml("").unwrap(),
        listener,
        upstream,
        timeouts,
        async move {
            let _ = stopped.await;
        },
    );
    (addr, stop, task)
}

/// One kept-alive request (no `Connection: close`); the raw answer and whether the proxy
/// then closed the connection.
async fn keep_alive_exchange(addr: SocketAddr, path: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&buf).into_owned(), closed)
}

#[tokio::test]
async fn upstream_unreachable_and_slow_get_json_502_and_504_and_close() {
    // Nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    // Accepts and never answers.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            conns.push(s);
            if conns.len() > 8 {
                break;
            }
        }
    });
    let timeouts = Timeouts {
        read: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let (a, _stop_a, _) = proxy(dead, timeouts).await;
    let (b, _stop_b, _) = proxy(mute_addr, timeouts).await;

    let (r, closed) = keep_alive_exchange(a, "/orders").await;
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains(r#""code":"upstream_unreachable""#), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(closed, "502 kept alive");

    let started = Instant::now();
    let (r, closed) = keep_alive_exchange(b, "/orders").await;
    assert!(r.starts_with("HTTP/1.1 504"), "{r}");
    assert!(r.contains(r#""code":"upstream_timeout""#), "{r}");
    assert!(closed, "504 kept alive");
    assert!(started.elapsed() < Duration::from_secs(3));
    held.abort();
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let up = upstream::start().await;
    let mut headers = vec![("content-type".into(), "application/json".into())];
    headers.extend(
        HOP_BY_HOP_ANSWER
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    up.set_answer(Answer {
        status: 200,
        headers,
        body: br#"{"ok":true}"#.to_vec(),
        delay: None,
    });
    let (addr, _stop, _) = proxy(up.addr, Timeouts::default()).await;
    let r = raw_request(
        addr,
        "GET",
        "/orders",
        HOP_BY_HOP_REQUEST,
        ReqBody::None,
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let received = up.take_received();
    assert_eq!(received.len(), 1);
    assert_hop_by_hop_stopped(&received[0].headers, &r, "the tower layer");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"ok":true}"#.to_vec(),
        delay: Some(Duration::from_millis(500)),
    });
    let (addr, stop, task) = proxy(up.addr, Timeouts::default()).await;
    let in_flight = tokio::spawn(raw_request(
        addr,
        "GET",
        "/orders",
        &[],
        ReqBody::None,
        LIMIT,
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.send(()).unwrap();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, br#"{"ok":true}"#);
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}
