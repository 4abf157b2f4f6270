//! Request side: recognize a Klarna payment and splice `step_up_config` into its bytes.

use std::borrow::Cow;

use super::compile::iso_duration_secs;
use super::json::{self, Edits, Object};
use super::{Candidate, Engine, Exchange, Refusal, RequestVerdict, StepUp};

/// Longest `payment_request_reference` Klarna takes.
const MAX_REFERENCE: usize = 255;

impl StepUp {
    /// Reads a candidate body; for a Klarna payment, splices in `step_up_config`. `now` is
    /// the current time in unix seconds (it dates the signed return token, when the acquirer
    /// return is on).
    ///
    /// Everything the engine does not set survives byte for byte: unknown fields, key order,
    /// number formats, escapes and whitespace. What the caller already put in
    /// `step_up_config` wins; only what is missing is filled.
    pub fn rewrite_request(&self, candidate: Candidate, body: &[u8], now: u64) -> RequestVerdict {
        let Some(root) = Object::parse(body) else {
            return RequestVerdict::NotKlarna;
        };
        let e = &*self.inner;
        if !e.is_klarna(&root) {
            return RequestVerdict::NotKlarna;
        }
        match e.inject(body, &root, candidate, now) {
            Ok((body, reference, return_url)) => RequestVerdict::Injected {
                body,
                exchange: Exchange {
                    route: candidate.route,
                    reference,
                    return_url,
                },
            },
            Err(refusal) => RequestVerdict::Refused(refusal),
        }
    }
}

