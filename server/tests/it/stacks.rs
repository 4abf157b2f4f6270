//! The real-stack matrix: payment-API stubs written with the stacks acquirers run
//! (server/tests/stacks/: Go, Rack, Node, Python, Java), each decoding requests the way that
//! stack does by default and recording what *it* decoded, behind the proxy binary, the tower
//! layer and the Pingora adapter. A hostile corpus goes through every (adapter, stack) pair:
//! each cell is either refused by the layer (nothing reaches the stub) or the stub decoded no
//! hostile return URL, no relay header the layer did not set, no partner but the one the
//! layer's policy was chosen for, and no request on the relay path. Benign payments must
//! reach every stub as sent.
//!
//! `server/tests/stacks/setup.sh` installs the stacks (`./x test` runs it). A stack that is
//! not set up is skipped, saying why, unless `KLARNA_STEPUP_STACKS` (comma-separated) names
//! it: then the test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::blocking::wait_listening;
use crate::common::pingora_proxy::{start_pingora, PaymentApi};
use crate::common::ports::free_addr;
use crate::common::raw_http::{raw_request, RawResponse, ReqBody};
use crate::common::return_webhook::{signature, COMPLETED, WEBHOOK_KEY};
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::{StepUp, StepUpConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_klarna-stepup");
const LIMIT: Duration = Duration::from_secs(10);

/// The layer's policy, the same for every adapter: an allow-list of partner hosts, partners
/// by header, and the webhook relay at the path the stubs serve.
const POLICY: &str = r#"
[return_url_policy]
allowed_hosts = ["*.partner.example"]
[webhooks]
enabled = true
relay_path = "/internal/klarna/webhooks"
keys = [{ id = "a", env = "KLARNA_STEPUP_STACKS_WH" }]
[partners]
header = "X-Partner-Id"
unknown = "refuse"
[[partners.entries]]
id = "p1"
allowed_hosts = ["*.partner.example"]
"#;

/// The partner every case is sent for (the one the layer's policy is chosen for).
const PARTNER: &str = "p1";
const OK: &str = "https://shop.partner.example/done";
const EVIL: &str = "https://evil.example/phish";
const JS: &str = "javascript:alert(1)";
const RELAY: &str = "/internal/klarna/webhooks";

/// Schemes that open a browser on any page from an app return URL.
const BROWSER_SCHEMES: &[&str] = &[
    "intent",
    "x-safari-",
    "googlechrome",
    "firefox",
    "microsoft-edge",
    "opera",
    "brave",
    "javascript",
    "vbscript",
    "data",
    "file",
    "blob",
    "about",
];

// ---------------------------------------------------------------------------------------------
// The stubs

struct Stub {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stacks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stacks")
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("klarna-stepup-stacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How to start stack `name` on `port`, or why it cannot run here.
fn command(name: &str, port: u16) -> Result<Command, String> {
    let dir = stacks_dir();
    let setup = "run server/tests/stacks/setup.sh";
    let on_path = |p: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(p).is_file()))
    };
    let mut cmd = match name {
        "go" => {
            let stub = dir.join("go/stub");
            if !stub.is_file() {
                return Err(format!("{} is not built ({setup})", stub.display()));
            }
            Command::new(stub)
        }
        "rack" => {
            if !on_path("ruby") {
                return Err(format!("ruby is not installed ({setup})"));
            }
            let mut c = Command::new("ruby");
            c.arg(dir.join("rack/app.rb"));
            c
        }
        "node" => {
            if !dir.join("node/node_modules/express").is_dir() {
                return Err(format!("Express is not installed ({setup})"));
            }
            let mut c = Command::new("node");
            c.arg(dir.join("node/server.js"));
            c
        }
        "python" => {
            let py = dir.join("python/.venv/bin/python");
            if !py.is_file() {
                return Err(format!("{} is missing ({setup})", py.display()));
            }
            let mut c = Command::new(py);
            c.arg(dir.join("python/app.py"));
            c
        }
        "java" => {
            let jars = ["jackson-databind", "jackson-core", "jackson-annotations"]
                .map(|j| format!("/usr/share/java/{j}.jar"));
            if !on_path("java") || jars.iter().any(|j| !Path::new(j).is_file()) {
                return Err(format!(
                    "java or Debian's Jackson (libjackson2-databind-java) is missing ({setup})"
                ));
            }
            let mut c = Command::new("java");
            c.arg("-cp")
                .arg(jars.join(":"))
                .arg(dir.join("java/Stub.java"));
            c
        }
        _ => unreachable!(),
    };
    cmd.arg(port.to_string());
    Ok(cmd)
}

