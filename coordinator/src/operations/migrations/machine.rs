//! The migration state machine, as a pure function: what the leader does
//! next for one migration, given what etcd holds about it (the record, the
//! two agents' reports, the order to the source, the nodes' fencing) and
//! the time. No I/O; the writes a decision implies are data ([`Write`]),
//! applied by [`super::apply`] in one guarded transaction each.
//!
//! ```text
//!  preparing ──dest prepared──▶ migrating ──source migrated──▶ completed (switch)
//!      │                            │  │
//!      │ dest failed / timeout      │  └─source failed──▶ failed (release)
//!      ▼                            ▼
//!   failed (release)      budget passed / abort ──▶ aborting ──source failed──▶ aborted (release)
//!                                                      └──source migrated──▶ completed (switch)
//! ```
//!
//! Rules that make it safe:
//! - a source that reports `migrated` always wins: the guest runs only on
//!   the destination, so the migration completes from any state (an abort
//!   that came too late, a leader that died before the switch);
//! - the leader never rolls back a migration whose job may still run
//!   without the source's word (`failed`), except when the source node was
//!   fenced by failure handling (its guest is then dead or frozen);
//! - everything is derived from etcd: a new leader takes the same decisions
//!   (timeouts count from the record's `updated_at`, the wall-clock time of
//!   its last state change).

use std::time::Duration;

use nubo_common::model::{
    Migration, MigrationPhase, MigrationReport, MigrationState, OutgoingMigration, Timestamp,
};

/// What the leader observes about one migration.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The record.
    pub migration: &'a Migration,
    /// The destination agent's report (`node-owned/<dest>/migrations/<id>`).
    pub destination: Option<&'a MigrationReport>,
    /// The source agent's report (`node-owned/<source>/migrations/<id>`).
    pub source: Option<&'a MigrationReport>,
    /// The order to the source as stored (`hosts/<source>/outgoing/<instance>`),
    /// when it is this migration's.
    pub outgoing: Option<&'a OutgoingMigration>,
    /// The source node is storage-fenced (failure handling took it over).
    pub source_fenced: bool,
    /// The destination node is storage-fenced.
    pub destination_fenced: bool,
    /// Now (wall clock, as the record's timestamps).
    pub now: Timestamp,
}

/// Budgets and timeouts (from [`crate::config::MigrationConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Longest wait for the destination to prepare.
    pub prepare_timeout: Duration,
    /// Pre-copy before post-copy (sent to the source).
    pub precopy_budget: Duration,
    /// The source's budget for the whole job (sent to the source).
    pub budget: Duration,
    /// Wait past `budget` for the source's word before asking for an abort.
    pub budget_grace: Duration,
}

/// A write a decision implies (besides the record's new state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Put the order to the source (a new one, or the stored one with its
    /// abort flag set).
    Outgoing(OutgoingMigration),
    /// The switch: assignment, spec, ports, group member and status to the
    /// destination; the source's usage released; orders, reports and the
    /// instance's migration index deleted.
    Switch,
    /// The rollback: the destination's reservation released; orders,
    /// reports and the index deleted. The instance stays on the source.
    Release,
}

/// What to do next for one migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The record's new state (may be the current one).
    pub state: MigrationState,
    /// The record's error afterwards.
    pub error: Option<String>,
    /// The guest's downtime afterwards.
    pub downtime_ms: Option<u64>,
    /// Whether it finished in post-copy, afterwards.
    pub postcopy: bool,
    /// The writes of the same transaction.
    pub writes: Vec<Write>,
}

