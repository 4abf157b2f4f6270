//! The demo's record of each order's flow, and the pages that show it
//! (`GET /demo/orders`, `GET /demo/orders/{reference}` of the demo payment API).
//!
//! Each part of the demo writes down, on its own side, what it sent and what it got: the shop
//! (the partner) its request and the partner block it got back, and the customer's arrival on
//! its confirmation page; the payment API what reached it, Klarna's answers and the layer's
//! return notification; the Klarna sandbox each webhook it sent and how it was answered. The
//! step-up layer records nothing: it logs no bodies. A [`Journal`] keeps these steps in
//! memory only, for the last orders (see [`Journal::new`]), each body cut at 8 KiB and every
//! token shortened.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{html_escape, lock};

/// How much of one body a step keeps.
const MAX_PART_BYTES: usize = 8 * 1024;
/// How many steps one order (or one Payment Request's webhooks) keeps.
const MAX_STEPS: usize = 32;
/// Above this many line pairs the diff is not computed (bodies are cut at 8 KiB anyway).
const MAX_DIFF_CELLS: usize = 400 * 400;

/// The shared, bounded record of the demo's orders; cheap to clone. The demo backends share
/// one ([`crate::start_demo_backends`]); the payment API serves it as pages.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Mutex<Entries>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("max_orders", &lock(&self.shared).max_orders)
            .finish_non_exhaustive()
    }
}

struct Entries {
    max_orders: usize,
    steps: HashMap<Subject, Vec<Step>>,
    /// Oldest first.
    subjects: VecDeque<Subject>,
}

/// Whose steps these are: an order of the payment API (by its reference), or a Payment
/// Request of the sandbox (by its id: the sandbox does not know the order).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subject {
    Order(String),
    PaymentRequest(String),
}

impl Journal {
    /// A journal that keeps the steps of about the last `max_orders` orders: at most twice
    /// that many entries, orders and the sandbox's Payment Requests (their webhooks), each
    /// of at most 32 steps; the oldest entries are forgotten first.
    pub fn new(max_orders: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Entries {
                max_orders: max_orders.max(1),
                steps: HashMap::new(),
                subjects: VecDeque::new(),
            })),
        }
    }

    /// Adds `step` to `subject`'s steps, starting them if new.
    pub(crate) fn record(&self, subject: Subject, step: Step) {
        let mut entries = lock(&self.shared);
        if !entries.steps.contains_key(&subject) {
            entries.subjects.push_back(subject.clone());
            while entries.subjects.len() > entries.max_orders * 2 {
                if let Some(oldest) = entries.subjects.pop_front() {
                    entries.steps.remove(&oldest);
                }
            }
        }
        let steps = entries.steps.entry(subject).or_default();
        if steps.len() < MAX_STEPS {
            steps.push(step);
        }
    }

    /// Adds `step` to `subject`'s steps only if the journal has some already (a page anyone
    /// can open must not start new entries).
    pub(crate) fn append(&self, subject: Subject, step: Step) {
        if lock(&self.shared).steps.contains_key(&subject) {
            self.record(subject, step);
        }
    }

    /// The steps of `subjects`, merged, earliest first.
    pub(crate) fn steps(&self, subjects: &[Subject]) -> Vec<Step> {
        let entries = lock(&self.shared);
        let mut steps: Vec<Step> = subjects
            .iter()
            .filter_map(|s| entries.steps.get(s))
            .flatten()
            .cloned()
            .collect();
        steps.sort_by_key(|s| s.at);
        steps
    }

    /// The references of the recorded orders with their first step's time, newest first.
    pub(crate) fn orders(&self) -> Vec<(String, SystemTime)> {
        let entries = lock(&self.shared);
        entries
            .subjects
            .iter()
            .rev()
            .filter_map(|subject| match subject {
                Subject::Order(reference) => {
                    let first = entries.steps.get(subject)?.iter().map(|s| s.at).min()?;
                    Some((reference.clone(), first))
                }
                Subject::PaymentRequest(_) => None,
            })
            .collect()
    }
}

