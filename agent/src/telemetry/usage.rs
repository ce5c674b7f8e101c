//! The node's [`ObservedUsage`] (real CPU, memory and disk of the node;
//! CPU %, memory and disk and network rates of each instance), computed
//! from two successive readings of [`super::vm_stats`] and published to
//! etcd once per period for `nubo server show` / `nubo node show`
//! (`keys::node_observed_usage`, on the agent's liveness lease so that it
//! vanishes with the node).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::PutOptions;
use nubo_common::keys;
use nubo_common::model::{self, InstanceUsage, ObservedUsage};
use nubo_common::NodeName;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::node_usage::HostSample;
use super::reading::{Reading, VmSample};
use crate::fencing::rules::LeaseAck;

/// Per-second rate of a counter that went from `a` to `b` in `secs`
/// (a counter that went backwards, e.g. a guest rebooted in a new QEMU,
/// counts from zero). Pure.
fn rate(a: u64, b: u64, secs: f64) -> f64 {
    let delta = if b >= a { b - a } else { b };
    delta as f64 / secs
}

/// One instance's usage between two samples `secs` apart. Pure.
pub fn instance_usage(prev: &VmSample, cur: &VmSample, secs: f64) -> InstanceUsage {
    let (p, c) = (&prev.stats, &cur.stats);
    let sum = |s: &crate::compute::hypervisor::InstanceStats,
               f: fn(&crate::compute::hypervisor::DiskCounters) -> u64| {
        s.disks.iter().map(f).sum::<u64>()
    };
    let nsum = |s: &crate::compute::hypervisor::InstanceStats,
                f: fn(&crate::compute::hypervisor::NicCounters) -> u64| {
        s.nics.iter().map(f).sum::<u64>()
    };
    InstanceUsage {
        cpu_percent: p
            .cpu_ns
            .zip(c.cpu_ns)
            .map(|(a, b)| rate(a, b, secs) / 1e9 * 100.0),
        memory_used_bytes: c.memory_used_bytes,
        memory_available_bytes: c.memory_available_bytes,
        disk_read_bytes_per_sec: rate(sum(p, |d| d.read_bytes), sum(c, |d| d.read_bytes), secs),
        disk_write_bytes_per_sec: rate(sum(p, |d| d.write_bytes), sum(c, |d| d.write_bytes), secs),
        net_rx_bytes_per_sec: rate(nsum(p, |n| n.rx_bytes), nsum(c, |n| n.rx_bytes), secs),
        net_tx_bytes_per_sec: rate(nsum(p, |n| n.tx_bytes), nsum(c, |n| n.tx_bytes), secs),
    }
}

/// The usage record of a period: the node's from `host` (CPU busy ratio
/// over the period `period`), each instance's from the two VM readings
/// (instances in both; none when either is missing). Pure.
pub fn observed(
    host: &HostSample,
    cpu_ratio: Option<f64>,
    period: Duration,
    prev: Option<&Reading>,
    cur: Option<&Reading>,
) -> ObservedUsage {
    let mut instances = BTreeMap::new();
    if let (Some(p), Some(c)) = (prev, cur) {
        let secs = c.at.saturating_duration_since(p.at).as_secs_f64();
        if secs > 0.0 {
            let before: BTreeMap<&str, &VmSample> =
                p.vms.iter().map(|v| (v.id.as_str(), v)).collect();
            for v in &c.vms {
                if let (Some(b), Ok(id)) = (before.get(v.id.as_str()), v.id.parse()) {
                    instances.insert(id, instance_usage(b, v, secs));
                }
            }
        }
    }
    ObservedUsage {
        at: cur.map(|c| c.wall).unwrap_or_else(model::now),
        period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
        cpu_percent: cpu_ratio.map(|r| r * 100.0),
        cpus: host.cpus,
        memory_used_bytes: host.memory_used_bytes,
        memory_total_bytes: host.memory_total_bytes,
        disk_used_bytes: host.disk_used_bytes,
        disk_total_bytes: host.disk_total_bytes,
        instances,
    }
}

