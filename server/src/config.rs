//! The proxy's configuration file: the library's `StepUpConfig` keys at the top level plus a
//! `[server]` table. Every error names its key.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use klarna_stepup::config::read;
use klarna_stepup::{ConfigError, ConfigErrors, StepUp, StepUpConfig};

/// `[server]`: where to listen, where to proxy to, and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Listening address, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// The payment API: one `host:port` or a list. Requests go round robin to the healthy
    /// ones (`[server.health_check]`), another one on connect failure; names are resolved
    /// again every `dns_refresh_secs`, and every address a name has is an instance.
    pub upstream: Upstreams,
    /// Worker threads, each with its own single-threaded runtime, listening socket
    /// (`SO_REUSEPORT`) and connection pool to the payment API (default 2; one per core is
    /// the usual choice).
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Upstream TCP and TLS connect timeout, per address tried, in milliseconds (default
    /// 2000). Elapsed on every address: 504.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Upstream read timeout, in milliseconds (default 30000): the longest wait for the
    /// payment API's next bytes, counted from the last bytes received from it or sent to it
    /// (so the wait for an answer starts once the request is sent). Elapsed before the
    /// answer's head: 504 JSON `upstream_timeout`; during its body: the answer is cut off.
    /// Idle pooled connections to the payment API are closed after it too.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Upstream write timeout, in milliseconds (default 30000): the longest a write to the
    /// payment API may wait (it does not read what is sent). Elapsed: 504 JSON
    /// `upstream_timeout`.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// After SIGTERM or SIGINT, the proxy stops once no request is in flight, at the latest
    /// after this many seconds (default 5). It keeps answering meanwhile: take it out of the
    /// load balancer first.
    #[serde(default = "default_grace_period_secs")]
    pub grace_period_secs: u64,
    /// After SIGTERM or SIGINT (or a hand-over to a successor), how long the proxy goes on
    /// accepting connections with `/readyz` already at 503, in milliseconds (default 0), so
    /// that a load balancer polling `/readyz` stops sending before the listeners close; set
    /// it above the balancer's check interval times its fall count. Its answers meanwhile say
    /// `Connection: close`. The grace period starts after it.
    #[serde(default)]
    pub drain_delay_ms: u64,
    /// A Unix socket path (default: none) on which the running proxy hands its listening
    /// sockets (and the admin endpoint's) to a successor started with `serve --upgrade`,
    /// then drains: a restart or upgrade that loses no queued connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_socket: Option<PathBuf>,
    /// The time a client has to send a complete request head, from the connection's start or
    /// the end of the previous answer, in seconds (default 60): an idle kept-alive connection
    /// is closed after it, and so is one that sends its head too slowly.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// The longest wait for the next bytes of a request body, in milliseconds (default
    /// 10000). Elapsed: 408 JSON `request_timeout` and the connection closed; never reported
    /// as the payment API's timeout.
    #[serde(default = "default_request_body_timeout_ms")]
    pub request_body_timeout_ms: u64,
    /// The longest a whole request body may take, from the request's head to the body's last
    /// byte, in milliseconds (default 60000): a client sending a byte now and then cannot
    /// hold a connection (and what it sent) for longer. Elapsed: 408 JSON `request_timeout`
    /// and the connection closed.
    #[serde(default = "default_request_body_deadline_ms")]
    pub request_body_deadline_ms: u64,
    /// The largest request head taken (target plus header names and values), in bytes
    /// (default 32768). Over it: 431 JSON `headers_too_large`.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// The most header fields a request may have (default 100). Over it: 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Bytes of candidate bodies (requests and Klarna answers) the whole process holds in
    /// memory at once (default 67108864, 64 MiB). A request body is charged the bytes it has
    /// sent, as they arrive (with or without `Content-Length`; not what it declares), so
    /// slow clients holding little take little. A new candidate while it is spent, or one
    /// whose next bytes would go over it, gets 503 JSON `overloaded` with `Retry-After`;
    /// requests already sent upstream go on (their answers are counted too).
    #[serde(default = "default_buffer_budget_bytes")]
    pub buffer_budget_bytes: usize,
    /// Client connections open at once, over all threads (default 10000). At the cap, new
    /// connections wait in the listen backlog until one closes. At start the proxy raises
    /// its open-file limit (`RLIMIT_NOFILE`, soft) to what this takes (two descriptors a
    /// connection, plus 256); where the hard limit is lower, it serves fewer and says so in a
    /// warning. The pools of connections to the payment API keep a used one only while at
    /// most this many are open.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The admin endpoint, e.g. `127.0.0.1:9100` (default: none): `/metrics` (Prometheus),
    /// `/healthz` (the process is alive), `/readyz` (this instance takes traffic; 503 from
    /// the moment it drains) and `/upstreamz` (some payment API address is healthy). Keep it
    /// off the public network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The admin endpoint's former name (metrics only); the same endpoint as `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// How often the `upstream` names are resolved again, in seconds (default 30).
    #[serde(default = "default_dns_refresh_secs")]
    pub dns_refresh_secs: u64,
    /// Active health checks of the upstreams.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// TLS on the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// TLS to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_tls: Option<UpstreamTls>,
    /// OpenTelemetry export of step-up's spans over OTLP/HTTP (default: none). With it, the
    /// layer continues (or starts) the W3C trace context of the requests it acts on and
    /// passes its own span to the payment API in `traceparent`, as `[trace_context]
    /// propagate = true` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<TelemetryConfig>,
}

