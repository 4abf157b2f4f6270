//! The generic wire pieces the flows are written with: borrowed JSON views and byte
//! splicing (`json`), message-head edits and checks (`head`), decoding of compressed answers
//! (`decode`), route patterns with the canonical form of a request path (`routes`), and W3C
//! trace context (`trace`).

pub(crate) mod decode;
pub(super) mod head;
pub(crate) mod json;
pub(super) mod routes;
pub mod trace;
