//! The acquirer's own redirect URL through both library adapters over loopback: a Klarna
//! `STEP_UP_REQUIRED` gives the partner `redirect_url` = the layer's signed link, which
//! answers a 303 to Klarna's Purchase Journey; a tampered or foreign token gets a 400.
#![cfg(all(feature = "tower", feature = "pingora"))]

use crate::common;

use std::time::Duration;

use common::pingora_proxy::{start_pingora, PaymentApi};
use common::raw_http::{raw_request, ReqBody};
use common::return_webhook::{minted_return_path, step_up};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::StepUpProxy;

const LIMIT: Duration = Duration::from_secs(10);
const KLARNA_URL: &str = "https://pay.klarna.com/eu/requests/1/start";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_gets_the_acquirers_own_redirect_to_the_purchase_journey() {
    let engine = step_up("[acquirer_redirect]\nenabled = true");
    let up = upstream::start().await;
    up.set_answer(Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: format!(
            r#"{{"payment_transaction_response":{{"result":"STEP_UP_REQUIRED"}},"payment_request":{{"payment_request_id":"krn:payment:eu1:request:1","payment_request_url":"{KLARNA_URL}"}}}}"#
        )
        .into_bytes(),
        delay: None,
    });
    let tower = common::tower_proxy::start(engine.clone(), up.addr).await;
    let pingora = start_pingora(StepUpProxy::new(
        PaymentApi {
            upstream: up.addr,
            read_timeout: LIMIT,
        },
        engine.clone(),
    ));
    let foreign_kind = minted_return_path(&engine, "https://shop.example/done").unwrap();
    for (adapter, addr) in [("tower", tower), ("pingora", pingora)] {
        let res = raw_request(
            addr,
            "POST",
            "/payments",
            &[("content-type", "application/json")],
            ReqBody::Length(
                br#"{"payment_method":"klarna","return_url":"https://shop.example/done"}"#,
            ),
            LIMIT,
        )
        .await
        .unwrap();
        assert_eq!(res.status, 200, "{adapter}");
        let block: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        let redirect = block["redirect_url"].as_str().unwrap();
        let path = redirect
            .strip_prefix("https://pay.acquirer.example")
            .unwrap_or_else(|| panic!("{adapter}: {redirect}"));
        assert!(path.starts_with("/klarna/pay/"), "{adapter}: {redirect}");
        assert_eq!(block["klarna"]["payment_request_url"], KLARNA_URL);

        up.take_received();
        let res = raw_request(addr, "GET", path, &[], ReqBody::None, LIMIT)
            .await
            .unwrap();
        assert_eq!(res.status, 303, "{adapter}");
        assert_eq!(res.header("location"), Some(KLARNA_URL), "{adapter}");
        assert_eq!(res.header("cache-control"), Some("no-store"), "{adapter}");
        // The acquirer's redirect tells the payment API nothing.
        assert!(up.take_received().is_empty(), "{adapter}");

        let mut tampered = path.to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let swapped = foreign_kind.replace("/klarna/return/", "/klarna/pay/");
        for bad in [tampered.as_str(), swapped.as_str(), "/klarna/pay/Zm9yZ2Vk"] {
            let res = raw_request(addr, "GET", bad, &[], ReqBody::None, LIMIT)
                .await
                .unwrap();
            assert_eq!(res.status, 400, "{adapter}: {bad}");
            assert_eq!(res.header("location"), None, "{adapter}: {bad}");
        }
    }
}
