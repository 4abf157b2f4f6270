//! Rollout modes: `shadow` judges and records every request and changes no byte (compared
//! with the same stack without step-up, byte for byte, through the tower layer and Pingora);
//! `answers_only` leaves requests untouched and rewrites answers.

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::fixtures::{self, Fixture};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use klarna_stepup::config::Mode;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::{Record, StepUp};
use tower::{service_fn, Layer, Service, ServiceExt};

/// What the payment API got: method, target, headers, body, and whether the body's length
/// was known exactly (how it is framed on the wire).
type Got = (String, String, HeaderMap, Vec<u8>, Option<u64>);

/// What the partner got: status, headers, body, exact length.
type Sent = (u16, HeaderMap, Vec<u8>, Option<u64>);

fn with_mode(mode: &str, config: &str) -> String {
    // The top-level key goes before any table.
    format!("mode = \"{mode}\"\n{config}")
}

/// The fixture's request, as the partner sends it.
fn request(f: &Fixture) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(f.method.as_str())
        .uri(f.path.as_str());
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    req.body(Full::new(Bytes::from(f.body.clone()))).unwrap()
}

/// The payment API's stand-in: keeps what it got, answers the fixture's answer.
fn payment_api(
    f: &Fixture,
    got: Arc<Mutex<Vec<Got>>>,
) -> impl Service<
    Request<StepUpBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let answer = f.upstream.clone();
    service_fn(move |req: Request<StepUpBody<Full<Bytes>>>| {
        let (answer, got) = (answer.clone(), got.clone());
        async move {
            let exact = req.body().size_hint().exact();
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes().to_vec();
            got.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                parts.headers,
                body,
                exact,
            ));
            let mut res = Response::builder();
            let (status, headers, body) = match answer {
                Some(up) => (up.status, up.headers, up.body),
                None => (200, Vec::new(), Vec::new()),
            };
            res = res.status(status);
            for (k, v) in &headers {
                res = res.header(k, v);
            }
            Ok::<_, Infallible>(res.body(Full::new(Bytes::from(body))).unwrap())
        }
    })
}

async fn respond(res: Response<impl Body<Data = Bytes, Error = Infallible>>) -> Sent {
    let exact = res.body().size_hint().exact();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status.as_u16(), parts.headers, body, exact)
}

fn label(r: &Record) -> String {
    match r.outcome().code() {
        Some(code) => format!("{}:{code}", r.outcome().label()),
        None => r.outcome().label().to_owned(),
    }
}

