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

use std::time::Duration;

use nubo_common::model::NodeHealthState;

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
}

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
            _ if o.evacuation_enabled && o.evacuation_due => Step::Evacuate,
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
        o.auto_left = Some(0);
        assert_eq!(step(&o, GRACE), Step::MarkEvacuated);
        assert_eq!(step(&obs(Some(Evacuated), false), GRACE), Step::Nothing);
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
