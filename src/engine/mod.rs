//! The step-up engine: every decision and every byte transformation, with no I/O.
//!
//! An adapter asks, in order:
//! 1. [`StepUp::classify`] on the request head: pass through, a candidate route whose body
//!    must be read (up to [`StepUp::body_limit`]), a candidate refused from its head alone
//!    ([`Route::Refused`]: an ambiguous path, a body it will not read), or one of the
//!    layer's own routes.
//! 2. [`StepUp::rewrite_request`] on the candidate body: not Klarna (forward it untouched),
//!    injected (forward the new body, keep the [`Exchange`]), or refused (answer the
//!    [`Refusal`], send nothing upstream). Fail closed: only one strict JSON object with no
//!    duplicate of a key the engine reads is ever forwarded.
//! 3. [`StepUp::response_plan`] on the response head: read the answer (bounded by the body
//!    limit) or stream it through untouched, and if read, [`StepUp::rewrite_response`] on the
//!    answer's bytes as received (a compressed answer is decoded here).
//!
//! The adapters own only framing: when to buffer, lengths and chunking, and turning these
//! verdicts into their framework's responses. The header edits that go with each verdict are
//! made here too (`head`), so that every adapter sends the same bytes.

mod compile;
pub(crate) mod decode;
mod head;
pub(crate) mod json;
mod klarna;
mod partner;
mod partners;
mod reference;
mod refusal;
mod request;
mod response;
mod return_token;
pub(crate) mod return_url;
mod routes;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::config::{ConfigError, ConfigErrors, StepUpConfig};
use compile::TemplatePart;
use return_token::ReturnEndpoint;
use return_url::{PurchaseJourney, ReturnUrlPolicy};
use routes::RoutePattern;
use webhook::Webhooks;

pub use crate::config::DEFAULT_BODY_LIMIT;
// The request head check of the Pingora adapter and of the server crate
// (klarna-stepup-server, which pins this crate's exact version): not part of the public API.
#[cfg_attr(not(feature = "pingora"), allow(unused_imports))]
pub(crate) use head::check_request_target;
#[doc(hidden)]
pub use head::{check_request_head, Head};
#[cfg_attr(
    not(any(feature = "tower", feature = "pingora")),
    allow(unused_imports)
)]
pub(crate) use head::{
    content_length, injected_request, mark_passthrough, mark_relayed, mark_rewritten,
    relay_request, strip_forged_headers,
};
pub use head::{strip_hop_by_hop, HeadLimits, MARKER_HEADER, STALE_RESPONSE_HEADERS};
pub use refusal::Refusal;
pub use response::{KeepReason, ResponsePlan};
pub use return_token::{ReturnRedirect, UNCONFIRMED};

/// The most of the payment API's answer to a return notification that is read for its
/// confirmed `state` (a larger one confirms nothing).
pub const NOTIFICATION_ANSWER_LIMIT: usize = 16 * 1024;

/// The signature of the layer's return notification to the payment API:
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (see
/// [`StepUp::return_notification`]).
pub const NOTIFICATION_SIGNATURE_HEADER: http::header::HeaderName =
    http::header::HeaderName::from_static("x-klarna-stepup-signature");
pub use webhook::WebhookEvent;

/// The validated configuration, ready to serve. Cheap to clone (one `Arc`).
///
/// ```
/// use http::{HeaderMap, Method};
/// use klarna_stepup::{RequestVerdict, Route, StepUp};
///
/// let step_up = StepUp::from_toml(r#"
///     [return_url_policy]
///     allowed_hosts = ["shop.partner.example"]
/// "#)?;
/// let Route::Candidate(candidate) =
///     step_up.classify(&Method::POST, &"/payments".parse()?, &HeaderMap::new())
/// else {
///     unreachable!("POST /payments is a default route")
/// };
/// let body = br#"{"payment_method":"klarna","amount":11800,
///     "return_url":"https://shop.partner.example/done"}"#;
/// let now = 1_800_000_000; // unix seconds
/// match step_up.rewrite_request(candidate, body, now) {
///     RequestVerdict::Injected { body, exchange } => {
///         assert!(String::from_utf8(body)?.contains("\"step_up_config\""));
///         assert_eq!(exchange.return_url(), "https://shop.partner.example/done");
///     }
///     other => panic!("{other:?}"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct StepUp {
    inner: Arc<Engine>,
}

