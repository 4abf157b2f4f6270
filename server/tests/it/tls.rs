//! TLS: the listener, and mTLS to the payment API with a private CA, over loopback.

use crate::common::blocking::{exchange, wait_listening};
use crate::common::fixtures;
use crate::common::upstream::Answer;
use crate::support::binary::{free_addr, start_serve, write_config};

mod peers {
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

    use crate::common::upstream::Answer;

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
    let pki = peers::pki();
    let f = fixtures::by_name("step_up_required");
    let (up, seen) = peers::start_upstream(&pki, Answer::of(&f)).await;
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
    let res = peers::exchange(
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
        peers::post_h2(with_cert, &pki, "/payments", f.body.clone()).await;
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
    let res = peers::exchange(with_cert, &pki, &head("POST", "/refunds", 2), b"{}").await;
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
