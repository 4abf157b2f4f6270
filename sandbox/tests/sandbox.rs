//! Black-box tests of the Klarna sandbox and the demo payment API over loopback sockets.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use klarna_stepup_sandbox::{
    sign_webhook, start_demo_backends, DemoPorts, KlarnaSandbox, KlarnaSandboxConfig, PaymentApi,
    PaymentApiConfig,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

const KEY: &str = "test-api-key";
const ACCOUNT: &str = "acct-1";

// ----- helpers ------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON answer")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn location(&self) -> String {
        self.headers
            .get("location")
            .expect("Location")
            .to_str()
            .expect("ASCII Location")
            .to_owned()
    }
}

async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("no timeout")
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(url: &str) -> Answer {
    send(Method::GET, url, &[], Bytes::new()).await
}

/// A started sandbox and its base URL.
struct Sandbox {
    handle: KlarnaSandbox,
    base: String,
}

impl Sandbox {
    /// A sandbox that sends webhooks without delay.
    async fn start(webhook_url: Option<String>) -> Self {
        Self::start_with(webhook_url, |_| ()).await
    }

    async fn start_with(
        webhook_url: Option<String>,
        adjust: impl FnOnce(&mut KlarnaSandboxConfig),
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = KlarnaSandboxConfig::new(KEY, base.clone());
        config.partner_account_id = Some(ACCOUNT.to_owned());
        config.webhook_url = webhook_url;
        config.webhook_backoff = Duration::from_millis(20);
        config.webhook_timeout = Duration::from_secs(2);
        config.webhook_delay = Duration::ZERO;
        adjust(&mut config);
        let handle = KlarnaSandbox::new(config);
        tokio::spawn(handle.clone().serve(listener));
        Sandbox { handle, base }
    }

    fn authorize_url(&self) -> String {
        format!("{}/v2/accounts/{ACCOUNT}/payment/authorize", self.base)
    }

    fn request_url(&self, id: &str) -> String {
        format!("{}/v2/accounts/{ACCOUNT}/payment/requests/{id}", self.base)
    }

    async fn authorize(&self, body: &Value, extra: &[(&str, &str)]) -> Answer {
        let auth = format!("Basic {KEY}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        send(
            Method::POST,
            &self.authorize_url(),
            &headers,
            body.to_string(),
        )
        .await
    }

