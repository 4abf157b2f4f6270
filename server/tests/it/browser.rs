//! End to end in a real browser: Debian's Chromium, headless, driven over WebDriver by
//! chromedriver. The shop (through the step-up proxy) → Pay → Klarna's purchase journey →
//! Approve, Decline or Cancel → back to the shop's confirmation page, which must show the final
//! state; also with Klarna's webhook delayed, with the return lost, and with a forged return;
//! and from there the order's timeline, for a step-up order and an order approved at once.
//!
//! Needs `chromium` and `chromedriver` (Debian packages `chromium`, `chromium-driver`;
//! `./x test` installs them). Without them the tests print a SKIP
//! line and pass, unless `CI` is set: then they fail. Screenshots of the purchase journey and
//! of the confirmation page (`approve-journey.png`, `approve.png`, …) and of the timelines
//! (`timeline-step-up.png`, `timeline-approved-at-once.png`, the whole page) go to
//! `$CARGO_TARGET_DIR/browser-screenshots/` (default `target/browser-screenshots/`); each
//! test prints its screenshot's path.
//!
//! ```sh
//! cargo test -p klarna-stepup-server --test it browser::
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::ports::free_addr;
use crate::support::demo_stack::{check_timeline, DemoStack, Timeline};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// Whole journey, from opening the shop to the final state on the confirmation page.
const JOURNEY_TIMEOUT: Duration = Duration::from_secs(40);
/// One step: a page to load, an element to appear.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// From the confirmation page's first paint to the final state.
const FINAL_STATE_TIMEOUT: Duration = Duration::from_secs(15);

/// One browser at a time: they are heavy for a small CI machine, and a failure is easier to
/// read alone.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn pay_approve_in_the_purchase_journey_shows_authorized() {
    journey_test(Choice::Approve).await;
}

#[tokio::test]
async fn pay_decline_in_the_purchase_journey_shows_declined() {
    journey_test(Choice::Decline).await;
}

/// Klarna's webhook comes a minute late: the confirmation page shows the outcome from the
/// return alone (the layer's notification let the payment API finalize first).
#[tokio::test]
async fn approve_with_the_webhook_delayed_shows_authorized_from_the_return_alone() {
    journey_test(Choice::ApproveWebhookDelayed).await;
}

/// The customer never comes back through the return URL (an app switch, a closed tab): the
/// webhook alone completes the order the confirmation page then shows.
#[tokio::test]
async fn approve_with_the_return_lost_is_completed_by_the_webhook() {
    journey_test(Choice::ApproveReturnLost).await;
}

#[tokio::test]
async fn abort_in_the_purchase_journey_shows_canceled() {
    journey_test(Choice::Abort).await;
}

/// A declined payment's return link, its state edited to COMPLETED: the partner's page gets
/// the state the payment API confirmed, never the browser's claim.
#[tokio::test]
async fn a_forged_return_is_not_believed() {
    journey_test(Choice::ForgedReturn).await;
}

/// The confirmation page's link to the order's timeline, which shows each step of the
/// step-up flow: the partner's request, what reached the payment API (the injected
/// `step_up_config` marked), Klarna's `STEP_UP_REQUIRED`, the partner block with its redirect
/// URL, the return, the webhook, with times.
#[tokio::test]
async fn the_timeline_of_a_step_up_order_shows_every_step() {
    journey_test(Choice::Timeline(Timeline::StepUpApproved)).await;
}

/// The shop's "approved at once" choice: no purchase journey; the timeline shows the request,
/// the injected config, Klarna's `APPROVED` and the partner's `authorized` block, and no
/// return or webhook.
#[tokio::test]
async fn the_timeline_of_an_order_approved_at_once_shows_every_step() {
    journey_test(Choice::Timeline(Timeline::ApprovedAtOnce)).await;
}

#[derive(Clone, Copy, Debug)]
enum Choice {
    Approve,
    Decline,
    Abort,
    ApproveWebhookDelayed,
    ApproveReturnLost,
    ForgedReturn,
    /// The order (approved) and then its timeline.
    Timeline(Timeline),
}

