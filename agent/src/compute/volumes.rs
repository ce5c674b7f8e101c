//! The volumes subsystem: for every instance assigned here that the
//! hypervisor runs, observe what is attached, [`plan`] the difference with
//! the instance's wanted volumes (each at the device the coordinator chose
//! for it, else the lowest free one; a volume keeps its device while
//! attached) and their QoS, apply it
//! (hot-plug, unplug, live I/O limits), and publish the attached set
//! ([`Attached`]), which the status subsystem reports in
//! `InstanceStatus.volumes` (the coordinator uses it to complete a detach).
//!
//! What is wanted comes from [`crate::state::desired::DesiredInstance::volumes`],
//! resolved by [`crate::state::desired::build`] from the agent's mirror
//! (`Instance.volumes`, `/nubo/v1/volumes/<id>` →
//! `/nubo/v1/volume-types/<name>`): no etcd read here, so volumes are
//! reconciled from the cache while etcd is unreachable, and a changed type
//! wakes the reconcile loop through the watch and reaches attached disks in
//! the pass that follows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use nubo_common::model::{pick_volume_device, Qos};
use nubo_common::{InstanceId, VolumeId};
use tracing::{info, info_span, warn, Instrument};

use super::hypervisor::{AttachedVolume, Hypervisor, VolumeToAttach};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;
pub use crate::state::desired::{WantedQos, WantedVolume};

/// One volume operation on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOp {
    /// Unplug a volume no longer wanted.
    Detach(VolumeId),
    /// Plug a wanted volume at a free device.
    Attach(VolumeToAttach),
    /// Apply changed limits to an attached volume.
    Retune {
        /// The volume.
        volume: VolumeId,
        /// The new limits.
        qos: Qos,
    },
}

/// The operations that bring an instance's attached volumes to `wanted`:
/// detaches first (freeing devices), then attaches in `wanted` order at
/// the device chosen for each ([`WantedVolume::device`]; when that is
/// still held — e.g. by a disk the guest has not released yet — or none
/// was chosen, the lowest free one), then retunes of attached volumes whose limits
/// differ. A volume whose QoS is [`WantedQos::Held`] stays attached with
/// its limits untouched, and is not attached until it resolves. Volumes
/// beyond the 25 devices are left out (never panics). Pure.
pub fn plan(wanted: &[WantedVolume], observed: &[AttachedVolume]) -> Vec<VolumeOp> {
    let want: BTreeMap<VolumeId, &WantedVolume> = wanted.iter().map(|w| (w.volume, w)).collect();
    let mut ops = Vec::new();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut attached: BTreeSet<VolumeId> = BTreeSet::new();
    for o in observed {
        if want.contains_key(&o.volume) {
            used.insert(o.target.clone());
            attached.insert(o.volume);
        } else {
            ops.push(VolumeOp::Detach(o.volume));
            // Busy until the guest completes the unplug.
            used.insert(o.target.clone());
        }
    }
    // Devices chosen for volumes still to attach are kept for them, so a
    // volume without a chosen device never takes one.
    let chosen: BTreeSet<String> = wanted
        .iter()
        .filter(|w| !attached.contains(&w.volume))
        .filter_map(|w| w.device.clone())
        .collect();
    let mut seen = BTreeSet::new();
    for w in wanted {
        if attached.contains(&w.volume) || !seen.insert(w.volume) {
            continue;
        }
        let Some(qos) = w.qos.limits() else {
            continue;
        };
        let taken = used
            .iter()
            .chain(chosen.iter().filter(|_| w.device.is_none()));
        let Some(target) = pick_volume_device(taken.map(String::as_str), w.device.as_deref())
        else {
            break;
        };
        used.insert(target.clone());
        ops.push(VolumeOp::Attach(VolumeToAttach {
            volume: w.volume,
            target,
            qos: *qos,
            read_only: w.read_only,
        }));
    }
    for o in observed {
        if let Some(qos) = want.get(&o.volume).and_then(|w| w.qos.limits()) {
            if *qos != o.qos {
                ops.push(VolumeOp::Retune {
                    volume: o.volume,
                    qos: *qos,
                });
            }
        }
    }
    ops
}

