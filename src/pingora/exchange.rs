//! The direct exchange: how [`StepUpProxy`] carries an injected Klarna request that it read
//! whole (up to 64 KiB) to the upstream and back.
//!
//! Through Pingora's proxy pipeline the rewritten answer would go out chunked in three
//! flushed writes (Pingora writes a response header before any body filter runs), after the
//! retry-buffer replay and the pipeline's two tasks and channels; that pipeline cost more
//! than the whole engine. Here the proxy is its own client, on Pingora's connector and
//! connection pool: one request with an exact `Content-Length`, the answer read to its end
//! (bounded by `body_limit`), rewritten, and written back with an exact `Content-Length` in
//! one go (through the downstream modules, so `ResponseCompression` still compresses for
//! clients that ask).
//!
//! The inner proxy's phases run in Pingora's order: `proxy_upstream_filter`,
//! `upstream_peer`, `fail_to_connect`, `connected_to_upstream`, `upstream_request_filter`,
//! `request_body_filter`, `upstream_response_filter`, `upstream_response_body_filter`,
//! `response_filter`, `response_body_filter`, `error_while_proxy` (whose retry verdict is
//! followed, as Pingora follows it), then `logging` as for any request. Body filters see the
//! whole body in one call, and the `Duration` they may return (a rate limit) is ignored.
//! Trailers of a chunked answer are not passed on (the pipeline passes them).
//!
//! Peers that may speak HTTP/2 (ALPN other than `H1`) take Pingora's pipeline instead, as
//! does everything when [`StepUpProxy::direct_exchange`] is off.

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::{UniqueID, ALPN};
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::Result;

use super::ctx::StepUpCtx;
use super::phases::StepUpPhases;
use super::proxy::{StepUpProxy, StepUpProxyCtx};
use crate::driver::{ResponseAction, ResponseHead};
use crate::engine::strip_connection_headers;

/// What one attempt brought back: the answer's head and body, and whether that body is
/// whole. It is not when the answer is larger than `body_limit`: the rest is still to be read
/// from the connection.
struct Answer {
    head: Box<ResponseHeader>,
    body: Bytes,
    whole: bool,
}