impl Choice {
    /// The test's name, for screenshots.
    fn name(self) -> &'static str {
        match self {
            Choice::Approve => "approve",
            Choice::Decline => "decline",
            Choice::Abort => "abort",
            Choice::ApproveWebhookDelayed => "approve-webhook-delayed",
            Choice::ApproveReturnLost => "approve-return-lost",
            Choice::ForgedReturn => "forged-return",
            Choice::Timeline(Timeline::StepUpApproved) => "timeline-step-up",
            Choice::Timeline(Timeline::ApprovedAtOnce) => "timeline-approved-at-once",
        }
    }
    /// Id of the purchase journey's button the customer presses.
    fn button(self) -> &'static str {
        match self {
            Choice::Approve
            | Choice::ApproveWebhookDelayed
            | Choice::ApproveReturnLost
            | Choice::Timeline(_) => "approve",
            Choice::Decline | Choice::ForgedReturn => "decline",
            Choice::Abort => "cancel",
        }
    }
    /// The order's state the confirmation page must show, and the return URL must carry
    /// (the state the payment API confirmed).
    fn order_state(self) -> &'static str {
        match self {
            Choice::Approve
            | Choice::ApproveWebhookDelayed
            | Choice::ApproveReturnLost
            | Choice::Timeline(_) => "AUTHORIZED",
            Choice::Decline | Choice::ForgedReturn => "DECLINED",
            Choice::Abort => "CANCELED",
        }
    }
}

/// The customer's button pressed by the test itself, not the browser: the return link
/// Klarna answers with (not followed).
async fn press_outside_the_browser(journey_url: &str, action: &str) -> Result<String, String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::post(journey_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(bytes::Bytes::from(format!(
            "action={action}&phone=%2B15555550199"
        ))))
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let location = res
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("pressing {action}: {} without a Location", res.status()))?;
    let _ = res.into_body().collect().await;
    Ok(location)
}

/// The partner's URL signed inside a return link (the token carries it in clear bytes).
fn partner_url_in(return_link: &str) -> Result<String, String> {
    use base64::Engine as _;
    let token = return_link
        .split("/klarna/return/")
        .nth(1)
        .and_then(|t| t.split('?').next())
        .ok_or_else(|| format!("no token in {return_link}"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&bytes);
    let start = text.find("http").ok_or("no URL in the token")?;
    let url: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_graphic())
        .collect();
    Ok(url)
}

async fn journey_test(choice: Choice) {
    let _one_at_a_time = SERIAL.lock().await;
    let name = choice.name();
    let Some(tools) = tools_or_skip(name) else {
        return;
    };
    let started = Instant::now();
    let stack = crate::support::demo_stack::start_binary().await;
    if let Choice::ApproveWebhookDelayed = choice {
        stack.klarna.set_webhook_delay(Duration::from_secs(60));
    }
    let driver = ChromeDriver::start(&tools).await;
    let client = driver.session(&tools).await;

    let outcome = tokio::time::timeout(JOURNEY_TIMEOUT, journey(&client, &stack, choice))
        .await
        .unwrap_or_else(|_| Err(format!("the journey took longer than {JOURNEY_TIMEOUT:?}")));
    let shot = if outcome.is_ok() {
        // A passing run clears the failure picture of an earlier one.
        let _ = std::fs::remove_file(screenshot_dir().join(format!("{name}-failure.png")));
        name.to_owned()
    } else {
        format!("{name}-failure")
    };
    let shot = screenshot(&client, &shot).await;
    let diagnostics = match &outcome {
        Ok(()) => String::new(),
        Err(_) => page_diagnostics(&client).await,
    };
    let _ = client.close().await;
    let driver_log = driver.log_tail();
    drop(driver);

    if let Err(error) = outcome {
        panic!(
            "{name}: {error}\nscreenshot: {shot}\n{diagnostics}\nchromedriver log (tail):\n{driver_log}"
        );
    }
    // Straight to stderr, past the harness's capture: the path is shown on every run.
    let _ = writeln!(
        std::io::stderr(),
        "{name}: passed in {:.1?}, screenshot {shot}",
        started.elapsed()
    );
}

