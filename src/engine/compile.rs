//! Compiling a [`StepUpConfig`] into the engine: every check, every error named by its key,
//! done once at start.

use super::acquirer_return::ReturnEndpoint;
use super::partner_block::{BlockKeys, HttpStatus};
use super::return_url::{PurchaseJourney, ReturnUrlPolicy};
use super::routes::RoutePattern;
use super::webhook::Webhooks;
use super::Engine;
use crate::config::{
    ConfigErrors, HttpStatusConfig, PartnerResponseConfig, Placement, Problems, StepUpConfig,
};

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
        "partner_response.keys",
        &["partner_response.keys", "partner_response.key_style"],
    ),
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
            // A proxy never forwards it: the key would not reach the payment API, and every
            // request naming it in `Connection` (`Connection: keep-alive`) would be refused.
            Ok(h) if super::head::is_hop_by_hop(&h) => {
                p.add(
                    "partner_fields.idempotency_header",
                    "must not be a hop-by-hop header (Connection, Keep-Alive, TE, Trailer, \
                     Transfer-Encoding, Upgrade, HTTP2-Settings, Proxy-*)",
                );
                None
            }
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
    let block_keys = block_keys(&mut c.partner_response, &mut p);
    let http_status = http_status(&c.partner_response.http_status, &mut p);
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
        top_level_reads: super::request::top_level_reads(&c, &inject_at),
        inject_at,
        answer_at,
        policy,
        journey,
        redirect_template,
        block_keys,
        http_status,
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

/// The partner block's key names (`partner_response.keys`, else `key_style`), each checked,
/// written back into the configuration so that it names every key.
fn block_keys(c: &mut PartnerResponseConfig, p: &mut Problems) -> BlockKeys {
    for (guide, name) in c.keys.entries() {
        if let Some(name) = name {
            if !(1..=64).contains(&name.len()) || !name.bytes().all(|b| b.is_ascii_graphic()) {
                p.add(
                    format!("partner_response.keys.{guide}"),
                    "must be 1 to 64 visible ASCII characters",
                );
            }
        }
    }
    let configured: Vec<bool> = c.keys.entries().iter().map(|(_, n)| n.is_some()).collect();
    c.keys.resolve(c.key_style);
    let entries = c.keys.entries();
    let names: Vec<(&str, &str)> = entries
        .iter()
        .map(|(guide, name)| (*guide, name.as_deref().unwrap_or(guide)))
        .collect();
    // One object must not have two members a partner may read as one: the top level
    // (`status`, `redirect_url`, `klarna`) and the `klarna` object, compared in any case
    // (a Go partner reads `Status` as `status`).
    for group in [0..3, 3..names.len()] {
        for j in group.clone() {
            for i in group.start..j {
                if !names[i].1.eq_ignore_ascii_case(names[j].1) {
                    continue;
                }
                // Named where the configuration set it (the other may be key_style's).
                let (at, other) = if configured[j] { (j, i) } else { (i, j) };
                p.add(
                    format!("partner_response.keys.{}", names[at].0),
                    format!(
                        "{:?} is also the name of partner_response.keys.{} ({:?}): one object \
                         of the block would have two members a partner may read as one \
                         (compared in any case)",
                        names[at].1, names[other].0, names[other].1
                    ),
                );
            }
        }
    }
    let name = |i: usize| names[i].1.to_owned();
    BlockKeys {
        status: name(0),
        redirect_url: name(1),
        klarna: name(2),
        payment_request_id: name(3),
        payment_request_url: name(4),
        payment_request_data: name(5),
        expires_at: name(6),
        klarna_network_response_data: name(7),
        result_reason: name(8),
    }
}

