//! A demo "existing payment API" of an acquirer, which the step-up layer wraps, and a shop
//! page that uses it.
//!
//! Routes:
//!
//! - `POST /payments`: the partner's payment (JSON). The order is stored under its
//!   `reference` (generated when absent) and authorized at Klarna with
//!   `{currency, supplementary_purchase_data: {purchase_reference, line_items},
//!   request_payment_transaction: {amount, payment_transaction_reference}}` plus a top-level
//!   `step_up_config` (copied verbatim, as the step-up proxy injected it) and
//!   `interoperability_data` / `klarna_network_data` when the partner sent them, under a
//!   `Klarna-Idempotency-Key` derived from the reference ([`idempotency_key`]): the same
//!   order sent again gets Klarna's first answer, the same Payment Request. Klarna's
//!   answer goes back with its status and bytes **unchanged**; the proxy rewrites it.
//! - `POST /webhooks/klarna`: a Klarna webhook (relayed by the proxy or direct). On
//!   `…completed` the order is finalized with a second authorize call without
//!   `step_up_config` and with the token in `Klarna-Network-Session-Token`; `…declined`,
//!   `…expired` and `…canceled` are recorded. 200 only once the outcome is stored; 502 when
//!   Klarna could not be asked (so that the sender retries); 404 for an unknown order. A
//!   webhook for an order already settled is acknowledged and changes nothing, so a retried
//!   or late webhook is harmless. The customer may be back on the confirmation page before
//!   the webhook arrives (Klarna redirects first): the page polls `GET /payments/{reference}`
//!   until the state is final.
//! - `POST /payments/klarna-return`: the step-up layer's signed return notification (on when
//!   [`PaymentApiConfig::return_notification_key`] is set): a `COMPLETED` return with its
//!   token is finalized at once, as the `completed` webhook would be (same idempotency key:
//!   whichever comes second replays), and the answer `{"state": …}` is the order's stored
//!   state, which the layer hands to the partner's page instead of the browser's claim.
//! - `GET /payments/{reference}`: `{"reference", "state", "payment_transaction_id"?}`.
//! - `GET /shop`, `POST /shop/checkout`, `GET /shop/confirmation?reference=…`: the demo shop.
//!   It plays the partner: its checkout sends the payment, server to server, to the step-up
//!   proxy set with [`PaymentApi::set_public_base_url`] and sends the customer on to the
//!   partner block's `redirect_url` (or straight to the confirmation page when Klarna
//!   decided at once). Its form picks the sandbox's outcome: step-up (the reference as is),
//!   approved or declined at once (the reference starts with `approve-` or `decline-`).
//! - `GET /demo/orders`, `GET /demo/orders/{reference}`: the recent orders and each one's
//!   timeline, from the [`Journal`] set in [`PaymentApiConfig::journal`] (404 without one):
//!   what the shop sent and got, what reached the payment API (shown as a diff against what
//!   the shop sent), Klarna's answers, the return and the sandbox's webhooks, with times.
//!
//! Order states: `CREATED`, `PENDING_STEP_UP`, `AUTHORIZED`, `DECLINED`, `EXPIRED`,
//! `CANCELED`, `FAILED` (Klarna answered an error).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::client::HttpClient;
use super::klarna::sign_webhook;
use super::timeline::{self, Journal, Kind, Step, Subject};
use super::{html_escape, lock, percent_encode};

/// Configuration of the demo [`PaymentApi`].
#[derive(Clone)]
pub struct PaymentApiConfig {
    /// Klarna's base URL, e.g. the sandbox's `http://127.0.0.1:8091` (no trailing slash).
    pub klarna_base_url: String,
    /// Sent as `Authorization: Basic <api key>`.
    pub api_key: String,
    /// The `{partner_account_id}` of the authorize path.
    pub partner_account_id: String,
    /// When set, every webhook must carry a valid `Klarna-Signature` made with this key
    /// (answered 400 otherwise): for webhooks that come straight from Klarna. Leave `None`
    /// when the step-up proxy in front verifies signatures and relays the webhooks.
    pub webhook_signing_key: Option<Vec<u8>>,
    /// How many orders are kept; the oldest are forgotten first.
    pub max_orders: usize,
    /// When set, `POST /payments/klarna-return` (the step-up layer's return notification)
    /// must carry a valid `X-Klarna-Stepup-Signature` made with this key, at most five
    /// minutes old (answered 401 otherwise). `None`: the route is off (404).
    pub return_notification_key: Option<Vec<u8>>,
    /// Where the shop and the payment API write down what they send and get, for the
    /// demo's timelines (`GET /demo/orders`); `None` (the default) keeps nothing and serves
    /// no timelines.
    pub journal: Option<Journal>,
}

