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

use super::{decode::decode, ResponseFuture, StepUpBody};
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
            _ => ResponseFuture::passthrough(self.inner.call(req.map(StepUpBody::new))),
        }
    }
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
    let limit = step_up.body_limit();
    if content_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return Ok(refusal(&Refusal::too_large(limit)));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Ok(refusal(&Refusal::too_large(limit))),
        Err(_) => return Ok(refusal(&Refusal::unreadable_body())),
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

fn refusal<B>(r: &Refusal) -> Response<StepUpBody<B>> {
    r.to_response().map(StepUpBody::full)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
