//! The step-up engine: every decision and every byte transformation, with no I/O.
//!
//! An adapter asks, in order:
//! 1. [`StepUp::classify`] on the request head: pass through, or a candidate route whose body
//!    must be read (up to [`StepUp::body_limit`]).
//! 2. [`StepUp::rewrite_request`] on the candidate body: not Klarna (forward it untouched),
//!    injected (forward the new body, keep the [`Exchange`]), or refused (answer the
//!    [`Refusal`], send nothing upstream).
//! 3. [`StepUp::wants_response`] on the response head, and if so
//!    [`StepUp::rewrite_response`] on the whole response body.

pub(crate) mod json;
mod request;
mod response;
mod return_token;
pub(crate) mod return_url;
pub mod webhook;

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::config::{
    ConfigErrors, PartnerFieldsConfig, PartnerResponseConfig, Problems, StepUpConfig,
};
use return_token::ReturnEndpoint;
use return_url::ReturnUrlPolicy;
use webhook::Webhooks;

pub use response::KeepReason;
pub use return_token::ReturnRedirect;
pub use webhook::WebhookEvent;

/// Default limit of a buffered candidate body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// The response header that tells an operator what the layer did: `rewritten`,
/// `passthrough`, or the error code of an answer the layer gave itself.
pub const MARKER_HEADER: HeaderName = HeaderName::from_static("x-klarna-stepup");

/// Response headers that no longer describe a body once the layer changed its bytes.
pub const STALE_RESPONSE_HEADERS: [HeaderName; 6] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_ENCODING,
    http::header::ETAG,
    http::header::ACCEPT_RANGES,
    HeaderName::from_static("content-md5"),
];

/// The validated configuration, ready to serve. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct StepUp {
    inner: Arc<Engine>,
}

struct Engine {
    config: StepUpConfig,
    body_limit: usize,
    routes: Vec<RoutePattern>,
    inject_at: Vec<String>,
    answer_at: Vec<String>,
    detect_values: Vec<String>,
    authorize_shape: bool,
    fields: PartnerFieldsConfig,
    default_return_url: Option<String>,
    default_app_return_url: Option<String>,
    interaction_expiry: Option<String>,
    policy: ReturnUrlPolicy,
    words: PartnerResponseConfig,
    redirect_template: Vec<TemplatePart>,
    acquirer_return: Option<ReturnEndpoint>,
    webhooks: Option<Webhooks>,
}

impl std::fmt::Debug for StepUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepUp")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// What a request is, judged from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// Not ours: stream it through untouched.
    PassThrough,
    /// A candidate route: read the body (within the limit) and ask
    /// [`StepUp::rewrite_request`].
    Candidate(Candidate),
    /// The acquirer return endpoint: answer [`StepUp::resolve_return`] (no body to read).
    Return,
    /// Klarna's webhook: read the body (within [`StepUp::webhook_body_limit`]), ask
    /// [`StepUp::verify_webhook`], relay to [`StepUp::webhook_relay_path`].
    Webhook,
    /// The payment API's webhook relay path, reached from outside: answer
    /// [`Refusal::not_found`], so only verified webhooks get there.
    Internal,
}

/// A candidate route, as matched by [`StepUp::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    route: u16,
}

/// What the request side hands to the response side of one Klarna exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    route: u16,
    reference: String,
    return_url: String,
}

impl Exchange {
    /// The `payment_request_reference` sent to Klarna.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The return URL sent to Klarna.
    pub fn return_url(&self) -> &str {
        &self.return_url
    }
}

/// The engine's verdict on a candidate request body.
#[derive(Debug)]
pub enum RequestVerdict {
    /// Not a Klarna payment (or not a JSON object): forward the original bytes untouched.
    NotKlarna,
    /// A Klarna payment: forward `body` instead, and keep `exchange` for the response.
    Injected {
        /// The body to forward: the original bytes with `step_up_config` spliced in.
        body: Vec<u8>,
        /// The record the response side needs.
        exchange: Exchange,
    },
    /// Refused: answer with it, and send nothing upstream.
    Refused(Refusal),
}

/// The engine's verdict on a response to a Klarna exchange.
#[derive(Debug)]
pub enum ResponseVerdict {
    /// Send `body` instead, with [`STALE_RESPONSE_HEADERS`] removed and the new length.
    Rewritten {
        /// The partner-facing body.
        body: Vec<u8>,
        /// Which Klarna answer it was.
        result: AuthorizeResult,
    },
    /// Send the upstream's bytes untouched, marked `passthrough`.
    Keep(KeepReason),
}

