//! systemd's readiness protocol (`sd_notify(3)`), so that a `Type=notify` unit follows the
//! server: `READY=1` once it serves, `MAINPID=<pid>` with `READY=1` from a successor that
//! took over (`serve --upgrade`; the unit needs `NotifyAccess=all` for systemd to take it
//! from a process that is not yet the main one), and `STOPPING=1` when a signal starts the
//! drain. Without `NOTIFY_SOCKET` in the environment, nothing is sent.

use sd_notify::NotifyState;

/// Serving (a start without `--upgrade`).
pub(crate) fn ready() {
    send(&[NotifyState::Ready]);
}

/// Serving, in the place of the instance this one took over from: the service's main
/// process is this one now.
pub(crate) fn took_over() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

/// Draining on SIGTERM or SIGINT. (An instance that handed over says nothing: the service
/// goes on, in its successor.)
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    // `false`: NOTIFY_SOCKET is left set, for the next notification.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