/// The volumes attached per instance, as last observed: written by the
/// volumes subsystem, read by the status subsystem.
pub type Attached = Arc<Mutex<BTreeMap<InstanceId, Vec<VolumeId>>>>;

/// How long a pass waits for a guest to complete an unplug it requested,
/// so the detach is reported in the same pass.
pub const UNPLUG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How many instances' volumes are observed or changed at once.
const MAX_CONCURRENT: usize = 8;

/// The volumes of one instance, as observed and planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceVolumes {
    /// The wanted volumes, in attach order.
    pub wanted: Vec<VolumeId>,
    /// The volumes attached before the plan.
    pub attached: Vec<VolumeId>,
    /// The operations to perform, in order.
    pub ops: Vec<VolumeOp>,
}

/// The plan of the volumes subsystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumesPlan {
    /// Per instance the hypervisor runs.
    pub instances: BTreeMap<InstanceId, InstanceVolumes>,
    /// Instances whose volumes could not be observed, with the reason
    /// (their last reported volumes are kept).
    pub unobserved: BTreeMap<InstanceId, String>,
}

impl Plan for VolumesPlan {
    fn len(&self) -> usize {
        self.instances.values().map(|i| i.ops.len()).sum()
    }
}

/// What is attached to each desired instance the hypervisor runs (an error
/// when its volumes could not be listed).
pub type VolumesObserved = BTreeMap<InstanceId, Result<Vec<AttachedVolume>, String>>;

/// The plan of every instance of `observed`. Pure.
pub fn plan_node(desired: &DesiredNode, observed: &VolumesObserved) -> VolumesPlan {
    let mut out = VolumesPlan::default();
    for (id, o) in observed {
        // A migrating instance's disks move with it; nothing is plugged or
        // unplugged until the switch.
        let Some(d) = desired.instances.get(id).filter(|_| !desired.migrating(id)) else {
            continue;
        };
        match o {
            Ok(attached) => {
                out.instances.insert(
                    *id,
                    InstanceVolumes {
                        wanted: d.volumes.iter().map(|w| w.volume).collect(),
                        attached: attached.iter().map(|a| a.volume).collect(),
                        ops: plan(&d.volumes, attached),
                    },
                );
            }
            Err(e) => {
                out.unobserved.insert(*id, e.clone());
            }
        }
    }
    out
}

/// The volumes subsystem.
pub struct Volumes {
    hv: Arc<dyn Hypervisor>,
    attached: Attached,
}

impl Volumes {
    /// Reconciles the volumes of the instances on `hv`, publishing what is
    /// attached in `attached`.
    pub fn new(hv: Arc<dyn Hypervisor>, attached: Attached) -> Self {
        Self { hv, attached }
    }
}

#[async_trait]
impl Subsystem for Volumes {
    type Observed = VolumesObserved;
    type Plan = VolumesPlan;

    fn name(&self) -> &'static str {
        "volumes"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<VolumesObserved, SubsystemError> {
        let running = super::hypervisor::managed_ids(self.hv.as_ref()).await?;
        let mut ids = Vec::new();
        for (id, d) in &desired.instances {
            if !running.contains(id) {
                continue;
            }
            for w in &d.volumes {
                if let WantedQos::Held(reason) = &w.qos {
                    warn!(instance = %id, volume = %w.volume, %reason,
                        "volume QoS unknown; attached disk keeps its limits, attach waits");
                }
            }
            ids.push(*id);
        }
        let hv = &self.hv;
        Ok(futures::stream::iter(ids.into_iter().map(|id| async move {
            let r = hv
                .volumes(id)
                .await
                .map_err(|e| format!("list volumes: {e}"));
            (id, r)
        }))
        .buffer_unordered(MAX_CONCURRENT)
        .collect()
        .await)
    }

