//! Recovery on return from a self-fence: re-list etcd (never decide on a
//! watch that may still be catching up), then apply
//! [`super::rules::recovery_plan`] — destroy what is no longer assigned
//! here, resume what is.

use std::time::{Duration, Instant};

use tracing::{info, info_span, warn, Instrument};

use super::gate::inc;
use super::rules::{self, Phase, RecoveryAction};
use super::task::Fencer;

/// How long recovery waits for the fresh list before asking again.
pub const RELIST_WAIT: Duration = Duration::from_secs(5);

impl Fencer {
    /// Re-lists etcd (once per recovery), then destroys what is no longer
    /// assigned here and resumes the rest.
    pub(super) async fn recover(&mut self, lease_kept: bool) {
        let requested = match self.relist_requested {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.relist_requested = Some(t);
                self.mirror.request_relist();
                t
            }
        };
        let mut listed = self.mirror.listed.clone();
        let fresh = tokio::time::timeout(
            RELIST_WAIT,
            listed.wait_for(|l| l.is_some_and(|l| l >= requested)),
        )
        .await
        .map(|r| r.map(drop));
        match fresh {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                warn!("fresh etcd list not done yet; asking again");
                self.relist_requested = None;
                return;
            }
        }
        if !matches!(self.gate.poll(), Phase::Recovering { .. }) {
            return;
        }
        let desired = self.desired().await;
        let observed = match self.hv.list().await {
            Ok(o) => o,
            Err(e) => {
                inc(&self.gate.stats.failures);
                warn!(error = %e, "recovery: cannot list instances; retrying");
                return;
            }
        };
        let plan = rules::recovery_plan(&observed, &desired);
        let mut ok = true;
        for action in plan {
            ok &= self.apply(action).await;
        }
        if ok {
            self.gate.recovered();
            let c = self.gate.counters();
            info!(
                lease_kept,
                resumed_total = c.resumed,
                destroyed_total = c.destroyed,
                "self-fence lifted; compute resumes"
            );
        }
    }

    async fn apply(&self, action: RecoveryAction) -> bool {
        let (id, what) = match action {
            RecoveryAction::Destroy(id) => (id, "destroy (no longer assigned here)"),
            RecoveryAction::Stop(id) => (id, "stop (frozen, desired stopped)"),
            RecoveryAction::Resume(id) => (id, "resume (still assigned here)"),
        };
        let span = info_span!("recover", instance = %id);
        async {
            let r = match action {
                RecoveryAction::Destroy(_) => self.hv.destroy(id).await,
                RecoveryAction::Stop(_) => self.hv.stop(id).await,
                RecoveryAction::Resume(_) => {
                    // Re-checked at the last moment: the lease may be gone again.
                    if !self.gate.boots_allowed() {
                        return false;
                    }
                    match self.hv.resume(id).await {
                        Err(e) => {
                            // Compute boots it again from a clean stop.
                            warn!(error = %e, "resume failed; stopping it for compute to start");
                            self.hv.stop(id).await
                        }
                        ok => ok,
                    }
                }
            };
            match r {
                Ok(()) => {
                    match action {
                        RecoveryAction::Destroy(_) => inc(&self.gate.stats.destroyed),
                        RecoveryAction::Resume(_) => inc(&self.gate.stats.resumed),
                        RecoveryAction::Stop(_) => {}
                    }
                    info!("{what}: done");
                    true
                }
                Err(e) => {
                    inc(&self.gate.stats.failures);
                    warn!(error = %e, "{what}: failed; retrying");
                    false
                }
            }
        }
        .instrument(span)
        .await
    }
}
