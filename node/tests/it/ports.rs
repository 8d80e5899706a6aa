//! Ports for the servers a test starts; shared with the admin and ssectl
//! tests, which include this file.

use std::{
    net::TcpListener,
    sync::atomic::{AtomicU32, Ordering},
};

/// Lowest port handed out.
const LOW: u32 = 10_000;

/// A TCP port nobody listens on now, never handed out before in this
/// process, and below the kernel's ephemeral range.
///
/// `bind(0)` picks from the ephemeral range, where outgoing connections take
/// their ports too: between the pick and the server's own bind, a client's
/// connection or another test's pick could take the port, and the test
/// would then talk to a server that is not its own.
pub(crate) fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOW).max(1_000);
    // Each process walks the span from its own place, so that test
    // processes running side by side rarely meet.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + (start + n) % span) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port from {LOW} below the ephemeral range");
}