    async fn read(&self, id: &str) -> Answer {
        let auth = format!("Basic {KEY}");
        send(
            Method::GET,
            &self.request_url(id),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
    }

    async fn cancel(&self, id: &str) -> Answer {
        let auth = format!("Basic {KEY}");
        send(
            Method::DELETE,
            &self.request_url(id),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
    }

    /// Authorizes with a step-up config and returns the `payment_request` object.
    async fn step_up(&self, amount: u64, return_url: &str, expiry: Option<&str>) -> Value {
        let mut body = authorize_body(amount, "order-1");
        body["step_up_config"] = json!({
            "payment_request_reference": "pr-ref/1",
            "customer_interaction_config": { "method": "HANDOVER", "return_url": return_url },
        });
        if let Some(duration) = expiry {
            body["step_up_config"]["customer_interaction_config"]["interaction_expiry"] =
                json!({ "duration": duration });
        }
        let answer = self.authorize(&body, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let answer = answer.json();
        assert_eq!(
            answer["payment_transaction_response"]["result"],
            "STEP_UP_REQUIRED"
        );
        answer["payment_request"].clone()
    }
}

fn authorize_body(amount: u64, reference: &str) -> Value {
    json!({
        "currency": "USD",
        "supplementary_purchase_data": { "purchase_reference": reference, "line_items": [] },
        "request_payment_transaction": { "amount": amount, "payment_transaction_reference": reference },
    })
}

fn page_url(payment_request: &Value) -> String {
    payment_request["state_context"]["customer_interaction"]["payment_request_url"]
        .as_str()
        .expect("payment_request_url")
        .to_owned()
}

async fn press(page_url: &str, action: &str) -> Answer {
    send(
        Method::POST,
        page_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("action={action}&phone=%2B15550100"),
    )
    .await
}

/// A webhook receiver on loopback that answers `fail_first` deliveries with 500.
struct Receiver {
    url: String,
    deliveries: mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
}

#[derive(Clone)]
struct ReceiverState {
    sender: mpsc::UnboundedSender<(HeaderMap, Bytes)>,
    fail_first: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start(fail_first: u32) -> Self {
        async fn receive(
            State(state): State<ReceiverState>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let _ = state.sender.send((headers, body));
            let mut fail = state.fail_first.lock().await;
            if *fail > 0 {
                *fail -= 1;
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
            StatusCode::OK
        }
        let (sender, deliveries) = mpsc::unbounded_channel();
        let state = ReceiverState {
            sender,
            fail_first: Arc::new(Mutex::new(fail_first)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, deliveries }
    }

    /// The next delivery; panics after 5 s.
    async fn next(&mut self) -> (HeaderMap, Bytes, Value) {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(5), self.deliveries.recv())
            .await
            .expect("a webhook in time")
            .expect("receiver open");
        let json = serde_json::from_slice(&body).expect("JSON webhook");
        (headers, body, json)
    }

    /// Deliveries until one of `event_type` arrives (among the next 20); returns that one.
    async fn until(&mut self, event_type: &str) -> (HeaderMap, Bytes, Value) {
        for _ in 0..20 {
            let delivery = self.next().await;
            if delivery.2["metadata"]["event_type"] == event_type {
                return delivery;
            }
        }
        panic!("no {event_type} among the next 20 webhooks");
    }

    /// Whether a delivery of `event_type` is already here, without waiting.
    fn has_arrived(&mut self, event_type: &str) -> bool {
        while let Ok((_, body)) = self.deliveries.try_recv() {
            let json: Value = serde_json::from_slice(&body).expect("JSON webhook");
            if json["metadata"]["event_type"] == event_type {
                return true;
            }
        }
        false
    }
}

fn assert_validation_error(answer: &Answer, parameter: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error_type"], "INPUT_ERROR");
    assert_eq!(body["error_code"], "VALIDATION_ERROR");
    assert_eq!(body["error_id"].as_str().map(str::len), Some(36));
    let parameters: Vec<&str> = body["validation_errors"]
        .as_array()
        .expect("validation_errors")
        .iter()
        .map(|e| e["parameter"].as_str().expect("parameter"))
        .collect();
    assert!(
        parameters.contains(&parameter),
        "{parameters:?} lacks {parameter}"
    );
}

fn assert_rfc3339_nanos(text: &str) {
    // e.g. 2025-02-26T17:25:34.534721775Z
    assert_eq!(text.len(), 30, "{text}");
    assert_eq!(&text[10..11], "T");
    assert_eq!(&text[19..20], ".");
    assert!(text.ends_with('Z'));
}

// ----- errors -------------------------------------------------------------------------

#[tokio::test]
async fn refuses_bad_credentials_and_foreign_accounts() {
    let sandbox = Sandbox::start(None).await;
    let body = authorize_body(100, "order-1").to_string();
    for auth in [None, Some("Basic wrong"), Some(KEY)] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let answer = send(
            Method::POST,
            &sandbox.authorize_url(),
            &headers,
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer.json()["error_type"], "ACCESS_ERROR");
    }
    let other = format!(
        "{}/v2/accounts/someone-else/payment/authorize",
        sandbox.base
    );
    let auth = format!("Basic {KEY}");
    let answer = send(Method::POST, &other, &[("authorization", &auth)], body).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.json()["error_type"], "ACCESS_ERROR");
}

#[tokio::test]
async fn answers_bad_input_with_klarna_errors() {
    let sandbox = Sandbox::start(None).await;

    let answer = send(
        Method::POST,
        &sandbox.authorize_url(),
        &[("authorization", &format!("Basic {KEY}"))],
        "{not json",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error_type"], "INPUT_ERROR");

    let body = json!({
        "currency": "usd",
        "request_payment_transaction": { "amount": 0, "payment_transaction_reference": "" },
    });
    let answer = sandbox.authorize(&body, &[]).await;
    assert_validation_error(&answer, "currency");
    assert_validation_error(&answer, "request_payment_transaction.amount");
    assert_validation_error(
        &answer,
        "request_payment_transaction.payment_transaction_reference",
    );

    for amount in [json!(-5), json!(118.5), json!("11800")] {
        let mut body = authorize_body(1, "order-1");
        body["request_payment_transaction"]["amount"] = amount;
        assert_validation_error(
            &sandbox.authorize(&body, &[]).await,
            "request_payment_transaction.amount",
        );
    }

    let mut body = authorize_body(100, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": {
            "method": "HANDOVER",
            "return_url": "/relative",
            "interaction_expiry": { "duration": "PT5M" },
        },
    });
    let answer = sandbox.authorize(&body, &[]).await;
    assert_validation_error(
        &answer,
        "step_up_config.customer_interaction_config.return_url",
    );
    assert_validation_error(
        &answer,
        "step_up_config.customer_interaction_config.interaction_expiry.duration",
    );

    let answer = sandbox
        .authorize(
            &authorize_body(100, "order-1"),
            &[("klarna-network-session-token", "nope")],
        )
        .await;
    assert_validation_error(&answer, "Klarna-Network-Session-Token");
}

// ----- idempotency and triggers -------------------------------------------------------

#[tokio::test]
async fn same_idempotency_key_gives_the_same_bytes() {
    let sandbox = Sandbox::start(None).await;
    let mut body = authorize_body(11800, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": { "method": "HANDOVER", "return_url": "https://shop.test/r" },
    });
    let key = [("klarna-idempotency-key", "key-1")];
    let first = sandbox.authorize(&body, &key).await;
    let second = sandbox.authorize(&body, &key).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, second.body);

    let fresh = sandbox
        .authorize(&body, &[("klarna-idempotency-key", "key-2")])
        .await;
    assert_ne!(first.body, fresh.body);

    let changed = sandbox.authorize(&authorize_body(1, "order-1"), &key).await;
    assert_validation_error(&changed, "Klarna-Idempotency-Key");
}