/// The order to the source for migration `m` under budgets `b`.
pub fn order(m: &Migration, b: &Budgets, abort: bool) -> OutgoingMigration {
    OutgoingMigration {
        migration: m.id,
        destination: m.destination.clone(),
        mode: m.mode,
        block: m.block,
        precopy_budget_secs: secs(b.precopy_budget),
        budget_secs: secs(b.budget),
        abort,
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// How long the record has been in its state (zero when its clock is
/// ahead of ours).
pub fn in_state_for(m: &Migration, now: Timestamp) -> Duration {
    (now - m.updated_at).to_std().unwrap_or(Duration::ZERO)
}

fn detail(r: Option<&MigrationReport>) -> String {
    match r.and_then(|r| r.detail.as_deref()) {
        Some(d) if !d.trim().is_empty() => format!(": {}", d.trim()),
        _ => String::new(),
    }
}

/// The next step of migration `o.migration` (module docs); `None`: wait.
pub fn step(o: &Observed<'_>, b: &Budgets) -> Option<Decision> {
    let m = o.migration;
    if m.state.is_final() {
        return None;
    }
    // Reports of another migration (a hand-edited value) do not count.
    let src = o.source.filter(|r| r.migration == m.id);
    let dst = o.destination.filter(|r| r.migration == m.id);
    let outgoing = o.outgoing.filter(|out| out.migration == m.id);
    let decide = |state, error: Option<String>, writes| Decision {
        state,
        error,
        downtime_ms: m.downtime_ms,
        postcopy: m.postcopy,
        writes,
    };
    let fail = |why: String| decide(MigrationState::Failed, Some(why), vec![Write::Release]);
    // The guest left the source: complete, whatever else happened.
    if src.map(|r| r.phase) == Some(MigrationPhase::Migrated) {
        return Some(Decision {
            state: MigrationState::Completed,
            error: None,
            downtime_ms: src.and_then(|r| r.downtime_ms).or(m.downtime_ms),
            postcopy: src.is_some_and(|r| r.postcopy) || m.postcopy,
            writes: vec![Write::Switch],
        });
    }
    let source_lost = || {
        format!(
            "the source node {} failed (fenced) during the migration; failure handling \
             takes the server over",
            m.source
        )
    };
    let age = in_state_for(m, o.now);
    match m.state {
        MigrationState::Preparing => {
            if o.source_fenced {
                return Some(fail(source_lost()));
            }
            if o.destination_fenced {
                return Some(fail(format!(
                    "the destination node {} failed (fenced) while preparing",
                    m.destination
                )));
            }
            match dst.map(|r| r.phase) {
                Some(MigrationPhase::Prepared) => Some(decide(
                    MigrationState::Migrating,
                    None,
                    vec![Write::Outgoing(order(m, b, false))],
                )),
                Some(MigrationPhase::Failed) => Some(fail(format!(
                    "the destination {} could not prepare{}",
                    m.destination,
                    detail(dst)
                ))),
                _ if age > b.prepare_timeout => Some(fail(format!(
                    "the destination {} did not prepare within {} s (is its agent running?)",
                    m.destination,
                    b.prepare_timeout.as_secs()
                ))),
                _ => None,
            }
        }
        MigrationState::Migrating | MigrationState::Switching => {
            if src.map(|r| r.phase) == Some(MigrationPhase::Failed) {
                return Some(fail(format!(
                    "the migration failed on {}{}; the server keeps running there",
                    m.source,
                    detail(src)
                )));
            }
            if o.source_fenced {
                return Some(fail(source_lost()));
            }
            if age > b.budget.saturating_add(b.budget_grace) {
                let mut out = outgoing.cloned().unwrap_or_else(|| order(m, b, true));
                out.abort = true;
                return Some(decide(
                    MigrationState::Aborting,
                    Some(format!(
                        "no result from the source {} within the budget of {} s; abort requested",
                        m.source,
                        b.budget.as_secs()
                    )),
                    vec![Write::Outgoing(out)],
                ));
            }
            // The order is implied by the state: put it back if it went.
            outgoing.is_none().then(|| {
                decide(
                    m.state,
                    m.error.clone(),
                    vec![Write::Outgoing(order(m, b, false))],
                )
            })
        }
        MigrationState::Aborting => {
            let aborted = || {
                decide(
                    MigrationState::Aborted,
                    Some(m.error.clone().unwrap_or_else(|| "aborted".into())),
                    vec![Write::Release],
                )
            };
            if src.map(|r| r.phase) == Some(MigrationPhase::Failed) {
                return Some(aborted());
            }
            if o.source_fenced {
                return Some(fail(source_lost()));
            }
            match outgoing {
                // Never sent (aborted while preparing): nothing runs.
                None => Some(aborted()),
                Some(out) if !out.abort => {
                    let out = OutgoingMigration {
                        abort: true,
                        ..out.clone()
                    };
                    Some(decide(m.state, m.error.clone(), vec![Write::Outgoing(out)]))
                }
                // Asked: wait for the source's word.
                Some(_) => None,
            }
        }
        MigrationState::Completed | MigrationState::Aborted | MigrationState::Failed => None,
    }
}

/// The state an operator sees: `switching` for a migration whose source
/// reported the guest moved but whose switch has not been written yet (a
/// leader that died in between; the next one completes it).
pub fn shown_state(m: &Migration, source: Option<&MigrationReport>) -> MigrationState {
    let migrated =
        source.is_some_and(|r| r.migration == m.id && r.phase == MigrationPhase::Migrated);
    if migrated && !m.state.is_final() {
        MigrationState::Switching
    } else {
        m.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::MigrationMode;
    use nubo_common::{InstanceId, MigrationId, NodeName};

    const B: Budgets = Budgets {
        prepare_timeout: Duration::from_secs(60),
        precopy_budget: Duration::from_secs(30),
        budget: Duration::from_secs(300),
        budget_grace: Duration::from_secs(30),
    };

    fn mig(state: MigrationState) -> Migration {
        let t = nubo_common::model::now();
        Migration {
            id: MigrationId::new_random(),
            instance: InstanceId::new_random(),
            source: NodeName::new("src").unwrap(),
            destination: NodeName::new("dst").unwrap(),
            mode: MigrationMode::Live,
            block: false,
            state,
            error: None,
            downtime_ms: None,
            postcopy: false,
            created_at: t,
            updated_at: t,
        }
    }

    fn report(m: &Migration, phase: MigrationPhase) -> MigrationReport {
        MigrationReport {
            migration: m.id,
            phase,
            detail: None,
            downtime_ms: None,
            postcopy: false,
            at: m.updated_at,
        }
    }

    fn obs(m: &Migration) -> Observed<'_> {
        Observed {
            migration: m,
            destination: None,
            source: None,
            outgoing: None,
            source_fenced: false,
            destination_fenced: false,
            now: m.updated_at,
        }
    }

    fn secs_later(m: &Migration, s: i64) -> Timestamp {
        m.updated_at + chrono::Duration::seconds(s)
    }

    #[test]
    fn happy_path_prepares_migrates_and_switches() {
        let m = mig(MigrationState::Preparing);
        // Nothing reported yet: wait.
        assert_eq!(step(&obs(&m), &B), None);
        // The destination is ready: the order goes to the source.
        let prepared = report(&m, MigrationPhase::Prepared);
        let d = step(
            &Observed {
                destination: Some(&prepared),
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        assert_eq!(d.state, MigrationState::Migrating);
        assert_eq!(d.writes, vec![Write::Outgoing(order(&m, &B, false))]);
        let Write::Outgoing(out) = &d.writes[0] else {
            unreachable!()
        };
        assert_eq!((out.budget_secs, out.precopy_budget_secs), (300, 30));
        assert_eq!(out.destination, m.destination);
        // Migrating: the job runs; nothing to do while the order stands.
        let m = mig(MigrationState::Migrating);
        let out = order(&m, &B, false);
        let running = report(&m, MigrationPhase::Running);
        let o = Observed {
            destination: Some(&prepared),
            source: Some(&running),
            outgoing: Some(&out),
            ..obs(&m)
        };
        assert_eq!(step(&o, &B), None);
        // Migrated: switch, with the hypervisor's downtime and mode.
        let mut migrated = report(&m, MigrationPhase::Migrated);
        migrated.downtime_ms = Some(42);
        migrated.postcopy = true;
        let d = step(
            &Observed {
                source: Some(&migrated),
                ..o
            },
            &B,
        )
        .unwrap();
        assert_eq!(
            d,
            Decision {
                state: MigrationState::Completed,
                error: None,
                downtime_ms: Some(42),
                postcopy: true,
                writes: vec![Write::Switch],
            }
        );
    }

    #[test]
    fn a_cold_migration_follows_the_same_steps() {
        let mut m = mig(MigrationState::Migrating);
        m.mode = MigrationMode::Cold;
        let out = order(&m, &B, false);
        assert_eq!(out.mode, MigrationMode::Cold);
        let migrated = report(&m, MigrationPhase::Migrated);
        let d = step(
            &Observed {
                source: Some(&migrated),
                outgoing: Some(&out),
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        assert_eq!(
            (d.state, d.downtime_ms, d.postcopy, d.writes),
            (MigrationState::Completed, None, false, vec![Write::Switch])
        );
    }

    #[test]
    fn a_source_failure_rolls_back_with_its_reason() {
        let m = mig(MigrationState::Migrating);
        let out = order(&m, &B, false);
        let mut failed = report(&m, MigrationPhase::Failed);
        failed.detail = Some("unable to connect to dst".into());
        let d = step(
            &Observed {
                source: Some(&failed),
                outgoing: Some(&out),
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        assert_eq!(d.state, MigrationState::Failed);
        assert_eq!(d.writes, vec![Write::Release]);
        let e = d.error.unwrap();
        assert!(e.contains("failed on src: unable to connect to dst"), "{e}");
        assert!(e.contains("keeps running there"), "{e}");
    }

    #[test]
    fn a_destination_that_never_prepares_fails_after_the_timeout() {
        let m = mig(MigrationState::Preparing);
        let at = |s| Observed {
            now: secs_later(&m, s),
            ..obs(&m)
        };
        assert_eq!(step(&at(59), &B), None);
        let d = step(&at(61), &B).unwrap();
        assert_eq!(d.state, MigrationState::Failed);
        assert_eq!(d.writes, vec![Write::Release]);
        let e = d.error.unwrap();
        assert!(e.contains("did not prepare within 60 s"), "{e}");
        // A destination that says it cannot: at once, with its reason.
        let mut no = report(&m, MigrationPhase::Failed);
        no.detail = Some("tap creation failed".into());
        let d = step(
            &Observed {
                destination: Some(&no),
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        assert_eq!(d.state, MigrationState::Failed);
        assert!(d
            .error
            .unwrap()
            .contains("could not prepare: tap creation failed"));
        // A clock behind the record's: no timeout.
        assert_eq!(step(&at(-3600), &B), None);
    }

    #[test]
    fn abort_while_preparing_rolls_back_at_once() {
        let mut m = mig(MigrationState::Aborting);
        m.error = Some("aborted by an operator".into());
        let d = step(&obs(&m), &B).unwrap();
        assert_eq!(d.state, MigrationState::Aborted);
        assert_eq!(d.error.as_deref(), Some("aborted by an operator"));
        assert_eq!(d.writes, vec![Write::Release]);
    }

    #[test]
    fn abort_while_migrating_asks_the_source_and_waits_for_its_word() {
        let m = mig(MigrationState::Aborting);
        let out = order(&m, &B, false);
        let running = report(&m, MigrationPhase::Running);
        let o = Observed {
            source: Some(&running),
            outgoing: Some(&out),
            ..obs(&m)
        };
        let d = step(&o, &B).unwrap();
        assert_eq!(d.state, MigrationState::Aborting);
        assert_eq!(d.writes, vec![Write::Outgoing(order(&m, &B, true))]);
        // Asked: wait, however long it takes (never roll back blindly).
        let asked = order(&m, &B, true);
        let o = Observed {
            outgoing: Some(&asked),
            now: secs_later(&m, 86_400),
            ..o
        };
        assert_eq!(step(&o, &B), None);
        // The source stopped the job: aborted, destination released.
        let failed = report(&m, MigrationPhase::Failed);
        let d = step(
            &Observed {
                source: Some(&failed),
                ..o
            },
            &B,
        )
        .unwrap();
        assert_eq!(
            (d.state, d.writes),
            (MigrationState::Aborted, vec![Write::Release])
        );
        // Too late: the guest already moved: it completes.
        let migrated = report(&m, MigrationPhase::Migrated);
        let d = step(
            &Observed {
                source: Some(&migrated),
                ..o
            },
            &B,
        )
        .unwrap();
        assert_eq!(
            (d.state, d.writes),
            (MigrationState::Completed, vec![Write::Switch])
        );
    }

    #[test]
    fn the_budget_passed_without_a_word_asks_for_an_abort() {
        let m = mig(MigrationState::Migrating);
        let out = order(&m, &B, false);
        let at = |s| Observed {
            outgoing: Some(&out),
            now: secs_later(&m, s),
            ..obs(&m)
        };
        assert_eq!(step(&at(329), &B), None);
        let d = step(&at(331), &B).unwrap();
        assert_eq!(d.state, MigrationState::Aborting);
        assert!(d.error.unwrap().contains("within the budget of 300 s"));
        assert_eq!(d.writes, vec![Write::Outgoing(order(&m, &B, true))]);
    }

    #[test]
    fn a_new_leader_resumes_from_etcd_alone() {
        // Migrating with the order lost (written by hand, or never): the
        // order is put back, the state kept.
        let m = mig(MigrationState::Migrating);
        let d = step(&obs(&m), &B).unwrap();
        assert_eq!(d.state, MigrationState::Migrating);
        assert_eq!(d.writes, vec![Write::Outgoing(order(&m, &B, false))]);
        // A stored `switching` (or a migrating one whose source reported
        // migrated before the old leader switched) completes.
        for state in [MigrationState::Switching, MigrationState::Migrating] {
            let m = mig(state);
            let migrated = report(&m, MigrationPhase::Migrated);
            let o = Observed {
                source: Some(&migrated),
                ..obs(&m)
            };
            assert_eq!(shown_state(&m, Some(&migrated)), MigrationState::Switching);
            assert_eq!(step(&o, &B).unwrap().writes, vec![Write::Switch]);
        }
        // Even with the source fenced and the budget long passed: the guest
        // is on the destination, never roll back.
        let m = mig(MigrationState::Migrating);
        let migrated = report(&m, MigrationPhase::Migrated);
        let o = Observed {
            source: Some(&migrated),
            source_fenced: true,
            now: secs_later(&m, 10_000),
            ..obs(&m)
        };
        assert_eq!(step(&o, &B).unwrap().state, MigrationState::Completed);
        // Over: nothing, whatever the reports say.
        for state in [
            MigrationState::Completed,
            MigrationState::Aborted,
            MigrationState::Failed,
        ] {
            let m = mig(state);
            let migrated = report(&m, MigrationPhase::Migrated);
            let o = Observed {
                source: Some(&migrated),
                ..obs(&m)
            };
            assert_eq!(step(&o, &B), None);
            assert_eq!(shown_state(&m, Some(&migrated)), state);
        }
    }

    #[test]
    fn a_fenced_source_fails_the_migration_for_failure_handling() {
        for state in [
            MigrationState::Preparing,
            MigrationState::Migrating,
            MigrationState::Aborting,
        ] {
            let m = mig(state);
            let out = order(&m, &B, true);
            let d = step(
                &Observed {
                    source_fenced: true,
                    outgoing: Some(&out),
                    ..obs(&m)
                },
                &B,
            )
            .unwrap();
            assert_eq!(d.state, MigrationState::Failed, "{state:?}");
            assert_eq!(d.writes, vec![Write::Release]);
            assert!(d.error.unwrap().contains("src failed (fenced)"));
        }
        let m = mig(MigrationState::Preparing);
        let d = step(
            &Observed {
                destination_fenced: true,
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        assert_eq!(d.state, MigrationState::Failed);
    }

    #[test]
    fn reports_and_orders_of_another_migration_are_ignored() {
        let m = mig(MigrationState::Migrating);
        let other = mig(MigrationState::Migrating);
        let migrated = report(&other, MigrationPhase::Migrated);
        let out = order(&other, &B, false);
        let d = step(
            &Observed {
                source: Some(&migrated),
                outgoing: Some(&out),
                ..obs(&m)
            },
            &B,
        )
        .unwrap();
        // Not a switch: the order is (re)written for this migration.
        assert_eq!(d.writes, vec![Write::Outgoing(order(&m, &B, false))]);
    }
}
