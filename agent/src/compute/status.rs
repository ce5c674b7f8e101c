//! `/instances/<id>/status`: what the agent reports about each instance it
//! runs. The [`Reporter`] is shared by the compute subsystems of a pass:
//! compute writes statuses as its actions progress (`building` before a
//! create, the outcome of each action as it completes) and hands over the
//! errors of its actions, volumes hands over what is attached; then the
//! [`Status`] subsystem observes the hypervisor once more and plans, with
//! the pure [`status_plan`], the statuses that differ from what etcd holds:
//! one per instance assigned here, and the removal of those of instances
//! that left this node. Every write is guarded by this node's assignment.
//!
//! The size each guest has on the hypervisor (vCPUs and memory, from the
//! driver's [`Resizer::sizes`]: the libvirt domain, the netns guest's
//! record) is reported with it, so the coordinator shows a resize as
//! finished only once it is applied. Compute's reports during its actions
//! carry the last reported size; the sweep of the pass reports the
//! observed one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use nubo_common::keys;
use nubo_common::model::{self, InstanceState, InstanceStatus, PowerState};
use nubo_common::{InstanceId, NodeName, VolumeId};
use nubo_store::Etcd;
use tracing::{debug, info, warn};

use super::hypervisor::{Hypervisor, InstanceSize, ObservedInstance, ObservedPower, Resizer};
use super::volumes::Attached;
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::{DesiredInstance, DesiredNode};
use crate::store;

/// The status fields the agent decides (node and time are added on write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Lifecycle state.
    pub state: InstanceState,
    /// Last failure.
    pub last_error: Option<String>,
    /// Reboot generation acted on.
    pub reboot_generation: u64,
    /// The guest's size on the hypervisor (`None`: not known).
    pub size: Option<InstanceSize>,
}

impl Report {
    /// The fields of a stored status.
    pub fn of(s: &InstanceStatus) -> Self {
        Self {
            state: s.state,
            last_error: s.last_error.clone(),
            reboot_generation: s.reboot_generation,
            size: s.size,
        }
    }
}

/// The status of a desired instance given what the hypervisor shows (its
/// power and size) and the error of the last operation on it, if any.
/// Pure.
pub fn report_for(
    d: &DesiredInstance,
    observed: Option<ObservedPower>,
    size: Option<InstanceSize>,
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
        // Nothing on the hypervisor has no size.
        size: observed.and(size),
    }
}

/// The status of an instance assigned here that cannot be resolved: what
/// the hypervisor shows, with the reason as the error. Pure.
pub fn report_broken(
    reason: &str,
    observed: Option<ObservedPower>,
    size: Option<InstanceSize>,
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
        size: observed.and(size),
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
        self.written
            .retain(|_, (rev, _)| *rev > desired.statuses_revision);
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

/// Writes `/node-owned/<node>/status/<id>` in one transaction guarded by
/// `version(/assignments/<node>/<id>) > 0`, so a node that lost the instance
/// (evacuated while it was cut off) can never overwrite the status written
/// for the node that runs it now. `Ok(None)` = not assigned here.
async fn put_status_if_assigned(
    etcd: &Etcd,
    node: &NodeName,
    id: InstanceId,
    status: &InstanceStatus,
) -> Result<Option<i64>, store::StoreError> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let guard = keys::assignment(node, &id);
    let txn = Txn::new()
        .when([Compare::version(guard, CompareOp::Greater, 0)])
        .and_then([TxnOp::put(
            keys::instance_status(node, &id),
            model::encode(status),
            None,
        )]);
    let resp = etcd.txn(txn).await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
    Ok(resp.succeeded().then_some(rev))
}

/// The error reported for an assigned instance whose id belongs to an
/// instance nubo did not create.
pub const FOREIGN_ERROR: &str =
    "an instance with this id exists on the hypervisor but was not created by nubo";

/// The statuses reported, by instance: the value and its mod revision.
pub type Reported = BTreeMap<InstanceId, (InstanceStatus, i64)>;

/// What the compute subsystems of a pass share about statuses (see the
/// module docs), behind [`SharedReporter`].
pub struct Reporter {
    node: NodeName,
    etcd: Etcd,
    book: StatusBook,
    /// The effective reported statuses of this pass.
    reported: Reported,
    /// Set when a status write failed in this pass: further writes are
    /// skipped (each would wait for the etcd timeout) and the pass is
    /// retried.
    writes_blocked: bool,
    /// The errors of compute's actions once its apply completed this pass
    /// (`None` until then: nothing is reported from a pass compute did not
    /// complete).
    compute_errors: Option<BTreeMap<InstanceId, String>>,
    /// Volumes attached per instance, as last observed by the volumes
    /// subsystem; reported in `InstanceStatus.volumes`.
    attached: Attached,
}

