//! Volumes of the instances on this node: observe what the hypervisor has
//! attached, [`plan`] the difference with the instance's wanted volumes
//! (attach order gives `vdb`, `vdc`, …; a volume keeps its device while
//! attached) and their QoS, apply it (hot-plug, unplug, live I/O limits),
//! and report the attached set (`InstanceStatus.volumes`, which the
//! coordinator uses to complete a detach).
//!
//! What is wanted comes from [`crate::state::desired::DesiredInstance::volumes`],
//! resolved by [`crate::state::desired::build`] from the agent's mirror
//! (`Instance.volumes`, `/nubo/v1/volumes/<id>` →
//! `/nubo/v1/volume-types/<name>`): no etcd read here, so volumes are
//! reconciled from the cache while etcd is unreachable, and a changed type
//! wakes the reconcile loop through the watch and reaches attached disks in
//! the pass that follows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nubo_common::model::Qos;
use nubo_common::{InstanceId, VolumeId};
use tracing::{info, info_span, warn, Instrument};

use crate::compute::hypervisor::{AttachedVolume, Hypervisor, VolumeToAttach};
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

/// Guest devices volumes may use, in order (`vda` is the root disk).
pub fn targets() -> impl Iterator<Item = String> {
    (b'b'..=b'z').map(|c| format!("vd{}", c as char))
}

