//! Which return URLs may be sent to Klarna: the customer's browser will be sent there, so a
//! bad one is an open redirect or a broken purchase.

use crate::config::{Problems, ReturnUrlPolicyConfig};

/// Klarna's placeholders in return URLs.
pub const PLACEHOLDERS: [&str; 6] = [
    "{klarna.payment_request.id}",
    "{klarna.payment_request.state}",
    "{klarna.payment_request.payment_request_reference}",
    "{klarna.payment_request.klarna_network_session_token}",
    "{klarna.payment_request.payment_token}",
    "{klarna.payment_request.interoperability_token}",
];

/// Schemes an app return URL may never have.
const FORBIDDEN_APP_SCHEMES: [&str; 6] =
    ["javascript", "data", "vbscript", "file", "blob", "about"];

/// A host pattern: exact, or `*.suffix` for any subdomain of suffix.
#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    Subdomain(String),
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, &'static str> {
        let s = s.to_ascii_lowercase();
        let bare = s.strip_prefix("*.").unwrap_or(&s);
        if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
            return Err("must be a host name, or *. followed by a host name");
        }
        Ok(match s.strip_prefix("*.") {
            Some(suffix) => HostPattern::Subdomain(format!(".{suffix}")),
            None => HostPattern::Exact(s),
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// The validated return-URL policy.
#[derive(Debug, Clone)]
pub(crate) struct ReturnUrlPolicy {
    schemes: Vec<String>,
    http_hosts: Vec<HostPattern>,
    allowed_hosts: Vec<HostPattern>,
    max_length: usize,
}

impl ReturnUrlPolicy {
    pub fn new(c: &ReturnUrlPolicyConfig, p: &mut Problems) -> Self {
        let hosts = |key: &str, list: &[String], p: &mut Problems| {
            list.iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    HostPattern::parse(h)
                        .map_err(|r| p.add(format!("return_url_policy.{key}[{i}]"), r))
                        .ok()
                })
                .collect()
        };
        for (i, s) in c.schemes.iter().enumerate() {
            if !matches!(s.as_str(), "https" | "http") {
                p.add(
                    format!("return_url_policy.schemes[{i}]"),
                    "must be \"https\" or \"http\"",
                );
            }
        }
        if c.schemes.is_empty() {
            p.add("return_url_policy.schemes", "must name at least one scheme");
        }
        if !(16..=8192).contains(&c.max_length) {
            p.add(
                "return_url_policy.max_length",
                "must be between 16 and 8192",
            );
        }
        ReturnUrlPolicy {
            schemes: c.schemes.clone(),
            http_hosts: hosts("http_hosts", &c.http_hosts, p),
            allowed_hosts: hosts("allowed_hosts", &c.allowed_hosts, p),
            max_length: c.max_length,
        }
    }

    /// Checks a web return URL; the error is the reason, fit for the partner to read.
    pub fn check_return_url(&self, raw: &str) -> Result<(), String> {
        let url = self.parse_common(raw)?;
        self.check_web(raw, &url)
    }

    /// Checks an app return URL: custom schemes are fine, script-ish ones are not, and
    /// http(s) ones follow the web rules.
    pub fn check_app_return_url(&self, raw: &str) -> Result<(), String> {
        let url = self.parse_common(raw)?;
        let scheme = url.scheme();
        if FORBIDDEN_APP_SCHEMES.contains(&scheme) {
            return Err(format!("the scheme {scheme}: is not allowed"));
        }
        if matches!(scheme, "http" | "https") {
            return self.check_web(raw, &url);
        }
        Ok(())
    }

    fn parse_common(&self, raw: &str) -> Result<url::Url, String> {
        if raw.len() > self.max_length {
            return Err(format!("is longer than {} bytes", self.max_length));
        }
        if let Some(b) = raw.bytes().find(|&b| b <= b' ' || b == 0x7f || b == b'\\') {
            return Err(match b {
                b' ' => "contains a space",
                b'\\' => "contains a backslash",
                _ => "contains a control character",
            }
            .into());
        }
        if !raw.is_ascii() && raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("contains a control or whitespace character".into());
        }
        // Placeholders belong in the path, query or fragment: filled into the host, they
        // would let whoever fills them choose where the customer goes.
        if let Some((_, rest)) = raw.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if authority.contains(['{', '}']) {
                return Err("has a placeholder in the host".into());
            }
        }
        check_placeholders(raw)?;
        // Placeholders sit in the path, query or fragment only, where the parser takes braces
        // as they are: the URL parses the same as once Klarna has filled it.
        let url = url::Url::parse(raw).map_err(|e| format!("is not an absolute URL ({e})"))?;
        let scheme = url.scheme().as_bytes();
        if !raw
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Err("is not an absolute URL".into());
        }
        Ok(url)
    }

    fn check_web(&self, raw: &str, url: &url::Url) -> Result<(), String> {
        let scheme = url.scheme();
        let listed = self.schemes.iter().any(|s| s == scheme);
        if !listed && scheme != "http" {
            return Err(format!("the scheme {scheme} is not allowed"));
        }
        // WHATWG parsers accept `https:host` and `https:/host`; browsers then resolve them in
        // ways a partner did not mean. Only the explicit `scheme://` form is accepted.
        if !raw.as_bytes()[scheme.len()..].starts_with(b"://") {
            return Err(format!("must start with {scheme}://"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain user information".into());
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h,
            _ => return Err("has no host".into()),
        };
        if !listed && !self.http_hosts.iter().any(|p| p.matches(host)) {
            return Err(format!("the scheme {scheme} is not allowed for this host"));
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| p.matches(host)) {
            return Err("the host is not allowed".into());
        }
        Ok(())
    }
}

/// Refuses any `{…}` that is not one of Klarna's placeholders.
fn check_placeholders(raw: &str) -> Result<(), String> {
    let mut rest = raw;
    while let Some(open) = rest.find(['{', '}']) {
        rest = &rest[open..];
        let close = match (rest.starts_with('{'), rest.find('}')) {
            (true, Some(close)) => close,
            _ => return Err("has an unbalanced { or }".into()),
        };
        let name = &rest[..=close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(if name.starts_with("{klarna.") {
                format!("has an unknown Klarna placeholder {name}")
            } else {
                format!("has {name}, which is not a Klarna placeholder")
            });
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(f: impl FnOnce(&mut ReturnUrlPolicyConfig)) -> ReturnUrlPolicy {
        let mut c = ReturnUrlPolicyConfig::default();
        f(&mut c);
        let mut p = Problems::default();
        let policy = ReturnUrlPolicy::new(&c, &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        policy
    }

    #[test]
    fn accepts_https_and_placeholders() {
        let p = policy(|_| {});
        for ok in [
            "https://partner.example/return",
            "https://partner.example/r?id={klarna.payment_request.id}&s={klarna.payment_request.state}",
            "https://partner.example:8443/{klarna.payment_request.payment_request_reference}",
            "HTTPS://Partner.Example/x",
        ] {
            assert_eq!(p.check_return_url(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_return_urls_with_a_reason() {
        let p =
            policy(|c| c.allowed_hosts = vec!["*.partner.example".into(), "shop.example".into()]);
        let cases = [
            ("/relative", "absolute"),
            ("partner.example/x", "absolute"),
            ("http://a.partner.example/x", "scheme http"),
            ("ftp://a.partner.example/x", "scheme ftp"),
            ("https://user:pw@a.partner.example/", "user information"),
            ("https://a.partner.example/x y", "space"),
            ("https://a.partner.example/x\r\nSet-Cookie:a", "control"),
            ("https://a.partner.example/\\evil", "backslash"),
            ("https:evil.example", "https://"),
            ("https:/a.partner.example", "https://"),
            ("https://evil.example/", "host is not allowed"),
            ("https://partner.example/", "host is not allowed"),
            (
                "https://a.partner.example.evil.example/",
                "host is not allowed",
            ),
            (
                "https://a.partner.example/{klarna.payment_request.idd}",
                "unknown Klarna placeholder",
            ),
            (
                "https://a.partner.example/{order}",
                "not a Klarna placeholder",
            ),
            ("https://a.partner.example/{klarna", "unbalanced"),
            (
                "https://{klarna.payment_request.state}.partner.example/",
                "placeholder in the host",
            ),
            (
                "https://a.partner.example{klarna.payment_request.id}/",
                "placeholder in the host",
            ),
            ("javascript:alert(1)", "scheme javascript"),
        ];
        for (url, why) in cases {
            let err = p.check_return_url(url).expect_err(url);
            assert!(err.contains(why), "{url}: {err}");
        }
        assert!(p.check_return_url("https://x.partner.example/ok").is_ok());
        assert!(p.check_return_url("https://shop.example/ok").is_ok());
        let long = format!("https://shop.example/{}", "a".repeat(2000));
        assert!(p.check_return_url(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn http_only_for_listed_hosts() {
        let p = policy(|c| c.http_hosts = vec!["localhost".into(), "127.0.0.1".into()]);
        assert!(p.check_return_url("http://localhost:8080/r").is_ok());
        assert!(p.check_return_url("http://127.0.0.1:8080/r").is_ok());
        assert!(p.check_return_url("http://partner.example/r").is_err());
    }

    #[test]
    fn app_return_urls() {
        let p = policy(|_| {});
        assert!(p.check_app_return_url("partnerapp://klarna-return").is_ok());
        assert!(p
            .check_app_return_url("partnerapp://r?id={klarna.payment_request.id}")
            .is_ok());
        assert!(p
            .check_app_return_url("https://partner.example/app")
            .is_ok());
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "vbscript:x",
            "file:///etc/passwd",
            "blob:https://x/y",
            "about:blank",
            "JavaScript:alert(1)",
            "http://partner.example/",
        ] {
            assert!(p.check_app_return_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = ReturnUrlPolicyConfig {
            schemes: vec!["ftp".into()],
            allowed_hosts: vec!["ok.example".into(), "bad/host".into()],
            max_length: 1,
            ..ReturnUrlPolicyConfig::default()
        };
        let mut p = Problems::default();
        ReturnUrlPolicy::new(&c, &mut p);
        let keys: Vec<_> = p.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "return_url_policy.schemes[0]",
                "return_url_policy.max_length",
                "return_url_policy.allowed_hosts[1]"
            ]
        );
    }
}