/// Shop → Pay → purchase journey → `choice` → confirmation page with the final state.
async fn journey(client: &Client, stack: &DemoStack, choice: Choice) -> Result<(), String> {
    client
        .goto(&stack.shop_url)
        .await
        .map_err(|e| format!("open the shop at {}: {e}", stack.shop_url))?;
    let pay = wait_for(client, Locator::Id("pay"), "the shop's Pay button").await?;
    let price = text_of(client, "price").await?;
    if price != "118.00 USD" {
        return Err(format!("shop price: got {price:?}"));
    }
    if let Choice::Timeline(kind) = choice {
        let option = format!("#scenario option[value='{}']", kind.scenario());
        client
            .find(Locator::Css(&option))
            .await
            .map_err(|e| format!("find {option}: {e}"))?
            .click()
            .await
            .map_err(|e| format!("choose the sandbox's outcome: {e}"))?;
    }
    pay.click().await.map_err(|e| format!("click Pay: {e}"))?;
    if !matches!(choice, Choice::Timeline(Timeline::ApprovedAtOnce)) {
        purchase_journey(client, stack, choice).await?;
    }
    confirmation(client, stack, choice).await?;
    if let Choice::Timeline(kind) = choice {
        timeline(client, stack, kind).await?;
    }
    Ok(())
}

/// The purchase journey the shop sent the customer to, and the customer's `choice` there.
async fn purchase_journey(
    client: &Client,
    stack: &DemoStack,
    choice: Choice,
) -> Result<(), String> {
    // The shop created the payment through the proxy and sent the browser to `redirect_url`.
    let phone = match wait_for(client, Locator::Id("phone"), "the purchase journey page").await {
        Ok(phone) => phone,
        // The shop shows why it did not redirect.
        Err(e) => {
            let shop_error = text_of(client, "error").await.unwrap_or_default();
            return Err(format!("{e}; the shop says: {shop_error:?}"));
        }
    };
    let url = current_url(client).await?;
    let journey_prefix = format!("{}/pay/", stack.klarna_url);
    if !url.starts_with(&journey_prefix) {
        return Err(format!(
            "expected the purchase journey under {journey_prefix}, got {url}"
        ));
    }
    let amount = text_of(client, "amount").await?;
    if amount != "118.00 USD" {
        return Err(format!("purchase journey amount: got {amount:?}"));
    }
    phone
        .send_keys("+1 555 010 0199")
        .await
        .map_err(|e| format!("type the phone number: {e}"))?;
    screenshot(client, &format!("{}-journey", choice.name())).await;
    match choice {
        Choice::ApproveReturnLost => {
            // The customer approves and never comes back: the confirmation page is opened
            // by hand later, and only the webhook can tell the payment API.
            let link = press_outside_the_browser(&url, choice.button()).await?;
            let partner = partner_url_in(&link)?;
            let reference_only = partner.split('&').next().unwrap_or(&partner).to_owned();
            client
                .goto(&reference_only)
                .await
                .map_err(|e| format!("open {reference_only}: {e}"))?;
        }
        Choice::ForgedReturn => {
            // The customer declines, then edits the return link's state before opening it.
            let link = press_outside_the_browser(&url, choice.button()).await?;
            if !link.contains("state=DECLINED") {
                return Err(format!(
                    "the return link should carry state=DECLINED: {link}"
                ));
            }
            let forged = link.replace("state=DECLINED", "state=COMPLETED");
            client
                .goto(&forged)
                .await
                .map_err(|e| format!("open the forged return link: {e}"))?;
        }
        _ => client
            .find(Locator::Id(choice.button()))
            .await
            .map_err(|e| format!("find #{}: {e}", choice.button()))?
            .click()
            .await
            .map_err(|e| format!("click #{}: {e}", choice.button()))?,
    }
    Ok(())
}

