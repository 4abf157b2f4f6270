//! Reading and writing through a Pingora `Session`, and the engine's head edits on Pingora's
//! header types.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::driver::{Answer, Head, RequestHead};
use crate::Refusal;

/// The engine's head edits on Pingora's two header types (they share their header API but
/// no trait).
macro_rules! impl_head {
    ($($ty:ty),*) => {$(
        impl Head for $ty {
            fn headers(&self) -> &HeaderMap {
                &self.headers
            }

            fn set(&mut self, name: HeaderName, value: HeaderValue) {
                // Only fails for invalid names or values; these are typed, so valid.
                let _ = self.insert_header(name, value);
            }

            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    )*};
}

impl_head!(RequestHeader, ResponseHeader);

impl RequestHead for RequestHeader {
    fn method(&self) -> &http::Method {
        &self.method
    }

    fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

/// The 502/504 answer for a proxy error that the upstream caused: a timeout gives
/// [`Refusal::upstream_timeout`], an answer head Pingora could not read
/// [`Refusal::upstream_unreadable_answer`], any other upstream failure
/// [`Refusal::upstream_unreachable`]. `None` for errors of the client or of the proxy itself.
pub fn upstream_refusal(e: &Error) -> Option<Refusal> {
    use ErrorType::*;
    if *e.esource() == ErrorSource::Downstream {
        // The client's own timeout or failure: never the payment API's 502/504.
        return None;
    }
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            Some(Refusal::upstream_timeout())
        }
        InvalidHTTPHeader if *e.esource() == ErrorSource::Upstream => {
            Some(Refusal::upstream_unreadable_answer())
        }
        _ if *e.esource() == ErrorSource::Upstream => Some(Refusal::upstream_unreachable()),
        _ => None,
    }
}

/// The 408 answer for a client that did not send its request body in time (Pingora's read
/// timeout on the downstream, `ReadTimedout` from the client's side). `None` otherwise.
pub fn client_timeout_refusal(e: &Error) -> Option<Refusal> {
    (*e.esource() == ErrorSource::Downstream && e.etype() == &ErrorType::ReadTimedout)
        .then(Refusal::request_timeout)
}

/// Writes `refusal` as the complete response, with the same head and bytes as the tower
/// adapter ([`Refusal::to_response`]); the connection is not kept alive when the refusal
/// says so ([`Refusal::closes_connection`]: Pingora then writes `Connection: close`).
pub async fn respond(session: &mut Session, refusal: &Refusal) -> Result<()> {
    write_answer(session, &Answer::from(refusal.clone())).await
}

/// Writes step-up's own answer as the complete response; the connection is not kept alive
/// when the answer says so.
pub(super) async fn write_answer(session: &mut Session, answer: &Answer) -> Result<()> {
    if answer.closes_connection() {
        session.set_keepalive(None);
    }
    write_response(session, answer.to_response()).await
}

/// Writes `res` as the complete response.
async fn write_response(session: &mut Session, res: http::Response<Vec<u8>>) -> Result<()> {
    let mut head = ResponseHeader::build(res.status(), Some(res.headers().len()))?;
    for (name, value) in res.headers() {
        head.append_header(name.clone(), value.clone())?;
    }
    let body = res.into_body();
    if body.is_empty() {
        session.write_response_header(Box::new(head), true).await?;
    } else {
        session.write_response_header(Box::new(head), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}
