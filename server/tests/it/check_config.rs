//! `klarna-stepup check-config`: the effective configuration printed, every error named
//! with its key, warnings, exit codes.

use std::process::Command;

use crate::support::binary::{write_config, BIN};

#[test]
fn check_config_prints_the_effective_configuration() {
    let path = write_config(
        "ok.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:9000\"\n",
    );
    let out = check_config(&path);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "body_limit = 1048576",
        "path = \"/payments\"",
        "[server]",
        "listen = \"127.0.0.1:8080\"",
        "read_timeout_ms = 30000",
        "max_connections = 10000",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // What it prints is itself a valid configuration.
    let again = write_config("again.toml", &text);
    let out = check_config(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_every_error() {
    let path = write_config(
        "bad.toml",
        r#"
body_limit = 0
[return_url_policy]
schemes = ["https"]
[server]
listen = "localhost"
upstream = ["127.0.0.1:9000", "no-port"]
threads = 0
"#,
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "body_limit: must be at least 1 byte",
        "server.listen: must be an address",
        "server.upstream[1]: must be host:port",
        "server.threads: must be between 1 and 1024",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    let out = Command::new(BIN)
        .arg("check-config")
        .arg(write_config(
            "tls.toml",
            r#"
[server]
listen = "127.0.0.1:8443"
upstream = "127.0.0.1:9000"
[server.tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"
[server.upstream_tls]
sni = "payments.internal.example"
client_cert = "/nonexistent/client.pem"
client_key_env = "KLARNA_STEPUP_TEST_UNSET_KEY"
"#,
        ))
        .env_remove("KLARNA_STEPUP_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "server.tls.cert: /nonexistent/cert.pem is not a readable file",
        "server.tls.key: ",
        "server.upstream_tls.client_cert: ",
        "server.upstream_tls.client_key_env: environment variable KLARNA_STEPUP_TEST_UNSET_KEY is not set",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    let out = check_config(write_config("nosrv.toml", "nope = 1\n"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("server: missing table"), "{err}");
    assert!(err.contains("nope: unknown field"), "{err}");
}

/// `klarna-stepup check-config FILE`, run to its end.
pub(crate) fn check_config(path: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_config_reports_every_error_in_one_round() {
    // One misspelt key among wrong values and failed checks, in both parts of the file.
    // The library's errors (its configuration tests read the same file), then the server's.
    let text = format!(
        "{}{}",
        include_str!("../../../src/config/many-errors.toml"),
        r#"[server]
listen = "nope"
upstream = "127.0.0.1:9000"
max_headers = "many"
admin = "also-nope"
threads = 0
[server.health_check]
interval_ms = "often"
timeout_ms = 5000
"#
    );
    let path = write_config("many.toml", &text);
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    let keys: Vec<_> = err
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "server.health_check.interval_ms",
            "server.max_headers",
            "return_url_policy.max_lenght",
            "return_url_policy.max_length",
            "routes[1].method",
            "webhooks.enabled",
            "body_limit",
            "routes[0].method",
            "routes[2].path",
            "inject_at",
            "return_url_policy.schemes[0]",
            "defaults.interaction_expiry",
            "partner_response.pending",
            "partner_response.redirect_url",
            "partner_response.placement",
            "server.listen",
            "server.threads",
            "server.admin",
        ],
        "{err}"
    );
    // Every line says where its key is.
    assert!(err.lines().all(|l| l.ends_with(')')), "{err}");
}

#[test]
fn check_config_validates_and_prints_the_partner_table() {
    let ok = write_config(
        "partners.toml",
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"
[return_url_policy]
allowed_hosts = ["acquirer.example"]
[defaults]
interaction_expiry = "PT45M"
[partners]
header = "X-Partner-Id"
[[partners.entries]]
id = "shop-a"
allowed_hosts = ["a.example"]
return_url = "https://a.example/back"
[[partners.entries]]
id = "shop-b"
allowed_hosts = []
"#,
    );
    let out = check_config(&ok);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Each entry with what it inherits spelled out.
    for want in [
        "[partners]",
        "header = \"X-Partner-Id\"",
        "unknown = \"refuse\"",
        "[[partners.entries]]",
        "id = \"shop-a\"",
        "allowed_hosts = [\"a.example\"]",
        "return_url = \"https://a.example/back\"",
        "interaction_expiry = \"PT45M\"",
        "schemes = [\"https\"]",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(
        text.matches("interaction_expiry = \"PT45M\"").count(),
        3,
        "{text}"
    );
    assert!(
        err.contains("warning: partners.entries[1].allowed_hosts: empty"),
        "{err}"
    );
    assert!(!err.contains("return_url_policy.allowed_hosts"), "{err}");
    // What it prints is itself a valid configuration.
    let again = write_config("partners-again.toml", &text);
    let out = check_config(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write_config(
        "partners-bad.toml",
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"
[partners]
header = "X-Partner-Id"
[[partners.entries]]
id = "shop-a"
[[partners.entries]]
id = "shop a"
[[partners.entries]]
id = "shop-c"
allowed_hosts = ["ok.example", "bad host"]
interaction_expiry = "PT5M"
"#,
    );
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "partners.entries[1].id: must be 1 to 64 ASCII letters",
        "partners.entries[2].allowed_hosts[1]: ",
        "partners.entries[2].interaction_expiry: must be an ISO 8601 duration between PT15M and PT48H",
        "(line 13,",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn check_config_takes_config_as_a_flag_and_warns_of_an_open_allow_list() {
    let path = write_config(
        "flag.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:9000\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: return_url_policy.allowed_hosts: empty: any https host"),
        "{err}"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for want in ["RUST_LOG", "Examples:", "check-config --config"] {
        assert!(help.contains(want), "{want:?} in\n{help}");
    }
    let serve_help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let serve_help = String::from_utf8(serve_help.stdout).unwrap();
    assert!(serve_help.contains("--log-format"), "{serve_help}");
}