/// `[server.telemetry]`: where step-up's spans go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP traces endpoint, `http://host:port/v1/traces` (the spans are
    /// sent JSON-encoded; for TLS, export to a local collector or agent).
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute (default `klarna-stepup`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans waiting for export at most (default 4096); beyond, new ones are dropped.
    #[serde(default = "default_span_queue")]
    pub queue: usize,
    /// How often waiting spans are sent, in milliseconds (default 1000), or when 512 wait.
    #[serde(default = "default_export_interval_ms")]
    pub interval_ms: u64,
    /// How long one export may take, connect included, in milliseconds (default 5000).
    #[serde(default = "default_export_timeout_ms")]
    pub timeout_ms: u64,
}

fn telemetry_problems(p: &mut Vec<ConfigError>, t: &TelemetryConfig) {
    let endpoint = t.otlp_endpoint.parse::<http::Uri>().ok();
    let fit = endpoint.as_ref().is_some_and(|u| {
        u.scheme_str() == Some("http")
            && u.host().is_some_and(|h| !h.is_empty())
            && u.query().is_none()
    });
    if !fit {
        p.push(err(
            "server.telemetry.otlp_endpoint",
            "must be an http:// URL such as http://127.0.0.1:4318/v1/traces",
        ));
    }
    if t.service_name.is_empty() {
        p.push(err("server.telemetry.service_name", "must not be empty"));
    }
    if !(1..=1_000_000).contains(&t.queue) {
        p.push(err(
            "server.telemetry.queue",
            "must be between 1 and 1000000",
        ));
    }
    if t.interval_ms == 0 {
        p.push(err("server.telemetry.interval_ms", "must be at least 1"));
    }
    if t.timeout_ms == 0 {
        p.push(err("server.telemetry.timeout_ms", "must be at least 1"));
    }
}

fn default_service_name() -> String {
    "klarna-stepup".to_owned()
}

fn default_span_queue() -> usize {
    4096
}

fn default_export_interval_ms() -> u64 {
    1000
}

fn default_export_timeout_ms() -> u64 {
    5000
}