/// The shop's confirmation page, reached through the return (or straight from the shop when
/// Klarna decided at once), showing the order's final state.
async fn confirmation(client: &Client, stack: &DemoStack, choice: Choice) -> Result<(), String> {
    // Klarna answers 303 to the return URL: the shop's confirmation page, through the proxy.
    let confirmation_prefix = format!("{}/shop/confirmation?", stack.proxy_url);
    let url = poll(
        STEP_TIMEOUT,
        "the redirect to the confirmation page",
        || async {
            let url = current_url(client).await?;
            Ok(url.starts_with(&confirmation_prefix).then_some(url))
        },
    )
    .await?;
    // Through the return, the partner's page is told the state the payment API confirmed.
    let expected_param = format!("state={}", choice.order_state());
    let return_skipped = matches!(
        choice,
        Choice::ApproveReturnLost | Choice::Timeline(Timeline::ApprovedAtOnce)
    );
    if !return_skipped && !url.contains(&expected_param) {
        return Err(format!(
            "the return URL should carry {expected_param}: {url}"
        ));
    }

    let want = choice.order_state();
    let shown = poll(
        FINAL_STATE_TIMEOUT,
        &format!("#state to show {want}"),
        || async {
            let shown = text_of(client, "state").await?;
            match shown.as_str() {
                s if s == want => Ok(Some(shown)),
                "AUTHORIZED" | "DECLINED" | "EXPIRED" | "CANCELED" | "FAILED" => Err(format!(
                    "the confirmation page shows {shown}, expected {want}"
                )),
                _ => Ok(None),
            }
        },
    )
    .await?;

    // The page's state is the payment API's record of the order.
    let reference = text_of(client, "reference").await?;
    let recorded = stack.order_state(&reference).await;
    if recorded.as_deref() != Some(shown.as_str()) {
        return Err(format!(
            "order {reference:?}: page shows {shown}, payment API has {recorded:?}"
        ));
    }
    Ok(())
}

/// From the confirmation page, the order's timeline: reloaded until it shows every step of
/// `kind` (webhooks come a second or so after the customer); then the window is made as tall
/// as the page, for a screenshot of all of it.
async fn timeline(client: &Client, stack: &DemoStack, kind: Timeline) -> Result<(), String> {
    wait_for(
        client,
        Locator::Id("timeline"),
        "the link to the order's timeline",
    )
    .await?
    .click()
    .await
    .map_err(|e| format!("click #timeline: {e}"))?;
    let last = std::cell::RefCell::new(String::new());
    poll(FINAL_STATE_TIMEOUT, "every step on the timeline", || {
        let last = &last;
        async move {
            let page = client
                .source()
                .await
                .map_err(|e| format!("read the page: {e}"))?;
            if !page.contains(r#"<ol class="timeline">"#) {
                *last.borrow_mut() = "not the timeline page yet".into();
                return Ok(None);
            }
            if let Err(e) = check_timeline(&page, kind, &stack.klarna_url) {
                *last.borrow_mut() = e;
                client
                    .refresh()
                    .await
                    .map_err(|e| format!("reload the timeline: {e}"))?;
                return Ok(None);
            }
            Ok(Some(()))
        }
    })
    .await
    .map_err(|e| format!("{e} (last: {})", last.borrow()))?;
    let height = client
        .execute("return document.documentElement.scrollHeight", Vec::new())
        .await
        .ok()
        .and_then(|h| h.as_u64())
        .unwrap_or(768);
    client
        .set_window_size(
            1024,
            u32::try_from(height.clamp(768, 6000)).unwrap_or(768) + 200,
        )
        .await
        .map_err(|e| format!("resize the window to the page: {e}"))
}

