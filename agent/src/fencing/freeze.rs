//! Freezing while fenced: every instance [`super::rules::fence_plan`]
//! selects is paused (hard-stopped when the driver cannot pause), each
//! hypervisor call bounded by [`FENCE_BUDGET`].

use std::sync::Arc;
use std::time::Duration;

use nubo_common::model::EvacuationPolicy;
use nubo_common::InstanceId;
use tracing::{error, info_span, warn, Instrument};

use super::gate::{inc, FenceGate};
use super::rules;
use super::task::Fencer;
use crate::compute::hypervisor::{Hypervisor, HypervisorError};

/// The freeze must be complete within this bound (the coordinator's default
/// `suspect_grace`, see `docs/failure-handling.md`); each hypervisor call of
/// a sweep is cut off at it.
pub const FENCE_BUDGET: Duration = Duration::from_secs(3);

impl Fencer {
    /// Freezes every instance [`rules::fence_plan`] selects.
    pub(super) async fn sweep(&mut self) {
        let observed = match tokio::time::timeout(FENCE_BUDGET, self.hv.list()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                inc(&self.gate.stats.failures);
                error!(error = %e, "self-fence: cannot list instances");
                return;
            }
            Err(_) => {
                inc(&self.gate.stats.failures);
                error!("self-fence: listing instances timed out");
                return;
            }
        };
        let candidates = rules::fence_plan(&observed, &Default::default());
        if candidates.iter().all(|id| self.never.contains(id)) {
            self.log_complete();
            return;
        }
        let policies = rules::policies(&self.desired().await);
        self.never = policies
            .iter()
            .filter(|(_, p)| **p == EvacuationPolicy::Never)
            .map(|(id, _)| *id)
            .collect();
        let plan = rules::fence_plan(&observed, &policies);
        let ops = plan.into_iter().map(|id| {
            let hv = self.hv.clone();
            let gate = self.gate.clone();
            async move {
                let span = info_span!("self_fence", instance = %id);
                freeze(hv, &gate, id).instrument(span).await;
            }
        });
        futures::future::join_all(ops).await;
        self.log_complete();
    }

    /// Logs, once per fence, how long the freeze took.
    fn log_complete(&mut self) {
        if let Some((began, logged)) = self.fence_began.as_mut().filter(|(_, l)| !*l) {
            *logged = true;
            let took = began.elapsed();
            let c = self.gate.counters();
            if took > FENCE_BUDGET {
                error!(?took, budget = ?FENCE_BUDGET, frozen_total = c.frozen,
                    hard_stopped_total = c.hard_stopped, "self-fence completed late");
            } else {
                warn!(
                    ?took,
                    frozen_total = c.frozen,
                    hard_stopped_total = c.hard_stopped,
                    failures_total = c.failures,
                    "self-fence complete"
                );
            }
        }
    }
}

/// Pauses `id`, hard-stopping it if the driver cannot pause; bounded by
/// [`FENCE_BUDGET`].
async fn freeze(hv: Arc<dyn Hypervisor>, gate: &FenceGate, id: InstanceId) {
    let paused = tokio::time::timeout(FENCE_BUDGET, hv.pause(id)).await;
    let r = match paused {
        Ok(Ok(())) => {
            inc(&gate.stats.frozen);
            warn!("instance frozen (self-fence)");
            return;
        }
        Ok(Err(HypervisorError::Unsupported(why))) => {
            warn!(%why, "cannot pause; hard-stopping instead (definition and disk kept)");
            tokio::time::timeout(FENCE_BUDGET, hv.stop(id)).await
        }
        Ok(Err(e)) => Ok(Err(e)),
        Err(elapsed) => Err(elapsed),
    };
    match r {
        Ok(Ok(())) => {
            inc(&gate.stats.hard_stopped);
            warn!("instance stopped (self-fence)");
        }
        Ok(Err(e)) => {
            inc(&gate.stats.failures);
            error!(error = %e, "self-fence could not stop the instance");
        }
        Err(_) => {
            inc(&gate.stats.failures);
            error!(budget = ?FENCE_BUDGET, "self-fence: hypervisor call timed out");
        }
    }
}
