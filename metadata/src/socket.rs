//! The device-bound listening socket of one bridge.

use std::ffi::CString;
use std::io;
use std::net::SocketAddrV4;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::MetadataError;

/// Linux `IFNAMSIZ - 1`.
const MAX_IFNAME_LEN: usize = 15;

/// Checks that `name` can be a Linux interface name.
pub(crate) fn validate_ifname(name: &str) -> Result<(), MetadataError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(MetadataError::InvalidBridgeName {
            name: name.to_owned(),
        })
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> Result<u32, MetadataError> {
    let no_such = |source| MetadataError::NoSuchInterface {
        bridge: name.to_owned(),
        source,
    };
    let c_name = CString::new(name).map_err(|_| MetadataError::InvalidBridgeName {
        name: name.to_owned(),
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(no_such(io::Error::last_os_error()))
    } else {
        Ok(index)
    }
}

/// Creates a non-blocking TCP listener on `addr`, bound with
/// `SO_BINDTODEVICE` to `bridge`, in the calling thread's network namespace.
///
/// `IP_FREEBIND` lets the bind succeed before the bridge carries the
/// address; `SO_REUSEADDR` lets a restarted agent bind again while old
/// connections sit in TIME_WAIT. The device binding is set before `bind`, so
/// one listener per bridge can share the same address and port.
pub(crate) fn bind_listener(
    bridge: &str,
    addr: SocketAddrV4,
    backlog: i32,
) -> Result<std::net::TcpListener, MetadataError> {
    let step = |step: &'static str| {
        let bridge = bridge.to_owned();
        move |source| MetadataError::Socket {
            bridge,
            step,
            source,
        }
    };
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(step("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(step("SO_REUSEADDR"))?;
    socket.set_freebind_v4(true).map_err(step("IP_FREEBIND"))?;
    socket
        .bind_device(Some(bridge.as_bytes()))
        .map_err(step("SO_BINDTODEVICE"))?;
    socket.set_nonblocking(true).map_err(step("O_NONBLOCK"))?;
    socket.bind(&addr.into()).map_err(step("bind"))?;
    socket.listen(backlog).map_err(step("listen"))?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_validated() {
        for good in ["nb-1", "br0", "nb-16777215", "a"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "a:b",
            "a b",
            "sixteen-chars-xx",
            ".",
            "..",
            "a\0b",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_interface_is_reported() {
        let err = ifindex("nbt-nonexist0").unwrap_err();
        assert!(
            matches!(err, MetadataError::NoSuchInterface { .. }),
            "{err}"
        );
    }
}