/// The HTTP status of each rewritten answer (`partner_response.http_status`): a 2xx that
/// carries a body or a 4xx. A redirect needs a `Location`, a 5xx says the service failed (a
/// partner may retry it, or alert), and 204, 205 and 206 cannot carry the block.
fn http_status(c: &HttpStatusConfig, p: &mut Problems) -> HttpStatus {
    let mut check = |key: &str, code: Option<u16>| {
        let code = code?;
        let fits = matches!(code, 200..=203 | 207..=299 | 400..=499);
        match http::StatusCode::from_u16(code) {
            Ok(status) if fits => Some(status),
            _ => {
                p.add(
                    format!("partner_response.http_status.{key}"),
                    "must be a 2xx that carries a body (not 204, 205 or 206) or a 4xx",
                );
                None
            }
        }
    };
    HttpStatus {
        step_up_required: check("step_up_required", c.step_up_required),
        approved: check("approved", c.approved),
        declined: check("declined", c.declined),
    }
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
    use crate::StepUp;

    /// Every error of `toml` as `key: reason`.
    fn errors(toml: &str) -> Vec<(String, String)> {
        StepUp::from_toml(toml)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.key, e.reason))
            .collect()
    }

    #[test]
    fn block_key_names_are_checked_by_key() {
        let errs = errors(
            r#"
            [partner_response.keys]
            redirect_url = ""
            klarna = "klarna block"
            payment_request_id = "x\ty"
            expires_at = "é"
            result_reason = "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"
            "#,
        );
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "partner_response.keys.redirect_url",
                "partner_response.keys.klarna",
                "partner_response.keys.payment_request_id",
                "partner_response.keys.expires_at",
                "partner_response.keys.result_reason",
            ],
            "{errs:?}"
        );
        assert!(errs
            .iter()
            .all(|(_, r)| r == "must be 1 to 64 visible ASCII characters"));
    }

    #[test]
    fn an_unknown_block_key_is_named_with_its_place() {
        let text = "[partner_response]
key_style = \"camelCase\"
\
                    keys = { redirct_url = \"stepUpUrl\" }
";
        let err = StepUp::from_toml(text).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key, "partner_response.keys.redirct_url");
        assert_eq!(err.0[0].location, Some((3, 10)));
        let reason = &err.0[0].reason;
        assert!(
            reason.starts_with("unknown field `redirct_url`"),
            "{reason}"
        );
        assert!(
            reason.contains("`redirect_url`"),
            "names the keys: {reason}"
        );

        let err = StepUp::from_toml(
            "[partner_response]
key_style = \"kebab-case\"
",
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "partner_response.key_style");
        assert!(err.0[0].reason.contains("camelCase"), "{err}");
    }

    #[test]
    fn two_members_of_one_object_under_one_name_are_refused() {
        // The top level: configured against configured, in any case.
        assert_eq!(
            errors(
                "[partner_response.keys]
status = \"state\"
klarna = \"State\"
"
            ),
            [(
                "partner_response.keys.klarna".to_owned(),
                "\"State\" is also the name of partner_response.keys.status (\"state\"): one \
                 object of the block would have two members a partner may read as one \
                 (compared in any case)"
                    .to_owned()
            )]
        );
        // Against a name key_style gave: the error is where the configuration set one,
        // even when that key comes first.
        let errs = errors(
            "[partner_response]
key_style = \"camelCase\"
\
             keys = { payment_request_id = \"expiresAt\", status = \"redirectUrl\" }
",
        );
        let keys: Vec<&str> = errs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "partner_response.keys.status",
                "partner_response.keys.payment_request_id",
            ],
            "{errs:?}"
        );
        assert!(
            errs[1]
                .1
                .contains("partner_response.keys.expires_at (\"expiresAt\")"),
            "{errs:?}"
        );
        // Members of different objects may share a name.
        StepUp::from_toml(
            "[partner_response.keys]
status = \"result_reason\"
",
        )
        .unwrap();
    }

    #[test]
    fn the_effective_configuration_names_every_block_key() {
        let step_up = StepUp::from_toml(
            "[partner_response]
key_style = \"camelCase\"
keys = { redirect_url = \"stepUpUrl\" }
",
        )
        .unwrap();
        let keys = &step_up.config().partner_response.keys;
        let named: Vec<(&str, &str)> = keys
            .entries()
            .iter()
            .map(|(g, n)| (*g, n.as_deref().unwrap()))
            .collect();
        assert_eq!(
            named,
            [
                ("status", "status"),
                ("redirect_url", "stepUpUrl"),
                ("klarna", "klarna"),
                ("payment_request_id", "paymentRequestId"),
                ("payment_request_url", "paymentRequestUrl"),
                ("payment_request_data", "paymentRequestData"),
                ("expires_at", "expiresAt"),
                ("klarna_network_response_data", "klarnaNetworkResponseData"),
                ("result_reason", "resultReason"),
            ]
        );
        // Read back, the spelled-out configuration is the same.
        let again =
            crate::StepUpConfig::from_toml(&toml::to_string(step_up.config()).unwrap()).unwrap();
        assert_eq!(StepUp::new(again).unwrap().config(), step_up.config());
        // The default names every key by the guide's name.
        let default = StepUp::from_toml("").unwrap();
        for (guide, name) in default.config().partner_response.keys.entries() {
            assert_eq!(name.as_deref(), Some(guide));
        }
    }

    #[test]
    fn http_statuses_are_a_2xx_with_a_body_or_a_4xx() {
        for ok in [200, 201, 202, 207, 400, 402, 403, 409, 422, 499] {
            let toml = format!(
                "[partner_response.http_status]
step_up_required = {ok}
"
            );
            let s = StepUp::from_toml(&toml).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(
                s.inner.http_status.step_up_required.map(|s| s.as_u16()),
                Some(ok)
            );
        }
        for bad in [0, 99, 100, 101, 204, 205, 206, 301, 303, 500, 503, 600, 999] {
            let toml = format!(
                "[partner_response.http_status]
declined = {bad}
"
            );
            assert_eq!(
                errors(&toml),
                [(
                    "partner_response.http_status.declined".to_owned(),
                    "must be a 2xx that carries a body (not 204, 205 or 206) or a 4xx".to_owned()
                )],
                "{bad}"
            );
        }
        let err = StepUp::from_toml(
            "[partner_response.http_status]
pending = 403
",
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "partner_response.http_status.pending");
        assert!(err.0[0].reason.contains("`step_up_required`"), "{err}");
        let err = StepUp::from_toml(
            "[partner_response.http_status]
approved = 70000
",
        )
        .unwrap_err();
        assert_eq!(err.0[0].key, "partner_response.http_status.approved");
    }

    #[test]
    fn key_styles_spell_the_guide_names() {
        use crate::config::KeyStyle;
        assert_eq!(
            KeyStyle::SnakeCase.spell("payment_request_id"),
            "payment_request_id"
        );
        assert_eq!(
            KeyStyle::CamelCase.spell("payment_request_id"),
            "paymentRequestId"
        );
        assert_eq!(KeyStyle::CamelCase.spell("status"), "status");
        assert_eq!(
            KeyStyle::CamelCase.spell("klarna_network_response_data"),
            "klarnaNetworkResponseData"
        );
    }

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
