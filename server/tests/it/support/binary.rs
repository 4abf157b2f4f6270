//! The `klarna-stepup` binary as a child process on loopback: its configuration file, its
//! start and stop, and raw HTTP/1.1 exchanges with it.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::blocking::{wait_exit, wait_exit_within, wait_listening};
use crate::common::upstream::Answer;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_klarna-stepup");

/// A configuration file `name` with `text`, in this test process's own directory.
pub fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("klarna-stepup-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub use crate::common::ports::free_addr;

/// The `serve` child; killed if a test fails before stopping it.
pub struct Served(pub std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Served {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// `serve --config` on a file with `config`; its stderr is piped (the log).
pub fn start_serve(config: &str) -> Served {
    start_serve_args(config, &[])
}

/// `serve --config PATH ARGS…` with `RUST_LOG` set to `log`; its stderr is piped (the log).
pub fn spawn_serve(path: &std::path::Path, args: &[&str], log: &str) -> Served {
    Served(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(path)
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits for `child`'s exit (already asked for, or by itself within `within`): its exit
/// code and log.
fn exit_and_log(child: &mut Served, within: Option<Duration>) -> (Option<i32>, String) {
    let status = match within {
        Some(within) => wait_exit_within(child, within),
        None => wait_exit(child),
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (status.code(), log)
}

/// Sends `signal` to `child` and waits for its exit: its exit code and log.
pub fn stop(child: &mut Served, signal: &str) -> (Option<i32>, String) {
    let kill = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    exit_and_log(child, None)
}

/// [`stop`], which must end in exit code 0; the log.
pub fn stop_ok(child: &mut Served, signal: &str) -> String {
    let (code, log) = stop(child, signal);
    assert_eq!(code, Some(0), "{log}");
    log
}

/// Reads one response (head, and a `Content-Length` body) from `s`: the raw text.
pub fn read_one(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head: {buf:?}");
        buf.push(byte[0]);
        assert!(buf.len() < 64 * 1024);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    buf.extend_from_slice(&body);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether the server closes `s` within `within` (a read returns 0).
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// `serve` on a free address in front of `upstream`, `extra` appended to `[server]`; once it
/// listens.
pub fn serve_with(extra: &str, upstream: SocketAddr) -> (Served, SocketAddr) {
    let listen = free_addr();
    let child = start_serve(&format!(
        "[server]\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n{extra}"
    ));
    wait_listening(listen);
    (child, listen)
}

/// A 200 JSON answer of the recording upstream.
pub fn ok_answer() -> Answer {
    Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: br#"{"ok":true}"#.to_vec(),
        delay: None,
    }
}

/// `serve --config F ARGS…`, as [`start_serve`].
pub fn start_serve_args(config: &str, args: &[&str]) -> Served {
    let path = write_config(&format!("serve-{}.toml", free_addr().port()), config);
    spawn_serve(&path, args, "info")
}

/// Waits (bounded) for `child` to exit by itself: its exit code and log.
pub fn exited(child: &mut Served, within: Duration) -> (Option<i32>, String) {
    exit_and_log(child, Some(within))
}
