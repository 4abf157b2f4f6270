//! The `klarna-stepup` binary and the server behind it, end to end, as one test binary: the
//! binary runs as a child process on loopback ports, against upstreams started here. Loopback
//! only; every wait and every loop is bounded; only processes started here are stopped, by
//! PID.

/// The helpers shared with the library's tests (one copy, in its `tests/common/`): the server
/// uses a part of each.
#[path = "../../../tests/common"]
#[allow(dead_code)]
mod common {
    pub mod blocking;
    pub mod fixtures;
    pub mod load;
    pub mod pingora_proxy;
    pub mod ports;
    pub mod raw_http;
    pub mod return_webhook;
    pub mod tower_proxy;
    pub mod upstream;
}
mod support;

mod admin;
mod bounds;
mod browser;
mod check_config;
mod contract;
mod demo_flow;
mod drain;
mod haproxy;
mod limits;
mod partner_metrics;
mod process;
mod stacks;
mod systemd;
mod telemetry;
mod tls;
mod upgrade;
mod upstreams;
mod wire;
