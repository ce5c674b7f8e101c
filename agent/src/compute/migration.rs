//! The agent's side of a migration (the protocol is in
//! `nubo_common::model::migration`): the migrations subsystem, run last on
//! every pass (after the network subsystems, like the plug gate).
//!
//! - destination: compute prepared the instance of an
//!   [`IncomingMigration`](nubo_common::model::IncomingMigration) order
//!   (taps, root disk, definition; see `instances::Action::PrepareIncoming`)
//!   and the network subsystems wired its ports like a local instance's
//!   (it is in [`DesiredNode::instances`]); once every tap is on its
//!   bridge, this subsystem reports [`MigrationPhase::Prepared`];
//! - source: for an [`OutgoingMigration`](nubo_common::model::OutgoingMigration)
//!   order it starts a background job (the hypervisor's migration takes
//!   seconds; the reconcile loop keeps running, so an `abort` set by the
//!   leader reaches the job), which reports [`MigrationPhase::Running`],
//!   then [`MigrationPhase::Migrated`] (with the downtime) or
//!   [`MigrationPhase::Failed`] (with the hypervisor's error);
//! - after the switch, an instance that arrived is settled: an ordinary
//!   instance of this node.
//!
//! While an order exists, compute, volumes and status leave the instance
//! alone (see [`DesiredNode::migrating`]). A job interrupted by an agent
//! restart is reported from what the hypervisor shows: the guest still
//! here → failed; gone → migrated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nubo_common::model::{self, MigrationPhase, MigrationReport};
use nubo_common::{keys, InstanceId, MigrationId, NodeName};
use nubo_overlay::Netlink;
use nubo_store::Etcd;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use super::hypervisor::{Hypervisor, MigrationRequest, ObservedInstance, ObservedPower};
use super::plug_gate::ready_to_resume;
use crate::reconciler::{Subsystem, SubsystemError};

use crate::state::desired::DesiredNode;

/// How often a running job's order is read for an abort
/// ([`follow_abort`]).
const ABORT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// One migration job of this node (source side).
#[derive(Debug)]
struct Job {
    migration: MigrationId,
    abort: Arc<watch::Sender<bool>>,
    abort_sent: bool,
    finished: bool,
}

/// What a job looks like to the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView {
    /// Its migration.
    pub migration: MigrationId,
    /// An abort was signalled to it.
    pub abort_sent: bool,
    /// It reported its outcome.
    pub finished: bool,
}

/// What the migrations subsystem observes.
#[derive(Debug, Clone, Default)]
pub struct MigrationsObserved {
    /// The hypervisor's instances.
    pub instances: BTreeMap<InstanceId, ObservedInstance>,
    /// This node's jobs by instance.
    pub jobs: BTreeMap<InstanceId, JobView>,
    /// Incoming instances whose taps are all on their bridges (every one
    /// with `--no-network`).
    pub plugged: BTreeSet<InstanceId>,
    /// Instances the hypervisor still marks as arriving.
    pub arriving: BTreeSet<InstanceId>,
}

/// One step of the migrations subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationAction {
    /// Destination: report that the ports are plugged.
    ReportPrepared {
        /// The instance.
        id: InstanceId,
        /// The migration.
        migration: MigrationId,
    },
    /// Source: start the job.
    Start {
        /// The instance.
        id: InstanceId,
        /// The migration.
        migration: MigrationId,
    },
    /// Source: signal the running job to abort.
    Abort {
        /// The instance.
        id: InstanceId,
    },
    /// Source: report an outcome found without a job (agent restarted,
    /// nothing to migrate, destination unknown, aborted before start).
    Report {
        /// The migration.
        migration: MigrationId,
        /// Migrated or failed.
        phase: MigrationPhase,
        /// Why.
        detail: String,
    },
    /// The instance arrived and is assigned here: settle it.
    Settle(InstanceId),
    /// Forget a finished job whose order is gone.
    Forget(InstanceId),
}

