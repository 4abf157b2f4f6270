//! The adapters at their edges, over loopback: a candidate the wrapped proxy or service
//! answers by itself gets an outcome of its own in both adapters; the Pingora adapter
//! refuses the request heads the binary refuses.
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::fixtures;
use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::{raw_request, ReqBody};
use common::upstream::{self, Answer};
use http::{Request, Response};
use http_body_util::Full;
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::{Record, StepUp};
use pingora::prelude::*;
use tower::{service_fn, ServiceBuilder, ServiceExt};

const LIMIT: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<(String, Option<u16>)>>>;

fn recorder(seen: &Seen) -> impl Fn(&Record) + Send + Sync + 'static {
    let seen = seen.clone();
    move |r: &Record| {
        let label = match r.outcome().code() {
            Some(code) => format!("{}:{code}", r.outcome().label()),
            None => r.outcome().label().to_owned(),
        };
        seen.lock().unwrap().push((label, r.status()));
    }
}

/// An existing proxy whose own `request_filter` answers 401 unless the request carries
/// `authorization`.
struct Authenticating {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Authenticating {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.read_timeout = Some(LIMIT);
        Ok(Box::new(peer))
    }
    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        if session.req_header().headers.contains_key("authorization") {
            return Ok(false);
        }
        session.respond_error(401).await?;
        Ok(true)
    }
}

/// The tower analogue: an authentication middleware inside the layer, answering 401
/// without reading the body it was handed.
async fn through_tower(f: &fixtures::Fixture, seen: &Seen) -> Response<StepUpBody<Full<Bytes>>> {
    let inner = service_fn(|req: Request<StepUpBody<Full<Bytes>>>| async move {
        let status = if req.headers().contains_key("authorization") {
            200
        } else {
            401
        };
        let res = Response::builder().status(status);
        Ok::<_, Infallible>(res.body(Full::new(Bytes::new())).unwrap())
    });
    let layer =
        KlarnaStepUpLayer::new(StepUp::from_toml(&f.config).unwrap()).observe(recorder(seen));
    let mut req = Request::builder()
        .method(f.method.as_str())
        .uri(f.path.as_str());
    for (k, v) in &f.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::from(f.body.clone()))).unwrap();
    ServiceBuilder::new()
        .layer(layer)
        .service(inner)
        .oneshot(req)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_the_inner_answered_itself_is_recorded_so_in_both_adapters() {
    let up = upstream::start().await;
    for name in ["step_up_required", "card_payment"] {
        let f = fixtures::by_name(name);
        up.set_answer(Answer::of(&f));
        up.take_received();

        let tower_seen = Seen::default();
        let res = through_tower(&f, &tower_seen).await;
        assert_eq!(res.status(), 401, "{name}");
        assert!(res.headers().get("x-klarna-stepup").is_none(), "{name}");

        let pingora_seen = Seen::default();
        let proxy = StepUpProxy::new(
            Authenticating { upstream: up.addr },
            StepUp::from_toml(&f.config).unwrap(),
        )
        .observe(recorder(&pingora_seen));
        let addr = start_pingora(proxy);
        let headers: Vec<(&str, &str)> = f
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let res = raw_request(
            addr,
            &f.method,
            &f.path,
            &headers,
            ReqBody::Length(&f.body),
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 401, "{name}");
        assert!(res.header("x-klarna-stepup").is_none(), "{name}");
        assert!(
            up.take_received().is_empty(),
            "{name}: the payment API was contacted"
        );

        let want = vec![("answered_by_inner".to_owned(), Some(401))];
        assert_eq!(*tower_seen.lock().unwrap(), want, "{name}: tower");
        // Pingora calls `logging` after the answer went out: wait for it, bounded.
        for _ in 0..200 {
            if !pingora_seen.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*pingora_seen.lock().unwrap(), want, "{name}: pingora");
    }
}

/// What the Pingora adapter answers to a raw request head.
async fn raw_head(addr: SocketAddr, head: &str) -> String {
    common::raw_http::raw_exchange(addr, head.as_bytes(), LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pingora_adapter_refuses_the_heads_the_binary_refuses() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let inner = PaymentApi {
        upstream: up.addr,
        read_timeout: LIMIT,
    };
    let addr = start_pingora(StepUpProxy::new(inner, StepUp::from_toml("").unwrap()));
    let body = String::from_utf8(f.body.clone()).unwrap();
    let len = body.len();
    let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
    let big = format!("x-big: {}\r\n", "b".repeat(33 * 1024));
    for (what, head, status, code) in [
        (
            "two spaces in the request line",
            format!("POST  /payments HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"),
            400,
            "bad_request_head",
        ),
        (
            "no Host in HTTP/1.1",
            format!("POST /payments HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"),
            400,
            "bad_request_head",
        ),
        (
            "101 header fields",
            format!("GET /orders HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n"),
            431,
            "headers_too_large",
        ),
        (
            "a 33 KiB head",
            format!("GET /orders HTTP/1.1\r\nHost: a\r\n{big}Connection: close\r\n\r\n"),
            431,
            "headers_too_large",
        ),
    ] {
        up.take_received();
        let answer = raw_head(addr, &head).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {answer}"
        );
        assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{what}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains(&format!("x-klarna-stepup: {code}")),
            "{what}: {answer}"
        );
        assert!(up.take_received().is_empty(), "{what}: reached the payment API");
    }
    // Two `Host`s: Pingora's own parser answers its plain 400 before any phase runs.
    let two_hosts = "GET /orders HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n";
    let answer = raw_head(addr, two_hosts).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(up.take_received().is_empty());
    // A good head still goes through.
    let ok = format!("POST /payments HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}");
    let answer = raw_head(addr, &ok).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(up.take_received().len(), 1);
}