/// The compiled configuration: the parts the engine reads on each request, beside the
/// configuration they came from.
struct Engine {
    config: StepUpConfig,
    routes: Vec<RoutePattern>,
    inject_at: Vec<String>,
    answer_at: Vec<String>,
    policy: ReturnUrlPolicy,
    journey: PurchaseJourney,
    redirect_template: Vec<TemplatePart>,
    acquirer_return: Option<ReturnEndpoint>,
    webhooks: Option<Webhooks>,
    /// The partner's idempotency key header (`partner_fields.idempotency_header`).
    idempotency_header: Option<http::HeaderName>,
    /// Many partners behind one acquirer (`[partners]`), when on.
    partners: Option<partners::Partners>,
    /// What is valid but unwise in the configuration.
    warnings: Vec<ConfigError>,
    /// The canonical forms of the payment API's paths only the layer may reach: the webhook
    /// relay path and the return notification path.
    internal_paths: Vec<Vec<u8>>,
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
    /// The payment API's webhook relay path (in any spelling a router may take for it),
    /// reached from outside: answer [`Refusal::not_found`], so only verified webhooks get
    /// there.
    RelayPathFromOutside,
    /// A candidate route refused from its head alone: answer [`HeadRefusal::refusal`] at
    /// once, read no body, send nothing upstream.
    Refused(HeadRefusal),
}

/// Why a request on a candidate route is refused from its head: see [`StepUp::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadRefusal {
    candidate: Candidate,
    reason: HeadReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadReason {
    NonCanonicalPath,
    QueryField,
    MediaType,
    ContentEncoding,
}

impl HeadRefusal {
    /// The candidate route the request (canonically) names, for logs and metrics
    /// ([`StepUp::candidate_pattern`]).
    pub fn candidate(self) -> Candidate {
        self.candidate
    }

    /// The answer: 400 `non_canonical_path`, 400 `query_field`, 415
    /// `unsupported_media_type` or 415 `unsupported_content_encoding`.
    pub fn refusal(self) -> Refusal {
        match self.reason {
            HeadReason::NonCanonicalPath => Refusal::non_canonical_path(),
            HeadReason::QueryField => Refusal::query_field(),
            HeadReason::MediaType => Refusal::unsupported_media_type(),
            HeadReason::ContentEncoding => Refusal::unsupported_content_encoding(),
        }
    }
}

/// A candidate route, as matched by [`StepUp::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Candidate {
    route: u16,
    /// What identifies the request (path, idempotency key), for a derived reference.
    key: reference::RequestKey,
    /// Who the partner is, when partners are on.
    partner: partners::PartnerRef,
    /// No `Content-Type`: Rack and PHP read such a POST body as a form.
    untyped: bool,
}

impl Candidate {
    /// The partner the request names (`[partners]` on, a valid id, served or not): for
    /// logs and metrics also when the request is refused.
    pub fn partner(&self) -> Option<&str> {
        match &self.partner {
            partners::PartnerRef::Listed { id, .. } | partners::PartnerRef::Unlisted(id) => {
                Some(id.as_str())
            }
            _ => None,
        }
    }
}

/// What the request side hands to the response side of one Klarna exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    route: u16,
    reference: String,
    return_url: String,
    partner: Option<String>,
    /// When the request was read (unix seconds), and how long its Payment Request may live
    /// when the partner or the configuration set it: the acquirer's redirect token expires
    /// with it.
    minted_at: u64,
    request_secs: Option<u64>,
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

    /// The partner the request came from, when `[partners]` is on.
    pub fn partner(&self) -> Option<&str> {
        self.partner.as_deref()
    }
}

