//! `StepUpPhases` called from a hand-written `ProxyHttp`, as the `klarna_stepup::pingora`
//! module docs show it (the recipe for acquirers who would rather not wrap their proxy): the
//! whole fixture table gives the partner the same status and bytes as through tower. This
//! recipe is Pingora's pipeline, so an answer read for a rewrite carries no marker (its
//! header leaves before the engine's verdict), as the module docs say; and a rewritten
//! answer whose configured status (`partner_response.http_status`) is not the payment API's
//! is cut short, never sent under the status that already left.
#![cfg(feature = "pingora")]

use crate::common;

use std::time::Duration;

use common::fixtures::{self, Forwarded};
use common::pingora_proxy::{start_pingora, Recipe};
use common::raw_http::{raw_request, send_fixture, ReqBody};
use common::upstream::{self, Answer};
use klarna_stepup::pingora::StepUpPhases;
use klarna_stepup::StepUp;

const LIMIT: Duration = Duration::from_secs(10);

/// Fixtures whose Klarna answer the engine reads and then keeps: unmarked on the pipeline,
/// as the rewritten ones.
const KEPT: [&str; 3] = [
    "html_answer",
    "unknown_result",
    "untrusted_payment_request_url",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_recipe_runs_the_whole_fixture_table() {
    let up = upstream::start().await;
    let mut proxies = std::collections::HashMap::new();
    let mut cut_short = 0;
    for f in fixtures::all() {
        let proxy = *proxies.entry(f.config.clone()).or_insert_with(|| {
            start_pingora(Recipe {
                step_up: StepUpPhases::new(StepUp::from_toml(&f.config).unwrap()),
                upstream: up.addr,
            })
        });
        up.set_answer(Answer::of(&f));
        up.take_received();
        let n = &f.name;
        let upstream_status = f.upstream.as_ref().map(|u| u.status);
        if f.expect.marker.as_deref() == Some("rewritten")
            && upstream_status != Some(f.expect.status)
        {
            let headers: Vec<(&str, &str)> = f
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let res = raw_request(
                proxy,
                &f.method,
                &f.path,
                &headers,
                ReqBody::Length(&f.body),
                LIMIT,
            )
            .await;
            // Nothing at all, a truncated answer, or the proxy's own error: never the block.
            if let Ok(res) = &res {
                assert!(res.status >= 500, "{n}: {res:?}");
                assert_ne!(
                    res.body, f.expect.body,
                    "{n}: the block under another status"
                );
            }
            let seen = up.take_received();
            assert_eq!(seen[0].body, f.forwarded_body().unwrap(), "{n}: forwarded");
            cut_short += 1;
            continue;
        }
        let res = send_fixture(proxy, &f, &[], LIMIT).await;
        let seen = up.take_received();

        assert_eq!(res.status, f.expect.status, "{n}: status");
        assert_eq!(
            String::from_utf8_lossy(&res.body),
            String::from_utf8_lossy(&f.expect.body),
            "{n}: body"
        );
        let marker = match f.expect.marker.as_deref() {
            Some("rewritten") => None,
            _ if KEPT.contains(&n.as_str()) => None,
            marker => marker,
        };
        assert_eq!(res.header("x-klarna-stepup"), marker, "{n}: marker");
        match &f.forwarded {
            Forwarded::None => assert!(seen.is_empty(), "{n}: upstream contacted"),
            _ => assert_eq!(seen[0].body, f.forwarded_body().unwrap(), "{n}: forwarded"),
        }
    }
    assert!(
        cut_short >= 3,
        "the fixtures with a configured status: {cut_short}"
    );
}
