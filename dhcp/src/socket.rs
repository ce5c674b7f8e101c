//! The per-bridge UDP socket: 0.0.0.0:67 bound to one device.

use std::net::{Ipv4Addr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::DhcpError;

/// DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// Requested socket receive buffer size.
const RECV_BUFFER: usize = 1 << 20;

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
    // Best effort: room for a burst of DISCOVERs from a batch of new VMs
    // (the kernel caps it at net.core.rmem_max).
    if let Err(e) = sock.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!(iface, error = %e, "cannot enlarge the DHCP receive buffer");
    }
    sock.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT).into())
        .map_err(err("bind 0.0.0.0:67"))?;
    Ok(sock.into())
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
