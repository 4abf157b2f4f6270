//! Request side: recognize a Klarna payment and splice `step_up_config` into its bytes.

pub(crate) mod reference;
pub(crate) mod return_url;

use std::borrow::Cow;

use super::compile::iso_duration_secs;
use super::json::{self, Edits, Object};
use super::partners::{self, PartnerId, PartnerRef, PolicyView};
use super::{Candidate, Engine, Refusal, RefusalCode, StepUp};
use crate::config::StepUpConfig;

/// Longest `payment_request_reference` Klarna takes.
const MAX_REFERENCE: usize = 255;

/// Longest `return_url` sent to Klarna when the layer signs it (acquirer return on): the
/// partner's URL travels inside the token, so the URL grows by about a third plus the
/// endpoint. Klarna's published material gives no limit we could confirm (**unsure**), so
/// the layer keeps to 2000 bytes, the length URLs are safe at everywhere, and refuses at the
/// request (400 `invalid_return_url`) rather than let Klarna refuse or cut it.
pub(crate) const MAX_SIGNED_RETURN_URL: usize = 2000;

/// The keys of a `step_up_config` the layer reads.
const STEP_UP_CONFIG_KEYS: [&str; 2] = ["payment_request_reference", "customer_interaction_config"];
/// The keys of a `customer_interaction_config` the layer reads.
const INTERACTION_KEYS: [&str; 4] = [
    "method",
    "return_url",
    "app_return_url",
    "interaction_expiry",
];

/// A Klarna payment with `step_up_config` spliced in: what [`StepUp::rewrite_request`]
/// makes its [`RequestVerdict::Injected`] of.
struct Injection {
    /// The body to forward.
    body: Vec<u8>,
    /// The `payment_request_reference` sent to Klarna.
    reference: String,
    /// The partner's return URL (before any signing).
    return_url: String,
    /// How long the Payment Request may live, when the partner or the configuration set it.
    request_secs: Option<u64>,
}

/// Where `step_up_config` goes in a request, and what the caller already put there.
struct Site<'a> {
    /// The object it goes in; `None`: the request's root.
    target: Option<Object<'a>>,
    /// How many objects at the end of `inject_at` are missing (created around it).
    missing: usize,
    /// The caller's own `step_up_config`.
    suc: Option<Object<'a>>,
    /// The caller's own `customer_interaction_config` in it.
    cic: Option<Object<'a>>,
}

/// A return URL as chosen, and the name of where it came from (a field name, or
/// `defaults.return_url`).
type ChosenUrl<'a> = (Cow<'a, str>, Cow<'a, str>);

/// What a Klarna request is sent with, validated.
struct Chosen<'a> {
    reference: Cow<'a, str>,
    return_url: Cow<'a, str>,
    /// Where the return URL came from (a field name, or `defaults.return_url`).
    return_param: Cow<'a, str>,
    app_return_url: Option<Cow<'a, str>>,
    request_secs: Option<u64>,
}

/// What the request side hands to the response side of one Klarna exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub(super) route: u16,
    pub(super) reference: String,
    pub(super) return_url: String,
    pub(super) partner: Option<String>,
    /// When the request was read (unix seconds), and how long its Payment Request may live
    /// when the partner or the configuration set it: the acquirer's redirect token expires
    /// with it.
    pub(super) minted_at: u64,
    pub(super) request_secs: Option<u64>,
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
/// Exhaustive on purpose, as is [`ResponseVerdict`](super::ResponseVerdict): a new verdict is a breaking change, so
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

impl StepUp {
    /// Reads a candidate body; for a Klarna payment, splices in `step_up_config`. `now` is
    /// the current time in unix seconds (it dates the signed return token, when the acquirer
    /// return is on).
    ///
    /// Everything the engine does not set survives byte for byte: unknown fields, key order,
    /// number formats, escapes and whitespace. What the caller already put in
    /// `step_up_config` wins; only what is missing is filled.
    ///
    /// Fail closed, whatever the payment API's parser would make of the body: a body that is
    /// not one strict JSON object (empty, a BOM, UTF-16/32, invalid UTF-8, comments, trailing
    /// commas, `NaN`, trailing bytes, raw control characters, a top-level array…) is refused
    /// (400 `unreadable_json`), as is a duplicate of any key the layer reads (400
    /// `duplicate_key`, keys compared unescaped). A `step_up_config` the caller sent is
    /// validated like the layer's own even when the body is not Klarna (and then forwarded
    /// untouched if it holds).
    pub fn rewrite_request(&self, candidate: Candidate, body: &[u8], now: u64) -> RequestVerdict {
        let e = &*self.inner;
        let (policy, partner) = match e.policy_for(candidate.partner) {
            Ok(p) => p,
            Err(r) => return RequestVerdict::Refused(r),
        };
        let Some(root) = Object::parse(body) else {
            return RequestVerdict::Refused(unreadable(body));
        };
        // Parsed, so UTF-8. Without a Content-Type, a Rack or PHP payment API reads the body
        // as a form: `{"x":"&return_url=…"}` is JSON to the layer and a return URL to it.
        if candidate.untyped
            && std::str::from_utf8(body)
                .is_ok_and(|text| super::routes::query_names(text).any(|n| e.reads_top_level(&n)))
        {
            return RequestVerdict::Refused(Refusal::form_field());
        }
        if let Err(r) = e.check_read_keys(&root) {
            return RequestVerdict::Refused(r);
        }
        let klarna = e.is_klarna(&root);
        if let Err(r) = e.check_other_configs(&root, klarna, policy) {
            return RequestVerdict::Refused(r);
        }
        if !klarna {
            return RequestVerdict::NotKlarna;
        }
        match e.inject(body, &root, candidate, now, policy, partner.as_ref()) {
            Ok(injection) => RequestVerdict::Injected {
                body: injection.body,
                exchange: Exchange {
                    route: candidate.route,
                    reference: injection.reference,
                    return_url: injection.return_url,
                    partner: partner.map(|p| p.as_str().to_owned()),
                    minted_at: now,
                    request_secs: injection.request_secs,
                },
            },
            Err(refusal) => RequestVerdict::Refused(refusal),
        }
    }
}

impl StepUp {
    /// The exchange of a candidate whose request is not read (`answers_only`: the payment
    /// API sends its own `step_up_config`): its answer is rewritten with what Klarna's
    /// answer says (the reference it names).
    pub(crate) fn unread_exchange(&self, candidate: Candidate, now: u64) -> Exchange {
        Exchange {
            route: candidate.route,
            reference: String::new(),
            return_url: String::new(),
            partner: candidate.partner().map(str::to_owned),
            minted_at: now,
            request_secs: None,
        }
    }
}

