//! Why the server could not start, or could not take over from the running instance.

use std::fmt;
use std::io;
use std::net::{AddrParseError, SocketAddr};
use std::path::PathBuf;

/// Why [`serve`](fn@crate::serve) or [`serve_upgrade`](crate::serve_upgrade) returned before
/// serving: a setting the configuration checks cannot judge (a file, an address in use, an
/// upstream name, the running instance), named by its key (`server.listen: …`).
///
/// Its `Display` is the whole message, key first; the variants carry the error underneath
/// (an [`io::Error`], rustls', …) for a program that tells them apart.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An address that does not parse (`server.listen`, `server.admin`).
    Address {
        /// The key.
        key: &'static str,
        /// What the parser said.
        source: AddrParseError,
    },
    /// A file the configuration names cannot be read (a certificate, a key, a CA).
    File {
        /// The key that names it.
        key: &'static str,
        /// What reading it said.
        source: io::Error,
    },
    /// A PEM file without the certificate or private key it must hold.
    Pem {
        /// The key that names it.
        key: &'static str,
        /// What is missing: `"certificate"` or `"private key"`.
        missing: &'static str,
    },
    /// A client certificate without its key.
    MissingKey {
        /// The key (`server.upstream_tls.client_key`).
        key: &'static str,
    },
    /// The environment variable the configuration names is not set.
    EnvNotSet {
        /// The key that names it.
        key: &'static str,
        /// The variable.
        var: String,
    },
    /// TLS settings rustls refused (or a server name it cannot use).
    Tls {
        /// The key.
        key: &'static str,
        /// What rustls said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No system root certificates to verify the payment API with, and no CA file named.
    NoSystemRoots,
    /// No `server.upstream` name resolved.
    Resolve {
        /// What the resolution said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `serve --upgrade` found no healthy upstream, and leaves the running instance serving.
    NoHealthyUpstream,
    /// Some socket listens on `server.listen` already (another instance not started with
    /// `serve --upgrade`).
    Served {
        /// The address.
        addr: SocketAddr,
        /// What binding it said.
        source: io::Error,
    },
    /// A listening socket cannot be opened.
    Listen {
        /// The key of its address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// A runtime, a thread or a socket's copy the server needs could not be made.
    Start {
        /// The key it is for, if any (`server.threads`).
        key: Option<&'static str>,
        /// What could not be done (`cannot start a thread`).
        what: &'static str,
        /// What the system said.
        source: io::Error,
    },
    /// The hand-over over `server.upgrade_socket`.
    Upgrade(UpgradeError),
}

impl Error {
    /// The configuration key the error is about (`server.listen`), if any.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            Error::Address { key, .. }
            | Error::File { key, .. }
            | Error::Pem { key, .. }
            | Error::MissingKey { key }
            | Error::EnvNotSet { key, .. }
            | Error::Tls { key, .. }
            | Error::Listen { key, .. } => Some(key),
            Error::NoSystemRoots => Some("server.upstream_tls"),
            Error::Resolve { .. } | Error::NoHealthyUpstream => Some("server.upstream"),
            Error::Served { .. } => Some("server.listen"),
            Error::Start { key, .. } => *key,
            Error::Upgrade(_) => Some(UpgradeError::KEY),
        }
    }

    pub(crate) fn tls(
        key: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Tls {
            key,
            source: Box::new(e),
        }
    }

    pub(crate) fn file(key: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Error::File { key, source }
    }

    pub(crate) fn start(
        key: Option<&'static str>,
        what: &'static str,
    ) -> impl FnOnce(io::Error) -> Self {
        move |source| Error::Start { key, what, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Address { key, source } => write!(f, "{key}: {source}"),
            Error::File { key, source } => write!(f, "{key}: {source}"),
            Error::Pem { key, missing } => write!(f, "{key}: no PEM {missing} found"),
            Error::MissingKey { key } => write!(f, "{key}: missing"),
            Error::EnvNotSet { key, var } => write!(f, "{key}: {var} is not set"),
            Error::Tls { key, source } => write!(f, "{key}: {source}"),
            Error::NoSystemRoots => f.write_str(
                "server.upstream_tls: no system root certificates found; name a CA file in \
                 server.upstream_tls.ca",
            ),
            Error::Resolve { source } => write!(f, "server.upstream: cannot resolve: {source}"),
            Error::NoHealthyUpstream => f.write_str(
                "server.upstream: no upstream is healthy: not taking over from the running one",
            ),
            Error::Served { addr, source } => write!(
                f,
                "server.listen: cannot listen on {addr}: it is served already (another \
                 klarna-stepup? `serve --upgrade` takes over from a running instance): {source}"
            ),
            Error::Listen { key, addr, source } => {
                write!(f, "{key}: cannot listen on {addr}: {source}")
            }
            Error::Start {
                key: Some(key),
                what,
                source,
            } => write!(f, "{key}: {what}: {source}"),
            Error::Start {
                key: None,
                what,
                source,
            } => write!(f, "{what}: {source}"),
            Error::Upgrade(e) => write!(f, "{}: {e}", UpgradeError::KEY),
        }
    }
}

