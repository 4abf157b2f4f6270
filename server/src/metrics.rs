//! Prometheus metrics, served on the admin endpoint from the default registry (which also
//! carries the process metrics: CPU, resident memory, open file descriptors).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts};

use klarna_stepup::config::Mode;
use klarna_stepup::Record;

/// The proxy's metrics.
#[derive(Clone)]
pub(crate) struct Metrics {
    requests: IntCounterVec,
    refusals: IntCounterVec,
    /// What step-up would have done with the requests of partners (or a configuration) in
    /// `shadow` mode: counted apart, as nothing was done.
    shadow_requests: IntCounterVec,
    shadow_refusals: IntCounterVec,
    /// With `[partners]` on: the configured partner ids, the only `partner` label values
    /// besides [`OTHER_PARTNER`] and [`NO_PARTNER`] (so that callers cannot grow the series).
    partners: Option<std::sync::Arc<[String]>>,
    duration: HistogramVec,
    upstream_duration: Histogram,
    upstream_responses: IntCounterVec,
    upstream_errors: IntCounterVec,
    /// Client connections closed for what the client did: see [`Closed`].
    closed: IntCounterVec,
    request_bytes: Histogram,
    response_bytes: Histogram,
    engine_seconds: Histogram,
}

/// Latency buckets, in seconds: 250 µs .. ~16 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.000_25, 2.0, 17).unwrap_or_default()
}

/// The `partner` label of a partner without an entry of its own.
const OTHER_PARTNER: &str = "other";
/// The `partner` label of a request that names no partner (not a candidate, or none sent).
const NO_PARTNER: &str = "none";

impl Metrics {
    /// Creates and registers the metrics in the default registry. With `partners` (the
    /// configured partner ids, when `[partners]` is on), the request and refusal counters
    /// carry a `partner` label too.
    pub fn register(partners: Option<Vec<String>>) -> Self {
        let bytes = prometheus::exponential_buckets(256.0, 4.0, 8).unwrap_or_default();
        let labelled = partners.is_some();
        let by_partner = |labels: &'static [&'static str]| -> Vec<&'static str> {
            let mut l = labels.to_vec();
            if labelled {
                l.push("partner");
            }
            l
        };
        let m = Metrics {
            partners: partners.map(Into::into),
            requests: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_requests_total",
                    "Requests by outcome: not_candidate, not_klarna, rewritten, passthrough (a \
                     Klarna answer not rewritten: alert on it), refused, upstream_error, \
                     answered_by_inner, redirected, relayed (and partner, with partners on)",
                ),
                &by_partner(&["outcome"]),
            )
            .expect("static metric definition"),
            refusals: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_refusals_total",
                    "Answers step-up gave itself (outcomes refused and upstream_error), by code \
                     (and partner, with partners on)",
                ),
                &by_partner(&["code"]),
            )
            .expect("static metric definition"),
            shadow_requests: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_shadow_requests_total",
                    "Requests in shadow mode (changed in nothing), by the outcome step-up would \
                     have had (and partner, with partners on)",
                ),
                &by_partner(&["outcome"]),
            )
            .expect("static metric definition"),
            shadow_refusals: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_shadow_refusals_total",
                    "Requests in shadow mode step-up would have refused, by code (and partner, \
                     with partners on)",
                ),
                &by_partner(&["code"]),
            )
            .expect("static metric definition"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "klarna_stepup_request_duration_seconds",
                    "Time from a request's head to its answer, by outcome",
                )
                .buckets(latency_buckets()),
                &["outcome"],
            )
            .expect("static metric definition"),
            upstream_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "klarna_stepup_upstream_duration_seconds",
                    "Time from choosing the payment API peer to its answer's head",
                )
                .buckets(latency_buckets()),
            )
            .expect("static metric definition"),
            upstream_responses: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_upstream_responses_total",
                    "Answers of the payment API, by status class (2xx, 3xx, 4xx, 5xx)",
                ),
                &["class"],
            )
            .expect("static metric definition"),
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_upstream_errors_total",
                    "Requests the payment API did not answer: upstream_unreachable, \
                     upstream_timeout",
                ),
                &["code"],
            )
            .expect("static metric definition"),
            closed: IntCounterVec::new(
                Opts::new(
                    "klarna_stepup_client_connections_closed_total",
                    "Client connections the proxy closed for what the client did: stalled (took \
                     none of an answer, or gave it no flow-control window, for \
                     idle_timeout_secs), reset_streams (HTTP/2 streams reset soon after \
                     opening them, past the budget)",
                ),
                &["reason"],
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
            Box::new(m.refusals.clone()),
            Box::new(m.shadow_requests.clone()),
            Box::new(m.shadow_refusals.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.upstream_responses.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.closed.clone()),
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
    pub fn record(&self, r: &Record) {
        let outcome = r.outcome();
        let (requests, refusals) = match r.mode() {
            Mode::Shadow => (&self.shadow_requests, &self.shadow_refusals),
            _ => (&self.requests, &self.refusals),
        };
        match &self.partners {
            None => {
                requests.with_label_values(&[outcome.label()]).inc();
                if let Some(code) = outcome.code() {
                    refusals.with_label_values(&[code.as_str()]).inc();
                }
            }
            Some(known) => {
                let partner = match r.partner() {
                    None => NO_PARTNER,
                    Some(p) => known
                        .iter()
                        .find(|k| *k == p)
                        .map_or(OTHER_PARTNER, String::as_str),
                };
                requests
                    .with_label_values(&[outcome.label(), partner])
                    .inc();
                if let Some(code) = outcome.code() {
                    refusals.with_label_values(&[code.as_str(), partner]).inc();
                }
            }
        }
        self.duration
            .with_label_values(&[outcome.label()])
            .observe(r.duration().as_secs_f64());
        if let Some(n) = r.request_body_len() {
            self.request_bytes.observe(n as f64);
            self.engine_seconds.observe(r.engine_time().as_secs_f64());
        }
        if let Some(n) = r.response_body_len() {
            self.response_bytes.observe(n as f64);
        }
    }

    /// Records the head of an answer of the payment API, `took` after its peer was chosen.
    pub fn upstream_answered(&self, status: u16, took: Duration) {
        let class = match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        self.upstream_responses.with_label_values(&[class]).inc();
        self.upstream_duration.observe(took.as_secs_f64());
    }

    /// Records a request the payment API did not answer (`code` of the 502/504 JSON).
    pub fn upstream_failed(&self, code: &str) {
        self.upstream_errors.with_label_values(&[code]).inc();
    }

    /// Records a client connection closed for what its client did.
    pub fn client_closed(&self, why: Closed) {
        self.closed.with_label_values(&[why.label()]).inc();
    }

    /// Client connections closed for `why` so far.
    #[cfg(test)]
    pub fn client_closed_count(&self, why: Closed) -> u64 {
        self.closed.with_label_values(&[why.label()]).get()
    }
}

/// Why the proxy closed a client connection on the client's account.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Closed {
    /// It took none of an answer (or, over HTTP/2, gave it no flow-control window) for the
    /// idle timeout.
    Stalled,
    /// It reset HTTP/2 streams soon after opening them, past its budget.
    ResetStreams,
    /// It sent HTTP/2 frames that carry no request, past what its requests allow.
    Flood,
}

impl Closed {
    /// Its `reason` label.
    fn label(self) -> &'static str {
        match self {
            Closed::Stalled => "stalled",
            Closed::ResetStreams => "reset_streams",
            Closed::Flood => "flood",
        }
    }
}
