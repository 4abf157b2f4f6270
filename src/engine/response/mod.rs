//! Response side: turn Klarna's authorize answer into the partner-facing block.

pub(super) mod klarna;
pub(super) mod partner_block;

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::head::{content_length, is_json_or_absent};
use super::json::{self, Edits, Object};
use super::partner_block::{Declined, FinalResponse, JsonText, PendingKlarna, PendingResponse};
use super::{decode, Engine, Exchange, StepUp, TemplatePart};
use crate::config::Placement;
use klarna::{AuthorizeAnswer, PaymentRequest};

/// Characters escaped when an id is put into a `redirect_url` template.
const TEMPLATE_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':');

/// Why an answer to a Klarna request passed through untouched. One wording for every
/// adapter: its `Display` is what the logs say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeepReason {
    /// Not a 2xx, or not JSON by its content type: not offered for a rewrite.
    NotOffered,
    /// Larger than the body limit (declared, or as read).
    TooLarge,
    /// Compressed with an encoding this build does not decode, corrupt, or larger than the
    /// body limit once decoded.
    Undecodable,
    /// The body is not valid JSON.
    NotJson,
    /// Nothing at `klarna_answer_at`, or not Klarna's authorize shape.
    NoAnswer,
    /// A `result` this version does not know.
    UnknownResult,
    /// A field the partner block needs is missing.
    MissingField(&'static str),
    /// `payment_request_url` is not `https` on a purchase-journey host
    /// (`klarna.purchase_journey_hosts`): never handed to a partner as where the customer
    /// goes.
    UntrustedPaymentRequestUrl,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NotOffered => f.write_str("not a 2xx JSON answer"),
            KeepReason::TooLarge => f.write_str("the answer is larger than the body limit"),
            KeepReason::Undecodable => {
                f.write_str("a compressed answer that does not decode within the body limit")
            }
            KeepReason::NotJson => f.write_str("the body is not JSON"),
            KeepReason::NoAnswer => f.write_str("no Klarna authorize answer found"),
            KeepReason::UnknownResult => f.write_str("unknown payment_transaction_response.result"),
            KeepReason::MissingField(field) => write!(f, "missing {field}"),
            KeepReason::UntrustedPaymentRequestUrl => f.write_str(
                "payment_request_url is not https on a purchase-journey host \
                 (klarna.purchase_journey_hosts)",
            ),
        }
    }
}

/// Largest error answer read for Klarna's `error_id` (by its declared length).
const ERROR_READ_LIMIT: u64 = 16 * 1024;

/// What to do with the answer to a Klarna request, judged from its head:
/// [`StepUp::response_plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponsePlan {
    /// Read it to its end (at most [`StepUp::body_limit`] bytes; past that it passes through
    /// as [`KeepReason::TooLarge`]) and hand it to [`StepUp::rewrite_response`].
    Read,
    /// Stream it through untouched, marked `passthrough`, for this reason.
    Keep(KeepReason),
}

