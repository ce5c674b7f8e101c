//! The libvirt driver: instances are QEMU domains managed through
//! [`nubo_libvirt::LibvirtDriver`].
//!
//! Create = root disk from the storage backend ([`crate::storage`]: image
//! parts downloaded and verified into the local cache, then a qcow2 overlay
//! or an RBD clone sized by the flavor) → one persistent
//! tap per port (nubo owns the taps; the overlay subsystem enslaves them) →
//! domain defined and started (serial console appended to
//! `<state-dir>/console/<id>.log`, VNC on 127.0.0.1).
//!
//! What runs is discovered from libvirt, never remembered: existing nubo
//! domains are adopted as they are after an agent restart (same QEMU
//! process). A small state file (`<state-dir>/libvirt-instances.json`) only
//! keeps what libvirt does not: the taps to recreate before a cold start and
//! to delete with the instance, the boot counter and the creation time.
//!
//! Unless `--no-network`, domains are started with their vCPUs paused and
//! registered in [`PlugWaiters`]: the plug gate ([`crate::compute::plug_gate`])
//! resumes each once its taps are on their bridges, so no guest boots with
//! an unplugged NIC. While held, a domain is reported running (booting) and
//! [`resume`](super::Hypervisor::resume) leaves it paused. The hold is also recorded
//! in the state file, so an agent restarted while a domain waits holds it
//! again ([`holds_to_restore`]) rather than letting compute resume it early.
//!
//! Volumes are RBD network disks `vdb`… hot-plugged with
//! `virDomainAttachDeviceFlags` (live + config) and read back from the
//! domain XML (`pool/vol-<id>` sources); QoS is `<iotune>`, changed live
//! with `virDomainSetBlockIoTune`.
//!
//! Lifecycle events feed [`LibvirtHypervisor::guest_stops`]: a guest that
//! powered itself off (not stopped by nubo) is reported there so the agent
//! can record the new desired power (see `crate::compute::power_sync`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nubo_common::model::{
    self, MigrationMode, OutgoingMigration, PowerState as DesiredPower, Timestamp,
};
use nubo_common::model::{Qos, ROOT_DEVICE};
use nubo_common::{InstanceId, VolumeId};
use nubo_libvirt::{
    AttachedDisk, DiskSpec, DomainSpec, DomainType, DriverConfig, IoTune, KernelBoot,
    LibvirtDriver, LifecycleEvent, MigrateOptions, Nic, PowerState, StopReason, VolumeDisk,
};
use nubo_overlay::Netlink;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};
use tracing::{info, info_span, warn, Instrument};

use super::plug::PlugWaiters;
use super::state_file::state_err;
use super::{
    AttachedVolume, HypervisorError, InstanceSize, ObservedInstance, ObservedPower, VolumeToAttach,
};
use crate::config::{AgentConfig, DomainTypeKind};
use crate::state::desired::{DesiredInstance, DesiredPort};
use crate::storage::images::ImageFetcher;
use crate::storage::StorageBackend;

/// File name of the driver's state inside the state directory.
pub const STATE_FILE: &str = "libvirt-instances.json";

/// A tap nubo created for a port of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    /// Device name.
    pub name: String,
    /// MAC of the guest NIC (the port's MAC).
    pub mac: String,
    /// MTU.
    pub mtu: u32,
}

/// What the driver remembers about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Taps in NIC order.
    pub taps: Vec<TapRecord>,
    /// Boots (create, start, reboot).
    pub boot_count: u64,
    /// When it was created here.
    pub created_at: Timestamp,
    /// Started paused for the plug gate and not released yet: an agent
    /// restarted meanwhile holds it again ([`holds_to_restore`]) instead of
    /// letting compute resume it before its taps are wired.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plug_held: bool,
    /// Prepared here for an incoming migration and not settled yet (see
    /// [`super::Hypervisor::settle_arrived`]): removing it never removes a
    /// shared root disk (the source's guest uses it), and a guest of it
    /// that runs here is never destroyed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arriving: bool,
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibvirtState {
    /// Instances by id.
    pub instances: BTreeMap<InstanceId, InstanceRecord>,
}

/// The plug holds to restore when the driver opens (after an agent
/// restart), from the state file and the domains libvirt shows: an instance
/// recorded as held whose domain is still paused is held again (its taps
/// may not be on their bridges yet); the other recorded holds are stale
/// (the gate released it just before the restart, or it was stopped or
/// removed since) and are cleared. Returns `(hold, stale)`. Pure.
pub fn holds_to_restore(
    state: &LibvirtState,
    domains: &[(InstanceId, PowerState)],
) -> (BTreeSet<InstanceId>, BTreeSet<InstanceId>) {
    let paused: BTreeSet<InstanceId> = domains
        .iter()
        .filter(|(_, p)| *p == PowerState::Paused)
        .map(|(id, _)| *id)
        .collect();
    state
        .instances
        .iter()
        .filter(|(_, r)| r.plug_held)
        .map(|(id, _)| *id)
        .partition(|id| paused.contains(id))
}

/// The usage counters of a nubo domain's statistics (`None` for a domain
/// whose UUID is not an instance id). Pure.
pub fn instance_stats(d: &nubo_libvirt::DomainStats) -> Option<super::InstanceStats> {
    let id: InstanceId = d.uuid.parse().ok()?;
    Some(super::InstanceStats {
        id,
        cpu_ns: d.cpu_time_ns,
        memory_used_bytes: d.balloon.used_bytes(),
        memory_available_bytes: d.balloon.available_bytes(),
        disks: d
            .disks
            .iter()
            .map(|b| super::DiskCounters {
                target: b.name.clone(),
                read_bytes: b.read_bytes,
                read_ops: b.read_ops,
                write_bytes: b.write_bytes,
                write_ops: b.write_ops,
            })
            .collect(),
        nics: d
            .interfaces
            .iter()
            .map(|n| super::NicCounters {
                tap: n.name.clone(),
                rx_bytes: n.rx_bytes,
                rx_packets: n.rx_packets,
                rx_drops: n.rx_drops,
                tx_bytes: n.tx_bytes,
                tx_packets: n.tx_packets,
                tx_drops: n.tx_drops,
            })
            .collect(),
    })
}

/// Maps libvirt's power state to nubo's. Pure.
pub fn observed_power(p: PowerState) -> ObservedPower {
    match p {
        PowerState::Running => ObservedPower::Running,
        PowerState::Paused => ObservedPower::Paused,
        PowerState::ShutOff | PowerState::Crashed | PowerState::Unknown => ObservedPower::Stopped,
    }
}