/// The [`Reporter`] of the compute subsystems.
pub type SharedReporter = Arc<tokio::sync::Mutex<Reporter>>;

impl Reporter {
    /// A reporter writing the statuses of `node` through `etcd`, with the
    /// volumes the volumes subsystem publishes in `attached`.
    pub fn shared(node: NodeName, etcd: Etcd, attached: Attached) -> SharedReporter {
        Arc::new(tokio::sync::Mutex::new(Self {
            node,
            etcd,
            book: StatusBook::default(),
            reported: BTreeMap::new(),
            writes_blocked: false,
            compute_errors: None,
            attached,
        }))
    }

    /// Starts a pass on `desired` (compute calls it first).
    pub fn begin_pass(&mut self, desired: &DesiredNode) {
        self.writes_blocked = false;
        self.compute_errors = None;
        self.reported = self.book.merge(desired);
    }

    /// The effective reported statuses: the cache's, overridden by this
    /// node's own writes the cache has not caught up with yet.
    pub fn reported(&self) -> &Reported {
        &self.reported
    }

    /// Compute completed its apply with these action errors.
    pub fn compute_done(&mut self, errors: BTreeMap<InstanceId, String>) {
        self.compute_errors = Some(errors);
    }

    /// The volumes last observed attached to each instance.
    pub fn attached(&self) -> BTreeMap<InstanceId, Vec<VolumeId>> {
        self.attached.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Writes `r` as the status of `id` if it differs from what is
    /// reported (with the attached volumes). A failed write is logged and
    /// blocks the further writes of the pass. Returns whether it wrote.
    pub async fn report(&mut self, id: InstanceId, r: Report) -> bool {
        let volumes = self
            .attached
            .lock()
            .map(|a| a.get(&id).cloned().unwrap_or_default())
            .unwrap_or_default();
        if unchanged(&self.node, self.reported.get(&id), &r, &volumes) {
            return false;
        }
        self.put(id, r, volumes).await
    }

    /// Writes the status of `id` (unless writes are blocked). Returns
    /// whether it wrote.
    async fn put(&mut self, id: InstanceId, r: Report, volumes: Vec<VolumeId>) -> bool {
        if self.writes_blocked {
            return false;
        }
        let status = InstanceStatus {
            state: r.state,
            node: self.node.clone(),
            updated_at: model::now(),
            last_error: r.last_error,
            reboot_generation: r.reboot_generation,
            volumes,
            size: r.size,
        };
        match put_status_if_assigned(&self.etcd, &self.node, id, &status).await {
            Ok(Some(rev)) => {
                debug!(instance = %id, state = status.state.as_str(), "status written");
                self.book.written.insert(id, (rev, Some(status.clone())));
                self.reported.insert(id, (status, rev));
                true
            }
            Ok(None) => {
                // The assignment is gone from etcd (the cache lags, or the
                // instance was moved while this node was cut off): the
                // status now belongs to whoever runs it.
                info!(instance = %id, "not assigned here any more; status left alone");
                false
            }
            Err(e) => {
                warn!(instance = %id, error = %e, "could not write status; will retry");
                self.writes_blocked = true;
                false
            }
        }
    }

    /// Removes the status of `id` if it is still the one at `mod_revision`
    /// (unless writes are blocked). Returns whether it deleted.
    async fn remove(&mut self, id: InstanceId, mod_revision: i64) -> bool {
        if self.writes_blocked {
            return false;
        }
        match self
            .etcd
            .delete_if_unchanged(&keys::instance_status(&self.node, &id), mod_revision)
            .await
        {
            Ok((txn_rev, deleted)) => {
                if deleted {
                    info!(instance = %id, "status removed (instance no longer assigned here)");
                }
                self.book.written.insert(id, (txn_rev, None));
                self.reported.remove(&id);
                deleted
            }
            Err(e) => {
                warn!(instance = %id, error = %e, "could not remove status; will retry");
                self.writes_blocked = true;
                false
            }
        }
    }
}

/// Whether `r` with `volumes` is what `prev` already says for `node`.
fn unchanged(
    node: &NodeName,
    prev: Option<&(InstanceStatus, i64)>,
    r: &Report,
    volumes: &[VolumeId],
) -> bool {
    prev.is_some_and(|(prev, _)| {
        prev.node == *node && Report::of(prev) == *r && prev.volumes == volumes
    })
}

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAction {
    /// Write the status of an instance assigned here.
    Put {
        /// The instance.
        id: InstanceId,
        /// What to report.
        report: Report,
        /// The volumes attached to it.
        volumes: Vec<VolumeId>,
    },
    /// Remove the status this node wrote for an instance no longer here.
    Remove {
        /// The instance.
        id: InstanceId,
        /// The status's mod revision (removed only if unchanged).
        mod_revision: i64,
    },
}

/// What [`Status`] plans from.
#[derive(Debug, Clone, Default)]
pub struct StatusObserved {
    /// The hypervisor's instances, after compute and volumes acted.
    pub instances: BTreeMap<InstanceId, ObservedInstance>,
    /// The statuses reported.
    pub reported: Reported,
    /// The errors of compute's actions this pass; `None` when compute did
    /// not complete this pass (nothing is reported then).
    pub compute_errors: Option<BTreeMap<InstanceId, String>>,
    /// Volumes attached per instance.
    pub attached: BTreeMap<InstanceId, Vec<VolumeId>>,
    /// The guests' sizes, from drivers that know them ([`Resizer`]).
    pub sizes: BTreeMap<InstanceId, InstanceSize>,
}

/// The status changes that make etcd show what the hypervisor shows: every
/// assigned instance's status (state, last error of this pass, reboot
/// generation acted on, attached volumes, size) where it differs from the
/// reported one, and the removal of this node's statuses of instances
/// neither assigned here nor on the hypervisor. Pure.
pub fn status_plan(
    node: &NodeName,
    desired: &DesiredNode,
    observed: &StatusObserved,
) -> Vec<StatusAction> {
    let Some(errors) = &observed.compute_errors else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut put = |id: InstanceId, report: Report| {
        let volumes = observed.attached.get(&id).cloned().unwrap_or_default();
        if !unchanged(node, observed.reported.get(&id), &report, &volumes) {
            out.push(StatusAction::Put {
                id,
                report,
                volumes,
            });
        }
    };
    let now = &observed.instances;
    for (id, d) in &desired.instances {
        // A migrating instance keeps the status its source reported until
        // the switch: a guest that left is not "stopped", one arriving is
        // not reported by two nodes.
        if desired.migrating(id) {
            continue;
        }
        if now.get(id).is_some_and(|o| !o.managed) {
            put(
                *id,
                Report {
                    state: InstanceState::Error,
                    last_error: Some(FOREIGN_ERROR.into()),
                    reboot_generation: 0,
                    size: None,
                },
            );
            continue;
        }
        let o = now.get(id).filter(|o| o.managed);
        let prev = observed.reported.get(id).map(|(s, _)| s);
        put(
            *id,
            report_for(
                d,
                o.map(|o| o.power),
                observed.sizes.get(id).copied(),
                errors.get(id).map(String::as_str),
                prev,
            ),
        );
    }
    for (id, reason) in &desired.broken {
        let prev = observed.reported.get(id).map(|(s, _)| s);
        let o = now.get(id).filter(|o| o.managed).map(|o| o.power);
        put(
            *id,
            report_broken(reason, o, observed.sizes.get(id).copied(), prev),
        );
    }
    for (id, (s, rev)) in &observed.reported {
        if s.node == *node
            && !desired.instances.contains_key(id)
            && !desired.broken.contains_key(id)
            && !desired.pending.contains_key(id)
            && !desired.migrating(id)
            && !now.get(id).is_some_and(|o| o.managed)
        {
            out.push(StatusAction::Remove {
                id: *id,
                mod_revision: *rev,
            });
        }
    }
    out
}

/// The status subsystem (runs after compute and volumes).
pub struct Status {
    node: NodeName,
    hv: Arc<dyn Hypervisor>,
    reporter: SharedReporter,
    /// Where the guests' sizes come from (none: sizes are not reported).
    resizer: Option<Arc<dyn Resizer>>,
}

impl Status {
    /// Reports the instances of `node` on `hv` through `reporter`.
    pub fn new(node: NodeName, hv: Arc<dyn Hypervisor>, reporter: SharedReporter) -> Self {
        Self {
            node,
            hv,
            reporter,
            resizer: None,
        }
    }

