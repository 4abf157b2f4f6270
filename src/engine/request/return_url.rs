//! Which return URLs may be sent to Klarna: the customer's browser will be sent there, so a
//! bad one is an open redirect or a broken purchase.

use std::borrow::Cow;
use std::ops::Range;

use crate::config::{Problems, ReturnUrlPolicyConfig};

/// Klarna's documented placeholders in return URLs: those of the Payment Request API, and two
/// more named in Klarna's Web SDK typedoc (`payment_reference`, `payment_confirmation_token`).
/// More can be added with `return_url_policy.extra_placeholders`.
pub const PLACEHOLDERS: [&str; 8] = [
    "{klarna.payment_request.id}",
    "{klarna.payment_request.state}",
    "{klarna.payment_request.payment_request_reference}",
    "{klarna.payment_request.klarna_network_session_token}",
    "{klarna.payment_request.payment_token}",
    "{klarna.payment_request.interoperability_token}",
    "{klarna.payment_request.payment_reference}",
    "{klarna.payment_request.payment_confirmation_token}",
];

/// Whether `name` is fit to be a configured placeholder: `{`, 1 to 128 letters, digits, `.`,
/// `_` or `-`, `}`.
pub(crate) fn is_placeholder_name(name: &str) -> bool {
    name.strip_prefix('{')
        .and_then(|n| n.strip_suffix('}'))
        .is_some_and(|inner| {
            (1..=128).contains(&inner.len())
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Schemes an app return URL may never have: script and local content.
const FORBIDDEN_APP_SCHEMES: [&str; 6] =
    ["javascript", "data", "vbscript", "file", "blob", "about"];

/// Schemes that open a web page in a browser (or hand a URL to one), so that an app return
/// URL with one of them would send the customer to any host, past the allow-list: refused
/// unless `app_schemes` lists them. Exact names, then prefixes of whole families
/// (`x-safari-https`, `googlechromes`, `microsoft-edge-https`, `opera-http`, …).
const BROWSER_SCHEMES: [&str; 9] = [
    "http",
    "https",
    "intent",
    "android-app",
    "chrome",
    "edge",
    "view-source",
    "ws",
    "wss",
];
const BROWSER_SCHEME_PREFIXES: [&str; 13] = [
    "x-safari",
    "googlechrome",
    "firefox",
    "focus",
    "microsoft-edge",
    "opera",
    "touch-http",
    "brave",
    "duckduckgo",
    "yandexbrowser",
    "ucbrowser",
    "samsunginternet",
    "vivaldi",
];

/// Whether `scheme` (lower case) opens a browser.
fn is_browser_scheme(scheme: &str) -> bool {
    BROWSER_SCHEMES.contains(&scheme)
        || BROWSER_SCHEME_PREFIXES
            .iter()
            .any(|p| scheme.starts_with(p))
}

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

/// Which `payment_request_url`s in Klarna's answers the layer hands to partners as their
/// `redirect_url`: `https` on a listed host (Klarna's Purchase Journey by default), or
/// `http` on a listed loopback host when allowed (local sandboxes).
#[derive(Debug, Clone)]
pub(crate) struct PurchaseJourney {
    hosts: Vec<HostPattern>,
    http_loopback: bool,
}

impl PurchaseJourney {
    pub fn new(c: &crate::config::KlarnaConfig, p: &mut Problems) -> Self {
        if c.purchase_journey_hosts.is_empty() {
            p.add(
                "klarna.purchase_journey_hosts",
                "must name at least one host",
            );
        }
        let hosts = c
            .purchase_journey_hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                HostPattern::parse(h)
                    .map_err(|r| p.add(format!("klarna.purchase_journey_hosts[{i}]"), r))
                    .ok()
            })
            .collect();
        PurchaseJourney {
            hosts,
            http_loopback: c.purchase_journey_http_loopback,
        }
    }

    /// Whether `raw` may be sent to a partner as where the customer goes: an absolute URL of
    /// visible ASCII (no space, control character or backslash), `https://` (or `http://` on
    /// loopback when allowed), no user information, on a listed host.
    pub fn allows(&self, raw: &str) -> bool {
        let plain = raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
        if !plain {
            return false;
        }
        // Klarna's usual `https://pay.klarna.com/...` without a URL parser: where
        // `Origin::plain` answers, the url crate reads the same scheme and host of the whole
        // URL, with no user information (past the authority it never fails), and a plain
        // host is a domain, never an IP address (property tests below).
        match Origin::plain(raw, authority(raw)) {
            Some(Origin {
                scheme,
                host: Some(host),
                ..
            }) => self.admits(&scheme, &host, host.eq_ignore_ascii_case("localhost")),
            _ => self.allows_parsed(raw),
        }
    }

    /// [`allows`](Self::allows) by the url crate, for a URL of visible ASCII.
    fn allows_parsed(&self, raw: &str) -> bool {
        let Ok(url) = url::Url::parse(raw) else {
            return false;
        };
        let explicit = raw
            .get(..url.scheme().len() + 3)
            .is_some_and(|s| s[url.scheme().len()..] == *"://");
        if !explicit || !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let loopback = match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        self.admits(url.scheme(), host, loopback)
    }

    /// Whether an explicit `scheme://` URL without user information on `host` (`loopback`:
    /// localhost or a loopback address) may be handed to a partner.
    fn admits(&self, scheme: &str, host: &str, loopback: bool) -> bool {
        let scheme_ok = match scheme {
            "https" => true,
            "http" => self.http_loopback && loopback,
            _ => false,
        };
        scheme_ok && self.hosts.iter().any(|p| p.matches(host))
    }
}

/// The validated return-URL policy.
#[derive(Debug, Clone)]
pub(crate) struct ReturnUrlPolicy {
    schemes: Vec<String>,
    /// `app_schemes`, lower case; empty: any that [`is_browser_scheme`] does not name.
    app_schemes: Vec<String>,
    http_hosts: Vec<HostPattern>,
    allowed_hosts: Vec<HostPattern>,
    max_length: usize,
    /// Placeholders the acquirer added (`extra_placeholders`).
    pub(crate) extra_placeholders: Vec<String>,
}

impl ReturnUrlPolicy {
    pub fn new(c: &ReturnUrlPolicyConfig, p: &mut Problems) -> Self {
        Self::new_at("return_url_policy", c, p)
    }

    /// The policy of `c`, its errors named under `section` (e.g. `partners.entries[2]`).
    pub fn new_at(section: &str, c: &ReturnUrlPolicyConfig, p: &mut Problems) -> Self {
        let hosts = |key: &str, list: &[String], p: &mut Problems| {
            list.iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    HostPattern::parse(h)
                        .map_err(|r| p.add(format!("{section}.{key}[{i}]"), r))
                        .ok()
                })
                .collect()
        };
        for (i, s) in c.schemes.iter().enumerate() {
            if !matches!(s.as_str(), "https" | "http") {
                p.add(
                    format!("{section}.schemes[{i}]"),
                    "must be \"https\" or \"http\"",
                );
            }
        }
        if c.schemes.is_empty() {
            p.add(
                format!("{section}.schemes"),
                "must name at least one scheme",
            );
        }
        if !(16..=8192).contains(&c.max_length) {
            p.add(
                format!("{section}.max_length"),
                "must be between 16 and 8192",
            );
        }
        for (i, name) in c.extra_placeholders.iter().enumerate() {
            if !is_placeholder_name(name) {
                p.add(
                    format!("{section}.extra_placeholders[{i}]"),
                    "must be {name}: 1 to 128 letters, digits, '.', '_' or '-' in braces",
                );
            }
        }
        for (i, s) in c.app_schemes.iter().enumerate() {
            let valid = s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !valid {
                p.add(format!("{section}.app_schemes[{i}]"), "is not a URL scheme");
            } else if FORBIDDEN_APP_SCHEMES.contains(&s.to_ascii_lowercase().as_str()) {
                p.add(
                    format!("{section}.app_schemes[{i}]"),
                    "is never allowed: it runs script or shows local content",
                );
            }
        }
        ReturnUrlPolicy {
            extra_placeholders: c.extra_placeholders.clone(),
            schemes: c.schemes.clone(),
            app_schemes: c
                .app_schemes
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            http_hosts: hosts("http_hosts", &c.http_hosts, p),
            allowed_hosts: hosts("allowed_hosts", &c.allowed_hosts, p),
            max_length: c.max_length,
        }
    }

    /// Checks a web return URL; the error is the reason, fit for the partner to read.
    pub fn check_return_url(&self, raw: &str) -> Result<(), String> {
        let origin = self.parse_common(raw)?;
        self.check_web(raw, &origin)
    }

    /// Checks an app return URL: custom schemes are fine, script-ish ones are not, and
    /// http(s) ones follow the web rules.
    pub fn check_app_return_url(&self, raw: &str) -> Result<(), String> {
        let origin = self.parse_common(raw)?;
        let scheme = &*origin.scheme;
        if FORBIDDEN_APP_SCHEMES.contains(&scheme) {
            return Err(format!("the scheme {scheme}: is not allowed"));
        }
        let listed = self.app_schemes.iter().any(|s| s == scheme);
        if !listed && !self.app_schemes.is_empty() {
            return Err(format!("the scheme {scheme}: is not one of app_schemes"));
        }
        if !listed && is_browser_scheme(scheme) {
            return Err(format!(
                "the scheme {scheme}: opens a web browser: an app return URL must open the \
                 partner's app"
            ));
        }
        if matches!(scheme, "http" | "https") {
            return self.check_web(raw, &origin);
        }
        Ok(())
    }

    fn parse_common<'a>(&self, raw: &'a str) -> Result<Origin<'a>, String> {
        if raw.len() > self.max_length {
            return Err(format!("is longer than {} bytes", self.max_length));
        }
        // A branch-free fold first (vectorized): the usual URL has none of these bytes.
        let suspect = raw.bytes().fold(false, |any, b| {
            any | (b <= b' ') | (b == 0x7f) | (b == b'\\')
        });
        if suspect {
            if let Some(b) = raw.bytes().find(|&b| b <= b' ' || b == 0x7f || b == b'\\') {
                return Err(match b {
                    b' ' => "contains a space",
                    b'\\' => "contains a backslash",
                    _ => "contains a control character",
                }
                .into());
            }
        }
        if !raw.is_ascii() && raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("contains a control or whitespace character".into());
        }
        let authority = authority(raw);
        // Placeholders belong in the path, query or fragment: filled into the host, they
        // would let whoever fills them choose where the customer goes.
        if raw.as_bytes()[authority.clone()]
            .iter()
            .any(|&b| b == b'{' || b == b'}')
        {
            return Err("has a placeholder in the host".into());
        }
        self.check_placeholders(raw)?;
        match Origin::plain(raw, authority.clone()) {
            Some(origin) => Ok(origin),
            None => Origin::parsed(raw, authority),
        }
    }

    fn check_web(&self, raw: &str, origin: &Origin<'_>) -> Result<(), String> {
        let scheme = &*origin.scheme;
        let listed = self.schemes.iter().any(|s| s == scheme);
        if !listed && scheme != "http" {
            return Err(format!("the scheme {scheme} is not allowed"));
        }
        // WHATWG parsers accept `https:host` and `https:/host`; browsers then resolve them in
        // ways a partner did not mean. Only the explicit `scheme://` form is accepted.
        if !raw.as_bytes()[scheme.len()..].starts_with(b"://") {
            return Err(format!("must start with {scheme}://"));
        }
        if origin.userinfo {
            return Err("must not contain user information".into());
        }
        let host = match origin.host.as_deref() {
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

/// What the checks need of a URL: its scheme (lower case), whether it has user information,
/// and its host (compared without regard to case).
struct Origin<'a> {
    scheme: Cow<'a, str>,
    userinfo: bool,
    host: Option<Cow<'a, str>>,
}

/// Schemes the url crate parses by their own rules (WHATWG "special" schemes): a host of
/// theirs is a domain (IDNA, IPv4 forms), never opaque.
const SPECIAL_SCHEMES: [&str; 6] = ["http", "https", "ws", "wss", "ftp", "file"];

impl<'a> Origin<'a> {
    /// The common cases without a URL parser: `http(s)://` and a plain DNS name, with an
    /// optional port; or an app's own `scheme://` and a plain name (an opaque host, which a
    /// parser keeps as it is). Anything else (IP addresses, IDNA, percent signs, user
    /// information, odd labels, other special schemes) is `None`, and left to the `url`
    /// crate; a property test checks that both agree wherever this answers.
    fn plain(raw: &'a str, authority: Range<usize>) -> Option<Self> {
        // Without `://`, `authority` is empty at the end: no plain host is empty.
        let scheme = raw.get(..authority.start)?.strip_suffix("://")?;
        let text = &raw[authority];
        let web = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
        let host = if web {
            plain_domain(text)?
        } else {
            // The url crate refuses an opaque host only for characters a plain name does not
            // have, and keeps it as written (no case folding, no IDNA; no port here).
            let opaque = !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            let special = SPECIAL_SCHEMES
                .iter()
                .any(|s| s.eq_ignore_ascii_case(scheme));
            (opaque && !special).then_some(text)?
        };
        let scheme = if scheme.bytes().all(|b| b.is_ascii_lowercase()) {
            Cow::Borrowed(scheme)
        } else {
            Cow::Owned(scheme.to_ascii_lowercase())
        };
        Some(Origin {
            scheme,
            userinfo: false,
            host: Some(Cow::Borrowed(host)),
        })
    }

    /// The origin as the url crate reads it. Placeholders sit in the path, query or fragment
    /// only, where the parser takes braces as they are: the URL parses the same as once
    /// Klarna has filled it. Past the authority a URL parser only percent-encodes (it never
    /// fails, and we forward the partner's text, not the parser's), so only
    /// `scheme://authority` is parsed: the same verdict for a third of the work.
    fn parsed(raw: &str, authority: Range<usize>) -> Result<Self, String> {
        let url = url::Url::parse(&raw[..authority.end])
            .map_err(|e| format!("is not an absolute URL ({e})"))?;
        let scheme = url.scheme();
        if !raw
            .as_bytes()
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme.as_bytes()))
        {
            return Err("is not an absolute URL".into());
        }
        Ok(Origin {
            scheme: Cow::Owned(scheme.to_owned()),
            userinfo: !url.username().is_empty() || url.password().is_some(),
            host: url.host_str().map(|h| Cow::Owned(h.to_owned())),
        })
    }
}