/// Whether a lifecycle event means the guest stopped by itself (powered
/// off, crashed, QEMU died) rather than on nubo's request. Pure.
pub fn is_guest_stop(ev: LifecycleEvent, requested_by_nubo: bool) -> bool {
    match ev {
        LifecycleEvent::Stopped(
            StopReason::Shutdown | StopReason::Crashed | StopReason::Failed,
        )
        | LifecycleEvent::Crashed => !requested_by_nubo,
        _ => false,
    }
}

/// The QEMU pid-file directory libvirtd uses for `uri`: `<dir>/qemu` when
/// the URI names a socket `<dir>/libvirt-sock` (a private libvirtd whose
/// run directory is bind-mounted), `/run/libvirt/qemu` otherwise. Pure.
pub fn qemu_pid_dir(uri: &str) -> PathBuf {
    let socket = uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("socket="));
    match socket.and_then(|s| Path::new(s).parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("qemu"),
        _ => PathBuf::from("/run/libvirt/qemu"),
    }
}

/// The MAC of the host end of a tap whose guest NIC has `guest_mac`:
/// libvirt's convention, first octet `fe` (locally administered, unicast).
/// Pure.
pub fn host_side_mac(guest_mac: &str) -> String {
    match guest_mac.split_once(':') {
        Some((_, rest)) => format!("fe:{rest}"),
        None => guest_mac.to_string(),
    }
}

/// Renders the domain spec of a desired instance. Pure.
pub fn domain_spec(
    d: &DesiredInstance,
    disk: DiskSpec,
    kernel: Option<(PathBuf, Option<PathBuf>)>,
    mtu: u32,
    console_log: PathBuf,
    domain_type: DomainType,
) -> DomainSpec {
    DomainSpec {
        instance_id: d.id().to_string(),
        name: d.spec.name.clone(),
        vcpus: d.resources.vcpus.max(1),
        memory_mb: d.resources.ram_mb,
        disk,
        volumes: vec![],
        kernel: kernel.map(|(kernel, initrd)| KernelBoot {
            kernel,
            initrd,
            cmdline: d.image.kernel_cmdline.clone(),
        }),
        nics: d
            .ports
            .iter()
            .map(|p| Nic {
                tap: p.tap.clone(),
                mac: p.mac.to_string(),
                mtu: Some(mtu),
            })
            .collect(),
        console_log,
        domain_type,
        vnc: true,
    }
}

/// The libvirt migration options of an outgoing order: the destination
/// libvirtd from `uri_template` (`{host}` = its underlay address), the
/// stream to that address, QEMU's native TLS with a `qemu+tls` URI, block
/// migration when asked or when the root disk is not shared (a local disk
/// must be copied, never abandoned), post-copy after the pre-copy budget
/// when that is shorter than the total. Pure.
pub fn migrate_options(
    uri_template: &str,
    destination: std::net::IpAddr,
    order: &OutgoingMigration,
    shared_root: bool,
) -> MigrateOptions {
    let host = match destination {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    let destination_uri = uri_template.replace("{host}", &host);
    let budget = Duration::from_secs(u64::from(order.budget_secs.max(1)));
    let precopy = Duration::from_secs(u64::from(order.precopy_budget_secs));
    MigrateOptions {
        tls: destination_uri.starts_with("qemu+tls:"),
        destination_uri,
        migration_uri: Some(format!("tcp://{host}")),
        block: order.block || !shared_root,
        postcopy_after: (order.precopy_budget_secs > 0 && precopy < budget).then_some(precopy),
        budget,
        bandwidth_mib_s: None,
    }
}

/// libvirt `<iotune>` limits of a volume type's QoS. Pure.
pub fn iotune_of(q: &Qos) -> IoTune {
    IoTune {
        read_iops_sec: q.read_iops_sec,
        write_iops_sec: q.write_iops_sec,
        read_bytes_sec: q.read_bytes_sec,
        write_bytes_sec: q.write_bytes_sec,
    }
}

/// The volume of an RBD source `pool/vol-<id>`, if it is one. Pure.
pub fn volume_of_source(source: &str) -> Option<VolumeId> {
    source
        .rsplit('/')
        .next()?
        .strip_prefix("vol-")?
        .parse()
        .ok()
}

/// The volumes among a domain's disks (the root disk `vda` excluded, even
/// when it is a boot volume). Pure.
pub fn attached_volumes(disks: &[AttachedDisk]) -> Vec<AttachedVolume> {
    disks
        .iter()
        .filter(|d| d.target != ROOT_DEVICE)
        .filter_map(|d| {
            Some(AttachedVolume {
                volume: volume_of_source(d.source.as_deref()?)?,
                target: d.target.clone(),
                qos: Qos {
                    read_iops_sec: d.iotune.read_iops_sec,
                    write_iops_sec: d.iotune.write_iops_sec,
                    read_bytes_sec: d.iotune.read_bytes_sec,
                    write_bytes_sec: d.iotune.write_bytes_sec,
                },
            })
        })
        .collect()
}

/// The libvirt driver.
pub struct LibvirtHypervisor {
    driver: LibvirtDriver,
    /// Where root disks live and how QEMU reaches volumes.
    storage: Arc<dyn StorageBackend>,
    netlink: Netlink,
    state_path: PathBuf,
    console_dir: PathBuf,
    domain_type: DomainType,
    mtu: u32,
    shutdown_timeout: Duration,
    state: Mutex<LibvirtState>,
    /// Instances nubo is stopping right now (their stop events are ours).
    stopping: Arc<std::sync::Mutex<BTreeSet<InstanceId>>>,
    guest_stops: Mutex<Option<mpsc::UnboundedReceiver<InstanceId>>>,
    foreign_seen: std::sync::Mutex<BTreeSet<String>>,
    /// Serializes define/start: a burst of concurrent defines on one
    /// connection made libvirtd 9 reset it (seen with 5 at once).
    libvirt_writes: tokio::sync::Semaphore,
    /// Domains started paused until their NICs are plugged (`None` with
    /// `--no-network`: nothing would plug them).
    plug: Option<Arc<PlugWaiters>>,
    /// Sizes of the domains seen by the last [`Self::list`], for
    /// [`super::Resizer::sizes`].
    stopped_sizes: std::sync::Mutex<BTreeMap<InstanceId, InstanceSize>>,
    /// Destination libvirtd URI template of live migrations (`{host}`).
    migration_uri: String,
    /// Bandwidth cap of live migrations (MiB/s).
    migration_bandwidth_mib_s: Option<u64>,
}

impl std::fmt::Debug for LibvirtHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtHypervisor")
            .field("uri", &self.driver.config().uri)
            .finish_non_exhaustive()
    }
}