/// The operations that bring an instance's attached volumes to `wanted`:
/// detaches first (freeing devices), then attaches in `wanted` order at
/// the lowest free device, then retunes of attached volumes whose limits
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
    let mut free = targets().filter(|t| !used.contains(t));
    let mut seen = BTreeSet::new();
    for w in wanted {
        if attached.contains(&w.volume) || !seen.insert(w.volume) {
            continue;
        }
        let Some(qos) = w.qos.limits() else {
            continue;
        };
        let Some(target) = free.next() else {
            break;
        };
        ops.push(VolumeOp::Attach(VolumeToAttach {
            volume: w.volume,
            target,
            qos: *qos,
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

/// How long a pass waits for a guest to complete an unplug it requested,
/// so the detach is reported in the same pass.
const UNPLUG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Observes, plans and applies the volumes of one running or stopped
/// instance. Returns the volumes attached afterwards, in attach order
/// (a volume whose unplug the guest has not completed yet still counts),
/// and the first error, if any; `Err` when the volumes could not even be
/// observed (the caller keeps what it reported before).
pub async fn reconcile_instance(
    hv: Arc<dyn Hypervisor>,
    id: InstanceId,
    wanted: Vec<WantedVolume>,
) -> InstanceOutcome {
    let span = info_span!("volumes", instance = %id);
    async move {
        let observed = hv
            .volumes(id)
            .await
            .map_err(|e| format!("list volumes: {e}"))?;
        let ops = plan(&wanted, &observed);
        let mut error = None;
        let mut attached: BTreeSet<VolumeId> = observed.iter().map(|o| o.volume).collect();
        for op in ops {
            let r = match &op {
                VolumeOp::Detach(v) => hv.detach_volume(id, *v).await,
                VolumeOp::Attach(a) => hv.attach_volume(id, a).await,
                VolumeOp::Retune { volume, qos } => hv.set_disk_qos(id, *volume, *qos).await,
            };
            match (&op, r) {
                (VolumeOp::Attach(a), Ok(())) => {
                    info!(volume = %a.volume, target = %a.target, "volume attached");
                    attached.insert(a.volume);
                }
                (VolumeOp::Detach(v), Ok(())) => {
                    info!(volume = %v, "volume detach requested");
                }
                (VolumeOp::Retune { volume, qos }, Ok(())) => {
                    info!(volume = %volume, ?qos, "volume QoS applied");
                }
                (op, Err(e)) => {
                    warn!(?op, error = %e, "volume operation failed");
                    error.get_or_insert_with(|| format!("{op:?}: {e}"));
                }
            }
        }
        let detaching: Vec<VolumeId> = observed
            .iter()
            .map(|o| o.volume)
            .filter(|v| !wanted.iter().any(|w| w.volume == *v))
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
        let mut out: Vec<VolumeId> = wanted
            .iter()
            .map(|w| w.volume)
            .filter(|v| attached.contains(v))
            .collect();
        let rest: Vec<VolumeId> = attached
            .iter()
            .copied()
            .filter(|v| !out.contains(v))
            .collect();
        out.extend(rest);
        Ok((out, error))
    }
    .instrument(span)
    .await
}

/// What [`reconcile_instance`] returns.
pub type InstanceOutcome = Result<(Vec<VolumeId>, Option<String>), String>;

/// How many instances' volumes are reconciled at once.
const MAX_CONCURRENT: usize = 8;

/// Reconciles the volumes of every desired instance that exists (managed)
/// on the hypervisor (`now`); returns the attached volumes per instance.
/// Failures are logged and retried at the next pass; they never fail the
/// compute pass.
pub async fn reconcile_node(
    hv: &Arc<dyn Hypervisor>,
    desired: &crate::state::desired::DesiredNode,
    now: &BTreeMap<InstanceId, crate::compute::hypervisor::ObservedInstance>,
    previous: &BTreeMap<InstanceId, Vec<VolumeId>>,
) -> BTreeMap<InstanceId, Vec<VolumeId>> {
    let mut out: BTreeMap<InstanceId, Vec<VolumeId>> = BTreeMap::new();
    use futures::StreamExt;
    let mut jobs = Vec::new();
    for (id, d) in &desired.instances {
        if !now.get(id).is_some_and(|o| o.managed) {
            continue;
        }
        for w in &d.volumes {
            if let WantedQos::Held(reason) = &w.qos {
                warn!(instance = %id, volume = %w.volume, %reason,
                    "volume QoS unknown; attached disk keeps its limits, attach waits");
            }
        }
        jobs.push((*id, d.volumes.clone()));
    }
    let results: Vec<(InstanceId, InstanceOutcome)> =
        futures::stream::iter(jobs.into_iter().map(|(id, wanted)| {
            let hv = hv.clone();
            async move { (id, reconcile_instance(hv, id, wanted).await) }
        }))
        .buffer_unordered(MAX_CONCURRENT)
        .collect()
        .await;
    for (id, r) in results {
        let attached = match r {
            Ok((attached, _)) => attached,
            Err(e) => {
                warn!(instance = %id, error = %e, "could not observe volumes; keeping the last report");
                previous.get(&id).cloned().unwrap_or_default()
            }
        };
        if !attached.is_empty() {
            out.insert(id, attached);
        }
    }
    out
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
        }
    }

    fn held(n: u8) -> WantedVolume {
        WantedVolume {
            volume: vid(n),
            qos: WantedQos::Held("volume type gold not found".into()),
        }
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
                    qos: Qos::default()
                }),
                VolumeOp::Attach(VolumeToAttach {
                    volume: vid(2),
                    target: "vdc".into(),
                    qos: limits(&want(2, Some(200)))
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
                    qos: Qos::default()
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
                qos: Qos::default()
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
    async fn reconcile_attaches_retunes_and_detaches_on_the_fake_driver() {
        use crate::compute::hypervisor::FakeHypervisor;
        use crate::testutil::desired_instance;
        use nubo_common::model::PowerState;
        let d = desired_instance(PowerState::Running);
        let id = d.id();
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeHypervisor::open(dir.path(), std::time::Duration::ZERO).unwrap());
        let hv: Arc<dyn Hypervisor> = fake.clone();
        hv.create(&d).await.unwrap();

        let r = reconcile_instance(hv.clone(), id, vec![want(1, None), want(2, Some(200))]).await;
        assert_eq!(r, Ok((vec![vid(1), vid(2)], None)));
        // A changed type reaches the attached disk.
        let r = reconcile_instance(hv.clone(), id, vec![want(1, None), want(2, Some(100))]).await;
        assert_eq!(r, Ok((vec![vid(1), vid(2)], None)));
        assert_eq!(
            hv.volumes(id).await.unwrap()[1].qos.write_iops_sec,
            Some(100)
        );
        // Detach: reported gone once the hypervisor no longer shows it.
        let r = reconcile_instance(hv.clone(), id, vec![want(2, Some(100))]).await;
        assert_eq!(r, Ok((vec![vid(2)], None)));
        let left = hv.volumes(id).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].target, "vdc", "a volume keeps its device");
        // An unknown instance cannot be observed: the caller keeps its report.
        let r = reconcile_instance(hv, InstanceId::new_random(), vec![]).await;
        assert!(r.is_err());
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
                qos: Qos::default()
            })]
        );
        // Not attached yet: waits, without taking a device.
        let ops = plan(&[held(1), want(2, None)], &[]);
        assert_eq!(
            ops,
            vec![VolumeOp::Attach(VolumeToAttach {
                volume: vid(2),
                target: "vdb".into(),
                qos: Qos::default()
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
