//! A local stand-in for Klarna: the Payment Authorize API, the Purchase Journey page and
//! signed webhooks, in memory. See the [module docs](super) for the test triggers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use super::client::HttpClient;
use super::clock::{parse_iso8601_duration, parse_rfc3339, rfc3339_nanos, Clock};
use super::timeline::{Journal, Kind, Step, Subject};
use super::{format_minor_units, html_escape, lock, percent_encode};

const REQUEST_KRN: &str = "krn:payment:eu1:request:";
const TRANSACTION_KRN: &str = "krn:payment:eu1:transaction:";
/// Header names that carry the token on the final authorize call, newest first.
const TOKEN_HEADERS: [&str; 3] = [
    "klarna-network-session-token",
    "klarna-payment-token",
    "klarna-interoperability-token",
];
const MIN_INTERACTION_EXPIRY: Duration = Duration::from_secs(15 * 60);
const MAX_INTERACTION_EXPIRY: Duration = Duration::from_secs(48 * 3600);
const DEFAULT_INTERACTION_EXPIRY: Duration = Duration::from_secs(3 * 3600);
/// How long a token from a completed Payment Request can be used for the final call.
const TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How long an approved authorization stays valid (the sandbox's choice).
const TRANSACTION_LIFETIME: Duration = Duration::from_secs(28 * 24 * 3600);
/// How long a `Klarna-Idempotency-Key` is honoured.
const IDEMPOTENCY_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How often [`KlarnaSandbox::serve`] looks for Payment Requests past their expiry.
const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Configuration of a [`KlarnaSandbox`].
#[derive(Clone)]
pub struct KlarnaSandboxConfig {
    /// The API key callers send as `Authorization: Basic <api key>` (the key as is).
    pub api_key: String,
    /// When set, only this `partner_account_id` is served (others get 403 `ACCESS_ERROR`);
    /// when `None`, any account id in the path is accepted and kept apart from the others.
    pub partner_account_id: Option<String>,
    /// Base URL under which this sandbox is reachable by the customer's browser, e.g.
    /// `http://127.0.0.1:8091`; `payment_request_url` is `{public_base_url}/pay/{uuid}`.
    pub public_base_url: String,
    /// Where webhooks are sent; `None` sends none. Can be changed later with
    /// [`KlarnaSandbox::set_webhook_url`].
    pub webhook_url: Option<String>,
    /// Sent as `Klarna-Signing-Key-Id` with every webhook.
    pub signing_key_id: String,
    /// HMAC-SHA256 key for `Klarna-Signature` (see [`sign_webhook`]).
    pub signing_key: Vec<u8>,
    /// How many Payment Requests (and, separately, idempotent answers) are kept; the oldest
    /// are forgotten first.
    pub max_requests: usize,
    /// Attempts per webhook (at least one), with doubling backoff from `webhook_backoff`.
    pub webhook_attempts: u32,
    /// The wait after the first failed webhook attempt.
    pub webhook_backoff: Duration,
    /// Timeout of one webhook attempt.
    pub webhook_timeout: Duration,
    /// How long after a state change its webhook's first attempt starts. The Purchase
    /// Journey redirects the customer at once, so with any delay the customer is back before
    /// the webhook (as with Klarna, where neither order is guaranteed). Can be changed later
    /// with [`KlarnaSandbox::set_webhook_delay`].
    pub webhook_delay: Duration,
    /// When true, webhooks are lost: none is sent (a test of a partner that must cope
    /// without one). Can be changed later with [`KlarnaSandbox::set_lose_webhooks`].
    pub lose_webhooks: bool,
    /// Where each webhook, as sent, and how it was answered are written down for the demo's
    /// timelines; `None` (the default) keeps nothing.
    pub journal: Option<Journal>,
}

impl std::fmt::Debug for KlarnaSandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of debug output.
        f.debug_struct("KlarnaSandboxConfig")
            .field("partner_account_id", &self.partner_account_id)
            .field("public_base_url", &self.public_base_url)
            .field("webhook_url", &self.webhook_url)
            .field("signing_key_id", &self.signing_key_id)
            .field("max_requests", &self.max_requests)
            .field("webhook_delay", &self.webhook_delay)
            .field("lose_webhooks", &self.lose_webhooks)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl KlarnaSandboxConfig {
    /// A configuration with the given API key and public base URL, any account id, no
    /// webhooks, the signing key id `sandbox-key-1` with a fixed (not secret) key,
    /// 10 000 requests kept, 4 webhook attempts and webhooks sent 1 s after the state change.
    pub fn new(api_key: impl Into<String>, public_base_url: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            partner_account_id: None,
            public_base_url: public_base_url.into(),
            webhook_url: None,
            signing_key_id: "sandbox-key-1".to_owned(),
            signing_key: super::DEMO_SIGNING_KEY.to_vec(),
            max_requests: 10_000,
            webhook_attempts: 4,
            webhook_backoff: Duration::from_millis(250),
            webhook_timeout: Duration::from_secs(3),
            webhook_delay: Duration::from_secs(1),
            lose_webhooks: false,
            journal: None,
        }
    }
}

/// Lower-case hex HMAC-SHA256 of the exact body bytes: the value of `Klarna-Signature`.
pub fn sign_webhook(key: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// State of a Payment Request, as Klarna names it on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentRequestState {
    /// Created by the authorize call; the customer has not opened the page yet.
    Submitted,
    /// The customer opened the Purchase Journey.
    InProgress,
    /// The customer approved; a token for the final call was issued.
    Completed,
    /// The customer declined.
    Declined,
    /// The interaction expiry passed before the customer finished.
    Expired,
    /// Canceled by the partner.
    Canceled,
}

