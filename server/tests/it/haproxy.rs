//! Three `klarna-stepup` instances with the same keys behind HAProxy (Debian's `haproxy`),
//! health-checked through `/readyz`, all on loopback, under a bounded load: a return token
//! minted by one instance is honoured by the others, a signed webhook relays through any, one
//! instance drained (SIGTERM) and restarted loses no request, one killed (SIGKILL) loses at
//! most its requests in flight. Skipped, with a notice, when `haproxy` is not installed
//! (`./x test` and `./x haproxy` install it). Run it alone: `./x haproxy`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::blocking::{exchange, wait_listening};
use crate::common::fixtures;
use crate::common::load::{self, Mode, Req};
use crate::common::ports::free_addr;
use crate::common::return_webhook::{signature, COMPLETED, RETURN_KEY, WEBHOOK_KEY};
use crate::common::upstream::{self, Answer};

const BIN: &str = env!("CARGO_BIN_EXE_klarna-stepup");

/// HAProxy's health checks: every 100 ms, down after 2 failures, up after 2 passes.
const CHECK: &str = "inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2";
/// Above the checks' interval × fall (200 ms), with room for a busy machine.
const DRAIN_DELAY_MS: u64 = 800;
const PARTNER_URL: &str = "https://shop.partner.example/done";

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("klarna-stepup-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        b"",
    )
}