/// What a step is; each is shown with its own title, route and colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The shop's `POST /payments`, as it sent it.
    PartnerRequest,
    /// That request as it reached the payment API (after the layer).
    ReachedApi,
    /// Klarna's answer to the payment API's first authorize call.
    KlarnaAnswer,
    /// What the shop got back.
    PartnerBlock,
    /// The customer in Klarna's purchase journey.
    Journey,
    /// The layer's return notification to the payment API.
    Return,
    /// Klarna's answer to the authorize call with the token.
    FinalAuthorize,
    /// The customer on the shop's confirmation page.
    CustomerBack,
    /// A webhook the sandbox sent.
    Webhook,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::PartnerRequest => "partner-request",
            Kind::ReachedApi => "reached-api",
            Kind::KlarnaAnswer => "klarna-answer",
            Kind::PartnerBlock => "partner-block",
            Kind::Journey => "journey",
            Kind::Return => "return",
            Kind::FinalAuthorize => "final-authorize",
            Kind::CustomerBack => "customer-back",
            Kind::Webhook => "webhook",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::PartnerRequest => "Partner's request",
            Kind::ReachedApi => "What reached the payment API",
            Kind::KlarnaAnswer => "Klarna's answer",
            Kind::PartnerBlock => "Partner block",
            Kind::Journey => "Customer at Klarna",
            Kind::Return => "Customer's return",
            Kind::FinalAuthorize => "Final authorize",
            Kind::CustomerBack => "Customer back at the shop",
            Kind::Webhook => "Webhook",
        }
    }

    /// Who talks to whom, and how.
    fn route(self) -> &'static str {
        match self {
            Kind::PartnerRequest => "shop → klarna-stepup · POST /payments",
            Kind::ReachedApi => "klarna-stepup → payment API · POST /payments",
            Kind::KlarnaAnswer => "Klarna → payment API · authorize",
            Kind::PartnerBlock => "klarna-stepup → shop · answer to POST /payments",
            Kind::Journey => "customer → Klarna · the purchase journey (redirect_url)",
            Kind::Return => "customer → klarna-stepup → payment API · POST /payments/klarna-return",
            Kind::FinalAuthorize => "Klarna → payment API · authorize with the token",
            Kind::CustomerBack => "customer → klarna-stepup → shop · GET /shop/confirmation",
            Kind::Webhook => "Klarna → klarna-stepup → payment API · POST /klarna/webhooks",
        }
    }

    /// Whose side it is on, for the colour: the partner, the acquirer, Klarna.
    fn side(self) -> &'static str {
        match self {
            Kind::PartnerRequest | Kind::PartnerBlock | Kind::CustomerBack => "partner",
            Kind::ReachedApi | Kind::Return => "acquirer",
            Kind::KlarnaAnswer | Kind::Journey | Kind::FinalAuthorize | Kind::Webhook => "klarna",
        }
    }
}

/// One thing that happened, as one part of the demo saw it.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    kind: Kind,
    at: SystemTime,
    took: Option<Duration>,
    /// HTML: what came from a message is escaped by whoever made the step.
    summary: String,
    /// Bodies, each with what it is; shown folded, but the first of a
    /// [`Kind::ReachedApi`] step is shown as a diff against the partner's request.
    parts: Vec<(&'static str, String)>,
}

impl Step {
    /// A step of `kind` that happened at `at` (a message sent or received), with a one-line
    /// `summary` in HTML (escape what comes from a message; `<strong>` marks what matters).
    pub(crate) fn new(kind: Kind, at: SystemTime, summary: impl Into<String>) -> Self {
        Self {
            kind,
            at,
            took: None,
            summary: summary.into(),
            parts: Vec::new(),
        }
    }

    /// How long the exchange took (from the request sent to the answer received).
    pub(crate) fn took(mut self, took: Duration) -> Self {
        self.took = Some(took);
        self
    }

    /// Adds a body: pretty-printed when it is JSON, tokens shortened, cut at 8 KiB.
    pub(crate) fn part(mut self, label: &'static str, body: &[u8]) -> Self {
        self.parts.push((label, readable(body)));
        self
    }
}

/// `body` for a person: JSON pretty-printed with every `…token…` value shortened, else the
/// text as is; at most [`MAX_PART_BYTES`].
fn readable(body: &[u8]) -> String {
    let mut text = match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            shorten_tokens(&mut value);
            serde_json::to_string_pretty(&value).unwrap_or_default()
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    if text.len() > MAX_PART_BYTES {
        let mut cut = MAX_PART_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut at 8 KiB)");
    }
    text
}