impl PaymentRequestState {
    /// The wire name, e.g. `IN_PROGRESS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "SUBMITTED",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Declined => "DECLINED",
            Self::Expired => "EXPIRED",
            Self::Canceled => "CANCELED",
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::Submitted => "payment.request.state-change.submitted",
            Self::InProgress => "payment.request.state-change.in-progress",
            Self::Completed => "payment.request.state-change.completed",
            Self::Declined => "payment.request.state-change.declined",
            Self::Expired => "payment.request.state-change.expired",
            Self::Canceled => "payment.request.state-change.canceled",
        }
    }

    fn is_open(self) -> bool {
        matches!(self, Self::Submitted | Self::InProgress)
    }
}

/// One Payment Request as the sandbox keeps it.
#[derive(Clone)]
struct PaymentRequest {
    uuid: String,
    account_id: String,
    reference: String,
    amount: u64,
    currency: String,
    return_url: String,
    /// The app's return URL, when the partner gave one: the Purchase Journey offers it.
    app_return_url: Option<String>,
    state: PaymentRequestState,
    expires_at: SystemTime,
    token: Option<String>,
    completed_at: Option<SystemTime>,
    /// The answer of the final authorize with the token, once made: the request is then
    /// finalized, and the same call again gets the same answer.
    finalized: Option<(StatusCode, Value)>,
}

impl PaymentRequest {
    fn id(&self) -> String {
        format!("{REQUEST_KRN}{}", self.uuid)
    }

    /// The `payment_request` object as the authorize, read and cancel calls answer it.
    fn to_json(&self, public_base_url: &str) -> Value {
        let id = self.id();
        let mut state_context = json!({
            "customer_interaction": {
                "method": "HANDOVER",
                "payment_request_id": id,
                "payment_request_url": format!("{public_base_url}/pay/{}", self.uuid),
            }
        });
        if let (PaymentRequestState::Completed, Some(token)) = (self.state, &self.token) {
            state_context["klarna_network_session_token"] = json!(token);
        }
        json!({
            "payment_request_id": id,
            "payment_request_reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "state": self.state,
            "expires_at": rfc3339_nanos(self.expires_at),
            "state_context": state_context,
            "payment_request_data": format!(
                "{{\"content_type\":\"application/vnd.klarna.payment-request-data.v2+json\",\"content\":{{\"payment_request\":{{\"payment_request_id\":\"{id}\"}}}}}}"
            ),
        })
    }

    /// Moves an open request past its expiry to `EXPIRED`; true when it did.
    fn expire_if_due(&mut self, now: SystemTime) -> bool {
        if self.state.is_open() && now >= self.expires_at {
            self.state = PaymentRequestState::Expired;
            return true;
        }
        false
    }
}

/// A stored answer to an idempotent authorize call.
struct StoredAnswer {
    /// What makes a request the same: its exact body bytes and its token header, if any.
    request: (Bytes, Option<Vec<u8>>),
    stored_at: SystemTime,
    status: StatusCode,
    body: Bytes,
}

#[derive(Default)]
struct Store {
    requests: HashMap<String, PaymentRequest>,
    request_order: VecDeque<String>,
    tokens: HashMap<String, String>,
    answers: HashMap<(String, String), StoredAnswer>,
    answer_order: VecDeque<(String, String)>,
}

impl Store {
    fn insert_request(&mut self, request: PaymentRequest, max: usize) {
        self.request_order.push_back(request.uuid.clone());
        self.requests.insert(request.uuid.clone(), request);
        while self.requests.len() > max.max(1) {
            let Some(oldest) = self.request_order.pop_front() else {
                break;
            };
            if let Some(old) = self.requests.remove(&oldest) {
                if let Some(token) = old.token {
                    self.tokens.remove(&token);
                }
            }
        }
    }

    fn insert_answer(&mut self, key: (String, String), answer: StoredAnswer, max: usize) {
        if self.answers.insert(key.clone(), answer).is_none() {
            self.answer_order.push_back(key);
        }
        while self.answers.len() > max.max(1) {
            let Some(oldest) = self.answer_order.pop_front() else {
                break;
            };
            self.answers.remove(&oldest);
        }
    }

    /// Forgets the answer under `key` (its 24 hours are over).
    fn forget_answer(&mut self, key: &(String, String)) {
        if self.answers.remove(key).is_some() {
            self.answer_order.retain(|k| k != key);
        }
    }
}

struct Shared {
    config: KlarnaSandboxConfig,
    webhook_url: Mutex<Option<String>>,
    webhook_delay: Mutex<Duration>,
    lose_webhooks: AtomicBool,
    clock: Clock,
    store: Mutex<Store>,
    client: HttpClient,
    webhook_id: String,
}

/// A running sandbox's shared state; cheap to clone. [`KlarnaSandbox::router`] serves it.
#[derive(Clone)]
pub struct KlarnaSandbox {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KlarnaSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KlarnaSandbox")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// A webhook to send once the store lock is released.
struct Event {
    state: PaymentRequestState,
    request: PaymentRequest,
    occurred_at: SystemTime,
}

impl Event {
    /// The event of `request`'s current state, at `now`.
    fn of(request: &PaymentRequest, now: SystemTime) -> Self {
        Event {
            state: request.state,
            request: request.clone(),
            occurred_at: now,
        }
    }
}

impl KlarnaSandbox {
    /// A sandbox with empty state.
    pub fn new(config: KlarnaSandboxConfig) -> Self {
        let client = HttpClient::new(config.webhook_timeout);
        Self {
            shared: Arc::new(Shared {
                webhook_url: Mutex::new(config.webhook_url.clone()),
                webhook_delay: Mutex::new(config.webhook_delay),
                lose_webhooks: AtomicBool::new(config.lose_webhooks),
                config,
                clock: Clock::default(),
                store: Mutex::new(Store::default()),
                client,
                webhook_id: format!("krn:partner:global:notification:webhook:{}", Uuid::new_v4()),
            }),
        }
    }

