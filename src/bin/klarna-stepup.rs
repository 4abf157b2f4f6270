//! `klarna-stepup`: the ready Klarna step-up proxy, built on Pingora.
//!
//! ```text
//! klarna-stepup demo
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
    /// The whole flow on 127.0.0.1: a local Klarna, a demo payment API with a shop, and this
    /// proxy in front of it. Open the printed shop URL in a browser.
    Demo {
        /// The proxy's port (the shop is served through it).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The local Klarna's port.
        #[arg(long, default_value_t = 8091)]
        klarna_port: u16,
        /// The demo payment API's port.
        #[arg(long, default_value_t = 8092)]
        api_port: u16,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Demo {
            port,
            klarna_port,
            api_port,
        } => {
            cli::init_logging();
            let ports = cli::demo::Ports {
                proxy: port,
                klarna: klarna_port,
                payment_api: api_port,
            };
            match cli::demo::run(ports) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
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
