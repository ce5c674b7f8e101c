//! Free TCP ports for test daemons.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};

/// Next candidate port; starts at a pid-derived offset so parallel test
/// processes rarely probe the same ports.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// Returns a TCP port on `ip` that was free a moment ago.
///
/// Ports are taken from 20000..60000, walking from a per-process offset, and
/// probed by binding; the probe socket is closed before returning.
pub fn free_port_on(ip: IpAddr) -> u16 {
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 2_000) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = if p >= 60_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            20_000
        } else {
            p
        };
        if TcpListener::bind((ip, p)).is_ok() {
            return p;
        }
    }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}