    /// The configuration the sandbox was started with (the webhook URL may have changed since).
    pub fn config(&self) -> &KlarnaSandboxConfig {
        &self.shared.config
    }

    /// Sends future webhooks to `url` (or nowhere).
    pub fn set_webhook_url(&self, url: Option<String>) {
        *lock(&self.shared.webhook_url) = url;
    }

    /// Sets how long after a state change its webhook is sent (see
    /// [`KlarnaSandboxConfig::webhook_delay`]).
    pub fn set_webhook_delay(&self, delay: Duration) {
        *lock(&self.shared.webhook_delay) = delay;
    }

    /// Loses (never sends) the webhooks of state changes from now on, or stops losing them.
    pub fn set_lose_webhooks(&self, lose: bool) {
        self.shared.lose_webhooks.store(lose, Ordering::SeqCst);
    }

    /// Moves the sandbox's clock forward, to test expiries without waiting: Payment Requests
    /// (expired by the next sweep of [`KlarnaSandbox::serve`], within a second, or when next
    /// touched), tokens and idempotency keys.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Moves every open Payment Request past its expiry to `EXPIRED` and sends its
    /// `…expired` webhook.
    fn expire_due(&self) {
        let now = self.now();
        let events: Vec<Event> = {
            let mut store = lock(&self.shared.store);
            store
                .requests
                .values_mut()
                .filter_map(|request| {
                    // It happened at its expiry, whenever the sweep saw it.
                    request
                        .expire_if_due(now)
                        .then(|| Event::of(request, request.expires_at))
                })
                .collect()
        };
        self.emit_all(events);
    }

