//! An existing Pingora proxy built with OpenSSL, wrapped in klarna-stepup's `StepUpProxy`:
//! HTTPS to the payment API and a TLS listener, both through OpenSSL.

use async_trait::async_trait;
use klarna_stepup::pingora::StepUpProxy;
use klarna_stepup::StepUp;
use pingora::prelude::*;

/// The proxy the acquirer already runs.
struct PaymentApiProxy;

#[async_trait]
impl ProxyHttp for PaymentApiProxy {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let peer = HttpPeer::new("127.0.0.1:9443", true, "payments.acquirer.example".into());
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
    let mut server = Server::new(None)?;
    server.bootstrap();
    let proxy = StepUpProxy::new(PaymentApiProxy, step_up);
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tls("127.0.0.1:8443", "cert.pem", "key.pem")?;
    server.add_service(service);
    server.run_forever()
}
