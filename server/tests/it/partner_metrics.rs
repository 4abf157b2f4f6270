//! With `[partners]` on, the proxy's request and refusal counters carry a `partner` label:
//! the configured ids, `other` for a partner without an entry, `none` for no partner. A
//! refused request counts for the partner it named.

use crate::common::blocking::{exchange, wait_listening};
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{free_addr, serve_with, stop_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_refusal_counters_are_labelled_by_partner() {
    let up = upstream::start().await;
    up.set_answer(Answer::of(&fixtures::by_name("step_up_required")));
    let metrics = free_addr();
    let (mut child, listen) = serve_with(
        &format!(
            "metrics = \"{metrics}\"\n[partners]\nheader = \"X-Partner-Id\"\nunknown = \"global\"\n\
             [[partners.entries]]\nid = \"shop-a\"\nallowed_hosts = [\"a.example\"]\n"
        ),
        up.addr,
    );
    wait_listening(metrics);
    let page = tokio::task::spawn_blocking(move || {
        let post = |partner: &str, url: &str| {
            let body = format!(r#"{{"payment_method":"klarna","return_url":"{url}"}}"#);
            exchange(
                listen,
                &format!(
                    "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nX-Partner-Id: {partner}\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                ),
                body.as_bytes(),
            )
        };
        assert!(post("shop-a", "https://a.example/r").starts_with("HTTP/1.1 200"));
        // shop-a's policy refuses another host: counted for shop-a.
        assert!(post("shop-a", "https://evil.example/r").starts_with("HTTP/1.1 400"));
        // A partner without an entry (served with the global policy): one label for all.
        assert!(post("shop-zz", "https://b.example/r").starts_with("HTTP/1.1 200"));
        exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap();
    for line in [
        "klarna_stepup_requests_total{outcome=\"rewritten\",partner=\"shop-a\"} 1",
        "klarna_stepup_requests_total{outcome=\"refused\",partner=\"shop-a\"} 1",
        "klarna_stepup_refusals_total{code=\"invalid_return_url\",partner=\"shop-a\"} 1",
        "klarna_stepup_requests_total{outcome=\"rewritten\",partner=\"other\"} 1",
    ] {
        assert!(page.contains(line), "{line} missing in:\n{page}");
    }
    assert!(!page.contains("shop-zz"), "{page}");
    stop_ok(&mut child, "-TERM");
}

/// A partner in `shadow` mode: what step-up would have done is counted apart, and the
/// request reaches the payment API untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_in_shadow_mode_is_counted_apart() {
    let up = upstream::start().await;
    up.set_answer(Answer::of(&fixtures::by_name("step_up_required")));
    let metrics = free_addr();
    let (mut child, listen) = serve_with(
        &format!(
            "metrics = \"{metrics}\"\n[partners]\nheader = \"X-Partner-Id\"\nunknown = \"global\"\n\
             [[partners.entries]]\nid = \"shop-a\"\nallowed_hosts = [\"a.example\"]\n\
             mode = \"shadow\"\n"
        ),
        up.addr,
    );
    wait_listening(metrics);
    let body = r#"{"payment_method":"klarna","return_url":"https://evil.example/r"}"#;
    let page = tokio::task::spawn_blocking(move || {
        let answer = exchange(
            listen,
            &format!(
                "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nX-Partner-Id: shop-a\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            ),
            body.as_bytes(),
        );
        // Enforced, shop-a's policy would refuse the host: in shadow the payment API answers.
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(!answer.contains("x-klarna-stepup"), "{answer}");
        exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap();
    assert!(up.take_received()[0].body == body.as_bytes(), "untouched");
    for line in [
        "klarna_stepup_shadow_requests_total{outcome=\"refused\",partner=\"shop-a\"} 1",
        "klarna_stepup_shadow_refusals_total{code=\"invalid_return_url\",partner=\"shop-a\"} 1",
    ] {
        assert!(page.contains(line), "{line} missing in:\n{page}");
    }
    assert!(
        !page.contains("klarna_stepup_requests_total{outcome=\"refused\""),
        "{page}"
    );
    stop_ok(&mut child, "-TERM");
}
