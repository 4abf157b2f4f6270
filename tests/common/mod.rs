//! What the integration tests share: the fixture table, a recording upstream, a raw HTTP
//! client, a bounded load client, the tower adapter as a proxy, and the demo stack.
#[cfg(feature = "cli")]
pub mod binary;
pub mod blocking;
pub mod demo_stack;
pub mod fixtures;
pub mod load;
#[cfg(feature = "pingora")]
pub mod pingora_proxy;
pub mod raw_http;
pub mod return_webhook;
pub mod tower_proxy;
pub mod upstream;