/// The engine's verdict on a candidate request body.
///
/// Exhaustive on purpose, as is [`ResponseVerdict`]: a new verdict is a breaking change, so
/// that no caller can silently treat it as something else (the other public enums are
/// `#[non_exhaustive]`).
#[derive(Debug)]
pub enum RequestVerdict {
    /// One strict JSON object that is not a Klarna payment (any `step_up_config` in it
    /// validated): forward the original bytes untouched.
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

/// The engine's verdict on a response to a Klarna exchange (exhaustive on purpose, see
/// [`RequestVerdict`]).
#[derive(Debug)]
pub enum ResponseVerdict {
    /// Send `body` instead, with [`STALE_RESPONSE_HEADERS`] removed and the new length.
    Rewritten {
        /// The partner-facing body.
        body: Vec<u8>,
        /// Which Klarna answer it was.
        result: AuthorizeResult,
        /// The Payment Request's id, on `STEP_UP_REQUIRED` (for logs and metrics).
        payment_request_id: Option<String>,
    },
    /// Send the upstream's bytes untouched, marked `passthrough`.
    Keep(KeepReason),
}

/// Klarna's authorize result that a rewritten answer carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthorizeResult {
    /// `STEP_UP_REQUIRED`: the partner got the `pending` block.
    StepUpRequired,
    /// `APPROVED`.
    Approved,
    /// `DECLINED`.
    Declined,
}

impl AuthorizeResult {
    /// Klarna's name: `STEP_UP_REQUIRED`, `APPROVED` or `DECLINED`.
    pub fn label(self) -> &'static str {
        match self {
            AuthorizeResult::StepUpRequired => klarna::STEP_UP_REQUIRED,
            AuthorizeResult::Approved => klarna::APPROVED,
            AuthorizeResult::Declined => klarna::DECLINED,
        }
    }
}

impl StepUp {
    /// Validates `config` into an engine; every error names its key. Secret keys are read
    /// from the environment variables the configuration names.
    ///
    /// ```
    /// use klarna_stepup::{StepUp, StepUpConfig};
    ///
    /// let step_up = StepUp::new(
    ///     StepUpConfig::default()
    ///         .allowed_hosts(["*.partner.example"])
    ///         .default_return_url("https://shop.partner.example/klarna/done"),
    /// )?;
    /// assert_eq!(step_up.config().return_url_policy.allowed_hosts, ["*.partner.example"]);
    ///
    /// // A default outside the allow-list is an error naming its key.
    /// let err = StepUp::new(
    ///     StepUpConfig::default()
    ///         .allowed_hosts(["*.partner.example"])
    ///         .default_return_url("https://elsewhere.example/done"),
    /// )
    /// .unwrap_err();
    /// assert_eq!(err.0[0].key, "defaults.return_url");
    /// # Ok::<(), klarna_stepup::ConfigErrors>(())
    /// ```
    pub fn new(config: StepUpConfig) -> Result<Self, ConfigErrors> {
        Self::with_secrets(config, |name| std::env::var(name).ok())
    }

    /// Like [`new`](Self::new), with secrets looked up by `secret(env_var_name)` (for tests,
    /// or a secret store).
    pub fn with_secrets(
        config: StepUpConfig,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        Ok(StepUp {
            inner: Arc::new(compile::compile(config, &secret)?),
        })
    }

