//! The netns guest driver: an "instance" is a network namespace
//! `<prefix><first 8 hex digits of the instance id>` holding one veth end
//! (`eth0`, with the port's MAC) whose host end is the port's tap name, so
//! the overlay plugs it into the bridge like any VM tap. Guests are real
//! enough for DHCP clients, `curl`, `ping` and `nc`, with no hypervisor.
//!
//! What runs is discovered, not remembered: [`NetnsHypervisor::list`] scans
//! `/run/netns` with [`nubo_overlay::list_netns_guests`]; a guest whose
//! namespace exists is running. A small state file
//! (`<state-dir>/netns-guests.json`) only holds what a namespace name cannot
//! tell: the full instance id, the port (tap, MAC) to recreate it on start,
//! the boot counter, and the "stopped" mark (stopping a guest deletes its
//! namespace). Existing namespaces are adopted as they are on restart.
//!
//! Only one port per instance is supported; creating an instance with more
//! fails with [`HypervisorError::Unsupported`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use nubo_common::model::{self, PowerState, Timestamp};
use nubo_common::InstanceId;
use nubo_overlay::{delete_netns_guest, list_netns_guests, netns_guest_exists, Netlink};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{HypervisorError, ObservedInstance, ObservedPower};
use crate::desired::DesiredInstance;

/// File name of the driver's state inside the state directory.
pub const STATE_FILE: &str = "netns-guests.json";

/// What the driver remembers about one guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecord {
    /// The instance id.
    pub id: InstanceId,
    /// Host end of the veth (the port's tap name).
    pub tap: String,
    /// MAC of the guest's `eth0` (the port's MAC).
    pub mac: String,
    /// MTU both ends are created with.
    pub mtu: u32,
    /// Stopped by nubo: the namespace was deleted on purpose.
    #[serde(default)]
    pub stopped: bool,
    /// Boots (create, start, reboot).
    pub boot_count: u64,
    /// When the guest was first created.
    pub created_at: Timestamp,
}

/// The persisted state: guests by namespace name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsState {
    /// Guests by namespace name.
    pub guests: BTreeMap<String, GuestRecord>,
}

/// The netns driver.
pub struct NetnsHypervisor {
    prefix: String,
    path: PathBuf,
    mtu: u32,
    netlink: Netlink,
    state: Mutex<NetnsState>,
}

impl std::fmt::Debug for NetnsHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsHypervisor")
            .field("prefix", &self.prefix)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The namespace name of instance `id` under `prefix`.
pub fn guest_netns_name(prefix: &str, id: &InstanceId) -> String {
    format!("{prefix}{}", id.short_hex(8))
}

fn backend(what: &str, e: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Backend(format!("{what}: {e}"))
}

/// Observed power of a recorded guest whose namespace does or does not
/// exist. Pure.
pub fn observed_power(rec: &GuestRecord, exists: bool) -> ObservedPower {
    if exists && !rec.stopped {
        ObservedPower::Running
    } else {
        ObservedPower::Stopped
    }
}

impl NetnsHypervisor {
    /// Opens the driver: guests are namespaces named `prefix…`, state lives
    /// in `state_dir`, new guest links get `mtu`. Must be called inside a
    /// tokio runtime (it opens a netlink socket in the calling thread's
    /// network namespace, where the taps must appear).
    pub fn open(prefix: &str, state_dir: &Path, mtu: u32) -> Result<Self, HypervisorError> {
        if prefix.is_empty() || prefix.contains('/') {
            return Err(HypervisorError::Unsupported(format!(
                "netns prefix {prefix:?} must be non-empty and contain no '/'"
            )));
        }
        std::fs::create_dir_all(state_dir).map_err(|source| HypervisorError::State {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let state = load(&path)?;
        let netlink = Netlink::new().map_err(|e| backend("open netlink", e))?;
        Ok(Self {
            prefix: prefix.to_string(),
            path,
            mtu,
            netlink,
            state: Mutex::new(state),
        })
    }

    /// The namespace name of an instance.
    pub fn netns_name(&self, id: &InstanceId) -> String {
        guest_netns_name(&self.prefix, id)
    }

    async fn persist(&self, st: &NetnsState) -> Result<(), HypervisorError> {
        let err = |source| HypervisorError::State {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| err(e.into()))?;
        let tmp = self.path.with_extension("json.tmp");
        tokio::fs::write(&tmp, bytes).await.map_err(err)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(err)
    }

    /// Creates the namespace and veth of `rec` unless the namespace exists
    /// (then it is adopted as it is).
    async fn boot(&self, ns: &str, rec: &GuestRecord) -> Result<(), HypervisorError> {
        if netns_guest_exists(ns) {
            info!(netns = ns, "guest namespace exists; adopting it");
            return Ok(());
        }
        let mac: nubo_overlay::MacAddr = rec
            .mac
            .parse()
            .map_err(|e| backend("guest MAC in state file", e))?;
        // A leftover host end (namespace deleted behind our back) would
        // make the veth creation fail.
        if self
            .netlink
            .link_exists(&rec.tap)
            .await
            .map_err(|e| backend("look up tap", e))?
        {
            self.netlink
                .delete_link(&rec.tap)
                .await
                .map_err(|e| backend("delete stale tap", e))?;
        }
        self.netlink
            .create_netns_guest(ns, &rec.tap, mac, rec.mtu)
            .await
            .map_err(|e| backend(&format!("create netns guest {ns}"), e))
    }

    fn record_of<'a>(
        st: &'a mut NetnsState,
        ns: &str,
        id: InstanceId,
    ) -> Result<&'a mut GuestRecord, HypervisorError> {
        st.guests
            .get_mut(ns)
            .filter(|r| r.id == id)
            .ok_or(HypervisorError::NotFound(id))
    }
}