impl Engine {
    /// The policy a candidate is served with, and its partner when partners are on; or the
    /// refusal of a partner that is missing, malformed or not served.
    fn policy_for(
        &self,
        partner: PartnerRef,
    ) -> Result<(PolicyView<'_>, Option<PartnerId>), Refusal> {
        let global = PolicyView {
            urls: &self.policy,
            return_url: self.config.defaults.return_url.as_deref(),
            app_return_url: self.config.defaults.app_return_url.as_deref(),
            interaction_expiry: self.config.defaults.interaction_expiry.as_deref(),
        };
        let Some(partners) = &self.partners else {
            return Ok((global, None));
        };
        if let Some(refusal) = partners.refusal(partner) {
            return Err(refusal);
        }
        Ok(match partner {
            PartnerRef::Listed { entry, id } => {
                (partners.policies[entry as usize].view(), Some(id))
            }
            PartnerRef::Unlisted(id) => (global, Some(id)),
            _ => (global, None),
        })
    }

    /// The top-level keys of a candidate body the engine reads (its payment method, the
    /// authorize shape, `step_up_config`, the first `inject_at` segment, the partner fields),
    /// each once; listed when the engine is built.
    fn top_level_reads(&self) -> impl Iterator<Item = &str> {
        self.top_level_reads.iter().map(String::as_str)
    }

    /// Whether `name` (a query parameter's name, as a framework files it) is one of the
    /// [top-level keys](Self::top_level_reads) the engine reads, as [`json::same_name`]
    /// compares.
    pub(super) fn reads_top_level(&self, name: &str) -> bool {
        self.top_level_reads().any(|k| json::same_name(name, k))
    }

    /// Refuses a duplicate of any key the engine reads, wherever it reads one: a parser that
    /// takes the first copy would read what the layer did not check. Keys are compared as
    /// [`json::same_name`] compares them (`return_url` and `Return_Url` are one key to a Go
    /// payment API).
    fn check_read_keys(&self, root: &Object<'_>) -> Result<(), Refusal> {
        no_duplicates(root, self.top_level_reads(), "")?;
        for path in read_paths(&self.config).filter(|p| p.contains('.')) {
            no_duplicates_along(root, path)?;
        }
        if let Some(suc) = root.get("step_up_config") {
            step_up_config_keys(suc, "")?;
        }
        let mut parent: Option<Object<'_>> = None;
        for (i, seg) in self.inject_at.iter().enumerate() {
            let Some(obj) = parent
                .as_ref()
                .unwrap_or(root)
                .get(seg)
                .and_then(Object::from_raw)
            else {
                break;
            };
            let mut prefix = self.inject_at[..=i].join(".");
            prefix.push('.');
            let next = self
                .inject_at
                .get(i + 1)
                .map_or("step_up_config", String::as_str);
            no_duplicates(&obj, [next], &prefix)?;
            if i + 1 == self.inject_at.len() {
                if let Some(suc) = obj.get("step_up_config") {
                    step_up_config_keys(suc, &prefix)?;
                }
            }
            parent = Some(obj);
        }
        Ok(())
    }

    /// Validates every `step_up_config` the layer will not complete itself (all of them in a
    /// body that is not Klarna; the top-level one beside `inject_at` in one that is) with the
    /// checks the layer's own gets: the payment API may well read it.
    fn check_other_configs(
        &self,
        root: &Object<'_>,
        klarna: bool,
        policy: PolicyView<'_>,
    ) -> Result<(), Refusal> {
        if !klarna || !self.inject_at.is_empty() {
            if let Some(suc) = root.get("step_up_config") {
                self.check_step_up_config(suc, "", policy)?;
            }
        }
        if klarna || self.inject_at.is_empty() {
            return Ok(());
        }
        let mut target = None;
        for seg in &self.inject_at {
            match target
                .as_ref()
                .unwrap_or(root)
                .get(seg)
                .and_then(Object::from_raw)
            {
                Some(o) => target = Some(o),
                None => return Ok(()),
            }
        }
        match target.and_then(|t| t.get("step_up_config")) {
            Some(suc) => {
                let mut prefix = self.inject_at.join(".");
                prefix.push('.');
                self.check_step_up_config(suc, &prefix, policy)
            }
            None => Ok(()),
        }
    }

    /// The checks of a caller's `step_up_config` at `prefix`: an object, its reference and
    /// its return URLs valid.
    fn check_step_up_config(
        &self,
        raw: &str,
        prefix: &str,
        policy: PolicyView<'_>,
    ) -> Result<(), Refusal> {
        if raw == "null" {
            return Ok(());
        }
        let param = |name: &str| format!("{prefix}step_up_config{name}");
        let suc = Object::from_raw(raw).ok_or_else(|| {
            Refusal::invalid(
                RefusalCode::InvalidStepUpConfig,
                param(""),
                "must be an object",
            )
        })?;
        if let Some(r) = suc.get("payment_request_reference") {
            check_reference(r, param(".payment_request_reference"))?;
        }
        let cic = match suc.get("customer_interaction_config") {
            None | Some("null") => return Ok(()),
            Some(c) => Object::from_raw(c).ok_or_else(|| {
                Refusal::invalid(
                    RefusalCode::InvalidStepUpConfig,
                    param(".customer_interaction_config"),
                    "must be an object",
                )
            })?,
        };
        for (key, app) in [("return_url", false), ("app_return_url", true)] {
            if let Some(v) = cic.get(key) {
                let p = param(&format!(".customer_interaction_config.{key}"));
                check_url(v, &p, app, policy)?;
            }
        }
        Ok(())
    }

    fn is_klarna(&self, root: &Object<'_>) -> bool {
        let detect = &self.config.detect;
        let named = detect.payment_method_at.iter().any(|path| {
            value_at(root, path)
                .and_then(json::as_str)
                .is_some_and(|kind| {
                    detect
                        .payment_method
                        .iter()
                        .any(|v| json::same_name(&kind, v))
                })
        });
        named || detect.authorize_shape && root.get("request_payment_transaction").is_some()
    }