async fn wait_for(
    client: &Client,
    locator: Locator<'_>,
    what: &str,
) -> Result<fantoccini::elements::Element, String> {
    // Every error is retried until the deadline, not only "no such element": a lookup
    // made while the page navigates (the shop's script follows `redirect_url`) fails with
    // chromedriver's "aborted by navigation", and the next one finds the new page.
    let last = std::cell::RefCell::new(String::new());
    poll(STEP_TIMEOUT, what, || {
        let last = &last;
        async move {
            match client.find(locator).await {
                Ok(element) => Ok(Some(element)),
                Err(e) => {
                    *last.borrow_mut() = e.to_string();
                    Ok(None)
                }
            }
        }
    })
    .await
    .map_err(|e| format!("{e} (last lookup: {})", last.borrow()))
}

async fn text_of(client: &Client, id: &str) -> Result<String, String> {
    client
        .find(Locator::Id(id))
        .await
        .map_err(|e| format!("find #{id}: {e}"))?
        .text()
        .await
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("read #{id}: {e}"))
}

async fn current_url(client: &Client) -> Result<String, String> {
    client
        .current_url()
        .await
        .map(|u| u.to_string())
        .map_err(|e| format!("read the current URL: {e}"))
}

/// Calls `check` every 100 ms until it gives a value, fails, or `timeout` passes.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a PNG of the current page; returns its path, or why there is none.
async fn screenshot(client: &Client, name: &str) -> String {
    let dir = screenshot_dir();
    let path = dir.join(format!("{name}.png"));
    let png = match client.screenshot().await {
        Ok(png) => png,
        Err(e) => return format!("(none: {e})"),
    };
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, png)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(none: write {}: {e})", path.display()),
    }
}

/// Under the workspace's target directory (this crate is a member one level down).
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("browser-screenshots")
}

/// The current URL and the start of the page's body text, for a failure message.
async fn page_diagnostics(client: &Client) -> String {
    let url = current_url(client).await.unwrap_or_else(|e| e);
    let text = match client.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_else(|e| e.to_string()),
        Err(e) => e.to_string(),
    };
    let text: String = text.chars().take(1500).collect();
    format!("page: {url}\npage text:\n{text}")
}

// ─── The browser ────────────────────────────────────────────────────────────────────────

struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// The browser and its driver, or `None` after a SKIP line when they are missing outside CI.
fn tools_or_skip(test: &str) -> Option<Tools> {
    let chromium = find_program(&["chromium", "chromium-browser"]);
    let chromedriver = find_program(&["chromedriver"]);
    let missing: Vec<&str> = [("chromium", &chromium), ("chromedriver", &chromedriver)]
        .into_iter()
        .filter(|(_, found)| found.is_none())
        .map(|(name, _)| name)
        .collect();
    if missing.is_empty() {
        return Some(Tools {
            chromium: chromium?,
            chromedriver: chromedriver?,
        });
    }
    let missing = missing.join(" and ");
    if in_ci() {
        panic!(
            "{test}: {missing} not found, and CI is set: install them with \
             ./x test (it installs the Debian packages chromium and chromium-driver)"
        );
    }
    // Straight to stderr: the test harness does not capture this, so the skip is visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP browser test {test}: {missing} not found (./x test installs them)"
    );
    None
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// The first of `names` found on `PATH`, as an executable file.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A chromedriver child process on a free loopback port, with a fresh profile directory for
/// Chromium. Dropping it kills the driver and removes the directory.
struct ChromeDriver {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl ChromeDriver {
    async fn start(tools: &Tools) -> Self {
        let dir = fresh_dir();
        let port = free_addr().port();
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tools.chromedriver.display()));
        let mut driver = ChromeDriver { child, port, dir };
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return driver;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited at start ({status}); log:\n{}",
                    driver.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver did not listen on 127.0.0.1:{port} within {STEP_TIMEOUT:?}; log:\n{}",
                    driver.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A WebDriver session with a headless Chromium of its own.
    async fn session(&self, tools: &Tools) -> Client {
        let profile = self.dir.join("profile");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--window-size=1024,768",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "start headless {} through chromedriver: {e}\nchromedriver log (tail):\n{}",
                    tools.chromium.display(),
                    self.log_tail()
                )
            })
    }

    /// The last lines of chromedriver's log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new, empty directory under the system's temporary directory.
fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "klarna-stepup-browser-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}
