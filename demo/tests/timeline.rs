//! `klarna-stepup-demo` itself (what `./x demo` runs): an order paid in its shop has a
//! timeline, with the partner's request, the injected `step_up_config` marked against it,
//! Klarna's answer and the partner block. (The whole flow, step-up included, is tested against
//! the same stack in the server crate's tests (server/tests/it/demo_flow.rs and browser.rs).)

#[path = "../../tests/common/blocking.rs"]
#[allow(dead_code)] // a part of the shared helpers
mod blocking;
#[path = "../../tests/common/ports.rs"]
mod ports;

use ports::free_addr;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The demo child process, killed when dropped.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a fresh connection: the status line's code and the raw answer.
fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = blocking::exchange(addr, &head, body.as_bytes());
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[test]
fn an_order_in_the_demo_shop_has_a_timeline() {
    let (proxy, klarna, api) = (free_addr().port(), free_addr().port(), free_addr().port());
    let _demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_klarna-stepup-demo"))
            .args(["--port", &proxy.to_string()])
            .args(["--klarna-port", &klarna.to_string()])
            .args(["--api-port", &api.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start klarna-stepup-demo"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], proxy));
    blocking::wait_listening(addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(addr, "GET", "/shop", "").0 != 200 {
        assert!(Instant::now() < deadline, "the demo's shop never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Klarna approves at once (the sandbox's trigger): the shop sends the customer straight
    // to its confirmation page.
    let (status, answer) = request(addr, "POST", "/shop/checkout", "scenario=approve");
    assert_eq!(status, 303, "{answer}");
    let confirmation = format!("http://{addr}/shop/confirmation?reference=");
    let reference = answer
        .lines()
        .find_map(|line| line.strip_prefix("location: "))
        .and_then(|location| location.strip_prefix(&confirmation))
        .unwrap_or_else(|| panic!("no redirect to the confirmation page: {answer}"))
        .to_owned();
    let (status, page) = request(addr, "GET", &format!("/demo/orders/{reference}"), "");
    assert_eq!(status, 200, "{page}");
    for shown in [
        r#"<li class="step step-partner-request"#,
        r#"<li class="step step-reached-api"#,
        "&quot;step_up_config&quot;: {</ins>",
        "result <strong>APPROVED</strong>",
        "status <strong>authorized</strong>",
        r#"<span class="took">took "#,
    ] {
        assert!(page.contains(shown), "{shown}: {page}");
    }
}