/// `klarna_stepup_requests_total`, all outcomes, on an admin endpoint.
fn requests_total(admin: SocketAddr) -> u64 {
    get(admin, "/metrics")
        .lines()
        .filter(|l| l.starts_with("klarna_stepup_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

/// One proxy instance: its addresses, its config file, and its process (killed if the test
/// fails before stopping it).
struct Instance {
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    child: Option<std::process::Child>,
}

impl Instance {
    fn new(n: usize, upstream: SocketAddr) -> Instance {
        let (listen, admin) = (free_addr(), free_addr());
        let config = temp_dir().join(format!("instance-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[return_url_policy]
allowed_hosts = ["*.partner.example", "pay.acquirer.example"]

[acquirer_return]
enabled = true
public_base_url = "https://pay.acquirer.example"
keys = [{{ id = "r1", env = "KLARNA_STEPUP_RETURN_KEY" }}]

[webhooks]
enabled = true
keys = [{{ id = "a", env = "KLARNA_WEBHOOK_KEY_1" }}]

[server]
listen = "{listen}"
admin = "{admin}"
upstream = "{upstream}"
threads = 1
drain_delay_ms = {DRAIN_DELAY_MS}
"#
            ),
        )
        .unwrap();
        let mut i = Instance {
            listen,
            admin,
            config,
            child: None,
        };
        i.start();
        i
    }

    /// Starts the process (the same keys for every instance, from the environment).
    fn start(&mut self) {
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("KLARNA_STEPUP_RETURN_KEY", RETURN_KEY)
            .env("KLARNA_WEBHOOK_KEY_1", WEBHOOK_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_listening(self.listen);
        wait_listening(self.admin);
    }

    /// Sends `signal` to the process (by its PID) and waits for it to exit: its code.
    fn stop(&mut self, signal: &str) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let kill = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let t = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            assert!(t.elapsed() < Duration::from_secs(10), "did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// HAProxy in front of the instances, started as a daemon: stopped by the PID it wrote to
/// its `-p` file.
struct Haproxy {
    front: SocketAddr,
    pid: u32,
    stats: PathBuf,
}

impl Haproxy {
    fn start(instances: &[&Instance]) -> Haproxy {
        let dir = temp_dir();
        let front = free_addr();
        let servers: String = instances
            .iter()
            .enumerate()
            .map(|(n, i)| {
                format!(
                    "    server p{n} {} check addr 127.0.0.1 port {}\n",
                    i.listen,
                    i.admin.port()
                )
            })
            .collect();
        let cfg = dir.join("haproxy.cfg");
        let stats = dir.join("haproxy.sock");
        std::fs::write(
            &cfg,
            format!(
                "global\n\
                 \x20   maxconn 1000\n\
                 \x20   nbthread 1\n\
                 \x20   stats socket {} mode 600 level user\n\
                 defaults\n\
                 \x20   mode http\n\
                 \x20   timeout connect 1s\n\
                 \x20   timeout client 10s\n\
                 \x20   timeout server 10s\n\
                 \x20   retries 3\n\
                 \x20   option redispatch 1\n\
                 \x20   retry-on conn-failure empty-response response-timeout\n\
                 frontend partners\n\
                 \x20   bind {front}\n\
                 \x20   default_backend klarna_stepup\n\
                 backend klarna_stepup\n\
                 \x20   balance roundrobin\n\
                 \x20   option httpchk GET /readyz\n\
                 \x20   http-check expect status 200\n\
                 \x20   default-server {CHECK}\n\
                 {servers}",
                stats.display()
            ),
        )
        .unwrap();
        let pidfile = dir.join("haproxy.pid");
        let _ = std::fs::remove_file(&pidfile);
        let out = Command::new("haproxy")
            .args(["-D", "-q", "-f"])
            .arg(&cfg)
            .arg("-p")
            .arg(&pidfile)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "haproxy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = read_pid(&pidfile);
        wait_listening(front);
        Haproxy { front, pid, stats }
    }

    /// The backend's counters (`show stat`): requests retried on the same server
    /// (`wretr`), sent again to another one (`wredis`), connection errors (`econ`) and
    /// answer errors (`eresp`).
    fn backend_errors(&self) -> [u64; 4] {
        let mut s = std::os::unix::net::UnixStream::connect(&self.stats).unwrap();
        s.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        s.read_to_string(&mut csv).unwrap();
        let header: Vec<&str> = csv
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let row: Vec<&str> = csv
            .lines()
            .find(|l| l.starts_with("klarna_stepup,BACKEND,"))
            .unwrap()
            .split(',')
            .collect();
        ["wretr", "wredis", "econ", "eresp"].map(|name| {
            let at = header.iter().position(|h| *h == name).unwrap();
            row[at].parse().unwrap_or(0)
        })
    }
}

fn read_pid(pidfile: &Path) -> u32 {
    let t = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no pid in {pidfile:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let pid = self.pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn payment(reference: &str) -> Req {
    Req {
        method: "POST",
        path: "/payments".into(),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!(
            r#"{{"payment_method":"klarna","amount":11800,"currency":"USD","reference":"{reference}","return_url":"{PARTNER_URL}"}}"#
        )
        .into_bytes(),
        expect: 200,
    }
}

fn webhook() -> Req {
    Req {
        method: "POST",
        path: "/klarna/webhooks".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("Klarna-Signing-Key-Id".into(), "a".into()),
            ("Klarna-Signature".into(), signature(COMPLETED.as_bytes())),
        ],
        body: COMPLETED.as_bytes().to_vec(),
        expect: 200,
    }
}

/// Sends `req` once on a fresh connection to `addr`: the raw answer.
fn send(addr: SocketAddr, req: &Req) -> String {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.path,
        req.body.len()
    );
    for (n, v) in &req.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    exchange(addr, &head, &req.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_haproxy_share_keys_and_drain_without_loss() {
    if !haproxy_installed() {
        eprintln!(
            "SKIPPED three_instances_behind_haproxy_…: `haproxy` is not installed \
             (`./x haproxy` or `./x test` installs Debian's package)"
        );
        return;
    }
    let up = upstream::start().await;
    let mut answer = Answer::of(&fixtures::by_name("step_up_required"));
    answer.delay = Some(Duration::from_millis(5));
    up.set_answer(answer);
    let upstream = up.addr;
    let up2 = up.clone();
    tokio::task::spawn_blocking(move || scenario(upstream, &up2))
        .await
        .unwrap();
}

fn scenario(upstream: SocketAddr, up: &upstream::Upstream) {
    let mut instances: Vec<Instance> = (1..=3).map(|n| Instance::new(n, upstream)).collect();

    // A return token minted through instance 1 is honoured by 2 and 3: the same keys, no
    // shared store. The signed return URL is the one the payment API got for Klarna.
    let r = send(instances[0].listen, &payment("order-1"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains(r#""status":"pending""#), "{r}");
    let received = up.take_received();
    let sent: serde_json::Value = serde_json::from_slice(&received.last().unwrap().body).unwrap();
    let return_url = sent["step_up_config"]["customer_interaction_config"]["return_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let return_path = return_url
        .strip_prefix("https://pay.acquirer.example")
        .unwrap()
        .replace("{klarna.payment_request.id}", "krn:payment:eu1:request:1")
        .replace("{klarna.payment_request.state}", "COMPLETED");
    for i in &instances[1..] {
        let r = get(i.listen, &return_path);
        assert!(r.starts_with("HTTP/1.1 303"), "{r}");
        assert!(r.contains(&format!("location: {PARTNER_URL}")), "{r}");
    }
    // … and a forged one by none.
    let forged = return_path.replacen("/return/", "/return/A", 1);
    let r = get(instances[2].listen, &forged);
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    // A signed webhook is verified and relayed by any instance.
    for i in &instances {
        let r = send(i.listen, &webhook());
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    let relayed = up.take_received();
    assert_eq!(relayed.len(), 3);
    for r in &relayed {
        assert_eq!(r.path, "/webhooks/klarna");
        assert_eq!(r.headers["x-klarna-stepup-verified"], "true");
    }

    let haproxy = Haproxy::start(&instances.iter().collect::<Vec<_>>());
    let front = haproxy.front;
    // Every server up (rise 2): each instance answers through HAProxy.
    let t = Instant::now();
    let before: Vec<u64> = instances.iter().map(|i| requests_total(i.admin)).collect();
    loop {
        let r = get(front, "/orders");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let now: Vec<u64> = instances.iter().map(|i| requests_total(i.admin)).collect();
        if now.iter().zip(&before).all(|(n, b)| n > b) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "not every server up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Bounded load through HAProxy: partners' payments, returns, webhooks, other calls.
    let load = load::Load::new();
    let rp = return_path.clone();
    let mix = move |i: usize| match i % 4 {
        0 => Req::get("/orders", 200),
        1 => payment(&format!("order-{i}")),
        2 => Req::get(&rp, 303),
        _ => webhook(),
    };
    let clients: Vec<_> = [Mode::KeptAlive, Mode::KeptAlive, Mode::Fresh]
        .into_iter()
        .map(|mode| {
            load::client(
                front,
                mode,
                mix.clone(),
                load.clone(),
                20_000,
                Duration::from_secs(20),
                Duration::from_millis(2),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Instance 2 drained (SIGTERM) and restarted while the load flows: no request lost,
    // and none needed HAProxy's retries (its health check saw /readyz at 503 in time).
    let start = load.counts();
    let hap_start = haproxy.backend_errors();
    let code = instances[1].stop("-TERM");
    assert_eq!(code, Some(0));
    instances[1].start();
    let restarted = requests_total(instances[1].admin);
    let t = Instant::now();
    while requests_total(instances[1].admin) <= restarted + 5 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "restarted instance not back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let drained = load.counts();
    let hap_drained = haproxy.backend_errors();

    // Instance 3 killed (SIGKILL): at most its requests in flight can fail (HAProxy
    // retries them on another server: `retry-on`, `option redispatch`).
    let code = instances[2].stop("-KILL");
    assert_eq!(code, None, "killed by a signal");
    std::thread::sleep(Duration::from_millis(1000));
    load.stop();
    for c in clients {
        c.join().unwrap();
    }
    let killed = load.counts();
    let hap_killed = haproxy.backend_errors();
    drop(haproxy);
    for i in &mut instances[..2] {
        assert_eq!(i.stop("-TERM"), Some(0));
    }

    let errors = load.errors.lock().unwrap().clone();
    let (drain_ok, drain_failed) = (drained.0 - start.0, drained.1 - start.1);
    let (kill_ok, kill_failed) = (killed.0 - drained.0, killed.1 - drained.1);
    let delta = |a: [u64; 4], b: [u64; 4]| [b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]];
    let (hap_drain, hap_kill) = (
        delta(hap_start, hap_drained),
        delta(hap_drained, hap_killed),
    );
    eprintln!(
        "behind HAProxy: {} requests answered as expected, {} failed, {} retried by the client \
         (kept-alive connection closed before a byte of the answer); drain and restart of \
         instance 2: {drain_ok} answered, {drain_failed} failed, HAProxy [retries, \
         redispatches, connection errors, answer errors] {hap_drain:?}; SIGKILL of instance \
         3: {kill_ok} answered, {kill_failed} failed, HAProxy {hap_kill:?}",
        killed.0, killed.1, killed.2
    );
    assert_eq!(start.1, 0, "{errors:?}");
    assert_eq!(drain_failed, 0, "{errors:?}");
    assert_eq!(hap_drain, [0; 4], "HAProxy had to retry during the drain");
    // Three clients, one request in flight each at most.
    assert!(kill_failed <= 3, "{errors:?}");
    assert!(drain_ok > 50 && kill_ok > 50, "{drain_ok} {kill_ok}");
}
