//! The driver fed step by step, with no socket.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::*;
use crate::budget::BufferBudget;
use crate::config::Mode;
use crate::observe::Outcome;

const KLARNA: &[u8] =
    br#"{"payment_method":"klarna","amount":100,"return_url":"https://shop.example/done"}"#;
const STEP_UP: &[u8] = br#"{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"krn:pr:1","state":"SUBMITTED","state_context":{"customer_interaction":{"method":"HANDOVER","payment_request_id":"krn:pr:1","payment_request_url":"https://pay.klarna.com/eu/requests/1/start"}}}}"#;

fn engine(extra: &str) -> StepUp {
    StepUp::from_toml(&format!(
        "{extra}\n[return_url_policy]\nallowed_hosts = [\"shop.example\"]\n"
    ))
    .unwrap()
}

fn json_head() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h
}

fn candidate(step_up: &StepUp, head: &mut HeaderMap) -> Driver {
    let uri = "/payments".parse().unwrap();
    Driver::start(step_up, &Method::POST, Some(&uri), head).expect("a candidate")
}

fn forwarded(action: Action) -> Forward {
    match action {
        Action::Forward(f) => f,
        other => panic!("{other:?}"),
    }
}

fn refusal(action: Action) -> Refusal {
    match action {
        Action::Answer(a) => a.refusal().cloned().expect("a refusal"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_routes_pass_through_and_lose_forged_headers() {
    let step_up = engine("");
    let mut head = HeaderMap::new();
    head.insert("x-klarna-stepup", "rewritten".parse().unwrap());
    let uri = "/orders".parse().unwrap();
    assert!(Driver::start(&step_up, &Method::GET, Some(&uri), &mut head).is_none());
    assert!(head.is_empty(), "forged header kept: {head:?}");
    head.insert("x-klarna-stepup-x", "1".parse().unwrap());
    assert!(Driver::start(&step_up, &Method::POST, None, &mut head).is_none());
    assert!(head.is_empty());
}

#[test]
fn a_klarna_exchange_is_injected_then_rewritten() {
    let step_up = engine("");
    let budget = BufferBudget::new(10_000);
    let mut head = json_head();
    let mut d = candidate(&step_up, &mut head);
    assert!(matches!(
        d.begin(&budget, Holding::Whole),
        Action::ReadBody { .. }
    ));
    // In three parts: gathered, charged to the budget as they come.
    let (a, b) = KLARNA.split_at(10);
    let (b, c) = b.split_at(20);
    assert!(matches!(
        d.on_request_body(Bytes::from_static(a), false),
        Action::ReadMore
    ));
    assert!(matches!(
        d.on_request_body(Bytes::from_static(b), false),
        Action::ReadMore
    ));
    assert_eq!(budget.used(), 30);
    let f = forwarded(d.on_request_body(Bytes::from_static(c), true));
    assert!(f.rewritten());
    assert!(std::str::from_utf8(f.body())
        .unwrap()
        .contains("step_up_config"));
    assert_eq!(d.forward_body(), Some(f.body()));
    d.upstream_request_head(&mut head);
    assert_eq!(head["content-length"], f.body().len().to_string().as_str());
    assert_eq!(head["accept-encoding"], "identity");

    let mut answer = json_head();
    let action = d.on_response_head(ResponseHead::new(StatusCode::OK, &answer));
    assert!(matches!(action, ResponseAction::Read { .. }));
    let ResponseAction::Send(body) = d.on_response_body(Bytes::from_static(STEP_UP), true) else {
        panic!()
    };
    assert!(body.starts_with(br#"{"status":"pending""#), "{body:?}");
    assert_eq!(d.response_head(&mut answer), AnswerHead::Rewritten);
    assert_eq!(answer["x-klarna-stepup"], "rewritten");
    assert_eq!(answer["content-length"], body.len().to_string().as_str());
    let record = d.finish(Some(200), None);
    assert_eq!(record.outcome(), Outcome::Rewritten);
    assert_eq!(record.payment_request_id(), Some("krn:pr:1"));
    assert_eq!(record.request_body_len(), Some(KLARNA.len()));
    drop(d);
    assert_eq!(budget.used(), 0, "given back");
}

#[test]
fn a_card_payment_goes_on_byte_for_byte_without_a_copy() {
    let step_up = engine("");
    let mut head = json_head();
    let mut d = candidate(&step_up, &mut head);
    d.begin(&BufferBudget::default(), Holding::Whole);
    let body = Bytes::from_static(br#"{"payment_method":"card"}"#);
    let f = forwarded(d.on_request_body(body.clone(), true));
    assert!(!f.rewritten());
    assert_eq!(
        f.body().as_ptr(),
        body.as_ptr(),
        "the caller's bytes, not a copy"
    );
    d.upstream_request_head(&mut head);
    assert!(!head.contains_key("accept-encoding"));
    let answer = json_head();
    let action = d.on_response_head(ResponseHead::new(StatusCode::OK, &answer));
    assert!(matches!(action, ResponseAction::Stream));
    assert_eq!(d.finish(Some(200), None).outcome(), Outcome::NotKlarna);
}

#[test]
fn bodies_past_the_limit_or_the_budget_are_refused() {
    let step_up = engine("body_limit = 40");
    // Declared too large: refused before a byte is read.
    let mut head = json_head();
    head.insert("content-length", "41".parse().unwrap());
    let mut d = candidate(&step_up, &mut head);
    assert_eq!(
        refusal(d.begin(&BufferBudget::default(), Holding::Whole)).status(),
        413
    );
    // Counted too large.
    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&BufferBudget::default(), Holding::Whole);
    let r = refusal(d.on_request_body(Bytes::from(vec![b' '; 41]), false));
    assert_eq!(
        (r.status().as_u16(), r.code().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(
        d.finish(Some(413), None).outcome(),
        Outcome::Refused(crate::RefusalCode::BodyTooLarge)
    );
    // Past the budget as it arrives.
    let budget = BufferBudget::new(10);
    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&budget, Holding::Whole);
    assert!(matches!(
        d.on_request_body(Bytes::from_static(b"{ "), false),
        Action::ReadMore
    ));
    assert_eq!(
        refusal(d.on_request_body(Bytes::from(vec![b' '; 9]), false))
            .code()
            .as_str(),
        "overloaded"
    );
    drop(d);
    assert_eq!(budget.used(), 0);
}

#[test]
fn past_what_the_adapter_holds_the_body_streams_or_is_refused() {
    let step_up = engine("");
    let mut head = json_head();
    let mut d = candidate(&step_up, &mut head);
    assert!(matches!(
        d.begin(&BufferBudget::default(), Holding::ThenStream(16)),
        Action::ReadBody { limit: 16 }
    ));
    let (a, b) = KLARNA.split_at(20);
    assert!(matches!(
        d.on_request_body(Bytes::from_static(a), false),
        Action::StreamBody
    ));
    assert!(d.streams_body());
    d.upstream_request_head(&mut head);
    assert_eq!(head["transfer-encoding"], "chunked");
    assert_eq!(head["accept-encoding"], "identity");
    let f = forwarded(d.on_request_body(Bytes::from_static(b), true));
    assert!(f.rewritten());
    assert!(d.exchange().is_some());

    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&BufferBudget::default(), Holding::ThenRefuse(16));
    let r = refusal(d.on_request_body(Bytes::from_static(KLARNA), true));
    assert_eq!(r.status(), 413);

    // A refusal after the upstream request went: kept for the aborted upstream's report.
    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&BufferBudget::default(), Holding::ThenStream(4));
    assert!(matches!(
        d.on_request_body(Bytes::from_static(b"{\"payment_method\""), false),
        Action::StreamBody
    ));
    let r = refusal(d.on_request_body(Bytes::from_static(b":\"klarna\",,}"), true));
    assert_eq!(r.code().as_str(), "unreadable_json");
    let again = d
        .on_upstream_error(None, true)
        .expect("the pending refusal");
    assert_eq!(again.refusal().unwrap().code().as_str(), "unreadable_json");
}

#[test]
fn an_answer_past_the_limit_passes_on_or_is_cut_short_after_its_head() {
    let step_up = engine("body_limit = 600");
    for head_first in [false, true] {
        let mut d = candidate(&step_up, &mut json_head());
        d.begin(&BufferBudget::default(), Holding::Whole);
        d.on_request_body(Bytes::from_static(KLARNA), true);
        let mut answer = json_head();
        let mut response = ResponseHead::new(StatusCode::OK, &answer);
        if head_first {
            response = response.head_first().decoded(true);
        }
        assert!(matches!(
            d.on_response_head(response),
            ResponseAction::Read { limit: 600 }
        ));
        if head_first {
            assert_eq!(d.response_head(&mut answer), AnswerHead::BeingRead);
            assert_eq!(answer["transfer-encoding"], "chunked");
        }
        let big = Bytes::from(vec![b' '; 601]);
        match d.on_response_body(big, false) {
            ResponseAction::SendThenStream(prefix) if !head_first => assert_eq!(prefix.len(), 601),
            ResponseAction::Abort if head_first => assert!(d.aborted()),
            other => panic!("{head_first}: {other:?}"),
        }
        assert_eq!(d.finish(None, None).outcome(), Outcome::Passthrough);
    }
}

#[test]
fn small_klarna_errors_are_read_for_their_id_and_passed_on() {
    let step_up = engine("");
    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&BufferBudget::default(), Holding::Whole);
    d.on_request_body(Bytes::from_static(KLARNA), true);
    let error = Bytes::from_static(br#"{"error_id":"e-1","error_code":"X"}"#);
    let mut answer = json_head();
    let head = ResponseHead::new(StatusCode::BAD_REQUEST, &answer).length(Some(error.len() as u64));
    assert!(matches!(
        d.on_response_head(head),
        ResponseAction::Read { .. }
    ));
    let ResponseAction::Send(body) = d.on_response_body(error.clone(), true) else {
        panic!()
    };
    assert_eq!(body, error);
    assert_eq!(d.response_head(&mut answer), AnswerHead::Passthrough);
    assert_eq!(answer["x-klarna-stepup"], "passthrough");
    assert_eq!(d.record().klarna_error_id(), Some("e-1"));
}

#[test]
fn refused_heads_and_the_relay_path_are_answered_at_once() {
    let step_up = engine("");
    let mut head = HeaderMap::new();
    head.insert("content-type", "text/plain".parse().unwrap());
    let mut d = candidate(&step_up, &mut head);
    assert_eq!(
        refusal(d.begin(&BufferBudget::default(), Holding::Whole)).status(),
        415
    );
    let mut head = HeaderMap::new();
    assert!(Driver::check_target(&step_up, &Method::POST, b"/payments").is_none());
    let d = Driver::check_target(&step_up, &Method::POST, b"%20/payments");
    let mut d = d.expect("a refused head");
    assert!(d.refuses_head());
    assert_eq!(
        refusal(d.begin(&BufferBudget::default(), Holding::Whole))
            .code()
            .as_str(),
        "bad_request_head"
    );
    let d = Driver::check_head(
        &step_up,
        &mut head,
        http::Version::HTTP_11,
        9,
        HeadLimits::default(),
    );
    let mut d = d.expect("no Host in HTTP/1.1");
    assert_eq!(
        refusal(d.begin(&BufferBudget::default(), Holding::Whole)).param(),
        Some("Host")
    );
}

const SECRET: &str = "return-key-0123456789-0123456789-0123456789";

fn with_secrets(toml: &str) -> StepUp {
    let config = crate::StepUpConfig::from_toml(toml).unwrap();
    StepUp::with_secrets(config, |_| Some(SECRET.into())).unwrap()
}

#[test]
fn a_return_is_resolved_notified_and_confirmed() {
    let step_up = with_secrets(
        r#"
        [return_url_policy]
        allowed_hosts = ["shop.example", "pay.acquirer.example"]
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r1", env = "R" }]
        notify_path = "/internal/returns"
        "#,
    );
    // The return URL Klarna gets, from an injected request.
    let mut d = candidate(&step_up, &mut json_head());
    d.begin(&BufferBudget::default(), Holding::Whole);
    let body = br#"{"payment_method":"klarna","return_url":"https://shop.example/r?s={klarna.payment_request.state}"}"#;
    let sent = forwarded(d.on_request_body(Bytes::from_static(body), true));
    let sent: serde_json::Value = serde_json::from_slice(sent.body()).unwrap();
    let url = sent["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = url.strip_prefix("https://pay.acquirer.example").unwrap();
    let uri: http::Uri = format!("{path}?state=COMPLETED&payment_request_id=krn:pr:9")
        .parse()
        .unwrap();

    for (result, state) in [
        (
            Notified::Answered {
                status: StatusCode::OK,
                body: Some(br#"{"state":"COMPLETED"}"#),
            },
            "COMPLETED",
        ),
        (Notified::TimedOut, "UNCONFIRMED"),
        (
            Notified::Answered {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: None,
            },
            "UNCONFIRMED",
        ),
    ] {
        let mut head = HeaderMap::new();
        let mut d = Driver::start(&step_up, &Method::GET, Some(&uri), &mut head).unwrap();
        assert!(d.wants_notify_peer());
        let Action::Notify { request, .. } = d.begin(&BufferBudget::default(), Holding::Whole)
        else {
            panic!()
        };
        assert_eq!(request.uri().path(), "/internal/returns");
        assert!(request.headers().contains_key("x-klarna-stepup-signature"));
        assert_eq!(d.reads_notification_answer(StatusCode::OK), Some(16 * 1024));
        assert_eq!(d.reads_notification_answer(StatusCode::NOT_FOUND), None);
        let Action::Answer(answer) = d.on_notified(result) else {
            panic!()
        };
        let res = answer.to_response();
        assert_eq!(res.status(), 303);
        let location = res.headers()["location"].to_str().unwrap();
        assert!(location.ends_with(&format!("s={state}")), "{location}");
        assert_eq!(d.finish(Some(303), None).outcome(), Outcome::Redirected);
    }
}

#[test]
fn a_webhook_is_verified_relayed_and_accepted_or_answered_503() {
    use hmac::Mac;
    let step_up = with_secrets(
        r#"
        [webhooks]
        enabled = true
        relay_path = "/internal/klarna-webhooks"
        keys = [{ id = "k1", env = "K" }]
        "#,
    );
    let body = br#"{"metadata":{"event_type":"payment.request.state-change.completed"},"payload":{"payment_request_reference":"ref-1","payment_request_id":"krn:pr:2"}}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let signature = hex::encode(mac.finalize().into_bytes());
    for (status, accepted) in [(StatusCode::OK, true), (StatusCode::CONFLICT, false)] {
        let mut head = json_head();
        head.insert("klarna-signature", signature.parse().unwrap());
        head.insert("klarna-signing-key-id", "k1".parse().unwrap());
        head.insert("x-klarna-stepup-partner", "forged".parse().unwrap());
        let path = step_up.config().webhooks.path.clone();
        let uri = path.parse().unwrap();
        let mut d = Driver::start(&step_up, &Method::POST, Some(&uri), &mut head).unwrap();
        assert!(matches!(
            d.begin(&BufferBudget::default(), Holding::Whole),
            Action::ReadBody { .. }
        ));
        let f = forwarded(d.on_request_body(Bytes::from_static(body), true));
        assert_eq!(&f.body()[..], body, "relayed byte for byte");
        assert!(f.timeout().is_some());
        assert_eq!(d.upstream_path(), Some("/internal/klarna-webhooks"));
        d.upstream_request_head(&mut head);
        assert_eq!(head["x-klarna-stepup-payment-request-id"], "krn:pr:2");
        let answer = HeaderMap::new();
        match d.on_response_head(ResponseHead::new(status, &answer)) {
            ResponseAction::Stream => assert!(accepted),
            ResponseAction::Answer(a) => {
                assert!(!accepted);
                assert_eq!(a.refusal().unwrap().code().as_str(), "webhook_not_accepted");
            }
            other => panic!("{other:?}"),
        }
    }
    // Charged to the buffer budget as it arrives: past it, 503 (Klarna retries), and
    // nothing stays charged.
    let budget = BufferBudget::new(100);
    let mut head = json_head();
    head.insert("klarna-signature", signature.parse().unwrap());
    head.insert("klarna-signing-key-id", "k1".parse().unwrap());
    let uri = step_up.config().webhooks.path.parse().unwrap();
    let mut d = Driver::start(&step_up, &Method::POST, Some(&uri), &mut head).unwrap();
    d.begin(&budget, Holding::Whole);
    assert!(matches!(
        d.on_request_body(Bytes::copy_from_slice(&body[..60]), false),
        Action::ReadMore
    ));
    assert_eq!(budget.used(), 60);
    let r = refusal(d.on_request_body(Bytes::copy_from_slice(&body[60..]), true));
    assert_eq!(
        (r.status().as_u16(), r.code().as_str()),
        (503, "overloaded")
    );
    drop(d);
    assert_eq!(budget.used(), 0);
    // The payment API unreachable: 503 too, so that Klarna retries.
    let mut head = json_head();
    head.insert("klarna-signature", signature.parse().unwrap());
    head.insert("klarna-signing-key-id", "k1".parse().unwrap());
    let uri = step_up.config().webhooks.path.parse().unwrap();
    let mut d = Driver::start(&step_up, &Method::POST, Some(&uri), &mut head).unwrap();
    d.begin(&BufferBudget::default(), Holding::Whole);
    d.on_request_body(Bytes::from_static(body), true);
    let a = d.on_upstream_error(None, true).expect("503");
    assert_eq!(a.refusal().unwrap().status(), 503);
    assert_eq!(
        d.finish(Some(503), None).outcome(),
        Outcome::UpstreamError(crate::RefusalCode::WebhookNotAccepted)
    );
}

#[test]
fn a_partners_mode_overrides_the_top_level_one() {
    let step_up = engine(
        r#"
        [partners]
        header = "X-Partner-Id"
        unknown = "global"
        [[partners.entries]]
        id = "shop-a"
        mode = "shadow"
        [[partners.entries]]
        id = "shop-b"
        "#,
    );
    for (partner, mode) in [
        ("shop-a", Mode::Shadow),
        ("shop-b", Mode::Enforce),
        ("shop-z", Mode::Enforce),
    ] {
        let mut head = json_head();
        head.insert("x-partner-id", partner.parse().unwrap());
        let mut d = candidate(&step_up, &mut head);
        assert_eq!(d.mode(), mode, "{partner}");
        d.begin(&BufferBudget::default(), Holding::Whole);
        let body = Bytes::from_static(KLARNA);
        match d.on_request_body(body.clone(), true) {
            // Shadow: judged (would inject), let go untouched.
            Action::Release(read) if mode == Mode::Shadow => {
                assert_eq!(read, body);
                assert_eq!(d.outcome(), Outcome::Passthrough, "would inject");
                assert_eq!(d.record().mode(), Mode::Shadow);
            }
            Action::Forward(f) if mode == Mode::Enforce => assert!(f.rewritten()),
            other => panic!("{partner}: {other:?}"),
        }
    }
    let step_up = engine("mode = \"answers_only\"");
    let mut head = json_head();
    let mut d = candidate(&step_up, &mut head);
    assert!(matches!(
        d.begin(&BufferBudget::default(), Holding::Whole),
        Action::PassThrough
    ));
    d.upstream_request_head(&mut head);
    assert!(!head.contains_key("accept-encoding"), "untouched");
    assert!(d.exchange().is_some(), "its answer is read");
}

/// A body gathered from parts holds about what came, whatever length was declared: the
/// buffer budget is charged by the bytes that came, and memory must follow.
#[test]
fn a_gathered_body_holds_about_what_came_not_what_was_declared() {
    let mut body = Gathered::default();
    body.push(Bytes::from_static(b"{"), 1 << 20);
    body.push(Bytes::from_static(b" "), 1 << 20);
    assert!(body.joined.capacity() < 1024, "{}", body.joined.capacity());
    for _ in 0..100 {
        body.push(Bytes::from(vec![b' '; 1000]), 1 << 20);
        assert!(body.joined.capacity() <= 2 * body.len() + 64);
    }
    // A body that comes as declared is reserved once.
    let mut body = Gathered::default();
    body.push(Bytes::from(vec![b'a'; 600]), 1000);
    body.push(Bytes::from(vec![b'a'; 400]), 1000);
    assert_eq!(body.joined.capacity(), 1000);
    assert_eq!(body.take().len(), 1000);
}
