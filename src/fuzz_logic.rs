//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`), each checking the
//! invariants that must hold for any input, not just "no panic".

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::{RequestVerdict, ResponseVerdict, Route, StepUp, StepUpConfig};

const WEBHOOK_KEY: &str = "fuzz-webhook-key";
const RETURN_KEY: &str = "fuzz-return-key-0123456789abcdef0123";

fn engine() -> &'static StepUp {
    static ENGINE: std::sync::OnceLock<StepUp> = std::sync::OnceLock::new();
    ENGINE.get_or_init(build)
}

fn build() -> StepUp {
    let toml = r#"
        [webhooks]
        enabled = true
        keys = [{ id = "k", env = "W" }]
        [acquirer_return]
        enabled = true
        public_base_url = "https://pay.acquirer.example"
        keys = [{ id = "r", env = "R" }]
    "#;
    let config = StepUpConfig::from_toml(toml).expect("fuzz config");
    StepUp::with_secrets(config, |n| match n {
        "W" => Some(WEBHOOK_KEY.into()),
        "R" => Some(RETURN_KEY.into()),
        _ => None,
    })
    .expect("fuzz engine")
}

fn candidate(e: &StepUp) -> crate::Candidate {
    match e.classify(
        &Method::POST,
        &http::Uri::from_static("/payments"),
        &HeaderMap::new(),
    ) {
        Route::Candidate(c) => c,
        _ => unreachable!("/payments is a default route"),
    }
}

/// The clock the fuzz targets run at (unix seconds): fixed, so that a run is repeatable.
const NOW: u64 = 1_800_000_000;

/// Request injection: an injected body is JSON; everything else is left alone. The JSON
/// scanner under it accepts exactly what serde_json accepts, with the same member spans.
///
/// Fail closed: whatever is forwarded (injected, or untouched as not Klarna) is one strict
/// JSON object with no duplicate of a key the layer reads (checked with serde_json's reading,
/// not the engine's), and any `step_up_config` in it has an http(s) return URL. The same
/// bytes, taken as a request path, are classified as a router would read them.
pub fn request(data: &[u8]) {
    crate::engine::json::assert_parses_as_serde(data);
    let e = engine();
    match e.rewrite_request(candidate(e), data, NOW) {
        RequestVerdict::Injected { body, .. } => {
            // serde_json's own reading (not `Value`, which refuses numbers beyond f64, such
            // as 7e6576666666: JSON's grammar has no range, and the bytes are forwarded as
            // sent).
            let members =
                crate::engine::json::serde_members(&body).expect("injected body is a JSON object");
            // Under the caller's own spelling when it sent one (`ſtep_up_config`, completed
            // in place): the name a Go payment API reads as step_up_config.
            assert!(members
                .iter()
                .any(|(k, v)| go_names(k, "step_up_config") && v.starts_with('{')));
            assert_forwardable(&body);
        }
        RequestVerdict::NotKlarna => assert_forwardable(data),
        RequestVerdict::Refused(r) => assert!(r.status().is_client_error(), "{r:?}"),
    }
    route(data);
    head(data);
}

/// `data` as a request head's header lines (`name: value`, one per line): what the head
/// checks let through has one `Host` (HTTP/1.1), at most one all-digit `Content-Length`
/// and fits the limits; no step-up header survives the forged-header strip, and no
/// hop-by-hop header (nor one that `Connection` names) survives the hop-by-hop strip.
fn head(data: &[u8]) {
    use crate::engine::{check_request_head, strip_forged_headers, HeadLimits};
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let limits = HeadLimits {
        max_bytes: 512,
        max_count: 12,
    };
    let mut checked = headers.clone();
    if check_request_head(&mut checked, http::Version::HTTP_11, 9, limits).is_ok() {
        assert_eq!(checked.get_all(http::header::HOST).iter().count(), 1);
        let lengths: Vec<_> = checked
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert!(lengths.len() <= 1, "{lengths:?}");
        assert!(lengths
            .iter()
            .all(|v| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit)));
        assert!(checked.len() <= limits.max_count);
    }
    let mut stripped = headers.clone();
    strip_forged_headers(&mut stripped);
    // Step-up's names: `x-klarna-stepup` and `x-klarna-stepup-*` (not `x-klarna-stepupx`),
    // with `_` read as `-` (Rack and CGI do).
    assert!(stripped.keys().all(|k| {
        let k = k.as_str().replace('_', "-");
        k != "x-klarna-stepup" && !k.starts_with("x-klarna-stepup-")
    }));
    let mut hop = headers;
    let named: Vec<String> = hop
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    crate::engine::strip_hop_by_hop(&mut hop);
    for k in hop.keys() {
        let k = k.as_str();
        assert!(
            ![
                "connection",
                "keep-alive",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade"
            ]
            .contains(&k)
                && !k.starts_with("proxy-")
                && (k == "host" || !named.iter().any(|n| n == k)),
            "{k} survived"
        );
    }
}

