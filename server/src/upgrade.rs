//! Listener hand-over (`serve --upgrade`), as Pingora, HAProxy and Envoy do it: the running
//! instance passes its listening sockets to its successor over a Unix socket
//! (`server.upgrade_socket`, `SCM_RIGHTS`), then drains. The sockets, and the connections
//! queued in their accept queues, are never closed: the successor accepts from the very same
//! queues, so a restart or upgrade loses nothing. (With `SO_REUSEPORT` alone, the old
//! instance's queued connections are reset when it closes its sockets.)
//!
//! The exchange, on a connection to the running instance's upgrade socket:
//!
//! ```text
//! successor ── "upgrade\n" ──────────────────────────▶ running instance
//!           ◀─ b'L' + fd, … (listening sockets), b'A' + fd (admin), b'E'
//!              (or b'R' and the reason: draining, another upgrade in progress)
//!           ── "ready\n" (its workers accept) ───────▶
//!           ◀─ "ok\n" ── and the running instance drains as on SIGTERM, exit 0
//! ```
//!
//! Before "ready" the running instance gives nothing up: if the successor goes away, it
//! keeps serving and takes the next upgrade. Before it connects, the successor has loaded
//! its configuration and everything it needs to start; a configuration that fails
//! `check-config` never gets this far.
//!
//! The successor serves any number of received sockets with any number of threads: they
//! are spread over its workers, a worker accepting on several when there are more sockets
//! than threads, several workers sharing one (a `dup`) when there are fewer.
//!
//! The upgrade socket is bound as `{path}.{pid}`, made private to the user (0600), then
//! renamed to `path`, replacing the running instance's name for it (which thus stays
//! reachable by the successor only until the rename). Only a peer of the same user is
//! served. At exit an instance removes `path` only while it is still its own.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::sync::mpsc::UnboundedSender;

use super::error::UpgradeError;

/// The successor's request.
const REQUEST: &[u8] = b"upgrade\n";
/// How long the running instance waits for its successor to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Any other wait on the upgrade socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// More records than this is not a klarna-stepup talking (1024 threads and the admin).
const MAX_RECORDS: usize = 1100;

/// The upgrade socket, bound at `{path}.{pid}` until [`Socket::publish`] names it `path`.
pub(super) struct Socket {
    path: PathBuf,
    temp: PathBuf,
    listener: Option<UnixListener>,
    /// `(dev, ino)` of `path` once published: removed at exit only while still this.
    published: Option<(u64, u64)>,
    uid: u32,
}

impl Socket {
    /// Binds the upgrade socket under its temporary name, private to the user.
    pub(super) fn bind(path: &Path) -> Result<Socket, UpgradeError> {
        let mut temp = path.as_os_str().to_owned();
        temp.push(format!(".{}", std::process::id()));
        let temp = PathBuf::from(temp);
        // Our pid is ours alone: a file of this name was left by a crashed process.
        let _ = std::fs::remove_file(&temp);
        let fail = |source| UpgradeError::Bind {
            path: temp.clone(),
            source,
        };
        let listener = UnixListener::bind(&temp).map_err(fail)?;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        let uid = std::fs::metadata(&temp).map_err(fail)?.uid();
        Ok(Socket {
            path: path.to_owned(),
            temp,
            listener: Some(listener),
            published: None,
            uid,
        })
    }

    /// Gives it its configured name, replacing a predecessor's.
    pub(super) fn publish(&mut self) -> Result<(), UpgradeError> {
        std::fs::rename(&self.temp, &self.path)
            .and_then(|()| std::fs::metadata(&self.path))
            .map(|m| self.published = Some((m.dev(), m.ino())))
            .map_err(|source| UpgradeError::Publish {
                path: self.path.clone(),
                source,
            })
    }

    /// The listener to serve, once published, and the user it serves.
    pub(super) fn take_listener(&mut self) -> Option<(UnixListener, u32)> {
        self.published?;
        Some((self.listener.take()?, self.uid))
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        match self.published {
            None => drop(std::fs::remove_file(&self.temp)),
            Some(id) => {
                // A successor may have put its own socket there: leave that one.
                if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
                    let _ = std::fs::remove_file(&self.path);
                }
            }
        }
    }
}

