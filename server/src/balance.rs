//! Which payment API instance a request goes to: `pingora-load-balancing`'s round robin over
//! the healthy backends, its active health checks (a TCP or TLS connect, or an HTTP `GET` of
//! `[server.health_check] path`), and its service discovery fed by DNS: the `upstream` names
//! are resolved again every `dns_refresh_secs`. Its own background loop
//! (`LoadBalancer::run`) runs both on their schedules.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};

use super::config::HealthCheckConfig;
use super::error::Error as ServeError;
use super::upstream::Connector;

/// The payment API's instances, as discovered and health-checked.
pub(crate) type Balancer = LoadBalancer<RoundRobin>;

/// How many backends `select` looks at before giving up.
const MAX_TRIES: usize = 256;

/// A backend's IP address (every backend here is one: discovery resolves names).
fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

/// The next healthy backend's address, round robin. When none is healthy, the next of all
/// of them (as Envoy below its panic threshold): a health check that is wrong, or a payment
/// API that has just restarted, must not fail every request while the addresses may well
/// answer. `None` only when no address is known.
pub(crate) fn pick(lb: &Balancer) -> Option<SocketAddr> {
    // One address (the usual case): the answer whether it is healthy or not, without the
    // selector's bookkeeping (it hashes every candidate it looks at).
    let all = lb.backends().get_backend();
    if all.len() == 1 {
        return all.first().and_then(inet);
    }
    lb.select(b"", MAX_TRIES)
        .or_else(|| lb.select_with(b"", MAX_TRIES, |_, _| true))
        .as_ref()
        .and_then(inet)
}

/// Every backend the balancer considers healthy but `failed`; when none is, every other
/// one (see [`pick`]).
pub(crate) fn others(lb: &Balancer, failed: SocketAddr) -> Vec<SocketAddr> {
    let backends = lb.backends();
    let all = backends.get_backend();
    let healthy: Vec<SocketAddr> = all
        .iter()
        .filter(|b| backends.ready(b))
        .filter_map(inet)
        .filter(|a| *a != failed)
        .collect();
    if !healthy.is_empty() || all.iter().any(|b| backends.ready(b)) {
        return healthy;
    }
    all.iter()
        .filter_map(inet)
        .filter(|a| *a != failed)
        .collect()
}

/// Every known backend's address and whether it is healthy.
pub(crate) fn health(lb: &Balancer) -> Vec<(SocketAddr, bool)> {
    let backends = lb.backends();
    backends
        .get_backend()
        .iter()
        .filter_map(|b| Some((inet(b)?, backends.ready(b))))
        .collect()
}

/// Whether some backend is healthy.
pub(crate) fn any_healthy(lb: &Balancer) -> bool {
    health(lb).iter().any(|(_, healthy)| *healthy)
}

/// The `upstream` entries (`host:port`), resolved anew at each discovery.
struct Dns {
    names: Vec<String>,
    /// Some name resolved once: a failure from now on keeps the last set (and says so).
    resolved: AtomicBool,
}

impl Dns {
    fn new(names: Vec<String>) -> Self {
        Dns {
            names,
            resolved: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl ServiceDiscovery for Dns {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut found = BTreeSet::new();
        for name in &self.names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    for a in addrs {
                        found.insert(Backend::new(&a.to_string())?);
                    }
                }
                // The others (and, if none resolves, the last known set) keep serving.
                Err(e) => tracing::warn!(upstream = %name, error = %e, "upstream not resolved"),
            }
        }
        if found.is_empty() {
            let e = Error::explain(ErrorType::ConnectNoRoute, "no upstream name resolved");
            // At the start, the error stops the server (`server.upstream: cannot resolve`);
            // later, the balancer's loop keeps the last set without a word.
            if self.resolved.load(Ordering::Relaxed) {
                tracing::warn!(error = %e, "upstream discovery failed; keeping the last set");
            }
            return Err(e);
        }
        self.resolved.store(true, Ordering::Relaxed);
        Ok((found, HashMap::new()))
    }
}

