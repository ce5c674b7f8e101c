//! Self-fencing decisions, pure: when the agent must freeze its instances,
//! when it may let them run again, and what to do with each one on return.
//! No etcd, no hypervisor, no clock reads: every function takes the
//! monotonic time it reasons about, so the rules are unit-tested with a
//! [`ManualClock`]. The runtime side is [`crate::fencing`].
//!
//! The rule (argued in `docs/failure-handling.md`, "Agent side"):
//!
//! * **Fence** when no keep-alive *sent* in the last `self_fence_after` has
//!   been acknowledged (before the first acknowledgement: counted from the
//!   agent's start). Fencing *freezes* (pauses) every running instance whose
//!   evacuation policy is not `never` — or whose policy is unknown —, and
//!   falls back to a hard stop when the driver cannot pause.
//! * While fenced, nothing is booted or resumed and compute does not run.
//! * **Hold** instead of fencing when a fresh [`WitnessRound`] shows the
//!   whole control plane down: every other node answered and none has a
//!   working etcd session. Instances keep running (nothing boots); the hold
//!   turns into a fence as soon as a round no longer shows that (a peer
//!   regained etcd, a peer does not answer, or no fresh round).
//! * **Recover** once a keep-alive sent after the fence began is
//!   acknowledged (the node holds a lease and its `alive` key again). The
//!   runtime then re-lists etcd and only after that applies
//!   [`recovery_plan`]: instances no longer assigned here are destroyed,
//!   assigned frozen ones are resumed, then compute runs again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nubo_common::model::{EvacuationPolicy, PowerState};
use nubo_common::InstanceId;

use crate::compute::hypervisor::{ObservedInstance, ObservedPower};
use crate::state::desired::DesiredNode;

/// A monotonic clock (never the wall clock: only elapsed time matters, and
/// only its rate has to agree with etcd's).
pub trait Clock: Send + Sync + 'static {
    /// The current monotonic instant.
    fn now(&self) -> Instant;
}

/// [`Clock`] over `std::time::Instant` (`CLOCK_MONOTONIC`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A [`Clock`] moved by hand (tests).
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<Instant>);

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Instant) -> Self {
        Self(std::sync::Mutex::new(start))
    }
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.0.lock() {
            *t += d;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|e| *e.into_inner())
    }
}

/// An acknowledged keep-alive (or lease grant): when its request was *sent*
/// and on which lease. The lease was alive in etcd at some point after
/// `sent`, so it cannot expire before `sent + TTL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAck {
    /// Monotonic time the request left the agent.
    pub sent: Instant,
    /// The lease it refreshed.
    pub lease: i64,
}

/// Whether the agent's own etcd session works at `now`: a keep-alive sent
/// within `healthy_within` was acknowledged and no attempt sent after it
/// failed. This is what an agent reports to its peers. Pure.
pub fn session_healthy(
    now: Instant,
    ack: Option<LeaseAck>,
    last_failure: Option<Instant>,
    healthy_within: Duration,
) -> bool {
    ack.is_some_and(|a| {
        now.saturating_duration_since(a.sent) <= healthy_within
            && last_failure.is_none_or(|f| f < a.sent)
    })
}

/// One round of asking every other node (the cached node records) about its
/// etcd session (`GET /v1/etcd-status` on its node API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WitnessRound {
    /// When the round started (monotonic).
    pub started: Instant,
    /// Peers asked.
    pub asked: usize,
    /// Peers that answered in time.
    pub answered: usize,
    /// Peers that answered with a healthy etcd session.
    pub healthy: usize,
}

impl WitnessRound {
    /// The round shows the whole control plane down: at least one peer,
    /// every peer answered, none has a working etcd session. Pure.
    pub fn control_plane_down(&self) -> bool {
        self.asked > 0 && self.answered == self.asked && self.healthy == 0
    }

    /// [`WitnessRound::control_plane_down`], from a round started at most
    /// `max_age` before `now`. Pure.
    pub fn shows_outage_at(&self, now: Instant, max_age: Duration) -> bool {
        now.saturating_duration_since(self.started) <= max_age && self.control_plane_down()
    }
}

