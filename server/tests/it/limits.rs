//! Connections bounded, answers honest, HTTP/1 edge cases, every body read or decoded
//! bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::blocking::exchange;
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{closed_within, free_addr, ok_answer, read_one, serve_with, stop_ok};

// ---------------------------------------------------------------------------------------
// Issue 13 points 4 and 6: connections bounded, answers honest, HTTP/1 edge cases
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_after_its_own_502_and_after_idle_keep_alive() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let dead = free_addr();
    let (mut bad, bad_addr) = serve_with("", dead);
    let (mut good, good_addr) = serve_with("idle_timeout_secs = 1\n", up.addr);
    tokio::task::spawn_blocking(move || {
        // A proxy-made 502 on a kept-alive connection: says close, and closes.
        let mut s = TcpStream::connect(bad_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut s);
        assert!(r.starts_with("HTTP/1.1 502"), "{r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert!(
            closed_within(&mut s, Duration::from_secs(3)),
            "502 kept alive"
        );

        // An idle kept-alive connection is closed after idle_timeout_secs (was: never).
        let mut s = TcpStream::connect(good_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // HTTP/1.1 keeps it alive unless the answer says close.
        assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
        let idle = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(4)),
            "idle kept open"
        );
        assert!(
            idle.elapsed() >= Duration::from_millis(900),
            "{:?}",
            idle.elapsed()
        );
    })
    .await
    .unwrap();
    for child in [&mut bad, &mut good] {
        stop_ok(child, "-TERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_408_to_a_slow_client_and_431_to_huge_heads() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("request_body_timeout_ms = 300\n", up.addr);
    tokio::task::spawn_blocking(move || {
        // A client that stops sending its body: 408 from the proxy, not the payment API's
        // 504 (a candidate route and any other route).
        for path in ["/payments", "/orders"] {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"amount\":"
            )
            .unwrap();
            let started = Instant::now();
            let r = read_one(&mut s);
            assert!(r.starts_with("HTTP/1.1 408"), "{path}: {r}");
            assert!(r.contains(r#""code":"request_timeout""#), "{r}");
            assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
            assert!(started.elapsed() < Duration::from_secs(3));
            assert!(closed_within(&mut s, Duration::from_secs(3)));
        }
        // Headers: 1 MB was taken; now 32 KiB and 100 fields at most.
        let big = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        // Over the size: step-up's JSON 431; over the count (100 by default): hyper's own.
        for (extra, ours) in [(big, true), (many, false)] {
            let r = exchange(
                listen,
                &format!("GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
                b"",
            );
            assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(300)]);
            assert_eq!(r.contains(r#""code":"headers_too_large""#), ours, "{r}");
        }
    })
    .await
    .unwrap();
    let received = up.take_received();
    assert!(
        received.iter().all(|r| r.path != "/payments"),
        "a candidate reached the upstream"
    );
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_handles_http1_edge_cases_per_rfc_9112() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("", up.addr);
    tokio::task::spawn_blocking(move || {
        // No Host in HTTP/1.1, or two Hosts: 400 JSON. Neither is forwarded.
        for hosts in ["", "Host: a\r\nHost: b\r\n"] {
            let r = exchange(
                listen,
                &format!("GET /orders HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n"),
                b"",
            );
            assert!(r.starts_with("HTTP/1.1 400"), "{r}");
            assert!(r.contains(r#""code":"bad_request_head""#), "{r}");
        }
        // `Content-Length: 5, 5`: refused with 400 and the connection closed, not forwarded
        // (RFC 9110 section 8.6 lets a recipient reject a list of equal values; hyper does).
        let r = exchange(
            listen,
            "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5, 5\r\n\r\n",
            b"hello",
        );
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        // Two pipelined requests in one write: both answered, in order (Pingora 0.9 dropped
        // the second by default).
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let a = read_one(&mut s);
        let b = read_one(&mut s);
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    })
    .await
    .unwrap();
    let received = up.take_received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/first", "/second"], "{paths:?}");
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_caps_connections_and_closes_heads_sent_too_slowly() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with(
        "threads = 1\nmax_connections = 2\nidle_timeout_secs = 1\n",
        up.addr,
    );
    tokio::task::spawn_blocking(move || {
        // Two connections hold the two places; a third waits in the backlog, unanswered,
        // until one of them goes.
        let a = TcpStream::connect(listen).unwrap();
        let _b = TcpStream::connect(listen).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(listen).unwrap();
        c.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            c.read(&mut byte).is_err(),
            "answered over the connection cap"
        );
        drop(a);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = read_one(&mut c);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // Slowloris: a head dripped a byte at a time is cut off at idle_timeout_secs from
        // the connection's start, however steadily the bytes come.
        let mut s = TcpStream::connect(listen).unwrap();
        let started = Instant::now();
        let mut cut = false;
        for b in b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if s.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        assert!(
            cut || closed_within(&mut s, Duration::from_secs(2)),
            "a slow head kept its connection"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_fewer_connection_places_than_threads_answers_every_socket() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    // Two workers, each with its own socket, one place: a worker waiting on an empty socket
    // must not hold the place a connection queued on the other socket needs.
    let (mut child, listen) = serve_with("threads = 2\nmax_connections = 1\n", up.addr);
    tokio::task::spawn_blocking(move || {
        for i in 0..12 {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let r = read_one(&mut s);
            assert!(r.starts_with("HTTP/1.1 200"), "connection {i}: {r}");
        }
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

// ---------------------------------------------------------------------------------------
// Issue 13 point 3: every body read or decoded is bounded
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_new_candidates_past_the_buffer_budget_and_keeps_accepted_ones() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("buffer_budget_bytes = 100000\n", up.addr);
    tokio::task::spawn_blocking(move || {
        let n = 60_000;
        let head = format!(
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
        );
        let prefix = br#"{"payment_method":"card","pad":""#;
        let mut body = prefix.to_vec();
        body.resize(n - 2, b'p');
        body.extend_from_slice(b"\"}");
        // A: accepted, all but 2 bytes of its body sent (and charged as they came).
        let mut a = TcpStream::connect(listen).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.write_all(head.as_bytes()).unwrap();
        a.write_all(&body[..n - 2]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // B: over the budget as its bytes come: 503 with Retry-After, nothing sent upstream.
        // (Its last bytes alone cross it: none is left unread when the proxy closes.)
        let mut b = TcpStream::connect(listen).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.write_all(head.as_bytes()).unwrap();
        b.write_all(&body[..40_000]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        b.write_all(&body[40_000..40_010]).unwrap();
        let b = read_one(&mut b);
        assert!(b.starts_with("HTTP/1.1 503"), "{b}");
        assert!(b.contains(r#""code":"overloaded""#), "{b}");
        assert!(b.to_ascii_lowercase().contains("retry-after: 1"), "{b}");
        // A goes on and is answered.
        a.write_all(&body[n - 2..]).unwrap();
        let r = read_one(&mut a);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // The budget is given back: C is accepted.
        let c = exchange(listen, &head, &body);
        assert!(c.starts_with("HTTP/1.1 200"), "{c}");
    })
    .await
    .unwrap();
    assert_eq!(up.take_received().len(), 2);
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_a_compressed_answer_decoded_past_the_body_limit() {
    use std::io::Write as _;
    let up = upstream::start().await;
    // About 20 KB of gzip that decodes to 32 MiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(br#"{"payment_transaction_response":{"result":"APPROVED"},"pad":""#)
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..32 {
        gz.write_all(&chunk).unwrap();
    }
    gz.write_all(b"\"}").unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    up.set_answer(Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
        ],
        body: bomb,
        delay: None,
    });
    let (mut child, listen) = serve_with("", up.addr);
    // A Klarna payment over 64 KiB: Pingora's pipeline, whose decompression is on for it.
    let f = fixtures::by_name("step_up_required");
    let mut body = b"{".to_vec();
    body.extend(std::iter::repeat_n(b' ', 70 * 1024));
    body.extend_from_slice(&f.body[1..]);
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(total < 8 << 20, "inflated answer streamed to the client");
        }
        total
    })
    .await
    .unwrap();
    // The body limit (1 MiB) and a decoded chunk, not 32 MiB.
    assert!(got < 8 << 20, "{got}");
    stop_ok(&mut child, "-TERM");
}

/// The process's resident memory, in bytes (Linux).
#[cfg(target_os = "linux")]
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// A connection that has sent nothing yet costs its task and hyper's connection state, not
/// the pages of hyper's buffers: with jemalloc (the binary's allocator), an allocation's
/// untouched pages stay out of memory. With glibc's malloc it was about 10 KB a connection;
/// the bound leaves room for what else a process allocates meanwhile.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[test]
fn a_connection_that_sent_nothing_costs_little_memory() {
    const CONNS: usize = 800;
    const MAX_PER_CONN: u64 = 6_000;
    let (served, addr) = serve_with("threads = 1\n", free_addr());
    let pid = served.id();
    // The runtime's first allocations, out of the count.
    let warm: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = resident_bytes(pid);
    let conns: Vec<TcpStream> = (0..CONNS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Every connection accepted and its task started.
    std::thread::sleep(Duration::from_millis(700));
    let per_conn = resident_bytes(pid).saturating_sub(before) / CONNS as u64;
    drop(conns);
    assert!(
        per_conn <= MAX_PER_CONN,
        "{per_conn} bytes resident per connection that sent nothing (at most {MAX_PER_CONN})"
    );
}
