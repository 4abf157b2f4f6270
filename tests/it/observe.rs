//! The observation hook: the fixture table through the tower layer and through
//! `StepUpProxy`, each with `observe(..)`; both report the same outcome for every exchange,
//! and the outcome says what the fixture expects.
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::fixtures::{self, Fixture};
use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::send_fixture;
use common::upstream::{self, Answer};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::{Record, StepUp};
use tower::{service_fn, ServiceBuilder, ServiceExt};

type Seen = Arc<Mutex<Vec<String>>>;

fn recorder(seen: &Seen) -> impl Fn(&Record) + Send + Sync + 'static {
    let seen = seen.clone();
    move |r: &Record| {
        let label = match r.outcome().code() {
            Some(code) => format!("{}:{code}", r.outcome().label()),
            None => r.outcome().label().to_owned(),
        };
        // What the record says of Klarna's ids rides along: both adapters must agree on it.
        let ids = format!(
            "|{}|{}|{}|{}",
            r.payment_request_id().unwrap_or("-"),
            r.klarna_correlation_id().unwrap_or("-"),
            r.partner().unwrap_or("-"),
            r.klarna_error_id().unwrap_or("-")
        );
        seen.lock().unwrap().push(label + &ids);
    }
}

/// What the fixture's marker says the outcome must be.
fn expected(f: &Fixture, candidate_untouched: &str) -> String {
    match f.expect.marker.as_deref() {
        Some("rewritten") => "rewritten".into(),
        Some("passthrough") => "passthrough".into(),
        Some(code) => format!("refused:{code}"),
        None => candidate_untouched.into(),
    }
}

async fn through_tower(f: &Fixture) -> Vec<String> {
    let seen = Seen::default();
    let answer = f.upstream.clone();
    let inner = service_fn(move |req: Request<StepUpBody<Full<Bytes>>>| {
        let answer = answer.clone();
        async move {
            let _ = req.into_body().collect().await;
            let up = answer.expect("upstream");
            let mut res = Response::builder().status(up.status);
            for (k, v) in &up.headers {
                res = res.header(k, v);
            }
            Ok::<_, Infallible>(res.body(Full::new(Bytes::from(up.body))).unwrap())
        }
    });
    let layer =
        KlarnaStepUpLayer::new(StepUp::from_toml(&f.config).unwrap()).observe(recorder(&seen));
    let mut req = Request::builder()
        .method(f.method.as_str())
        .uri(f.path.as_str());
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::from(f.body.clone()))).unwrap();
    let res = ServiceBuilder::new()
        .layer(layer)
        .service(inner)
        .oneshot(req)
        .await
        .unwrap();
    let _ = res.into_body().collect().await;
    let out = seen.lock().unwrap().clone();
    out
}

async fn through_pingora(f: &Fixture) -> Vec<String> {
    let seen = Seen::default();
    let up = upstream::start().await;
    up.set_answer(Answer::of(f));
    let inner = PaymentApi {
        upstream: up.addr,
        read_timeout: Duration::from_secs(5),
    };
    let proxy =
        StepUpProxy::new(inner, StepUp::from_toml(&f.config).unwrap()).observe(recorder(&seen));
    let addr = start_pingora(proxy);
    let _ = send_fixture(addr, f, &[], Duration::from_secs(5)).await;
    // The observer runs in Pingora's logging phase, just after the answer is written.
    for _ in 0..200 {
        if !seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = seen.lock().unwrap().clone();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_adapters_report_the_same_outcome_for_every_fixture() {
    for f in fixtures::all() {
        let tower = through_tower(&f).await;
        let pingora = through_pingora(&f).await;
        assert_eq!(
            tower.len(),
            1,
            "{}: one record per request: {tower:?}",
            f.name
        );
        assert_eq!(tower, pingora, "{}: tower and Pingora disagree", f.name);
        let (outcome, ids) = tower[0].split_once('|').unwrap();
        if f.name == "step_up_required" {
            assert_eq!(
                ids, "krn:payment:eu1:request:552603c0-fe8b-4ab1-aacb-41d55fafbdb4|c0ffee|-|-",
                "{}",
                f.name
            );
        }
        if f.name == "partner_header_step_up" {
            assert_eq!(ids, "krn:payment:eu1:request:1|-|shop-a|-", "{}", f.name);
        }
        // A refused request is counted for the partner it names, served or not.
        if f.name == "partner_host_of_another_partner" {
            assert_eq!(ids, "-|-|shop-b|-", "{}", f.name);
        }
        if f.name == "partner_unknown" {
            assert_eq!(ids, "-|-|shop-z|-", "{}", f.name);
        }
        if f.name == "klarna_error" {
            assert_eq!(
                ids, "-|-|-|abcd1234-12ab-1234-abcd-abcd12345678",
                "{}",
                f.name
            );
        }
        let tower = [outcome.to_owned()];
        let untouched = if tower[0] == "not_candidate" {
            "not_candidate"
        } else {
            "not_klarna"
        };
        assert_eq!(tower[0], expected(&f, untouched), "{}", f.name);
        if f.name == "not_a_candidate" {
            assert_eq!(tower[0], "not_candidate", "{}", f.name);
        }
        if f.name == "card_payment" {
            assert_eq!(tower[0], "not_klarna", "{}", f.name);
        }
    }
}
