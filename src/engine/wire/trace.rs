//! W3C Trace Context: the `traceparent` of a request the layer acts on, continued when the
//! partner sent one valid header, started otherwise, with the layer's own span as the
//! parent the payment API sees.
//!
//! Pure: the random bytes for a new trace id and the layer's span id come from the caller.
//! Parsed as the Trace Context recommendation says (level 1): one header; version two lower-
//! case hex digits, not `ff`; for version `00` exactly 55 characters, for a later version at
//! least 55 with a `-` after them; a trace id of 32 and a parent id of 16 lowercase hex
//! digits, neither all zeros; the flags two hex digits. Anything else starts a new trace,
//! and a `tracestate` that came with it is dropped (it belongs to the trace not continued).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

const SAMPLED: u8 = 0x01;

/// The trace a request belongs to and the layer's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
}

impl TraceContext {
    /// Continues the trace of the request's `traceparent` when it is valid, else starts
    /// one. `random` gives the new trace id (its first 16 bytes, used only when starting)
    /// and the layer's span id (its last 8).
    pub fn of_request(headers: &HeaderMap, random: [u8; 24]) -> Self {
        let mut trace_id: [u8; 16] = random[..16].try_into().expect("16 bytes");
        let mut span_id: [u8; 8] = random[16..].try_into().expect("8 bytes");
        nonzero(&mut trace_id);
        nonzero(&mut span_id);
        match parse(headers) {
            Some((trace, parent, flags)) => TraceContext {
                trace_id: trace,
                span_id,
                parent_id: Some(parent),
                flags: flags & SAMPLED,
            },
            None => TraceContext {
                trace_id,
                span_id,
                parent_id: None,
                flags: SAMPLED,
            },
        }
    }

    /// Whether the partner's trace was continued (a valid `traceparent` came in).
    pub fn continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The layer's span id, 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        hex::encode(self.span_id)
    }

    /// The partner's span id, when the trace was continued.
    pub fn parent_span_id(&self) -> Option<String> {
        self.parent_id.map(hex::encode)
    }

    /// Whether the trace is sampled (the caller's decision, or yes for a new trace).
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The raw ids: trace, span, parent span (for exporters).
    pub fn ids(&self) -> ([u8; 16], [u8; 8], Option<[u8; 8]>) {
        (self.trace_id, self.span_id, self.parent_id)
    }

    /// The `traceparent` the payment API gets: this trace, the layer's span as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        let text = format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        );
        HeaderValue::from_str(&text).expect("hex and dashes")
    }

    /// Puts the context on a request going to the payment API: `traceparent` replaced, and
    /// `tracestate` removed when the trace was started here.
    pub fn apply(&self, head: &mut impl super::head::Head) {
        head.set(TRACEPARENT, self.traceparent());
        if !self.continued() {
            head.remove(&TRACESTATE);
        }
    }
}

fn nonzero<const N: usize>(id: &mut [u8; N]) {
    if id.iter().all(|&b| b == 0) {
        id[N - 1] = 1;
    }
}

/// The trace id, parent id and flags of one valid `traceparent`.
fn parse(headers: &HeaderMap) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let v = value.as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = lower_hex::<1>(&v[0..2])?[0];
    match version {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = lower_hex::<16>(&v[3..35])?;
    let parent = lower_hex::<8>(&v[36..52])?;
    let flags = lower_hex::<1>(&v[53..55])?[0];
    if trace.iter().all(|&b| b == 0) || parent.iter().all(|&b| b == 0) {
        return None;
    }
    Some((trace, parent, flags))
}

/// `2 * N` lowercase hex digits as bytes.
fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: [u8; 24] = [
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
        0x01, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8,
    ];
    const PARTNER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_the_layers_span() {
        let t = TraceContext::of_request(&with(&[PARTNER]), RANDOM);
        assert!(t.continued() && t.sampled());
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_span_id().as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(t.span_id(), "a1a2a3a4a5a6a7a8");
        let mut h = with(&[PARTNER]);
        t.apply(&mut h);
        assert_eq!(
            h.get(TRACEPARENT).unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-a1a2a3a4a5a6a7a8-01"
        );
        assert_eq!(h.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
        // Not sampled by the partner: kept so.
        let t = TraceContext::of_request(&with(&[&PARTNER.replace("-01", "-00")]), RANDOM);
        assert!(t.continued() && !t.sampled());
        // A later version with more fields: its first four are read.
        let later = format!("cc{}-what-comes-next", &PARTNER[2..]);
        assert!(TraceContext::of_request(&with(&[&later]), RANDOM).continued());
    }

    #[test]
    fn anything_else_starts_a_trace_and_drops_tracestate() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ];
        for v in bad {
            let t = TraceContext::of_request(&with(&[v]), RANDOM);
            assert!(!t.continued(), "{v:?}");
            assert_eq!(t.trace_id(), "112233445566778899aabbccddeeff01");
            let mut h = with(&[v]);
            t.apply(&mut h);
            assert_eq!(
                h.get(TRACEPARENT).unwrap(),
                "00-112233445566778899aabbccddeeff01-a1a2a3a4a5a6a7a8-01"
            );
            assert!(h.get(TRACESTATE).is_none(), "{v:?}");
        }
        // Two headers: which one would the next hop read?
        assert!(!TraceContext::of_request(&with(&[PARTNER, PARTNER]), RANDOM).continued());
        // None at all.
        assert!(!TraceContext::of_request(&HeaderMap::new(), RANDOM).continued());
    }

    #[test]
    fn ids_are_never_all_zeros() {
        let t = TraceContext::of_request(&HeaderMap::new(), [0; 24]);
        assert_eq!(t.trace_id(), "00000000000000000000000000000001");
        assert_eq!(t.span_id(), "0000000000000001");
    }
}
