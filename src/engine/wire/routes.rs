//! Candidate routes: a method and a path pattern where `{name}` matches one segment; and the
//! canonical form of a request path, so that no ambiguous spelling of a candidate route
//! (or of the webhook relay path) slips past the layer to a router that reads it as one.

use std::borrow::Cow;

use http::Method;

use crate::config::Problems;

#[derive(Debug)]
pub(in crate::engine) struct RoutePattern {
    method: Method,
    pub(in crate::engine) pattern: String,
    segments: Vec<Option<String>>,
    /// The names of the `{name}` segments, by segment index.
    params: Vec<(usize, String)>,
}

impl RoutePattern {
    pub(in crate::engine) fn parse(
        method: &str,
        path: &str,
        key: &str,
        p: &mut Problems,
    ) -> Option<Self> {
        let method = match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                p.add(format!("{key}.method"), "is not an HTTP method");
                return None;
            }
        };
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            p.add(
                format!("{key}.path"),
                "must be a path starting with / (no query)",
            );
            return None;
        }
        if !is_canonical(path.as_bytes()) {
            p.add(
                format!("{key}.path"),
                "must be a canonical path: no empty, . or .. segment, no trailing /, no % ; or \\",
            );
            return None;
        }
        let mut segments = Vec::new();
        let mut params = Vec::new();
        for (i, seg) in path.split('/').skip(1).enumerate() {
            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
                params.push((i, seg[1..seg.len() - 1].to_owned()));
                segments.push(None);
            } else if seg.contains(['{', '}']) {
                p.add(
                    format!("{key}.path"),
                    "a {name} parameter must be a whole segment",
                );
                return None;
            } else {
                segments.push(Some(seg.to_owned()));
            }
        }
        Some(RoutePattern {
            method,
            pattern: path.to_owned(),
            segments,
            params,
        })
    }

    /// Whether the pattern has the parameter `{name}`.
    pub(in crate::engine) fn has_param(&self, name: &str) -> bool {
        self.params.iter().any(|(_, n)| n == name)
    }

    /// The segment of `path` (which [`matches`](Self::matches) this route) that the
    /// parameter `{name}` matched.
    pub(in crate::engine) fn param<'p>(&self, path: &'p [u8], name: &str) -> Option<&'p [u8]> {
        let (index, _) = self.params.iter().find(|(_, n)| n == name)?;
        path.strip_prefix(b"/")?.split(|&b| b == b'/').nth(*index)
    }

    /// The exact match: same method, literal segments byte for byte.
    pub(in crate::engine) fn matches(&self, method: &Method, path: &[u8]) -> bool {
        *method == self.method && self.matches_path(path, |a, b| a == b)
    }

    /// The loose match of an ambiguous form: the method and literal segments compared
    /// without regard to ASCII case, on a [`canonical`] path.
    pub(in crate::engine) fn matches_loosely(&self, method: &Method, canonical: &[u8]) -> bool {
        (*method == self.method || method.as_str().eq_ignore_ascii_case(self.method.as_str()))
            && self.matches_path(canonical, |a, b| a.eq_ignore_ascii_case(b))
    }

    /// Whether `method` could name this route's method in some spelling.
    pub(in crate::engine) fn loose_method(&self, method: &Method) -> bool {
        *method == self.method || method.as_str().eq_ignore_ascii_case(self.method.as_str())
    }

    fn matches_path(&self, path: &[u8], same: impl Fn(&[u8], &[u8]) -> bool) -> bool {
        let Some(path) = path.strip_prefix(b"/") else {
            return false;
        };
        let mut parts = path.split(|&b| b == b'/');
        for seg in &self.segments {
            match (parts.next(), seg) {
                (Some(part), Some(lit)) if same(part, lit.as_bytes()) => {}
                (Some(part), None) if !part.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// Whether `path` is already in the form [`canonical`] gives (up to ASCII case): no
/// percent sign, `;` or backslash, no empty, `.` or `..` segment, no trailing `/`. One pass
/// over the bytes; the usual path is, and costs nothing more.
pub(in crate::engine) fn is_canonical(path: &[u8]) -> bool {
    let Some(rest) = path.strip_prefix(b"/") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    // Folded without an early exit, so that the check is vectorized.
    let odd = rest.iter().fold(false, |any, &b| {
        any | (b == b'%') | (b == b';') | (b == b'\\')
    });
    !odd && rest
        .split(|&b| b == b'/')
        .all(|seg| !seg.is_empty() && seg != b"." && seg != b"..")
}

/// The path as a lenient router may read it: percent-escapes decoded (repeatedly, so that a
/// double encoding is seen through), `\` taken as `/`, `;parameters` dropped from each
/// segment, empty and `.` segments dropped, `..` resolved, no trailing `/`. Case is kept:
/// compare it without regard to ASCII case.
pub(in crate::engine) fn canonical(path: &[u8]) -> Cow<'_, [u8]> {
    if is_canonical(path) {
        return Cow::Borrowed(path);
    }
    let mut decoded = Cow::Borrowed(path);
    // Each round shortens the path; eight see through any encoding a router would undo.
    for _ in 0..8 {
        if !decoded.contains(&b'%') {
            break;
        }
        let next: Vec<u8> = percent_encoding::percent_decode(&decoded).collect();
        if next == *decoded {
            break;
        }
        decoded = Cow::Owned(next);
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/' || b == b'\\') {
        let seg = seg.split(|&b| b == b';').next().unwrap_or(b"");
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut canon = Vec::with_capacity(path.len());
    for seg in &out {
        canon.push(b'/');
        canon.extend_from_slice(seg);
    }
    if canon.is_empty() {
        canon.push(b'/');
    }
    Cow::Owned(canon)
}

/// The readings of `path` a router could make: [`canonical`] (percent-escapes undone, then
/// dot segments), and, when they differ, dot segments first (`/%2e/..` and `/./`, with escaped
/// dots as dots) and the escapes after, which is what URL parsers such as the `url` crate and
/// WHATWG-style routers do: `/%2e/../payments/%2F/../` is `/` one way and `/payments` the other.
///
/// Each reading comes also [`loosened`], when that differs: a format suffix dropped, as
/// Rails routes `/payments.json` to `/payments`.
pub(in crate::engine) fn readings(path: &[u8]) -> impl Iterator<Item = Cow<'_, [u8]>> {
    let first = canonical(path);
    let second = (!is_canonical(path)).then(|| canonical(&dots_first(path)).into_owned());
    let second = second.filter(|s| *s != *first);
    let loose_first = loosened(&first);
    let loose_second = second.as_deref().and_then(loosened);
    std::iter::once(first)
        .chain(second.map(Cow::Owned))
        .chain(loose_first.map(Cow::Owned))
        .chain(loose_second.map(Cow::Owned))
}

/// A canonical path as a lenient router may still read it: each segment cut at a NUL
/// (C-string routers) and without trailing whitespace or dots (`klarna%20`, `klarna.`), and
/// the last one cut at its first dot (a format suffix: Rails, Sinatra and others route
/// `/payments.json` as `/payments`). `None` when that changes nothing (the usual path has
/// no dot, NUL or space, and costs one scan).
pub(in crate::engine) fn loosened(path: &[u8]) -> Option<Vec<u8>> {
    if !path
        .iter()
        .any(|&b| b == b'.' || b == 0 || b.is_ascii_whitespace())
    {
        return None;
    }
    let segments: Vec<&[u8]> = path.strip_prefix(b"/")?.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut out = Vec::with_capacity(path.len());
    for (i, seg) in segments.into_iter().enumerate() {
        let mut seg = seg.split(|&b| b == 0).next().unwrap_or_default();
        if i == last {
            seg = seg.split(|&b| b == b'.').next().unwrap_or_default();
        }
        while let [rest @ .., b] = seg {
            if *b == b'.' || b.is_ascii_whitespace() {
                seg = rest;
            } else {
                break;
            }
        }
        if !seg.is_empty() {
            out.push(b'/');
            out.extend_from_slice(seg);
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    (out != path).then_some(out)
}

/// The names of a query string's parameters as frameworks file them: split at `&` and `;`
/// (Rack 2), `+` and percent-escapes undone (repeatedly), leading brackets dropped and the
/// name cut at its first `[` (`a[b][c]=` is `a`, for Rack, `qs` and PHP), at a NUL, and with
/// `.` and spaces read as `_` (PHP). A query without `=`-less oddities costs one split.
///
/// A body sent without a `Content-Type` is read this way too, so every search here is a
/// vectorized byte search ([`memchr`]): a split at a set of characters decodes and compares
/// each character, several times slower than the JSON scan of the same body.
pub(in crate::engine) fn query_names(query: &str) -> impl Iterator<Item = Cow<'_, str>> {
    split_at_any(query, b'&', b';').filter_map(|pair| {
        let raw = match memchr::memchr(b'=', pair.as_bytes()) {
            Some(i) => &pair[..i],
            None => pair,
        };
        let mut name: Cow<'_, str> = Cow::Borrowed(raw);
        for _ in 0..8 {
            if memchr::memchr2(b'%', b'+', name.as_bytes()).is_none() {
                break;
            }
            let plus = name.replace('+', " ");
            let next = percent_encoding::percent_decode_str(&plus)
                .decode_utf8_lossy()
                .into_owned();
            if next == name {
                break;
            }
            name = Cow::Owned(next);
        }
        let trimmed = name.trim_start_matches(['[', ']', ' ']);
        let base = match memchr::memchr3(b'[', b']', b'\0', trimmed.as_bytes()) {
            Some(i) => &trimmed[..i],
            None => trimmed,
        };
        if base.is_empty() {
            return None;
        }
        Some(if memchr::memchr2(b'.', b' ', base.as_bytes()).is_some() {
            Cow::Owned(base.replace(['.', ' '], "_"))
        } else if base.len() == name.len() {
            name
        } else {
            Cow::Owned(base.to_owned())
        })
    })
}

/// `text` split at every `a` and `b` (ASCII), as `text.split([a, b])` splits it.
fn split_at_any(text: &str, a: u8, b: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        Some(match memchr::memchr2(a, b, r.as_bytes()) {
            // ASCII, so a character boundary on either side.
            Some(i) => {
                rest = Some(&r[i + 1..]);
                &r[..i]
            }
            None => {
                rest = None;
                r
            }
        })
    })
}

/// Whether `path` (as received) names `canonical` (a canonical path) in any spelling a
/// router may read as it: ASCII case, escapes, dot segments, format suffixes, trailing
/// dots, spaces or NULs. The exact, usual miss costs a length comparison and one scan.
pub(in crate::engine) fn names(path: &[u8], canonical: &[u8]) -> bool {
    let maybe = path.len() == canonical.len() || path.contains(&b'.') || !is_canonical(path);
    maybe && readings(path).any(|r| r.eq_ignore_ascii_case(canonical))
}

/// `path` with its dot segments resolved on the raw segments (a segment that percent-decodes
/// to `.` or `..` counts as one), escapes left in place. Empty segments count, as in WHATWG
/// URL parsing: `/payments/\\/..` is `/payments/` there, not `/`.
fn dots_first(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&b| b == b'/' || b == b'\\').skip(1) {
        let mut decoded: Vec<u8> = seg.to_vec();
        for _ in 0..8 {
            if !decoded.contains(&b'%') {
                break;
            }
            decoded = percent_encoding::percent_decode(&decoded).collect();
        }
        match decoded.as_slice() {
            b"." => {}
            b".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    let mut joined = Vec::with_capacity(path.len());
    for seg in out {
        joined.push(b'/');
        joined.extend_from_slice(seg);
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        for (raw, canon) in [
            ("/payments", "/payments"),
            ("/", "/"),
            ("/payments/", "/payments"),
            ("//payments", "/payments"),
            ("/payments;x=1", "/payments"),
            ("/payments;x=1/", "/payments"),
            ("/%70ayments", "/payments"),
            ("/%2570ayments", "/payments"),
            ("/pay%2Fments", "/pay/ments"),
            ("/x/../payments", "/payments"),
            ("/./payments", "/payments"),
            ("/x/%2e%2e/payments", "/payments"),
            ("/../../payments", "/payments"),
            ("\\payments", "/payments"),
            ("/webhooks\\klarna", "/webhooks/klarna"),
            ("/Payments", "/Payments"),
            ("/a/b/..", "/a"),
            ("/..", "/"),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&canonical(raw.as_bytes())),
                canon,
                "{raw}"
            );
        }
    }

    #[test]
    fn both_readings_are_made() {
        let all = |p: &str| -> Vec<String> {
            readings(p.as_bytes())
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .collect()
        };
        assert_eq!(all("/payments"), ["/payments"]);
        assert_eq!(all("/x/../payments"), ["/payments"]);
        assert_eq!(all("/%2e/../payments/%2F/../"), ["/", "/payments"]);
        assert_eq!(all("/payments/%2F/.."), ["/", "/payments"]);
    }

    #[test]
    fn lenient_router_readings_are_made() {
        for (raw, canon) in [
            ("/webhooks/klarna", "/webhooks/klarna"),
            ("/webhooks/klarna.json", "/webhooks/klarna"),
            ("/webhooks/klarna.", "/webhooks/klarna"),
            ("/webhooks/klarna%2e", "/webhooks/klarna"),
            ("/webhooks/klarna%2E", "/webhooks/klarna"),
            ("/webhooks/klarna%20", "/webhooks/klarna"),
            ("/webhooks/klarna%00", "/webhooks/klarna"),
            ("/webhooks/klarna%00.json", "/webhooks/klarna"),
            ("/webhooks%20/klarna", "/webhooks/klarna"),
            ("/webhooks./klarna", "/webhooks/klarna"),
            ("/WEBHOOKS/Klarna.xml", "/webhooks/klarna"),
            ("/webhooks/klarna%252ejson", "/webhooks/klarna"),
        ] {
            assert!(names(raw.as_bytes(), canon.as_bytes()), "{raw}");
        }
        for raw in [
            "/webhooks/klarnax",
            "/webhooks",
            "/webhooks/klarna/x",
            "/x/klarna.json",
        ] {
            assert!(!names(raw.as_bytes(), b"/webhooks/klarna"), "{raw}");
        }
        assert_eq!(loosened(b"/payments"), None);
        assert_eq!(
            loosened(b"/v1/payments.json").as_deref(),
            Some(&b"/v1/payments"[..])
        );
    }

    #[test]
    fn query_names_as_frameworks_file_them() {
        let names = |q: &str| -> Vec<String> { query_names(q).map(|n| n.into_owned()).collect() };
        assert_eq!(names("a=1&b=2"), ["a", "b"]);
        assert_eq!(
            names("step_up_config[customer_interaction_config][return_url]=x"),
            ["step_up_config"]
        );
        assert_eq!(names("%73tep_up_config%5Bx%5D=1"), ["step_up_config"]);
        assert_eq!(names("return%255Furl=1"), ["return_url"]);
        assert_eq!(names("[]payment_method=klarna"), ["payment_method"]);
        assert_eq!(
            names("return.url=1;return+url=2"),
            ["return_url", "return_url"]
        );
        assert_eq!(
            names("payment_method%00x=1&&=&flag"),
            ["payment_method", "flag"]
        );
    }

    /// `query_names` as it was written first, with the standard library's splits: the
    /// definition the byte searches keep to.
    fn query_names_by_char_splits(query: &str) -> Vec<String> {
        query
            .split(['&', ';'])
            .filter_map(|pair| {
                let mut name = pair.split('=').next().unwrap_or_default().to_owned();
                for _ in 0..8 {
                    if !name.contains(['%', '+']) {
                        break;
                    }
                    let next = percent_encoding::percent_decode_str(&name.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned();
                    if next == name {
                        break;
                    }
                    name = next;
                }
                let trimmed = name.trim_start_matches(['[', ']', ' ']);
                let base = trimmed.split(['[', ']', '\0']).next().unwrap_or_default();
                (!base.is_empty()).then(|| base.replace(['.', ' '], "_"))
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn query_names_split_as_the_standard_library_splits(
            query in "([&;=%+\\[\\] .\u{0}a-c]|%5[bB]|%2[56bB]|%00|ſ|é){0,40}"
        ) {
            let names: Vec<String> = query_names(&query).map(Cow::into_owned).collect();
            proptest::prop_assert_eq!(names, query_names_by_char_splits(&query));
        }
    }

    #[test]
    fn canonical_paths_are_recognized_as_such() {
        for p in [
            "/",
            "/payments",
            "/v2/accounts/a-1/payment/authorize",
            "/Payments",
        ] {
            assert!(is_canonical(p.as_bytes()), "{p}");
        }
        for p in [
            "",
            "payments",
            "/payments/",
            "//payments",
            "/a//b",
            "/./a",
            "/a/..",
            "/a;b",
            "/%41",
            "/a\\b",
        ] {
            assert!(!is_canonical(p.as_bytes()), "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn canonical_is_canonical_and_stable(p in "/[a-zA-Z0-9%./;\\\\]{0,24}") {
            let c = canonical(p.as_bytes()).into_owned();
            // Only a stray % (not an escape) can stay in a canonical path.
            if !c.contains(&b'%') {
                proptest::prop_assert!(is_canonical(&c), "{p} -> {:?}", String::from_utf8_lossy(&c));
                proptest::prop_assert_eq!(canonical(&c).into_owned(), c);
            }
        }
    }
}
