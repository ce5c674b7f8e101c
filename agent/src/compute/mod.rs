//! Compute: the instances of this node on a [`hypervisor::Hypervisor`], as
//! three subsystems run in this order on every pass:
//!
//! 1. [`instances::Compute`]: create, start, stop, reboot, resume, resize
//!    and destroy instances so that the hypervisor runs what is assigned
//!    here;
//! 2. [`volumes::Volumes`]: attach, detach and retune their volumes;
//!    then [`nics::Nics`]: hot-plug and unplug their NICs as ports are
//!    added to or removed from them;
//! 3. [`status::Status`]: report `/instances/<id>/status` from what the
//!    hypervisor shows (power and size), the errors of compute's actions
//!    and the attached volumes.
//!
//! They share a [`status::Reporter`] (statuses written as compute's
//! actions progress, then the sweep of the status subsystem). Also here:
//! the [`plug_gate`] (resumes guests started paused once their NICs are
//! plugged, run after the network subsystems), [`migration`] (this node's
//! side of live and cold migrations, run last), [`capture`] (copies of
//! root disks for new images) and [`power_sync`] (a guest that powered
//! itself off becomes desired stopped).

pub mod capture;
pub mod hypervisor;
pub mod instances;
pub mod migration;
pub mod nics;
pub mod plug_gate;
pub mod power_sync;
pub mod status;
pub mod volumes;

use std::sync::Arc;

use nubo_common::NodeName;
use nubo_store::Etcd;

pub use hypervisor::{InstanceSize, Resizer};
pub use instances::{plan, Action, Compute, ComputeObserved, ComputePlan};
pub use status::{Reporter, Status};
pub use volumes::Volumes;

/// The compute subsystems of `node`, in their order, driving `hv` (the
/// gated driver) and reporting through `etcd`.
pub fn subsystems(
    node: NodeName,
    hv: Arc<dyn hypervisor::Hypervisor>,
    etcd: Etcd,
    resizer: Option<Arc<dyn Resizer>>,
) -> (Compute, Volumes, Status) {
    let attached = volumes::Attached::default();
    let reporter = Reporter::shared(node.clone(), etcd, attached.clone());
    (
        Compute::new(hv.clone(), reporter.clone()).with_resizer(resizer.clone()),
        Volumes::new(hv.clone(), attached),
        Status::new(node, hv, reporter).with_resizer(resizer),
    )
}