#[tokio::test]
async fn shadow_changes_no_byte_through_the_tower_layer_and_records_every_verdict() {
    let all = fixtures::all();
    assert!(all.len() >= 10);
    for f in all {
        // Without step-up.
        let bare_got = Arc::new(Mutex::new(Vec::new()));
        let bare = payment_api(&f, bare_got.clone())
            .oneshot(request(&f).map(StepUpBody::new))
            .await
            .unwrap();
        let bare = respond(bare).await;
        // With step-up in shadow mode.
        let got = Arc::new(Mutex::new(Vec::new()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let seen = records.clone();
        let step_up = StepUp::from_toml(&with_mode("shadow", &f.config)).unwrap();
        let layer = KlarnaStepUpLayer::new(step_up).observe(move |r: &Record| {
            seen.lock().unwrap().push((label(r), r.mode()));
        });
        let res = layer
            .layer(payment_api(&f, got.clone()))
            .oneshot(request(&f))
            .await
            .unwrap();
        let shadow = respond(res).await;

        let (bare_got, got) = (bare_got.lock().unwrap(), got.lock().unwrap());
        assert_eq!(
            got.len(),
            1,
            "{}: the payment API got the request once",
            f.name
        );
        assert_eq!(got[0].0, bare_got[0].0, "{}: method", f.name);
        assert_eq!(got[0].1, bare_got[0].1, "{}: target", f.name);
        assert_eq!(got[0].2, bare_got[0].2, "{}: request headers", f.name);
        assert!(
            got[0].3 == bare_got[0].3,
            "{}: request body changed",
            f.name
        );
        assert_eq!(got[0].4, bare_got[0].4, "{}: request framing", f.name);
        assert_eq!(shadow.0, bare.0, "{}: status", f.name);
        assert_eq!(shadow.1, bare.1, "{}: answer headers", f.name);
        assert!(shadow.2 == bare.2, "{}: answer body changed", f.name);
        assert_eq!(shadow.3, bare.3, "{}: answer framing", f.name);

        // What enforce does, recorded.
        let records = records.lock().unwrap();
        if f.name == "not_a_candidate" {
            assert!(
                records.iter().all(|(l, _)| l == "not_candidate"),
                "{records:?}"
            );
            continue;
        }
        assert_eq!(records.len(), 1, "{}: {records:?}", f.name);
        assert_eq!(records[0].1, Mode::Shadow, "{}", f.name);
        let want = match f.expect.marker.as_deref() {
            Some("rewritten") => "rewritten".to_owned(),
            Some("passthrough") => "passthrough".to_owned(),
            Some(code) => format!("refused:{code}"),
            None => "not_klarna".to_owned(),
        };
        assert_eq!(records[0].0, want, "{}: the verdict recorded", f.name);
    }
}

#[tokio::test]
async fn answers_only_rewrites_answers_and_leaves_requests_untouched() {
    for name in [
        "step_up_required",
        "declined",
        "card_payment",
        "invalid_return_url",
    ] {
        let f = fixtures::by_name(name);
        let got = Arc::new(Mutex::new(Vec::new()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let seen = records.clone();
        let step_up = StepUp::from_toml(&with_mode("answers_only", &f.config)).unwrap();
        let layer = KlarnaStepUpLayer::new(step_up).observe(move |r: &Record| {
            seen.lock().unwrap().push(label(r));
        });
        let res = layer
            .layer(payment_api(&f, got.clone()))
            .oneshot(request(&f))
            .await
            .unwrap();
        let (status, headers, body, _) = respond(res).await;
        let got = got.lock().unwrap();
        assert!(
            got[0].3 == f.body,
            "{name}: the request reaches the payment API untouched"
        );
        assert!(!got[0].2.contains_key("accept-encoding"), "{name}");
        let up = f
            .upstream
            .clone()
            .unwrap_or_else(|| common::fixtures::Upstream {
                status: 200,
                headers: Vec::new(),
                body: Vec::new(),
            });
        assert_eq!(status, up.status, "{name}");
        let records = records.lock().unwrap();
        match name {
            // Klarna's answers: rewritten as in enforce.
            "step_up_required" | "declined" => {
                assert_eq!(headers["x-klarna-stepup"], "rewritten", "{name}");
                assert_eq!(body, f.expect.body, "{name}: the partner block");
                assert_eq!(records[..], ["rewritten"], "{name}");
            }
            // Judged by the answer alone: Klarna's shape it cannot rewrite (a card
            // payment's answer that looks like Klarna's) passes untouched, marked.
            "card_payment" => {
                assert_eq!(headers["x-klarna-stepup"], "passthrough", "{name}");
                assert!(body == up.body, "{name}: the answer changed");
                assert_eq!(records[..], ["passthrough"], "{name}");
            }
            // Not Klarna's answer (a request enforce would refuse): as it came.
            _ => {
                assert!(
                    !headers.contains_key("x-klarna-stepup"),
                    "{name}: {headers:?}"
                );
                assert!(body == up.body, "{name}: the answer changed");
                assert_eq!(records[..], ["not_klarna"], "{name}");
            }
        }
    }
}

#[cfg(feature = "pingora")]
mod pingora {
    use std::time::Duration;

    use super::*;
    use common::pingora_proxy::{start_pingora, PaymentApi};
    use common::raw_http::{send_fixture, RawResponse};
    use common::upstream::{self, Answer};
    use klarna_stepup::pingora::StepUpProxy;

    /// The answer without what differs from one proxy run to the next (the date).
    fn comparable(r: &RawResponse) -> (u16, Vec<(String, String)>, Vec<u8>, bool) {
        let headers = r
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("date"))
            .cloned()
            .collect();
        (r.status, headers, r.body.clone(), r.chunked)
    }

    async fn through(f: &Fixture, wrap: Option<Mode>) -> (RawResponse, upstream::Received) {
        let up = upstream::start().await;
        up.set_answer(Answer::of(f));
        let inner = PaymentApi {
            upstream: up.addr,
            read_timeout: Duration::from_secs(5),
        };
        let addr = match wrap {
            None => start_pingora(inner),
            Some(mode) => {
                let toml = with_mode(mode_name(mode), &f.config);
                start_pingora(StepUpProxy::new(inner, StepUp::from_toml(&toml).unwrap()))
            }
        };
        let res = send_fixture(
            addr,
            f,
            &[("accept-encoding", "gzip")],
            Duration::from_secs(10),
        )
        .await;
        let mut got = up.take_received();
        assert_eq!(
            got.len(),
            1,
            "{}: the payment API got the request once",
            f.name
        );
        (res, got.remove(0))
    }

    fn mode_name(mode: Mode) -> &'static str {
        mode.label()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shadow_changes_no_byte_through_pingora() {
        for f in fixtures::all() {
            let (bare, bare_got) = through(&f, None).await;
            let (shadow, got) = through(&f, Some(Mode::Shadow)).await;
            assert_eq!(got.method, bare_got.method, "{}", f.name);
            assert_eq!(got.path, bare_got.path, "{}", f.name);
            assert_eq!(got.headers, bare_got.headers, "{}: request headers", f.name);
            assert!(
                got.body == bare_got.body,
                "{}: request body changed",
                f.name
            );
            assert_eq!(
                comparable(&shadow),
                comparable(&bare),
                "{}: the answer",
                f.name
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_only_rewrites_through_pingora() {
        let f = fixtures::by_name("step_up_required");
        let (res, got) = through(&f, Some(Mode::AnswersOnly)).await;
        assert!(
            got.body == f.body,
            "the request reaches the payment API untouched"
        );
        assert_eq!(res.status, 200);
        // Rewritten, and compressed for the client as it asked.
        assert_eq!(res.header("content-encoding"), Some("gzip"));
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&res.body[..]), &mut body)
            .unwrap();
        assert!(body == f.expect.body, "{}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test]
async fn shadow_passes_a_body_past_the_limit_as_it_comes_and_records_the_413() {
    let f = fixtures::by_name("step_up_required");
    let got = Arc::new(Mutex::new(Vec::new()));
    let records = Arc::new(Mutex::new(Vec::new()));
    let seen = records.clone();
    // The body arrives in parts; the limit falls inside it.
    let parts: Vec<Result<http_body::Frame<Bytes>, Infallible>> = f
        .body
        .chunks(100)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(parts));
    let mut req = Request::builder().method("POST").uri(f.path.as_str());
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    let req = req.body(body).unwrap();
    let step_up = StepUp::from_toml("mode = \"shadow\"\nbody_limit = 250").unwrap();
    let answer = f.upstream.clone().unwrap();
    let inner = {
        let got = got.clone();
        service_fn(move |req: Request<StepUpBody<_>>| {
            let (got, answer) = (got.clone(), answer.clone());
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                got.lock().unwrap().push(body.to_vec());
                let res = Response::builder().status(answer.status);
                Ok::<_, Infallible>(res.body(Full::new(Bytes::from(answer.body))).unwrap())
            }
        })
    };
    let layer = KlarnaStepUpLayer::new(step_up).observe(move |r: &Record| {
        seen.lock().unwrap().push(label(r));
    });
    let res = layer.layer(inner).oneshot(req).await.unwrap();
    let (status, headers, _, _) = respond(res).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-klarna-stepup"));
    assert!(
        got.lock().unwrap()[0] == f.body,
        "the whole body, untouched"
    );
    assert_eq!(records.lock().unwrap()[..], ["refused:body_too_large"]);
}
