//! What the integration tests share: the fixture table, a recording upstream, a raw HTTP
//! client, the tower adapter as a proxy, and the demo stack.
#[cfg(feature = "sandbox")]
pub mod demo_stack;
pub mod fixtures;
pub mod raw_http;
pub mod tower_proxy;
pub mod upstream;