    /// Splices `step_up_config` into a Klarna payment's bytes: where it goes
    /// ([`locate`](Self::locate)), what it says ([`choose`](Self::choose),
    /// [`interaction_members`](Self::interaction_members)), and the edits
    /// ([`splice`](Self::splice)).
    fn inject<'a>(
        &'a self,
        body: &[u8],
        root: &Object<'a>,
        candidate: Candidate,
        now: u64,
        policy: PolicyView<'a>,
        partner: Option<&PartnerId>,
    ) -> Result<Injection, Refusal> {
        let site = self.locate(root)?;
        let chosen = self.choose(body, root, &site, candidate, policy, partner)?;
        let interaction = self.interaction_members(&site, &chosen, policy, partner, now)?;
        let out = self.splice(body, root, &site, &chosen.reference, &interaction, partner);
        Ok(Injection {
            body: out,
            reference: chosen.reference.into_owned(),
            return_url: chosen.return_url.into_owned(),
            request_secs: chosen.request_secs,
        })
    }

    /// Where `step_up_config` goes (walking `inject_at`; objects missing on the way are
    /// created), and what the caller already put there.
    fn locate<'a>(&self, root: &Object<'a>) -> Result<Site<'a>, Refusal> {
        let mut target: Option<Object<'a>> = None;
        let mut depth = 0;
        for (i, seg) in self.inject_at.iter().enumerate() {
            let parent = target.as_ref().unwrap_or(root);
            match parent.get(seg) {
                Some(v) if v != "null" => match Object::from_raw(v) {
                    Some(o) => {
                        target = Some(o);
                        depth = i + 1;
                    }
                    None => {
                        let param = self.inject_at[..=i].join(".");
                        return Err(Refusal::invalid(
                            RefusalCode::InvalidRequestBody,
                            param,
                            "must be an object",
                        ));
                    }
                },
                _ => break,
            }
        }
        let missing = self.inject_at.len() - depth;
        // What the caller already sent in step_up_config.
        let existing = match (missing, target.as_ref().unwrap_or(root)) {
            (0, at) => at.get("step_up_config").filter(|v| *v != "null"),
            _ => None,
        };
        let not_an_object = |name: &str| {
            Refusal::invalid(
                RefusalCode::InvalidStepUpConfig,
                self.config_param(name),
                "must be an object",
            )
        };
        let suc = match existing {
            Some(v) => Some(Object::from_raw(v).ok_or_else(|| not_an_object("step_up_config"))?),
            None => None,
        };
        let cic = match suc
            .as_ref()
            .and_then(|s| s.get("customer_interaction_config"))
        {
            Some(v) if v != "null" => Some(
                Object::from_raw(v)
                    .ok_or_else(|| not_an_object("step_up_config.customer_interaction_config"))?,
            ),
            _ => None,
        };
        Ok(Site {
            target,
            missing,
            suc,
            cic,
        })
    }

    /// `name` (a key under `step_up_config`'s place) as the request spells its path.
    fn config_param(&self, name: &str) -> String {
        let mut p = self.inject_at.join(".");
        if !p.is_empty() {
            p.push('.');
        }
        p.push_str(name);
        p
    }

    /// The reference (namespaced by partner), the return URLs and the Payment Request's
    /// lifetime the request is sent with, each validated.
    fn choose<'a>(
        &'a self,
        body: &[u8],
        root: &Object<'a>,
        site: &Site<'a>,
        candidate: Candidate,
        policy: PolicyView<'a>,
        partner: Option<&PartnerId>,
    ) -> Result<Chosen<'a>, Refusal> {
        let (reference, reference_param) =
            self.choose_reference(root, site.suc.as_ref(), || candidate.key.reference(body))?;
        // Unique across partners: `<partner>:<reference>`, within Klarna's limit.
        let reference: Cow<'_, str> = match partner {
            None => reference,
            Some(id) => Cow::Owned(
                partners::namespaced(id, &reference, MAX_REFERENCE).ok_or_else(|| {
                    Refusal::invalid(
                        RefusalCode::InvalidReference,
                        reference_param.unwrap_or_default(),
                        format!(
                            "is too long: with the partner prefix \"{}:\" it must be at most \
                             {MAX_REFERENCE} characters",
                            id.as_str()
                        ),
                    )
                })?,
            ),
        };
        let fields = &self.config.partner_fields.return_url;
        let (return_url, return_param) = self
            .choose_url(root, site.cic.as_ref(), false, policy)?
            .ok_or_else(|| {
            Refusal::invalid(
                RefusalCode::MissingReturnUrl,
                fields.first().cloned().unwrap_or_default(),
                format!("a return URL is required: send {}", fields.join(" or ")),
            )
        })?;
        let app_return_url = self
            .choose_url(root, site.cic.as_ref(), true, policy)?
            .map(|(url, _)| url);
        Ok(Chosen {
            reference,
            return_url,
            return_param,
            app_return_url,
            request_secs: self.request_secs(site.cic.as_ref(), policy),
        })
    }

    /// The `customer_interaction_config` members the caller did not send, serialized once:
    /// the method, the return URL Klarna gets (with the acquirer return on, the layer's own
    /// endpoint, the partner's URL signed inside it), the app return URL, the expiry.
    fn interaction_members(
        &self,
        site: &Site<'_>,
        chosen: &Chosen<'_>,
        policy: PolicyView<'_>,
        partner: Option<&PartnerId>,
        now: u64,
    ) -> Result<Vec<u8>, Refusal> {
        let mut members = Vec::with_capacity(256);
        let has = |key: &str| site.cic.as_ref().is_some_and(|c| c.get(key).is_some());
        if !has("method") {
            json::write_member(&mut members, "method", "HANDOVER");
        }
        if !has("return_url") {
            // A return_url the caller set itself is left alone.
            let url = match &self.acquirer_return {
                Some(r) => Cow::Owned(self.signed_return_url(r, chosen, partner, now)?),
                None => Cow::Borrowed(&*chosen.return_url),
            };
            json::write_member(&mut members, "return_url", &url);
        }
        if let Some(app) = chosen
            .app_return_url
            .as_ref()
            .filter(|_| !has("app_return_url"))
        {
            json::write_member(&mut members, "app_return_url", app);
        }
        if let Some(expiry) = policy
            .interaction_expiry
            .filter(|_| !has("interaction_expiry"))
        {
            let mut duration = Vec::with_capacity(expiry.len() + 16);
            json::write_member(&mut duration, "duration", expiry);
            json::write_raw_member(&mut members, "interaction_expiry", &object(&duration));
        }
        Ok(members)
    }

    /// The acquirer return's URL for Klarna, the partner's URL signed inside it; refused
    /// when longer than Klarna takes.
    fn signed_return_url(
        &self,
        r: &super::acquirer_return::ReturnEndpoint,
        chosen: &Chosen<'_>,
        partner: Option<&PartnerId>,
        now: u64,
    ) -> Result<String, Refusal> {
        let url = r.return_url_for(
            partner.map(PartnerId::as_str),
            &chosen.return_url,
            &chosen.reference,
            chosen.request_secs,
            now,
        );
        if url.len() > MAX_SIGNED_RETURN_URL {
            return Err(Refusal::invalid(
                RefusalCode::InvalidReturnUrl,
                chosen.return_param.as_ref(),
                format!(
                    "is too long: signed for the acquirer return, the URL sent to Klarna would \
                     be {} bytes, over the {MAX_SIGNED_RETURN_URL} bytes Klarna takes",
                    url.len()
                ),
            ));
        }
        Ok(url)
    }

    /// The edits: stripped fields removed, what is missing filled innermost first (an
    /// explicit null replaced in place, so that no key is ever sent twice).
    fn splice(
        &self,
        body: &[u8],
        root: &Object<'_>,
        site: &Site<'_>,
        reference: &str,
        interaction: &[u8],
        partner: Option<&PartnerId>,
    ) -> Vec<u8> {
        let mut edits = Edits::default();
        let stripped = self.strip_indices(root);
        json::remove_members(body, root, &stripped, &mut edits);
        self.strip_nested(body, root, &mut edits);
        let target_has_members = match &site.target {
            None => root.members.len() > stripped.len(),
            Some(target) => !target.members.is_empty(),
        };
        let mut suc_add = Vec::with_capacity(interaction.len() + 96);
        match site
            .suc
            .as_ref()
            .and_then(|s| s.get("payment_request_reference"))
        {
            None => json::write_member(&mut suc_add, "payment_request_reference", reference),
            // The caller's own reference, namespaced in place.
            Some(raw) if partner.is_some() => {
                let mut value = Vec::with_capacity(reference.len() + 2);
                json::write_str(&mut value, reference);
                edits.replace(json::span(body, raw), value);
            }
            Some(_) => {}
        }
        match (&site.cic, &site.suc) {
            (Some(cic), _) if !interaction.is_empty() => {
                let has_members = !cic.members.is_empty();
                json::append_members(body, cic.raw, has_members, interaction, &mut edits);
            }
            (Some(_), _) => {}
            (None, Some(suc)) => place(
                body,
                suc,
                "customer_interaction_config",
                object(interaction),
                &mut suc_add,
                &mut edits,
            ),
            (None, None) => {
                json::write_object_member(&mut suc_add, "customer_interaction_config", interaction)
            }
        }
        match &site.suc {
            Some(suc) if !suc_add.is_empty() => {
                json::append_members(body, suc.raw, !suc.members.is_empty(), &suc_add, &mut edits);
            }
            Some(_) => {}
            None => {
                let target = site.target.as_ref().unwrap_or(root);
                let missing = &self.inject_at[self.inject_at.len() - site.missing..];
                let at = (target, target_has_members);
                place_step_up_config(body, at, missing, suc_add, &mut edits);
            }
        }
        edits.apply(body)
    }

    /// `payment_request_reference`: the caller's, else the partner field, else `derived()`:
    /// one derived from the request, the same for each retry of it (see `reference.rs`).
    fn choose_reference<'a>(
        &self,
        root: &Object<'a>,
        suc: Option<&Object<'a>>,
        derived: impl FnOnce() -> String,
    ) -> Result<(Cow<'a, str>, Option<String>), Refusal> {
        let found = match suc.and_then(|s| s.get("payment_request_reference")) {
            Some(v) => Some((
                v,
                self.config_param("step_up_config.payment_request_reference"),
            )),
            None => first_field(root, &self.config.partner_fields.reference)
                .map(|(name, v)| (v, name.to_owned())),
        };
        let Some((raw, param)) = found else {
            return Ok((Cow::Owned(derived()), None));
        };
        Ok((check_reference(raw, param.clone())?, Some(param)))
    }

    /// A return URL (web, or app when `app`): the caller's step_up_config, else the partner
    /// field, else the acquirer default; with the name of where it came from. Whatever is
    /// chosen is validated.
    fn choose_url<'a>(
        &'a self,
        root: &Object<'a>,
        cic: Option<&Object<'a>>,
        app: bool,
        policy: PolicyView<'a>,
    ) -> Result<Option<ChosenUrl<'a>>, Refusal> {
        let (key, fields, default) = if app {
            (
                "app_return_url",
                &self.config.partner_fields.app_return_url,
                policy.app_return_url,
            )
        } else {
            (
                "return_url",
                &self.config.partner_fields.return_url,
                policy.return_url,
            )
        };
        let mut chosen = match cic.and_then(|c| c.get(key)) {
            Some(v) => {
                let param =
                    self.config_param(&format!("step_up_config.customer_interaction_config.{key}"));
                Some((check_url(v, &param, app, policy)?, Cow::Owned(param)))
            }
            None => None,
        };
        // Every partner field present is checked, not only the one chosen: the payment API
        // may read another (for its own redirect, say).
        for name in fields {
            if let Some(v) = value_at(root, name).filter(|v| *v != "null") {
                let value = check_url(v, name, app, policy)?;
                chosen.get_or_insert((value, Cow::Borrowed(name.as_str())));
            }
        }
        // Defaults were validated with the configuration.
        Ok(chosen
            .or_else(|| default.map(|d| (Cow::Borrowed(d), Cow::Owned(format!("defaults.{key}"))))))
    }

    /// How long the Payment Request can live, when the partner (its own
    /// `interaction_expiry.duration`) or the configuration set it: at most 48 hours, Klarna's
    /// limit (a duration the layer cannot read counts as the limit). `None`: Klarna's default.
    fn request_secs(&self, cic: Option<&Object<'_>>, policy: PolicyView<'_>) -> Option<u64> {
        const MAX: u64 = 48 * 3600;
        match cic
            .and_then(|c| c.get("interaction_expiry"))
            .filter(|v| *v != "null")
        {
            Some(raw) => Some(
                Object::from_raw(raw)
                    .and_then(|o| o.get_str("duration"))
                    .and_then(|d| iso_duration_secs(&d))
                    .map_or(MAX, |s| s.min(MAX)),
            ),
            None => policy.interaction_expiry.and_then(iso_duration_secs),
        }
    }

    /// Removes the stripped fields that sit in nested objects (dot paths), one edit per
    /// parent object so that removals never overlap.
    fn strip_nested(&self, body: &[u8], root: &Object<'_>, edits: &mut Edits) {
        let strip = &self.config.partner_fields.strip;
        let mut parents: Vec<&str> = strip
            .iter()
            .filter_map(|p| p.rsplit_once('.').map(|(parent, _)| parent))
            .collect();
        parents.sort_unstable();
        parents.dedup();
        for parent in parents {
            let Some(obj) = value_at(root, parent).and_then(Object::from_raw) else {
                continue;
            };
            let remove: Vec<usize> = obj
                .members
                .iter()
                .enumerate()
                .filter(|(_, m)| {
                    strip.iter().any(|p| {
                        p.rsplit_once('.')
                            .is_some_and(|(pp, key)| pp == parent && m.names(key))
                    })
                })
                .map(|(i, _)| i)
                .collect();
            json::remove_members(body, &obj, &remove, edits);
        }
    }

    /// Indices (sorted) of the top-level members that are stripped before forwarding.
    fn strip_indices(&self, root: &Object<'_>) -> Vec<usize> {
        if self.config.partner_fields.strip.is_empty() {
            return Vec::new();
        }
        root.members
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                self.config
                    .partner_fields
                    .strip
                    .iter()
                    .any(|s| !s.contains('.') && m.names(s))
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Why a candidate body that is not one strict JSON object is refused: what is wrong with
/// it, never what it holds.
fn unreadable(body: &[u8]) -> Refusal {
    let why = if body.iter().all(u8::is_ascii_whitespace) {
        "the body is empty: a JSON object is required".to_owned()
    } else if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        "the body starts with a byte order mark: send UTF-8 JSON without one".to_owned()
    } else if body.starts_with(&[0xFE, 0xFF])
        || body.starts_with(&[0xFF, 0xFE])
        || body.get(..2).is_some_and(|b| b.contains(&0))
    {
        "the body is UTF-16 or UTF-32: send UTF-8 JSON".to_owned()
    } else if std::str::from_utf8(body).is_err() {
        "the body is not valid UTF-8".to_owned()
    } else {
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => "the body must be a JSON object".to_owned(),
            Err(e) => format!("the body is not strict JSON (RFC 8259): {e}"),
        }
    };
    Refusal::unreadable_json(why)
}

