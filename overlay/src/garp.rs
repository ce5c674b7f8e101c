//! Gratuitous ARP: announcing that an address now lives behind a MAC
//! (a floating IP arriving on this node after a boot, an evacuation or a
//! migration), so that the upstream router and the hosts of the external
//! network update their ARP caches at once instead of after their timeout.
//!
//! Written by hand over an `AF_PACKET` socket: the frame is 42 fixed
//! bytes, and neither `arping` (a program the node would need installed)
//! nor a packet-crafting crate is worth a dependency for it.

use std::net::Ipv4Addr;

use nubo_netid::MacAddr;

use crate::error::OverlayError;

/// How many announcements are sent (like `arping -U -c 3`, without the
/// pauses: a reconcile pass must not sleep).
const COPIES: usize = 3;

/// The ARP request a host sends to announce `ip` at `mac`: broadcast,
/// sender and target address both `ip`. Pure.
pub fn gratuitous_arp_frame(mac: MacAddr, ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.octets());
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac.octets());
    f[28..32].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// The same announcement sent to one host only (Ethernet destination
/// `to`): its ARP cache takes `mac` for `ip`, nobody else hears it. Pure.
pub fn unicast_gratuitous_arp_frame(mac: MacAddr, ip: Ipv4Addr, to: MacAddr) -> [u8; 42] {
    let mut f = gratuitous_arp_frame(mac, ip);
    f[0..6].copy_from_slice(&to.octets());
    f
}

/// Sends [`COPIES`] gratuitous ARP requests for `ip` from interface
/// `ifname` (of the calling thread's namespace) with source `mac`.
pub fn send_gratuitous_arp(ifname: &str, mac: MacAddr, ip: Ipv4Addr) -> Result<(), OverlayError> {
    send_frames(ifname, MacAddr([0xff; 6]), &gratuitous_arp_frame(mac, ip))
}

/// Sends [`COPIES`] gratuitous ARP requests for `ip` at `mac` out of
/// interface `ifname` to the one host `to` (e.g. out of a guest's tap, to
/// the guest: a metadata address that now answers from this node's bridge).
pub fn send_gratuitous_arp_to(
    ifname: &str,
    mac: MacAddr,
    ip: Ipv4Addr,
    to: MacAddr,
) -> Result<(), OverlayError> {
    send_frames(ifname, to, &unicast_gratuitous_arp_frame(mac, ip, to))
}

/// The index of interface `ifname` in the calling thread's namespace.
fn if_index(ifname: &str) -> Result<u32, OverlayError> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| OverlayError::InvalidIfName(ifname.to_string()))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(OverlayError::NoSuchLink(ifname.to_string()));
    }
    Ok(index)
}

/// The hardware address of interface `ifname` in the calling thread's
/// namespace (`SIOCGIFHWADDR`).
pub fn link_mac(ifname: &str) -> Result<MacAddr, OverlayError> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(OverlayError::InvalidIfName(ifname.to_string()));
    }
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(OverlayError::sys(
            format!("socket for the address of {ifname}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here only.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = b as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name of `req` and
    // writes its address into it; `req` outlives the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            std::ptr::addr_of_mut!(req),
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Err(OverlayError::NoSuchLink(ifname.to_string()));
        }
        return Err(OverlayError::sys(format!("SIOCGIFHWADDR of {ifname}"), e));
    }
    // SAFETY: the call succeeded, so the union holds the hardware address.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(MacAddr(mac))
}

/// Sends [`COPIES`] of `frame` out of `ifname` to link address `to`.
fn send_frames(ifname: &str, to: MacAddr, frame: &[u8; 42]) -> Result<(), OverlayError> {
    let index = if_index(ifname)?;
    let sys = |what: &str| {
        OverlayError::sys(
            format!("{what} for gratuitous ARP on {ifname}"),
            std::io::Error::last_os_error(),
        )
    };
    let proto = 0x0806u16.to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(sys("socket(AF_PACKET)"));
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned here only.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut addr: libc::sockaddr_ll = unsafe {
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        std::mem::zeroed()
    };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex =
        i32::try_from(index).map_err(|_| OverlayError::NoSuchLink(ifname.to_string()))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&to.octets());
    for _ in 0..COPIES {
        // SAFETY: `frame` and `addr` outlive the call; lengths match.
        let sent = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(sys("sendto"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mac = MacAddr([0xfa, 0x16, 0x3f, 1, 2, 3]);
        let f = gratuitous_arp_frame(mac, Ipv4Addr::new(10, 99, 0, 20));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.octets());
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[10, 99, 0, 20]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 99, 0, 20]);
        // The unicast form differs only by its destination.
        let guest = MacAddr([0xfa, 0x16, 0x3e, 4, 5, 6]);
        let u = unicast_gratuitous_arp_frame(mac, Ipv4Addr::new(10, 99, 0, 20), guest);
        assert_eq!(&u[0..6], &guest.octets());
        assert_eq!(&u[6..], &f[6..]);
    }

    #[test]
    fn link_mac_reads_loopback_and_refuses_bad_names() {
        assert_eq!(link_mac("lo").unwrap(), MacAddr([0; 6]));
        assert!(matches!(
            link_mac("nbt-no-such-link"),
            Err(OverlayError::InvalidIfName(_))
        ));
        assert!(matches!(
            link_mac("nbtnosuch0"),
            Err(OverlayError::NoSuchLink(_))
        ));
    }
}
