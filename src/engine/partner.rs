//! The partner-facing answer: the block a partner receives instead of Klarna's answer.
//!
//! ```json
//! {"status":"pending","redirect_url":"…",
//!  "klarna":{"payment_request_id":"…","payment_request_url":"…","payment_request_data":"{…}",
//!            "expires_at":"…"}}
//! ```

use serde::Serialize;
use serde_json::value::RawValue;

/// The answer to a `STEP_UP_REQUIRED`.
#[derive(Debug, Serialize)]
pub struct PendingResponse<'a> {
    /// The configured word for pending (default `pending`).
    pub status: &'a str,
    /// Where the partner sends the customer.
    pub redirect_url: &'a str,
    /// The Klarna-specific part.
    pub klarna: PendingKlarna<'a>,
}

/// `klarna` of a [`PendingResponse`].
#[derive(Debug, Serialize)]
pub struct PendingKlarna<'a> {
    /// For Klarna's SDKs.
    pub payment_request_id: &'a str,
    /// For a web redirect.
    pub payment_request_url: &'a str,
    /// For enterprise use: always a serialized JSON string.
    pub payment_request_data: JsonText<'a>,
    /// When the Payment Request expires, as Klarna wrote it, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<&'a RawValue>,
    /// Klarna's reverse pass-through data, when it sent some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub klarna_network_response_data: Option<&'a RawValue>,
}

/// A JSON string value: either Klarna's own string literal, kept byte for byte, or text the
/// layer serialized.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum JsonText<'a> {
    /// A JSON string literal as received.
    Literal(&'a RawValue),
    /// Text to serialize as a JSON string.
    Text(String),
}

/// The answer to a `DECLINED`. An `APPROVED` has the same shape, written by hand so that
/// `klarna_network_response_data` can be spliced into Klarna's transaction as received.
#[derive(Debug, Serialize)]
pub struct FinalResponse<'a, K> {
    /// The configured word (default `authorized` or `declined`).
    pub status: &'a str,
    /// On approval Klarna's `payment_transaction` as received, on decline [`Declined`].
    pub klarna: K,
}

/// `klarna` of a declined answer.
#[derive(Debug, Serialize)]
pub struct Declined<'a> {
    /// Klarna's reason, as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_reason: Option<&'a RawValue>,
    /// Klarna's reverse pass-through data, when it sent some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub klarna_network_response_data: Option<&'a RawValue>,
}
