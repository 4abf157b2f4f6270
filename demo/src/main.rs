//! `klarna-stepup-demo` (`./x demo`): the Klarna sandbox and the demo payment API on
//! 127.0.0.1, with the `klarna-stepup` server (Pingora) and step-up in front of the payment
//! API: one command shows the whole flow in a browser.
//!
//! A workspace member of its own so that the production binary and the library carry no
//! sandbox: it joins the sandbox crate (`klarna-stepup-sandbox`) and the server crate
//! (`klarna-stepup-server`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use klarna_stepup::{StepUp, StepUpConfig};
use klarna_stepup_sandbox::{self as sandbox, DemoPorts};
use klarna_stepup_server::{init_logging, serve, LogFormat, ProxyConfig};

/// The whole Klarna step-up flow on 127.0.0.1: a local Klarna, a demo payment API with a
/// shop, and the klarna-stepup proxy in front of it. Open the printed shop URL in a browser.
#[derive(Parser)]
#[command(name = "klarna-stepup-demo", version)]
struct Ports {
    /// The proxy's port (the shop is served through it).
    #[arg(long = "port", value_name = "PORT", default_value_t = 8080)]
    proxy: u16,
    /// The local Klarna's port.
    #[arg(long = "klarna-port", value_name = "PORT", default_value_t = 8091)]
    klarna: u16,
    /// The demo payment API's port.
    #[arg(long = "api-port", value_name = "PORT", default_value_t = 8092)]
    payment_api: u16,
}

fn main() -> ExitCode {
    let ports = Ports::parse();
    let _logs = init_logging(LogFormat::Text);
    match run(ports) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo's step-up engine for a proxy reachable at `public_base_url`: the sandbox's
/// configuration, with its keys from the environment or the fixed demo values.
fn demo_step_up(public_base_url: &str) -> Result<StepUp, String> {
    let config = StepUpConfig::from_toml(&sandbox::demo_step_up_toml(public_base_url))
        .map_err(|e| e.to_string())?;
    StepUp::with_secrets(config, sandbox::demo_secret).map_err(|e| e.to_string())
}

/// Starts the backends, prints where to go, and runs the proxy until SIGINT or SIGTERM.
fn run(ports: Ports) -> Result<(), String> {
    for (port, flag) in [
        (ports.proxy, "--port"),
        (ports.klarna, "--klarna-port"),
        (ports.payment_api, "--api-port"),
    ] {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Err(format!(
                "klarna-stepup-demo: 127.0.0.1:{port} is not free ({e}); choose another port \
                 with {flag} PORT"
            ));
        }
    }
    let proxy_url = format!("http://127.0.0.1:{}", ports.proxy);
    // The backends run on their own runtime; the proxy on Pingora's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the demo runtime: {e}"))?;
    let backends = runtime
        .block_on(sandbox::start_demo_backends(DemoPorts {
            klarna: ports.klarna,
            payment_api: ports.payment_api,
        }))
        .map_err(|e| format!("cannot start the demo backends: {e}"))?;
    // Klarna's webhooks go through the proxy, which verifies them and relays them on; the
    // shop sends its payments through it.
    backends.put_behind(&proxy_url);

    let mut config = ProxyConfig::parse(&format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nupstream = \"{}\"\ngrace_period_secs = 1\n",
        ports.proxy, backends.payment_api_addr
    ))
    .map_err(|e| e.to_string())?;
    config.step_up = demo_step_up(&proxy_url)?;

    println!(
        "\nklarna-stepup demo\n\
         \n  shop (through the proxy)  {proxy_url}/shop\
         \n  each order's timeline     {proxy_url}/demo/orders\
         \n  Klarna sandbox            http://{klarna}\
         \n  payment API (behind)      http://{api}\
         \n\nOpen the shop, pay with Klarna, approve in the purchase journey: the confirmation\n\
         page shows the payment AUTHORIZED, and links to the order's timeline: what the shop\n\
         sent and got, what reached the payment API, Klarna's answers, the return and the\n\
         webhooks. Or from a terminal:\n\
         \n  curl -s {proxy_url}/payments -H 'content-type: application/json' \\\n    \
         -d '{{\"payment_method\":\"klarna\",\"amount\":11800,\"currency\":\"USD\",\"reference\":\"order-1\",\
         \"return_url\":\"{proxy_url}/shop/confirmation?reference=order-1\"}}'\n\
         \nCtrl-C stops it.\n",
        klarna = backends.klarna_addr,
        api = backends.payment_api_addr,
    );
    let served = serve(config).map_err(|e| e.to_string());
    drop(backends);
    runtime.shutdown_background();
    served
}
