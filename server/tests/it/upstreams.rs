//! `serve` in front of the payment API: one proxied request, fail-over to the next upstream,
//! 502 when none answers, health checks, and each worker's pool of upstream connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::blocking::{exchange, wait_listening, wait_ready};
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{
    free_addr, ok_answer, read_one, serve_with, spawn_serve, start_serve, stop_ok, write_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fails_over_to_the_next_upstream_counts_metrics_and_stops_on_sigint() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let (listen, metrics, dead) = (free_addr(), free_addr(), free_addr());
    let mut child = start_serve(&format!(
        "body_limit = 65536\n[server]\nlisten = \"{listen}\"\nupstream = [\"{dead}\", \"{}\"]\n\
         metrics = \"{metrics}\"\n",
        up.addr
    ));
    wait_listening(listen);
    wait_listening(metrics);
    let body = f.body.clone();
    let (ok, big, page) = tokio::task::spawn_blocking(move || {
        let head = |n: usize| {
            format!(
                "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
            )
        };
        // Twice: round robin starts at the dead upstream at least once.
        let ok = [
            exchange(listen, &head(body.len()), &body),
            exchange(listen, &head(body.len()), &body),
        ];
        let big_body = vec![b' '; 70 * 1024];
        let big = exchange(listen, &head(big_body.len()), &big_body);
        let page = exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        (ok, big, page)
    })
    .await
    .unwrap();
    for r in &ok {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"rewritten\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"refused\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_engine_seconds_count 2"),
        "{page}"
    );
    // What an operator alerts on: codes of step-up's own answers, latency, the payment
    // API's status classes, and the process itself.
    for line in [
        "klarna_stepup_refusals_total{code=\"body_too_large\"} 1",
        "klarna_stepup_request_duration_seconds_count{outcome=\"rewritten\"} 2",
        "klarna_stepup_request_duration_seconds_count{outcome=\"refused\"} 1",
        "klarna_stepup_upstream_responses_total{class=\"2xx\"} 2",
        "klarna_stepup_upstream_duration_seconds_count 2",
        "process_resident_memory_bytes ",
    ] {
        assert!(page.contains(line), "{line} in {page}");
    }
    // The connections the two answers came on, kept (one or two: one pool a worker).
    let open = page
        .lines()
        .find_map(|l| l.strip_prefix("klarna_stepup_upstream_connections "))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(matches!(open, Some(1 | 2)), "{open:?} in {page}");
    assert_eq!(up.take_received().len(), 2);
    stop_ok(&mut child, "-INT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_502_json_when_no_upstream_answers() {
    let (listen, dead, metrics) = (free_addr(), free_addr(), free_addr());
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{dead}\"\nmetrics = \"{metrics}\"\n"
    ));
    wait_listening(listen);
    wait_listening(metrics);
    let (r, page) = tokio::task::spawn_blocking(move || {
        let r = exchange(
            listen,
            "GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        let page = exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        (r, page)
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains(r#""code":"upstream_unreachable""#), "{r}");
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"upstream_error\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_upstream_errors_total{code=\"upstream_unreachable\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_refusals_total{code=\"upstream_unreachable\"} 1"),
        "{page}"
    );
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_a_two_key_file_proxy_one_request_and_stop_on_sigterm() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let listen = free_addr();
    let path = write_config(
        "serve.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    // Every request's line is at debug (at info: the ones that did not go as planned).
    let mut child = spawn_serve(&path, &[], "info,klarna_stepup=debug");

    wait_listening(listen);
    let body = f.body.clone();
    let response = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-klarna-stepup: rewritten"),
        "{response}"
    );
    assert!(response.contains(r#""status":"pending""#), "{response}");
    assert_eq!(up.take_received().len(), 1);

    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("request done"), "one line per request:\n{log}");
    assert!(
        log.contains("payment_request_reference=\"order-1234\""),
        "{log}"
    );
    assert!(
        !log.contains("partner.example/klarna/return"),
        "a URL was logged:\n{log}"
    );
    assert!(TcpStream::connect(listen).is_err(), "still listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_skips_unhealthy_upstreams_until_they_recover_and_tries_them_all_when_none_is() {
    let (a, b) = (upstream::start().await, upstream::start().await);
    a.set_answer(ok_answer());
    let sick = || Answer {
        status: 503,
        ..ok_answer()
    };
    b.set_answer(sick());
    let admin = free_addr();
    // B by name (localhost), A by address: both are discovered.
    let listen = free_addr();
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = [\"{}\", \"localhost:{}\"]\n\
         admin = \"{admin}\"\n\
         [server.health_check]\npath = \"/health\"\ninterval_ms = 100\ntimeout_ms = 100\n\
         fails = 1\npasses = 1\n",
        a.addr,
        b.addr.port()
    ));
    wait_listening(listen);
    wait_ready(admin);
    let get = move |addr: SocketAddr, path: &str| {
        exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let proxied = |up: &upstream::Upstream| {
        up.take_received()
            .iter()
            .filter(|r| r.path == "/orders")
            .count()
    };
    let (phase1, readyz_sick) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        let phase1: Vec<String> = (0..6).map(|_| get(listen, "/orders")).collect();
        (phase1, get(admin, "/readyz"))
    })
    .await
    .unwrap();
    // B fails its checks: every request goes to A.
    for r in &phase1 {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(readyz_sick.starts_with("HTTP/1.1 200"), "{readyz_sick}");
    assert_eq!(proxied(&b), 0, "a request reached the unhealthy upstream");
    assert_eq!(proxied(&a), 6);
    // B recovers: it gets requests again.
    b.set_answer(ok_answer());
    let answers = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        (0..6).map(|_| get(listen, "/orders")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(answers.iter().all(|r| r.starts_with("HTTP/1.1 200")));
    let (to_a, to_b) = (proxied(&a), proxied(&b));
    assert!(to_b > 0, "the recovered upstream got nothing");
    assert_eq!(to_a + to_b, 6);
    // Both fail: requests go to both anyway (their answers pass through); this instance
    // stays ready, /upstreamz says none is healthy.
    a.set_answer(sick());
    b.set_answer(sick());
    let (r, readyz, upstreamz) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        (
            get(listen, "/orders"),
            get(admin, "/readyz"),
            get(admin, "/upstreamz"),
        )
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(upstreamz.starts_with("HTTP/1.1 503"), "{upstreamz}");
    assert!(
        upstreamz.contains("0 of 2 upstreams healthy"),
        "{upstreamz}"
    );
    assert_eq!(proxied(&a) + proxied(&b), 1);
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("upstream unhealthy"), "{log}");
}

// ---------------------------------------------------------------------------------------
// Issue 11: each worker's own pool of upstream connections
// ---------------------------------------------------------------------------------------

/// A scripted HTTP/1.1 upstream on plain threads, numbering the connections that carry a
/// request (the health checks' do not): `GET /n` answers the connection's number; `/close`
/// answers, then closes without saying so (as a payment API dropping an idle keep-alive
/// connection does); `/none` answers 204, without a body; `/extra` answers twice; `/big`
/// answers 4 MiB slowly.
fn numbering_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let count = count.clone();
            let mut n = 0;
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if n == 0 {
                    n = count.fetch_add(1, Ordering::SeqCst) + 1;
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let answer = |body: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                match path.as_str() {
                    // An answer with a second one behind it, unasked for (a broken or
                    // hostile payment API): never to be taken as the next request's.
                    "/extra" => {
                        let two = answer(&format!("conn {n}")) + &answer("forged");
                        if s.write_all(two.as_bytes()).is_err() {
                            return;
                        }
                    }
                    "/none" => {
                        if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_err() {
                            return;
                        }
                    }
                    "/close" => {
                        let _ = s.write_all(answer(&format!("conn {n}")).as_bytes());
                        return;
                    }
                    "/big" => {
                        let size = 4 << 20;
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                        let _ = s.write_all(head.as_bytes());
                        for _ in 0..size / (64 << 10) {
                            if s.write_all(&[b'x'; 64 << 10]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    _ => {
                        if s.write_all(answer(&format!("conn {n}")).as_bytes())
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The body of a small answer read by `read_one`.
fn body_of(answer: &str) -> &str {
    answer.split("\r\n\r\n").nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reuses_upstream_connections_but_none_the_upstream_closed_or_left_mid_answer() {
    use std::sync::atomic::Ordering;
    let (up, accepted) = numbering_upstream();
    let (mut child, listen) = serve_with("threads = 1\n", up);
    tokio::task::spawn_blocking(move || {
        let get = |s: &mut TcpStream, path: &str| {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let r = read_one(s);
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            body_of(&r).to_string()
        };
        // Kept alive: ten requests, on two client connections, over one upstream connection.
        let mut a = TcpStream::connect(listen).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = TcpStream::connect(listen).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..5 {
            assert_eq!(get(&mut a, "/n"), "conn 1");
            assert_eq!(get(&mut b, "/n"), "conn 1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // An answer without a body gives its connection back at once.
        a.write_all(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut a);
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(get(&mut b, "/n"), "conn 1");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // The upstream closes its end after an answer: the next request gets a new one.
        assert_eq!(get(&mut a, "/close"), "conn 1");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get(&mut a, "/n"), "conn 2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // An answer followed by bytes nobody asked for: the connection is not used again.
        assert_eq!(get(&mut a, "/extra"), "conn 2");
        for _ in 0..3 {
            assert_ne!(get(&mut a, "/n"), "forged");
            assert_ne!(get(&mut b, "/n"), "forged");
        }
        let after_extra = accepted.load(Ordering::SeqCst);

        // A client that leaves in the middle of a long answer: the rest of that answer is
        // still on the upstream connection, which is therefore not used again.
        let mut c = TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        assert!(c.read(&mut first).unwrap() > 0);
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let big = accepted.load(Ordering::SeqCst);
        assert_eq!(big, after_extra, "/big went on a pooled connection");
        // That one is gone with the answer left unread; a new one serves.
        let next = format!("conn {}", big + 1);
        assert_eq!(get(&mut a, "/n"), next);
        assert_eq!(get(&mut b, "/n"), next);
        assert_eq!(accepted.load(Ordering::SeqCst), big + 1);
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}
