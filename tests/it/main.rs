//! The library's integration tests, as one binary: the engine and the driver on the fixture
//! table, the tower layer and the Pingora adapter over loopback sockets, the fail-closed
//! corpus, the rollout modes, trace context, the examples. Modules that need an adapter are
//! compiled with its feature (`cargo test --all-features` runs them all). Loopback only; every
//! wait and every loop is bounded.

#[path = "../common/mod.rs"]
mod common;

mod acquirer_redirect;
mod acquirer_return;
mod adapter_edges;
mod adapter_parity;
mod engine;
mod fail_closed;
mod feature_table;
mod hyper_proxy_example;
mod modes;
mod observe;
mod partners;
mod pingora_adapter;
mod pingora_delegation;
mod pingora_direct;
mod pingora_large;
mod pingora_phases;
mod pingora_return_webhook;
mod proptest_engine;
mod tower_adapter;
mod tower_mount;
mod tower_proxy;
mod tower_return_webhook;
mod trace_context;
mod webhooks;
