//! A raw HTTP/1.1 client over loopback: shows the exact framing a proxy sends (chunked or
//! `Content-Length`, which headers), where a high-level client would hide it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// After de-chunking.
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Hop-by-hop request headers a proxy must not forward (RFC 9110 section 7.6.1: `Connection`
/// and what it names, `Keep-Alive`, `TE`, `Trailer`, every `Proxy-*`), and `X-End`, which
/// it must.
pub const HOP_BY_HOP_REQUEST: &[(&str, &str)] = &[
    ("X-Secret", "1"),
    ("Connection", "x-secret"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "x-t"),
    ("Proxy-Authorization", "Basic c2VjcmV0"),
    ("Proxy-Connection", "keep-alive"),
    ("X-End", "kept"),
];

/// The same in an answer, as the upstream sends it.
pub const HOP_BY_HOP_ANSWER: &[(&str, &str)] = &[
    ("connection", "x-hop"),
    ("x-hop", "secret"),
    ("keep-alive", "timeout=99"),
    ("proxy-authenticate", "Basic"),
    ("x-end", "kept"),
];

/// Asserts that of [`HOP_BY_HOP_REQUEST`] only `X-End` reached the upstream (`forwarded`:
/// the head it received), and of [`HOP_BY_HOP_ANSWER`] only `x-end` the client.
pub fn assert_hop_by_hop_stopped(forwarded: &http::HeaderMap, answer: &RawResponse, via: &str) {
    for gone in ["x-hop", "proxy-authenticate"] {
        assert!(
            answer.header(gone).is_none(),
            "{gone} reached the client via {via}: {answer:?}"
        );
    }
    assert_ne!(answer.header("keep-alive"), Some("timeout=99"), "via {via}");
    assert_eq!(answer.header("x-end"), Some("kept"), "via {via}");
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            forwarded.get(gone).is_none(),
            "{gone} reached the upstream via {via}: {forwarded:?}"
        );
    }
    assert_eq!(forwarded["x-end"], "kept", "via {via}");
}

pub enum ReqBody<'a> {
    None,
    Length(&'a [u8]),
    Chunked(&'a [u8], usize),
}

/// One request on a fresh connection (`Connection: close`), bounded by `limit`.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody<'_>,
    limit: Duration,
) -> Result<RawResponse, String> {
    tokio::time::timeout(limit, inner(addr, method, path, headers, body))
        .await
        .map_err(|_| format!("timeout after {limit:?}"))?
}

async fn inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody<'_>,
) -> Result<RawResponse, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    match &body {
        ReqBody::None => {}
        ReqBody::Length(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        ReqBody::Chunked(..) => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    let (mut rd, mut wr) = s.split();
    let write = async {
        wr.write_all(head.as_bytes()).await?;
        match body {
            ReqBody::None => {}
            ReqBody::Length(b) => wr.write_all(b).await?,
            ReqBody::Chunked(b, n) => {
                for c in b.chunks(n) {
                    wr.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                        .await?;
                    wr.write_all(c).await?;
                    wr.write_all(b"\r\n").await?;
                }
                wr.write_all(b"0\r\n\r\n").await?;
            }
        }
        wr.flush().await
    };
    let read = async {
        let mut buf = Vec::new();
        rd.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        parse(&buf, method)
    };
    let (_, r) = tokio::join!(write, read);
    r
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn parse(buf: &[u8], method: &str) -> Result<RawResponse, String> {
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no complete head in {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        )
    })?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[end + 4..];
    let chunked = get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(cl) = get("content-length") {
        let cl: usize = cl.parse().map_err(|_| "bad content-length")?;
        if rest.len() < cl {
            return Err(format!("EOF after {} of {cl} body bytes", rest.len()));
        }
        rest[..cl].to_vec()
    } else if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else {
        rest.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
        chunked,
    })
}

fn dechunk(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let le = find(&data[i..], b"\r\n").ok_or("truncated chunk size")?;
        let line = String::from_utf8_lossy(&data[i..i + le]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
        i += le + 2;
        if size == 0 {
            return Ok(out);
        }
        if data.len() < i + size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[i..i + size]);
        i += size + 2;
    }
}

/// Sends fixture `f`'s request (its headers and `extra`, its body with a `Content-Length`).
pub async fn send_fixture(
    addr: SocketAddr,
    f: &super::fixtures::Fixture,
    extra: &[(&str, &str)],
    limit: Duration,
) -> RawResponse {
    let mut headers: Vec<(&str, &str)> = f
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.extend_from_slice(extra);
    raw_request(
        addr,
        &f.method,
        &f.path,
        &headers,
        ReqBody::Length(&f.body),
        limit,
    )
    .await
    .unwrap_or_else(|e| panic!("{}: {e}", f.name))
}

/// `request`'s bytes, as they are, to `addr`, and everything that comes back until the
/// other end closes (within `limit`).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}
