//! What the integration tests share: the fixture table, a recording upstream, a raw HTTP
//! client, a bounded load client, the tower adapter and the Pingora adapter as proxies. The server
//! crate's test binary (`server/tests/it`) mounts them too.
pub mod blocking;
pub mod fixtures;
pub mod load;
#[cfg(feature = "pingora")]
pub mod pingora_proxy;
pub mod raw_http;
pub mod return_webhook;
pub mod tower_proxy;
pub mod upstream;
