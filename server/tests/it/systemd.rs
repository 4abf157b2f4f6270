//! systemd's readiness protocol, against a fake `NOTIFY_SOCKET` (a datagram socket bound
//! here): `READY=1` once serving, `MAINPID=<pid>` with `READY=1` from a successor that took
//! over, nothing more from the instance it took over from, and `STOPPING=1` when SIGTERM
//! starts the drain.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::blocking::wait_listening;
use crate::common::upstream;
use crate::support::binary::{exited, free_addr, stop_ok, write_config, Served, BIN};
use crate::upgrade::{socket_dir, upgradable};

/// `serve --config path ARGS…` with `NOTIFY_SOCKET` set to `notify`.
fn serve_notifying(path: &Path, args: &[&str], notify: &Path) -> Served {
    Served(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(path)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// The next notification (waits at most the socket's read timeout).
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_it_serves_that_a_successor_took_over_and_that_it_stops() {
    let up = upstream::start().await;
    let dir = socket_dir("notify");
    let notify_path = dir.join("n");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let config = write_config(
        "systemd.toml",
        &upgradable(listen, admin, up.addr, &dir.join("u.sock"), 1),
    );

    let mut first = serve_notifying(&config, &[], &notify_path);
    assert_eq!(next(&notify), "READY=1\n");
    wait_listening(listen);

    let mut second = serve_notifying(&config, &["--upgrade"], &notify_path);
    assert_eq!(
        next(&notify),
        format!("MAINPID={}\nREADY=1\n", second.id()),
        "the successor names itself the main process"
    );
    // The instance that handed over drains and exits without a word to systemd: the
    // service goes on.
    let (code, log) = exited(&mut first, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{log}");
    notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    let after = notify.recv(&mut buf).map(|n| buf[..n].to_vec());
    assert!(
        after.is_err(),
        "the old instance said {:?}",
        String::from_utf8_lossy(&after.unwrap_or_default())
    );
    notify.set_nonblocking(false).unwrap();

    // SIGTERM: the drain begins, and systemd hears it before the process is gone.
    let log = stop_ok(&mut second, "-TERM");
    assert_eq!(next(&notify), "STOPPING=1\n", "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
