//! The partner-facing answer: the block a partner receives instead of Klarna's answer.
//!
//! ```json
//! {"status":"pending","redirect_url":"…",
//!  "klarna":{"payment_request_id":"…","payment_request_url":"…","payment_request_data":"{…}",
//!            "expires_at":"…"}}
//! ```
//!
//! Those are the guide's key names, the default; each can be renamed
//! (`partner_response.keys`, `key_style`), and each result can carry its own HTTP status
//! (`partner_response.http_status`).

use std::borrow::Cow;

use http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::engine::json;

/// The block's key names, compiled from `partner_response.keys` and `key_style`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlockKeys {
    pub status: String,
    pub redirect_url: String,
    pub klarna: String,
    pub payment_request_id: String,
    pub payment_request_url: String,
    pub payment_request_data: String,
    pub expires_at: String,
    pub klarna_network_response_data: String,
    pub result_reason: String,
}

impl Default for BlockKeys {
    /// The guide's names.
    fn default() -> Self {
        BlockKeys {
            status: "status".into(),
            redirect_url: "redirect_url".into(),
            klarna: "klarna".into(),
            payment_request_id: "payment_request_id".into(),
            payment_request_url: "payment_request_url".into(),
            payment_request_data: "payment_request_data".into(),
            expires_at: "expires_at".into(),
            klarna_network_response_data: "klarna_network_response_data".into(),
            result_reason: "result_reason".into(),
        }
    }
}