    fn plan(&self, desired: &DesiredNode, observed: &VolumesObserved) -> VolumesPlan {
        plan_node(desired, observed)
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: VolumesPlan,
    ) -> Result<usize, SubsystemError> {
        let previous = self.attached.lock().map(|a| a.clone()).unwrap_or_default();
        let hv = &self.hv;
        let results: Vec<(InstanceId, InstanceOutcome)> = futures::stream::iter(
            plan.instances
                .into_iter()
                .map(|(id, p)| async move { (id, apply_instance(hv.clone(), id, p).await) }),
        )
        .buffer_unordered(MAX_CONCURRENT)
        .collect()
        .await;
        let mut out: BTreeMap<InstanceId, Vec<VolumeId>> = BTreeMap::new();
        let mut done = 0;
        let keep = |id: &InstanceId| previous.get(id).cloned().unwrap_or_default();
        for (id, r) in results {
            let attached = match r {
                Ok(o) => {
                    done += o.done;
                    o.attached
                }
                Err(e) => {
                    warn!(instance = %id, error = %e, "could not observe volumes; keeping the last report");
                    keep(&id)
                }
            };
            if !attached.is_empty() {
                out.insert(id, attached);
            }
        }
        for (id, e) in &plan.unobserved {
            warn!(instance = %id, error = %e, "could not observe volumes; keeping the last report");
            let attached = keep(id);
            if !attached.is_empty() {
                out.insert(*id, attached);
            }
        }
        if let Ok(mut a) = self.attached.lock() {
            *a = out;
        }
        Ok(done)
    }
}

/// What [`apply_instance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The volumes attached afterwards, in attach order (a volume whose
    /// unplug the guest has not completed yet still counts).
    pub attached: Vec<VolumeId>,
    /// The first failed operation, if any (the others were still tried).
    pub error: Option<String>,
    /// Operations that succeeded.
    pub done: usize,
}

/// What [`apply_instance`] returns: `Err` when the volumes could not be
/// observed again after an unplug (the caller keeps what it reported).
pub type InstanceOutcome = Result<Applied, String>;