impl<P> StepUpProxy<P>
where
    P: ProxyHttp + Send + Sync,
    P::CTX: Send + Sync,
{
    /// Carries out the injected exchange in `ctx`, if it can be done directly: `Ok(true)` once
    /// the answer is written, `Ok(false)` to leave the request to Pingora's pipeline.
    pub(super) async fn direct(
        &self,
        session: &mut Session,
        ctx: &mut StepUpProxyCtx<P::CTX>,
    ) -> Result<bool> {
        let Some(body) = direct_body(&ctx.step_up) else {
            return Ok(false);
        };
        let max_attempts = self.phases.client.max_attempts();
        if !self
            .inner
            .proxy_upstream_filter(session, &mut ctx.inner)
            .await?
        {
            ctx.declined = true;
            return Ok(false);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let peer = self.inner.upstream_peer(session, &mut ctx.inner).await?;
            if peer.options.alpn != ALPN::H1 {
                ctx.peer = Some(peer);
                return Ok(false);
            }
            let connector = self.phases.client.connector();
            let (mut conn, reused) = match connector.get_http_session(&*peer).await {
                Ok(c) => c,
                Err(mut e) => {
                    e.as_up();
                    let e = self
                        .inner
                        .fail_to_connect(session, &peer, &mut ctx.inner, e)
                        .into_up();
                    if e.retry() && attempt < max_attempts {
                        continue;
                    }
                    return Err(e);
                }
            };
            let answer = self
                .attempt(session, ctx, &mut conn, reused, &peer, body.clone())
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    let e = self
                        .inner
                        .error_while_proxy(&peer, session, e, &mut ctx.inner, reused);
                    if e.retry() && attempt < max_attempts {
                        continue;
                    }
                    return Err(e);
                }
            };
            if answer.whole {
                connector
                    .release_http_session(conn, &*peer, peer.idle_timeout())
                    .await;
                self.respond(session, ctx, answer, None).await?;
            } else {
                self.respond(session, ctx, answer, Some(&mut conn)).await?;
                connector
                    .release_http_session(conn, &*peer, peer.idle_timeout())
                    .await;
            }
            return Ok(true);
        }
    }

    /// One attempt on `conn`: the request out, the answer's head and body (up to the limit)
    /// back.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut StepUpProxyCtx<P::CTX>,
        conn: &mut HttpSession,
        reused: bool,
        peer: &HttpPeer,
        body: Bytes,
    ) -> Result<Answer> {
        conn.set_read_timeout(peer.options.read_timeout);
        conn.set_write_timeout(peer.options.write_timeout);
        let (fd, digest) = match conn.as_http1() {
            Some(h1) => (h1.id(), Some(h1.digest())),
            None => (-1, conn.digest()),
        };
        self.inner
            .connected_to_upstream(session, reused, peer, fd, digest, &mut ctx.inner)
            .await?;

        let mut req = upstream_head(session, peer)?;
        self.inner
            .upstream_request_filter(session, &mut req, &mut ctx.inner)
            .await?;
        let mut body = Some(body);
        self.inner
            .request_body_filter(session, &mut body, true, &mut ctx.inner)
            .await?;
        let body = body.unwrap_or_default();
        ctx.step_up
            .driver
            .upstream_request_head_for(&mut req, body.len());

        // Errors of the connection are the upstream's (502/504); a filter's are its own.
        conn.write_request_header(Box::new(req)).await.map_err(up)?;
        conn.write_request_body(body, true).await.map_err(up)?;
        conn.finish_request_body().await.map_err(up)?;
        let head = loop {
            conn.read_response_header().await.map_err(up)?;
            match conn.response_header() {
                // No request of the exchange asks for an upgrade (`Upgrade` is stripped):
                // a 101 is no interim answer, and what follows it is not HTTP.
                Some(h) if h.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(up(pingora::Error::explain(
                        pingora::ErrorType::InvalidHTTPHeader,
                        "a 101 nobody asked for",
                    )))
                }
                Some(h) if h.status.is_informational() => continue,
                Some(h) => break Box::new(h.clone()),
                None => {
                    return Err(up(pingora::Error::explain(
                        pingora::ErrorType::InvalidHTTPHeader,
                        "no response header",
                    )))
                }
            }
        };
        let limit = self.phases.step_up().body_limit();
        let mut raw = BytesMut::new();
        while let Some(chunk) = conn.read_response_body().await.map_err(up)? {
            if raw.is_empty() && chunk.len() <= limit && conn.response_done() {
                // The usual answer: one chunk, no copy.
                return Ok(Answer {
                    head,
                    body: chunk,
                    whole: true,
                });
            }
            raw.extend_from_slice(&chunk);
            if raw.len() > limit {
                return Ok(Answer {
                    head,
                    body: raw.freeze(),
                    whole: false,
                });
            }
        }
        Ok(Answer {
            head,
            body: raw.freeze(),
            whole: true,
        })
    }

    /// Writes the answer to the client, through the inner proxy's response phases.
    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut StepUpProxyCtx<P::CTX>,
        answer: Answer,
        rest: Option<&mut HttpSession>,
    ) -> Result<()> {
        let Answer {
            mut head,
            body: raw,
            whole: end,
        } = answer;
        self.inner
            .upstream_response_filter(session, &mut head, &mut ctx.inner)
            .await?;
        let mut raw = Some(raw);
        self.inner
            .upstream_response_body_filter(session, &mut raw, end, &mut ctx.inner)?;
        let raw = raw.unwrap_or_default();
        let body = self
            .phases
            .direct_answer(session, &mut head, raw, end, &mut ctx.step_up);
        self.inner
            .response_filter(session, &mut head, &mut ctx.inner)
            .await?;
        let mut body = Some(body);
        self.inner
            .response_body_filter(session, &mut body, end, &mut ctx.inner)?;
        let body = body.unwrap_or_default();
        // The proxy's own version, not the payment API's (RFC 9110 section 6.2).
        head.set_version(http::Version::HTTP_11);
        let Some(conn) = rest else {
            head.remove_header(&header::TRANSFER_ENCODING);
            // 204 and 304 carry no body and no length (RFC 9110 §8.6).
            if !matches!(head.status.as_u16(), 204 | 304) {
                head.insert_header(header::CONTENT_LENGTH, body.len())?;
            }
            let empty = body.is_empty();
            session.write_response_header(head, empty).await?;
            if !empty {
                session.write_response_body(Some(body), true).await?;
            }
            return Ok(());
        };
        // Too large to rewrite: what was read, then the rest as it comes, untouched.
        session.write_response_header(head, false).await?;
        session.write_response_body(Some(body), false).await?;
        loop {
            let chunk = conn.read_response_body().await.map_err(up)?;
            let end = chunk.is_none();
            let mut chunk = chunk;
            self.inner
                .upstream_response_body_filter(session, &mut chunk, end, &mut ctx.inner)?;
            self.inner
                .response_body_filter(session, &mut chunk, end, &mut ctx.inner)?;
            session.write_response_body(chunk, end).await?;
            if end {
                return Ok(());
            }
        }
    }
}

