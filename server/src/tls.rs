//! PEM files into rustls: the listener's certificate and key, the upstream's CA and client
//! certificate.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use super::config::{ListenerTls, UpstreamTls};
use super::error::Error;

/// The `CERTIFICATE` entries of a PEM file.
pub(super) fn pem_certs(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    // A malformed section ends the list (the iterator may not move past it).
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .map_while(Result::ok)
        .collect();
    (!certs.is_empty()).then_some(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(super) fn pem_key(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).ok()
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The upstream client certificate and key, if configured (the key from a file or from the
/// environment variable the file names).
pub(super) fn client_cert(t: &UpstreamTls) -> Result<Option<ClientCert>, Error> {
    let Some(cert) = &t.client_cert else {
        return Ok(None);
    };
    let chain = std::fs::read(cert).map_err(Error::file("server.upstream_tls.client_cert"))?;
    let key_pem = match (&t.client_key, &t.client_key_env) {
        (Some(path), _) => {
            std::fs::read(path).map_err(Error::file("server.upstream_tls.client_key"))?
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| Error::EnvNotSet {
                key: "server.upstream_tls.client_key_env",
                var: var.clone(),
            })?
            .into_bytes(),
        (None, None) => {
            return Err(Error::MissingKey {
                key: "server.upstream_tls.client_key",
            })
        }
    };
    let certs = pem_certs(&chain).ok_or(Error::Pem {
        key: "server.upstream_tls.client_cert",
        missing: "certificate",
    })?;
    let key = pem_key(&key_pem).ok_or(Error::Pem {
        key: "server.upstream_tls.client_key",
        missing: "private key",
    })?;
    Ok(Some((certs, key)))
}

/// The listener's TLS: TLS 1.2 and 1.3, ALPN `h2` (when enabled) and `http/1.1`.
pub(super) fn server_config(tls: &ListenerTls) -> Result<Arc<rustls::ServerConfig>, Error> {
    let cert = std::fs::read(&tls.cert).map_err(Error::file("server.tls.cert"))?;
    let key = std::fs::read(&tls.key).map_err(Error::file("server.tls.key"))?;
    let certs = pem_certs(&cert).ok_or(Error::Pem {
        key: "server.tls.cert",
        missing: "certificate",
    })?;
    let key = pem_key(&key).ok_or(Error::Pem {
        key: "server.tls.key",
        missing: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls("server.tls", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::tls("server.tls", e))?;
    config.alpn_protocols = if tls.h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_decode() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\naGVs\nbG8=\n-----END CERTIFICATE-----\n\
-----BEGIN PRIVATE KEY-----\nd29ybGQ=\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            pem_certs(pem).map(|c| c.iter().map(|c| c.to_vec()).collect::<Vec<_>>()),
            Some(vec![b"hello".to_vec()])
        );
        assert_eq!(
            pem_key(pem).map(|k| k.secret_der().to_vec()),
            Some(b"world".to_vec())
        );
        assert!(pem_key(b"none").is_none());
    }
}
