//! [`Mount`]: the path prefix a layer is mounted under, so that step-up reads its routes
//! relative to it.

use std::sync::Arc;

use http::Uri;

/// The path prefix the wrapped service is mounted under (`/api` for an axum
/// `Router::nest("/api", ..)` wrapped from outside); empty: none.
#[derive(Debug, Clone, Default)]
pub(super) struct Mount(Option<Arc<str>>);

/// Where a request's path stands with respect to the [`Mount`].
pub(super) enum Local {
    /// No prefix set: step-up reads the path as it is.
    Unmounted,
    /// Under the prefix: the URI with the prefix removed.
    Under(Uri),
    /// Not under the prefix: none of step-up's routes.
    Outside,
}

impl Mount {
    /// `prefix` as a mount point: a leading `/` added and a trailing one dropped; `""` and
    /// `"/"` mean none.
    pub(super) fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_matches('/');
        Mount((!trimmed.is_empty()).then(|| Arc::from(format!("/{trimmed}"))))
    }

    /// `uri` as step-up reads it. The prefix is matched without regard to ASCII case, and
    /// must be followed by `/`, `?` or the end.
    pub(super) fn local(&self, uri: &Uri) -> Local {
        let Some(prefix) = &self.0 else {
            return Local::Unmounted;
        };
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let Some(head) = target.get(..prefix.len()) else {
            return Local::Outside;
        };
        if !head.eq_ignore_ascii_case(prefix) {
            return Local::Outside;
        }
        let rest = &target[prefix.len()..];
        let rest = match rest.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'/') => rest.to_owned(),
            Some(b'?') => format!("/{rest}"),
            Some(_) => return Local::Outside,
        };
        match Uri::try_from(rest) {
            Ok(local) => Local::Under(local),
            Err(_) => Local::Outside,
        }
    }

    /// The path the wrapped service knows for step-up's own `path` (a relay or notification
    /// path): the prefix, then `path`.
    pub(super) fn outer(&self, path: &str) -> String {
        match &self.0 {
            Some(prefix) => format!("{prefix}{path}"),
            None => path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(m: &Mount, uri: &str) -> Option<String> {
        match m.local(&uri.parse().unwrap()) {
            Local::Under(u) => Some(u.to_string()),
            Local::Unmounted => Some("unmounted".into()),
            Local::Outside => None,
        }
    }

    #[test]
    fn paths_under_the_prefix_are_read_without_it() {
        let m = Mount::new("/api/");
        assert_eq!(local(&m, "/api/payments").as_deref(), Some("/payments"));
        assert_eq!(
            local(&m, "/API/payments?x=1").as_deref(),
            Some("/payments?x=1")
        );
        assert_eq!(local(&m, "/api").as_deref(), Some("/"));
        assert_eq!(local(&m, "/api?x").as_deref(), Some("/?x"));
        assert_eq!(local(&m, "/apix/payments"), None);
        assert_eq!(local(&m, "/payments"), None);
        assert_eq!(m.outer("/relay"), "/api/relay");
        let none = Mount::new("/");
        assert_eq!(local(&none, "/payments").as_deref(), Some("unmounted"));
        assert_eq!(none.outer("/relay"), "/relay");
    }
}
