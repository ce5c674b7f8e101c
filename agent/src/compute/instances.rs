//! The instances on the hypervisor: observe what it runs, [`plan`] the
//! difference with the [`DesiredNode`] (create, start, stop, reboot,
//! resume, resize, destroy), apply it with bounded concurrency. Statuses
//! are written through the shared [`Reporter`](super::status::Reporter) as
//! the actions progress; the errors of the pass go to the status subsystem.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use nubo_common::model::{InstanceState, InstanceStatus, PowerState};
use nubo_common::InstanceId;
use tracing::{info, info_span, warn, Instrument};

use super::hypervisor::{
    Hypervisor, HypervisorError, InstanceSize, ObservedInstance, ObservedPower, Resizer,
};
use super::status::{report_for, SharedReporter};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::{DesiredInstance, DesiredNode};

/// How many hypervisor operations run at once.
pub const MAX_CONCURRENT_ACTIONS: usize = 8;

/// One hypervisor operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Create (and boot if desired running) an instance assigned here.
    Create(InstanceId),
    /// Boot a stopped instance that should run.
    Start(InstanceId),
    /// Shut off a running instance that should be stopped.
    Stop(InstanceId),
    /// Reboot: the spec's `reboot_generation` is newer than the one acted on.
    Reboot {
        /// The instance.
        id: InstanceId,
        /// The generation this reboot acts on.
        generation: u64,
    },
    /// Destroy an instance nubo created that is no longer assigned here.
    Destroy(InstanceId),
    /// Continue a paused (e.g. left frozen by self-fencing) instance that
    /// should run.
    Resume(InstanceId),
    /// Prepare an instance migrating here (taps, root disk, definition; not
    /// started: its guest arrives by migration, or, cold, is started after
    /// the switch).
    PrepareIncoming(InstanceId),
    /// Re-create the instance (`nubo server rebuild`): destroy it with its
    /// root disk, create it again from the spec (the image it names, the
    /// same ports and volumes), booted when it should run.
    Rebuild {
        /// The instance.
        id: InstanceId,
        /// The generation this rebuild acts on.
        generation: u64,
    },
    /// Redefine a shut-off instance with the spec's vCPUs and memory (after
    /// `nubo server resize`), then boot it if it should run.
    Resize {
        /// The instance.
        id: InstanceId,
        /// Boot it once redefined (its desired power is running).
        start: bool,
    },
}