impl std::fmt::Debug for PaymentApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentApiConfig")
            .field("klarna_base_url", &self.klarna_base_url)
            .field("partner_account_id", &self.partner_account_id)
            .field("verifies_webhooks", &self.webhook_signing_key.is_some())
            .field("max_orders", &self.max_orders)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl PaymentApiConfig {
    /// A configuration that trusts its webhook caller and keeps 10 000 orders.
    pub fn new(
        klarna_base_url: impl Into<String>,
        api_key: impl Into<String>,
        partner_account_id: impl Into<String>,
    ) -> Self {
        Self {
            klarna_base_url: klarna_base_url.into(),
            api_key: api_key.into(),
            partner_account_id: partner_account_id.into(),
            webhook_signing_key: None,
            max_orders: 10_000,
            return_notification_key: None,
            journal: None,
        }
    }
}

/// An order as the demo payment API keeps it.
#[derive(Clone)]
struct Order {
    reference: String,
    state: &'static str,
    /// The authorize body without `step_up_config`: what the final call sends again.
    final_body: Bytes,
    /// Which try this is: 0, then one more each time the partner sends the order again after
    /// Klarna refused it (a changed body needs fresh idempotency keys).
    attempt: u32,
    payment_request_id: Option<String>,
    payment_request_reference: Option<String>,
    payment_transaction_id: Option<String>,
}

/// The `Klarna-Idempotency-Key` of an order's call, derived from its reference alone, so that
/// a retried order (even after a restart of the payment API) sends the same key and Klarna
/// answers with the same Payment Request: a name-based UUID (RFC 9562 version 8, SHA-256) of
/// `klarna-stepup-demo/{reference}/{call}/{attempt}`, `call` being `authorize` (the first,
/// customer-present call) or `finalize` (the call with the token). Klarna suggests
/// name-based UUIDv5 keys; any 1..255 characters work.
pub fn idempotency_key(reference: &str, call: &str, attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("klarna-stepup-demo/{reference}/{call}/{attempt}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn is_final(state: &str) -> bool {
    matches!(
        state,
        "AUTHORIZED" | "DECLINED" | "EXPIRED" | "CANCELED" | "FAILED"
    )
}

#[derive(Default)]
struct Orders {
    by_reference: HashMap<String, Order>,
    order: VecDeque<String>,
}

struct Shared {
    config: PaymentApiConfig,
    orders: Mutex<Orders>,
    client: HttpClient,
    /// Where the shop sends its payments (the step-up proxy), if set.
    public_base_url: Mutex<Option<String>>,
}

/// The demo payment API's shared state; cheap to clone. [`PaymentApi::router`] serves it.
#[derive(Clone)]
pub struct PaymentApi {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PaymentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentApi")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl PaymentApi {
    /// A payment API with no orders.
    pub fn new(config: PaymentApiConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                orders: Mutex::new(Orders::default()),
                client: HttpClient::new(Duration::from_secs(10)),
                public_base_url: Mutex::new(None),
            }),
        }
    }

    /// The state of an order (`PENDING_STEP_UP`, `AUTHORIZED`, …), if it is known.
    pub fn order_state(&self, reference: &str) -> Option<String> {
        lock(&self.shared.orders)
            .by_reference
            .get(reference)
            .map(|order| order.state.to_owned())
    }

    /// Sets the base URL (no trailing slash) of the step-up proxy in front: the shop sends
    /// its payments to `{url}/payments` and builds its return URLs on it. Unset, the shop
    /// cannot take payments.
    pub fn set_public_base_url(&self, url: Option<String>) {
        *lock(&self.shared.public_base_url) = url;
    }

    /// The axum router with the API, the shop pages and the timelines.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/payments", post(create_payment))
            .route("/payments/{reference}", get(read_payment))
            .route("/webhooks/klarna", post(receive_webhook))
            .route("/payments/klarna-return", post(receive_return))
            .route("/shop", get(shop_page))
            .route("/shop/checkout", post(checkout))
            .route("/shop/confirmation", get(confirmation_page))
            .route("/demo/orders", get(orders_page))
            .route("/demo/orders/{reference}", get(order_timeline))
            .with_state(self.clone())
    }

    /// Writes `step` down for the order `reference`, when there is a journal.
    fn record(&self, reference: &str, step: Step) {
        if let Some(journal) = &self.shared.config.journal {
            journal.record(Subject::Order(reference.to_owned()), step);
        }
    }

    /// Serves the payment API on `listener` until the task is dropped or fails.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn update(&self, reference: &str, change: impl FnOnce(&mut Order)) {
        if let Some(order) = lock(&self.shared.orders).by_reference.get_mut(reference) {
            change(order);
        }
    }

    /// POSTs to Klarna's authorize endpoint.
    async fn authorize(
        &self,
        body: Bytes,
        idempotency_key: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, Bytes), String> {
        let config = &self.shared.config;
        let url = format!(
            "{}/v2/accounts/{}/payment/authorize",
            config.klarna_base_url.trim_end_matches('/'),
            config.partner_account_id
        );
        let authorization = format!("Basic {}", config.api_key);
        let mut headers = vec![
            ("authorization", authorization.as_str()),
            ("content-type", "application/json"),
            ("klarna-idempotency-key", idempotency_key),
        ];
        if let Some(token) = token {
            headers.push(("klarna-network-session-token", token));
        }
        self.shared
            .client
            .send(Method::POST, &url, &headers, body)
            .await
    }
}

