//! Message heads: every header edit step-up makes, written once for every adapter.
//!
//! An adapter implements [`Head`] for its framework's head type (tower: `http::HeaderMap`;
//! Pingora: its `RequestHeader` and `ResponseHeader`) and calls these functions; it never
//! decides a header itself.

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;

use crate::engine::webhook::{relay_headers, WebhookEvent};
use crate::engine::{HeadReason, Refusal};

/// The response header that tells an operator what the layer did: `rewritten`,
/// `passthrough`, `relayed`, `return`, or the error code of an answer the layer gave itself.
pub const MARKER_HEADER: HeaderName = HeaderName::from_static("x-klarna-stepup");

/// Response headers that no longer describe a body once the layer changed its bytes.
pub const STALE_RESPONSE_HEADERS: [HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONTENT_ENCODING,
    header::ETAG,
    header::ACCEPT_RANGES,
    HeaderName::from_static("content-md5"),
];

/// A message head that step-up edits: implemented for `http::HeaderMap` (and, with the
/// `pingora` feature, Pingora's request and response headers). Implement it for your own
/// framework's head type to drive a [`Driver`](crate::driver::Driver) over it.
pub trait Head {
    /// The head's headers, to read.
    fn headers(&self) -> &HeaderMap;
    /// Sets `name` to `value`, replacing what was there.
    fn set(&mut self, name: HeaderName, value: HeaderValue);
    /// Removes `name`.
    fn remove(&mut self, name: &HeaderName);
}

impl Head for HeaderMap {
    fn headers(&self) -> &HeaderMap {
        self
    }

    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.insert(name, value);
    }

    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// Removes `name` only when present (Pingora's removal also edits its case map: a lookup
/// first is cheaper).
fn remove_present(head: &mut impl Head, name: &HeaderName) {
    if head.headers().contains_key(name) {
        head.remove(name);
    }
}