/// Klarna's authorize result that a rewritten answer carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeResult {
    /// `STEP_UP_REQUIRED`: the partner got the `pending` block.
    StepUpRequired,
    /// `APPROVED`.
    Approved,
    /// `DECLINED`.
    Declined,
}

/// An answer the layer gives by itself: a JSON error naming the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 400, 413, 502 or 504.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `invalid_return_url`.
    pub code: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// What is wrong, for a human. Never contains a secret or the offending value.
    pub message: String,
}

impl Refusal {
    /// A 400 about one field.
    pub fn invalid(
        code: &'static str,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code,
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// A 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
            param: None,
            message: format!("the request body is larger than {limit} bytes"),
        }
    }

    /// A 404: a path only the layer itself may call.
    pub fn not_found() -> Self {
        Refusal {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            param: None,
            message: "not found".into(),
        }
    }

    /// A 503 to Klarna: the payment API did not accept a webhook, so Klarna must retry.
    pub fn webhook_not_accepted() -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "webhook_not_accepted",
            param: None,
            message: "the payment API did not accept the webhook; retry later".into(),
        }
    }

    /// A 400 for a request body that could not be read.
    pub fn unreadable_body() -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "unreadable_body",
            param: None,
            message: "the request body could not be read".into(),
        }
    }

    /// A 502: the upstream could not be reached or broke the connection.
    pub fn upstream_unreachable() -> Self {
        Refusal {
            status: StatusCode::BAD_GATEWAY,
            code: "upstream_unreachable",
            param: None,
            message: "the payment API could not be reached".into(),
        }
    }

    /// A 504: the upstream did not answer in time.
    pub fn upstream_timeout() -> Self {
        Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "upstream_timeout",
            param: None,
            message: "the payment API did not answer in time".into(),
        }
    }

    /// The JSON body: `{"error":{"type","code","param","message"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(serde::Serialize)]
        struct Inner<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            code: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            param: Option<&'a str>,
            message: &'a str,
        }
        let kind = if self.status.is_server_error() {
            "upstream_error"
        } else {
            "invalid_request"
        };
        serde_json::to_vec(&Body {
            error: Inner {
                kind,
                code: self.code,
                param: self.param.as_deref(),
                message: &self.message,
            },
        })
        .expect("serializing strings cannot fail")
    }

    /// The full response head and body, as both adapters send it.
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        let body = self.to_json();
        let mut res = http::Response::new(Vec::new());
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        h.insert(MARKER_HEADER, HeaderValue::from_static(self.code));
        *res.body_mut() = body;
        res
    }
}

impl StepUp {
    /// Validates `config` into an engine; every error names its key. Secret keys are read
    /// from the environment variables the configuration names.
    pub fn new(config: StepUpConfig) -> Result<Self, ConfigErrors> {
        Self::with_secrets(config, |name| std::env::var(name).ok())
    }

