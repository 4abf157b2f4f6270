//! The `klarna-stepup` binary's parts: configuration file, Pingora server, metrics, demo.

pub mod config;
pub mod demo;
pub mod metrics;
pub mod server;

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Pingora's own `log`
/// records are captured too.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
