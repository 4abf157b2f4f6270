//! A recording upstream on 127.0.0.1: answers every request with a scripted answer and keeps
//! what it received, so tests can check the exact bytes that reached the "payment API".

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The scripted answer.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Option<Duration>,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub answer: Arc<Mutex<Answer>>,
}

impl Answer {
    /// The upstream answer of fixture `f` (a bare 200 when it has none).
    pub fn of(f: &super::fixtures::Fixture) -> Answer {
        match &f.upstream {
            Some(u) => Answer {
                status: u.status,
                headers: u.headers.clone(),
                body: u.body.clone(),
                delay: None,
            },
            None => Answer {
                status: 200,
                ..Answer::default()
            },
        }
    }
}

impl Upstream {
    pub fn set_answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

/// Starts the upstream on an ephemeral loopback port, in the current tokio runtime.
pub async fn start() -> Upstream {
    start_on("127.0.0.1:0".parse().unwrap()).await
}

/// Starts the upstream on `addr`.
pub async fn start_on(addr: SocketAddr) -> Upstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        received: Arc::default(),
        answer: Arc::new(Mutex::new(Answer {
            status: 200,
            ..Answer::default()
        })),
    };
    let state = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        state.received.lock().unwrap().push(Received {
                            method: parts.method.to_string(),
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            body: body.to_vec(),
                        });
                        let answer = state.answer.lock().unwrap().clone();
                        if let Some(d) = answer.delay {
                            tokio::time::sleep(d).await;
                        }
                        let mut res = Response::builder().status(answer.status);
                        for (k, v) in &answer.headers {
                            res = res.header(k, v);
                        }
                        Ok::<_, Infallible>(res.body(Full::new(Bytes::from(answer.body))).unwrap())
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    up
}

/// A "payment API" on an ephemeral loopback port that answers whatever it is sent with
/// `answer` (raw bytes, e.g. something that is not HTTP) and closes; in the current tokio
/// runtime, for at most a minute.
pub async fn start_raw(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokio::time::timeout(Duration::from_secs(60), async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    }));
    addr
}
