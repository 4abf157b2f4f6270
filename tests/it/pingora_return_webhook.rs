//! The Pingora adapter's acquirer return and webhook relay over loopback: the same behaviour
//! as the tower adapter (tests/tower_return_webhook.rs).
#![cfg(feature = "pingora")]

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::pingora_proxy::PaymentApi;
use common::ports::free_addr;
use common::return_webhook::{minted_return_path, signature, step_up, COMPLETED};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

use common::raw_http::{raw_request, RawResponse, ReqBody};

const LIMIT: Duration = Duration::from_secs(10);

/// Pingora with `StepUpProxy` in front of `upstream`, on a free loopback port.
fn start_pingora(step_up: StepUp, upstream: SocketAddr) -> SocketAddr {
    let inner = PaymentApi {
        upstream,
        read_timeout: LIMIT,
    };
    common::pingora_proxy::start_pingora(StepUpProxy::new(inner, step_up))
}

/// Klarna's POST, with a forged relay header that must not survive.
async fn post_webhook(proxy: SocketAddr, path: &str, body: &[u8], sig: &str) -> RawResponse {
    raw_request(
        proxy,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Klarna-Signing-Key-Id", "a"),
            ("Klarna-Signature", sig),
            ("X-Klarna-Stepup-Token", "forged"),
        ],
        ReqBody::Length(body),
        LIMIT,
    )
    .await
    .unwrap()
}

fn assert_refusal(res: &RawResponse, status: u16, code: &str) {
    let text = String::from_utf8_lossy(&res.body);
    assert_eq!(res.status, status, "{text}");
    assert_eq!(res.header("x-klarna-stepup"), Some(code));
    assert!(text.contains(code), "{text}");
    assert_eq!(
        res.header("content-length"),
        Some(res.body.len().to_string().as_str()),
        "exact length"
    );
    assert!(res.header("location").is_none());
}