    /// The axum router with every sandbox route. Served without [`KlarnaSandbox::serve`],
    /// Payment Requests expire only when next touched (page, read, cancel).
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/v2/accounts/{account_id}/payment/authorize",
                post(authorize),
            )
            .route(
                "/v2/accounts/{account_id}/payment/requests/{payment_request_id}",
                get(read_request).delete(cancel_request),
            )
            .route("/pay/{uuid}", get(open_journey).post(finish_journey))
            .with_state(self.clone())
    }

    /// Serves the sandbox on `listener` until the task is dropped or fails; meanwhile, every
    /// second, expires the Payment Requests whose time is up.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let sweeper = self.clone();
        let sweep = async move {
            let mut interval = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                sweeper.expire_due();
            }
        };
        tokio::select! {
            served = axum::serve(listener, self.router()) => served,
            _ = sweep => Ok(()),
        }
    }

    fn now(&self) -> SystemTime {
        self.shared.clock.now()
    }

    /// The error answer for a caller without access to `account_id`, if it has none.
    fn refuse_access(&self, headers: &HeaderMap, account_id: &str) -> Option<Response> {
        let expected = format!("Basic {}", self.shared.config.api_key);
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !constant_time_eq(given, expected.as_bytes()) {
            return Some(klarna_error(
                StatusCode::UNAUTHORIZED,
                "ACCESS_ERROR",
                "UNAUTHORIZED",
                "Missing or invalid credentials",
                Vec::new(),
            ));
        }
        if let Some(only) = &self.shared.config.partner_account_id {
            if only != account_id {
                return Some(klarna_error(
                    StatusCode::FORBIDDEN,
                    "ACCESS_ERROR",
                    "FORBIDDEN",
                    "The credentials do not give access to this account",
                    Vec::new(),
                ));
            }
        }
        None
    }

    /// Sends the webhook for `event` in a background task: after the webhook delay, with
    /// retries; never when webhooks are lost or no URL is set. Never waits.
    fn emit(&self, event: Event) {
        let Some(url) = lock(&self.shared.webhook_url).clone() else {
            return;
        };
        let event_type = event.state.event_type();
        let journal = self.shared.config.journal.clone();
        let subject = Subject::PaymentRequest(event.request.id());
        if self.shared.lose_webhooks.load(Ordering::SeqCst) {
            tracing::info!(event_type, "sandbox webhook lost (on purpose)");
            if let Some(journal) = journal {
                let summary = format!(
                    "<code>{event_type}</code>: <strong>not sent</strong> (the sandbox loses webhooks on purpose)"
                );
                journal.record(
                    subject,
                    Step::new(Kind::Webhook, SystemTime::now(), summary),
                );
            }
            return;
        }
        let delay = *lock(&self.shared.webhook_delay);
        let config = &self.shared.config;
        let request = &event.request;
        let mut payload = json!({
            "payment_request_id": request.id(),
            "payment_request_reference": request.reference,
            "state": event.state,
            "amount": request.amount,
            "currency": request.currency,
        });
        if let (PaymentRequestState::Completed, Some(token)) = (event.state, &request.token) {
            // Klarna sends the token under both names (payment_token is the older one).
            payload["klarna_network_session_token"] = json!(token);
            payload["payment_token"] = json!(token);
        }
        let body = json!({
            "metadata": {
                "event_id": Uuid::new_v4().to_string(),
                "event_type": event.state.event_type(),
                "event_version": "v2",
                "occurred_at": rfc3339_nanos(event.occurred_at),
                "correlation_id": Uuid::new_v4().to_string(),
                "subject_account_id": request.account_id,
                "recipient_account_id": request.account_id,
                "product_instance_id": format!("krn:partner:global:product-instance:sandbox:{}", request.account_id),
                "webhook_id": self.shared.webhook_id,
                "live": false,
            },
            "payload": payload,
        });
        let body = Bytes::from(body.to_string());
        let signature = sign_webhook(&config.signing_key, &body);
        let key_id = config.signing_key_id.clone();
        let client = self.shared.client.clone();
        let attempts = config.webhook_attempts.max(1);
        let mut backoff = config.webhook_backoff;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let (sent_at, sent) = (SystemTime::now(), std::time::Instant::now());
            let mut answers = Vec::new();
            for attempt in 1..=attempts {
                let headers = [
                    ("content-type", "application/json"),
                    ("klarna-signature", signature.as_str()),
                    ("klarna-signing-key-id", key_id.as_str()),
                ];
                let outcome = client
                    .send(Method::POST, &url, &headers, body.clone())
                    .await;
                let delivered = matches!(outcome, Ok((status, _)) if status.is_success());
                match outcome {
                    Ok((status, _)) if status.is_success() => {
                        tracing::debug!(event_type, attempt, %status, "sandbox webhook delivered");
                        answers.push(status.as_u16().to_string());
                    }
                    Ok((status, _)) => {
                        tracing::info!(event_type, attempt, %status, "sandbox webhook refused");
                        answers.push(status.as_u16().to_string());
                    }
                    Err(error) => {
                        tracing::info!(event_type, attempt, %error, "sandbox webhook failed");
                        answers.push(error);
                    }
                }
                if delivered {
                    break;
                }
                if attempt < attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
            if let Some(journal) = journal {
                let summary = format!(
                    "<code>{event_type}</code>, signed; answered <strong>{}</strong>{}",
                    html_escape(&answers.join(", then ")),
                    if answers.len() > 1 {
                        format!(" ({} attempts)", answers.len())
                    } else {
                        String::new()
                    }
                );
                let step = Step::new(Kind::Webhook, sent_at, summary)
                    .took(sent.elapsed())
                    .part("Webhook body", &body);
                journal.record(subject, step);
            }
        });
    }

    /// Writes down, for the demo's timelines, what the customer did in the purchase journey.
    fn record_journey(&self, request: &PaymentRequest, summary: String) {
        if let Some(journal) = &self.shared.config.journal {
            let step = Step::new(Kind::Journey, SystemTime::now(), summary);
            journal.record(Subject::PaymentRequest(request.id()), step);
        }
    }

    /// Emits every event, in order.
    fn emit_all(&self, events: Vec<Event>) {
        for event in events {
            self.emit(event);
        }
    }

    /// The decision of one authorize call, under the store lock (it never awaits).
    fn decide_authorize(
        &self,
        store: &mut Store,
        account_id: &str,
        headers: &HeaderMap,
        body: &[u8],
        events: &mut Vec<Event>,
    ) -> (StatusCode, Value) {
        let now = self.now();
        let request = match validate_authorize(body, now) {
            Ok(request) => request,
            Err(response) => return response,
        };

        // Final call: a token from a completed Payment Request.
        if let Some((header_name, token)) = TOKEN_HEADERS.iter().find_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*name, v))
        }) {
            let refuse = |reason: &str| {
                validation_error(vec![(display_header(header_name), reason.to_owned())])
            };
            let Some(uuid) = store.tokens.get(token).cloned() else {
                return refuse("unknown token");
            };
            let Some(payment_request) = store.requests.get_mut(&uuid) else {
                return refuse("unknown token");
            };
            if payment_request.account_id != account_id {
                return refuse("unknown token");
            }
            if payment_request.state == PaymentRequestState::Canceled {
                return refuse("the payment request was canceled");
            }
            // Finalized: the same call again (a retry) gets the same answer; another amount
            // or currency is refused below as for the first call.
            if let Some((status, answer)) = &payment_request.finalized {
                if payment_request.amount == request.amount
                    && payment_request.currency == request.currency
                {
                    return (*status, answer.clone());
                }
            }
            let issued = payment_request.completed_at.unwrap_or(now);
            if payment_request.finalized.is_none() && now >= issued + TOKEN_LIFETIME {
                return refuse("token expired");
            }
            if payment_request.amount != request.amount {
                return validation_error(vec![(
                    "request_payment_transaction.amount".to_owned(),
                    "does not match the amount of the payment request".to_owned(),
                )]);
            }
            if payment_request.currency != request.currency {
                return validation_error(vec![(
                    "currency".to_owned(),
                    "does not match the currency of the payment request".to_owned(),
                )]);
            }
            let answer = approved(&request, now);
            payment_request.finalized = Some(answer.clone());
            return answer;
        }

        let transaction_reference = request.payment_transaction_reference.as_str();
        if transaction_reference.starts_with("decline") {
            return declined("SANDBOX_DECLINE_TRIGGER");
        }
        if transaction_reference.starts_with("approve") {
            return approved(&request, now);
        }
        let Some(step_up) = request.step_up else {
            // The sandbox treats every other customer as unknown to Klarna: without a way to
            // hand the customer over there is nothing to approve.
            return declined("STEP_UP_REQUIRED_BUT_NOT_CONFIGURED");
        };
        let payment_request = PaymentRequest {
            uuid: Uuid::new_v4().to_string(),
            account_id: account_id.to_owned(),
            reference: step_up.payment_request_reference,
            amount: request.amount,
            currency: request.currency,
            return_url: step_up.return_url,
            app_return_url: step_up.app_return_url,
            state: PaymentRequestState::Submitted,
            expires_at: step_up.expires_at,
            token: None,
            completed_at: None,
            finalized: None,
        };
        let answer = json!({
            "payment_transaction_response": { "result": "STEP_UP_REQUIRED" },
            "payment_request": payment_request.to_json(&self.shared.config.public_base_url),
        });
        events.push(Event::of(&payment_request, now));
        store.insert_request(payment_request, self.shared.config.max_requests);
        (StatusCode::OK, answer)
    }

    /// Finds an account's Payment Request by id (full `krn:…` id or bare uuid), expiring it
    /// if its time is up (the sweep of [`KlarnaSandbox::serve`] may not have run yet). Runs
    /// `change` on it under the lock and emits the resulting events after.
    fn with_request<R>(
        &self,
        account_id: Option<&str>,
        id: &str,
        change: impl FnOnce(&mut PaymentRequest, SystemTime, &mut Vec<Event>) -> R,
    ) -> Option<R> {
        let uuid = id.strip_prefix(REQUEST_KRN).unwrap_or(id);
        let now = self.now();
        let mut events = Vec::new();
        let result = {
            let mut store = lock(&self.shared.store);
            let request = store.requests.get_mut(uuid)?;
            if account_id.is_some_and(|account| account != request.account_id) {
                return None;
            }
            if request.expire_if_due(now) {
                events.push(Event::of(request, request.expires_at));
            }
            let result = change(request, now, &mut events);
            if let Some(token) = request.token.clone() {
                let uuid = request.uuid.clone();
                store.tokens.insert(token, uuid);
            }
            result
        };
        self.emit_all(events);
        Some(result)
    }
}

