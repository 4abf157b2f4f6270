//! The partner-facing answer: the block a partner receives instead of Klarna's answer.
//!
//! ```json
//! {"status":"pending","redirect_url":"…",
//!  "klarna":{"payment_request_id":"…","payment_request_url":"…","payment_request_data":"{…}",
//!            "expires_at":"…"}}
//! ```

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::engine::json;

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
    Text(Cow<'a, str>),
}

impl PendingResponse<'_> {
    /// The block as JSON: the bytes `serde_json::to_vec` writes (compact, members in field
    /// order, raw values as received, strings escaped alike by `json::write_str`), without
    /// serde's byte-by-byte escaping of strings that need none. A property test checks both
    /// agree.
    pub fn to_json(&self) -> Vec<u8> {
        let k = &self.klarna;
        let raw = |v: Option<&RawValue>| v.map_or(0, |v| v.get().len());
        let data = match &k.payment_request_data {
            JsonText::Literal(d) => d.get().len(),
            JsonText::Text(t) => t.len() + 16,
        };
        let mut out = Vec::with_capacity(
            192 + self.status.len()
                + self.redirect_url.len()
                + k.payment_request_id.len()
                + k.payment_request_url.len()
                + data
                + raw(k.expires_at)
                + raw(k.klarna_network_response_data),
        );
        // The members' writers put a comma first once `out` holds something: the first
        // member of each object is written by hand.
        out.extend_from_slice(b"{\"status\":");
        json::write_str(&mut out, self.status);
        json::write_member(&mut out, "redirect_url", self.redirect_url);
        json::write_raw_member(&mut out, "klarna", b"{\"payment_request_id\":");
        json::write_str(&mut out, k.payment_request_id);
        json::write_member(&mut out, "payment_request_url", k.payment_request_url);
        match &k.payment_request_data {
            JsonText::Literal(d) => {
                json::write_raw_member(&mut out, "payment_request_data", d.get().as_bytes())
            }
            JsonText::Text(t) => json::write_member(&mut out, "payment_request_data", t),
        }
        for (key, value) in [
            ("expires_at", k.expires_at),
            (
                "klarna_network_response_data",
                k.klarna_network_response_data,
            ),
        ] {
            if let Some(v) = value {
                json::write_raw_member(&mut out, key, v.get().as_bytes());
            }
        }
        out.extend_from_slice(b"}}");
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The hand-written block is serde's, byte for byte, whatever the strings hold
        /// (quotes, backslashes, control characters, Unicode) and whichever members are set.
        #[test]
        fn the_pending_block_is_what_serde_writes(
            strings in proptest::collection::vec("(\\PC|[\"\\\\\x00-\x1f\x7f\u{2028}])*", 5),
            literal in proptest::bool::ANY,
            raws in proptest::collection::vec(
                proptest::option::of(proptest::sample::select(vec![
                    "\"2025-02-26T17:25:34.534721775Z\"", "\"a\\\"b\\u0001\"", "{\"x\": [1, 2.50]}", "12", "true",
                ])),
                3,
            ),
        ) {
            let data_literal = serde_json::to_string(&strings[4]).unwrap();
            let raw = |s: Option<&str>| s.map(|s| RawValue::from_string(s.to_owned()).unwrap());
            let (expires_at, knrd, literal_value) = (raw(raws[0]), raw(raws[1]), raw(Some(&data_literal)));
            let block = PendingResponse {
                status: &strings[0],
                redirect_url: &strings[1],
                klarna: PendingKlarna {
                    payment_request_id: &strings[2],
                    payment_request_url: &strings[3],
                    payment_request_data: if literal {
                        JsonText::Literal(literal_value.as_deref().unwrap())
                    } else {
                        JsonText::Text(Cow::Borrowed(raws[2].unwrap_or(&strings[4])))
                    },
                    expires_at: expires_at.as_deref(),
                    klarna_network_response_data: knrd.as_deref(),
                },
            };
            proptest::prop_assert_eq!(
                String::from_utf8(block.to_json()).unwrap(),
                serde_json::to_string(&block).unwrap()
            );
        }
    }
}
