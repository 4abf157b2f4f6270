//! `klarna-stepup-demo` on a port that is taken: one line naming the port and the flag to
//! change it, exit status 1, at once.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_busy_port_is_named_with_the_flag_that_changes_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    for flag in ["--port", "--klarna-port", "--api-port"] {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_klarna-stepup-demo"))
            .args([flag, &port.to_string()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{flag}: it lingered"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("127.0.0.1:{port} is not free"))
                && err.contains(&format!("with {flag} PORT")),
            "{flag}: {err}"
        );
    }
}