/// The head of a rewritten answer: JSON, marked `rewritten`, without the upstream's length,
/// encoding or validators. The adapter sets the new framing.
pub(crate) fn mark_rewritten(head: &mut impl Head) {
    for name in &STALE_RESPONSE_HEADERS {
        remove_present(head, name);
    }
    head.set(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    head.set(MARKER_HEADER, HeaderValue::from_static("rewritten"));
}

/// The head of an answer to a Klarna request that goes out untouched.
pub(crate) fn mark_passthrough(head: &mut impl Head) {
    head.set(MARKER_HEADER, HeaderValue::from_static("passthrough"));
}

/// The head of the payment API's 2xx to a relayed webhook, on its way to Klarna.
pub(crate) fn mark_relayed(head: &mut impl Head) {
    head.set(MARKER_HEADER, HeaderValue::from_static("relayed"));
}

/// The upstream request head of an injected Klarna request: an exact length for the new
/// body, and the answer asked for plain (`Accept-Encoding: identity`): the client's
/// encodings are not the layer's, which reads the answer. A compressed one is decoded
/// anyway.
pub(crate) fn injected_request(head: &mut impl Head, body_len: usize) {
    remove_present(head, &header::TRANSFER_ENCODING);
    head.set(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    head.set(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// The upstream request head of a candidate whose body streams upstream before it is known
/// (too large to hold): chunked, and the answer asked for plain in case it is Klarna's.
pub(crate) fn streamed_request(head: &mut impl Head) {
    remove_present(head, &header::CONTENT_LENGTH);
    head.set(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    head.set(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// The head of an answer that leaves before its body is read for a rewrite: only what holds
/// whatever the rewrite then decides (chunked; no length, encoding or validators; no
/// marker, the upstream's own `x-klarna-stepup` included: the client would read it as
/// step-up's verdict).
pub(crate) fn answer_being_read(head: &mut impl Head) {
    for name in &STALE_RESPONSE_HEADERS {
        remove_present(head, name);
    }
    remove_present(head, &MARKER_HEADER);
    head.set(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
}

/// The head of the wrapped proxy's own answer for a request it could not carry (502/504):
/// marked with its code.
pub(crate) fn mark_code(head: &mut impl Head, code: &'static str) {
    head.set(MARKER_HEADER, HeaderValue::from_static(code));
}

/// The head of a verified webhook relayed to the payment API: the `x-klarna-stepup-*`
/// headers are step-up's alone (incoming ones removed), their values marked sensitive (one
/// carries the session token).
pub(crate) fn relay_request(head: &mut impl Head, event: &WebhookEvent) {
    for name in &relay_headers::ALL {
        remove_present(head, name);
    }
    for (name, mut value) in event.relay_headers() {
        value.set_sensitive(true);
        head.set(name, value);
    }
}

/// Whether two header names are one to some server: the same up to ASCII case, with `_`
/// read as `-` (Rack, CGI and PHP put both in one `HTTP_X_PARTNER_ID` variable).
pub(crate) fn same_header_name(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
}

/// Whether a request could name header `name` to the payment API otherwise than the
/// layer reads it: under another spelling (`X_Partner_Id` beside or instead of
/// `X-Partner-Id`), or listed in `Connection` (it would be removed on the way, after the
/// layer chose by it).
pub(crate) fn names_elsewhere(headers: &HeaderMap, name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    headers
        .keys()
        .any(|k| k != name && same_header_name(k.as_str().as_bytes(), n))
        || in_connection(headers, name)
}

/// Whether `Connection` lists header `name` (in any spelling a server reads as it): a
/// proxy removes it on the way (RFC 9110 section 7.6.1).
pub(crate) fn in_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|listed| same_header_name(listed.trim_ascii(), n))
    })
}

/// Whether a header name is step-up's: `x-klarna-stepup` or `x-klarna-stepup-*`, in
/// any spelling a server reads as one (`X_Klarna_Stepup_Verified`).
fn is_step_up_header(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.len() >= 15
        && same_header_name(&n[..15], b"x-klarna-stepup")
        && (n.len() == 15 || n[15] == b'-' || n[15] == b'_')
}

/// Removes every `x-klarna-stepup` and `x-klarna-stepup-*` header from a request head: those
/// names are step-up's alone (the payment API trusts them on a relayed webhook), so no
/// client may send one through. Both adapters call this on every request before anything
/// else; a relay the layer makes sets its own afterwards ([`relay_request`]). One look at
/// each header name; nothing is allocated unless one is there.
pub(crate) fn strip_forged_headers(head: &mut impl Head) {
    if !head.headers().keys().any(is_step_up_header) {
        return;
    }
    let forged: Vec<HeaderName> = head
        .headers()
        .keys()
        .filter(|n| is_step_up_header(n))
        .cloned()
        .collect();
    for name in &forged {
        head.remove(name);
    }
}

/// Why a candidate request's body will not be read, judged from its head: any
/// `Content-Encoding` (even `identity`: nothing on a payment route needs one), or a
/// content type other than absent, `application/json` or `*/*+json` (with no `charset`
/// but UTF-8), or more than one `Content-Type`.
pub(crate) fn unreadable_request_body(headers: &HeaderMap) -> Option<HeadReason> {
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Some(HeadReason::ContentEncoding);
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(v), None) = (types.next(), types.next()) else {
        return match headers.contains_key(header::CONTENT_TYPE) {
            false => None,
            true => Some(HeadReason::MediaType),
        };
    };
    let Ok(v) = v.to_str() else {
        return Some(HeadReason::MediaType);
    };
    let mut parts = v.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let json = essence.eq_ignore_ascii_case("application/json")
        || essence.len() > 5
            && essence.is_char_boundary(essence.len() - 5)
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json");
    let utf8 = parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    (!(json && utf8)).then_some(HeadReason::MediaType)
}

/// The declared `Content-Length`, if it is one number.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the content type is JSON (`application/json`, `*/*+json`) or absent.
pub(crate) fn is_json_or_absent(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => {
            let Ok(v) = v.to_str() else { return false };
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.len() > 5
                    && essence.is_char_boundary(essence.len() - 5)
                    && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
        }
    }
}

/// The hop-by-hop headers RFC 9110 section 7.6.1 names, besides those `Connection` names
/// (what [`fixed_hop_by_hop`] matches).
#[cfg(test)]
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Removes the hop-by-hop headers a proxy must not forward (RFC 9110 section 7.6.1), in
/// either direction: `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, `HTTP2-Settings`, and every `Proxy-*` header; and a
/// `Content-Length` beside a `Transfer-Encoding` (RFC 9112 section 6.3). For a proxy built
/// on the tower adapter, on every request and answer (step-up strips those of the requests
/// it handles itself, through either adapter); the framing is the server's and client's
/// own.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most heads carry none of them, and most of the rest only `Connection`: one look at
    // each name (no hashing) tells.
    let (mut connection, mut others) = (false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name) {
            others = true;
        }
    }
    // Usually `Connection` names only what goes anyway (`keep-alive`, `close`): then it
    // alone goes, without the look for the headers it names below.
    let names_others = connection
        && headers.get_all(header::CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',').map(str::trim).any(|name| {
                    !name.is_empty()
                        && !name.eq_ignore_ascii_case(header::HOST.as_str())
                        && !fixed_hop_by_hop(name)
                })
            })
        });
    if connection && !names_others {
        headers.remove(header::CONNECTION);
    } else if connection {
        // Every header `Connection` names. Each value is cloned out (a reference count) so
        // that the map can change under the loop; `Connection` itself stays until every one
        // of its values is read. A name is looked for among the map's names (lowercase; no
        // hashing, nothing allocated) and removed only when there: the usual `keep-alive`
        // and `close` name no header at all.
        let mut i = 0;
        while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
            i += 1;
            for name in value.to_str().into_iter().flat_map(|v| v.split(',')) {
                let name = name.trim();
                // `Host` is never hop-by-hop: a client cannot have the proxy drop it. The
                // fixed ones (the usual `keep-alive`) go below anyway.
                if name.eq_ignore_ascii_case(header::HOST.as_str()) || fixed_hop_by_hop(name) {
                    continue;
                }
                if let Some(named) = headers
                    .keys()
                    .find(|k| k.as_str().eq_ignore_ascii_case(name))
                    .cloned()
                {
                    headers.remove(named);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    // The other fixed ones and every `Proxy-*`, those that are there. A message framed by
    // `Transfer-Encoding` loses a `Content-Length` beside it too: the length was not the
    // body's, and the next hop frames it anew (RFC 9112 section 6.3: a sender removes it).
    if others {
        if headers.contains_key(header::TRANSFER_ENCODING) {
            headers.remove(header::CONTENT_LENGTH);
        }
        while let Some(name) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
            headers.remove(name);
        }
    }
}

/// Removes from a head step-up edits the hop-by-hop headers [`strip_hop_by_hop`] removes,
/// but `Transfer-Encoding` (and the `Content-Length` that function drops beside it): the
/// adapter's framing reads them (and the edits that set a length drop both). On the request before step-up's own edits, so that a client cannot name them
/// away in `Connection`; on the answer, so that no adapter passes the payment API's on.
pub(crate) fn strip_connection_headers(head: &mut impl Head) {
    for name in hop_by_hop_names(head.headers()) {
        if name != header::TRANSFER_ENCODING {
            head.remove(&name);
        }
    }
}

/// The names of the hop-by-hop headers [`strip_hop_by_hop`] removes from `headers` (not
/// the `Content-Length` it drops beside `Transfer-Encoding`), each once: for a head that
/// removes its own fields (Pingora's, which keeps each name's case beside the map).
fn hop_by_hop_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case(header::HOST.as_str()))
        .collect();
    headers
        .keys()
        .filter(|k| is_hop_by_hop(k) || named.iter().any(|n| k.as_str().eq_ignore_ascii_case(n)))
        .cloned()
        .collect()
}

