//! The shape of every reconciler of the node: a [`Subsystem`] observes the
//! real node, computes a typed [`Subsystem::Plan`] with a pure function of
//! the [`DesiredNode`] and what it observed, and applies that plan. The
//! plan is where the logic lives and is unit-tested without root; on a
//! converged node it is empty, so restarting the agent changes nothing.
//!
//! Every pass hands the same [`DesiredNode`] snapshot to each subsystem in
//! turn ([`reconcile_all`]), in the order the agent wires them:
//!   - `compute` (instances on the hypervisor), `volumes` (their attached
//!     volumes), `status` (`/instances/<id>/status` from what compute and
//!     volumes did), see [`crate::compute`];
//!   - unless `--no-network`, [`crate::network`]: `overlay` (bridges
//!     `nb-<vni>`, VXLAN `vx-<vni>`, FDB, taps on bridges), `firewall` (one
//!     nftables transaction), `dhcp` (lease tables), `metadata` (instance
//!     rows);
//!   - `plug_gate` (resumes guests started paused once their taps are
//!     wired), last.

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

/// What a subsystem will change on the node: empty when it is converged.
pub trait Plan: std::fmt::Debug + Send {
    /// How many actions the plan holds.
    fn len(&self) -> usize;
    /// Whether the plan changes nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<A: std::fmt::Debug + Send> Plan for Vec<A> {
    fn len(&self) -> usize {
        <[A]>::len(self)
    }
}

/// One reconciler of the node: observe → plan → apply.
#[async_trait]
pub trait Subsystem: Send {
    /// What [`Subsystem::observe`] finds (and what else the plan needs that
    /// is not in the desired state, e.g. statuses already reported).
    type Observed: Send + Sync;
    /// The typed plan.
    type Plan: Plan;

    /// Name for logs.
    fn name(&self) -> &'static str;

    /// Reads the real node (netlink, nftables, libvirt, the running
    /// servers …). The only step besides [`Subsystem::apply`] with side
    /// effects, and those are reads.
    async fn observe(&mut self, desired: &DesiredNode) -> Result<Self::Observed, SubsystemError>;

    /// What to change so that the node matches `desired`. Pure: no I/O,
    /// deterministic; empty on a converged node.
    fn plan(&self, desired: &DesiredNode, observed: &Self::Observed) -> Self::Plan;

    /// Carries the plan out. Returns the number of changes made (0 for an
    /// empty plan).
    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: Self::Plan,
    ) -> Result<usize, SubsystemError>;
}

/// A [`Subsystem`] run as one step of a pass: the object-safe face the
/// reconcile loop holds (`Box<dyn Reconcile>`), implemented for every
/// subsystem by observing, planning and applying.
#[async_trait]
pub trait Reconcile: Send {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Brings this part of the node to `desired`. Returns the number of
    /// changes made (0 on a converged node).
    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError>;
}

#[async_trait]
impl<S: Subsystem> Reconcile for S {
    fn name(&self) -> &'static str {
        Subsystem::name(self)
    }

    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError> {
        let observed = self.observe(desired).await?;
        let plan = self.plan(desired, &observed);
        drop(observed);
        self.apply(desired, plan).await
    }
}

/// The result of one pass over all subsystems.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Changes made by all subsystems.
    pub actions: usize,
    /// Subsystems that failed.
    pub failures: usize,
}

/// Runs every subsystem, in order, on one snapshot. A failing subsystem is
/// logged and does not prevent the others from running.
pub async fn reconcile_all(
    subsystems: &mut [Box<dyn Reconcile>],
    desired: &DesiredNode,
) -> PassOutcome {
    reconcile_all_observed(subsystems, desired, |_, _, _| {}).await
}