/// The active health check: a connect (TCP, and TLS when the upstream speaks it) through the
/// proxy's own dialer, then, with a `path`, an HTTP `GET` that must answer 2xx or 3xx.
struct Probe {
    connector: Connector,
    config: HealthCheckConfig,
    host: String,
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let fail = |why: String| Error::explain(ErrorType::ConnectError, why);
        let addr = inet(target).ok_or_else(|| fail("no address".into()))?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let probe = async {
            let io = self
                .connector
                .connect(addr)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let Some(path) = &self.config.path else {
                return Ok(());
            };
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            tokio::spawn(conn);
            let req = http::Request::get(path.as_str())
                .header(http::header::HOST, self.host.as_str())
                .header(http::header::USER_AGENT, "klarna-stepup health check")
                .body(Empty::<Bytes>::new())
                .map_err(|e| fail(e.to_string()))?;
            let res = send
                .send_request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = res.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(fail(format!("health check answered {status}")))
            }
        };
        match tokio::time::timeout(timeout, probe).await {
            Ok(r) => r,
            Err(_) => Err(fail("health check timed out".into())),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %target.addr, "upstream healthy again");
        } else {
            tracing::warn!(
                upstream = %target.addr,
                "upstream unhealthy: skipped until it recovers, while another one is healthy"
            );
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.config.passes
        } else {
            self.config.fails
        }
    }
}

/// The balancer for `upstream`, resolved once (an error names what could not be resolved),
/// set to resolve the names again every `dns_refresh` and to check every address every
/// `config.interval_ms` once its loop runs ([`maintain`]).
pub(crate) async fn balancer(
    upstreams: Vec<String>,
    connector: Connector,
    config: HealthCheckConfig,
    dns_refresh: Duration,
) -> std::result::Result<Arc<Balancer>, ServeError> {
    let host = upstreams.first().cloned().unwrap_or_default();
    let mut lb = Balancer::from_backends(pingora_load_balancing::Backends::new(Box::new(
        Dns::new(upstreams),
    )));
    lb.health_check_frequency = Some(Duration::from_millis(config.interval_ms));
    lb.update_frequency = Some(dns_refresh);
    lb.set_health_check(Box::new(Probe {
        connector,
        config,
        host,
    }));
    lb.parallel_health_check = true;
    lb.update().await.map_err(|e| ServeError::Resolve {
        source: Box::new(e),
    })?;
    Ok(Arc::new(lb))
}

/// Runs discovery and the health checks on their schedules until `stop` says `true`: the
/// balancer's own loop.
pub(crate) async fn maintain(lb: Arc<Balancer>, stop: tokio::sync::watch::Receiver<bool>) {
    lb.run(stop, None).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::ToSocketAddrs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A discovery that answers each call with the next of its sets (then the last again).
    struct Scripted(Vec<Vec<&'static str>>, AtomicUsize);

    #[async_trait]
    impl ServiceDiscovery for Scripted {
        async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
            let i = self.1.fetch_add(1, Ordering::Relaxed).min(self.0.len() - 1);
            let set = self.0[i].iter().map(|a| Backend::new(a).unwrap()).collect();
            Ok((set, HashMap::new()))
        }
    }

    #[tokio::test]
    async fn discovery_runs_again_every_refresh_and_selection_follows_it() {
        let discovery = Scripted(
            vec![
                vec!["127.0.0.1:1001"],
                vec!["127.0.0.1:1002", "127.0.0.1:1003"],
            ],
            AtomicUsize::new(0),
        );
        let mut lb =
            Balancer::from_backends(pingora_load_balancing::Backends::new(Box::new(discovery)));
        lb.health_check_frequency = Some(Duration::from_secs(60));
        lb.update_frequency = Some(Duration::from_millis(50));
        lb.update().await.unwrap();
        let lb = Arc::new(lb);
        assert_eq!(pick(&lb), Some("127.0.0.1:1001".parse().unwrap()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(maintain(lb.clone(), stopped));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen: BTreeSet<SocketAddr> = (0..4).filter_map(|_| pick(&lb)).collect();
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops when told")
            .unwrap();
        let want: BTreeSet<SocketAddr> = ["127.0.0.1:1002", "127.0.0.1:1003"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(seen, want);
        assert_eq!(others(&lb, "127.0.0.1:1002".parse().unwrap()).len(), 1);
    }

    #[tokio::test]
    async fn names_are_resolved_and_a_failed_resolution_keeps_the_last_set() {
        let dns = Dns::new(vec![
            "localhost:1004".into(),
            "no-such-host.invalid:1".into(),
        ]);
        let (found, _) = dns.discover().await.unwrap();
        assert!(found
            .iter()
            .any(|b| b.to_socket_addrs().unwrap().next().unwrap().port() == 1004));
        let none = Dns::new(vec!["no-such-host.invalid:1".into()]);
        assert!(
            none.discover().await.is_err(),
            "an empty set would drop every backend"
        );
    }
}