fn default_threads() -> usize {
    2
}
fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_write_timeout_ms() -> u64 {
    30_000
}
fn default_request_body_deadline_ms() -> u64 {
    60_000
}
fn default_grace_period_secs() -> u64 {
    5
}
fn default_idle_timeout_secs() -> u64 {
    60
}
fn default_request_body_timeout_ms() -> u64 {
    10_000
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_buffer_budget_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_dns_refresh_secs() -> u64 {
    30
}

/// `[server.health_check]`: each upstream address is checked every `interval_ms`; one that
/// fails `fails` checks in a row is skipped, while another one is healthy, until it passes
/// `passes` in a row. With every one unhealthy, requests go to all of them anyway (a wrong
/// health check or a just-restarted payment API must not fail every request), and the admin
/// endpoint's `/upstreamz` answers 503 (`/readyz`, this instance's own readiness, does not
/// change).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// `GET` this path (2xx or 3xx passes); without it, a TCP (and TLS) connect is the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Between two checks of an address, in milliseconds (default 2000).
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    /// A check that takes longer fails, in milliseconds (default 1000).
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Failed checks in a row that make an address unhealthy (default 2).
    #[serde(default = "default_check_fails")]
    pub fails: usize,
    /// Passed checks in a row that make it healthy again (default 1).
    #[serde(default = "default_check_passes")]
    pub passes: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: None,
            interval_ms: default_check_interval_ms(),
            timeout_ms: default_check_timeout_ms(),
            fails: default_check_fails(),
            passes: default_check_passes(),
        }
    }
}

fn default_check_interval_ms() -> u64 {
    2000
}
fn default_check_timeout_ms() -> u64 {
    1000
}
fn default_check_fails() -> usize {
    2
}
fn default_check_passes() -> usize {
    1
}

/// One upstream address or several.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Upstreams {
    /// `upstream = "127.0.0.1:9000"`
    One(String),
    /// `upstream = ["10.0.0.1:9000", "10.0.0.2:9000"]`
    Many(Vec<String>),
}

impl Upstreams {
    /// The addresses, as written.
    pub fn list(&self) -> Vec<String> {
        match self {
            Upstreams::One(a) => vec![a.clone()],
            Upstreams::Many(v) => v.clone(),
        }
    }
}

/// `[server.tls]`: PEM files of the listener's certificate chain and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerTls {
    /// PEM file of the certificate chain.
    pub cert: PathBuf,
    /// PEM file of the private key.
    pub key: PathBuf,
    /// Offer HTTP/2 (ALPN `h2`) besides HTTP/1.1 (default true).
    #[serde(default = "yes")]
    pub h2: bool,
    /// The most streams an HTTP/2 client may have open on one connection at once (default
    /// 100, HAProxy's; 1 to 1000). Each may hold a payment API connection and up to 64 KiB
    /// of its answer for a client that has not taken it.
    #[serde(default = "default_h2_max_streams")]
    pub h2_max_streams: u32,
    /// HTTP/2 streams a client may reset within a second of opening them, before their
    /// answers have ended, at once (default 100; at most 1000000): each sets off a request
    /// to the payment API that the reset abandons. Past it and `h2_reset_refill_ms`, the
    /// connection closes. 0 counts no resets: for a load balancer in front that carries
    /// many clients' requests on one connection and cancels each whose client went away.
    #[serde(default = "default_h2_reset_budget")]
    pub h2_reset_budget: u32,
    /// After `h2_reset_budget`, one more such reset every this many milliseconds (default
    /// 600: 100 a minute; 1 to 3600000).
    #[serde(default = "default_h2_reset_refill_ms")]
    pub h2_reset_refill_ms: u64,
}

pub(crate) fn default_h2_max_streams() -> u32 {
    100
}
pub(crate) fn default_h2_reset_budget() -> u32 {
    100
}
pub(crate) fn default_h2_reset_refill_ms() -> u64 {
    600
}

