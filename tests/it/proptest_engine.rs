//! Properties of the engine over generated input.

use http::{HeaderMap, Method, StatusCode};
use klarna_stepup::{Candidate, RequestVerdict, ResponseVerdict, Route, StepUp};
use proptest::prelude::*;

/// Keys the engine reads or writes; generated members avoid them.
const OWN_KEYS: [&str; 9] = [
    "payment_method",
    "step_up_config",
    "klarna_return_url",
    "return_url",
    "klarna_app_return_url",
    "app_return_url",
    "reference",
    "request_payment_transaction",
    "processor",
];

fn ws() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", " ", "\n", "\t", "  \r\n "]).prop_map(str::to_owned)
}

fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        r#""(\\u00[0-9a-f]{2}|\\n|\\"|\\\\|\\/|[a-z ])*""#,
    ]
}

/// Any JSON text, with odd whitespace, number formats and escapes.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        "-?(0|[1-9][0-9]{0,29})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,2})?",
        string_literal(),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            (prop::collection::vec((ws(), inner.clone()), 0..5), ws()).prop_map(|(items, end)| {
                let items: Vec<_> = items.into_iter().map(|(w, v)| format!("{w}{v}")).collect();
                format!("[{}{end}]", items.join(","))
            }),
            (
                prop::collection::vec((ws(), key(), ws(), inner), 0..5),
                ws()
            )
                .prop_map(|(members, end)| {
                    let m: Vec<_> = members
                        .into_iter()
                        .map(|(a, k, b, v)| format!("{a}{k}{b}:{v}"))
                        .collect();
                    format!("{{{}{end}}}", m.join(","))
                }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    "[a-z_]{1,12}"
        .prop_filter("not a key the engine owns", |k| {
            !OWN_KEYS.contains(&k.as_str())
        })
        .prop_map(|k| format!("\"{k}\""))
}

/// A partner's Klarna request: generated members around the few the engine reads.
fn klarna_request() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        prop::collection::vec((ws(), key(), ws(), json_value()), 0..8),
        ws(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(members, end, at)| {
            let mut m: Vec<String> = members
                .into_iter()
                .map(|(a, k, b, v)| format!("{a}{k}{b}:{v}"))
                .collect();
            let own = [
                r#""payment_method":"klarna""#.to_owned(),
                r#""return_url" : "https://shop.example/r?id={klarna.payment_request.id}""#
                    .to_owned(),
            ];
            let pos = at.index(m.len() + 1);
            let generated = m.clone();
            m.insert(pos, own.join(","));
            (format!("{{{}{end}}}", m.join(",")), generated)
        })
}

fn candidate(engine: &StepUp) -> Candidate {
    match engine.classify(
        &Method::POST,
        &"/payments".parse().unwrap(),
        &HeaderMap::new(),
    ) {
        Route::Candidate(c) => c,
        other => panic!("{other:?}"),
    }
}