/// Starts stack `name` on a free port and waits until it answers `GET /__decoded`.
async fn start_stub(name: &'static str) -> Result<Stub, String> {
    let addr = free_addr();
    let log = log_dir().join(format!("{name}.log"));
    let child = command(name, addr.port())?
        .env("PORT", addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let mut stub = Stub {
        name,
        addr,
        child,
        log,
    };
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = stub.child.try_wait() {
            let log = std::fs::read_to_string(&stub.log).unwrap_or_default();
            return Err(format!("exited with {status}: {}", tail(&log)));
        }
        if decoded(&stub, "GET").await.is_ok() {
            return Ok(stub);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = stub.child.kill();
            return Err("did not answer within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `GET` (what the stub decoded since the last clear) or `DELETE` (clear) `/__decoded`.
async fn decoded(stub: &Stub, method: &str) -> Result<Vec<Value>, String> {
    let res = raw_request(
        stub.addr,
        method,
        "/__decoded",
        &[],
        ReqBody::None,
        Duration::from_secs(5),
    )
    .await?;
    if res.status != 200 {
        return Err(format!("/__decoded answered {}", res.status));
    }
    match serde_json::from_slice(&res.body) {
        Ok(Value::Array(records)) => Ok(records),
        _ => Err(format!(
            "/__decoded is not a JSON array: {:?}",
            String::from_utf8_lossy(&res.body)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The adapters

fn engine() -> StepUp {
    StepUp::with_secrets(StepUpConfig::from_toml(POLICY).unwrap(), |n| {
        (n == "KLARNA_STEPUP_STACKS_WH").then(|| WEBHOOK_KEY.to_string())
    })
    .unwrap()
}

/// The proxy binary; killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(upstream: SocketAddr) -> (Served, SocketAddr) {
    let listen = free_addr();
    let config = log_dir().join(format!("serve-{}.toml", listen.port()));
    std::fs::write(
        &config,
        format!("{POLICY}\n[server]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n"),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("KLARNA_STEPUP_STACKS_WH", WEBHOOK_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child);
    wait_listening(listen);
    (served, listen)
}

// ---------------------------------------------------------------------------------------------
// The corpus

struct Case {
    name: String,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A benign case: it must reach every stub with this payment method and a web return URL
    /// starting with this.
    benign: Option<(&'static str, &'static str)>,
    /// A webhook signed by Klarna: the layer must relay it, verified, to the relay route.
    signed_webhook: bool,
}

fn json_headers() -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Partner-Id".into(), PARTNER.into()),
    ]
}

fn post(name: impl Into<String>, path: &str, body: impl Into<Vec<u8>>) -> Case {
    Case {
        name: name.into(),
        method: "POST",
        path: path.into(),
        headers: json_headers(),
        body: body.into(),
        benign: None,
        signed_webhook: false,
    }
}

fn with(mut case: Case, headers: &[(&str, &str)]) -> Case {
    case.headers
        .extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    case
}

fn corpus() -> Vec<Case> {
    let hostile =
        format!(r#""step_up_config":{{"customer_interaction_config":{{"return_url":"{JS}"}}}}"#);
    let klarna = format!(r#"{{"payment_method":"klarna",{hostile}}}"#);
    let ok = format!(r#""return_url":"{OK}""#);
    let mut c = Vec::new();

    // Benign: they must reach every stub as sent.
    let mut b = post(
        "benign: Klarna payment",
        "/payments",
        format!(
            r#"{{"payment_method":"klarna","amount":100,"klarna_return_url":"{OK}","klarna_app_return_url":"partnerapp://klarna/done"}}"#
        ),
    );
    b.benign = Some(("klarna", OK));
    c.push(b);
    let mut b = post(
        "benign: Klarna authorize",
        "/v2/accounts/a1/payment/authorize",
        format!(
            r#"{{"request_payment_transaction":{{"amount":100,"currency":"EUR"}},"payment_method":"klarna",{ok}}}"#
        ),
    );
    b.benign = Some(("klarna", OK));
    c.push(b);
    let mut b = with(
        post("benign: signed webhook", "/klarna/webhooks", COMPLETED),
        &[
            ("Klarna-Signing-Key-Id", "a"),
            ("Klarna-Signature", &signature(COMPLETED.as_bytes())),
        ],
    );
    b.signed_webhook = true;
    c.push(b);
    let mut b = post(
        "benign: card payment",
        "/payments",
        r#"{"payment_method":"card","amount":100}"#,
    );
    b.benign = Some(("card", ""));
    c.push(b);
    let mut b = post(
        "benign: card on /v1/payments",
        "/v1/payments",
        format!(r#"{{"payment_method":"card","amount":100,{ok}}}"#),
    );
    b.benign = Some(("card", OK));
    c.push(b);

    // Bodies the layer cannot read strictly (a lenient parser behind it could).
    let utf16: Vec<u8> = klarna.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let utf32: Vec<u8> = klarna
        .chars()
        .flat_map(|ch| (ch as u32).to_be_bytes())
        .collect();
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(klarna.as_bytes());
    let mut invalid_utf8 = br#"{"payment_method":"klarna","x":"#.to_vec();
    invalid_utf8.extend_from_slice(b"\"\xFF\",");
    invalid_utf8.extend_from_slice(format!("{hostile}}}").as_bytes());
    for (name, body) in [
        ("UTF-8 BOM", bom),
        (
            "NaN",
            format!(r#"{{"payment_method":"klarna","amount":NaN,{hostile}}}"#).into_bytes(),
        ),
        (
            "trailing comma",
            format!(r#"{{"payment_method":"klarna",{hostile},}}"#).into_bytes(),
        ),
        (
            "comment",
            format!(r#"{{/**/"payment_method":"klarna",{hostile}}}"#).into_bytes(),
        ),
        ("trailing bytes", format!("{klarna} x").into_bytes()),
        ("second object", format!("{klarna}{{}}").into_bytes()),
        (
            "raw control character",
            format!("{{\"payment_method\":\"klar\tna\",{hostile}}}").into_bytes(),
        ),
        ("invalid UTF-8", invalid_utf8),
        ("UTF-16", utf16),
        ("UTF-32", utf32),
        ("top-level array", format!("[{klarna}]").into_bytes()),
        ("empty body", Vec::new()),
    ] {
        c.push(post(name, "/payments", body));
    }
    for (name, ct, ce, body) in [
        ("Content-Type: text/plain", "text/plain", None, klarna.clone()),
        (
            "form data",
            "application/x-www-form-urlencoded",
            None,
            format!("payment_method=klarna&return_url={JS}&step_up_config[customer_interaction_config][return_url]={EVIL}"),
        ),
        ("Content-Encoding: gzip", "application/json", Some("gzip"), klarna.clone()),
        ("Content-Encoding: identity", "application/json", Some("identity"), klarna.clone()),
    ] {
        let mut case = post(name, "/payments", body);
        case.headers[0].1 = ct.into();
        if let Some(ce) = ce {
            case.headers.push(("Content-Encoding".into(), ce.into()));
        }
        c.push(case);
    }

    // A caller's step_up_config, whatever the payment method says.
    for pm in [r#"" klarna""#, r#""card""#, r#"{"type":"klarna "}"#, "null"] {
        c.push(post(
            format!("step_up_config with payment_method {pm}"),
            "/payments",
            format!(r#"{{"payment_method":{pm},{hostile}}}"#),
        ));
    }
    c.push(post(
        "card with a javascript: app_return_url in step_up_config",
        "/payments",
        r#"{"payment_method":"card","step_up_config":{"customer_interaction_config":{"app_return_url":"javascript:x"}}}"#,
    ));

    // Path spellings.
    for path in [
        "/payments/",
        "/Payments",
        "//payments",
        "/payments;x=1",
        "/%70ayments",
        "/x/../payments",
        "/./payments",
        "/v2/accounts/a1/payment/authorize/",
        "/V2/accounts/a1/payment/authorize",
    ] {
        c.push(post(format!("path {path}"), path, klarna.clone()));
    }

    // Duplicates and escapes.
    for (name, body) in [
        (
            "duplicate step_up_config",
            format!(r#"{{"payment_method":"klarna",{ok},{hostile},"step_up_config":{{}}}}"#),
        ),
        (
            "duplicate step_up_config (escaped)",
            format!(r#"{{"payment_method":"klarna",{ok},{hostile},"step\u005fup_config":{{}}}}"#),
        ),
        (
            "duplicate customer_interaction_config",
            format!(
                r#"{{"payment_method":"klarna","step_up_config":{{"customer_interaction_config":{{"return_url":"{JS}"}},"customer_interaction_config":{{"return_url":"{OK}"}}}}}}"#
            ),
        ),
        (
            "duplicate return_url",
            format!(r#"{{"payment_method":"klarna","return_url":"{JS}",{ok}}}"#),
        ),
        (
            "duplicate return_url, hostile last",
            format!(r#"{{"payment_method":"klarna",{ok},"return_url":"{EVIL}"}}"#),
        ),
        (
            "duplicate klarna_return_url",
            format!(
                r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","klarna_return_url":"{EVIL}"}}"#
            ),
        ),
        (
            "duplicate app_return_url",
            format!(
                r#"{{"payment_method":"klarna",{ok},"app_return_url":"javascript:x","app_return_url":"app://ok"}}"#
            ),
        ),
        (
            "duplicate payment_method",
            format!(r#"{{"payment_method":"klarna","payment_method":"card",{hostile}}}"#),
        ),
        (
            "duplicate payment_method, card first",
            format!(
                r#"{{"payment_method":"card","payment_method":"klarna","return_url":"{EVIL}"}}"#
            ),
        ),
        (
            "escaped return_url key",
            format!(r#"{{"payment_method":"klarna",{ok},"return\u005furl":"{EVIL}"}}"#),
        ),
    ] {
        c.push(post(name, "/payments", body));
    }

    // Go's encoding/json: keys matched case-insensitively, with Unicode simple folds
    // (U+017F for s, U+212A for k); a struct field decoded twice is merged.
    let intent = "intent://evil.example/#Intent;scheme=https;end";
    for (name, body) in [
        (
            "PAYMENT_METHOD",
            format!(r#"{{"PAYMENT_METHOD":"klarna","return_url":"{EVIL}"}}"#),
        ),
        (
            "payment_method KLARNA",
            format!(r#"{{"payment_method":"KLARNA","return_url":"{EVIL}"}}"#),
        ),
        (
            "Klarna_Return_Url beside klarna_return_url",
            format!(
                r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","Klarna_Return_Url":"{EVIL}"}}"#
            ),
        ),
        (
            "Return_Url beside klarna_return_url",
            format!(
                r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","Return_Url":"{EVIL}"}}"#
            ),
        ),
        (
            "Return_Url alone",
            format!(r#"{{"payment_method":"klarna","Return_Url":"{EVIL}"}}"#),
        ),
        (
            "App_Return_Url",
            format!(r#"{{"payment_method":"klarna",{ok},"App_Return_Url":"{JS}"}}"#),
        ),
        (
            "Step_Up_Config",
            format!(
                r#"{{"payment_method":"klarna",{ok},"Step_Up_Config":{{"customer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "STEP_UP_CONFIG",
            format!(
                r#"{{"payment_method":"klarna",{ok},"STEP_UP_CONFIG":{{"customer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "STEP_UP_CONFIG on a card",
            format!(
                r#"{{"payment_method":"card","STEP_UP_CONFIG":{{"CUSTOMER_INTERACTION_CONFIG":{{"RETURN_URL":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "Step_Up_Config app_return_url after (merged)",
            format!(
                r#"{{"payment_method":"klarna",{ok},"Step_Up_Config":{{"customer_interaction_config":{{"app_return_url":"{intent}"}}}}}}"#
            ),
        ),
        (
            "Step_Up_Config app_return_url before (merged)",
            format!(
                r#"{{"Step_Up_Config":{{"customer_interaction_config":{{"app_return_url":"{intent}"}}}},"payment_method":"klarna",{ok}}}"#
            ),
        ),
        (
            "Step_Up_Config after the caller's step_up_config",
            format!(
                r#"{{"payment_method":"klarna",{ok},"step_up_config":{{"customer_interaction_config":{{"return_url":"{OK}"}}}},"Step_Up_Config":{{"customer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "\u{17f}tep_up_config (U+017F)",
            format!(
                r#"{{"payment_method":"klarna",{ok},"ſtep_up_config":{{"customer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "\u{212a}larna_return_url (U+212A)",
            format!(
                r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","Klarna_return_url":"{EVIL}"}}"#
            ),
        ),
        (
            "cu\u{17f}tomer_interaction_config (U+017F)",
            format!(
                r#"{{"payment_method":"klarna",{ok},"step_up_config":{{"cuſtomer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
        (
            "escaped \\u017ftep_up_config",
            format!(
                r#"{{"payment_method":"klarna",{ok},"\u017ftep_up_config":{{"customer_interaction_config":{{"return_url":"{EVIL}"}}}}}}"#
            ),
        ),
    ] {
        c.push(post(format!("Go: {name}"), "/payments", body));
    }

    // Only the first return field validated.
    c.push(post(
        "klarna_return_url valid, return_url javascript:",
        "/payments",
        format!(r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","return_url":"{JS}"}}"#),
    ));
    c.push(post(
        "klarna_return_url valid, return_url hostile host",
        "/payments",
        format!(
            r#"{{"payment_method":"klarna","klarna_return_url":"{OK}","return_url":"{EVIL}"}}"#
        ),
    ));
    c.push(post(
        "klarna_app_return_url valid, app_return_url intent:",
        "/payments",
        format!(r#"{{"payment_method":"klarna",{ok},"klarna_app_return_url":"partnerapp://done","app_return_url":"{intent}"}}"#),
    ));

    // Browser-launching app schemes.
    for scheme_url in [
        intent,
        "x-safari-https://evil.example/",
        "googlechromes://evil.example/",
        "firefox://open-url?url=https://evil.example",
        "microsoft-edge-https://evil.example",
        "opera-https://evil.example",
    ] {
        c.push(post(
            format!("app_return_url {scheme_url}"),
            "/payments",
            format!(r#"{{"payment_method":"klarna",{ok},"app_return_url":"{scheme_url}"}}"#),
        ));
    }

    // Rails: format suffixes, query parameters merged over the body.
    let evil_klarna = format!(r#"{{"payment_method":"klarna","return_url":"{EVIL}"}}"#);
    for path in [
        "/payments.json",
        "/v1/payments.json",
        "/payments.xml",
        "/v2/accounts/a1/payment/authorize.json",
    ] {
        c.push(post(
            format!("format suffix {path}"),
            path,
            evil_klarna.clone(),
        ));
    }
    c.push(post(
        "format suffix authorize shape",
        "/v2/accounts/a1/payment/authorize.json",
        format!(r#"{{"request_payment_transaction":{{"amount":100}},"return_url":"{EVIL}"}}"#),
    ));
    let card = r#"{"payment_method":"card","amount":100}"#;
    for query in [
        format!("payment_method=klarna&step_up_config[customer_interaction_config][return_url]={EVIL}"),
        format!("payment_method=klarna&step_up_config%5Bcustomer_interaction_config%5D%5Breturn_url%5D={EVIL}"),
        format!("return_url={EVIL}"),
        format!("return_url={JS}"),
        format!("app_return_url={intent}"),
    ] {
        c.push(post(
            format!("query {query} beside a card"),
            &format!("/payments?{query}"),
            card,
        ));
    }
    c.push(post(
        "query return_url beside a valid Klarna payment",
        &format!("/payments?return_url={EVIL}"),
        format!(r#"{{"payment_method":"klarna",{ok}}}"#),
    ));

    // Relay and partner headers, as stacks that read `_` as `-` see them.
    let valid = format!(r#"{{"payment_method":"klarna",{ok}}}"#);
    c.push(with(
        post("X_Klarna_Stepup_Verified on a card", "/payments", card),
        &[("X_Klarna_Stepup_Verified", "true")],
    ));
    c.push(with(
        post("X-Klarna-Stepup-Verified on a card", "/payments", card),
        &[
            ("X-Klarna-Stepup-Verified", "true"),
            ("X-Klarna-Stepup-Token", "attacker-token"),
            ("X-Klarna-Stepup-State", "COMPLETED"),
        ],
    ));
    c.push(with(
        post(
            "X_Klarna_Stepup_Verified on Klarna",
            "/payments",
            valid.clone(),
        ),
        &[("X_Klarna_Stepup_Verified", "true")],
    ));
    c.push(with(
        post(
            "X_Partner_Id: other beside X-Partner-Id",
            "/payments",
            valid.clone(),
        ),
        &[("X_Partner_Id", "other")],
    ));
    let mut only_underscore = post("X_Partner_Id only", "/payments", valid.clone());
    only_underscore.headers[1].0 = "X_Partner_Id".into();
    c.push(only_underscore);
    c.push(with(
        post("two X-Partner-Id", "/payments", valid.clone()),
        &[("X-Partner-Id", "other")],
    ));
    c.push(with(
        post("Connection: X-Partner-Id", "/payments", valid.clone()),
        &[("Connection", "X-Partner-Id")],
    ));
    c.push(with(
        post(
            "Connection: X-Partner-Id, X_Partner_Id: other",
            "/payments",
            valid.clone(),
        ),
        &[("Connection", "X-Partner-Id"), ("X_Partner_Id", "other")],
    ));
    c.push(with(
        post("Connection: Host", "/payments", valid.clone()),
        &[("Connection", "Host")],
    ));
    // `Content-Type` listed in `Connection`: removed on the way, the body reaches the stacks
    // untyped, and Rack reads it as a form.
    c.push(with(
        post(
            "Connection: Content-Type, JSON that is a form too",
            "/payments",
            format!(r#"{{"payment_method":"klarna",{ok},"note":"&return_url={EVIL}&z="}}"#),
        ),
        &[("Connection", "Content-Type")],
    ));

    // No Content-Type: Rack reads a POST body as a form, whatever it looks like.
    let mut untyped = post(
        "no Content-Type, JSON that is a form too",
        "/payments",
        format!(r#"{{"payment_method":"card","note":"&return_url={EVIL}&payment_method=klarna"}}"#),
    );
    untyped.headers.retain(|(n, _)| n != "Content-Type");
    c.push(untyped);

    // The relay path from outside, with a forged verification in both spellings.
    let forged = [
        ("X-Klarna-Stepup-Verified", "true"),
        ("X_Klarna_Stepup_Verified", "true"),
    ];
    for suffix in [
        "", "/", ".json", ".", "%2e", "%2E", "%20", "%00", ";x=1", "/.", "?x=1",
    ] {
        c.push(with(
            post(
                format!("relay {RELAY}{suffix}"),
                &format!("{RELAY}{suffix}"),
                r#"{"a":1}"#,
            ),
            &forged,
        ));
    }
    for path in [
        "/internal/klarna/Webhooks",
        "/INTERNAL/KLARNA/WEBHOOKS",
        "/internal/klarna/%77ebhooks",
        "/%69nternal/klarna/webhooks",
        "//internal/klarna/webhooks",
        "/internal//klarna/webhooks",
        "/internal/klarna/./webhooks",
        "/x/../internal/klarna/webhooks",
        "/internal/klarna%2Fwebhooks",
    ] {
        c.push(with(
            post(format!("relay {path}"), path, r#"{"a":1}"#),
            &forged,
        ));
    }
    let mut get = with(
        post(
            format!("relay GET {RELAY}.json"),
            &format!("{RELAY}.json"),
            "",
        ),
        &forged,
    );
    get.method = "GET";
    c.push(get);
    c
}

// ---------------------------------------------------------------------------------------------
// The judgement

/// `scheme` of `url` (lowercase), if it has one.
fn scheme(url: &str) -> Option<String> {
    let (s, _) = url.split_once(':')?;
    let ok = s.chars().next()?.is_ascii_alphabetic()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then(|| s.to_ascii_lowercase())
}

/// Whether an http(s) URL's host is under partner.example.
fn partner_host(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    host == "partner.example" || host.ends_with(".partner.example")
}

/// Why a web return URL the stub decoded is hostile, if it is.
fn hostile_web(url: &str) -> Option<String> {
    if url.chars().any(|c| c <= ' ' || c == '\u{7f}') {
        return Some(format!("web return URL with a control character {url:?}"));
    }
    match scheme(url).as_deref() {
        Some("https" | "http") if partner_host(url) => None,
        Some("https" | "http") => Some(format!("web return URL to another host {url:?}")),
        _ => Some(format!("web return URL with scheme {url:?}")),
    }
}

/// Why an app return URL the stub decoded is hostile, if it is.
fn hostile_app(url: &str) -> Option<String> {
    if url.chars().any(|c| c <= ' ' || c == '\u{7f}') {
        return Some(format!("app return URL with a control character {url:?}"));
    }
    match scheme(url) {
        None => Some(format!("app return URL without a scheme {url:?}")),
        Some(s) if s == "http" || s == "https" => hostile_web(url),
        Some(s) if BROWSER_SCHEMES.iter().any(|b| s.starts_with(b)) => {
            Some(format!("browser-launching app return URL {url:?}"))
        }
        Some(_) => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether an answer is the layer's own refusal: its marker names a refusal code, not
/// `passthrough` (the payment API's own answer) or `rewritten`.
fn layer_refusal(res: &RawResponse) -> bool {
    res.header("x-klarna-stepup")
        .is_some_and(|m| m != "passthrough" && m != "rewritten")
}

/// A record's `{field: url}` object: the return URLs the stub decoded, by field.
fn fields(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, x)| {
                    (
                        k.clone(),
                        x.as_str().map_or_else(|| x.to_string(), str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cell's label (`refused` by the layer; `clean`; `stack-400` or `<status>-stub` when the
/// stack itself refused or did not route it; `HOSTILE` when it decoded something hostile;
/// `LOST` when a benign request did not arrive as sent) and, if it is bad, why.
fn judge(
    case: &Case,
    res: &Result<RawResponse, String>,
    records: &[Value],
) -> (String, Vec<String>) {
    let mut bad = Vec::new();
    for r in records {
        let path = r["path"].as_str().unwrap_or_default();
        if r["route"] == "relay" {
            if case.signed_webhook && strings(&r["verified"]) == ["true"] {
                continue;
            }
            bad.push(format!(
                "forged relay: {} {path} reached the relay route (verified {:?})",
                r["method"].as_str().unwrap_or_default(),
                strings(&r["verified"])
            ));
            continue;
        }
        if r.get("decode_error").is_some() {
            continue; // the stack refused the body itself: nothing decoded is used
        }
        for (field, url) in fields(&r["web_urls"]) {
            bad.extend(hostile_web(&url).map(|why| format!("{field}: {why}")));
        }
        for (field, url) in fields(&r["app_urls"]) {
            bad.extend(hostile_app(&url).map(|why| format!("{field}: {why}")));
        }
        let verified = strings(&r["verified"]);
        if !verified.is_empty() {
            bad.push(format!("relay verification header {verified:?} on {path}"));
        }
        let partner = strings(&r["partner"]);
        if partner != [PARTNER] {
            bad.push(format!(
                "partner header {partner:?}, policy chosen for {PARTNER:?}"
            ));
        }
    }
    if let Some((pm, url)) = case.benign {
        let arrived = records.iter().any(|r| {
            r["route"] == "payment"
                && r.get("decode_error").is_none()
                && r["payment_method"] == pm
                && (url.is_empty()
                    || fields(&r["web_urls"])
                        .iter()
                        .any(|(_, u)| u.starts_with(url)))
        });
        if !arrived {
            bad.push(format!(
                "benign request did not arrive as sent: {} -> {records:?}",
                res.as_ref()
                    .map_or_else(String::clone, |r| r.status.to_string())
            ));
        }
    }
    if case.signed_webhook && !records.iter().any(|r| r["route"] == "relay") {
        bad.push(format!(
            "signed webhook not relayed: {}",
            res.as_ref()
                .map_or_else(String::clone, |r| r.status.to_string())
        ));
    }
    let lost = |why: &String| why.starts_with("benign") || why.starts_with("signed webhook");
    let label = if bad.iter().any(|why| !lost(why)) {
        "HOSTILE".to_string()
    } else if !bad.is_empty() {
        "LOST".to_string()
    } else if records.is_empty() {
        match res {
            Ok(r) if (400..500).contains(&r.status) && layer_refusal(r) => "refused".into(),
            Ok(r) => format!("{}-stub", r.status),
            Err(_) => "no-answer".into(),
        }
    } else if records.iter().all(|r| r.get("decode_error").is_some()) {
        "stack-400".into()
    } else {
        "clean".into()
    };
    (label, bad)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_corpus_through_every_adapter_to_every_stack() {
    let required: Vec<String> = std::env::var("KLARNA_STEPUP_STACKS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut stubs = Vec::new();
    let mut skipped = Vec::new();
    for name in ["go", "rack", "node", "python", "java"] {
        match start_stub(name).await {
            Ok(stub) => stubs.push(stub),
            Err(why) => {
                eprintln!("SKIPPED stack {name}: {why}");
                skipped.push(format!("{name}: {why}"));
                assert!(
                    !required.iter().any(|r| r == name),
                    "stack {name} is required (KLARNA_STEPUP_STACKS) but cannot run: {why}"
                );
            }
        }
    }
    assert!(!stubs.is_empty(), "no stack could run: {skipped:?}");

    // (adapter, stack index, proxy address); the binaries live as long as `served`.
    let mut served = Vec::new();
    let mut cells: Vec<(&str, usize, SocketAddr)> = Vec::new();
    for (i, stub) in stubs.iter().enumerate() {
        let (child, addr) = serve(stub.addr);
        served.push(child);
        cells.push(("bin", i, addr));
        cells.push((
            "tower",
            i,
            crate::common::tower_proxy::start(engine(), stub.addr).await,
        ));
        let pingora = start_pingora(StepUpProxy::new(
            PaymentApi {
                upstream: stub.addr,
                read_timeout: LIMIT,
            },
            engine(),
        ));
        cells.push(("pingora", i, pingora));
    }

    let corpus = corpus();
    let mut matrix: Vec<Vec<String>> = Vec::new();
    let mut failures = Vec::new();
    for case in &corpus {
        let mut row = Vec::new();
        for (adapter, i, addr) in &cells {
            let stub = &stubs[*i];
            decoded(stub, "DELETE").await.expect("clear /__decoded");
            let headers: Vec<(&str, &str)> = case
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let res = raw_request(
                *addr,
                case.method,
                &case.path,
                &headers,
                ReqBody::Length(&case.body),
                LIMIT,
            )
            .await;
            let records = decoded(stub, "GET").await.unwrap_or_else(|e| {
                panic!(
                    "{}: stub stopped answering after {:?}: {e}",
                    stub.name, case.name
                )
            });
            let (label, bad) = judge(case, &res, &records);
            for why in bad {
                failures.push(format!("{} | {adapter}/{} | {why}", case.name, stub.name));
            }
            row.push(label);
        }
        matrix.push(row);
    }

    // The matrix: case × (adapter/stack).
    let mut out = format!("{:52}", "case");
    for (adapter, i, _) in &cells {
        out.push_str(&format!(" {:>14}", format!("{adapter}/{}", stubs[*i].name)));
    }
    out.push('\n');
    for (case, row) in corpus.iter().zip(&matrix) {
        let name: String = case.name.chars().take(52).collect();
        out.push_str(&format!("{name:52}"));
        for label in row {
            out.push_str(&format!(" {label:>14}"));
        }
        out.push('\n');
    }
    if !skipped.is_empty() {
        out.push_str(&format!("skipped stacks: {skipped:?}\n"));
    }
    if failures.is_empty() {
        eprintln!("{out}");
    }
    assert!(
        failures.is_empty(),
        "{} bad cells (case | adapter/stack | what the stack decoded):\n{}\n\n{out}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_judgement_flags_what_it_should() {
    for url in [
        EVIL,
        JS,
        "https://shop.partner.example.evil.example/",
        "https://a@evil.example/",
        "https://evil.example\\@shop.partner.example/",
        "data:text/html,x",
        "//evil.example",
    ] {
        assert!(hostile_web(url).is_some(), "{url}");
    }
    for url in [
        OK,
        "https://partner.example/",
        "https://shop.partner.example:8443/r?x={klarna.payment_request.id}",
    ] {
        assert!(hostile_web(url).is_none(), "{url}");
    }
    for url in [
        "intent://evil.example/#Intent;scheme=https;end",
        "x-safari-https://evil.example/",
        "googlechromes://evil.example/",
        "firefox://open-url?url=https://evil.example",
        "microsoft-edge-https://evil.example",
        "opera-https://evil.example",
        "javascript:x",
        "https://evil.example/",
    ] {
        assert!(hostile_app(url).is_some(), "{url}");
    }
    for url in [
        "partnerapp://klarna/done",
        "app://ok",
        "https://shop.partner.example/app",
    ] {
        assert!(hostile_app(url).is_none(), "{url}");
    }
}