impl PaymentApi {
    /// Writes down Klarna's answer to an authorize call sent at `sent` (`what`: a few
    /// words on why it was made, HTML), and the body sent when given.
    fn record_klarna_answer(
        &self,
        reference: &str,
        kind: Kind,
        sent: Instant,
        answer: &Result<(StatusCode, Bytes), String>,
        what: &str,
        request: Option<&Bytes>,
    ) {
        let mut step = match answer {
            Ok((status, body)) => {
                let parsed: Option<Value> = serde_json::from_slice(body).ok();
                let text = |pointer| {
                    parsed
                        .as_ref()
                        .and_then(|v: &Value| v.pointer(pointer))
                        .and_then(Value::as_str)
                        .map(html_escape)
                };
                let summary = match (
                    text("/payment_transaction_response/result"),
                    text("/payment_transaction_response/result_reason"),
                    text("/error_code"),
                ) {
                    (Some(result), Some(reason), _) => {
                        format!("{what}result <strong>{result}</strong> ({reason})")
                    }
                    (Some(result), None, _) => format!("{what}result <strong>{result}</strong>"),
                    (None, _, Some(code)) => {
                        format!("{what}<strong>HTTP {}</strong> {code}", status.as_u16())
                    }
                    (None, _, None) => format!("{what}<strong>HTTP {}</strong>", status.as_u16()),
                };
                Step::new(kind, SystemTime::now(), summary).part("Klarna's answer", body)
            }
            Err(_) => Step::new(
                kind,
                SystemTime::now(),
                format!("{what}<strong>Klarna could not be reached</strong>"),
            ),
        };
        if let Some(request) = request {
            step = step.part("What the payment API sent Klarna", request);
        }
        self.record(reference, step.took(sent.elapsed()));
    }

    /// The order of a Payment Request, by its id, else its `payment_request_reference`, else
    /// that reference as the order's own.
    fn find_order(&self, request_id: Option<&str>, reference: Option<&str>) -> Option<Order> {
        let orders = lock(&self.shared.orders);
        orders
            .by_reference
            .values()
            .find(|o| request_id.is_some() && o.payment_request_id.as_deref() == request_id)
            .or_else(|| {
                orders.by_reference.values().find(|o| {
                    reference.is_some() && o.payment_request_reference.as_deref() == reference
                })
            })
            .or_else(|| reference.and_then(|r| orders.by_reference.get(r)))
            .cloned()
    }

    /// The state of the order's Payment Request as Klarna reports it (`GET
    /// /v2/accounts/{id}/payment/requests/{payment_request_id}`), when it can be read.
    async fn payment_request_state(&self, order: &Order) -> Option<&'static str> {
        let config = &self.shared.config;
        let url = format!(
            "{}/v2/accounts/{}/payment/requests/{}",
            config.klarna_base_url.trim_end_matches('/'),
            config.partner_account_id,
            order.payment_request_id.as_deref()?
        );
        let authorization = format!("Basic {}", config.api_key);
        let headers = [("authorization", authorization.as_str())];
        let (status, body) = self
            .shared
            .client
            .send(Method::GET, &url, &headers, Bytes::new())
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&body)
            .ok()
            .filter(|_| status.is_success())?;
        [
            "SUBMITTED",
            "IN_PROGRESS",
            "COMPLETED",
            "DECLINED",
            "EXPIRED",
            "CANCELED",
        ]
        .into_iter()
        .find(|s| v.get("state").and_then(Value::as_str) == Some(s))
    }
}