impl std::error::Error for Error {}

impl From<UpgradeError> for Error {
    fn from(e: UpgradeError) -> Self {
        Error::Upgrade(e)
    }
}

/// What went wrong with the upgrade socket (`server.upgrade_socket`): on the successor's
/// side, the running instance keeps serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// `serve --upgrade` without `server.upgrade_socket`.
    NotSet,
    /// The socket cannot be bound (at its temporary name, `{path}.{pid}`).
    Bind {
        /// The path bound.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The bound socket cannot be renamed to its configured path.
    Publish {
        /// The configured path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// What is at the path cannot be looked at.
    Inspect {
        /// The path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The path exists and is not a socket.
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A running instance listens on the path (a start without `--upgrade`).
    Running {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket (nothing listens on it) cannot be removed.
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Whether an instance listens on the path cannot be told.
    Check {
        /// The path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The running instance cannot be reached (`serve --upgrade`).
    Unreachable {
        /// The path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The exchange with the running instance failed.
    Exchange {
        /// The path.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The running instance refused (it drains, or another upgrade is under way).
    Refused {
        /// The path.
        path: PathBuf,
        /// Its reason.
        reason: String,
    },
    /// The running instance closed the connection.
    Closed {
        /// The path.
        path: PathBuf,
    },
    /// The running instance answered something else than the hand-over.
    Unexpected {
        /// The path.
        path: PathBuf,
    },
}

impl UpgradeError {
    const KEY: &'static str = "server.upgrade_socket";
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::NotSet => {
                f.write_str("not set; --upgrade takes over from the instance on it")
            }
            UpgradeError::Bind { path, source } => {
                write!(f, "cannot listen on {}: {source}", path.display())
            }
            UpgradeError::Publish { path, source } => {
                write!(f, "cannot name it {}: {source}", path.display())
            }
            UpgradeError::Inspect { path, source } => {
                write!(f, "cannot inspect {}: {source}", path.display())
            }
            UpgradeError::NotASocket { path } => {
                write!(f, "{} exists and is not a socket", path.display())
            }
            UpgradeError::Running { path } => write!(
                f,
                "a running instance listens on {}: start with --upgrade to take over from it, \
                 or stop it first",
                path.display()
            ),
            UpgradeError::RemoveStale { path, source } => {
                write!(f, "cannot remove the stale {}: {source}", path.display())
            }
            UpgradeError::Check { path, source } => {
                write!(f, "cannot check {}: {source}", path.display())
            }
            UpgradeError::Unreachable { path, source } => write!(
                f,
                "cannot reach the running instance at {}: {source} (is it running, with this \
                 upgrade_socket?)",
                path.display()
            ),
            UpgradeError::Exchange { path, source } => {
                write!(f, "upgrade over {} failed: {source}", path.display())
            }
            UpgradeError::Refused { path, reason } => write!(
                f,
                "the running instance at {} refused the upgrade: {reason}",
                path.display()
            ),
            UpgradeError::Closed { path } => write!(
                f,
                "the running instance at {} closed the connection",
                path.display()
            ),
            UpgradeError::Unexpected { path } => {
                write!(f, "unexpected answer from {}", path.display())
            }
        }
    }
}

impl std::error::Error for UpgradeError {}

/// `e` and its causes, each `io::Error` also giving the error it carries (its `source()`
/// skips it).
pub(crate) fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| {
        match c.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_their_key_first() {
        let served = Error::Served {
            addr: "127.0.0.1:8080".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert!(served
            .to_string()
            .starts_with("server.listen: cannot listen on 127.0.0.1:8080: it is served already"));
        assert_eq!(served.key(), Some("server.listen"));
        let refused = Error::from(UpgradeError::Refused {
            path: "/run/u.sock".into(),
            reason: "draining".into(),
        });
        assert_eq!(
            refused.to_string(),
            "server.upgrade_socket: the running instance at /run/u.sock refused the upgrade: \
             draining"
        );
        let thread =
            Error::start(Some("server.threads"), "cannot start a thread")(io::Error::other("no"));
        assert_eq!(
            thread.to_string(),
            "server.threads: cannot start a thread: no"
        );
    }

    #[test]
    fn causes_look_inside_io_errors() {
        #[derive(Debug)]
        struct Marker;
        impl fmt::Display for Marker {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("marker")
            }
        }
        impl std::error::Error for Marker {}
        let e = io::Error::new(io::ErrorKind::TimedOut, Marker);
        assert!(causes(&e).any(|c| c.is::<Marker>()));
        let plain = io::Error::from(io::ErrorKind::TimedOut);
        assert!(!causes(&plain).any(|c| c.is::<Marker>()));
    }
}
