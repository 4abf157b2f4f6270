//! A local Klarna sandbox and a demo payment API with a shop page, for klarna-stepup's demo
//! and tests. Nothing here is meant for production; the crate is not published.
//!
//! - [`klarna`]: a stand-in for Klarna that speaks the wire format of the Payment Authorize
//!   API (`POST /v2/accounts/{id}/payment/authorize`, `GET`/`DELETE
//!   /v2/accounts/{id}/payment/requests/{payment_request_id}`), serves the Purchase Journey
//!   page at `payment_request_url` (`{public_base_url}/pay/{uuid}`) and sends signed webhooks.
//!   State lives in memory, bounded.
//! - [`payment_api`]: the acquirer's "existing payment API" that the step-up layer wraps
//!   (`POST /payments`, `POST /webhooks/klarna`, `GET /payments/{reference}`), a shop
//!   (`GET /shop`, `POST /shop/checkout`, `GET /shop/confirmation`) that plays the partner,
//!   and each order's timeline (`GET /demo/orders`, `GET /demo/orders/{reference}`).
//! - [`timeline`]: the record behind those timelines, which each part of the demo keeps on its
//!   own side, in memory.
//! - [`start_demo_backends`]: both on loopback, wired to each other and to one journal.
//!
//! # How the sandbox decides an authorize call
//!
//! All outcomes are HTTP 200 except errors. In this order:
//!
//! 1. `Authorization` must be `Basic <api key>` exactly (else 401 `ACCESS_ERROR`); with
//!    [`KlarnaSandboxConfig::partner_account_id`] set, the path's account must match (403).
//! 2. A `Klarna-Idempotency-Key` (1..255 characters) seen for this account in the last 24
//!    hours on the same request (the same body bytes and the same token header, or none)
//!    answers the first answer's status and bytes again, whatever it was (an error too), with
//!    no new effect. Reused with a different request it is 400 `INPUT_ERROR` /
//!    `VALIDATION_ERROR` naming `Klarna-Idempotency-Key`. After 24 hours (on the sandbox's
//!    clock) the key is new again: the same request then makes a new decision.
//! 3. The body must be a JSON object (else 400 `INPUT_ERROR`, `INVALID_REQUEST_BODY`) with
//!    `currency` (three upper-case letters), `request_payment_transaction.amount` (positive
//!    integer) and `.payment_transaction_reference` (1..255 characters); a `step_up_config`,
//!    when present, needs `payment_request_reference` (1..255), `customer_interaction_config.
//!    method` `HANDOVER`, an absolute http(s) `return_url`, an optional `app_return_url`
//!    (any absolute URL but `javascript:`, `data:`, `vbscript:`, `file:`, `blob:`, `about:`)
//!    and an optional `interaction_expiry` with exactly one of `duration` (ISO 8601, e.g.
//!    `PT15M`) and `timestamp` (RFC 3339, `Z` or an offset, e.g. `2025-02-26T18:00:00Z`),
//!    either 15 minutes to 48 hours from now (without it: 3 hours). Failures are 400
//!    `INPUT_ERROR` / `VALIDATION_ERROR` with one `validation_errors` entry per field
//!    (`…interaction_expiry.duration`, `….timestamp`, or `…interaction_expiry` itself when
//!    both or neither are given).
//! 4. A token header (`Klarna-Network-Session-Token`, or the legacy `Klarna-Payment-Token`,
//!    `Klarna-Interoperability-Token`) must name a `COMPLETED` Payment Request of the same
//!    account, completed less than 60 minutes ago, not canceled, with the same amount and
//!    currency: then `APPROVED`, and the Payment Request is finalized. The same final call
//!    again (a retry: same token, amount and currency) gets the same answer, the same
//!    `payment_transaction_id`, at any later time. Otherwise 400 `INPUT_ERROR` whose
//!    validation error names the header (unknown, expired or canceled token) or the
//!    mismatching `request_payment_transaction.amount` / `currency`. The sandbox refuses rather than
//!    declines so that a partner's bug shows as a bug.
//! 5. **Test triggers** on `request_payment_transaction.payment_transaction_reference`:
//!    starting with `decline` → `DECLINED` (`result_reason` `SANDBOX_DECLINE_TRIGGER`);
//!    starting with `approve` → `APPROVED` at once, without step-up.
//! 6. With a `step_up_config` → `STEP_UP_REQUIRED` with a new `payment_request` in state
//!    `SUBMITTED` (webhook `…submitted`), `expires_at` set from `interaction_expiry`.
//! 7. Without one → `DECLINED` with `result_reason` `STEP_UP_REQUIRED_BUT_NOT_CONFIGURED`:
//!    every customer is new to the sandbox, so it cannot approve without the customer.
//!
//! # The Purchase Journey
//!
//! Opening `payment_request_url` moves `SUBMITTED` → `IN_PROGRESS` (webhook
//! `…in-progress`) and shows the amount, the reference, a phone input (`#phone`) and the
//! buttons `#approve`, `#decline` and `#cancel` of a plain form (`POST /pay/{uuid}` with
//! `action=approve|decline|cancel`); when the request has an `app_return_url`, also
//! `#approve-app`, `#decline-app` and `#cancel-app` (`action=…_app`), which return the
//! customer there instead. Approve → `COMPLETED` with a fresh random token; decline →
//! `DECLINED`; cancel (the customer aborts) → `CANCELED` (webhook `…canceled`, as when the
//! partner cancels). Each answers at once `303 See Other` to `return_url` (or
//! `app_return_url` for the app buttons) with the placeholders
//! `{klarna.payment_request.id}`, `.state` (`COMPLETED`, `DECLINED` or `CANCELED`),
//! `.payment_request_reference`, `.klarna_network_session_token`, `.payment_token` and
//! `.interoperability_token` (the token: empty unless `COMPLETED`) replaced by
//! percent-encoded values. The outcome's webhook is **not** awaited: it follows after
//! [`KlarnaSandboxConfig::webhook_delay`] (default 1 s), so the customer is normally back
//! before it, as the real flow allows; a partner must cope with either order.
//!
//! A Payment Request still open (`SUBMITTED`, `IN_PROGRESS`) at its `expires_at` becomes
//! `EXPIRED` (webhook `…expired`): [`KlarnaSandbox::serve`] looks every second, and any
//! call that touches the request (page, read, cancel) checks first. Its page then says so
//! (410). [`KlarnaSandbox::advance_clock`] moves the sandbox's clock for tests (the next
//! sweep then expires what is due). Once `COMPLETED`, the read call also shows the token under
//! `state_context.klarna_network_session_token` (the sandbox's choice; Klarna's read call is
//! not documented).
//!
//! `DELETE` cancels a Payment Request that is open (`SUBMITTED`, `IN_PROGRESS`) or
//! `COMPLETED` and not yet finalized by the final authorize (webhook `…canceled`; its token
//! is refused from then on); a finalized or otherwise closed one is 409 `INVALID_STATE`.
//!
//! # Webhooks
//!
//! `POST` to the webhook URL with `Content-Type: application/json`, body
//! `{"metadata": {event_id, event_type, event_version: "v2", occurred_at (the time of the
//! state change), correlation_id, subject_account_id, recipient_account_id,
//! product_instance_id, webhook_id, live: false}, "payload": {payment_request_id,
//! payment_request_reference, state, amount, currency, klarna_network_session_token and
//! payment_token, the same value under its older name (only on completed)}}`,
//! `Klarna-Signing-Key-Id` and `Klarna-Signature` = lower-case hex HMAC-SHA256 of the exact
//! body bytes ([`sign_webhook`]). Every webhook is sent in a background task,
//! [`KlarnaSandboxConfig::webhook_delay`] after its state change
//! ([`KlarnaSandbox::set_webhook_delay`]); a refused or failed delivery is retried a few
//! times with doubling backoff ([`KlarnaSandboxConfig::webhook_attempts`]). Webhooks of
//! different state changes may arrive out of order. For tests, webhooks can be lost
//! ([`KlarnaSandboxConfig::lose_webhooks`], [`KlarnaSandbox::set_lose_webhooks`]): none is
//! sent while the switch is on.
//!
//! # Where Klarna's docs are unclear
//!
//! Where Klarna's public documentation leaves a point open, the sandbox picks the stricter
//! reading, the one that shows a partner's bug rather than hides it:
//!
//! - **An idempotency key reused with a different request.** Klarna documents only that a
//!   duplicate attempt within 24 hours gets "the initial result"; it names no error for a
//!   key reused on another request. The sandbox refuses it (400 `INPUT_ERROR` /
//!   `VALIDATION_ERROR` on `Klarna-Idempotency-Key`) instead of answering the first
//!   result, and compares exact bytes (a re-serialized body with other whitespace is a
//!   different request) plus the token header. Error answers are replayed too, so a partner
//!   that fixes a refused request must use a new key.
//! - **The customer aborts in the Purchase Journey.** Klarna's acquirer pages say
//!   `CANCELED` is reached when the Acquiring Partner cancels; its Web SDK typedoc lists the
//!   transition `IN_PROGRESS → SUBMITTED` and the state reason `PURCHASE_FLOW_ABORTED`
//!   ("the customer dropped out … or went back to the merchant site"), and `IN_PROGRESS →
//!   CANCELED`. The sandbox ends the Payment Request `CANCELED` (final) with the `…canceled`
//!   webhook and sends the customer back with `state=CANCELED`: a partner then must handle a
//!   `CANCELED` it did not ask for, and cannot resume the request.
//! - **`interaction_expiry` with both `duration` and `timestamp`**, or neither: not
//!   documented; the sandbox refuses both. The 15-minute-to-48-hour window applies to the
//!   timestamp measured from the authorize call. A timestamp with more than nine fraction
//!   digits, without a zone, or before 1970 is refused.
//! - **What expires.** Klarna says a Payment Request is "expired and deleted" after
//!   `expires_at`. The sandbox expires only open ones (`SUBMITTED`, `IN_PROGRESS`), keeps
//!   them readable (state `EXPIRED`) and sends `…expired`; a `COMPLETED` one keeps its token
//!   for 60 minutes from completion, even past `expires_at`.
//! - **Webhook timing.** Klarna does not say how long after the state change a webhook
//!   comes, nor in which order; the sandbox waits a configurable delay (1 s by default) and
//!   guarantees no order between events.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod client;
mod clock;
pub mod klarna;
pub mod payment_api;
pub mod timeline;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use klarna::{sign_webhook, KlarnaSandbox, KlarnaSandboxConfig, PaymentRequestState};
pub use payment_api::{PaymentApi, PaymentApiConfig};
pub use timeline::Journal;

