//! The acquirer's own contract through the binary: the Paytrail-shaped fixtures, each result
//! under its configured status and key names, and `check-config` naming every key of the
//! block.

use crate::check_config::check_config;
use crate::common::blocking::{exchange, wait_listening};
use crate::common::fixtures;
use crate::common::upstream::{self, Answer};
use crate::support::binary::{free_addr, start_serve, stop_ok, write_config};

/// The Paytrail-shaped fixtures through the binary: each result under its configured status
/// and key names, and `check-config` naming every key of the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_in_the_acquirers_own_contract() {
    let up = upstream::start().await;
    let set = ["paytrail_step_up", "paytrail_approved", "paytrail_declined"].map(fixtures::by_name);
    assert!(
        set.iter().all(|f| f.config == set[0].config),
        "one configuration"
    );
    let listen = free_addr();
    let config = format!(
        "{}[server]\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
        set[0].config, up.addr
    );
    let printed =
        String::from_utf8(check_config(write_config("contract.toml", &config)).stdout).unwrap();
    for want in [
        "key_style = \"camelCase\"",
        "redirect_url = \"stepUpUrl\"",
        "payment_request_id = \"paymentRequestId\"",
        "result_reason = \"resultReason\"",
        "step_up_required = 403",
    ] {
        assert!(printed.contains(want), "missing {want:?} in\n{printed}");
    }
    let mut child = start_serve(&config);
    wait_listening(listen);
    for f in set {
        up.set_answer(Answer::of(&f));
        let (path, body) = (f.path.clone(), f.body.clone());
        let answer = tokio::task::spawn_blocking(move || {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            exchange(listen, &head, &body)
        })
        .await
        .unwrap();
        let (head, got) = answer.split_once("\r\n\r\n").unwrap();
        let status = format!("HTTP/1.1 {} ", f.expect.status);
        assert!(head.starts_with(&status), "{}: {head}", f.name);
        assert!(
            head.contains("x-klarna-stepup: rewritten"),
            "{}: {head}",
            f.name
        );
        assert_eq!(got.as_bytes(), f.expect.body, "{}", f.name);
        let seen = up.take_received();
        assert_eq!(
            seen[0].body,
            f.forwarded_body().unwrap(),
            "{}: forwarded",
            f.name
        );
    }
    stop_ok(&mut child, "-TERM");
}
