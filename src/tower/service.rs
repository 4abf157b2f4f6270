//! [`KlarnaStepUp`]: the middleware service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower_service::Service;
use tracing::Instrument;

use super::{ResponseFuture, StepUpBody};
use crate::decode::decode;
use crate::engine::webhook::relay_headers;
use crate::engine::{Candidate, Exchange, MARKER_HEADER, STALE_RESPONSE_HEADERS};
use crate::{Refusal, RequestVerdict, ResponseVerdict, Route, StepUp};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Klarna step-up in front of a payment API service: see [the module docs](crate::tower).
#[derive(Debug, Clone)]
pub struct KlarnaStepUp<S> {
    inner: S,
    step_up: StepUp,
}

impl<S> KlarnaStepUp<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, step_up: StepUp) -> Self {
        KlarnaStepUp { inner, step_up }
    }

    /// A [`KlarnaStepUpLayer`](super::KlarnaStepUpLayer) for `step_up`.
    pub fn layer(step_up: StepUp) -> super::KlarnaStepUpLayer {
        super::KlarnaStepUpLayer::new(step_up)
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for KlarnaStepUp<S>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<StepUpBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self
            .step_up
            .classify(req.method(), req.uri(), req.headers())
        {
            Route::Candidate(candidate) => {
                // The body must be read before `inner` is called: take the service that was
                // polled ready and leave a clone in its place (see tower's docs on `Service`).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::step_up(Box::pin(exchange(
                    self.step_up.clone(),
                    inner,
                    candidate,
                    req,
                )))
            }
            Route::Return => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::step_up(Box::pin(acquirer_return(self.step_up.clone(), inner, req)))
            }
            Route::Webhook => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::step_up(Box::pin(webhook(self.step_up.clone(), inner, req)))
            }
            Route::Internal => ResponseFuture::step_up(Box::pin(std::future::ready(Ok(refusal(
                &Refusal::not_found(),
            ))))),
            _ => ResponseFuture::passthrough(self.inner.call(req.map(StepUpBody::new))),
        }
    }
}

/// The acquirer return: verify the token, tell the payment API (bounded wait), redirect.
async fn acquirer_return<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<StepUpBody<ResB>>, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let redirect = match step_up.resolve_return(req.uri(), crate::engine::unix_now()) {
        Ok(r) => r,
        Err(r) => {
            tracing::warn!(code = r.code, "acquirer return refused");
            return Ok(refusal(&r));
        }
    };
    if let Some((path, timeout)) = step_up.return_notification() {
        let mut notify = Request::new(StepUpBody::full(redirect.notification()));
        *notify.method_mut() = http::Method::POST;
        *notify.uri_mut() = with_path(req.uri(), path);
        if let Some(host) = req.headers().get(http::header::HOST) {
            notify
                .headers_mut()
                .insert(http::header::HOST, host.clone());
        }
        notify
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // The redirect waits for the notification at most `timeout`: the customer comes first.
        match tokio::time::timeout(timeout, inner.call(notify)).await {
            Ok(Ok(res)) if res.status().is_success() => {}
            Ok(Ok(res)) => {
                tracing::warn!(status = res.status().as_u16(), reference = %redirect.reference, "return notification refused")
            }
            Ok(Err(_)) => {
                tracing::warn!(reference = %redirect.reference, "return notification failed")
            }
            Err(_) => {
                tracing::warn!(reference = %redirect.reference, "return notification timed out")
            }
        }
    }
    tracing::info!(reference = %redirect.reference, state = redirect.state.as_deref(), "acquirer return");
    Ok(redirect.to_response().map(StepUpBody::full))
}

/// A Klarna webhook: verify, relay the original bytes, and acknowledge only what the payment
/// API accepted; anything else is a 503 so that Klarna retries.
async fn webhook<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<StepUpBody<ResB>>, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, step_up.webhook_body_limit()).await {
        Ok(body) => body,
        Err(r) => return Ok(refusal(&r)),
    };
    let event = match step_up.verify_webhook(&parts.headers, &body) {
        Ok(event) => event,
        Err(r) => {
            tracing::warn!(code = r.code, param = r.param.as_deref(), "webhook refused");
            return Ok(refusal(&r));
        }
    };
    for name in relay_headers::ALL {
        parts.headers.remove(name);
    }
    for (name, value) in event.relay_headers() {
        parts.headers.insert(name, value);
    }
    parts.uri = with_path(&parts.uri, step_up.webhook_relay_path());
    let span = tracing::info_span!(
        "webhook",
        event_type = event.event_type.as_deref(),
        reference = event.reference.as_deref()
    );
    let relayed = inner
        .call(Request::from_parts(parts, StepUpBody::full(body)))
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    match relayed {
        Ok(res) if res.status().is_success() => {
            tracing::info!(status = res.status().as_u16(), "webhook relayed");
            let mut res = res.map(StepUpBody::new);
            res.headers_mut()
                .insert(MARKER_HEADER, HeaderValue::from_static("relayed"));
            Ok(res)
        }
        Ok(res) => {
            tracing::warn!(
                status = res.status().as_u16(),
                "webhook not accepted by the payment API"
            );
            Ok(refusal(&Refusal::webhook_not_accepted()))
        }
        Err(_) => {
            tracing::warn!("webhook relay failed: payment API unreachable");
            Ok(refusal(&Refusal::webhook_not_accepted()))
        }
    }
}

