//! The tower adapter's acquirer return and webhook relay, in-process and over loopback.
#![cfg(feature = "tower")]

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::return_webhook::{minted_return_path, signature, step_up, COMPLETED};
use common::upstream::{self, Answer};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klarna_stepup::tower::{KlarnaStepUp, StepUpBody};
use tower::{service_fn, ServiceExt};

fn signed_webhook(body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/klarna/webhooks")
        .header("content-type", "application/json")
        .header("klarna-signing-key-id", "a")
        .header("klarna-signature", signature(body.as_bytes()))
        .header("x-klarna-stepup-token", "forged")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

type Seen = Arc<Mutex<Vec<(String, http::HeaderMap, Bytes)>>>;

/// A payment API that records what it gets and answers `status`.
fn payment_api(
    seen: Seen,
    status: u16,
    delay: Duration,
) -> impl tower::Service<
    Request<StepUpBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    payment_api_answering(seen, status, delay, b"ok")
}

/// [`payment_api`] answering `answer`.
fn payment_api_answering(
    seen: Seen,
    status: u16,
    delay: Duration,
    answer: &'static [u8],
) -> impl tower::Service<
    Request<StepUpBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<StepUpBody<Full<Bytes>>>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            seen.lock()
                .unwrap()
                .push((parts.uri.path().to_owned(), parts.headers, body));
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(answer)))
                    .unwrap(),
            )
        }
    })
}

