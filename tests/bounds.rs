//! The proxy bounded under real load, and honest about its own answers: upstream read, write
//! and idle timeouts on the pooled path, the proxy's own 502/504 marked with their code
//! (binary and tower adapter), request bodies charged to the buffer budget as they arrive and
//! bounded by a whole-body deadline, one `serve` per address, the open-file limit, and an
//! outage of the payment API that is not an outage of the proxy. Loopback only; every wait
//! and every loop is bounded; only processes started here are stopped, by PID.
#![cfg(feature = "cli")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::binary::{read_one, serve_with, stop_ok};
use common::blocking::exchange;

/// A payment API that accepts connections and never reads nor answers; it holds at most
/// 64 of them, for at most a minute.
fn mute_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (started, mut held) = (Instant::now(), Vec::new());
        while started.elapsed() < Duration::from_secs(60) && held.len() < 64 {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    addr
}

/// A payment API that answers every request `200 ok` on kept-alive connections and counts
/// the connections the proxy closed. Serves for at most a minute.
fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let counted = closed.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let counted = counted.clone();
            std::thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk) {
                        Ok(0) => {
                            counted.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        Err(_) => return,
                    }
                    // GETs only: a head is a whole request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(ok).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, closed)
}

/// The `x-klarna-stepup` header of a raw answer.
fn marker(answer: &str) -> Option<String> {
    answer.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("x-klarna-stepup")
            .then(|| value.trim().to_owned())
    })
}

// ---------------------------------------------------------------------------------------
// Upstream timeouts on the pooled path
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_idle_pooled_upstream_connections_after_the_read_timeout() {
    let (up, closed) = counting_upstream();
    let (mut child, listen) = serve_with("threads = 1\nread_timeout_ms = 400\n", up);
    tokio::task::spawn_blocking(move || {
        let get = "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let r = exchange(listen, get, b"");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // Pooled, then idle: closed by the proxy once the read timeout passes.
        let started = Instant::now();
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the idle pooled connection was never closed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // And the next request dials afresh.
        let r = exchange(listen, get, b"");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_504_when_the_payment_api_does_not_read_what_is_sent() {
    let mute = mute_upstream();
    let (mut child, listen) = serve_with(
        "threads = 1\nwrite_timeout_ms = 500\nread_timeout_ms = 60000\n\
         request_body_timeout_ms = 60000\n",
        mute,
    );
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(
            b"POST /uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        // Far more than the loopback socket buffers hold; the writer stops at the first
        // error (the proxy answered and closed) or after 64 MiB.
        let mut writer = s.try_clone().unwrap();
        let sent = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..1024 {
                let ok = writer
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .and_then(|()| writer.write_all(&chunk))
                    .and_then(|()| writer.write_all(b"\r\n"));
                if ok.is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let r = read_one(&mut s);
        let took = started.elapsed();
        drop(s);
        sent.join().unwrap();
        (r, took)
    })
    .await
    .unwrap();
    let (r, took) = answer;
    assert!(r.starts_with("HTTP/1.1 504"), "{r}");
    assert_eq!(marker(&r).as_deref(), Some("upstream_timeout"), "{r}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    stop_ok(&mut child, "-TERM");
}