/// The migration steps that bring this node's side of every order
/// forward. Pure.
pub fn plan(desired: &DesiredNode, observed: &MigrationsObserved) -> Vec<MigrationAction> {
    let mut out = Vec::new();
    let reported = |m: &MigrationId| desired.migration_reports.get(m).map(|r| r.phase);
    for (id, order) in &desired.incoming {
        if !desired.instances.contains_key(id) || reported(&order.migration).is_some() {
            continue;
        }
        if observed.instances.get(id).is_some_and(|o| o.managed) && observed.plugged.contains(id) {
            out.push(MigrationAction::ReportPrepared {
                id: *id,
                migration: order.migration,
            });
        }
    }
    for (id, o) in &desired.outgoing {
        let m = o.order.migration;
        if let Some(job) = observed.jobs.get(id).filter(|j| j.migration == m) {
            if !job.finished && o.order.abort && !job.abort_sent {
                out.push(MigrationAction::Abort { id: *id });
            }
            continue;
        }
        let here = observed
            .instances
            .get(id)
            .filter(|i| i.managed)
            .map(|i| i.power);
        let report = |phase, detail: &str| MigrationAction::Report {
            migration: m,
            phase,
            detail: detail.to_string(),
        };
        match reported(&m) {
            Some(MigrationPhase::Migrated | MigrationPhase::Failed) => {}
            Some(MigrationPhase::Running) => out.push(match here {
                Some(_) => report(
                    MigrationPhase::Failed,
                    "the agent restarted during the migration; the guest runs here",
                ),
                None => report(
                    MigrationPhase::Migrated,
                    "the agent restarted during the migration; the guest left",
                ),
            }),
            Some(MigrationPhase::Prepared) | None => {
                if o.order.abort {
                    out.push(report(MigrationPhase::Failed, "aborted before it started"));
                } else if o.destination_ip.is_none() {
                    out.push(report(
                        MigrationPhase::Failed,
                        &format!("destination node {} unknown here", o.order.destination),
                    ));
                } else if here.is_none() {
                    out.push(report(
                        MigrationPhase::Failed,
                        "the instance is not on this hypervisor",
                    ));
                } else if o.order.mode == model::MigrationMode::Live
                    && here != Some(ObservedPower::Running)
                {
                    out.push(report(
                        MigrationPhase::Failed,
                        "a live migration needs a running guest",
                    ));
                } else {
                    out.push(MigrationAction::Start {
                        id: *id,
                        migration: m,
                    });
                }
            }
        }
    }
    for id in &observed.arriving {
        if desired.instances.contains_key(id) && !desired.migrating(id) {
            out.push(MigrationAction::Settle(*id));
        }
    }
    for (id, job) in &observed.jobs {
        let current = desired
            .outgoing
            .get(id)
            .is_some_and(|o| o.order.migration == job.migration);
        if job.finished && !current {
            out.push(MigrationAction::Forget(*id));
        }
    }
    out
}

/// The migrations subsystem.
pub struct Migrations {
    node: NodeName,
    hv: Arc<dyn Hypervisor>,
    etcd: Etcd,
    /// Tap observation (`None` with `--no-network`: nothing is plugged).
    netlink: Option<Netlink>,
    jobs: Arc<Mutex<BTreeMap<InstanceId, Job>>>,
}

