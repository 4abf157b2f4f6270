//! The configuration: plain serde types (TOML in files), validated once into a
//! [`StepUp`](crate::StepUp) engine. Every validation error names its key.
//!
//! An empty configuration is valid; every field documents its default. Every key, with its
//! default and meaning: the [configuration reference](crate::guide::configuration). In Rust,
//! every key has a builder method named as the key (see [`StepUpConfig`]).

use std::fmt;

mod builder;
// Also the server crate's reader of its `[server]` table (klarna-stepup-server, which pins this
// crate's exact version): not part of the public API.
#[doc(hidden)]
pub mod read;

use serde::{Deserialize, Serialize};

/// Default limit of a buffered candidate body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// The whole step-up configuration: TOML in files ([`from_toml`](Self::from_toml)), or built
/// in code from typed values with the builder methods:
///
/// ```
/// use klarna_stepup::config::RouteConfig;
/// use klarna_stepup::{StepUp, StepUpConfig};
///
/// let config = StepUpConfig::default()
///     .routes([RouteConfig::new("POST", "/v2/accounts/{id}/payment/authorize")])
///     .allowed_hosts(["*.partner.example"])
///     .default_return_url("https://shop.partner.example/klarna/return")
///     .body_limit(256 * 1024);
/// let step_up = StepUp::new(config)?;
/// assert_eq!(step_up.body_limit(), 256 * 1024);
/// # Ok::<(), klarna_stepup::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StepUpConfig {
    /// What step-up does on candidate routes (default [`Mode::Enforce`]); a partner's entry
    /// may say otherwise (`partners.entries[].mode`).
    pub mode: Mode,
    /// Largest candidate request body that is buffered, in bytes (default 1 MiB).
    pub body_limit: usize,
    /// Dot path of the JSON object of the forwarded body that receives `step_up_config`
    /// (default `""`, the top level). Missing objects on the path are created.
    pub inject_at: String,
    /// Dot path of Klarna's authorize answer inside the upstream's response body (default
    /// `""`, the whole body). The partner block replaces the answer at that place.
    pub klarna_answer_at: String,
    /// Candidate routes (default: `POST /payments`, `POST /v1/payments`,
    /// `POST /v2/accounts/{id}/payment/authorize`).
    pub routes: Vec<RouteConfig>,
    /// How a candidate body is recognized as a Klarna payment.
    pub detect: DetectConfig,
    /// Where the partner's fields are read.
    pub partner_fields: PartnerFieldsConfig,
    /// Acquirer defaults used when the partner gives none.
    pub defaults: DefaultsConfig,
    /// Which return URLs are accepted.
    pub return_url_policy: ReturnUrlPolicyConfig,
    /// What the layer trusts in Klarna's answers.
    pub klarna: KlarnaConfig,
    /// The partner-facing vocabulary.
    pub partner_response: PartnerResponseConfig,
    /// The acquirer-controlled return endpoint (off by default).
    pub acquirer_return: AcquirerReturnConfig,
    /// The acquirer's own redirect URL for the partner, served by the layer (off by
    /// default).
    pub acquirer_redirect: AcquirerRedirectConfig,
    /// Verified webhook relay (off by default).
    pub webhooks: WebhooksConfig,
    /// Many partners behind one acquirer (off by default).
    pub partners: PartnersConfig,
    /// W3C trace context on the requests step-up acts on (off by default).
    pub trace_context: TraceContextConfig,
}

impl Default for StepUpConfig {
    fn default() -> Self {
        StepUpConfig {
            mode: Mode::Enforce,
            body_limit: DEFAULT_BODY_LIMIT,
            inject_at: String::new(),
            klarna_answer_at: String::new(),
            routes: Self::default_routes(),
            detect: DetectConfig::default(),
            partner_fields: PartnerFieldsConfig::default(),
            defaults: DefaultsConfig::default(),
            return_url_policy: ReturnUrlPolicyConfig::default(),
            klarna: KlarnaConfig::default(),
            partner_response: PartnerResponseConfig::default(),
            acquirer_return: AcquirerReturnConfig::default(),
            acquirer_redirect: AcquirerRedirectConfig::default(),
            webhooks: WebhooksConfig::default(),
            partners: PartnersConfig::default(),
            trace_context: TraceContextConfig::default(),
        }
    }
}