/// `text` (an `http(s)` authority) when it is a plain DNS name with an optional port, without
/// the port: labels of ASCII letters, digits and inner hyphens, no IDNA prefix, the last one
/// starting with a letter.
fn plain_domain(text: &str) -> Option<&str> {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    if let Some(port) = port {
        let ok = (1..=5).contains(&port.len())
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| p <= 65535);
        ok.then_some(())?;
    }
    if host.len() > 253 {
        return None;
    }
    let mut labels = host.split('.');
    let plain_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--"))
    };
    // The last label must start with a letter: one that reads as a number makes the whole
    // host an IPv4 address to a URL parser.
    let last = labels.next_back()?;
    (plain_label(last) && last.as_bytes()[0].is_ascii_alphabetic()).then_some(())?;
    labels.all(plain_label).then_some(host)
}

/// The authority of `raw` when it starts with `scheme://` (else the empty range at its end).
/// Control characters, spaces and backslashes are refused before this is asked, so the
/// authority ends where a URL parser ends it: at `/`, `?` or `#`.
fn authority(raw: &str) -> Range<usize> {
    let b = raw.as_bytes();
    let scheme = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))
        .unwrap_or(b.len());
    if scheme == 0 || !b[0].is_ascii_alphabetic() || !b[scheme..].starts_with(b"://") {
        return b.len()..b.len();
    }
    let start = scheme + 3;
    let end = b[start..]
        .iter()
        .position(|c| matches!(c, b'/' | b'?' | b'#'))
        .map_or(b.len(), |p| start + p);
    start..end
}

