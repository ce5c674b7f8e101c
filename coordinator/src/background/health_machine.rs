//! The node health state machine, as a pure function: what the leader does
//! next for one node, given what it observes. No I/O, no clocks: durations
//! are measured by the caller on its monotonic clock.
//!
//! ```text
//!   up ──alive key gone──▶ suspect ──suspect_grace passed, fenced OK──▶ fenced
//!    ▲                                                                    │
//!    │                                    every `auto` instance moved ◀───┘
//!    └──────── alive key back (from any state) ──────────── evacuated ◀──┘
//! ```

use std::time::{Duration, Instant};

use nubo_common::model::NodeHealthState;
use nubo_common::NodeName;

/// What the leader observes about one registered node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The stored health (`None`: no health key yet).
    pub stored: Option<NodeHealthState>,
    /// The agent's alive key exists.
    pub alive: bool,
    /// How long THIS leader has seen the alive key absent (`None` when
    /// alive). A new leader starts counting when it takes over, so it always
    /// waits a full grace itself whatever the previous leader wrote.
    pub down_for: Option<Duration>,
    /// Instances with policy `auto` still assigned to the node, when known.
    pub auto_left: Option<usize>,
    /// The cluster-wide evacuation switch.
    pub evacuation_enabled: bool,
    /// The retry timer of evacuation passes has expired and no pass runs.
    pub evacuation_due: bool,
    /// No other node came (back) up after this one went down less than
    /// [`TARGET_SETTLE`] ago. A node that just regained etcd may be the first
    /// witness a *holding* agent can see (`docs/failure-handling.md`, "peer
    /// witness"); moving instances onto it waits until that agent has had
    /// time to notice and freeze.
    pub targets_settled: bool,
}

/// How long a node that came up after a failed node went down is not used
/// for its evacuation: an agent holding on a witnessed outage sees a peer's
/// regained etcd session within one witness round (≤ 0.25 s pause + 2 ×
/// 0.5 s probe timeout) and freezes within its 3 s budget: 4.25 s.
pub const TARGET_SETTLE: Duration = Duration::from_secs(5);

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Nothing,
    /// Write `up` (unfence first when it was fenced/evacuated).
    MarkUp {
        /// The node was storage-fenced and must be unfenced.
        unfence: bool,
    },
    /// Write `suspect`.
    MarkSuspect,
    /// Call the fencer; write `fenced` when it succeeds.
    Fence,
    /// Run an evacuation pass.
    Evacuate,
    /// Write `evacuated`.
    MarkEvacuated,
}

/// [`Observation::targets_settled`] for `node`, down since `down_since`
/// (`None`: not down), given when this leader saw every node come up
/// (`ups`, nodes currently up) and the current time. Pure.
pub fn targets_settled(
    node: &NodeName,
    down_since: Option<Instant>,
    ups: &[(NodeName, Instant)],
    now: Instant,
) -> bool {
    ups.iter().all(|(n, up)| {
        n == node
            || down_since.is_none_or(|d| *up < d)
            || now.saturating_duration_since(*up) >= TARGET_SETTLE
    })
}

