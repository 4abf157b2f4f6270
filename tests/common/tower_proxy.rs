//! The tower adapter as a reverse proxy on 127.0.0.1: `KlarnaStepUpLayer` in front of a
//! hyper-util client to the upstream, served by hyper (the shape of examples/hyper_proxy.rs).
#![allow(dead_code)]

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::StepUp;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

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
    let client = Client::builder(TokioExecutor::new()).build_http::<StepUpBody<Incoming>>();
    let svc = ServiceBuilder::new()
        .layer(KlarnaStepUpLayer::new(step_up))
        .map_request(move |mut req: Request<StepUpBody<Incoming>>| {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{upstream}{path}")
                .parse()
                .expect("valid upstream URI");
            req
        })
        .service(client);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
