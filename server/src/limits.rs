//! The open-file limit the server needs: raised at start to what `server.max_connections`
//! takes, or, where the hard limit does not allow that, `max_connections` capped (said in a
//! log line).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors beyond two per connection: listeners, the admin endpoint and its
/// connections (at most [`ADMIN_MAX_CONNECTIONS`](super::admin::ADMIN_MAX_CONNECTIONS)), health checks, the upgrade socket, logs, each runtime's epoll and wakers.
const RESERVE: u64 = 256;

/// Descriptors `max_connections` client connections take at most: as many again for the
/// connections to the payment API (the pools open no more), plus [`RESERVE`].
fn needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVE)
}

/// The most connections `open_files` descriptors serve (at least 1).
fn served_by(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Raises the soft `RLIMIT_NOFILE` to what `max_connections` needs (never above the hard
/// limit, never lowered); returns the `max_connections` to serve: as configured, or capped
/// to what the limit allows (logged as a warning).
pub(super) fn open_files_for(max_connections: usize) -> usize {
    let need = needed(max_connections);
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let (soft, hard) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    if soft >= need {
        return max_connections;
    }
    let target = need.min(hard);
    let now = match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => {
            tracing::info!(from = soft, to = target, "raised the open-file limit");
            target
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            soft
        }
    };
    if now >= need {
        return max_connections;
    }
    let capped = served_by(now).min(max_connections);
    tracing::warn!(
        max_connections,
        capped,
        open_file_limit = now,
        hard_limit = hard,
        "server.max_connections capped: the open-file limit allows no more; raise the hard \
         limit (ulimit -Hn, systemd LimitNOFILE=, the container runtime's nofile) to {need} \
         to serve them all"
    );
    capped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_descriptors_a_connection_and_a_reserve() {
        assert_eq!(needed(10_000), 20_256);
        assert_eq!(served_by(needed(10_000)), 10_000);
        assert_eq!(served_by(1024), 384);
        assert_eq!(served_by(100), 1);
    }
}
