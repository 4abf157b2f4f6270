//! `klarna-stepup`: the ready Klarna step-up proxy (the tower layer on hyper). A command line over
//! [`klarna_stepup_server`]; the demo is `./x demo` (the `klarna-stepup-demo` binary of the
//! `demo/` workspace member), so this binary carries no sandbox.
//!
//! ```text
//! klarna-stepup serve --config klarna-stepup.toml
//! klarna-stepup serve --config klarna-stepup.toml --upgrade   # take over from the running one
//! klarna-stepup check-config --config klarna-stepup.toml
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use klarna_stepup_server::{init_logging, serve, serve_upgrade, LogFormat, ProxyConfig};

/// Klarna step-up in front of a payment API: a proxy that adds Klarna's step_up_config to the
/// partners' Klarna payments and turns Klarna's STEP_UP_REQUIRED answers into the partner
/// block (status, redirect_url, klarna{…}); everything else passes through untouched.
#[derive(Parser)]
#[command(
    name = "klarna-stepup",
    version,
    after_help = "\
Examples:
  klarna-stepup check-config --config /etc/klarna-stepup.toml
  klarna-stepup serve --config /etc/klarna-stepup.toml
  klarna-stepup serve --config /etc/klarna-stepup.toml --upgrade   # zero-downtime restart
  RUST_LOG=klarna_stepup=debug klarna-stepup serve -c klarna-stepup.toml --log-format json

Logs go to stderr, filtered by RUST_LOG (default: info; e.g. RUST_LOG=warn,klarna_stepup=info).
Return URLs, tokens, keys and bodies are never logged: Pingora, h2, hyper and rustls
log at info at most (KLARNA_STEPUP_UNSAFE_FRAMEWORK_DEBUG=1 lifts that cap; it leaks secrets)."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy the configuration file describes. SIGTERM or SIGINT: /readyz turns 503,
    /// the listeners close after server.drain_delay_ms, then the proxy stops once no request
    /// is in flight (at most server.grace_period_secs); SIGHUP is ignored (logged).
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Take over from the instance running on server.upgrade_socket: its listening
        /// sockets (with the connections queued in them) are handed over, then it drains and
        /// exits. A configuration with errors exits 1 and leaves it serving.
        #[arg(long)]
        upgrade: bool,
        /// How log lines are written to stderr.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        log_format: Format,
    },
    /// Check a configuration file: print the effective configuration (every default
    /// spelled out, itself a valid file) and any warnings, or every error as `key: reason`.
    /// Exit status 0 when valid, 1 otherwise.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, short, value_name = "FILE", required_unless_present = "file")]
        config: Option<PathBuf>,
        /// The configuration file, as a positional argument (same as --config).
        #[arg(value_name = "FILE", conflicts_with = "config", hide = true)]
        file: Option<PathBuf>,
    },
}

/// `--log-format`.
#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// jemalloc (the default `jemalloc` feature): fewer instructions per allocation than glibc's
/// malloc, and the untouched pages of an allocation (hyper's buffers on a connection that
/// has sent nothing) stay out of memory; with its background thread, what is freed (the
/// buffers of connections gone idle) goes back to the system also while nothing else is
/// allocated. Figures in `benches/RESULTS.md`.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::CheckConfig { config, file } => {
            let Some(path) = config.or(file) else {
                return ExitCode::FAILURE;
            };
            match ProxyConfig::load(&path) {
                Ok(config) => {
                    for warning in config.warnings() {
                        eprintln!("warning: {warning}");
                    }
                    print!("{}", config.to_toml());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve {
            config,
            log_format,
            upgrade,
        } => {
            let _logs = init_logging(match log_format {
                Format::Text => LogFormat::Text,
                Format::Json => LogFormat::Json,
            });
            let config = match ProxyConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    if upgrade {
                        eprintln!(
                            "klarna-stepup: not upgraded: the running instance keeps serving"
                        );
                    }
                    return ExitCode::FAILURE;
                }
            };
            for warning in config.warnings() {
                tracing::warn!(%warning, "configuration");
            }
            let served = if upgrade {
                serve_upgrade(config)
            } else {
                serve(config)
            };
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("klarna-stepup: {e}");
                    if upgrade {
                        eprintln!(
                            "klarna-stepup: not upgraded: the running instance, if any, keeps serving"
                        );
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}
