//! Issue 13's attacks replayed over loopback through both adapters (the tower layer in a
//! hyper proxy, and Pingora's `StepUpProxy`): what the client gets, and what reaches the
//! payment API (nothing, for every refusal).
//!
//! Points 1 (no unvalidated `step_up_config` or return URL reaches the payment API), 2
//! (relay headers cannot be forged; every spelling of the relay path is 404) and 5 (what
//! reaches partners: an ASCII `Location`, webhooks with duplicate keys refused).
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::{raw_request, RawResponse, ReqBody};
use common::return_webhook::{minted_return_path, signature, step_up};
use common::upstream::{self, Answer, Upstream};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);

/// A hostile `step_up_config`: what a lenient payment API behind the layer would read.
const HOSTILE: &str =
    r#""step_up_config":{"customer_interaction_config":{"return_url":"javascript:alert(1)"}}"#;

/// (what, path, headers, body, expected status, expected code)
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
    &'a str,
);

struct Proxies {
    up: Upstream,
    /// (adapter name, address)
    all: Vec<(&'static str, SocketAddr)>,
}

async fn proxies(engine: StepUp) -> Proxies {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"ok":true}"#.to_vec(),
        delay: None,
    });
    let tower = common::tower_proxy::start(engine.clone(), up.addr).await;
    let pingora = start_pingora(StepUpProxy::new(
        PaymentApi {
            upstream: up.addr,
            read_timeout: LIMIT,
        },
        engine,
    ));
    Proxies {
        up,
        all: vec![("tower", tower), ("pingora", pingora)],
    }
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    raw_request(addr, method, path, headers, ReqBody::Length(body), LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn code(res: &RawResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&res.body)
        .unwrap_or_else(|_| panic!("JSON error body: {:?}", String::from_utf8_lossy(&res.body)));
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Sends each case through both adapters: `(status, code)` expected, and nothing upstream.
async fn refused_everywhere(p: &Proxies, cases: &[Case<'_>]) {
    for (adapter, addr) in &p.all {
        for (what, path, headers, body, status, want) in cases {
            p.up.take_received();
            let res = send(*addr, "POST", path, headers, body).await;
            eprintln!(
                "{adapter:7} {what:40} -> {} {}",
                res.status,
                res.header("x-klarna-stepup").unwrap_or("-")
            );
            assert_eq!(res.status, *status, "{adapter}: {what}");
            assert_eq!(code(&res), *want, "{adapter}: {what}");
            assert_eq!(
                res.header("x-klarna-stepup"),
                Some(*want),
                "{adapter}: {what}"
            );
            let seen = p.up.take_received();
            assert!(
                seen.is_empty(),
                "{adapter}: {what}: reached the payment API"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_1_no_unvalidated_step_up_config_reaches_the_payment_api() {
    let p = proxies(step_up("")).await;
    let json = [("content-type", "application/json")];
    let klarna = format!(r#"{{"payment_method":"klarna",{HOSTILE}}}"#);
    let with = |prefix: &[u8], suffix: &[u8]| {
        let mut b = prefix.to_vec();
        b.extend_from_slice(klarna.as_bytes());
        b.extend_from_slice(suffix);
        b
    };
    let utf16: Vec<u8> = klarna.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf32: Vec<u8> = klarna
        .chars()
        .flat_map(|c| (c as u32).to_be_bytes())
        .collect();
    let unreadable = "unreadable_json";
    let mut cases: Vec<Case<'_>> = vec![
        (
            "UTF-8 BOM",
            "/payments",
            json.to_vec(),
            with(b"\xEF\xBB\xBF", b""),
            400,
            unreadable,
        ),
        (
            "NaN",
            "/payments",
            json.to_vec(),
            format!(r#"{{"payment_method":"klarna","amount":NaN,{HOSTILE}}}"#).into_bytes(),
            400,
            unreadable,
        ),
        (
            "trailing comma",
            "/payments",
            json.to_vec(),
            format!(r#"{{"payment_method":"klarna",{HOSTILE},}}"#).into_bytes(),
            400,
            unreadable,
        ),
        (
            "comment",
            "/payments",
            json.to_vec(),
            format!(r#"{{/**/"payment_method":"klarna",{HOSTILE}}}"#).into_bytes(),
            400,
            unreadable,
        ),
        (
            "trailing bytes",
            "/payments",
            json.to_vec(),
            with(b"", b" x"),
            400,
            unreadable,
        ),
        (
            "raw control character",
            "/payments",
            json.to_vec(),
            format!("{{\"payment_method\":\"klarna\x01\",{HOSTILE}}}").into_bytes(),
            400,
            unreadable,
        ),
        (
            "invalid UTF-8",
            "/payments",
            json.to_vec(),
            format!("{{\"payment_method\":\"klarna\",\"x\":\"\u{0}\",{HOSTILE}}}")
                .into_bytes()
                .into_iter()
                .map(|b| if b == 0 { 0xFF } else { b })
                .collect(),
            400,
            unreadable,
        ),
        ("UTF-16", "/payments", json.to_vec(), utf16, 400, unreadable),
        ("UTF-32", "/payments", json.to_vec(), utf32, 400, unreadable),
        (
            "top-level array",
            "/payments",
            json.to_vec(),
            with(b"[", b"]"),
            400,
            unreadable,
        ),
        (
            "empty body",
            "/payments",
            json.to_vec(),
            Vec::new(),
            400,
            unreadable,
        ),
        (
            "Content-Type: text/plain",
            "/payments",
            vec![("content-type", "text/plain")],
            klarna.clone().into_bytes(),
            415,
            "unsupported_media_type",
        ),
        (
            "form data",
            "/payments",
            vec![("content-type", "application/x-www-form-urlencoded")],
            b"payment_method=klarna&return_url=javascript:alert(1)".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "Content-Encoding: gzip",
            "/payments",
            vec![
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            klarna.clone().into_bytes(),
            415,
            "unsupported_content_encoding",
        ),
        (
            "Content-Encoding: identity",
            "/payments",
            vec![("content-encoding", "identity")],
            klarna.clone().into_bytes(),
            415,
            "unsupported_content_encoding",
        ),
    ];
    for pm in [r#"" klarna""#, r#""card""#, r#"{"type":"klarna "}"#] {
        cases.push((
            "payment_method that is not Klarna",
            "/payments",
            json.to_vec(),
            format!(r#"{{"payment_method":{pm},{HOSTILE}}}"#).into_bytes(),
            400,
            "invalid_return_url",
        ));
    }
    for path in [
        "/payments/",
        "/Payments",
        "//payments",
        "/payments;x=1",
        "/%70ayments",
        "/x/../payments",
        "/./payments",
        "/v2/accounts/a/payment/authorize/",
        "/V2/accounts/a/payment/authorize",
    ] {
        cases.push((
            path,
            path,
            json.to_vec(),
            klarna.clone().into_bytes(),
            400,
            "non_canonical_path",
        ));
    }
    let ok_url = r#""return_url":"https://shop.example/r""#;
    for (what, body) in [
        (
            "duplicate step_up_config",
            format!(r#"{{"payment_method":"klarna",{ok_url},{HOSTILE},"step_up_config":{{}}}}"#),
        ),
        (
            "duplicate step_up_config (escaped)",
            format!(
                r#"{{"payment_method":"klarna",{ok_url},{HOSTILE},"step\u005fup_config":{{}}}}"#
            ),
        ),
        (
            "duplicate customer_interaction_config",
            r#"{"payment_method":"klarna","step_up_config":{"customer_interaction_config":{"return_url":"javascript:x"},"customer_interaction_config":{"return_url":"https://shop.example/r"}}}"#
                .to_string(),
        ),
        (
            "duplicate return_url",
            format!(r#"{{"payment_method":"klarna","return_url":"javascript:x",{ok_url}}}"#),
        ),
        (
            "duplicate app_return_url",
            format!(
                r#"{{"payment_method":"klarna",{ok_url},"app_return_url":"javascript:x","app_return_url":"app://ok"}}"#
            ),
        ),
        (
            "duplicate payment_method",
            format!(r#"{{"payment_method":"klarna","payment_method":"card",{HOSTILE}}}"#),
        ),
    ] {
        cases.push((
            "",
            "/payments",
            json.to_vec(),
            body.into_bytes(),
            400,
            "duplicate_key",
        ));
        let last = cases.last_mut().unwrap();
        last.0 = what;
    }
    refused_everywhere(&p, &cases).await;

    // What the layer understands still goes through: a strict Klarna payment, a card one.
    for (adapter, addr) in &p.all {
        p.up.take_received();
        let body = br#"{"payment_method":"card","amount":100}"#;
        let res = send(*addr, "POST", "/payments", &json, body).await;
        assert_eq!(res.status, 200, "{adapter}");
        assert_eq!(
            p.up.take_received()[0].body,
            body,
            "{adapter}: card untouched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_2_relay_headers_cannot_be_forged() {
    let p = proxies(step_up("")).await;
    let forged = [
        ("x-klarna-stepup-verified", "true"),
        ("x-klarna-stepup-token", "attacker-token"),
        ("x-klarna-stepup-state", "COMPLETED"),
        ("x-klarna-stepup-reference", "order-1"),
        (
            "X-Klarna-StepUp-Event-Type",
            "payment.request.state-change.completed",
        ),
        ("x-klarna-stepup", "relayed"),
        ("content-type", "application/json"),
    ];
    for (adapter, addr) in &p.all {
        // Through a pass-through route, and a candidate route with a body that is not Klarna.
        for (method, path, body) in [
            ("GET", "/orders/1", &b""[..]),
            ("POST", "/orders", br#"{"a":1}"#),
            ("POST", "/payments", br#"{"payment_method":"card"}"#),
        ] {
            p.up.take_received();
            let res = send(*addr, method, path, &forged, body).await;
            assert_eq!(res.status, 200, "{adapter}: {method} {path}");
            let seen = p.up.take_received();
            let names: Vec<_> = seen[0]
                .headers
                .keys()
                .filter(|k| k.as_str().replace('_', "-").starts_with("x-klarna-stepup"))
                .collect();
            eprintln!("{adapter:7} forged headers on {method} {path} -> upstream sees {names:?}");
            assert!(names.is_empty(), "{adapter}: {method} {path}: {names:?}");
        }
        // Every spelling of the relay path is 404, whatever the method.
        for path in [
            "/webhooks/klarna",
            "/webhooks/klarna/",
            "/webhooks/Klarna",
            "/WEBHOOKS/KLARNA",
            "/webhooks/%6blarna",
            "/webhooks/%6Blarna",
            "/%77ebhooks/klarna",
            "//webhooks/klarna",
            "/webhooks//klarna",
            "/webhooks/klarna;x=1",
            "/webhooks/./klarna",
            "/x/../webhooks/klarna",
            "/webhooks/klarna/.",
            "/webhooks%2Fklarna",
            "/webhooks/klarna?x=1",
            "/webhooks/klarna.json",
            "/webhooks/klarna.",
            "/webhooks/klarna%2e",
            "/webhooks/klarna%20",
            "/webhooks/klarna%00",
        ] {
            for method in ["POST", "GET", "PUT"] {
                p.up.take_received();
                let res = send(*addr, method, path, &forged, br#"{"a":1}"#).await;
                assert_eq!(res.status, 404, "{adapter}: {method} {path}");
                assert!(
                    p.up.take_received().is_empty(),
                    "{adapter}: {method} {path}"
                );
            }
        }
    }
}

/// What a Go, Rack, PHP or Node payment API would read that the layer's own parser did not:
/// other spellings of the keys it reads, query parameters merged with the body, a body read
/// as a form, format suffixes, the partner header under another spelling, browser schemes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_common_payment_api_stacks_read_is_checked_too() {
    let p = proxies(step_up(
        "notify_path = \"/internal/returns\"\n\
         [return_url_policy]\nallowed_hosts = [\"*.partner.example\", \"pay.acquirer.example\"]\n\
         [partners]\nheader = \"X-Partner-Id\"\nunknown = \"global\"\n",
    ))
    .await;
    let json = [("content-type", "application/json"), ("x-partner-id", "p1")];
    let good = r#""klarna_return_url":"https://shop.partner.example/r""#;
    let evil = "https://evil.example/phish";
    let body = |s: String| s.into_bytes();
    let cases: Vec<Case<'_>> = vec![
        (
            "Go: Return_Url",
            "/payments",
            json.to_vec(),
            body(format!(r#"{{"PAYMENT_METHOD":"klarna","Return_Url":"{evil}"}}"#)),
            400,
            "invalid_return_url",
        ),
        (
            "Go: Kelvin-sign klarna_return_url",
            "/payments",
            json.to_vec(),
            body(format!(
                "{{\"payment_method\":\"klarna\",\"\u{212A}larna_return_url\":\"{evil}\"}}"
            )),
            400,
            "invalid_return_url",
        ),
        (
            "Go: Step_Up_Config merged into the layer's",
            "/payments",
            json.to_vec(),
            body(format!(
                r#"{{"payment_method":"klarna",{good},"Step_Up_Config":{{"customer_interaction_config":{{"app_return_url":"{evil}"}}}}}}"#
            )),
            400,
            "invalid_app_return_url",
        ),
        (
            "Go: two spellings of return_url",
            "/payments",
            json.to_vec(),
            body(format!(
                r#"{{"payment_method":"klarna",{good},"return_url":"https://a.partner.example/","RETURN_URL":"{evil}"}}"#
            )),
            400,
            "duplicate_key",
        ),
        (
            "second return field hostile",
            "/payments",
            json.to_vec(),
            body(format!(
                r#"{{"payment_method":"klarna",{good},"return_url":"javascript:alert(1)"}}"#
            )),
            400,
            "invalid_return_url",
        ),
        (
            "browser scheme as app return URL",
            "/payments",
            json.to_vec(),
            body(format!(
                r#"{{"payment_method":"klarna",{good},"app_return_url":"intent://evil.example/#Intent;scheme=https;end"}}"#
            )),
            400,
            "invalid_app_return_url",
        ),
        (
            "Rails: query merged with a card body",
            "/payments?payment_method=klarna&step_up_config[customer_interaction_config][return_url]=https://evil.example/",
            json.to_vec(),
            body(r#"{"payment_method":"card"}"#.into()),
            400,
            "query_field",
        ),
        (
            "Rails: format suffix",
            "/payments.json",
            json.to_vec(),
            body(format!(r#"{{"payment_method":"klarna","return_url":"{evil}"}}"#)),
            400,
            "non_canonical_path",
        ),
        (
            "Rack: no content type, body read as a form",
            "/payments",
            vec![("x-partner-id", "p1")],
            body(format!(
                r#"{{"payment_method":"card","note":"&return_url={evil}&payment_method=klarna"}}"#
            )),
            400,
            "form_field",
        ),
        (
            "Rack: X_Partner_Id beside X-Partner-Id",
            "/payments",
            vec![
                ("content-type", "application/json"),
                ("x-partner-id", "p1"),
                ("X_Partner_Id", "p2"),
            ],
            body(format!(r#"{{"payment_method":"klarna",{good}}}"#)),
            400,
            "invalid_partner",
        ),
        (
            "Connection names the partner header",
            "/payments",
            vec![
                ("content-type", "application/json"),
                ("x-partner-id", "p1"),
                ("connection", "X-Partner-Id"),
            ],
            body(format!(r#"{{"payment_method":"klarna",{good}}}"#)),
            400,
            "invalid_partner",
        ),
    ];
    refused_everywhere(&p, &cases).await;
    for (adapter, addr) in &p.all {
        // The return notification path, from outside, in any spelling.
        for path in [
            "/internal/returns",
            "/internal/returns.json",
            "/internal/Returns%00",
        ] {
            p.up.take_received();
            let res = send(*addr, "POST", path, &json, br#"{"state":"COMPLETED"}"#).await;
            assert_eq!(res.status, 404, "{adapter}: {path}");
            assert!(p.up.take_received().is_empty(), "{adapter}: {path}");
        }
        // A well-formed payment in another case is read and completed in place.
        p.up.take_received();
        let res = send(
            *addr,
            "POST",
            "/payments",
            &json,
            format!(r#"{{"Payment_Method":"KLARNA",{good},"STEP_UP_CONFIG":{{}}}}"#).as_bytes(),
        )
        .await;
        assert_eq!(res.status, 200, "{adapter}");
        let seen = p.up.take_received();
        let sent = String::from_utf8_lossy(&seen[0].body).to_ascii_lowercase();
        assert_eq!(
            sent.matches("step_up_config").count(),
            1,
            "{adapter}: {sent}"
        );
        assert!(
            sent.contains("customer_interaction_config"),
            "{adapter}: {sent}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_5_what_reaches_partners_is_checked() {
    let engine = step_up("");
    let p = proxies(engine.clone()).await;
    // A partner URL with non-ASCII text: the 303's Location is ASCII, percent-encoded.
    let path = minted_return_path(
        &engine,
        "https://shop.example/größe?id={klarna.payment_request.id}",
    )
    .unwrap()
    .replace("{klarna.payment_request.id}", "krn-1");
    for (adapter, addr) in &p.all {
        let res = raw_request(*addr, "GET", &path, &[], ReqBody::None, LIMIT)
            .await
            .unwrap();
        assert_eq!(res.status, 303, "{adapter}");
        assert_eq!(
            res.header("location"),
            Some("https://shop.example/gr%C3%B6%C3%9Fe?id=krn-1"),
            "{adapter}"
        );
    }
    // A signed webhook with a duplicate key where fields are read: 400, never relayed.
    let body = br#"{"metadata":{"event_type":"payment.request.state-change.completed"},"payload":{"state":"COMPLETED","klarna_network_session_token":"a","klarna_network_session_token":"b"}}"#;
    let sig = signature(body);
    let headers = [
        ("content-type", "application/json"),
        ("klarna-signing-key-id", "a"),
        ("klarna-signature", sig.as_str()),
    ];
    for (adapter, addr) in &p.all {
        p.up.take_received();
        let res = send(*addr, "POST", "/klarna/webhooks", &headers, body).await;
        assert_eq!(res.status, 400, "{adapter}");
        assert_eq!(code(&res), "duplicate_key", "{adapter}");
        assert!(p.up.take_received().is_empty(), "{adapter}: relayed");
    }
    // A partner URL whose signed form would be longer than Klarna takes: 400 at the request.
    let long = format!(
        r#"{{"payment_method":"klarna","return_url":"https://shop.example/{}"}}"#,
        "a".repeat(1600)
    );
    for (adapter, addr) in &p.all {
        p.up.take_received();
        let res = send(*addr, "POST", "/payments", &[], long.as_bytes()).await;
        assert_eq!(res.status, 400, "{adapter}");
        assert_eq!(code(&res), "invalid_return_url", "{adapter}");
        assert!(p.up.take_received().is_empty(), "{adapter}");
    }
}
