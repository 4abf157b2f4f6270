//! Candidate bodies over 64 KiB (Pingora's pipeline) through `StepUpProxy` and through the
//! `StepUpPhases` recipe: an answer is marked only with what was decided when its header
//! left, and its bytes always match its framing and encoding headers. Each case: rewritten,
//! kept, compressed (gzip, which Pingora decodes; deflate, which the engine decodes), and a
//! chunked upload (a Klarna payment and a card payment).
#![cfg(feature = "pingora")]

use crate::common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::fixtures::{self, Fixture};
use common::pingora_proxy::{start_pingora, PaymentApi, Recipe};
use common::raw_http::{raw_request, RawResponse, ReqBody};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::{StepUpPhases, StepUpProxy};
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);

/// `fixture`'s request body, padded past 64 KiB with an extra field.
fn padded(fixture: &str) -> Vec<u8> {
    let f = fixtures::by_name(fixture);
    let mut body = br#"{"padding":""#.to_vec();
    body.extend(std::iter::repeat_n(b'p', 70 * 1024));
    body.extend_from_slice(b"\",");
    body.extend_from_slice(&f.body[1..]);
    body
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// RFC 9110's deflate (zlib-wrapped): an encoding Pingora's decompression leaves alone.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A `Content-Encoding` and its encoder.
type Encoding = Option<(&'static str, fn(&[u8]) -> Vec<u8>)>;

/// `f`'s upstream answer, its body encoded by `encode` under `encoding`.
fn answer(f: &Fixture, encoding: Encoding) -> Answer {
    let mut a = Answer::of(f);
    if let Some((name, encode)) = encoding {
        a.body = encode(&a.body);
        a.headers.push(("content-encoding".into(), name.into()));
    }
    a
}

async fn post(proxy: SocketAddr, body: &[u8], chunked: bool) -> RawResponse {
    let upload = if chunked {
        ReqBody::Chunked(body, 8 * 1024)
    } else {
        ReqBody::Length(body)
    };
    raw_request(
        proxy,
        "POST",
        "/payments",
        &[("content-type", "application/json")],
        upload,
        LIMIT,
    )
    .await
    .unwrap()
}

/// The two Pingora paths a large candidate body takes, in front of `up`.
fn proxies(up: SocketAddr) -> [(&'static str, SocketAddr); 2] {
    let step_up = StepUp::from_toml("").unwrap();
    let inner = PaymentApi {
        upstream: up,
        read_timeout: LIMIT,
    };
    [
        (
            "StepUpProxy",
            start_pingora(StepUpProxy::new(inner, step_up.clone())),
        ),
        (
            "StepUpPhases",
            start_pingora(Recipe {
                step_up: StepUpPhases::new(step_up),
                upstream: up,
            }),
        ),
    ]
}

/// An answer whose header left before the engine's verdict: chunked, no length, no
/// encoding, no validators, and no marker.
fn assert_undecided_head(res: &RawResponse, what: &str) {
    assert_eq!(res.status, 200, "{what}: {}", show(&res.body));
    assert!(res.chunked, "{what}: chunked");
    for name in [
        "content-length",
        "content-encoding",
        "etag",
        "x-klarna-stepup",
    ] {
        assert_eq!(res.header(name), None, "{what}: {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_klarna_bodies_rewritten_and_kept_plain_and_compressed_on_both_paths() {
    let up = upstream::start().await;
    let step_up = fixtures::by_name("step_up_required");
    let unknown = fixtures::by_name("unknown_result");
    let body = padded("step_up_required");
    let gz: Encoding = Some(("gzip", gzip));
    let zl: Encoding = Some(("deflate", deflate));
    for (path, proxy) in proxies(up.addr) {
        for chunked in [false, true] {
            // Rewritten: the partner block, plain, whatever the upstream's encoding.
            for encoding in [None, gz, zl] {
                let what = format!("{path}, chunked upload {chunked}, rewritten {encoding:?}");
                up.set_answer(answer(&step_up, encoding));
                let res = post(proxy, &body, chunked).await;
                assert_undecided_head(&res, &what);
                assert_eq!(show(&res.body), show(&step_up.expect.body), "{what}");
                assert_eq!(up.take_received().len(), 1, "{what}");
            }
            // Kept: the upstream's bytes, decoded when they came encoded (never `rewritten`).
            let plain = Answer::of(&unknown).body;
            for encoding in [None, gz, zl] {
                let what = format!("{path}, chunked upload {chunked}, kept {encoding:?}");
                up.set_answer(answer(&unknown, encoding));
                let res = post(proxy, &body, chunked).await;
                assert_undecided_head(&res, &what);
                assert_eq!(show(&res.body), show(&plain), "{what}");
                assert_eq!(up.take_received().len(), 1, "{what}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_card_payment_is_neither_read_nor_marked_on_both_paths() {
    let up = upstream::start().await;
    let body = padded("card_payment");
    // An answer that would be a Klarna step-up: not read for a card payment.
    let step_up = fixtures::by_name("step_up_required");
    for (path, proxy) in proxies(up.addr) {
        for chunked in [false, true] {
            let what = format!("{path}, chunked upload {chunked}");
            up.set_answer(Answer::of(&step_up));
            let res = post(proxy, &body, chunked).await;
            assert_eq!(res.status, 200, "{what}");
            assert_eq!(res.header("x-klarna-stepup"), None, "{what}");
            assert_eq!(show(&res.body), show(&Answer::of(&step_up).body), "{what}");
            let got = up.take_received();
            assert_eq!(got.len(), 1, "{what}");
            assert!(got[0].body == body, "{what}: forwarded byte for byte");
        }
    }
}

/// For comparison, the direct exchange (bodies up to 64 KiB through `StepUpProxy`): the
/// header follows the verdict, so it is marked, and a kept answer keeps its encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_on_the_direct_exchange_are_marked_and_keep_their_encoding() {
    let up = upstream::start().await;
    let step_up = fixtures::by_name("step_up_required");
    let unknown = fixtures::by_name("unknown_result");
    let [(_, proxy), _] = proxies(up.addr);
    let zl: Encoding = Some(("deflate", deflate));

    up.set_answer(answer(&step_up, zl));
    let res = post(proxy, &step_up.body, false).await;
    assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"));
    assert_eq!(res.header("content-encoding"), None);
    assert_eq!(show(&res.body), show(&step_up.expect.body));

    let kept = answer(&unknown, zl);
    up.set_answer(kept.clone());
    let res = post(proxy, &step_up.body, false).await;
    assert_eq!(res.header("x-klarna-stepup"), Some("passthrough"));
    assert_eq!(res.header("content-encoding"), Some("deflate"));
    assert!(res.body == kept.body, "the upstream's bytes, still encoded");
    assert_eq!(up.take_received().len(), 2);
}

/// An answer that says `deflate` and does not decode: its header left without its
/// `Content-Encoding` (or was about to), so its bytes cannot follow. The client sees it cut
/// short, or the proxy's error if the header had not left yet; never the bytes as a
/// complete answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_answer_that_does_not_decode_is_cut_short_on_both_paths() {
    let up = upstream::start().await;
    let unknown = fixtures::by_name("unknown_result");
    let body = padded("step_up_required");
    let mut corrupt = Answer::of(&unknown);
    corrupt.body = b"not deflate at all".to_vec();
    corrupt
        .headers
        .push(("content-encoding".into(), "deflate".into()));
    up.set_answer(corrupt);
    for (path, proxy) in proxies(up.addr) {
        let res = raw_request(
            proxy,
            "POST",
            "/payments",
            &[("content-type", "application/json")],
            ReqBody::Length(&body),
            LIMIT,
        )
        .await;
        if let Ok(res) = res {
            assert!(res.status >= 500, "{path}: {res:?}");
            assert!(res.body.is_empty(), "{path}: {res:?}");
        }
        assert_eq!(up.take_received().len(), 1, "{path}");
    }
}