/// `[server.upstream_tls]`: HTTPS to the upstream, optionally with a client certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamTls {
    /// Server name sent in SNI and checked against the certificate.
    pub sni: String,
    /// Verify the upstream's certificate and host name (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// PEM file of the CA certificates the upstream's certificate is verified against (a
    /// private CA), instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Name of an environment variable holding the client key as PEM text, instead of
    /// `client_key` (the key itself never appears in the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_env: Option<String>,
}

fn yes() -> bool {
    true
}

/// The whole file, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The step-up engine the top-level keys describe.
    pub step_up: StepUp,
    /// The `[server]` table.
    pub server: ServerConfig,
}

impl ProxyConfig {
    /// Parses and validates a file's text; every error found, each with its key.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let toml::Value::Table(mut table) = klarna_stepup::config::parse_toml(text)? else {
            unreachable!("a TOML document is a table")
        };
        // Every error in one round: misspelt keys, wrong values and failed checks of both
        // parts (but the checks a wrong value makes unsound).
        let server = match table.remove("server") {
            None => {
                errors.push(err("server", "missing table (needs listen and upstream)"));
                None
            }
            Some(v) => Some(read::deserialize_lenient::<ServerConfig>(
                v,
                "server",
                &mut errors,
            )),
        };
        // Exported spans are the payment API's parents: with `[server.telemetry]`, the trace
        // goes on (`[trace_context] propagate`, shown so in the effective configuration).
        let exports = server
            .as_ref()
            .is_some_and(|s| s.value.as_ref().is_some_and(|s| s.telemetry.is_some()));
        if exports {
            if let toml::Value::Table(t) = table
                .entry("trace_context")
                .or_insert_with(|| toml::Value::Table(Default::default()))
            {
                t.insert("propagate".into(), toml::Value::Boolean(true));
            }
        }
        let step_up = read::step_up(toml::Value::Table(table), &mut errors);
        let server = server.and_then(|read| {
            let checked = read.value.as_ref()?.problems();
            read.add_checked(checked, SERVER_CROSS_KEY_CHECKS, &mut errors);
            read.value
        });
        match (step_up, server) {
            (Some(step_up), Some(server)) if errors.is_empty() => {
                Ok(ProxyConfig { step_up, server })
            }
            _ => Err(ConfigErrors(errors).located(text)),
        }
    }

    /// Reads and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![err(
                "",
                &format!("cannot read {}: {e}", path.display()),
            )])
        })?;
        Self::parse(&text)
    }

    /// What is valid but probably not meant: each as `key: reason`. `check-config` prints
    /// them and `serve` logs them.
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut out = self.step_up.warnings().to_vec();
        let c = self.step_up.config();
        // With partners on and unlisted ones refused, the global list serves no partner (the
        // engine warns of each open entry itself).
        let global_serves = !c.partners.enabled()
            || c.partners.unknown == klarna_stepup::config::UnknownPartner::Global;
        if global_serves && c.return_url_policy.allowed_hosts.is_empty() {
            out.push(err(
                "return_url_policy.allowed_hosts",
                "empty: any https host will be accepted as a return URL (list the partners' \
                 hosts, e.g. [\"*.partner.example\"])",
            ));
        }
        out
    }

    /// The effective configuration, every default spelled out, as TOML.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Effective<'a> {
            #[serde(flatten)]
            step_up: &'a StepUpConfig,
            server: &'a ServerConfig,
        }
        toml::to_string(&Effective {
            step_up: self.step_up.config(),
            server: &self.server,
        })
        .unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

/// The checks of [`ServerConfig::problems`] that read keys besides their own (see
/// [`read::checkable`]).
const SERVER_CROSS_KEY_CHECKS: &[(&str, &[&str])] = &[
    ("server.admin", &["server.listen", "server.metrics"]),
    ("server.metrics", &["server.listen", "server.admin"]),
    ("server.health_check", &["server.health_check"]),
    ("server.upstream_tls", &["server.upstream_tls"]),
];

