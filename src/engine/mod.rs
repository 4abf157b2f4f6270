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

// The four flows, each with its `impl StepUp` section: the partner's request, the payment
// API's answer, the customer's return through the acquirer, Klarna's webhook. Beside them
// the tenancy (`partners`), the compiled configuration and the layer's own answers; under
// `wire`, the generic pieces (JSON scanning and splicing, head edits, decoding, paths).
mod acquirer_return;
mod classify;
mod compile;
mod partners;
mod refusal;
mod request;
mod response;
pub mod webhook;
mod wire;

// The flows' parts and the wire pieces under the short names the flows use.
use request::reference;
pub(crate) use request::return_url;
use response::partner_block;
pub use wire::trace;
pub(crate) use wire::{decode, json};
use wire::{head, routes};

use std::sync::Arc;

use crate::config::{ConfigError, ConfigErrors, StepUpConfig};
use acquirer_return::ReturnEndpoint;
use compile::TemplatePart;
pub(crate) use compile::CROSS_KEY_CHECKS;
use return_url::{PurchaseJourney, ReturnUrlPolicy};
use routes::RoutePattern;
use webhook::Webhooks;

pub use crate::config::DEFAULT_BODY_LIMIT;
pub use acquirer_return::{ReturnRedirect, UNCONFIRMED};
pub(crate) use classify::HeadReason;
pub use classify::{Candidate, HeadRefusal, Route};
pub(crate) use head::check_request_target;
pub use head::Head;
// The request head check of the server crate (klarna-stepup-server, which pins this crate's
// exact version): not part of the public API.
pub(crate) use head::{
    answer_being_read, content_length, injected_request, mark_code, mark_passthrough, mark_relayed,
    mark_rewritten, relay_request, streamed_request, strip_connection_headers,
    strip_forged_headers,
};
#[doc(hidden)]
pub use head::{check_request_head, one_content_length};
pub use head::{strip_hop_by_hop, HeadLimits, MARKER_HEADER, STALE_RESPONSE_HEADERS};
pub use refusal::{Refusal, RefusalCode};
pub use request::{Exchange, RequestVerdict};
pub use response::{AuthorizeResult, ResponseVerdict};
pub use response::{KeepReason, ResponsePlan};

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
    inner: Arc<Handle>,
}

/// A handle on the compiled engine: what each request's clone of a [`StepUp`] counts (see
/// [`StepUp::fork`]). Alone in its 128 bytes, so that two handles' counts never share a
/// cache line (the CPU fetches lines in pairs), wherever they were allocated.
#[repr(align(128))]
struct Handle(Arc<Engine>);

impl std::ops::Deref for Handle {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.0
    }
}

/// The compiled configuration: the parts the engine reads on each request, beside the
/// configuration they came from.
struct Engine {
    config: StepUpConfig,
    routes: Vec<RoutePattern>,
    inject_at: Vec<String>,
    /// The top-level keys a candidate body is read at (duplicates of them are refused).
    top_level_reads: Vec<String>,
    answer_at: Vec<String>,
    policy: ReturnUrlPolicy,
    journey: PurchaseJourney,
    redirect_template: Vec<TemplatePart>,
    /// The partner block's key names (`partner_response.keys`, `key_style`).
    block_keys: partner_block::BlockKeys,
    /// The HTTP status of each rewritten answer (`partner_response.http_status`).
    http_status: partner_block::HttpStatus,
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
            inner: Arc::new(Handle(Arc::new(compile::compile(config, &secret)?))),
        })
    }

    /// Parses and validates a TOML configuration. Every error is reported at once (misspelt
    /// keys, values of the wrong type and failed checks; a check that reads a value of the
    /// wrong type is skipped), each naming its key, and its line and column in `text`.
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
        let mut errors = Vec::new();
        crate::config::read::step_up(crate::config::parse_toml(text)?, &mut errors)
            .ok_or_else(|| ConfigErrors(errors).located(text))
    }

    /// The effective configuration, defaults spelled out.
    pub fn config(&self) -> &StepUpConfig {
        &self.inner.config
    }

    /// The same engine behind a reference count of its own.
    ///
    /// Clones of a `StepUp` share one reference count, which every request takes and gives
    /// back. A server that runs a runtime on each core (as the ready proxy does) can give
    /// each runtime a fork, so that the count stays in that core's cache instead of moving
    /// between cores on every request. A fork shares the compiled engine itself (nothing is
    /// copied, however many partners it holds), whose count no request touches. Anywhere
    /// else, clone.
    ///
    /// ```
    /// use klarna_stepup::{StepUp, StepUpConfig};
    ///
    /// let step_up = StepUp::new(StepUpConfig::default().allowed_hosts(["*.partner.example"]))?;
    /// let per_core: Vec<StepUp> = (0..2).map(|_| step_up.fork()).collect();
    /// assert_eq!(per_core[1].config(), step_up.config());
    /// # Ok::<(), klarna_stepup::ConfigErrors>(())
    /// ```
    pub fn fork(&self) -> StepUp {
        StepUp {
            inner: Arc::new(Handle(self.inner.0.clone())),
        }
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
}

/// The current time in unix seconds, for the driver to pass to the engine.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
