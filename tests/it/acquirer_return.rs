//! The acquirer-controlled return: signed tokens, the redirect, and open-redirect attempts.

use http::{HeaderMap, Method, Uri};
use klarna_stepup::{RequestVerdict, Route, StepUp, StepUpConfig};

const KEY_OLD: &str = "old-key-0123456789abcdef0123456789abcdef";
const KEY_NEW: &str = "new-key-fedcba9876543210fedcba9876543210";

fn engine(keys: &[(&str, &str)]) -> StepUp {
    let list: Vec<String> = keys
        .iter()
        .map(|(id, _)| format!(r#"{{ id = "{id}", env = "KEY_{id}" }}"#))
        .collect();
    let toml = format!(
        r#"
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example/"
        keys = [{}]
        "#,
        list.join(", ")
    );
    let secrets: Vec<(String, String)> = keys
        .iter()
        .map(|(id, k)| (format!("KEY_{id}"), k.to_string()))
        .collect();
    StepUp::with_secrets(
        klarna_stepup::StepUpConfig::from_toml(&toml).unwrap(),
        move |name| {
            secrets
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        },
    )
    .unwrap()
}

/// The return_url the engine sent to Klarna for a partner return URL.
fn klarna_return_url(e: &StepUp, partner_url: &str) -> String {
    let Route::Candidate(c) = e.classify(
        &Method::POST,
        &"/payments".parse().unwrap(),
        &HeaderMap::new(),
    ) else {
        panic!()
    };
    let body = serde_json::json!({"payment_method": "klarna", "reference": "order-77", "klarna_return_url": partner_url});
    let RequestVerdict::Injected { body, exchange } =
        e.rewrite_request(c, body.to_string().as_bytes(), now())
    else {
        panic!("not injected")
    };
    assert_eq!(exchange.return_url(), partner_url);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What Klarna does: fill its placeholders.
fn klarna_fills(url: &str) -> Uri {
    url.replace("{klarna.payment_request.id}", "krn:payment:eu1:request:abc")
        .replace("{klarna.payment_request.state}", "COMPLETED")
        .replace(
            "{klarna.payment_request.klarna_network_session_token}",
            "tok%2Fen%3D",
        )
        .parse()
        .unwrap()
}

fn path_of(uri: &Uri) -> Uri {
    uri.path_and_query().unwrap().as_str().parse().unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn round_trip_fills_the_partner_url_and_redirects() {
    let e = engine(&[("k1", KEY_OLD)]);
    let partner = "https://shop.example/done?id={klarna.payment_request.id}&s={klarna.payment_request.state}&t={klarna.payment_request.klarna_network_session_token}&r={klarna.payment_request.payment_request_reference}";
    let sent = klarna_return_url(&e, partner);
    assert!(
        sent.starts_with("https://pay.acquirer.example/klarna/return/"),
        "{sent}"
    );
    assert!(sent.ends_with(
        "?id={klarna.payment_request.id}&state={klarna.payment_request.state}&token={klarna.payment_request.klarna_network_session_token}"
    ));
    let uri = path_of(&klarna_fills(&sent));
    assert_eq!(
        e.classify(&Method::GET, &uri, &HeaderMap::new()),
        Route::Return
    );
    let r = e.resolve_return(&uri, now()).unwrap();
    assert_eq!(
        r.location,
        "https://shop.example/done?id=krn%3Apayment%3Aeu1%3Arequest%3Aabc&s=COMPLETED&t=tok%2Fen%3D&r=order-77"
    );
    assert_eq!(r.reference, "order-77");
    assert_eq!(r.state.as_deref(), Some("COMPLETED"));
    let res = r.to_response();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], r.location.as_str());
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    assert!(
        !format!("{r:?}").contains("tok"),
        "the token must not be printed"
    );
}

#[test]
fn the_id_state_and_token_always_travel_the_token_to_the_partner_only_when_asked_for() {
    let e = engine(&[("k1", KEY_OLD)]);
    let sent = klarna_return_url(&e, "https://shop.example/done");
    assert!(
        sent.ends_with(
            "?id={klarna.payment_request.id}&state={klarna.payment_request.state}\
             &token={klarna.payment_request.klarna_network_session_token}"
        ),
        "{sent}"
    );
    let r = e
        .resolve_return(&path_of(&klarna_fills(&sent)), now())
        .unwrap();
    // The token is for the payment API (the notification), not the customer's browser.
    assert_eq!(r.location, "https://shop.example/done");
    assert!(String::from_utf8(r.notification())
        .unwrap()
        .contains(r#""klarna_network_session_token":"tok/en=""#));
    // The acquirer learns them even though the partner's URL does not use them.
    assert_eq!(
        r.payment_request_id.as_deref(),
        Some("krn:payment:eu1:request:abc")
    );
    assert_eq!(r.state.as_deref(), Some("COMPLETED"));
}

#[test]
fn the_token_lives_as_long_as_the_payment_request_can() {
    // The partner's own interaction_expiry (48 h): the token outlives Klarna's default 3 h.
    let e = engine(&[("k1", KEY_OLD)]);
    let Route::Candidate(c) = e.classify(
        &Method::POST,
        &"/payments".parse().unwrap(),
        &HeaderMap::new(),
    ) else {
        panic!()
    };
    let body = serde_json::json!({"payment_method": "klarna", "reference": "order-78",
        "step_up_config": {"customer_interaction_config": {
            "interaction_expiry": {"duration": "PT48H"}}},
        "klarna_return_url": "https://shop.example/done"});
    let t = now();
    let RequestVerdict::Injected { body, .. } =
        e.rewrite_request(c, body.to_string().as_bytes(), t)
    else {
        panic!("not injected")
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sent = v["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .unwrap();
    let uri = path_of(&klarna_fills(sent));
    assert!(e.resolve_return(&uri, t + 47 * 3600).is_ok());
    // 48 h + the margin (1 h), rounded up to the hour: refused a bucket later at the latest.
    assert!(e.resolve_return(&uri, t + 51 * 3600).is_err());
    // Without it, Klarna's 3 hours + the margin.
    let short = path_of(&klarna_fills(&klarna_return_url(
        &e,
        "https://shop.example/done",
    )));
    assert!(e.resolve_return(&short, t + 3 * 3600).is_ok());
    assert!(e.resolve_return(&short, t + 6 * 3600).is_err());
}

#[test]
fn the_url_stays_short() {
    let e = engine(&[("k1", KEY_OLD)]);
    let tail = "?id={klarna.payment_request.id}";
    let head = "https://shop.example/";
    let partner = format!("{head}{}{tail}", "p".repeat(300 - head.len() - tail.len()));
    assert_eq!(partner.len(), 300);
    let sent = klarna_return_url(&e, &partner);
    println!(
        "return URL for a {}-character partner URL: {} bytes",
        partner.len(),
        sent.len()
    );
    assert!(sent.len() <= 1024, "{} bytes", sent.len());
}

#[test]
fn tampered_truncated_expired_and_unknown_key_tokens_are_refused() {
    let e = engine(&[("k1", KEY_OLD)]);
    let sent = klarna_return_url(
        &e,
        "https://shop.example/done?id={klarna.payment_request.id}",
    );
    let uri = path_of(&klarna_fills(&sent));
    let path = uri.path().to_owned();
    let token = path.rsplit('/').next().unwrap().to_owned();
    let mut refused = vec![];
    // Every single-character change of the token.
    for i in (0..token.len()).step_by(7) {
        let mut t = token.clone().into_bytes();
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        refused.push(format!("/klarna/return/{}", String::from_utf8(t).unwrap()));
    }
    refused.push(format!("/klarna/return/{}", &token[..token.len() - 1]));
    refused.push(format!("/klarna/return/{}", &token[..token.len() / 2]));
    refused.push("/klarna/return/".into());
    refused.push("/klarna/return/AAAA".into());
    refused.push(format!("/klarna/return/{token}/extra"));
    for p in &refused {
        let err = e.resolve_return(&p.parse().unwrap(), now()).unwrap_err();
        assert_eq!(err.status(), 400, "{p}");
        assert_eq!(err.code().as_str(), "invalid_return_token", "{p}");
    }
    let expired = e.resolve_return(&uri, now() + 5 * 3600).unwrap_err();
    assert_eq!(expired.code().as_str(), "expired_return_token");
    assert!(
        e.resolve_return(&uri, now() + 3 * 3600).is_ok(),
        "valid for the request lifetime"
    );
    let other = engine(&[("k2", KEY_NEW)]);
    assert_eq!(
        other
            .resolve_return(&uri, now())
            .unwrap_err()
            .code()
            .as_str(),
        "invalid_return_token"
    );
    let same_id_other_key = engine(&[("k1", KEY_NEW)]);
    assert_eq!(
        same_id_other_key
            .resolve_return(&uri, now())
            .unwrap_err()
            .code()
            .as_str(),
        "invalid_return_token"
    );
}

#[test]
fn keys_rotate() {
    let old = engine(&[("k1", KEY_OLD)]);
    let uri = path_of(&klarna_fills(&klarna_return_url(
        &old,
        "https://shop.example/r",
    )));
    let rotated = engine(&[("k2", KEY_NEW), ("k1", KEY_OLD)]);
    assert!(
        rotated.resolve_return(&uri, now()).is_ok(),
        "old tokens verify after rotation"
    );
    let fresh = path_of(&klarna_fills(&klarna_return_url(
        &rotated,
        "https://shop.example/r",
    )));
    assert!(
        engine(&[("k2", KEY_NEW)])
            .resolve_return(&fresh, now())
            .is_ok(),
        "new tokens use the new key"
    );
    assert!(old.resolve_return(&fresh, now()).is_err());
}

#[test]
fn open_redirect_attempts_are_refused() {
    let e = engine(&[("k1", KEY_OLD)]);
    for attempt in [
        "/klarna/return//evil.example",
        "/klarna/return///evil.example",
        "/klarna/return/https:evil.example",
        "/klarna/return/https://evil.example",
        "/klarna/return/%5C%5Cevil.example",
        "/klarna/return/abc%0d%0aLocation:%20https://evil.example",
        "/klarna/return/aHR0cHM6Ly9ldmlsLmV4YW1wbGU",
    ] {
        match attempt.parse::<Uri>() {
            Err(_) => {} // never reaches the layer
            Ok(uri) => assert!(e.resolve_return(&uri, now()).is_err(), "{attempt}"),
        }
    }
    // A valid token: the query can fill values, never move the host.
    let sent = klarna_return_url(&e, "https://shop.example/done/{klarna.payment_request.id}");
    let base = sent.split('?').next().unwrap();
    for id in [
        "@evil.example",
        "/..//evil.example",
        "%2F%2Fevil.example",
        "x%0d%0aSet-Cookie:a=b",
        "\\evil.example",
    ] {
        let uri: Uri = match format!(
            "{}?id={id}",
            base.trim_start_matches("https://pay.acquirer.example")
        )
        .parse()
        {
            Ok(u) => u,
            Err(_) => continue,
        };
        let r = e.resolve_return(&uri, now()).unwrap();
        let url = url::Url::parse(&r.location).unwrap();
        assert_eq!(url.host_str(), Some("shop.example"), "{id}: {}", r.location);
        assert!(!r.location.contains(['\r', '\n', '\\']), "{}", r.location);
    }
    // Placeholders are not allowed where they could choose the host.
    let Route::Candidate(c) = e.classify(
        &Method::POST,
        &"/payments".parse().unwrap(),
        &HeaderMap::new(),
    ) else {
        panic!()
    };
    let body = br#"{"payment_method":"klarna","return_url":"https://{klarna.payment_request.state}.example/"}"#;
    assert!(matches!(
        e.rewrite_request(c, body, now()),
        RequestVerdict::Refused(_)
    ));
}

#[test]
fn config_needs_keys_from_the_environment() {
    let toml = r#"
        [acquirer_return]
        enabled = true
        public_base_url = "http://pay.acquirer.example"
        keys = [{ id = "k1", env = "NOT_SET_ANYWHERE_4242" }, { id = "k2", env = "SHORT" }]
    "#;
    let err = StepUp::with_secrets(klarna_stepup::StepUpConfig::from_toml(toml).unwrap(), |n| {
        (n == "SHORT").then(|| "tiny-secret-value".to_string())
    })
    .unwrap_err();
    let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "acquirer_return.public_base_url",
            "acquirer_return.keys[0].env",
            "acquirer_return.keys[1].env"
        ]
    );
    assert!(
        !err.to_string().contains("tiny-secret"),
        "a secret leaked into an error: {err}"
    );
}

#[test]
fn the_acquirer_redirect_needs_the_return_and_replaces_the_redirect_template() {
    let keys = |errs: klarna_stepup::ConfigErrors| -> Vec<String> {
        errs.0.iter().map(|e| e.key.clone()).collect()
    };
    let err = klarna_stepup::StepUp::from_toml("[acquirer_redirect]\nenabled = true").unwrap_err();
    assert_eq!(keys(err), ["acquirer_redirect.enabled"]);
    let err = StepUp::with_secrets(
        StepUpConfig::from_toml(
            "[partner_response]\nredirect_url = \"https://pay.acquirer.example/r/{payment_request_id}\"\n\
             [acquirer_return]\nenabled = true\npublic_base_url = \"https://pay.acquirer.example\"\n\
             keys = [{ id = \"k\", env = \"K\" }]\n\
             [acquirer_redirect]\nenabled = true\npath = \"/klarna/return/pay\"\n",
        )
        .unwrap(),
        |_| Some(KEY_OLD.into()),
    )
    .unwrap_err();
    assert_eq!(
        keys(err),
        ["acquirer_redirect.path", "acquirer_redirect.enabled"]
    );
}

#[test]
fn a_default_return_url_that_asks_for_the_session_token_is_warned_of() {
    let e = StepUp::with_secrets(
        StepUpConfig::from_toml(
            "[defaults]\nreturn_url = \"https://shop.example/r?t={klarna.payment_request.klarna_network_session_token}\"\n\
             [webhooks]\nenabled = true\nkeys = [{ id = \"w\", env = \"K\" }]\n\
             [acquirer_return]\nenabled = true\npublic_base_url = \"https://pay.acquirer.example\"\n\
             keys = [{ id = \"k\", env = \"K\" }]\n",
        )
        .unwrap(),
        |_| Some(KEY_OLD.into()),
    )
    .unwrap();
    let warned: Vec<_> = e.warnings().iter().map(|w| w.key.as_str()).collect();
    assert_eq!(warned, ["defaults.return_url"]);
    assert!(e.warnings()[0].reason.contains("session token"));
}
