//! The compute reconciler: observe the hypervisor, [`plan`] the difference
//! with the [`DesiredNode`], apply it with bounded concurrency, and report
//! `/instances/<id>/status` only when it changes.

pub mod hypervisor;
pub mod plug_gate;
pub mod power_sync;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::Client;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{self, InstanceState, InstanceStatus, PowerState};
use nubo_common::{InstanceId, NodeName, VolumeId};
use tracing::{info, info_span, warn, Instrument};

use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::{DesiredInstance, DesiredNode};
use crate::store;
use hypervisor::{Hypervisor, HypervisorError, ObservedInstance, ObservedPower};
pub use hypervisor::{InstanceSize, Resizer};

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
            | Action::Reboot { id, .. }
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
    /// The size of shut-off instances, from drivers that can resize them
    /// ([`Resizer`]); empty otherwise.
    pub sizes: BTreeMap<InstanceId, InstanceSize>,
}

/// Computes the operations that bring the hypervisor to `desired`. Pure.
pub fn plan(desired: &DesiredNode, observed: &ComputeObserved) -> ComputePlan {
    let mut out = ComputePlan::default();
    let by_id: BTreeMap<InstanceId, &ObservedInstance> =
        observed.instances.iter().map(|o| (o.id, o)).collect();
    for (id, d) in &desired.instances {
        let Some(o) = by_id.get(id) else {
            out.actions.push(Action::Create(*id));
            continue;
        };
        if !o.managed {
            out.foreign.insert(*id);
            continue;
        }
        let resized = o.power == ObservedPower::Stopped
            && observed
                .sizes
                .get(id)
                .is_some_and(|s| *s != InstanceSize::of(d));
        if resized {
            out.actions.push(Action::Resize {
                id: *id,
                start: d.power() == PowerState::Running,
            });
            continue;
        }
        match (d.power(), o.power) {
            (PowerState::Running, ObservedPower::Stopped) => out.actions.push(Action::Start(*id)),
            (PowerState::Running, ObservedPower::Paused) => out.actions.push(Action::Resume(*id)),
            (PowerState::Stopped, ObservedPower::Running | ObservedPower::Paused) => {
                out.actions.push(Action::Stop(*id))
            }
            (PowerState::Running, ObservedPower::Running) => {
                let acted = observed.reported.get(id).map(|s| s.reboot_generation);
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
        if desired.instances.contains_key(&o.id) {
            continue;
        }
        if !o.managed {
            out.foreign.insert(o.id);
        } else if !desired.broken.contains_key(&o.id) {
            out.actions.push(Action::Destroy(o.id));
        }
    }
    out
}

/// The status fields the agent decides (node and time are added on write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lifecycle state.
    pub state: InstanceState,
    /// Last failure.
    pub last_error: Option<String>,
    /// Reboot generation acted on.
    pub reboot_generation: u64,
}

impl Report {
    fn of(s: &InstanceStatus) -> Self {
        Self {
            state: s.state,
            last_error: s.last_error.clone(),
            reboot_generation: s.reboot_generation,
        }
    }
}

/// The status of a desired instance given what the hypervisor shows and the
/// error of the last operation on it, if any. Pure.
pub fn report_for(
    d: &DesiredInstance,
    observed: Option<ObservedPower>,
    error: Option<&str>,
    prev: Option<&InstanceStatus>,
) -> Report {
    let prev_gen = prev.map(|s| s.reboot_generation);
    let state = match (error, observed) {
        (Some(_), _) => InstanceState::Error,
        (None, None) => InstanceState::Building,
        (None, Some(ObservedPower::Running)) => InstanceState::Running,
        // Paused is not running; compute only sees it if a resume failed.
        (None, Some(ObservedPower::Stopped | ObservedPower::Paused)) => InstanceState::Stopped,
    };
    // A pending reboot stays pending until it succeeded; anything else
    // (created, stopped, already running without a record) has nothing left
    // to act on.
    let reboot_pending = error.is_some()
        && d.power() == PowerState::Running
        && observed == Some(ObservedPower::Running)
        && prev_gen.is_some_and(|g| d.spec.reboot_generation > g);
    Report {
        state,
        last_error: error.map(str::to_string),
        reboot_generation: if reboot_pending {
            prev_gen.unwrap_or_default()
        } else {
            d.spec.reboot_generation
        },
    }
}

/// The status of an instance assigned here that cannot be resolved: what
/// the hypervisor shows, with the reason as the error. Pure.
pub fn report_broken(
    reason: &str,
    observed: Option<ObservedPower>,
    prev: Option<&InstanceStatus>,
) -> Report {
    Report {
        state: match observed {
            Some(ObservedPower::Running) => InstanceState::Running,
            Some(ObservedPower::Stopped | ObservedPower::Paused) => InstanceState::Stopped,
            None => InstanceState::Error,
        },
        last_error: Some(reason.to_string()),
        reboot_generation: prev.map(|s| s.reboot_generation).unwrap_or_default(),
    }
}

/// Statuses this reconciler wrote that the cache may not have seen yet.
#[derive(Debug, Default)]
struct StatusBook {
    /// Instance → (revision of our write, value; `None` = deleted).
    written: HashMap<InstanceId, (i64, Option<model::InstanceStatus>)>,
}

impl StatusBook {
    /// The effective reported statuses: the cache's, overridden by our own
    /// writes it has not caught up with yet.
    fn merge(&mut self, desired: &DesiredNode) -> BTreeMap<InstanceId, (InstanceStatus, i64)> {
        self.written.retain(|_, (rev, _)| *rev > desired.revision);
        let mut out: BTreeMap<InstanceId, (InstanceStatus, i64)> = desired
            .reported
            .iter()
            .map(|(id, s)| (*id, (s.status.clone(), s.mod_revision)))
            .collect();
        for (id, (rev, v)) in &self.written {
            match v {
                Some(s) => {
                    out.insert(*id, (s.clone(), *rev));
                }
                None => {
                    out.remove(id);
                }
            }
        }
        out
    }
}

/// The compute subsystem: drives a [`Hypervisor`] and reports statuses.
pub struct Compute {
    node: NodeName,
    hv: Arc<dyn Hypervisor>,
    resizer: Option<Arc<dyn Resizer>>,
    etcd: Client,
    book: StatusBook,
    foreign: BTreeSet<InstanceId>,
    /// Set when a status write failed in this pass: further writes are
    /// skipped (each would wait for the etcd timeout) and the pass is retried.
    writes_blocked: bool,
    /// Volumes attached per instance, as last observed ([`crate::compute::volumes`]);
    /// reported in `InstanceStatus.volumes`.
    attached: BTreeMap<InstanceId, Vec<VolumeId>>,
}

impl Compute {
    /// A compute reconciler for `node`.
    pub fn new(node: NodeName, hv: Arc<dyn Hypervisor>, etcd: Client) -> Self {
        Self {
            node,
            hv,
            resizer: None,
            etcd,
            book: StatusBook::default(),
            foreign: BTreeSet::new(),
            writes_blocked: false,
            attached: BTreeMap::new(),
        }
    }

    /// Lets compute resize shut-off instances through `resizer` (without
    /// one, a resized spec takes effect only for new instances).
    pub fn with_resizer(mut self, resizer: Option<Arc<dyn Resizer>>) -> Self {
        self.resizer = resizer;
        self
    }

    /// Writes the status if it differs from what is reported.
    async fn report(
        &mut self,
        id: InstanceId,
        r: Report,
        reported: &mut BTreeMap<InstanceId, (InstanceStatus, i64)>,
    ) -> Result<(), store::StoreError> {
        let volumes = self.attached.get(&id).cloned().unwrap_or_default();
        if let Some((prev, _)) = reported.get(&id) {
            if prev.node == self.node && Report::of(prev) == r && prev.volumes == volumes {
                return Ok(());
            }
        }
        let status = InstanceStatus {
            state: r.state,
            node: self.node.clone(),
            updated_at: model::now(),
            last_error: r.last_error,
            reboot_generation: r.reboot_generation,
            volumes,
        };
        let Some(rev) = put_status_if_assigned(&self.etcd, &self.node, id, &status).await? else {
            // The assignment is gone from etcd (the cache lags, or the
            // instance was moved while this node was cut off): the status
            // now belongs to whoever runs it.
            info!(instance = %id, "not assigned here any more; status left alone");
            return Ok(());
        };
        tracing::debug!(instance = %id, state = status.state.as_str(), "status written");
        self.book.written.insert(id, (rev, Some(status.clone())));
        reported.insert(id, (status, rev));
        Ok(())
    }

    async fn report_logged(
        &mut self,
        id: InstanceId,
        r: Report,
        reported: &mut BTreeMap<InstanceId, (InstanceStatus, i64)>,
    ) {
        if self.writes_blocked {
            return;
        }
        if let Err(e) = self.report(id, r, reported).await {
            warn!(instance = %id, error = %e, "could not write status; will retry");
            self.writes_blocked = true;
        }
    }
}

/// Writes `/instances/<id>/status` in one transaction guarded by
/// `version(/assignments/<node>/<id>) > 0`, so a node that lost the instance
/// (evacuated while it was cut off) can never overwrite the status written
/// for the node that runs it now. `Ok(None)` = not assigned here.
async fn put_status_if_assigned(
    etcd: &Client,
    node: &NodeName,
    id: InstanceId,
    status: &InstanceStatus,
) -> Result<Option<i64>, store::StoreError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let guard = keys::assignment(node, &id);
    let txn = Txn::new()
        .when([Compare::version(guard, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(
            keys::instance_status(&id),
            model::encode(status),
            None,
        )]);
    let resp = store::txn(etcd, txn).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok(resp.succeeded().then_some(rev))
}

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
            (Action::Create(_), None) => Err(HypervisorError::NotFound(id)),
            (Action::Start(_), _) => hv.start(id).await,
            (Action::Stop(_), _) => hv.stop(id).await,
            (Action::Reboot { .. }, _) => hv.reboot(id).await,
            (Action::Destroy(_), _) => hv.destroy(id).await,
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
        Action::Create(_) => Some(match d.map(DesiredInstance::power) {
            Some(PowerState::Stopped) => ObservedPower::Stopped,
            _ => ObservedPower::Running,
        }),
        Action::Start(_) | Action::Reboot { .. } | Action::Resume(_) => {
            Some(ObservedPower::Running)
        }
        Action::Stop(_) | Action::Resize { start: false, .. } => Some(ObservedPower::Stopped),
        Action::Resize { start: true, .. } => Some(ObservedPower::Running),
        Action::Destroy(_) => None,
    }
}

