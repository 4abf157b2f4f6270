//! Engine micro-benchmarks: request injection and response rewrite.
//!
//! Bodies: the 1.5 KB partner request of the `step_up_required` fixture (5 line items), and
//! the same request grown to 20 KB and 200 KB with more line items; the fixture's
//! STEP_UP_REQUIRED answer; and the 1.5 KB request with an app return URL beside the web one
//! (a custom scheme, as the end-to-end benchmark's request has). Throughput is reported in bytes, so criterion prints the rate;
//! ns/byte = time / size.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use klarna_stepup::{Candidate, RequestVerdict, ResponseVerdict, Route, StepUp};

/// The tests' fixture table (the benchmarks read a part of it).
#[path = "../tests/common/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

/// The clock the engine is asked at (unix seconds).
const NOW: u64 = 1_800_000_000;

/// The fixture request with line items repeated until it is at least `size` bytes.
fn grown(base: &[u8], size: usize) -> Vec<u8> {
    let text = std::str::from_utf8(base).unwrap();
    let start = text.find("\"line_items\": [").unwrap() + "\"line_items\": [".len();
    let item = r#"
      {"name": "Merino scarf", "quantity": 1, "unit_price": 2000, "total_amount": 2000, "tax_rate": 25.00, "reference": "SKU-1000", "image_url": "https://partner.example/img/1000.png"},"#;
    let mut out = String::with_capacity(size + item.len());
    out.push_str(&text[..start]);
    while out.len() + (text.len() - start) < size {
        out.push_str(item);
    }
    out.push_str(&text[start..]);
    out.into_bytes()
}

/// `base` with `"klarna_app_return_url": "partnerapp://klarna-return"` as its first member.
fn with_app_return_url(base: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(base).unwrap();
    let open = text.find('{').unwrap() + 1;
    format!(
        "{}\"klarna_app_return_url\": \"partnerapp://klarna-return\",{}",
        &text[..open],
        &text[open..]
    )
    .into_bytes()
}

/// The candidate for a `POST /payments` sent with `headers`.
fn candidate(e: &StepUp, headers: &HeaderMap) -> Candidate {
    match e.classify(&Method::POST, &"/payments".parse().unwrap(), headers) {
        Route::Candidate(c) => c,
        _ => unreachable!(),
    }
}

fn benches(c: &mut Criterion) {
    let f = fixtures::by_name("step_up_required");
    let engine = StepUp::from_toml(&f.config).unwrap();
    let mut json = HeaderMap::new();
    json.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let cand = candidate(&engine, &json);
    // Without a `Content-Type` the body is also read as a form would be (a second scan).
    let untyped = candidate(&engine, &HeaderMap::new());

    let mut group = c.benchmark_group("rewrite_request");
    for (name, cand, body) in [
        ("1.5KB", cand, f.body.clone()),
        ("1.5KB_untyped", untyped, f.body.clone()),
        ("1.5KB_app", cand, with_app_return_url(&f.body)),
        ("20KB", cand, grown(&f.body, 20_000)),
        ("20KB_untyped", untyped, grown(&f.body, 20_000)),
        ("200KB", cand, grown(&f.body, 200_000)),
    ] {
        assert!(matches!(
            engine.rewrite_request(cand, &body, NOW),
            RequestVerdict::Injected { .. }
        ));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{name}/{}B", body.len())),
            &body,
            |b, body| b.iter(|| engine.rewrite_request(cand, black_box(body), NOW)),
        );
    }
    group.finish();

    let RequestVerdict::Injected { exchange, .. } = engine.rewrite_request(cand, &f.body, NOW)
    else {
        unreachable!()
    };
    let answer = f.upstream.as_ref().unwrap().body.clone();
    let headers = HeaderMap::new();
    assert!(matches!(
        engine.rewrite_response(&exchange, StatusCode::OK, &headers, &answer),
        ResponseVerdict::Rewritten { .. }
    ));
    let mut group = c.benchmark_group("rewrite_response");
    group.throughput(Throughput::Bytes(answer.len() as u64));
    group.bench_function(format!("step_up_required/{}B", answer.len()), |b| {
        b.iter(|| engine.rewrite_response(&exchange, StatusCode::OK, &headers, black_box(&answer)))
    });
    group.finish();

    let mut group = c.benchmark_group("classify");
    let uri = "/v1/orders/123".parse().unwrap();
    group.bench_function("pass_through", |b| {
        b.iter(|| engine.classify(&Method::GET, black_box(&uri), &headers))
    });
    let post_other = "/v1/orders".parse().unwrap();
    group.bench_function("post_pass_through", |b| {
        b.iter(|| engine.classify(&Method::POST, black_box(&post_other), &headers))
    });
    let payments = "/v2/accounts/acc-1/payment/authorize".parse().unwrap();
    group.bench_function("candidate", |b| {
        b.iter(|| engine.classify(&Method::POST, black_box(&payments), &headers))
    });
    let ambiguous = "/v2/accounts/acc-1/Payment/./authorize/".parse().unwrap();
    group.bench_function("non_canonical", |b| {
        b.iter(|| engine.classify(&Method::POST, black_box(&ambiguous), &headers))
    });
    group.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(engine);
