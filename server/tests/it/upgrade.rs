//! `serve --upgrade`: the listening sockets handed over under load with no request lost,
//! and every refusal leaving the running instance serving.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::blocking::{exchange, wait_listening};
use crate::common::upstream::{self};
use crate::support::binary::{
    exited, free_addr, ok_answer, read_one, start_serve, start_serve_args, stop,
};

// ---------------------------------------------------------------------------------------
// Issue 12 points 2 and 6: zero-downtime upgrade (listener hand-over), safe reload
// ---------------------------------------------------------------------------------------

/// A per-test directory for upgrade sockets (short: a socket path is at most 107 bytes).
pub(crate) fn socket_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn upgradable(
    listen: SocketAddr,
    admin: SocketAddr,
    up: SocketAddr,
    sock: &std::path::Path,
    threads: usize,
) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin = \"{admin}\"\nupstream = \"{up}\"\n\
         threads = {threads}\nupgrade_socket = \"{}\"\ndrain_delay_ms = 200\n",
        sock.display()
    )
}

/// `klarna_stepup_requests_total{outcome="not_candidate"}` on the admin endpoint now.
fn not_candidate_count(admin: SocketAddr) -> u64 {
    let page = exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    page.lines()
        .find_map(|l| l.strip_prefix("klarna_stepup_requests_total{outcome=\"not_candidate\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upgrade_hands_the_sockets_over_under_load_and_loses_no_request() {
    use crate::common::load::{self, Mode, Req};
    let up = upstream::start().await;
    let mut answer = ok_answer();
    answer.delay = Some(Duration::from_millis(5));
    up.set_answer(answer);
    let (listen, admin) = (free_addr(), free_addr());
    let sock = socket_dir("upgrade").join("u.sock");
    // A (1 thread) → B (3: its socket shared by three workers) → C (2). A takes one
    // connection at a time, held by a kept-alive client: every other connection waits in
    // A's accept queue until B takes it over. (Had B bound a socket of its own with
    // SO_REUSEPORT, A's close would reset those still queued then: 1 or 2 a run, tried.)
    let mut a = start_serve(&format!(
        "{}max_connections = 1\n",
        upgradable(listen, admin, up.addr, &sock, 1)
    ));
    wait_listening(listen);
    wait_listening(admin);
    let sock2 = sock.clone();
    let report = tokio::task::spawn_blocking(move || {
        let sock = sock2;
        let client = |mode, load: &std::sync::Arc<load::Load>| {
            load::client(
                listen,
                mode,
                |_| Req::get("/orders", 200),
                load.clone(),
                20_000,
                Duration::from_secs(15),
                Duration::from_millis(1),
            )
        };
        let (kept, fresh) = (load::Load::new(), load::Load::new());
        let mut clients = vec![client(Mode::KeptAlive, &kept)];
        let t = Instant::now();
        while kept.counts().0 < 20 {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        clients.push(client(Mode::KeptAlive, &kept));
        clients.extend((0..4).map(|_| client(Mode::Fresh, &fresh)));
        std::thread::sleep(Duration::from_millis(300));
        let fresh_before_b = fresh.counts();
        let mut b = start_serve_args(
            &upgradable(listen, admin, up.addr, &sock, 3),
            &["--upgrade"],
        );
        let (code_a, log_a) = exited(&mut a, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        // The admin socket went over too: this is B's count.
        let by_b = not_candidate_count(admin);
        let mut c = start_serve_args(
            &upgradable(listen, admin, up.addr, &sock, 2),
            &["--upgrade"],
        );
        let (code_b, log_b) = exited(&mut b, Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(300));
        let by_c = not_candidate_count(admin);
        kept.stop();
        fresh.stop();
        for t in clients {
            t.join().unwrap();
        }
        let (code_c, log_c) = stop(&mut c, "-TERM");
        (
            [kept, fresh],
            fresh_before_b,
            [(code_a, log_a), (code_b, log_b), (code_c, log_c)],
            (by_b, by_c),
        )
    })
    .await
    .unwrap();
    let (
        [kept, fresh],
        fresh_before_b,
        [(code_a, log_a), (code_b, log_b), (code_c, log_c)],
        (by_b, by_c),
    ) = report;
    let (k_ok, k_failed, k_retried) = kept.counts();
    let (f_ok, f_failed, _) = fresh.counts();
    eprintln!(
        "upgrade A→B→C under load: kept-alive {k_ok} answered 200, {k_failed} failed, \
         {k_retried} retried (closed before a byte of the answer); fresh connections \
         {f_ok} answered 200, {f_failed} failed, {} answered before B took A's queued \
         connections over; B answered {by_b}, C {by_c}",
        fresh_before_b.0
    );
    assert_eq!(k_failed, 0, "{:?}", kept.errors.lock().unwrap());
    assert_eq!(f_failed, 0, "{:?}", fresh.errors.lock().unwrap());
    // The fresh connections (and the second kept-alive one) were queued in A's sockets,
    // not answered, until B.
    assert_eq!(fresh_before_b, (0, 0, 0));
    assert!(f_ok > 40 && k_ok > 60, "{f_ok} {k_ok}");
    assert!(by_b > 0 && by_c > 0, "{by_b} {by_c}");
    assert_eq!(code_a, Some(0), "{log_a}");
    assert!(log_a.contains("handed over to the successor"), "{log_a}");
    assert_eq!(code_b, Some(0), "{log_b}");
    assert!(
        log_b.contains("upgrade: the old instance drains"),
        "{log_b}"
    );
    assert!(log_b.contains("handed over to the successor"), "{log_b}");
    assert_eq!(code_c, Some(0), "{log_c}");
    assert!(!log_c.contains("listening afresh"), "{log_c}");
    // C removed its socket at exit; A and B left C's in place.
    assert!(!sock.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_upgrade_refusals_leave_the_running_instance_serving() {
    let up = upstream::start().await;
    up.set_answer(ok_answer());
    let (listen, admin) = (free_addr(), free_addr());
    let dir = socket_dir("refusals");
    let sock = dir.join("u.sock");
    let config = upgradable(listen, admin, up.addr, &sock, 1);
    let mut a = start_serve(&config);
    wait_listening(listen);
    wait_listening(admin);
    let get = move |addr: SocketAddr, path: &str| {
        exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        )
    };
    let run = |config: &str, args: &[&str]| {
        let mut child = start_serve_args(config, args);
        exited(&mut child, Duration::from_secs(10))
    };
    let (sock2, listen2, up2) = (sock.clone(), free_addr(), up.clone());
    let log_a = tokio::task::spawn_blocking(move || {
        // A configuration that fails check-config: exit 1, every error named, A untouched.
        let bad = config.replace("threads = 1", "threads = 0");
        let (code, log) = run(&format!("body_limit = 0\n{bad}"), &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("server.threads: must be between"), "{log}");
        assert!(log.contains("body_limit: must be at least"), "{log}");
        assert!(
            log.contains("not upgraded: the running instance keeps serving"),
            "{log}"
        );
        // --upgrade with no upgrade_socket, or one nothing listens on: named, exit 1.
        let (code, log) = run(
            &config.replace(&format!("upgrade_socket = \"{}\"\n", sock2.display()), ""),
            &["--upgrade"],
        );
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("server.upgrade_socket: not set"), "{log}");
        let elsewhere = config.replace("u.sock", "none.sock");
        let (code, log) = run(&elsewhere, &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains("server.upgrade_socket: cannot reach the running instance"),
            "{log}"
        );
        // A configuration whose upstreams are all unhealthy does not take over.
        let dead = free_addr();
        let (code, log) = run(
            &config.replace(&up2.addr.to_string(), &dead.to_string()),
            &["--upgrade"],
        );
        assert_eq!(code, Some(1), "{log}");
        assert!(
            log.contains("server.upstream: no upstream is healthy"),
            "{log}"
        );
        // A plain start on A's socket: refused, A not asked for anything.
        let (code, log) = run(&config, &[]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("a running instance listens on"), "{log}");
        // A still answers and is ready.
        assert!(get(listen, "/orders").starts_with("HTTP/1.1 200"));
        assert!(get(admin, "/readyz").starts_with("HTTP/1.1 200"));
        // A drains (a slow request in flight keeps it alive): an upgrade now is refused.
        let mut slow = ok_answer();
        slow.delay = Some(Duration::from_millis(1500));
        up2.set_answer(slow);
        let mut s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let kill = Command::new("kill")
            .args(["-TERM", &a.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(100));
        let (code, log) = run(&config, &["--upgrade"]);
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains("refused the upgrade: draining"), "{log}");
        assert!(read_one(&mut s).starts_with("HTTP/1.1 200"));
        up2.set_answer(ok_answer());
        let (code, log_a) = exited(&mut a, Duration::from_secs(10));
        assert_eq!(code, Some(0), "{log_a}");
        assert!(!sock2.exists(), "A left its socket");
        log_a
    })
    .await
    .unwrap();
    assert!(log_a.contains("upgrade refused"), "{log_a}");

    // A socket left by a crashed instance (nothing listens on it) is removed at start.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut d = start_serve(&upgradable(listen, admin, up.addr, &sock, 2));
    wait_listening(listen);
    // D's two sockets to E's one worker, which accepts on both.
    let mut e = start_serve_args(
        &upgradable(listen, admin, up.addr, &sock, 1),
        &["--upgrade"],
    );
    let (code_d, log_d) =
        tokio::task::spawn_blocking(move || exited(&mut d, Duration::from_secs(10)))
            .await
            .unwrap();
    let answers = tokio::task::spawn_blocking(move || {
        (0..8).map(|_| get(listen, "/orders")).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 200")),
        "{answers:?}"
    );
    // A changed listen address: listened on afresh, said so; E drains and exits 0.
    let mut f = start_serve_args(
        &upgradable(listen2, admin, up.addr, &sock, 1),
        &["--upgrade"],
    );
    let (code_e, log_e) =
        tokio::task::spawn_blocking(move || exited(&mut e, Duration::from_secs(10)))
            .await
            .unwrap();
    wait_listening(listen2);
    let answer = tokio::task::spawn_blocking(move || get(listen2, "/orders"))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (code_f, log_f) = stop(&mut f, "-TERM");
    assert_eq!(code_d, Some(0), "{log_d}");
    assert!(log_d.contains("removed a stale upgrade socket"), "{log_d}");
    assert_eq!(code_e, Some(0), "{log_e}");
    assert!(!log_e.contains("listening afresh"), "{log_e}");
    assert_eq!(code_f, Some(0), "{log_f}");
    assert!(
        log_f.contains("server.listen changed: listening afresh"),
        "{log_f}"
    );
}
