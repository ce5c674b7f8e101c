//! A hostile guest, written in the test process: threads that enter a
//! guest's network namespace (`setns`) and flood its DHCP server with
//! DISCOVERs (raw frames from its own MAC and from random ones) or its
//! metadata service with connections. No external program is needed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nubo_dhcp::dhcproto::v4::{DhcpOption, Message, MessageType};
use nubo_dhcp::dhcproto::Encodable;
use nubo_netid::MacAddr;

use crate::netns::in_netns;

/// What a DHCP flood sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpFloodReport {
    /// Frames from the guest's own MAC.
    pub own: u64,
    /// Frames from random MACs (also as `chaddr`).
    pub random: u64,
}

/// What a metadata flood did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataFloodReport {
    /// Connections attempted (SYNs sent).
    pub attempted: u64,
    /// Connections established.
    pub established: u64,
    /// Most connections held open at once.
    pub held_max: usize,
}

/// A running flood; [`Flood::stop`] ends it and returns its report.
pub struct Flood<R> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<R>>>,
}

impl<R> Flood<R> {
    /// Stops the flood and returns what it did.
    pub fn stop(mut self) -> Result<R> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))?,
            None => bail!("flood already stopped"),
        }
    }
}

impl<R> Drop for Flood<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A small deterministic generator (xorshift64) for MACs and xids.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A random locally administered unicast MAC.
    fn mac(&mut self) -> MacAddr {
        let b = self.next().to_le_bytes();
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

/// One broadcast DHCPDISCOVER frame (Ethernet + IPv4 + UDP) from `mac`,
/// with `chaddr` = `mac`. Pure.
pub fn discover_frame(mac: MacAddr, xid: u32) -> Result<Vec<u8>> {
    let unspec = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, unspec, unspec, unspec, unspec, &mac.0);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let payload = m.to_vec().context("encode DISCOVER")?;
    let ip = nubo_dhcp::l2::ipv4_udp(unspec, 68, Ipv4Addr::BROADCAST, 67, &payload)
        .context("DISCOVER too large")?;
    let mut frame = Vec::with_capacity(14 + ip.len());
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    Ok(frame)
}

/// Floods DISCOVERs on `iface` of namespace `ns` as fast as one thread can
/// send: every other frame from `own`, the others from random MACs.
pub fn dhcp_flood(ns: &str, iface: &str, own: MacAddr) -> Result<Flood<DhcpFloodReport>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (ns, iface) = (ns.to_string(), iface.to_string());
    let thread = std::thread::spawn(move || -> Result<DhcpFloodReport> {
        in_netns(&ns, move || -> Result<DhcpFloodReport> {
            let sock = RawSocket::open(&iface)?;
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
            // Pre-built frames: the loop only sends.
            let own_frames: Vec<Vec<u8>> = (0..64u32)
                .map(|i| discover_frame(own, i))
                .collect::<Result<_>>()?;
            let random_frames: Vec<Vec<u8>> = (0..4096u32)
                .map(|i| discover_frame(rng.mac(), i))
                .collect::<Result<_>>()?;
            let mut report = DhcpFloodReport::default();
            let mut i = 0usize;
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    i = i.wrapping_add(1);
                    if i.is_multiple_of(2) {
                        if sock.send(&own_frames[i / 2 % own_frames.len()]) {
                            report.own += 1;
                        }
                    } else if sock.send(&random_frames[i / 2 % random_frames.len()]) {
                        report.random += 1;
                    }
                }
            }
            Ok(report)
        })?
    });
    Ok(Flood {
        stop,
        thread: Some(thread),
    })
}

/// Opens connections to 169.254.169.254:80 from namespace `ns` as fast as
/// it can (non-blocking connects, up to 1,000 in flight, each given 1 s),
/// and holds every established one open, up to `hold` (half of them
/// trickling an unfinished request head); the server may close them.
pub fn metadata_flood(ns: &str, hold: usize) -> Result<Flood<MetadataFloodReport>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || -> Result<MetadataFloodReport> {
        in_netns(&ns, move || -> Result<MetadataFloodReport> {
            use std::collections::VecDeque;
            use std::io::Write;
            let addr =
                std::net::SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));
            let mut report = MetadataFloodReport::default();
            let mut pending: VecDeque<(std::net::TcpStream, Instant)> = VecDeque::new();
            let mut held: Vec<std::net::TcpStream> = Vec::new();
            let mut last_check = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if pending.len() < 1000 {
                    let sock = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    )?;
                    sock.set_nonblocking(true)?;
                    report.attempted += 1;
                    let _ = sock.connect(&addr.into()); // EINPROGRESS
                    pending.push_back((sock.into(), Instant::now()));
                }
                if last_check.elapsed() < Duration::from_millis(20) && pending.len() < 1000 {
                    continue;
                }
                // Every 20 ms (or when full): move the established ones to
                // `held`, give up on those older than 1 s.
                last_check = Instant::now();
                let mut still = VecDeque::with_capacity(pending.len());
                for (mut s, at) in pending.drain(..) {
                    if s.peer_addr().is_ok() {
                        report.established += 1;
                        if held.len() < hold {
                            if held.len().is_multiple_of(2) {
                                let _ = s.write(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: ");
                            }
                            held.push(s);
                        }
                    } else if at.elapsed() < Duration::from_secs(1) {
                        still.push_back((s, at));
                    }
                }
                pending = still;
                // Those the server closed (reset) no longer count as held.
                held.retain(|s| s.peer_addr().is_ok() && s.take_error().ok().flatten().is_none());
                report.held_max = report.held_max.max(held.len());
            }
            Ok(report)
        })?
    });
    Ok(Flood {
        stop,
        thread: Some(thread),
    })
}

/// An `AF_PACKET` raw socket bound to one interface, sending whole frames.
struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    fn open(iface: &str) -> Result<Self> {
        let name = std::ffi::CString::new(iface)?;
        // SAFETY: valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            bail!("no interface {iface}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: plain socket(2); protocol 0: receive nothing.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd,
            ifindex: i32::try_from(idx)?,
        })
    }

    /// Sends one frame; false if the kernel refused it (queue full).
    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid descriptor, buffer and address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        sent >= 0
    }
}

/// CPU time (user + system, in clock ticks) and resident memory (KiB) of
/// process `pid`, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn process_usage(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc/pid/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after ")".
    let ticks = fields
        .get(11..13)
        .context("short /proc/pid/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok((ticks, rss))
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_frames_are_broadcast_from_their_mac() {
        let mac = MacAddr([2, 1, 2, 3, 4, 5]);
        let f = discover_frame(mac, 7).unwrap();
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[8, 0]);
        // IPv4, UDP 68 -> 67, chaddr at BOOTP offset 28.
        assert_eq!(f[14], 0x45);
        assert_eq!(&f[34..38], &[0, 68, 0, 67]);
        assert_eq!(&f[42 + 28..42 + 34], &mac.0);
        assert_eq!(nubo_dhcp::peek_chaddr(&f[42..]), Some(mac));
    }

    #[test]
    fn random_macs_are_unicast_and_local() {
        let mut r = XorShift(1);
        for _ in 0..100 {
            let m = r.mac();
            assert_eq!(m.0[0] & 0x03, 0x02);
        }
    }

    #[test]
    fn own_usage_is_read() {
        let (ticks, rss) = process_usage(std::process::id()).unwrap();
        assert!(rss > 0);
        let _ = ticks;
        assert!(clock_ticks() > 0);
    }
}