/// What a Klarna authorize answer means for the order.
fn outcome(status: StatusCode, body: &[u8]) -> (&'static str, Option<Value>) {
    if !status.is_success() {
        return ("FAILED", None);
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return ("FAILED", None);
    };
    let result = answer
        .pointer("/payment_transaction_response/result")
        .and_then(Value::as_str);
    let state = match result {
        Some("APPROVED") => "AUTHORIZED",
        Some("DECLINED") => "DECLINED",
        Some("STEP_UP_REQUIRED") => "PENDING_STEP_UP",
        _ => "FAILED",
    };
    (state, Some(answer))
}

fn apply_outcome(order: &mut Order, state: &'static str, answer: Option<&Value>) {
    order.state = state;
    let text = |pointer: &str| {
        answer
            .and_then(|a| a.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if let Some(id) =
        text("/payment_transaction_response/payment_transaction/payment_transaction_id")
    {
        order.payment_transaction_id = Some(id);
    }
    if let Some(id) = text("/payment_request/state_context/customer_interaction/payment_request_id")
        .or_else(|| text("/payment_request/payment_request_id"))
    {
        order.payment_request_id = Some(id);
    }
}

fn api_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn create_payment(State(api): State<PaymentApi>, body: Bytes) -> Response {
    let arrived = SystemTime::now();
    let Ok(Value::Object(partner)) = serde_json::from_slice::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let reference = match partner.get("reference") {
        None | Some(Value::Null) => format!("order-{}", Uuid::new_v4().simple()),
        Some(Value::String(r)) if (1..=255).contains(&r.chars().count()) => r.clone(),
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "reference must be a string of 1 to 255 characters",
            )
        }
    };
    let summary = match partner
        .get("step_up_config")
        .and_then(|s| s.get("payment_request_reference"))
    {
        Some(reference) => format!(
            "klarna-stepup added <strong>step_up_config</strong> (payment_request_reference <code>{}</code>)",
            html_escape(&reference.to_string())
        ),
        None => "no <strong>step_up_config</strong>: klarna-stepup did not mark this payment"
            .to_owned(),
    };
    api.record(
        &reference,
        Step::new(Kind::ReachedApi, arrived, summary).part("The request as received", &body),
    );
    let mut klarna = Map::new();
    klarna.insert(
        "currency".into(),
        partner.get("currency").cloned().unwrap_or(Value::Null),
    );
    klarna.insert(
        "supplementary_purchase_data".into(),
        json!({
            "purchase_reference": reference,
            "line_items": partner.get("line_items").cloned().unwrap_or_else(|| json!([])),
        }),
    );
    for pass_through in ["interoperability_data", "klarna_network_data"] {
        if let Some(value) = partner.get(pass_through) {
            klarna.insert(pass_through.into(), value.clone());
        }
    }
    klarna.insert(
        "request_payment_transaction".into(),
        json!({
            "amount": partner.get("amount").cloned().unwrap_or(Value::Null),
            "payment_transaction_reference": reference,
        }),
    );
    let final_body = Bytes::from(Value::Object(klarna.clone()).to_string());
    let step_up_config = partner.get("step_up_config").cloned();
    if let Some(step_up) = &step_up_config {
        klarna.insert("step_up_config".into(), step_up.clone());
    }
    let first_body = Bytes::from(Value::Object(klarna).to_string());

    let payment_request_reference = step_up_config
        .as_ref()
        .and_then(|s| s.get("payment_request_reference"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let first_key = {
        let key = |attempt| idempotency_key(&reference, "authorize", attempt);
        let mut orders = lock(&api.shared.orders);
        match orders.by_reference.get_mut(&reference) {
            // Klarna refused the last try (4xx): the partner may fix the body and try again,
            // under fresh idempotency keys since the body changed.
            Some(order) if order.state == "FAILED" => {
                order.state = "CREATED";
                order.final_body = final_body;
                order.payment_request_reference = payment_request_reference;
                order.attempt += 1;
                key(order.attempt)
            }
            Some(order) if order.state != "CREATED" && order.state != "PENDING_STEP_UP" => {
                return api_error(StatusCode::CONFLICT, "this reference is already used");
            }
            // A retry of the same order: the same idempotency key replays Klarna's answer.
            Some(order) => {
                order.final_body = final_body;
                key(order.attempt)
            }
            None => {
                let order = Order {
                    reference: reference.clone(),
                    state: "CREATED",
                    final_body,
                    attempt: 0,
                    payment_request_id: None,
                    payment_request_reference,
                    payment_transaction_id: None,
                };
                orders.order.push_back(reference.clone());
                orders.by_reference.insert(reference.clone(), order);
                while orders.by_reference.len() > api.shared.config.max_orders.max(1) {
                    let Some(oldest) = orders.order.pop_front() else {
                        break;
                    };
                    orders.by_reference.remove(&oldest);
                }
                key(0)
            }
        }
    };

    let sent = Instant::now();
    let authorized = api.authorize(first_body.clone(), &first_key, None).await;
    api.record_klarna_answer(
        &reference,
        Kind::KlarnaAnswer,
        sent,
        &authorized,
        "",
        Some(&first_body),
    );
    match authorized {
        Ok((status, answer)) => {
            let (state, parsed) = outcome(status, &answer);
            api.update(&reference, |order| {
                apply_outcome(order, state, parsed.as_ref())
            });
            tracing::info!(reference, state, "demo payment authorized at Klarna");
            json_bytes(status, answer)
        }
        Err(error) => {
            tracing::warn!(reference, %error, "Klarna unreachable");
            api_error(StatusCode::BAD_GATEWAY, "Klarna could not be reached")
        }
    }
}

async fn read_payment(State(api): State<PaymentApi>, Path(reference): Path<String>) -> Response {
    let orders = lock(&api.shared.orders);
    let Some(order) = orders.by_reference.get(&reference) else {
        return api_error(StatusCode::NOT_FOUND, "unknown payment");
    };
    let mut body = json!({ "reference": order.reference, "state": order.state });
    if let Some(id) = &order.payment_transaction_id {
        body["payment_transaction_id"] = json!(id);
    }
    let mut response = axum::Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The token of a `completed` webhook, from the places Klarna may put it.
fn webhook_token<'a>(webhook: &'a Value, headers: &'a HeaderMap) -> Option<&'a str> {
    [
        "/payload/klarna_network_session_token",
        "/payload/state_context/klarna_network_session_token",
        "/payload/payment_token",
        "/payload/state_context/payment_token",
    ]
    .iter()
    .find_map(|pointer| webhook.pointer(pointer).and_then(Value::as_str))
    .or_else(|| {
        headers
            .get("x-klarna-stepup-token")
            .and_then(|v| v.to_str().ok())
    })
    .filter(|token| !token.is_empty())
}

fn signature_is_valid(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let expected = sign_webhook(key, body);
    let Some(given) = headers.get("klarna-signature").map(HeaderValue::as_bytes) else {
        return false;
    };
    let given = given.to_ascii_lowercase();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn receive_webhook(
    State(api): State<PaymentApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(key) = &api.shared.config.webhook_signing_key {
        if !signature_is_valid(key, &headers, &body) {
            return api_error(StatusCode::BAD_REQUEST, "bad webhook signature");
        }
    }
    let Ok(webhook) = serde_json::from_slice::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, "the webhook is not JSON");
    };
    let text = |pointer: &str| webhook.pointer(pointer).and_then(Value::as_str);
    let event_type = text("/metadata/event_type").unwrap_or("");
    let request_id = text("/payload/payment_request_id");
    let request_reference = text("/payload/payment_request_reference");

    let order = api.find_order(request_id, request_reference);
    let Some(order) = order else {
        return api_error(StatusCode::NOT_FOUND, "no order for this payment request");
    };

    let new_state = match event_type.rsplit('.').next().unwrap_or("") {
        "completed" => None,
        "declined" => Some("DECLINED"),
        "expired" => Some("EXPIRED"),
        "canceled" | "cancelled" => Some("CANCELED"),
        // submitted, in-progress and unknown events change nothing.
        _ => return StatusCode::OK.into_response(),
    };
    if is_final(order.state) {
        // Already settled (a retried webhook): acknowledge, change nothing.
        return StatusCode::OK.into_response();
    }
    if let Some(state) = new_state {
        api.update(&order.reference, |o| o.state = state);
        tracing::info!(
            reference = order.reference,
            state,
            "demo payment updated by webhook"
        );
        return StatusCode::OK.into_response();
    }

    let Some(token) = webhook_token(&webhook, &headers) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "the completed webhook has no token",
        );
    };
    match finalize(&api, &order, token, "completed webhook").await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(response) => response,
    }
}

