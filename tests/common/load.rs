//! A bounded load client over loopback: blocking threads, each sending requests one after
//! another (on a fresh connection each, or on one kept alive), counting answers with the
//! expected status and failures, until told to stop, a request count or a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request and the status it must get.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub expect: u16,
}

impl Req {
    pub fn get(path: &str, expect: u16) -> Req {
        Req {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            expect,
        }
    }
}

/// How a client uses its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `Connection: close`, a new connection per request.
    Fresh,
    /// One connection for as long as the server keeps it. A request on a reused connection
    /// that the server closed before sending a byte of the answer is sent again once on a
    /// new connection, as every HTTP client does (RFC 9112 section 9.3.1): counted in
    /// `retried`, not as a failure.
    KeptAlive,
}

/// The counters the clients share.
#[derive(Debug, Default)]
pub struct Load {
    stop: AtomicBool,
    pub ok: AtomicUsize,
    pub failed: AtomicUsize,
    pub retried: AtomicUsize,
    /// The first failures, for the assertion message.
    pub errors: Mutex<Vec<String>>,
}

impl Load {
    pub fn new() -> Arc<Load> {
        Arc::default()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// `(ok, failed, retried)` so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
        )
    }

    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 20 {
            e.push(why);
        }
    }
}

/// Starts a client thread against `addr`: request `i` is `make(i)`; at most `max` requests
/// and `limit` of time, `pause` between requests.
pub fn client(
    addr: SocketAddr,
    mode: Mode,
    make: impl Fn(usize) -> Req + Send + 'static,
    load: Arc<Load>,
    max: usize,
    limit: Duration,
    pause: Duration,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut conn: Option<TcpStream> = None;
        for i in 0..max {
            if load.stop.load(Ordering::Relaxed) || started.elapsed() > limit {
                break;
            }
            let req = make(i);
            let reused = conn.is_some();
            let mut answer = once(&mut conn, addr, mode, &req);
            if let (Err((0, _)), true) = (&answer, reused) {
                load.retried.fetch_add(1, Ordering::Relaxed);
                conn = None;
                answer = once(&mut conn, addr, mode, &req);
            }
            match answer {
                Ok(head) if status_of(&head) == Some(req.expect) => {
                    load.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(head) => load.fail(format!(
                    "{} {} at {:?}: {}",
                    req.method,
                    req.path,
                    started.elapsed(),
                    head.lines().next().unwrap_or("")
                )),
                Err((_, e)) => load.fail(format!(
                    "{} {} at {:?}: {e}",
                    req.method,
                    req.path,
                    started.elapsed()
                )),
            }
            std::thread::sleep(pause);
        }
    })
}

fn status_of(head: &str) -> Option<u16> {
    head.split(' ').nth(1)?.parse().ok()
}

/// One exchange: the answer's head, or the bytes of answer read before the error.
fn once(
    conn: &mut Option<TcpStream>,
    addr: SocketAddr,
    mode: Mode,
    req: &Req,
) -> Result<String, (usize, String)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| (1, format!("connect: {e}")))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        *conn = Some(s);
    }
    let s = conn.as_mut().unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: test.example\r\n",
        req.method, req.path
    );
    for (n, v) in &req.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !req.body.is_empty() || req.method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    if mode == Mode::Fresh {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&req.body);
    let result = s
        .write_all(&out)
        .map_err(|e| (0, format!("write: {e}")))
        .and_then(|()| read_answer(s));
    let keep = match &result {
        Ok(h) => mode == Mode::KeptAlive && !h.to_ascii_lowercase().contains("connection: close"),
        Err(_) => false,
    };
    if !keep {
        *conn = None;
    }
    result
}

/// Reads one answer (its head, then a `Content-Length` or chunked body).
fn read_answer(s: &mut TcpStream) -> Result<String, (usize, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            Ok(_) => return Err((buf.len(), "closed before a complete head".into())),
            Err(e) => return Err((buf.len(), format!("read: {e}"))),
        }
        if buf.len() > 64 * 1024 {
            return Err((buf.len(), "head too large".into()));
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let lower = head.to_ascii_lowercase();
    let n = buf.len();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)
            .map_err(|e| (n, format!("body: {e}")))?;
    } else if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        while !body.ends_with(b"0\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => body.push(byte[0]),
                _ => return Err((n, "chunked body cut".into())),
            }
        }
    }
    Ok(head)
}