/// The clock the engine is asked at (unix seconds).
const NOW: u64 = 1_800_000_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The injected body is the partner's bytes with one member spliced in before the final
    /// `}`: every other byte is identical.
    #[test]
    fn injection_keeps_every_other_byte((body, _members) in klarna_request()) {
        let engine = StepUp::from_toml("[partner_fields]\nstrip = []\n").unwrap();
        let RequestVerdict::Injected { body: out, exchange } = engine.rewrite_request(candidate(&engine), body.as_bytes(), NOW) else {
            panic!("not injected: {body}");
        };
        let close = body.rfind('}').unwrap();
        prop_assert!(out.starts_with(&body.as_bytes()[..close]));
        prop_assert!(out.ends_with(&body.as_bytes()[close..]));
        let added = std::str::from_utf8(&out[close..out.len() - (body.len() - close)]).unwrap();
        let added = added.strip_prefix(',').unwrap_or(added);
        let member: serde_json::Value = serde_json::from_str(&format!("{{{added}}}")).unwrap();
        prop_assert_eq!(&member["step_up_config"]["customer_interaction_config"]["return_url"],
            "https://shop.example/r?id={klarna.payment_request.id}");
        prop_assert_eq!(member["step_up_config"]["payment_request_reference"].as_str().unwrap(), exchange.reference());
    }

    /// With the default strip list, the forwarded body is still JSON, and equals the partner's
    /// object plus step_up_config, member for member.
    #[test]
    fn stripped_injection_is_still_the_same_object((body, _m) in klarna_request(), app in any::<bool>()) {
        let body = if app {
            body.replacen('{', r#"{"klarna_app_return_url":"app://x","#, 1)
        } else {
            body
        };
        let engine = StepUp::from_toml("").unwrap();
        let RequestVerdict::Injected { body: out, .. } = engine.rewrite_request(candidate(&engine), body.as_bytes(), NOW) else {
            panic!("not injected");
        };
        let mut want: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).unwrap();
        let mut got: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out).unwrap();
        want.remove("klarna_app_return_url");
        prop_assert!(got.remove("step_up_config").is_some());
        prop_assert_eq!(got, want);
    }

    /// Bodies that are not a Klarna object are never changed, whatever they hold: forwarded
    /// untouched when they are one strict JSON object (without a step_up_config of their
    /// own), refused otherwise (fail closed: never forwarded unread).
    #[test]
    fn non_klarna_bodies_are_untouched(value in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let engine = StepUp::from_toml("[detect]\nauthorize_shape = false\n").unwrap();
        for body in [value.as_bytes(), &bytes[..]] {
            let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
            let object = parsed.as_ref().and_then(|v| v.as_object());
            let is_klarna = object.is_some_and(|v| v.get("payment_method").is_some_and(|p| {
                    p.as_str().or_else(|| p.get("type").and_then(|t| t.as_str()))
                        .is_some_and(|s| s.eq_ignore_ascii_case("klarna"))
                }));
            let verdict = engine.rewrite_request(candidate(&engine), body, NOW);
            if is_klarna {
                continue;
            }
            match (&verdict, object) {
                (RequestVerdict::Injected { .. }, _) => prop_assert!(false, "injected: {:?}", verdict),
                (RequestVerdict::Refused(r), None) => prop_assert_eq!(r.code().as_str(), "unreadable_json"),
                (RequestVerdict::NotKlarna, None) => prop_assert!(false, "forwarded unread"),
                // Refused only for a duplicate of a key the layer reads, or a step_up_config
                // of its own that does not hold.
                (RequestVerdict::Refused(r), Some(o)) => prop_assert!(
                    r.code().as_str() == "duplicate_key" || o.contains_key("step_up_config"),
                    "{:?}", r
                ),
                (RequestVerdict::NotKlarna, Some(_)) => {}
            }
        }
    }

    /// The response rewrite never panics on arbitrary bytes or arbitrary JSON, and whatever
    /// it rewrites is JSON.
    #[test]
    fn response_rewrite_never_panics(value in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..256),
                                     result in prop::sample::select(vec!["STEP_UP_REQUIRED", "APPROVED", "DECLINED", "X"])) {
        let engine = StepUp::from_toml("").unwrap();
        let RequestVerdict::Injected { exchange, .. } = engine.rewrite_request(candidate(&engine),
            br#"{"payment_method":"klarna","return_url":"https://a.example/"}"#, NOW) else { panic!() };
        let shaped = format!(
            r#"{{"payment_transaction_response":{{"result":"{result}","payment_transaction":{value},"result_reason":{value}}},
               "payment_request":{{"payment_request_id":{value},"state_context":{value},"payment_request_data":{value},
               "payment_request_url":"https://pay.klarna.com/x"}},"klarna_network_response_data":{value}}}"#
        );
        for body in [value.as_bytes(), &bytes[..], shaped.as_bytes()] {
            if let ResponseVerdict::Rewritten { body, .. } = engine.rewrite_response(&exchange, StatusCode::OK, &HeaderMap::new(), body) {
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
            }
        }
    }
}