/// Serves a sandbox with `config` on `listener`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: KlarnaSandboxConfig,
) -> std::io::Result<()> {
    KlarnaSandbox::new(config).serve(listener).await
}

/// The router of a new sandbox with `config` (use [`KlarnaSandbox`] to keep a handle).
pub fn router(config: KlarnaSandboxConfig) -> Router {
    KlarnaSandbox::new(config).router()
}

// ---------------------------------------------------------------------------------------
// Authorize: validation and answers

struct AuthorizeRequest {
    currency: String,
    amount: u64,
    payment_transaction_reference: String,
    step_up: Option<StepUp>,
}

struct StepUp {
    payment_request_reference: String,
    return_url: String,
    app_return_url: Option<String>,
    expires_at: SystemTime,
}

fn validate_authorize(
    body: &[u8],
    now: SystemTime,
) -> Result<AuthorizeRequest, (StatusCode, Value)> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(error_body(
            StatusCode::BAD_REQUEST,
            "INPUT_ERROR",
            "INVALID_REQUEST_BODY",
            "The request body is not a JSON object",
            Vec::new(),
        ));
    };
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut fail = |parameter: &str, reason: &str| {
        errors.push((parameter.to_owned(), reason.to_owned()));
    };

    let currency = body.get("currency").and_then(Value::as_str).unwrap_or("");
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        fail(
            "currency",
            "must be an ISO 4217 code of three upper-case letters",
        );
    }
    let transaction = body.get("request_payment_transaction");
    if !transaction.is_some_and(Value::is_object) {
        fail(
            "request_payment_transaction",
            "is required and must be an object",
        );
    }
    let amount = transaction
        .and_then(|t| t.get("amount"))
        .and_then(Value::as_u64)
        .filter(|amount| *amount > 0);
    if transaction.is_some_and(Value::is_object) && amount.is_none() {
        fail(
            "request_payment_transaction.amount",
            "must be a positive integer in minor units",
        );
    }
    let reference = transaction
        .and_then(|t| t.get("payment_transaction_reference"))
        .and_then(Value::as_str)
        .filter(|r| (1..=255).contains(&r.chars().count()));
    if transaction.is_some_and(Value::is_object) && reference.is_none() {
        fail(
            "request_payment_transaction.payment_transaction_reference",
            "must be a string of 1 to 255 characters",
        );
    }

    let step_up = match body.get("step_up_config") {
        None | Some(Value::Null) => None,
        Some(config) => validate_step_up(config, now, &mut fail),
    };

    match (amount, reference) {
        (Some(amount), Some(reference)) if errors.is_empty() => Ok(AuthorizeRequest {
            currency: currency.to_owned(),
            amount,
            payment_transaction_reference: reference.to_owned(),
            step_up,
        }),
        _ => Err(validation_error(errors)),
    }
}

fn validate_step_up(
    config: &Value,
    now: SystemTime,
    fail: &mut impl FnMut(&str, &str),
) -> Option<StepUp> {
    if !config.is_object() {
        fail("step_up_config", "must be an object");
        return None;
    }
    let reference = config
        .get("payment_request_reference")
        .and_then(Value::as_str)
        .filter(|r| (1..=255).contains(&r.chars().count()));
    if reference.is_none() {
        fail(
            "step_up_config.payment_request_reference",
            "must be a string of 1 to 255 characters",
        );
    }
    let Some(interaction) = config
        .get("customer_interaction_config")
        .filter(|c| c.is_object())
    else {
        fail(
            "step_up_config.customer_interaction_config",
            "is required and must be an object",
        );
        return None;
    };
    if interaction.get("method").and_then(Value::as_str) != Some("HANDOVER") {
        fail(
            "step_up_config.customer_interaction_config.method",
            "the sandbox supports only HANDOVER",
        );
    }
    let return_url = interaction
        .get("return_url")
        .and_then(Value::as_str)
        .filter(|url| is_usable_return_url(url));
    if return_url.is_none() {
        fail(
            "step_up_config.customer_interaction_config.return_url",
            "must be an absolute http or https URL of printable ASCII characters",
        );
    }
    let app_return_url = match interaction.get("app_return_url") {
        None | Some(Value::Null) => Some(None),
        Some(url) => url
            .as_str()
            .filter(|url| is_usable_app_return_url(url))
            .map(|url| Some(url.to_owned())),
    };
    if app_return_url.is_none() {
        fail(
            "step_up_config.customer_interaction_config.app_return_url",
            "must be an absolute URL of printable ASCII characters (an app scheme, or http or https)",
        );
    }
    let expires_at = validate_interaction_expiry(interaction.get("interaction_expiry"), now, fail);
    Some(StepUp {
        payment_request_reference: reference?.to_owned(),
        return_url: return_url?.to_owned(),
        app_return_url: app_return_url?,
        expires_at: expires_at?,
    })
}