/// Whether a header is hop-by-hop whatever `Connection` says (a name `Connection` lists
/// is one only because `Connection` is there, which this finds).
#[inline]
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    fixed_hop_by_hop(name) || name.starts_with("proxy-")
}

/// Whether `name` is one of the hop-by-hop headers RFC 9110 section 7.6.1 names (besides
/// those `Connection` names), in any case: `Connection`, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, and `HTTP2-Settings`. A string match: cheaper than
/// comparing header names.
#[inline]
fn fixed_hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case("te"),
        7 => name.eq_ignore_ascii_case("trailer") || name.eq_ignore_ascii_case("upgrade"),
        10 => name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"),
        // HTTP/2's upgrade from HTTP/1.1 (RFC 7540 section 3.2.1): the connection's own.
        14 => name.eq_ignore_ascii_case("http2-settings"),
        17 => name.eq_ignore_ascii_case("transfer-encoding"),
        _ => false,
    }
}

/// Bounds on a request head that the framework's own parser does not enforce tightly
/// (Pingora 0.9 takes up to 1 MiB and 256 fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request target plus every header name and value, in bytes.
    pub max_bytes: usize,
    /// Header fields.
    pub max_count: usize,
}

impl Default for HeadLimits {
    /// 32 KiB and 100 fields.
    fn default() -> Self {
        HeadLimits {
            max_bytes: 32 * 1024,
            max_count: 100,
        }
    }
}