/// Refuses a second member of `obj` named `name`, for each of `names` (compared as
/// [`json::same_name`] compares); `prefix` is the dotted path of `obj`, for the error, which
/// names the key as the layer reads it.
fn no_duplicates<'n>(
    obj: &Object<'_>,
    names: impl IntoIterator<Item = &'n str>,
    prefix: &str,
) -> Result<(), Refusal> {
    for name in names {
        let mut copies = obj.members.iter().filter(|m| m.names(name));
        if copies.next().is_some() && copies.next().is_some() {
            return Err(Refusal::duplicate_key(format!("{prefix}{name}")));
        }
    }
    Ok(())
}

/// [`no_duplicates`] in a `step_up_config` at `prefix` and its `customer_interaction_config`.
fn step_up_config_keys(raw: &str, prefix: &str) -> Result<(), Refusal> {
    let Some(suc) = Object::from_raw(raw) else {
        return Ok(());
    };
    let prefix = format!("{prefix}step_up_config.");
    no_duplicates(&suc, STEP_UP_CONFIG_KEYS, &prefix)?;
    if let Some(cic) = suc
        .get("customer_interaction_config")
        .and_then(Object::from_raw)
    {
        let prefix = format!("{prefix}customer_interaction_config.");
        no_duplicates(&cic, INTERACTION_KEYS, &prefix)?;
    }
    Ok(())
}

