//! The fixture table run through the engine directly, and through the exchange driver.

use crate::common;

use bytes::Bytes;
use common::fixtures::{self, Forwarded};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use klarna_stepup::driver::{Action, Driver, Holding, ResponseAction, ResponseHead};
use klarna_stepup::{BufferBudget, RequestVerdict, ResponseVerdict, Route, StepUp};

fn headers(list: &[(String, String)]) -> HeaderMap {
    list.iter()
        .map(|(k, v)| {
            (
                HeaderName::try_from(k.as_str()).unwrap(),
                HeaderValue::try_from(v.as_str()).unwrap(),
            )
        })
        .collect()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_fixture_through_the_engine() {
    let all = fixtures::all();
    assert!(all.len() >= 10, "fixtures missing");
    for f in all {
        let engine = StepUp::from_toml(&f.config).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let method: Method = f.method.parse().unwrap();
        let uri = f.path.parse().unwrap();
        let (forwarded, exchange) = match engine.classify(&method, &uri, &headers(&f.headers)) {
            Route::Candidate(c) => match engine.rewrite_request(c, &f.body, 1_800_000_000) {
                RequestVerdict::NotKlarna => (Forwarded::Untouched, None),
                RequestVerdict::Injected { body, exchange } => {
                    (Forwarded::Body(body), Some(exchange))
                }
                RequestVerdict::Refused(r) => {
                    assert_eq!(f.forwarded, Forwarded::None, "{}: refused: {r:?}", f.name);
                    assert_eq!(r.status().as_u16(), f.expect.status, "{}", f.name);
                    assert_eq!(Some(r.code().to_string()), f.expect.marker, "{}", f.name);
                    assert_eq!(show(&r.to_json()), show(&f.expect.body), "{}", f.name);
                    continue;
                }
            },
            Route::Refused(refused) => {
                let r = refused.refusal();
                assert_eq!(f.forwarded, Forwarded::None, "{}: refused: {r:?}", f.name);
                assert_eq!(r.status().as_u16(), f.expect.status, "{}", f.name);
                assert_eq!(Some(r.code().to_string()), f.expect.marker, "{}", f.name);
                assert_eq!(show(&r.to_json()), show(&f.expect.body), "{}", f.name);
                continue;
            }
            _ => (Forwarded::Untouched, None),
        };
        match (&forwarded, &f.forwarded) {
            (Forwarded::Body(got), Forwarded::Body(want)) => {
                assert_eq!(show(got), show(want), "{}: forwarded", f.name)
            }
            (got, want) => assert_eq!(got, want, "{}: forwarded", f.name),
        }
        let up = f.upstream.as_ref().expect("upstream");
        let status = StatusCode::from_u16(up.status).unwrap();
        let (body, marker, status) = match exchange {
            None => (up.body.clone(), None, status),
            Some(ex) => match engine.rewrite_response(&ex, status, &headers(&up.headers), &up.body)
            {
                ResponseVerdict::Rewritten {
                    body, status: to, ..
                } => (body, Some("rewritten".to_string()), to),
                ResponseVerdict::Keep(_) => {
                    (up.body.clone(), Some("passthrough".to_string()), status)
                }
            },
        };
        assert_eq!(marker, f.expect.marker, "{}: marker", f.name);
        assert_eq!(status.as_u16(), f.expect.status, "{}: status", f.name);
        assert_eq!(
            show(&body),
            show(&f.expect.body),
            "{}: partner body",
            f.name
        );
    }
}

/// The fixture table fed to the exchange driver step by step, as an adapter's I/O loop does
/// (bodies in parts), once holding whole bodies (as the tower adapter) and once streaming
/// past a few bytes (as Pingora past its retry buffer): the same bytes, heads and codes as
/// the engine and every adapter.
#[test]
fn every_fixture_through_the_driver() {
    for holding in [Holding::Whole, Holding::ThenStream(16)] {
        for f in fixtures::all() {
            let name = format!("{} ({holding:?})", f.name);
            through_the_driver(&f, holding, &name);
        }
    }
}

/// `body` in two parts, then the end.
fn parts(body: &[u8]) -> [(Bytes, bool); 3] {
    let (a, b) = body.split_at(body.len() / 2);
    [
        (Bytes::copy_from_slice(a), false),
        (Bytes::copy_from_slice(b), false),
        (Bytes::new(), true),
    ]
}

fn through_the_driver(f: &fixtures::Fixture, holding: Holding, name: &str) {
    let engine = StepUp::from_toml(&f.config).unwrap_or_else(|e| panic!("{name}: {e}"));
    let budget = BufferBudget::default();
    let method: Method = f.method.parse().unwrap();
    let uri = f.path.parse().unwrap();
    let mut head = headers(&f.headers);
    let up = f.upstream.as_ref();
    let Some(mut d) = Driver::start(&engine, &method, Some(&uri), &mut head) else {
        assert_eq!(f.forwarded, Forwarded::Untouched, "{name}: passed through");
        assert_eq!(f.expect.marker, None, "{name}");
        assert_eq!(show(&up.unwrap().body), show(&f.expect.body), "{name}");
        return;
    };
    let mut action = d.begin(&budget, holding);
    let mut body = parts(&f.body).into_iter();
    let forward = loop {
        action = match action {
            Action::ReadBody { .. } | Action::ReadMore | Action::StreamBody => {
                let (part, end) = body.next().expect("the driver asks past the end");
                d.on_request_body(part, end)
            }
            Action::Forward(forward) => break forward,
            Action::Answer(a) => {
                assert_eq!(f.forwarded, Forwarded::None, "{name}: refused");
                let res = a.to_response();
                assert_eq!(res.status().as_u16(), f.expect.status, "{name}");
                let marker = res.headers().get("x-klarna-stepup");
                let marker = marker.map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(marker, f.expect.marker, "{name}");
                assert_eq!(show(res.body()), show(&f.expect.body), "{name}");
                return;
            }
            other => panic!("{name}: {other:?}"),
        };
    };
    match &f.forwarded {
        Forwarded::Body(want) => {
            assert_eq!(show(forward.body()), show(want), "{name}: forwarded")
        }
        Forwarded::Untouched => {
            assert_eq!(show(forward.body()), show(&f.body), "{name}: forwarded")
        }
        Forwarded::None => panic!("{name}: forwarded, must be refused"),
    }
    d.upstream_request_head(&mut head);
    if forward.rewritten() && holding == Holding::Whole {
        let length = forward.body().len().to_string();
        assert_eq!(head["content-length"], length.as_str(), "{name}");
        assert_eq!(head["accept-encoding"], "identity", "{name}");
    }
    let up = up.expect("upstream");
    let status = StatusCode::from_u16(up.status).unwrap();
    let mut answer = headers(&up.headers);
    let length = Some(up.body.len() as u64);
    let action = d.on_response_head(ResponseHead::new(status, &answer).length(length));
    let sent = match action {
        ResponseAction::Stream => up.body.clone(),
        ResponseAction::Read { .. } => {
            let mut sent = None;
            for (part, end) in parts(&up.body) {
                match d.on_response_body(part, end) {
                    ResponseAction::ReadMore => {}
                    ResponseAction::Send(body) => sent = Some(body.to_vec()),
                    other => panic!("{name}: {other:?}"),
                }
            }
            sent.expect("the whole answer")
        }
        other => panic!("{name}: {other:?}"),
    };
    d.response_head(&mut answer);
    let status = d.answer_status().unwrap_or(status);
    let marker = answer
        .get("x-klarna-stepup")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(marker, f.expect.marker, "{name}: marker");
    assert_eq!(status.as_u16(), f.expect.status, "{name}");
    assert_eq!(show(&sent), show(&f.expect.body), "{name}: partner body");
    if marker.as_deref() == Some("rewritten") {
        let length = sent.len().to_string();
        assert_eq!(answer["content-length"], length.as_str(), "{name}");
    }
    drop(d);
    assert_eq!(budget.used(), 0, "{name}: the budget is given back");
}

const SECRET: &str = "return-key-0123456789-0123456789-0123456789";

fn engine_with_secrets(toml: &str) -> StepUp {
    let config = klarna_stepup::StepUpConfig::from_toml(toml).unwrap();
    StepUp::with_secrets(config, |_| Some(SECRET.into())).unwrap()
}

fn forwarded(engine: &StepUp, headers: &[(&str, &str)], body: &[u8], now: u64) -> (String, String) {
    let headers: HeaderMap = headers
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::try_from(*k).unwrap(),
                HeaderValue::try_from(*v).unwrap(),
            )
        })
        .collect();
    let Route::Candidate(c) =
        engine.classify(&Method::POST, &"/payments".parse().unwrap(), &headers)
    else {
        panic!("not a candidate")
    };
    match engine.rewrite_request(c, body, now) {
        RequestVerdict::Injected { body, exchange } => {
            (show(&body), exchange.reference().to_owned())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retry_forwards_the_same_bytes() {
    let engine = engine_with_secrets(
        r#"
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r1", env = "R" }]
        "#,
    );
    let body = br#"{"payment_method":"klarna","amount":100,"return_url":"https://shop.example/r?s={klarna.payment_request.state}"}"#;
    let now = 1_800_000_100;
    let key = [("idempotency-key", "9f1c-attempt")];
    let (first, reference) = forwarded(&engine, &key, body, now);
    let (retry, _) = forwarded(
        &engine,
        &[("Idempotency-Key", "9f1c-attempt")],
        body,
        now + 5,
    );
    assert_eq!(
        first, retry,
        "a retry 5 s later must forward the same bytes"
    );
    assert!(
        reference.starts_with("idem-") && reference.len() == 37,
        "{reference}"
    );
    assert!(first.contains(&format!(r#""payment_request_reference":"{reference}""#)));
    assert!(
        first.contains("https://pay.acquirer.example/klarna/return/"),
        "{first}"
    );

    // Another idempotency key is another payment.
    let (_, other) = forwarded(&engine, &[("idempotency-key", "another")], body, now);
    assert_ne!(other, reference);
    // Without a key, the request itself: the same body, the same reference.
    let (a, unkeyed) = forwarded(&engine, &[], body, now);
    let (b, _) = forwarded(&engine, &[], body, now + 5);
    assert_eq!(a, b);
    assert!(
        unkeyed.starts_with("req-") && unkeyed.len() == 36,
        "{unkeyed}"
    );
    let changed =
        br#"{"payment_method":"klarna","amount":101,"return_url":"https://shop.example/r"}"#;
    assert_ne!(forwarded(&engine, &[], changed, now).1, unkeyed);
    // The partner's own reference still wins.
    let own = br#"{"payment_method":"klarna","reference":"order-7","return_url":"https://shop.example/r"}"#;
    assert_eq!(forwarded(&engine, &key, own, now).1, "order-7");
}

#[test]
fn the_idempotency_header_is_configurable() {
    let body = br#"{"payment_method":"klarna","return_url":"https://shop.example/r"}"#;
    let custom =
        StepUp::from_toml("[partner_fields]\nidempotency_header = \"X-Request-Key\"\n").unwrap();
    let (_, r1) = forwarded(&custom, &[("x-request-key", "k1")], body, 0);
    let (_, r2) = forwarded(&custom, &[("idempotency-key", "k1")], body, 0);
    assert!(r1.starts_with("idem-"), "{r1}");
    assert!(r2.starts_with("req-"), "{r2}");
    let off = StepUp::from_toml("[partner_fields]\nidempotency_header = \"\"\n").unwrap();
    assert!(forwarded(&off, &[("idempotency-key", "k1")], body, 0)
        .1
        .starts_with("req-"));
    let bad = StepUp::from_toml("[partner_fields]\nidempotency_header = \"a b\"\n").unwrap_err();
    assert_eq!(bad.0[0].key, "partner_fields.idempotency_header");
}

#[test]
fn top_level_placement_needs_an_answer_place() {
    let err = StepUp::from_toml("[partner_response]\nplacement = \"top_level\"\n").unwrap_err();
    assert_eq!(err.0[0].key, "partner_response.placement", "{err}");
    let err = StepUp::from_toml("[partner_response]\nplacement = \"nested\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
    assert!(StepUp::from_toml(
        "klarna_answer_at = \"k\"\n[partner_response]\nplacement = \"in_place\"\n"
    )
    .is_ok());
}

fn rewritten(engine: &StepUp, answer: &str) -> String {
    let body =
        br#"{"payment_method":"klarna","reference":"r-1","return_url":"https://shop.example/r"}"#;
    let Route::Candidate(c) = engine.classify(
        &Method::POST,
        &"/payments".parse().unwrap(),
        &HeaderMap::new(),
    ) else {
        panic!("not a candidate")
    };
    let RequestVerdict::Injected { exchange, .. } = engine.rewrite_request(c, body, 0) else {
        panic!("not injected")
    };
    match engine.rewrite_response(
        &exchange,
        StatusCode::OK,
        &HeaderMap::new(),
        answer.as_bytes(),
    ) {
        ResponseVerdict::Rewritten { body, .. } => show(&body),
        ResponseVerdict::Keep(reason) => panic!("kept: {reason}"),
    }
}

#[test]
fn top_level_placement_edges() {
    let at = |path: &str| {
        StepUp::from_toml(&format!(
            "klarna_answer_at = \"{path}\"\n[partner_response]\nplacement = \"top_level\"\n"
        ))
        .unwrap()
    };
    let declined = r#"{"payment_transaction_response":{"result":"DECLINED"}}"#;
    // Klarna's answer was all there was.
    assert_eq!(
        rewritten(&at("k"), &format!(r#"{{ "k" : {declined} }}"#)),
        r#"{ "status":"declined","klarna":{}}"#
    );
    // Earlier duplicates of a member the block sets go; the last is replaced in place.
    assert_eq!(
        rewritten(
            &at("k"),
            &format!(r#"{{"status":1,"a":2,"status":3,"k":{declined},"z":[]}}"#)
        ),
        r#"{"a":2,"status":"declined","z":[],"klarna":{}}"#
    );
    // The answer inside the payment API's own klarna member: replaced whole, once.
    assert_eq!(
        rewritten(
            &at("klarna.answer"),
            &format!(r#"{{"id":1,"klarna":{{"answer":{declined},"psp":"x"}}}}"#)
        ),
        r#"{"id":1,"klarna":{},"status":"declined"}"#
    );
    // The answer was the only member of its parent.
    assert_eq!(
        rewritten(&at("p.k"), &format!(r#"{{"p":{{"k":{declined}}},"id":1}}"#)),
        r#"{"p":{},"id":1,"status":"declined","klarna":{}}"#
    );
}

#[test]
fn acquirer_return_without_webhooks_is_warned_about() {
    let on = r#"
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r1", env = "R" }]
    "#;
    let warned = engine_with_secrets(on);
    let keys: Vec<_> = warned.warnings().iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["webhooks.enabled"]);
    assert!(warned.warnings()[0].reason.contains("mandatory"));
    let with_webhooks = engine_with_secrets(&format!(
        "{on}\n[webhooks]\nenabled = true\nkeys = [{{ id = \"w1\", env = \"W\" }}]\n"
    ));
    assert!(with_webhooks.warnings().is_empty());
    assert!(StepUp::from_toml("").unwrap().warnings().is_empty());
}
