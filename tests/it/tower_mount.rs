//! The tower layer under axum's `Router::nest("/api", ..)`, over loopback: inside the nested
//! router it needs nothing; around the outer router it is told the prefix with
//! `mounted_at("/api")` (and without it, sees no candidate route).

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use common::fixtures;
use common::raw_http::{raw_request, RawResponse, ReqBody};
use klarna_stepup::tower::KlarnaStepUpLayer;
use klarna_stepup::StepUp;
use serde_json::Value;
use tower::Layer;

const LIMIT: Duration = Duration::from_secs(10);

/// The payment API: answers Klarna's `STEP_UP_REQUIRED` to a Klarna payment that carries a
/// `step_up_config`, and echoes anything else.
async fn create_payment(Json(payment): Json<Value>) -> Json<Value> {
    let f = fixtures::by_name("step_up_required");
    let answer = f.upstream.expect("an upstream answer").body;
    if payment.get("step_up_config").is_some() {
        return Json(serde_json::from_slice(&answer).unwrap());
    }
    Json(payment)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

async fn post_json(addr: SocketAddr, path: &str, body: &[u8]) -> RawResponse {
    raw_request(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        ReqBody::Length(body),
        LIMIT,
    )
    .await
    .unwrap()
}

fn payments() -> Router {
    Router::new().route("/payments", post(create_payment))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_nest_inside_and_around_with_mounted_at() {
    let step_up = StepUp::from_toml("").unwrap();
    let f = fixtures::by_name("step_up_required");
    let card = fixtures::by_name("card_payment");

    let inside = Router::new().nest(
        "/api",
        payments().layer(KlarnaStepUpLayer::new(step_up.clone())),
    );
    let around = Router::new()
        .nest("/api", payments())
        .layer(KlarnaStepUpLayer::new(step_up.clone()).mounted_at("/api"));
    for (what, app) in [("inside", inside), ("around, mounted_at", around)] {
        let addr = serve(app).await;
        let res = post_json(addr, "/api/payments", &f.body).await;
        assert_eq!(res.status, 200, "{what}");
        assert_eq!(res.header("x-klarna-stepup"), Some("rewritten"), "{what}");
        assert_eq!(
            String::from_utf8_lossy(&res.body),
            String::from_utf8_lossy(&f.expect.body),
            "{what}"
        );
        // A card payment: forwarded untouched, echoed back unmarked.
        let res = post_json(addr, "/api/payments", &card.body).await;
        assert_eq!(res.status, 200, "{what}");
        assert_eq!(res.header("x-klarna-stepup"), None, "{what}");
        // An ambiguous spelling of the route under the prefix never reaches the payment API:
        // refused by the layer around the router; inside, axum routes it nowhere (a layer
        // on a nested router sees only the requests of its routes).
        let res = post_json(addr, "/api/payments/", &f.body).await;
        let want = match what {
            "inside" => (404, None),
            _ => (400, Some("non_canonical_path")),
        };
        assert_eq!((res.status, res.header("x-klarna-stepup")), want, "{what}");
    }

    // Around the outer router without the prefix: no candidate route, Klarna's answer
    // unrewritten (the reason for `mounted_at`).
    let unmounted = Router::new()
        .nest("/api", payments())
        .layer(KlarnaStepUpLayer::new(step_up));
    let addr = serve(unmounted).await;
    let res = post_json(addr, "/api/payments", &f.body).await;
    assert_eq!(res.header("x-klarna-stepup"), None);
    let echoed: Value = serde_json::from_slice(&res.body).unwrap();
    assert!(
        echoed.get("step_up_config").is_none(),
        "the payment API got the partner's body without step_up_config"
    );
}

/// Around the whole router with `mounted_at`, step-up's own paths are read under the prefix
/// too, and the webhook it relays goes to the payment API's relay path under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_under_the_mount_point_are_relayed_under_it() {
    use common::return_webhook::{signature, step_up, COMPLETED};
    let relayed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let seen = relayed.clone();
    let api = Router::new().route(
        "/webhooks/klarna",
        post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(body.to_vec());
                "ok"
            }
        }),
    );
    // The layer around the router as a whole (not `Router::layer`, which wraps each route's
    // endpoint): the webhook it relays must be routed by the router.
    let app = Router::new().nest("/api", api);
    let app = KlarnaStepUpLayer::new(step_up(""))
        .mounted_at("/api")
        .layer(app);
    // Served as an outer router's fallback service, which takes every request.
    let addr = serve(Router::new().fallback_service(app)).await;
    let sig = signature(COMPLETED.as_bytes());
    let headers = [
        ("content-type", "application/json"),
        ("klarna-signing-key-id", "a"),
        ("klarna-signature", sig.as_str()),
    ];
    let res = raw_request(
        addr,
        "POST",
        "/api/klarna/webhooks",
        &headers,
        ReqBody::Length(COMPLETED.as_bytes()),
        LIMIT,
    )
    .await
    .unwrap();
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("x-klarna-stepup"), Some("relayed"));
    assert_eq!(
        *relayed.lock().unwrap(),
        vec![COMPLETED.as_bytes().to_vec()]
    );

    // The relay path itself, from outside: refused, not relayed.
    let res = post_json(addr, "/api/webhooks/klarna", COMPLETED.as_bytes()).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.header("x-klarna-stepup"), Some("not_found"));
    assert_eq!(relayed.lock().unwrap().len(), 1);
}
