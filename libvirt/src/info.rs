//! Observed state of domains, as reported by the driver.

use std::ffi::c_int;

use virt_sys as sys;

/// Power state of a domain, folded from libvirt's `virDomainState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Running (including blocked on I/O and "being shut down").
    Running,
    /// Paused by libvirt or suspended by guest power management.
    Paused,
    /// Not running.
    ShutOff,
    /// Crashed (only seen with `on_crash=preserve`).
    Crashed,
    /// libvirt reports no state.
    Unknown,
}

impl PowerState {
    /// Maps a `virDomainState` value.
    pub(crate) fn from_raw(state: c_int) -> Self {
        match u32::try_from(state).unwrap_or(u32::MAX) {
            sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED | sys::VIR_DOMAIN_SHUTDOWN => {
                PowerState::Running
            }
            sys::VIR_DOMAIN_PAUSED | sys::VIR_DOMAIN_PMSUSPENDED => PowerState::Paused,
            sys::VIR_DOMAIN_SHUTOFF => PowerState::ShutOff,
            sys::VIR_DOMAIN_CRASHED => PowerState::Crashed,
            _ => PowerState::Unknown,
        }
    }

    /// Whether a QEMU process exists for the domain.
    pub fn is_active(self) -> bool {
        matches!(self, PowerState::Running | PowerState::Paused)
    }
}

/// A nubo-owned domain as observed on this hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Instance id (the domain UUID).
    pub instance_id: String,
    /// libvirt domain name (`nubo-<uuid>`).
    pub name: String,
    /// Current power state.
    pub state: PowerState,
    /// PID of the QEMU process while active. It changes on every cold start,
    /// so it doubles as a boot generation.
    pub qemu_pid: Option<u32>,
    /// Virtual CPUs (of the definition while shut off).
    pub vcpus: u32,
    /// Memory in MiB (of the definition while shut off).
    pub memory_mb: u64,
}

/// A domain on this hypervisor that nubo does not own (no nubo metadata).
/// The agent leaves it alone and only reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignDomain {
    /// Domain UUID.
    pub uuid: String,
    /// Domain name.
    pub name: String,
    /// Current power state.
    pub state: PowerState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_libvirt_states() {
        let raw = |s: u32| PowerState::from_raw(c_int::try_from(s).unwrap());
        assert_eq!(raw(sys::VIR_DOMAIN_RUNNING), PowerState::Running);
        assert_eq!(raw(sys::VIR_DOMAIN_SHUTDOWN), PowerState::Running);
        assert_eq!(raw(sys::VIR_DOMAIN_PMSUSPENDED), PowerState::Paused);
        assert_eq!(raw(sys::VIR_DOMAIN_SHUTOFF), PowerState::ShutOff);
        assert_eq!(raw(sys::VIR_DOMAIN_CRASHED), PowerState::Crashed);
        assert_eq!(PowerState::from_raw(-1), PowerState::Unknown);
        assert!(!PowerState::ShutOff.is_active());
    }
}
