//! Many partners behind one acquirer: who the partner is (a gateway-set header or a route
//! parameter, read by [`StepUp::classify`](super::StepUp::classify)), its own return-URL
//! policy and defaults, and the namespaced `payment_request_reference` (`<partner>:<ref>`).

use std::collections::HashMap;

use http::header::HeaderName;

use super::compile::iso_duration_secs;
use super::return_url::ReturnUrlPolicy;
use super::{Refusal, RefusalCode};
use crate::config::{PartnerEntry, Problems, ReturnUrlPolicyConfig, StepUpConfig, UnknownPartner};

/// Longest partner id.
pub(crate) const MAX_ID: usize = 64;
/// Separates the partner from the reference in `payment_request_reference`.
pub(crate) const SEPARATOR: char = ':';

/// A partner id as the request carried it: 1 to [`MAX_ID`] ASCII letters, digits, `-`, `_`
/// or `.` (so it is safe in a header, a URL, a log line and before the `:` separator). Held
/// inline, so that a [`Candidate`](super::Candidate) stays `Copy`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartnerId {
    len: u8,
    bytes: [u8; MAX_ID],
}

impl PartnerId {
    pub(crate) fn parse(raw: &[u8]) -> Option<Self> {
        if !is_valid_id(raw) {
            return None;
        }
        let mut bytes = [0; MAX_ID];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(PartnerId {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII is ever stored.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

impl std::fmt::Debug for PartnerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `raw` is a valid partner id.
pub(crate) fn is_valid_id(raw: &[u8]) -> bool {
    (1..=MAX_ID).contains(&raw.len())
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The partner of a candidate request, as [`StepUp::classify`](super::StepUp::classify)
/// found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartnerRef {
    /// Partners are off.
    Off,
    /// No identity: no header, or an empty one.
    Missing,
    /// An identity that is not a valid id.
    Invalid,
    /// More than one identity, or one the payment API could read otherwise: the header
    /// twice, under another spelling (`_` for `-`), or named in `Connection`.
    Ambiguous,
    /// A partner with its own entry (`entries[entry]`).
    Listed { entry: u16, id: PartnerId },
    /// A valid id without an entry.
    Unlisted(PartnerId),
}

/// Where the partner's identity is read.
#[derive(Debug)]
pub(crate) enum Source {
    Header(HeaderName),
    PathParam(String),
}

/// The compiled `[partners]`.
pub(crate) struct Partners {
    pub source: Source,
    /// Where the identity is read, as configured, for refusals: the header, or `{param}`.
    pub field: String,
    pub unknown: UnknownPartner,
    pub by_id: HashMap<String, u16>,
    pub policies: Vec<Policy>,
}

/// One partner's effective policy (what its entry leaves out is the global one).
pub(crate) struct Policy {
    pub urls: ReturnUrlPolicy,
    /// What step-up does for the partner's requests (its entry's `mode`, else the global).
    pub mode: crate::config::Mode,
    pub return_url: Option<String>,
    pub app_return_url: Option<String>,
    pub interaction_expiry: Option<String>,
}

/// The policy a request is served with: the global one or its partner's, by reference.
#[derive(Clone, Copy)]
pub(crate) struct PolicyView<'a> {
    pub urls: &'a ReturnUrlPolicy,
    pub return_url: Option<&'a str>,
    pub app_return_url: Option<&'a str>,
    pub interaction_expiry: Option<&'a str>,
}

impl Policy {
    pub(crate) fn view(&self) -> PolicyView<'_> {
        PolicyView {
            urls: &self.urls,
            return_url: self.return_url.as_deref(),
            app_return_url: self.app_return_url.as_deref(),
            interaction_expiry: self.interaction_expiry.as_deref(),
        }
    }
}

impl Partners {
    /// Who the partner of a request is, from its head and the route it matched.
    pub(crate) fn identify(&self, raw: Option<&[u8]>) -> PartnerRef {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return PartnerRef::Missing;
        };
        let Some(id) = PartnerId::parse(raw) else {
            return PartnerRef::Invalid;
        };
        match self.by_id.get(id.as_str()) {
            Some(&entry) => PartnerRef::Listed { entry, id },
            None => PartnerRef::Unlisted(id),
        }
    }

    /// The refusal for a request whose partner is missing, malformed, or unlisted when
    /// unlisted partners are refused.
    pub(crate) fn refusal(&self, partner: PartnerRef) -> Option<Refusal> {
        let field = self.field.clone();
        match partner {
            PartnerRef::Off | PartnerRef::Listed { .. } => None,
            PartnerRef::Unlisted(_) if self.unknown == UnknownPartner::Global => None,
            PartnerRef::Missing => Some(Refusal::invalid(
                RefusalCode::InvalidPartner,
                field,
                "is required: the partner is not identified",
            )),
            PartnerRef::Invalid => Some(Refusal::invalid(
                RefusalCode::InvalidPartner,
                field,
                format!("must be 1 to {MAX_ID} ASCII letters, digits, '-', '_' or '.'"),
            )),
            PartnerRef::Ambiguous => Some(Refusal::invalid(
                RefusalCode::InvalidPartner,
                field,
                "must be sent once, under this one name (not with '_' for '-'), and not be \
                 named in Connection",
            )),
            PartnerRef::Unlisted(_) => Some(Refusal::unknown_partner(field)),
        }
    }
}

/// `<partner>:<reference>`, when it fits Klarna's `max` characters.
pub(crate) fn namespaced(partner: &PartnerId, reference: &str, max: usize) -> Option<String> {
    let id = partner.as_str();
    (id.len() + 1 + reference.chars().count() <= max).then(|| format!("{id}{SEPARATOR}{reference}"))
}

/// The partner named by a namespaced reference (`<partner>:…`), when it is a valid id.
pub(crate) fn of_reference(reference: &str) -> Option<&str> {
    let (id, _) = reference.split_once(SEPARATOR)?;
    is_valid_id(id.as_bytes()).then_some(id)
}

/// Compiles `[partners]`; every error names its key. Fills each entry with the values it
/// inherits, so that the effective configuration spells them out.
pub(crate) fn compile(
    c: &mut StepUpConfig,
    routes: &[super::routes::RoutePattern],
    p: &mut Problems,
) -> Option<Partners> {
    let cfg = &c.partners;
    if !cfg.enabled() {
        if !cfg.entries.is_empty() {
            p.add(
                "partners.entries",
                "needs partners.header or partners.path_param (how partners are identified)",
            );
        }
        return None;
    }
    let source = if !cfg.header.is_empty() && !cfg.path_param.is_empty() {
        p.add(
            "partners.path_param",
            "set partners.header or partners.path_param, not both",
        );
        return None;
    } else if !cfg.header.is_empty() {
        match HeaderName::try_from(cfg.header.as_str()) {
            Ok(h) => Source::Header(h),
            Err(_) => {
                p.add("partners.header", "must be a header name");
                return None;
            }
        }
    } else {
        for (i, r) in c.routes.iter().enumerate() {
            if routes.get(i).is_some_and(|r| !r.has_param(&cfg.path_param)) {
                p.add(
                    format!("routes[{i}].path"),
                    format!(
                        "must have the {{{}}} segment named by partners.path_param ({})",
                        cfg.path_param, r.path
                    ),
                );
            }
        }
        Source::PathParam(cfg.path_param.clone())
    };
    if cfg.entries.len() > u16::MAX as usize {
        p.add("partners.entries", "must list at most 65535 partners");
    }
    let global = &c.return_url_policy;
    let defaults = &c.defaults;
    let mut by_id = HashMap::new();
    let mut policies = Vec::new();
    let mut filled = Vec::new();
    for (i, e) in cfg.entries.iter().enumerate() {
        let key = format!("partners.entries[{i}]");
        if !is_valid_id(e.id.as_bytes()) {
            p.add(
                format!("{key}.id"),
                format!("must be 1 to {MAX_ID} ASCII letters, digits, '-', '_' or '.'"),
            );
        } else if by_id.insert(e.id.clone(), i as u16).is_some() {
            p.add(format!("{key}.id"), format!("repeats the partner {}", e.id));
        }
        let urls_config = ReturnUrlPolicyConfig {
            schemes: e.schemes.clone().unwrap_or_else(|| global.schemes.clone()),
            http_hosts: e
                .http_hosts
                .clone()
                .unwrap_or_else(|| global.http_hosts.clone()),
            allowed_hosts: e
                .allowed_hosts
                .clone()
                .unwrap_or_else(|| global.allowed_hosts.clone()),
            ..global.clone()
        };
        // The entry's own keys are checked under its name; inherited ones were checked
        // globally already.
        let mut own = Problems::default();
        let urls = ReturnUrlPolicy::new_at(&key, &urls_config, &mut own);
        for problem in own.0 {
            let field = problem
                .key
                .strip_prefix(key.as_str())
                .and_then(|k| k.strip_prefix('.'))
                .and_then(|k| k.split(['.', '[']).next())
                .unwrap_or("");
            let set = match field {
                "schemes" => e.schemes.is_some(),
                "http_hosts" => e.http_hosts.is_some(),
                "allowed_hosts" => e.allowed_hosts.is_some(),
                _ => false,
            };
            if set {
                p.0.push(problem);
            }
        }
        let policy = Policy {
            mode: e.mode.unwrap_or(c.mode),
            return_url: e.return_url.clone().or_else(|| defaults.return_url.clone()),
            app_return_url: e
                .app_return_url
                .clone()
                .or_else(|| defaults.app_return_url.clone()),
            interaction_expiry: e
                .interaction_expiry
                .clone()
                .or_else(|| defaults.interaction_expiry.clone()),
            urls,
        };
        // Defaults are checked against the partner's policy, inherited or not: a global
        // default outside the partner's hosts would be refused on every request.
        if let Some(url) = &policy.return_url {
            if let Err(why) = policy.urls.check_return_url(url) {
                p.add(format!("{key}.return_url"), why);
            }
        }
        if let Some(url) = &policy.app_return_url {
            if let Err(why) = policy.urls.check_app_return_url(url) {
                p.add(format!("{key}.app_return_url"), why);
            }
        }
        if let Some(d) = &e.interaction_expiry {
            if !iso_duration_secs(d).is_some_and(|s| (15 * 60..=48 * 3600).contains(&s)) {
                p.add(
                    format!("{key}.interaction_expiry"),
                    "must be an ISO 8601 duration between PT15M and PT48H, such as PT30M",
                );
            }
        }
        filled.push(PartnerEntry {
            id: e.id.clone(),
            allowed_hosts: Some(urls_config.allowed_hosts),
            schemes: Some(urls_config.schemes),
            http_hosts: Some(urls_config.http_hosts),
            return_url: policy.return_url.clone(),
            app_return_url: policy.app_return_url.clone(),
            interaction_expiry: policy.interaction_expiry.clone(),
            mode: Some(policy.mode),
        });
        policies.push(policy);
    }
    let partners = Partners {
        field: match &source {
            Source::Header(_) => cfg.header.clone(),
            Source::PathParam(p) => format!("{{{p}}}"),
        },
        source,
        unknown: cfg.unknown,
        by_id,
        policies,
    };
    c.partners.entries = filled;
    Some(partners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RequestVerdict, Route, StepUp, StepUpConfig};
    use http::{HeaderMap, HeaderValue, Method};

    const TWO: &str = r#"
        [return_url_policy]
        allowed_hosts = ["global.example"]
        [defaults]
        interaction_expiry = "PT30M"
        [partners]
        header = "X-Partner-Id"
        [[partners.entries]]
        id = "shop-a"
        allowed_hosts = ["a.example"]
        return_url = "https://a.example/back"
        interaction_expiry = "PT1H"
        [[partners.entries]]
        id = "shop-b"
        allowed_hosts = ["b.example"]
    "#;

    fn send(e: &StepUp, path: &str, partner: Option<&str>, body: &str) -> RequestVerdict {
        let mut h = HeaderMap::new();
        if let Some(p) = partner {
            h.insert("x-partner-id", HeaderValue::from_str(p).unwrap());
        }
        match e.classify(&Method::POST, &path.parse().unwrap(), &h) {
            Route::Candidate(c) => e.rewrite_request(c, body.as_bytes(), 0),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_partner_header_the_payment_api_could_read_otherwise_is_refused() {
        let e = StepUp::from_toml(TWO).unwrap();
        let body = r#"{"payment_method":"klarna","return_url":"https://a.example/r"}"#;
        for extra in [
            vec![("x-partner-id", "shop-b")],
            vec![("x_partner_id", "shop-b")],
            vec![("X_Partner-Id", "shop-a")],
            vec![("connection", "X-Partner-Id")],
            vec![("connection", "keep-alive, x_partner_id")],
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-partner-id", HeaderValue::from_static("shop-a"));
            for (k, v) in &extra {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_static(v),
                );
            }
            let Route::Candidate(c) = e.classify(&Method::POST, &"/payments".parse().unwrap(), &h)
            else {
                panic!("{extra:?}")
            };
            let r = refused(e.rewrite_request(c, body.as_bytes(), 0));
            assert_eq!(r.code().as_str(), "invalid_partner", "{extra:?}");
            assert!(r.message().contains("once"), "{}", r.message());
        }
        // Alone under the other spelling, too: Rack would read it, Go would not.
        let mut h = HeaderMap::new();
        h.insert("x_partner_id", HeaderValue::from_static("shop-a"));
        let Route::Candidate(c) = e.classify(&Method::POST, &"/payments".parse().unwrap(), &h)
        else {
            panic!()
        };
        assert_eq!(
            refused(e.rewrite_request(c, body.as_bytes(), 0))
                .code()
                .as_str(),
            "invalid_partner"
        );
    }

    fn injected(v: RequestVerdict) -> (String, crate::Exchange) {
        match v {
            RequestVerdict::Injected { body, exchange } => {
                (String::from_utf8(body).unwrap(), exchange)
            }
            other => panic!("{other:?}"),
        }
    }

    fn refused(v: RequestVerdict) -> crate::Refusal {
        match v {
            RequestVerdict::Refused(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_partner_has_its_policy_and_its_namespace() {
        let e = StepUp::from_toml(TWO).unwrap();
        let body = |url: &str| {
            format!(r#"{{"payment_method":"klarna","reference":"order-1","return_url":"{url}"}}"#)
        };
        let (a, ex) = injected(send(
            &e,
            "/payments",
            Some("shop-a"),
            &body("https://a.example/r"),
        ));
        assert_eq!(ex.reference(), "shop-a:order-1");
        assert!(
            a.contains(r#""payment_request_reference":"shop-a:order-1""#),
            "{a}"
        );
        assert!(a.contains(r#""duration":"PT1H""#), "{a}");
        let (b, ex) = injected(send(
            &e,
            "/payments",
            Some("shop-b"),
            &body("https://b.example/r"),
        ));
        assert_eq!(ex.reference(), "shop-b:order-1");
        // shop-b inherits the global expiry.
        assert!(b.contains(r#""duration":"PT30M""#), "{b}");
        // Each its own allow-list: neither takes the other's host, nor the global one.
        for (p, url) in [
            ("shop-a", "https://b.example/r"),
            ("shop-b", "https://a.example/r"),
            ("shop-a", "https://global.example/r"),
        ] {
            let r = refused(send(&e, "/payments", Some(p), &body(url)));
            assert_eq!(
                (r.status().as_u16(), r.code().as_str()),
                (400, "invalid_return_url"),
                "{p}"
            );
        }
        // shop-a's own default return URL.
        let (_, ex) = injected(send(
            &e,
            "/payments",
            Some("shop-a"),
            r#"{"payment_method":"klarna"}"#,
        ));
        assert_eq!(ex.return_url(), "https://a.example/back");
        // Derived references are namespaced too.
        assert!(
            ex.reference().starts_with("shop-a:req-"),
            "{}",
            ex.reference()
        );
    }

    #[test]
    fn missing_malformed_and_unknown_partners_are_refused() {
        let e = StepUp::from_toml(TWO).unwrap();
        let body = r#"{"payment_method":"klarna","return_url":"https://global.example/r"}"#;
        for (partner, status, code) in [
            (None, 400, "invalid_partner"),
            (Some(""), 400, "invalid_partner"),
            (Some("shop a"), 400, "invalid_partner"),
            (Some("shop:a"), 400, "invalid_partner"),
            (Some("shop-c"), 403, "unknown_partner"),
        ] {
            let r = refused(send(&e, "/payments", partner, body));
            assert_eq!(
                (r.status().as_u16(), r.code().as_str()),
                (status, code),
                "{partner:?}"
            );
            assert_eq!(r.param(), Some("X-Partner-Id"));
        }
        // Two values of the header: refused, whichever the payment API would read.
        let mut h = HeaderMap::new();
        h.append("x-partner-id", HeaderValue::from_static("shop-a"));
        h.append("x-partner-id", HeaderValue::from_static("shop-b"));
        let Route::Candidate(c) = e.classify(&Method::POST, &"/payments".parse().unwrap(), &h)
        else {
            panic!()
        };
        assert_eq!(
            refused(e.rewrite_request(c, body.as_bytes(), 0))
                .code()
                .as_str(),
            "invalid_partner"
        );
        // unknown = "global": the global policy, still namespaced.
        let e = StepUp::from_toml(&TWO.replace(
            "header = \"X-Partner-Id\"",
            "header = \"X-Partner-Id\"\nunknown = \"global\"",
        ))
        .unwrap();
        let (_, ex) = injected(send(&e, "/payments", Some("shop-c"), body));
        assert!(ex.reference().starts_with("shop-c:req-"));
    }

    #[test]
    fn a_reference_too_long_with_its_prefix_is_refused_and_a_callers_is_namespaced() {
        let e = StepUp::from_toml(TWO).unwrap();
        let long = "r".repeat(250);
        let r = refused(send(
            &e,
            "/payments",
            Some("shop-b"),
            &format!(
                r#"{{"payment_method":"klarna","reference":"{long}","return_url":"https://b.example/r"}}"#
            ),
        ));
        assert_eq!(
            (r.code().as_str(), r.param()),
            ("invalid_reference", Some("reference"))
        );
        let (b, ex) = injected(send(
            &e,
            "/payments",
            Some("shop-b"),
            r#"{"payment_method":"klarna","return_url":"https://b.example/r","step_up_config":{"payment_request_reference":"own"}}"#,
        ));
        assert_eq!(ex.reference(), "shop-b:own");
        assert!(
            b.contains(r#"{"payment_request_reference":"shop-b:own","#),
            "{b}"
        );
    }

    #[test]
    fn the_partner_can_be_a_route_parameter() {
        let e = StepUp::from_toml(
            r#"
            [[routes]]
            method = "POST"
            path = "/partners/{partner}/payments"
            [partners]
            path_param = "partner"
            unknown = "global"
            "#,
        )
        .unwrap();
        let body =
            r#"{"payment_method":"klarna","reference":"o","return_url":"https://x.example/r"}"#;
        let (_, ex) = injected(send(&e, "/partners/shop-a/payments", None, body));
        assert_eq!(ex.reference(), "shop-a:o");
        let r = refused(send(&e, "/partners/shop%20a/payments", None, body));
        assert_eq!(
            (r.code().as_str(), r.param()),
            ("invalid_partner", Some("{partner}"))
        );
    }

    #[test]
    fn returns_and_webhooks_name_the_partner() {
        let toml = format!(
            "{TWO}\n[acquirer_return]\nenabled = true\npublic_base_url = \"https://global.example\"\n\
             keys = [{{ id = \"k1\", env = \"R\" }}]\nnotify_path = \"/returns\"\n\
             [webhooks]\nenabled = true\nkeys = [{{ id = \"w\", env = \"W\" }}]\n"
        );
        let config = StepUpConfig::from_toml(&toml).unwrap();
        let e = StepUp::with_secrets(config, |_| Some("k".repeat(32))).unwrap();
        let body = r#"{"payment_method":"klarna","reference":"o-1"}"#;
        let (sent, ex) = injected(send(&e, "/payments", Some("shop-a"), body));
        assert_eq!(ex.reference(), "shop-a:o-1");
        let start = sent.find("https://global.example/").unwrap();
        let url = &sent[start..start + sent[start..].find('"').unwrap()];
        let back = url
            .replace("{klarna.payment_request.id}", "pr-1")
            .replace("{klarna.payment_request.state}", "COMPLETED");
        let path = &back["https://global.example".len()..];
        let redirect = e.resolve_return(&path.parse().unwrap(), 0).unwrap();
        assert_eq!(redirect.partner.as_deref(), Some("shop-a"));
        assert_eq!(redirect.reference, "shop-a:o-1");
        assert_eq!(redirect.location, "https://a.example/back");
        let note: serde_json::Value = serde_json::from_slice(&redirect.notification()).unwrap();
        assert_eq!(note["partner"], "shop-a");
        assert_eq!(note["payment_request_reference"], "shop-a:o-1");

        let hook = br#"{"metadata":{"event_id":"e"},"payload":{"payment_request_reference":"shop-b:o-1","state":"COMPLETED"}}"#;
        let mut h = HeaderMap::new();
        h.insert("klarna-signing-key-id", HeaderValue::from_static("w"));
        let sig = {
            use hmac::{Hmac, Mac};
            let mut m = Hmac::<sha2::Sha256>::new_from_slice("k".repeat(32).as_bytes()).unwrap();
            m.update(hook);
            hex::encode(m.finalize().into_bytes())
        };
        h.insert("klarna-signature", HeaderValue::from_str(&sig).unwrap());
        let event = e.verify_webhook(&h, hook).unwrap();
        assert_eq!(event.partner.as_deref(), Some("shop-b"));
        assert!(event
            .relay_headers()
            .iter()
            .any(|(n, v)| n == "x-klarna-stepup-partner" && v == "shop-b"));
    }

    #[test]
    fn a_token_minted_before_partners_were_on_still_resolves() {
        let ret =
            "[acquirer_return]\nenabled = true\npublic_base_url = \"https://global.example\"\n\
                   keys = [{ id = \"k1\", env = \"R\" }]\n";
        let build = |toml: &str| {
            let config = StepUpConfig::from_toml(toml).unwrap();
            StepUp::with_secrets(config, |_| Some("k".repeat(32))).unwrap()
        };
        let before = build(&format!(
            "{ret}[defaults]\nreturn_url = \"https://a.example/back\"\n"
        ));
        let after = build(&format!("{TWO}\n{ret}"));
        let (sent, _) = injected(send(
            &before,
            "/payments",
            None,
            r#"{"payment_method":"klarna","reference":"o-1"}"#,
        ));
        let start = sent.find("https://global.example/").unwrap();
        let url = &sent[start..start + sent[start..].find('"').unwrap()];
        let path = url["https://global.example".len()..]
            .replace("{klarna.payment_request.id}", "pr-1")
            .replace("{klarna.payment_request.state}", "COMPLETED");
        let redirect = after.resolve_return(&path.parse().unwrap(), 0).unwrap();
        assert_eq!(redirect.partner, None);
        assert_eq!(redirect.reference, "o-1");
        assert_eq!(redirect.location, "https://a.example/back");
        assert!(!String::from_utf8(redirect.notification())
            .unwrap()
            .contains("partner"));
    }

    #[test]
    fn the_partner_table_is_validated_by_key_and_printed_in_full() {
        let err = StepUp::from_toml(
            r#"
            [[routes]]
            method = "POST"
            path = "/payments"
            [return_url_policy]
            allowed_hosts = ["global.example"]
            [partners]
            path_param = "partner"
            [[partners.entries]]
            id = "a b"
            [[partners.entries]]
            id = "ok"
            allowed_hosts = ["good.example", "*"]
            schemes = ["ftp"]
            return_url = "https://elsewhere.example/r"
            interaction_expiry = "PT1M"
            [[partners.entries]]
            id = "ok"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "routes[0].path",
                "partners.entries[0].id",
                "partners.entries[1].schemes[0]",
                "partners.entries[1].allowed_hosts[1]",
                "partners.entries[1].return_url",
                "partners.entries[1].interaction_expiry",
                "partners.entries[2].id",
            ],
            "{err}"
        );
        assert!(err.0[0].location.is_some(), "{err}");
        let e = StepUp::from_toml(TWO).unwrap();
        let b = &e.config().partners.entries[1];
        assert_eq!(
            b.allowed_hosts.as_deref(),
            Some(&["b.example".to_owned()][..])
        );
        assert_eq!(b.schemes.as_deref(), Some(&["https".to_owned()][..]));
        assert_eq!(b.interaction_expiry.as_deref(), Some("PT30M"));
        let both = StepUp::from_toml("[partners]\nheader = \"X-P\"\npath_param = \"p\"\n");
        assert_eq!(both.unwrap_err().0[0].key, "partners.path_param");
        let _ = StepUpConfig::default();
    }

    #[test]
    fn ids_are_bounded_and_safe() {
        for good in ["a", "shop-a", "Shop_1.eu", &"x".repeat(64)] {
            assert!(PartnerId::parse(good.as_bytes()).is_some(), "{good}");
        }
        for bad in ["", "a:b", "a b", "a/b", "é", "a%20", &"x".repeat(65)] {
            assert!(PartnerId::parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let id = PartnerId::parse(b"shop-a").unwrap();
        assert_eq!(id.as_str(), "shop-a");
        assert_eq!(
            namespaced(&id, "order-1", 255).as_deref(),
            Some("shop-a:order-1")
        );
        assert_eq!(
            namespaced(&id, &"r".repeat(248), 255),
            Some(format!("shop-a:{}", "r".repeat(248)))
        );
        assert_eq!(namespaced(&id, &"r".repeat(249), 255), None);
        assert_eq!(of_reference("shop-a:order:1"), Some("shop-a"));
        assert_eq!(of_reference("order-1"), None);
        assert_eq!(of_reference("a b:c"), None);
    }
}
