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
