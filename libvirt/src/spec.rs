//! Input types describing the domain nubo wants libvirt to run.
//!
//! These are deliberately small and independent of the agent's types: the
//! agent maps its instance/port/flavor objects onto a [`DomainSpec`].

use std::path::PathBuf;

use crate::disk::{RbdDisk, VolumeDisk};

/// Prefix of the libvirt domain name of every nubo instance (`nubo-<uuid>`).
pub const DEFAULT_NAME_PREFIX: &str = "nubo-";

/// Hypervisor backend of the domain (`<domain type=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DomainType {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// Pure emulation (QEMU TCG); slow but runs anywhere.
    Qemu,
}

impl DomainType {
    /// The value of libvirt's `<domain type=…>` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

/// Root disk of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSpec {
    /// A local qcow2 file (usually an overlay made by [`crate::ImageCache`]).
    LocalQcow2 {
        /// Absolute path of the qcow2 file.
        path: PathBuf,
    },
    /// A Ceph RBD image (e.g. a COW clone of an imported image), reached
    /// by QEMU's librbd client.
    Rbd(RbdDisk),
}

/// A network interface backed by a tap device that nubo creates and owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Name of the (persistent, pre-created) tap device, at most 15 bytes.
    pub tap: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU the guest side should use; `None` leaves the default.
    pub mtu: Option<u32>,
}

/// Direct kernel boot parameters for images that carry their own kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// Path of the kernel image.
    pub kernel: PathBuf,
    /// Path of the initrd, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, if any.
    pub cmdline: Option<String>,
}

/// Everything needed to render a libvirt domain for one nubo instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// Instance id: a UUID string, used as the libvirt domain UUID.
    pub instance_id: String,
    /// Human-readable instance name (stored in the nubo metadata only).
    pub name: String,
    /// Number of virtual CPUs (≥ 1).
    pub vcpus: u32,
    /// Memory in MiB (≥ 16).
    pub memory_mb: u64,
    /// Root disk.
    pub disk: DiskSpec,
    /// Data disks (volumes) after the root disk, in target order.
    pub volumes: Vec<VolumeDisk>,
    /// Direct kernel boot; `None` boots from the disk.
    pub kernel: Option<KernelBoot>,
    /// Network interfaces, in guest order.
    pub nics: Vec<Nic>,
    /// File that receives the serial console output (appended to).
    pub console_log: PathBuf,
    /// Hypervisor backend.
    pub domain_type: DomainType,
    /// Whether to expose a VNC console on 127.0.0.1 (auto-allocated port).
    pub vnc: bool,
}

/// Why a [`DomainSpec`] cannot be turned into a domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The instance id is not a UUID.
    #[error("instance id {0:?} is not a UUID")]
    InstanceId(String),
    /// vcpus is 0.
    #[error("instance {0}: vcpus must be at least 1")]
    NoVcpus(String),
    /// Memory below the 16 MiB floor.
    #[error("instance {instance_id}: memory {memory_mb} MiB is below 16 MiB")]
    Memory {
        /// Instance concerned.
        instance_id: String,
        /// Requested memory.
        memory_mb: u64,
    },
    /// A tap name that Linux would reject.
    #[error(
        "instance {instance_id}: invalid tap name {tap:?} (1-15 bytes, no '/', ':' or whitespace)"
    )]
    TapName {
        /// Instance concerned.
        instance_id: String,
        /// Offending name.
        tap: String,
    },
    /// A malformed MAC address.
    #[error("instance {instance_id}: invalid MAC address {mac:?}")]
    Mac {
        /// Instance concerned.
        instance_id: String,
        /// Offending MAC.
        mac: String,
    },
    /// A path that is not absolute or not valid UTF-8.
    #[error("instance {instance_id}: {what} path {path:?} must be absolute UTF-8")]
    Path {
        /// Instance concerned.
        instance_id: String,
        /// Which path (disk, kernel, …).
        what: &'static str,
        /// Offending path.
        path: PathBuf,
    },
    /// A volume with a bad target, serial or RBD name.
    #[error("instance {instance_id}: volume disk {target:?}: {reason}")]
    Volume {
        /// Instance concerned.
        instance_id: String,
        /// The volume's target device.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// MTU outside 68..=65535.
    #[error("instance {instance_id}: MTU {mtu} out of range 68..=65535")]
    Mtu {
        /// Instance concerned.
        instance_id: String,
        /// Offending MTU.
        mtu: u32,
    },
}

