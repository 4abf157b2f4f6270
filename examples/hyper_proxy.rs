//! A small hyper reverse proxy with Klarna step-up in front of a remote payment API.
//!
//! ```sh
//! cargo run --example hyper_proxy -- 127.0.0.1:8080 127.0.0.1:9000   # listen, upstream
//! ```
//!
//! Everything that is not a Klarna payment streams through untouched.

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use klarna_stepup::tower::{KlarnaStepUpLayer, StepUpBody};
use klarna_stepup::StepUp;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:9000".into());

    let step_up = StepUp::from_toml("")?;
    let client = Client::builder(TokioExecutor::new()).build_http::<StepUpBody<Incoming>>();
    let proxy = ServiceBuilder::new()
        // Step-up sees the partner's request first and the payment API's answer last.
        .layer(KlarnaStepUpLayer::new(step_up))
        // Then the request is pointed at the upstream.
        .map_request(move |mut req: Request<StepUpBody<Incoming>>| {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            *req.uri_mut() = format!("http://{upstream}{path}")
                .parse()
                .expect("valid upstream URI");
            req
        })
        .service(client);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("proxy on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let svc = TowerToHyperService::new(proxy.clone());
        tokio::spawn(async move {
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
}
