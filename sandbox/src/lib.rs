//! A local Klarna sandbox and a demo payment API with a shop page, for klarna-stepup's demo
//! and tests. Nothing here is meant for production; the crate is not published.
//!
//! - [`klarna`]: a stand-in for Klarna that speaks the wire format of the Payment Authorize
//!   API (`POST /v2/accounts/{id}/payment/authorize`, `GET`/`DELETE
//!   /v2/accounts/{id}/payment/requests/{payment_request_id}`), serves the Purchase Journey
//!   page at `payment_request_url` (`{public_base_url}/pay/{uuid}`) and sends signed webhooks.
//!   State lives in memory, bounded.
//! - [`payment_api`]: the acquirer's "existing payment API" that the step-up layer wraps
//!   (`POST /payments`, `POST /webhooks/klarna`, `GET /payments/{reference}`) and a shop
//!   (`GET /shop`, `GET /shop/confirmation`).
//! - [`start_demo_backends`]: both on loopback, wired to each other.
//!
//! # How the sandbox decides an authorize call
//!
//! All outcomes are HTTP 200 except errors. In this order:
//!
//! 1. `Authorization` must be `Basic <api key>` exactly (else 401 `ACCESS_ERROR`); with
//!    [`KlarnaSandboxConfig::partner_account_id`] set, the path's account must match (403).
//! 2. A `Klarna-Idempotency-Key` already seen for this account answers the stored bytes
//!    again; reused with a different body it is a 400 `INPUT_ERROR`.
//! 3. The body must be a JSON object (else 400 `INPUT_ERROR`, `INVALID_REQUEST_BODY`) with
//!    `currency` (three upper-case letters), `request_payment_transaction.amount` (positive
//!    integer) and `.payment_transaction_reference` (1..255 characters); a `step_up_config`,
//!    when present, needs `payment_request_reference` (1..255), `customer_interaction_config.
//!    method` `HANDOVER`, an absolute http(s) `return_url`, an optional `app_return_url`
//!    (any absolute URL but `javascript:`, `data:`, `vbscript:`, `file:`, `blob:`, `about:`)
//!    and an optional `interaction_expiry.duration` between `PT15M` and `PT48H` (default 3 hours). Failures
//!    are 400 `INPUT_ERROR` / `VALIDATION_ERROR` with one `validation_errors` entry per field.
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
//!    `SUBMITTED` (webhook `…submitted`).
//! 7. Without one → `DECLINED` with `result_reason` `STEP_UP_REQUIRED_BUT_NOT_CONFIGURED`:
//!    every customer is new to the sandbox, so it cannot approve without the customer.
//!
//! # The Purchase Journey
//!
//! Opening `payment_request_url` moves `SUBMITTED` → `IN_PROGRESS` (webhook
//! `…in-progress`) and shows the amount, the reference, a phone input (`#phone`) and the
//! buttons `#approve` and `#decline` of a plain form; when the request has an
//! `app_return_url`, also `#approve-app` and `#decline-app`, which return the customer there
//! instead. Approve → `COMPLETED` with a fresh random token; decline → `DECLINED`. The webhook of the outcome is attempted (once, bounded
//! by the webhook timeout) before the answer `303 See Other` to `return_url` with the
//! placeholders (in `return_url`, or `app_return_url` for the app buttons)
//! `{klarna.payment_request.id}`, `.state`, `.payment_request_reference`,
//! `.klarna_network_session_token`, `.payment_token` and `.interoperability_token` replaced by
//! percent-encoded values. A request past its expiry becomes `EXPIRED` when next touched (page,
//! read, cancel; webhook `…expired`) and its page says so (410).
//! [`KlarnaSandbox::advance_clock`] moves the sandbox's clock for tests. Once `COMPLETED`, the
//! read call also shows the token under `state_context.klarna_network_session_token` (the
//! sandbox's choice; Klarna's read call is not documented).
//!
//! `DELETE` cancels a Payment Request that is open (`SUBMITTED`, `IN_PROGRESS`) or
//! `COMPLETED` and not yet finalized by the final authorize (webhook `…canceled`; its token
//! is refused from then on); a finalized or otherwise closed one is 409 `INVALID_STATE`.
//!
//! # Webhooks
//!
//! `POST` to the webhook URL with `Content-Type: application/json`, body
//! `{"metadata": {event_id, event_type, event_version: "v2", occurred_at, correlation_id,
//! subject_account_id, recipient_account_id, product_instance_id, webhook_id, live: false},
//! "payload": {payment_request_id, payment_request_reference, state, amount, currency,
//! klarna_network_session_token and payment_token, the same value under its older name (only
//! on completed)}}`, `Klarna-Signing-Key-Id` and
//! `Klarna-Signature` = lower-case hex HMAC-SHA256 of the exact body bytes
//! ([`sign_webhook`]). A refused or failed delivery is retried a few times with doubling
//! backoff ([`KlarnaSandboxConfig::webhook_attempts`]) in a background task.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod client;
mod clock;
pub mod klarna;
pub mod payment_api;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use klarna::{sign_webhook, KlarnaSandbox, KlarnaSandboxConfig, PaymentRequestState};
pub use payment_api::{PaymentApi, PaymentApiConfig};

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

/// API key shared by the demo backends (not a secret).
pub const DEMO_API_KEY: &str = "sandbox-api-key";
/// Partner account id used by the demo backends.
pub const DEMO_PARTNER_ACCOUNT_ID: &str = "krn:partner:global:account:sandbox";

/// The step-up configuration of the demo (klarna-stepup's TOML), for a proxy reachable at
/// `public_base_url`: http return URLs allowed on loopback, the acquirer return endpoint on,
/// and webhooks verified with the sandbox's signing key and relayed to the payment API's
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
/// [`KlarnaSandbox::set_webhook_url`] points them elsewhere, e.g. at the proxy.
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
    let klarna = KlarnaSandbox::new(klarna_config);
    let payment_api = PaymentApi::new(PaymentApiConfig::new(
        format!("http://{klarna_addr}"),
        DEMO_API_KEY,
        DEMO_PARTNER_ACCOUNT_ID,
    ));
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