/// Applies the plan of one instance, then waits (at most [`UNPLUG_WAIT`])
/// for the guest to complete the unplugs it asked for, so they are
/// reported in the same pass.
pub async fn apply_instance(
    hv: Arc<dyn Hypervisor>,
    id: InstanceId,
    p: InstanceVolumes,
) -> InstanceOutcome {
    let span = info_span!("volumes", instance = %id);
    async move {
        let mut error = None;
        let mut done = 0;
        let mut attached: BTreeSet<VolumeId> = p.attached.iter().copied().collect();
        for op in &p.ops {
            let r = match op {
                VolumeOp::Detach(v) => hv.detach_volume(id, *v).await,
                VolumeOp::Attach(a) => hv.attach_volume(id, a).await,
                VolumeOp::Retune { volume, qos } => hv.set_disk_qos(id, *volume, *qos).await,
            };
            match (op, r) {
                (VolumeOp::Attach(a), Ok(())) => {
                    info!(volume = %a.volume, target = %a.target, "volume attached");
                    attached.insert(a.volume);
                    done += 1;
                }
                (VolumeOp::Detach(v), Ok(())) => {
                    info!(volume = %v, "volume detach requested");
                    done += 1;
                }
                (VolumeOp::Retune { volume, qos }, Ok(())) => {
                    info!(volume = %volume, ?qos, "volume QoS applied");
                    done += 1;
                }
                (op, Err(e)) => {
                    warn!(?op, error = %e, "volume operation failed");
                    error.get_or_insert_with(|| format!("{op:?}: {e}"));
                }
            }
        }
        let detaching: Vec<VolumeId> = p
            .attached
            .iter()
            .copied()
            .filter(|v| !p.wanted.contains(v))
            .collect();
        if !detaching.is_empty() {
            let deadline = tokio::time::Instant::now() + UNPLUG_WAIT;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                match hv.volumes(id).await {
                    Ok(now) if !now.iter().any(|o| detaching.contains(&o.volume)) => break,
                    Ok(_) => {}
                    Err(e) => return Err(format!("list volumes: {e}")),
                }
            }
            let now = hv
                .volumes(id)
                .await
                .map_err(|e| format!("list volumes: {e}"))?;
            for v in &detaching {
                if !now.iter().any(|o| o.volume == *v) {
                    info!(volume = %v, "volume detached");
                    attached.remove(v);
                }
            }
        }
        // Report in the instance's attach order, then any others.
        let mut out: Vec<VolumeId> = p
            .wanted
            .iter()
            .copied()
            .filter(|v| attached.contains(v))
            .collect();
        let rest: Vec<VolumeId> = attached
            .iter()
            .copied()
            .filter(|v| !out.contains(v))
            .collect();
        out.extend(rest);
        Ok(Applied {
            attached: out,
            error,
            done,
        })
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vid(n: u8) -> VolumeId {
        format!("00000000-0000-4000-8000-0000000000{n:02}")
            .parse()
            .unwrap()
    }

    fn want(n: u8, iops: Option<u64>) -> WantedVolume {
        WantedVolume {
            volume: vid(n),
            qos: WantedQos::Limits(Qos {
                write_iops_sec: iops,
                ..Qos::default()
            }),
            read_only: false,
            device: None,
        }
    }

    fn held(n: u8) -> WantedVolume {
        WantedVolume {
            volume: vid(n),
            qos: WantedQos::Held("volume type gold not found".into()),
            read_only: false,
            device: None,
        }
    }

    #[test]
    fn a_volume_is_attached_at_its_chosen_device_unless_still_held() {
        let at = |n: u8, d: &str| WantedVolume {
            device: Some(d.into()),
            ..want(n, None)
        };
        let target = |ops: &[VolumeOp]| -> Vec<(VolumeId, String)> {
            ops.iter()
                .filter_map(|o| match o {
                    VolumeOp::Attach(a) => Some((a.volume, a.target.clone())),
                    _ => None,
                })
                .collect()
        };
        // Chosen devices are kept, even out of order.
        assert_eq!(
            target(&plan(&[at(1, "vdd"), at(2, "vdb")], &[])),
            vec![(vid(1), "vdd".into()), (vid(2), "vdb".into())]
        );
        // vdb still held by a volume being unplugged: the lowest free one.
        assert_eq!(
            target(&plan(&[at(2, "vdb")], &[att(1, "vdb", None)])),
            vec![(vid(2), "vdc".into())]
        );
        // Unchosen volumes take the lowest device the chosen ones leave.
        assert_eq!(
            target(&plan(&[want(2, None), at(1, "vdb")], &[])),
            vec![(vid(2), "vdc".into()), (vid(1), "vdb".into())]
        );
    }

    #[test]
    fn a_read_only_volume_is_attached_read_only() {
        let ro = WantedVolume {
            read_only: true,
            ..want(1, None)
        };
        assert_eq!(
            plan(&[ro, want(2, None)], &[]),
            vec![
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(1),
                    target: "vdb".into(),
                    qos: Qos::default(),
                    read_only: true,
                }),
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(2),
                    target: "vdc".into(),
                    qos: Qos::default(),
                    read_only: false,
                }),
            ]
        );
    }

    fn limits(w: &WantedVolume) -> Qos {
        w.qos.limits().copied().unwrap()
    }

    fn att(n: u8, target: &str, iops: Option<u64>) -> AttachedVolume {
        AttachedVolume {
            volume: vid(n),
            target: target.into(),
            qos: Qos {
                write_iops_sec: iops,
                ..Qos::default()
            },
        }
    }

    #[test]
    fn new_volumes_get_devices_in_attach_order() {
        let ops = plan(&[want(1, None), want(2, Some(200))], &[]);
        assert_eq!(
            ops,
            vec![
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(1),
                    target: "vdb".into(),
                    qos: Qos::default(),
                    read_only: false,
                }),
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(2),
                    target: "vdc".into(),
                    qos: limits(&want(2, Some(200))),
                    read_only: false,
                }),
            ]
        );
    }

    #[test]
    fn converged_is_a_no_op() {
        assert!(plan(&[want(1, Some(5))], &[att(1, "vdb", Some(5))]).is_empty());
        assert!(plan(&[], &[]).is_empty());
    }

    #[test]
    fn detached_volumes_go_and_their_device_stays_busy_until_gone() {
        let ops = plan(
            &[want(2, None), want(3, None)],
            &[att(1, "vdb", None), att(2, "vdc", None)],
        );
        assert_eq!(
            ops,
            vec![
                VolumeOp::Detach(vid(1)),
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(3),
                    target: "vdd".into(),
                    qos: Qos::default(),
                    read_only: false,
                }),
            ]
        );
        // Once vdb is gone, it is reused.
        let ops = plan(&[want(2, None), want(4, None)], &[att(2, "vdc", None)]);
        assert_eq!(
            ops,
            vec![VolumeOp::Attach(VolumeToAttach {
                volume: vid(4),
                target: "vdb".into(),
                qos: Qos::default(),
                read_only: false,
            })]
        );
    }

    #[test]
    fn changed_qos_retunes_attached_disks() {
        let ops = plan(&[want(1, Some(200))], &[att(1, "vdb", None)]);
        assert_eq!(
            ops,
            vec![VolumeOp::Retune {
                volume: vid(1),
                qos: limits(&want(1, Some(200)))
            }]
        );
        let ops = plan(&[want(1, None)], &[att(1, "vdb", Some(200))]);
        assert_eq!(
            ops,
            vec![VolumeOp::Retune {
                volume: vid(1),
                qos: Qos::default()
            }]
        );
    }

    #[tokio::test]
    async fn the_subsystem_attaches_retunes_and_detaches_on_the_fake_driver() {
        use crate::compute::hypervisor::FakeHypervisor;
        use crate::reconciler::Reconcile;
        use crate::testutil::desired_instance;
        use nubo_common::model::PowerState;
        let d = desired_instance(PowerState::Running);
        let id = d.id();
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeHypervisor::open(dir.path(), std::time::Duration::ZERO).unwrap());
        let hv: Arc<dyn Hypervisor> = fake.clone();
        hv.create(&d).await.unwrap();
        let attached = Attached::default();
        let mut vols = Volumes::new(hv.clone(), attached.clone());
        let desired = |wanted: Vec<WantedVolume>| {
            let mut node = DesiredNode::default();
            let mut d = d.clone();
            d.volumes = wanted;
            node.instances.insert(id, d);
            node
        };
        let now = |a: &Attached| a.lock().unwrap().get(&id).cloned().unwrap_or_default();

        let n = vols
            .reconcile(&desired(vec![want(1, None), want(2, Some(200))]))
            .await
            .unwrap();
        assert_eq!((n, now(&attached)), (2, vec![vid(1), vid(2)]));
        // Converged: an empty plan.
        let n = vols
            .reconcile(&desired(vec![want(1, None), want(2, Some(200))]))
            .await
            .unwrap();
        assert_eq!(n, 0);
        // A changed type reaches the attached disk.
        let n = vols
            .reconcile(&desired(vec![want(1, None), want(2, Some(100))]))
            .await
            .unwrap();
        assert_eq!((n, now(&attached)), (1, vec![vid(1), vid(2)]));
        assert_eq!(
            hv.volumes(id).await.unwrap()[1].qos.write_iops_sec,
            Some(100)
        );
        // Detach: reported gone once the hypervisor no longer shows it.
        vols.reconcile(&desired(vec![want(2, Some(100))]))
            .await
            .unwrap();
        assert_eq!(now(&attached), vec![vid(2)]);
        let left = hv.volumes(id).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].target, "vdc", "a volume keeps its device");
        // Volumes that cannot be observed: the last report is kept.
        let plan = VolumesPlan {
            instances: BTreeMap::new(),
            unobserved: BTreeMap::from([(id, "list volumes: boom".to_string())]),
        };
        assert_eq!(vols.apply(&desired(vec![]), plan).await.unwrap(), 0);
        assert_eq!(now(&attached), vec![vid(2)]);
        // An instance the hypervisor no longer runs has nothing attached.
        hv.destroy(id).await.unwrap();
        vols.reconcile(&desired(vec![want(2, Some(100))]))
            .await
            .unwrap();
        assert!(attached.lock().unwrap().is_empty());
    }

    #[test]
    fn plan_node_covers_observed_instances_and_keeps_unobservable_ones_apart() {
        use crate::testutil::desired_instance;
        use nubo_common::model::PowerState;
        let a = desired_instance(PowerState::Running);
        let b = desired_instance(PowerState::Running);
        let mut d = DesiredNode::default();
        let mut a2 = a.clone();
        a2.volumes = vec![want(1, None)];
        d.instances.insert(a.id(), a2);
        d.instances.insert(b.id(), b.clone());
        let observed: VolumesObserved = BTreeMap::from([
            (a.id(), Ok(vec![])),
            (b.id(), Err("list volumes: gone".to_string())),
            // Observed but no longer desired: not planned.
            (InstanceId::new_random(), Ok(vec![att(3, "vdb", None)])),
        ]);
        let p = plan_node(&d, &observed);
        assert_eq!(p.len(), 1);
        assert_eq!(p.instances[&a.id()].wanted, vec![vid(1)]);
        assert_eq!(p.unobserved.keys().collect::<Vec<_>>(), vec![&b.id()]);
    }

    #[test]
    fn held_qos_keeps_attached_disks_as_they_are_and_defers_new_attaches() {
        // Attached with unknown QoS: neither detached nor retuned, keeps vdb.
        let ops = plan(&[held(1), want(2, None)], &[att(1, "vdb", Some(5))]);
        assert_eq!(
            ops,
            vec![VolumeOp::Attach(VolumeToAttach {
                volume: vid(2),
                target: "vdc".into(),
                qos: Qos::default(),
                read_only: false,
            })]
        );
        // Not attached yet: waits, without taking a device.
        let ops = plan(&[held(1), want(2, None)], &[]);
        assert_eq!(
            ops,
            vec![VolumeOp::Attach(VolumeToAttach {
                volume: vid(2),
                target: "vdb".into(),
                qos: Qos::default(),
                read_only: false,
            })]
        );
    }

    #[test]
    fn a_type_change_in_the_cache_retunes_the_attached_disk() {
        use crate::state::cache::Change;
        use crate::testutil::*;
        use nubo_common::keys;
        let mut w = World::new();
        let n = node_name("n1");
        w.cache.local_node = Some(n.clone());
        w.node(&n, "10.0.0.1");
        let net = w.network(1, 0);
        let (id, _) = w.instance_on(&n, net, &[]);
        w.volume_type("gold", Some(200));
        let v = w.volume(Some("gold"));
        w.attach(id, v);
        let wanted = |w: &World| {
            crate::state::desired::build(&w.cache, &n, 1500).instances[&id]
                .volumes
                .clone()
        };
        let iops = |n: u64| Qos {
            write_iops_sec: Some(n),
            ..Qos::default()
        };
        let observed = vec![AttachedVolume {
            volume: v,
            target: "vdb".into(),
            qos: iops(200),
        }];
        assert!(plan(&wanted(&w), &observed).is_empty());

        // `nubo volume type set gold --write-iops 100`: the watch event wakes
        // the loop, and the plan built from the cache retunes the disk.
        assert_eq!(w.volume_type("gold", Some(100)), Change::Relevant);
        assert_eq!(
            plan(&wanted(&w), &observed),
            vec![VolumeOp::Retune {
                volume: v,
                qos: iops(100)
            }]
        );
        // A damaged type or a lost volume record changes nothing on the disk.
        w.cache.apply(&keys::volume_type("gold"), Some(b"{"), 1000);
        assert!(plan(&wanted(&w), &observed).is_empty());
        w.cache.apply(&keys::volume(&v), None, 1001);
        assert!(plan(&wanted(&w), &observed).is_empty());
    }

    #[test]
    fn duplicates_and_too_many_volumes_never_panic() {
        let ops = plan(&[want(1, None), want(1, None)], &[]);
        assert_eq!(ops.len(), 1);
        let many: Vec<WantedVolume> = (0..30).map(|n| want(n, None)).collect();
        let ops = plan(&many, &[]);
        assert_eq!(ops.len(), 25);
        assert!(matches!(&ops[24], VolumeOp::Attach(a) if a.target == "vdz"));
    }
}