/// For a start without `--upgrade`: `path` must be free. A socket nobody listens on (left by
/// a crashed instance) is removed; one a running instance listens on is an error.
pub(super) fn clear_stale(path: &Path) -> Result<(), UpgradeError> {
    let path_buf = || path.to_owned();
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UpgradeError::Inspect {
                path: path_buf(),
                source,
            })
        }
        Ok(m) => m,
    };
    if !meta.file_type().is_socket() {
        return Err(UpgradeError::NotASocket { path: path_buf() });
    }
    match UnixStream::connect(path) {
        // A probe: it sends no request, so the instance there hands nothing over.
        Ok(_) => Err(UpgradeError::Running { path: path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(|source| UpgradeError::RemoveStale {
                path: path_buf(),
                source,
            })?;
            tracing::info!(path = %path.display(), "removed a stale upgrade socket (nothing listened on it)");
            Ok(())
        }
        Err(source) => Err(UpgradeError::Check {
            path: path_buf(),
            source,
        }),
    }
}

// ---------------------------------------------------------------------------------------
// The running instance's side
// ---------------------------------------------------------------------------------------

/// What the running instance can hand over: its distinct listening sockets and its admin
/// endpoint's, until it drains.
pub(super) struct Handover {
    sockets: Mutex<Option<(Vec<TcpListener>, Option<TcpListener>)>>,
    /// An exchange is under way.
    busy: AtomicBool,
}

impl Handover {
    pub(super) fn new(listeners: Vec<TcpListener>, admin: Option<TcpListener>) -> Arc<Self> {
        Arc::new(Handover {
            sockets: Mutex::new(Some((listeners, admin))),
            busy: AtomicBool::new(false),
        })
    }

    /// At the drain: nothing more to hand over (its copies closed here, so that the sockets
    /// close with the workers' own).
    pub(super) fn close(&self) {
        drop(self.lock().take());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Vec<TcpListener>, Option<TcpListener>)>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves the upgrade socket: each successor that gets ready is sent on `ready` (its pid).
/// One exchange at a time; a request while another is under way, or while draining, is
/// refused.
pub(super) async fn serve(
    listener: UnixListener,
    uid: u32,
    handover: Arc<Handover>,
    ready: UnboundedSender<u32>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "upgrade socket not served"),
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(stream) = stream.into_std().and_then(|s| {
            s.set_nonblocking(false)?;
            Ok(s)
        }) else {
            continue;
        };
        let peer = rustix::net::sockopt::socket_peercred(&stream).ok();
        if peer.is_none_or(|p| p.uid.as_raw() != uid) {
            tracing::warn!("upgrade socket: a peer of another user refused");
            continue;
        }
        let pid = peer.map_or(0, |p| u32::try_from(p.pid.as_raw_pid()).unwrap_or(0));
        if handover.busy.swap(true, Ordering::AcqRel) {
            refuse(stream, "another upgrade is under way");
            continue;
        }
        let (handover, ready) = (handover.clone(), ready.clone());
        // Blocking socket calls with timeouts, off the runtime.
        std::thread::spawn(move || {
            match hand_over(&stream, &handover, pid) {
                Ok(true) => {
                    let _ = ready.send(pid);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    pid,
                    error = %e,
                    "upgrade: the successor went away before it was ready; still serving"
                ),
            }
            handover.busy.store(false, Ordering::Release);
        });
    }
}

fn refuse(mut stream: UnixStream, why: &str) {
    tracing::warn!(reason = why, "upgrade refused");
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.write_all(format!("R{why}\n").as_bytes());
}

