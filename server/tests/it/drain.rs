//! The drain on SIGTERM: requests accepted or sent as it begins are answered, and the
//! listeners stay open for `drain_delay_ms` while `/readyz` says 503.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::blocking::{exchange, wait_exit, wait_listening};
use crate::common::upstream::{self};
use crate::support::binary::{closed_within, free_addr, ok_answer, read_one, serve_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_a_request_accepted_before_the_drain_with_connection_close() {
    let up = upstream::start().await;
    let mut slow = ok_answer();
    slow.delay = Some(Duration::from_millis(800));
    up.set_answer(slow);
    let (mut child, listen) = serve_with("grace_period_secs = 5\n", up.addr);
    let pid = child.id();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let r = read_one(&mut s);
        let closed = closed_within(&mut s, Duration::from_secs(3));
        (r, closed)
    })
    .await
    .unwrap();
    assert!(answer.0.starts_with("HTTP/1.1 200"), "{}", answer.0);
    assert!(
        answer.0.to_ascii_lowercase().contains("connection: close"),
        "{}",
        answer.0
    );
    assert!(answer.1, "not closed after the drain answer");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_a_request_sent_just_as_the_drain_begins() {
    // hyper closes a connection it has read nothing from when told to shut down: a client
    // that connected before the drain and sends its request as it begins was cut off.
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("", up.addr);
    let pid = child.id();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    wait_exit(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_accepting_for_drain_delay_ms_while_unready() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let admin = free_addr();
    let (mut child, listen) = serve_with(
        &format!("admin = \"{admin}\"\ndrain_delay_ms = 600\n"),
        up.addr,
    );
    wait_listening(admin);
    let pid = child.id();
    let (ready, during, after) = tokio::task::spawn_blocking(move || {
        let get = |addr, path: &str| {
            exchange(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                b"",
            )
        };
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(150));
        // Unready at once; new connections still taken and answered meanwhile.
        let ready = get(admin, "/readyz");
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let during = read_one(&mut s);
        std::thread::sleep(Duration::from_millis(900));
        let after = TcpStream::connect(listen).is_err();
        (ready, during, after)
    })
    .await
    .unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(during.starts_with("HTTP/1.1 200"), "{during}");
    // A kept-alive client is told to leave.
    assert!(
        during.to_ascii_lowercase().contains("connection: close"),
        "{during}"
    );
    assert!(after, "still listening after drain_delay_ms");
    wait_exit(&mut child);
}
