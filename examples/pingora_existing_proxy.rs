//! An existing Pingora proxy gets Klarna step-up in one line.
//!
//! ```text
//! cargo run --example pingora_existing_proxy --features pingora
//! # payment API on 127.0.0.1:9000, the proxy on 127.0.0.1:8080; or give them:
//! cargo run --example pingora_existing_proxy --features pingora -- 127.0.0.1:8080 127.0.0.1:9000
//! ```
//!
//! With `--bare` as a third argument it runs the existing proxy alone: the framework's own
//! cost, for comparison (`bench/peer/adapters.sh`).

use async_trait::async_trait;
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;
use pingora::prelude::*;
use std::time::Duration;

/// The proxy the acquirer already runs: it picks the payment API and sets timeouts.
struct PaymentApiProxy {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PaymentApiProxy {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream.as_str(), false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(Duration::from_secs(30));
        Ok(Box::new(peer))
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let step_up = StepUp::from_toml(
        r#"
        [defaults]
        return_url = "https://pay.acquirer.example/klarna/return"
        "#,
    )?;
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let existing = PaymentApiProxy {
        upstream: args.next().unwrap_or_else(|| "127.0.0.1:9000".into()),
    };

    let mut server = Server::new(None)?;
    server.bootstrap();
    if args.next().as_deref() == Some("--bare") {
        let mut service = http_proxy_service(&server.configuration, existing);
        service.add_tcp(&listen);
        server.add_service(service);
    } else {
        let proxy = StepUpProxy::new(existing, step_up); // <- the one line
        let mut service = http_proxy_service(&server.configuration, proxy);
        service.add_tcp(&listen);
        server.add_service(service);
    }
    server.run_forever()
}