    /// Like [`new`](Self::new), with secrets looked up by `secret(env_var_name)` (for tests,
    /// or a secret store).
    pub fn with_secrets(
        config: StepUpConfig,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let mut p = Problems::default();
        let c = config.effective();
        let body_limit = c.body_limit.unwrap_or(DEFAULT_BODY_LIMIT);
        if body_limit == 0 {
            p.add("body_limit", "must be at least 1 byte");
        }
        let routes = c.routes.as_deref().unwrap_or_default();
        if routes.is_empty() || routes.len() > u16::MAX as usize {
            p.add("routes", "must list between 1 and 65535 routes");
        }
        let routes = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                RoutePattern::parse(&r.method, &r.path, &format!("routes[{i}]"), &mut p)
            })
            .collect();
        let inject_at = dot_path("inject_at", &c.inject_at, &mut p);
        let answer_at = dot_path("klarna_answer_at", &c.klarna_answer_at, &mut p);
        if let Some(first) = inject_at.first() {
            if c.partner_fields.strip.contains(first) {
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
        ] {
            if list.iter().any(|f| f.is_empty()) {
                p.add(key, "field names must not be empty");
            }
        }
        let policy = ReturnUrlPolicy::new(&c.return_url_policy, &mut p);
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
        let expiry = c
            .defaults
            .interaction_expiry
            .as_deref()
            .and_then(iso_duration_secs);
        let acquirer_return = acquirer_return(&c, &policy, expiry, &secret, &mut p);
        let webhooks = webhooks(&c, &secret, &mut p);
        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        Ok(StepUp {
            inner: Arc::new(Engine {
                body_limit,
                routes,
                inject_at,
                answer_at,
                detect_values: c.detect.payment_method.clone(),
                authorize_shape: c.detect.authorize_shape,
                fields: c.partner_fields.clone(),
                default_return_url: c.defaults.return_url.clone(),
                default_app_return_url: c.defaults.app_return_url.clone(),
                interaction_expiry: c.defaults.interaction_expiry.clone(),
                policy,
                words: c.partner_response.clone(),
                redirect_template,
                acquirer_return,
                webhooks,
                config: c,
            }),
        })
    }

    /// Parses and validates a TOML configuration.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::new(StepUpConfig::from_toml(text)?)
    }

    /// The effective configuration, defaults spelled out.
    pub fn config(&self) -> &StepUpConfig {
        &self.inner.config
    }

    /// Largest candidate body that is buffered; larger ones get a 413.
    pub fn body_limit(&self) -> usize {
        self.inner.body_limit
    }

    /// Classifies a request from its head. Costs a route lookup on method and path; the
    /// body is never looked at here.
    pub fn classify(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Route {
        let path = uri.path();
        let e = &*self.inner;
        if let Some(w) = &e.webhooks {
            if path == w.path && *method == Method::POST {
                return Route::Webhook;
            }
            if path == w.relay_path {
                return Route::Internal;
            }
        }
        if let Some(r) = &e.acquirer_return {
            if (*method == Method::GET || *method == Method::HEAD)
                && path
                    .strip_prefix(r.path.as_str())
                    .is_some_and(|t| t.starts_with('/'))
            {
                return Route::Return;
            }
        }
        let Some(i) = self
            .inner
            .routes
            .iter()
            .position(|r| r.matches(method, path))
        else {
            return Route::PassThrough;
        };
        // A body we cannot read as JSON is not ours to touch.
        if headers.contains_key(http::header::CONTENT_ENCODING) || !is_json_or_absent(headers) {
            return Route::PassThrough;
        }
        Route::Candidate(Candidate { route: i as u16 })
    }

    /// Verifies an acquirer return (`Route::Return`) and says where the customer goes. `now`
    /// is the current time in unix seconds.
    pub fn resolve_return(&self, uri: &Uri, now: u64) -> Result<ReturnRedirect, Refusal> {
        match &self.inner.acquirer_return {
            Some(r) => r.resolve(uri, now),
            None => Err(Refusal::not_found()),
        }
    }

    /// Where and how long to notify the payment API of a return, when configured.
    pub fn return_notification(&self) -> Option<(&str, std::time::Duration)> {
        let r = self.inner.acquirer_return.as_ref()?;
        Some((
            r.notify_path.as_deref()?,
            std::time::Duration::from_millis(r.notify_timeout_ms),
        ))
    }

    /// Verifies a webhook (`Route::Webhook`): the signature over the raw body, with the key
    /// named by `Klarna-Signing-Key-Id`; then reads its fields.
    pub fn verify_webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<WebhookEvent, Refusal> {
        let w = self
            .inner
            .webhooks
            .as_ref()
            .ok_or_else(Refusal::not_found)?;
        webhook::verify(&w.keys, headers, body)?;
        Ok(webhook::parse(body))
    }

    /// The payment API's path for verified webhooks.
    pub fn webhook_relay_path(&self) -> &str {
        self.inner.webhooks.as_ref().map_or("", |w| &w.relay_path)
    }

    /// The largest webhook body accepted.
    pub fn webhook_body_limit(&self) -> usize {
        self.inner.webhooks.as_ref().map_or(0, |w| w.body_limit)
    }

    /// The path pattern of the route an exchange came through, for logs and metrics.
    pub fn route_pattern(&self, exchange: &Exchange) -> &str {
        self.inner
            .routes
            .get(exchange.route as usize)
            .map_or("", |r| &r.pattern)
    }

    /// The path pattern of a candidate's route (as configured, e.g.
    /// `/v2/accounts/{id}/payment/authorize`), for logs and metrics before there is an
    /// exchange.
    pub fn candidate_pattern(&self, candidate: Candidate) -> &str {
        self.inner
            .routes
            .get(candidate.route as usize)
            .map_or("", |r| &r.pattern)
    }

    /// Whether the response to `exchange` should be read and offered to
    /// [`rewrite_response`](Self::rewrite_response): a 2xx with a JSON (or no) content type.
    /// Anything else streams through untouched.
    pub fn wants_response(
        &self,
        _exchange: &Exchange,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> bool {
        status.is_success() && status != StatusCode::NO_CONTENT && is_json_or_absent(headers)
    }
}

fn is_json_or_absent(headers: &HeaderMap) -> bool {
    match headers.get(http::header::CONTENT_TYPE) {
        None => true,
        Some(v) => {
            let Ok(v) = v.to_str() else { return false };
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json")
        }
    }
}

/// The current time in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    let keys = keys("acquirer_return", &r.keys, 32, secret, p);
    if keys.is_empty() {
        return None;
    }
    // Klarna's default Payment Request lifetime is 3 hours.
    let lifetime_secs = expiry.unwrap_or(3 * 3600) + r.token_margin_secs;
    Some(ReturnEndpoint {
        base: base.to_owned(),
        path: r.path.clone(),
        keys,
        lifetime_secs,
        notify_path: r.notify_path.clone(),
        notify_timeout_ms: r.notify_timeout_ms,
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
fn iso_duration_secs(s: &str) -> Option<u64> {
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

#[derive(Debug)]
struct RoutePattern {
    method: Method,
    pattern: String,
    segments: Vec<Option<String>>,
}

impl RoutePattern {
    fn parse(method: &str, path: &str, key: &str, p: &mut Problems) -> Option<Self> {
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

    fn matches(&self, method: &Method, path: &str) -> bool {
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

/// A piece of the partner `redirect_url` template.
#[derive(Debug)]
enum TemplatePart {
    Literal(String),
    Url,
    Id,
    Reference,
}

impl TemplatePart {
    fn parse(t: &str, p: &mut Problems) -> Vec<TemplatePart> {
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

    fn engine(toml: &str) -> StepUp {
        StepUp::from_toml(toml).unwrap()
    }

    #[test]
    fn empty_config_is_valid_with_default_routes() {
        let e = engine("");
        let h = HeaderMap::new();
        let post = Method::POST;
        for path in [
            "/payments",
            "/v1/payments",
            "/v2/accounts/acc-1/payment/authorize",
            "/payments?x=1",
        ] {
            let uri: Uri = path.parse().unwrap();
            assert!(
                matches!(e.classify(&post, &uri, &h), Route::Candidate(_)),
                "{path}"
            );
        }
        for (m, path) in [
            (Method::GET, "/payments"),
            (Method::POST, "/payments/"),
            (Method::POST, "/payments/1"),
            (Method::POST, "/v2/accounts//payment/authorize"),
            (Method::POST, "/v2/accounts/a/b/payment/authorize"),
            (Method::POST, "/"),
        ] {
            assert_eq!(
                e.classify(&m, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{m} {path}"
            );
        }
        assert_eq!(e.body_limit(), DEFAULT_BODY_LIMIT);
    }

    #[test]
    fn classify_skips_bodies_we_cannot_read() {
        let e = engine("");
        let uri: Uri = "/payments".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(matches!(
            e.classify(&Method::POST, &uri, &h),
            Route::Candidate(_)
        ));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/vnd.api+json"),
        );
        assert!(matches!(
            e.classify(&Method::POST, &uri, &h),
            Route::Candidate(_)
        ));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert_eq!(e.classify(&Method::POST, &uri, &h), Route::PassThrough);
        h.remove("content-type");
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(e.classify(&Method::POST, &uri, &h), Route::PassThrough);
    }

    #[test]
    fn config_errors_name_every_key() {
        let err = StepUp::from_toml(
            r#"
            body_limit = 0
            inject_at = "a..b"
            [[routes]]
            method = "PO ST"
            path = "/x"
            [[routes]]
            method = "POST"
            path = "no-slash"
            [defaults]
            return_url = "http://partner.example/r"
            app_return_url = "javascript:alert(1)"
            interaction_expiry = "PT5M"
            [partner_response]
            pending = ""
            redirect_url = "https://acq.example/{nope}"
            "#,
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "body_limit",
                "routes[0].method",
                "routes[1].path",
                "inject_at",
                "defaults.return_url",
                "defaults.app_return_url",
                "defaults.interaction_expiry",
                "partner_response.pending",
                "partner_response.redirect_url",
            ],
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = StepUp::from_toml("[return_url_policy]\nmax_lenght = 3\n").unwrap_err();
        assert_eq!(err.0[0].key, "max_lenght");
        assert!(err.to_string().contains("unknown field"), "{err}");
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

    #[test]
    fn refusal_json_shape() {
        let r = Refusal::invalid(
            "invalid_return_url",
            "klarna_return_url",
            "is not an absolute URL",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"type": "invalid_request", "code": "invalid_return_url",
                "param": "klarna_return_url", "message": "is not an absolute URL"}})
        );
        let res = Refusal::upstream_timeout().to_response();
        assert_eq!(res.status(), 504);
        assert_eq!(res.headers()[MARKER_HEADER], "upstream_timeout");
        assert_eq!(
            res.headers()["content-length"],
            res.body().len().to_string().as_str()
        );
    }
}
