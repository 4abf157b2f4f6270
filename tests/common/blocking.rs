//! Blocking loopback helpers for the tests that drive the proxy binary from plain threads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Waits until something accepts connections on `addr` (at most 10 s).
pub fn wait_listening(addr: SocketAddr) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{addr} never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the admin endpoint on `admin` says ready (at most 10 s): it listens before the
/// workers accept, and `/readyz` says 503 `starting` until they do.
pub fn wait_ready(admin: SocketAddr) {
    wait_listening(admin);
    let started = Instant::now();
    loop {
        let r = exchange(
            admin,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        if r.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{admin} never said ready: {r}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP/1.1 exchange on a fresh connection; the raw answer.
pub fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits for `child` to exit by itself (at most 8 s).
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_exit_within(child, Duration::from_secs(8))
}

/// Waits for `child` to exit by itself, at most `within`.
pub fn wait_exit_within(child: &mut Child, within: Duration) -> ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(t.elapsed() < within, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
