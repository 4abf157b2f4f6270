//! `klarna-stepup`: the ready Klarna step-up proxy, built on Pingora.
//!
//! ```text
//! klarna-stepup serve --config klarna-stepup.toml
//! klarna-stepup check-config klarna-stepup.toml
//! ```
#![forbid(unsafe_code)]

#[path = "../cli/mod.rs"]
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    // `demo` (the sandbox Klarna + payment API behind the proxy) goes here.
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::CheckConfig { file } => match cli::config::ProxyConfig::load(&file) {
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
            cli::init_logging();
            let config = match cli::config::ProxyConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            match cli::server::serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
