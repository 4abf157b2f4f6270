//! The admin endpoint: `/metrics`, `/healthz`, `/readyz` (whether this instance can serve)
//! and `/upstreamz` (whether the payment API's addresses pass their health checks).
//!
//! `/readyz` leaves the payment API out on purpose: when it is down, every instance of the
//! proxy would turn unready at once, and a Kubernetes Service or an HAProxy backend would
//! then have no instance left even to answer 502 (or to reach an address that has just come
//! back; requests still go to unhealthy addresses when none is healthy). Those who want to
//! gate on the payment API check `/upstreamz`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::balance::{health as health_of, Balancer};
use super::pool::OpenConnections;

/// Admin connections open at once (probes and scrapers: a few); more wait in the backlog.
/// Part of the descriptors the open-file limit keeps beyond the client connections.
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 64;

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
    /// The connections to the payment API open, over all threads.
    upstream_connections: Arc<OpenConnections>,
}

impl Health {
    pub(super) fn new(
        workers: usize,
        balancer: Arc<Balancer>,
        upstream_connections: Arc<OpenConnections>,
    ) -> Self {
        Health {
            draining: AtomicBool::new(false),
            workers_up: AtomicUsize::new(0),
            workers,
            balancer,
            upstream_connections,
        }
    }

    /// Why this instance does not take traffic, if it does not (the payment API's health is
    /// not its own: see [`Health::upstreams`]).
    fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Relaxed) {
            Some("draining\n")
        } else if self.workers_up.load(Ordering::Relaxed) < self.workers {
            Some("starting\n")
        } else {
            None
        }
    }

    /// `/upstreamz`: whether some upstream address is healthy, and a line per address.
    fn upstreams(&self) -> (bool, String) {
        let all = health_of(&self.balancer);
        let healthy = all.iter().filter(|(_, h)| *h).count();
        let mut text = format!("{healthy} of {} upstreams healthy\n", all.len());
        for (addr, h) in &all {
            let state = if *h { "healthy" } else { "unhealthy" };
            text.push_str(&format!("{addr} {state}\n"));
        }
        (healthy > 0, text)
    }
}

/// The gauges set at each scrape.
#[derive(Clone)]
struct Gauges {
    /// `klarna_stepup_upstreams{state}`: the upstream addresses by health, as `/upstreamz`
    /// says.
    upstreams: prometheus::IntGaugeVec,
    /// `klarna_stepup_upstream_connections`: the connections to the payment API open.
    connections: prometheus::IntGauge,
}

fn gauges() -> Option<Gauges> {
    let upstreams = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "klarna_stepup_upstreams",
            "Upstream addresses by health check state: healthy, unhealthy (with none healthy, \
             requests go to all of them)",
        ),
        &["state"],
    )
    .ok()?;
    let connections = prometheus::IntGauge::new(
        "klarna_stepup_upstream_connections",
        "Connections to the payment API open, in use or idle, over all threads (kept up to \
         server.max_connections)",
    )
    .ok()?;
    let r = prometheus::default_registry();
    r.register(Box::new(upstreams.clone())).ok()?;
    r.register(Box::new(connections.clone())).ok()?;
    Some(Gauges {
        upstreams,
        connections,
    })
}

/// Serves the admin endpoint until the process ends.
pub(super) async fn serve(listener: TcpListener, health: Arc<Health>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        // Probes and scrapers send a line or two: hyper's smallest buffer, not its 400 KB.
        .max_buf_size(8192);
    let gauges = gauges();
    let places = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        // At the cap, new connections wait in the backlog: the descriptors the process
        // keeps beyond its client connections are not the admin port's to take.
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (health, gauges) = (health.clone(), gauges.clone());
        let svc = hyper::service::service_fn(move |req| {
            std::future::ready(Ok::<_, Infallible>(answer(&req, &health, gauges.as_ref())))
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(place);
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    health: &Health,
    gauges: Option<&Gauges>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => {
            if let Some(g) = gauges {
                let all = health_of(&health.balancer);
                let healthy = all.iter().filter(|(_, h)| *h).count();
                g.upstreams
                    .with_label_values(&["healthy"])
                    .set(healthy as i64);
                g.upstreams
                    .with_label_values(&["unhealthy"])
                    .set((all.len() - healthy) as i64);
                let open = health.upstream_connections.open();
                g.connections.set(i64::try_from(open).unwrap_or(i64::MAX));
            }
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
        "/upstreamz" => match health.upstreams() {
            (true, text) => (StatusCode::OK, "text/plain", text),
            (false, text) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", text),
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