/// One exchange: `Ok(true)` once the successor is ready (it is then told "ok"), `Ok(false)`
/// for a probe or a refusal.
fn hand_over(stream: &UnixStream, handover: &Handover, pid: u32) -> std::io::Result<bool> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = [0u8; REQUEST.len()];
    if (&*stream).read_exact(&mut request).is_err() {
        return Ok(false); // a probe (see clear_stale)
    }
    if request != REQUEST {
        return Err(std::io::Error::other("not an upgrade request"));
    }
    {
        let sockets = handover.lock();
        let Some((listeners, admin)) = sockets.as_ref() else {
            drop(sockets);
            refuse(stream.try_clone()?, "draining");
            return Ok(false);
        };
        tracing::info!(
            pid,
            sockets = listeners.len(),
            admin = admin.is_some(),
            "upgrade: handing the listening sockets over"
        );
        for l in listeners {
            send_fd(stream, b'L', l)?;
        }
        if let Some(a) = admin {
            send_fd(stream, b'A', a)?;
        }
    }
    (&*stream).write_all(b"E")?;
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).take(64).read_line(&mut line)?;
    if line != "ready\n" {
        return Err(std::io::Error::other("no \"ready\" from the successor"));
    }
    tracing::info!(pid, "upgrade: the successor is serving; draining");
    (&*stream).write_all(b"ok\n")?;
    Ok(true)
}

fn send_fd(stream: &UnixStream, tag: u8, fd: &impl AsFd) -> std::io::Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&[tag])],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The successor's side
// ---------------------------------------------------------------------------------------

/// What the successor got from the running instance.
pub(super) struct Inherited {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    conn: UnixStream,
    pid: u32,
}

/// Asks the instance on `path` for its sockets.
pub(super) fn take_over(path: &Path) -> Result<Inherited, UpgradeError> {
    let path_buf = || path.to_owned();
    let conn = UnixStream::connect(path).map_err(|source| UpgradeError::Unreachable {
        path: path_buf(),
        source,
    })?;
    let io = |source| UpgradeError::Exchange {
        path: path_buf(),
        source,
    };
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let pid = rustix::net::sockopt::socket_peercred(&conn)
        .map_or(0, |p| u32::try_from(p.pid.as_raw_pid()).unwrap_or(0));
    (&conn).write_all(REQUEST).map_err(io)?;
    let (mut listeners, mut admin) = (Vec::new(), None);
    for _ in 0..MAX_RECORDS {
        let (tag, fd) = recv_fd(&conn).map_err(io)?;
        match (tag, fd) {
            (Some(b'L'), Some(fd)) => listeners.push(TcpListener::from(fd)),
            (Some(b'A'), Some(fd)) => admin = Some(TcpListener::from(fd)),
            (Some(b'E'), None) => {
                return Ok(Inherited {
                    listeners,
                    admin,
                    conn,
                    pid,
                })
            }
            (Some(b'R'), _) => {
                let mut why = String::new();
                let _ = BufReader::new(&conn).take(200).read_line(&mut why);
                return Err(UpgradeError::Refused {
                    path: path_buf(),
                    reason: why.trim_end().to_owned(),
                });
            }
            (None, _) => return Err(UpgradeError::Closed { path: path_buf() }),
            _ => return Err(UpgradeError::Unexpected { path: path_buf() }),
        }
    }
    Err(UpgradeError::Unexpected { path: path_buf() })
}

/// One record: its tag (none at the end of the stream) and the descriptor it carries.
fn recv_fd(conn: &UnixStream) -> std::io::Result<(Option<u8>, Option<OwnedFd>)> {
    let mut tag = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut tag)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let fd = control.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
        _ => None,
    });
    Ok(((got.bytes == 1).then_some(tag[0]), fd))
}

impl Inherited {
    /// The running instance's pid.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// The proxy's listening sockets, when they listen on `addr` (else they are closed
    /// here, and the proxy listens afresh: said in a log line).
    pub(super) fn listeners_for(&mut self, addr: SocketAddr) -> Option<Vec<TcpListener>> {
        let listeners = std::mem::take(&mut self.listeners);
        let had = listeners.first().and_then(|l| l.local_addr().ok());
        if had != Some(addr)
            || listeners
                .iter()
                .any(|l| l.local_addr().ok() != had || l.set_nonblocking(true).is_err())
        {
            tracing::info!(
                from = had.map(|a| a.to_string()).unwrap_or_else(|| "none".into()),
                to = %addr,
                "upgrade: server.listen changed: listening afresh; connections still queued \
                 on the old address are the old instance's to answer or drop"
            );
            return None;
        }
        Some(listeners)
    }