/// Shortens every string under a key that names a token to its first 6 characters and `…`.
fn shorten_tokens(value: &mut Value) {
    match value {
        Value::Object(members) => {
            for (key, member) in members.iter_mut() {
                match member {
                    Value::String(token) if key.to_ascii_lowercase().contains("token") => {
                        if token.chars().count() > 6 {
                            *token = token.chars().take(6).chain(['…']).collect();
                        }
                    }
                    member => shorten_tokens(member),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_tokens),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Pages

const STYLE: &str = r#"<style>
body { font-family: system-ui, sans-serif; background: #f6f6f4; margin: 0; color: #222; }
main { max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; }
.meta { color: #555; margin-top: 0; }
.legend span { display: inline-block; padding: .1rem .5rem; border-left: 5px solid; border-radius: .3rem; margin-right: .4rem; font-size: .85rem; }
ol.timeline { list-style: none; padding: 0; margin: 1.5rem 0; border-left: 3px solid #ddd; }
li.step { display: grid; grid-template-columns: 7.5rem minmax(0, 1fr); gap: .8rem; margin: 0 0 .8rem -3px; }
.when { text-align: right; font-variant-numeric: tabular-nums; padding-top: .7rem; }
.when .offset { display: block; font-weight: bold; }
.when time { color: #777; font-size: .8rem; }
.card { background: #fff; border-radius: .5rem; padding: .6rem .9rem; box-shadow: 0 1px 3px #0002; border-left: 5px solid #999; }
.side-partner .card, .legend .side-partner { border-color: #3b7dd8; background-color: #f3f8ff; }
.side-acquirer .card, .legend .side-acquirer { border-color: #e08a1e; background-color: #fff8ef; }
.side-klarna .card, .legend .side-klarna { border-color: #e0689a; background-color: #fff3f7; }
.card h2 { font-size: 1.05rem; margin: 0; }
.route { color: #666; font-size: .85rem; margin: .1rem 0 .3rem; }
.summary { margin: .3rem 0; }
.summary strong { background: #ffe9a8; padding: 0 .25rem; border-radius: .2rem; }
.took { float: right; color: #444; font-size: .85rem; font-variant-numeric: tabular-nums; }
pre { background: #fafafa; border: 1px solid #eee; padding: .5rem; white-space: pre-wrap; overflow-wrap: anywhere; font-size: .8rem; margin: .3rem 0; }
pre.diff { background: #fff; }
pre.diff ins { display: block; text-decoration: none; background: #d9f7d9; color: #0a5d0a; font-weight: bold; }
pre.diff del { display: block; text-decoration: none; background: #fbdada; color: #8a1010; }
pre.diff span { display: block; color: #777; }
details summary { cursor: pointer; color: #555; font-size: .85rem; }
table { border-collapse: collapse; background: #fff; width: 100%; }
td, th { text-align: left; padding: .4rem .7rem; border-bottom: 1px solid #eee; }
.empty, .note { color: #777; }
</style>"#;

fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · klarna-stepup demo</title>{STYLE}</head>
<body><main>
{body}
</main></body></html>
"#,
        title = html_escape(title)
    )
}

/// `GET /demo/orders`: the recorded orders, newest first, with their state (`state_of`).
pub(crate) fn index_page(
    orders: &[(String, SystemTime)],
    state_of: impl Fn(&str) -> Option<String>,
) -> String {
    let mut body = String::from(
        r#"<h1>Orders</h1>
<p class="meta">What each order went through, step by step: the last orders made through the demo, kept in memory only. <a href="/shop">Back to the shop</a></p>
"#,
    );
    if orders.is_empty() {
        body.push_str(r#"<p class="empty" id="no-orders">No orders yet: pay in the <a href="/shop">shop</a>.</p>"#);
        return page("Orders", &body);
    }
    body.push_str(
        "<table id=\"orders\"><tr><th>Order</th><th>Started (UTC)</th><th>Payment</th></tr>\n",
    );
    for (reference, started) in orders {
        let _ = writeln!(
            body,
            r#"<tr><td><a href="{href}">{reference}</a></td><td>{started}</td><td>{state}</td></tr>"#,
            href = order_href(reference),
            reference = html_escape(reference),
            started = clock_time(*started),
            state = html_escape(&state_of(reference).unwrap_or_default()),
        );
    }
    body.push_str("</table>");
    page("Orders", &body)
}

/// Where an order's timeline is.
pub(crate) fn order_href(reference: &str) -> String {
    format!("/demo/orders/{}", crate::percent_encode(reference))
}

/// `GET /demo/orders/{reference}`: the order's steps, earliest first.
pub(crate) fn order_page(reference: &str, state: Option<&str>, steps: &[Step]) -> String {
    let mut body = format!(
        r#"<h1>Order <code id="reference">{reference}</code></h1>
<p class="meta">Payment: <strong id="state">{state}</strong>{span} · <a href="/demo/orders">all orders</a> · <a href="/shop">shop</a></p>
<p class="legend"><span class="side-partner">partner (the shop)</span><span class="side-acquirer">acquirer (klarna-stepup and the payment API)</span><span class="side-klarna">Klarna</span></p>
"#,
        reference = html_escape(reference),
        state = html_escape(state.unwrap_or("unknown")),
        span = match (steps.first(), steps.last()) {
            (Some(first), Some(last)) if steps.len() > 1 => format!(
                " · {} steps over {}",
                steps.len(),
                duration(last.at.duration_since(first.at).unwrap_or_default())
            ),
            _ => String::new(),
        },
    );
    if steps.is_empty() {
        body.push_str(r#"<p class="empty">Nothing recorded for this order (made before the demo started, or forgotten: only the last orders are kept).</p>"#);
        return page(&format!("Order {reference}"), &body);
    }
    let sent = steps
        .iter()
        .find(|s| s.kind == Kind::PartnerRequest)
        .and_then(|s| s.parts.first())
        .map(|(_, text)| text.as_str());
    body.push_str("<ol class=\"timeline\">\n");
    let start = steps[0].at;
    for (n, step) in steps.iter().enumerate() {
        let _ = write!(
            body,
            r#"<li class="step step-{class} side-{side}" id="step-{n}">
<div class="when"><span class="offset">+{offset}</span><time>{time}</time></div>
<div class="card">{took}<h2>{title}</h2>
<p class="route">{route}</p>
<p class="summary">{summary}</p>
"#,
            class = step.kind.class(),
            side = step.kind.side(),
            n = n + 1,
            offset = duration(step.at.duration_since(start).unwrap_or_default()),
            time = clock_time(step.at),
            took = step
                .took
                .map(|t| format!(r#"<span class="took">took {}</span>"#, duration(t)))
                .unwrap_or_default(),
            title = step.kind.title(),
            route = html_escape(step.kind.route()),
            summary = step.summary,
        );
        for (i, (label, text)) in step.parts.iter().enumerate() {
            if i == 0 && step.kind == Kind::ReachedApi {
                match sent {
                    Some(sent) => body.push_str(&diff_block(sent, text)),
                    None => body.push_str(
                        r#"<p class="note">The partner's request was not sent by the demo shop: there is nothing to compare with.</p>"#,
                    ),
                }
            }
            let _ = writeln!(
                body,
                "<details><summary>{label}</summary><pre>{}</pre></details>",
                html_escape(text)
            );
        }
        body.push_str("</div></li>\n");
    }
    body.push_str("</ol>\n");
    let customer_at_klarna = steps
        .iter()
        .any(|s| matches!(s.kind, Kind::Journey | Kind::Return | Kind::Webhook));
    if !customer_at_klarna && matches!(state, Some("AUTHORIZED" | "DECLINED")) {
        body.push_str(r#"<p class="meta" id="no-step-up">Klarna decided at once: no step-up, so no purchase journey, no return and no webhook.</p>"#);
    } else {
        body.push_str(r#"<p class="meta">Webhooks follow a second or so after each change of the Payment Request: reload to see them.</p>"#);
    }
    page(&format!("Order {reference}"), &body)
}

/// What the layer changed, line by line: `<ins>` what it added, `<del>` what it removed.
fn diff_block(old: &str, new: &str) -> String {
    let lines = line_diff(old, new);
    if lines
        .as_ref()
        .is_some_and(|lines| lines.iter().all(|(change, _)| *change == Change::Same))
    {
        return "<p class=\"diff-title\" id=\"unchanged\">The same as the partner's request: nothing added or removed.</p>\n".into();
    }
    let mut out = String::from(
        "<p class=\"diff-title\">Against the partner's request (<ins>+ added</ins> by klarna-stepup, <del>- removed</del>):</p>\n<pre class=\"diff\" id=\"diff\">",
    );
    match lines {
        Some(lines) => {
            for (change, line) in lines {
                let (tag, mark) = match change {
                    Change::Same => ("span", ' '),
                    Change::Added => ("ins", '+'),
                    Change::Removed => ("del", '-'),
                };
                let _ = write!(out, "<{tag}>{mark} {}</{tag}>", html_escape(line));
            }
        }
        None => out.push_str("(too long to compare)"),
    }
    out.push_str("</pre>\n");
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Same,
    Added,
    Removed,
}

/// A longest-common-subsequence diff of the lines of `old` and `new`, where a line that
/// differs only by its trailing comma (a member that is no longer the last) is the same,
/// shown as in `new`; `None` when they are too long.
fn line_diff<'a>(old: &'a str, new: &'a str) -> Option<Vec<(Change, &'a str)>> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let same = |i: usize, j: usize| a[i].trim_end_matches(',') == b[j].trim_end_matches(',');
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        return None;
    }
    // common[i][j]: the length of the longest common subsequence of a[i..] and b[j..].
    let mut common = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if same(i, j) {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut lines = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && same(i, j) {
            lines.push((Change::Same, b[j]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || common[i][j + 1] >= common[i + 1][j]) {
            lines.push((Change::Added, b[j]));
            j += 1;
        } else {
            lines.push((Change::Removed, a[i]));
            i += 1;
        }
    }
    Some(lines)
}

/// `12:03:44.120 UTC`.
fn clock_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second_of_day = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        since.subsec_millis()
    )
}

/// `0.4 ms`, `12 ms`, `1.25 s`.
fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_marks_what_was_added_and_removed() {
        let lines = line_diff(
            "{\n  \"a\": 1,\n  \"r\": 2,\n  \"u\": 3\n}",
            "{\n  \"a\": 1,\n  \"s\": {},\n  \"u\": 3,\n  \"v\": 4\n}",
        )
        .expect("short");
        assert_eq!(
            lines,
            vec![
                (Change::Same, "{"),
                (Change::Same, "  \"a\": 1,"),
                (Change::Added, "  \"s\": {},"),
                (Change::Removed, "  \"r\": 2,"),
                (Change::Same, "  \"u\": 3,"),
                (Change::Added, "  \"v\": 4"),
                (Change::Same, "}"),
            ]
        );
    }

    #[test]
    fn bodies_are_pretty_bounded_and_tokens_short() {
        let text = readable(br#"{"payload":{"klarna_network_session_token":"abcdef0123456789","state":"COMPLETED"}}"#);
        assert!(
            text.contains("\"klarna_network_session_token\": \"abcdef…\""),
            "{text}"
        );
        assert!(!text.contains("0123456789"), "{text}");
        let long = readable(&vec![b'x'; 20_000]);
        assert!(long.len() < MAX_PART_BYTES + 32 && long.ends_with("(cut at 8 KiB)"));
    }

    #[test]
    fn the_journal_keeps_the_last_orders_only() {
        let journal = Journal::new(2);
        let step = || Step::new(Kind::PartnerRequest, SystemTime::now(), "");
        for n in 0..6 {
            journal.record(Subject::Order(format!("o{n}")), step());
        }
        let kept: Vec<String> = journal.orders().into_iter().map(|(r, _)| r).collect();
        assert_eq!(kept, ["o5", "o4", "o3", "o2"]);
        journal.append(Subject::Order("unknown".into()), step());
        assert_eq!(journal.orders().len(), 4, "append starts nothing");
        for _ in 0..100 {
            journal.record(Subject::Order("o5".into()), step());
        }
        assert_eq!(
            journal.steps(&[Subject::Order("o5".into())]).len(),
            MAX_STEPS
        );
    }

    #[test]
    fn times_read_at_a_glance() {
        assert_eq!(duration(Duration::from_micros(400)), "0.4 ms");
        assert_eq!(duration(Duration::from_millis(12)), "12 ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(
            clock_time(UNIX_EPOCH + Duration::from_millis(86_400_000 + 3_723_045)),
            "01:02:03.045 UTC"
        );
    }
}