#[tokio::test]
async fn a_verified_webhook_is_relayed_with_its_fields() {
    let seen = Seen::default();
    let svc = KlarnaStepUp::new(payment_api(seen.clone(), 200, Duration::ZERO), step_up(""));
    let res = svc.oneshot(signed_webhook(COMPLETED)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-klarna-stepup"], "relayed");
    let seen = seen.lock().unwrap();
    let (path, h, body) = &seen[0];
    assert_eq!(path, "/webhooks/klarna");
    assert_eq!(&body[..], COMPLETED.as_bytes(), "original bytes relayed");
    assert_eq!(h["x-klarna-stepup-verified"], "true");
    assert_eq!(
        h["x-klarna-stepup-event-type"],
        "payment.request.state-change.completed"
    );
    assert_eq!(h["x-klarna-stepup-reference"], "order-1");
    assert_eq!(h["x-klarna-stepup-state"], "COMPLETED");
    assert_eq!(
        h["x-klarna-stepup-token"], "tok-1",
        "the forged header was replaced"
    );
    assert_eq!(h.get_all("x-klarna-stepup-token").iter().count(), 1);
}

#[tokio::test]
async fn bad_signatures_and_direct_relay_calls_never_reach_the_payment_api() {
    let seen = Seen::default();
    let svc = KlarnaStepUp::new(payment_api(seen.clone(), 200, Duration::ZERO), step_up(""));
    let mut forged = signed_webhook(COMPLETED);
    forged
        .headers_mut()
        .insert("klarna-signature", "00".repeat(32).parse().unwrap());
    let res = svc.clone().oneshot(forged).await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-klarna-stepup"], "invalid_signature");
    let direct = Request::post("/webhooks/klarna")
        .header("x-klarna-stepup-verified", "true")
        .body(Full::new(Bytes::from_static(COMPLETED.as_bytes())))
        .unwrap();
    let res = svc.oneshot(direct).await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_payment_api_that_does_not_accept_gets_klarna_to_retry() {
    let svc = KlarnaStepUp::new(
        payment_api(Seen::default(), 500, Duration::ZERO),
        step_up(""),
    );
    let res = svc.oneshot(signed_webhook(COMPLETED)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("webhook_not_accepted"));
}

async fn post(addr: std::net::SocketAddr, req: Request<Full<Bytes>>) -> StatusCode {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri.path())
        .parse()
        .unwrap();
    client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn payment_api_down_gives_503_and_the_relay_works_once_it_is_back() {
    // Reserve a port, then free it: the payment API is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = common::tower_proxy::start(step_up(""), port).await;
    assert_eq!(
        post(proxy, signed_webhook(COMPLETED)).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The payment API comes back on the same port; Klarna's retry goes through.
    let up = upstream::start_on(port).await;
    up.set_answer(Answer {
        status: 204,
        ..Answer::default()
    });
    assert_eq!(
        post(proxy, signed_webhook(COMPLETED)).await,
        StatusCode::NO_CONTENT
    );
    let got = up.take_received();
    assert_eq!(got[0].path, "/webhooks/klarna");
    assert_eq!(got[0].body, COMPLETED.as_bytes());
}

#[tokio::test]
async fn the_return_redirects_and_notifies_within_the_timeout() {
    let seen = Seen::default();
    let engine = step_up("notify_path = \"/payments/klarna-return\"\nnotify_timeout_ms = 200");
    // Mint a token the way a payment creation does.
    let Some(uri) = minted_return_path(
        &engine,
        "https://shop.example/done?s={klarna.payment_request.state}",
    ) else {
        panic!()
    };
    // A slow payment API: the redirect must not wait for it beyond the timeout.
    let svc = KlarnaStepUp::new(
        payment_api(seen.clone(), 200, Duration::from_secs(3)),
        engine,
    );
    let started = Instant::now();
    let res = svc
        .oneshot(
            Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "redirect delayed {:?}",
        started.elapsed()
    );
    assert_eq!(res.status(), 303);
    // Not confirmed in time: the partner is told so, never the browser's claim.
    assert_eq!(
        res.headers()["location"],
        "https://shop.example/done?s=UNCONFIRMED"
    );
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "/payments/klarna-return");
        let note: serde_json::Value = serde_json::from_slice(&seen[0].2).unwrap();
        assert_eq!(note["payment_request_reference"], "order-9");
        assert_eq!(note["state"], "COMPLETED");
        common::return_webhook::assert_notification_signed(&seen[0].1, &seen[0].2);
    }

    // A payment API that answers in time: its state is the partner's, and a HEAD of the
    // link tells it nothing.
    let confirming = payment_api_answering(
        seen.clone(),
        200,
        Duration::ZERO,
        br#"{"state":"DECLINED","order":"9"}"#,
    );
    let engine = step_up("notify_path = \"/payments/klarna-return\"\nnotify_timeout_ms = 2000");
    let svc = KlarnaStepUp::new(confirming, engine);
    seen.lock().unwrap().clear();
    let res = svc
        .clone()
        .oneshot(
            Request::get(uri.clone())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        res.headers()["location"],
        "https://shop.example/done?s=DECLINED"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let res = svc
        .oneshot(Request::head(uri).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(seen.lock().unwrap().len(), 1, "HEAD sends no notification");
}

#[tokio::test]
async fn a_forged_return_is_400_and_never_redirects() {
    let svc = KlarnaStepUp::new(
        payment_api(Seen::default(), 200, Duration::ZERO),
        step_up(""),
    );
    let res = svc
        .oneshot(
            Request::get("/klarna/return/Zm9yZ2Vk?state=COMPLETED")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.headers().get("location").is_none());
}

#[tokio::test]
async fn a_payment_api_that_hangs_gets_klarna_a_503_within_the_relay_timeout() {
    let toml = r#"
        [webhooks]
        enabled = true
        keys = [{ id = "a", env = "WH" }]
        relay_timeout_ms = 200
    "#;
    let step_up = klarna_stepup::StepUp::with_secrets(
        klarna_stepup::StepUpConfig::from_toml(toml).unwrap(),
        |_| Some(common::return_webhook::WEBHOOK_KEY.into()),
    )
    .unwrap();
    let seen = Seen::default();
    let svc = KlarnaStepUp::new(
        payment_api(seen.clone(), 200, Duration::from_secs(30)),
        step_up,
    );
    let started = Instant::now();
    let res = svc.oneshot(signed_webhook(COMPLETED)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("webhook_not_accepted"));
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "it was relayed, then abandoned"
    );
}
