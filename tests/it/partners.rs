//! Many partners behind one acquirer (`[partners]`), over loopback through both adapters:
//! two partners sending the same `reference` get distinct references upstream and each its
//! own allow-list; a return token minted for one partner redirects and names it in the
//! notification; a relayed webhook names the partner of its namespaced reference.
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pingora_proxy::PaymentApi;
use common::raw_http::{raw_request, RawResponse, ReqBody};
use common::return_webhook::{signature, RETURN_KEY, WEBHOOK_KEY};
use common::upstream::{self, Answer, Upstream};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::{StepUp, StepUpConfig};

const LIMIT: Duration = Duration::from_secs(10);

fn step_up() -> StepUp {
    let toml = r#"
        [partners]
        header = "X-Partner-Id"
        [[partners.entries]]
        id = "shop-a"
        allowed_hosts = ["a.example"]
        [[partners.entries]]
        id = "shop-b"
        allowed_hosts = ["b.example"]
        [webhooks]
        enabled = true
        keys = [{ id = "a", env = "WH" }]
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r1", env = "RET" }]
        notify_path = "/klarna/returned"
    "#;
    StepUp::with_secrets(StepUpConfig::from_toml(toml).unwrap(), |n| match n {
        "WH" => Some(WEBHOOK_KEY.into()),
        "RET" => Some(RETURN_KEY.into()),
        _ => None,
    })
    .unwrap()
}

async fn pay(proxy: SocketAddr, partner: &str, return_url: &str) -> RawResponse {
    let body = format!(
        r#"{{"payment_method":"klarna","reference":"order-1","return_url":"{return_url}"}}"#
    );
    raw_request(
        proxy,
        "POST",
        "/payments",
        &[
            ("Content-Type", "application/json"),
            ("X-Partner-Id", partner),
        ],
        ReqBody::Length(body.as_bytes()),
        LIMIT,
    )
    .await
    .unwrap()
}

/// The whole story against one proxy in front of `up`.
async fn two_partners(proxy: SocketAddr, up: &Upstream, adapter: &str) {
    up.set_answer(Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: b"{}".to_vec(),
        delay: None,
    });
    // The same reference from two partners: distinct references upstream.
    let mut sent = Vec::new();
    for (partner, url) in [
        ("shop-a", "https://a.example/done"),
        ("shop-b", "https://b.example/done"),
    ] {
        let res = pay(proxy, partner, url).await;
        assert_eq!(res.status, 200, "{adapter} {partner}");
        let got = up.take_received();
        assert_eq!(got.len(), 1, "{adapter}");
        let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
        assert_eq!(
            v["step_up_config"]["payment_request_reference"],
            format!("{partner}:order-1"),
            "{adapter}"
        );
        sent.push(v);
    }
    // Each its own allow-list: the other partner's host is refused, nothing upstream.
    for (partner, url) in [
        ("shop-a", "https://b.example/done"),
        ("shop-b", "https://a.example/done"),
    ] {
        let res = pay(proxy, partner, url).await;
        assert_eq!(res.status, 400, "{adapter} {partner}");
        assert_eq!(res.header("x-klarna-stepup"), Some("invalid_return_url"));
        assert!(up.take_received().is_empty(), "{adapter}");
    }
    // An unknown partner and a missing one.
    let res = pay(proxy, "shop-z", "https://a.example/done").await;
    assert_eq!(
        (res.status, res.header("x-klarna-stepup")),
        (403, Some("unknown_partner")),
        "{adapter}"
    );
    let res = raw_request(
        proxy,
        "POST",
        "/payments",
        &[("Content-Type", "application/json")],
        ReqBody::Length(br#"{"payment_method":"klarna","return_url":"https://a.example/r"}"#),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(
        (res.status, res.header("x-klarna-stepup")),
        (400, Some("invalid_partner")),
        "{adapter}"
    );
    assert!(up.take_received().is_empty(), "{adapter}");

    // The return of shop-a's payment: 303 to its URL, the notification names shop-a.
    let url = sent[0]["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .unwrap();
    let path = url
        .trim_start_matches("https://pay.acquirer.example")
        .replace("{klarna.payment_request.id}", "pr-1")
        .replace("{klarna.payment_request.state}", "COMPLETED");
    let res = raw_request(proxy, "GET", &path, &[], ReqBody::None, LIMIT)
        .await
        .unwrap();
    assert_eq!(res.status, 303, "{adapter}");
    assert_eq!(res.header("location"), Some("https://a.example/done"));
    let got = up.take_received();
    assert_eq!(got.len(), 1, "{adapter}: one notification");
    assert_eq!(got[0].path, "/klarna/returned");
    let note: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(note["partner"], "shop-a", "{adapter}");
    assert_eq!(note["payment_request_reference"], "shop-a:order-1");

    // A webhook for shop-b's payment: relayed naming shop-b, a forged header replaced.
    let hook = br#"{"metadata":{"event_id":"e1","event_type":"payment.request.state-change.completed"},"payload":{"payment_request_id":"pr-2","payment_request_reference":"shop-b:order-1","state":"COMPLETED","klarna_network_session_token":"tok"}}"#;
    let sig = signature(hook);
    let res = raw_request(
        proxy,
        "POST",
        "/klarna/webhooks",
        &[
            ("Content-Type", "application/json"),
            ("Klarna-Signing-Key-Id", "a"),
            ("Klarna-Signature", &sig),
            ("X-Klarna-Stepup-Partner", "shop-a"),
        ],
        ReqBody::Length(hook),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{adapter}");
    let got = up.take_received();
    assert_eq!(got.len(), 1, "{adapter}");
    let partners: Vec<_> = got[0]
        .headers
        .get_all("x-klarna-stepup-partner")
        .iter()
        .collect();
    assert_eq!(partners, ["shop-b"], "{adapter}");

    // A forged partner header on any other request never reaches the payment API.
    let res = raw_request(
        proxy,
        "GET",
        "/orders",
        &[("X-Klarna-Stepup-Partner", "shop-a")],
        ReqBody::None,
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{adapter}");
    let got = up.take_received();
    assert!(got[0].headers.get("x-klarna-stepup-partner").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partners_through_the_tower_adapter() {
    let up = upstream::start().await;
    let proxy = common::tower_proxy::start(step_up(), up.addr).await;
    two_partners(proxy, &up, "tower").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_partners_through_the_pingora_adapter() {
    let up = upstream::start().await;
    let inner = PaymentApi {
        upstream: up.addr,
        read_timeout: LIMIT,
    };
    let proxy = common::pingora_proxy::start_pingora(StepUpProxy::new(inner, step_up()));
    two_partners(proxy, &up, "pingora").await;
}