    /// Reports the guests' sizes as `resizer` knows them.
    pub fn with_resizer(mut self, resizer: Option<Arc<dyn Resizer>>) -> Self {
        self.resizer = resizer;
        self
    }
}

#[async_trait]
impl Subsystem for Status {
    type Observed = StatusObserved;
    type Plan = Vec<StatusAction>;

    fn name(&self) -> &'static str {
        "status"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<StatusObserved, SubsystemError> {
        let mut r = self.reporter.lock().await;
        let Some(errors) = r.compute_errors.take() else {
            return Ok(StatusObserved::default());
        };
        let instances = self
            .hv
            .list()
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        // After the listing: libvirt's sizes are those of its last list.
        let sizes = match &self.resizer {
            Some(z) => z.sizes().await?,
            None => BTreeMap::new(),
        };
        // (Already merged by compute this pass; merged again in case the
        // pass started elsewhere.)
        let reported = r.book.merge(desired);
        r.reported = reported.clone();
        Ok(StatusObserved {
            instances,
            reported,
            compute_errors: Some(errors),
            attached: r.attached(),
            sizes,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &StatusObserved) -> Vec<StatusAction> {
        status_plan(&self.node, desired, observed)
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: Vec<StatusAction>,
    ) -> Result<usize, SubsystemError> {
        let mut r = self.reporter.lock().await;
        let mut written = 0;
        for action in plan {
            let done = match action {
                StatusAction::Put {
                    id,
                    report,
                    volumes,
                } => r.put(id, report, volumes).await,
                StatusAction::Remove { id, mod_revision } => r.remove(id, mod_revision).await,
            };
            written += usize::from(done);
        }
        if r.writes_blocked {
            return Err(SubsystemError::Other(
                "statuses could not all be written".into(),
            ));
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn fixture(count: usize) -> (DesiredNode, Vec<InstanceId>, NodeName) {
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let ids = (0..count).map(|_| w.instance_on(&n, net, &[]).0).collect();
        (crate::state::desired::build(&w.cache, &n, 1500), ids, n)
    }

    fn on_hv(
        id: InstanceId,
        power: ObservedPower,
        managed: bool,
    ) -> (InstanceId, ObservedInstance) {
        (id, observed_instance(id, power, managed))
    }

    #[test]
    fn reports_follow_observation_and_errors() {
        let (desired, ids, n) = fixture(1);
        let mut d = desired.instances[&ids[0]].clone();
        d.spec.reboot_generation = 3;
        let prev = status(&n, InstanceState::Running, 2);
        let size = Some(InstanceSize {
            vcpus: 2,
            ram_mb: 1024,
        });
        let r = report_for(&d, None, size, None, None);
        assert_eq!(r.state, InstanceState::Building);
        assert_eq!(r.reboot_generation, 3);
        assert_eq!(r.size, None, "nothing on the hypervisor has no size");
        let r = report_for(&d, Some(ObservedPower::Running), size, None, Some(&prev));
        assert_eq!((r.state, r.reboot_generation), (InstanceState::Running, 3));
        assert_eq!(r.size, size);
        // A failed reboot leaves the generation pending.
        let r = report_for(
            &d,
            Some(ObservedPower::Running),
            None,
            Some("boom"),
            Some(&prev),
        );
        assert_eq!((r.state, r.reboot_generation), (InstanceState::Error, 2));
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        let r = report_broken("port gone", Some(ObservedPower::Running), size, Some(&prev));
        assert_eq!(r.state, InstanceState::Running);
        assert_eq!(r.last_error.as_deref(), Some("port gone"));
        assert_eq!(r.size, size);
    }

    #[test]
    fn a_converged_node_reports_nothing_and_changes_are_reported() {
        let (d, ids, n) = fixture(2);
        let (a, b) = (ids[0], ids[1]);
        let mut obs = StatusObserved {
            instances: ids
                .iter()
                .map(|id| on_hv(*id, ObservedPower::Running, true))
                .collect(),
            reported: ids
                .iter()
                .map(|id| (*id, (status(&n, InstanceState::Running, 0), 5)))
                .collect(),
            compute_errors: Some(BTreeMap::new()),
            attached: BTreeMap::new(),
            sizes: BTreeMap::new(),
        };
        assert!(status_plan(&n, &d, &obs).is_empty());
        // Compute did not complete this pass: nothing is reported.
        obs.instances.clear();
        obs.compute_errors = None;
        assert!(status_plan(&n, &d, &obs).is_empty());
        // a stopped, b failed, a volume attached to a.
        obs.compute_errors = Some(BTreeMap::from([(b, "boom".to_string())]));
        obs.instances = [
            on_hv(a, ObservedPower::Stopped, true),
            on_hv(b, ObservedPower::Running, true),
        ]
        .into();
        let v = VolumeId::new_random();
        obs.attached.insert(a, vec![v]);
        let plan = status_plan(&n, &d, &obs);
        assert_eq!(plan.len(), 2);
        assert!(plan.contains(&StatusAction::Put {
            id: a,
            report: Report {
                state: InstanceState::Stopped,
                last_error: None,
                reboot_generation: 0,
                size: None,
            },
            volumes: vec![v],
        }));
        assert!(plan.iter().any(|p| matches!(p,
            StatusAction::Put { id, report, .. } if *id == b && report.state == InstanceState::Error)));
    }

    #[test]
    fn the_observed_size_is_reported_once_and_again_when_it_changes() {
        let (d, ids, n) = fixture(1);
        let a = ids[0];
        let small = InstanceSize {
            vcpus: 1,
            ram_mb: 512,
        };
        let big = InstanceSize {
            vcpus: 2,
            ram_mb: 1024,
        };
        // An old status without a size: the observed size is added.
        let mut obs = StatusObserved {
            instances: [on_hv(a, ObservedPower::Running, true)].into(),
            reported: BTreeMap::from([(a, (status(&n, InstanceState::Running, 0), 5))]),
            compute_errors: Some(BTreeMap::new()),
            attached: BTreeMap::new(),
            sizes: BTreeMap::from([(a, small)]),
        };
        let plan = status_plan(&n, &d, &obs);
        let [StatusAction::Put { id, report, .. }] = plan.as_slice() else {
            panic!("one put expected: {plan:?}");
        };
        assert_eq!((*id, report.size), (a, Some(small)));
        // Reported: a converged node writes nothing (restart included).
        let mut reported = status(&n, InstanceState::Running, 0);
        reported.size = Some(small);
        obs.reported.insert(a, (reported, 6));
        assert!(status_plan(&n, &d, &obs).is_empty());
        // Redefined with the new size and booted: reported.
        obs.sizes.insert(a, big);
        let plan = status_plan(&n, &d, &obs);
        assert!(
            matches!(plan.as_slice(), [StatusAction::Put { report, .. }]
                if report.size == Some(big) && report.state == InstanceState::Running),
            "{plan:?}"
        );
        // A driver without sizes reports none.
        obs.sizes.clear();
        let plan = status_plan(&n, &d, &obs);
        assert!(
            matches!(plan.as_slice(), [StatusAction::Put { report, .. }] if report.size.is_none()),
            "{plan:?}"
        );
    }

    #[test]
    fn foreign_broken_pending_and_departed_instances() {
        let (mut d, ids, n) = fixture(1);
        let a = ids[0];
        let held = InstanceId::new_random();
        let gone = InstanceId::new_random();
        let elsewhere = InstanceId::new_random();
        d.broken.insert(held, "port not found".into());
        let waiting = InstanceId::new_random();
        d.pending.insert(waiting, "port not received yet".into());
        let obs = StatusObserved {
            instances: [
                on_hv(a, ObservedPower::Running, false),
                on_hv(held, ObservedPower::Running, true),
            ]
            .into(),
            reported: BTreeMap::from([
                (gone, (status(&n, InstanceState::Running, 0), 40)),
                // Pending: neither reported nor removed.
                (waiting, (status(&n, InstanceState::Running, 0), 42)),
                (
                    elsewhere,
                    (status(&node_name("n2"), InstanceState::Running, 0), 41),
                ),
            ]),
            compute_errors: Some(BTreeMap::new()),
            attached: BTreeMap::new(),
            sizes: BTreeMap::new(),
        };
        let plan = status_plan(&n, &d, &obs);
        assert_eq!(
            plan,
            vec![
                StatusAction::Put {
                    id: a,
                    report: Report {
                        state: InstanceState::Error,
                        last_error: Some(FOREIGN_ERROR.into()),
                        reboot_generation: 0,
                        size: None,
                    },
                    volumes: vec![]
                },
                StatusAction::Put {
                    id: held,
                    report: Report {
                        state: InstanceState::Running,
                        last_error: Some("port not found".into()),
                        reboot_generation: 0,
                        size: None,
                    },
                    volumes: vec![]
                },
                StatusAction::Remove {
                    id: gone,
                    mod_revision: 40
                },
            ]
        );
    }

    #[test]
    fn status_book_overrides_a_lagging_cache_only() {
        let (desired, ids, n) = fixture(1);
        let id = ids[0];
        let mut book = StatusBook::default();
        let mut d = desired.clone();
        d.statuses_revision = 10;
        book.written
            .insert(id, (11, Some(status(&n, InstanceState::Running, 5))));
        assert_eq!(book.merge(&d)[&id].0.reboot_generation, 5);
        d.statuses_revision = 11;
        assert!(book.merge(&d).is_empty());
        assert!(book.written.is_empty());
    }
}