/// `[trace_context]`: the W3C `traceparent` of the requests step-up acts on (candidate
/// routes, the webhook relay, the return notification). On, the partner's valid
/// `traceparent` is continued (anything else starts a new trace) with step-up's own span as
/// the parent the payment API sees; the trace and span ids go into the request's tracing
/// span and its [`Record`](crate::Record). Other requests pass with their headers
/// untouched, and in `shadow` mode nothing is changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TraceContextConfig {
    /// Off by default (the forwarded heads are then as they came); the proxy binary turns it
    /// on when it exports spans (`[server.telemetry]`).
    pub propagate: bool,
}

/// A secret key: its id, and the environment variable that holds it. Keys never appear in
/// configuration files, logs or errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KeyConfig {
    /// The key id (for return tokens: written into each token; for webhooks: Klarna's
    /// `Klarna-Signing-Key-Id`).
    pub id: String,
    /// The environment variable holding the key.
    pub env: String,
}

impl KeyConfig {
    /// The key `id`, held in the environment variable `env`.
    pub fn new(id: impl Into<String>, env: impl Into<String>) -> Self {
        KeyConfig {
            id: id.into(),
            env: env.into(),
        }
    }
}

/// The acquirer-controlled return: Klarna sends the customer to the layer's own endpoint,
/// which verifies a signed token and redirects (303) to the partner's URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AcquirerReturnConfig {
    /// Off by default.
    pub enabled: bool,
    /// Where the layer is reachable from browsers, e.g. `https://pay.acquirer.example`.
    pub public_base_url: String,
    /// The endpoint's path prefix (default `/klarna/return`); tokens follow as one segment.
    pub path: String,
    /// Signing keys: the first signs new tokens, all verify (rotation).
    pub keys: Vec<KeyConfig>,
    /// Added to the payment request's lifetime to give the token's (default 3600 s).
    pub token_margin_secs: u64,
    /// A token's expiry is rounded up to a multiple of this many seconds (default 3600), so
    /// that a retry of the same request mints the same return URL, and forwards the same
    /// bytes. A retry across a bucket boundary gets a new expiry (a retry 5 s later, with
    /// hour buckets: 5 times in 3600).
    pub token_expiry_bucket_secs: u64,
    /// When set, the payment API is told of each return with a signed `POST` here
    /// (`X-Klarna-Stepup-Signature`), and the redirect waits for its answer: the state it
    /// confirms is the one the partner's URL gets.
    pub notify_path: Option<String>,
    /// How long the redirect waits for the payment API's answer to a notification, in ms
    /// (default 3000: time for a final authorize call); past it the partner's URL gets the
    /// state `UNCONFIRMED`.
    pub notify_timeout_ms: u64,
}

/// The acquirer's own redirect URL: the partner's `redirect_url` becomes
/// `{acquirer_return.public_base_url}{path}/{token}`, a signed token (keys and lifetime of
/// the acquirer return) that the layer answers with a 303 to Klarna's `payment_request_url`.
/// Needs `[acquirer_return]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AcquirerRedirectConfig {
    /// Off by default.
    pub enabled: bool,
    /// The endpoint's path prefix (default `/klarna/pay`); tokens follow as one segment.
    pub path: String,
}

impl Default for AcquirerRedirectConfig {
    fn default() -> Self {
        AcquirerRedirectConfig {
            enabled: false,
            path: "/klarna/pay".into(),
        }
    }
}

impl AcquirerReturnConfig {
    /// The acquirer return, on, reachable from browsers at `public_base_url`, signing with
    /// the key in the environment variable `env` (id `key_id`). Add keys for rotation with
    /// [`key`](Self::key); the first one signs.
    pub fn new(
        public_base_url: impl Into<String>,
        key_id: impl Into<String>,
        env: impl Into<String>,
    ) -> Self {
        AcquirerReturnConfig {
            enabled: true,
            public_base_url: public_base_url.into(),
            ..Self::default()
        }
        .key(key_id, env)
    }
}

impl Default for AcquirerReturnConfig {
    fn default() -> Self {
        AcquirerReturnConfig {
            enabled: false,
            public_base_url: String::new(),
            path: "/klarna/return".into(),
            keys: Vec::new(),
            token_margin_secs: 3600,
            token_expiry_bucket_secs: 3600,
            notify_path: None,
            notify_timeout_ms: 3000,
        }
    }
}

