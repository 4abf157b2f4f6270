//! `[server.telemetry]`: the binary continues the partner's W3C trace (or starts one), gives
//! the payment API its own span in `traceparent`, and exports that span over OTLP/HTTP. The
//! receiver here reads what arrives with the official protobuf definitions
//! (`opentelemetry-proto`'s generated `ExportTraceServiceRequest`, in OTLP's JSON encoding).

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::common::blocking::exchange;
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{ok_answer, serve_with, stop_ok};

const PARTNER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARTNER_SPAN: &str = "00f067aa0ba902b7";

fn post(listen: std::net::SocketAddr, traceparent: Option<&str>, reference: &str) -> String {
    let body = format!(
        r#"{{"payment_method":"klarna","reference":"{reference}","return_url":"https://shop.example/done"}}"#
    );
    let trace = traceparent.map_or(String::new(), |t| format!("traceparent: {t}\r\n"));
    exchange(
        listen,
        &format!(
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\n{trace}Content-Length: {}\r\n\r\n",
            body.len()
        ),
        body.as_bytes(),
    )
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let v = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_and_continue_the_partners_trace() {
    let up = upstream::start().await;
    up.set_answer(Answer::of(&fixtures::by_name("step_up_required")));
    let collector = upstream::start().await;
    collector.set_answer(ok_answer());
    let (mut child, listen) = serve_with(
        &format!(
            "[server.telemetry]\notlp_endpoint = \"http://{}/v1/traces\"\n\
             service_name = \"stepup-test\"\ninterval_ms = 100\n",
            collector.addr
        ),
        up.addr,
    );
    let partner = format!("00-{PARTNER_TRACE}-{PARTNER_SPAN}-01");
    let answers = tokio::task::spawn_blocking(move || {
        [
            post(listen, Some(&partner), "order-traced"),
            post(listen, None, "order-untraced"),
            exchange(
                listen,
                &format!("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\ntraceparent: 00-{PARTNER_TRACE}-{PARTNER_SPAN}-01\r\n\r\n"),
                b"",
            ),
        ]
    })
    .await
    .unwrap();
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }

    // What the payment API was given: the partner's trace with the layer's span; a new trace
    // where the partner sent none; a request the layer does not act on untouched.
    let received = up.take_received();
    assert_eq!(received.len(), 3);
    let given: Vec<String> = received
        .iter()
        .map(|r| {
            r.headers
                .get("traceparent")
                .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
        })
        .collect();
    let parts = |t: &str| t.split('-').map(str::to_owned).collect::<Vec<_>>();
    let traced = parts(&given[0]);
    assert_eq!(
        (traced[0].as_str(), traced[1].as_str(), traced[3].as_str()),
        ("00", PARTNER_TRACE, "01")
    );
    assert_ne!(
        traced[2], PARTNER_SPAN,
        "the layer's own span is the parent"
    );
    let untraced = parts(&given[1]);
    assert_eq!(untraced.len(), 4, "{given:?}");
    assert_ne!(untraced[1], PARTNER_TRACE);
    assert_eq!(
        given[2],
        format!("00-{PARTNER_TRACE}-{PARTNER_SPAN}-01"),
        "passed through as sent"
    );

    // The spans, as the collector got them (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut spans: Vec<Span> = Vec::new();
    let mut service = None;
    while spans.len() < 2 && Instant::now() < deadline {
        for r in collector.take_received() {
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/v1/traces");
            assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
            let text = String::from_utf8(r.body.clone()).unwrap();
            assert!(
                !text.contains("shop.example"),
                "no return URL in spans: {text}"
            );
            let export: ExportTraceServiceRequest = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("not an OTLP export ({e}): {text}"));
            for rs in export.resource_spans {
                let resource = rs.resource.unwrap();
                service = resource
                    .attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.clone());
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        spans.len(),
        2,
        "one span per Klarna request, none for the passthrough"
    );
    assert_eq!(
        service.and_then(|v| v.value),
        Some(Value::StringValue("stepup-test".into()))
    );
    let by_ref = |r: &str| {
        spans
            .iter()
            .find(|s| attribute(s, "klarna.payment_request_reference").as_deref() == Some(r))
            .unwrap_or_else(|| panic!("no span for {r}: {spans:?}"))
    };
    let s = by_ref("order-traced");
    assert_eq!(hex(&s.trace_id), PARTNER_TRACE);
    assert_eq!(hex(&s.parent_span_id), PARTNER_SPAN);
    assert_eq!(hex(&s.span_id), traced[2]);
    assert_eq!(s.kind, 2, "SPAN_KIND_SERVER");
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
    assert_eq!(
        attribute(s, "klarna_stepup.outcome").as_deref(),
        Some("rewritten")
    );
    assert_eq!(
        attribute(s, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(attribute(s, "klarna.payment_request_id").is_some(), "{s:?}");
    let s = by_ref("order-untraced");
    assert_eq!(hex(&s.trace_id), untraced[1]);
    assert_eq!(hex(&s.span_id), untraced[2]);
    assert!(
        s.parent_span_id.is_empty(),
        "a trace started by the layer has no parent"
    );
    stop_ok(&mut child, "-TERM");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
