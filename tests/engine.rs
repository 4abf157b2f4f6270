//! The fixture table run through the engine directly.

mod common;

use common::fixtures::{self, Forwarded};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use klarna_stepup::{RequestVerdict, ResponseVerdict, Route, StepUp};

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
                    assert_eq!(r.status.as_u16(), f.expect.status, "{}", f.name);
                    assert_eq!(Some(r.code.to_string()), f.expect.marker, "{}", f.name);
                    assert_eq!(show(&r.to_json()), show(&f.expect.body), "{}", f.name);
                    continue;
                }
            },
            Route::Refused(refused) => {
                let r = refused.refusal();
                assert_eq!(f.forwarded, Forwarded::None, "{}: refused: {r:?}", f.name);
                assert_eq!(r.status.as_u16(), f.expect.status, "{}", f.name);
                assert_eq!(Some(r.code.to_string()), f.expect.marker, "{}", f.name);
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
        let (body, marker) = match exchange {
            None => (up.body.clone(), None),
            Some(ex) => match engine.rewrite_response(&ex, status, &headers(&up.headers), &up.body)
            {
                ResponseVerdict::Rewritten { body, .. } => (body, Some("rewritten".to_string())),
                ResponseVerdict::Keep(_) => (up.body.clone(), Some("passthrough".to_string())),
            },
        };
        assert_eq!(marker, f.expect.marker, "{}: marker", f.name);
        assert_eq!(status.as_u16(), f.expect.status, "{}", f.name);
        assert_eq!(
            show(&body),
            show(&f.expect.body),
            "{}: partner body",
            f.name
        );
    }
}