/// Every dot path `config` reads a partner's value at: the payment method and the partner
/// fields.
fn read_paths(config: &StepUpConfig) -> impl Iterator<Item = &str> {
    let fields = &config.partner_fields;
    config
        .detect
        .payment_method_at
        .iter()
        .chain(&fields.return_url)
        .chain(&fields.app_return_url)
        .chain(&fields.reference)
        .map(String::as_str)
}

/// The top-level keys `config` makes the engine read in a candidate body, each once, in the
/// order duplicates are looked for.
pub(in crate::engine) fn top_level_reads(
    config: &StepUpConfig,
    inject_at: &[String],
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let all = ["request_payment_transaction", "step_up_config"]
        .into_iter()
        .chain(inject_at.first().map(String::as_str))
        .chain(read_paths(config).filter_map(|path| path.split('.').next()));
    for key in all {
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
    }
    keys
}

/// A return URL (web, or app when `app`) as the caller sent it, checked by the policy.
fn check_url<'a>(
    raw: &'a str,
    param: &str,
    app: bool,
    policy: PolicyView<'_>,
) -> Result<Cow<'a, str>, Refusal> {
    let code = if app {
        RefusalCode::InvalidAppReturnUrl
    } else {
        RefusalCode::InvalidReturnUrl
    };
    let value =
        json::as_str(raw).ok_or_else(|| Refusal::invalid(code, param, "must be a string"))?;
    let checked = if app {
        policy.urls.check_app_return_url(&value)
    } else {
        policy.urls.check_return_url(&value)
    };
    match checked {
        Ok(()) => Ok(value),
        Err(why) => Err(Refusal::invalid(code, param, why)),
    }
}

/// A `payment_request_reference` as the caller sent it: a string of 1 to 255 characters.
fn check_reference(raw: &str, param: String) -> Result<Cow<'_, str>, Refusal> {
    let value = json::as_str(raw).ok_or_else(|| {
        Refusal::invalid(RefusalCode::InvalidReference, &param, "must be a string")
    })?;
    if value.is_empty() || value.chars().count() > MAX_REFERENCE {
        return Err(Refusal::invalid(
            RefusalCode::InvalidReference,
            param,
            format!("must be 1 to {MAX_REFERENCE} characters long"),
        ));
    }
    Ok(value)
}

/// The first of `names` (dot paths) present (a JSON null counts as absent).
fn first_field<'n, 'a>(root: &Object<'a>, names: &'n [String]) -> Option<(&'n str, &'a str)> {
    names.iter().find_map(|n| {
        value_at(root, n)
            .filter(|v| *v != "null")
            .map(|v| (n.as_str(), v))
    })
}

/// The raw value at a dot path (`a.b.c`: member `c` of the object at `b` of the object at
/// `a`), keys matched as [`Object::get`] matches them; `None` when any step is missing or
/// not an object. A plain name is a top-level member.
fn value_at<'a>(root: &Object<'a>, path: &str) -> Option<&'a str> {
    let Some((parents, last)) = path.rsplit_once('.') else {
        return root.get(path);
    };
    let mut obj: Option<Object<'a>> = None;
    for seg in parents.split('.') {
        let next = obj
            .as_ref()
            .unwrap_or(root)
            .get(seg)
            .and_then(Object::from_raw)?;
        obj = Some(next);
    }
    obj.as_ref().unwrap_or(root).get(last)
}

/// [`no_duplicates`] of each segment of a dot path, in the object it is read from.
fn no_duplicates_along(root: &Object<'_>, path: &str) -> Result<(), Refusal> {
    let mut obj: Option<Object<'_>> = None;
    let mut prefix = String::new();
    for seg in path.split('.') {
        let here = obj.as_ref().unwrap_or(root);
        no_duplicates(here, [seg], &prefix)?;
        let Some(next) = here.get(seg).and_then(Object::from_raw) else {
            return Ok(());
        };
        prefix.push_str(seg);
        prefix.push('.');
        obj = Some(next);
    }
    Ok(())
}

/// `{members}`.
fn object(members: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(members.len() + 2);
    o.push(b'{');
    o.extend_from_slice(members);
    o.push(b'}');
    o
}

/// Sets `key` of `parent` to `value`: in place when the key is present (as null), else as a
/// member added to `add`.
fn place(
    body: &[u8],
    parent: &Object<'_>,
    key: &str,
    value: Vec<u8>,
    add: &mut Vec<u8>,
    edits: &mut Edits,
) {
    match parent.get(key) {
        Some(null) => edits.replace(json::span(body, null), value),
        None => json::write_raw_member(add, key, &value),
    }
}

