//! The server the `klarna-stepup` binary runs (feature `cli`): a Pingora proxy with step-up in
//! front of a payment API, described by one configuration file.
//!
//! The binary is a thin command line over this module; the demo (`./x demo`) runs the same
//! server in front of the local sandbox. Use it to embed the ready proxy in a program of your
//! own; to add step-up to a Pingora proxy you already have, use
//! [`StepUpProxy`](crate::pingora::StepUpProxy) instead.
//!
//! ```no_run
//! use klarna_stepup::server::{init_logging, serve, LogFormat, ProxyConfig};
//!
//! init_logging(LogFormat::Text);
//! let config = ProxyConfig::load("klarna-stepup.toml".as_ref()).unwrap_or_else(|errors| {
//!     eprintln!("{errors}");
//!     std::process::exit(1);
//! });
//! // Runs until SIGTERM or SIGINT.
//! serve(config).unwrap();
//! ```
//!
//! The file holds the library's [`StepUpConfig`](crate::StepUpConfig) keys at the top level
//! and a `[server]` table ([`ServerConfig`]); `klarna-stepup check-config FILE` prints the
//! effective configuration with every default.
//!
//! The listener's TLS and the TLS to the payment API use Pingora's `rustls` backend, which the
//! `cli` feature turns on.

mod config;
mod metrics;
mod serve;

pub use crate::ConfigError;
pub use config::{ListenerTls, ProxyConfig, ServerConfig, UpstreamTls, Upstreams};
pub use serve::serve;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
/// Pingora's own `log` records are captured too. Does nothing if a global subscriber is
/// already set.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
