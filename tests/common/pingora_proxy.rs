//! Pingora servers for tests: an "existing" acquirer proxy in front of one upstream, run in a
//! thread on a free loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The proxy an acquirer already has: one upstream, timeouts, no retry to a dead peer.
pub struct PaymentApi {
    pub upstream: SocketAddr,
    pub read_timeout: Duration,
}

#[async_trait]
impl ProxyHttp for PaymentApi {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(1));
        peer.options.read_timeout = Some(self.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        _: &mut (),
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(false);
        e
    }
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts a Pingora server with `proxy` on a free loopback port; it lives until the test
/// process ends.
pub fn start_pingora<P>(proxy: P) -> SocketAddr
where
    P: ProxyHttp + Send + Sync + 'static,
    P::CTX: Send + Sync,
{
    let addr = free_addr();
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = http_proxy_service(&server.configuration, proxy);
    svc.add_tcp(&addr.to_string());
    server.add_service(svc);
    std::thread::spawn(move || server.run_forever());
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    addr
}
