//! The admin endpoint: health, readiness, and unready while draining.

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::common::blocking::{exchange, wait_exit, wait_ready};
use crate::common::upstream::{self};
use crate::support::binary::{free_addr, ok_answer, read_one, serve_with};

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