    /// The admin endpoint's socket, when it listens on `addr` (else it is closed here).
    pub(super) fn admin_for(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let admin = self.admin.take()?;
        if admin.local_addr().ok() == Some(addr) && admin.set_nonblocking(true).is_ok() {
            Some(admin)
        } else {
            tracing::info!(to = %addr, "upgrade: server.admin changed: listening afresh");
            None
        }
    }

    /// Tells the running instance that this one serves: it drains now.
    pub(super) fn ready(self) {
        let confirmed = (&self.conn).write_all(b"ready\n").and_then(|()| {
            let mut line = String::new();
            BufReader::new(&self.conn)
                .take(16)
                .read_line(&mut line)
                .map(|_| line == "ok\n")
        });
        match confirmed {
            Ok(true) => tracing::info!(pid = self.pid, "upgrade: the old instance drains"),
            _ => tracing::warn!(
                pid = self.pid,
                "upgrade: the old instance did not confirm its drain; it may still be \
                 accepting on the same sockets (harmless) until it is stopped"
            ),
        }
    }
}

/// Spreads `sockets` over `threads` workers: with more sockets than workers a worker
/// accepts on several; with fewer, workers share one (a `dup`: one accept queue, several
/// acceptors). Every socket is served.
pub(super) fn spread(
    sockets: &[TcpListener],
    threads: usize,
) -> std::io::Result<Vec<Vec<TcpListener>>> {
    let mut out: Vec<Vec<TcpListener>> = (0..threads).map(|_| Vec::new()).collect();
    for i in 0..threads.max(sockets.len()) {
        out[i % threads].push(sockets[i % sockets.len()].try_clone()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_is_served_by_some_worker_and_every_worker_has_one() {
        let sockets: Vec<_> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<_> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        for threads in [1, 2, 3, 5] {
            let w = spread(&sockets, threads).unwrap();
            assert_eq!(w.len(), threads);
            assert!(w.iter().all(|l| !l.is_empty()));
            let mut served: Vec<_> = w
                .iter()
                .flatten()
                .map(|l| l.local_addr().unwrap())
                .collect();
            served.sort();
            served.dedup();
            assert_eq!(served.len(), addrs.len(), "{threads} threads");
        }
    }

    #[test]
    fn sockets_and_refusals_travel_over_the_upgrade_socket() {
        let dir = std::env::temp_dir().join(format!("ks-upgrade-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.sock");
        let mut socket = Socket::bind(&path).unwrap();
        socket.publish().unwrap();
        let (listener, uid) = socket.take_listener().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let handover = Handover::new(vec![tcp.try_clone().unwrap()], None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = handover.clone();
        rt.spawn(serve(listener, uid, h, tx));
        let path2 = path.clone();
        let mut got = rt
            .block_on(rt.spawn_blocking(move || take_over(&path2)))
            .unwrap()
            .unwrap();
        assert_eq!(got.pid(), std::process::id());
        let l = got.listeners_for(addr).unwrap();
        assert_eq!(l.len(), 1);
        // The same socket: a connection queued on it is accepted through the copy.
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l[0].set_nonblocking(false).unwrap();
        assert!(l[0].accept().is_ok());
        rt.block_on(rt.spawn_blocking(move || got.ready())).unwrap();
        assert_eq!(rt.block_on(rx.recv()), Some(std::process::id()));
        // The exchange's thread ends just after it reports the successor ready: until then a
        // request is refused as "another upgrade is under way".
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while handover.busy.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the exchange never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Draining: refused, with the reason.
        handover.close();
        let path2 = path.clone();
        let e = rt
            .block_on(rt.spawn_blocking(move || take_over(&path2)))
            .unwrap()
            .err()
            .unwrap();
        assert!(
            matches!(&e, UpgradeError::Refused { reason, .. } if reason == "draining"),
            "{e}"
        );
        drop(socket);
        assert!(!path.exists());
        let e = super::super::Error::from(take_over(&path).err().unwrap());
        assert!(
            e.to_string()
                .starts_with("server.upgrade_socket: cannot reach"),
            "{e}"
        );
    }
}