// ---------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_webhook_is_relayed_with_its_original_bytes_and_fields() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        body: b"ok".to_vec(),
        ..Answer::default()
    });
    let proxy = start_pingora(step_up(""), up.addr);
    let body = COMPLETED.as_bytes();
    let res = post_webhook(proxy, "/klarna/webhooks?q=1", body, &signature(body)).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("x-klarna-stepup"), Some("relayed"));
    assert_eq!(res.body, b"ok");
    let got = up.take_received();
    assert_eq!(got.len(), 1);
    let (r, h) = (&got[0], &got[0].headers);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/webhooks/klarna");
    assert_eq!(r.body, body, "original bytes relayed");
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    assert!(h.get("transfer-encoding").is_none());
    assert_eq!(h["x-klarna-stepup-verified"], "true");
    assert_eq!(h["x-klarna-stepup-event-id"], "e1");
    assert_eq!(
        h["x-klarna-stepup-event-type"],
        "payment.request.state-change.completed"
    );
    assert_eq!(
        h["x-klarna-stepup-payment-request-id"],
        "krn:payment:eu1:request:1"
    );
    assert_eq!(h["x-klarna-stepup-reference"], "order-1");
    assert_eq!(h["x-klarna-stepup-state"], "COMPLETED");
    assert_eq!(
        h["x-klarna-stepup-token"], "tok-1",
        "the forged header was replaced"
    );
    assert_eq!(h.get_all("x-klarna-stepup-token").iter().count(), 1);
    assert!(h.contains_key("klarna-signature"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_direct_relay_calls_never_reach_the_payment_api() {
    let up = upstream::start().await;
    let proxy = start_pingora(step_up(""), up.addr);
    let body = COMPLETED.as_bytes();
    let res = post_webhook(proxy, "/klarna/webhooks", body, &"00".repeat(32)).await;
    assert_refusal(&res, 400, "invalid_signature");
    // A tampered body under a signature of the original.
    let tampered = COMPLETED.replace("COMPLETED", "DECLINED");
    let res = post_webhook(
        proxy,
        "/klarna/webhooks",
        tampered.as_bytes(),
        &signature(body),
    )
    .await;
    assert_refusal(&res, 400, "invalid_signature");
    // The payment API's relay path, from outside, even signed and "verified".
    let res = raw_request(
        proxy,
        "POST",
        "/webhooks/klarna",
        &[
            ("X-Klarna-Stepup-Verified", "true"),
            ("Klarna-Signing-Key-Id", "a"),
            ("Klarna-Signature", &signature(body)),
        ],
        ReqBody::Length(body),
        LIMIT,
    )
    .await
    .unwrap();
    assert_refusal(&res, 404, "not_found");
    let res = raw_request(proxy, "GET", "/webhooks/klarna", &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_refusal(&res, 404, "not_found");
    // Over the body limit: 413 before anything is relayed.
    let big = vec![b' '; 64 * 1024 + 1];
    let res = post_webhook(proxy, "/klarna/webhooks", &big, &signature(&big)).await;
    assert_refusal(&res, 413, "body_too_large");
    assert!(up.take_received().is_empty(), "the payment API saw nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_api_that_does_not_accept_gets_klarna_to_retry() {
    let up = upstream::start().await;
    let proxy = start_pingora(step_up(""), up.addr);
    let body = COMPLETED.as_bytes();
    // A 500 without a body (its header ends the answer) and one with a body.
    for answer_body in [Vec::new(), b"{\"error\":\"db down\"}".to_vec()] {
        up.set_answer(Answer {
            status: 500,
            headers: vec![("content-type".into(), "application/json".into())],
            body: answer_body,
            delay: None,
        });
        let res = post_webhook(proxy, "/klarna/webhooks", body, &signature(body)).await;
        assert_refusal(&res, 503, "webhook_not_accepted");
        assert!(!String::from_utf8_lossy(&res.body).contains("db down"));
    }
    up.set_answer(Answer {
        status: 404,
        ..Answer::default()
    });
    let res = post_webhook(proxy, "/klarna/webhooks", body, &signature(body)).await;
    assert_refusal(&res, 503, "webhook_not_accepted");
    assert_eq!(up.take_received().len(), 3, "each was relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_api_down_gives_503_and_the_relay_works_once_it_is_back() {
    // Reserve a port, then free it: the payment API is down.
    let port = free_addr();
    let proxy = start_pingora(step_up(""), port);
    let body = COMPLETED.as_bytes();
    let res = post_webhook(proxy, "/klarna/webhooks", body, &signature(body)).await;
    assert_refusal(&res, 503, "webhook_not_accepted");
    // The payment API comes back on the same port; Klarna's retry goes through.
    let up = upstream::start_on(port).await;
    up.set_answer(Answer {
        status: 204,
        ..Answer::default()
    });
    let res = post_webhook(proxy, "/klarna/webhooks", body, &signature(body)).await;
    assert_eq!(res.status, 204);
    assert_eq!(res.header("x-klarna-stepup"), Some("relayed"));
    let got = up.take_received();
    assert_eq!(got[0].path, "/webhooks/klarna");
    assert_eq!(got[0].body, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_api_that_times_out_gets_klarna_to_retry() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        delay: Some(Duration::from_secs(5)),
        ..Answer::default()
    });
    let addr = free_addr();
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    // The same harness, with a short read timeout on the peer.
    struct Slow(SocketAddr);
    #[async_trait]
    impl ProxyHttp for Slow {
        type CTX = ();
        fn new_ctx(&self) {}
        async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
            let mut peer = HttpPeer::new(self.0, false, String::new());
            peer.options.read_timeout = Some(Duration::from_millis(300));
            Ok(Box::new(peer))
        }
    }
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(
        &server.configuration,
        StepUpProxy::new(Slow(up.addr), step_up("")),
    );
    svc.add_tcp(&addr.to_string());
    server.add_service(svc);
    std::thread::spawn(move || server.run_forever());
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let body = COMPLETED.as_bytes();
    let started = Instant::now();
    let res = post_webhook(addr, "/klarna/webhooks", body, &signature(body)).await;
    assert_refusal(&res, 503, "webhook_not_accepted");
    assert!(started.elapsed() < Duration::from_secs(4));
}

// ---------------------------------------------------------------------------------------
// Acquirer return
// ---------------------------------------------------------------------------------------

fn assert_redirect(res: &RawResponse, location: &str) {
    assert_eq!(res.status, 303, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("location"), Some(location));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(res.header("x-klarna-stepup"), Some("return"));
    assert!(res.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_redirects_and_a_forged_one_never_does() {
    let up = upstream::start().await;
    let engine = step_up("");
    let path = minted_return_path(
        &engine,
        "https://shop.example/done?s={klarna.payment_request.state}",
    )
    .unwrap();
    let proxy = start_pingora(engine, up.addr);
    for method in ["GET", "HEAD"] {
        let res = raw_request(proxy, method, &path, &[], ReqBody::None, LIMIT)
            .await
            .unwrap();
        assert_redirect(&res, "https://shop.example/done?s=COMPLETED");
    }
    let res = raw_request(
        proxy,
        "GET",
        "/klarna/return/Zm9yZ2Vk?state=COMPLETED",
        &[],
        ReqBody::None,
        LIMIT,
    )
    .await
    .unwrap();
    assert_refusal(&res, 400, "invalid_return_token");
    // A token cut short.
    let (token_path, query) = path.split_once('?').unwrap_or((&path, ""));
    let truncated = format!("{}?{query}", &token_path[..token_path.len() - 4]);
    let res = raw_request(proxy, "GET", &truncated, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_refusal(&res, 400, "invalid_return_token");
    assert!(
        up.take_received().is_empty(),
        "no notification configured, nothing upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_notifies_the_payment_api_without_waiting_past_the_timeout() {
    let up = upstream::start().await;
    // A slow payment API: the redirect must not wait for it beyond the timeout.
    up.set_answer(Answer {
        status: 200,
        delay: Some(Duration::from_secs(3)),
        ..Answer::default()
    });
    let engine = step_up("notify_path = \"/payments/klarna-return\"\nnotify_timeout_ms = 200");
    let path = minted_return_path(
        &engine,
        "https://shop.example/done?s={klarna.payment_request.state}",
    )
    .unwrap();
    let proxy = start_pingora(engine, up.addr);
    let started = Instant::now();
    let res = raw_request(proxy, "GET", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "redirect delayed {took:?}");
    // Not confirmed in time: the partner is told so, never the browser's claim.
    assert_redirect(&res, "https://shop.example/done?s=UNCONFIRMED");
    let got = up.take_received();
    assert_eq!(got.len(), 1, "one notification");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/payments/klarna-return");
    assert_eq!(got[0].headers["content-type"], "application/json");
    let note: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(note["payment_request_reference"], "order-9");
    assert_eq!(note["state"], "COMPLETED");
    common::return_webhook::assert_notification_signed(&got[0].headers, &got[0].body);

    // A fast payment API: the redirect carries the state it confirmed (the browser said
    // COMPLETED; the payment API's final authorize said otherwise).
    up.set_answer(Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"state":"DECLINED"}"#.to_vec(),
        delay: None,
    });
    let res = raw_request(proxy, "GET", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_redirect(&res, "https://shop.example/done?s=DECLINED");
    assert_eq!(up.take_received().len(), 1);
    // A 2xx without a state confirms nothing.
    up.set_answer(Answer {
        status: 204,
        ..Answer::default()
    });
    let res = raw_request(proxy, "GET", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_redirect(&res, "https://shop.example/done?s=UNCONFIRMED");
    assert_eq!(up.take_received().len(), 1);
    // A HEAD (a link preview) redirects and tells the payment API nothing.
    let res = raw_request(proxy, "HEAD", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_eq!(res.status, 303);
    assert!(up.take_received().is_empty(), "HEAD sends no notification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_return_redirects_even_when_the_payment_api_is_down() {
    let engine = step_up("notify_path = \"/payments/klarna-return\"\nnotify_timeout_ms = 200");
    let path = minted_return_path(
        &engine,
        "https://shop.example/done?s={klarna.payment_request.state}",
    )
    .unwrap();
    let proxy = start_pingora(engine, free_addr());
    let res = raw_request(proxy, "GET", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_redirect(&res, "https://shop.example/done?s=UNCONFIRMED");
}
