//! Compiling a [`StepUpConfig`] into the engine: every check, every error named by its key,
//! done once at start.

use super::acquirer_return::ReturnEndpoint;
use super::return_url::{PurchaseJourney, ReturnUrlPolicy};
use super::routes::RoutePattern;
use super::webhook::Webhooks;
use super::Engine;
use crate::config::{ConfigErrors, Placement, Problems, StepUpConfig};

/// The checks below that read keys besides their own, as
/// [`checkable`](crate::config::read::checkable) takes them: the key (or table) of an error,
/// and the keys (or tables) its check reads too. When one of those has a wrong value (read
/// as its default), such an error is not reported.
pub(crate) const CROSS_KEY_CHECKS: &[(&str, &[&str])] = &[
    ("inject_at", &["partner_fields.strip"]),
    ("partner_fields.strip", &["partner_fields.strip"]),
    ("defaults.return_url", &["return_url_policy"]),
    ("defaults.app_return_url", &["return_url_policy"]),
    ("partner_response.placement", &["klarna_answer_at"]),
    (
        "acquirer_return",
        &["return_url_policy", "acquirer_redirect", "partner_response"],
    ),
    (
        "acquirer_redirect",
        &["acquirer_return", "partner_response.redirect_url"],
    ),
    ("webhooks.relay_path", &["webhooks.path"]),
    ("routes", &["partners"]),
    (
        "partners",
        &["partners", "routes", "return_url_policy", "defaults"],
    ),
];

