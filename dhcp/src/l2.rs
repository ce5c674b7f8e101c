//! Replies sent at layer 2, to the client's own MAC.
//!
//! A UDP socket can only broadcast to a client that has no address yet
//! (unicasting to `yiaddr` would need an ARP entry for an address the guest
//! does not hold), and a broadcast reaches every guest of the network: a
//! guest flooding DISCOVERs would have its answers copied to all its
//! neighbours. So replies leave through an `AF_PACKET` datagram socket on
//! the bridge, addressed to the client hardware address (`chaddr`): the
//! kernel adds the Ethernet header (source: the bridge's MAC), the bridge
//! forwards the frame to the one port that owns the MAC, and the IPv4 +
//! UDP headers are written here ([`ipv4_udp`]). The IP destination still
//! follows RFC 2131 section 4.1 ([`crate::reply_destination`]): `ciaddr`,
//! `yiaddr`, or 255.255.255.255 when the client asked for broadcast or
//! for a NAK — a client accepts an IP broadcast in a frame sent to its
//! MAC, and no other guest sees it.
//!
//! The socket's protocol is 0: it receives nothing, it only sends.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nubo_netid::MacAddr;

use crate::error::DhcpError;

/// IPv4 header length without options.
const IPV4_HEADER: usize = 20;
/// UDP header length.
const UDP_HEADER: usize = 8;
/// TTL of replies (they never leave the link).
const TTL: u8 = 64;
/// `ETH_P_IP`.
const ETH_P_IP: u16 = 0x0800;

/// The IPv4 + UDP packet carrying `payload` from `src:sport` to
/// `dst:dport`, with both checksums, ready for an `AF_PACKET` datagram
/// socket. `None` if the payload does not fit one IPv4 packet. Pure.
pub fn ipv4_udp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HEADER + payload.len()).ok()?;
    let total = u16::try_from(IPV4_HEADER + usize::from(udp_len)).ok()?;
    let mut p = Vec::with_capacity(usize::from(total));
    // IPv4 header: version 4, IHL 5, no DSCP, no fragmentation (DF).
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, TTL, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&[&p[..IPV4_HEADER]], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // UDP header, checksum over the pseudo-header.
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, 17],
        &udp_len.to_be_bytes()[..],
    ];
    let mut sum = sum_words(&pseudo, 0);
    sum = sum_words(&[&p[IPV4_HEADER..]], sum);
    let mut udp_sum = fold(sum);
    if udp_sum == 0 {
        // 0 means "no checksum" in UDP over IPv4.
        udp_sum = 0xffff;
    }
    p[IPV4_HEADER + 6..IPV4_HEADER + 8].copy_from_slice(&udp_sum.to_be_bytes());
    Some(p)
}

/// Adds 16-bit big-endian words of the concatenated `parts` to `acc`
/// (the parts are even-length except possibly the last one).
fn sum_words(parts: &[&[u8]], mut acc: u32) -> u32 {
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for w in &mut chunks {
            acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = chunks.remainder() {
            acc += u32::from(u16::from_be_bytes([*last, 0]));
        }
    }
    acc
}

/// Folds a 32-bit sum into the ones' complement 16-bit checksum.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // After folding the sum fits in 16 bits.
    !(u16::try_from(sum).unwrap_or(u16::MAX))
}

/// The Internet checksum of `parts`.
fn checksum(parts: &[&[u8]], acc: u32) -> u16 {
    fold(sum_words(parts, acc))
}

/// A send-only `AF_PACKET` datagram socket on one interface.
#[derive(Debug)]
pub(crate) struct L2Sender {
    fd: OwnedFd,
    ifindex: i32,
}

impl L2Sender {
    /// Opens the socket in the calling thread's network namespace, for the
    /// interface `iface`.
    pub(crate) fn open(iface: &str) -> Result<Self, DhcpError> {
        let err = |step: &'static str| {
            move |source| DhcpError::Socket {
                iface: iface.to_string(),
                step,
                source,
            }
        };
        let name = std::ffi::CString::new(iface)
            .map_err(|_| DhcpError::InvalidInterfaceName(iface.to_string()))?;
        // SAFETY: valid NUL-terminated string for the call's duration.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            return Err(err("if_nametoindex")(io::Error::last_os_error()));
        }
        let ifindex = i32::try_from(idx)
            .map_err(|_| err("if_nametoindex")(io::Error::other("index out of range")))?;
        // SAFETY: plain socket(2) call; protocol 0 = receive nothing.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(err("socket(AF_PACKET, SOCK_DGRAM)")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, ifindex })
    }

    /// Sends one IPv4 packet (from [`ipv4_udp`]) to `mac` on the interface.
    pub(crate) fn send(&self, mac: MacAddr, packet: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_IP.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac.0);
        // SAFETY: valid descriptor, buffer and address of the given sizes.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_DONTWAIT,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_checksums_are_valid() {
        let src = Ipv4Addr::new(169, 254, 169, 254);
        let dst = Ipv4Addr::new(10, 0, 0, 5);
        for payload in [&b"hello"[..], &[0u8; 300][..], &[]] {
            let p = ipv4_udp(src, 67, dst, 68, payload).unwrap();
            assert_eq!(p.len(), 28 + payload.len());
            assert_eq!(p[0], 0x45);
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            assert_eq!(p[9], 17);
            assert_eq!(&p[12..16], &src.octets());
            assert_eq!(&p[16..20], &dst.octets());
            // A valid header sums to 0xffff (checksum of it is 0).
            assert_eq!(checksum(&[&p[..20]], 0), 0);
            assert_eq!(u16::from_be_bytes([p[20], p[21]]), 67);
            assert_eq!(u16::from_be_bytes([p[22], p[23]]), 68);
            assert_eq!(
                usize::from(u16::from_be_bytes([p[24], p[25]])),
                8 + payload.len()
            );
            // UDP checksum verifies over pseudo-header + segment.
            let udp_len = u16::try_from(8 + payload.len()).unwrap().to_be_bytes();
            let pseudo = [&src.octets()[..], &dst.octets()[..], &[0, 17], &udp_len[..]];
            let sum = sum_words(&[&p[20..]], sum_words(&pseudo, 0));
            assert_eq!(fold(sum), 0, "payload {}", payload.len());
            assert_eq!(&p[28..], payload);
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Example header from RFC 1071 style references (Wikipedia).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h], 0), 0xb861);
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let ip = Ipv4Addr::LOCALHOST;
        assert!(ipv4_udp(ip, 1, ip, 2, &vec![0; 70_000]).is_none());
    }
}
