//! The Pingora adapter's direct exchange (an injected Klarna request carried by
//! `StepUpProxy` itself): the inner proxy's phases still run, once; the bytes are those of
//! Pingora's pipeline; HTTP/2-capable peers and answers over the limit take the other roads.
#![cfg(feature = "pingora")]

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::fixtures::{self, Fixture};
use common::pingora_proxy::start_pingora;
use common::raw_http::{raw_request, send_fixture, RawResponse, ReqBody};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;
use pingora::prelude::*;
use pingora::protocols::ALPN;

const LIMIT: Duration = Duration::from_secs(10);

/// An acquirer's proxy with filters of its own, counting what Pingora asks of it.
#[derive(Clone)]
struct Inner {
    upstream: SocketAddr,
    alpn: ALPN,
    peers: Arc<AtomicUsize>,
    /// Length of the request body its `request_body_filter` saw last.
    body_seen: Arc<AtomicUsize>,
    /// Its `upstream_request_filter` refuses with 403.
    deny: bool,
}

#[async_trait]
impl ProxyHttp for Inner {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        self.peers.fetch_add(1, Ordering::SeqCst);
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.alpn = self.alpn.clone();
        peer.options.read_timeout = Some(LIMIT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        if self.deny {
            return Error::e_explain(ErrorType::HTTPStatus(403), "denied by the acquirer");
        }
        req.insert_header("x-acquirer-auth", "inner")
    }