/// Where the agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Keep-alives are acknowledged: everything runs normally.
    Normal,
    /// No acknowledged keep-alive for `self_fence_after`, but every peer
    /// witnesses that etcd is unreachable for it too: instances keep
    /// running, nothing boots, compute does not run.
    Held {
        /// When the hold began.
        since: Instant,
        /// The lease held when it began.
        lease: Option<i64>,
    },
    /// No acknowledged keep-alive for `self_fence_after`: freeze, boot nothing.
    Fenced {
        /// When the fence began.
        since: Instant,
        /// The lease held when it began (`None`: never registered).
        lease: Option<i64>,
    },
    /// A keep-alive sent after the fence began was acknowledged: re-list,
    /// then apply the recovery plan. Compute still does not run.
    Recovering {
        /// When the fence began.
        since: Instant,
        /// The lease survived the fence (its `alive` key never went away, so
        /// the coordinator cannot have fenced or evacuated this node).
        lease_kept: bool,
    },
}

/// A phase change reported by [`FenceState::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Normal or recovering → fenced: freeze now.
    Fence {
        /// Time since the last acknowledged keep-alive was sent (or since
        /// the start).
        silent_for: Duration,
    },
    /// Fenced (or held on a lease that was lost) → recovering: re-list,
    /// then recover.
    Recover {
        /// See [`Phase::Recovering::lease_kept`].
        lease_kept: bool,
    },
    /// Normal → held: overdue, but the peers witness a control-plane outage.
    Hold {
        /// Time since the last acknowledged keep-alive was sent.
        silent_for: Duration,
    },
    /// Held → normal: a keep-alive was acknowledged on the same lease (its
    /// `alive` key never went away, so nothing can have been moved).
    Unhold,
}

/// The fencing state machine. Pure: the caller supplies the time and the
/// latest acknowledgement.
#[derive(Debug, Clone)]
pub struct FenceState {
    self_fence_after: Duration,
    started: Instant,
    phase: Phase,
}

