//! `demo`: the Klarna sandbox and the demo payment API on 127.0.0.1, with the Pingora proxy
//! and step-up in front of the payment API: one command shows the whole flow in a browser.

use klarna_stepup::sandbox::{self, DemoPorts};

use super::config::ProxyConfig;

/// Ports of the demo, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The proxy: the shop and the API partners call.
    pub proxy: u16,
    /// The local Klarna.
    pub klarna: u16,
    /// The demo payment API behind the proxy.
    pub payment_api: u16,
}

/// Starts the backends, prints where to go, and runs the proxy until SIGINT or SIGTERM.
pub fn run(ports: Ports) -> Result<(), String> {
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
    // Klarna's webhooks go through the proxy, which verifies them and relays them on.
    backends
        .klarna
        .set_webhook_url(Some(format!("{proxy_url}/klarna/webhooks")));

    let mut config = ProxyConfig::parse(&format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nupstream = \"{}\"\ngrace_period_secs = 1\n",
        ports.proxy, backends.payment_api_addr
    ))
    .map_err(|e| e.to_string())?;
    config.step_up = sandbox::demo_step_up(&proxy_url).map_err(|e| e.to_string())?;

    println!(
        "\nklarna-stepup demo\n\
         \n  shop (through the proxy)  {proxy_url}/shop\
         \n  Klarna sandbox            http://{klarna}\
         \n  payment API (behind)      http://{api}\
         \n\nOpen the shop, pay with Klarna, approve in the purchase journey: the confirmation\n\
         page shows the payment AUTHORIZED. Or from a terminal:\n\
         \n  curl -s {proxy_url}/payments -H 'content-type: application/json' \\\n    \
         -d '{{\"payment_method\":\"klarna\",\"amount\":11800,\"currency\":\"USD\",\"reference\":\"order-1\",\
         \"return_url\":\"{proxy_url}/shop/confirmation?reference=order-1\"}}'\n\
         \nCtrl-C stops it.\n",
        klarna = backends.klarna_addr,
        api = backends.payment_api_addr,
    );
    let served = super::server::serve(config);
    drop(backends);
    runtime.shutdown_background();
    served
}
