//! The generic wire pieces the flows are written with: borrowed JSON views and byte
//! splicing (`json`), message-head edits and checks (`head`), decoding of compressed answers
//! (`decode`), and route patterns with the canonical form of a request path (`routes`).

pub(crate) mod decode;
pub(super) mod head;
pub(crate) mod json;
pub(super) mod routes;
