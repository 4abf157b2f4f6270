//! `klarna-stepup`: the ready Klarna step-up proxy, built on Pingora. A command line over
//! [`klarna_stepup::server`]; the demo is `./x demo` (the `klarna-stepup-demo` binary of the
//! `demo/` workspace member), so this binary carries no sandbox.
//!
//! ```text
//! klarna-stepup serve --config klarna-stepup.toml
//! klarna-stepup check-config klarna-stepup.toml
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use klarna_stepup::server::{init_logging, serve, ProxyConfig};

/// Klarna step-up in front of a payment API.
#[derive(Parser)]
#[command(name = "klarna-stepup", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy the configuration file describes (SIGTERM or SIGINT: graceful stop).
    Serve {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file: print the effective configuration, or every error
    /// as `key: reason`. Exit status 0 when valid, 1 otherwise.
    CheckConfig {
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::CheckConfig { file } => match ProxyConfig::load(&file) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_logging();
            let config = match ProxyConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