/// Keys the engine reads, by object: a forwarded body has at most one of each.
const READ_KEYS: [&str; 8] = [
    "payment_method",
    "request_payment_transaction",
    "step_up_config",
    "klarna_return_url",
    "return_url",
    "klarna_app_return_url",
    "app_return_url",
    "reference",
];

/// Whether a member name is `key` to Go's `encoding/json` (written apart from the engine's
/// `same_name`): Unicode simple case folding onto ASCII, as Go's `foldName` does.
fn go_names(member: &str, key: &str) -> bool {
    let folded: String = member
        .chars()
        .map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            '\u{130}' | '\u{131}' => 'i',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    folded == key
}

fn assert_forwardable(body: &[u8]) {
    use crate::engine::json::serde_members;
    let root = serde_members(body).expect("a forwarded body is one JSON object");
    let once = |members: &[(String, String)], keys: &[&str]| {
        for k in keys {
            let n = members.iter().filter(|(m, _)| go_names(m, k)).count();
            assert!(n <= 1, "{k} forwarded {n} times");
        }
    };
    once(&root, &READ_KEYS);
    let get = |members: &[(String, String)], k: &str| {
        members
            .iter()
            .find(|(m, _)| go_names(m, k))
            .map(|(_, v)| v.clone())
    };
    if let Some(pm) = get(&root, "payment_method").and_then(|v| serde_members(v.as_bytes())) {
        once(&pm, &["type"]);
    }
    let Some(suc) = get(&root, "step_up_config").and_then(|v| serde_members(v.as_bytes())) else {
        return;
    };
    once(
        &suc,
        &["payment_request_reference", "customer_interaction_config"],
    );
    let Some(cic) =
        get(&suc, "customer_interaction_config").and_then(|v| serde_members(v.as_bytes()))
    else {
        return;
    };
    once(
        &cic,
        &[
            "method",
            "return_url",
            "app_return_url",
            "interaction_expiry",
        ],
    );
    if let Some(url) = get(&cic, "return_url") {
        let url: String = serde_json::from_str(&url).expect("a validated return_url is a string");
        let lower = url.to_ascii_lowercase();
        assert!(
            lower.starts_with("https://") || lower.starts_with("http://"),
            "forwarded return_url {url:?}"
        );
    }
}