impl ReturnUrlPolicy {
    /// Whether `name` is a placeholder Klarna documents or the acquirer added.
    pub(crate) fn knows(&self, name: &str) -> bool {
        PLACEHOLDERS.contains(&name) || self.extra_placeholders.iter().any(|p| p == name)
    }

    /// Refuses any `{…}` that is neither one of Klarna's documented placeholders nor one the
    /// acquirer added: the typo guard.
    fn check_placeholders(&self, raw: &str) -> Result<(), String> {
        let brace = |s: &str| s.bytes().position(|b| b == b'{' || b == b'}');
        let mut rest = raw;
        while let Some(open) = brace(rest) {
            rest = &rest[open..];
            let close = match (rest.starts_with('{'), rest.bytes().position(|b| b == b'}')) {
                (true, Some(close)) => close,
                _ => return Err("has an unbalanced { or }".into()),
            };
            let name = &rest[..=close];
            if !self.knows(name) {
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
            "https://partner.example/r?p={klarna.payment_request.payment_reference}",
            "https://partner.example/r?t={klarna.payment_request.payment_confirmation_token}",
        ] {
            assert_eq!(p.check_return_url(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_acquirer_adds_placeholders_and_typos_stay_refused() {
        let p = policy(|c| c.extra_placeholders = vec!["{klarna.payment_request.locale}".into()]);
        assert!(p
            .check_return_url("https://p.example/r?l={klarna.payment_request.locale}")
            .is_ok());
        let err = p
            .check_return_url("https://p.example/r?l={klarna.payment_request.lcale}")
            .unwrap_err();
        assert!(err.contains("unknown Klarna placeholder"), "{err}");
        assert!(policy(|_| {})
            .check_return_url("https://p.example/r?l={klarna.payment_request.locale}")
            .is_err());
        let c = ReturnUrlPolicyConfig {
            extra_placeholders: vec!["{ok.name}".into(), "no-braces".into(), "{a}b}".into()],
            ..ReturnUrlPolicyConfig::default()
        };
        let mut problems = Problems::default();
        ReturnUrlPolicy::new(&c, &mut problems);
        let keys: Vec<_> = problems.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "return_url_policy.extra_placeholders[1]",
                "return_url_policy.extra_placeholders[2]"
            ]
        );
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
    fn the_origin_parses_as_the_whole_url_does() {
        for raw in [
            "https://partner.example/r?x=1#f",
            "HTTPS://User:pw@Partner.Example:8443?q",
            "https://[::1]:8443#f",
            "https://partner.example:99999/x",
            "https://bad host/x",
            "https://%zz/x",
            "https://xn--/x",
            "partnerapp://r/x?y",
            "partnerapp:r",
            "javascript:alert('http://x')",
            "https:/partner.example/x",
            "1https://x/y",
        ] {
            let whole = url::Url::parse(raw);
            let origin = url::Url::parse(&raw[..authority(raw).end]);
            assert_eq!(whole.is_ok(), origin.is_ok(), "{raw}");
            if let (Ok(w), Ok(o)) = (whole, origin) {
                assert_eq!(
                    (
                        w.scheme(),
                        w.username(),
                        w.password(),
                        w.host_str(),
                        w.port()
                    ),
                    (
                        o.scheme(),
                        o.username(),
                        o.password(),
                        o.host_str(),
                        o.port()
                    ),
                    "{raw}"
                );
            }
        }
    }

    #[test]
    fn plain_origins_skip_the_parser_only_when_plain() {
        let plain = |raw: &str| Origin::plain(raw, authority(raw)).is_some();
        assert!(plain("https://partner.example/r?x"));
        assert!(plain("HTTP://Shop.Example:8080#f"));
        assert!(plain("partnerapp://klarna-return?x"));
        assert!(plain("PartnerApp://Klarna_Return.v2"));
        for odd in [
            "https://127.0.0.1/",
            "https://1.2.3/",
            "http://0",
            "https://0x7f.example.1/",
            "https://[::1]/",
            "https://xn--nxasmq6b.example/",
            "https://user@partner.example/",
            "https://partner.example./",
            "https://-a.example/",
            "https://a..example/",
            "https://partner.example:99999/",
            "https://partner.example:/",
            "https://p%41rtner.example/",
            "partnerapp://user@r",
            "partnerapp://r:1",
            "partnerapp://[::1]",
            "partnerapp://",
            "partnerapp:r",
            "wss://partner.example/",
            "https:/partner.example/",
        ] {
            assert!(!plain(odd), "{odd}");
        }
    }

    /// URLs of every kind a partner or an upstream could send: odd schemes and separators,
    /// user information, percent-encoding, IDNA and Unicode look-alikes (a Kelvin sign, a
    /// fullwidth dot, a dotted I), IPv4 and IPv6 forms, ports, backslashes, tabs and newlines,
    /// upper case, trailing dots and empty parts; and often a plain one.
    fn any_url() -> impl proptest::strategy::Strategy<Value = String> {
        let scheme = "(https?|HTTPS|hTtP|wss?|ftp|FILE|partnerapp|PartnerApp|x-app\\.v2|a\\+b|javascript|1ab|)";
        let sep = "(://|://|://|:/|:|:///|:\\\\\\\\|:/\\\\|:\t//)";
        let userinfo = "(|||[a-z%:]{0,3}@)";
        let label = "((xn--|XN--)?[a-zA-Z0-9-]{0,6}|[a-zA-Z0-9_~%é\\x{212A}\\x{FF0E}\\x{130}ß\t\n\\\\{}-]{0,4})";
        let host = format!(
            "(({label}\\.){{0,3}}{label}\\.?|\\[[0-9a-fA-F:.]{{0,10}}\\]|[0-9]{{1,4}}(\\.[0-9]{{0,3}}){{0,4}}|0[xX][0-9a-f]{{0,4}}|(pay|PAY|a\\.b)\\.klarna\\.(com|COM)\\.?|localhost|LocalHost|127\\.0\\.0\\.1)"
        );
        let port = "(||:[0-9]{0,6}|:[0-9a-z]{0,3})";
        let rest = "(/[a-z{}@:%\\\\\t.]{0,4})?(\\?[a-z@:/{}]{0,3})?(#[a-z]{0,3})?";
        let hostile = format!("{scheme}{sep}{userinfo}{host}{port}{rest}");
        // Half of them near the plain form, so that the fast path answers often.
        let near = format!(
            "(https?|HTTPS|partnerapp|wss|x-a\\.b)://(|||x@)(([a-zA-Z0-9-]{{1,6}}\\.){{0,3}}([a-zA-Z][a-zA-Z0-9-]{{0,5}}|{label})|(pay\\.|A-b\\.)?(klarna|KLARNA)\\.com|localhost)(||:[0-9]{{1,6}}){rest}"
        );
        proptest::prop_oneof![
            proptest::string::string_regex(&hostile).unwrap(),
            proptest::string::string_regex(&near).unwrap(),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Wherever the fast path answers, the url crate reads the same: the same origin from
        /// `scheme://authority` (what the return-URL checks use; hosts compare without regard
        /// to case everywhere), and the same of the whole URL (what `allows` uses), a plain
        /// `http(s)` host being a domain.
        #[test]
        fn plain_origins_agree_with_the_url_crate(raw in any_url()) {
            use proptest::prop_assert_eq;
            let Some(o) = Origin::plain(&raw, authority(&raw)) else {
                return Ok(());
            };
            let web = matches!(&*o.scheme, "http" | "https");
            let host = o.host.map(|h| if web { h.to_ascii_lowercase() } else { h.into_owned() });
            let parsed = Origin::parsed(&raw, authority(&raw))
                .expect("the url crate takes the origin the fast path takes");
            prop_assert_eq!(&*parsed.scheme, &*o.scheme);
            prop_assert_eq!(parsed.userinfo, o.userinfo);
            prop_assert_eq!(parsed.host.as_deref(), host.as_deref());
            let whole = url::Url::parse(&raw).expect("the url crate takes the whole URL");
            prop_assert_eq!(whole.scheme(), &*o.scheme);
            proptest::prop_assert!(whole.username().is_empty() && whole.password().is_none());
            prop_assert_eq!(whole.host_str(), host.as_deref());
            proptest::prop_assert!(!web || matches!(whole.host(), Some(url::Host::Domain(_))));
        }

        /// `allows` answers as the url crate alone would.
        #[test]
        fn purchase_journey_fast_path_agrees_with_the_url_crate(raw in any_url()) {
            let visible = raw.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
            for j in [
                journey(&["pay.klarna.com", "*.klarna.com"], false),
                journey(&["localhost", "127.0.0.1", "*.KLARNA.com"], true),
            ] {
                proptest::prop_assert_eq!(j.allows(&raw), visible && j.allows_parsed(&raw), "{}", raw);
            }
        }
    }

    fn journey(hosts: &[&str], http_loopback: bool) -> PurchaseJourney {
        let c = crate::config::KlarnaConfig {
            purchase_journey_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            purchase_journey_http_loopback: http_loopback,
        };
        let mut p = Problems::default();
        let j = PurchaseJourney::new(&c, &mut p);
        assert!(p.0.is_empty(), "{:?}", p.0);
        j
    }

    #[test]
    fn purchase_journey_urls() {
        let j = journey(&["pay.klarna.com", "*.klarna.com"], false);
        for ok in [
            "https://pay.klarna.com/eu/requests/552603c0/start",
            "https://pay.playground.klarna.com/x",
            "HTTPS://PAY.KLARNA.COM/x?y=1#z",
            "https://pay.klarna.com:443/x",
        ] {
            assert!(j.allows(ok), "{ok}");
        }
        for bad in [
            "http://pay.klarna.com/x",
            "https://pay.klarna.com.evil.example/x",
            "https://evilklarna.com/x",
            "https://klarna.com@evil.example/x",
            "https://user@pay.klarna.com/x",
            "javascript:alert(1)//pay.klarna.com",
            "https:pay.klarna.com/x",
            "https://pay.klarna.com/x y",
            "https://pay.klarna.com/\\x",
            "https://pay.klarna.com/\tx",
            "https://pay.klarna.com/é",
            "//pay.klarna.com/x",
            "",
            "http://127.0.0.1:8091/pay/1",
        ] {
            assert!(!j.allows(bad), "{bad}");
        }
        let sandbox = journey(&["127.0.0.1", "localhost"], true);
        assert!(sandbox.allows("http://127.0.0.1:8091/pay/1"));
        assert!(sandbox.allows("http://localhost:8091/pay/1"));
        assert!(!sandbox.allows("http://10.0.0.1/pay/1"));
        assert!(!sandbox.allows("https://pay.klarna.com/x"));
        let lan = journey(&["sandbox.lan"], true);
        assert!(
            !lan.allows("http://sandbox.lan/pay/1"),
            "http only on loopback"
        );
        assert!(lan.allows("https://sandbox.lan/pay/1"));
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
        for bad in [
            "https://partner.example/app",
            "intent://evil.example/#Intent;scheme=https;end",
            "INTENT://evil.example/",
            "x-safari-https://evil.example/",
            "googlechromes://evil.example/",
            "googlechrome://evil.example/",
            "firefox://open-url?url=https://evil.example",
            "microsoft-edge-https://evil.example",
            "opera-https://evil.example",
            "android-app://com.android.chrome/https/evil.example",
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
        // Listed, a browser scheme is allowed (https still by the web rules); then only the
        // listed ones are.
        let p = policy(|c| {
            c.app_schemes = vec!["https".into(), "partnerapp".into()];
            c.allowed_hosts = vec!["partner.example".into()];
        });
        assert!(p
            .check_app_return_url("https://partner.example/app")
            .is_ok());
        assert!(p.check_app_return_url("https://evil.example/app").is_err());
        assert!(p.check_app_return_url("partnerapp://klarna").is_ok());
        assert!(p.check_app_return_url("otherapp://klarna").is_err());
        let mut problems = Problems::default();
        ReturnUrlPolicy::new(
            &ReturnUrlPolicyConfig {
                app_schemes: vec!["javascript".into(), "a b".into()],
                ..ReturnUrlPolicyConfig::default()
            },
            &mut problems,
        );
        let keys: Vec<_> = problems.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "return_url_policy.app_schemes[0]",
                "return_url_policy.app_schemes[1]"
            ]
        );
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
