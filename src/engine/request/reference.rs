//! Stable `payment_request_reference`s: the same partner request (a retry) gives the same
//! reference, so that the forwarded bytes are the same and Klarna sees one request under one
//! idempotency key.
//!
//! When the partner names no reference, it is derived from what identifies the request:
//! - the partner's idempotency key header (default `Idempotency-Key`) when it sent one:
//!   `idem-` and 32 hex digits of SHA-256 over the request path and the key;
//! - else the request itself: `req-` and 32 hex digits of SHA-256 over the path and the body
//!   as received.
//!
//! 128 bits of the digest, in lower-case hex: no collision in practice, and safe in databases
//! whose text comparison ignores case (which base64 would not be).

use sha2::{Digest, Sha256};

/// Domain separation of the digests (a version, should the derivation ever change).
const DOMAIN: &[u8] = b"klarna-stepup payment_request_reference v1\0";
/// Hex digits of the digest kept in a derived reference (128 bits).
const HEX_DIGITS: usize = 32;

/// What the head of a candidate request says about its identity: captured by
/// [`StepUp::classify`](crate::engine::StepUp::classify), used when the body is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestKey {
    /// SHA-256 over the path and, when present, the idempotency key.
    digest: [u8; 32],
    /// Whether the partner sent an idempotency key.
    keyed: bool,
}

impl std::fmt::Debug for RequestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKey")
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl RequestKey {
    /// The key of a request to `path` with the idempotency key header value `idempotency`
    /// (an empty value counts as absent).
    pub(crate) fn new(path: &str, idempotency: Option<&[u8]>) -> Self {
        let idempotency = idempotency.filter(|k| !k.trim_ascii().is_empty());
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update((path.len() as u64).to_be_bytes());
        h.update(path.as_bytes());
        if let Some(key) = idempotency {
            h.update([1]);
            h.update(key);
        } else {
            h.update([0]);
        }
        RequestKey {
            digest: h.finalize().into(),
            keyed: idempotency.is_some(),
        }
    }

    /// The derived reference for a request with this head and `body` (read only when the
    /// partner sent no idempotency key).
    pub(crate) fn reference(&self, body: &[u8]) -> String {
        if self.keyed {
            return format!("idem-{}", short_hex(&self.digest));
        }
        let mut h = Sha256::new();
        h.update(self.digest);
        h.update(body);
        let digest: [u8; 32] = h.finalize().into();
        format!("req-{}", short_hex(&digest))
    }
}

fn short_hex(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..HEX_DIGITS / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_bodies_make_stable_distinct_references() {
        let body = br#"{"payment_method":"klarna"}"#;
        let a = RequestKey::new("/payments", Some(b"key-1"));
        assert_eq!(
            a.reference(body),
            RequestKey::new("/payments", Some(b"key-1")).reference(b"{}")
        );
        assert!(a.reference(body).starts_with("idem-"));
        assert_eq!(a.reference(body).len(), 5 + HEX_DIGITS);
        assert_ne!(
            a.reference(body),
            RequestKey::new("/payments", Some(b"key-2")).reference(body)
        );
        assert_ne!(
            a.reference(body),
            RequestKey::new("/v1/payments", Some(b"key-1")).reference(body)
        );
        let none = RequestKey::new("/payments", None);
        assert_eq!(none, RequestKey::new("/payments", Some(b" ")));
        assert!(none.reference(body).starts_with("req-"));
        assert_eq!(none.reference(body), none.reference(body));
        assert_ne!(none.reference(body), none.reference(b"{}"));
        assert!(none
            .reference(body)
            .bytes()
            .skip(4)
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
