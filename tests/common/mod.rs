//! What the integration tests share: the fixture table, a recording upstream, a raw HTTP
//! client, the tower adapter and the Pingora adapter as proxies. The server crate's test
//! binary (`server/tests/it`) mounts them too, and `blocking.rs` and `load.rs` beside them
//! (blocking clients and a bounded load client, for the binary's tests).
pub mod fixtures;
#[cfg(feature = "pingora")]
pub mod pingora_proxy;
#[cfg_attr(not(feature = "pingora"), allow(dead_code))]
pub mod ports;
// Parts of these serve only the modules that need the Pingora adapter.
#[cfg_attr(not(feature = "pingora"), allow(dead_code))]
pub mod raw_http;
// `clear_of_bucket_boundary` serves only the Pingora adapter's tests here.
#[cfg_attr(not(feature = "pingora"), allow(dead_code))]
pub mod return_webhook;
pub mod tower_proxy;
#[cfg_attr(not(feature = "pingora"), allow(dead_code))]
pub mod upstream;
