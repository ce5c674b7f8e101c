//! The compute backend interface. One real implementation per hypervisor
//! technology: [`netns::NetnsHypervisor`] (network-namespace guests; libvirt to
//! come) plus [`fake::FakeHypervisor`].

pub mod disk_copy;
pub mod fake;
pub mod libvirt;
pub mod netns;
pub mod plug;
pub mod state_file;
pub mod stats;

use std::collections::BTreeMap;

use async_trait::async_trait;
use nubo_common::model::{Qos, Timestamp};

use nubo_common::{InstanceId, VolumeId};

use crate::state::desired::{DesiredInstance, DesiredPort};

pub use fake::FakeHypervisor;
pub use libvirt::LibvirtHypervisor;
pub use netns::NetnsHypervisor;
pub use stats::{DiskCounters, InstanceStats, NicCounters};

/// Power state as seen on the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservedPower {
    /// Running.
    Running,
    /// Defined but shut off.
    Stopped,
    /// Frozen in memory (vCPUs stopped, no guest I/O), e.g. by self-fencing;
    /// [`Hypervisor::resume`] continues it without a reboot.
    Paused,
}

/// An instance as the hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInstance {
    /// Id (from the domain name / metadata).
    pub id: InstanceId,
    /// Current power state.
    pub power: ObservedPower,
    /// How many times it has been booted (create, start and reboot each count).
    pub boot_count: u64,
    /// When it was created on this hypervisor.
    pub created_at: Timestamp,
    /// Whether nubo created it. Instances that nubo did not create are never
    /// touched, only reported.
    pub managed: bool,
}

/// A volume attached to an instance, as the hypervisor shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedVolume {
    /// The volume.
    pub volume: VolumeId,
    /// Guest device (`vdb`, …).
    pub target: String,
    /// I/O limits in effect.
    pub qos: Qos,
}

/// A volume to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeToAttach {
    /// The volume.
    pub volume: VolumeId,
    /// Guest device (`vdb`, …), free on the instance.
    pub target: String,
    /// I/O limits.
    pub qos: Qos,
    /// Attach read-only (the volume's read-only mark).
    pub read_only: bool,
}

/// A hypervisor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The instance does not exist.
    #[error("instance {0} does not exist on this hypervisor")]
    NotFound(InstanceId),
    /// The instance already exists.
    #[error("instance {0} already exists on this hypervisor")]
    AlreadyExists(InstanceId),
    /// The instance was not created by nubo and is left alone.
    #[error("instance {0} is not managed by nubo")]
    Foreign(InstanceId),
    /// Persisting or reading the driver's state failed.
    #[error("hypervisor state at {path}: {source}")]
    State {
        /// The state file.
        path: std::path::PathBuf,
        /// The I/O or JSON error.
        #[source]
        source: std::io::Error,
    },
    /// The driver is not implemented.
    #[error("driver {0} is not available in this build")]
    Unavailable(&'static str),
    /// The driver cannot do what the spec asks (e.g. a second port on a
    /// netns guest).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The backend (netlink, namespaces, …) failed.
    #[error("{0}")]
    Backend(String),
    /// The node is self-fenced (no etcd lease): nothing is booted or resumed.
    #[error("node is self-fenced (no acknowledged etcd keep-alive); not booting {0}")]
    Fenced(InstanceId),
}

impl From<HypervisorError> for crate::reconciler::SubsystemError {
    fn from(e: HypervisorError) -> Self {
        Self::Driver(Box::new(e))
    }
}

/// A compute backend. Object-safe; the agent holds an `Arc<dyn Hypervisor>`.
///
/// The ids of the instances nubo manages on `hv` (running or not).
pub async fn managed_ids(
    hv: &dyn Hypervisor,
) -> Result<std::collections::BTreeSet<InstanceId>, HypervisorError> {
    Ok(hv
        .list()
        .await?
        .into_iter()
        .filter(|o| o.managed)
        .map(|o| o.id)
        .collect())
}