impl DomainSpec {
    /// Checks every field libvirt or the kernel would otherwise reject later
    /// with a less precise message.
    pub fn validate(&self) -> Result<(), SpecError> {
        let id = || self.instance_id.clone();
        if uuid::Uuid::parse_str(&self.instance_id).is_err() {
            return Err(SpecError::InstanceId(id()));
        }
        if self.vcpus == 0 {
            return Err(SpecError::NoVcpus(id()));
        }
        if self.memory_mb < 16 {
            return Err(SpecError::Memory {
                instance_id: id(),
                memory_mb: self.memory_mb,
            });
        }
        for nic in &self.nics {
            if !valid_ifname(&nic.tap) {
                return Err(SpecError::TapName {
                    instance_id: id(),
                    tap: nic.tap.clone(),
                });
            }
            if !valid_mac(&nic.mac) {
                return Err(SpecError::Mac {
                    instance_id: id(),
                    mac: nic.mac.clone(),
                });
            }
            if let Some(mtu) = nic.mtu {
                if !(68..=65535).contains(&mtu) {
                    return Err(SpecError::Mtu {
                        instance_id: id(),
                        mtu,
                    });
                }
            }
        }
        let mut paths = vec![("console log", &self.console_log)];
        if let DiskSpec::LocalQcow2 { path } = &self.disk {
            paths.push(("disk", path));
        }
        self.validate_volumes()?;
        if let Some(k) = &self.kernel {
            paths.push(("kernel", &k.kernel));
            if let Some(initrd) = &k.initrd {
                paths.push(("initrd", initrd));
            }
        }
        for (what, path) in paths {
            if !path.is_absolute() || path.to_str().is_none() {
                return Err(SpecError::Path {
                    instance_id: id(),
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

impl DomainSpec {
    fn validate_volumes(&self) -> Result<(), SpecError> {
        let mut seen = std::collections::BTreeSet::from(["vda".to_owned()]);
        for v in &self.volumes {
            let bad = |reason| SpecError::Volume {
                instance_id: self.instance_id.clone(),
                target: v.target.clone(),
                reason,
            };
            if !valid_target(&v.target) {
                return Err(bad("target must be vd[b-z]"));
            }
            if !seen.insert(v.target.clone()) {
                return Err(bad("target used twice"));
            }
            if v.serial.is_empty()
                || v.serial.len() > 20
                || !v
                    .serial
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad("serial must be 1-20 characters of [A-Za-z0-9_-]"));
            }
            if !v.source.name.contains('/') || v.source.name.contains(char::is_whitespace) {
                return Err(bad("RBD name must be pool/image"));
            }
        }
        Ok(())
    }
}

/// `vdb` … `vdz`.
fn valid_target(t: &str) -> bool {
    t.len() == 3 && t.starts_with("vd") && t.as_bytes()[2].is_ascii_lowercase() && t != "vda"
}

/// Linux interface name rules: 1..=15 bytes, no '/', ':' or whitespace.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// `aa:bb:cc:dd:ee:ff`, hexadecimal, unicast.
fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_rules() {
        assert!(valid_ifname("tap1234"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname("ta/p"));
        assert!(!valid_ifname("ta p"));
    }

    #[test]
    fn mac_rules() {
        assert!(valid_mac("52:54:00:12:34:56"));
        assert!(valid_mac("FA:16:3E:00:00:01"));
        assert!(!valid_mac("53:54:00:12:34:56"), "multicast");
        assert!(!valid_mac("52:54:00:12:34"));
        assert!(!valid_mac("52:54:00:12:34:5g"));
    }
}
