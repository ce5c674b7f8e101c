//! The per-bridge UDP socket: 0.0.0.0:67 bound to one device.

use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::DhcpError;

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// Requested socket receive buffer size: room for bursts of every guest
/// of a bridge booting at once. Set with `SO_RCVBUFFORCE` (the agent has
/// CAP_NET_ADMIN), which is not capped by `net.core.rmem_max`.
const RECV_BUFFER: usize = 4 << 20;

/// Checks that `iface` can name a Linux network device.
pub fn validate_iface_name(iface: &str) -> Result<(), DhcpError> {
    let ok = !iface.is_empty()
        && iface.len() < libc::IFNAMSIZ
        && iface != "."
        && iface != ".."
        && !iface
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(DhcpError::InvalidInterfaceName(iface.to_string()))
    }
}

/// Creates a non-blocking UDP socket on 0.0.0.0:67 that only sees and only
/// sends on `iface` (SO_BINDTODEVICE), may broadcast (SO_BROADCAST), and
/// coexists with the sockets of other bridges (SO_REUSEADDR).
///
/// The socket lives in the network namespace of the calling thread.
/// Because it is bound to a device, the kernel sends on that device even
/// when no route matches the destination (it then treats it as on-link),
/// so bridges with overlapping subnets never steal each other's replies.
pub fn bind_device_socket(iface: &str) -> Result<std::net::UdpSocket, DhcpError> {
    bind_device_port(iface, SERVER_PORT, Some(RECV_BUFFER))
}

/// [`bind_device_socket`] on any `port` (the probe client binds 68),
/// with a receive buffer of `recv_buffer` bytes when given.
pub(crate) fn bind_device_port(
    iface: &str,
    port: u16,
    recv_buffer: Option<usize>,
) -> Result<std::net::UdpSocket, DhcpError> {
    validate_iface_name(iface)?;
    let err = |step: &'static str| {
        move |source| DhcpError::Socket {
            iface: iface.to_string(),
            step,
            source,
        }
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM.cloexec(), Some(Protocol::UDP))
        .map_err(err("socket(AF_INET, SOCK_DGRAM)"))?;
    sock.bind_device(Some(iface.as_bytes()))
        .map_err(err("SO_BINDTODEVICE"))?;
    sock.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
    sock.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    // Best effort: room for a burst of DISCOVERs from a batch of new VMs.
    if let Some(bytes) = recv_buffer {
        if let Err(e) = force_recv_buffer(&sock, bytes) {
            tracing::debug!(iface, error = %e, "cannot force the DHCP receive buffer size");
            if let Err(e) = sock.set_recv_buffer_size(bytes) {
                tracing::debug!(iface, error = %e, "cannot enlarge the DHCP receive buffer");
            }
        }
    }
    sock.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(err("bind 0.0.0.0:<port>"))?;
    Ok(sock.into())
}

/// `SO_RCVBUFFORCE`: like `SO_RCVBUF` without the `rmem_max` cap.
fn force_recv_buffer(sock: &Socket, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: valid descriptor; `value` lives across the call and its size
    // is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        for good in ["nb-100", "br0", "a", "nbt1234-x.y_z"] {
            assert!(validate_iface_name(good).is_ok(), "{good}");
        }
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", "a:0", "..", "a\0"] {
            assert!(
                matches!(
                    validate_iface_name(bad),
                    Err(DhcpError::InvalidInterfaceName(_))
                ),
                "{bad:?}"
            );
        }
    }
}