/// Klarna's webhooks: verified here, then relayed to the payment API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhooksConfig {
    /// Off by default.
    pub enabled: bool,
    /// Where Klarna posts (default `/klarna/webhooks`).
    pub path: String,
    /// Where the payment API takes verified webhooks (default `/webhooks/klarna`). Requests
    /// from outside to this path are refused (404), so only verified webhooks reach it.
    pub relay_path: String,
    /// Klarna's signing keys, by `Klarna-Signing-Key-Id`.
    pub keys: Vec<KeyConfig>,
    /// Largest webhook body, in bytes (default 64 KiB).
    pub body_limit: usize,
    /// How long the tower adapter waits for the payment API to take a relayed webhook, in ms
    /// (default 10000); past it Klarna gets the 503 and retries. Pingora's relay is bounded by
    /// the proxy's own upstream timeouts.
    pub relay_timeout_ms: u64,
}

impl WebhooksConfig {
    /// The webhook relay, on, verifying with Klarna's signing key `key_id`, held in the
    /// environment variable `env`. Add keys with [`key`](Self::key).
    pub fn new(key_id: impl Into<String>, env: impl Into<String>) -> Self {
        WebhooksConfig {
            enabled: true,
            ..Self::default()
        }
        .key(key_id, env)
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            enabled: false,
            path: "/klarna/webhooks".into(),
            relay_path: "/webhooks/klarna".into(),
            keys: Vec::new(),
            body_limit: 64 * 1024,
            relay_timeout_ms: 10_000,
        }
    }
}

/// Many partners (merchants) behind one acquirer: `[partners]`. Off while neither `header`
/// nor `path_param` is set.
///
/// With it on, every request on a candidate route must name its partner (a missing or
/// malformed identity is refused, 400 `invalid_partner` naming the header or the path
/// parameter); the partner's entry, if it has one, gives its return-URL policy, defaults and
/// interaction expiry; the `payment_request_reference` sent to Klarna becomes
/// `<partner>:<reference>`; returns and webhooks name the partner.
///
/// ```toml
/// [partners]
/// header = "X-Partner-Id"      # set by the acquirer's gateway; or path_param = "partner"
/// unknown = "refuse"           # or "global": partners without an entry use the global policy
///
/// [[partners.entries]]
/// id = "shop-a"
/// allowed_hosts = ["shop-a.example", "*.shop-a.example"]
/// return_url = "https://shop-a.example/klarna/return"
/// interaction_expiry = "PT1H"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PartnersConfig {
    /// The request header carrying the partner id, set by the acquirer's gateway (default
    /// `""`: not read). The gateway must overwrite any value a client sent.
    pub header: String,
    /// The route parameter carrying the partner id, e.g. `partner` for routes such as
    /// `/partners/{partner}/payments` (default `""`: not read). Every candidate route must
    /// then have it. At most one of `header` and `path_param` may be set.
    pub path_param: String,
    /// What a partner without an entry gets (default [`UnknownPartner::Refuse`]).
    pub unknown: UnknownPartner,
    /// Each partner's own policy; what an entry leaves out is the global one.
    pub entries: Vec<PartnerEntry>,
}

impl PartnersConfig {
    /// Whether partners are identified at all.
    pub fn enabled(&self) -> bool {
        !self.header.is_empty() || !self.path_param.is_empty()
    }
}

/// What a partner without its own entry gets: `partners.unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownPartner {
    /// `"refuse"` (the default): 403 `unknown_partner`; only listed partners are served.
    #[default]
    Refuse,
    /// `"global"`: the global policy (`[defaults]`, `[return_url_policy]`), with the
    /// reference still namespaced by the partner id.
    Global,
}

/// What step-up does on candidate routes: `mode = "enforce" | "shadow" | "answers_only"`, at
/// the top level and per partner (`partners.entries[].mode`, overriding it), for rolling it
/// out step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Requests are checked and injected, answers rewritten (the default).
    #[default]
    Enforce,
    /// Every verdict is computed and recorded (outcome, refusal code, would-inject,
    /// would-rewrite: in the log line and the [`Record`](crate::Record), whose
    /// [`mode`](crate::Record::mode) says `shadow`), and nothing is changed: request and
    /// answer bytes and headers reach the payment API and the partner exactly as without
    /// step-up. Bodies are read up to the body limit to judge them, as in `enforce`.
    Shadow,
    /// Requests go to the payment API untouched (it sends its own `step_up_config`); its
    /// answers to them are rewritten as in `enforce`.
    AnswersOnly,
}