/// Ports to bind on 127.0.0.1 for [`start_demo_backends`]; 0 picks a free one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemoPorts {
    /// Port of the Klarna sandbox.
    pub klarna: u16,
    /// Port of the demo payment API and shop.
    pub payment_api: u16,
}

/// The two running demo backends.
#[derive(Debug)]
pub struct DemoBackends {
    /// Where the Klarna sandbox listens.
    pub klarna_addr: SocketAddr,
    /// Where the payment API (and the shop) listens.
    pub payment_api_addr: SocketAddr,
    /// The sandbox's handle: its configuration (API key, signing key id and key) and
    /// [`KlarnaSandbox::set_webhook_url`] to send webhooks through a proxy.
    pub klarna: KlarnaSandbox,
    /// The payment API's handle.
    pub payment_api: PaymentApi,
    /// The sandbox's server task.
    pub klarna_task: JoinHandle<std::io::Result<()>>,
    /// The payment API's server task.
    pub payment_api_task: JoinHandle<std::io::Result<()>>,
}

impl DemoBackends {
    /// Puts the backends behind the step-up proxy at `proxy_url` (its base URL, no trailing
    /// slash) as the demo configuration ([`demo_step_up_toml`]) expects: Klarna's webhooks go
    /// to the proxy's `/klarna/webhooks`, and the shop sends its payments to the proxy and
    /// builds its return URLs on it (see [`PaymentApi::set_public_base_url`]).
    pub fn put_behind(&self, proxy_url: &str) {
        self.klarna
            .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));
        self.payment_api
            .set_public_base_url(Some(proxy_url.to_owned()));
    }
}