#[tokio::test]
async fn test_triggers_and_missing_step_up() {
    let sandbox = Sandbox::start(None).await;
    let answer = sandbox
        .authorize(&authorize_body(500, "decline-me"), &[])
        .await
        .json();
    assert_eq!(answer["payment_transaction_response"]["result"], "DECLINED");
    assert!(answer["payment_transaction_response"]["result_reason"].is_string());

    let answer = sandbox
        .authorize(&authorize_body(500, "approve-me"), &[])
        .await
        .json();
    let transaction = &answer["payment_transaction_response"]["payment_transaction"];
    assert_eq!(answer["payment_transaction_response"]["result"], "APPROVED");
    assert!(transaction["payment_transaction_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("krn:payment:eu1:transaction:")));
    assert_eq!(transaction["payment_transaction_reference"], "approve-me");
    assert_eq!(transaction["amount"], 500);
    assert_eq!(transaction["currency"], "USD");
    assert_eq!(transaction["payment_funding"], json!({}));
    assert_eq!(transaction["payment_pricing"], json!({}));
    assert_rfc3339_nanos(transaction["expires_at"].as_str().expect("expires_at"));

    let answer = sandbox
        .authorize(&authorize_body(500, "order-1"), &[])
        .await
        .json();
    assert_eq!(answer["payment_transaction_response"]["result"], "DECLINED");
}

// ----- the state machine, webhooks and the return URL -----------------------------------

#[tokio::test]
async fn approve_flow_fills_the_return_url_signs_webhooks_and_approves_the_final_call() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let return_url = "https://shop.test/back?id={klarna.payment_request.id}&state={klarna.payment_request.state}\
        &ref={klarna.payment_request.payment_request_reference}\
        &t={klarna.payment_request.klarna_network_session_token}\
        &p={klarna.payment_request.payment_token}&i={klarna.payment_request.interoperability_token}";
    let request = sandbox.step_up(11800, return_url, None).await;

    let id = request["payment_request_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert!(id.starts_with("krn:payment:eu1:request:"));
    assert_eq!(request["payment_request_reference"], "pr-ref/1");
    assert_eq!(request["amount"], 11800);
    assert_eq!(request["currency"], "USD");
    assert_eq!(request["state"], "SUBMITTED");
    assert_rfc3339_nanos(request["expires_at"].as_str().expect("expires_at"));
    let interaction = &request["state_context"]["customer_interaction"];
    assert_eq!(interaction["method"], "HANDOVER");
    assert_eq!(interaction["payment_request_id"], id.as_str());
    let url = page_url(&request);
    assert!(url.starts_with(&format!("{}/pay/", sandbox.base)));
    let data: Value =
        serde_json::from_str(request["payment_request_data"].as_str().expect("string"))
            .expect("payment_request_data is serialized JSON");
    assert_eq!(
        data["content_type"],
        "application/vnd.klarna.payment-request-data.v2+json"
    );
    assert_eq!(
        data["content"]["payment_request"]["payment_request_id"],
        id.as_str()
    );

    // Every webhook is signed over its exact bytes.
    let (headers, body, submitted) = receiver
        .until("payment.request.state-change.submitted")
        .await;
    let signature = headers["klarna-signature"].to_str().expect("ASCII");
    assert_eq!(
        signature,
        sign_webhook(b"klarna-sandbox-signing-key", &body)
    );
    assert_eq!(signature.len(), 64);
    assert_eq!(headers["klarna-signing-key-id"], "sandbox-key-1");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(submitted["metadata"]["event_version"], "v2");
    assert_eq!(submitted["metadata"]["live"], false);
    assert_eq!(submitted["metadata"]["subject_account_id"], ACCOUNT);
    assert_eq!(submitted["payload"]["payment_request_id"], id.as_str());
    assert_eq!(submitted["payload"]["state"], "SUBMITTED");

    // Opening the page: IN_PROGRESS.
    let page = get(&url).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    for needle in [
        "118.00 USD",
        "pr-ref/1",
        r#"id="approve""#,
        r#"id="decline""#,
        r#"id="phone""#,
    ] {
        assert!(html.contains(needle), "page lacks {needle}");
    }
    assert_eq!(sandbox.read(&id).await.json()["state"], "IN_PROGRESS");
    receiver
        .until("payment.request.state-change.in-progress")
        .await;

    // Approve: the 303 at once, the completed webhook after it.
    let answer = press(&url, "approve").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    receiver
        .until("payment.request.state-change.completed")
        .await;
    let read = sandbox.read(&id).await.json();
    assert_eq!(read["state"], "COMPLETED");
    let token = read["state_context"]["klarna_network_session_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let enc_id = id.replace(':', "%3A");
    assert_eq!(
        answer.location(),
        format!("https://shop.test/back?id={enc_id}&state=COMPLETED&ref=pr-ref%2F1&t={token}&p={token}&i={token}")
    );

    // The final call: amount must match (legacy header name accepted), token single use.
    let mismatch = sandbox
        .authorize(
            &authorize_body(11801, "order-1"),
            &[("klarna-payment-token", &token)],
        )
        .await;
    assert_validation_error(&mismatch, "request_payment_transaction.amount");
    let approved = sandbox
        .authorize(
            &authorize_body(11800, "order-1"),
            &[("klarna-network-session-token", &token)],
        )
        .await
        .json();
    assert_eq!(
        approved["payment_transaction_response"]["result"],
        "APPROVED"
    );
    assert_eq!(
        approved["payment_transaction_response"]["payment_transaction"]
            ["payment_transaction_reference"],
        "order-1"
    );
    // The same final call again (a retry) gets the same answer, not a second transaction;
    // another amount is still refused.
    let again = sandbox
        .authorize(
            &authorize_body(11800, "order-1"),
            &[("klarna-network-session-token", &token)],
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.json(), approved);
    let other = sandbox
        .authorize(
            &authorize_body(11801, "order-1"),
            &[("klarna-network-session-token", &token)],
        )
        .await;
    assert_validation_error(&other, "request_payment_transaction.amount");

    // A finished request cannot be approved twice.
    assert_eq!(press(&url, "approve").await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn completed_webhook_carries_the_token() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox
        .step_up(
            100,
            "http://127.0.0.1:1/r?t={klarna.payment_request.klarna_network_session_token}",
            None,
        )
        .await;
    let answer = press(&page_url(&request), "approve").await;
    let (_, _, completed) = receiver
        .until("payment.request.state-change.completed")
        .await;
    assert_eq!(completed["payload"]["state"], "COMPLETED");
    let token = completed["payload"]["klarna_network_session_token"]
        .as_str()
        .expect("token");
    assert!(answer.location().ends_with(token));
    // Beside it, under its older name, as Klarna sends it.
    assert_eq!(completed["payload"]["payment_token"], token);
}

#[tokio::test]
async fn the_purchase_journey_offers_the_app_return_when_one_was_given() {
    let sandbox = Sandbox::start(None).await;
    let mut body = authorize_body(100, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": {
            "method": "HANDOVER",
            "return_url": "https://shop.test/r?s={klarna.payment_request.state}",
            "app_return_url": "shopapp://klarna/back?s={klarna.payment_request.state}&id={klarna.payment_request.id}",
        },
    });
    let request = sandbox.authorize(&body, &[]).await.json()["payment_request"].clone();
    let url = page_url(&request);
    let html = get(&url).await.text();
    assert!(html.contains(r#"id="approve-app""#), "{html}");
    assert!(html.contains(r#"id="decline-app""#), "{html}");
    let answer = press(&url, "approve_app").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.text());
    let id = request["payment_request_id"].as_str().expect("id");
    assert_eq!(
        answer.location(),
        format!(
            "shopapp://klarna/back?s=COMPLETED&id={}",
            id.replace(':', "%3A")
        )
    );

    // Without an app_return_url there is no app to offer, nor to return to.
    let request = sandbox.step_up(100, "https://shop.test/r", None).await;
    let url = page_url(&request);
    let html = get(&url).await.text();
    assert!(!html.contains("approve-app"), "{html}");
    assert_eq!(
        press(&url, "approve_app").await.status,
        StatusCode::BAD_REQUEST
    );
    // The web return still works.
    assert_eq!(press(&url, "approve").await.status, StatusCode::SEE_OTHER);

    // A script is no app.
    body["step_up_config"]["customer_interaction_config"]["app_return_url"] =
        json!("javascript:alert(1)");
    let refused = sandbox.authorize(&body, &[]).await;
    assert_validation_error(
        &refused,
        "step_up_config.customer_interaction_config.app_return_url",
    );
}

#[tokio::test]
async fn a_completed_request_can_be_canceled_until_it_is_finalized() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;

    // Completed, not finalized: cancelable; its token is then refused.
    let request = sandbox.step_up(100, "https://shop.test/r", None).await;
    let id = request["payment_request_id"].as_str().expect("id");
    press(&page_url(&request), "approve").await;
    let token = sandbox.read(id).await.json()["state_context"]["klarna_network_session_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let canceled = sandbox.cancel(id).await;
    assert_eq!(canceled.status, StatusCode::OK, "{}", canceled.text());
    assert_eq!(canceled.json()["state"], "CANCELED");
    receiver
        .until("payment.request.state-change.canceled")
        .await;
    let refused = sandbox
        .authorize(
            &authorize_body(100, "order-1"),
            &[("klarna-network-session-token", &token)],
        )
        .await;
    assert_validation_error(&refused, "Klarna-Network-Session-Token");

    // Finalized with its token: no longer cancelable.
    let request = sandbox.step_up(100, "https://shop.test/r", None).await;
    let id = request["payment_request_id"].as_str().expect("id");
    press(&page_url(&request), "approve").await;
    let token = sandbox.read(id).await.json()["state_context"]["klarna_network_session_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let approved = sandbox
        .authorize(
            &authorize_body(100, "order-1"),
            &[("klarna-network-session-token", &token)],
        )
        .await;
    assert_eq!(
        approved.json()["payment_transaction_response"]["result"],
        "APPROVED"
    );
    let late = sandbox.cancel(id).await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(late.json()["error_code"], "INVALID_STATE");
    assert!(late.text().contains("finalized"), "{}", late.text());
}

#[tokio::test]
async fn decline_flow() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox
        .step_up(100, "https://shop.test/r?s={klarna.payment_request.state}&t={klarna.payment_request.klarna_network_session_token}", None)
        .await;
    let url = page_url(&request);
    let answer = press(&url, "decline").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "https://shop.test/r?s=DECLINED&t=");
    receiver
        .until("payment.request.state-change.declined")
        .await;
    let id = request["payment_request_id"].as_str().expect("id");
    assert_eq!(sandbox.read(id).await.json()["state"], "DECLINED");
    assert_eq!(get(&url).await.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn cancel_only_while_open() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox.step_up(100, "https://shop.test/r", None).await;
    let id = request["payment_request_id"].as_str().expect("id");

    let canceled = sandbox.cancel(id).await;
    assert_eq!(canceled.status, StatusCode::OK);
    assert_eq!(canceled.json()["state"], "CANCELED");
    receiver
        .until("payment.request.state-change.canceled")
        .await;

    let again = sandbox.cancel(id).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json()["error_type"], "RESOURCE_ERROR");
    assert_eq!(get(&page_url(&request)).await.status, StatusCode::GONE);

    let unknown = sandbox
        .read("krn:payment:eu1:request:00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn requests_expire_after_their_interaction_expiry() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox
        .step_up(100, "https://shop.test/r", Some("PT15M"))
        .await;
    let id = request["payment_request_id"].as_str().expect("id");
    let url = page_url(&request);

    sandbox.handle.advance_clock(Duration::from_secs(14 * 60));
    assert_eq!(get(&url).await.status, StatusCode::OK);
    sandbox.handle.advance_clock(Duration::from_secs(2 * 60));
    let page = get(&url).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.text().contains("expired"));
    assert_eq!(sandbox.read(id).await.json()["state"], "EXPIRED");
    receiver.until("payment.request.state-change.expired").await;
    assert_eq!(press(&url, "approve").await.status, StatusCode::GONE);
}

#[tokio::test]
async fn refused_webhooks_are_retried() {
    let mut receiver = Receiver::start(1).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    sandbox.step_up(100, "https://shop.test/r", None).await;
    let (_, first, _) = receiver.next().await;
    let (headers, second, _) = receiver.next().await;
    assert_eq!(first, second);
    assert_eq!(
        headers["klarna-signature"].to_str().expect("ASCII"),
        sign_webhook(b"klarna-sandbox-signing-key", &second)
    );
}

// ----- the demo payment API -----------------------------------------------------------

/// A sandbox whose webhooks go to a payment API that verifies their signatures.
async fn start_verifying_pair() -> (Sandbox, String) {
    let api_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api_base = format!("http://{}", api_listener.local_addr().expect("addr"));
    let sandbox = Sandbox::start(Some(format!("{api_base}/webhooks/klarna"))).await;
    let mut config = PaymentApiConfig::new(sandbox.base.clone(), KEY, ACCOUNT);
    config.webhook_signing_key = Some(sandbox.handle.config().signing_key.clone());
    tokio::spawn(PaymentApi::new(config).serve(api_listener));
    (sandbox, api_base)
}

fn partner_payment(reference: &str) -> Value {
    json!({
        "payment_method": "klarna",
        "amount": 11800,
        "currency": "USD",
        "reference": reference,
        "line_items": [{ "name": "Espresso machine", "quantity": 1, "total_amount": 11800 }],
        // What the step-up proxy injects.
        "step_up_config": {
            "payment_request_reference": reference,
            "customer_interaction_config": {
                "method": "HANDOVER",
                "return_url": "https://shop.test/confirmation?state={klarna.payment_request.state}",
            },
        },
    })
}

async fn create_payment(api_base: &str, body: &Value) -> Answer {
    send(
        Method::POST,
        &format!("{api_base}/payments"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

/// The order's state once final: the webhook follows the customer's return, so the order
/// settles shortly after the redirect (within 5 s).
async fn settled_state(api_base: &str, reference: &str) -> Value {
    for _ in 0..50 {
        let state = get(&format!("{api_base}/payments/{reference}"))
            .await
            .json();
        if state["state"] != "PENDING_STEP_UP" {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{reference} did not settle");
}

#[tokio::test]
async fn full_flow_through_the_payment_api() {
    let (_sandbox, api) = start_verifying_pair().await;
    let answer = create_payment(&api, &partner_payment("order-42")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let klarna = answer.json();
    assert_eq!(
        klarna["payment_transaction_response"]["result"],
        "STEP_UP_REQUIRED"
    );
    let state = get(&format!("{api}/payments/order-42")).await.json();
    assert_eq!(
        state,
        json!({ "reference": "order-42", "state": "PENDING_STEP_UP" })
    );

    let url = page_url(&klarna["payment_request"]);
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let back = press(&url, "approve").await;
    assert_eq!(
        back.location(),
        "https://shop.test/confirmation?state=COMPLETED"
    );

    // The completed webhook follows the redirect; the API answers it only after the final
    // call was stored.
    let state = settled_state(&api, "order-42").await;
    assert_eq!(state["state"], "AUTHORIZED", "{state}");
    assert!(state["payment_transaction_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("krn:payment:eu1:transaction:")));

    // A settled reference is not paid twice.
    assert_eq!(
        create_payment(&api, &partner_payment("order-42"))
            .await
            .status,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn payment_api_refuses_unsigned_webhooks() {
    let (_sandbox, api) = start_verifying_pair().await;
    let body = json!({ "metadata": { "event_type": "payment.request.state-change.declined" }, "payload": {} });
    let answer = send(
        Method::POST,
        &format!("{api}/webhooks/klarna"),
        &[("klarna-signature", "00")],
        body.to_string(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

/// The layer's return notification reaches the demo payment API only signed, recent, and
/// for an order it knows.
#[tokio::test]
async fn payment_api_takes_only_signed_return_notifications() {
    use hmac::{Hmac, Mac};
    let demo = start_demo_backends(DemoPorts::default())
        .await
        .expect("demo");
    let api = format!("http://{}", demo.payment_api_addr);
    let key = klarna_stepup_sandbox::demo_secret(klarna_stepup_sandbox::DEMO_RETURN_KEY_ENV)
        .expect("demo return key");
    let body = json!({ "payment_request_reference": "nobody", "state": "COMPLETED" }).to_string();
    let sign = |key: &[u8], t: u64| {
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        m.update(format!("{t}.{body}").as_bytes());
        format!("t={t},v1={}", hex::encode(m.finalize().into_bytes()))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = format!("{api}/payments/klarna-return");
    for (signature, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(sign(b"another key", now)), StatusCode::UNAUTHORIZED),
        (
            Some(sign(key.as_bytes(), now - 3600)),
            StatusCode::UNAUTHORIZED,
        ),
        (Some(sign(key.as_bytes(), now)), StatusCode::NOT_FOUND),
    ] {
        let headers: Vec<(&str, &str)> = signature
            .as_deref()
            .map(|s| vec![("x-klarna-stepup-signature", s)])
            .unwrap_or_default();
        let answer = send(Method::POST, &url, &headers, body.clone()).await;
        assert_eq!(answer.status, status, "{signature:?}: {}", answer.text());
    }
    demo.klarna_task.abort();
    demo.payment_api_task.abort();
}

/// The shop's Pay button (its step-up choice).
async fn shop_checkout(api: &str) -> Answer {
    send(
        Method::POST,
        &format!("{api}/shop/checkout"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "scenario=step-up",
    )
    .await
}

#[tokio::test]
async fn demo_backends_record_a_decline_and_serve_the_shop() {
    let demo = start_demo_backends(DemoPorts::default())
        .await
        .expect("demo");
    let api = format!("http://{}", demo.payment_api_addr);
    let klarna = create_payment(&api, &partner_payment("order-7"))
        .await
        .json();
    let url = page_url(&klarna["payment_request"]);
    assert_eq!(press(&url, "decline").await.status, StatusCode::SEE_OTHER);
    assert_eq!(settled_state(&api, "order-7").await["state"], "DECLINED");

    let shop = get(&format!("{api}/shop")).await;
    assert_eq!(shop.status, StatusCode::OK);
    assert!(shop.text().contains(r#"id="pay""#));
    assert!(shop.text().contains(r#"action="/shop/checkout""#));
    // Not put behind a proxy: the shop cannot take payments, and says so.
    let checkout = shop_checkout(&api).await;
    assert_eq!(checkout.status, StatusCode::BAD_GATEWAY);
    assert!(checkout.text().contains("Payment not started"));
    let confirmation = get(&format!("{api}/shop/confirmation?reference=x")).await;
    assert!(confirmation.text().contains(r#"id="state""#));
    demo.klarna_task.abort();
    demo.payment_api_task.abort();
}

/// Without the step-up layer (the shop sends its payment straight to the payment API), the
/// timeline shows why Klarna declines: nothing added the `step_up_config`.
#[tokio::test]
async fn the_timeline_shows_a_payment_that_skipped_the_layer() {
    let demo = start_demo_backends(DemoPorts::default())
        .await
        .expect("demo");
    let api = format!("http://{}", demo.payment_api_addr);
    demo.payment_api.set_public_base_url(Some(api.clone()));
    let checkout = shop_checkout(&api).await;
    // Klarna's own answer reached the shop, which does not know it: no payment.
    assert_eq!(checkout.status, StatusCode::BAD_GATEWAY);
    assert!(checkout
        .text()
        .contains("STEP_UP_REQUIRED_BUT_NOT_CONFIGURED"));
    let orders = get(&format!("{api}/demo/orders")).await.text();
    let reference = orders
        .split(r#"<a href="/demo/orders/"#)
        .nth(1)
        .and_then(|link| link.split('"').next())
        .unwrap_or_else(|| panic!("no order listed: {orders}"))
        .to_owned();
    let page = get(&format!("{api}/demo/orders/{reference}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.text();
    for shown in [
        "step-partner-request",
        "no <strong>step_up_config</strong>: klarna-stepup did not mark this payment",
        "result <strong>DECLINED</strong> (STEP_UP_REQUIRED_BUT_NOT_CONFIGURED)",
        "step-partner-block",
        r#"id="no-step-up""#,
    ] {
        assert!(page.contains(shown), "{shown}: {page}");
    }
    // Nothing changed the request on its way.
    assert!(page.contains(r#"id="unchanged""#), "{page}");
    assert!(!page.contains(r#"<pre class="diff""#), "{page}");
    demo.klarna_task.abort();
    demo.payment_api_task.abort();
}

#[tokio::test]
async fn payment_api_passes_klarna_errors_through_unchanged() {
    let (_sandbox, api) = start_verifying_pair().await;
    let mut payment = partner_payment("order-9");
    payment["amount"] = json!(0);
    let answer = create_payment(&api, &payment).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error_code"], "VALIDATION_ERROR");
    assert_eq!(
        get(&format!("{api}/payments/order-9")).await.json()["state"],
        "FAILED"
    );
    // Fixed and sent again under the same reference.
    let answer = create_payment(&api, &partner_payment("order-9")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        get(&format!("{api}/payments/order-9")).await.json()["state"],
        "PENDING_STEP_UP"
    );
    assert_eq!(
        get(&format!("{api}/payments/unknown")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn echoes_partner_correlation_id() {
    let sandbox = Sandbox::start(None).await;
    let answer = sandbox
        .authorize(
            &authorize_body(1, "approve-1"),
            &[("partner-correlation-id", "abc123")],
        )
        .await;
    assert_eq!(answer.headers["partner-correlation-id"], "abc123");
    assert!(answer.headers.contains_key("klarna-correlation-id"));
}

#[tokio::test]
async fn keeps_a_bounded_number_of_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = KlarnaSandboxConfig::new(KEY, base.clone());
    config.max_requests = 2;
    let handle = KlarnaSandbox::new(config);
    tokio::spawn(handle.clone().serve(listener));
    let sandbox = Sandbox { handle, base };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let request = sandbox.step_up(100, "https://shop.test/r", None).await;
        ids.push(
            request["payment_request_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert_eq!(sandbox.read(&ids[0]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(sandbox.read(&ids[1]).await.status, StatusCode::OK);
    assert_eq!(sandbox.read(&ids[2]).await.status, StatusCode::OK);
}

// ----- as Klarna documents: redirect first, abort, expiry, idempotency -----------------

#[tokio::test]
async fn the_customer_is_redirected_before_the_webhook_which_follows_after_the_delay() {
    const DELAY: Duration = Duration::from_millis(1500);
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start_with(Some(receiver.url.clone()), |config| {
        config.webhook_delay = DELAY;
    })
    .await;
    let request = sandbox
        .step_up(
            100,
            "https://shop.test/r?s={klarna.payment_request.state}",
            None,
        )
        .await;
    let url = page_url(&request);
    assert_eq!(get(&url).await.status, StatusCode::OK);
    receiver
        .until("payment.request.state-change.in-progress")
        .await;

    let pressed = tokio::time::Instant::now();
    let answer = press(&url, "approve").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert_eq!(answer.location(), "https://shop.test/r?s=COMPLETED");
    assert!(
        pressed.elapsed() < DELAY,
        "the redirect waited for the webhook: {:?}",
        pressed.elapsed()
    );
    assert!(
        !receiver.has_arrived("payment.request.state-change.completed"),
        "the webhook came before the customer was sent back"
    );
    receiver
        .until("payment.request.state-change.completed")
        .await;
    assert!(
        pressed.elapsed() >= DELAY,
        "the webhook did not wait: {:?}",
        pressed.elapsed()
    );

    // The delay can be changed on a running sandbox.
    sandbox.handle.set_webhook_delay(Duration::ZERO);
    let request = sandbox.step_up(100, "https://shop.test/r", None).await;
    let sent = tokio::time::Instant::now();
    let (_, _, submitted) = receiver
        .until("payment.request.state-change.submitted")
        .await;
    assert_eq!(
        submitted["payload"]["payment_request_id"],
        request["payment_request_id"]
    );
    assert!(sent.elapsed() < DELAY, "{:?}", sent.elapsed());
}

#[tokio::test]
async fn webhooks_can_be_lost() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start_with(Some(receiver.url.clone()), |config| {
        config.lose_webhooks = true;
    })
    .await;
    let request = sandbox
        .step_up(
            100,
            "https://shop.test/r?s={klarna.payment_request.state}",
            None,
        )
        .await;
    let url = page_url(&request);
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let answer = press(&url, "approve").await;
    // The customer still comes back, and the state is there to read.
    assert_eq!(answer.location(), "https://shop.test/r?s=COMPLETED");
    let id = request["payment_request_id"].as_str().expect("id");
    assert_eq!(sandbox.read(id).await.json()["state"], "COMPLETED");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.deliveries.try_recv().is_err(),
        "a lost webhook was sent"
    );

    // Switched off on the running sandbox: the next state change is delivered again.
    sandbox.handle.set_lose_webhooks(false);
    sandbox.step_up(100, "https://shop.test/r", None).await;
    receiver
        .until("payment.request.state-change.submitted")
        .await;
}

#[tokio::test]
async fn the_customer_can_abort_in_the_purchase_journey() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox
        .step_up(
            100,
            "https://shop.test/r?s={klarna.payment_request.state}&t={klarna.payment_request.klarna_network_session_token}",
            None,
        )
        .await;
    let id = request["payment_request_id"].as_str().expect("id");
    let url = page_url(&request);
    let html = get(&url).await.text();
    assert!(html.contains(r#"id="cancel""#), "{html}");
    assert!(!html.contains("cancel-app"), "{html}");

    let answer = press(&url, "cancel").await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.text());
    assert_eq!(answer.location(), "https://shop.test/r?s=CANCELED&t=");
    let (_, _, canceled) = receiver
        .until("payment.request.state-change.canceled")
        .await;
    assert_eq!(canceled["payload"]["payment_request_id"], id);
    assert_eq!(canceled["payload"]["state"], "CANCELED");
    assert!(canceled["payload"]
        .get("klarna_network_session_token")
        .is_none());
    assert_eq!(sandbox.read(id).await.json()["state"], "CANCELED");
    // Final: no way back into the journey, and nothing left for the partner to cancel.
    assert_eq!(get(&url).await.status, StatusCode::GONE);
    assert_eq!(press(&url, "approve").await.status, StatusCode::GONE);
    assert_eq!(sandbox.cancel(id).await.status, StatusCode::CONFLICT);

    // From the app's button, back to the app.
    let mut body = authorize_body(100, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": {
            "method": "HANDOVER",
            "return_url": "https://shop.test/r",
            "app_return_url": "shopapp://back?s={klarna.payment_request.state}",
        },
    });
    let request = sandbox.authorize(&body, &[]).await.json()["payment_request"].clone();
    let url = page_url(&request);
    assert!(get(&url).await.text().contains(r#"id="cancel-app""#));
    let answer = press(&url, "cancel_app").await;
    assert_eq!(answer.location(), "shopapp://back?s=CANCELED");
}

/// The step-up body with `interaction_expiry` set to `expiry`.
fn with_expiry(expiry: Value) -> Value {
    let mut body = authorize_body(100, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": {
            "method": "HANDOVER",
            "return_url": "https://shop.test/r",
            "interaction_expiry": expiry,
        },
    });
    body
}

#[tokio::test]
async fn interaction_expiry_takes_a_timestamp_within_the_window() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    // An RFC 3339 time one hour ahead, in the sandbox's own format.
    let in_an_hour = sandbox
        .step_up(100, "https://shop.test/r", Some("PT1H"))
        .await["expires_at"]
        .as_str()
        .expect("expires_at")
        .to_owned();

    let answer = sandbox
        .authorize(&with_expiry(json!({ "timestamp": in_an_hour })), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let request = answer.json()["payment_request"].clone();
    assert_eq!(request["expires_at"], in_an_hour.as_str());
    // The same time with an offset and no fraction is accepted as well.
    let whole_seconds = format!("{}+00:00", &in_an_hour[..19]);
    let answer = sandbox
        .authorize(&with_expiry(json!({ "timestamp": whole_seconds })), &[])
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    // It expires at that time.
    let id = request["payment_request_id"].as_str().expect("id");
    sandbox.handle.advance_clock(Duration::from_secs(59 * 60));
    assert_eq!(sandbox.read(id).await.json()["state"], "SUBMITTED");
    sandbox.handle.advance_clock(Duration::from_secs(2 * 60));
    assert_eq!(sandbox.read(id).await.json()["state"], "EXPIRED");
    receiver.until("payment.request.state-change.expired").await;

    // Outside the window, malformed, both forms, or none: refused.
    let timestamp = "step_up_config.customer_interaction_config.interaction_expiry.timestamp";
    for bad in [
        json!("2000-01-01T00:00:00Z"),
        json!("2999-01-01T00:00:00Z"),
        json!(in_an_hour.replace('T', " ")),
        json!(&in_an_hour[..19]),
        json!(3600),
    ] {
        let answer = sandbox
            .authorize(&with_expiry(json!({ "timestamp": bad })), &[])
            .await;
        assert_validation_error(&answer, timestamp);
    }
    let expiry = "step_up_config.customer_interaction_config.interaction_expiry";
    for bad in [
        json!({ "timestamp": in_an_hour, "duration": "PT1H" }),
        json!({}),
        json!("PT1H"),
    ] {
        let answer = sandbox.authorize(&with_expiry(bad), &[]).await;
        assert_validation_error(&answer, expiry);
    }
}

#[tokio::test]
async fn requests_expire_at_their_expiry_with_nobody_asking() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let request = sandbox
        .step_up(100, "https://shop.test/r", Some("PT15M"))
        .await;
    let id = request["payment_request_id"].as_str().expect("id");
    receiver
        .until("payment.request.state-change.submitted")
        .await;

    // Not yet due: the sweep leaves it alone.
    sandbox.handle.advance_clock(Duration::from_secs(14 * 60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!receiver.has_arrived("payment.request.state-change.expired"));

    // Due: the sandbox expires it by itself and says so, without any call touching it.
    sandbox.handle.advance_clock(Duration::from_secs(60));
    let (_, _, expired) = receiver.until("payment.request.state-change.expired").await;
    assert_eq!(expired["payload"]["payment_request_id"], id);
    assert_eq!(expired["payload"]["state"], "EXPIRED");
    // It happened at the request's expires_at, whenever the sandbox noticed.
    assert_eq!(expired["metadata"]["occurred_at"], request["expires_at"]);
    assert_eq!(sandbox.read(id).await.json()["state"], "EXPIRED");
    // Once: a later read does not announce it again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!receiver.has_arrived("payment.request.state-change.expired"));

    // A finished request does not expire.
    let request = sandbox
        .step_up(100, "https://shop.test/r", Some("PT15M"))
        .await;
    let id = request["payment_request_id"].as_str().expect("id");
    press(&page_url(&request), "decline").await;
    sandbox.handle.advance_clock(Duration::from_secs(16 * 60));
    assert_eq!(sandbox.read(id).await.json()["state"], "DECLINED");
}

#[tokio::test]
async fn idempotency_keys_are_honoured_for_24_hours() {
    let mut receiver = Receiver::start(0).await;
    let sandbox = Sandbox::start(Some(receiver.url.clone())).await;
    let mut body = authorize_body(11800, "order-1");
    body["step_up_config"] = json!({
        "payment_request_reference": "r",
        "customer_interaction_config": { "method": "HANDOVER", "return_url": "https://shop.test/r" },
    });
    let key = [("klarna-idempotency-key", "key-24h")];
    let first = sandbox.authorize(&body, &key).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let id = first.json()["payment_request"]["payment_request_id"].clone();
    receiver
        .until("payment.request.state-change.submitted")
        .await;

    // 23 hours later: the first answer, byte for byte, and no second Payment Request.
    sandbox.handle.advance_clock(Duration::from_secs(23 * 3600));
    let again = sandbox.authorize(&body, &key).await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!receiver.has_arrived("payment.request.state-change.submitted"));

    // Another request under the key: refused, and the first answer is still the key's.
    let changed = sandbox.authorize(&authorize_body(1, "order-1"), &key).await;
    assert_validation_error(&changed, "Klarna-Idempotency-Key");
    let mut key_and_token = key.to_vec();
    key_and_token.push(("klarna-network-session-token", "some-token"));
    let with_token = sandbox.authorize(&body, &key_and_token).await;
    assert_validation_error(&with_token, "Klarna-Idempotency-Key");
    assert_eq!(sandbox.authorize(&body, &key).await.body, first.body);

    // Past 24 hours the key is new again: the same request makes a new Payment Request.
    sandbox.handle.advance_clock(Duration::from_secs(3600));
    let later = sandbox.authorize(&body, &key).await;
    assert_eq!(later.status, StatusCode::OK, "{}", later.text());
    let later_id = later.json()["payment_request"]["payment_request_id"].clone();
    assert!(later_id.is_string());
    assert_ne!(later_id, id);
    // ...and it is that answer the key replays from now on.
    assert_eq!(sandbox.authorize(&body, &key).await.body, later.body);
}

#[tokio::test]
async fn the_payment_api_copes_with_the_webhook_after_the_return() {
    let (sandbox, api) = start_verifying_pair().await;
    sandbox.handle.set_webhook_delay(Duration::from_secs(2));
    let klarna = create_payment(&api, &partner_payment("order-late-hook"))
        .await
        .json();
    let url = page_url(&klarna["payment_request"]);
    assert_eq!(get(&url).await.status, StatusCode::OK);
    let back = press(&url, "approve").await;
    assert_eq!(
        back.location(),
        "https://shop.test/confirmation?state=COMPLETED"
    );
    // The customer is back; the webhook is not there yet, so the order still waits...
    let state = get(&format!("{api}/payments/order-late-hook")).await.json();
    assert_eq!(state["state"], "PENDING_STEP_UP", "{state}");
    // ...and the webhook, when it comes, finalizes it.
    let state = settled_state(&api, "order-late-hook").await;
    assert_eq!(state["state"], "AUTHORIZED", "{state}");

    // The other order: the webhook before the customer's return.
    sandbox.handle.set_webhook_delay(Duration::ZERO);
    let klarna = create_payment(&api, &partner_payment("order-early-hook"))
        .await
        .json();
    let url = page_url(&klarna["payment_request"]);
    get(&url).await;
    let back = press(&url, "approve").await;
    let state = settled_state(&api, "order-early-hook").await;
    assert_eq!(state["state"], "AUTHORIZED", "{state}");
    // The return arrives after (the partner's page reads the settled order).
    assert_eq!(
        back.location(),
        "https://shop.test/confirmation?state=COMPLETED"
    );
    assert_eq!(
        get(&format!("{api}/payments/order-early-hook"))
            .await
            .json()["state"],
        "AUTHORIZED"
    );
}

#[tokio::test]
async fn the_payment_api_records_a_customer_abort() {
    let (_sandbox, api) = start_verifying_pair().await;
    let klarna = create_payment(&api, &partner_payment("order-aborted"))
        .await
        .json();
    let url = page_url(&klarna["payment_request"]);
    get(&url).await;
    let back = press(&url, "cancel").await;
    assert_eq!(
        back.location(),
        "https://shop.test/confirmation?state=CANCELED"
    );
    assert_eq!(
        settled_state(&api, "order-aborted").await["state"],
        "CANCELED"
    );
}

#[tokio::test]
async fn a_retried_order_gets_the_same_payment_request() {
    let (sandbox, api) = start_verifying_pair().await;
    let payment_request_id = |answer: &Answer| {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        answer.json()["payment_request"]["payment_request_id"]
            .as_str()
            .expect("payment_request_id")
            .to_owned()
    };
    let first = payment_request_id(&create_payment(&api, &partner_payment("order-retry")).await);
    let again = payment_request_id(&create_payment(&api, &partner_payment("order-retry")).await);
    assert_eq!(first, again, "a retry made a second Payment Request");

    // The key comes from the reference, not from the payment API's memory: a payment API
    // that forgot the order (restarted) still gets the same Payment Request.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let restarted = format!("http://{}", listener.local_addr().expect("addr"));
    let config = PaymentApiConfig::new(sandbox.base.clone(), KEY, ACCOUNT);
    tokio::spawn(PaymentApi::new(config).serve(listener));
    let after_restart =
        payment_request_id(&create_payment(&restarted, &partner_payment("order-retry")).await);
    assert_eq!(first, after_restart);

    // Another order is another Payment Request.
    let other = payment_request_id(&create_payment(&api, &partner_payment("order-other")).await);
    assert_ne!(first, other);
}
