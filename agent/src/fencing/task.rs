//! The fencing task: every [`FENCE_TICK`] it asks the gate where the node
//! stands and, while fenced, freezes instances ([`super::freeze`]); on
//! return it re-lists etcd and recovers ([`super::recovery`]). The peer
//! witness ([`super::witness`]) runs alongside.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nubo_common::{InstanceId, NodeName};

use super::gate::FenceGate;
use super::rules::Phase;
use super::witness::Witness;
use crate::compute::hypervisor::Hypervisor;
use crate::config::AgentConfig;
use crate::state::desired::{self, DesiredNode};
use crate::state::mirror::MirrorHandle;

/// How often the fencer re-evaluates the gate (and re-sweeps while fenced,
/// catching an instance a compute action already under way booted).
pub const FENCE_TICK: Duration = Duration::from_millis(100);

/// The fencing task: freezes while fenced, recovers on return.
pub struct Fencer {
    pub(super) gate: Arc<FenceGate>,
    pub(super) hv: Arc<dyn Hypervisor>,
    pub(super) mirror: MirrorHandle,
    pub(super) node: NodeName,
    pub(super) underlay_mtu: u16,
    /// The fence being handled: when it began, and whether its completion
    /// was logged.
    pub(super) fence_began: Option<(Instant, bool)>,
    /// Instances known to have policy `never` (not rebuilt every sweep).
    pub(super) never: BTreeSet<InstanceId>,
    /// When the fresh list for the current recovery was requested.
    pub(super) relist_requested: Option<Instant>,
    /// The peer witness, run alongside.
    pub(super) witness: Option<Witness>,
}

impl Fencer {
    /// A fencer acting on `hv` (the raw driver, not the gated one).
    pub fn new(
        cfg: &AgentConfig,
        gate: Arc<FenceGate>,
        hv: Arc<dyn Hypervisor>,
        mirror: MirrorHandle,
    ) -> Self {
        Self {
            gate,
            hv,
            mirror,
            node: cfg.node.clone(),
            underlay_mtu: cfg.underlay_mtu,
            fence_began: None,
            never: BTreeSet::new(),
            relist_requested: None,
            witness: None,
        }
    }

    /// Runs until the task is dropped (with the peer witness, if any).
    pub async fn run(mut self) {
        match self.witness.take() {
            Some(w) => {
                futures::future::join(self.fence_loop(), w.run()).await;
            }
            None => self.fence_loop().await,
        }
    }

    async fn fence_loop(mut self) {
        let mut tick = tokio::time::interval(FENCE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.gate.poll() {
                Phase::Normal | Phase::Held { .. } => {
                    self.fence_began = None;
                    self.relist_requested = None;
                }
                Phase::Fenced { .. } => {
                    self.relist_requested = None;
                    if self.fence_began.is_none() {
                        self.fence_began = Some((Instant::now(), false));
                        self.never.clear();
                    }
                    self.sweep().await;
                }
                Phase::Recovering { lease_kept, .. } => self.recover(lease_kept).await,
            }
        }
    }

    pub(super) async fn desired(&self) -> DesiredNode {
        let cache = self.mirror.cache.read().await;
        desired::build(&cache, &self.node, self.underlay_mtu)
    }
}