/// Every operation is idempotent from the reconciler's point of view: the
/// compute plan only asks for what differs from [`Hypervisor::list`].
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// Short driver name for logs ("fake", "libvirt", …).
    fn driver(&self) -> &'static str;
    /// Every instance on this hypervisor, managed by nubo or not.
    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError>;
    /// Creates the instance, and boots it if its desired power is running.
    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError>;
    /// Boots a stopped instance.
    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError>;
    /// Shuts a running instance off.
    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError>;
    /// Reboots a running instance.
    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError>;
    /// Destroys the instance and its local resources.
    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError>;
    /// Freezes a running instance in memory (libvirt `virDomainSuspend`):
    /// it keeps its memory, devices and leases but executes nothing and
    /// issues no I/O. Idempotent on a paused instance. Used by self-fencing;
    /// drivers that cannot pause answer [`HypervisorError::Unsupported`] and
    /// the agent hard-stops instead.
    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "pause ({id}) on the {} driver",
            self.driver()
        )))
    }
    /// Continues a paused instance (libvirt `virDomainResume`) without a
    /// reboot. Idempotent on a running instance.
    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "resume ({id}) on the {} driver",
            self.driver()
        )))
    }
    /// The volumes attached to a managed instance (none on drivers without
    /// volume support).
    async fn volumes(&self, id: InstanceId) -> Result<Vec<AttachedVolume>, HypervisorError> {
        let _ = id;
        Ok(Vec::new())
    }
    /// Attaches a volume: hot-plugged into a running instance, and kept in
    /// its definition. Idempotent.
    async fn attach_volume(
        &self,
        id: InstanceId,
        volume: &VolumeToAttach,
    ) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "attaching volume {} to {id} on the {} driver",
            volume.volume,
            self.driver()
        )))
    }
    /// Detaches a volume (a running guest completes the unplug
    /// asynchronously; [`Hypervisor::volumes`] shows it until then).
    /// Idempotent.
    async fn detach_volume(&self, id: InstanceId, volume: VolumeId) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "detaching volume {volume} from {id} on the {} driver",
            self.driver()
        )))
    }
    /// Destination of a migration: prepares `spec` to receive its guest
    /// (root disk, taps, definition), without starting it. Idempotent.
    async fn prepare_incoming(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "migrating {} here on the {} driver",
            spec.id(),
            self.driver()
        )))
    }
    /// Source of a migration: moves the instance to the destination (live:
    /// the hypervisor's migration; cold: stopped and undefined here, its
    /// shared disk kept). `abort` turning true aborts a live job before
    /// post-copy. On success the instance is gone from here (its local
    /// resources released); on failure it runs here as before.
    async fn migrate_out(
        &self,
        id: InstanceId,
        request: &MigrationRequest,
        abort: tokio::sync::watch::Receiver<bool>,
    ) -> Result<MigrationDone, HypervisorError> {
        let _ = (request, abort);
        Err(HypervisorError::Unsupported(format!(
            "migrating {id} away on the {} driver",
            self.driver()
        )))
    }
    /// Instances prepared for an incoming migration that this driver still
    /// marks as arriving (their shared disk is not theirs to remove yet).
    async fn arriving(&self) -> Result<Vec<InstanceId>, HypervisorError> {
        Ok(Vec::new())
    }
    /// The instance arrived and is assigned here: it is an ordinary one
    /// from now on (removing it removes its disk).
    async fn settle_arrived(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let _ = id;
        Ok(())
    }
    /// Usage counters of every running managed instance, in one call per
    /// collection period (libvirt: one bulk statistics call). Drivers
    /// without counters answer [`HypervisorError::Unsupported`].
    async fn stats(&self) -> Result<Vec<InstanceStats>, HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "usage statistics on the {} driver",
            self.driver()
        )))
    }
    /// The taps of a managed instance's NICs, in its NIC order. Drivers
    /// without NIC hot-plug answer [`HypervisorError::Unsupported`] (their
    /// NICs only change when the instance is created again).
    async fn nics(&self, id: InstanceId) -> Result<Vec<String>, HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "listing the NICs of {id} on the {} driver",
            self.driver()
        )))
    }
    /// Adds a NIC for `port`: hot-plugged into a running instance, and
    /// kept in its definition. Idempotent (a NIC with that tap is kept).
    async fn attach_nic(&self, id: InstanceId, port: &DesiredPort) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "attaching port {} to {id} on the {} driver",
            port.id,
            self.driver()
        )))
    }
    /// Removes the NIC whose host end is `tap` (hot-unplug on a running
    /// instance, and from its definition). Idempotent.
    async fn detach_nic(&self, id: InstanceId, tap: &str) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported(format!(
            "detaching NIC {tap} from {id} on the {} driver",
            self.driver()
        )))
    }
    /// Copies the root disk of a managed instance, as it is at one point
    /// in time (crash-consistent), into `dest` in `format` (`raw` or
    /// `qcow2`), and returns the size of the copy in bytes. A running guest
    /// is running afterwards. Drivers without a local root disk answer
    /// [`HypervisorError::Unsupported`].
    async fn capture_root(
        &self,
        id: InstanceId,
        dest: &std::path::Path,
        format: &str,
    ) -> Result<u64, HypervisorError> {
        let _ = (dest, format);
        Err(HypervisorError::Unsupported(format!(
            "capturing the root disk of {id} on the {} driver",
            self.driver()
        )))
    }
    /// Changes the I/O limits of an attached volume, live.
    async fn set_disk_qos(
        &self,
        id: InstanceId,
        volume: VolumeId,
        qos: Qos,
    ) -> Result<(), HypervisorError> {
        let _ = qos;
        Err(HypervisorError::Unsupported(format!(
            "QoS of volume {volume} on {id} on the {} driver",
            self.driver()
        )))
    }
}

/// What the source's migration job needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRequest {
    /// The migration.
    pub migration: nubo_common::MigrationId,
    /// The leader's order.
    pub order: nubo_common::model::OutgoingMigration,
    /// The destination's underlay address.
    pub destination_ip: std::net::IpAddr,
}

/// How a migration the source ran ended well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationDone {
    /// Guest downtime measured by the hypervisor (ms).
    pub downtime_ms: Option<u64>,
    /// Duration of the job (ms).
    pub elapsed_ms: u64,
    /// Whether it switched to post-copy.
    pub postcopy: bool,
}

/// vCPUs and memory of an instance's definition: what compute compares
/// with the spec (`InstanceSize::of(&spec.resources)`) and the status
/// reports.
pub use nubo_common::model::GuestSize as InstanceSize;

/// A driver that can change the size of a shut-off instance (libvirt:
/// redefine the domain; netns: the guest's record). Not a boot, so not
/// behind the fencing gate.
#[async_trait]
pub trait Resizer: Send + Sync + 'static {
    /// The size of every instance nubo manages (a running one: the size it
    /// runs with), as far as the driver knows it.
    async fn sizes(&self) -> Result<BTreeMap<InstanceId, InstanceSize>, HypervisorError>;
    /// Redefines a shut-off instance with `spec`'s vCPUs and memory.
    async fn resize_stopped(&self, spec: &DesiredInstance) -> Result<(), HypervisorError>;
}