impl Engine {
    fn is_klarna(&self, root: &Object<'_>) -> bool {
        if let Some(pm) = root.get("payment_method") {
            let kind = json::as_str(pm).or_else(|| Object::from_raw(pm)?.get_str("type"));
            if let Some(kind) = kind {
                if self
                    .config
                    .detect
                    .payment_method
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(&kind))
                {
                    return true;
                }
            }
        }
        self.config.detect.authorize_shape && root.get("request_payment_transaction").is_some()
    }

    fn inject(
        &self,
        body: &[u8],
        root: &Object<'_>,
        candidate: Candidate,
        now: u64,
    ) -> Result<(Vec<u8>, String, String), Refusal> {
        // Where step_up_config goes: walk inject_at; objects missing on the way are created.
        let mut target = None;
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
                            "invalid_request_body",
                            param,
                            "must be an object",
                        ));
                    }
                },
                _ => break,
            }
        }
        let target = target.as_ref().unwrap_or(root);
        let missing = &self.inject_at[depth..];
        let prefix = |name: &str| {
            let mut p = self.inject_at.join(".");
            if !p.is_empty() {
                p.push('.');
            }
            p.push_str(name);
            p
        };

        // What the caller already sent in step_up_config.
        let existing = if missing.is_empty() {
            target.get("step_up_config").filter(|v| *v != "null")
        } else {
            None
        };
        let suc = match existing {
            Some(v) => Some(Object::from_raw(v).ok_or_else(|| {
                Refusal::invalid(
                    "invalid_step_up_config",
                    prefix("step_up_config"),
                    "must be an object",
                )
            })?),
            None => None,
        };
        let cic = match suc
            .as_ref()
            .and_then(|s| s.get("customer_interaction_config"))
        {
            Some(v) if v != "null" => Some(Object::from_raw(v).ok_or_else(|| {
                Refusal::invalid(
                    "invalid_step_up_config",
                    prefix("step_up_config.customer_interaction_config"),
                    "must be an object",
                )
            })?),
            _ => None,
        };
        let reference = self.choose_reference(root, suc.as_ref(), &prefix, || {
            candidate.key.reference(body)
        })?;
        let return_url = self
            .choose_url(root, cic.as_ref(), &prefix, false)?
            .ok_or_else(|| {
                Refusal::invalid(
                    "missing_return_url",
                    self.config
                        .partner_fields
                        .return_url
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                    format!(
                        "a return URL is required: send {}",
                        self.config.partner_fields.return_url.join(" or ")
                    ),
                )
            })?;
        let app_return_url = self.choose_url(root, cic.as_ref(), &prefix, true)?;

        // The members to add, serialized once.
        let mut cic_members = Vec::with_capacity(256);
        let has = |key: &str| cic.as_ref().is_some_and(|c| c.get(key).is_some());
        if !has("method") {
            json::write_member(&mut cic_members, "method", "HANDOVER");
        }
        if !has("return_url") {
            // With the acquirer return on, Klarna gets the layer's own endpoint; the partner's
            // URL travels signed inside it. A return_url the caller set itself is left alone.
            match &self.acquirer_return {
                Some(r) => {
                    let url = r.return_url(
                        &return_url,
                        &reference,
                        self.request_secs(cic.as_ref()),
                        now,
                    );
                    json::write_member(&mut cic_members, "return_url", &url);
                }
                None => json::write_member(&mut cic_members, "return_url", &return_url),
            }
        }
        if let Some(app) = app_return_url.as_ref().filter(|_| !has("app_return_url")) {
            json::write_member(&mut cic_members, "app_return_url", app);
        }
        if let Some(expiry) = self
            .config
            .defaults
            .interaction_expiry
            .as_deref()
            .filter(|_| !has("interaction_expiry"))
        {
            let mut duration = Vec::with_capacity(expiry.len() + 16);
            json::write_member(&mut duration, "duration", expiry);
            json::write_raw_member(&mut cic_members, "interaction_expiry", &object(&duration));
        }

        let mut edits = Edits::default();
        let stripped = self.strip_indices(root);
        json::remove_members(body, root, &stripped, &mut edits);
        let target_has_members = if std::ptr::eq(target, root) {
            root.members.len() > stripped.len()
        } else {
            !target.members.is_empty()
        };

        // Fill what is missing, innermost first; an explicit null is replaced in place so
        // that no key is ever sent twice.
        let mut suc_add = Vec::with_capacity(cic_members.len() + 96);
        if suc
            .as_ref()
            .is_none_or(|s| s.get("payment_request_reference").is_none())
        {
            json::write_member(&mut suc_add, "payment_request_reference", &reference);
        }
        match (&cic, &suc) {
            (Some(cic), _) if !cic_members.is_empty() => {
                json::append_members(
                    body,
                    cic.raw,
                    !cic.members.is_empty(),
                    &cic_members,
                    &mut edits,
                );
            }
            (Some(_), _) => {}
            (None, Some(suc)) => place(
                body,
                suc,
                "customer_interaction_config",
                object(&cic_members),
                &mut suc_add,
                &mut edits,
            ),
            (None, None) => {
                json::write_object_member(&mut suc_add, "customer_interaction_config", &cic_members)
            }
        }
        match &suc {
            Some(suc) if !suc_add.is_empty() => {
                json::append_members(body, suc.raw, !suc.members.is_empty(), &suc_add, &mut edits);
            }
            Some(_) => {}
            None => {
                // Objects missing on the inject_at path wrap step_up_config: `members` ends as
                // the members of the object `key` gets.
                let mut members = suc_add;
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
                        json::append_members(
                            body,
                            target.raw,
                            target_has_members,
                            &add,
                            &mut edits,
                        );
                    }
                }
            }
        }
        let out = edits.apply(body);
        Ok((out, reference.into_owned(), return_url.into_owned()))
    }

    /// `payment_request_reference`: the caller's, else the partner field, else `derived()`:
    /// one derived from the request, the same for each retry of it (see `reference.rs`).
    fn choose_reference<'a>(
        &self,
        root: &Object<'a>,
        suc: Option<&Object<'a>>,
        prefix: &dyn Fn(&str) -> String,
        derived: impl FnOnce() -> String,
    ) -> Result<Cow<'a, str>, Refusal> {
        let found = match suc.and_then(|s| s.get("payment_request_reference")) {
            Some(v) => Some((v, prefix("step_up_config.payment_request_reference"))),
            None => first_field(root, &self.config.partner_fields.reference)
                .map(|(name, v)| (v, name.to_owned())),
        };
        let Some((raw, param)) = found else {
            return Ok(Cow::Owned(derived()));
        };
        let value = json::as_str(raw)
            .ok_or_else(|| Refusal::invalid("invalid_reference", &param, "must be a string"))?;
        if value.is_empty() || value.chars().count() > MAX_REFERENCE {
            return Err(Refusal::invalid(
                "invalid_reference",
                param,
                format!("must be 1 to {MAX_REFERENCE} characters long"),
            ));
        }
        Ok(value)
    }

    /// A return URL (web, or app when `app`): the caller's step_up_config, else the partner
    /// field, else the acquirer default. Whatever is chosen is validated.
    fn choose_url<'a>(
        &'a self,
        root: &Object<'a>,
        cic: Option<&Object<'a>>,
        prefix: &dyn Fn(&str) -> String,
        app: bool,
    ) -> Result<Option<Cow<'a, str>>, Refusal> {
        let (key, fields, default) = if app {
            (
                "app_return_url",
                &self.config.partner_fields.app_return_url,
                &self.config.defaults.app_return_url,
            )
        } else {
            (
                "return_url",
                &self.config.partner_fields.return_url,
                &self.config.defaults.return_url,
            )
        };
        let found = match cic.and_then(|c| c.get(key)) {
            Some(v) => Some((
                v,
                prefix(&format!("step_up_config.customer_interaction_config.{key}")),
            )),
            None => first_field(root, fields).map(|(name, v)| (v, name.to_owned())),
        };
        let code = if app {
            "invalid_app_return_url"
        } else {
            "invalid_return_url"
        };
        let Some((raw, param)) = found else {
            // Defaults were validated with the configuration.
            return Ok(default.as_deref().map(Cow::Borrowed));
        };
        let value =
            json::as_str(raw).ok_or_else(|| Refusal::invalid(code, &param, "must be a string"))?;
        let checked = if app {
            self.policy.check_app_return_url(&value)
        } else {
            self.policy.check_return_url(&value)
        };
        match checked {
            Ok(()) => Ok(Some(value)),
            Err(why) => Err(Refusal::invalid(code, param, why)),
        }
    }

    /// How long the Payment Request can live, when the partner (its own
    /// `interaction_expiry.duration`) or the configuration set it: at most 48 hours, Klarna's
    /// limit (a duration the layer cannot read counts as the limit). `None`: Klarna's default.
    fn request_secs(&self, cic: Option<&Object<'_>>) -> Option<u64> {
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
            None => self
                .config
                .defaults
                .interaction_expiry
                .as_deref()
                .and_then(iso_duration_secs),
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
            .filter(|(_, m)| self.config.partner_fields.strip.iter().any(|s| *s == m.key))
            .map(|(i, _)| i)
            .collect()
    }
}

/// The first of `names` present at the top level (a JSON null counts as absent).
fn first_field<'n, 'a>(root: &Object<'a>, names: &'n [String]) -> Option<(&'n str, &'a str)> {
    names.iter().find_map(|n| {
        root.get(n)
            .filter(|v| *v != "null")
            .map(|v| (n.as_str(), v))
    })
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