/// `data` as a request path: an exact candidate route is a candidate, any other spelling a
/// lenient router could take for one is refused, and any spelling of the relay path is 404.
/// The reference reading is the `url` crate's (dot segments, `\`), then percent-decoding,
/// `;parameters`, empty segments and case, written apart from the engine's.
fn route(data: &[u8]) {
    let e = engine();
    let text = String::from_utf8_lossy(data);
    let Ok(uri) = format!("/{}", text.trim_start_matches('/')).parse::<http::Uri>() else {
        return;
    };
    let path = uri.path();
    let Ok(parsed) = url::Url::parse(&format!("http://h{path}")) else {
        return;
    };
    let mut reading = parsed.path().as_bytes().to_vec();
    for _ in 0..8 {
        reading = percent_encoding::percent_decode(&reading).collect();
    }
    let mut segs: Vec<String> = Vec::new();
    for seg in String::from_utf8_lossy(&reading).split(['/', '\\']) {
        let seg = seg.split(';').next().unwrap_or("").to_ascii_lowercase();
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            _ => segs.push(seg),
        }
    }
    let reading = format!("/{}", segs.join("/"));
    // As a lenient router may still take it: a NUL ends a segment, trailing dots and spaces
    // are dropped, and the last segment loses its format suffix (`/payments.json`).
    let last = segs.len().saturating_sub(1);
    let loose_segs: Vec<String> = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.split('\0').next().unwrap_or("");
            let s = if i == last {
                s.split('.').next().unwrap_or("")
            } else {
                s
            };
            s.trim_end_matches(|c: char| c == '.' || c.is_ascii_whitespace())
                .to_owned()
        })
        .filter(|s| !s.is_empty())
        .collect();
    let loose = format!("/{}", loose_segs.join("/"));
    let h = HeaderMap::new();
    let names_payment = |reading: &str, segs: &[String]| {
        matches!(reading, "/payments" | "/v1/payments")
            || (segs.len() == 5
                && segs[0] == "v2"
                && segs[1] == "accounts"
                && segs[3] == "payment"
                && segs[4] == "authorize")
    };
    let payment = names_payment(&reading, &segs) || names_payment(&loose, &loose_segs);
    let exact = matches!(path, "/payments" | "/v1/payments")
        || path.strip_prefix("/v2/accounts/").is_some_and(|rest| {
            rest.strip_suffix("/payment/authorize")
                .is_some_and(|id| !id.is_empty() && !id.contains('/'))
        });
    match e.classify(&Method::POST, &uri, &h) {
        Route::Candidate(_) => assert!(exact, "candidate {path:?}"),
        Route::PassThrough => assert!(!payment && !exact, "{path:?} read as {reading:?}"),
        Route::RelayPathFromOutside => assert!(
            reading == "/webhooks/klarna" || loose == "/webhooks/klarna",
            "{path:?} read as {reading:?}"
        ),
        _ => {}
    }
    if reading == "/webhooks/klarna" || loose == "/webhooks/klarna" {
        for m in [Method::GET, Method::POST, Method::DELETE] {
            assert_eq!(
                e.classify(&m, &uri, &h),
                Route::RelayPathFromOutside,
                "{m} {path:?}"
            );
        }
    }
}

/// Response rewrite: never panics; a rewrite is JSON.
pub fn response(data: &[u8]) {
    let e = engine();
    let RequestVerdict::Injected { exchange, .. } = e.rewrite_request(
        candidate(e),
        br#"{"payment_method":"klarna","return_url":"https://shop.example/r"}"#,
        NOW,
    ) else {
        unreachable!("a valid Klarna request")
    };
    if let ResponseVerdict::Rewritten { body, .. } =
        e.rewrite_response(&exchange, StatusCode::OK, &HeaderMap::new(), data)
    {
        // Validated, not built: Klarna's raw values pass through, whatever their numbers.
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).expect("rewritten body is JSON");
    }
}

