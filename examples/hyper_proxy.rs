//! A small hyper reverse proxy with Klarna step-up in front of a remote payment API.
//!
//! ```sh
//! cargo run --example hyper_proxy -- 127.0.0.1:8080 127.0.0.1:9000   # listen, upstream
//! ```
//!
//! With `--bare` as a third argument it is the same proxy without the layer: the
//! framework's own cost, for comparison (`bench/peer/adapters.sh`).
//!
//! Everything that is not a Klarna payment streams through untouched. A real proxy's
//! duties are here too: upstream connect and read timeouts answered with step-up's JSON
//! 502/504 (`Connection: close`), hop-by-hop headers stripped both ways
//! (`klarna_stepup::engine::strip_hop_by_hop`), and on SIGINT/SIGTERM a graceful shutdown
//! that stops accepting and finishes the requests in flight (at most 10 s). It serves
//! HTTP/1.1 and HTTP/2 (h2c, prior knowledge) to clients, and speaks HTTP/1.1 to the payment
//! API. `tests/hyper_proxy_example.rs` runs it over loopback.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use klarna_stepup::engine::strip_hop_by_hop;
use klarna_stepup::tower::{upstream_refusal, KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::{Refusal, StepUp};
use tower::util::Either;
use tower::ServiceBuilder;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// From the request sent to the answer's head.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

type ProxyBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// The engine's JSON answer for an upstream failure.
fn refused(r: &Refusal) -> Response<ProxyBody> {
    let mut res = r
        .to_response()
        .map(|b| Full::new(Bytes::from(b)).map_err(|n| match n {}).boxed());
    // Tells the layer this answer is the proxy's own, not the payment API's: it keeps its
    // code in `x-klarna-stepup` and the record says `upstream_error`.
    res.extensions_mut().insert(r.clone());
    res
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());
    let bare = args.next().as_deref() == Some("--bare");

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("proxy on http://{}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let step_up = if bare {
        None
    } else {
        Some(StepUp::from_toml("")?)
    };
    serve(listener, upstream, step_up, stop).await
}

/// Serves the proxy on `listener` in front of `upstream` (`host:port`) until `stop`
/// completes, then lets the requests in flight finish (at most the grace period). Without
/// `step_up`, the same proxy without the layer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    upstream: String,
    step_up: Option<StepUp>,
    stop: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client = Client::builder(TokioExecutor::new()).build::<_, StepUpBody<Incoming>>(connector);
    // The request pointed at the upstream, hop-by-hop headers off both ways, failures as
    // step-up's JSON 502/504.
    let forward = tower::service_fn(move |mut req: Request<StepUpBody<Incoming>>| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move {
            // A proxy to a payment API opens no tunnels: in origin form below, a `CONNECT`
            // would reach it as `CONNECT /`.
            if req.method() == http::Method::CONNECT {
                return Ok::<_, Infallible>(refused(&Refusal::connect_not_proxied()));
            }
            strip_hop_by_hop(req.headers_mut());
            // A request target with an authority (HTTP/2's, or an absolute URL) names the
            // host, whatever `Host` says; the payment API is spoken to in HTTP/1.1, in origin
            // form, so the authority goes in `Host` (its host and port: never user
            // information, `http://user:pass@host/`).
            if let Some(host) = req.uri().authority().and_then(|a| {
                let host = match a.port() {
                    Some(port) => format!("{}:{port}", a.host()),
                    None => a.host().to_owned(),
                };
                host.parse().ok()
            }) {
                req.headers_mut().insert(http::header::HOST, host);
            }
            *req.version_mut() = http::Version::HTTP_11;
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{upstream}{path}")
                .parse()
                .expect("valid upstream URI");
            let res = match tokio::time::timeout(READ_TIMEOUT, client.request(req)).await {
                // `Upgrade` is stripped: a 101 was never asked for, and cannot be carried.
                Ok(Ok(res)) if res.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    refused(&Refusal::upstream_unreadable_answer())
                }
                Ok(Ok(res)) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    // The proxy's own version, not the payment API's (RFC 9110 section 6.2).
                    parts.version = http::Version::HTTP_11;
                    Response::from_parts(parts, body.boxed())
                }
                Ok(Err(e)) => refused(&upstream_refusal(&e)),
                Err(_) => refused(&Refusal::upstream_timeout()),
            };
            Ok::<_, Infallible>(res)
        }
    });
    // Step-up sees the partner's request first and the payment API's answer last.
    let proxy = match step_up {
        Some(step_up) => Either::Left(
            ServiceBuilder::new()
                .layer(KlarnaStepUpLayer::new(step_up))
                .service(forward),
        ),
        // The same proxy without the layer (its body types only wrapped, as the layer does).
        None => Either::Right(
            ServiceBuilder::new()
                .map_request(|req: Request<Incoming>| req.map(StepUpBody::new))
                .map_response(|res: Response<ProxyBody>| res.map(StepUpBody::new))
                .service(forward),
        ),
    };

    let server = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = stop.as_mut() => break,
        };
        let svc = TowerToHyperService::new(proxy.clone());
        let conn = server.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; stopping with requests in flight");
    }
    Ok(())
}
