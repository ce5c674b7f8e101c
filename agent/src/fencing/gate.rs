//! The [`FenceGate`]: the [`FenceState`] machine of [`super::rules`] fed
//! with the lease acknowledgements of the node's registration, the peer
//! witness rounds and a [`Clock`]; every task that may act on instances asks
//! it first. Also counts what self-fencing did ([`FenceCounters`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_common::model::FencePhase;
use nubo_common::NodeName;
use tokio::sync::watch;
use tracing::{info, warn};

use super::rules::{Clock, FenceState, LeaseAck, Phase, Transition, WitnessRound};

/// Counters of self-fencing, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceCounters {
    /// Times the node fenced itself.
    pub fences: u64,
    /// Instances frozen (paused).
    pub frozen: u64,
    /// Instances hard-stopped because the driver cannot pause.
    pub hard_stopped: u64,
    /// Freeze or recovery operations that failed.
    pub failures: u64,
    /// Instances resumed on return.
    pub resumed: u64,
    /// Instances destroyed on return (no longer assigned here).
    pub destroyed: u64,
}

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) fences: AtomicU64,
    pub(super) frozen: AtomicU64,
    pub(super) hard_stopped: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) resumed: AtomicU64,
    pub(super) destroyed: AtomicU64,
}

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The live fencing decision, shared by the fencer task and the compute
/// wrappers. Every query re-evaluates the machine at the current time, so a
/// node waking up from a long freeze (SIGSTOP, VM host paused) is fenced by
/// whichever task looks first, before it can act on stale state.
pub struct FenceGate {
    node: NodeName,
    state: Mutex<FenceState>,
    acks: watch::Receiver<Option<LeaseAck>>,
    /// The latest peer witness round and how long a round counts (`None`:
    /// no witness, overdue always fences).
    witness: Option<(watch::Receiver<Option<WitnessRound>>, Duration)>,
    clock: Arc<dyn Clock>,
    pub(super) stats: Stats,
}

impl FenceGate {
    /// A gate for `node` fencing after `self_fence_after` without an
    /// acknowledgement on `acks`, starting now.
    pub fn new(
        node: NodeName,
        self_fence_after: Duration,
        clock: Arc<dyn Clock>,
        acks: watch::Receiver<Option<LeaseAck>>,
    ) -> Arc<Self> {
        Self::with_witness(node, self_fence_after, clock, acks, None)
    }

    /// [`FenceGate::new`] that holds instead of fencing while the latest
    /// round on `witness.0`, at most `witness.1` old, shows the whole
    /// control plane down.
    pub fn with_witness(
        node: NodeName,
        self_fence_after: Duration,
        clock: Arc<dyn Clock>,
        acks: watch::Receiver<Option<LeaseAck>>,
        witness: Option<(watch::Receiver<Option<WitnessRound>>, Duration)>,
    ) -> Arc<Self> {
        let started = clock.now();
        Arc::new(Self {
            node,
            state: Mutex::new(FenceState::new(self_fence_after, started)),
            acks,
            witness,
            clock,
            stats: Stats::default(),
        })
    }

    /// Advances the machine to now and returns the phase (logging and
    /// counting transitions).
    pub fn poll(&self) -> Phase {
        let ack = *self.acks.borrow();
        let now = self.clock.now();
        let outage = self.witness.as_ref().is_some_and(|(rx, max_age)| {
            rx.borrow()
                .is_some_and(|r| r.shows_outage_at(now, *max_age))
        });
        let (phase, t) = match self.state.lock() {
            Ok(mut st) => {
                let t = st.observe_with(now, ack, outage);
                (st.phase(), t)
            }
            // A panic while holding the lock: stay on the safe side.
            Err(_) => (
                Phase::Fenced {
                    since: now,
                    lease: None,
                },
                None,
            ),
        };
        match t {
            Some(Transition::Fence { silent_for }) => {
                inc(&self.stats.fences);
                warn!(node = %self.node, ?silent_for,
                    "SELF-FENCING: no etcd keep-alive acknowledged in time; freezing instances \
                     (evacuation auto/manual), booting nothing");
            }
            Some(Transition::Hold { silent_for }) => {
                warn!(node = %self.node, ?silent_for,
                    "etcd unreachable here AND for every peer (control plane down, nobody can \
                     move instances): NOT freezing; instances keep running, nothing boots");
            }
            Some(Transition::Unhold) => {
                info!(node = %self.node, "etcd session back on the same lease; hold lifted");
            }
            Some(Transition::Recover { lease_kept }) => {
                info!(node = %self.node, lease_kept,
                    "liveness lease held again; re-listing etcd before resuming anything");
            }
            None => {}
        }
        phase
    }

    /// Whether instances may be booted or resumed now.
    pub fn boots_allowed(&self) -> bool {
        !matches!(self.poll(), Phase::Fenced { .. } | Phase::Held { .. })
    }

    /// The phase as reported to peers and the coordinator.
    pub fn reported_phase(&self) -> FencePhase {
        match self.poll() {
            Phase::Normal => FencePhase::Normal,
            Phase::Held { .. } => FencePhase::Held,
            Phase::Fenced { .. } => FencePhase::Fenced,
            Phase::Recovering { .. } => FencePhase::Recovering,
        }
    }

    /// Whether the compute reconciler may run now.
    pub fn compute_allowed(&self) -> bool {
        self.poll() == Phase::Normal
    }

    pub(super) fn recovered(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.recovered();
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> FenceCounters {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FenceCounters {
            fences: g(&self.stats.fences),
            frozen: g(&self.stats.frozen),
            hard_stopped: g(&self.stats.hard_stopped),
            failures: g(&self.stats.failures),
            resumed: g(&self.stats.resumed),
            destroyed: g(&self.stats.destroyed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fencing::rules::ManualClock;
    use crate::fencing::witness::witness_max_age;
    use crate::testutil::*;
    use std::time::Instant;

    #[tokio::test]
    async fn the_gate_holds_on_a_fresh_witnessed_outage_and_fences_when_it_goes_stale() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let (acks_tx, acks) = watch::channel(None);
        let (rounds_tx, rounds) = watch::channel(None);
        let max_age = witness_max_age(Duration::from_millis(500));
        let gate = FenceGate::with_witness(
            node_name("n1"),
            Duration::from_secs(4),
            clock.clone(),
            acks,
            Some((rounds, max_age)),
        );
        acks_tx.send_replace(Some(LeaseAck {
            sent: clock.now(),
            lease: 3,
        }));
        clock.advance(Duration::from_secs(5));
        let down = WitnessRound {
            started: clock.now(),
            asked: 2,
            answered: 2,
            healthy: 0,
        };
        rounds_tx.send_replace(Some(down));
        assert_eq!(gate.reported_phase(), FencePhase::Held);
        assert!(!gate.boots_allowed() && !gate.compute_allowed());
        assert_eq!(gate.counters().fences, 0, "a hold is not a fence");
        // No newer round: the old one goes stale and the hold becomes a fence.
        clock.advance(max_age + Duration::from_millis(1));
        assert_eq!(gate.reported_phase(), FencePhase::Fenced);
        assert_eq!(gate.counters().fences, 1);
    }
}