fn backend(what: &str, e: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Backend(format!("{what}: {e}"))
}

fn mkdir_world_traversable(dir: &Path) -> Result<(), HypervisorError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(state_err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(state_err(dir))
}

impl LibvirtHypervisor {
    /// Connects to libvirt as configured, loads the state file and starts
    /// following lifecycle events. Must run in the network namespace where
    /// the taps belong (the agent's).
    pub async fn open(cfg: &AgentConfig) -> Result<Self, HypervisorError> {
        let lv = &cfg.libvirt;
        let state_dir = &cfg.state_dir;
        // QEMU runs unprivileged and must reach overlays, bases and logs.
        mkdir_world_traversable(state_dir)?;
        let console_dir = state_dir.join("console");
        mkdir_world_traversable(&console_dir)?;
        let state_path = state_dir.join(STATE_FILE);
        let state = load(&state_path)?;
        let mut dcfg = DriverConfig::new(lv.uri.clone());
        dcfg.name_prefix = lv.prefix.clone();
        dcfg.qemu_pid_dir = qemu_pid_dir(&lv.uri);
        let driver = LibvirtDriver::connect_with(dcfg)
            .await
            .map_err(|e| backend("libvirt", e))?;
        let netlink = Netlink::new().map_err(|e| backend("open netlink", e))?;
        let stopping: Arc<std::sync::Mutex<BTreeSet<InstanceId>>> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut events = driver
            .events()
            .await
            .map_err(|e| backend("libvirt events", e))?;
        {
            let stopping = stopping.clone();
            tokio::spawn(
                async move {
                    while let Some(ev) = events.recv().await {
                        let Ok(id) = ev.instance_id.parse::<InstanceId>() else {
                            continue;
                        };
                        let ours = stopping.lock().map(|s| s.contains(&id)).unwrap_or(false);
                        tracing::debug!(instance = %id, event = ?ev.event, "libvirt event");
                        if is_guest_stop(ev.event, ours) {
                            info!(instance = %id, event = ?ev.event, "guest stopped by itself");
                            let _ = tx.send(id);
                        }
                    }
                    warn!("libvirt event stream ended");
                }
                .instrument(info_span!("libvirt_events")),
            );
        }
        let images =
            ImageFetcher::new(cfg.api_endpoint.clone(), state_dir).with_auth(cfg.api_auth.clone());
        let storage = crate::storage::open(cfg, images, &driver)
            .await
            .map_err(|e| backend("storage", e))?;
        Self {
            driver,
            storage,
            netlink,
            state_path,
            console_dir,
            domain_type: match lv.domain_type {
                DomainTypeKind::Kvm => DomainType::Kvm,
                DomainTypeKind::Qemu => DomainType::Qemu,
            },
            mtu: u32::from(cfg.underlay_mtu.saturating_sub(50).max(68)),
            shutdown_timeout: lv.shutdown_timeout,
            state: Mutex::new(state),
            stopping,
            guest_stops: Mutex::new(Some(rx)),
            foreign_seen: std::sync::Mutex::default(),
            libvirt_writes: tokio::sync::Semaphore::new(1),
            plug: (!cfg.no_network).then(PlugWaiters::new),
            stopped_sizes: std::sync::Mutex::default(),
            migration_uri: lv.migration_uri.clone(),
            migration_bandwidth_mib_s: lv.migration_bandwidth_mib_s,
        }
        .restore_plug_holds()
        .await
    }

    /// Holds again the domains a previous incarnation of the agent started
    /// paused and had not released yet ([`holds_to_restore`]).
    async fn restore_plug_holds(self) -> Result<Self, HypervisorError> {
        let doms = self
            .driver
            .list_nubo_domains()
            .await
            .map_err(|e| backend("list libvirt domains", e))?;
        let observed: Vec<(InstanceId, PowerState)> = doms
            .iter()
            .filter_map(|d| Some((d.instance_id.parse().ok()?, d.state)))
            .collect();
        let mut st = self.state.lock().await;
        let (hold, mut stale) = holds_to_restore(&st, &observed);
        match &self.plug {
            Some(plug) => {
                for id in &hold {
                    plug.hold(*id);
                    info!(instance = %id, "held for its NICs before the restart; kept paused until they are plugged");
                }
            }
            // Nothing would release them: compute resumes them.
            None => stale.extend(hold),
        }
        if !stale.is_empty() {
            let mut next = st.clone();
            for id in &stale {
                if let Some(r) = next.instances.get_mut(id) {
                    r.plug_held = false;
                }
            }
            self.persist(&next).await?;
            *st = next;
        }
        drop(st);
        Ok(self)
    }

    /// Takes the receiver of "guest stopped by itself" notifications (once).
    pub async fn guest_stops(&self) -> Option<mpsc::UnboundedReceiver<InstanceId>> {
        self.guest_stops.lock().await.take()
    }

    /// The instances started paused until their NICs are plugged, for the
    /// plug gate (`None` with `--no-network`).
    pub fn plug_waiters(&self) -> Option<Arc<PlugWaiters>> {
        self.plug.clone()
    }

    fn plug_held(&self, id: &InstanceId) -> bool {
        self.plug.as_ref().is_some_and(|p| p.contains(id))
    }

    fn plug_forget(&self, id: &InstanceId) {
        if let Some(p) = &self.plug {
            p.forget(id);
        }
    }

