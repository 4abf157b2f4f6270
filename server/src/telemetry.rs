//! OpenTelemetry export of the layer's spans (`[server.telemetry]`): one span per request
//! step-up acts on, with the W3C trace context the payment API was given, sent in batches
//! over OTLP/HTTP (the JSON encoding, which every OTLP/HTTP receiver takes) from a thread of
//! its own. A request never waits on the collector: a span that finds the queue full is
//! dropped, and the exporter says how many in a warning.
//!
//! What a span carries: the route, the outcome (and a refusal's code), the partner, the
//! `payment_request_reference`, Klarna's payment request id and the HTTP status. Never a
//! body, a token or a return URL.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use klarna_stepup::{Outcome, Record};
use serde_json::{json, Value};

use crate::config::TelemetryConfig;

/// Spans sent in one export at most.
const BATCH: usize = 512;

/// One finished span, as the exporter needs it.
#[derive(Debug)]
struct SpanData {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    start_ns: u128,
    end_ns: u128,
    route: String,
    outcome: Outcome,
    partner: Option<String>,
    reference: Option<String>,
    payment_request_id: Option<String>,
    status: Option<u16>,
}

/// The handle the workers record into.
#[derive(Clone, Debug)]
pub(crate) struct Telemetry {
    spans: SyncSender<SpanData>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Telemetry {
    /// Starts the exporter thread.
    pub(crate) fn start(config: &TelemetryConfig) -> std::io::Result<Telemetry> {
        let (spans, rx) = mpsc::sync_channel(config.queue);
        let exporter = Exporter {
            endpoint: config.otlp_endpoint.parse().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "otlp_endpoint")
            })?,
            service_name: config.service_name.clone(),
            interval: Duration::from_millis(config.interval_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            dropped: Arc::default(),
        };
        let dropped = exporter.dropped.clone();
        std::thread::Builder::new()
            .name("klarna-stepup-otlp".into())
            .spawn(move || exporter.run(rx))?;
        Ok(Telemetry { spans, dropped })
    }

    /// Queues the span of a finished request (those step-up acted on, with a trace
    /// context); never waits.
    pub(crate) fn record(&self, r: &Record) {
        let Some(trace) = r.trace() else { return };
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let (trace_id, span_id, parent) =
            (trace.trace_id(), trace.span_id(), trace.parent_span_id());
        let span = SpanData {
            trace_id,
            span_id,
            parent_span_id: parent,
            start_ns: end.saturating_sub(r.duration().as_nanos()),
            end_ns: end,
            route: r.route().to_owned(),
            outcome: r.outcome(),
            partner: r.partner().map(str::to_owned),
            reference: r.payment_request_reference().map(str::to_owned),
            payment_request_id: r.payment_request_id().map(str::to_owned),
            status: r.status(),
        };
        if let Err(TrySendError::Full(_)) = self.spans.try_send(span) {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

struct Exporter {
    endpoint: http::Uri,
    service_name: String,
    interval: Duration,
    timeout: Duration,
    /// Spans dropped because the queue was full.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Exporter {
    /// Collects spans until every sender is gone, exporting a batch when it is full or the
    /// interval has passed, and what is left at the end.
    fn run(self, rx: Receiver<SpanData>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "span export not started");
                return;
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        let mut due = Instant::now() + self.interval;
        let mut dropped = 0;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            let closed = match rx.recv_timeout(wait) {
                Ok(span) => {
                    batch.push(span);
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            if batch.len() >= BATCH || Instant::now() >= due || closed {
                if !batch.is_empty() {
                    let body = self.encode(&batch);
                    let n = batch.len();
                    batch.clear();
                    if let Err(e) = runtime.block_on(self.send(body)) {
                        tracing::warn!(spans = n, error = %e, "span export failed");
                    }
                }
                due = Instant::now() + self.interval;
                let now = self.dropped.load(std::sync::atomic::Ordering::Relaxed);
                if now > dropped {
                    tracing::warn!(
                        spans = now - dropped,
                        "spans dropped: the export queue was full"
                    );
                    dropped = now;
                }
            }
            if closed {
                return;
            }
        }
    }

    /// `ExportTraceServiceRequest` in OTLP's JSON encoding: ids in hex, times as strings.
    fn encode(&self, spans: &[SpanData]) -> Vec<u8> {
        let spans: Vec<Value> = spans.iter().map(span_json).collect();
        let request = json!({
            "resourceSpans": [{
                "resource": {"attributes": [attr("service.name", &self.service_name)]},
                "scopeSpans": [{
                    "scope": {"name": "klarna-stepup", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            }],
        });
        serde_json::to_vec(&request).expect("JSON values serialize")
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        let authority = self
            .endpoint
            .authority()
            .ok_or("the endpoint has no host")?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let connect = tokio::net::TcpStream::connect((authority.host(), port));
        let stream = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let path = self.endpoint.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let res = sender.send_request(request).await?;
            let status = res.status();
            res.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

fn attr(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn span_json(s: &SpanData) -> Value {
    let mut attributes = vec![
        attr("klarna_stepup.route", &s.route),
        attr("klarna_stepup.outcome", s.outcome.label()),
    ];
    if let Some(code) = s.outcome.code() {
        attributes.push(attr("klarna_stepup.code", code.as_str()));
    }
    for (key, value) in [
        ("klarna_stepup.partner", &s.partner),
        ("klarna.payment_request_reference", &s.reference),
        ("klarna.payment_request_id", &s.payment_request_id),
    ] {
        if let Some(v) = value {
            attributes.push(attr(key, v));
        }
    }
    if let Some(status) = s.status {
        attributes.push(
            json!({"key": "http.response.status_code", "value": {"intValue": status.to_string()}}),
        );
    }
    // An answer the proxy could not get from the payment API is an error; a refusal is the
    // layer doing its job.
    let code = if matches!(s.outcome, Outcome::UpstreamError(_)) {
        2
    } else {
        0
    };
    let mut span = json!({
        "traceId": s.trace_id,
        "spanId": s.span_id,
        "name": format!("klarna-stepup {}", s.route),
        // SPAN_KIND_SERVER: the partner's request, as the layer served it.
        "kind": 2,
        "startTimeUnixNano": s.start_ns.to_string(),
        "endTimeUnixNano": s.end_ns.to_string(),
        "attributes": attributes,
        "status": {"code": code},
    });
    if let Some(parent) = &s.parent_span_id {
        span["parentSpanId"] = Value::from(parent.as_str());
    }
    span
}