impl Action {
    /// The instance the action is about.
    pub fn instance(&self) -> InstanceId {
        match *self {
            Action::Create(id)
            | Action::Start(id)
            | Action::Stop(id)
            | Action::Destroy(id)
            | Action::Resume(id)
            | Action::PrepareIncoming(id)
            | Action::Reboot { id, .. }
            | Action::Rebuild { id, .. }
            | Action::Resize { id, .. } => id,
        }
    }
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComputePlan {
    /// Operations to perform.
    pub actions: Vec<Action>,
    /// Instances on the hypervisor nubo did not create: left alone.
    pub foreign: BTreeSet<InstanceId>,
}

/// What the reconciler knows about the node before planning.
#[derive(Debug, Clone, Default)]
pub struct ComputeObserved {
    /// The hypervisor's instances.
    pub instances: Vec<ObservedInstance>,
    /// The statuses this node reported (the reboot generation acted on).
    pub reported: BTreeMap<InstanceId, InstanceStatus>,
    /// The size of the instances, from drivers that can resize them
    /// ([`Resizer`]); empty otherwise.
    pub sizes: BTreeMap<InstanceId, InstanceSize>,
}

impl Plan for ComputePlan {
    fn len(&self) -> usize {
        self.actions.len()
    }
}

/// Computes the operations that bring the hypervisor to `desired`. Pure.
pub fn plan(desired: &DesiredNode, observed: &ComputeObserved) -> ComputePlan {
    let mut out = ComputePlan::default();
    let by_id: BTreeMap<InstanceId, &ObservedInstance> =
        observed.instances.iter().map(|o| (o.id, o)).collect();
    for (id, d) in &desired.instances {
        // Leaving: the migrations subsystem moves it; a guest that left is
        // never restarted here.
        if desired.outgoing.contains_key(id) {
            continue;
        }
        // Arriving: prepared once; the domain that arrives (or waits
        // defined) is neither started, stopped nor destroyed.
        if desired.incoming.contains_key(id) {
            if !by_id.contains_key(id) {
                out.actions.push(Action::PrepareIncoming(*id));
            }
            continue;
        }
        let Some(o) = by_id.get(id) else {
            out.actions.push(Action::Create(*id));
            continue;
        };
        if !o.managed {
            out.foreign.insert(*id);
            continue;
        }
        let acted = observed.reported.get(id).map(|s| s.reboot_generation);
        if d.spec.rebuild_pending(acted) {
            out.actions.push(Action::Rebuild {
                id: *id,
                generation: d.spec.rebuild_generation,
            });
            continue;
        }
        let resized = observed
            .sizes
            .get(id)
            .is_some_and(|s| *s != InstanceSize::of(&d.resources));
        if resized && o.power == ObservedPower::Stopped {
            out.actions.push(Action::Resize {
                id: *id,
                start: d.power() == PowerState::Running,
            });
            continue;
        }
        // Running with another size (`nubo server resize`): shut down
        // gracefully first; the next pass redefines and boots it.
        if resized && o.power == ObservedPower::Running {
            out.actions.push(Action::Stop(*id));
            continue;
        }
        match (d.power(), o.power) {
            (PowerState::Running, ObservedPower::Stopped) => out.actions.push(Action::Start(*id)),
            (PowerState::Running, ObservedPower::Paused) => out.actions.push(Action::Resume(*id)),
            (PowerState::Stopped, ObservedPower::Running | ObservedPower::Paused) => {
                out.actions.push(Action::Stop(*id))
            }
            (PowerState::Running, ObservedPower::Running) => {
                let wanted = d.spec.reboot_generation;
                if acted.is_some_and(|g| wanted > g) {
                    out.actions.push(Action::Reboot {
                        id: *id,
                        generation: wanted,
                    });
                }
            }
            (PowerState::Stopped, ObservedPower::Stopped) => {}
        }
    }
    for o in &observed.instances {
        if desired.instances.contains_key(&o.id) || desired.migrating(&o.id) {
            continue;
        }
        if !o.managed {
            out.foreign.insert(o.id);
        } else if !desired.broken.contains_key(&o.id) && !desired.pending.contains_key(&o.id) {
            out.actions.push(Action::Destroy(o.id));
        }
    }
    out
}

/// The compute subsystem: drives a [`Hypervisor`].
pub struct Compute {
    hv: Arc<dyn Hypervisor>,
    resizer: Option<Arc<dyn Resizer>>,
    reporter: SharedReporter,
    /// Instances not created by nubo, as last warned about.
    foreign: BTreeSet<InstanceId>,
}

impl Compute {
    /// A compute reconciler driving `hv`, reporting through `reporter`.
    pub fn new(hv: Arc<dyn Hypervisor>, reporter: SharedReporter) -> Self {
        Self {
            hv,
            resizer: None,
            reporter,
            foreign: BTreeSet::new(),
        }
    }

    /// Lets compute resize shut-off instances through `resizer` (without
    /// one, a resized spec takes effect only for new instances).
    pub fn with_resizer(mut self, resizer: Option<Arc<dyn Resizer>>) -> Self {
        self.resizer = resizer;
        self
    }
}

#[async_trait]
impl Subsystem for Compute {
    type Observed = ComputeObserved;
    type Plan = ComputePlan;