/// [`reconcile_all`], telling `step` the name, duration and success of each
/// subsystem's part (e.g. for the metrics).
pub async fn reconcile_all_observed(
    subsystems: &mut [Box<dyn Reconcile>],
    desired: &DesiredNode,
    mut step: impl FnMut(&'static str, std::time::Duration, bool) + Send,
) -> PassOutcome {
    let mut out = PassOutcome::default();
    for s in subsystems.iter_mut() {
        let name = s.name();
        let span = info_span!("subsystem", subsystem = name);
        let started = std::time::Instant::now();
        let result = s.reconcile(desired).instrument(span).await;
        let elapsed = started.elapsed();
        debug!(
            subsystem = name,
            elapsed_us = elapsed.as_micros() as u64,
            "subsystem pass timing"
        );
        step(name, elapsed, result.is_ok());
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A subsystem over a set of numbers: the plan adds the missing ones.
    struct Numbers {
        have: Vec<u32>,
        calls: Arc<Mutex<Vec<String>>>,
        fail_observe: bool,
    }

    #[async_trait]
    impl Subsystem for Numbers {
        type Observed = Vec<u32>;
        type Plan = Vec<u32>;
        fn name(&self) -> &'static str {
            "numbers"
        }
        async fn observe(&mut self, _: &DesiredNode) -> Result<Vec<u32>, SubsystemError> {
            self.calls.lock().unwrap().push("observe".into());
            if self.fail_observe {
                return Err(SubsystemError::Other("cannot observe".into()));
            }
            Ok(self.have.clone())
        }
        fn plan(&self, desired: &DesiredNode, observed: &Vec<u32>) -> Vec<u32> {
            self.calls.lock().unwrap().push("plan".into());
            // The desired numbers: one per desired instance, by position.
            (0..desired.instances.len() as u32)
                .filter(|n| !observed.contains(n))
                .collect()
        }
        async fn apply(
            &mut self,
            _: &DesiredNode,
            plan: Vec<u32>,
        ) -> Result<usize, SubsystemError> {
            self.calls.lock().unwrap().push(format!("apply {plan:?}"));
            self.have.extend(&plan);
            Ok(plan.len())
        }
    }

    fn desired_with(n: usize) -> DesiredNode {
        let mut d = DesiredNode::default();
        for _ in 0..n {
            let inst = crate::testutil::desired_instance(nubo_common::model::PowerState::Running);
            d.instances.insert(inst.id(), inst);
        }
        d
    }

    #[tokio::test]
    async fn a_pass_observes_plans_then_applies_and_a_converged_node_gets_an_empty_plan() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut subs: Vec<Box<dyn Reconcile>> = vec![Box::new(Numbers {
            have: vec![1],
            calls: calls.clone(),
            fail_observe: false,
        })];
        let d = desired_with(3);
        let out = reconcile_all(&mut subs, &d).await;
        assert_eq!(
            out,
            PassOutcome {
                actions: 2,
                failures: 0
            }
        );
        assert_eq!(
            *calls.lock().unwrap(),
            vec!["observe", "plan", "apply [0, 2]"]
        );
        // Second pass: nothing left to do.
        calls.lock().unwrap().clear();
        let out = reconcile_all(&mut subs, &d).await;
        assert_eq!(
            out,
            PassOutcome {
                actions: 0,
                failures: 0
            }
        );
        assert_eq!(*calls.lock().unwrap(), vec!["observe", "plan", "apply []"]);
    }

    #[tokio::test]
    async fn a_failed_observation_applies_nothing_and_the_others_still_run() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let others = Arc::new(Mutex::new(Vec::new()));
        let mut subs: Vec<Box<dyn Reconcile>> = vec![
            Box::new(Numbers {
                have: vec![],
                calls: calls.clone(),
                fail_observe: true,
            }),
            Box::new(Numbers {
                have: vec![],
                calls: others.clone(),
                fail_observe: false,
            }),
        ];
        let out = reconcile_all(&mut subs, &desired_with(1)).await;
        assert_eq!(
            out,
            PassOutcome {
                actions: 1,
                failures: 1
            }
        );
        assert_eq!(*calls.lock().unwrap(), vec!["observe"]);
        assert_eq!(
            *others.lock().unwrap(),
            vec!["observe", "plan", "apply [0]"]
        );
    }
}