fn load(path: &Path) -> Result<NetnsState, HypervisorError> {
    let err = |source| HypervisorError::State {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NetnsState::default()),
        Err(e) => Err(err(e)),
    }
}

#[async_trait]
impl super::Hypervisor for NetnsHypervisor {
    fn driver(&self) -> &'static str {
        "netns"
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        let present = list_netns_guests(&self.prefix).map_err(|e| backend("list netns", e))?;
        let st = self.state.lock().await;
        for ns in &present {
            if !st.guests.contains_key(ns) {
                tracing::debug!(netns = %ns, "namespace with the guest prefix but no record; ignored");
            }
        }
        Ok(st
            .guests
            .iter()
            .map(|(ns, r)| ObservedInstance {
                id: r.id,
                power: observed_power(r, present.binary_search(ns).is_ok()),
                boot_count: r.boot_count,
                created_at: r.created_at,
                managed: true,
            })
            .collect())
    }

    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        let port = match spec.ports.as_slice() {
            [p] => p,
            [] => {
                return Err(HypervisorError::Unsupported(
                    "the netns driver needs exactly one port per instance (got none)".into(),
                ))
            }
            more => {
                return Err(HypervisorError::Unsupported(format!(
                    "the netns driver supports one port per instance (got {})",
                    more.len()
                )))
            }
        };
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        if let Some(other) = st.guests.get(&ns).filter(|r| r.id != id) {
            return Err(HypervisorError::Unsupported(format!(
                "namespace {ns} already belongs to instance {}",
                other.id
            )));
        }
        let running = spec.power() == PowerState::Running;
        let mut rec = GuestRecord {
            id,
            tap: port.tap.clone(),
            mac: port.mac.to_string(),
            mtu: self.mtu,
            stopped: !running,
            boot_count: u64::from(running),
            created_at: model::now(),
        };
        if let Some(prev) = st.guests.get(&ns) {
            rec.created_at = prev.created_at;
            rec.boot_count = prev.boot_count + u64::from(running);
        }
        if running {
            self.boot(&ns, &rec).await?;
        }
        let mut next = st.clone();
        next.guests.insert(ns, rec);
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        self.boot(&ns, rec).await?;
        rec.stopped = false;
        rec.boot_count += 1;
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        rec.stopped = true;
        // Mark first: a crash between the two steps leaves a stopped record
        // whose namespace is deleted again, never a resurrected guest.
        self.persist(&next).await?;
        *st = next;
        delete_netns_guest(&ns)
            .await
            .map_err(|e| backend(&format!("delete netns guest {ns}"), e))
    }

    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let rec = Self::record_of(&mut next, &ns, id)?;
        delete_netns_guest(&ns)
            .await
            .map_err(|e| backend(&format!("delete netns guest {ns}"), e))?;
        self.boot(&ns, rec).await?;
        rec.boot_count += 1;
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let ns = self.netns_name(&id);
        let mut st = self.state.lock().await;
        if st.guests.get(&ns).is_none_or(|r| r.id != id) {
            return Err(HypervisorError::NotFound(id));
        }
        delete_netns_guest(&ns)
            .await
            .map_err(|e| backend(&format!("delete netns guest {ns}"), e))?;
        let mut next = st.clone();
        if let Some(rec) = next.guests.remove(&ns) {
            // The veth host end dies with eth0; a tap left behind would
            // block a later guest with the same port.
            match self.netlink.link_exists(&rec.tap).await {
                Ok(true) => {
                    if let Err(e) = self.netlink.delete_link(&rec.tap).await {
                        warn!(tap = %rec.tap, error = %e, "could not delete leftover tap");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(tap = %rec.tap, error = %e, "could not look up tap"),
            }
        }
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stopped: bool) -> GuestRecord {
        GuestRecord {
            id: InstanceId::new_random(),
            tap: "tap0123".into(),
            mac: "fa:16:3e:00:00:01".into(),
            mtu: 1450,
            stopped,
            boot_count: 1,
            created_at: model::now(),
        }
    }

    #[test]
    fn names_use_eight_hex_digits() {
        let id = InstanceId::new_random();
        let n = guest_netns_name("nbtabcdg", &id);
        assert_eq!(n.len(), 16);
        assert!(n.starts_with("nbtabcdg"));
        assert_eq!(&n[8..], &id.short_hex(8));
    }

    #[test]
    fn power_follows_namespace_existence_and_stop_mark() {
        assert_eq!(observed_power(&rec(false), true), ObservedPower::Running);
        assert_eq!(observed_power(&rec(false), false), ObservedPower::Stopped);
        assert_eq!(observed_power(&rec(true), true), ObservedPower::Stopped);
        assert_eq!(observed_power(&rec(true), false), ObservedPower::Stopped);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(load(&path).unwrap(), NetnsState::default());
        let mut st = NetnsState::default();
        st.guests.insert("nbtxg1".into(), rec(true));
        std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), st);
    }
}