    /// Records in the state file whether the instance is held for the plug
    /// gate (no-op without a record or when it says so already).
    async fn record_plug_held(&self, id: InstanceId, held: bool) -> Result<(), HypervisorError> {
        let mut st = self.state.lock().await;
        if st.instances.get(&id).is_none_or(|r| r.plug_held == held) {
            return Ok(());
        }
        let mut next = st.clone();
        if let Some(r) = next.instances.get_mut(&id) {
            r.plug_held = held;
        }
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    /// Forgets a plug hold, in memory and in the state file.
    async fn release_hold(&self, id: InstanceId) {
        self.plug_forget(&id);
        if let Err(e) = self.record_plug_held(id, false).await {
            // Harmless: a stale record is cleared when the agent restarts.
            warn!(instance = %id, error = %e, "could not clear the plug hold record");
        }
    }

    /// Boots a defined domain: paused and held for the plug gate when there
    /// is one, else running. `define` first when `spec` is given.
    async fn boot(&self, id: InstanceId, spec: Option<&DomainSpec>) -> Result<(), HypervisorError> {
        let Some(plug) = &self.plug else {
            let r = match spec {
                Some(ds) => self.driver.define_and_start(ds).await,
                None => self.driver.start(&id.to_string()).await,
            };
            return r.map_err(|e| self.dom_err(id, e));
        };
        // Held (and recorded, for a restarted agent) before it starts:
        // never observed paused and unheld.
        self.record_plug_held(id, true).await?;
        plug.hold(id);
        let r = match spec {
            Some(ds) => self.driver.define_and_start_paused(ds).await,
            None => self.driver.start_paused(&id.to_string()).await,
        };
        match r {
            Ok(true) => {
                info!(instance = %id, "started paused; resumed once its NICs are plugged");
                Ok(())
            }
            // It was active already: its state is whatever libvirt shows.
            Ok(false) => {
                self.release_hold(id).await;
                Ok(())
            }
            Err(e) => {
                self.release_hold(id).await;
                Err(self.dom_err(id, e))
            }
        }
    }

    /// Records `id` with `taps`, `boots` more boots and whether it is
    /// arriving by migration (`None`: as recorded before). Done before
    /// the taps exist, so a failure later still lets destroy clean them up.
    async fn record_instance(
        &self,
        id: InstanceId,
        taps: &[TapRecord],
        boots: u64,
        arriving: Option<bool>,
    ) -> Result<(), HypervisorError> {
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        let prev = next.instances.get(&id).cloned();
        next.instances.insert(
            id,
            InstanceRecord {
                taps: taps.to_vec(),
                boot_count: prev.as_ref().map_or(0, |p| p.boot_count) + boots,
                created_at: prev.as_ref().map_or_else(model::now, |p| p.created_at),
                plug_held: prev.as_ref().is_some_and(|p| p.plug_held),
                arriving: arriving.unwrap_or_else(|| prev.is_some_and(|p| p.arriving)),
            },
        );
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    /// The taps of `spec`'s ports.
    fn tap_records(&self, spec: &DesiredInstance) -> Vec<TapRecord> {
        spec.ports
            .iter()
            .map(|p| TapRecord {
                name: p.tap.clone(),
                mac: p.mac.to_string(),
                mtu: self.mtu,
            })
            .collect()
    }

    /// Forgets an instance that left by migration: its taps, console log,
    /// record and, when `remove_root` (a local disk, copied to the
    /// destination), its root disk. Failures are logged: the guest runs
    /// elsewhere now, what is left is litter.
    async fn release_migrated(&self, id: InstanceId, remove_root: bool) {
        self.plug_forget(&id);
        if remove_root {
            if let Err(e) = self.storage.remove_root(id).await {
                warn!(instance = %id, error = %e, "could not remove the local root disk of a migrated instance");
            }
        }
        let _ = tokio::fs::remove_file(self.console_log(&id)).await;
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        if let Some(rec) = next.instances.remove(&id) {
            self.delete_taps(&rec.taps).await;
        }
        match self.persist(&next).await {
            Ok(()) => *st = next,
            Err(e) => warn!(instance = %id, error = %e, "could not forget a migrated instance"),
        }
    }

    /// Console log path of an instance.
    pub fn console_log(&self, id: &InstanceId) -> PathBuf {
        self.console_dir.join(format!("{id}.log"))
    }

    /// Prepares `spec`'s root disk (idempotent: an existing one is kept)
    /// and renders the domain for it on this node.
    async fn prepare_domain(&self, spec: &DesiredInstance) -> Result<DomainSpec, HypervisorError> {
        let root = self
            .storage
            .prepare_root(spec)
            .await
            .map_err(|e| HypervisorError::Backend(e.to_string()))?;
        Ok(domain_spec(
            spec,
            root.disk,
            root.kernel,
            self.mtu,
            self.console_log(&spec.id()),
            self.domain_type,
        ))
    }

    /// The one permit for changing domain definitions (libvirt writes
    /// are serialised on this node).
    async fn write_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, HypervisorError> {
        self.libvirt_writes
            .acquire()
            .await
            .map_err(|e| backend("libvirt write permit", e))
    }

    async fn persist(&self, st: &LibvirtState) -> Result<(), HypervisorError> {
        super::state_file::save(&self.state_path, st).await
    }

    async fn ensure_taps(&self, taps: &[TapRecord]) -> Result<(), HypervisorError> {
        for t in taps {
            let exists = self
                .netlink
                .link_exists(&t.name)
                .await
                .map_err(|e| backend("look up tap", e))?;
            if !exists {
                // The tap's own address must differ from the guest's: with
                // the guest MAC on the tap the bridge would treat frames for
                // the guest as its own and never forward them to the tap.
                let mac: nubo_netid::MacAddr = host_side_mac(&t.mac)
                    .parse()
                    .map_err(|e| backend(&format!("MAC of tap {}", t.name), e))?;
                self.netlink
                    .create_tap(&t.name, mac, t.mtu)
                    .await
                    .map_err(|e| backend(&format!("create tap {}", t.name), e))?;
            }
        }
        Ok(())
    }

    async fn delete_taps(&self, taps: &[TapRecord]) {
        for t in taps {
            match self.netlink.link_exists(&t.name).await {
                Ok(true) => {
                    if let Err(e) = self.netlink.delete_link(&t.name).await {
                        warn!(tap = %t.name, error = %e, "could not delete tap");
                    }
                }
                Ok(false) => {}
                Err(e) => warn!(tap = %t.name, error = %e, "could not look up tap"),
            }
        }
    }

    fn mark_stopping(&self, id: InstanceId, on: bool) {
        if let Ok(mut s) = self.stopping.lock() {
            if on {
                s.insert(id);
            } else {
                s.remove(&id);
            }
        }
    }

    async fn bump_boot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        if let Some(r) = next.instances.get_mut(&id) {
            r.boot_count += 1;
            self.persist(&next).await?;
            *st = next;
        }
        Ok(())
    }

    fn dom_err(&self, id: InstanceId, e: nubo_libvirt::DriverError) -> HypervisorError {
        match e {
            nubo_libvirt::DriverError::NotFound(_) => HypervisorError::NotFound(id),
            nubo_libvirt::DriverError::Foreign { .. } => HypervisorError::Foreign(id),
            e => HypervisorError::Backend(e.to_string()),
        }
    }
}

/// How long a NIC detach waits for a running guest to release the NIC.
pub const NIC_UNPLUG_WAIT: Duration = Duration::from_secs(10);

fn load(path: &Path) -> Result<LibvirtState, HypervisorError> {
    super::state_file::load(path)
}

#[async_trait]
impl super::Hypervisor for LibvirtHypervisor {
    fn driver(&self) -> &'static str {
        "libvirt"
    }

    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        let doms = self
            .driver
            .list_nubo_domains()
            .await
            .map_err(|e| backend("list libvirt domains", e))?;
        let foreign = self
            .driver
            .list_foreign_domains()
            .await
            .map_err(|e| backend("list libvirt domains", e))?;
        let st = self.state.lock().await;
        let mut out = Vec::with_capacity(doms.len());
        let mut sizes = BTreeMap::new();
        for d in doms {
            let Ok(id) = d.instance_id.parse::<InstanceId>() else {
                continue;
            };
            sizes.insert(
                id,
                InstanceSize {
                    vcpus: d.vcpus,
                    ram_mb: d.memory_mb,
                },
            );
            let rec = st.instances.get(&id);
            // Held for plugging: booting, as far as nubo is concerned.
            let power = match observed_power(d.state) {
                ObservedPower::Paused if self.plug_held(&id) => ObservedPower::Running,
                p => p,
            };
            out.push(ObservedInstance {
                id,
                power,
                boot_count: rec.map_or(0, |r| r.boot_count),
                created_at: rec.map_or_else(model::now, |r| r.created_at),
                managed: true,
            });
        }
        if let Ok(mut s) = self.stopped_sizes.lock() {
            *s = sizes;
        }
        for f in foreign {
            if let Ok(mut seen) = self.foreign_seen.lock() {
                if seen.insert(f.uuid.clone()) {
                    warn!(domain = %f.name, uuid = %f.uuid, state = ?f.state, "foreign libvirt domain; leaving it alone");
                }
            }
            if let Ok(id) = f.uuid.parse::<InstanceId>() {
                out.push(ObservedInstance {
                    id,
                    power: observed_power(f.state),
                    boot_count: 0,
                    created_at: model::now(),
                    managed: false,
                });
            }
        }
        Ok(out)
    }

    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        let span = info_span!("libvirt_create", instance = %id, name = %spec.spec.name);
        async {
            let started = std::time::Instant::now();
            let ds = self.prepare_domain(spec).await?;
            let taps = self.tap_records(spec);
            let running = spec.power() == DesiredPower::Running;
            self.record_instance(id, &taps, u64::from(running), None)
                .await?;
            self.ensure_taps(&taps).await?;
            let _permit = self.write_permit().await?;
            if running {
                self.boot(id, Some(&ds)).await?;
            } else {
                self.driver
                    .define(&ds)
                    .await
                    .map_err(|e| self.dom_err(id, e))?;
            }
            info!(
                ms = started.elapsed().as_millis() as u64,
                running, "domain defined"
            );
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let taps = {
            let st = self.state.lock().await;
            st.instances
                .get(&id)
                .map(|r| r.taps.clone())
                .unwrap_or_default()
        };
        // Taps vanish with a host reboot; QEMU needs them to exist.
        self.ensure_taps(&taps).await?;
        self.boot(id, None).await?;
        self.bump_boot(id).await
    }

    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        if self.plug_held(&id) {
            // Still paused for plugging: the guest never ran, nothing to
            // shut down gracefully.
            self.mark_stopping(id, true);
            let r = self.driver.destroy(&id.to_string()).await;
            self.mark_stopping(id, false);
            r.map_err(|e| self.dom_err(id, e))?;
            self.release_hold(id).await;
            info!(instance = %id, "stopped (was waiting for its NICs)");
            return Ok(());
        }
        self.mark_stopping(id, true);
        let r = self
            .driver
            .shutdown(&id.to_string(), self.shutdown_timeout)
            .await;
        // Late events of this stop are still ours for a moment.
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if let Ok(mut s) = stopping.lock() {
                s.remove(&id);
            }
        });
        let outcome = r.map_err(|e| self.dom_err(id, e))?;
        info!(instance = %id, ?outcome, "stopped");
        Ok(())
    }

    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.driver
            .reboot(&id.to_string())
            .await
            .map_err(|e| self.dom_err(id, e))?;
        self.bump_boot(id).await
    }

    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let arriving = self
            .state
            .lock()
            .await
            .instances
            .get(&id)
            .is_some_and(|r| r.arriving);
        if arriving {
            let runs = self
                .driver
                .get(&id.to_string())
                .await
                .map_err(|e| self.dom_err(id, e))?
                .is_some_and(|d| d.state.is_active());
            if runs {
                return Err(HypervisorError::Backend(format!(
                    "instance {id} arrived by migration and runs here, but is not assigned here; left alone"
                )));
            }
        }
        self.mark_stopping(id, true);
        let r = self.driver.undefine(&id.to_string()).await;
        self.mark_stopping(id, false);
        r.map_err(|e| self.dom_err(id, e))?;
        self.plug_forget(&id);
        // Only prepared for a migration that did not happen: a shared root
        // disk is the source's guest's.
        if arriving && self.storage.root_is_shared() {
            info!(instance = %id, "incoming migration undone; shared root disk left to its source");
        } else {
            self.storage
                .remove_root(id)
                .await
                .map_err(|e| backend("remove root disk", e))?;
        }
        let _ = tokio::fs::remove_file(self.console_log(&id)).await;
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        if let Some(rec) = next.instances.remove(&id) {
            self.delete_taps(&rec.taps).await;
        }
        self.persist(&next).await?;
        *st = next;
        Ok(())
    }

    async fn prepare_incoming(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        let span = info_span!("libvirt_prepare_incoming", instance = %id, name = %spec.spec.name);
        async {
            let ds = self.prepare_domain(spec).await?;
            let taps = self.tap_records(spec);
            self.record_instance(id, &taps, 0, Some(true)).await?;
            self.ensure_taps(&taps).await?;
            let _permit = self.write_permit().await?;
            self.driver
                .define(&ds)
                .await
                .map_err(|e| self.dom_err(id, e))?;
            info!("prepared for an incoming migration (taps, root disk, definition)");
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn migrate_out(
        &self,
        id: InstanceId,
        request: &super::MigrationRequest,
        abort: tokio::sync::watch::Receiver<bool>,
    ) -> Result<super::MigrationDone, HypervisorError> {
        let order = &request.order;
        let shared = self.storage.root_is_shared();
        let started = std::time::Instant::now();
        let done = match order.mode {
            MigrationMode::Live => {
                let mut opts =
                    migrate_options(&self.migration_uri, request.destination_ip, order, shared);
                opts.bandwidth_mib_s = self.migration_bandwidth_mib_s;
                let stats = self
                    .driver
                    .migrate(&id.to_string(), &opts, abort)
                    .await
                    .map_err(|e| HypervisorError::Backend(e.to_string()))?;
                info!(instance = %id, downtime_ms = ?stats.downtime_ms, elapsed_ms = ?stats.elapsed_ms,
                    wall_ms = stats.wall_ms, postcopy = stats.postcopy, block = opts.block, "migrated live");
                super::MigrationDone {
                    downtime_ms: stats.downtime_ms,
                    elapsed_ms: stats.wall_ms,
                    postcopy: stats.postcopy,
                }
            }
            MigrationMode::Cold => {
                if !shared {
                    return Err(HypervisorError::Unsupported(format!(
                        "cold migration of {id}: its root disk is local ({} storage); use a live block migration",
                        self.storage.name()
                    )));
                }
                self.stop(id).await?;
                // Undefined here (its shared disk kept): the destination
                // defined it while preparing and starts it after the switch.
                self.mark_stopping(id, true);
                let r = self.driver.undefine(&id.to_string()).await;
                self.mark_stopping(id, false);
                r.map_err(|e| self.dom_err(id, e))?;
                super::MigrationDone {
                    downtime_ms: None,
                    elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    postcopy: false,
                }
            }
        };
        self.release_migrated(id, !shared).await;
        Ok(done)
    }

    async fn arriving(&self) -> Result<Vec<InstanceId>, HypervisorError> {
        Ok(self
            .state
            .lock()
            .await
            .instances
            .iter()
            .filter(|(_, r)| r.arriving)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn settle_arrived(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let mut st = self.state.lock().await;
        if !st.instances.get(&id).is_some_and(|r| r.arriving) {
            return Ok(());
        }
        let mut next = st.clone();
        if let Some(r) = next.instances.get_mut(&id) {
            r.arriving = false;
        }
        self.persist(&next).await?;
        *st = next;
        info!(instance = %id, "arrived by migration; an ordinary instance of this node now");
        Ok(())
    }

    /// A running (or paused) domain: a push-mode backup job of `vda`
    /// ([`LibvirtDriver::backup_disk`]; the guest keeps running, the copy
    /// is of the moment the job started). A shut-off one: `qemu-img
    /// convert` of its local qcow2 overlay and the base beneath it. A root
    /// disk that is not a local file (RBD) is the coordinator's to capture.
    async fn capture_root(
        &self,
        id: InstanceId,
        dest: &std::path::Path,
        format: &str,
    ) -> Result<u64, HypervisorError> {
        if !super::disk_copy::valid_format(format) {
            return Err(HypervisorError::Unsupported(format!(
                "capture format {format:?} (raw or qcow2)"
            )));
        }
        let name = id.to_string();
        let info = self
            .driver
            .get(&name)
            .await
            .map_err(|e| self.dom_err(id, e))?
            .ok_or(HypervisorError::NotFound(id))?;
        let disks = self
            .driver
            .disks(&name)
            .await
            .map_err(|e| self.dom_err(id, e))?;
        let root = disks
            .iter()
            .find(|d| d.target == "vda")
            .and_then(|d| d.source.clone())
            .filter(|s| s.starts_with('/'))
            .ok_or_else(|| {
                HypervisorError::Unsupported(format!(
                    "the root disk of {id} is not a local file here (an RBD disk is captured from Ceph)"
                ))
            })?;
        if info.state.is_active() {
            self.driver
                .backup_disk(&name, "vda", dest, format)
                .await
                .map_err(|e| self.dom_err(id, e))?;
            super::disk_copy::file_size(dest).await
        } else {
            // The local backend's root disks are qcow2 overlays (never
            // probed: a guest could write any header into its disk).
            super::disk_copy::convert(
                std::path::Path::new(&root),
                Some("qcow2"),
                dest,
                format,
                false,
            )
            .await
        }
    }

    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        self.driver
            .suspend(&id.to_string())
            .await
            .map_err(|e| self.dom_err(id, e))
    }

    async fn stats(&self) -> Result<Vec<super::InstanceStats>, HypervisorError> {
        let domains = self
            .driver
            .all_domain_stats()
            .await
            .map_err(|e| backend("bulk domain statistics", e))?;
        Ok(domains.iter().filter_map(instance_stats).collect())
    }

    async fn volumes(&self, id: InstanceId) -> Result<Vec<AttachedVolume>, HypervisorError> {
        let disks = self
            .driver
            .disks(&id.to_string())
            .await
            .map_err(|e| self.dom_err(id, e))?;
        Ok(attached_volumes(&disks))
    }

    async fn attach_volume(
        &self,
        id: InstanceId,
        volume: &VolumeToAttach,
    ) -> Result<(), HypervisorError> {
        let source = self
            .storage
            .volume_source(&volume.volume)
            .map_err(|e| backend("volume", e))?;
        let disk = VolumeDisk {
            target: volume.target.clone(),
            source,
            serial: model::volume_serial(&volume.volume),
            iotune: iotune_of(&volume.qos),
            read_only: volume.read_only,
        };
        self.driver
            .attach_volume(&id.to_string(), &disk)
            .await
            .map_err(|e| self.dom_err(id, e))
    }

    async fn detach_volume(&self, id: InstanceId, volume: VolumeId) -> Result<(), HypervisorError> {
        let Some(target) = self
            .volumes(id)
            .await?
            .into_iter()
            .find(|v| v.volume == volume)
            .map(|v| v.target)
        else {
            return Ok(());
        };
        self.driver
            .detach_disk(&id.to_string(), &target)
            .await
            .map_err(|e| self.dom_err(id, e))
    }

    async fn nics(&self, id: InstanceId) -> Result<Vec<String>, HypervisorError> {
        self.driver
            .interfaces(&id.to_string())
            .await
            .map_err(|e| self.dom_err(id, e))
    }

    /// The tap is made first and kept in the instance's record (recreated
    /// on start, deleted with the instance), then the `<interface>` is
    /// hot-plugged (and kept in the definition).
    async fn attach_nic(&self, id: InstanceId, port: &DesiredPort) -> Result<(), HypervisorError> {
        let tap = TapRecord {
            name: port.tap.clone(),
            mac: port.mac.to_string(),
            mtu: self.mtu,
        };
        {
            let mut st = self.state.lock().await;
            let mut next = st.clone();
            let rec = next
                .instances
                .get_mut(&id)
                .ok_or(HypervisorError::NotFound(id))?;
            if !rec.taps.iter().any(|t| t.name == tap.name) {
                rec.taps.push(tap.clone());
                self.persist(&next).await?;
                *st = next;
            }
        }
        self.ensure_taps(std::slice::from_ref(&tap)).await?;
        let nic = Nic {
            tap: tap.name.clone(),
            mac: tap.mac.clone(),
            mtu: Some(tap.mtu),
        };
        self.driver
            .attach_interface(&id.to_string(), &nic)
            .await
            .map_err(|e| self.dom_err(id, e))?;
        info!(instance = %id, tap = %tap.name, "NIC attached");
        Ok(())
    }

    /// The `<interface>` is unplugged; once the guest let it go (waited
    /// for at most [`NIC_UNPLUG_WAIT`]),
    /// the tap is deleted and forgotten. A guest that does not release it
    /// in time keeps NIC and tap; a later pass asks again while the NIC
    /// shows, but a tap released after that is only deleted with the
    /// instance.
    async fn detach_nic(&self, id: InstanceId, tap: &str) -> Result<(), HypervisorError> {
        self.driver
            .detach_interface(&id.to_string(), tap)
            .await
            .map_err(|e| self.dom_err(id, e))?;
        // A running guest completes the unplug itself: wait for it (as a
        // volume detach does), so the tap goes in the same pass.
        let deadline = tokio::time::Instant::now() + NIC_UNPLUG_WAIT;
        while self.nics(id).await?.iter().any(|t| t == tap) {
            if tokio::time::Instant::now() >= deadline {
                warn!(instance = %id, tap, "NIC unplug requested; the guest has not released it yet (tap kept)");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut st = self.state.lock().await;
        let mut next = st.clone();
        if let Some(rec) = next.instances.get_mut(&id) {
            let gone: Vec<TapRecord> = rec.taps.iter().filter(|t| t.name == tap).cloned().collect();
            rec.taps.retain(|t| t.name != tap);
            self.persist(&next).await?;
            *st = next;
            self.delete_taps(&gone).await;
        }
        info!(instance = %id, tap, "NIC detached");
        Ok(())
    }

    async fn set_disk_qos(
        &self,
        id: InstanceId,
        volume: VolumeId,
        qos: Qos,
    ) -> Result<(), HypervisorError> {
        let target = self
            .volumes(id)
            .await?
            .into_iter()
            .find(|v| v.volume == volume)
            .map(|v| v.target)
            .ok_or_else(|| {
                backend(
                    "set QoS",
                    format!("volume {volume} is not attached to {id}"),
                )
            })?;
        self.driver
            .set_disk_iotune(&id.to_string(), &target, iotune_of(&qos))
            .await
            .map_err(|e| self.dom_err(id, e))
    }

    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        if self.plug.as_ref().is_some_and(|p| p.is_held(&id)) {
            // Paused for plugging: only the plug gate lets it run.
            tracing::debug!(instance = %id, "resume deferred until its NICs are plugged");
            return Ok(());
        }
        self.driver
            .resume(&id.to_string())
            .await
            .map_err(|e| self.dom_err(id, e))?;
        self.release_hold(id).await;
        Ok(())
    }
}

#[async_trait]
impl super::Resizer for LibvirtHypervisor {
    /// From the last [`super::Hypervisor::list`] (compute lists first).
    async fn sizes(&self) -> Result<BTreeMap<InstanceId, InstanceSize>, HypervisorError> {
        Ok(self
            .stopped_sizes
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default())
    }

    async fn resize_stopped(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let id = spec.id();
        // Idempotent: the existing root disk is kept as it is.
        let ds = self.prepare_domain(spec).await?;
        let _permit = self.write_permit().await?;
        self.driver
            .redefine(&ds)
            .await
            .map_err(|e| self.dom_err(id, e))?;
        info!(instance = %id, vcpus = ds.vcpus, memory_mb = ds.memory_mb, "domain redefined with the new size");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_statistics_map_to_instance_counters() {
        let id = InstanceId::new_random();
        let d = nubo_libvirt::DomainStats {
            uuid: id.to_string(),
            name: format!("nubo-{id}"),
            cpu_time_ns: Some(7),
            balloon: nubo_libvirt::BalloonStats {
                current_kib: Some(4),
                rss_kib: Some(2),
                ..Default::default()
            },
            disks: vec![nubo_libvirt::BlockStats {
                name: "vda".into(),
                read_bytes: 1,
                read_ops: 2,
                write_bytes: 3,
                write_ops: 4,
                path: None,
            }],
            interfaces: vec![nubo_libvirt::InterfaceStats {
                name: "tapx".into(),
                rx_bytes: 5,
                rx_packets: 6,
                rx_drops: 7,
                tx_bytes: 8,
                tx_packets: 9,
                tx_drops: 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let s = instance_stats(&d).unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.cpu_ns, Some(7));
        assert_eq!(
            (s.memory_available_bytes, s.memory_used_bytes),
            (Some(4096), Some(2048))
        );
        let disk = &s.disks[0];
        assert_eq!(
            (
                disk.target.as_str(),
                disk.read_bytes,
                disk.read_ops,
                disk.write_bytes,
                disk.write_ops
            ),
            ("vda", 1, 2, 3, 4)
        );
        let n = &s.nics[0];
        assert_eq!(
            (
                n.tap.as_str(),
                n.rx_bytes,
                n.rx_packets,
                n.rx_drops,
                n.tx_bytes,
                n.tx_packets,
                n.tx_drops
            ),
            ("tapx", 5, 6, 7, 8, 9, 10)
        );
        // A domain whose UUID is no instance id is left out.
        let foreign = nubo_libvirt::DomainStats {
            uuid: "not-a-uuid".into(),
            ..d
        };
        assert_eq!(instance_stats(&foreign), None);
    }

    #[test]
    fn pid_dir_follows_the_socket() {
        assert_eq!(
            qemu_pid_dir("qemu:///system"),
            PathBuf::from("/run/libvirt/qemu")
        );
        assert_eq!(
            qemu_pid_dir("qemu+unix:///system?socket=/tmp/x/run/libvirt-sock"),
            PathBuf::from("/tmp/x/run/qemu")
        );
        assert_eq!(
            qemu_pid_dir("qemu+unix:///system?foo=1&socket=/a/libvirt-sock"),
            PathBuf::from("/a/qemu")
        );
    }

    #[test]
    fn only_unrequested_stops_are_guest_stops() {
        let off = LifecycleEvent::Stopped(StopReason::Shutdown);
        assert!(is_guest_stop(off, false));
        assert!(!is_guest_stop(off, true));
        assert!(!is_guest_stop(
            LifecycleEvent::Stopped(StopReason::Destroyed),
            false
        ));
        assert!(!is_guest_stop(LifecycleEvent::Started, false));
    }

    #[test]
    fn volumes_are_read_back_from_their_disks() {
        let vol: VolumeId = "7c9e6679-7425-40de-944b-e07fc1f90ae7".parse().unwrap();
        let disk = |target: &str, source: &str| AttachedDisk {
            target: target.into(),
            serial: None,
            source: Some(source.into()),
            iotune: IoTune {
                write_iops_sec: Some(200),
                ..IoTune::default()
            },
        };
        let disks = [
            disk("vda", &format!("volumes/vol-{vol}")),
            disk("vdb", &format!("volumes/vol-{vol}")),
            disk("vdc", "vms/x-disk"),
            disk("vdd", "volumes/vol-garbage"),
        ];
        let v = attached_volumes(&disks);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].volume, v[0].target.as_str()), (vol, "vdb"));
        assert_eq!(v[0].qos.write_iops_sec, Some(200));
        assert_eq!(iotune_of(&v[0].qos), disks[1].iotune);
    }

    #[test]
    fn migration_options_follow_the_order_and_the_storage() {
        let order = OutgoingMigration {
            migration: nubo_common::MigrationId::new_random(),
            destination: "n2".parse().unwrap(),
            mode: MigrationMode::Live,
            block: false,
            precopy_budget_secs: 10,
            budget_secs: 60,
            abort: false,
        };
        let ip = "10.1.2.3".parse().unwrap();
        let o = migrate_options("qemu+tcp://{host}/system", ip, &order, true);
        assert_eq!(o.destination_uri, "qemu+tcp://10.1.2.3/system");
        assert_eq!(o.migration_uri.as_deref(), Some("tcp://10.1.2.3"));
        assert!(!o.tls && !o.block);
        assert_eq!(o.postcopy_after, Some(Duration::from_secs(10)));
        assert_eq!(o.budget, Duration::from_secs(60));
        // Production: TLS for libvirtd and for the stream.
        let o = migrate_options(crate::config::DEFAULT_MIGRATION_URI, ip, &order, true);
        assert!(o.tls);
        // A local root disk is always copied, never abandoned.
        assert!(migrate_options("qemu+tcp://{host}/system", ip, &order, false).block);
        // No post-copy when its budget is not shorter than the total.
        let mut long = order.clone();
        long.precopy_budget_secs = 60;
        assert_eq!(migrate_options("x", ip, &long, true).postcopy_after, None);
        let v6 = migrate_options(
            "qemu+tcp://{host}/system",
            "fd00::2".parse().unwrap(),
            &order,
            true,
        );
        assert_eq!(v6.migration_uri.as_deref(), Some("tcp://[fd00::2]"));
    }

    #[test]
    fn tap_mac_differs_from_the_guest_mac() {
        assert_eq!(host_side_mac("fa:16:3e:98:82:c5"), "fe:16:3e:98:82:c5");
    }

    #[test]
    fn power_mapping() {
        assert_eq!(observed_power(PowerState::Running), ObservedPower::Running);
        assert_eq!(observed_power(PowerState::Paused), ObservedPower::Paused);
        assert_eq!(observed_power(PowerState::Crashed), ObservedPower::Stopped);
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(load(&path).unwrap(), LibvirtState::default());
        let mut st = LibvirtState::default();
        st.instances.insert(
            InstanceId::new_random(),
            InstanceRecord {
                taps: vec![TapRecord {
                    name: "tap1".into(),
                    mac: "fa:16:3e:00:00:01".into(),
                    mtu: 1450,
                }],
                boot_count: 2,
                created_at: model::now(),
                plug_held: true,
                arriving: false,
            },
        );
        std::fs::write(&path, serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(load(&path).unwrap(), st);
        // A state file written before `plug_held` existed still loads.
        std::fs::write(
            &path,
            r#"{"instances":{"6f1e1d3c-0000-4000-8000-000000000001":{"taps":[],"boot_count":1,"created_at":"2026-01-01T00:00:00Z"}}}"#,
        )
        .unwrap();
        assert!(load(&path)
            .unwrap()
            .instances
            .values()
            .all(|r| !r.plug_held));
    }

    #[test]
    fn plug_holds_survive_a_restart_only_while_the_domain_is_paused() {
        let rec = |held| InstanceRecord {
            taps: vec![],
            boot_count: 1,
            created_at: model::now(),
            plug_held: held,
            arriving: false,
        };
        let ids: Vec<InstanceId> = (0..5).map(|_| InstanceId::new_random()).collect();
        let (paused_held, running_held, off_held, gone_held, paused_not_held) =
            (ids[0], ids[1], ids[2], ids[3], ids[4]);
        let mut st = LibvirtState::default();
        for (id, held) in [
            (paused_held, true),
            (running_held, true),
            (off_held, true),
            (gone_held, true),
            (paused_not_held, false),
        ] {
            st.instances.insert(id, rec(held));
        }
        let doms = [
            (paused_held, PowerState::Paused),
            (running_held, PowerState::Running),
            (off_held, PowerState::ShutOff),
            // Paused by self-fencing, not by the plug gate: compute's.
            (paused_not_held, PowerState::Paused),
        ];
        let (hold, stale) = holds_to_restore(&st, &doms);
        assert_eq!(hold, BTreeSet::from([paused_held]));
        assert_eq!(stale, BTreeSet::from([running_held, off_held, gone_held]));
        assert_eq!(
            holds_to_restore(&LibvirtState::default(), &doms),
            (BTreeSet::new(), BTreeSet::new())
        );
    }
}