/// Checks a request head before anything else looks at it, per RFC 9112: the size and count
/// bounds ([`Refusal::headers_too_large`], 431); an HTTP/1.1 request without `Host`, or any
/// request with more than one (400 [`Refusal::bad_request_head`], RFC 9112 section 3.2); a
/// `Content-Length` given as a list: identical values (`5, 5`) are replaced by one value
/// before the request goes anywhere, differing ones refused (RFC 9110 section 8.6); a
/// `Transfer-Encoding` other than `chunked` alone (400, RFC 9112 section 6.1).
pub fn check_request_head(
    head: &mut impl Head,
    version: http::Version,
    target_len: usize,
    limits: HeadLimits,
) -> Result<(), Refusal> {
    let headers = head.headers();
    // One pass over the fields (no lookup by name): the size, and what the checks below
    // need of `Host`, `Transfer-Encoding` and `Content-Length`.
    let (mut size, mut hosts, mut codings, mut lengths) = (target_len, 0usize, 0usize, 0usize);
    let (mut chunked, mut listed) = (true, false);
    for (k, v) in headers {
        size += k.as_str().len() + v.len() + 4;
        if k == header::HOST {
            hosts += 1;
        } else if k == header::TRANSFER_ENCODING {
            codings += 1;
            chunked &= v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if k == header::CONTENT_LENGTH {
            lengths += 1;
            listed |= v.as_bytes().contains(&b',');
        }
    }
    if size > limits.max_bytes || headers.len() > limits.max_count {
        return Err(Refusal::headers_too_large(
            limits.max_bytes,
            limits.max_count,
        ));
    }
    if hosts > 1 {
        return Err(Refusal::bad_request_head(
            "Host",
            "a request has at most one Host header",
        ));
    }
    if hosts == 0 && version == http::Version::HTTP_11 {
        return Err(Refusal::bad_request_head(
            "Host",
            "an HTTP/1.1 request must have a Host header",
        ));
    }
    // A transfer coding other than `chunked` alone: hyper frames by the last coding and
    // would pass the others' bytes on as the body, undecoded and unnamed (RFC 9112 section
    // 6.1 has such a request refused).
    if codings > 1 || (codings == 1 && !chunked) {
        return Err(Refusal::bad_request_head(
            "Transfer-Encoding",
            "only chunked is accepted",
        ));
    }
    if lengths < 2 && !listed {
        return Ok(());
    }
    match listed_length(headers) {
        Some(Some(one)) => {
            head.set(header::CONTENT_LENGTH, one);
            Ok(())
        }
        _ => Err(Refusal::bad_request_head(
            "Content-Length",
            "the Content-Length values differ or are not numbers",
        )),
    }
}

/// A `Content-Length` given as a list (`5, 5`, or the field twice): `Some(Some(value))`
/// when every listed value is the same number, `Some(None)` when they differ or are not
/// numbers; `None` when it is no list.
fn listed_length(headers: &HeaderMap) -> Option<Option<HeaderValue>> {
    let mut each = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii);
    let first = each.next()?;
    let (mut listed, mut same) = (false, true);
    for v in each {
        listed = true;
        same &= v == first;
    }
    if !listed {
        return None;
    }
    let number = !first.is_empty() && first.iter().all(u8::is_ascii_digit);
    Some(
        (same && number)
            .then(|| HeaderValue::from_bytes(first).ok())
            .flatten(),
    )
}

