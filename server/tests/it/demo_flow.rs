//! The whole demo flow over HTTP, without a browser: partner → proxy → payment API → Klarna
//! sandbox → purchase journey → the acquirer return endpoint → the partner's page, and the
//! signed webhook verified by the proxy and relayed to the payment API; and each order's
//! timeline, as the demo shows it.

use std::time::{Duration, Instant};

use crate::support::demo_stack::{call, Timeline};

/// `action`: the customer's button in the purchase journey (`approve`, `decline`, `cancel`).
async fn pay(stack: crate::support::demo_stack::DemoStack, action: &str) -> (String, String) {
    let proxy = stack.proxy_url.clone();
    let reference = format!("order-flow-{action}");
    let partner = serde_json::json!({
        "payment_method": "klarna", "amount": 11800, "currency": "USD", "reference": reference,
        "return_url": format!("{proxy}/shop/confirmation?reference={reference}&state={{klarna.payment_request.state}}"),
        "line_items": [{"name": "T-shirt", "quantity": 1, "total_amount": 11800}]
    });
    let (status, headers, body) = call(
        "POST",
        &format!("{proxy}/payments"),
        "application/json",
        partner.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-klarna-stepup"], "rewritten");
    let block: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(block["status"], "pending");
    let journey = block["redirect_url"].as_str().unwrap().to_owned();
    assert!(
        journey.starts_with(&format!("{}/pay/", stack.klarna_url)),
        "{journey}"
    );
    assert!(block["klarna"]["payment_request_data"].is_string());

    // The customer opens the journey and approves, declines or aborts.
    let (status, _, _) = call("GET", &journey, "text/html", String::new()).await;
    assert_eq!(status, 200);
    let (status, headers, _) = call(
        "POST",
        &journey,
        "application/x-www-form-urlencoded",
        format!("action={action}&phone=%2B15555550100"),
    )
    .await;
    assert_eq!(status, 303);
    // Klarna sends the customer to the acquirer's own endpoint, with a signed token...
    let to_acquirer = headers["location"].to_str().unwrap().to_owned();
    assert!(
        to_acquirer.starts_with(&format!("{proxy}/klarna/return/")),
        "{to_acquirer}"
    );
    let (status, headers, _) = call("GET", &to_acquirer, "text/html", String::new()).await;
    // ...which verifies it and redirects to the partner's page, filled in.
    assert_eq!(status, 303);
    assert_eq!(headers["cache-control"], "no-store");
    // The state the partner's page gets is the one the payment API confirmed on the
    // layer's notification (it finalized with the token, or asked Klarna), before the
    // redirect: the outcome is known from the return alone, webhook or not.
    let final_state = match action {
        "approve" => "AUTHORIZED",
        "decline" => "DECLINED",
        _ => "CANCELED",
    };
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("{proxy}/shop/confirmation?reference={reference}&state={final_state}")
    );
    let (_, _, body) = call(
        "GET",
        &format!("{proxy}/payments/{reference}"),
        "application/json",
        String::new(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], final_state, "stored before the redirect");

    // The webhook reached the payment API only through the proxy's verification.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = call(
            "GET",
            &format!("{proxy}/payments/{reference}"),
            "application/json",
            String::new(),
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let state = v["state"].as_str().unwrap_or("").to_owned();
        if ["AUTHORIZED", "DECLINED", "CANCELED"].contains(&state.as_str())
            || Instant::now() > deadline
        {
            // Direct calls to the relay path are refused at the proxy.
            let (status, _, _) = call(
                "POST",
                &format!("{proxy}/webhooks/klarna"),
                "application/json",
                "{}".into(),
            )
            .await;
            assert_eq!(status, 404);
            return (state, reference);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tower_approve_flow_ends_authorized() {
    let (state, _) = pay(crate::support::demo_stack::start().await, "approve").await;
    assert_eq!(state, "AUTHORIZED");
}

#[tokio::test]
async fn tower_decline_flow_ends_declined() {
    let (state, _) = pay(crate::support::demo_stack::start().await, "decline").await;
    assert_eq!(state, "DECLINED");
}

#[tokio::test]
async fn binary_approve_flow_ends_authorized() {
    let (state, _) = pay(crate::support::demo_stack::start_binary().await, "approve").await;
    assert_eq!(state, "AUTHORIZED");
}

#[tokio::test]
async fn binary_decline_flow_ends_declined() {
    let (state, _) = pay(crate::support::demo_stack::start_binary().await, "decline").await;
    assert_eq!(state, "DECLINED");
}

/// The customer aborts in the purchase journey: back on the partner's page with
/// `state=CANCELED`, and the order ends CANCELED by the webhook.
#[tokio::test]
async fn tower_abort_flow_ends_canceled() {
    let (state, _) = pay(crate::support::demo_stack::start().await, "cancel").await;
    assert_eq!(state, "CANCELED");
}

#[tokio::test]
async fn binary_abort_flow_ends_canceled() {
    let (state, _) = pay(crate::support::demo_stack::start_binary().await, "cancel").await;
    assert_eq!(state, "CANCELED");
}

/// Klarna's webhook is lost (it can be, and Klarna redirects first anyway): the return alone
/// completes the order, through the layer's signed notification.
#[tokio::test]
async fn tower_the_return_alone_completes_the_order_when_the_webhook_is_lost() {
    let stack = crate::support::demo_stack::start().await;
    stack.klarna.set_lose_webhooks(true);
    let (state, _) = pay(stack, "approve").await;
    assert_eq!(state, "AUTHORIZED");
}

#[tokio::test]
async fn binary_the_return_alone_completes_the_order_when_the_webhook_is_lost() {
    let stack = crate::support::demo_stack::start_binary().await;
    stack.klarna.set_lose_webhooks(true);
    let (state, _) = pay(stack, "approve").await;
    assert_eq!(state, "AUTHORIZED");
}

/// A partner that retries (a timeout on its side) gets the same Payment Request back: the
/// proxy forwards the same bytes, so the payment API's fixed `Klarna-Idempotency-Key` replays
/// Klarna's answer instead of meeting "already used with a different request body".
async fn retry(stack: crate::support::demo_stack::DemoStack) {
    let proxy = stack.proxy_url.clone();
    let reference = "order-retried";
    let partner = serde_json::json!({
        "payment_method": "klarna", "amount": 2500, "currency": "USD", "reference": reference,
        "return_url": format!("{proxy}/shop/confirmation?reference={reference}&state={{klarna.payment_request.state}}"),
    })
    .to_string();
    // The demo's tokens expire on the hour (the default bucket): a retry straddling one mints
    // another URL, by design (the layer is stateless), and that is not what is checked here.
    crate::common::return_webhook::clear_of_bucket_boundary(3600, 5).await;
    let mut ids = Vec::new();
    for attempt in 0..2 {
        if attempt == 1 {
            // Long enough for the clock to tick: the return token must not change with it.
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let (status, headers, body) = call(
            "POST",
            &format!("{proxy}/payments"),
            "application/json",
            partner.clone(),
        )
        .await;
        assert_eq!(status, 200, "attempt {attempt}: {body}");
        assert_eq!(headers["x-klarna-stepup"], "rewritten");
        let block: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(block["status"], "pending");
        ids.push(block["klarna"]["payment_request_id"].clone());
    }
    assert!(ids[0].is_string(), "{ids:?}");
    assert_eq!(ids[0], ids[1], "a retry created another Payment Request");
}

#[tokio::test]
async fn tower_a_retried_payment_gets_the_same_payment_request() {
    retry(crate::support::demo_stack::start().await).await;
}

#[tokio::test]
async fn binary_a_retried_payment_gets_the_same_payment_request() {
    retry(crate::support::demo_stack::start_binary().await).await;
}

/// An order through the demo shop: its timeline shows every step of `kind` (see
/// `check_timeline`), and the index of recent orders links to it.
async fn timeline(stack: crate::support::demo_stack::DemoStack, kind: Timeline) {
    let reference = stack.shop_order(kind).await;
    stack.complete_timeline(&reference, kind).await;
    let (status, _, index) = call(
        "GET",
        &format!("{}/demo/orders", stack.proxy_url),
        "text/html",
        String::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        index.contains(&format!(
            r#"<a href="/demo/orders/{reference}">{reference}</a>"#
        )),
        "{index}"
    );
}

#[tokio::test]
async fn tower_the_timeline_of_a_step_up_order_shows_every_step() {
    timeline(
        crate::support::demo_stack::start().await,
        Timeline::StepUpApproved,
    )
    .await;
}

#[tokio::test]
async fn tower_the_timeline_of_an_order_approved_at_once_shows_every_step() {
    timeline(
        crate::support::demo_stack::start().await,
        Timeline::ApprovedAtOnce,
    )
    .await;
}

#[tokio::test]
async fn binary_the_timeline_of_a_step_up_order_shows_every_step() {
    timeline(
        crate::support::demo_stack::start_binary().await,
        Timeline::StepUpApproved,
    )
    .await;
}

#[tokio::test]
async fn binary_the_timeline_of_an_order_approved_at_once_shows_every_step() {
    timeline(
        crate::support::demo_stack::start_binary().await,
        Timeline::ApprovedAtOnce,
    )
    .await;
}