/// The engine's verdict on a response to a Klarna exchange (exhaustive on purpose, see
/// [`RequestVerdict`](super::RequestVerdict)).
#[derive(Debug)]
pub enum ResponseVerdict {
    /// Send `body` under `status` instead, with
    /// [`STALE_RESPONSE_HEADERS`](super::STALE_RESPONSE_HEADERS) removed and the new length.
    Rewritten {
        /// The partner-facing body.
        body: Vec<u8>,
        /// The status to send: `partner_response.http_status` for this result when set,
        /// else the payment API's.
        status: StatusCode,
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
    /// Whether the answer to `exchange` is read for a rewrite: a 2xx other than 204 with a
    /// JSON (or no) content type, a declared length within the body limit, and an encoding
    /// this build decodes. Informational (1xx) heads are not answers: adapters pass them on.
    pub fn response_plan(
        &self,
        _exchange: &Exchange,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> ResponsePlan {
        if !status.is_success() || status == StatusCode::NO_CONTENT || !is_json_or_absent(headers) {
            return ResponsePlan::Keep(KeepReason::NotOffered);
        }
        if content_length(headers).is_some_and(|n| n > self.body_limit() as u64) {
            return ResponsePlan::Keep(KeepReason::TooLarge);
        }
        if !decode::supported(headers.get(http::header::CONTENT_ENCODING)) {
            return ResponsePlan::Keep(KeepReason::Undecodable);
        }
        ResponsePlan::Read
    }

    /// Whether the answer to a Klarna exchange is an error worth reading for Klarna's
    /// `error_id` (for logs and the observation record): a 4xx or 5xx with a JSON content
    /// type, no content encoding and a known length (`length`: declared, or known to the
    /// adapter) of at most 16 KiB. It passes through untouched either way; an error of
    /// unknown length is never held back.
    pub fn reads_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        length: Option<u64>,
    ) -> bool {
        (status.is_client_error() || status.is_server_error())
            && headers.contains_key(http::header::CONTENT_TYPE)
            && is_json_or_absent(headers)
            && !headers.contains_key(http::header::CONTENT_ENCODING)
            && length
                .or_else(|| content_length(headers))
                .is_some_and(|n| n <= ERROR_READ_LIMIT)
    }

    /// Klarna's `error_id` in an error answer (at `klarna_answer_at` when the payment API
    /// nests Klarna's answer, else at the top), when it is a plain identifier (at most 128
    /// visible ASCII characters). Never fails.
    pub fn klarna_error_id(&self, body: &[u8]) -> Option<String> {
        let root = Object::parse(body)?;
        let mut id = root.get_str("error_id");
        let mut at: Option<Object<'_>> = None;
        for seg in &self.inner.answer_at {
            at = match &at {
                None => root.get(seg),
                Some(o) => o.get(seg),
            }
            .and_then(Object::from_raw);
            if at.is_none() {
                break;
            }
        }
        if let Some(nested) = at.and_then(|o| o.get_str("error_id")) {
            id = Some(nested);
        }
        let id = id?;
        ((1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| id.into_owned())
    }

    /// Rewrites the upstream's answer to a Klarna exchange into the partner block, or says
    /// why it must pass through untouched. `body` is the answer as received: a compressed
    /// answer (`Content-Encoding` in `headers`) is decoded first, bounded by the body limit.
    /// Never fails, never panics on any input.
    pub fn rewrite_response(
        &self,
        exchange: &Exchange,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> ResponseVerdict {
        if let ResponsePlan::Keep(reason) = self.response_plan(exchange, status, headers) {
            return ResponseVerdict::Keep(reason);
        }
        let limit = self.body_limit();
        if body.len() > limit {
            return ResponseVerdict::Keep(KeepReason::TooLarge);
        }
        let Some(body) = decode::decode(headers.get(http::header::CONTENT_ENCODING), body, limit)
        else {
            return ResponseVerdict::Keep(KeepReason::Undecodable);
        };
        match self.inner.rewrite(exchange, &body) {
            Ok((body, result, payment_request_id)) => ResponseVerdict::Rewritten {
                body,
                status: self.inner.status_for(result).unwrap_or(status),
                result,
                payment_request_id,
            },
            Err(reason) => ResponseVerdict::Keep(reason),
        }
    }
}

/// Klarna's answer inside the payment API's own answer (`klarna_answer_at`).
struct Nested<'a> {
    /// The payment API's answer.
    root: Object<'a>,
    /// The object holding Klarna's answer, when it is not `root`.
    parent: Option<Object<'a>>,
    /// Klarna's answer: its member index in its parent, and its raw value.
    index: usize,
    answer: &'a str,
}

impl Engine {
    /// The configured status of a rewritten answer to `result`, if any.
    fn status_for(&self, result: AuthorizeResult) -> Option<StatusCode> {
        let s = &self.http_status;
        match result {
            AuthorizeResult::StepUpRequired => s.step_up_required,
            AuthorizeResult::Approved => s.approved,
            AuthorizeResult::Declined => s.declined,
        }
    }

    fn rewrite(
        &self,
        exchange: &Exchange,
        body: &[u8],
    ) -> Result<(Vec<u8>, AuthorizeResult, Option<String>), KeepReason> {
        // Locate the answer: the whole body, or the value at klarna_answer_at.
        let (parsed, nested): (AuthorizeAnswer<'_>, _) = if self.answer_at.is_empty() {
            (
                // UTF-8 checked once for the whole body, not again for each borrowed value.
                std::str::from_utf8(body)
                    .ok()
                    .and_then(|text| serde_json::from_str(text).ok())
                    .ok_or(KeepReason::NotJson)?,
                None,
            )
        } else {
            let root = Object::parse(body).ok_or(KeepReason::NotJson)?;
            let (last, path) = self.answer_at.split_last().ok_or(KeepReason::NoAnswer)?;
            let mut parent: Option<Object<'_>> = None;
            for seg in path {
                let next = parent
                    .as_ref()
                    .unwrap_or(&root)
                    .get(seg)
                    .and_then(Object::from_raw)
                    .ok_or(KeepReason::NoAnswer)?;
                parent = Some(next);
            }
            let holder = parent.as_ref().unwrap_or(&root);
            // The last member of that name, as `Object::get` reads it.
            let index = holder
                .members
                .iter()
                .rposition(|m| m.names(last))
                .ok_or(KeepReason::NoAnswer)?;
            let answer = holder.members[index].value;
            let parsed = serde_json::from_str(answer).map_err(|_| KeepReason::NoAnswer)?;
            (
                parsed,
                Some(Nested {
                    root,
                    parent,
                    index,
                    answer,
                }),
            )
        };
        let result = parsed
            .payment_transaction_response
            .as_ref()
            .and_then(|r| r.result.as_deref())
            .ok_or(KeepReason::NoAnswer)?;
        let (block, result) = match result {
            klarna::STEP_UP_REQUIRED => (
                self.pending_block(exchange, &parsed)?,
                AuthorizeResult::StepUpRequired,
            ),
            klarna::APPROVED => (self.approved_block(&parsed)?, AuthorizeResult::Approved),
            klarna::DECLINED => (self.declined_block(&parsed), AuthorizeResult::Declined),
            _ => return Err(KeepReason::UnknownResult),
        };
        let id = parsed
            .payment_request
            .as_ref()
            .and_then(|pr| pr.id())
            .filter(|_| result == AuthorizeResult::StepUpRequired)
            .map(str::to_owned);
        let Some(nested) = nested else {
            return Ok((block, result, id));
        };
        if self.config.partner_response.placement == Placement::TopLevel {
            if let Some(out) = top_level(body, &nested, &block, &self.answer_at) {
                return Ok((out, result, id));
            }
        }
        let mut edits = Edits::default();
        edits.replace(json::span(body, nested.answer), block);
        Ok((edits.apply(body), result, id))
    }

    fn pending_block(
        &self,
        exchange: &Exchange,
        answer: &AuthorizeAnswer<'_>,
    ) -> Result<Vec<u8>, KeepReason> {
        let pr: &PaymentRequest<'_> = answer
            .payment_request
            .as_ref()
            .ok_or(KeepReason::MissingField("payment_request"))?;
        let id = pr.id().ok_or(KeepReason::MissingField(
            "payment_request.payment_request_id",
        ))?;
        let url = pr.url().ok_or(KeepReason::MissingField(
            "payment_request.payment_request_url",
        ))?;
        if !self.journey.allows(url) {
            return Err(KeepReason::UntrustedPaymentRequestUrl);
        }
        let data = match pr.payment_request_data.filter(|d| d.get() != "null") {
            Some(d) if d.get().starts_with('"') => JsonText::Literal(d),
            Some(d) => JsonText::Text(Cow::Borrowed(d.get())),
            None => JsonText::Text(Cow::Owned(minimal_payment_request_data(id))),
        };
        // A request step-up did not read (`answers_only`): the reference Klarna names.
        let reference = match exchange.reference.as_str() {
            "" => pr.payment_request_reference.as_deref().unwrap_or(""),
            reference => reference,
        };
        let pay = self
            .acquirer_return
            .as_ref()
            .and_then(|r| r.pay_url(reference, url, exchange.request_secs, exchange.minted_at));
        let mut redirect = String::with_capacity(url.len() + 32);
        for part in pay
            .is_none()
            .then_some(&self.redirect_template)
            .into_iter()
            .flatten()
        {
            match part {
                TemplatePart::Literal(s) => redirect.push_str(s),
                TemplatePart::Url => redirect.push_str(url),
                TemplatePart::Id => redirect.extend(utf8_percent_encode(id, TEMPLATE_ESCAPE)),
                TemplatePart::Reference => {
                    redirect.extend(utf8_percent_encode(reference, TEMPLATE_ESCAPE))
                }
            }
        }
        let block = PendingResponse {
            status: &self.config.partner_response.pending,
            redirect_url: pay.as_deref().unwrap_or(&redirect),
            klarna: PendingKlarna {
                payment_request_id: id,
                payment_request_url: url,
                payment_request_data: data,
                expires_at: pr.expires_at.filter(|e| e.get() != "null"),
                klarna_network_response_data: answer.klarna_network_response_data,
            },
        };
        Ok(block.to_json(&self.block_keys))
    }

    fn approved_block(&self, answer: &AuthorizeAnswer<'_>) -> Result<Vec<u8>, KeepReason> {
        let tx = answer
            .payment_transaction_response
            .as_ref()
            .and_then(|r| r.payment_transaction)
            .filter(|t| t.get().starts_with('{'))
            .ok_or(KeepReason::MissingField(
                "payment_transaction_response.payment_transaction",
            ))?;
        let tx = tx.get().as_bytes();
        let keys = &self.block_keys;
        // `{"status":…,"klarna":` and Klarna's transaction.
        let mut out = Vec::with_capacity(64 + tx.len());
        out.push(b'{');
        json::write_str(&mut out, &keys.status);
        out.push(b':');
        json::write_str(&mut out, &self.config.partner_response.authorized);
        json::write_raw_member(&mut out, &keys.klarna, b"");
        // Klarna's reverse pass-through data goes beside the transaction, as in the pending
        // block; the transaction's own bytes stay as received.
        let tx_obj = std::str::from_utf8(tx).ok().and_then(Object::from_raw);
        let knrd = &keys.klarna_network_response_data;
        match (answer.klarna_network_response_data, tx_obj) {
            (Some(data), Some(obj)) if obj.get(knrd).is_none() => {
                let mut member = Vec::with_capacity(data.get().len() + 32);
                json::write_raw_member(&mut member, knrd, data.get().as_bytes());
                let mut edits = Edits::default();
                json::append_members(tx, obj.raw, !obj.members.is_empty(), &member, &mut edits);
                out.extend_from_slice(&edits.apply(tx));
            }
            _ => out.extend_from_slice(tx),
        }
        out.push(b'}');
        Ok(out)
    }

    fn declined_block(&self, answer: &AuthorizeAnswer<'_>) -> Vec<u8> {
        let result_reason = answer
            .payment_transaction_response
            .as_ref()
            .and_then(|r| r.result_reason);
        let block = FinalResponse {
            status: &self.config.partner_response.declined,
            klarna: Declined {
                result_reason,
                klarna_network_response_data: answer.klarna_network_response_data,
            },
        };
        block.to_json(&self.block_keys)
    }
}

/// The payment API's answer with Klarna's answer removed and the partner block's members
/// (`status`, `redirect_url`, `klarna`) set at its top level: in place where the answer
/// already has a member of that name (earlier duplicates removed), appended otherwise. Every
/// other byte stays as it was. `None` only if the block were not a JSON object (it always is).
fn top_level(body: &[u8], n: &Nested<'_>, block: &[u8], answer_at: &[String]) -> Option<Vec<u8>> {
    let block = Object::parse(block)?;
    let root = &n.root;
    let sets = |key: &str| block.members.iter().any(|m| m.key == key);
    let mut edits = Edits::default();
    let mut removed = Vec::new();
    match &n.parent {
        // Inside a top-level member that is replaced whole anyway: nothing to remove.
        Some(_) if sets(&answer_at[0]) => {}
        Some(parent) => json::remove_members(body, parent, &[n.index], &mut edits),
        // At the top level under a name the block sets: replaced in place below.
        None if sets(&root.members[n.index].key) => {}
        None => removed.push(n.index),
    }
    let mut add = Vec::new();
    for m in &block.members {
        let same: Vec<usize> = (0..root.members.len())
            .filter(|&i| root.members[i].key == m.key)
            .collect();
        match same.split_last() {
            Some((&last, earlier)) => {
                edits.replace(
                    json::span(body, root.members[last].value),
                    m.value.as_bytes().to_vec(),
                );
                removed.extend_from_slice(earlier);
            }
            None => json::write_raw_member(&mut add, &m.key, m.value.as_bytes()),
        }
    }
    removed.sort_unstable();
    removed.dedup();
    json::remove_members(body, root, &removed, &mut edits);
    if !add.is_empty() {
        let has_members = root.members.len() > removed.len();
        json::append_members(body, root.raw, has_members, &add, &mut edits);
    }
    Some(edits.apply(body))
}

/// The documented minimal `payment_request_data`, built from the id when Klarna sent none.
pub(crate) fn minimal_payment_request_data(id: &str) -> String {
    let id = serde_json::to_string(id).expect("serializing a string cannot fail");
    format!(
        r#"{{"content_type":"{}","content":{{"payment_request":{{"payment_request_id":{id}}}}}}}"#,
        klarna::PAYMENT_REQUEST_DATA_CONTENT_TYPE
    )
}
