//! The tower adapter: the fixture table through `service_fn` + `oneshot`, and real sockets.
#![cfg(feature = "tower")]

use crate::common;

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::fixtures::{self, Fixture};
use common::upstream::{self, Answer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klarna_stepup::tower::{KlarnaStepUp, KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::StepUp;
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn request(f: &Fixture) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(f.method.as_str())
        .uri(f.path.as_str());
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    req.body(Full::new(Bytes::from(f.body.clone()))).unwrap()
}

fn answer(f: &Fixture) -> Response<Full<Bytes>> {
    let up = f.upstream.as_ref().expect("upstream");
    let mut res = Response::builder().status(up.status);
    for (k, v) in &up.headers {
        res = res.header(k, v);
    }
    res.body(Full::new(Bytes::from(up.body.clone()))).unwrap()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn every_fixture_through_the_layer() {
    for f in fixtures::all() {
        let step_up = StepUp::from_toml(&f.config).unwrap();
        let seen = Arc::new(Mutex::new(None));
        let inner = {
            let (seen, f) = (seen.clone(), f.clone());
            service_fn(move |req: Request<StepUpBody<Full<Bytes>>>| {
                let (seen, f) = (seen.clone(), f.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    *seen.lock().unwrap() = Some((parts.headers, body));
                    Ok::<_, Infallible>(answer(&f))
                }
            })
        };
        let res = ServiceBuilder::new()
            .layer(KlarnaStepUpLayer::new(step_up))
            .service(inner)
            .oneshot(request(&f))
            .await
            .unwrap();
        let seen = seen.lock().unwrap().take();
        match (f.forwarded_body(), seen) {
            (None, None) => {}
            (Some(want), Some((headers, got))) => {
                assert_eq!(show(&got), show(want), "{}: forwarded", f.name);
                if let Some(len) = headers.get("content-length") {
                    assert_eq!(len.to_str().unwrap(), got.len().to_string(), "{}", f.name);
                }
            }
            (want, got) => panic!("{}: forwarded {want:?}, upstream saw {got:?}", f.name),
        }
        assert_eq!(res.status().as_u16(), f.expect.status, "{}", f.name);
        let marker = res
            .headers()
            .get("x-klarna-stepup")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(marker, f.expect.marker, "{}: marker", f.name);
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            show(&body),
            show(&f.expect.body),
            "{}: partner body",
            f.name
        );
        if marker.as_deref() == Some("rewritten") {
            assert_eq!(
                headers["content-length"].to_str().unwrap(),
                body.len().to_string()
            );
            assert!(headers.get("etag").is_none(), "{}: stale etag kept", f.name);
        }
    }
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_never_reaches_the_service() {
    let step_up = StepUp::from_toml("body_limit = 64").unwrap();
    let called = Arc::new(Mutex::new(false));
    let flag = called.clone();
    let svc = KlarnaStepUp::new(
        service_fn(move |_req: Request<StepUpBody<Full<Bytes>>>| {
            *flag.lock().unwrap() = true;
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        }),
        step_up,
    );
    let body = format!(
        r#"{{"payment_method":"klarna","pad":"{}"}}"#,
        "x".repeat(100)
    );
    let req = Request::post("/payments")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(res.headers()["x-klarna-stepup"], "body_too_large");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(show(&body).contains(r#""code":"body_too_large""#));
    assert!(!*called.lock().unwrap());
}

#[tokio::test]
async fn non_candidates_stream_without_buffering() {
    // The inner service answers before the request body has ended: only possible if the
    // layer did not buffer it.
    let step_up = StepUp::from_toml("").unwrap();
    let svc = KlarnaStepUp::new(
        service_fn(|req: Request<StepUpBody<_>>| async move {
            let mut body = req.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            Ok::<_, Infallible>(Response::new(Full::new(first)))
        }),
        step_up,
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk"))))
        .await
        .unwrap();
    let body = StreamBody::new(tokio_stream(rx));
    let req = Request::put("/payments/1").body(body).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), svc.oneshot(req))
        .await
        .unwrap()
        .unwrap();
    assert!(res.headers().get("x-klarna-stepup").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first chunk");
    drop(tx);
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn send(
    addr: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().unwrap().as_str().to_owned();
    let mut req = Request::from_parts(parts, body);
    *req.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn over_real_sockets_a_gzip_step_up_answer_is_decoded_and_rewritten() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    let fu = f.upstream.clone().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&fu.body).unwrap();
    let mut headers = fu.headers.clone();
    headers.push(("content-encoding".into(), "gzip".into()));
    up.set_answer(Answer {
        status: 200,
        headers,
        body: gz.finish().unwrap(),
        delay: None,
    });
    let proxy = common::tower_proxy::start(StepUp::from_toml(&f.config).unwrap(), up.addr).await;
    let mut req = request(&f);
    req.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    let (parts, body) = send(proxy, req).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-klarna-stepup"], "rewritten");
    assert!(parts.headers.get("content-encoding").is_none());
    assert_eq!(show(&body), show(&f.expect.body));
    let got = up.take_received();
    assert_eq!(got.len(), 1);
    assert_eq!(show(&got[0].body), show(f.forwarded_body().unwrap()));
    assert_eq!(
        got[0].headers["content-length"],
        got[0].body.len().to_string().as_str()
    );
    assert_eq!(got[0].headers["accept-encoding"], "identity");
}

#[tokio::test]
async fn over_real_sockets_non_klarna_traffic_is_byte_identical() {
    let up = upstream::start().await;
    let big: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    up.set_answer(Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/octet-stream".into()),
            ("etag".into(), "\"x\"".into()),
        ],
        body: big.clone(),
        delay: None,
    });
    let proxy = common::tower_proxy::start(StepUp::from_toml("").unwrap(), up.addr).await;
    let req = Request::post("/files")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let (parts, body) = send(proxy, req).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("x-klarna-stepup").is_none());
    assert_eq!(parts.headers["etag"], "\"x\"");
    assert!(body == big, "response body changed");
    assert!(up.take_received()[0].body == big, "request body changed");
}

/// Issue 13 point 3: past the process-wide buffer budget, a new candidate gets 503
/// `overloaded` with `Retry-After`; a candidate admitted before goes on.
#[tokio::test]
async fn candidates_past_the_buffer_budget_get_503_and_admitted_ones_go_on() {
    let f = fixtures::by_name("step_up_required");
    let step_up = StepUp::from_toml(&f.config).unwrap();
    // A candidate is charged the bytes it holds, as they come.
    let budget = klarna_stepup::BufferBudget::new(f.body.len() + 10);
    let held = budget.admit(20).unwrap(); // another request holds a little
    let inner = {
        let f = f.clone();
        service_fn(move |req: Request<StepUpBody<Full<Bytes>>>| {
            let f = f.clone();
            async move {
                let _ = req.into_body().collect().await.unwrap();
                Ok::<_, Infallible>(answer(&f))
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(KlarnaStepUpLayer::new(step_up).buffer_budget(budget.clone()))
        .service(inner);
    let res = svc.clone().oneshot(request(&f)).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["x-klarna-stepup"], "overloaded");
    drop(held);
    let res = svc.oneshot(request(&f)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-klarna-stepup"], "rewritten");
    assert_eq!(budget.used(), 0, "the budget is given back");
}