#[async_trait]
impl Subsystem for Compute {
    fn name(&self) -> &'static str {
        "compute"
    }

    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError> {
        self.writes_blocked = false;
        let instances = self.hv.list().await?;
        let sizes = match &self.resizer {
            Some(r) => r.stopped_sizes().await?,
            None => BTreeMap::new(),
        };
        let mut reported = self.book.merge(desired);
        let observed = ComputeObserved {
            sizes,
            instances,
            reported: reported
                .iter()
                .map(|(id, (s, _))| (*id, s.clone()))
                .collect(),
        };
        let plan = plan(desired, &observed);
        if plan.foreign != self.foreign {
            for id in plan.foreign.difference(&self.foreign) {
                warn!(instance = %id, "instance not created by nubo found; leaving it alone");
            }
            self.foreign = plan.foreign.clone();
        }
        let n_actions = plan.actions.len();
        if n_actions > 0 {
            info!(actions = n_actions, "applying compute plan");
        }

        // Creations are visible as "building" while they run.
        for a in &plan.actions {
            if let (Action::Create(id), Some(d)) = (a, desired.instances.get(&a.instance())) {
                let prev = reported.get(id).map(|(s, _)| s.clone());
                if prev
                    .as_ref()
                    .is_some_and(|s| s.state == InstanceState::Error)
                {
                    continue;
                }
                let r = report_for(d, None, None, prev.as_ref());
                self.report_logged(*id, r, &mut reported).await;
            }
        }

        let hv = self.hv.clone();
        let resizer = self.resizer.clone();
        let mut results = futures::stream::iter(plan.actions.clone().into_iter().map(|a| {
            let spec = desired.instances.get(&a.instance()).cloned();
            perform(hv.clone(), resizer.clone(), a, spec)
        }))
        .buffer_unordered(MAX_CONCURRENT_ACTIONS);
        let mut errors: BTreeMap<InstanceId, String> = BTreeMap::new();
        while let Some((action, result)) = results.next().await {
            let id = action.instance();
            let d = desired.instances.get(&id);
            match (result, d) {
                (Err(e), Some(d)) => {
                    let prev = reported.get(&id).map(|(s, _)| s.clone());
                    let msg = e.to_string();
                    let r = report_for(d, None, Some(&msg), prev.as_ref());
                    errors.insert(id, msg);
                    self.report_logged(id, r, &mut reported).await;
                }
                (Err(e), None) => {
                    errors.insert(id, e.to_string());
                }
                (Ok(()), Some(d)) => {
                    let prev = reported.get(&id).map(|(s, _)| s.clone());
                    let r = report_for(d, power_after(action, Some(d)), None, prev.as_ref());
                    self.report_logged(id, r, &mut reported).await;
                }
                (Ok(()), None) => {}
            }
        }
        drop(results);

        // Final sweep from a fresh observation: every assigned instance's
        // status matches the hypervisor; statuses of instances that left
        // this node are removed.
        let now: BTreeMap<InstanceId, ObservedInstance> = self
            .hv
            .list()
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        self.attached =
            crate::compute::volumes::reconcile_node(&self.hv, desired, &now, &self.attached).await;
        for (id, d) in &desired.instances {
            let o = now.get(id).filter(|o| o.managed);
            if now.get(id).is_some_and(|o| !o.managed) {
                let r = Report {
                    state: InstanceState::Error,
                    last_error: Some(
                        "an instance with this id exists on the hypervisor but was not created by nubo"
                            .into(),
                    ),
                    reboot_generation: 0,
                };
                self.report_logged(*id, r, &mut reported).await;
                continue;
            }
            let prev = reported.get(id).map(|(s, _)| s.clone());
            let r = report_for(
                d,
                o.map(|o| o.power),
                errors.get(id).map(String::as_str),
                prev.as_ref(),
            );
            self.report_logged(*id, r, &mut reported).await;
        }
        for (id, reason) in &desired.broken {
            let prev = reported.get(id).map(|(s, _)| s.clone());
            let o = now.get(id).filter(|o| o.managed).map(|o| o.power);
            let r = report_broken(reason, o, prev.as_ref());
            self.report_logged(*id, r, &mut reported).await;
        }
        let stale: Vec<(InstanceId, i64)> = reported
            .iter()
            .filter(|(id, (s, _))| {
                s.node == self.node
                    && !desired.instances.contains_key(id)
                    && !desired.broken.contains_key(id)
                    && !now.get(id).is_some_and(|o| o.managed)
            })
            .map(|(id, (_, rev))| (*id, *rev))
            .collect();
        for (id, rev) in stale {
            if self.writes_blocked {
                break;
            }
            match store::delete_if_unchanged(&self.etcd, &keys::instance_status(&id), rev).await {
                Ok((txn_rev, deleted)) => {
                    if deleted {
                        info!(instance = %id, "status removed (instance no longer assigned here)");
                    }
                    self.book.written.insert(id, (txn_rev, None));
                }
                Err(e) => {
                    warn!(instance = %id, error = %e, "could not remove status; will retry");
                    self.writes_blocked = true;
                }
            }
        }
        if self.writes_blocked {
            return Err(SubsystemError::Other(format!(
                "{n_actions} actions applied but statuses could not all be written"
            )));
        }
        Ok(n_actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn observed(id: InstanceId, power: ObservedPower, managed: bool) -> ObservedInstance {
        ObservedInstance {
            id,
            power,
            boot_count: 1,
            created_at: model::now(),
            managed,
        }
    }

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
                .map(|id| observed(*id, ObservedPower::Running, true))
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
        let want = InstanceSize::of(&f.desired.instances[&a]);
        let bigger = InstanceSize {
            vcpus: want.vcpus + 1,
            memory_mb: want.memory_mb * 2,
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
        // Redefined: c is simply started; a running domain is never resized
        // (the coordinator only resizes stopped servers).
        obs.sizes.insert(b, want);
        obs.sizes.insert(c, want);
        assert_eq!(plan(&f.desired, &obs).actions, vec![Action::Start(c)]);
        obs.instances[2].power = ObservedPower::Running;
        obs.sizes.insert(c, bigger);
        assert!(plan(&f.desired, &obs).actions.is_empty());
    }

    #[test]
    fn destroys_unassigned_but_spares_foreign_and_broken() {
        let mut f = fixture(1);
        let gone = InstanceId::new_random();
        let foreign = InstanceId::new_random();
        let held = InstanceId::new_random();
        f.desired.broken.insert(held, "port not found".into());
        let mut obs = converged(&f);
        obs.instances
            .push(observed(gone, ObservedPower::Running, true));
        obs.instances
            .push(observed(foreign, ObservedPower::Running, false));
        obs.instances
            .push(observed(held, ObservedPower::Running, true));
        let p = plan(&f.desired, &obs);
        assert_eq!(p.actions, vec![Action::Destroy(gone)]);
        assert_eq!(p.foreign, BTreeSet::from([foreign]));
    }

    #[test]
    fn a_foreign_instance_with_an_assigned_id_is_not_touched() {
        let f = fixture(1);
        let obs = ComputeObserved {
            instances: vec![observed(f.ids[0], ObservedPower::Stopped, false)],
            reported: BTreeMap::new(),
            sizes: BTreeMap::new(),
        };
        let p = plan(&f.desired, &obs);
        assert!(p.actions.is_empty());
        assert_eq!(p.foreign, BTreeSet::from([f.ids[0]]));
    }

    #[test]
    fn reports_follow_observation_and_errors() {
        let f = fixture(1);
        let mut d = f.desired.instances[&f.ids[0]].clone();
        d.spec.reboot_generation = 3;
        let prev = status(&f.n, InstanceState::Running, 2);
        let r = report_for(&d, None, None, None);
        assert_eq!(r.state, InstanceState::Building);
        assert_eq!(r.reboot_generation, 3);
        let r = report_for(&d, Some(ObservedPower::Running), None, Some(&prev));
        assert_eq!((r.state, r.reboot_generation), (InstanceState::Running, 3));
        // A failed reboot leaves the generation pending.
        let r = report_for(&d, Some(ObservedPower::Running), Some("boom"), Some(&prev));
        assert_eq!((r.state, r.reboot_generation), (InstanceState::Error, 2));
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        let r = report_broken("port gone", Some(ObservedPower::Running), Some(&prev));
        assert_eq!(r.state, InstanceState::Running);
        assert_eq!(r.last_error.as_deref(), Some("port gone"));
    }

    #[test]
    fn status_book_overrides_a_lagging_cache_only() {
        let f = fixture(1);
        let id = f.ids[0];
        let mut book = StatusBook::default();
        let mut d = f.desired.clone();
        d.revision = 10;
        book.written
            .insert(id, (11, Some(status(&f.n, InstanceState::Running, 5))));
        assert_eq!(book.merge(&d)[&id].0.reboot_generation, 5);
        d.revision = 11;
        assert!(book.merge(&d).is_empty());
        assert!(book.written.is_empty());
    }
}
