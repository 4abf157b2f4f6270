//! The admin endpoint: health, readiness, and unready while draining.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::blocking::{exchange, wait_exit, wait_ready};
use crate::common::upstream::{self};
use crate::support::binary::{free_addr, ok_answer, read_one, serve_with, stop_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_admin_endpoint_reports_health_and_turns_unready_when_draining() {
    let up = upstream::start().await;
    let mut slow = ok_answer();
    slow.delay = Some(Duration::from_millis(2000));
    up.set_answer(slow);
    let admin = free_addr();
    let (mut child, listen) = serve_with(&format!("admin = \"{admin}\"\n"), up.addr);
    wait_ready(admin);
    let pid = child.id();
    let get = move |path: &str| {
        exchange(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let (before, during, answer) = tokio::task::spawn_blocking(move || {
        let before = [
            get("/healthz"),
            get("/readyz"),
            get("/metrics"),
            get("/nope"),
        ];
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        // Unready as soon as the signal is handled, alive still, while the request in flight
        // (two seconds at the payment API) is answered.
        let since = std::time::Instant::now();
        let unready = loop {
            let r = get("/readyz");
            if !r.starts_with("HTTP/1.1 200") || since.elapsed() > Duration::from_millis(1500) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let during = [unready, get("/healthz")];
        (before, during, read_one(&mut s))
    })
    .await
    .unwrap();
    assert!(before[0].starts_with("HTTP/1.1 200"), "{}", before[0]);
    assert!(before[1].starts_with("HTTP/1.1 200"), "{}", before[1]);
    assert!(before[1].ends_with("ready\n"), "{}", before[1]);
    assert!(
        before[2].contains("process_resident_memory_bytes"),
        "{}",
        before[2]
    );
    assert!(before[3].starts_with("HTTP/1.1 404"), "{}", before[3]);
    assert!(during[0].starts_with("HTTP/1.1 503"), "{}", during[0]);
    assert!(during[0].ends_with("draining\n"), "{}", during[0]);
    assert!(during[1].starts_with("HTTP/1.1 200"), "{}", during[1]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_exit(&mut child);
}

/// The admin port serves at most 64 connections at once; more wait in the backlog, so that
/// a flood of them cannot take the descriptors the client connections need. One of the
/// waiting ones is served as soon as a held one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_a_bounded_number_of_connections() {
    let up = upstream::start().await;
    let admin = free_addr();
    let (mut child, listen) = serve_with(&format!("admin = \"{admin}\"\n"), up.addr);
    wait_ready(admin);
    tokio::task::spawn_blocking(move || {
        // 64 connections that send nothing: the admin port's every place.
        let mut held: Vec<_> = (0..64)
            .map(|_| TcpStream::connect(admin).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = [0u8; 64];
        let waited = std::io::Read::read(&mut s, &mut got);
        assert!(waited.is_err(), "answered past the cap: {waited:?}");
        // The client port is not affected.
        let r = exchange(
            listen,
            "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        held.pop();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = read_one(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        drop(held);
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}
