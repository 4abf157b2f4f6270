//! The proxy bounded under real load, and honest about its own answers: upstream read, write
//! and idle timeouts on the pooled path, the proxy's own 502/504 marked with their code
//! (binary and tower adapter), request bodies charged to the buffer budget as they arrive and
//! bounded by a whole-body deadline, a client that stops reading closed and counted, one
//! `serve` per address, the open-file limit, and an outage of the payment API that is not
//! an outage of the proxy. Loopback only; every wait and every loop is bounded; only
//! processes started here are stopped, by PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::blocking::{exchange, wait_listening, wait_ready};
use crate::common::fixtures;
use crate::common::raw_http::send_fixture;
use crate::common::upstream;
use crate::support::binary::{
    exited, free_addr, ok_answer, read_one, serve_with, start_serve, stop_ok,
};

/// `GET /orders` on a connection of its own: the answer, whole.
async fn get_orders(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        exchange(
            addr,
            "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap()
}

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

/// The Klarna payment of the shared fixtures, as raw bytes for the binary.
fn klarna_payment() -> (String, Vec<u8>) {
    let f = fixtures::by_name("step_up_required");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        f.path,
        f.body.len()
    );
    (head, f.body)
}

// ---------------------------------------------------------------------------------------
// The proxy's own 502/504: their own code, not `passthrough`
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_marks_its_own_502_and_504_with_their_code_for_klarna_payments_too() {
    let (dead, mute) = (free_addr(), mute_upstream());
    let admin = free_addr();
    let (mut down, down_addr) = serve_with(&format!("admin = \"{admin}\"\n"), dead);
    let (mut hung, hung_addr) = serve_with("read_timeout_ms = 500\n", mute);
    wait_listening(admin);
    let (klarna, page) = tokio::task::spawn_blocking(move || {
        let (head, body) = klarna_payment();
        let mut out = Vec::new();
        for addr in [down_addr, hung_addr] {
            let started = Instant::now();
            out.push((exchange(addr, &head, &body), started.elapsed()));
            let get = "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
            out.push((exchange(addr, get, b""), started.elapsed()));
        }
        let page = exchange(
            admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        (out, page)
    })
    .await
    .unwrap();
    let want = [
        ("502", "upstream_unreachable"),
        ("502", "upstream_unreachable"),
        ("504", "upstream_timeout"),
        ("504", "upstream_timeout"),
    ];
    for ((answer, took), (status, code)) in klarna.iter().zip(want) {
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.contains(&format!(r#""code":"{code}""#)), "{answer}");
        assert_eq!(marker(answer).as_deref(), Some(code), "{answer}");
        // The read timeout fires on the pooled connection (generous: 500 ms asked).
        assert!(*took < Duration::from_secs(8), "{took:?}");
    }
    for line in [
        "klarna_stepup_requests_total{outcome=\"upstream_error\"} 2",
        "klarna_stepup_refusals_total{code=\"upstream_unreachable\"} 2",
        "klarna_stepup_upstream_errors_total{code=\"upstream_unreachable\"} 2",
    ] {
        assert!(page.contains(line), "{line} in {page}");
    }
    assert!(!page.contains("outcome=\"passthrough\""), "{page}");
    let log = stop_ok(&mut down, "-TERM");
    assert!(!log.contains("passed through"), "{log}");
    let log = stop_ok(&mut hung, "-TERM");
    assert!(!log.contains("passed through"), "{log}");
}

/// A client that stops reading a large answer is closed after the idle timeout, and the
/// close is counted on `/metrics` as `stalled`; one that reads its answer is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_a_client_that_stops_reading_and_counts_it() {
    let up = upstream::start().await;
    up.set_answer(upstream::Answer {
        status: 200,
        body: vec![b'a'; 16 << 20],
        ..upstream::Answer::default()
    });
    let admin = free_addr();
    let more = format!("admin = \"{admin}\"\nidle_timeout_secs = 1\n");
    let (mut child, listen) = serve_with(&more, up.addr);
    wait_listening(admin);
    let page = tokio::task::spawn_blocking(move || {
        let mut reader = TcpStream::connect(listen).unwrap();
        reader
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut stalled = TcpStream::connect(listen).unwrap();
        stalled
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // The reader takes its whole answer meanwhile.
        reader
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut got, mut buf) = (0, vec![0u8; 64 << 10]);
        while got < 16 << 20 {
            let n = reader.read(&mut buf).unwrap();
            assert!(n > 0, "the reader's connection closed after {got} bytes");
            got += n;
        }
        // The one that reads nothing: closed within the idle timeout and a look or two.
        let by = Instant::now() + Duration::from_secs(8);
        let page = loop {
            let page = exchange(
                admin,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                b"",
            );
            if page.contains("reason=\"stalled\"} 1") || Instant::now() >= by {
                break page;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        drop(stalled);
        page
    })
    .await
    .unwrap();
    let line = "klarna_stepup_client_connections_closed_total{reason=\"stalled\"} 1";
    assert!(page.contains(line), "{line} in {page}");
    stop_ok(&mut child, "-TERM");
}

/// A payment API that answers with something that is not HTTP: the proxy's 502 says so
/// rather than that it could not be reached, on a Klarna payment and on any other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_http_is_a_502_that_says_so() {
    let up = upstream::start_raw(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let listen = free_addr();
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{up}\"\n"
    ));
    wait_listening(listen);
    let f = fixtures::by_name("step_up_required");
    let klarna = send_fixture(listen, &f, &[], Duration::from_secs(10)).await;
    let other = get_orders(listen).await;
    let said = klarna_stepup::Refusal::upstream_unreadable_answer().to_json();
    assert_eq!(klarna.status, 502);
    assert_eq!(
        klarna.header("x-klarna-stepup"),
        Some("upstream_unreachable")
    );
    assert_eq!(klarna.body, said);
    assert!(other.starts_with("HTTP/1.1 502"), "{other}");
    assert!(
        other.ends_with(std::str::from_utf8(&said).unwrap()),
        "{other}"
    );
    stop_ok(&mut child, "-TERM");
}

#[tokio::test]
async fn tower_marks_the_proxys_own_502_and_504_with_their_code_for_klarna_payments() {
    use crate::common::tower_proxy::{serve_until, Timeouts};
    use klarna_stepup::StepUp;
    let f = fixtures::by_name("step_up_required");
    let timeouts = Timeouts {
        read: Duration::from_millis(300),
        ..Timeouts::default()
    };
    for (upstream, status, code) in [
        (free_addr(), 502, "upstream_unreachable"),
        (mute_upstream(), 504, "upstream_timeout"),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let step_up = StepUp::from_toml(&f.config).unwrap();
        let proxy = serve_until(
            step_up,
            listener,
            upstream,
            timeouts,
            std::future::pending(),
        );
        let res = send_fixture(addr, &f, &[], Duration::from_secs(10)).await;
        assert_eq!(res.status, status);
        assert_eq!(res.header("x-klarna-stepup"), Some(code));
        assert!(
            String::from_utf8_lossy(&res.body).contains(&format!(r#""code":"{code}""#)),
            "{res:?}"
        );
        proxy.abort();
    }
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

// ---------------------------------------------------------------------------------------
// Request bodies: charged as they arrive, bounded as a whole
// ---------------------------------------------------------------------------------------

/// A chunked `POST /payments` head.
const CHUNKED_PAYMENT: &[u8] = b"POST /payments HTTP/1.1\r\nHost: x\r\n\
    Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

/// `data` as one chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_charges_chunked_candidate_bodies_to_the_budget_as_they_arrive() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("buffer_budget_bytes = 200000\n", up.addr);
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        let mut body = br#"{"payment_method":"card","pad":""#.to_vec();
        body.resize(150_000, b'p');
        // A: 150,000 bytes without a length, and more to come.
        let mut a = connect();
        a.write_all(CHUNKED_PAYMENT).unwrap();
        for part in body.chunks(10_000) {
            a.write_all(&chunk(part)).unwrap();
        }
        // Generous: A's bytes must be read (and charged) before B's.
        std::thread::sleep(Duration::from_millis(1000));
        // B: 50,000 more fill the budget; its next bytes go over it: 503, nothing upstream.
        // (Those bytes alone cross it: none is left unread when the proxy closes.)
        let mut b = connect();
        b.write_all(CHUNKED_PAYMENT).unwrap();
        for part in body[..50_000].chunks(10_000) {
            b.write_all(&chunk(part)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(1000));
        b.write_all(&chunk(b"pppppppppp")).unwrap();
        let r = read_one(&mut b);
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains(r#""code":"overloaded""#), "{r}");
        // A gone, its bytes are given back: the next payment is taken.
        drop(a);
        std::thread::sleep(Duration::from_millis(300));
        let (head, body) = klarna_payment();
        let r = exchange(listen, &head, &body);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    })
    .await
    .unwrap();
    assert_eq!(up.take_received().len(), 1);
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_bounds_slow_drip_bodies_by_their_bytes_and_a_whole_body_deadline() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with(
        "buffer_budget_bytes = 100000\nrequest_body_timeout_ms = 10000\n\
         request_body_deadline_ms = 2000\n",
        up.addr,
    );
    tokio::task::spawn_blocking(move || {
        // 16 clients that each declare 100,000 bytes (the whole budget) and send a byte
        // every 200 ms, for 1.5 s.
        let started = Instant::now();
        let mut drips: Vec<TcpStream> = (0..16)
            .map(|_| {
                let mut s = TcpStream::connect(listen).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                s.write_all(
                    b"POST /payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                      Content-Length: 100000\r\n\r\n{",
                )
                .unwrap();
                s
            })
            .collect();
        let mut payment = None;
        while started.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(200));
            for s in &mut drips {
                let _ = s.write_all(b" ");
            }
            if payment.is_none() && started.elapsed() > Duration::from_millis(500) {
                // They hold a few bytes each, not what they declared: a payment is taken.
                let (head, body) = klarna_payment();
                payment = Some(exchange(listen, &head, &body));
            }
        }
        let payment = payment.unwrap();
        assert!(payment.starts_with("HTTP/1.1 200"), "{payment}");
        // Past the whole-body deadline (2 s), each gets 408; the wait for its next bytes
        // (10 s) has not passed.
        for s in &mut drips {
            let r = read_one(s);
            assert!(r.starts_with("HTTP/1.1 408"), "{r}");
            assert!(r.contains(r#""code":"request_timeout""#), "{r}");
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(8), "{took:?}");
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

// ---------------------------------------------------------------------------------------
// One instance per address
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_a_served_address_exits_1_naming_it() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut first, listen) = serve_with("", up.addr);
    let started = Instant::now();
    let mut second = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
        up.addr
    ));
    let (code, log) = exited(&mut second, Duration::from_secs(10));
    assert_eq!(code, Some(1), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        log.contains(&format!("server.listen: cannot listen on {listen}")),
        "{log}"
    );
    assert!(log.contains("served already"), "{log}");
    // The first one serves on, alone.
    let r = get_orders(listen).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    stop_ok(&mut first, "-TERM");
}

// ---------------------------------------------------------------------------------------
// The open-file limit
// ---------------------------------------------------------------------------------------

/// `serve` under the open-file limits `soft` and `hard` (set by bash's `ulimit` before it
/// becomes the proxy).
fn serve_limited(config: &str, soft: u64, hard: u64) -> crate::support::binary::Served {
    let path = crate::support::binary::write_config(&format!("nofile-{soft}-{hard}.toml"), config);
    crate::support::binary::Served(
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" serve --config \"$1\""
            ))
            .arg(crate::support::binary::BIN)
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// `Max open files` (soft) of process `pid`.
fn open_file_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_open_file_limit_or_caps_max_connections_and_says_so() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    // Room under the hard limit: the soft limit is raised to 2 x 1000 + 256.
    let listen = free_addr();
    let mut raised = serve_limited(
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\nmax_connections = 1000\n",
            up.addr
        ),
        256,
        4096,
    );
    wait_listening(listen);
    assert_eq!(open_file_limit(raised.id()), 2256);
    // No room: 10,000 connections capped to what 1024 descriptors serve, with a warning.
    let listen2 = free_addr();
    let mut capped = serve_limited(
        &format!(
            "[server]\nlisten = \"{listen2}\"\nupstream = \"{}\"\n",
            up.addr
        ),
        256,
        1024,
    );
    wait_listening(listen2);
    assert_eq!(open_file_limit(capped.id()), 1024);
    let r = tokio::task::spawn_blocking(move || {
        exchange(
            listen2,
            "GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let log = stop_ok(&mut raised, "-TERM");
    assert!(log.contains("raised the open-file limit"), "{log}");
    let log = stop_ok(&mut capped, "-TERM");
    assert!(log.contains("server.max_connections capped"), "{log}");
    assert!(log.contains("capped=384"), "{log}");
}

// ---------------------------------------------------------------------------------------
// An outage of the payment API is not an outage of the proxy
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tries_unhealthy_upstreams_when_none_is_healthy_and_stays_ready() {
    // Down at start: its health check fails (once is enough here), and the next one is a
    // minute away.
    let (listen, admin, up_addr) = (free_addr(), free_addr(), free_addr());
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{up_addr}\"\nadmin = \"{admin}\"\n\
         [server.health_check]\ninterval_ms = 60000\ntimeout_ms = 1000\nfails = 1\n"
    ));
    wait_listening(listen);
    wait_ready(admin);
    let get = move |addr: SocketAddr, path: &'static str| {
        tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                b"",
            )
        })
    };
    // Down: 502 from the proxy (it tried), the instance still ready, /upstreamz not.
    let r = get(listen, "/orders").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(marker(&r).as_deref(), Some("upstream_unreachable"), "{r}");
    let readyz = get(admin, "/readyz").await.unwrap();
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    let upstreamz = get(admin, "/upstreamz").await.unwrap();
    assert!(upstreamz.starts_with("HTTP/1.1 503"), "{upstreamz}");
    assert!(
        upstreamz.contains(&format!("{up_addr} unhealthy")),
        "{upstreamz}"
    );
    let page = get(admin, "/metrics").await.unwrap();
    assert!(
        page.contains("klarna_stepup_upstreams{state=\"unhealthy\"} 1"),
        "{page}"
    );
    // Back (the health check does not know yet): requests reach it at once.
    let up = upstream::start_on(up_addr).await;
    up.set_answer(ok_answer());
    let r = get(listen, "/orders").await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(up.take_received().len(), 1);
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_charges_chunked_candidate_bodies_to_the_budget_as_they_arrive() {
    use crate::common::pingora_proxy::{start_pingora, PaymentApi};
    use crate::common::raw_http::{raw_request, ReqBody};
    use klarna_stepup::pingora::StepUpProxy;
    use klarna_stepup::{BufferBudget, StepUp};
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let budget = BufferBudget::new(200_000);
    let inner = PaymentApi {
        upstream: up.addr,
        read_timeout: Duration::from_secs(5),
    };
    let proxy = start_pingora(
        StepUpProxy::new(inner, StepUp::from_toml("").unwrap()).buffer_budget(budget.clone()),
    );
    let mut body = br#"{"payment_method":"card","pad":""#.to_vec();
    body.resize(200_010, b'p');
    let headers = [("content-type", "application/json")];
    // Without a length, over the budget as it arrives: 503, the upstream request aborted.
    let res = raw_request(
        proxy,
        "POST",
        "/payments",
        &headers,
        ReqBody::Chunked(&body, 16 * 1024),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("x-klarna-stepup"), Some("overloaded"));
    // Its bytes given back: one within the budget is taken.
    body.truncate(150_000);
    body.extend_from_slice(b"\"}");
    let res = raw_request(
        proxy,
        "POST",
        "/payments",
        &headers,
        ReqBody::Chunked(&body, 16 * 1024),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    // Given back once the request's context goes (just after its answer).
    let since = Instant::now();
    while budget.used() != 0 {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{}",
            budget.used()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_marks_its_own_502_and_504_with_their_code_on_both_body_paths() {
    use crate::common::pingora_proxy::{start_pingora, PaymentApi};
    use klarna_stepup::pingora::StepUpProxy;
    use klarna_stepup::StepUp;
    let small = fixtures::by_name("step_up_required");
    // The same payment past Pingora's retry buffer (64 KiB): the streaming path.
    let mut large = small.clone();
    let text = String::from_utf8(small.body.clone()).unwrap();
    let pad = "x".repeat(100 * 1024);
    large.body = text
        .replacen("\"amount\"", &format!("\"pad\":\"{pad}\",\"amount\""), 1)
        .into_bytes();
    // A large body streams: with the payment API down, Pingora answers before reading it,
    // and the client, had it sent it, could meet a reset instead of the answer. It sends the
    // head alone.
    let dead = free_addr();
    let inner = PaymentApi {
        upstream: dead,
        read_timeout: Duration::from_millis(300),
    };
    let proxy = start_pingora(StepUpProxy::new(inner, StepUp::from_toml("").unwrap()));
    let head = format!(
        "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        large.body.len()
    );
    let r = tokio::task::spawn_blocking(move || exchange(proxy, &head, b""))
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert_eq!(marker(&r).as_deref(), Some("upstream_unreachable"), "{r}");
    for (upstream, status, code, cases) in [
        (dead, 502, "upstream_unreachable", vec![&small]),
        (
            mute_upstream(),
            504,
            "upstream_timeout",
            vec![&small, &large],
        ),
    ] {
        let inner = PaymentApi {
            upstream,
            read_timeout: Duration::from_millis(300),
        };
        let proxy = start_pingora(StepUpProxy::new(inner, StepUp::from_toml("").unwrap()));
        for f in cases {
            let res = send_fixture(proxy, f, &[], Duration::from_secs(10)).await;
            let shown = String::from_utf8_lossy(&res.body);
            assert_eq!(res.status, status, "{} bytes: {shown}", f.body.len());
            assert_eq!(res.header("x-klarna-stepup"), Some(code), "{shown}");
            assert!(shown.contains(&format!(r#""code":"{code}""#)), "{shown}");
        }
    }
}

/// An absolute-form request target names the host (RFC 9112 section 3.2.2): the payment API
/// gets it as `Host`, whatever `Host` the client sent, so that what routed the request by
/// its URL and what the payment API reads agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sends_the_host_an_absolute_target_names() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("", up.addr);
    let answers = tokio::task::spawn_blocking(move || {
        [
            "GET http://other.example/orders HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
            "GET /orders HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        ]
        .map(|head| exchange(listen, head, b""))
    })
    .await
    .unwrap();
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    let got = up.take_received();
    let hosts: Vec<_> = got.iter().map(|r| r.headers["host"].clone()).collect();
    assert_eq!(hosts, ["other.example", "example.test"]);
    assert!(got.iter().all(|r| r.path == "/orders"));
    stop_ok(&mut child, "-TERM");
}