/// Return tokens: arbitrary paths and queries never redirect anywhere but a signed URL's
/// origin, and a token minted here always resolves.
pub fn return_token(data: &[u8]) {
    let e = engine();
    let text = String::from_utf8_lossy(data);
    let (path, query) = text.split_once('?').unwrap_or((&text, ""));
    for candidate in [
        format!("/klarna/return/{path}?{query}"),
        format!("/klarna/return/{text}"),
    ] {
        let Ok(uri) = candidate.parse::<http::Uri>() else {
            continue;
        };
        if let Ok(r) = e.resolve_return(&uri, 0) {
            // Only a real signature gets here; fuzzing should never forge one.
            panic!("forged token accepted: {}", r.reference);
        }
    }
    // A minted token round-trips whatever the query holds.
    let RequestVerdict::Injected { body, .. } = e.rewrite_request(
        candidate(e),
        br#"{"payment_method":"klarna","reference":"r1","return_url":"https://shop.example/r?id={klarna.payment_request.id}"}"#,
        NOW,
    ) else {
        unreachable!()
    };
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let sent = v["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .expect("return_url");
    let encoded: String = url::form_urlencoded::byte_serialize(data).collect();
    let uri = sent
        .trim_start_matches("https://pay.acquirer.example")
        .replace("{klarna.payment_request.id}", &encoded);
    let uri: http::Uri = uri.parse().expect("minted URL parses");
    let r = e.resolve_return(&uri, NOW).expect("minted token resolves");
    let to = url::Url::parse(&r.location).expect("location parses");
    assert_eq!(to.host_str(), Some("shop.example"));
}

/// Webhooks: arbitrary signatures and bodies are refused unless really signed.
pub fn webhook(data: &[u8]) {
    let e = engine();
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (sig, body) = data.split_at(split);
    let mut h = HeaderMap::new();
    h.insert("klarna-signing-key-id", HeaderValue::from_static("k"));
    if let Ok(v) = HeaderValue::from_bytes(sig) {
        h.insert("klarna-signature", v);
    }
    assert!(
        e.verify_webhook(&h, body).is_err(),
        "unsigned webhook accepted"
    );
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(WEBHOOK_KEY.as_bytes()).expect("key");
    m.update(body);
    let good = hex::encode(m.finalize().into_bytes());
    h.insert(
        "klarna-signature",
        HeaderValue::from_str(&good).expect("hex"),
    );
    // Signed, it verifies; unless its body names a key twice where the fields are read,
    // which is refused whatever the signature (`duplicate_key`, the key's path named).
    if let Err(r) = e.verify_webhook(&h, body) {
        assert_eq!(
            r.code(),
            crate::RefusalCode::DuplicateKey,
            "signed webhook: {r}"
        );
        assert!(r.param().is_some(), "the repeated key named");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds() {
        let seeds: [&[u8]; 21] = [
            b"payments.json",
            b"webhooks/klarna%2e",
            b"webhooks/klarna%00.json",
            br#"{"PAYMENT_METHOD":"klarna","Return_Url":"https://evil.example/"}"#,
            "{\"payment_method\":\"klarna\",\"return_url\":\"https://a.example/\",\"\u{17F}tep_up_config\":{\"customer_interaction_config\":{\"app_return_url\":\"intent://evil.example/#Intent;end\"}}}".as_bytes(),
            br#"{"payment_method":"klarna","klarna_return_url":"https://a.example/","return_url":"javascript:x"}"#,
            "{\"payment_method\":\"\u{212A}larna\",\"return_url\":\"https://a.example/\",\"\u{17F}tep_up_config\":{\"curs_ioetmnteraction_config\":{}}}".as_bytes(),
            b"",
            b"{}",
            br#"{"payment_method":"klarna","return_url":"https://a.example/{klarna.payment_request.id}"}"#,
            br#"{"payment_transaction_response":{"result":"STEP_UP_REQUIRED"},"payment_request":{"payment_request_id":"x","payment_request_url":"https://p.example/"}}"#,
            b"AQFr\x00\xff/../?id=%0d%0a",
            b"\x40aaaa",
            b"Payments/",
            b"/x/..%2f%2E%2e/%70ayments;x",
            b"webhooks/%6blarna/.",
            b"v2/accounts/a;b/payment/authorize",
            br#"{"payment_method":"klarna","payment_method":"card"}"#,
            br#"{"payment_method":"card","step_up_config":{"customer_interaction_config":{"return_url":"javascript:x"}}}"#,
            b"\xEF\xBB\xBF{}",
            // A webhook whose body (after the one-byte signature) repeats a key: refused
            // even when signed.
            b"\x01{\"metadata\":{\"event_type\":\"x\"},\"payload\":{},\"payload\":{}}",
        ];
        for s in seeds {
            super::request(s);
            super::response(s);
            super::return_token(s);
            super::webhook(s);
        }
    }

    proptest::proptest! {
        /// cargo-fuzz is not on every machine: the request target's invariants on paths a
        /// router could read as a payment route or the relay path, and on JSON-ish bytes.
        #[test]
        fn request_invariants_hold(
            path in "/?((v2|V2|v1|accounts|a|payment|authorize|Payments|payments|webhooks|klarna|%70|%2e|%2F|%6b|\\.|\\.\\.|;x|\\\\)/?){0,6}",
            json in r#"\{("(payment_method|step_up_config|return_url|step\\u005fup_config|Step_Up_Config|RETURN_URL|\\u017ftep_up_config)":("klarna"|"card"|\{\}|\{"customer_interaction_config":\{"return_url":"javascript:x"\}\}|"https://a.example/"),?){0,4}\}"#,
        ) {
            super::request(path.as_bytes());
            super::request(json.as_bytes());
        }
    }
}