/// `uri` with its path (and query) replaced by `path`; scheme and authority kept.
fn with_path(uri: &http::Uri, path: &str) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path.parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| http::Uri::from_static("/"))
}

/// One candidate exchange: read the body, ask the engine, call the payment API, rewrite.
async fn exchange<S, ReqB, ResB>(
    step_up: StepUp,
    mut inner: S,
    candidate: Candidate,
    req: Request<ReqB>,
) -> Result<Response<StepUpBody<ResB>>, S::Error>
where
    S: Service<Request<StepUpBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
{
    let (mut parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, step_up.body_limit()).await {
        Ok(body) => body,
        Err(r) => return Ok(refusal(&r)),
    };
    let (body, exchange) = match step_up.rewrite_request(candidate, &body) {
        RequestVerdict::NotKlarna => {
            let res = inner
                .call(Request::from_parts(parts, StepUpBody::full(body)))
                .await?;
            return Ok(res.map(StepUpBody::new));
        }
        RequestVerdict::Refused(r) => {
            tracing::info!(
                code = r.code,
                param = r.param.as_deref(),
                "klarna request refused"
            );
            return Ok(refusal(&r));
        }
        RequestVerdict::Injected { body, exchange } => (body, exchange),
    };
    let h = &mut parts.headers;
    h.remove(TRANSFER_ENCODING);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    // The answer is read and rewritten: ask for it plain (compressed ones are decoded anyway).
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let res = inner
        .call(Request::from_parts(parts, StepUpBody::full(body)))
        .await?;
    Ok(rewrite_response(&step_up, &exchange, res).await)
}

async fn rewrite_response<B>(
    step_up: &StepUp,
    exchange: &Exchange,
    res: Response<B>,
) -> Response<StepUpBody<B>>
where
    B: Body<Data = Bytes>,
{
    let (mut parts, body) = res.into_parts();
    let limit = step_up.body_limit();
    let wanted = step_up.wants_response(exchange, parts.status, &parts.headers)
        && content_length(&parts.headers).is_none_or(|n| n <= limit as u64);
    if !wanted {
        passthrough(
            step_up,
            exchange,
            &mut parts.headers,
            "not a 2xx JSON answer within the limit",
        );
        return Response::from_parts(parts, StepUpBody::new(body));
    }
    // The payment API is trusted, and its answer to an authorize call is small: read it whole.
    let raw = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            tracing::warn!(
                route = step_up.route_pattern(exchange),
                "upstream answer body failed"
            );
            return refusal(&Refusal::upstream_unreachable());
        }
    };
    let verdict = match decode(parts.headers.get(CONTENT_ENCODING), &raw, limit) {
        Some(plain) => step_up.rewrite_response(exchange, parts.status, &parts.headers, &plain),
        None => ResponseVerdict::Keep(crate::KeepReason::NotJson),
    };
    match verdict {
        ResponseVerdict::Rewritten { body, result } => {
            tracing::debug!(
                reference = exchange.reference(),
                ?result,
                "klarna answer rewritten"
            );
            for name in STALE_RESPONSE_HEADERS {
                parts.headers.remove(name);
            }
            parts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            parts
                .headers
                .insert(MARKER_HEADER, HeaderValue::from_static("rewritten"));
            Response::from_parts(parts, StepUpBody::full(body))
        }
        ResponseVerdict::Keep(reason) => {
            passthrough(step_up, exchange, &mut parts.headers, &reason.to_string());
            Response::from_parts(parts, StepUpBody::full(raw))
        }
    }
}

fn passthrough(step_up: &StepUp, exchange: &Exchange, headers: &mut HeaderMap, reason: &str) {
    tracing::warn!(
        route = step_up.route_pattern(exchange),
        reference = exchange.reference(),
        reason,
        "klarna answer passed through untouched"
    );
    headers.insert(MARKER_HEADER, HeaderValue::from_static("passthrough"));
}

/// Reads a request body within `limit`: 413 beyond it (declared or counted), 400 when it
/// cannot be read.
async fn read_body<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(Refusal::too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Refusal::too_large(limit)),
        Err(_) => Err(Refusal::unreadable_body()),
    }
}

fn refusal<B>(r: &Refusal) -> Response<StepUpBody<B>> {
    r.to_response().map(StepUpBody::full)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