impl ServerConfig {
    fn problems(&self) -> Vec<ConfigError> {
        let mut p = Vec::new();
        if self.listen.parse::<SocketAddr>().is_err() {
            p.push(err(
                "server.listen",
                "must be an address such as 127.0.0.1:8080",
            ));
        }
        let ups = self.upstream.list();
        if ups.is_empty() {
            p.push(err("server.upstream", "must name at least one host:port"));
        }
        for (i, u) in ups.iter().enumerate() {
            let key = match self.upstream {
                Upstreams::One(_) => "server.upstream".to_owned(),
                Upstreams::Many(_) => format!("server.upstream[{i}]"),
            };
            if !is_host_port(u) {
                p.push(err(&key, "must be host:port, e.g. 127.0.0.1:9000"));
            }
        }
        if !(1..=1024).contains(&self.threads) {
            p.push(err("server.threads", "must be between 1 and 1024"));
        }
        if self.connect_timeout_ms == 0 {
            p.push(err("server.connect_timeout_ms", "must be at least 1"));
        }
        if self.read_timeout_ms == 0 {
            p.push(err("server.read_timeout_ms", "must be at least 1"));
        }
        if self.write_timeout_ms == 0 {
            p.push(err("server.write_timeout_ms", "must be at least 1"));
        }
        if self.request_body_deadline_ms == 0 {
            p.push(err("server.request_body_deadline_ms", "must be at least 1"));
        }
        if self.idle_timeout_secs == 0 {
            p.push(err("server.idle_timeout_secs", "must be at least 1"));
        }
        if self.request_body_timeout_ms == 0 {
            p.push(err("server.request_body_timeout_ms", "must be at least 1"));
        }
        if self.max_header_bytes < 1024 {
            p.push(err("server.max_header_bytes", "must be at least 1024"));
        }
        if !(8..=256).contains(&self.max_headers) {
            p.push(err("server.max_headers", "must be between 8 and 256"));
        }
        let h = &self.health_check;
        if h.interval_ms < 100 {
            p.push(err(
                "server.health_check.interval_ms",
                "must be at least 100",
            ));
        }
        if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
            p.push(err(
                "server.health_check.timeout_ms",
                "must be between 1 and interval_ms",
            ));
        }
        if h.fails == 0 || h.passes == 0 {
            p.push(err(
                "server.health_check",
                "fails and passes must be at least 1",
            ));
        }
        if h.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            p.push(err("server.health_check.path", "must start with /"));
        }
        if self.dns_refresh_secs == 0 {
            p.push(err("server.dns_refresh_secs", "must be at least 1"));
        }
        if self.max_connections == 0 {
            p.push(err("server.max_connections", "must be at least 1"));
        }
        if self.drain_delay_ms > 600_000 {
            p.push(err(
                "server.drain_delay_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        if let Some(path) = &self.upgrade_socket {
            // sun_path holds 108 bytes; the socket is bound as `{path}.{pid}` first.
            let len = path.as_os_str().len();
            if len == 0 || len > MAX_UPGRADE_SOCKET_LEN {
                p.push(err(
                    "server.upgrade_socket",
                    &format!(
                        "must be a path of 1 to {MAX_UPGRADE_SOCKET_LEN} bytes (a Unix socket)"
                    ),
                ));
            }
        }
        for (key, addr) in [
            ("server.admin", &self.admin),
            ("server.metrics", &self.metrics),
        ] {
            let Some(m) = addr else { continue };
            if m.parse::<SocketAddr>().is_err() {
                p.push(err(key, "must be an address such as 127.0.0.1:9100"));
            } else if *m == self.listen {
                p.push(err(key, "must differ from server.listen"));
            }
        }
        if self.admin.is_some() && self.metrics.is_some() {
            p.push(err(
                "server.metrics",
                "give admin (which serves /metrics too) or its former name metrics, not both",
            ));
        }
        if let Some(tls) = &self.tls {
            file_problem(&mut p, "server.tls.cert", &tls.cert);
            file_problem(&mut p, "server.tls.key", &tls.key);
            if !(1..=1000).contains(&tls.h2_max_streams) {
                p.push(err(
                    "server.tls.h2_max_streams",
                    "must be between 1 and 1000",
                ));
            }
            if tls.h2_reset_budget > 1_000_000 {
                p.push(err("server.tls.h2_reset_budget", "must be at most 1000000"));
            }
            if !(1..=3_600_000).contains(&tls.h2_reset_refill_ms) {
                p.push(err(
                    "server.tls.h2_reset_refill_ms",
                    "must be between 1 and 3600000",
                ));
            }
        }
        if let Some(t) = &self.upstream_tls {
            if t.sni.is_empty() {
                p.push(err("server.upstream_tls.sni", "must not be empty"));
            }
            if let Some(ca) = &t.ca {
                file_problem(&mut p, "server.upstream_tls.ca", ca);
            }
            if let Some(c) = &t.client_cert {
                file_problem(&mut p, "server.upstream_tls.client_cert", c);
            }
            if let Some(k) = &t.client_key {
                file_problem(&mut p, "server.upstream_tls.client_key", k);
            }
            let has_key = t.client_key.is_some() || t.client_key_env.is_some();
            if t.client_key.is_some() && t.client_key_env.is_some() {
                p.push(err(
                    "server.upstream_tls.client_key_env",
                    "give client_key or client_key_env, not both",
                ));
            }
            if t.client_cert.is_some() != has_key {
                p.push(err(
                    "server.upstream_tls.client_cert",
                    "a client certificate needs a key (client_key or client_key_env) and vice versa",
                ));
            }
            if let Some(var) = &t.client_key_env {
                if std::env::var_os(var).is_none() {
                    p.push(err(
                        "server.upstream_tls.client_key_env",
                        &format!("environment variable {var} is not set"),
                    ));
                }
            }
        }
        if let Some(t) = &self.telemetry {
            telemetry_problems(&mut p, t);
        }
        p
    }

    /// The admin endpoint's address, by either name.
    pub fn admin_address(&self) -> Option<&str> {
        self.admin.as_deref().or(self.metrics.as_deref())
    }

    /// The upstream addresses, resolved.
    pub fn resolve_upstreams(&self) -> std::io::Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for u in self.upstream.list() {
            out.extend(u.to_socket_addrs()?.next());
        }
        Ok(out)
    }
}

