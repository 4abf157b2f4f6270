//! The tower adapter as a reverse proxy on 127.0.0.1: `KlarnaStepUpLayer` in front of a
//! hyper-util client to the upstream, served by hyper (the shape of examples/hyper_proxy.rs):
//! upstream connect and read timeouts answered with the engine's JSON 502/504, hop-by-hop
//! headers stripped both ways, graceful shutdown that finishes in-flight requests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
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
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to the upstream: elapsed, 504.
    pub connect: Duration,
    /// From the request sent to the answer's head: elapsed, 504.
    pub read: Duration,
    /// After shutdown is asked: in-flight requests get at most this long.
    pub grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(30),
            grace: Duration::from_secs(5),
        }
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The engine's JSON answer for an upstream failure, as a response of the proxy's body type.
fn refused(r: &Refusal) -> Response<ProxyBody> {
    let mut res = r
        .to_response()
        .map(|b| Full::new(Bytes::from(b)).map_err(|n| match n {}).boxed());
    // Tells the layer this answer is the proxy's own, not the payment API's: it keeps its
    // code in `x-klarna-stepup` and the record says `upstream_error`.
    res.extensions_mut().insert(r.clone());
    res
}

/// Starts the proxy on an ephemeral port; returns where it listens.
pub async fn start(step_up: StepUp, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let addr = listener.local_addr().expect("proxy address");
    serve(step_up, listener, upstream);
    addr
}

/// Serves the proxy on `listener` until the returned task is aborted.
pub fn serve(step_up: StepUp, listener: TcpListener, upstream: SocketAddr) -> JoinHandle<()> {
    serve_until(
        step_up,
        listener,
        upstream,
        Timeouts::default(),
        std::future::pending(),
    )
}

/// Serves the proxy on `listener` until `shutdown` completes; then stops accepting and lets
/// in-flight requests finish (at most `timeouts.grace`). The task ends when all are done.
pub fn serve_until(
    step_up: StepUp,
    listener: TcpListener,
    upstream: SocketAddr,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build::<_, StepUpBody<Incoming>>(connector);
    let forward = tower::service_fn(move |mut req: Request<StepUpBody<Incoming>>| {
        let client = client.clone();
        async move {
            strip_hop_by_hop(req.headers_mut());
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{upstream}{path}")
                .parse()
                .expect("valid upstream URI");
            let res = match tokio::time::timeout(timeouts.read, client.request(req)).await {
                Ok(Ok(res)) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, body.boxed())
                }
                Ok(Err(e)) => refused(&upstream_refusal(&e)),
                Err(_) => refused(&Refusal::upstream_timeout()),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(KlarnaStepUpLayer::new(step_up))
        .service(forward);
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let server = auto::Builder::new(TokioExecutor::new());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = shutdown.as_mut() => break,
            };
            let svc = TowerToHyperService::new(svc.clone());
            let conn = server.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(timeouts.grace, graceful.shutdown()).await;
    })
}