impl Mode {
    /// The configuration's spelling: `enforce`, `shadow` or `answers_only`.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::AnswersOnly => "answers_only",
        }
    }
}

/// One partner's policy: `[[partners.entries]]`. Each key left out is the global one
/// (`return_url_policy.*`, `defaults.*`); `check-config` prints every entry with the values
/// it inherits spelled out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PartnerEntry {
    /// The partner id, as the header or path parameter carries it: 1 to 64 ASCII letters,
    /// digits, `-`, `_` or `.`.
    pub id: String,
    /// Allowed return-URL hosts (`return_url_policy.allowed_hosts` when left out).
    pub allowed_hosts: Option<Vec<String>>,
    /// Allowed schemes (`return_url_policy.schemes` when left out).
    pub schemes: Option<Vec<String>>,
    /// Hosts for which plain `http` is allowed (`return_url_policy.http_hosts` when left out).
    pub http_hosts: Option<Vec<String>>,
    /// Default return URL (`defaults.return_url` when left out).
    pub return_url: Option<String>,
    /// Default app return URL (`defaults.app_return_url` when left out).
    pub app_return_url: Option<String>,
    /// Interaction expiry, PT15M ..= PT48H (`defaults.interaction_expiry` when left out).
    pub interaction_expiry: Option<String>,
    /// What step-up does for this partner's requests (the top-level `mode` when left out).
    pub mode: Option<Mode>,
}

impl PartnerEntry {
    /// An entry for partner `id`, inheriting everything.
    pub fn new(id: impl Into<String>) -> Self {
        PartnerEntry {
            id: id.into(),
            ..Self::default()
        }
    }
}

/// One candidate route: a method and a path pattern where `{name}` matches one segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path pattern, e.g. `/v2/accounts/{id}/payment/authorize`.
    pub path: String,
}

impl RouteConfig {
    /// `method` on paths matching `path` (`{name}` matches one segment).
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        RouteConfig {
            method: method.into(),
            path: path.into(),
        }
    }
}

/// How a candidate body is recognized as a Klarna payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DetectConfig {
    /// Values of the payment method that mean Klarna (default `["klarna"]`, compared
    /// without regard to case).
    pub payment_method: Vec<String>,
    /// Where the payment method is read: dot paths, each a JSON string there (default
    /// `["payment_method", "payment_method.type"]`; a camelCase API:
    /// `["paymentMethod", "paymentMethod.type"]`).
    pub payment_method_at: Vec<String>,
    /// A body with Klarna's authorize shape (`request_payment_transaction`) is Klarna
    /// (default true).
    pub authorize_shape: bool,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            payment_method: vec!["klarna".into()],
            payment_method_at: vec!["payment_method".into(), "payment_method.type".into()],
            authorize_shape: true,
        }
    }
}

/// Where the partner's fields are read, first name found wins. Every entry is a dot path
/// (`payment_method_options.klarna.return_url`); keys match as the engine matches them
/// everywhere (any case, duplicates refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PartnerFieldsConfig {
    /// Default `["klarna_return_url", "return_url"]`.
    pub return_url: Vec<String>,
    /// Default `["klarna_app_return_url", "app_return_url"]`.
    pub app_return_url: Vec<String>,
    /// Field used as `payment_request_reference` (default `["reference"]`). When none is
    /// present the reference is derived from the request, the same for every retry of it:
    /// `idem-` and 32 hex digits of SHA-256 over the path and the partner's idempotency key
    /// (see [`idempotency_header`](Self::idempotency_header)), else `req-` and 32 hex digits of
    /// SHA-256 over the path and the body as received.
    pub reference: Vec<String>,
    /// The request header carrying the partner's idempotency key (default
    /// `Idempotency-Key`; `""` = never read, the reference is then derived from the body).
    pub idempotency_header: String,
    /// Partner-only fields removed from the forwarded body once consumed (default
    /// `["klarna_return_url", "klarna_app_return_url"]`; `[]` keeps everything).
    pub strip: Vec<String>,
}

