//! `[trace_context] propagate`: the W3C trace of a request step-up acts on goes on to the
//! payment API with step-up's own span as its parent, through the tower layer and Pingora
//! over loopback; the span's ids are in the `Record`; a request step-up does not act on, and
//! every request in `shadow` mode, keeps its headers as they came.
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures;
use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::{raw_request, ReqBody};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);
const PARTNER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const KLARNA: &[u8] = br#"{"payment_method":"klarna","return_url":"https://shop.example/done"}"#;

fn step_up(mode: &str) -> StepUp {
    StepUp::from_toml(&format!(
        "mode = \"{mode}\"\n[trace_context]\npropagate = true\n[return_url_policy]\nallowed_hosts = [\"shop.example\"]\n"
    ))
    .unwrap()
}

/// Both adapters in front of one recording upstream.
async fn proxies(step_up: StepUp, up: SocketAddr) -> [(&'static str, SocketAddr); 2] {
    let tower = common::tower_proxy::start(step_up.clone(), up).await;
    let pingora = start_pingora(StepUpProxy::new(
        PaymentApi {
            upstream: up,
            read_timeout: LIMIT,
        },
        step_up,
    ));
    [("tower", tower), ("pingora", pingora)]
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = if body.is_empty() {
        ReqBody::None
    } else {
        ReqBody::Length(body)
    };
    let res = raw_request(addr, method, path, &all, body, LIMIT)
        .await
        .unwrap();
    assert!((200..300).contains(&res.status), "{}", res.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partners_trace_goes_on_with_step_ups_span() {
    let up = upstream::start().await;
    up.set_answer(Answer::of(&fixtures::by_name("step_up_required")));
    for (name, proxy) in proxies(step_up("enforce"), up.addr).await {
        // Continued: the partner's trace and flags, step-up's span; tracestate kept.
        send(
            proxy,
            "POST",
            "/payments",
            &[("traceparent", PARTNER), ("tracestate", "a=1")],
            KLARNA,
        )
        .await;
        // Started: a new trace, and the tracestate of the broken one dropped.
        send(
            proxy,
            "POST",
            "/payments",
            &[("traceparent", "00-bad"), ("tracestate", "a=1")],
            KLARNA,
        )
        .await;
        // Not step-up's: as it came.
        send(proxy, "GET", "/health", &[("traceparent", PARTNER)], b"").await;
        let got = up.take_received();
        assert_eq!(got.len(), 3, "{name}");
        let header = |i: usize, h: &str| {
            got[i]
                .headers
                .get(h)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let continued = header(0, "traceparent").unwrap();
        assert!(
            continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{name}: {continued}"
        );
        assert!(
            continued.ends_with("-01") && !continued.contains("00f067aa0ba902b7"),
            "{name}: {continued}"
        );
        assert_eq!(header(0, "tracestate").as_deref(), Some("a=1"), "{name}");
        let started = header(1, "traceparent").unwrap();
        assert_eq!(started.len(), 55, "{name}: {started}");
        assert!(
            !started.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
            "{name}"
        );
        assert_eq!(header(1, "tracestate"), None, "{name}");
        assert_eq!(header(2, "traceparent").as_deref(), Some(PARTNER), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_changes_no_header() {
    let up = upstream::start().await;
    up.set_answer(Answer::of(&fixtures::by_name("step_up_required")));
    for (name, proxy) in proxies(step_up("shadow"), up.addr).await {
        send(
            proxy,
            "POST",
            "/payments",
            &[("traceparent", PARTNER)],
            KLARNA,
        )
        .await;
        send(proxy, "POST", "/payments", &[], KLARNA).await;
        let got = up.take_received();
        assert_eq!(
            got[0].headers.get("traceparent").unwrap(),
            PARTNER,
            "{name}"
        );
        assert!(got[1].headers.get("traceparent").is_none(), "{name}");
    }
}

#[test]
fn the_record_carries_the_span_ids() {
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use klarna_stepup::driver::{Action, Driver, Holding};
    let s = step_up("enforce");
    let mut head = HeaderMap::new();
    head.insert("content-type", "application/json".parse().unwrap());
    head.insert("traceparent", PARTNER.parse().unwrap());
    let uri = "/payments".parse().unwrap();
    let mut d = Driver::start(&s, &Method::POST, Some(&uri), &mut head).unwrap();
    assert!(matches!(
        d.begin(&Default::default(), Holding::Whole),
        Action::ReadBody { .. }
    ));
    assert!(matches!(
        d.on_request_body(Bytes::from_static(KLARNA), true),
        Action::Forward(_)
    ));
    d.upstream_request_head(&mut head);
    let record = d.finish(Some(200), None);
    let t = record.trace().expect("a trace context");
    assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(t.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
    assert_eq!(
        head.get("traceparent").unwrap().to_str().unwrap(),
        format!("00-{}-{}-01", t.trace_id(), t.span_id())
    );
}