/// The final authorize call with the token: the order's new state once stored, or the 502 to
/// answer when Klarna could not be asked (so that the sender retries). Both the webhook and
/// the return notification finalize; the same idempotency key makes the second a replay.
async fn finalize(
    api: &PaymentApi,
    order: &Order,
    token: &str,
    via: &str,
) -> Result<&'static str, Response> {
    let final_key = idempotency_key(&order.reference, "finalize", order.attempt);
    let sent = Instant::now();
    let authorized = api
        .authorize(order.final_body.clone(), &final_key, Some(token))
        .await;
    api.record_klarna_answer(
        &order.reference,
        Kind::FinalAuthorize,
        sent,
        &authorized,
        &format!("on the {via}: "),
        None,
    );
    match authorized {
        Ok((status, answer)) if !status.is_server_error() => {
            let (state, parsed) = outcome(status, &answer);
            api.update(&order.reference, |o| {
                apply_outcome(o, state, parsed.as_ref())
            });
            tracing::info!(reference = order.reference, state, "demo payment finalized");
            Ok(state)
        }
        Ok((status, _)) => {
            tracing::warn!(reference = order.reference, %status, "final authorize failed");
            Err(api_error(
                StatusCode::BAD_GATEWAY,
                "Klarna failed; retry later",
            ))
        }
        Err(error) => {
            tracing::warn!(reference = order.reference, %error, "Klarna unreachable");
            Err(api_error(
                StatusCode::BAD_GATEWAY,
                "Klarna could not be reached; retry later",
            ))
        }
    }
}

