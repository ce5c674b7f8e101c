//! The reconcile loop: every subsystem is handed the same [`DesiredNode`]
//! snapshot, in order. Compute is the first subsystem.
//!
//! The network subsystems ([`crate::network`]) follow compute (which creates
//! the instances and therefore their taps), unless `--no-network`:
//!   - `network`  (nubo-overlay: bridges `nb-<vni>`, VXLAN `vx-<vni>`, FDB
//!     from `DesiredNetwork::remote_vteps`/`remote_macs`, taps on bridges),
//!   - `firewall` (nubo-firewall: one `nft -f` batch from the ports'
//!     security groups and `DesiredSecurityGroup::members`),
//!   - `dhcp`     (nubo-dhcp: fixed leases from `DesiredPort` + network),
//!   - `metadata` (nubo-metadata: instance data keyed by bridge/IP/MAC).
//!
//! Each implements [`Subsystem`]: observe the node, call its own pure
//! `plan(desired, observed)`, apply.

use async_trait::async_trait;
use tracing::{debug, info_span, warn, Instrument};

use crate::state::desired::DesiredNode;
use crate::store::StoreError;

/// A subsystem failed to reconcile this round (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SubsystemError {
    /// A driver of the node (hypervisor, netlink, nftables, …) could not
    /// be observed or driven.
    #[error("{0}")]
    Driver(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// etcd could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Anything else, described.
    #[error("{0}")]
    Other(String),
}

/// One reconciler of the node (compute, network, firewall, DHCP, metadata).
#[async_trait]
pub trait Subsystem: Send {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Brings this part of the node to `desired`. Returns the number of
    /// actions taken (0 on a converged node).
    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError>;
}

/// The result of one pass over all subsystems.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Actions taken by all subsystems.
    pub actions: usize,
    /// Subsystems that failed.
    pub failures: usize,
}

/// Runs every subsystem, in order, on one snapshot. A failing subsystem is
/// logged and does not prevent the others from running.
pub async fn reconcile_all(
    subsystems: &mut [Box<dyn Subsystem>],
    desired: &DesiredNode,
) -> PassOutcome {
    let mut out = PassOutcome::default();
    for s in subsystems.iter_mut() {
        let name = s.name();
        let span = info_span!("subsystem", subsystem = name);
        let started = std::time::Instant::now();
        let result = s.reconcile(desired).instrument(span).await;
        debug!(
            subsystem = name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "subsystem pass timing"
        );
        match result {
            Ok(n) => out.actions += n,
            Err(e) => {
                out.failures += 1;
                warn!(subsystem = name, error = %e, "reconcile failed; will retry");
            }
        }
    }
    out
}
