//! The ready Klarna step-up proxy: the server the `klarna-stepup` binary runs, a proxy with
//! step-up in front of a payment API, described by one configuration file. It is the
//! [tower layer](klarna_stepup::tower) of the `klarna-stepup` crate on hyper: one
//! single-threaded runtime per worker thread, each with its own `SO_REUSEPORT` listener and
//! connection pool (chosen by measurement against Pingora; see the repository's
//! `benches/RESULTS.md`).
//!
//! The binary is a thin command line over this crate (`cargo install klarna-stepup-server`
//! installs it); the demo (`./x demo`) runs the same server in front of the local sandbox.
//! Use it to embed the ready proxy in a program of your own; to add step-up to a Pingora
//! proxy you already have, use the `klarna-stepup` crate's `pingora::StepUpProxy` instead.
//!
//! ```no_run
//! use klarna_stepup_server::{init_logging, serve, LogFormat, ProxyConfig};
//!
//! let _logs = init_logging(LogFormat::Text);
//! let config = ProxyConfig::load("klarna-stepup.toml".as_ref()).unwrap_or_else(|errors| {
//!     eprintln!("{errors}");
//!     std::process::exit(1);
//! });
//! // Runs until SIGTERM or SIGINT.
//! serve(config).unwrap();
//! ```
//!
//! The file holds the library's [`StepUpConfig`](klarna_stepup::StepUpConfig) keys at the
//! top level and a `[server]` table ([`ServerConfig`]); `klarna-stepup check-config FILE`
//! prints the effective configuration with every default.
//!
//! The listener's TLS (HTTP/2 by ALPN) and the TLS to the payment API use rustls.
//!
//! Under systemd (`Type=notify`), the server says `READY=1` once it serves and `STOPPING=1`
//! when it begins to drain; a successor started with `serve --upgrade` says
//! `MAINPID=<its pid>` with its `READY=1`, so that systemd follows it (give the unit
//! `NotifyAccess=all`: the successor is not the main process when it says so).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod balance;
mod client;
mod config;
mod error;
mod flood;
mod idle;
mod limits;
mod metrics;
mod notify;
mod park;
mod pool;
mod serve;
mod telemetry;
mod timed;
mod tls;
mod upgrade;
mod upstream;
mod worker;

pub use config::{
    HealthCheckConfig, ListenerTls, ProxyConfig, ServerConfig, TelemetryConfig, UpstreamTls,
    Upstreams,
};
pub use error::{Error, UpgradeError};
pub use klarna_stepup::ConfigError;
pub use serve::{serve, serve_upgrade};

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

/// The crates whose own log lines are capped at `info` (see [`init_logging`]): at `debug`
/// and `trace` they print request and response heads (`Authorization`, cookies, query
/// strings, `Klarna-Signature`) and bodies.
pub const FRAMEWORK_LOG_TARGETS: &[&str] = &[
    "pingora",
    "h2",
    "hyper",
    "hyper_util",
    "rustls",
    "tokio_rustls",
    "reqwest",
    "tower_http",
];

/// The environment variable that lifts the cap on [`FRAMEWORK_LOG_TARGETS`]: set it to `1` to
/// let `RUST_LOG` turn on the framework's `debug` and `trace` lines, secrets included (for a
/// debugging session on test traffic only).
pub const UNSAFE_FRAMEWORK_DEBUG_ENV: &str = "KLARNA_STEPUP_UNSAFE_FRAMEWORK_DEBUG";

/// Whether a log line from `target` at `level` is written: lines of the framework crates
/// ([`FRAMEWORK_LOG_TARGETS`]) only at `info` and above, unless `unsafe_debug`.
fn framework_line_allowed(target: &str, level: &tracing::Level, unsafe_debug: bool) -> bool {
    if unsafe_debug || *level <= tracing::Level::INFO {
        return true;
    }
    let krate = target.split("::").next().unwrap_or(target);
    !FRAMEWORK_LOG_TARGETS
        .iter()
        .any(|t| krate == *t || (*t == "pingora" && krate.starts_with("pingora_")))
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
/// Does nothing if a global subscriber is already set.
///
/// Lines are formatted on the thread that logs them and written by a thread of their own,
/// in batches, so that a request never waits on stderr; keep the returned guard alive until
/// the program ends (dropping it writes what is left). Should stderr fall far behind (128,000
/// lines), further lines are dropped rather than slowing the proxy down.
///
/// Whatever `RUST_LOG` asks, the framework's own lines (Pingora, `h2`, `hyper`, `rustls`:
/// [`FRAMEWORK_LOG_TARGETS`]) are written at `info` and above only: their `debug` and `trace`
/// lines print headers, query strings and bodies, which the logs must never carry. Set
/// [`UNSAFE_FRAMEWORK_DEBUG_ENV`] (`KLARNA_STEPUP_UNSAFE_FRAMEWORK_DEBUG=1`) to lift the cap.
#[must_use = "dropping the guard stops the log writer"]
pub fn init_logging(format: LogFormat) -> LogGuard {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let unsafe_debug = std::env::var(UNSAFE_FRAMEWORK_DEBUG_ENV).is_ok_and(|v| v == "1");
    let cap = tracing_subscriber::filter::filter_fn(move |m| {
        framework_line_allowed(m.target(), m.level(), unsafe_debug)
    });
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(cap)
            .try_init(),
        LogFormat::Json => builder.json().finish().with(cap).try_init(),
    };
    if unsafe_debug {
        tracing::warn!(
            "{UNSAFE_FRAMEWORK_DEBUG_ENV}=1: the framework's debug lines may log secrets"
        );
    }
    LogGuard { _writer: guard }
}

/// Keeps the log writer of [`init_logging`] running; dropping it writes the lines still
/// queued.
#[derive(Debug)]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

#[cfg(test)]
mod tests {
    use super::framework_line_allowed;
    use tracing::Level;

    #[test]
    fn framework_lines_are_capped_at_info() {
        for t in [
            "pingora_core::protocols::http::v1::server",
            "pingora_proxy",
            "h2::codec",
            "hyper::proto::h1::io",
            "rustls::client",
        ] {
            assert!(!framework_line_allowed(t, &Level::DEBUG, false), "{t}");
            assert!(!framework_line_allowed(t, &Level::TRACE, false), "{t}");
            assert!(framework_line_allowed(t, &Level::INFO, false), "{t}");
            assert!(framework_line_allowed(t, &Level::TRACE, true), "{t}");
        }
        assert!(framework_line_allowed(
            "klarna_stepup::pingora",
            &Level::DEBUG,
            false
        ));
        assert!(framework_line_allowed("h2olike", &Level::DEBUG, false));
    }
}
