//! Candidate routes: a method and a path pattern where `{name}` matches one segment; and the
//! canonical form of a request path, so that no ambiguous spelling of a candidate route
//! (or of the webhook relay path) slips past the layer to a router that reads it as one.

use std::borrow::Cow;

use http::Method;

use crate::config::Problems;

#[derive(Debug)]
pub(super) struct RoutePattern {
    method: Method,
    pub(super) pattern: String,
    segments: Vec<Option<String>>,
    /// The names of the `{name}` segments, by segment index.
    params: Vec<(usize, String)>,
}

impl RoutePattern {
    pub(super) fn parse(method: &str, path: &str, key: &str, p: &mut Problems) -> Option<Self> {
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
    pub(super) fn has_param(&self, name: &str) -> bool {
        self.params.iter().any(|(_, n)| n == name)
    }

    /// The segment of `path` (which [`matches`](Self::matches) this route) that the
    /// parameter `{name}` matched.
    pub(super) fn param<'p>(&self, path: &'p [u8], name: &str) -> Option<&'p [u8]> {
        let (index, _) = self.params.iter().find(|(_, n)| n == name)?;
        path.strip_prefix(b"/")?.split(|&b| b == b'/').nth(*index)
    }

    /// The exact match: same method, literal segments byte for byte.
    pub(super) fn matches(&self, method: &Method, path: &[u8]) -> bool {
        *method == self.method && self.matches_path(path, |a, b| a == b)
    }

    /// The loose match of an ambiguous form: the method and literal segments compared
    /// without regard to ASCII case, on a [`canonical`] path.
    pub(super) fn matches_loosely(&self, method: &Method, canonical: &[u8]) -> bool {
        (*method == self.method || method.as_str().eq_ignore_ascii_case(self.method.as_str()))
            && self.matches_path(canonical, |a, b| a.eq_ignore_ascii_case(b))
    }

    /// Whether `method` could name this route's method in some spelling.
    pub(super) fn loose_method(&self, method: &Method) -> bool {
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
pub(super) fn is_canonical(path: &[u8]) -> bool {
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
pub(super) fn canonical(path: &[u8]) -> Cow<'_, [u8]> {
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
pub(super) fn readings(path: &[u8]) -> impl Iterator<Item = Cow<'_, [u8]>> {
    let first = canonical(path);
    let second = (!is_canonical(path)).then(|| canonical(&dots_first(path)).into_owned());
    let second = second.filter(|s| *s != *first).map(Cow::Owned);
    std::iter::once(first).chain(second)
}

/// `path` with its dot segments resolved on the raw segments (a segment that percent-decodes
/// to `.` or `..` counts as one), escapes left in place.
fn dots_first(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in path.split(|&b| b == b'/' || b == b'\\') {
        let mut decoded: Vec<u8> = seg.to_vec();
        for _ in 0..8 {
            if !decoded.contains(&b'%') {
                break;
            }
            decoded = percent_encoding::percent_decode(&decoded).collect();
        }
        match decoded.as_slice() {
            b"" | b"." => {}
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