    /// Parses and validates a TOML configuration; every error names its key, and its line
    /// and column in `text`.
    ///
    /// ```
    /// use klarna_stepup::StepUp;
    ///
    /// let step_up = StepUp::from_toml(r#"
    ///     body_limit = 262144
    ///     [return_url_policy]
    ///     allowed_hosts = ["*.partner.example"]
    /// "#)?;
    /// assert_eq!(step_up.body_limit(), 262_144);
    ///
    /// let err = StepUp::from_toml("[return_url_policy]\nmax_length = \"long\"\n").unwrap_err();
    /// assert_eq!(err.0[0].key, "return_url_policy.max_length");
    /// assert_eq!(err.0[0].location, Some((2, 1)));
    /// # Ok::<(), klarna_stepup::ConfigErrors>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::new(StepUpConfig::from_toml(text)?).map_err(|e| e.located(text))
    }

    /// The effective configuration, defaults spelled out.
    pub fn config(&self) -> &StepUpConfig {
        &self.inner.config
    }

    /// What is valid but unwise in the configuration, each naming its key, for
    /// `check-config` and start-up logs. Today: the acquirer return on with webhooks off
    /// (Klarna's step-up guide calls webhooks mandatory: a return can be lost or forged).
    pub fn warnings(&self) -> &[ConfigError] {
        &self.inner.warnings
    }

    /// Largest candidate body that is buffered; larger ones get a 413. Also the largest
    /// answer to a Klarna request that is read for a rewrite (larger ones pass through).
    pub fn body_limit(&self) -> usize {
        self.inner.config.body_limit
    }

    /// Classifies a request from its head. Costs a route lookup on method and path; the
    /// body is never looked at here.
    ///
    /// Fail closed on candidate routes: an ambiguous spelling of a candidate route's path
    /// (ASCII case, trailing `/`, `//`, dot segments, `;parameters`, percent-escapes, `\`)
    /// or method (case) is [`Route::Refused`] (400 `non_canonical_path`), as is a body the
    /// layer will not read: a content type other than JSON (415 `unsupported_media_type`) or
    /// any `Content-Encoding` (415 `unsupported_content_encoding`). Any spelling of the
    /// webhook relay path is [`Route::RelayPathFromOutside`]. A path already in canonical
    /// form (the usual case) is only scanned once.
    pub fn classify(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Route {
        let path = uri.path();
        let raw = path.as_bytes();
        let e = &*self.inner;
        if let Some(w) = &e.webhooks {
            if path == w.path && *method == Method::POST {
                return Route::Webhook;
            }
        }
        // The payment API's paths that only the layer may reach (the webhook relay, the
        // return notification), in any spelling a router may read as one.
        if e.internal_paths.iter().any(|p| routes::names(raw, p)) {
            return Route::RelayPathFromOutside;
        }
        if let Some(r) = &e.acquirer_return {
            if (*method == Method::GET || *method == Method::HEAD) && r.serves(path) {
                return Route::Return;
            }
        }
        let route = match e.routes.iter().position(|r| r.matches(method, raw)) {
            Some(i) => i as u16,
            None => {
                // Not an exact route: is it an ambiguous spelling of one? Only methods that
                // could be a candidate's get this far.
                if !e.routes.iter().any(|r| r.loose_method(method)) {
                    return Route::PassThrough;
                }
                return match routes::readings(raw).find_map(|reading| {
                    e.routes
                        .iter()
                        .position(|r| r.matches_loosely(method, &reading))
                }) {
                    Some(i) => Route::Refused(HeadRefusal {
                        candidate: Candidate {
                            route: i as u16,
                            key: reference::RequestKey::new(path, None),
                            partner: partners::PartnerRef::Off,
                            untyped: false,
                        },
                        reason: HeadReason::NonCanonicalPath,
                    }),
                    None => Route::PassThrough,
                };
            }
        };
        let idempotency = e.idempotency_header.as_ref().and_then(|h| headers.get(h));
        let partner = match &e.partners {
            None => partners::PartnerRef::Off,
            Some(p) => match &p.source {
                partners::Source::Header(h) => {
                    let mut values = headers.get_all(h).iter();
                    match (values.next(), values.next()) {
                        // Two identities: which one would the payment API read?
                        (Some(_), Some(_)) => partners::PartnerRef::Ambiguous,
                        _ if head::names_elsewhere(headers, h) => partners::PartnerRef::Ambiguous,
                        (first, _) => p.identify(first.map(HeaderValue::as_bytes)),
                    }
                }
                partners::Source::PathParam(name) => {
                    p.identify(e.routes[route as usize].param(raw, name))
                }
            },
        };
        let candidate = Candidate {
            route,
            key: reference::RequestKey::new(path, idempotency.map(HeaderValue::as_bytes)),
            partner,
            untyped: !headers.contains_key(http::header::CONTENT_TYPE),
        };
        // A payment field in the query: a framework that merges query and body would read
        // it unchecked.
        if uri
            .query()
            .is_some_and(|q| routes::query_names(q).any(|name| e.reads_top_level(&name)))
        {
            return Route::Refused(HeadRefusal {
                candidate,
                reason: HeadReason::QueryField,
            });
        }
        // A body the layer cannot read is not forwarded unread.
        if let Some(reason) = head::unreadable_request_body(headers) {
            return Route::Refused(HeadRefusal { candidate, reason });
        }
        Route::Candidate(candidate)
    }

    /// Verifies an acquirer return (`Route::Return`) and says where the customer goes. `now`
    /// is the current time in unix seconds.
    ///
    /// The same route serves the acquirer's own redirect (`[acquirer_redirect]`): its
    /// verified token answers with Klarna's `payment_request_url`, still on a Purchase
    /// Journey host ([`ReturnRedirect::is_return`] is false for it: nothing to notify).
    pub fn resolve_return(&self, uri: &Uri, now: u64) -> Result<ReturnRedirect, Refusal> {
        let Some(r) = &self.inner.acquirer_return else {
            return Err(Refusal::not_found());
        };
        let redirect = r.resolve(uri, now)?;
        if !redirect.is_return() && !self.inner.journey.allows(&redirect.location) {
            return Err(Refusal::invalid(
                "invalid_return_token",
                "token",
                "the return link is invalid",
            ));
        }
        Ok(redirect)
    }

    /// A return with the state the payment API confirmed in place of the browser's claim:
    /// `answer` is the body of the payment API's 2xx answer to the
    /// [notification](Self::return_notification) (its `state` member is taken when it is a
    /// state word), `None` when it did not answer 2xx in time: the partner's URL then gets
    /// the state [`UNCONFIRMED`], never the browser's claim as if confirmed.
    pub fn confirm_return(
        &self,
        redirect: &ReturnRedirect,
        answer: Option<&[u8]>,
    ) -> Result<ReturnRedirect, Refusal> {
        let Some(r) = &self.inner.acquirer_return else {
            return Ok(redirect.clone());
        };
        let root = answer.and_then(json::Object::parse);
        let state = root.as_ref().and_then(|o| o.get_str("state"));
        r.confirm(redirect, state.as_deref())
    }

    /// Whether returns are told to the payment API (a notification path is configured).
    pub fn notifies_returns(&self) -> bool {
        self.inner
            .acquirer_return
            .as_ref()
            .is_some_and(|r| r.notify_path.is_some())
    }

    /// The request that tells the payment API of a return, and how long the redirect may
    /// wait for its answer, when a notification path is configured and the customer's
    /// request is a `GET` of a return (a `HEAD`, a link preview say, tells nothing): `POST`
    /// of [`ReturnRedirect::notification`] as JSON, with the client's `Host`, signed in
    /// `X-Klarna-Stepup-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
    /// with the first `acquirer_return` key, so that the payment API can tell it from
    /// anything else (the path itself answers 404 from outside). `now` is the current time
    /// in unix seconds. Feed the answer to [`confirm_return`](Self::confirm_return).
    pub fn return_notification(
        &self,
        method: &Method,
        redirect: &ReturnRedirect,
        host: Option<&HeaderValue>,
        now: u64,
    ) -> Option<(http::Request<Vec<u8>>, Duration)> {
        let r = self.inner.acquirer_return.as_ref()?;
        let path = r.notify_path.as_deref()?;
        if *method != Method::GET || !redirect.is_return() {
            return None;
        }
        let body = redirect.notification();
        let mut req = http::Request::new(Vec::new());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::try_from(path).ok()?;
        let h = req.headers_mut();
        if let Some(host) = host {
            h.insert(http::header::HOST, host.clone());
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut signature = r.notification_signature(&body, now);
        signature.set_sensitive(true);
        h.insert(NOTIFICATION_SIGNATURE_HEADER, signature);
        *req.body_mut() = body;
        Some((req, Duration::from_millis(r.notify_timeout_ms)))
    }

    /// Whether the payment API accepted a relayed webhook (any 2xx). Anything else must be
    /// answered to Klarna with [`Refusal::webhook_not_accepted`], so that Klarna retries.
    pub fn webhook_accepted(&self, status: StatusCode) -> Result<(), Refusal> {
        if status.is_success() {
            Ok(())
        } else {
            Err(Refusal::webhook_not_accepted())
        }
    }

    /// Verifies a webhook (`Route::Webhook`): the signature over the raw body, with the key
    /// named by `Klarna-Signing-Key-Id`; then reads its fields. A signed body with a
    /// duplicate key where the fields are read (the envelope, `metadata`, `payload`,
    /// `payload.state_context`) is refused, 400 `duplicate_key`: never relayed with headers
    /// that may not say what the payment API reads in the body.
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
        let mut event = webhook::parse(body)?;
        if self.inner.partners.is_some() {
            event.partner = event
                .reference
                .as_deref()
                .and_then(partners::of_reference)
                .map(str::to_owned);
        }
        Ok(event)
    }

    /// The payment API's path for verified webhooks.
    pub fn webhook_relay_path(&self) -> &str {
        self.inner.webhooks.as_ref().map_or("", |w| &w.relay_path)
    }

    /// How long a relayed webhook may wait for the payment API (`webhooks.relay_timeout_ms`;
    /// the tower adapter's bound, Pingora's relay has the proxy's upstream timeouts).
    pub fn webhook_relay_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.webhooks.relay_timeout_ms)
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
}

