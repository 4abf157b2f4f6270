//! Klarna's wire types that the layer reads: borrowed views of the Payment Authorize answer.
//!
//! Every field is optional: a field the layer needs and does not find makes it pass the
//! answer through untouched, never fail. Values the partner receives are kept as raw JSON,
//! so numbers and strings reach the partner exactly as Klarna wrote them.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::engine::wire::json::BorrowedStr;

/// `payment_transaction_response.result` for a step-up.
pub const STEP_UP_REQUIRED: &str = "STEP_UP_REQUIRED";
/// `payment_transaction_response.result` for an approval.
pub const APPROVED: &str = "APPROVED";
/// `payment_transaction_response.result` for a decline.
pub const DECLINED: &str = "DECLINED";

/// `payment_request_data.content_type` of the minimal form built when Klarna sends none.
pub const PAYMENT_REQUEST_DATA_CONTENT_TYPE: &str =
    "application/vnd.klarna.payment-request-data.v2+json";

/// The answer of `POST /v2/accounts/{id}/payment/authorize` (any 2xx).
#[derive(Debug, Deserialize)]
pub struct AuthorizeAnswer<'a> {
    /// The outcome.
    #[serde(borrow)]
    pub payment_transaction_response: Option<TransactionResponse<'a>>,
    /// Present on `STEP_UP_REQUIRED`.
    #[serde(borrow)]
    pub payment_request: Option<PaymentRequest<'a>>,
    /// Reverse pass-through data, forwarded to the partner untouched.
    #[serde(borrow)]
    pub klarna_network_response_data: Option<&'a RawValue>,
}

/// `payment_transaction_response`.
#[derive(Debug, Deserialize)]
pub struct TransactionResponse<'a> {
    /// `APPROVED`, `DECLINED`, `STEP_UP_REQUIRED`, or something newer.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub result: Option<Cow<'a, str>>,
    /// On `APPROVED`: the transaction.
    #[serde(borrow)]
    pub payment_transaction: Option<&'a RawValue>,
    /// On `DECLINED`: why.
    #[serde(borrow)]
    pub result_reason: Option<&'a RawValue>,
}

/// `payment_request`, on `STEP_UP_REQUIRED`.
#[derive(Debug, Deserialize)]
pub struct PaymentRequest<'a> {
    /// Fallback location of the id.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub payment_request_id: Option<Cow<'a, str>>,
    /// Fallback location of the URL.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub payment_request_url: Option<Cow<'a, str>>,
    /// The reference the Payment Request was made with.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub payment_request_reference: Option<Cow<'a, str>>,
    /// The canonical place of id and URL.
    #[serde(borrow)]
    pub state_context: Option<StateContext<'a>>,
    /// A serialized JSON string (or, from some revisions, an object).
    #[serde(borrow)]
    pub payment_request_data: Option<&'a RawValue>,
    /// When the Payment Request expires (up to nanosecond precision), as received.
    #[serde(borrow)]
    pub expires_at: Option<&'a RawValue>,
}

/// `payment_request.state_context`.
#[derive(Debug, Deserialize)]
pub struct StateContext<'a> {
    /// `customer_interaction`.
    #[serde(borrow)]
    pub customer_interaction: Option<CustomerInteraction<'a>>,
}

/// `payment_request.state_context.customer_interaction`.
#[derive(Debug, Deserialize)]
pub struct CustomerInteraction<'a> {
    /// The id, for Klarna's SDKs.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub payment_request_id: Option<Cow<'a, str>>,
    /// Where the customer goes for the Purchase Journey.
    #[serde(borrow, default, deserialize_with = "borrowed")]
    pub payment_request_url: Option<Cow<'a, str>>,
}

/// An optional string, borrowed from the answer when it has no escapes (serde's own
/// `Option<Cow<str>>` always copies).
fn borrowed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<BorrowedStr<'de>>::deserialize(d)?.map(|s| s.0))
}

impl<'a> PaymentRequest<'a> {
    /// The id: `state_context.customer_interaction` first, then the top of `payment_request`.
    pub fn id(&self) -> Option<&str> {
        self.interaction()
            .and_then(|c| c.payment_request_id.as_deref())
            .or(self.payment_request_id.as_deref())
    }

    /// The Purchase Journey URL, looked up like [`id`](Self::id).
    pub fn url(&self) -> Option<&str> {
        self.interaction()
            .and_then(|c| c.payment_request_url.as_deref())
            .or(self.payment_request_url.as_deref())
    }

    fn interaction(&self) -> Option<&CustomerInteraction<'a>> {
        self.state_context.as_ref()?.customer_interaction.as_ref()
    }
}