/// Writes each new [`ObservedUsage`] to `keys::node_observed_usage(node)`
/// on the current liveness lease (skipped until the node registered); one
/// put per period, bounded by `timeout`. Runs until `usage` closes.
pub async fn publish(
    etcd: nubo_store::Etcd,
    node: NodeName,
    mut usage: watch::Receiver<Option<ObservedUsage>>,
    lease: watch::Receiver<Option<LeaseAck>>,
    timeout: Duration,
) {
    let key = keys::node_observed_usage(&node);
    let mut failing = false;
    while usage.changed().await.is_ok() {
        let Some(u) = usage.borrow_and_update().clone() else {
            continue;
        };
        let Some(lease) = lease.borrow().map(|a| a.lease) else {
            debug!(node = %node, "not registered yet; usage not published");
            continue;
        };
        let put = etcd.put(
            key.as_str(),
            model::encode(&u),
            Some(PutOptions::new().with_lease(lease)),
        );
        match tokio::time::timeout(timeout, put).await {
            Ok(Ok(_)) => failing = false,
            Ok(Err(e)) if !std::mem::replace(&mut failing, true) => {
                warn!(node = %node, error = %e, "publishing the node's usage failed")
            }
            Err(_) if !std::mem::replace(&mut failing, true) => {
                warn!(node = %node, ?timeout, "publishing the node's usage timed out")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::hypervisor::{DiskCounters, InstanceStats, NicCounters};
    use nubo_common::InstanceId;
    use std::path::PathBuf;
    use std::time::Instant;

    fn vm(id: InstanceId, cpu_ns: u64, read: u64, rx: u64) -> VmSample {
        VmSample {
            id: id.to_string(),
            name: "n".into(),
            project: "p".into(),
            stats: InstanceStats {
                id,
                cpu_ns: Some(cpu_ns),
                memory_used_bytes: Some(5),
                memory_available_bytes: Some(10),
                disks: vec![
                    DiskCounters {
                        target: "vda".into(),
                        read_bytes: read,
                        write_bytes: 2 * read,
                        ..DiskCounters::default()
                    },
                    DiskCounters {
                        target: "vdb".into(),
                        read_bytes: read,
                        ..DiskCounters::default()
                    },
                ],
                nics: vec![NicCounters {
                    tap: "t".into(),
                    rx_bytes: rx,
                    tx_bytes: rx / 2,
                    ..NicCounters::default()
                }],
            },
            ports: vec![String::new()],
        }
    }

    fn host() -> HostSample {
        HostSample {
            cpu: None,
            cpu_busy_seconds: None,
            cpus: 4,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_path: PathBuf::from("/"),
            disk_used_bytes: 3,
            disk_total_bytes: 4,
        }
    }

    #[test]
    fn rates_come_from_two_readings() {
        let (a, b, c) = (
            InstanceId::new_random(),
            InstanceId::new_random(),
            InstanceId::new_random(),
        );
        let t0 = Instant::now();
        let prev = Reading {
            at: t0,
            wall: model::now(),
            vms: vec![vm(a, 1_000_000_000, 1000, 100), vm(b, 0, 0, 0)],
        };
        let cur = Reading {
            at: t0 + Duration::from_secs(2),
            wall: model::now(),
            // a: 1 s of CPU in 2 s; b deleted; c new.
            vms: vec![vm(a, 2_000_000_000, 3000, 500), vm(c, 5, 5, 5)],
        };
        let u = observed(
            &host(),
            Some(0.5),
            Duration::from_secs(2),
            Some(&prev),
            Some(&cur),
        );
        assert_eq!(u.cpu_percent, Some(50.0));
        assert_eq!((u.cpus, u.memory_used_bytes, u.disk_total_bytes), (4, 1, 4));
        assert_eq!(u.period_ms, 2000);
        assert_eq!(u.instances.keys().collect::<Vec<_>>(), vec![&a]);
        let ia = &u.instances[&a];
        assert_eq!(ia.cpu_percent, Some(50.0));
        // Two disks: (2000 + 2000) bytes read in 2 s.
        assert_eq!(ia.disk_read_bytes_per_sec, 2000.0);
        assert_eq!(ia.disk_write_bytes_per_sec, 2000.0);
        assert_eq!(ia.net_rx_bytes_per_sec, 200.0);
        assert_eq!(ia.net_tx_bytes_per_sec, 100.0);
        assert_eq!(
            (ia.memory_used_bytes, ia.memory_available_bytes),
            (Some(5), Some(10))
        );
        // Without a previous reading: node figures only.
        let u = observed(&host(), None, Duration::from_secs(2), None, Some(&cur));
        assert!(u.instances.is_empty() && u.cpu_percent.is_none());
    }

    #[test]
    fn a_counter_reset_counts_from_zero() {
        assert_eq!(rate(100, 40, 2.0), 20.0);
        assert_eq!(rate(100, 140, 2.0), 20.0);
    }
}