impl Default for PartnerFieldsConfig {
    fn default() -> Self {
        PartnerFieldsConfig {
            return_url: vec!["klarna_return_url".into(), "return_url".into()],
            app_return_url: vec!["klarna_app_return_url".into(), "app_return_url".into()],
            reference: vec!["reference".into()],
            idempotency_header: "Idempotency-Key".into(),
            strip: vec!["klarna_return_url".into(), "klarna_app_return_url".into()],
        }
    }
}

/// Acquirer defaults used when the partner gives none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DefaultsConfig {
    /// Return URL when the partner gives none (default: none, and such requests are refused).
    pub return_url: Option<String>,
    /// App return URL when the partner gives none (default: none, and none is sent).
    pub app_return_url: Option<String>,
    /// `customer_interaction_config.interaction_expiry.duration`, ISO 8601 (e.g. `PT30M`),
    /// 15 minutes ..= 48 hours (default: none, Klarna's 3 hours).
    pub interaction_expiry: Option<String>,
}

/// Which return URLs are accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReturnUrlPolicyConfig {
    /// Allowed schemes (default `["https"]`).
    pub schemes: Vec<String>,
    /// Hosts for which `http` is allowed too (default none).
    pub http_hosts: Vec<String>,
    /// Allowed hosts, exact or `*.example.com` (default empty: any host).
    pub allowed_hosts: Vec<String>,
    /// Longest URL accepted, in bytes (default 2000).
    pub max_length: usize,
    /// Placeholders accepted besides Klarna's documented ones, e.g.
    /// `["{klarna.payment_request.locale}"]` (default none). Anything else in braces is
    /// refused, so that a typo never reaches Klarna.
    pub extra_placeholders: Vec<String>,
    /// Schemes an app return URL may have (default empty: any app's own scheme, but none
    /// that opens a web browser: `http`, `https`, Android's `intent`, `x-safari-https`,
    /// `googlechromes`, `firefox`, `microsoft-edge-https`, `opera-https` and the like).
    /// When set, only these; listing `https` allows universal links and app links (checked
    /// as web return URLs, host allow-list included). Script and local schemes
    /// (`javascript`, `data`, `file`, `blob`, …) are never allowed.
    pub app_schemes: Vec<String>,
}

impl Default for ReturnUrlPolicyConfig {
    fn default() -> Self {
        ReturnUrlPolicyConfig {
            schemes: vec!["https".into()],
            http_hosts: Vec::new(),
            allowed_hosts: Vec::new(),
            max_length: 2000,
            extra_placeholders: Vec::new(),
            app_schemes: Vec::new(),
        }
    }
}

/// What the layer trusts in Klarna's answers (as relayed by the payment API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KlarnaConfig {
    /// Hosts a `payment_request_url` may have, exact or `*.example.com` (default
    /// `["pay.klarna.com", "*.klarna.com"]`, Klarna's Purchase Journey). It must be `https`
    /// on one of them to become the partner's `redirect_url`; any other answer passes
    /// through untouched (marked `passthrough`, logged).
    pub purchase_journey_hosts: Vec<String>,
    /// Also accept `http://` on a loopback host listed in `purchase_journey_hosts`
    /// (`localhost`, `127.0.0.0/8`): for a local sandbox, never production (default false).
    pub purchase_journey_http_loopback: bool,
}

impl Default for KlarnaConfig {
    fn default() -> Self {
        KlarnaConfig {
            purchase_journey_hosts: vec!["pay.klarna.com".into(), "*.klarna.com".into()],
            purchase_journey_http_loopback: false,
        }
    }
}

/// The words and URL the partner sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PartnerResponseConfig {
    /// `status` for STEP_UP_REQUIRED (default `pending`).
    pub pending: String,
    /// `status` for APPROVED (default `authorized`).
    pub authorized: String,
    /// `status` for DECLINED (default `declined`).
    pub declined: String,
    /// `redirect_url` template with `{payment_request_url}`, `{payment_request_id}` and
    /// `{payment_request_reference}` (default `{payment_request_url}`).
    pub redirect_url: String,
    /// Where the partner block goes in the payment API's answer (default
    /// [`Placement::InPlace`]).
    pub placement: Placement,
    /// How the block's keys are spelled unless [`keys`](Self::keys) names one (default
    /// [`KeyStyle::SnakeCase`], the guide's names).
    pub key_style: KeyStyle,
    /// The name of each key of the block, by the guide's name: `redirect_url = "stepUpUrl"`.
    /// A key left out is spelled as [`key_style`](Self::key_style) says. Once validated, the
    /// effective configuration ([`StepUp::config`](crate::StepUp::config), `check-config`)
    /// names every key.
    pub keys: PartnerKeysConfig,
    /// The HTTP status of each rewritten answer, by Klarna's result (default: none, the
    /// payment API's own status).
    pub http_status: HttpStatusConfig,
}

