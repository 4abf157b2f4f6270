//! `serve`: the Pingora server the configuration describes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use pingora::utils::tls::CertKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::{ProxyConfig, UpstreamTls};
use super::metrics::Metrics;
use crate::engine::{check_request_head, HeadLimits};
use crate::pingora::{client_timeout_refusal, respond, upstream_refusal, StepUpProxy};
use crate::Record;

/// The payment API behind the proxy: round robin over the configured addresses, the next
/// one on connect failure, JSON 502/504 for upstream failures on every route.
struct PaymentApi {
    peers: Vec<SocketAddr>,
    next: AtomicUsize,
    tls: Option<(String, bool)>,
    client_cert: Option<Arc<CertKey>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    in_flight: Arc<AtomicUsize>,
    metrics: Option<Metrics>,
    /// Client connections: idle keep-alive, body read timeout, head bounds.
    idle_timeout_secs: u64,
    body_timeout: Duration,
    head_limits: HeadLimits,
    /// Set at SIGTERM/SIGINT: answers from then on close their connection.
    draining: Arc<AtomicBool>,
}

/// Per request: how many upstreams were tried, and since when; counts as in flight while it
/// lives.
#[derive(Debug)]
struct Attempts {
    tried: usize,
    upstream_since: Option<std::time::Instant>,
    _in_flight: InFlight,
}

/// One request in flight (decremented when the request's `CTX` is dropped).
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PaymentApi {
    fn new(
        config: &ProxyConfig,
        in_flight: Arc<AtomicUsize>,
        draining: Arc<AtomicBool>,
        metrics: Option<Metrics>,
    ) -> Result<Self, String> {
        let s = &config.server;
        let peers = s
            .resolve_upstreams()
            .map_err(|e| format!("server.upstream: cannot resolve: {e}"))?;
        if peers.is_empty() {
            return Err("server.upstream: no address".into());
        }
        let client_cert = match &s.upstream_tls {
            Some(t) => client_cert(t)?,
            None => None,
        };
        Ok(PaymentApi {
            peers,
            next: AtomicUsize::new(0),
            tls: s.upstream_tls.as_ref().map(|t| (t.sni.clone(), t.verify)),
            client_cert,
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_millis(s.read_timeout_ms),
            in_flight,
            metrics,
            idle_timeout_secs: s.idle_timeout_secs,
            body_timeout: Duration::from_millis(s.request_body_timeout_ms),
            head_limits: HeadLimits {
                max_bytes: s.max_header_bytes,
                max_count: s.max_headers,
            },
            draining,
        })
    }
}

fn client_cert(t: &UpstreamTls) -> Result<Option<Arc<CertKey>>, String> {
    let Some(cert) = &t.client_cert else {
        return Ok(None);
    };
    let chain = std::fs::read(cert).map_err(|e| format!("server.upstream_tls.client_cert: {e}"))?;
    let key_pem = match (&t.client_key, &t.client_key_env) {
        (Some(path), _) => {
            std::fs::read(path).map_err(|e| format!("server.upstream_tls.client_key: {e}"))?
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| format!("server.upstream_tls.client_key_env: {var} is not set"))?
            .into_bytes(),
        (None, None) => return Err("server.upstream_tls.client_key: missing".into()),
    };
    let certs: Vec<Vec<u8>> =
        pem_certs(&chain).ok_or("server.upstream_tls.client_cert: no PEM certificate found")?;
    let key =
        pem_key(&key_pem).ok_or("server.upstream_tls.client_key: no PEM private key found")?;
    Ok(Some(Arc::new(CertKey::new(certs, key))))
}

/// DER blocks of the `CERTIFICATE` entries of a PEM file.
fn pem_certs(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    // A malformed section ends the list (the iterator may not move past it).
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .map_while(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    (!certs.is_empty()).then_some(certs)
}

/// The DER of the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn pem_key(pem: &[u8]) -> Option<Vec<u8>> {
    PrivateKeyDer::from_pem_slice(pem)
        .ok()
        .map(|k| k.secret_der().to_vec())
}

#[async_trait]
impl ProxyHttp for PaymentApi {
    type CTX = Attempts;

