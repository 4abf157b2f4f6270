//! The `klarna-stepup` binary: `check-config` exit codes and messages; `serve` as a child
//! process on a free loopback port, one proxied request, SIGTERM.
#![cfg(feature = "cli")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{
    closed_within, exited, free_addr, ok_answer, read_one, serve_with, spawn_serve, start_serve,
    start_serve_args, stop, stop_ok, write_config, Served, BIN,
};
use common::blocking::{exchange, wait_exit, wait_listening};
use common::fixtures;
use common::upstream::{self, Answer};

#[test]
fn check_config_prints_the_effective_configuration() {
    let path = write_config(
        "ok.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:9000\"\n",
    );
    let out = check_config(&path);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "body_limit = 1048576",
        "path = \"/payments\"",
        "[server]",
        "listen = \"127.0.0.1:8080\"",
        "read_timeout_ms = 30000",
        "max_connections = 10000",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // What it prints is itself a valid configuration.
    let again = write_config("again.toml", &text);
    let out = check_config(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_every_error() {
    let path = write_config(
        "bad.toml",
        r#"
body_limit = 0
[return_url_policy]
schemes = ["https"]
[server]
listen = "localhost"
upstream = ["127.0.0.1:9000", "no-port"]
threads = 0
"#,
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "body_limit: must be at least 1 byte",
        "server.listen: must be an address",
        "server.upstream[1]: must be host:port",
        "server.threads: must be between 1 and 1024",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    let out = Command::new(BIN)
        .arg("check-config")
        .arg(write_config(
            "tls.toml",
            r#"
[server]
listen = "127.0.0.1:8443"
upstream = "127.0.0.1:9000"
[server.tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"
[server.upstream_tls]
sni = "payments.internal.example"
client_cert = "/nonexistent/client.pem"
client_key_env = "KLARNA_STEPUP_TEST_UNSET_KEY"
"#,
        ))
        .env_remove("KLARNA_STEPUP_TEST_UNSET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "server.tls.cert: /nonexistent/cert.pem is not a readable file",
        "server.tls.key: ",
        "server.upstream_tls.client_cert: ",
        "server.upstream_tls.client_key_env: environment variable KLARNA_STEPUP_TEST_UNSET_KEY is not set",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }

    let out = check_config(write_config("nosrv.toml", "nope = 1\n"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("server: missing table"), "{err}");
    assert!(err.contains("nope: unknown field"), "{err}");
}

#[test]
fn check_config_reports_every_error_in_one_round() {
    // One misspelt key among wrong values and failed checks, in both parts of the file.
    let path = write_config(
        "many.toml",
        r#"
body_limit = 0
inject_at = "a..b"
[[routes]]
method = "PO ST"
path = "/x"
[[routes]]
path = "/y"
[[routes]]
method = "POST"
path = "no-slash"
[return_url_policy]
max_lenght = 3000
schemes = ["ftp"]
max_length = "long"
[defaults]
return_url = "http://partner.example/r"
interaction_expiry = "PT5M"
[partner_response]
pending = ""
placement = "top_level"
redirect_url = "https://acq.example/{nope}"
[server]
listen = "nope"
upstream = "127.0.0.1:9000"
max_headers = "many"
admin = "also-nope"
threads = 0
[server.health_check]
interval_ms = "often"
timeout_ms = 5000
"#,
    );
    let out = check_config(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    let keys: Vec<_> = err
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        keys,
        [
            "server.health_check.interval_ms",
            "server.max_headers",
            "return_url_policy.max_lenght",
            "return_url_policy.max_length",
            "routes[1].method",
            "body_limit",
            "routes[0].method",
            "routes[2].path",
            "inject_at",
            "return_url_policy.schemes[0]",
            "defaults.interaction_expiry",
            "partner_response.pending",
            "partner_response.redirect_url",
            "partner_response.placement",
            "server.listen",
            "server.threads",
            "server.admin",
        ],
        "{err}"
    );
    // Every line says where its key is.
    assert!(err.lines().all(|l| l.ends_with(')')), "{err}");
}

/// `klarna-stepup check-config FILE`, run to its end.
fn check_config(path: impl AsRef<std::ffi::OsStr>) -> std::process::Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fails_over_to_the_next_upstream_counts_metrics_and_stops_on_sigint() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let (listen, metrics, dead) = (free_addr(), free_addr(), free_addr());
    let mut child = start_serve(&format!(
        "body_limit = 65536\n[server]\nlisten = \"{listen}\"\nupstream = [\"{dead}\", \"{}\"]\n\
         metrics = \"{metrics}\"\n",
        up.addr
    ));
    wait_listening(listen);
    wait_listening(metrics);
    let body = f.body.clone();
    let (ok, big, page) = tokio::task::spawn_blocking(move || {
        let head = |n: usize| {
            format!(
                "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
            )
        };
        // Twice: round robin starts at the dead upstream at least once.
        let ok = [
            exchange(listen, &head(body.len()), &body),
            exchange(listen, &head(body.len()), &body),
        ];
        let big_body = vec![b' '; 70 * 1024];
        let big = exchange(listen, &head(big_body.len()), &big_body);
        let page = exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        (ok, big, page)
    })
    .await
    .unwrap();
    for r in &ok {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"rewritten\"} 2"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"refused\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_engine_seconds_count 2"),
        "{page}"
    );
    // What an operator alerts on: codes of step-up's own answers, latency, the payment
    // API's status classes, and the process itself.
    for line in [
        "klarna_stepup_refusals_total{code=\"body_too_large\"} 1",
        "klarna_stepup_request_duration_seconds_count{outcome=\"rewritten\"} 2",
        "klarna_stepup_request_duration_seconds_count{outcome=\"refused\"} 1",
        "klarna_stepup_upstream_responses_total{class=\"2xx\"} 2",
        "klarna_stepup_upstream_duration_seconds_count 2",
        "process_resident_memory_bytes ",
    ] {
        assert!(page.contains(line), "{line} in {page}");
    }
    assert_eq!(up.take_received().len(), 2);
    stop_ok(&mut child, "-INT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_502_json_when_no_upstream_answers() {
    let (listen, dead, metrics) = (free_addr(), free_addr(), free_addr());
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{dead}\"\nmetrics = \"{metrics}\"\n"
    ));
    wait_listening(listen);
    wait_listening(metrics);
    let (r, page) = tokio::task::spawn_blocking(move || {
        let r = exchange(
            listen,
            "GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        let page = exchange(
            metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        (r, page)
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 502"), "{r}");
    assert!(r.contains(r#""code":"upstream_unreachable""#), "{r}");
    assert!(
        page.contains("klarna_stepup_requests_total{outcome=\"upstream_error\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_upstream_errors_total{code=\"upstream_unreachable\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("klarna_stepup_refusals_total{code=\"upstream_unreachable\"} 1"),
        "{page}"
    );
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_a_two_key_file_proxy_one_request_and_stop_on_sigterm() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let listen = free_addr();
    let path = write_config(
        "serve.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    // Every request's line is at debug (at info: the ones that did not go as planned).
    let mut child = spawn_serve(&path, &[], "info,klarna_stepup=debug");

    wait_listening(listen);
    let body = f.body.clone();
    let response = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-klarna-stepup: rewritten"),
        "{response}"
    );
    assert!(response.contains(r#""status":"pending""#), "{response}");
    assert_eq!(up.take_received().len(), 1);

    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("request done"), "one line per request:\n{log}");
    assert!(
        log.contains("payment_request_reference=\"order-1234\""),
        "{log}"
    );
    assert!(
        !log.contains("partner.example/klarna/return"),
        "a URL was logged:\n{log}"
    );
    assert!(TcpStream::connect(listen).is_err(), "still listening");
}

// ---------------------------------------------------------------------------------------
// TLS: the listener, and mTLS to the payment API with a private CA, over loopback
// ---------------------------------------------------------------------------------------

mod tls {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

    use super::common::upstream::Answer;

    /// A test CA and what it signed: a server certificate for `localhost` and a client one.
    pub struct Pki {
        ca: CertificateDer<'static>,
        pub ca_pem: String,
        server: (CertificateDer<'static>, Vec<u8>),
        pub server_pem: (String, String),
        pub client_pem: (String, String),
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn pki() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = |usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            (cert, key)
        };
        let (server, server_key) = leaf(ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf(ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server: (server.der().clone(), server_key.serialize_der()),
            server_pem: (server.pem(), server_key.serialize_pem()),
            client_pem: (client.pem(), client_key.serialize_pem()),
        }
    }

    fn roots(pki: &Pki) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        Arc::new(roots)
    }

    /// What the payment API saw of each request: its target and `Host`.
    pub type Seen = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

    /// A payment API on HTTPS that only talks to clients with a certificate from the test CA;
    /// it answers every request with `answer`.
    pub async fn start_upstream(pki: &Pki, answer: Answer) -> (SocketAddr, Seen) {
        let seen = Seen::default();
        let seen_by_server = seen.clone();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(pki), provider())
            .build()
            .unwrap();
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![pki.server.0.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server.1.clone())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                let seen = seen_by_server.clone();
                tokio::spawn(async move {
                    // A client without a certificate fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push((req.uri().to_string(), host));
                        let answer = answer.clone();
                        async move {
                            let mut res = hyper::Response::builder().status(answer.status);
                            for (k, v) in &answer.headers {
                                res = res.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                res.body(Full::new(Bytes::from(answer.body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    /// A TLS connection to `addr` (trusting only the test CA, as `localhost`), offering
    /// `alpn`.
    async fn connect(
        addr: SocketAddr,
        pki: &Pki,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(pki))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    /// One HTTP/1.1 exchange over TLS.
    pub async fn exchange(addr: SocketAddr, pki: &Pki, head: &str, body: &[u8]) -> String {
        let mut tls = connect(addr, pki, &[b"http/1.1"]).await;
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(body).await.unwrap();
        let mut out = Vec::new();
        // A TLS peer may close without close_notify; what was read is the answer.
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// One POST over HTTP/2 (ALPN `h2`): status, version, marker and body.
    pub async fn post_h2(
        addr: SocketAddr,
        pki: &Pki,
        path: &str,
        body: Vec<u8>,
    ) -> (u16, http::Version, Option<String>, Vec<u8>) {
        use http_body_util::BodyExt;
        let tls = connect(addr, pki, &[b"h2"]).await;
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "h2 offered"
        );
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("https://localhost:{}{path}", addr.port()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        let (status, version) = (res.status().as_u16(), res.version());
        let marker = res
            .headers()
            .get("x-klarna-stepup")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, version, marker, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_with_mtls_to_a_payment_api_behind_a_private_ca() {
    let pki = tls::pki();
    let f = fixtures::by_name("step_up_required");
    let (up, seen) = tls::start_upstream(&pki, Answer::of(&f)).await;
    let file = |name: &str, text: &str| write_config(name, text).display().to_string();
    let ca = file("ca.pem", &pki.ca_pem);
    let (cert, key) = (
        file("server.pem", &pki.server_pem.0),
        file("server.key", &pki.server_pem.1),
    );
    let (client_cert, client_key) = (
        file("client.pem", &pki.client_pem.0),
        file("client.key", &pki.client_pem.1),
    );
    let (with_cert, without_cert) = (free_addr(), free_addr());
    let upstream_tls = format!("sni = \"localhost\"\nca = \"{ca}\"\n");
    let _mtls = start_serve(&format!(
        "[server]\nlisten = \"{with_cert}\"\nupstream = \"{up}\"\n\
         [server.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         [server.upstream_tls]\n{upstream_tls}client_cert = \"{client_cert}\"\nclient_key = \"{client_key}\"\n"
    ));
    let _no_client_cert = start_serve(&format!(
        "[server]\nlisten = \"{without_cert}\"\nupstream = \"{up}\"\n\
         [server.upstream_tls]\n{upstream_tls}"
    ));
    wait_listening(with_cert);
    wait_listening(without_cert);
    let head = |method: &str, path: &str, n: usize| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
        )
    };

    // TLS in, mTLS out, verified against the private CA: the Klarna answer is rewritten...
    let res = tls::exchange(
        with_cert,
        &pki,
        &head("POST", "/payments", f.body.len()),
        &f.body,
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(
        res.to_ascii_lowercase()
            .contains("x-klarna-stepup: rewritten"),
        "{res}"
    );
    assert!(
        res.ends_with(&*String::from_utf8_lossy(&f.expect.body)),
        "{res}"
    );
    // The same over HTTP/2 from the partner (HTTP/1.1 to the payment API).
    let (status, version, marker, body) =
        tls::post_h2(with_cert, &pki, "/payments", f.body.clone()).await;
    assert_eq!((status, version), (200, http::Version::HTTP_2));
    assert_eq!(marker.as_deref(), Some("rewritten"));
    assert_eq!(
        String::from_utf8_lossy(&body),
        String::from_utf8_lossy(&f.expect.body)
    );
    let (target, host) = seen.lock().unwrap().last().cloned().unwrap();
    assert!(target.ends_with("/payments"), "{target}");
    assert_eq!(
        host.as_deref(),
        Some(&*format!("localhost:{}", with_cert.port()))
    );
    // ...and a request step-up leaves alone goes through Pingora's own connector the same way.
    let res = tls::exchange(with_cert, &pki, &head("POST", "/refunds", 2), b"{}").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(
        !res.to_ascii_lowercase().contains("x-klarna-stepup"),
        "{res}"
    );

    // Without a client certificate the payment API hangs up: 502 with the JSON error.
    let body = f.body.clone();
    let res = tokio::task::spawn_blocking(move || {
        exchange(without_cert, &head("POST", "/payments", body.len()), &body)
    })
    .await
    .unwrap();
    assert!(res.starts_with("HTTP/1.1 502"), "{res}");
    assert!(res.contains("upstream_unreachable"), "{res}");
}

#[test]
fn check_config_validates_and_prints_the_partner_table() {
    let ok = write_config(
        "partners.toml",
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"
[return_url_policy]
allowed_hosts = ["acquirer.example"]
[defaults]
interaction_expiry = "PT45M"
[partners]
header = "X-Partner-Id"
[[partners.entries]]
id = "shop-a"
allowed_hosts = ["a.example"]
return_url = "https://a.example/back"
[[partners.entries]]
id = "shop-b"
allowed_hosts = []
"#,
    );
    let out = check_config(&ok);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Each entry with what it inherits spelled out.
    for want in [
        "[partners]",
        "header = \"X-Partner-Id\"",
        "unknown = \"refuse\"",
        "[[partners.entries]]",
        "id = \"shop-a\"",
        "allowed_hosts = [\"a.example\"]",
        "return_url = \"https://a.example/back\"",
        "interaction_expiry = \"PT45M\"",
        "schemes = [\"https\"]",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(
        text.matches("interaction_expiry = \"PT45M\"").count(),
        3,
        "{text}"
    );
    assert!(
        err.contains("warning: partners.entries[1].allowed_hosts: empty"),
        "{err}"
    );
    assert!(!err.contains("return_url_policy.allowed_hosts"), "{err}");
    // What it prints is itself a valid configuration.
    let again = write_config("partners-again.toml", &text);
    let out = check_config(&again);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = write_config(
        "partners-bad.toml",
        r#"
[server]
listen = "127.0.0.1:8080"
upstream = "127.0.0.1:9000"
[partners]
header = "X-Partner-Id"
[[partners.entries]]
id = "shop-a"
[[partners.entries]]
id = "shop a"
[[partners.entries]]
id = "shop-c"
allowed_hosts = ["ok.example", "bad host"]
interaction_expiry = "PT5M"
"#,
    );
    let out = check_config(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for want in [
        "partners.entries[1].id: must be 1 to 64 ASCII letters",
        "partners.entries[2].allowed_hosts[1]: ",
        "partners.entries[2].interaction_expiry: must be an ISO 8601 duration between PT15M and PT48H",
        "(line 13,",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
}

#[test]
fn check_config_takes_config_as_a_flag_and_warns_of_an_open_allow_list() {
    let path = write_config(
        "flag.toml",
        "[server]\nlisten = \"127.0.0.1:8080\"\nupstream = \"127.0.0.1:9000\"\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: return_url_policy.allowed_hosts: empty: any https host"),
        "{err}"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for want in ["RUST_LOG", "Examples:", "check-config --config"] {
        assert!(help.contains(want), "{want:?} in\n{help}");
    }
    let serve_help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let serve_help = String::from_utf8(serve_help.stdout).unwrap();
    assert!(serve_help.contains("--log-format"), "{serve_help}");
}

#[test]
fn serve_on_a_busy_port_names_the_address_and_exits_at_once() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let path = write_config(
        "busy.toml",
        &format!("[server]\nlisten = \"{addr}\"\nupstream = \"127.0.0.1:9\"\n"),
    );
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5), "it lingered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("server.listen: cannot listen on {addr}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ignores_sighup_and_logs_json_when_asked() {
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        ..Answer::default()
    });
    let listen = free_addr();
    let path = write_config(
        "hup.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    let mut child = spawn_serve(&path, &["--log-format", "json"], "info");
    wait_listening(listen);
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP ended it");
    let r = tokio::task::spawn_blocking(move || {
        exchange(
            listen,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        )
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("SIGHUP ignored"), "{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

/// Issue 13 point 7: at `RUST_LOG=trace`, no header, cookie, query token, signature or body
/// reaches the log (the framework's own lines are capped at `info`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_at_rust_log_trace_logs_no_secret() {
    let up = upstream::start().await;
    let f = fixtures::by_name("step_up_required");
    up.set_answer(Answer::of(&f));
    let listen = free_addr();
    let path = write_config(
        &format!("trace-{}.toml", listen.port()),
        &format!(
            "[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            up.addr
        ),
    );
    let mut child = Served(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "trace")
            .env_remove("KLARNA_STEPUP_UNSAFE_FRAMEWORK_DEBUG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_listening(listen);
    let body = f.body.clone();
    let answers = tokio::task::spawn_blocking(move || {
        let secrets = "Authorization: Basic c2VjcmV0\r\nCookie: session=cookie-s3cret\r\n";
        let webhook = br#"{"event_id":"webhook-body-s3cret"}"#;
        [
            exchange(
                listen,
                &format!(
                    "GET /orders?token=query-s3cret HTTP/1.1\r\nHost: x\r\n{secrets}\
                     Connection: close\r\n\r\n"
                ),
                b"",
            ),
            exchange(
                listen,
                &format!(
                    "POST /payments?token=query-s3cret HTTP/1.1\r\nHost: x\r\n{secrets}\
                     Connection: close\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n",
                    body.len()
                ),
                &body,
            ),
            exchange(
                listen,
                &format!(
                    "POST /klarna/webhooks HTTP/1.1\r\nHost: x\r\n\
                     Klarna-Signature: sig-s3cret\r\nConnection: close\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    webhook.len()
                ),
                webhook,
            ),
        ]
    })
    .await
    .unwrap();
    for a in &answers {
        assert!(a.starts_with("HTTP/1.1 "), "{a}");
    }
    assert!(answers[1].starts_with("HTTP/1.1 200"), "{}", answers[1]);
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("request done"), "{log}");
    for secret in [
        "c2VjcmV0",
        "cookie-s3cret",
        "query-s3cret",
        "sig-s3cret",
        "webhook-body-s3cret",
        // the partner's return URL and the customer (request body)
        "partner.example/klarna/return",
        "customer@example.com",
        // the payment API's answer body
        "payment_request_data",
        "pay.klarna.com/eu/requests",
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------
// Issue 13 points 4 and 6: connections bounded, answers honest, HTTP/1 edge cases
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_closes_after_its_own_502_and_after_idle_keep_alive() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let dead = free_addr();
    let (mut bad, bad_addr) = serve_with("", dead);
    let (mut good, good_addr) = serve_with("idle_timeout_secs = 1\n", up.addr);
    tokio::task::spawn_blocking(move || {
        // A proxy-made 502 on a kept-alive connection: says close, and closes.
        let mut s = TcpStream::connect(bad_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut s);
        assert!(r.starts_with("HTTP/1.1 502"), "{r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        assert!(
            closed_within(&mut s, Duration::from_secs(3)),
            "502 kept alive"
        );

        // An idle kept-alive connection is closed after idle_timeout_secs (was: never).
        let mut s = TcpStream::connect(good_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut s);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // HTTP/1.1 keeps it alive unless the answer says close.
        assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
        let idle = Instant::now();
        assert!(
            closed_within(&mut s, Duration::from_secs(4)),
            "idle kept open"
        );
        assert!(
            idle.elapsed() >= Duration::from_millis(900),
            "{:?}",
            idle.elapsed()
        );
    })
    .await
    .unwrap();
    for child in [&mut bad, &mut good] {
        stop_ok(child, "-TERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_408_to_a_slow_client_and_431_to_huge_heads() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("request_body_timeout_ms = 300\n", up.addr);
    tokio::task::spawn_blocking(move || {
        // A client that stops sending its body: 408 from the proxy, not the payment API's
        // 504 (a candidate route and any other route).
        for path in ["/payments", "/orders"] {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: 100\r\n\r\n{{\"amount\":"
            )
            .unwrap();
            let started = Instant::now();
            let r = read_one(&mut s);
            assert!(r.starts_with("HTTP/1.1 408"), "{path}: {r}");
            assert!(r.contains(r#""code":"request_timeout""#), "{r}");
            assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
            assert!(started.elapsed() < Duration::from_secs(3));
            assert!(closed_within(&mut s, Duration::from_secs(3)));
        }
        // Headers: 1 MB was taken; now 32 KiB and 100 fields at most.
        let big = format!("X-Big: {}\r\n", "a".repeat(40 * 1024));
        let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
        // Over the size: step-up's JSON 431; over the count (100 by default): hyper's own.
        for (extra, ours) in [(big, true), (many, false)] {
            let r = exchange(
                listen,
                &format!("GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
                b"",
            );
            assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(300)]);
            assert_eq!(r.contains(r#""code":"headers_too_large""#), ours, "{r}");
        }
    })
    .await
    .unwrap();
    let received = up.take_received();
    assert!(
        received.iter().all(|r| r.path != "/payments"),
        "a candidate reached the upstream"
    );
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_a_request_accepted_before_the_drain_with_connection_close() {
    let up = upstream::start().await;
    let mut slow = ok_answer();
    slow.delay = Some(Duration::from_millis(800));
    up.set_answer(slow);
    let (mut child, listen) = serve_with("grace_period_secs = 5\n", up.addr);
    let pid = child.id();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let r = read_one(&mut s);
        let closed = closed_within(&mut s, Duration::from_secs(3));
        (r, closed)
    })
    .await
    .unwrap();
    assert!(answer.0.starts_with("HTTP/1.1 200"), "{}", answer.0);
    assert!(
        answer.0.to_ascii_lowercase().contains("connection: close"),
        "{}",
        answer.0
    );
    assert!(answer.1, "not closed after the drain answer");
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_a_request_sent_just_as_the_drain_begins() {
    // hyper closes a connection it has read nothing from when told to shut down: a client
    // that connected before the drain and sends its request as it begins was cut off.
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("", up.addr);
    let pid = child.id();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    wait_exit(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_accepting_for_drain_delay_ms_while_unready() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let admin = free_addr();
    let (mut child, listen) = serve_with(
        &format!("admin = \"{admin}\"\ndrain_delay_ms = 600\n"),
        up.addr,
    );
    wait_listening(admin);
    let pid = child.id();
    let (ready, during, after) = tokio::task::spawn_blocking(move || {
        let get = |addr, path: &str| {
            exchange(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                b"",
            )
        };
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(150));
        // Unready at once; new connections still taken and answered meanwhile.
        let ready = get(admin, "/readyz");
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let during = read_one(&mut s);
        std::thread::sleep(Duration::from_millis(900));
        let after = TcpStream::connect(listen).is_err();
        (ready, during, after)
    })
    .await
    .unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(during.starts_with("HTTP/1.1 200"), "{during}");
    // A kept-alive client is told to leave.
    assert!(
        during.to_ascii_lowercase().contains("connection: close"),
        "{during}"
    );
    assert!(after, "still listening after drain_delay_ms");
    wait_exit(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_handles_http1_edge_cases_per_rfc_9112() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("", up.addr);
    tokio::task::spawn_blocking(move || {
        // No Host in HTTP/1.1, or two Hosts: 400 JSON. Neither is forwarded.
        for hosts in ["", "Host: a\r\nHost: b\r\n"] {
            let r = exchange(
                listen,
                &format!("GET /orders HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n"),
                b"",
            );
            assert!(r.starts_with("HTTP/1.1 400"), "{r}");
            assert!(r.contains(r#""code":"bad_request_head""#), "{r}");
        }
        // `Content-Length: 5, 5`: refused with 400 and the connection closed, not forwarded
        // (RFC 9110 section 8.6 lets a recipient reject a list of equal values; hyper does).
        let r = exchange(
            listen,
            "POST /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5, 5\r\n\r\n",
            b"hello",
        );
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        // Two pipelined requests in one write: both answered, in order (Pingora 0.9 dropped
        // the second by default).
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let a = read_one(&mut s);
        let b = read_one(&mut s);
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
        assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    })
    .await
    .unwrap();
    let received = up.take_received();
    let paths: Vec<&str> = received.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/first", "/second"], "{paths:?}");
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_caps_connections_and_closes_heads_sent_too_slowly() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with(
        "threads = 1\nmax_connections = 2\nidle_timeout_secs = 1\n",
        up.addr,
    );
    tokio::task::spawn_blocking(move || {
        // Two connections hold the two places; a third waits in the backlog, unanswered,
        // until one of them goes.
        let a = TcpStream::connect(listen).unwrap();
        let _b = TcpStream::connect(listen).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut c = TcpStream::connect(listen).unwrap();
        c.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            c.read(&mut byte).is_err(),
            "answered over the connection cap"
        );
        drop(a);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = read_one(&mut c);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");

        // Slowloris: a head dripped a byte at a time is cut off at idle_timeout_secs from
        // the connection's start, however steadily the bytes come.
        let mut s = TcpStream::connect(listen).unwrap();
        let started = Instant::now();
        let mut cut = false;
        for b in b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if s.write_all(&[*b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        assert!(
            cut || closed_within(&mut s, Duration::from_secs(2)),
            "a slow head kept its connection"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_fewer_connection_places_than_threads_answers_every_socket() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    // Two workers, each with its own socket, one place: a worker waiting on an empty socket
    // must not hold the place a connection queued on the other socket needs.
    let (mut child, listen) = serve_with("threads = 2\nmax_connections = 1\n", up.addr);
    tokio::task::spawn_blocking(move || {
        for i in 0..12 {
            let mut s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let r = read_one(&mut s);
            assert!(r.starts_with("HTTP/1.1 200"), "connection {i}: {r}");
        }
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_admin_endpoint_reports_health_and_turns_unready_when_draining() {
    let up = upstream::start().await;
    let mut slow = ok_answer();
    slow.delay = Some(Duration::from_millis(1000));
    up.set_answer(slow);
    let admin = free_addr();
    let (mut child, listen) = serve_with(&format!("admin = \"{admin}\"\n"), up.addr);
    wait_listening(admin);
    let pid = child.id();
    let get = move |path: &str| {
        exchange(
            admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let (before, during, answer) = tokio::task::spawn_blocking(move || {
        let before = [
            get("/healthz"),
            get("/readyz"),
            get("/metrics"),
            get("/nope"),
        ];
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let kill = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(100));
        // Unready at once, alive still, while the request in flight is answered.
        let during = [get("/readyz"), get("/healthz")];
        (before, during, read_one(&mut s))
    })
    .await
    .unwrap();
    assert!(before[0].starts_with("HTTP/1.1 200"), "{}", before[0]);
    assert!(before[1].starts_with("HTTP/1.1 200"), "{}", before[1]);
    assert!(before[1].ends_with("ready\n"), "{}", before[1]);
    assert!(
        before[2].contains("process_resident_memory_bytes"),
        "{}",
        before[2]
    );
    assert!(before[3].starts_with("HTTP/1.1 404"), "{}", before[3]);
    assert!(during[0].starts_with("HTTP/1.1 503"), "{}", during[0]);
    assert!(during[0].ends_with("draining\n"), "{}", during[0]);
    assert!(during[1].starts_with("HTTP/1.1 200"), "{}", during[1]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_exit(&mut child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_skips_unhealthy_upstreams_until_they_recover_and_tries_them_all_when_none_is() {
    let (a, b) = (upstream::start().await, upstream::start().await);
    a.set_answer(ok_answer());
    let sick = || Answer {
        status: 503,
        ..ok_answer()
    };
    b.set_answer(sick());
    let admin = free_addr();
    // B by name (localhost), A by address: both are discovered.
    let listen = free_addr();
    let mut child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = [\"{}\", \"localhost:{}\"]\n\
         admin = \"{admin}\"\n\
         [server.health_check]\npath = \"/health\"\ninterval_ms = 100\ntimeout_ms = 100\n\
         fails = 1\npasses = 1\n",
        a.addr,
        b.addr.port()
    ));
    wait_listening(listen);
    let get = move |addr: SocketAddr, path: &str| {
        exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let proxied = |up: &upstream::Upstream| {
        up.take_received()
            .iter()
            .filter(|r| r.path == "/orders")
            .count()
    };
    let (phase1, readyz_sick) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        let phase1: Vec<String> = (0..6).map(|_| get(listen, "/orders")).collect();
        (phase1, get(admin, "/readyz"))
    })
    .await
    .unwrap();
    // B fails its checks: every request goes to A.
    for r in &phase1 {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(readyz_sick.starts_with("HTTP/1.1 200"), "{readyz_sick}");
    assert_eq!(proxied(&b), 0, "a request reached the unhealthy upstream");
    assert_eq!(proxied(&a), 6);
    // B recovers: it gets requests again.
    b.set_answer(ok_answer());
    let answers = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        (0..6).map(|_| get(listen, "/orders")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(answers.iter().all(|r| r.starts_with("HTTP/1.1 200")));
    let (to_a, to_b) = (proxied(&a), proxied(&b));
    assert!(to_b > 0, "the recovered upstream got nothing");
    assert_eq!(to_a + to_b, 6);
    // Both fail: requests go to both anyway (their answers pass through); this instance
    // stays ready, /upstreamz says none is healthy.
    a.set_answer(sick());
    b.set_answer(sick());
    let (r, readyz, upstreamz) = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        (
            get(listen, "/orders"),
            get(admin, "/readyz"),
            get(admin, "/upstreamz"),
        )
    })
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(upstreamz.starts_with("HTTP/1.1 503"), "{upstreamz}");
    assert!(
        upstreamz.contains("0 of 2 upstreams healthy"),
        "{upstreamz}"
    );
    assert_eq!(proxied(&a) + proxied(&b), 1);
    let log = stop_ok(&mut child, "-TERM");
    assert!(log.contains("upstream unhealthy"), "{log}");
}

// ---------------------------------------------------------------------------------------
// Issue 13 point 3: every body read or decoded is bounded
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_new_candidates_past_the_buffer_budget_and_keeps_accepted_ones() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (mut child, listen) = serve_with("buffer_budget_bytes = 100000\n", up.addr);
    tokio::task::spawn_blocking(move || {
        let n = 60_000;
        let head = format!(
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
        );
        let prefix = br#"{"payment_method":"card","pad":""#;
        let mut body = prefix.to_vec();
        body.resize(n - 2, b'p');
        body.extend_from_slice(b"\"}");
        // A: accepted, all but 2 bytes of its body sent (and charged as they came).
        let mut a = TcpStream::connect(listen).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        a.write_all(head.as_bytes()).unwrap();
        a.write_all(&body[..n - 2]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // B: over the budget as its bytes come: 503 with Retry-After, nothing sent upstream.
        // (Its last bytes alone cross it: none is left unread when the proxy closes.)
        let mut b = TcpStream::connect(listen).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        b.write_all(head.as_bytes()).unwrap();
        b.write_all(&body[..40_000]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        b.write_all(&body[40_000..40_010]).unwrap();
        let b = read_one(&mut b);
        assert!(b.starts_with("HTTP/1.1 503"), "{b}");
        assert!(b.contains(r#""code":"overloaded""#), "{b}");
        assert!(b.to_ascii_lowercase().contains("retry-after: 1"), "{b}");
        // A goes on and is answered.
        a.write_all(&body[n - 2..]).unwrap();
        let r = read_one(&mut a);
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // The budget is given back: C is accepted.
        let c = exchange(listen, &head, &body);
        assert!(c.starts_with("HTTP/1.1 200"), "{c}");
    })
    .await
    .unwrap();
    assert_eq!(up.take_received().len(), 2);
    stop_ok(&mut child, "-TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_a_compressed_answer_decoded_past_the_body_limit() {
    use std::io::Write as _;
    let up = upstream::start().await;
    // About 20 KB of gzip that decodes to 32 MiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(br#"{"payment_transaction_response":{"result":"APPROVED"},"pad":""#)
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..32 {
        gz.write_all(&chunk).unwrap();
    }
    gz.write_all(b"\"}").unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    up.set_answer(Answer {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-encoding".into(), "gzip".into()),
        ],
        body: bomb,
        delay: None,
    });
    let (mut child, listen) = serve_with("", up.addr);
    // A Klarna payment over 64 KiB: Pingora's pipeline, whose decompression is on for it.
    let f = fixtures::by_name("step_up_required");
    let mut body = b"{".to_vec();
    body.extend(std::iter::repeat_n(b' ', 70 * 1024));
    body.extend_from_slice(&f.body[1..]);
    let got = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(total < 8 << 20, "inflated answer streamed to the client");
        }
        total
    })
    .await
    .unwrap();
    // The body limit (1 MiB) and a decoded chunk, not 32 MiB.
    assert!(got < 8 << 20, "{got}");
    stop_ok(&mut child, "-TERM");
}

// ---------------------------------------------------------------------------------------
// Issue 12 points 2 and 6: zero-downtime upgrade (listener hand-over), safe reload
// ---------------------------------------------------------------------------------------

/// A per-test directory for upgrade sockets (short: a socket path is at most 107 bytes).
fn socket_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn upgradable(
    listen: SocketAddr,
    admin: SocketAddr,
    up: SocketAddr,
    sock: &std::path::Path,
    threads: usize,
) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nupstream = \"{up}\"\n\
         threads = {threads}\nupgrade_socket = \"{}\"\ndrain_delay_ms = 200\n",
        sock.display()
    )
}

/// `klarna_stepup_requests_total{outcome="not_candidate"}` on the admin endpoint now.
fn not_candidate_count(admin: SocketAddr) -> u64 {
    let page = exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    page.lines()
        .find_map(|l| l.strip_prefix("klarna_stepup_requests_total{outcome=\"not_candidate\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upgrade_hands_the_sockets_over_under_load_and_loses_no_request() {
    use common::load::{self, Mode, Req};
    let up = upstream::start().await;
    let mut answer = ok_answer();
    answer.delay = Some(Duration::from_millis(5));
    up.set_answer(answer);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = socket_dir("upgrade").join("u.sock");
    // A (1 thread) → B (3: its socket shared by three workers) → C (2). A takes one
    // connection at a time, held by a kept-alive client: every other connection waits in
    // A's accept queue until B takes it over. (Had B bound a socket of its own with
    // SO_REUSEPORT, A's close would reset those still queued then: 1 or 2 a run, tried.)
    let mut a = start_serve(&format!(
        "{}max_connections = 1\n",
        upgradable(listen, admin, up.addr, &sock, 1)
    ));
    wait_listening(listen);
    wait_listening(admin);
    let sock2 = sock.clone();
    let report = tokio::task::spawn_blocking(move || {
        let sock = sock2;
        let client = |mode, load: &std::sync::Arc<load::Load>| {
            load::client(
                listen,
                mode,
                |_| Req::get("/orders", 200),
                load.clone(),
                20_000,
                Duration::from_secs(15),
                Duration::from_millis(1),
            )
        };
        let (kept, fresh) = (load::Load::new(), load::Load::new());
        let mut clients = vec![client(Mode::KeptAlive, &kept)];
        let t = Instant::now();
        while kept.counts().0 < 20 {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        clients.push(client(Mode::KeptAlive, &kept));
        clients.extend((0..4).map(|_| client(Mode::Fresh, &fresh)));
        std::thread::sleep(Duration::from_millis(300));
        let fresh_before_b = fresh.counts();
        let mut b = start_serve_args(
            &upgradable(listen, admin, up.addr, &sock, 3),
            &["--upgrade"],
        );
        let (code_a, log_a) = exited(&mut a, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        // The admin socket went over too: this is B's count.
        let by_b = not_candidate_count(admin);
        let mut c = start_serve_args(
            &upgradable(listen, admin, up.addr, &sock, 2),
            &["--upgrade"],
        );
        let (code_b, log_b) = exited(&mut b, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let by_c = not_candidate_count(admin);
        kept.stop();
        fresh.stop();
        for t in clients {
            t.join().unwrap();
        }
        let (code_c, log_c) = stop(&mut c, "-TERM");
        (
            [kept, fresh],
            fresh_before_b,
            [(code_a, log_a), (code_b, log_b), (code_c, log_c)],
            (by_b, by_c),
        )
    })
    .await
    .unwrap();
    let (
        [kept, fresh],
        fresh_before_b,
        [(code_a, log_a), (code_b, log_b), (code_c, log_c)],
        (by_b, by_c),
    ) = report;
    let (k_ok, k_failed, k_retried) = kept.counts();
    let (f_ok, f_failed, _) = fresh.counts();
    eprintln!(
        "upgrade A→B→C under load: kept-alive {k_ok} answered 200, {k_failed} failed, \
         {k_retried} retried (closed before a byte of the answer); fresh connections \
         {f_ok} answered 200, {f_failed} failed, {} answered before B took A's queued \
         connections over; B answered {by_b}, C {by_c}",
        fresh_before_b.0
    );
    assert_eq!(k_failed, 0, "{:?}", kept.errors.lock().unwrap());
    assert_eq!(f_failed, 0, "{:?}", fresh.errors.lock().unwrap());
    // The fresh connections (and the second kept-alive one) were queued in A's sockets,
    // not answered, until B.
    assert_eq!(fresh_before_b, (0, 0, 0));
    assert!(f_ok > 40 && k_ok > 60, "{f_ok} {k_ok}");
    assert!(by_b > 0 && by_c > 0, "{by_b} {by_c}");
    assert_eq!(code_a, Some(0), "{log_a}");
    assert!(log_a.contains("handed over to the successor"), "{log_a}");
    assert_eq!(code_b, Some(0), "{log_b}");
    assert!(
        log_b.contains("upgrade: the old instance drains"),
        "{log_b}"
    );
    assert!(log_b.contains("handed over to the successor"), "{log_b}");
    assert_eq!(code_c, Some(0), "{log_c}");
    assert!(!log_c.contains("listening afresh"), "{log_c}");
    // C removed its socket at exit; A and B left C's in place.
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upgrade_refusals_leave_the_running_instance_serving() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (listen, admin) = (free_addr(), free_addr());
    let dir = socket_dir("refusals");
    let sock = dir.join("u.sock");
    let config = upgradable(listen, admin, up.addr, &sock, 1);
    let mut a = start_serve(&config);
    wait_listening(listen);
    wait_listening(admin);
    let get = move |addr: SocketAddr, path: &str| {
        exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let run = |config: &str, args: &[&str]| {
        let mut child = start_serve_args(config, args);
        exited(&mut child, Duration::from_secs(10))
    };
    let (sock2, listen2, up2) = (sock.clone(), free_addr(), up.clone());
    let log_a = tokio::task::spawn_blocking(move || {
        // A configuration that fails check-config: exit 1, every error named, A untouched.
        let bad = config.replace("threads = 1", "threads = 0");
        let (code, log) = run(&format!("body_limit = 0\n{bad}"), &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("server.threads: must be between"), "{log}");
        assert!(log.contains("body_limit: must be at least"), "{log}");
        assert!(
            log.contains("not upgraded: the running instance keeps serving"),
            "{log}"
        );
        // --upgrade with no upgrade_socket, or one nothing listens on: named, exit 1.
        let (code, log) = run(
            &config.replace(&format!("upgrade_socket = \"{}\"\n", sock2.display()), ""),
            &["--upgrade"],
        );
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("server.upgrade_socket: not set"), "{log}");
        let elsewhere = config.replace("u.sock", "none.sock");
        let (code, log) = run(&elsewhere, &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains("server.upgrade_socket: cannot reach the running instance"),
            "{log}"
        );
        // A configuration whose upstreams are all unhealthy does not take over.
        let dead = free_addr();
        let (code, log) = run(
            &config.replace(&up2.addr.to_string(), &dead.to_string()),
            &["--upgrade"],
        );
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains("server.upstream: no upstream is healthy"),
            "{log}"
        );
        // A plain start on A's socket: refused, A not asked for anything.
        let (code, log) = run(&config, &[]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("a running instance listens on"), "{log}");
        // A still answers and is ready.
        assert!(get(listen, "/orders").starts_with("HTTP/1.1 200"));
        assert!(get(admin, "/readyz").starts_with("HTTP/1.1 200"));
        // A drains (a slow request in flight keeps it alive): an upgrade now is refused.
        let mut slow = ok_answer();
        slow.delay = Some(Duration::from_millis(1500));
        up2.set_answer(slow);
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let kill = Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(100));
        let (code, log) = run(&config, &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("refused the upgrade: draining"), "{log}");
        assert!(read_one(&mut s).starts_with("HTTP/1.1 200"));
        up2.set_answer(ok_answer());
        let (code, log_a) = exited(&mut a, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{log_a}");
        assert!(!sock2.exists(), "A left its socket");
        log_a
    })
    .await
    .unwrap();
    assert!(log_a.contains("upgrade refused"), "{log_a}");

    // A socket left by a crashed instance (nothing listens on it) is removed at start.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut d = start_serve(&upgradable(listen, admin, up.addr, &sock, 2));
    wait_listening(listen);
    // D's two sockets to E's one worker, which accepts on both.
    let mut e = start_serve_args(
        &upgradable(listen, admin, up.addr, &sock, 1),
        &["--upgrade"],
    );
    let (code_d, log_d) =
        tokio::task::spawn_blocking(move || exited(&mut d, Duration::from_secs(10)))
            .await
            .unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        (0..8).map(|_| get(listen, "/orders")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
    // A changed listen address: listened on afresh, said so; E drains and exits 0.
    let mut f = start_serve_args(
        &upgradable(listen2, admin, up.addr, &sock, 1),
        &["--upgrade"],
    );
    let (code_e, log_e) =
        tokio::task::spawn_blocking(move || exited(&mut e, Duration::from_secs(10)))
            .await
            .unwrap();
    wait_listening(listen2);
    let answer = tokio::task::spawn_blocking(move || get(listen2, "/orders"))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (code_f, log_f) = stop(&mut f, "-TERM");
    assert_eq!(code_d, Some(0), "{log_d}");
    assert!(log_d.contains("removed a stale upgrade socket"), "{log_d}");
    assert_eq!(code_e, Some(0), "{log_e}");
    assert!(!log_e.contains("listening afresh"), "{log_e}");
    assert_eq!(code_f, Some(0), "{log_f}");
    assert!(
        log_f.contains("server.listen changed: listening afresh"),
        "{log_f}"
    );
}

// ---------------------------------------------------------------------------------------
// Issue 11: each worker's own pool of upstream connections
// ---------------------------------------------------------------------------------------

/// A scripted HTTP/1.1 upstream on plain threads, numbering the connections that carry a
/// request (the health checks' do not): `GET /n` answers the connection's number; `/close`
/// answers, then closes without saying so (as a payment API dropping an idle keep-alive
/// connection does); `/none` answers 204, without a body; `/extra` answers twice; `/big`
/// answers 4 MiB slowly.
fn numbering_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let count = count.clone();
            let mut n = 0;
            std::thread::spawn(move || loop {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if n == 0 {
                    n = count.fetch_add(1, Ordering::SeqCst) + 1;
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let answer = |body: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                };
                match path.as_str() {
                    // An answer with a second one behind it, unasked for (a broken or
                    // hostile payment API): never to be taken as the next request's.
                    "/extra" => {
                        let two = answer(&format!("conn {n}")) + &answer("forged");
                        if s.write_all(two.as_bytes()).is_err() {
                            return;
                        }
                    }
                    "/none" => {
                        if s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").is_err() {
                            return;
                        }
                    }
                    "/close" => {
                        let _ = s.write_all(answer(&format!("conn {n}")).as_bytes());
                        return;
                    }
                    "/big" => {
                        let size = 4 << 20;
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                        let _ = s.write_all(head.as_bytes());
                        for _ in 0..size / (64 << 10) {
                            if s.write_all(&[b'x'; 64 << 10]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    _ => {
                        if s.write_all(answer(&format!("conn {n}")).as_bytes())
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The body of a small answer read by `read_one`.
fn body_of(answer: &str) -> &str {
    answer.split("\r\n\r\n").nth(1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reuses_upstream_connections_but_none_the_upstream_closed_or_left_mid_answer() {
    use std::sync::atomic::Ordering;
    let (up, accepted) = numbering_upstream();
    let (mut child, listen) = serve_with("threads = 1\n", up);
    tokio::task::spawn_blocking(move || {
        let get = |s: &mut TcpStream, path: &str| {
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let r = read_one(s);
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            body_of(&r).to_string()
        };
        // Kept alive: ten requests, on two client connections, over one upstream connection.
        let mut a = TcpStream::connect(listen).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = TcpStream::connect(listen).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..5 {
            assert_eq!(get(&mut a, "/n"), "conn 1");
            assert_eq!(get(&mut b, "/n"), "conn 1");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // An answer without a body gives its connection back at once.
        a.write_all(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_one(&mut a);
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(get(&mut b, "/n"), "conn 1");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // The upstream closes its end after an answer: the next request gets a new one.
        assert_eq!(get(&mut a, "/close"), "conn 1");
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get(&mut a, "/n"), "conn 2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // An answer followed by bytes nobody asked for: the connection is not used again.
        assert_eq!(get(&mut a, "/extra"), "conn 2");
        for _ in 0..3 {
            assert_ne!(get(&mut a, "/n"), "forged");
            assert_ne!(get(&mut b, "/n"), "forged");
        }
        let after_extra = accepted.load(Ordering::SeqCst);

        // A client that leaves in the middle of a long answer: the rest of that answer is
        // still on the upstream connection, which is therefore not used again.
        let mut c = TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        assert!(c.read(&mut first).unwrap() > 0);
        drop(c);
        std::thread::sleep(Duration::from_millis(200));
        let big = accepted.load(Ordering::SeqCst);
        assert_eq!(big, after_extra, "/big went on a pooled connection");
        // That one is gone with the answer left unread; a new one serves.
        let next = format!("conn {}", big + 1);
        assert_eq!(get(&mut a, "/n"), next);
        assert_eq!(get(&mut b, "/n"), next);
        assert_eq!(accepted.load(Ordering::SeqCst), big + 1);
    })
    .await
    .unwrap();
    stop_ok(&mut child, "-TERM");
}
