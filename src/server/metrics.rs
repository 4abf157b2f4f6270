//! Prometheus metrics, served by `pingora-prometheus` from the default registry.

use crate::Record;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

/// The proxy's metrics.
#[derive(Clone)]
pub(crate) struct Metrics {
    requests: IntCounterVec,
    request_bytes: Histogram,
    response_bytes: Histogram,
    engine_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers the metrics in the default registry.
    pub fn register() -> Self {
        let bytes = prometheus::exponential_buckets(256.0, 4.0, 8).unwrap_or_default();
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_requests_total",
                    "Requests by outcome: rewritten, passthrough, refused, upstream_error",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
            request_bytes: Histogram::with_opts(
                HistogramOpts::new(
                    "klarna_stepup_request_body_bytes",
                    "Candidate request bodies read by the engine",
                )
                .buckets(bytes.clone()),
            )
            .expect("static metric definition"),
            response_bytes: Histogram::with_opts(
                HistogramOpts::new(
                    "klarna_stepup_response_body_bytes",
                    "Upstream answers to Klarna requests read by the engine",
                )
                .buckets(bytes),
            )
            .expect("static metric definition"),
            engine_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "klarna_stepup_engine_seconds",
                    "Time spent in the step-up engine per candidate request",
                )
                .buckets(prometheus::exponential_buckets(1e-6, 4.0, 10).unwrap_or_default()),
            )
            .expect("static metric definition"),
        };
        let r = prometheus::default_registry();
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.request_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.engine_seconds.clone()),
        ] {
            if let Err(e) = r.register(c) {
                tracing::warn!(error = %e, "metric not registered");
            }
        }
        m
    }

    /// Records one finished request.
    pub fn record(&self, ctx: &Record) {
        self.requests
            .with_label_values(&[ctx.outcome().label()])
            .inc();
        if let Some(n) = ctx.request_body_len() {
            self.request_bytes.observe(n as f64);
            self.engine_seconds.observe(ctx.engine_time().as_secs_f64());
        }
        if let Some(n) = ctx.response_body_len() {
            self.response_bytes.observe(n as f64);
        }
    }
}