/// `interaction_expiry`: absent (3 hours), or an object with exactly one of `duration` (an
/// ISO 8601 duration) and `timestamp` (an RFC 3339 time), either 15 minutes to 48 hours from
/// now. The Payment Request's `expires_at`.
fn validate_interaction_expiry(
    expiry: Option<&Value>,
    now: SystemTime,
    fail: &mut impl FnMut(&str, &str),
) -> Option<SystemTime> {
    const FIELD: &str = "step_up_config.customer_interaction_config.interaction_expiry";
    let expiry = match expiry {
        None | Some(Value::Null) => return Some(now + DEFAULT_INTERACTION_EXPIRY),
        Some(Value::Object(expiry)) => expiry,
        Some(_) => {
            fail(FIELD, "must be an object with a duration or a timestamp");
            return None;
        }
    };
    let in_window = |d: &Duration| (MIN_INTERACTION_EXPIRY..=MAX_INTERACTION_EXPIRY).contains(d);
    let given = |name| expiry.get(name).filter(|v| !v.is_null());
    match (given("duration"), given("timestamp")) {
        (Some(_), Some(_)) => {
            fail(
                FIELD,
                "must have either a duration or a timestamp, not both",
            );
            None
        }
        (None, None) => {
            fail(FIELD, "must have a duration or a timestamp");
            None
        }
        (Some(duration), None) => {
            let expires_at = duration
                .as_str()
                .and_then(parse_iso8601_duration)
                .filter(in_window)
                .map(|d| now + d);
            if expires_at.is_none() {
                fail(
                    &format!("{FIELD}.duration"),
                    "must be an ISO 8601 duration between PT15M and PT48H",
                );
            }
            expires_at
        }
        (None, Some(timestamp)) => {
            let expires_at = timestamp
                .as_str()
                .and_then(parse_rfc3339)
                .filter(|t| t.duration_since(now).is_ok_and(|d| in_window(&d)));
            if expires_at.is_none() {
                fail(
                    &format!("{FIELD}.timestamp"),
                    "must be an RFC 3339 date-time between 15 minutes and 48 hours from now",
                );
            }
            expires_at
        }
    }
}

/// An app return URL: any scheme an app can register (`shopapp://…`), never a script.
fn is_usable_app_return_url(text: &str) -> bool {
    text.len() <= 4096
        && text.bytes().all(|b| b.is_ascii_graphic())
        && url::Url::parse(text).is_ok_and(|u| {
            !matches!(
                u.scheme(),
                "javascript" | "data" | "vbscript" | "file" | "blob" | "about"
            )
        })
}

fn is_usable_return_url(text: &str) -> bool {
    text.len() <= 4096
        && text.bytes().all(|b| b.is_ascii_graphic())
        && url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

fn approved(request: &AuthorizeRequest, now: SystemTime) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({
            "payment_transaction_response": {
                "result": "APPROVED",
                "payment_transaction": {
                    "payment_transaction_id": format!("{TRANSACTION_KRN}{}", Uuid::new_v4()),
                    "payment_transaction_reference": request.payment_transaction_reference,
                    "amount": request.amount,
                    "currency": request.currency,
                    "payment_funding": {},
                    "payment_pricing": {},
                    "expires_at": rfc3339_nanos(now + TRANSACTION_LIFETIME),
                }
            }
        }),
    )
}

fn declined(reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::OK,
        json!({ "payment_transaction_response": { "result": "DECLINED", "result_reason": reason } }),
    )
}

fn error_body(
    status: StatusCode,
    error_type: &str,
    error_code: &str,
    message: &str,
    validation_errors: Vec<(String, String)>,
) -> (StatusCode, Value) {
    let mut body = json!({
        "error_id": Uuid::new_v4().to_string(),
        "error_type": error_type,
        "error_code": error_code,
        "error_message": message,
    });
    if !validation_errors.is_empty() {
        body["validation_errors"] = validation_errors
            .into_iter()
            .map(|(parameter, reason)| json!({ "parameter": parameter, "reason": reason }))
            .collect();
    }
    (status, body)
}

fn validation_error(errors: Vec<(String, String)>) -> (StatusCode, Value) {
    error_body(
        StatusCode::BAD_REQUEST,
        "INPUT_ERROR",
        "VALIDATION_ERROR",
        "One or more input parameters failed validation",
        errors,
    )
}

fn klarna_error(
    status: StatusCode,
    error_type: &str,
    error_code: &str,
    message: &str,
    validation_errors: Vec<(String, String)>,
) -> Response {
    json_response(error_body(
        status,
        error_type,
        error_code,
        message,
        validation_errors,
    ))
}

fn json_response((status, body): (StatusCode, Value)) -> Response {
    bytes_response(status, Bytes::from(body.to_string()))
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::HeaderName::from_static("klarna-correlation-id"),
                HeaderValue::from_str(&Uuid::new_v4().to_string())
                    .unwrap_or(HeaderValue::from_static("sandbox")),
            ),
        ],
        body,
    )
        .into_response()
}