/// The current time in unix seconds, for adapters to pass to the engine.
#[cfg_attr(not(any(feature = "tower", feature = "pingora")), allow(dead_code))]
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        let refused = |h: &HeaderMap| match e.classify(&Method::POST, &uri, h) {
            Route::Refused(r) => r.refusal(),
            other => panic!("{other:?}"),
        };
        h.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let r = refused(&h);
        assert_eq!((r.status.as_u16(), r.code), (415, "unsupported_media_type"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(refused(&h).code, "unsupported_media_type");
        h.remove("content-type");
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        let r = refused(&h);
        assert_eq!(
            (r.status.as_u16(), r.code),
            (415, "unsupported_content_encoding")
        );
        // Not a candidate: nothing is refused, whatever the head.
        assert_eq!(
            e.classify(&Method::POST, &"/orders".parse().unwrap(), &h),
            Route::PassThrough
        );
    }

    #[test]
    fn ambiguous_forms_of_candidate_routes_are_refused() {
        let e = engine("");
        let h = HeaderMap::new();
        for path in [
            "/payments/",
            "/Payments",
            "/PAYMENTS",
            "//payments",
            "/payments;x=1",
            "/%70ayments",
            "/%2570ayments",
            "/x/../payments",
            "/./payments",
            "/payments/.",
            "/payments%2F",
            "/v1//payments",
            "/V2/accounts/acc-1/payment/authorize",
            "/v2/accounts/acc-1/payment/authorize/",
            "/v2/accounts/acc-1/payment/./authorize",
            "/v2/accounts/acc-1;x/payment/authorize;y",
            // Format suffixes, trailing dots, spaces and NULs (Rails, Sinatra, C routers).
            "/payments.json",
            "/payments.",
            "/payments%2ejson",
            "/payments%20",
            "/payments%00",
            "/v2/accounts/acc-1/payment/authorize.json",
        ] {
            match e.classify(&Method::POST, &path.parse().unwrap(), &h) {
                Route::Refused(r) => {
                    let r = r.refusal();
                    assert_eq!((r.status.as_u16(), r.code), (400, "non_canonical_path"));
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        // The method too, in another case.
        let post = Method::from_bytes(b"post").unwrap();
        assert!(matches!(
            e.classify(&post, &"/payments".parse().unwrap(), &h),
            Route::Refused(_)
        ));
        // Other methods and other paths are not ours.
        for (m, path) in [
            (Method::GET, "/Payments/"),
            (Method::POST, "/payments/1"),
            (Method::POST, "/paymentsx"),
            (Method::POST, "/v2/accounts//payment/authorize"),
        ] {
            assert_eq!(
                e.classify(&m, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{m} {path}"
            );
        }
    }

    #[test]
    fn every_spelling_of_the_relay_path_is_refused() {
        let e = StepUp::with_secrets(
            StepUpConfig::from_toml(
                "[webhooks]\nenabled = true\nkeys = [{ id = \"k\", env = \"W\" }]\n",
            )
            .unwrap(),
            |_| Some("key".into()),
        )
        .unwrap();
        let h = HeaderMap::new();
        for path in [
            "/webhooks/klarna",
            "/webhooks/klarna/",
            "/webhooks/Klarna",
            "/WEBHOOKS/KLARNA",
            "/webhooks/%6blarna",
            "/webhooks/%6Blarna",
            "//webhooks/klarna",
            "/webhooks//klarna",
            "/webhooks/klarna;x",
            "/webhooks/./klarna",
            "/x/../webhooks/klarna",
            "/webhooks%2Fklarna",
            "/webhooks\\klarna",
            "/webhooks/klarna?x=1",
            "/webhooks/klarna.json",
            "/webhooks/klarna.",
            "/webhooks/klarna%2e",
            "/webhooks/klarna%20",
            "/webhooks/klarna%00",
            "/webhooks./klarna",
        ] {
            for m in [Method::POST, Method::GET, Method::PUT] {
                assert_eq!(
                    e.classify(&m, &path.parse().unwrap(), &h),
                    Route::RelayPathFromOutside,
                    "{m} {path}"
                );
            }
        }
        for path in ["/webhooks/klarnax", "/webhooks/klarna/1", "/webhooks"] {
            assert_eq!(
                e.classify(&Method::POST, &path.parse().unwrap(), &h),
                Route::PassThrough,
                "{path}"
            );
        }
    }

    #[test]
    fn the_return_notification_path_is_the_layers_alone() {
        let e = StepUp::with_secrets(
            StepUpConfig::from_toml(
                "[acquirer_return]\nenabled = true\npublic_base_url = \"https://pay.acquirer.example\"\n\
                 keys = [{ id = \"r\", env = \"R\" }]\nnotify_path = \"/internal/returns\"\n",
            )
            .unwrap(),
            |_| Some("return-key-0123456789abcdef0123456789".into()),
        )
        .unwrap();
        let h = HeaderMap::new();
        for path in [
            "/internal/returns",
            "/internal/Returns/",
            "/internal/returns.json",
            "/internal/%72eturns",
            "/internal/returns%00",
        ] {
            assert_eq!(
                e.classify(&Method::POST, &path.parse().unwrap(), &h),
                Route::RelayPathFromOutside,
                "{path}"
            );
        }
    }

    #[test]
    fn payment_fields_in_the_query_are_refused() {
        let e = engine("");
        let h = HeaderMap::new();
        for query in [
            "payment_method=klarna",
            "x=1&step_up_config[customer_interaction_config][return_url]=https://evil.example/",
            "Return_Url=https://evil.example/",
            "klarna_return_url=x",
            "a=1;return.url=x",
            "%72eturn_url=x",
            "reference=r",
        ] {
            let uri: Uri = format!("/payments?{query}").parse().unwrap();
            match e.classify(&Method::POST, &uri, &h) {
                Route::Refused(r) => {
                    let r = r.refusal();
                    assert_eq!((r.status.as_u16(), r.code), (400, "query_field"), "{query}");
                    assert_eq!(r.param.as_deref(), Some("query"));
                }
                other => panic!("{query}: {other:?}"),
            }
        }
        for query in ["", "x=1", "expand=payment_request", "return=1"] {
            let uri: Uri = format!("/payments?{query}").parse().unwrap();
            assert!(
                matches!(e.classify(&Method::POST, &uri, &h), Route::Candidate(_)),
                "{query}"
            );
        }
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
        assert_eq!(err.0[0].key, "return_url_policy.max_lenght");
        assert_eq!(err.0[0].location, Some((2, 1)));
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn klarna_error_ids_are_read_from_small_json_errors_only() {
        let e = engine("");
        let json = |h: &mut HeaderMap| {
            h.insert("content-type", HeaderValue::from_static("application/json"));
        };
        let mut h = HeaderMap::new();
        json(&mut h);
        assert!(e.reads_error(StatusCode::BAD_REQUEST, &h, Some(300)));
        assert!(
            !e.reads_error(StatusCode::BAD_REQUEST, &h, None),
            "unknown length"
        );
        assert!(
            !e.reads_error(StatusCode::BAD_REQUEST, &h, Some(20_000)),
            "too long"
        );
        assert!(
            !e.reads_error(StatusCode::OK, &h, Some(300)),
            "not an error"
        );
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
        assert!(
            !e.reads_error(StatusCode::BAD_GATEWAY, &h, Some(300)),
            "encoded"
        );
        assert!(!e.reads_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), Some(3)));

        let body = br#"{"error_id":"abcd-1","error_type":"INPUT_ERROR"}"#;
        assert_eq!(e.klarna_error_id(body).as_deref(), Some("abcd-1"));
        assert_eq!(e.klarna_error_id(br#"{"error_id":"has space"}"#), None);
        assert_eq!(e.klarna_error_id(b"<html>"), None);
        let nested = engine("klarna_answer_at = \"klarna\"");
        let body = br#"{"id":"pay_1","klarna":{"error_id":"k-2"}}"#;
        assert_eq!(nested.klarna_error_id(body).as_deref(), Some("k-2"));
    }
}