/// The HTTP status of each rewritten answer (`partner_response.http_status`); `None` keeps
/// the payment API's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HttpStatus {
    pub step_up_required: Option<StatusCode>,
    pub approved: Option<StatusCode>,
    pub declined: Option<StatusCode>,
}

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
    /// The block as JSON under the key names `keys`: with the guide's names, the bytes
    /// `serde_json::to_vec` writes (compact, members in field order, raw values as received,
    /// strings escaped alike by `json::write_str`), without serde's byte-by-byte escaping of
    /// strings that need none. Property tests check both agree, and that a renamed block is
    /// the same block under other names.
    pub fn to_json(&self, keys: &BlockKeys) -> Vec<u8> {
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
        out.push(b'{');
        json::write_str(&mut out, &keys.status);
        out.push(b':');
        json::write_str(&mut out, self.status);
        json::write_member(&mut out, &keys.redirect_url, self.redirect_url);
        json::write_raw_member(&mut out, &keys.klarna, b"{");
        json::write_str(&mut out, &keys.payment_request_id);
        out.push(b':');
        json::write_str(&mut out, k.payment_request_id);
        json::write_member(&mut out, &keys.payment_request_url, k.payment_request_url);
        match &k.payment_request_data {
            JsonText::Literal(d) => {
                json::write_raw_member(&mut out, &keys.payment_request_data, d.get().as_bytes())
            }
            JsonText::Text(t) => json::write_member(&mut out, &keys.payment_request_data, t),
        }
        for (key, value) in [
            (&keys.expires_at, k.expires_at),
            (
                &keys.klarna_network_response_data,
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

impl FinalResponse<'_, Declined<'_>> {
    /// The declined block as JSON under the key names `keys` (with the guide's names, what
    /// serde writes; a property test checks it).
    pub fn to_json(&self, keys: &BlockKeys) -> Vec<u8> {
        let d = &self.klarna;
        let mut out = Vec::with_capacity(128);
        out.push(b'{');
        json::write_str(&mut out, &keys.status);
        out.push(b':');
        json::write_str(&mut out, self.status);
        json::write_raw_member(&mut out, &keys.klarna, b"{");
        let mut first = true;
        for (key, value) in [
            (&keys.result_reason, d.result_reason),
            (
                &keys.klarna_network_response_data,
                d.klarna_network_response_data,
            ),
        ] {
            if let Some(v) = value {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                json::write_str(&mut out, key);
                out.push(b':');
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        out.extend_from_slice(b"}}");
        out
    }
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
                String::from_utf8(block.to_json(&BlockKeys::default())).unwrap(),
                serde_json::to_string(&block).unwrap()
            );
            // Under other names (quotes and backslashes in them too), the same block: each
            // member renamed, in the same order, with the same value bytes.
            let renamed = keys_from(strings[0].len());
            let got = String::from_utf8(block.to_json(&renamed)).unwrap();
            let want = rename(&block.to_json(&BlockKeys::default()), &renamed);
            proptest::prop_assert_eq!(got, want);
        }

        /// The declined block likewise, with or without its reason and pass-through data.
        #[test]
        fn the_declined_block_is_what_serde_writes(
            raws in proptest::collection::vec(
                proptest::option::of(proptest::sample::select(vec![
                    "\"RISK_CHECK_FAILED\"", "\"a\\\"b\\u0001\"", "{\"x\": [1, 2.50]}", "null",
                ])),
                2,
            ),
            word in "(\\PC|[\"\\\\\x00-\x1f])*",
        ) {
            let raw = |s: Option<&str>| s.map(|s| RawValue::from_string(s.to_owned()).unwrap());
            let (reason, knrd) = (raw(raws[0]), raw(raws[1]));
            let block = FinalResponse {
                status: &word,
                klarna: Declined {
                    result_reason: reason.as_deref(),
                    klarna_network_response_data: knrd.as_deref(),
                },
            };
            let plain = block.to_json(&BlockKeys::default());
            proptest::prop_assert_eq!(
                String::from_utf8(plain.clone()).unwrap(),
                serde_json::to_string(&block).unwrap()
            );
            let renamed = keys_from(word.len());
            proptest::prop_assert_eq!(
                String::from_utf8(block.to_json(&renamed)).unwrap(),
                rename(&plain, &renamed)
            );
        }
    }

    /// Key names that differ from the guide's, some with characters JSON escapes.
    fn keys_from(seed: usize) -> BlockKeys {
        let tag = seed % 3;
        let k = |s: &str| format!("{s}\"\\{tag}");
        BlockKeys {
            status: k("Status"),
            redirect_url: k("stepUpUrl"),
            klarna: k("klarnaDetails"),
            payment_request_id: k("paymentRequestId"),
            payment_request_url: k("paymentRequestUrl"),
            payment_request_data: k("paymentRequestData"),
            expires_at: k("expiresAt"),
            klarna_network_response_data: k("klarnaNetworkResponseData"),
            result_reason: k("resultReason"),
        }
    }

    /// The block `json` (written with the guide's names) with every key of its top level
    /// and of its `klarna` object renamed to `keys`, re-serialized compactly in order.
    fn rename(json: &[u8], keys: &BlockKeys) -> String {
        let default = BlockKeys::default();
        let pairs = [
            (&default.status, &keys.status),
            (&default.redirect_url, &keys.redirect_url),
            (&default.klarna, &keys.klarna),
            (&default.payment_request_id, &keys.payment_request_id),
            (&default.payment_request_url, &keys.payment_request_url),
            (&default.payment_request_data, &keys.payment_request_data),
            (&default.expires_at, &keys.expires_at),
            (
                &default.klarna_network_response_data,
                &keys.klarna_network_response_data,
            ),
            (&default.result_reason, &keys.result_reason),
        ];
        let to = |k: &str| pairs.iter().find(|(d, _)| *d == k).unwrap().1.clone();
        // serde_json's map keeps insertion order here only with `preserve_order`: build the
        // text by hand from the raw members instead.
        let top: Vec<(String, Box<RawValue>)> = ordered(json);
        let mut out = String::from("{");
        for (i, (key, value)) in top.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(&to(key)).unwrap());
            out.push(':');
            if *key == default.klarna {
                out.push('{');
                for (j, (k, v)) in ordered(value.get().as_bytes()).iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(&to(k)).unwrap());
                    out.push(':');
                    out.push_str(v.get());
                }
                out.push('}');
            } else {
                out.push_str(value.get());
            }
        }
        out.push('}');
        out
    }

    /// The members of a JSON object in order, their values as raw text.
    fn ordered(json: &[u8]) -> Vec<(String, Box<RawValue>)> {
        let text = std::str::from_utf8(json).unwrap();
        let object = json::Object::parse(text.as_bytes()).unwrap();
        object
            .members
            .iter()
            .map(|m| {
                (
                    m.key.to_string(),
                    RawValue::from_string(m.value.to_owned()).unwrap(),
                )
            })
            .collect()
    }
}
