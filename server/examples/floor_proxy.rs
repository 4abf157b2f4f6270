//! The floor under the proxy's cost: an HTTP/1.1 passthrough with no HTTP library, only
//! tokio and `httparse`, on one thread. A measuring stick for `bench/peer/`, not a proxy:
//! it frames by `Content-Length` only, checks nothing, strips nothing, has no timeouts, and
//! opens one upstream connection per client connection. What it costs per request is what
//! the sockets and the runtime cost, below which no HTTP/1 path on tokio can go.
//!
//! ```sh
//! cargo run --release -p klarna-stepup-server --example floor_proxy -- 127.0.0.1:18099 127.0.0.1:18080
//! ```

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The length of the message at the start of `buf` (head and `Content-Length` body), once
/// its head is complete; `Err` for what is not HTTP/1.1.
fn message_len(buf: &[u8], request: bool) -> Result<Option<usize>, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (head, headers) = if request {
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf)? {
            httparse::Status::Complete(n) => (n, r.headers),
            httparse::Status::Partial => return Ok(None),
        }
    } else {
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf)? {
            httparse::Status::Complete(n) => (n, r.headers),
            httparse::Status::Partial => return Ok(None),
        }
    };
    let body = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some(head + body))
}

/// Reads until `buf` starts with a whole message; its length, or `None` at the end.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, request: bool) -> Option<usize> {
    let mut len = None;
    loop {
        if len.is_none() {
            len = message_len(buf, request).ok()?;
        }
        if let Some(n) = len.filter(|&n| buf.len() >= n) {
            return Some(n);
        }
        buf.reserve(4096);
        if s.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// One client connection, with its own upstream connection, request by request.
async fn serve(mut client: TcpStream, upstream: SocketAddr) -> Option<()> {
    client.set_nodelay(true).ok()?;
    let mut up = TcpStream::connect(upstream).await.ok()?;
    up.set_nodelay(true).ok()?;
    let (mut from_client, mut from_up) = (Vec::new(), Vec::new());
    loop {
        let n = read_message(&mut client, &mut from_client, true).await?;
        up.write_all(&from_client[..n]).await.ok()?;
        from_client.drain(..n);
        let n = read_message(&mut up, &mut from_up, false).await?;
        client.write_all(&from_up[..n]).await.ok()?;
        from_up.drain(..n);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or("127.0.0.1:18099".into())
        .parse()
        .unwrap();
    let upstream: SocketAddr = args
        .next()
        .unwrap_or("127.0.0.1:18080".into())
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap();
        loop {
            if let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, upstream));
            }
        }
    });
}