/// The header name as Klarna's documentation spells it, for error messages.
fn display_header(lower: &str) -> String {
    lower
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------
// Handlers

async fn authorize(
    State(sandbox): State<KlarnaSandbox>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut response = authorize_answer(&sandbox, &account_id, &headers, body).await;
    // Klarna echoes an alphanumeric Partner-Correlation-Id.
    if let Some(id) = headers.get("partner-correlation-id").filter(|id| {
        let id = id.as_bytes();
        !id.is_empty()
            && id.len() <= 255
            && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    }) {
        response
            .headers_mut()
            .insert("partner-correlation-id", id.clone());
    }
    response
}

async fn authorize_answer(
    sandbox: &KlarnaSandbox,
    account_id: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = sandbox.refuse_access(headers, account_id) {
        return refused;
    }
    let key = match headers.get("klarna-idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(key)) if (1..=255).contains(&key.len()) => Some(key.to_owned()),
        Some(_) => {
            return json_response(validation_error(vec![(
                "Klarna-Idempotency-Key".to_owned(),
                "must be 1 to 255 visible ASCII characters".to_owned(),
            )]))
        }
    };
    // The same request under the same key: the same body bytes and the same token header.
    let token = TOKEN_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .map(|value| value.as_bytes().to_vec());
    let request = (body.clone(), token);
    let now = sandbox.now();
    let mut events = Vec::new();
    let (status, answer) = {
        let mut store = lock(&sandbox.shared.store);
        let stored_key = key.map(|key| (account_id.to_owned(), key));
        if let Some(k) = &stored_key {
            // Honoured for 24 hours; after that the key is new again.
            if store
                .answers
                .get(k)
                .is_some_and(|stored| now >= stored.stored_at + IDEMPOTENCY_KEY_LIFETIME)
            {
                store.forget_answer(k);
            }
        }
        if let Some(stored) = stored_key.as_ref().and_then(|k| store.answers.get(k)) {
            if stored.request != request {
                return json_response(validation_error(vec![(
                    "Klarna-Idempotency-Key".to_owned(),
                    "already used with a different request (body or token header) in the last 24 hours"
                        .to_owned(),
                )]));
            }
            return bytes_response(stored.status, stored.body.clone());
        }
        let (status, answer) =
            sandbox.decide_authorize(&mut store, account_id, headers, &body, &mut events);
        let answer = Bytes::from(answer.to_string());
        if let Some(stored_key) = stored_key {
            let stored = StoredAnswer {
                request,
                stored_at: now,
                status,
                body: answer.clone(),
            };
            store.insert_answer(stored_key, stored, sandbox.shared.config.max_requests);
        }
        (status, answer)
    };
    sandbox.emit_all(events);
    bytes_response(status, answer)
}

async fn read_request(
    State(sandbox): State<KlarnaSandbox>,
    Path((account_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = sandbox.refuse_access(&headers, &account_id) {
        return refused;
    }
    let base = sandbox.shared.config.public_base_url.clone();
    let found = sandbox.with_request(Some(&account_id), &id, |r, _, _| r.to_json(&base));
    match found {
        Some(body) => json_response((StatusCode::OK, body)),
        None => not_found(),
    }
}

async fn cancel_request(
    State(sandbox): State<KlarnaSandbox>,
    Path((account_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = sandbox.refuse_access(&headers, &account_id) {
        return refused;
    }
    let base = sandbox.shared.config.public_base_url.clone();
    let found = sandbox.with_request(Some(&account_id), &id, |request, now, events| {
        // Open, or COMPLETED and not yet finalized with its token.
        let cancelable = request.state.is_open()
            || (request.state == PaymentRequestState::Completed && request.finalized.is_none());
        if !cancelable {
            return Err(request.state);
        }
        request.state = PaymentRequestState::Canceled;
        events.push(Event::of(request, now));
        Ok(request.to_json(&base))
    });
    match found {
        Some(Ok(body)) => json_response((StatusCode::OK, body)),
        Some(Err(state)) => klarna_error(
            StatusCode::CONFLICT,
            "RESOURCE_ERROR",
            "INVALID_STATE",
            &format!(
                "The payment request is {} and can no longer be canceled",
                if state == PaymentRequestState::Completed {
                    "finalized"
                } else {
                    state.as_str()
                }
            ),
            Vec::new(),
        ),
        None => not_found(),
    }
}

fn not_found() -> Response {
    klarna_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_ERROR",
        "NOT_FOUND",
        "The payment request was not found",
        Vec::new(),
    )
}

async fn open_journey(State(sandbox): State<KlarnaSandbox>, Path(uuid): Path<String>) -> Response {
    let found = sandbox.with_request(None, &uuid, |request, now, events| {
        if request.state == PaymentRequestState::Submitted {
            request.state = PaymentRequestState::InProgress;
            events.push(Event::of(request, now));
        }
        request.clone()
    });
    let Some(request) = found else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>This payment request does not exist.</p>",
        );
    };
    match request.state {
        PaymentRequestState::InProgress => {
            sandbox.record_journey(&request, "the customer opened the purchase journey".into());
            journey_page(&request)
        }
        state => closed_page(state),
    }
}

/// The Purchase Journey form.
#[derive(Deserialize)]
struct JourneyForm {
    action: String,
    // The phone number the customer typed is neither checked nor kept.
}

async fn finish_journey(
    State(sandbox): State<KlarnaSandbox>,
    Path(uuid): Path<String>,
    Form(form): Form<JourneyForm>,
) -> Response {
    // `*_app`: the customer goes back to the partner's app (offered only when it gave an
    // app_return_url).
    let (action, to_app) = match form.action.strip_suffix("_app") {
        Some(action) => (action, true),
        None => (form.action.as_str(), false),
    };
    let target = match action {
        "approve" => PaymentRequestState::Completed,
        "decline" => PaymentRequestState::Declined,
        // The customer aborts: the Payment Request ends CANCELED (see the module docs on
        // why not back to SUBMITTED).
        "cancel" => PaymentRequestState::Canceled,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "<p>Unknown action.</p>",
            )
        }
    };
    let found = sandbox.with_request(None, &uuid, |request, now, events| {
        if !request.state.is_open() {
            return Err(Some(request.state));
        }
        if to_app && request.app_return_url.is_none() {
            // Nothing changes: there was no app button to press.
            return Err(None);
        }
        request.state = target;
        if target == PaymentRequestState::Completed {
            request.token = Some(new_token());
            request.completed_at = Some(now);
        }
        // The webhook goes out after the webhook delay, in the background: the customer
        // is redirected first, and the partner must cope with either order.
        events.push(Event::of(request, now));
        Ok(request.clone())
    });
    match found {
        None => page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>This payment request does not exist.</p>",
        ),
        Some(Err(Some(state))) => closed_page(state),
        Some(Err(None)) => page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "<p>This payment request has no app to return to.</p>",
        ),
        Some(Ok(request)) => {
            sandbox.record_journey(
                &request,
                format!(
                    "the customer chose <strong>{}</strong>; Klarna sends them to the return URL{}",
                    match target {
                        PaymentRequestState::Completed => "approve",
                        PaymentRequestState::Declined => "decline",
                        _ => "cancel",
                    },
                    if to_app { " of the app" } else { "" }
                ),
            );
            let url = match (&request.app_return_url, to_app) {
                (Some(app), true) => app,
                _ => &request.return_url,
            };
            let location = fill_return_url(&request, url);
            match HeaderValue::from_str(&location) {
                Ok(location) => {
                    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
                }
                Err(_) => page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "<p>The return URL cannot be used.</p>",
                ),
            }
        }
    }
}