/// Whether `X-Klarna-Stepup-Signature` (`t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "<t>.<body>">`) is valid for `body` with `key` and at most five minutes from now: the check
/// the step-up layer's documentation asks of a payment API.
fn notification_is_signed(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let Some(header) = headers
        .get("x-klarna-stepup-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((t, v1)) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
    else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (Ok(t_secs), Ok(given)) = (t.parse::<u64>(), hex::decode(v1)) else {
        return false;
    };
    if now.abs_diff(t_secs) > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The step-up layer's return notification (`acquirer_return.notify_path`): the customer is
/// back, and the layer's redirect waits for this answer. A `COMPLETED` return with a token is
/// finalized here and now (the same call a `completed` webhook makes, under the same
/// idempotency key, so whichever comes second replays), so that the confirmation page shows
/// the outcome from the return alone. Any other claim changes nothing (the browser brought
/// it; the webhook settles). The answer, `{"state": …}`, is the order's state as stored:
/// what the layer puts in the partner's URL.
async fn receive_return(
    State(api): State<PaymentApi>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (arrived, started) = (SystemTime::now(), Instant::now());
    let Some(key) = &api.shared.config.return_notification_key else {
        return api_error(StatusCode::NOT_FOUND, "not found");
    };
    if !notification_is_signed(key, &headers, &body) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "bad return notification signature",
        );
    }
    let Ok(note) = serde_json::from_slice::<Value>(&body) else {
        return api_error(StatusCode::BAD_REQUEST, "the notification is not JSON");
    };
    let text = |key: &str| note.get(key).and_then(Value::as_str);
    let (request_id, reference) = (
        text("payment_request_id"),
        text("payment_request_reference"),
    );
    let order = api.find_order(request_id, reference);
    let Some(order) = order else {
        return api_error(StatusCode::NOT_FOUND, "no order for this payment request");
    };
    let token = text("klarna_network_session_token").filter(|t| !t.is_empty());
    let state = match (order.state, text("state"), token) {
        (state, _, _) if is_final(state) => state,
        (_, Some("COMPLETED"), Some(token)) => {
            match finalize(&api, &order, token, "return").await {
                Ok(state) => state,
                Err(response) => return response,
            }
        }
        // Any other claim is checked with Klarna itself: the Payment Request's own state.
        (state, _, _) => match api.payment_request_state(&order).await {
            Some(ended @ ("DECLINED" | "EXPIRED" | "CANCELED")) => {
                api.update(&order.reference, |o| o.state = ended);
                ended
            }
            _ => state,
        },
    };
    let answer = json!({ "state": state });
    let summary = format!(
        "the customer is back from Klarna, which says <code>{}</code>; the payment API answered <strong>{state}</strong>, the state klarna-stepup puts in the shop's URL",
        html_escape(text("state").unwrap_or("nothing"))
    );
    api.record(
        &order.reference,
        Step::new(Kind::Return, arrived, summary)
            .took(started.elapsed())
            .part("klarna-stepup's return notification", &body)
            .part("The payment API's answer", answer.to_string().as_bytes()),
    );
    axum::Json(answer).into_response()
}