/// An answer's `Content-Length` given as a list of one value (`5, 5`, or `5` twice) as that
/// value, as [`check_request_head`] makes a request's: the client reads it as the framing
/// did, and an HTTP/2 client refuses a list (RFC 9110 section 8.6 allows replacing it). A
/// list of differing values (which a client library does not check on answers without a
/// body, such as `HEAD`'s) stays as it came.
pub fn one_content_length(headers: &mut HeaderMap) {
    // The usual answer: one value, no list (one look, nothing split).
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let listed = match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        (None, _) => false,
    };
    if !listed {
        return;
    }
    if let Some(Some(one)) = listed_length(headers) {
        headers.insert(header::CONTENT_LENGTH, one);
    }
}

/// Checks a request target as it reached the adapter, per RFC 9112 section 3.2: origin-form
/// (`/path?query`), absolute-form (`http://host/path`), `*` (for `OPTIONS`), or the
/// authority-form of `CONNECT`. Anything else is refused (400 [`Refusal::bad_request_head`]):
/// a parser that accepts a malformed request line (Pingora escapes `POST  /payments`, with
/// two spaces, into the target `%20/payments`) would otherwise hand the payment API a path
/// that no route check saw for what it is. hyper, under the binary, refuses those lines
/// before they are requests.
pub(crate) fn check_request_target(method: &http::Method, target: &[u8]) -> Result<(), Refusal> {
    // An absolute URL, without user information (`http://user:pass@host/` is an error,
    // RFC 9110 section 4.2.4, and would become the `Host` the payment API reads).
    let absolute = |t: &[u8]| {
        let scheme = t
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|i| i > 0 && t[..i].iter().all(u8::is_ascii_alphanumeric));
        let Some(i) = t.windows(3).position(|w| w == b"://") else {
            return false;
        };
        let rest = &t[i + 3..];
        let end = rest
            .iter()
            .position(|&b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        scheme && !rest[..end].contains(&b'@')
    };
    let ok = match target.first() {
        Some(b'/') => true,
        Some(b'*') => target.len() == 1 && method == http::Method::OPTIONS,
        Some(_) if method == http::Method::CONNECT => true,
        Some(_) => absolute(target),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::bad_request_head(
            "request-target",
            "the request target must be a path starting with /, an absolute URL without user \
             information, or *",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("connection", "Host"),
            ("host", "api.example"),
        ] {
            h.append(k, http::HeaderValue::from_static(v));
        }
        let mut framed_by_length = h.clone();
        framed_by_length.remove("transfer-encoding");
        super::strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        // The length beside `Transfer-Encoding` goes too (RFC 9112 section 6.3).
        assert_eq!(left, ["content-type", "host"]);
        super::strip_hop_by_hop(&mut framed_by_length);
        let mut left: Vec<&str> = framed_by_length.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "content-type", "host"]);
    }

    #[test]
    fn fixed_hop_by_hop_is_the_list_in_any_case() {
        for name in super::HOP_BY_HOP {
            assert!(super::fixed_hop_by_hop(name.as_str()));
            assert!(super::fixed_hop_by_hop(&name.as_str().to_ascii_uppercase()));
        }
        for name in [
            "host",
            "t",
            "tee",
            "upgrades",
            "content-length",
            "proxy-connection",
        ] {
            assert!(!super::fixed_hop_by_hop(name), "{name}");
        }
    }

    /// The former `strip_hop_by_hop`, which collected the names to remove first: the
    /// allocation-free one must leave exactly the same headers.
    fn strip_hop_by_hop_collecting(headers: &mut http::HeaderMap) {
        use http::header::{self, HeaderName};
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .filter(|n| *n != header::HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
        for name in super::HOP_BY_HOP {
            headers.remove(name);
        }
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }

    proptest::proptest! {
        #[test]
        fn hop_by_hop_stripping_matches_the_collecting_version(
            fields in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "connection", "Connection", "keep-alive", "x-a", "X-B", "te",
                        "trailer", "upgrade", "proxy-x", "proxy-authorization",
                        "content-type", "x-c", "host",
                    ]),
                    // Values: lists of names, cased, spaced, empty, invalid, non-ASCII.
                    proptest::collection::vec(
                        proptest::sample::select(vec![
                            "x-a", "X-A", " x-b ", "connection", "CONNECTION", "keep-alive",
                            "proxy-x", "", " ", "bad name", "x-c", "close", "\u{e9}t\u{e9}",
                            "content-type", "te", "Host", "host",
                        ]),
                        0..4,
                    ),
                ),
                0..10,
            )
        ) {
            let mut a = http::HeaderMap::new();
            for (name, parts) in &fields {
                let value = parts.join(",");
                let value = http::HeaderValue::from_bytes(value.as_bytes()).unwrap();
                a.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
            }
            let mut b = a.clone();
            let mut c = a.clone();
            for name in super::hop_by_hop_names(&c) {
                c.remove(name);
            }
            super::strip_hop_by_hop(&mut a);
            strip_hop_by_hop_collecting(&mut b);
            proptest::prop_assert_eq!(&a, &b);
            // The names it would remove, removed by their holder, leave the same.
            proptest::prop_assert_eq!(&a, &c);
        }
    }

    #[test]
    fn request_heads_per_rfc_9112() {
        use super::{check_request_head, HeadLimits};
        use http::{HeaderMap, HeaderValue, Version};
        let limits = HeadLimits::default();
        let head = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let code = |h: &mut HeaderMap, v| {
            check_request_head(h, v, 1, limits).map_err(|r| r.code().as_str())
        };
        assert_eq!(
            code(&mut head(&[]), Version::HTTP_11),
            Err("bad_request_head")
        );
        assert_eq!(code(&mut head(&[]), Version::HTTP_10), Ok(()));
        assert_eq!(
            code(&mut head(&[("host", "a"), ("host", "b")]), Version::HTTP_11),
            Err("bad_request_head")
        );
        let mut h = head(&[("host", "a"), ("content-length", "5, 5")]);
        assert_eq!(code(&mut h, Version::HTTP_11), Ok(()));
        assert_eq!(h.get_all("content-length").iter().count(), 1);
        assert_eq!(h["content-length"], "5");
        let mut h = head(&[
            ("host", "a"),
            ("content-length", "5"),
            ("content-length", "5"),
        ]);
        assert_eq!(code(&mut h, Version::HTTP_11), Ok(()));
        assert_eq!(h.get_all("content-length").iter().count(), 1);
        for bad in ["5, 6", "5,", ",", "5, x"] {
            let mut h = head(&[("host", "a"), ("content-length", bad)]);
            assert_eq!(
                code(&mut h, Version::HTTP_11),
                Err("bad_request_head"),
                "{bad}"
            );
        }
        for (codings, ok) in [
            (&["chunked"][..], true),
            (&["Chunked"], true),
            (&["gzip, chunked"], false),
            (&["gzip", "chunked"], false),
            (&["chunked", "chunked"], false),
            (&["identity"], false),
        ] {
            let mut pairs = vec![("host", "a")];
            pairs.extend(codings.iter().map(|c| ("transfer-encoding", *c)));
            let expected = if ok { Ok(()) } else { Err("bad_request_head") };
            assert_eq!(
                code(&mut head(&pairs), Version::HTTP_11),
                expected,
                "{codings:?}"
            );
        }
        let big = "x".repeat(40 * 1024);
        assert_eq!(
            code(
                &mut head(&[("host", "a"), ("x-big", &big)]),
                Version::HTTP_11
            ),
            Err("headers_too_large")
        );
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            code(&mut head(&many), Version::HTTP_10),
            Err("headers_too_large")
        );
    }

    #[test]
    fn an_answers_length_list_of_one_value_is_made_one() {
        let list = |values: &[&'static str]| {
            let mut h = http::HeaderMap::new();
            for v in values {
                h.append("content-length", http::HeaderValue::from_static(v));
            }
            super::one_content_length(&mut h);
            h.get_all("content-length")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(list(&["5, 5"]), ["5"]);
        assert_eq!(list(&["5", "5"]), ["5"]);
        assert_eq!(list(&["5"]), ["5"]);
        assert_eq!(list(&["5, 7"]), ["5, 7"]);
        assert_eq!(list(&["5", "7"]), ["5", "7"]);
        assert_eq!(list(&["x, x"]), ["x, x"]);
        assert!(list(&[]).is_empty());
    }

    #[test]
    fn request_targets_per_rfc_9112() {
        use http::Method;
        for (m, t) in [
            (Method::POST, "/payments"),
            (Method::GET, "/"),
            (Method::GET, "http://api.example/payments"),
            (Method::GET, "http://api.example/x?by=a@b"),
            (Method::OPTIONS, "*"),
            (Method::CONNECT, "api.example:443"),
        ] {
            assert!(super::check_request_target(&m, t.as_bytes()).is_ok(), "{t}");
        }
        for (m, t) in [
            (Method::POST, "%20/payments"),
            (Method::POST, ""),
            (Method::POST, "payments"),
            (Method::GET, "*"),
            (Method::POST, "a b://x"),
            (Method::GET, "http://user:pw@api.example/x"),
            (Method::POST, "http://u@api.example"),
        ] {
            let r = super::check_request_target(&m, t.as_bytes()).unwrap_err();
            assert_eq!(r.code().as_str(), "bad_request_head", "{t}");
        }
    }

    use super::*;

    #[test]
    fn rewritten_heads_lose_what_no_longer_describes_the_body() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("etag", "\"x\""),
            ("accept-ranges", "bytes"),
            ("content-type", "application/vnd.x+json"),
            ("x-request-id", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        mark_rewritten(&mut h);
        assert_eq!(h.len(), 3, "{h:?}");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h[MARKER_HEADER], "rewritten");
        assert_eq!(h["x-request-id"], "1");
    }

    #[test]
    fn an_answer_being_read_keeps_no_marker_of_the_upstream() {
        let mut h = HeaderMap::new();
        h.insert(MARKER_HEADER, HeaderValue::from_static("passthrough"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        answer_being_read(&mut h);
        assert!(!h.contains_key(MARKER_HEADER), "{h:?}");
        assert_eq!(h[header::TRANSFER_ENCODING], "chunked");
    }

    #[test]
    fn forged_step_up_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-klarna-stepup-verified", "true"),
            ("x-klarna-stepup-token", "t"),
            ("x-klarna-stepup-anything-new", "1"),
            ("x-klarna-stepup", "rewritten"),
            ("x-klarna-stepupx", "kept: not ours"),
            ("x-request-id", "1"),
            ("x_klarna_stepup_verified", "true"),
            ("x-klarna_stepup-verified", "true"),
            ("x_klarna_stepup", "rewritten"),
            ("x_klarna_stepupx", "kept: not ours"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h.append(
            "x-klarna-stepup-verified",
            HeaderValue::from_static("again"),
        );
        strip_forged_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            ["x-klarna-stepupx", "x-request-id", "x_klarna_stepupx"]
        );
    }

    #[test]
    fn request_bodies_read_only_as_json() {
        let reason = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            unreadable_request_body(&h)
        };
        for ok in [
            &[][..],
            &[("content-type", "application/json")],
            &[("content-type", "Application/JSON; charset=UTF-8")],
            &[("content-type", "application/json;charset=\"utf-8\"")],
            &[("content-type", "application/vnd.acquirer.payment+json")],
        ] {
            assert_eq!(reason(ok), None, "{ok:?}");
        }
        for bad in [
            &[("content-type", "text/plain")][..],
            &[("content-type", "application/x-www-form-urlencoded")],
            &[("content-type", "multipart/form-data; boundary=x")],
            &[("content-type", "application/json; charset=utf-16")],
            &[("content-type", "application/jsonx")],
            &[("content-type", "")],
            &[
                ("content-type", "application/json"),
                ("content-type", "text/plain"),
            ],
        ] {
            assert_eq!(reason(bad), Some(HeadReason::MediaType), "{bad:?}");
        }
        for enc in ["gzip", "identity", "br"] {
            assert_eq!(
                reason(&[("content-encoding", enc)]),
                Some(HeadReason::ContentEncoding)
            );
        }
    }

    #[test]
    fn content_length_is_one_number() {
        let mut h = HeaderMap::new();
        assert_eq!(content_length(&h), None);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(" 12 "));
        assert_eq!(content_length(&h), Some(12));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5, 5"));
        assert_eq!(content_length(&h), None);
    }
}
