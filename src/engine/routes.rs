//! Candidate routes: a method and a path pattern where `{name}` matches one segment.

use http::Method;

use crate::config::Problems;

#[derive(Debug)]
pub(super) struct RoutePattern {
    method: Method,
    pub(super) pattern: String,
    segments: Vec<Option<String>>,
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
        let mut segments = Vec::new();
        for seg in path.split('/').skip(1) {
            if seg.starts_with('{') && seg.ends_with('}') && seg.len() > 2 {
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
        })
    }

    pub(super) fn matches(&self, method: &Method, path: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = path.split('/');
        for seg in &self.segments {
            match (parts.next(), seg) {
                (Some(part), Some(lit)) if part == lit => {}
                (Some(part), None) if !part.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}
