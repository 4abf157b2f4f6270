//! Step-up's own upstream client: Pingora's connector and connection pool, for the direct
//! exchange and the acquirer-return notification.

use std::sync::OnceLock;

use bytes::Bytes;
use http::StatusCode;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorType, OkOrErr, Result};

/// Attempts per exchange when the inner proxy's `fail_to_connect` or `error_while_proxy`
/// says retry, unless a server configuration says otherwise: Pingora's default
/// `max_retries`.
const DEFAULT_MAX_ATTEMPTS: usize = 16;

/// Pingora's HTTP connector, made on first use, with the options and retry budget of the
/// server it runs in.
pub(super) struct UpstreamClient {
    connector: OnceLock<Connector>,
    options: Option<ConnectorOptions>,
    max_attempts: usize,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient {
            connector: OnceLock::new(),
            options: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// A client with the connector options (CA file, pool size, …) and retry budget
    /// (`max_retries`) of `conf`.
    pub(super) fn from_server_conf(conf: &ServerConf) -> Self {
        UpstreamClient {
            connector: OnceLock::new(),
            options: Some(ConnectorOptions::from_server_conf(conf)),
            max_attempts: conf.max_retries.max(1),
        }
    }

    /// A client with these connector options and the default retry budget.
    pub(super) fn with_options(options: ConnectorOptions) -> Self {
        UpstreamClient {
            options: Some(options),
            ..UpstreamClient::default()
        }
    }

    pub(super) fn connector(&self) -> &Connector {
        self.connector
            .get_or_init(|| Connector::new(self.options.clone()))
    }

    /// How many times one exchange may be tried.
    pub(super) fn max_attempts(&self) -> usize {
        self.max_attempts
    }

    /// Sends `req` (a small request the engine built, e.g. the return notification) to
    /// `peer`; the answer's status. Unbounded: the caller puts the timeout around it.
    /// Sends `req` and reads the answer: its status and its body when that is at most
    /// `keep` bytes (`None` past it; the rest is drained either way, so the connection can
    /// be reused).
    pub(super) async fn send(
        &self,
        peer: &HttpPeer,
        req: http::Request<Vec<u8>>,
        keep: usize,
    ) -> Result<(StatusCode, Option<Vec<u8>>)> {
        let connector = self.connector();
        let (mut s, _reused) = connector.get_http_session(peer).await?;
        let (parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head =
            RequestHeader::build(parts.method, path.as_bytes(), Some(parts.headers.len()))?;
        for (name, value) in parts.headers {
            if let Some(name) = name {
                head.insert_header(name, value)?;
            }
        }
        s.write_request_header(Box::new(head)).await?;
        s.write_request_body(Bytes::from(body), true).await?;
        s.finish_request_body().await?;
        s.read_response_header().await?;
        let status = s
            .response_header()
            .map(|r| r.status)
            .or_err(ErrorType::InvalidHTTPHeader, "no response header")?;
        let mut body = Some(Vec::new());
        while let Some(chunk) = s.read_response_body().await? {
            body = body.filter(|b| b.len() + chunk.len() <= keep).map(|mut b| {
                b.extend_from_slice(&chunk);
                b
            });
        }
        connector.release_http_session(s, peer, None).await;
        Ok((status, body))
    }
}