/// The longest `server.upgrade_socket`: a Unix socket path is at most 107 bytes, and the
/// socket is first bound as `{path}.{pid}` (a pid has at most 7 digits).
const MAX_UPGRADE_SOCKET_LEN: usize = 99;

fn is_host_port(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', ' ', '@'])
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

fn file_problem(p: &mut Vec<ConfigError>, key: &str, path: &std::path::Path) {
    if !path.is_file() {
        p.push(err(
            key,
            &format!("{} is not a readable file", path.display()),
        ));
    }
}

fn err(key: &str, reason: &str) -> ConfigError {
    ConfigError::new(key, reason)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The configuration reference names every key of `[server]`, and no other.
    #[test]
    fn the_configuration_reference_names_every_server_key() {
        use klarna_stepup::config::read::{accepted_keys, documented_keys};
        let parse = |text: &str| match ProxyConfig::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        let accepted = accepted_keys(&parse, "server");
        assert!(
            accepted.contains("server.upstream_tls.client_key_env"),
            "{accepted:?}"
        );
        let documented: std::collections::BTreeSet<String> =
            documented_keys(include_str!("../../docs/configuration.md"))
                .into_iter()
                .filter(|k| k.starts_with("server."))
                .collect();
        assert_eq!(
            documented, accepted,
            "docs/configuration.md: the [server] keys"
        );
    }

    #[test]
    fn two_keys_are_enough() {
        let c = ProxyConfig::parse(
            "[server]\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(c.server.threads, 2);
        assert!(c.to_toml().contains("[[routes]]"));
    }

    #[test]
    fn every_error_is_named() {
        let e = ProxyConfig::parse(
            "body_limit = 0\n[server]\nlisten = \"nope\"\nupstream = [\"a:1\", \"b\"]\nthreads = 0\n",
        )
        .unwrap_err();
        let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "body_limit",
                "server.listen",
                "server.upstream[1]",
                "server.threads"
            ]
        );
    }

    /// `[server.tls]` with `lines`, for tests that only parse it (any readable files stand
    /// for the certificate and key; the worker's tests bring their own listener's).
    pub(crate) fn tls_table(lines: &str) -> String {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        format!("[server.tls]\ncert = \"{file}\"\nkey = \"{file}\"\n{lines}")
    }

    /// The HTTP/2 limits: defaults, values taken, values out of range named.
    #[test]
    fn http2_limits_are_read_and_bounded() {
        let with = |more: &str| {
            ProxyConfig::parse(&format!(
                "[server]\nlisten = \"127.0.0.1:8443\"\nupstream = \"127.0.0.1:9000\"\n{}",
                tls_table(more)
            ))
        };
        let tls = with("").unwrap().server.tls.unwrap();
        assert_eq!(
            (
                tls.h2_max_streams,
                tls.h2_reset_budget,
                tls.h2_reset_refill_ms
            ),
            (100, 100, 600)
        );
        let tls = with("h2_max_streams = 250\nh2_reset_budget = 0\nh2_reset_refill_ms = 50\n")
            .unwrap()
            .server
            .tls
            .unwrap();
        assert_eq!(
            (
                tls.h2_max_streams,
                tls.h2_reset_budget,
                tls.h2_reset_refill_ms
            ),
            (250, 0, 50)
        );
        // The ends of each range are taken, one past them refused.
        for ends in [
            "h2_max_streams = 1\nh2_reset_refill_ms = 1\n",
            "h2_max_streams = 1000\nh2_reset_budget = 1000000\nh2_reset_refill_ms = 3600000\n",
        ] {
            assert!(with(ends).is_ok(), "{ends}");
        }
        for past in [
            "h2_max_streams = 0\nh2_reset_budget = 1000001\nh2_reset_refill_ms = 0\n",
            "h2_max_streams = 1001\nh2_reset_budget = 4294967295\nh2_reset_refill_ms = 3600001\n",
        ] {
            let e = with(past).unwrap_err();
            let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "server.tls.h2_max_streams",
                    "server.tls.h2_reset_budget",
                    "server.tls.h2_reset_refill_ms"
                ],
                "{e}"
            );
        }
    }

    #[test]
    fn type_errors_name_their_key_and_place_every_one() {
        let text = "body_limit = \"1MB\"\n\
                    [server]\n\
                    listen = 8080\n\
                    upstream = \"127.0.0.1:9000\"\n\
                    max_connections = \"many\"\n\
                    threads = \"two\"\n";
        let e = ProxyConfig::parse(text).unwrap_err();
        let found: Vec<_> = e.0.iter().map(|e| (e.key.as_str(), e.location)).collect();
        assert_eq!(
            found,
            [
                ("server.listen", Some((3, 1))),
                ("server.max_connections", Some((5, 1))),
                ("server.threads", Some((6, 1))),
                ("body_limit", Some((1, 1))),
            ],
            "{e}"
        );
        assert!(
            e.to_string().contains(
                "server.listen: invalid type: integer `8080`, expected a string (line 3, column 1)"
            ),
            "{e}"
        );
        let e = ProxyConfig::parse("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.0[0].key, "server.upstream", "{e}");
        let e = ProxyConfig::parse("[server\n").unwrap_err();
        assert_eq!(e.0[0].location, Some((1, 8)), "{e}");
    }
}
