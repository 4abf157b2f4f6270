// Throwaway: engine operations for callgrind instruction counts, old vs new (not committed).
use http::{HeaderMap, Method, StatusCode};
use klarna_stepup::{RequestVerdict, Route, StepUp};

#[path = "../tests/common/fixtures.rs"]
mod fixtures;

fn main() {
    let f = fixtures::by_name("step_up_required");
    let e = StepUp::from_toml(&f.config).unwrap();
    let up = f.upstream.clone().unwrap();
    let mut uh = HeaderMap::new();
    for (k, v) in &up.headers {
        uh.insert(
            http::HeaderName::try_from(k.as_str()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let n: usize = std::env::args().nth(1).map_or(1000, |a| a.parse().unwrap());
    let uri: http::Uri = "/payments".parse().unwrap();
    let other: http::Uri = "/health".parse().unwrap();
    let h = HeaderMap::new();
    let mut total = 0usize;
    for _ in 0..n {
        let Route::Candidate(c) = e.classify(&Method::POST, &uri, &h) else {
            panic!()
        };
        let _ = std::hint::black_box(e.classify(&Method::GET, &other, &h));
        let RequestVerdict::Injected { body, exchange } =
            e.rewrite_request(c, &f.body, 1_800_000_000)
        else {
            panic!()
        };
        total += body.len();
        match e.rewrite_response(&exchange, StatusCode::OK, &uh, &up.body) {
            klarna_stepup::ResponseVerdict::Rewritten { body, .. } => total += body.len(),
            _ => panic!(),
        }
    }
    println!("{total}");
}