/// A new `step_up_config` (its members `suc_members`) in `target` (the object at the end of
/// `inject_at` that exists, and whether it has members), wrapped in the objects `missing`
/// on the way: `members` ends as the members of the object `key` gets.
fn place_step_up_config(
    body: &[u8],
    (target, target_has_members): (&Object<'_>, bool),
    missing: &[String],
    suc_members: Vec<u8>,
    edits: &mut Edits,
) {
    let mut members = suc_members;
    let mut key = "step_up_config";
    for seg in missing.iter().rev() {
        let mut m = Vec::with_capacity(members.len() + key.len() + 8);
        json::write_object_member(&mut m, key, &members);
        members = m;
        key = seg;
    }
    match target.get(key) {
        // An explicit null is replaced in place.
        Some(null) => edits.replace(json::span(body, null), object(&members)),
        None => {
            let mut add = Vec::with_capacity(members.len() + key.len() + 8);
            json::write_object_member(&mut add, key, &members);
            json::append_members(body, target.raw, target_has_members, &add, edits);
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use crate::{RequestVerdict, Route, StepUp};

    fn engine(toml: &str) -> StepUp {
        StepUp::from_toml(toml).unwrap()
    }

    fn verdict(e: &StepUp, body: &[u8]) -> RequestVerdict {
        let Route::Candidate(c) = e.classify(
            &Method::POST,
            &"/payments".parse().unwrap(),
            &HeaderMap::new(),
        ) else {
            unreachable!()
        };
        e.rewrite_request(c, body, 1_800_000_000)
    }

    fn refused(e: &StepUp, body: &[u8]) -> crate::Refusal {
        match verdict(e, body) {
            RequestVerdict::Refused(r) => r,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
        }
    }

    const HOSTILE: &str =
        r#""step_up_config":{"customer_interaction_config":{"return_url":"javascript:alert(1)"}}"#;

    /// A fork is the same engine behind a reference count of its own: it rewrites and refuses
    /// as the engine it came from.
    #[test]
    fn a_fork_shares_no_count_and_reads_alike() {
        let e = engine(
            "[return_url_policy]\nallowed_hosts = [\"*.partner.example\"]\n\
             [partner_fields]\nidempotency_header = \"Idempotency-Key\"\n",
        );
        let fork = e.fork();
        assert!(!std::sync::Arc::ptr_eq(&e.inner, &fork.inner));
        assert!(std::sync::Arc::ptr_eq(&e.inner.0, &fork.inner.0));
        let hostile = format!(r#"{{"payment_method":"klarna",{HOSTILE}}}"#);
        let bodies = [
            br#"{"payment_method":"klarna","return_url":"https://shop.partner.example/done"}"#
                .as_slice(),
            br#"{"payment_method":"card"}"#,
            hostile.as_bytes(),
            b"[]",
        ];
        for body in bodies {
            assert_eq!(
                format!("{:?}", verdict(&e, body)),
                format!("{:?}", verdict(&fork, body))
            );
        }
    }

    #[test]
    fn bodies_not_read_strictly_are_refused() {
        let e = engine("");
        let klarna = format!(r#"{{"payment_method":"klarna",{HOSTILE}}}"#);
        let mut bom = vec![0xEF, 0xBB, 0xBF];
        bom.extend_from_slice(klarna.as_bytes());
        let utf16: Vec<u8> = klarna.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf16be: Vec<u8> = klarna.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let utf32: Vec<u8> = klarna
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "empty"),
            (b"  \r\n".to_vec(), "empty"),
            (bom, "byte order mark"),
            (utf16, "UTF-16"),
            (utf16be, "UTF-16"),
            (utf32, "UTF-16 or UTF-32"),
            (
                b"{\"payment_method\":\"klarna\xff\"}".to_vec(),
                "not valid UTF-8",
            ),
            (
                format!(r#"{{"payment_method":"klarna","amount":NaN,{HOSTILE}}}"#).into_bytes(),
                "strict JSON",
            ),
            (
                format!(r#"{{"payment_method":"klarna",{HOSTILE},}}"#).into_bytes(),
                "strict JSON",
            ),
            (
                format!("{{/* c */\"payment_method\":\"klarna\",{HOSTILE}}}").into_bytes(),
                "strict JSON",
            ),
            (
                format!("{{\"payment_method\":\"klarna\",{HOSTILE}}} // c").into_bytes(),
                "trailing characters",
            ),
            (
                format!("{{\"payment_method\":\"klarna\",{HOSTILE}}}{{}}").into_bytes(),
                "trailing characters",
            ),
            (
                format!("{{\"payment_method\":\"klar\tna\",{HOSTILE}}}").into_bytes(),
                "control character",
            ),
            (
                format!(r#"[{{"payment_method":"klarna",{HOSTILE}}}]"#).into_bytes(),
                "must be a JSON object",
            ),
            (b"\"klarna\"".to_vec(), "must be a JSON object"),
            (b"null".to_vec(), "must be a JSON object"),
        ];
        for (body, why) in cases {
            let r = refused(&e, &body);
            assert_eq!(
                (r.status().as_u16(), r.code().as_str()),
                (400, "unreadable_json")
            );
            assert!(
                r.message().contains(why),
                "{:?}: {}",
                String::from_utf8_lossy(&body),
                r.message()
            );
            assert!(!r.message().contains("javascript"), "{}", r.message());
        }
    }

    #[test]
    fn duplicates_of_read_keys_are_refused_by_name() {
        let e = engine("inject_at = \"payment.klarna\"");
        let url = r#""return_url":"https://a.example/r""#;
        let cases = [
            (
                format!(r#"{{"payment_method":"card","payment_method":"klarna",{url}}}"#),
                "payment_method",
            ),
            (
                format!(r#"{{"payment_method":"klarna",{url},"return_url":"javascript:x"}}"#),
                "return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"klarna_return_url":"a","klarna_return_url":"b"}}"#
                ),
                "klarna_return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"app_return_url":"a","app_return_url":"b"}}"#
                ),
                "app_return_url",
            ),
            (
                format!(r#"{{"payment_method":"klarna",{url},"reference":"a","reference":"b"}}"#),
                "reference",
            ),
            (
                format!(r#"{{"payment_method":{{"type":"klarna","type":"card"}},{url}}}"#),
                "payment_method.type",
            ),
            (
                format!(
                    r#"{{"request_payment_transaction":{{}},"request_payment_transaction":1,{url}}}"#
                ),
                "request_payment_transaction",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"step_up_config":{{}},"step\u005fup_config":{{}}}}"#
                ),
                "step_up_config",
            ),
            (
                format!(r#"{{"payment_method":"klarna",{url},"payment":{{}},"payment":{{}}}}"#),
                "payment",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"payment":{{"klarna":{{}},"klarna":{{}}}}}}"#
                ),
                "payment.klarna",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"payment":{{"klarna":{{"step_up_config":{{}},"step_up_config":null}}}}}}"#
                ),
                "payment.klarna.step_up_config",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"payment":{{"klarna":{{"step_up_config":{{"payment_request_reference":"a","payment_request_reference":"b"}}}}}}}}"#
                ),
                "payment.klarna.step_up_config.payment_request_reference",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"payment":{{"klarna":{{"step_up_config":{{"customer_interaction_config":{{}},"customer_interaction_config":{{}}}}}}}}}}"#
                ),
                "payment.klarna.step_up_config.customer_interaction_config",
            ),
            (
                format!(
                    r#"{{"payment_method":"card",{url},"payment":{{"klarna":{{"step_up_config":{{"customer_interaction_config":{{"return_url":"javascript:x","return_url":"https://a.example/"}}}}}}}}}}"#
                ),
                "payment.klarna.step_up_config.customer_interaction_config.return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"card",{url},"step_up_config":{{"customer_interaction_config":{{"app_return_url":"a://b","app_return_url":"a://c"}}}}}}"#
                ),
                "step_up_config.customer_interaction_config.app_return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{url},"step_up_config":{{"customer_interaction_config":{{"method":"HANDOVER","method":"X"}}}}}}"#
                ),
                "step_up_config.customer_interaction_config.method",
            ),
        ];
        for (body, param) in cases {
            let r = refused(&e, body.as_bytes());
            assert_eq!(
                (r.status().as_u16(), r.code().as_str()),
                (400, "duplicate_key"),
                "{body}"
            );
            assert_eq!(r.param(), Some(param), "{body}");
        }
        // Keys the engine does not read may repeat (not its business).
        let ok = format!(r#"{{"payment_method":"klarna",{url},"amount":1,"amount":2}}"#);
        assert!(matches!(
            verdict(&e, ok.as_bytes()),
            RequestVerdict::Injected { .. }
        ));
    }

    #[test]
    fn a_step_up_config_is_validated_whatever_the_payment_method_says() {
        let e = engine("");
        for pm in [r#"" klarna""#, r#""card""#, r#"{"type":"klarna "}"#, "null"] {
            let body = format!(r#"{{"payment_method":{pm},{HOSTILE}}}"#);
            let r = refused(&e, body.as_bytes());
            assert_eq!(r.code().as_str(), "invalid_return_url", "{body}");
            assert_eq!(
                r.param(),
                Some("step_up_config.customer_interaction_config.return_url")
            );
        }
        for (body, code) in [
            (
                r#"{"payment_method":"card","step_up_config":"x"}"#,
                "invalid_step_up_config",
            ),
            (
                r#"{"payment_method":"card","step_up_config":{"customer_interaction_config":[]}}"#,
                "invalid_step_up_config",
            ),
            (
                r#"{"payment_method":"card","step_up_config":{"payment_request_reference":""}}"#,
                "invalid_reference",
            ),
            (
                r#"{"payment_method":"card","step_up_config":{"customer_interaction_config":{"app_return_url":"javascript:x"}}}"#,
                "invalid_app_return_url",
            ),
            (
                r#"{"payment_method":"card","step_up_config":{"customer_interaction_config":{"return_url":1}}}"#,
                "invalid_return_url",
            ),
        ] {
            assert_eq!(refused(&e, body.as_bytes()).code().as_str(), code, "{body}");
        }
        // A good one on a card payment goes through untouched.
        let body = br#"{"payment_method":"card","step_up_config":{"customer_interaction_config":{"return_url":"https://a.example/r"}}}"#;
        assert!(matches!(verdict(&e, body), RequestVerdict::NotKlarna));
        // With inject_at, the top-level one is checked beside the one the layer completes.
        let e = engine("inject_at = \"payment\"");
        let body = format!(
            r#"{{"payment_method":"klarna","return_url":"https://a.example/r",{HOSTILE}}}"#
        );
        assert_eq!(
            refused(&e, body.as_bytes()).code().as_str(),
            "invalid_return_url"
        );
        let body = format!(r#"{{"payment_method":"card","payment":{{{HOSTILE}}}}}"#);
        let r = refused(&e, body.as_bytes());
        assert_eq!(
            r.param(),
            Some("payment.step_up_config.customer_interaction_config.return_url")
        );
    }

    #[test]
    fn keys_are_read_as_a_go_payment_api_reads_them() {
        let e = engine("[return_url_policy]\nallowed_hosts = [\"*.partner.example\"]");
        let good = r#""return_url":"https://shop.partner.example/r""#;
        // Another case, or Go's Unicode folds, name the same key: read and checked.
        for (body, param) in [
            (
                r#"{"PAYMENT_METHOD":"klarna","Return_Url":"https://evil.example/phish"}"#
                    .to_owned(),
                "return_url",
            ),
            (
                r#"{"payment_method":"klarna","Klarna_return_url":"https://evil.example/"}"#
                    .to_owned(),
                "klarna_return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"card",{good},"ſtep_up_config":{{"customer_interaction_config":{{"return_url":"javascript:x"}}}}}}"#
                ),
                "step_up_config.customer_interaction_config.return_url",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{good},"STEP_UP_CONFIG":{{"Customer_Interaction_Config":{{"App_Return_Url":"https://evil.example/"}}}}}}"#
                ),
                "step_up_config.customer_interaction_config.app_return_url",
            ),
            // Every return field present is checked, not only the first.
            (
                r#"{"payment_method":"klarna","klarna_return_url":"https://shop.partner.example/r","return_url":"javascript:alert(1)"}"#.to_owned(),
                "return_url",
            ),
            (
                r#"{"payment_method":"klarna","step_up_config":{"customer_interaction_config":{"return_url":"https://shop.partner.example/r"}},"klarna_return_url":"https://evil.example/"}"#.to_owned(),
                "klarna_return_url",
            ),
        ] {
            let r = refused(&e, body.as_bytes());
            assert!(r.code().as_str().starts_with("invalid_"), "{body}: {r:?}");
            assert_eq!(r.param(), Some(param), "{body}");
        }
        // Two spellings of one key are a duplicate.
        for (body, param) in [
            (
                format!(
                    r#"{{"payment_method":"klarna",{good},"Return_Url":"https://shop.partner.example/x"}}"#
                ),
                "return_url",
            ),
            (
                format!(r#"{{"payment_method":"card","Payment_Method":"klarna",{good}}}"#),
                "payment_method",
            ),
            (
                format!(r#"{{"payment_method":{{"type":"card","TYPE":"klarna"}},{good}}}"#),
                "payment_method.type",
            ),
            (
                format!(
                    r#"{{"payment_method":"klarna",{good},"step_up_config":{{}},"ſTEP_UP_CONFIG":{{}}}}"#
                ),
                "step_up_config",
            ),
        ] {
            let r = refused(&e, body.as_bytes());
            assert_eq!(r.code().as_str(), "duplicate_key", "{body}");
            assert_eq!(r.param(), Some(param), "{body}");
        }
        // The payment method in any case, Kelvin sign included, is Klarna's.
        for pm in [r#""KLARNA""#, r#""Klarna""#, r#"{"Type":"Klarna"}"#] {
            let body = format!(r#"{{"Payment_Method":{pm},{good}}}"#);
            assert!(
                matches!(
                    verdict(&e, body.as_bytes()),
                    RequestVerdict::Injected { .. }
                ),
                "{body}"
            );
        }
        // The caller's STEP_UP_CONFIG is the one completed: no second step_up_config.
        let body = format!(r#"{{"payment_method":"klarna",{good},"Step_Up_Config":{{}}}}"#);
        let RequestVerdict::Injected { body: out, .. } = verdict(&e, body.as_bytes()) else {
            panic!()
        };
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out.to_ascii_lowercase().matches("step_up_config").count(),
            1,
            "{out}"
        );
        assert!(
            out.contains(r#""Step_Up_Config":{"payment_request_reference""#),
            "{out}"
        );
    }

    #[test]
    fn fields_are_read_at_their_paths_with_the_same_fail_closed_rules() {
        let e = engine(
            "[detect]\npayment_method_at = [\"paymentMethod.type\"]\n\
             [partner_fields]\nreturn_url = [\"options.klarna.returnUrl\", \"returnUrl\"]\n\
             strip = [\"options.klarna.returnUrl\"]\n\
             [return_url_policy]\nallowed_hosts = [\"shop.example\"]",
        );
        let ok = r#"{"paymentMethod":{"type":"klarna"},"options":{"klarna":{"returnUrl":"https://shop.example/r","x":1}}}"#;
        let RequestVerdict::Injected { body, exchange } = verdict(&e, ok.as_bytes()) else {
            panic!()
        };
        assert_eq!(exchange.return_url(), "https://shop.example/r");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(r#"{"paymentMethod":{"type":"klarna"},"options":{"klarna":{"x":1}},"step_up_config""#), "{body}");
        // The top-level payment_method is no longer where the method is read.
        assert!(matches!(
            verdict(
                &e,
                br#"{"payment_method":"klarna","returnUrl":"https://shop.example/r"}"#
            ),
            RequestVerdict::NotKlarna
        ));
        // Hostile, duplicated (in any spelling) or in the query at any step: refused by name.
        for (body, code, param) in [
            (
                r#"{"paymentMethod":{"type":"klarna"},"options":{"klarna":{"returnUrl":"https://evil.example/"}}}"#,
                "invalid_return_url",
                "options.klarna.returnUrl",
            ),
            (
                r#"{"paymentMethod":{"type":"klarna"},"options":{"klarna":{"returnUrl":"https://shop.example/r"}},"returnUrl":"javascript:x"}"#,
                "invalid_return_url",
                "returnUrl",
            ),
            (
                r#"{"paymentMethod":{"type":"klarna"},"options":{"KLARNA":{},"klarna":{"returnUrl":"https://shop.example/r"}}}"#,
                "duplicate_key",
                "options.klarna",
            ),
            (
                r#"{"paymentMethod":{"type":"card","Type":"klarna"},"returnUrl":"https://shop.example/r"}"#,
                "duplicate_key",
                "paymentMethod.type",
            ),
        ] {
            let r = refused(&e, body.as_bytes());
            assert_eq!(
                (r.code().as_str(), r.param()),
                (code, Some(param)),
                "{body}"
            );
        }
        let Route::Refused(r) = e.classify(
            &Method::POST,
            &"/payments?options[klarna][returnUrl]=x".parse().unwrap(),
            &HeaderMap::new(),
        ) else {
            panic!()
        };
        assert_eq!(r.refusal().code().as_str(), "query_field");
        // Paths with an empty segment, and a stripped field inside another, are config errors.
        let err = StepUp::from_toml(
            "[partner_fields]\nreturn_url = [\"a..b\"]\nstrip = [\"a\", \"a.b\"]\n",
        )
        .unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["partner_fields.return_url[0]", "partner_fields.strip[1]"]
        );
    }

    #[test]
    fn a_body_without_content_type_is_read_as_a_form_too() {
        let e = engine("");
        let untyped = |body: &str| {
            let Route::Candidate(c) = e.classify(
                &Method::POST,
                &"/payments".parse().unwrap(),
                &HeaderMap::new(),
            ) else {
                unreachable!()
            };
            e.rewrite_request(c, body.as_bytes(), 1_800_000_000)
        };
        for body in [
            r#"{"payment_method":"card","x":"&return_url=https://evil.example/"}"#,
            r#"{"payment_method":"card","x":";payment_method=klarna"}"#,
            r#"{"payment_method":"card","x":"&step_up_config[customer_interaction_config][return_url]=x"}"#,
        ] {
            match untyped(body) {
                RequestVerdict::Refused(r) => assert_eq!(r.code().as_str(), "form_field", "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        // JSON with no such pair is read as before.
        assert!(matches!(
            untyped(r#"{"payment_method":"card","note":"a&b=c"}"#),
            RequestVerdict::NotKlarna
        ));
        // With a JSON Content-Type the form reading is not made.
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        let Route::Candidate(c) = e.classify(&Method::POST, &"/payments".parse().unwrap(), &h)
        else {
            unreachable!()
        };
        assert!(matches!(
            e.rewrite_request(
                c,
                br#"{"payment_method":"card","x":"&return_url=https://evil.example/"}"#,
                1
            ),
            RequestVerdict::NotKlarna
        ));
    }

    #[test]
    fn a_signed_return_url_klarna_would_not_take_is_refused() {
        let e = StepUp::with_secrets(
            crate::StepUpConfig::from_toml(
                r#"
                [return_url_policy]
                max_length = 8192
                [acquirer_return]
                enabled = true
                public_base_url = "https://pay.acquirer.example"
                keys = [{ id = "r", env = "R" }]
                "#,
            )
            .unwrap(),
            |_| Some("return-key-0123456789abcdef0123456789".into()),
        )
        .unwrap();
        let body = |len: usize| {
            format!(
                r#"{{"payment_method":"klarna","klarna_return_url":"https://a.example/{}"}}"#,
                "a".repeat(len)
            )
        };
        assert!(matches!(
            verdict(&e, body(1000).as_bytes()),
            RequestVerdict::Injected { .. }
        ));
        let r = refused(&e, body(1500).as_bytes());
        assert_eq!(r.code().as_str(), "invalid_return_url");
        assert_eq!(r.param(), Some("klarna_return_url"));
        assert!(r.message().contains("2000"), "{}", r.message());
    }
}