    async fn request_body_filter(
        &self,
        _: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        _: &mut (),
    ) -> Result<()> {
        if end_of_stream {
            self.body_seen
                .store(body.as_ref().map_or(0, Bytes::len), Ordering::SeqCst);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _: &mut Session,
        res: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        res.insert_header("x-inner", "seen")
    }
}

fn inner(upstream: SocketAddr, alpn: ALPN) -> Inner {
    Inner {
        upstream,
        alpn,
        peers: Arc::default(),
        body_seen: Arc::default(),
        deny: false,
    }
}

async fn send(addr: SocketAddr, f: &Fixture) -> RawResponse {
    send_fixture(addr, f, &[], LIMIT).await
}

/// The step_up_required fixture's upstream, and a default step-up proxy around an [`Inner`]
/// that speaks `alpn` to it.
async fn setup(alpn: ALPN) -> (upstream::Upstream, Fixture, Inner, SocketAddr) {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let inner = inner(up.addr, alpn);
    let proxy = start_pingora(StepUpProxy::new(
        inner.clone(),
        StepUp::from_toml("").unwrap(),
    ));
    (up, f, inner, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_exchange_runs_the_inner_proxy_phases_once() {
    let (up, f, inner, proxy) = setup(ALPN::H1).await;

    for round in 1..=2 {
        let res = send(proxy, &f).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.body, f.expect.body, "round {round}");
        assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
        assert_eq!(res.header("x-inner"), Some("seen"), "response_filter ran");
        assert_eq!(
            res.header("content-length"),
            Some(f.expect.body.len().to_string().as_str()),
            "exact length"
        );
        assert_eq!(res.header("transfer-encoding"), None);
        assert_eq!(res.header("etag"), None, "stale validator removed");

        let seen = up.take_received();
        assert_eq!(seen.len(), 1);
        let forwarded = f.forwarded_body().unwrap();
        assert_eq!(seen[0].body, forwarded, "the injected bytes");
        assert_eq!(seen[0].headers["x-acquirer-auth"], "inner");
        assert_eq!(
            seen[0].headers["content-length"],
            forwarded.len().to_string().as_str()
        );
        assert_eq!(seen[0].headers["accept-encoding"], "identity");
        assert_eq!(
            inner.peers.load(Ordering::SeqCst),
            round,
            "one peer per request"
        );
        assert_eq!(inner.body_seen.load(Ordering::SeqCst), forwarded.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_gives_the_same_bytes_chunked() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let step_up = StepUp::from_toml("").unwrap();
    let direct = start_pingora(StepUpProxy::new(inner(up.addr, ALPN::H1), step_up.clone()));
    let piped =
        start_pingora(StepUpProxy::new(inner(up.addr, ALPN::H1), step_up).direct_exchange(false));
    let (d, p) = (send(direct, &f).await, send(piped, &f).await);
    let seen = up.take_received();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, seen[1].body, "same bytes upstream");
    assert_eq!((d.status, &d.body), (p.status, &p.body), "same answer");
    // The pipeline's header leaves before the engine's verdict: it carries no marker.
    assert_eq!(d.header("x-klarna-stepup"), Some("rewritten"));
    assert_eq!(p.header("x-klarna-stepup"), None);
    assert_eq!(d.header("x-inner"), p.header("x-inner"));
    assert_eq!(p.header("transfer-encoding"), Some("chunked"));
    assert!(d.header("content-length").is_some());
}

/// A configured status (`partner_response.http_status`): the direct exchange sends it with
/// the rewritten block; the pipeline, whose header leaves before the verdict, cuts the answer
/// short rather than send the block under the payment API's 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_status_is_sent_by_the_direct_exchange_and_never_replaced_on_the_pipeline() {
    let up = upstream::start().await;
    let f = fixtures::by_name("paytrail_step_up");
    up.set_answer(Answer::of(&f));
    let step_up = StepUp::from_toml(&f.config).unwrap();
    let direct = start_pingora(StepUpProxy::new(inner(up.addr, ALPN::H1), step_up.clone()));
    let piped =
        start_pingora(StepUpProxy::new(inner(up.addr, ALPN::H1), step_up).direct_exchange(false));

    let d = send(direct, &f).await;
    assert_eq!(d.status, 403);
    assert_eq!(d.body, f.expect.body);
    assert_eq!(d.header("x-klarna-stepup"), Some("rewritten"));
    assert_eq!(
        d.header("x-inner"),
        Some("seen"),
        "the inner response_filter ran"
    );
    let length = f.expect.body.len().to_string();
    assert_eq!(d.header("content-length"), Some(length.as_str()));

    let headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let p = raw_request(
        piped,
        &f.method,
        &f.path,
        &headers,
        ReqBody::Length(&f.body),
        LIMIT,
    )
    .await;
    if let Ok(p) = &p {
        assert!(p.status >= 500, "{p:?}");
        assert_ne!(p.body, f.expect.body);
    }
    let seen = up.take_received();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].body,
        f.forwarded_body().unwrap(),
        "the pipeline forwarded it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_capable_peer_takes_the_pipeline_with_the_same_peer() {
    let (up, f, inner, proxy) = setup(ALPN::H2H1).await;
    let res = send(proxy, &f).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, f.expect.body);
    assert_eq!(
        res.header("transfer-encoding"),
        Some("chunked"),
        "the pipeline"
    );
    assert_eq!(up.take_received()[0].body, f.forwarded_body().unwrap());
    assert_eq!(
        inner.peers.load(Ordering::SeqCst),
        1,
        "the peer is asked once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_body_limit_streams_through_untouched() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    let mut big = Answer::of(&f);
    let padding = "x".repeat(20_000);
    big.body = format!(r#"{{"payment_transaction_response":{{"result":"STEP_UP_REQUIRED"}},"padding":"{padding}"}}"#)
        .into_bytes();
    up.set_answer(big.clone());
    let step_up = StepUp::from_toml("body_limit = 4096").unwrap();
    let proxy = start_pingora(StepUpProxy::new(inner(up.addr, ALPN::H1), step_up));
    let res = send(proxy, &f).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("x-klarna-stepup"), Some("passthrough"));
    assert!(res.body == big.body, "the upstream's bytes");
    assert_eq!(up.take_received()[0].body, f.forwarded_body().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inner_filter_error_stays_the_inner_proxys_not_a_502() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let inner = Inner {
        deny: true,
        ..inner(up.addr, ALPN::H1)
    };
    let proxy = start_pingora(StepUpProxy::new(inner, StepUp::from_toml("").unwrap()));
    let res = send(proxy, &f).await;
    assert_eq!(res.status, 403, "the inner proxy's fail_to_proxy answers");
    assert!(
        up.take_received().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_a_body_keeps_its_status_and_gets_no_length() {
    let (up, f, _, proxy) = setup(ALPN::H1).await;
    for status in [204, 202] {
        up.set_answer(Answer {
            status,
            ..Answer::default()
        });
        let res = send(proxy, &f).await;
        assert_eq!(res.status, status);
        assert!(res.body.is_empty());
        assert_eq!(res.header("x-klarna-stepup"), Some("passthrough"));
        let length = (status != 204).then_some("0");
        assert_eq!(res.header("content-length"), length, "{status}");
    }
}

/// An inner proxy whose `fail_to_connect` always asks for a retry.
#[derive(Clone)]
struct Retrying(Inner);

#[async_trait]
impl ProxyHttp for Retrying {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut ()) -> Result<Box<HttpPeer>> {
        self.0.upstream_peer(s, ctx).await
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        _: &mut (),
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(true);
        e
    }
}

#[tokio::test]
async fn the_direct_exchange_takes_its_attempts_from_the_server_conf() {
    // Nothing listens there: every connection attempt fails, and the inner proxy says retry.
    let dead = common::ports::free_addr();
    let f = fixtures::by_name("step_up_required");
    let inner = Retrying(inner(dead, ALPN::H1));
    let conf = pingora::server::configuration::ServerConf {
        max_retries: 3,
        ..Default::default()
    };
    let proxy =
        StepUpProxy::new(inner.clone(), StepUp::from_toml(&f.config).unwrap()).server_conf(&conf);
    let addr = start_pingora(proxy);
    let res = send(addr, &f).await;
    assert_eq!(res.status, 502, "{:?}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("x-klarna-stepup"), Some("upstream_unreachable"));
    assert_eq!(
        inner.0.peers.load(Ordering::SeqCst),
        3,
        "one upstream_peer per attempt"
    );
}

/// `request`'s bytes to `addr`, and what comes back until the proxy closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    common::raw_http::raw_exchange(addr, request, LIMIT).await
}

/// The direct exchange speaks HTTP/1.1 both ways: an HTTP/1.0 request without `Host`
/// reaches the payment API with one (RFC 9112 section 3.2: it was sent without), the
/// peer's address; an answer in HTTP/1.0 goes out in the proxy's version (RFC 9110
/// section 6.2: it went out as HTTP/1.0 on a kept-alive HTTP/1.1 connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_exchange_speaks_http11_with_a_host_both_ways() {
    let (up, f, _, proxy) = setup(ALPN::H1).await;
    let mut head = format!("{} {} HTTP/1.0\r\n", f.method, f.path);
    for (n, v) in &f.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", f.body.len()));
    let answer = raw_exchange(proxy, &[head.as_bytes(), &f.body].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let got = up.take_received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["host"], up.addr.to_string().as_str());

    let old = upstream::start_raw(
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    let proxy = start_pingora(StepUpProxy::new(
        inner(old, ALPN::H1),
        StepUp::from_toml("").unwrap(),
    ));
    let mut request = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        f.method, f.path
    );
    for (n, v) in &f.headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", f.body.len()));
    let answer = raw_exchange(proxy, &[request.as_bytes(), &f.body].concat()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("{}"), "{answer}");
}
