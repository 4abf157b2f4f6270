//! The builder methods: every key of the configuration has a typed way in, named as the key.
//!
//! Each method sets one key and returns the value, as tower-http's builders do; a table is
//! built the same way and set whole with [`StepUpConfig`]'s method of the table's name.
//! Validation happens once, in [`StepUp::new`](crate::StepUp::new).

use super::{
    AcquirerRedirectConfig, AcquirerReturnConfig, DefaultsConfig, DetectConfig, HttpStatusConfig,
    KeyConfig, KeyStyle, KlarnaConfig, Mode, PartnerEntry, PartnerFieldsConfig, PartnerKeysConfig,
    PartnerResponseConfig, PartnersConfig, Placement, ReturnUrlPolicyConfig, RouteConfig,
    StepUpConfig, TraceContextConfig, UnknownPartner, WebhooksConfig,
};

/// The strings of a list key.
fn strings<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    values.into_iter().map(Into::into).collect()
}

/// Setters named as their keys: `string` (any `Into<String>`), `strings` (any list of them),
/// `some_string` and `some_strings` (the same, for keys that may be left out), `value` (the
/// key's own type) and `some_value` (the same, for a key that may be left out).
macro_rules! setters {
    ($ty:ty { $($(#[$doc:meta])* $name:ident: $kind:ident $(<$t:ty>)?,)* }) => {
        impl $ty {
            $(setters!(@one $(#[$doc])* $name $kind $($t)?);)*
        }
    };
    (@one $(#[$doc:meta])* $name:ident string) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$name = value.into();
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident some_string) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$name = Some(value.into());
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident strings) => {
        $(#[$doc])*
        pub fn $name<I, S>(mut self, values: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.$name = strings(values);
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident some_strings) => {
        $(#[$doc])*
        pub fn $name<I, S>(mut self, values: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.$name = Some(strings(values));
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident some_value $t:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = Some(value);
            self
        }
    };
    (@one $(#[$doc:meta])* $name:ident value $t:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $t) -> Self {
            self.$name = value;
            self
        }
    };
}

// === impl StepUpConfig ===

setters!(StepUpConfig {
    /// `mode`: what step-up does on candidate routes (`enforce`, `shadow`, `answers_only`;
    /// a partner's entry may say otherwise).
    mode: value<Mode>,
    /// `body_limit`: the largest candidate body buffered, in bytes.
    body_limit: value<usize>,
    /// `inject_at`: dot path of the object that receives `step_up_config`.
    inject_at: string,
    /// `klarna_answer_at`: dot path of Klarna's answer in the payment API's answer.
    klarna_answer_at: string,
    /// `[detect]`, the whole table: how a candidate body is recognized as a Klarna payment.
    detect: value<DetectConfig>,
    /// `[partner_fields]`, the whole table: where the partner's fields are read.
    partner_fields: value<PartnerFieldsConfig>,
    /// `[defaults]`, the whole table: the acquirer's defaults.
    defaults: value<DefaultsConfig>,
    /// `[return_url_policy]`, the whole table: which return URLs are accepted.
    return_url_policy: value<ReturnUrlPolicyConfig>,
    /// `[klarna]`, the whole table: what the layer trusts in Klarna's answers.
    klarna: value<KlarnaConfig>,
    /// `[partner_response]`, the whole table: the partner-facing vocabulary.
    partner_response: value<PartnerResponseConfig>,
    /// `[acquirer_return]`, the whole table: turns the acquirer-controlled return on.
    acquirer_return: value<AcquirerReturnConfig>,
    /// `[webhooks]`, the whole table: turns the verified webhook relay on.
    webhooks: value<WebhooksConfig>,
    /// `[trace_context]`, the whole table: W3C trace context on step-up's requests.
    trace_context: value<TraceContextConfig>,
    /// `[partners]`, the whole table: many partners behind one acquirer.
    ///
    /// ```
    /// use klarna_stepup::config::{PartnerEntry, PartnersConfig, UnknownPartner};
    /// use klarna_stepup::{StepUp, StepUpConfig};
    ///
    /// let config = StepUpConfig::default()
    ///     .allowed_hosts(["*.partner.example"])
    ///     .partners(
    ///         PartnersConfig::default()
    ///             .header("X-Partner-Id")
    ///             .unknown(UnknownPartner::Refuse)
    ///             .entry(
    ///                 PartnerEntry::new("shop-a")
    ///                     .allowed_hosts(["shop-a.example", "*.shop-a.example"])
    ///                     .return_url("https://shop-a.example/klarna/return")
    ///                     .interaction_expiry("PT1H"),
    ///             )
    ///             .entry(PartnerEntry::new("shop-b").allowed_hosts(["shop-b.example"])),
    ///     );
    /// let step_up = StepUp::new(config)?;
    /// assert_eq!(step_up.config().partners.entries.len(), 2);
    /// # Ok::<(), klarna_stepup::ConfigErrors>(())
    /// ```
    partners: value<PartnersConfig>,
});

/// Shortcuts to the keys of a table most configurations set.
impl StepUpConfig {
    /// `routes`: the candidate routes, replacing the default ones.
    pub fn routes(mut self, routes: impl IntoIterator<Item = RouteConfig>) -> Self {
        self.routes = routes.into_iter().collect();
        self
    }

    /// `defaults.return_url`: the return URL when the partner gives none.
    pub fn default_return_url(mut self, url: impl Into<String>) -> Self {
        self.defaults.return_url = Some(url.into());
        self
    }

    /// `defaults.app_return_url`: the app return URL when the partner gives none.
    pub fn default_app_return_url(mut self, url: impl Into<String>) -> Self {
        self.defaults.app_return_url = Some(url.into());
        self
    }

    /// `defaults.interaction_expiry`: an ISO 8601 duration, 15 minutes ..= 48 hours.
    pub fn interaction_expiry(mut self, duration: impl Into<String>) -> Self {
        self.defaults.interaction_expiry = Some(duration.into());
        self
    }

    /// `return_url_policy.allowed_hosts`: exact hosts or `*.example.com`.
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.return_url_policy.allowed_hosts = strings(hosts);
        self
    }

    /// `return_url_policy.http_hosts`: hosts for which plain `http` is allowed too.
    pub fn http_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.return_url_policy.http_hosts = strings(hosts);
        self
    }

    /// `detect.payment_method`: the values of `payment_method` that mean Klarna.
    pub fn detect_payment_method<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.detect.payment_method = strings(values);
        self
    }

    /// `[acquirer_redirect]` on (`enabled = true`) at `path`: the partner's `redirect_url` is
    /// the layer's own signed link to Klarna's Purchase Journey (needs
    /// [`acquirer_return`](Self::acquirer_return)).
    pub fn acquirer_redirect(mut self, path: impl Into<String>) -> Self {
        self.acquirer_redirect = AcquirerRedirectConfig {
            enabled: true,
            path: path.into(),
        };
        self
    }
}

// === impl the tables ===

setters!(TraceContextConfig {
    /// `trace_context.propagate`: continue (or start) the W3C trace of the requests step-up
    /// acts on, with its own span as the payment API's parent.
    propagate: value<bool>,
});

setters!(DetectConfig {
    /// `detect.payment_method`: the values of the payment method that mean Klarna.
    payment_method: strings,
    /// `detect.payment_method_at`: the dot paths where the payment method is read.
    payment_method_at: strings,
    /// `detect.authorize_shape`: a body with Klarna's authorize shape is Klarna.
    authorize_shape: value<bool>,
});

setters!(PartnerFieldsConfig {
    /// `partner_fields.return_url`: where the partner's return URL is read.
    return_url: strings,
    /// `partner_fields.app_return_url`: where the partner's app return URL is read.
    app_return_url: strings,
    /// `partner_fields.reference`: where the payment request reference is read.
    reference: strings,
    /// `partner_fields.idempotency_header`: the header of the partner's idempotency key
    /// (`""`: never read).
    idempotency_header: string,
    /// `partner_fields.strip`: the partner-only fields removed before forwarding.
    strip: strings,
});

setters!(DefaultsConfig {
    /// `defaults.return_url`: the return URL when the partner gives none.
    return_url: some_string,
    /// `defaults.app_return_url`: the app return URL when the partner gives none.
    app_return_url: some_string,
    /// `defaults.interaction_expiry`: an ISO 8601 duration, 15 minutes ..= 48 hours.
    interaction_expiry: some_string,
});

setters!(ReturnUrlPolicyConfig {
    /// `return_url_policy.schemes`: the allowed schemes (`https`, `http`).
    schemes: strings,
    /// `return_url_policy.http_hosts`: hosts for which plain `http` is allowed too.
    http_hosts: strings,
    /// `return_url_policy.allowed_hosts`: exact hosts or `*.example.com` (empty: any).
    allowed_hosts: strings,
    /// `return_url_policy.max_length`: the longest URL accepted, in bytes.
    max_length: value<usize>,
    /// `return_url_policy.extra_placeholders`: placeholders accepted besides Klarna's.
    extra_placeholders: strings,
    /// `return_url_policy.app_schemes`: the schemes an app return URL may have.
    app_schemes: strings,
});

setters!(KlarnaConfig {
    /// `klarna.purchase_journey_hosts`: the hosts a `payment_request_url` may have.
    purchase_journey_hosts: strings,
    /// `klarna.purchase_journey_http_loopback`: also `http://` on a listed loopback host
    /// (local sandboxes only).
    purchase_journey_http_loopback: value<bool>,
});

setters!(PartnerResponseConfig {
    /// `partner_response.pending`: the `status` for STEP_UP_REQUIRED.
    pending: string,
    /// `partner_response.authorized`: the `status` for APPROVED.
    authorized: string,
    /// `partner_response.declined`: the `status` for DECLINED.
    declined: string,
    /// `partner_response.redirect_url`: the `redirect_url` template.
    redirect_url: string,
    /// `partner_response.placement`: where the partner block goes.
    placement: value<Placement>,
    /// `partner_response.key_style`: how the block's keys are spelled.
    key_style: value<KeyStyle>,
    /// `[partner_response.keys]`, the whole table: the block's key names.
    keys: value<PartnerKeysConfig>,
    /// `[partner_response.http_status]`, the whole table: the status of each result.
    http_status: value<HttpStatusConfig>,
});

setters!(PartnerKeysConfig {
    /// `partner_response.keys.status`: the name of the block's `status`.
    status: some_string,
    /// `partner_response.keys.redirect_url`: the name of `redirect_url`.
    redirect_url: some_string,
    /// `partner_response.keys.klarna`: the name of the `klarna` object.
    klarna: some_string,
    /// `partner_response.keys.payment_request_id`: the name of `klarna.payment_request_id`.
    payment_request_id: some_string,
    /// `partner_response.keys.payment_request_url`: the name of `klarna.payment_request_url`.
    payment_request_url: some_string,
    /// `partner_response.keys.payment_request_data`: the name of
    /// `klarna.payment_request_data`.
    payment_request_data: some_string,
    /// `partner_response.keys.expires_at`: the name of `klarna.expires_at`.
    expires_at: some_string,
    /// `partner_response.keys.klarna_network_response_data`: the name of
    /// `klarna.klarna_network_response_data`.
    klarna_network_response_data: some_string,
    /// `partner_response.keys.result_reason`: the name of `klarna.result_reason`.
    result_reason: some_string,
});

setters!(HttpStatusConfig {
    /// `partner_response.http_status.step_up_required`: the status of the pending block.
    step_up_required: some_value<u16>,
    /// `partner_response.http_status.approved`: the status of the authorized block.
    approved: some_value<u16>,
    /// `partner_response.http_status.declined`: the status of the declined block.
    declined: some_value<u16>,
});

setters!(AcquirerReturnConfig {
    /// `acquirer_return.enabled` ([`new`](Self::new) turns it on).
    enabled: value<bool>,
    /// `acquirer_return.public_base_url`: where the layer is reachable from browsers.
    public_base_url: string,
    /// `acquirer_return.path`: the endpoint's path prefix.
    path: string,
    /// `acquirer_return.keys`: the signing keys, replacing any (the first one signs).
    keys: value<Vec<KeyConfig>>,
    /// `acquirer_return.token_margin_secs`: added to the payment request's lifetime.
    token_margin_secs: value<u64>,
    /// `acquirer_return.token_expiry_bucket_secs`: what a token's expiry is rounded up to.
    token_expiry_bucket_secs: value<u64>,
    /// `acquirer_return.notify_path`: each return is posted, signed, to this path of the
    /// payment API.
    notify_path: some_string,
    /// `acquirer_return.notify_timeout_ms`: how long the redirect waits for the payment
    /// API's answer to a notification.
    notify_timeout_ms: value<u64>,
});

impl AcquirerReturnConfig {
    /// Adds a key to `acquirer_return.keys` (verifies tokens; signs only if it is the first).
    pub fn key(mut self, id: impl Into<String>, env: impl Into<String>) -> Self {
        self.keys.push(KeyConfig::new(id, env));
        self
    }
}

setters!(WebhooksConfig {
    /// `webhooks.enabled` ([`new`](Self::new) turns it on).
    enabled: value<bool>,
    /// `webhooks.path`: where Klarna posts.
    path: string,
    /// `webhooks.relay_path`: where the payment API takes verified webhooks.
    relay_path: string,
    /// `webhooks.keys`: Klarna's signing keys, replacing any.
    keys: value<Vec<KeyConfig>>,
    /// `webhooks.body_limit`: the largest webhook body, in bytes.
    body_limit: value<usize>,
    /// `webhooks.relay_timeout_ms`: how long the tower adapter waits for the payment API.
    relay_timeout_ms: value<u64>,
});

impl WebhooksConfig {
    /// Adds a signing key to `webhooks.keys`.
    pub fn key(mut self, id: impl Into<String>, env: impl Into<String>) -> Self {
        self.keys.push(KeyConfig::new(id, env));
        self
    }
}

setters!(PartnersConfig {
    /// `partners.header`: the request header carrying the partner id.
    header: string,
    /// `partners.path_param`: the route parameter carrying the partner id.
    path_param: string,
    /// `partners.unknown`: what a partner without an entry gets.
    unknown: value<UnknownPartner>,
    /// `partners.entries`: every partner's own policy, replacing any.
    entries: value<Vec<PartnerEntry>>,
});

impl PartnersConfig {
    /// Adds an entry to `partners.entries` (`[[partners.entries]]`).
    pub fn entry(mut self, entry: PartnerEntry) -> Self {
        self.entries.push(entry);
        self
    }
}

setters!(PartnerEntry {
    /// `allowed_hosts` of the entry (else `return_url_policy.allowed_hosts`).
    allowed_hosts: some_strings,
    /// `schemes` of the entry (else `return_url_policy.schemes`).
    schemes: some_strings,
    /// `http_hosts` of the entry (else `return_url_policy.http_hosts`).
    http_hosts: some_strings,
    /// `return_url` of the entry (else `defaults.return_url`).
    return_url: some_string,
    /// `app_return_url` of the entry (else `defaults.app_return_url`).
    app_return_url: some_string,
    /// `interaction_expiry` of the entry (else `defaults.interaction_expiry`).
    interaction_expiry: some_string,
    /// `mode` of the entry (else the top-level `mode`).
    mode: some_value<Mode>,
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of the configuration, none at its default.
    pub(crate) const EVERY_KEY: &str = r#"
mode = "shadow"
body_limit = 262144
inject_at = "payment"
klarna_answer_at = "klarna"

[[routes]]
method = "POST"
path = "/partners/{partner}/payments"

[[routes]]
method = "PUT"
path = "/partners/{partner}/orders/{id}"

[detect]
payment_method = ["klarna", "klarna_pay"]
payment_method_at = ["payment.method"]
authorize_shape = false

[partner_fields]
return_url = ["urls.return"]
app_return_url = ["urls.app_return"]
reference = ["order_id"]
idempotency_header = "X-Request-Id"
strip = ["urls"]

[defaults]
return_url = "https://pay.acquirer.example/klarna/return"
app_return_url = "acquirerapp://klarna"
interaction_expiry = "PT1H"

[return_url_policy]
schemes = ["https", "http"]
http_hosts = ["localhost"]
allowed_hosts = ["*.partner.example", "pay.acquirer.example"]
max_length = 4000
extra_placeholders = ["{klarna.payment_request.locale}"]
app_schemes = ["acquirerapp"]

[klarna]
purchase_journey_hosts = ["pay.klarna.com"]
purchase_journey_http_loopback = true

[partner_response]
pending = "requires_action"
authorized = "succeeded"
declined = "failed"
redirect_url = "https://pay.acquirer.example/r/{payment_request_id}"
placement = "top_level"
key_style = "camelCase"

[partner_response.keys]
status = "state"
redirect_url = "stepUpUrl"
klarna = "provider"
payment_request_id = "requestId"
payment_request_url = "requestUrl"
payment_request_data = "requestData"
expires_at = "validUntil"
klarna_network_response_data = "networkData"
result_reason = "reason"

[partner_response.http_status]
step_up_required = 403
approved = 201
declined = 402

[acquirer_return]
enabled = true
public_base_url = "https://pay.acquirer.example"
path = "/klarna/back"
token_margin_secs = 600
token_expiry_bucket_secs = 60
notify_path = "/internal/klarna/returns"
notify_timeout_ms = 2000

[[acquirer_return.keys]]
id = "k2"
env = "RETURN_KEY_2"

[[acquirer_return.keys]]
id = "k1"
env = "RETURN_KEY_1"

[acquirer_redirect]
enabled = true
path = "/klarna/go"

[webhooks]
enabled = true
path = "/hooks/klarna"
relay_path = "/internal/klarna/webhooks"
body_limit = 32768
relay_timeout_ms = 5000

[[webhooks.keys]]
id = "klarna-key-1"
env = "KLARNA_WEBHOOK_KEY"

[trace_context]
propagate = true

[partners]
header = "X-Partner-Id"
path_param = "partner"
unknown = "global"

[[partners.entries]]
id = "shop-a"
allowed_hosts = ["shop-a.example"]
schemes = ["https"]
http_hosts = ["localhost"]
return_url = "https://shop-a.example/klarna/return"
app_return_url = "shopa://klarna"
interaction_expiry = "PT2H"
mode = "answers_only"

[[partners.entries]]
id = "shop-b"
"#;

    /// [`EVERY_KEY`], built in code.
    fn every_key_built() -> StepUpConfig {
        StepUpConfig::default()
            .mode(Mode::Shadow)
            .body_limit(262_144)
            .inject_at("payment")
            .klarna_answer_at("klarna")
            .routes([
                RouteConfig::new("POST", "/partners/{partner}/payments"),
                RouteConfig::new("PUT", "/partners/{partner}/orders/{id}"),
            ])
            .detect(
                DetectConfig::default()
                    .payment_method(["klarna", "klarna_pay"])
                    .payment_method_at(["payment.method"])
                    .authorize_shape(false),
            )
            .partner_fields(
                PartnerFieldsConfig::default()
                    .return_url(["urls.return"])
                    .app_return_url(["urls.app_return"])
                    .reference(["order_id"])
                    .idempotency_header("X-Request-Id")
                    .strip(["urls"]),
            )
            .defaults(
                DefaultsConfig::default()
                    .return_url("https://pay.acquirer.example/klarna/return")
                    .app_return_url("acquirerapp://klarna")
                    .interaction_expiry("PT1H"),
            )
            .return_url_policy(
                ReturnUrlPolicyConfig::default()
                    .schemes(["https", "http"])
                    .http_hosts(["localhost"])
                    .allowed_hosts(["*.partner.example", "pay.acquirer.example"])
                    .max_length(4000)
                    .extra_placeholders(["{klarna.payment_request.locale}"])
                    .app_schemes(["acquirerapp"]),
            )
            .klarna(
                KlarnaConfig::default()
                    .purchase_journey_hosts(["pay.klarna.com"])
                    .purchase_journey_http_loopback(true),
            )
            .partner_response(
                PartnerResponseConfig::default()
                    .pending("requires_action")
                    .authorized("succeeded")
                    .declined("failed")
                    .redirect_url("https://pay.acquirer.example/r/{payment_request_id}")
                    .placement(Placement::TopLevel)
                    .key_style(KeyStyle::CamelCase)
                    .keys(
                        PartnerKeysConfig::default()
                            .status("state")
                            .redirect_url("stepUpUrl")
                            .klarna("provider")
                            .payment_request_id("requestId")
                            .payment_request_url("requestUrl")
                            .payment_request_data("requestData")
                            .expires_at("validUntil")
                            .klarna_network_response_data("networkData")
                            .result_reason("reason"),
                    )
                    .http_status(
                        HttpStatusConfig::default()
                            .step_up_required(403)
                            .approved(201)
                            .declined(402),
                    ),
            )
            .acquirer_return(
                AcquirerReturnConfig::new("https://pay.acquirer.example", "k2", "RETURN_KEY_2")
                    .key("k1", "RETURN_KEY_1")
                    .path("/klarna/back")
                    .token_margin_secs(600)
                    .token_expiry_bucket_secs(60)
                    .notify_path("/internal/klarna/returns")
                    .notify_timeout_ms(2000),
            )
            .acquirer_redirect("/klarna/go")
            .webhooks(
                WebhooksConfig::new("klarna-key-1", "KLARNA_WEBHOOK_KEY")
                    .path("/hooks/klarna")
                    .relay_path("/internal/klarna/webhooks")
                    .body_limit(32_768)
                    .relay_timeout_ms(5000),
            )
            .trace_context(TraceContextConfig::default().propagate(true))
            .partners(
                PartnersConfig::default()
                    .header("X-Partner-Id")
                    .path_param("partner")
                    .unknown(UnknownPartner::Global)
                    .entry(
                        PartnerEntry::new("shop-a")
                            .allowed_hosts(["shop-a.example"])
                            .schemes(["https"])
                            .http_hosts(["localhost"])
                            .return_url("https://shop-a.example/klarna/return")
                            .app_return_url("shopa://klarna")
                            .interaction_expiry("PT2H")
                            .mode(Mode::AnswersOnly),
                    )
                    .entry(PartnerEntry::new("shop-b")),
            )
    }

    #[test]
    fn the_builder_reaches_every_key() {
        // The file sets every key the configuration takes...
        let parse = |text: &str| match StepUpConfig::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let accepted = crate::config::read::accepted_keys(&parse, "");
        let set = crate::config::read::keys_set(&toml::from_str(EVERY_KEY).unwrap());
        assert_eq!(
            set, accepted,
            "EVERY_KEY must set every key the configuration takes"
        );
        assert!(accepted.contains("partners.entries.interaction_expiry"));
        assert!(accepted.contains("acquirer_return.keys.env"));
        // ...none at its default (an array of tables differing as a whole)...
        let parsed = StepUpConfig::from_toml(EVERY_KEY).unwrap();
        let default = toml::Value::try_from(StepUpConfig::default()).unwrap();
        let parsed_value = toml::Value::try_from(&parsed).unwrap();
        for key in &set {
            let at = |v: &toml::Value| {
                key.split('.').try_fold(v.clone(), |v, k| match v {
                    toml::Value::Array(_) => Some(v),
                    v => v.get(k).cloned(),
                })
            };
            assert_ne!(at(&parsed_value), at(&default), "{key} is at its default");
        }
        // ...and the builder gives the same configuration.
        assert_eq!(every_key_built(), parsed);
    }
}