    fn name(&self) -> &'static str {
        "compute"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<ComputeObserved, SubsystemError> {
        let reported = {
            let mut r = self.reporter.lock().await;
            r.begin_pass(desired);
            r.reported()
                .iter()
                .map(|(id, (s, _))| (*id, s.clone()))
                .collect()
        };
        let instances = self.hv.list().await?;
        let sizes = match &self.resizer {
            Some(r) => r.sizes().await?,
            None => BTreeMap::new(),
        };
        Ok(ComputeObserved {
            instances,
            reported,
            sizes,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &ComputeObserved) -> ComputePlan {
        plan(desired, observed)
    }

    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: ComputePlan,
    ) -> Result<usize, SubsystemError> {
        if plan.foreign != self.foreign {
            for id in plan.foreign.difference(&self.foreign) {
                warn!(instance = %id, "instance not created by nubo found; leaving it alone");
            }
            self.foreign = plan.foreign;
        }
        let n_actions = plan.actions.len();
        if n_actions > 0 {
            info!(actions = n_actions, "applying compute plan");
        }

        // Creations are visible as "building" while they run.
        {
            let mut r = self.reporter.lock().await;
            for a in &plan.actions {
                if let (Action::Create(id), Some(d)) = (a, desired.instances.get(&a.instance())) {
                    let prev = r.reported().get(id).map(|(s, _)| s.clone());
                    if prev
                        .as_ref()
                        .is_some_and(|s| s.state == InstanceState::Error)
                    {
                        continue;
                    }
                    r.report(*id, report_for(d, None, None, None, prev.as_ref()))
                        .await;
                }
            }
        }

        let hv = self.hv.clone();
        let resizer = self.resizer.clone();
        let mut results = futures::stream::iter(plan.actions.into_iter().map(|a| {
            let spec = desired.instances.get(&a.instance()).cloned();
            perform(hv.clone(), resizer.clone(), a, spec)
        }))
        .buffer_unordered(MAX_CONCURRENT_ACTIONS);
        let mut errors: BTreeMap<InstanceId, String> = BTreeMap::new();
        while let Some((action, result)) = results.next().await {
            let id = action.instance();
            // Nothing reports an instance that is migrating.
            let d = desired
                .instances
                .get(&id)
                .filter(|_| !desired.migrating(&id));
            let mut r = self.reporter.lock().await;
            let prev = r.reported().get(&id).map(|(s, _)| s.clone());
            // The size observed last; the status sweep of this pass
            // reports the one the action left.
            let size = prev.as_ref().and_then(|s| s.size);
            match (result, d) {
                (Err(e), Some(d)) => {
                    let msg = e.to_string();
                    let report = report_for(d, None, size, Some(&msg), prev.as_ref());
                    errors.insert(id, msg);
                    r.report(id, report).await;
                }
                (Err(e), None) => {
                    errors.insert(id, e.to_string());
                }
                (Ok(()), Some(d)) => {
                    let report =
                        report_for(d, power_after(action, Some(d)), size, None, prev.as_ref());
                    r.report(id, report).await;
                }
                (Ok(()), None) => {}
            }
        }
        drop(results);
        self.reporter.lock().await.compute_done(errors);
        Ok(n_actions)
    }
}

/// Performs one action (in its own span), returning it with its result.
async fn perform(
    hv: Arc<dyn Hypervisor>,
    resizer: Option<Arc<dyn Resizer>>,
    action: Action,
    spec: Option<DesiredInstance>,
) -> (Action, Result<(), HypervisorError>) {
    let id = action.instance();
    let span = info_span!("action", instance = %id, action = ?action);
    let r = async {
        let r = match (action, spec) {
            (Action::Create(_), Some(spec)) => hv.create(&spec).await,
            (Action::Create(_) | Action::PrepareIncoming(_), None) => {
                Err(HypervisorError::NotFound(id))
            }
            (Action::PrepareIncoming(_), Some(spec)) => hv.prepare_incoming(&spec).await,
            (Action::Start(_), _) => hv.start(id).await,
            (Action::Stop(_), _) => hv.stop(id).await,
            (Action::Reboot { .. }, _) => hv.reboot(id).await,
            (Action::Destroy(_), _) => hv.destroy(id).await,
            (Action::Rebuild { .. }, Some(spec)) => match hv.destroy(id).await {
                Ok(()) => hv.create(&spec).await,
                Err(e) => Err(e),
            },
            (Action::Rebuild { .. }, None) => Err(HypervisorError::NotFound(id)),
            (Action::Resume(_), _) => hv.resume(id).await,
            (Action::Resize { start, .. }, Some(spec)) => match &resizer {
                Some(r) => match r.resize_stopped(&spec).await {
                    Ok(()) if start => hv.start(id).await,
                    other => other,
                },
                None => Err(HypervisorError::Unsupported(format!("resize of {id}"))),
            },
            (Action::Resize { .. }, None) => Err(HypervisorError::NotFound(id)),
        };
        match &r {
            Ok(()) => info!("done"),
            Err(e) => warn!(error = %e, "failed"),
        }
        r
    }
    .instrument(span)
    .await;
    (action, r)
}

/// The power an instance has after `action` succeeded (`None` = gone).
fn power_after(action: Action, d: Option<&DesiredInstance>) -> Option<ObservedPower> {
    match action {
        Action::Create(_) | Action::Rebuild { .. } => Some(match d.map(DesiredInstance::power) {
            Some(PowerState::Stopped) => ObservedPower::Stopped,
            _ => ObservedPower::Running,
        }),
        Action::Start(_) | Action::Reboot { .. } | Action::Resume(_) => {
            Some(ObservedPower::Running)
        }
        Action::Stop(_) | Action::Resize { start: false, .. } => Some(ObservedPower::Stopped),
        Action::Resize { start: true, .. } => Some(ObservedPower::Running),
        Action::Destroy(_) => None,
        Action::PrepareIncoming(_) => Some(ObservedPower::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use nubo_common::NodeName;

    struct Fixture {
        desired: DesiredNode,
        ids: Vec<InstanceId>,
        n: NodeName,
    }

    fn fixture(count: usize) -> Fixture {
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let ids = (0..count).map(|_| w.instance_on(&n, net, &[]).0).collect();
        Fixture {
            desired: crate::state::desired::build(&w.cache, &n, 1500),
            ids,
            n,
        }
    }

    fn converged(f: &Fixture) -> ComputeObserved {
        ComputeObserved {
            sizes: BTreeMap::new(),
            instances: f
                .ids
                .iter()
                .map(|id| observed_instance(*id, ObservedPower::Running, true))
                .collect(),
            reported: f
                .ids
                .iter()
                .map(|id| (*id, status(&f.n, InstanceState::Running, 0)))
                .collect(),
        }
    }

    #[test]
    fn creates_missing_and_converged_node_has_empty_plan() {
        let f = fixture(3);
        let p = plan(&f.desired, &ComputeObserved::default());
        assert_eq!(p.actions.len(), 3);
        assert!(p.actions.iter().all(|a| matches!(a, Action::Create(_))));
        assert_eq!(plan(&f.desired, &converged(&f)), ComputePlan::default());
    }

    #[test]
    fn power_changes_follow_the_spec() {
        let mut f = fixture(2);
        let (a, b) = (f.ids[0], f.ids[1]);
        f.desired.instances.get_mut(&a).unwrap().spec.power = PowerState::Stopped;
        let mut obs = converged(&f);
        obs.instances[1].power = ObservedPower::Stopped;
        let mut actions = plan(&f.desired, &obs).actions;
        actions.sort();
        let mut expected = vec![Action::Stop(a), Action::Start(b)];
        expected.sort();
        assert_eq!(actions, expected);
    }

    #[test]
    fn a_paused_instance_is_resumed_or_stopped_never_started() {
        let mut f = fixture(2);
        let (a, b) = (f.ids[0], f.ids[1]);
        f.desired.instances.get_mut(&b).unwrap().spec.power = PowerState::Stopped;
        let mut obs = converged(&f);
        obs.instances[0].power = ObservedPower::Paused;
        obs.instances[1].power = ObservedPower::Paused;
        let mut actions = plan(&f.desired, &obs).actions;
        actions.sort();
        let mut expected = vec![Action::Resume(a), Action::Stop(b)];
        expected.sort();
        assert_eq!(actions, expected);
    }

    #[test]
    fn reboot_only_when_generation_is_newer_than_acted_on() {
        let mut f = fixture(1);
        let a = f.ids[0];
        f.desired
            .instances
            .get_mut(&a)
            .unwrap()
            .spec
            .reboot_generation = 2;
        let mut obs = converged(&f);
        obs.reported.get_mut(&a).unwrap().reboot_generation = 1;
        assert_eq!(
            plan(&f.desired, &obs).actions,
            vec![Action::Reboot {
                id: a,
                generation: 2
            }]
        );
        obs.reported.get_mut(&a).unwrap().reboot_generation = 2;
        assert!(plan(&f.desired, &obs).actions.is_empty());
        // Without a record of what was acted on, nothing is rebooted.
        obs.reported.clear();
        assert!(plan(&f.desired, &obs).actions.is_empty());
    }

    #[test]
    fn a_rebuild_recreates_running_and_stopped_instances_once() {
        let mut f = fixture(2);
        let (a, b) = (f.ids[0], f.ids[1]);
        for (id, power) in [(a, PowerState::Running), (b, PowerState::Stopped)] {
            let spec = &mut f.desired.instances.get_mut(&id).unwrap().spec;
            spec.power = power;
            spec.reboot_generation = 1;
            spec.rebuild_generation = 1;
        }
        let mut obs = converged(&f);
        obs.instances[1].power = ObservedPower::Stopped;
        let mut actions = plan(&f.desired, &obs).actions;
        actions.sort();
        let mut expected = vec![
            Action::Rebuild {
                id: a,
                generation: 1,
            },
            Action::Rebuild {
                id: b,
                generation: 1,
            },
        ];
        expected.sort();
        assert_eq!(actions, expected);
        // Acted on: nothing more (a stopped one stays stopped).
        for id in [a, b] {
            obs.reported.get_mut(&id).unwrap().reboot_generation = 1;
        }
        assert!(plan(&f.desired, &obs).actions.is_empty());
        // A reboot after the rebuild is a reboot again.
        f.desired
            .instances
            .get_mut(&a)
            .unwrap()
            .spec
            .reboot_generation = 2;
        assert_eq!(
            plan(&f.desired, &obs).actions,
            vec![Action::Reboot {
                id: a,
                generation: 2
            }]
        );
        // A reboot asked for while a rebuild is pending does not cancel it.
        let spec = &mut f.desired.instances.get_mut(&a).unwrap().spec;
        (spec.rebuild_generation, spec.reboot_generation) = (3, 4);
        assert_eq!(
            plan(&f.desired, &obs).actions,
            vec![Action::Rebuild {
                id: a,
                generation: 3
            }]
        );
        // Without a record of what was acted on, nothing is rebuilt.
        obs.reported.clear();
        assert!(plan(&f.desired, &obs).actions.is_empty());
    }

    #[test]
    fn a_stopped_instance_of_another_size_is_redefined_then_started_if_wanted() {
        let mut f = fixture(3);
        let (a, b, c) = (f.ids[0], f.ids[1], f.ids[2]);
        let mut obs = converged(&f);
        for o in &mut obs.instances {
            o.power = ObservedPower::Stopped;
        }
        for id in [a, b] {
            f.desired.instances.get_mut(&id).unwrap().spec.power = PowerState::Stopped;
        }
        let want = InstanceSize::of(&f.desired.instances[&a].resources);
        let bigger = InstanceSize {
            vcpus: want.vcpus + 1,
            ram_mb: want.ram_mb * 2,
        };
        // a: stopped, right size. b: stopped, old size. c: to start, old size.
        obs.sizes.insert(a, want);
        obs.sizes.insert(b, bigger);
        obs.sizes.insert(c, bigger);
        let mut actions = plan(&f.desired, &obs).actions;
        actions.sort();
        let mut expected = vec![
            Action::Resize {
                id: b,
                start: false,
            },
            Action::Resize { id: c, start: true },
        ];
        expected.sort();
        assert_eq!(actions, expected);
        // Redefined: c is simply started.
        obs.sizes.insert(b, want);
        obs.sizes.insert(c, want);
        assert_eq!(plan(&f.desired, &obs).actions, vec![Action::Start(c)]);
        // Running with the right size: nothing to do; with another size
        // (a resize of a running server): shut down first, then redefined
        // and booted as above.
        obs.instances[2].power = ObservedPower::Running;
        assert!(plan(&f.desired, &obs).actions.is_empty());
        obs.sizes.insert(c, bigger);
        assert_eq!(plan(&f.desired, &obs).actions, vec![Action::Stop(c)]);
        // A size the driver does not know: left alone.
        obs.sizes.remove(&c);
        assert!(plan(&f.desired, &obs).actions.is_empty());
    }

    #[test]
    fn destroys_unassigned_but_spares_foreign_broken_and_pending() {
        let mut f = fixture(1);
        let gone = InstanceId::new_random();
        let foreign = InstanceId::new_random();
        let held = InstanceId::new_random();
        f.desired.broken.insert(held, "port not found".into());
        let waiting = InstanceId::new_random();
        f.desired
            .pending
            .insert(waiting, "port not received yet".into());
        let mut obs = converged(&f);
        obs.instances
            .push(observed_instance(gone, ObservedPower::Running, true));
        obs.instances
            .push(observed_instance(foreign, ObservedPower::Running, false));
        obs.instances
            .push(observed_instance(held, ObservedPower::Running, true));
        obs.instances
            .push(observed_instance(waiting, ObservedPower::Running, true));
        let p = plan(&f.desired, &obs);
        assert_eq!(p.actions, vec![Action::Destroy(gone)]);
        assert_eq!(p.foreign, BTreeSet::from([foreign]));
    }

    #[test]
    fn migrating_instances_are_prepared_never_recreated_nor_destroyed() {
        use crate::state::desired::DesiredOutgoing;
        use nubo_common::model::{IncomingMigration, MigrationMode, OutgoingMigration};
        let mut f = fixture(2);
        let (leaving, arriving) = (f.ids[0], f.ids[1]);
        let m = nubo_common::MigrationId::new_random();
        f.desired.outgoing.insert(
            leaving,
            DesiredOutgoing {
                order: OutgoingMigration {
                    migration: m,
                    destination: node_name("n2"),
                    mode: MigrationMode::Live,
                    block: false,
                    precopy_budget_secs: 5,
                    budget_secs: 30,
                    abort: false,
                },
                destination_ip: None,
            },
        );
        f.desired.incoming.insert(
            arriving,
            IncomingMigration {
                migration: m,
                source: node_name("n3"),
                mode: MigrationMode::Live,
                spec: f.desired.instances[&arriving].spec.clone(),
            },
        );
        // The guest left (gone from the hypervisor), the other is not here
        // yet: prepare the arriving one, never create the one that left.
        assert_eq!(
            plan(&f.desired, &ComputeObserved::default()).actions,
            vec![Action::PrepareIncoming(arriving)]
        );
        // Defined (stopped) or arrived (running): left as it is.
        let mut obs = converged(&f);
        obs.instances[1].power = ObservedPower::Stopped;
        obs.instances[0].power = ObservedPower::Stopped;
        assert!(plan(&f.desired, &obs).actions.is_empty());
        // Not assigned here, but an order holds them: never destroyed.
        let mut unassigned = f.desired.clone();
        unassigned.instances.clear();
        assert!(plan(&unassigned, &converged(&f)).actions.is_empty());
        // Positive control: without the orders they are destroyed.
        unassigned.incoming.clear();
        unassigned.outgoing.clear();
        assert_eq!(plan(&unassigned, &converged(&f)).actions.len(), 2);
    }

    #[test]
    fn a_foreign_instance_with_an_assigned_id_is_not_touched() {
        let f = fixture(1);
        let obs = ComputeObserved {
            instances: vec![observed_instance(f.ids[0], ObservedPower::Stopped, false)],
            reported: BTreeMap::new(),
            sizes: BTreeMap::new(),
        };
        let p = plan(&f.desired, &obs);
        assert!(p.actions.is_empty());
        assert_eq!(p.foreign, BTreeSet::from([f.ids[0]]));
    }
}