// ---------------------------------------------------------------------------------------
// Shop pages

const SHOP_STYLE: &str = r#"<style>
body { font-family: system-ui, sans-serif; background: #fafafa; margin: 0; }
main { max-width: 28rem; margin: 3rem auto; background: #fff; padding: 2rem; border-radius: 1rem; box-shadow: 0 1px 4px #0002; }
.price { font-size: 1.6rem; font-weight: bold; }
button { padding: .8rem 1.2rem; font-size: 1rem; border: 0; border-radius: .5rem; background: #ffb3c7; cursor: pointer; }
label, select { display: block; margin: .3rem 0 1rem; }
.small { font-size: .85rem; color: #666; }
#error { color: #b00020; }
</style>"#;

/// The product the shop sells, in minor units of USD.
const PRICE: u64 = 11800;

fn shop_html(error: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Demo shop</title>{SHOP_STYLE}</head>
<body><main>
<h1>Demo shop</h1>
<p id="product">Espresso machine</p>
<p class="price" id="price">{price}</p>
<form method="post" action="/shop/checkout">
<label for="scenario" class="small">Klarna sandbox outcome</label>
<select id="scenario" name="scenario">
<option value="step-up" selected>step-up: the customer approves at Klarna</option>
<option value="approve">approved at once (no step-up)</option>
<option value="decline">declined at once</option>
</select>
<button id="pay" type="submit">Pay with Klarna</button>
</form>
<p id="error" role="alert">{error}</p>
<p class="small"><a id="orders" href="/demo/orders">What happened to each order: the timelines</a></p>
</main></body></html>
"#,
        price = super::format_minor_units(PRICE, "USD"),
        error = html_escape(error),
    )
}

async fn shop_page() -> Html<String> {
    Html(shop_html(""))
}

/// The shop's checkout form.
#[derive(serde::Deserialize)]
struct Checkout {
    #[serde(default)]
    scenario: String,
}

/// The shop as the partner: sends the payment to the step-up proxy, server to server, writes
/// down what it sent and got, and sends the customer on.
async fn checkout(State(api): State<PaymentApi>, Form(form): Form<Checkout>) -> Response {
    let not_started = |why: String| {
        (
            StatusCode::BAD_GATEWAY,
            Html(shop_html(&format!("Payment not started: {why}"))),
        )
            .into_response()
    };
    let Some(base) = lock(&api.shared.public_base_url).clone() else {
        return not_started("the shop does not know where the payment API is".to_owned());
    };
    let prefix = match form.scenario.as_str() {
        "approve" => "approve-",
        "decline" => "decline-",
        _ => "",
    };
    let reference = format!(
        "{prefix}order-{}",
        &Uuid::new_v4().simple().to_string()[..10]
    );
    let confirmation = format!(
        "{base}/shop/confirmation?reference={}",
        percent_encode(&reference)
    );
    let request = Bytes::from(
        json!({
            "payment_method": "klarna",
            "amount": PRICE,
            "currency": "USD",
            "reference": reference,
            "return_url": format!("{confirmation}&state={{klarna.payment_request.state}}"),
            "line_items": [{ "name": "Espresso machine", "quantity": 1, "unit_price": PRICE, "total_amount": PRICE }],
        })
        .to_string(),
    );
    api.record(
        &reference,
        Step::new(
            Kind::PartnerRequest,
            SystemTime::now(),
            format!(
                "a Klarna payment of {}, back to the shop's confirmation page",
                super::format_minor_units(PRICE, "USD")
            ),
        )
        .part("The request as sent", &request),
    );
    let sent = Instant::now();
    let answer = api
        .shared
        .client
        .exchange(
            Method::POST,
            &format!("{base}/payments"),
            &[("content-type", "application/json")],
            request,
        )
        .await;
    let (status, headers, body) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            api.record(
                &reference,
                Step::new(
                    Kind::PartnerBlock,
                    SystemTime::now(),
                    "<strong>no answer</strong>",
                )
                .took(sent.elapsed()),
            );
            return not_started(error);
        }
    };
    let block: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |key: &str| block.get(key).and_then(Value::as_str);
    let marked = headers
        .get("x-klarna-stepup")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!(" · <code>x-klarna-stepup: {}</code>", html_escape(v)))
        .unwrap_or_default();
    let summary = match (text("status"), text("redirect_url")) {
        (Some(state), Some(url)) => format!(
            "HTTP {} · status <strong>{}</strong> · redirect_url <strong>{}</strong>{marked}",
            status.as_u16(),
            html_escape(state),
            html_escape(url)
        ),
        (Some(state), None) => format!(
            "HTTP {} · status <strong>{}</strong>{marked}",
            status.as_u16(),
            html_escape(state)
        ),
        _ => format!("<strong>HTTP {}</strong>{marked}", status.as_u16()),
    };
    api.record(
        &reference,
        Step::new(Kind::PartnerBlock, SystemTime::now(), summary)
            .took(sent.elapsed())
            .part("The answer as received", &body),
    );
    let next = match (status.is_success(), text("status"), text("redirect_url")) {
        (true, Some("pending"), Some(url)) => url.to_owned(),
        (true, Some("authorized" | "declined"), _) => confirmation,
        _ => {
            return not_started(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body)
            ))
        }
    };
    match HeaderValue::from_str(&next) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => not_started("the redirect URL cannot be used".to_owned()),
    }
}

