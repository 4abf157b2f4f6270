//! `serve` as a process: a busy port named at once, SIGHUP ignored, JSON logs, and no secret
//! in the logs at `RUST_LOG=trace`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::blocking::{exchange, wait_listening};
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{free_addr, spawn_serve, stop_ok, write_config, Served, BIN};

#[test]
fn serve_on_a_busy_port_names_the_address_and_exits_at_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let path = write_config(
        "busy.toml",
        &format!("[server]\nlisten = \"{addr}\"\nupstream = \"127.0.0.1:9\"\n"),
    );
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5), "it lingered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("server.listen: cannot listen on {addr}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ignores_sighup_and_logs_json_when_asked() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        ..Answer::default()
    });
    let listen = free_addr();
    let path = write_config(
        "hup.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    let mut child = spawn_serve(&path, &["--log-format", "json"], "info");
    wait_listening(listen);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended it");
    let r = tokio::task::spawn_blocking(move || {
        exchange(
            listen,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("SIGHUP ignored"), "{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

/// Issue 13 point 7: at `RUST_LOG=trace`, no header, cookie, query token, signature or body
/// reaches the log (the framework's own lines are capped at `info`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_at_rust_log_trace_logs_no_secret() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let listen = free_addr();
    let path = write_config(
        &format!("trace-{}.toml", listen.port()),
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    let mut child = Served(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "trace")
            .env_remove("KLARNA_STEPUP_UNSAFE_FRAMEWORK_DEBUG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_listening(listen);
    let body = f.body.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let secrets = "Authorization: Basic c2VjcmV0\r\nCookie: session=cookie-s3cret\r\n";
        let webhook = br#"{"event_id":"webhook-body-s3cret"}"#;
        [
            exchange(
                listen,
                &format!(
                    "GET /orders?token=query-s3cret HTTP/1.1\r\nHost: x\r\n{secrets}\
                     Connection: close\r\n\r\n"
                ),
                b"",
            ),
            exchange(
                listen,
                &format!(
                    "POST /payments?token=query-s3cret HTTP/1.1\r\nHost: x\r\n{secrets}\
                     Connection: close\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                ),
                &body,
            ),
            exchange(
                listen,
                &format!(
                    "POST /klarna/webhooks HTTP/1.1\r\nHost: x\r\n\
                     Klarna-Signature: sig-s3cret\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    webhook.len()
                ),
                webhook,
            ),
        ]
    })
    .await
    .unwrap();
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 "), "{a}");
    }
    assert!(answers[1].starts_with("HTTP/1.1 200"), "{}", answers[1]);
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("request done"), "{log}");
    for secret in [
        "c2VjcmV0",
        "cookie-s3cret",
        "query-s3cret",
        "sig-s3cret",
        "webhook-body-s3cret",
        // the partner's return URL and the customer (request body)
        "partner.example/klarna/return",
        "customer@example.com",
        // the payment API's answer body
        "payment_request_data",
        "pay.klarna.com/eu/requests",
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}
