//! The admin endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::balance::{pick, Balancer};

/// What `/readyz` answers from.
pub(super) struct Health {
    /// Set at SIGTERM/SIGINT, before the listeners stop.
    pub draining: AtomicBool,
    /// Workers accepting connections.
    pub workers_up: AtomicUsize,
    /// Workers there should be.
    pub workers: usize,
    /// The upstreams and their health.
    balancer: Arc<Balancer>,
}

impl Health {
    pub(super) fn new(workers: usize, balancer: Arc<Balancer>) -> Self {
        Health {
            draining: AtomicBool::new(false),
            workers_up: AtomicUsize::new(0),
            workers,
            balancer,
        }
    }

    /// Why the proxy does not take traffic, if it does not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining\n")
        } else if self.workers_up.load(Ordering::Relaxed) < self.workers {
            Some("starting\n")
        } else if pick(&self.balancer).is_none() {
            Some("no healthy upstream\n")
        } else {
            None
        }
    }
}

/// Serves the admin endpoint until the process ends.
pub(super) async fn serve(listener: TcpListener, health: Arc<Health>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let health = health.clone();
        let svc = hyper::service::service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(answer(&req, &health)))
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

fn answer(req: &Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&prometheus::gather())
                .unwrap_or_default();
            (StatusCode::OK, prometheus::TEXT_FORMAT, text)
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match health.not_ready() {
            None => (StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", why.into()),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}
