//! What the proxy sends on, byte for byte, for requests and answers whose framing or form a
//! proxy must change: against a payment API written here on a raw socket, which answers
//! exactly the bytes each case needs and tells what it got.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::binary::{serve_with, stop_ok};

/// A payment API answering by path with the bytes below, each request's head kept in order.
fn raw_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(1..) => head.push_str(&line),
                            _ => return,
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    seen.lock().unwrap().push(head.clone());
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    // Interim answers, more than the proxy's read buffer, and no final one.
                    let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(3000);
                    let answer: &[u8] = match path.as_str() {
                        "/interim-forever" => &interim,
                        // Framed by chunks, with a length beside that is not the body's.
                        "/te-and-length" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                        }
                        "/length-list" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
                        // A `HEAD`'s answer: no body, so hyper checks no length.
                        "/length-differs" => b"HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\n",
                        "/switching" => {
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nframes"
                        }
                        "/http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if w.write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// One answer on `s`: its head (lower case) and its body, framed by `Content-Length` or
/// chunks.
fn answer(s: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            s.read_line(&mut line).unwrap() > 0,
            "closed mid-head: {head}"
        );
        head.push_str(&line.to_ascii_lowercase());
        if line == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")) {
        body.resize(len.trim().parse().unwrap(), 0);
        s.read_exact(&mut body).unwrap();
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let mut size = String::new();
            s.read_line(&mut size).unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            s.read_exact(&mut chunk).unwrap();
            if size == 0 {
                break;
            }
            body.extend(&chunk[..size]);
        }
    }
    (head, body)
}

/// The proxy in front of [`raw_upstream`] and a kept-alive client: `request` sent, the
/// answer read, then `GET /after` on the same connection, unless it closes (an answer
/// framed wrongly would leave the client reading the wrong bytes as the next one).
fn exchange(listen: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    w.write_all(request).unwrap();
    let first = answer(&mut r);
    let http10 = request.windows(10).any(|w| w == b" HTTP/1.0\r");
    if !first.0.contains("connection: close") && !http10 {
        w.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (head, body) = answer(&mut r);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, b"ok", "the next answer on the connection");
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_requests_a_proxy_must_reframe_or_refuse() {
    let (up, heads) = raw_upstream();
    let (mut child, listen) = serve_with("threads = 1\n", up);
    let heads = tokio::task::spawn_blocking(move || {
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();

        // Chunked with a `Content-Length` beside: the chunks frame it (RFC 9112 section 6.3);
        // the length was passed on, and the client took the body's first two bytes as all.
        let (head, body) = exchange(listen, &get("/te-and-length"));
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("content-length: 2"), "{head}");
        assert_eq!(body, b"hello");

        // `Content-Length: 5, 5`: one value on (an HTTP/2 client refuses the list).
        let (head, body) = exchange(listen, &get("/length-list"));
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert_eq!(body, b"hello");

        // Differing values are not made one (which one would be true?).
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"HEAD /length-differs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut head = String::new();
        s.read_to_string(&mut head).unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-length: 5, 7\r\n"),
            "{head}"
        );

        // A 101 nobody asked for: not an answer the proxy carries.
        let (head, body) = exchange(listen, &get("/switching"));
        assert!(head.starts_with("http/1.1 502"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("upstream_unreachable"), "{body}");

        // Interim answers without end: refused once they fill the read buffer, as a head
        // without end is, not waited on until the read timeout.
        let (head, body) = exchange(listen, &get("/interim-forever"));
        assert!(head.starts_with("http/1.1 502"), "{head}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("upstream_unreachable"), "{body}");

        // The payment API's HTTP/1.0: the client hears the proxy's version.
        let (head, body) = exchange(listen, &get("/http10"));
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, b"hello");

        // An HTTP/1.0 request without `Host` reaches the payment API with one.
        let (head, _) = exchange(listen, b"GET /host10 HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("http/1.0 200"), "{head}");

        // User information in the target: refused, never made a `Host`.
        let (head, body) = exchange(
            listen,
            b"GET http://user:pw@evil.example/userinfo HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("bad_request_head"));

        // A transfer coding other than chunked: refused, never passed on undecoded.
        let (head, body) = exchange(
            listen,
            b"POST /gzip HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        );
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("Transfer-Encoding"));
        heads.lock().unwrap().clone()
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");

    let got = |start: &str| {
        heads
            .iter()
            .find(|h| h.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} in {heads:#?}"))
            .to_ascii_lowercase()
    };
    let host10 = got("GET /host10 ");
    assert!(host10.starts_with("get /host10 http/1.1\r\n"), "{host10}");
    assert!(host10.contains(&format!("\r\nhost: {up}\r\n")), "{host10}");
    assert!(
        !heads
            .iter()
            .any(|h| h.contains("userinfo") || h.contains("/gzip")),
        "{heads:#?}"
    );
}