/// A random opaque token (256 bits, hex).
fn new_token() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// `url` (the request's return URL or app return URL) with Klarna's placeholders replaced by
/// URL-encoded values.
fn fill_return_url(request: &PaymentRequest, url: &str) -> String {
    let token = request.token.clone().unwrap_or_default();
    let values = [
        ("{klarna.payment_request.id}", request.id()),
        (
            "{klarna.payment_request.state}",
            request.state.as_str().to_owned(),
        ),
        (
            "{klarna.payment_request.payment_request_reference}",
            request.reference.clone(),
        ),
        (
            "{klarna.payment_request.klarna_network_session_token}",
            token.clone(),
        ),
        ("{klarna.payment_request.payment_token}", token.clone()),
        ("{klarna.payment_request.interoperability_token}", token),
    ];
    let mut url = url.to_owned();
    for (placeholder, value) in values {
        if url.contains(placeholder) {
            url = url.replace(placeholder, &percent_encode(&value));
        }
    }
    url
}

// ---------------------------------------------------------------------------------------
// Pages

fn page(status: StatusCode, title: &str, body_html: &str) -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Klarna sandbox</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f5f0ee; margin: 0; }}
main {{ max-width: 26rem; margin: 3rem auto; background: #fff; padding: 2rem; border-radius: 1rem; }}
h1 {{ font-size: 1.4rem; }} h1 small {{ color: #888; font-weight: normal; }}
.amount {{ font-size: 2rem; font-weight: bold; margin: .5rem 0; }}
label, input, button {{ display: block; width: 100%; box-sizing: border-box; margin-top: .6rem; }}
input {{ padding: .6rem; font-size: 1rem; }}
button {{ padding: .8rem; font-size: 1rem; border: 0; border-radius: .5rem; cursor: pointer; }}
#approve {{ background: #ffb3c7; font-weight: bold; }} #decline, #cancel {{ background: #eee; }}
</style></head>
<body><main><h1>Klarna <small>sandbox</small></h1>
{body_html}
</main></body></html>
"#,
        title = html_escape(title)
    );
    (status, Html(html)).into_response()
}

fn journey_page(request: &PaymentRequest) -> Response {
    let body = format!(
        r#"<p>Pay</p>
<p class="amount" id="amount">{amount}</p>
<p>Reference: <span id="reference">{reference}</span></p>
<form method="post" action="/pay/{uuid}">
<label for="phone">Mobile number</label>
<input id="phone" name="phone" type="tel" autocomplete="tel" placeholder="+1 555 010 0000">
<button id="approve" type="submit" name="action" value="approve">Approve</button>
<button id="decline" type="submit" name="action" value="decline">Decline</button>
<button id="cancel" type="submit" name="action" value="cancel">Cancel and return</button>
{app}</form>
<p><small>This is a test page: no money moves.</small></p>"#,
        app = if request.app_return_url.is_some() {
            r#"<button id="approve-app" type="submit" name="action" value="approve_app">Approve and return to the app</button>
<button id="decline-app" type="submit" name="action" value="decline_app">Decline and return to the app</button>
<button id="cancel-app" type="submit" name="action" value="cancel_app">Cancel and return to the app</button>
"#
        } else {
            ""
        },
        amount = html_escape(&format_minor_units(request.amount, &request.currency)),
        reference = html_escape(&request.reference),
        uuid = html_escape(&request.uuid),
    );
    page(StatusCode::OK, "Pay", &body)
}

fn closed_page(state: PaymentRequestState) -> Response {
    let (status, text) = match state {
        PaymentRequestState::Expired => (StatusCode::GONE, "This payment request has expired."),
        PaymentRequestState::Canceled => (StatusCode::GONE, "This payment request was canceled."),
        _ => (
            StatusCode::CONFLICT,
            "This payment request is already finished.",
        ),
    };
    page(
        status,
        "Closed",
        &format!(
            r#"<p id="message">{text}</p><p>State: <span id="state">{}</span></p>"#,
            state.as_str()
        ),
    )
}