/// How the partner block's keys are spelled: `partner_response.key_style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyStyle {
    /// `"snake_case"` (the default): the guide's names, `redirect_url`, `payment_request_id`.
    #[default]
    #[serde(rename = "snake_case")]
    SnakeCase,
    /// `"camelCase"`: `redirectUrl`, `paymentRequestId`, `expiresAt`.
    #[serde(rename = "camelCase")]
    CamelCase,
}

impl KeyStyle {
    /// `name` (one of the guide's snake_case names) in this style.
    pub fn spell(self, name: &str) -> String {
        match self {
            KeyStyle::SnakeCase => name.to_owned(),
            KeyStyle::CamelCase => {
                let mut out = String::with_capacity(name.len());
                let mut upper = false;
                for c in name.chars() {
                    match c {
                        '_' => upper = true,
                        c if upper => {
                            out.extend(c.to_uppercase());
                            upper = false;
                        }
                        c => out.push(c),
                    }
                }
                out
            }
        }
    }
}

/// The names of the partner block's keys, each by the guide's name:
/// `partner_response.keys`. A key left out (`None`) is spelled as
/// `partner_response.key_style` says. Names are 1 to 64 characters, none a control
/// character, and differ (in any case) from the other keys of the same object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PartnerKeysConfig {
    /// The block's `status` (every result).
    pub status: Option<String>,
    /// `redirect_url` (`STEP_UP_REQUIRED`): where the partner sends the customer.
    pub redirect_url: Option<String>,
    /// The `klarna` object (every result).
    pub klarna: Option<String>,
    /// `klarna.payment_request_id` (`STEP_UP_REQUIRED`).
    pub payment_request_id: Option<String>,
    /// `klarna.payment_request_url` (`STEP_UP_REQUIRED`).
    pub payment_request_url: Option<String>,
    /// `klarna.payment_request_data` (`STEP_UP_REQUIRED`).
    pub payment_request_data: Option<String>,
    /// `klarna.expires_at` (`STEP_UP_REQUIRED`, when Klarna gave one).
    pub expires_at: Option<String>,
    /// `klarna.klarna_network_response_data` (every result, when Klarna sent some).
    pub klarna_network_response_data: Option<String>,
    /// `klarna.result_reason` (`DECLINED`, when Klarna gave one).
    pub result_reason: Option<String>,
}

impl PartnerKeysConfig {
    /// Each key's guide name and its configured name: the top-level keys first (`status`,
    /// `redirect_url`, `klarna`), then those of the `klarna` object.
    pub(crate) fn entries(&self) -> [(&'static str, &Option<String>); 9] {
        [
            ("status", &self.status),
            ("redirect_url", &self.redirect_url),
            ("klarna", &self.klarna),
            ("payment_request_id", &self.payment_request_id),
            ("payment_request_url", &self.payment_request_url),
            ("payment_request_data", &self.payment_request_data),
            ("expires_at", &self.expires_at),
            (
                "klarna_network_response_data",
                &self.klarna_network_response_data,
            ),
            ("result_reason", &self.result_reason),
        ]
    }

    fn entries_mut(&mut self) -> [&mut Option<String>; 9] {
        [
            &mut self.status,
            &mut self.redirect_url,
            &mut self.klarna,
            &mut self.payment_request_id,
            &mut self.payment_request_url,
            &mut self.payment_request_data,
            &mut self.expires_at,
            &mut self.klarna_network_response_data,
            &mut self.result_reason,
        ]
    }

    /// Every key named: those left out spelled in `style`.
    pub(crate) fn resolve(&mut self, style: KeyStyle) {
        let guide = self.entries().map(|(g, _)| g);
        for (slot, g) in self.entries_mut().into_iter().zip(guide) {
            if slot.is_none() {
                *slot = Some(style.spell(g));
            }
        }
    }
}

/// The HTTP status of each rewritten answer, by Klarna's result:
/// `partner_response.http_status`. A result left out keeps the payment API's status. Each
/// is a 2xx that carries a body (not 204, 205 or 206) or a 4xx.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpStatusConfig {
    /// For `STEP_UP_REQUIRED` (the pending block), e.g. 403.
    pub step_up_required: Option<u16>,
    /// For `APPROVED`, e.g. 201.
    pub approved: Option<u16>,
    /// For `DECLINED`, e.g. 402.
    pub declined: Option<u16>,
}