/// Validates `c` into an engine; secret keys are read through `secret(env_var_name)`.
pub(super) fn compile(
    mut c: StepUpConfig,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<Engine, ConfigErrors> {
    let mut p = Problems::default();
    if c.body_limit == 0 {
        p.add("body_limit", "must be at least 1 byte");
    }
    let routes = &c.routes;
    if routes.is_empty() || routes.len() > u16::MAX as usize {
        p.add("routes", "must list between 1 and 65535 routes");
    }
    let routes: Vec<RoutePattern> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            RoutePattern::parse(&r.method, &r.path, &format!("routes[{i}]"), &mut p)
        })
        .collect();
    let inject_at = dot_path("inject_at", &c.inject_at, &mut p);
    let answer_at = dot_path("klarna_answer_at", &c.klarna_answer_at, &mut p);
    if let Some(first) = inject_at.first() {
        if c.partner_fields
            .strip
            .iter()
            .any(|s| s.split('.').next() == Some(first.as_str()))
        {
            p.add(
                "inject_at",
                "must not start with a field listed in partner_fields.strip",
            );
        }
    }
    for (key, list) in [
        ("partner_fields.return_url", &c.partner_fields.return_url),
        (
            "partner_fields.app_return_url",
            &c.partner_fields.app_return_url,
        ),
        ("partner_fields.reference", &c.partner_fields.reference),
        ("partner_fields.strip", &c.partner_fields.strip),
        ("detect.payment_method_at", &c.detect.payment_method_at),
    ] {
        for (i, path) in list.iter().enumerate() {
            if path.split('.').any(str::is_empty) {
                p.add(
                    format!("{key}[{i}]"),
                    "must be a field name or a dot path of them (no empty segment)",
                );
            }
        }
    }
    // Stripped fields are removed by their parent object: none may sit inside another.
    for (i, a) in c.partner_fields.strip.iter().enumerate() {
        if c.partner_fields
            .strip
            .iter()
            .any(|b| a.starts_with(&format!("{b}.")))
        {
            p.add(
                format!("partner_fields.strip[{i}]"),
                "lies inside another stripped field",
            );
        }
    }
    let idempotency_header = match c.partner_fields.idempotency_header.as_str() {
        "" => None,
        name => match http::HeaderName::try_from(name) {
            Ok(h) => Some(h),
            Err(_) => {
                p.add(
                    "partner_fields.idempotency_header",
                    "must be a header name, or empty",
                );
                None
            }
        },
    };
    let policy = ReturnUrlPolicy::new(&c.return_url_policy, &mut p);
    let journey = PurchaseJourney::new(&c.klarna, &mut p);
    if let Some(url) = &c.defaults.return_url {
        if let Err(why) = policy.check_return_url(url) {
            p.add("defaults.return_url", why);
        }
    }
    if let Some(url) = &c.defaults.app_return_url {
        if let Err(why) = policy.check_app_return_url(url) {
            p.add("defaults.app_return_url", why);
        }
    }
    if let Some(d) = &c.defaults.interaction_expiry {
        match iso_duration_secs(d) {
            Some(s) if (15 * 60..=48 * 3600).contains(&s) => {}
            Some(_) => p.add(
                "defaults.interaction_expiry",
                "must be between PT15M and PT48H",
            ),
            None => p.add(
                "defaults.interaction_expiry",
                "must be an ISO 8601 duration such as PT30M",
            ),
        }
    }
    let words = &c.partner_response;
    for (key, w) in [
        ("pending", &words.pending),
        ("authorized", &words.authorized),
        ("declined", &words.declined),
    ] {
        if w.is_empty() {
            p.add(format!("partner_response.{key}"), "must not be empty");
        }
    }
    let redirect_template = TemplatePart::parse(&words.redirect_url, &mut p);
    if words.placement == Placement::TopLevel && answer_at.is_empty() {
        p.add(
            "partner_response.placement",
            "\"top_level\" needs klarna_answer_at (the place of Klarna's answer to remove)",
        );
    }
    let expiry = c
        .defaults
        .interaction_expiry
        .as_deref()
        .and_then(iso_duration_secs);
    let acquirer_return = acquirer_return(&c, &policy, expiry, secret, &mut p);
    if c.acquirer_redirect.enabled && !c.acquirer_return.enabled {
        p.add(
            "acquirer_redirect.enabled",
            "needs [acquirer_return] on: its public_base_url and keys sign the redirect",
        );
    }
    let webhooks = webhooks(&c, secret, &mut p);
    let partners = if routes.len() == c.routes.len() {
        super::partners::compile(&mut c, &routes, &mut p)
    } else {
        // A route that did not parse: its error is reported; the partner checks of routes
        // would be off by one.
        super::partners::compile(&mut c, &[], &mut p)
    };
    if !p.0.is_empty() {
        return Err(ConfigErrors(p.0));
    }
    let mut warnings = Problems::default();
    if c.acquirer_return.enabled && !c.webhooks.enabled {
        warnings.add(
            "webhooks.enabled",
            "the acquirer return is on and webhooks are off: a return can be lost (app \
             switches, closed tabs) and anyone who knows the URL can make one, so Klarna's \
             step-up guide calls webhooks mandatory",
        );
    }
    if c.acquirer_return.enabled {
        // A default return URL that asks for the session token puts it in the customer's
        // browser (history, referrers, logs); the payment API gets it in the notification.
        let defaults = std::iter::once(("defaults.return_url".to_owned(), &c.defaults.return_url))
            .chain(
                c.partners
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (format!("partners.entries[{i}].return_url"), &e.return_url)),
            );
        for (key, url) in defaults {
            if url
                .as_deref()
                .is_some_and(super::acquirer_return::asks_for_token)
            {
                warnings.add(
                    key,
                    "asks for the Klarna network session token: the customer's browser will                      carry it to this URL; the payment API gets it in the return                      notification (acquirer_return.notify_path) without it",
                );
            }
        }
    }
    for (i, e) in c.partners.entries.iter().enumerate() {
        if e.allowed_hosts.as_ref().is_some_and(Vec::is_empty) {
            warnings.add(
                format!("partners.entries[{i}].allowed_hosts"),
                format!(
                    "empty: any https host will be accepted as a return URL of partner {} \
                     (list its hosts)",
                    e.id
                ),
            );
        }
    }
    let internal_paths = (webhooks.as_ref().map(|w| w.relay_path.as_str()).into_iter())
        .chain(
            acquirer_return
                .as_ref()
                .and_then(|r| r.notify_path.as_deref()),
        )
        .map(|p| super::routes::canonical(p.as_bytes()).into_owned())
        .collect();
    Ok(Engine {
        internal_paths,
        routes,
        inject_at,
        answer_at,
        policy,
        journey,
        redirect_template,
        acquirer_return,
        webhooks,
        idempotency_header,
        partners,
        warnings: warnings.0,
        config: c,
    })
}