    fn new_ctx(&self) -> Attempts {
        Attempts {
            tried: 0,
            upstream_since: None,
            _in_flight: InFlight::new(&self.in_flight),
        }
    }

    /// Bounds on the client's connection, before anything reads the request: the idle
    /// keep-alive timeout (Pingora's default waits forever), the body read timeout (408),
    /// HTTP/1.1 pipelining served in order (RFC 9112 section 9.3.2; Pingora's default drops
    /// pipelined requests after the first), and no keep-alive once draining.
    async fn early_request_filter(&self, session: &mut Session, _: &mut Attempts) -> Result<()> {
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // `Some(0)` is Pingora's "forever"; `None` (the client said close) stays.
            session.set_keepalive(Some(self.idle_timeout_secs));
        }
        session.set_read_timeout(Some(self.body_timeout));
        session.set_pipelining_enabled(true);
        Ok(())
    }

    /// The request head per RFC 9112 and within the configured bounds (400/431 JSON), and a
    /// `Content-Length: 5, 5` list made one value before step-up or the upstream reads it.
    async fn request_filter(&self, session: &mut Session, _: &mut Attempts) -> Result<bool> {
        let req = session.req_header();
        let (version, target_len) = (req.version, req.raw_path().len());
        if let Err(r) = check_request_head(
            session.req_header_mut(),
            version,
            target_len,
            self.head_limits,
        ) {
            // The body is not read: the connection cannot carry another request.
            session.set_keepalive(None);
            respond(session, &r).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _: &mut Session, ctx: &mut Attempts) -> Result<Box<HttpPeer>> {
        ctx.tried += 1;
        if self.metrics.is_some() {
            ctx.upstream_since
                .get_or_insert_with(std::time::Instant::now);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.peers.len();
        let addr = self.peers[i];
        let mut peer = match &self.tls {
            None => HttpPeer::new(addr, false, String::new()),
            Some((sni, verify)) => {
                let mut p = HttpPeer::new(addr, true, sni.clone());
                p.options.verify_cert = *verify;
                p.options.verify_hostname = *verify;
                p.client_cert_key = self.client_cert.clone();
                p
            }
        };
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _: &mut Session,
        _: &HttpPeer,
        ctx: &mut Attempts,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: try the next upstream, each at most once per request.
        e.set_retry(ctx.tried < self.peers.len());
        e
    }

    async fn upstream_response_filter(
        &self,
        _: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Attempts,
    ) -> Result<()> {
        if let (Some(m), Some(since)) = (&self.metrics, ctx.upstream_since) {
            if !upstream_response.status.is_informational() {
                m.upstream_answered(upstream_response.status.as_u16(), since.elapsed());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        _: &mut ResponseHeader,
        _: &mut Attempts,
    ) -> Result<()> {
        // A request accepted before the signal is answered, then its connection closed:
        // say so (Pingora writes `Connection` from the keep-alive state).
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _: &mut Attempts,
    ) -> FailToProxy {
        let code = match client_timeout_refusal(e).or_else(|| upstream_refusal(e)) {
            Some(r) => {
                if let Some(m) = &self.metrics {
                    if r.status.is_server_error() {
                        m.upstream_failed(r.code);
                    }
                }
                if session.response_written().is_none() {
                    let _ = respond(session, &r).await;
                }
                r.status.as_u16()
            }
            None => {
                let code = match e.etype() {
                    ErrorType::HTTPStatus(c) => *c,
                    ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
                        if *e.esource() == ErrorSource::Downstream =>
                    {
                        0
                    }
                    _ if *e.esource() == ErrorSource::Downstream => 400,
                    _ => 500,
                };
                if code > 0 && session.response_written().is_none() {
                    let _ = session.respond_error(code).await;
                }
                code
            }
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Pingora's error logs name the request with this: no query string (it may carry
    /// tokens).
    fn request_summary(&self, session: &Session, _: &Attempts) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}

/// SIGTERM and SIGINT both mean: let in-flight requests finish (at most `grace`), then stop.
/// From the signal on, answers say `Connection: close` (`draining`).
struct Signals {
    in_flight: Arc<AtomicUsize>,
    draining: Arc<AtomicBool>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break tracing::info!("SIGTERM: graceful shutdown"),
                _ = int.recv() => break tracing::info!("SIGINT: graceful shutdown"),
                // SIGHUP's default action would end the process silently.
                _ = hup.recv() => tracing::warn!(
                    "SIGHUP ignored: the configuration is read at start only; \
                     restart to change it"
                ),
            }
        }
        self.draining.store(true, Ordering::Relaxed);
        // Pingora's own grace period is a fixed sleep; drain instead, so that an idle proxy
        // stops at once and a busy one as soon as its last request is answered.
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.in_flight.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(in_flight = left, "grace period over; stopping anyway");
        }
        ShutdownSignal::GracefulTerminate
    }
}

/// Builds the server the configuration describes and runs it until SIGTERM or SIGINT (then
/// stops once no request is in flight, at the latest after `server.grace_period_secs`).
///
/// It blocks the calling thread and runs Pingora's own runtimes: call it from `main`, not from
/// inside a tokio runtime. An error is a configuration the server cannot start with, named by
/// its key (`server.upstream: cannot resolve: …`).
pub fn serve(config: ProxyConfig) -> Result<(), String> {
    let s = &config.server;
    // Pingora binds its listeners only once it runs, and then panics and lingers on an
    // address in use: find out here, and say which address.
    for (key, addr) in std::iter::once(("server.listen", &s.listen))
        .chain(s.metrics.iter().map(|m| ("server.metrics", m)))
    {
        if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
            return Err(format!("{key}: cannot listen on {addr}: {e}"));
        }
    }
    let conf = ServerConf {
        threads: s.threads,
        // Draining happens in `Signals` (see there).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // Both connectors (Pingora's and step-up's direct exchange) verify with it.
        ca_file: s
            .upstream_tls
            .as_ref()
            .and_then(|t| t.ca.as_ref())
            .map(|ca| ca.display().to_string()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let metrics = s.metrics.as_ref().map(|_| Metrics::register());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let draining = Arc::new(AtomicBool::new(false));
    let mut proxy = StepUpProxy::new(
        PaymentApi::new(
            &config,
            in_flight.clone(),
            draining.clone(),
            metrics.clone(),
        )?,
        config.step_up.clone(),
    )
    .large_bodies(s.large_candidate_bodies)
    .buffer_budget(crate::BufferBudget::new(s.buffer_budget_bytes))
    .server_conf(&server.configuration);
    if let Some(m) = metrics {
        proxy = proxy.observe(move |r: &Record| m.record(r));
    }
    let mut svc = http_proxy_service(&server.configuration, proxy);
    match &s.tls {
        None => svc.add_tcp(&s.listen),
        Some(tls) => {
            let mut settings =
                TlsSettings::intermediate(&tls.cert.to_string_lossy(), &tls.key.to_string_lossy())
                    .map_err(|e| format!("server.tls: {e}"))?;
            if tls.h2 {
                settings.enable_h2();
            }
            svc.add_tls_with_settings(&s.listen, None, settings);
        }
    }
    server.add_service(svc);
    if let Some(addr) = &s.metrics {
        let mut prom = pingora_prometheus::prometheus_http_service();
        prom.add_tcp(addr);
        server.add_service(prom);
    }
    tracing::info!(
        listen = %s.listen,
        upstreams = s.upstream.list().len(),
        tls = s.tls.is_some(),
        upstream_tls = s.upstream_tls.is_some(),
        metrics = s.metrics.as_deref().unwrap_or("off"),
        "klarna-stepup serving"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            in_flight,
            draining,
            grace: Duration::from_secs(s.grace_period_secs),
        }),
    });
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_decode() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n\
-----BEGIN PRIVATE KEY-----\nd29ybGQ=\n-----END PRIVATE KEY-----\n";
        assert_eq!(pem_certs(pem), Some(vec![b"hello".to_vec()]));
        assert_eq!(pem_key(pem), Some(b"world".to_vec()));
        assert_eq!(pem_key(b"none"), None);
    }
}
