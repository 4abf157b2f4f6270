//! Loopback ports for a child process or a server that binds later.
//!
//! A port the kernel hands out for `127.0.0.1:0` comes from the ephemeral range, the same range
//! every outgoing connection's source port and every other `:0` listener draws from: let go of
//! and bound again later, it may have been taken in between (the proxy then cannot listen, or
//! a client reaches another test's server). These ports come from below that range instead,
//! each once per process (a counter, from an offset set by the process id so that two test
//! processes start apart), and each checked free by a bind when handed out.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Below Linux's default ephemeral range (32768-60999), above the well-known and registered
/// ports most services listen on.
const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

/// A loopback address nothing listens on, no outgoing connection uses, and no other caller in
/// this process is given.
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (start + n) % COUNT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port as u16));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}