/// How many orders the demo's timelines keep (see [`Journal::new`]).
pub const DEMO_TIMELINE_ORDERS: usize = 50;

/// API key shared by the demo backends (not a secret).
pub const DEMO_API_KEY: &str = "sandbox-api-key";
/// Partner account id used by the demo backends.
pub const DEMO_PARTNER_ACCOUNT_ID: &str = "krn:partner:global:account:sandbox";

/// The step-up configuration of the demo (klarna-stepup's TOML), for a proxy reachable at
/// `public_base_url`: http return URLs allowed on loopback, the acquirer return endpoint on
/// (each return told, signed, to the payment API's `/payments/klarna-return`, which
/// finalizes before the customer is redirected), and webhooks verified with the sandbox's signing key and relayed to the payment API's
/// `/webhooks/klarna`. Its keys are named by environment variable ([`DEMO_RETURN_KEY_ENV`],
/// [`DEMO_WEBHOOK_KEY_ENV`]); [`demo_secret`] gives their values.
///
/// This crate does not depend on klarna-stepup; its users build the engine:
/// `StepUp::with_secrets(StepUpConfig::from_toml(&demo_step_up_toml(url))?, demo_secret)`.
pub fn demo_step_up_toml(public_base_url: &str) -> String {
    format!(
        r#"[return_url_policy]
http_hosts = ["127.0.0.1", "localhost"]

[klarna]
purchase_journey_hosts = ["127.0.0.1", "localhost"]
purchase_journey_http_loopback = true

[acquirer_return]
enabled = true
public_base_url = "{public_base_url}"
keys = [{{ id = "demo-1", env = "{DEMO_RETURN_KEY_ENV}" }}]
notify_path = "/payments/klarna-return"

[webhooks]
enabled = true
path = "/klarna/webhooks"
relay_path = "/webhooks/klarna"
keys = [{{ id = "sandbox-key-1", env = "{DEMO_WEBHOOK_KEY_ENV}" }}]
"#
    )
}