/// The next step for a node (see the module diagram).
pub fn step(o: &Observation, suspect_grace: Duration) -> Step {
    use NodeHealthState::*;
    if o.alive {
        return match o.stored {
            Some(Up) => Step::Nothing,
            None | Some(Suspect) => Step::MarkUp { unfence: false },
            Some(Fenced) | Some(Evacuated) => Step::MarkUp { unfence: true },
        };
    }
    match o.stored {
        None | Some(Up) => Step::MarkSuspect,
        Some(Suspect) => match o.down_for {
            Some(d) if d >= suspect_grace => Step::Fence,
            _ => Step::Nothing,
        },
        Some(Fenced) => match o.auto_left {
            Some(0) => Step::MarkEvacuated,
            _ if o.evacuation_enabled && o.evacuation_due && o.targets_settled => Step::Evacuate,
            _ => Step::Nothing,
        },
        Some(Evacuated) => Step::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeHealthState::*;

    const GRACE: Duration = Duration::from_secs(3);

    fn obs(stored: Option<NodeHealthState>, alive: bool) -> Observation {
        Observation {
            stored,
            alive,
            down_for: (!alive).then_some(Duration::ZERO),
            auto_left: None,
            evacuation_enabled: true,
            evacuation_due: true,
            targets_settled: true,
        }
    }

    #[test]
    fn a_live_node_is_up_and_stays_up() {
        assert_eq!(
            step(&obs(None, true), GRACE),
            Step::MarkUp { unfence: false }
        );
        assert_eq!(step(&obs(Some(Up), true), GRACE), Step::Nothing);
    }

    #[test]
    fn losing_the_alive_key_makes_a_node_suspect_but_not_fenced_before_the_grace() {
        assert_eq!(step(&obs(Some(Up), false), GRACE), Step::MarkSuspect);
        assert_eq!(step(&obs(None, false), GRACE), Step::MarkSuspect);
        let mut o = obs(Some(Suspect), false);
        o.down_for = Some(GRACE - Duration::from_millis(1));
        assert_eq!(step(&o, GRACE), Step::Nothing);
        // A leader that has not observed the node down itself never fences.
        o.down_for = None;
        assert_eq!(step(&o, GRACE), Step::Nothing);
        o.down_for = Some(GRACE);
        assert_eq!(step(&o, GRACE), Step::Fence);
    }

    #[test]
    fn fenced_nodes_are_evacuated_only_when_allowed_and_due() {
        let mut o = obs(Some(Fenced), false);
        assert_eq!(step(&o, GRACE), Step::Evacuate);
        o.auto_left = Some(3);
        assert_eq!(step(&o, GRACE), Step::Evacuate);
        o.evacuation_due = false;
        assert_eq!(step(&o, GRACE), Step::Nothing);
        o.evacuation_due = true;
        o.evacuation_enabled = false;
        assert_eq!(step(&o, GRACE), Step::Nothing);
        o.evacuation_enabled = true;
        o.targets_settled = false;
        assert_eq!(
            step(&o, GRACE),
            Step::Nothing,
            "a target that just came up may be a holding agent's first witness"
        );
        o.auto_left = Some(0);
        assert_eq!(step(&o, GRACE), Step::MarkEvacuated);
        assert_eq!(step(&obs(Some(Evacuated), false), GRACE), Step::Nothing);
    }

    #[test]
    fn targets_that_came_up_after_the_failure_settle_first() {
        let t0 = Instant::now();
        let (a, b, c) = (
            NodeName::new("a").unwrap(),
            NodeName::new("b").unwrap(),
            NodeName::new("c").unwrap(),
        );
        let down = Some(t0 + Duration::from_secs(10));
        // b was up before a went down: settled at once.
        let ups = vec![(b.clone(), t0)];
        assert!(targets_settled(
            &a,
            down,
            &ups,
            t0 + Duration::from_secs(10)
        ));
        // c came (back) up after a went down: not before TARGET_SETTLE.
        let c_up = t0 + Duration::from_secs(20);
        let ups = vec![(b, t0), (c, c_up)];
        assert!(!targets_settled(&a, down, &ups, c_up));
        assert!(!targets_settled(
            &a,
            down,
            &ups,
            c_up + TARGET_SETTLE - Duration::from_millis(1)
        ));
        assert!(targets_settled(&a, down, &ups, c_up + TARGET_SETTLE));
        // A node that is up itself is not waiting for anything.
        assert!(targets_settled(&a, None, &ups, c_up));
    }

    #[test]
    fn the_alive_key_returning_brings_any_state_back_up() {
        assert_eq!(
            step(&obs(Some(Suspect), true), GRACE),
            Step::MarkUp { unfence: false }
        );
        for s in [Fenced, Evacuated] {
            assert_eq!(
                step(&obs(Some(s), true), GRACE),
                Step::MarkUp { unfence: true }
            );
        }
    }
}