impl Migrations {
    /// The migrations of `node` on `hv`, reported through `etcd`; `network`
    /// false with `--no-network`.
    pub fn new(
        node: NodeName,
        hv: Arc<dyn Hypervisor>,
        etcd: Etcd,
        network: bool,
    ) -> Result<Self, SubsystemError> {
        let netlink = if network {
            Some(Netlink::new().map_err(|e| SubsystemError::Other(format!("netlink: {e}")))?)
        } else {
            None
        };
        Ok(Self {
            node,
            hv,
            etcd,
            netlink,
            jobs: Arc::default(),
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, BTreeMap<InstanceId, Job>> {
        match self.jobs.lock() {
            Ok(j) => j,
            Err(p) => p.into_inner(),
        }
    }
}

/// Writes this node's report (on `report.migration`).
async fn put_report(
    etcd: &Etcd,
    node: &NodeName,
    report: &MigrationReport,
) -> Result<(), SubsystemError> {
    let migration = report.migration;
    etcd.put(
        keys::node_migration_report(node, &migration),
        model::encode(report),
        None,
    )
    .await
    .map_err(|e| SubsystemError::Other(format!("report migration {migration}: {e}")))?;
    Ok(())
}

#[async_trait]
impl Subsystem for Migrations {
    type Observed = MigrationsObserved;
    type Plan = Vec<MigrationAction>;

    fn name(&self) -> &'static str {
        "migrations"
    }

    async fn observe(
        &mut self,
        desired: &DesiredNode,
    ) -> Result<MigrationsObserved, SubsystemError> {
        let jobs = self
            .jobs()
            .iter()
            .map(|(id, j)| {
                (
                    *id,
                    JobView {
                        migration: j.migration,
                        abort_sent: j.abort_sent,
                        finished: j.finished,
                    },
                )
            })
            .collect();
        let arriving = self.hv.arriving().await?.into_iter().collect();
        if desired.incoming.is_empty() && desired.outgoing.is_empty() {
            return Ok(MigrationsObserved {
                jobs,
                arriving,
                ..MigrationsObserved::default()
            });
        }
        let instances = self
            .hv
            .list()
            .await?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let incoming: BTreeSet<InstanceId> = desired.incoming.keys().copied().collect();
        let plugged = match &self.netlink {
            None => incoming,
            Some(nl) if !incoming.is_empty() => {
                let overlay = nl
                    .observe()
                    .await
                    .map_err(|e| SubsystemError::Other(format!("observe taps: {e}")))?;
                ready_to_resume(&incoming, desired, &overlay)
                    .into_iter()
                    .collect()
            }
            Some(_) => BTreeSet::new(),
        };
        Ok(MigrationsObserved {
            instances,
            jobs,
            plugged,
            arriving,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &MigrationsObserved) -> Vec<MigrationAction> {
        plan(desired, observed)
    }

    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: Vec<MigrationAction>,
    ) -> Result<usize, SubsystemError> {
        let n = plan.len();
        let mut errors = Vec::new();
        for action in plan {
            match action {
                MigrationAction::ReportPrepared { id, migration } => {
                    let span = info_span!("migration", instance = %id, %migration);
                    match put_report(
                        &self.etcd,
                        &self.node,
                        &MigrationReport::new(migration, MigrationPhase::Prepared, None),
                    )
                    .instrument(span.clone())
                    .await
                    {
                        Ok(()) => {
                            span.in_scope(|| info!("ports plugged; ready to receive the guest"))
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                MigrationAction::Report {
                    migration,
                    phase,
                    detail,
                } => {
                    warn!(%migration, ?phase, %detail, "migration outcome found without a job");
                    let report = MigrationReport::new(migration, phase, Some(detail));
                    if let Err(e) = put_report(&self.etcd, &self.node, &report).await {
                        errors.push(e.to_string());
                    }
                }
                MigrationAction::Abort { id } => {
                    if let Some(job) = self.jobs().get_mut(&id) {
                        job.abort_sent = true;
                        let _ = job.abort.send(true);
                        info!(instance = %id, migration = %job.migration, "abort requested");
                    }
                }
                MigrationAction::Settle(id) => match self.hv.settle_arrived(id).await {
                    Ok(()) if self.netlink.is_some() => announce_services(desired, id),
                    Ok(()) => {}
                    Err(e) => errors.push(format!("settle {id}: {e}")),
                },
                MigrationAction::Forget(id) => {
                    self.jobs().remove(&id);
                }
                MigrationAction::Start { id, migration } => {
                    let Some(o) = desired.outgoing.get(&id) else {
                        continue;
                    };
                    let Some(destination_ip) = o.destination_ip else {
                        continue;
                    };
                    let request = MigrationRequest {
                        migration,
                        order: o.order.clone(),
                        destination_ip,
                    };
                    let (abort, abort_rx) = watch::channel(o.order.abort);
                    let abort = Arc::new(abort);
                    tokio::spawn(follow_abort(
                        self.etcd.clone(),
                        self.node.clone(),
                        id,
                        migration,
                        abort.clone(),
                    ));
                    self.jobs().insert(
                        id,
                        Job {
                            migration,
                            abort,
                            abort_sent: false,
                            finished: false,
                        },
                    );
                    let (hv, etcd, node, jobs) = (
                        self.hv.clone(),
                        self.etcd.clone(),
                        self.node.clone(),
                        self.jobs.clone(),
                    );
                    let span = info_span!("migration", instance = %id, %migration, destination = %o.order.destination, mode = ?o.order.mode);
                    tokio::spawn(
                        async move {
                            run_job(hv, etcd, node, id, request, abort_rx).await;
                            if let Ok(mut j) = jobs.lock() {
                                if let Some(job) =
                                    j.get_mut(&id).filter(|j| j.migration == migration)
                                {
                                    job.finished = true;
                                }
                            }
                        }
                        .instrument(span),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(SubsystemError::Other(errors.join("; ")))
        }
    }
}

/// Tells a guest that arrived which MAC its metadata and DHCP address
/// (169.254.169.254) has here: each node's bridge has its own MAC, and the
/// guest's ARP cache still names the source's, whose bridge the overlay
/// reaches and which no longer knows the port (the metadata service
/// would refuse the guest, its lease renewals would go to the source).
/// One gratuitous ARP per port, out of its tap to the guest alone (a
/// broadcast would re-point the other guests of the network too).
/// Failures are logged: the guest's cache expires by itself in the end.
fn announce_services(desired: &DesiredNode, id: InstanceId) {
    let Some(instance) = desired.instances.get(&id) else {
        return;
    };
    let ip = nubo_metadata::METADATA_ADDR;
    for port in &instance.ports {
        let Some(net) = desired.networks.get(&port.network) else {
            continue;
        };
        let bridge = net.bridge();
        let sent = nubo_overlay::link_mac(&bridge).and_then(|mac| {
            nubo_overlay::send_gratuitous_arp_to(&port.tap, mac, ip, port.mac).map(|()| mac)
        });
        match sent {
            Ok(mac) => {
                info!(instance = %id, tap = %port.tap, %mac, "metadata address announced to the arrived guest")
            }
            Err(e) => {
                warn!(instance = %id, tap = %port.tap, error = %e, "could not announce the metadata address to the arrived guest")
            }
        }
    }
}

/// Reads this node's order for `id` every [`ABORT_POLL`] while its job
/// runs and signals the job as soon as the order asks for an abort. The
/// reconcile pass carries the abort too ([`MigrationAction::Abort`]), but
/// a pass can take seconds while libvirt is busy with the migration (it
/// answered a domain's state in up to 2 s, and a pass asks for the
/// domains several times): long enough for the guest to be gone before
/// the operator's abort arrived.
async fn follow_abort(
    etcd: Etcd,
    node: NodeName,
    id: InstanceId,
    migration: MigrationId,
    abort: Arc<watch::Sender<bool>>,
) {
    let key = keys::node_outgoing(&node, &id);
    // Ends with the job (it drops the receiver) or once signalled.
    while !abort.is_closed() && !*abort.borrow() {
        match etcd.get_kv(&key).await {
            Ok(Some(kv)) => {
                let asked = model::decode::<model::OutgoingMigration>(&key, kv.value())
                    .is_ok_and(|o| o.migration == migration && o.abort);
                if asked {
                    info!(instance = %id, %migration, "abort requested (read from the order)");
                    let _ = abort.send(true);
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(instance = %id, %migration, error = %e, "could not read the migration order")
            }
        }
        tokio::time::sleep(ABORT_POLL).await;
    }
}

/// Runs one outgoing migration to its end and reports it (retrying the
/// final report until it is written: the leader waits for it).
async fn run_job(
    hv: Arc<dyn Hypervisor>,
    etcd: Etcd,
    node: NodeName,
    id: InstanceId,
    request: MigrationRequest,
    abort: watch::Receiver<bool>,
) {
    let migration = request.migration;
    let running = MigrationReport::new(migration, MigrationPhase::Running, None);
    if let Err(e) = put_report(&etcd, &node, &running).await {
        warn!(error = %e, "could not report the migration running; going on");
    }
    info!("migration started");
    let outcome = match hv.migrate_out(id, &request, abort).await {
        Ok(done) => {
            info!(downtime_ms = ?done.downtime_ms, elapsed_ms = done.elapsed_ms, postcopy = done.postcopy, "guest migrated");
            let detail = format!(
                "{} ms{}",
                done.elapsed_ms,
                if done.postcopy { ", post-copy" } else { "" }
            );
            MigrationReport {
                downtime_ms: done.downtime_ms,
                postcopy: done.postcopy,
                ..MigrationReport::new(migration, MigrationPhase::Migrated, Some(detail))
            }
        }
        Err(e) => {
            warn!(error = %e, "migration failed; the guest stays here");
            MigrationReport::new(migration, MigrationPhase::Failed, Some(e.to_string()))
        }
    };
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match put_report(&etcd, &node, &outcome).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, ?delay, "could not report the migration's outcome; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::DesiredOutgoing;
    use crate::testutil::*;
    use nubo_common::model::{IncomingMigration, MigrationMode, OutgoingMigration};

    fn mid() -> MigrationId {
        MigrationId::new_random()
    }

    fn outgoing(m: MigrationId, abort: bool) -> DesiredOutgoing {
        DesiredOutgoing {
            order: OutgoingMigration {
                migration: m,
                destination: node_name("n2"),
                mode: MigrationMode::Live,
                block: false,
                precopy_budget_secs: 10,
                budget_secs: 60,
                abort,
            },
            destination_ip: Some("10.0.0.2".parse().unwrap()),
        }
    }

    fn report(m: MigrationId, phase: MigrationPhase) -> MigrationReport {
        MigrationReport::new(m, phase, None)
    }

    fn with_instance(id: InstanceId, power: ObservedPower) -> MigrationsObserved {
        MigrationsObserved {
            instances: BTreeMap::from([(id, observed_instance(id, power, true))]),
            ..MigrationsObserved::default()
        }
    }

    #[test]
    fn source_starts_once_then_aborts_on_request_only_while_running() {
        let id = InstanceId::new_random();
        let m = mid();
        let mut d = DesiredNode::default();
        d.outgoing.insert(id, outgoing(m, false));
        let mut obs = with_instance(id, ObservedPower::Running);
        assert_eq!(
            plan(&d, &obs),
            vec![MigrationAction::Start { id, migration: m }]
        );
        obs.jobs.insert(
            id,
            JobView {
                migration: m,
                abort_sent: false,
                finished: false,
            },
        );
        assert!(plan(&d, &obs).is_empty());
        d.outgoing.insert(id, outgoing(m, true));
        assert_eq!(plan(&d, &obs), vec![MigrationAction::Abort { id }]);
        obs.jobs.get_mut(&id).unwrap().abort_sent = true;
        assert!(plan(&d, &obs).is_empty());
        // Finished: nothing until the order is gone, then forgotten.
        obs.jobs.get_mut(&id).unwrap().finished = true;
        d.migration_reports
            .insert(m, report(m, MigrationPhase::Failed));
        assert!(plan(&d, &obs).is_empty());
        d.outgoing.clear();
        assert_eq!(plan(&d, &obs), vec![MigrationAction::Forget(id)]);
    }

    #[test]
    fn an_interrupted_job_is_reported_from_what_the_hypervisor_shows() {
        let id = InstanceId::new_random();
        let m = mid();
        let mut d = DesiredNode::default();
        d.outgoing.insert(id, outgoing(m, false));
        d.migration_reports
            .insert(m, report(m, MigrationPhase::Running));
        let phase_of = |p: &[MigrationAction]| match p {
            [MigrationAction::Report { phase, .. }] => Some(*phase),
            _ => None,
        };
        let here = with_instance(id, ObservedPower::Running);
        assert_eq!(phase_of(&plan(&d, &here)), Some(MigrationPhase::Failed));
        let gone = MigrationsObserved::default();
        assert_eq!(phase_of(&plan(&d, &gone)), Some(MigrationPhase::Migrated));
        // Reported already: nothing more.
        d.migration_reports
            .insert(m, report(m, MigrationPhase::Migrated));
        assert!(plan(&d, &gone).is_empty());
    }

    #[test]
    fn a_source_without_the_guest_or_the_destination_fails_clearly() {
        let id = InstanceId::new_random();
        let m = mid();
        let mut d = DesiredNode::default();
        d.outgoing.insert(id, outgoing(m, false));
        let fails = |p: Vec<MigrationAction>| {
            matches!(
                p.as_slice(),
                [MigrationAction::Report {
                    phase: MigrationPhase::Failed,
                    ..
                }]
            )
        };
        assert!(fails(plan(&d, &MigrationsObserved::default())));
        assert!(fails(plan(&d, &with_instance(id, ObservedPower::Stopped))));
        let mut unknown = outgoing(m, false);
        unknown.destination_ip = None;
        d.outgoing.insert(id, unknown);
        assert!(fails(plan(&d, &with_instance(id, ObservedPower::Running))));
        // Positive control: a cold migration of a stopped guest starts.
        let mut cold = outgoing(m, false);
        cold.order.mode = MigrationMode::Cold;
        d.outgoing.insert(id, cold);
        assert_eq!(
            plan(&d, &with_instance(id, ObservedPower::Stopped)),
            vec![MigrationAction::Start { id, migration: m }]
        );
    }

    #[test]
    fn both_sides_flood_to_each_other_and_the_source_points_a_departed_mac_away() {
        let mut w = World::new();
        let (n1, n2) = (node_name("n1"), node_name("n2"));
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        let net = w.network(7, 0);
        let (id, _) = w.instance_on(&n1, net, &[]);
        let spec = w.cache.instances[&id].clone();
        let mac = w.cache.ports[&spec.ports[0]].mac;
        let m = mid();
        let order = OutgoingMigration {
            migration: m,
            destination: n2.clone(),
            mode: MigrationMode::Live,
            block: false,
            precopy_budget_secs: 5,
            budget_secs: 30,
            abort: false,
        };
        w.cache.outgoing.insert(id, order);
        let (dst_ip, src_ip) = ("10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let src = crate::state::desired::build(&w.cache, &n1, 1500);
        let vni_net = |d: &DesiredNode| d.networks.values().next().unwrap().clone();
        assert!(vni_net(&src).remote_vteps.contains(&dst_ip));
        assert!(
            vni_net(&src).remote_macs.is_empty(),
            "the guest is still here"
        );
        w.cache
            .migration_reports
            .insert(m, report(m, MigrationPhase::Migrated));
        let src = crate::state::desired::build(&w.cache, &n1, 1500);
        assert_eq!(vni_net(&src).remote_macs.get(&mac), Some(&dst_ip));
        // The destination floods to the source while the order exists.
        w.cache.incoming.insert(
            id,
            IncomingMigration {
                migration: m,
                source: n1.clone(),
                mode: MigrationMode::Live,
                spec,
            },
        );
        let dst = crate::state::desired::build(&w.cache, &n2, 1500);
        assert!(vni_net(&dst).remote_vteps.contains(&src_ip));
        // Positive control: without orders, nothing of the sort.
        w.cache.incoming.clear();
        w.cache.outgoing.clear();
        let plain = crate::state::desired::build(&w.cache, &n1, 1500);
        assert!(vni_net(&plain).remote_vteps.is_empty());
    }

    #[test]
    fn destination_reports_prepared_once_defined_and_plugged_then_settles() {
        let mut w = World::new();
        let n2 = node_name("n2");
        w.node(&n2, "10.0.0.2");
        let net = w.network(7, 0);
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let (id, _) = w.instance_on(&n1, net, &[]);
        let spec = w.cache.instances[&id].clone();
        let m = mid();
        let order = IncomingMigration {
            migration: m,
            source: n1.clone(),
            mode: MigrationMode::Live,
            spec,
        };
        w.cache.incoming.insert(id, order);
        let d = crate::state::desired::build(&w.cache, &n2, 1500);
        assert!(d.instances.contains_key(&id), "wired like a local instance");
        assert!(d.migrating(&id));
        let mut obs = MigrationsObserved::default();
        // Not defined yet, then not plugged yet: nothing to report.
        assert!(plan(&d, &obs).is_empty());
        obs = with_instance(id, ObservedPower::Stopped);
        assert!(plan(&d, &obs).is_empty());
        obs.plugged.insert(id);
        assert_eq!(
            plan(&d, &obs),
            vec![MigrationAction::ReportPrepared { id, migration: m }]
        );
        let mut reported = d.clone();
        reported
            .migration_reports
            .insert(m, report(m, MigrationPhase::Prepared));
        assert!(plan(&reported, &obs).is_empty());
        // Still an order: not settled. After the switch: settled.
        obs.arriving.insert(id);
        assert!(plan(&reported, &obs).is_empty());
        let mut switched = reported.clone();
        switched.incoming.clear();
        assert_eq!(plan(&switched, &obs), vec![MigrationAction::Settle(id)]);
    }
}