/// Keys named by `keys`, read through `secret`; `min` is the shortest key accepted.
fn keys(
    section: &str,
    list: &[crate::config::KeyConfig],
    min: usize,
    secret: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Vec<(String, Vec<u8>)> {
    if list.is_empty() {
        p.add(format!("{section}.keys"), "must name at least one key");
    }
    let mut out = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let key = format!("{section}.keys[{i}]");
        if k.id.is_empty() || k.id.len() > 64 || !k.id.bytes().all(|b| b.is_ascii_graphic()) {
            p.add(
                format!("{key}.id"),
                "must be 1 to 64 visible ASCII characters",
            );
        }
        match secret(&k.env) {
            None => p.add(
                format!("{key}.env"),
                format!("the environment variable {} is not set", k.env),
            ),
            Some(v) if v.len() < min => p.add(
                format!("{key}.env"),
                format!("the key in {} is shorter than {min} bytes", k.env),
            ),
            Some(v) => out.push((k.id.clone(), v.into_bytes())),
        }
    }
    out
}

fn acquirer_return(
    c: &StepUpConfig,
    policy: &ReturnUrlPolicy,
    expiry: Option<u64>,
    secret: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<ReturnEndpoint> {
    let r = &c.acquirer_return;
    if !r.enabled {
        return None;
    }
    let base = r.public_base_url.trim_end_matches('/');
    match policy.check_return_url(base) {
        Err(why) => p.add("acquirer_return.public_base_url", why),
        Ok(()) if base.contains(['?', '#']) => p.add(
            "acquirer_return.public_base_url",
            "must have no query or fragment",
        ),
        Ok(()) => {}
    }
    if !r.path.starts_with('/') || r.path.ends_with('/') || r.path.contains(['?', '#', '{']) {
        p.add(
            "acquirer_return.path",
            "must be a path starting with / and not ending with /",
        );
    }
    if r.notify_path
        .as_deref()
        .is_some_and(|n| !n.starts_with('/'))
    {
        p.add(
            "acquirer_return.notify_path",
            "must be a path starting with /",
        );
    }
    let redirect = &c.acquirer_redirect;
    let pay_path = redirect.enabled.then(|| redirect.path.clone());
    if let Some(path) = &pay_path {
        if !path.starts_with('/') || path.ends_with('/') || path.contains(['?', '#', '{']) {
            p.add(
                "acquirer_redirect.path",
                "must be a path starting with / and not ending with /",
            );
        } else if path.starts_with(&format!("{}/", r.path))
            || r.path.starts_with(&format!("{path}/"))
            || *path == r.path
        {
            p.add(
                "acquirer_redirect.path",
                "must not overlap acquirer_return.path",
            );
        }
        if c.partner_response.redirect_url != "{payment_request_url}" {
            p.add(
                "acquirer_redirect.enabled",
                "partner_response.redirect_url is set too: the layer's redirect replaces it",
            );
        }
    }
    if !(1..=7 * 86_400).contains(&r.token_expiry_bucket_secs) {
        p.add(
            "acquirer_return.token_expiry_bucket_secs",
            "must be between 1 and 604800 (7 days)",
        );
    }
    let keys = keys("acquirer_return", &r.keys, 32, secret, p);
    if keys.is_empty() {
        return None;
    }
    // Klarna's default Payment Request lifetime is 3 hours.
    Some(ReturnEndpoint {
        base: base.to_owned(),
        path: r.path.clone(),
        keys,
        default_request_secs: expiry.unwrap_or(3 * 3600),
        margin_secs: r.token_margin_secs,
        extra_placeholders: policy.extra_placeholders.clone(),
        bucket_secs: r.token_expiry_bucket_secs.max(1),
        notify_path: r.notify_path.clone(),
        notify_timeout_ms: r.notify_timeout_ms,
        pay_path,
    })
}

fn webhooks(
    c: &StepUpConfig,
    secret: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> Option<Webhooks> {
    let w = &c.webhooks;
    if !w.enabled {
        return None;
    }
    for (key, path) in [
        ("webhooks.path", &w.path),
        ("webhooks.relay_path", &w.relay_path),
    ] {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            p.add(key, "must be a path starting with /");
        }
    }
    if w.path == w.relay_path {
        p.add("webhooks.relay_path", "must differ from webhooks.path");
    }
    if w.body_limit == 0 {
        p.add("webhooks.body_limit", "must be at least 1 byte");
    }
    if w.relay_timeout_ms == 0 {
        p.add("webhooks.relay_timeout_ms", "must be at least 1 ms");
    }
    let keys = keys("webhooks", &w.keys, 1, secret, p);
    Some(Webhooks {
        path: w.path.clone(),
        relay_path: w.relay_path.clone(),
        keys,
        body_limit: w.body_limit,
    })
}

fn dot_path(key: &str, path: &str, p: &mut Problems) -> Vec<String> {
    if path.is_empty() {
        return Vec::new();
    }
    let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
    if segs.iter().any(String::is_empty) {
        p.add(
            key,
            "must be empty or dot-separated field names, e.g. payment.klarna",
        );
    }
    segs
}

/// Seconds in an ISO 8601 duration of days, hours, minutes and seconds (`P1D`, `PT15M`).
pub(super) fn iso_duration_secs(s: &str) -> Option<u64> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    if rest.is_empty() || rest.ends_with('T') {
        return None;
    }
    let mut total = 0u64;
    for (part, units) in [
        (date, &[('D', 86_400u64)][..]),
        (time, &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut rest = part;
        let mut last = 0;
        while !rest.is_empty() {
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            let n: u64 = rest[..end].parse().ok()?;
            let unit = rest[end..].chars().next()?;
            let pos = units.iter().position(|(u, _)| *u == unit)?;
            if pos < last {
                return None;
            }
            last = pos + 1;
            total = total.checked_add(n.checked_mul(units[pos].1)?)?;
            rest = &rest[end + 1..];
        }
    }
    Some(total)
}

/// A piece of the partner `redirect_url` template.
#[derive(Debug)]
pub(super) enum TemplatePart {
    Literal(String),
    Url,
    Id,
    Reference,
}

impl TemplatePart {
    pub(super) fn parse(t: &str, p: &mut Problems) -> Vec<TemplatePart> {
        const KEY: &str = "partner_response.redirect_url";
        if !(t.starts_with("{payment_request_url}")
            || t.starts_with("https://")
            || t.starts_with("http://"))
        {
            p.add(KEY, "must start with https:// or {payment_request_url}");
        }
        let mut parts = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                p.add(KEY, "has an unbalanced {");
                return parts;
            };
            parts.push(match &rest[open..open + close + 1] {
                "{payment_request_url}" => TemplatePart::Url,
                "{payment_request_id}" => TemplatePart::Id,
                "{payment_request_reference}" => TemplatePart::Reference,
                other => {
                    p.add(KEY, format!("has an unknown placeholder {other}"));
                    TemplatePart::Literal(String::new())
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Literal(rest.to_owned()));
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration_secs("PT15M"), Some(900));
        assert_eq!(iso_duration_secs("PT48H"), Some(172_800));
        assert_eq!(
            iso_duration_secs("P1DT1H30M5S"),
            Some(86_400 + 3600 + 1800 + 5)
        );
        for bad in [
            "", "P", "PT", "15M", "PT15", "PTM", "PT1M1H", "P1H", "PT-1M",
        ] {
            assert_eq!(iso_duration_secs(bad), None, "{bad}");
        }
    }
}