/// The environment variable naming the demo's return-token key.
pub const DEMO_RETURN_KEY_ENV: &str = "KLARNA_STEPUP_DEMO_RETURN_KEY";
/// The environment variable naming the demo's webhook verification key (the sandbox's signing
/// key).
pub const DEMO_WEBHOOK_KEY_ENV: &str = "KLARNA_STEPUP_DEMO_WEBHOOK_KEY";

/// The demo's keys, by environment variable name: the environment's value when set, else a
/// fixed demo value (not a secret: the demo runs on loopback only).
pub fn demo_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().or(match name {
        DEMO_RETURN_KEY_ENV => Some("demo-return-key-not-a-secret-0123456789".into()),
        DEMO_WEBHOOK_KEY_ENV => Some(String::from_utf8_lossy(DEMO_SIGNING_KEY).into_owned()),
        _ => None,
    })
}

/// The sandbox's webhook signing key (not a secret).
pub const DEMO_SIGNING_KEY: &[u8] = b"klarna-sandbox-signing-key";

/// Binds the Klarna sandbox and the payment API on 127.0.0.1 and serves them.
///
/// The payment API calls the sandbox with [`DEMO_API_KEY`] and [`DEMO_PARTNER_ACCOUNT_ID`] and
/// trusts its webhook caller (no signing key: the step-up proxy in front verifies). Webhooks
/// go straight to the payment API's `/webhooks/klarna` until
/// [`KlarnaSandbox::set_webhook_url`] points them elsewhere, e.g. at the proxy
/// ([`DemoBackends::put_behind`]). Both record what they see in one [`Journal`] of the last
/// [`DEMO_TIMELINE_ORDERS`] orders, which the payment API shows as each order's timeline.
pub async fn start_demo_backends(ports: DemoPorts) -> std::io::Result<DemoBackends> {
    let klarna_listener = TcpListener::bind(("127.0.0.1", ports.klarna)).await?;
    let payment_listener = TcpListener::bind(("127.0.0.1", ports.payment_api)).await?;
    start_demo_backends_on(klarna_listener, payment_listener).await
}

/// [`start_demo_backends`] on listeners the caller bound.
pub async fn start_demo_backends_on(
    klarna_listener: TcpListener,
    payment_api_listener: TcpListener,
) -> std::io::Result<DemoBackends> {
    let klarna_addr = klarna_listener.local_addr()?;
    let payment_api_addr = payment_api_listener.local_addr()?;
    let mut klarna_config = KlarnaSandboxConfig::new(DEMO_API_KEY, format!("http://{klarna_addr}"));
    klarna_config.partner_account_id = Some(DEMO_PARTNER_ACCOUNT_ID.to_owned());
    klarna_config.webhook_url = Some(format!("http://{payment_api_addr}/webhooks/klarna"));
    let journal = Journal::new(DEMO_TIMELINE_ORDERS);
    klarna_config.journal = Some(journal.clone());
    let klarna = KlarnaSandbox::new(klarna_config);
    let mut payment_api_config = PaymentApiConfig::new(
        format!("http://{klarna_addr}"),
        DEMO_API_KEY,
        DEMO_PARTNER_ACCOUNT_ID,
    );
    // The layer's return notifications are signed with the demo's return key.
    payment_api_config.return_notification_key =
        demo_secret(DEMO_RETURN_KEY_ENV).map(String::into_bytes);
    payment_api_config.journal = Some(journal);
    let payment_api = PaymentApi::new(payment_api_config);
    let klarna_task = tokio::spawn(klarna.clone().serve(klarna_listener));
    let payment_api_task = tokio::spawn(payment_api.clone().serve(payment_api_listener));
    Ok(DemoBackends {
        klarna_addr,
        payment_api_addr,
        klarna,
        payment_api,
        klarna_task,
        payment_api_task,
    })
}

/// Formats an amount in minor units with its currency, e.g. `11800, "USD"` → `118.00 USD`.
pub(crate) fn format_minor_units(amount: u64, currency: &str) -> String {
    let decimals: u32 = match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    if decimals == 0 {
        return format!("{amount} {currency}");
    }
    let unit = 10u64.pow(decimals);
    format!(
        "{}.{:0width$} {currency}",
        amount / unit,
        amount % unit,
        width = decimals as usize
    )
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Locks `mutex`. A panic while holding the lock leaves plain data behind; keep serving it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_amounts() {
        assert_eq!(format_minor_units(11800, "USD"), "118.00 USD");
        assert_eq!(format_minor_units(5, "EUR"), "0.05 EUR");
        assert_eq!(format_minor_units(500, "JPY"), "500 JPY");
        assert_eq!(format_minor_units(1234, "KWD"), "1.234 KWD");
    }

    #[test]
    fn escapes_html() {
        assert_eq!(
            html_escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