async fn confirmation_page(
    State(api): State<PaymentApi>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let reference = query.get("reference").map(String::as_str).unwrap_or("");
    if let (Some(journal), false) = (&api.shared.config.journal, reference.is_empty()) {
        let summary = match query.get("state") {
            Some(state) => format!(
                "the shop's page got <strong>state={}</strong>",
                html_escape(state)
            ),
            None => "the shop's page, without a state: the shop sent the customer there itself"
                .to_owned(),
        };
        journal.append(
            Subject::Order(reference.to_owned()),
            Step::new(Kind::CustomerBack, SystemTime::now(), summary),
        );
    }
    let timeline = if api.shared.config.journal.is_some() && !reference.is_empty() {
        format!(
            r#"<p class="small"><a id="timeline" href="{}">What happened: this order's timeline</a></p>"#,
            timeline::order_href(reference)
        )
    } else {
        String::new()
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Order confirmation</title>{SHOP_STYLE}</head>
<body><main>
<h1>Your order</h1>
<p>Reference: <span id="reference"></span></p>
<p>Payment: <strong id="state">checking…</strong></p>
{timeline}
</main>
<script>
const reference = new URLSearchParams(location.search).get("reference") || "";
document.getElementById("reference").textContent = reference;
const finalStates = ["AUTHORIZED", "DECLINED", "EXPIRED", "CANCELED", "FAILED"];
const deadline = Date.now() + 10000;
async function poll() {{
  let state = "UNKNOWN";
  try {{
    const response = await fetch("/payments/" + encodeURIComponent(reference), {{ cache: "no-store" }});
    if (response.ok) state = (await response.json()).state;
  }} catch (e) {{}}
  document.getElementById("state").textContent = state;
  if (!finalStates.includes(state) && Date.now() < deadline) setTimeout(poll, 500);
}}
poll();
</script>
</body></html>
"#
    );
    Html(html).into_response()
}

// ---------------------------------------------------------------------------------------
// Timelines

/// A page that is never cached (it changes as the flow goes on).
fn fresh_page(html: String) -> Response {
    let mut response = Html(html).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn orders_page(State(api): State<PaymentApi>) -> Response {
    let Some(journal) = &api.shared.config.journal else {
        return api_error(StatusCode::NOT_FOUND, "no timelines are kept");
    };
    fresh_page(timeline::index_page(&journal.orders(), |reference| {
        api.order_state(reference)
    }))
}

async fn order_timeline(State(api): State<PaymentApi>, Path(reference): Path<String>) -> Response {
    let Some(journal) = &api.shared.config.journal else {
        return api_error(StatusCode::NOT_FOUND, "no timelines are kept");
    };
    let order = lock(&api.shared.orders)
        .by_reference
        .get(&reference)
        .cloned();
    let mut subjects = vec![Subject::Order(reference.clone())];
    if let Some(id) = order.as_ref().and_then(|o| o.payment_request_id.clone()) {
        subjects.push(Subject::PaymentRequest(id));
    }
    fresh_page(timeline::order_page(
        &reference,
        order.map(|o| o.state),
        &journal.steps(&subjects),
    ))
}