/// The client's request head as an HTTP/1.1 upstream request: without the headers of its
/// own connection (stripped as the driver strips them, before your proxy's
/// `upstream_request_filter` sees the head, as on Pingora's pipeline), with a `Host`: the
/// client's, else its target's authority, else (an HTTP/1.0 request without one) the
/// peer's SNI name or address (RFC 9112 section 3.2).
fn upstream_head(session: &Session, peer: &HttpPeer) -> Result<pingora::http::RequestHeader> {
    let mut req = session.req_header().clone();
    req.set_version(http::Version::HTTP_11);
    strip_connection_headers(&mut req);
    if !req.headers.contains_key(header::HOST) {
        let host = match req.uri.authority() {
            Some(authority) => authority.as_str().to_owned(),
            None if !peer.sni().is_empty() => peer.sni().to_owned(),
            None => match peer.address() {
                pingora::protocols::l4::socket::SocketAddr::Inet(addr) => addr.to_string(),
                _ => "localhost".to_owned(),
            },
        };
        req.insert_header(header::HOST, host)?;
    }
    Ok(req)
}

/// The body of an injected Klarna request read whole in `request_filter`: an exchange
/// [`StepUpProxy`] may carry out by itself.
fn direct_body(ctx: &StepUpCtx) -> Option<Bytes> {
    ctx.driver.forward_body().cloned()
}

impl StepUpPhases {
    /// The direct exchange's answer, as read (`whole`, or past the body limit with the rest
    /// still to come): what the driver makes of it. Edits `head` to match (the caller sets
    /// the framing of a whole answer) and returns the body, or what goes before the rest.
    fn direct_answer(
        &self,
        session: &mut Session,
        head: &mut ResponseHeader,
        raw: Bytes,
        whole: bool,
        ctx: &mut StepUpCtx,
    ) -> Bytes {
        let d = &mut ctx.driver;
        let length = whole.then_some(raw.len() as u64);
        let read = ResponseHead::new(head.status, &head.headers).length(length);
        let body = match d.on_response_head(read) {
            ResponseAction::Read { .. } => match d.on_response_body(raw.clone(), whole) {
                ResponseAction::Send(body) | ResponseAction::SendThenStream(body) => body,
                _ => raw,
            },
            _ => raw,
        };
        if let Some(status) = d.answer_status() {
            let _ = head.set_status(status);
        }
        if !d.response_head(head).body_is_step_ups() {
            self.compression_off(session, ctx);
        }
        if !whole && !head.headers.contains_key(header::CONTENT_LENGTH) {
            // Too large to rewrite: passed on as it comes.
            let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
        }
        body
    }
}

/// An error of the upstream connection, as Pingora marks them.
fn up(e: Box<pingora::Error>) -> Box<pingora::Error> {
    e.into_up()
}