impl FenceState {
    /// A state machine for an agent started at `started`.
    pub fn new(self_fence_after: Duration, started: Instant) -> Self {
        Self {
            self_fence_after,
            started,
            phase: Phase::Normal,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether instances may be created, started, rebooted or resumed now.
    pub fn boots_allowed(&self) -> bool {
        !matches!(self.phase, Phase::Fenced { .. } | Phase::Held { .. })
    }

    /// Whether the compute reconciler may run now.
    pub fn compute_allowed(&self) -> bool {
        self.phase == Phase::Normal
    }

    /// Whether the node must be fenced at `now` given the latest `ack`.
    pub fn overdue(&self, now: Instant, ack: Option<LeaseAck>) -> Option<Duration> {
        let last = ack.map_or(self.started, |a| a.sent.max(self.started));
        let silent = now.saturating_duration_since(last);
        (silent > self.self_fence_after).then_some(silent)
    }

    /// Advances the machine to `now` with the latest acknowledgement (no
    /// peer witness: overdue always fences).
    pub fn observe(&mut self, now: Instant, ack: Option<LeaseAck>) -> Option<Transition> {
        self.observe_with(now, ack, false)
    }

    /// Advances the machine to `now` with the latest acknowledgement and
    /// whether a fresh peer witness round shows the whole control plane
    /// down ([`WitnessRound::shows_outage_at`]).
    pub fn observe_with(
        &mut self,
        now: Instant,
        ack: Option<LeaseAck>,
        outage_witnessed: bool,
    ) -> Option<Transition> {
        let overdue = self.overdue(now, ack);
        match self.phase {
            Phase::Normal if overdue.is_some() && outage_witnessed => {
                self.phase = Phase::Held {
                    since: now,
                    lease: ack.map(|a| a.lease),
                };
                overdue.map(|silent_for| Transition::Hold { silent_for })
            }
            Phase::Held { since, lease } => match (overdue, ack) {
                (None, Some(a)) if lease == Some(a.lease) => {
                    self.phase = Phase::Normal;
                    Some(Transition::Unhold)
                }
                // A new lease: the old one expired, so the coordinator may
                // have fenced and moved instances: re-list and recover.
                (None, Some(_)) => {
                    self.phase = Phase::Recovering {
                        since,
                        lease_kept: false,
                    };
                    Some(Transition::Recover { lease_kept: false })
                }
                (Some(_), _) if outage_witnessed => None,
                (silent, _) => {
                    self.phase = Phase::Fenced { since: now, lease };
                    Some(Transition::Fence {
                        silent_for: silent.unwrap_or_default(),
                    })
                }
            },
            Phase::Normal | Phase::Recovering { .. } => {
                let silent_for = overdue?;
                let (since, lease) = match self.phase {
                    // A relapse keeps the original fence time and lease: the
                    // lease has not been proven kept.
                    Phase::Recovering {
                        since,
                        lease_kept: true,
                    } => (since, ack.map(|a| a.lease)),
                    Phase::Recovering { since, .. } => (since, None),
                    _ => (now, ack.map(|a| a.lease)),
                };
                self.phase = Phase::Fenced { since, lease };
                Some(Transition::Fence { silent_for })
            }
            Phase::Fenced { since, lease } => {
                let a = ack.filter(|a| a.sent >= since && overdue.is_none())?;
                let lease_kept = lease == Some(a.lease);
                self.phase = Phase::Recovering { since, lease_kept };
                Some(Transition::Recover { lease_kept })
            }
        }
    }

    /// The recovery plan was applied: back to normal (unless the lease was
    /// lost again meanwhile, which the next [`FenceState::observe`] sees).
    pub fn recovered(&mut self) {
        if matches!(self.phase, Phase::Recovering { .. }) {
            self.phase = Phase::Normal;
        }
    }
}

/// The evacuation policy of every instance the cache knows as assigned here
/// (unresolvable ones are absent: their policy is unknown).
pub fn policies(desired: &DesiredNode) -> BTreeMap<InstanceId, EvacuationPolicy> {
    desired
        .instances
        .iter()
        .map(|(id, d)| (*id, d.spec.evacuation))
        .collect()
}

/// The instances to freeze: managed, running, and not known to be `never`
/// (an instance the cache does not know, or no longer assigns here, may be
/// restarted elsewhere: it is frozen too). Foreign instances are never
/// touched. Pure.
pub fn fence_plan(
    observed: &[ObservedInstance],
    policies: &BTreeMap<InstanceId, EvacuationPolicy>,
) -> Vec<InstanceId> {
    observed
        .iter()
        .filter(|o| o.managed && o.power == ObservedPower::Running)
        .filter(|o| policies.get(&o.id) != Some(&EvacuationPolicy::Never))
        .map(|o| o.id)
        .collect()
}

/// One step of the return from a fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecoveryAction {
    /// No longer assigned here (moved or deleted meanwhile): destroy, never
    /// run it again.
    Destroy(InstanceId),
    /// Frozen, still assigned, desired stopped: shut it off.
    Stop(InstanceId),
    /// Frozen and still assigned here: let it run again (no reboot).
    Resume(InstanceId),
}

/// What to do on return, from a `desired` state built from a fresh list of
/// etcd and a fresh observation of the hypervisor. Destroys come first, then
/// stops, then resumes. Instances stopped by a fallback hard stop are left to
/// compute (it starts them if they should run). Pure.
pub fn recovery_plan(observed: &[ObservedInstance], desired: &DesiredNode) -> Vec<RecoveryAction> {
    let mut out = Vec::new();
    for o in observed.iter().filter(|o| o.managed) {
        let assigned = desired.instances.contains_key(&o.id)
            || desired.broken.contains_key(&o.id)
            || desired.pending.contains_key(&o.id);
        if !assigned {
            out.push(RecoveryAction::Destroy(o.id));
            continue;
        }
        if o.power != ObservedPower::Paused {
            continue;
        }
        match desired.instances.get(&o.id).map(|d| d.power()) {
            Some(PowerState::Stopped) => out.push(RecoveryAction::Stop(o.id)),
            // Running, or assigned but unresolvable: it was running when it
            // was frozen.
            _ => out.push(RecoveryAction::Resume(o.id)),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    const SFA: Duration = Duration::from_secs(4);

    fn ack(at: Instant, lease: i64) -> Option<LeaseAck> {
        Some(LeaseAck { sent: at, lease })
    }

    #[test]
    fn fences_only_after_self_fence_after_without_an_acknowledged_keepalive() {
        let clock = ManualClock::new(Instant::now());
        let t0 = clock.now();
        let mut st = FenceState::new(SFA, t0);
        // Not yet registered, within the bound: normal.
        clock.advance(Duration::from_secs(3));
        assert_eq!(st.observe(clock.now(), None), None);
        let a = ack(clock.now(), 7);
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            st.observe(clock.now(), a),
            None,
            "exactly 4 s is not overdue"
        );
        assert!(st.compute_allowed() && st.boots_allowed());
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            st.observe(clock.now(), a),
            Some(Transition::Fence {
                silent_for: Duration::from_millis(4001)
            })
        );
        assert!(!st.boots_allowed() && !st.compute_allowed());
        // Staying fenced reports nothing new.
        clock.advance(Duration::from_secs(10));
        assert_eq!(st.observe(clock.now(), a), None);
    }

    #[test]
    fn never_registered_agent_fences_counting_from_its_start() {
        let t0 = Instant::now();
        let mut st = FenceState::new(SFA, t0);
        assert!(matches!(
            st.observe(t0 + Duration::from_secs(5), None),
            Some(Transition::Fence { .. })
        ));
        assert_eq!(
            st.phase(),
            Phase::Fenced {
                since: t0 + Duration::from_secs(5),
                lease: None
            }
        );
    }

    #[test]
    fn a_late_ack_of_a_keepalive_sent_before_the_fence_does_not_recover() {
        let t0 = Instant::now();
        let mut st = FenceState::new(SFA, t0);
        let fence_at = t0 + Duration::from_secs(5);
        st.observe(fence_at, ack(t0, 1));
        // Acknowledged only now, but sent before the fence began.
        assert_eq!(st.observe(fence_at + SFA, ack(t0, 1)), None);
        assert!(!st.boots_allowed());
        // A keep-alive sent after the fence on the same lease: lease kept.
        let r = st.observe(fence_at + SFA, ack(fence_at + Duration::from_secs(1), 1));
        assert_eq!(r, Some(Transition::Recover { lease_kept: true }));
        assert!(st.boots_allowed(), "recovery may resume instances");
        assert!(!st.compute_allowed(), "compute waits for the recovery plan");
        st.recovered();
        assert_eq!(st.phase(), Phase::Normal);
    }

    #[test]
    fn a_new_lease_means_the_lease_was_lost_and_a_relapse_fences_again() {
        let t0 = Instant::now();
        let mut st = FenceState::new(SFA, t0);
        let fence_at = t0 + Duration::from_secs(5);
        st.observe(fence_at, ack(t0, 1));
        let back = fence_at + Duration::from_secs(20);
        assert_eq!(
            st.observe(back, ack(back, 2)),
            Some(Transition::Recover { lease_kept: false })
        );
        // Lost again before the recovery finished: fenced again, and the
        // lease counts as lost (not proven kept since the first fence).
        let relapse = back + Duration::from_secs(5);
        assert!(matches!(
            st.observe(relapse, ack(back, 2)),
            Some(Transition::Fence { .. })
        ));
        st.recovered();
        assert!(!st.boots_allowed(), "recovered() does not lift a fence");
        let again = relapse + Duration::from_secs(1);
        assert_eq!(
            st.observe(again, ack(again, 2)),
            Some(Transition::Recover { lease_kept: false })
        );
    }

    #[test]
    fn a_session_is_healthy_only_with_a_recent_ack_and_no_later_failure() {
        let clock = ManualClock::new(Instant::now());
        let within = Duration::from_millis(2500);
        let t0 = clock.now();
        assert!(
            !session_healthy(t0, None, None, within),
            "never acknowledged"
        );
        let a = ack(t0, 1);
        assert!(session_healthy(t0, a, None, within));
        // An attempt sent before the ack failed: irrelevant.
        assert!(session_healthy(
            t0,
            a,
            Some(t0 - Duration::from_millis(1)),
            within
        ));
        clock.advance(within);
        assert!(session_healthy(clock.now(), a, None, within));
        // A later attempt failed (etcd refused it): unhealthy at once.
        assert!(!session_healthy(
            clock.now(),
            a,
            Some(t0 + Duration::from_millis(100)),
            within
        ));
        // No failure reported, but the last ack is too old (hung attempt).
        clock.advance(Duration::from_millis(1));
        assert!(!session_healthy(clock.now(), a, None, within));
    }

    #[test]
    fn only_a_complete_fresh_round_of_unhealthy_peers_shows_an_outage() {
        let t0 = Instant::now();
        let r = |asked, answered, healthy| WitnessRound {
            started: t0,
            asked,
            answered,
            healthy,
        };
        assert!(r(2, 2, 0).control_plane_down());
        assert!(
            !r(0, 0, 0).control_plane_down(),
            "no peer: single node or cut off"
        );
        assert!(
            !r(2, 1, 0).control_plane_down(),
            "a silent peer may have etcd"
        );
        assert!(
            !r(2, 2, 1).control_plane_down(),
            "a peer has etcd: we are cut off"
        );
        let max_age = Duration::from_millis(1500);
        assert!(r(2, 2, 0).shows_outage_at(t0 + max_age, max_age));
        assert!(!r(2, 2, 0).shows_outage_at(t0 + max_age + Duration::from_millis(1), max_age));
    }

    #[test]
    fn a_witnessed_outage_holds_instead_of_fencing_until_a_peer_has_etcd_again() {
        let clock = ManualClock::new(Instant::now());
        let t0 = clock.now();
        let mut st = FenceState::new(SFA, t0);
        let a = ack(t0, 1);
        // Witnessed before being overdue: nothing happens.
        clock.advance(Duration::from_secs(2));
        assert_eq!(st.observe_with(clock.now(), a, true), None);
        clock.advance(Duration::from_millis(2001));
        assert_eq!(
            st.observe_with(clock.now(), a, true),
            Some(Transition::Hold {
                silent_for: Duration::from_millis(4001)
            })
        );
        assert!(matches!(st.phase(), Phase::Held { lease: Some(1), .. }));
        assert!(!st.boots_allowed() && !st.compute_allowed());
        // Still witnessed a minute later: still held, nothing to do.
        clock.advance(Duration::from_secs(60));
        assert_eq!(st.observe_with(clock.now(), a, true), None);
        // etcd returns on the same lease (etcd keeps leases across its
        // restart): back to normal without any recovery.
        let back = ack(clock.now(), 1);
        assert_eq!(
            st.observe_with(clock.now(), back, true),
            Some(Transition::Unhold)
        );
        assert_eq!(st.phase(), Phase::Normal);
    }

    #[test]
    fn a_hold_becomes_a_fence_when_the_witness_goes_and_a_new_lease_recovers() {
        let clock = ManualClock::new(Instant::now());
        let t0 = clock.now();
        let mut st = FenceState::new(SFA, t0);
        let a = ack(t0, 1);
        clock.advance(Duration::from_secs(5));
        assert!(matches!(
            st.observe_with(clock.now(), a, true),
            Some(Transition::Hold { .. })
        ));
        // A peer regained etcd (or stopped answering): fence now.
        clock.advance(Duration::from_secs(3));
        assert!(matches!(
            st.observe_with(clock.now(), a, false),
            Some(Transition::Fence { .. })
        ));
        assert!(matches!(st.phase(), Phase::Fenced { lease: Some(1), .. }));
        // Once fenced, a witness never un-fences: only an ack does.
        assert_eq!(st.observe_with(clock.now(), a, true), None);
        assert!(!st.boots_allowed());

        // Held, then back on a NEW lease: the old one expired, instances may
        // have been moved: recover (re-list, destroy what moved).
        let mut st = FenceState::new(SFA, t0);
        st.observe_with(t0 + Duration::from_secs(5), a, true);
        let now = t0 + Duration::from_secs(30);
        assert_eq!(
            st.observe_with(now, ack(now, 2), true),
            Some(Transition::Recover { lease_kept: false })
        );
        assert!(!st.compute_allowed());
        // Without a witness the old rule applies: overdue fences.
        let mut st = FenceState::new(SFA, t0);
        assert!(matches!(
            st.observe_with(t0 + Duration::from_secs(5), a, false),
            Some(Transition::Fence { .. })
        ));
    }

    fn obs(id: InstanceId, power: ObservedPower, managed: bool) -> ObservedInstance {
        observed_instance(id, power, managed)
    }

    fn world(n: usize) -> (DesiredNode, Vec<InstanceId>) {
        let mut w = World::new();
        let node = node_name("n1");
        w.node(&node, "10.0.0.1");
        let net = w.network(7, 0);
        let ids = (0..n).map(|_| w.instance_on(&node, net, &[]).0).collect();
        (crate::state::desired::build(&w.cache, &node, 1500), ids)
    }

    #[test]
    fn fence_plan_freezes_auto_manual_and_unknown_but_not_never_or_foreign() {
        let (mut d, ids) = world(4);
        let policy = [
            EvacuationPolicy::Auto,
            EvacuationPolicy::Manual,
            EvacuationPolicy::Never,
            EvacuationPolicy::Auto,
        ];
        for (id, p) in ids.iter().zip(policy) {
            d.instances.get_mut(id).unwrap().spec.evacuation = p;
        }
        let unknown = InstanceId::new_random();
        let foreign = InstanceId::new_random();
        let observed = vec![
            obs(ids[0], ObservedPower::Running, true),
            obs(ids[1], ObservedPower::Running, true),
            obs(ids[2], ObservedPower::Running, true),
            obs(ids[3], ObservedPower::Stopped, true),
            obs(unknown, ObservedPower::Running, true),
            obs(foreign, ObservedPower::Running, false),
        ];
        assert_eq!(
            fence_plan(&observed, &policies(&d)),
            vec![ids[0], ids[1], unknown]
        );
        // Already frozen: nothing left to do.
        let frozen: Vec<_> = observed
            .iter()
            .map(|o| ObservedInstance {
                power: if o.power == ObservedPower::Running && o.id != ids[2] && o.managed {
                    ObservedPower::Paused
                } else {
                    o.power
                },
                ..o.clone()
            })
            .collect();
        assert!(fence_plan(&frozen, &policies(&d)).is_empty());
    }

    #[test]
    fn recovery_destroys_the_unassigned_first_and_resumes_only_the_assigned() {
        let (mut d, ids) = world(3);
        d.instances.get_mut(&ids[1]).unwrap().spec.power = PowerState::Stopped;
        let moved = InstanceId::new_random();
        let moved_stopped = InstanceId::new_random();
        let held = InstanceId::new_random();
        d.broken.insert(held, "port not found".into());
        let foreign = InstanceId::new_random();
        let observed = vec![
            obs(ids[0], ObservedPower::Paused, true),
            obs(ids[1], ObservedPower::Paused, true),
            obs(ids[2], ObservedPower::Stopped, true),
            obs(moved, ObservedPower::Paused, true),
            obs(moved_stopped, ObservedPower::Stopped, true),
            obs(held, ObservedPower::Paused, true),
            obs(foreign, ObservedPower::Paused, false),
        ];
        let plan = recovery_plan(&observed, &d);
        // Every destroy precedes every stop, which precedes every resume.
        let first_resume = plan
            .iter()
            .position(|a| matches!(a, RecoveryAction::Resume(_)))
            .unwrap();
        assert!(plan[..first_resume]
            .iter()
            .all(|a| !matches!(a, RecoveryAction::Resume(_))));
        let mut destroys: Vec<_> = plan
            .iter()
            .filter_map(|a| match a {
                RecoveryAction::Destroy(id) => Some(*id),
                _ => None,
            })
            .collect();
        destroys.sort();
        let mut expected = vec![moved, moved_stopped];
        expected.sort();
        assert_eq!(destroys, expected);
        assert!(plan[..2]
            .iter()
            .all(|a| matches!(a, RecoveryAction::Destroy(_))));
        assert_eq!(plan[2], RecoveryAction::Stop(ids[1]));
        let mut resumes: Vec<_> = plan[3..].to_vec();
        resumes.sort();
        let mut expected = vec![RecoveryAction::Resume(ids[0]), RecoveryAction::Resume(held)];
        expected.sort();
        assert_eq!(resumes, expected);
        // The stopped assigned one is compute's business; foreign untouched.
        assert_eq!(plan.len(), 5);
    }
}