/// Where the partner block goes in the payment API's answer: `partner_response.placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Placement {
    /// `"in_place"`: where Klarna's answer was: the whole body, or the value at
    /// `klarna_answer_at`.
    #[default]
    InPlace,
    /// `"top_level"`: Klarna's answer at `klarna_answer_at` is removed, and `status`,
    /// `redirect_url` (pending only) and `klarna` are set at the top level of the payment
    /// API's JSON (in place when it has them already); every other member is kept byte for
    /// byte. Needs `klarna_answer_at`.
    TopLevel,
}

impl Default for PartnerResponseConfig {
    fn default() -> Self {
        PartnerResponseConfig {
            pending: "pending".into(),
            authorized: "authorized".into(),
            declined: "declined".into(),
            redirect_url: "{payment_request_url}".into(),
            placement: Placement::InPlace,
            key_style: KeyStyle::SnakeCase,
            keys: PartnerKeysConfig::default(),
            http_status: HttpStatusConfig::default(),
        }
    }
}

impl StepUpConfig {
    /// Parses a TOML document. Unknown keys are errors; every wrong key is reported, each
    /// with its line and column.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let value = parse_toml(text)?;
        let mut errors = Vec::new();
        read::deserialize_all(value, "", &mut errors)
            .ok_or_else(|| ConfigErrors(errors).located(text))
    }

    /// The default candidate routes.
    pub fn default_routes() -> Vec<RouteConfig> {
        [
            "/payments",
            "/v1/payments",
            "/v2/accounts/{id}/payment/authorize",
        ]
        .into_iter()
        .map(|path| RouteConfig::new("POST", path))
        .collect()
    }
}

/// One configuration error: the key (dotted path), what is wrong with it, and where it is in
/// the file when it was read from one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The key, e.g. `return_url_policy.allowed_hosts[1]`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
    /// Line and column (1-based) in the TOML text, when known.
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
            location: None,
        }
    }
}

impl ConfigErrors {
    /// The same errors, each with its place in `text` (the TOML they were read from).
    pub fn located(mut self, text: &str) -> Self {
        for e in &mut self.0 {
            if e.location.is_none() && !e.key.is_empty() {
                e.location = read::locate(text, &e.key);
            }
        }
        self
    }
}

/// Every error found in a configuration, each naming its key.
///
/// Both `{}` and `{:?}` print one error a line, as `key: reason (line L, column C)`, so that
/// a `main` returning it with `?` shows them readably (`{:#?}` shows the structures):
///
/// ```
/// use klarna_stepup::StepUp;
///
/// let err = StepUp::from_toml("body_limit = \"1MB\"\n[return_url_policy]\nmax_length = -1\n")
///     .unwrap_err();
/// assert_eq!(
///     format!("{err:?}"),
///     "body_limit: invalid type: string \"1MB\", expected usize (line 1, column 1)\n\
///      return_url_policy.max_length: invalid value: integer `-1`, expected usize \
///      (line 3, column 1)"
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Debug for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_tuple("ConfigErrors").field(&self.0).finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)?;
        } else {
            write!(f, "{}: {}", self.key, self.reason)?;
        }
        match self.location {
            Some((line, column)) => write!(f, " (line {line}, column {column})"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl std::error::Error for ConfigError {}

/// Collects errors while validating.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<ConfigError>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigError::new(key, reason));
    }
}

/// `text` as a TOML value; a syntax error names its line and column.
#[doc(hidden)]
pub fn parse_toml(text: &str) -> Result<toml::Value, ConfigErrors> {
    toml::from_str::<toml::Table>(text)
        .map(toml::Value::Table)
        .map_err(|e| {
            let mut error = ConfigError::new("", e.message().trim());
            error.location = e.span().and_then(|s| {
                let before = text.get(..s.start)?;
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                Some((line, column))
            });
            ConfigErrors(vec![error])
        })
}
