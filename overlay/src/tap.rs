//! Persistent tap devices for VM ports.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use nubo_netid::MacAddr;
use tracing::info;

use crate::error::OverlayError;
use crate::netlink::Netlink;

/// Validates a Linux interface name (1-15 bytes, no `/`, whitespace, NUL,
/// `:`; not `.` or `..`).
pub(crate) fn validate_ifname(name: &str) -> Result<(), OverlayError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(OverlayError::InvalidIfName(name.to_string()))
    }
}

impl Netlink {
    /// Creates a persistent tap `name` (`/dev/net/tun`, `TUNSETIFF` with
    /// `IFF_TAP | IFF_NO_PI`, then `TUNSETPERSIST`), sets its MAC and MTU.
    /// It stays down until the overlay attaches it. If a tap with this name
    /// already exists and is unused it is reused.
    ///
    /// The tap is created in the network namespace of the *calling thread*,
    /// which must be the one this handle was opened in.
    pub async fn create_tap(&self, name: &str, mac: MacAddr, mtu: u32) -> Result<(), OverlayError> {
        validate_ifname(name)?;
        make_persistent_tap(name)?;
        let configured = async {
            self.set_mac(name, mac).await?;
            self.set_mtu(name, mtu).await
        }
        .await;
        match configured {
            Ok(()) => {
                info!(tap = name, %mac, mtu, "tap created");
                Ok(())
            }
            Err(e) => {
                let _ = self.delete_link(name).await;
                Err(e)
            }
        }
    }
}

fn make_persistent_tap(name: &str) -> Result<(), OverlayError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| OverlayError::sys("open /dev/net/tun", e))?;
    // SAFETY: ifreq is plain old data; all-zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(OverlayError::sys(
            format!("TUNSETIFF (create tap {name})"),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(OverlayError::sys(
            format!("TUNSETPERSIST (keep tap {name})"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(validate_ifname("tap0123456789a").is_ok());
        assert!(validate_ifname("123456789012345").is_ok());
        for bad in ["", "1234567890123456", "a/b", "a b", "a:b", ".", ".."] {
            assert!(validate_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }
}
