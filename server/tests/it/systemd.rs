//! systemd's readiness protocol: placeholder.
