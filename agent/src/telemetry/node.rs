//! Per-node instrumentation of the agent: capacity and allocation, the
//! reconcile loop (lag, pass durations, failures), nftables applies, DHCP
//! replies, metadata answers, the etcd session and the fence state.
//!
//! Every family is registered in a sub-registry carrying the `node` label.
//! What the libraries count (DHCP replies) is read from their atomics at
//! scrape time by a [`Collector`]; what the agent knows (session, fence
//! phase) is read from in-memory watches: a scrape never waits on etcd or
//! the kernel.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nubo_common::model::{FencePhase, Resources};
use nubo_dhcp::DhcpCounters;
use nubo_metrics::buckets;
use nubo_metrics::prometheus_client::collector::Collector;
use nubo_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use nubo_metrics::prometheus_client::metrics::counter::{ConstCounter, Counter};
use nubo_metrics::prometheus_client::metrics::family::Family;
use nubo_metrics::prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use nubo_metrics::prometheus_client::metrics::histogram::Histogram;
use nubo_metrics::prometheus_client::metrics::MetricType;
use nubo_metrics::prometheus_client::registry::Registry;

use crate::fencing::SessionWatch;
use crate::state::desired::DesiredNode;

/// The label set of a family member: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

const MIB: i64 = 1024 * 1024;
const GIB: i64 = 1024 * MIB;

/// vCPUs, memory bytes and disk bytes of a [`Resources`].
fn triple(r: &Resources) -> [i64; 3] {
    let big = |v: u64, unit: i64| i64::try_from(v).unwrap_or(i64::MAX).saturating_mul(unit);
    [i64::from(r.vcpus), big(r.ram_mb, MIB), big(r.disk_gb, GIB)]
}

/// The resources of every instance desired on the node, summed. Pure.
pub fn allocated(desired: &DesiredNode) -> Resources {
    desired
        .instances
        .values()
        .fold(Resources::default(), |acc, i| Resources {
            vcpus: acc.vcpus.saturating_add(i.resources.vcpus),
            ram_mb: acc.ram_mb.saturating_add(i.resources.ram_mb),
            disk_gb: acc.disk_gb.saturating_add(i.resources.disk_gb),
        })
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Capacity, allocation, reconcile loop and nftables families.
#[derive(Debug)]
pub struct NodeMetrics {
    capacity: [Gauge; 3],
    allocated: [Gauge; 3],
    reconcile_lag: Histogram,
    pass: Family<Labels, Histogram, fn() -> Histogram>,
    failures: Family<Labels, Counter>,
    last_pass: Gauge<f64, AtomicU64>,
    nft_apply: Histogram,
    nft_failures: Counter,
}

fn pass_histogram() -> Histogram {
    Histogram::new(buckets::pass_seconds())
}

impl NodeMetrics {
    /// Registers the families in `reg` (the node-labelled sub-registry).
    pub fn register(reg: &mut Registry) -> Self {
        let m = Self {
            capacity: Default::default(),
            allocated: Default::default(),
            reconcile_lag: pass_histogram(),
            pass: Family::new_with_constructor(pass_histogram),
            failures: Family::default(),
            last_pass: Gauge::default(),
            nft_apply: pass_histogram(),
            nft_failures: Counter::default(),
        };
        let what = [
            ("vcpus", "vCPUs"),
            ("memory_bytes", "memory in bytes"),
            ("disk_bytes", "disk in bytes"),
        ];
        for (i, (name, help)) in what.iter().enumerate() {
            reg.register(
                format!("node_capacity_{name}"),
                format!("The node's capacity: {help}"),
                m.capacity[i].clone(),
            );
            reg.register(
                format!("node_allocated_{name}"),
                format!("Allocated on the node (instances desired here): {help}"),
                m.allocated[i].clone(),
            );
        }
        reg.register(
            "agent_reconcile_lag_seconds",
            "From a desired-state change seen by the etcd mirror to the end of the pass that applied it",
            m.reconcile_lag.clone(),
        );
        reg.register(
            "agent_reconcile_pass_seconds",
            "Duration of one subsystem's observe, plan and apply",
            m.pass.clone(),
        );
        reg.register(
            "agent_reconcile_failures",
            "Subsystem passes that failed (retried)",
            m.failures.clone(),
        );
        reg.register(
            "agent_last_reconcile_timestamp_seconds",
            "Unix time the last reconcile pass over every subsystem ended",
            m.last_pass.clone(),
        );
        reg.register(
            "agent_nftables_apply_seconds",
            "Duration of one atomic nftables transaction",
            m.nft_apply.clone(),
        );
        reg.register(
            "agent_nftables_apply_failures",
            "nftables transactions that failed",
            m.nft_failures.clone(),
        );
        m
    }

    /// Sets the capacity gauges.
    pub fn set_capacity(&self, r: &Resources) {
        for (g, v) in self.capacity.iter().zip(triple(r)) {
            g.set(v);
        }
    }

    /// Sets the allocation gauges from the instances desired on the node.
    pub fn set_allocated(&self, desired: &DesiredNode) {
        for (g, v) in self.allocated.iter().zip(triple(&allocated(desired))) {
            g.set(v);
        }
    }

    /// One subsystem's part of a pass took `elapsed` and succeeded or not.
    pub fn subsystem_pass(&self, subsystem: &'static str, elapsed: Duration, ok: bool) {
        let labels = vec![("subsystem", subsystem.to_string())];
        self.pass
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        // Created at 0 on the first pass, so that rates over it exist.
        let failures = self.failures.get_or_create(&labels);
        if !ok {
            failures.inc();
        }
    }

    /// A full pass ended; `lag` is the time since the first change it
    /// applied was seen (`None`: a periodic pass).
    pub fn pass_done(&self, lag: Option<Duration>) {
        if let Some(lag) = lag {
            self.reconcile_lag.observe(lag.as_secs_f64());
        }
        self.last_pass.set(unix_now());
    }

    /// An nftables transaction took `elapsed` and succeeded or not.
    pub fn nft_applied(&self, elapsed: Duration, ok: bool) {
        self.nft_apply.observe(elapsed.as_secs_f64());
        if !ok {
            self.nft_failures.inc();
        }
    }
}

/// The DHCP replies of every network's server, by network id: the agent
/// hands each server the [`DhcpCounters`] of its network
/// ([`DhcpReplies::counters`]), which outlive restarts of the server; the
/// collector reads them on each scrape.
#[derive(Debug, Default)]
pub struct DhcpReplies {
    by_network: Mutex<BTreeMap<String, Arc<DhcpCounters>>>,
}

impl DhcpReplies {
    /// The counters of `network` (created on first use).
    pub fn counters(&self, network: &str) -> Arc<DhcpCounters> {
        self.by_network
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(network.to_string())
            .or_default()
            .clone()
    }
}

/// The collector of [`DhcpReplies`].
#[derive(Debug)]
struct DhcpCollector(Arc<DhcpReplies>);

impl Collector for DhcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot: Vec<(String, nubo_dhcp::DhcpStats)> = self
            .0
            .by_network
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(n, c)| (n.clone(), c.snapshot()))
            .collect();
        let mut family = encoder.encode_descriptor(
            "agent_dhcp_replies",
            "DHCP replies sent by the node's responders, by network and message type",
            None,
            MetricType::Counter,
        )?;
        for (network, s) in &snapshot {
            for (kind, v) in [("offer", s.offers), ("ack", s.acks), ("nak", s.naks)] {
                let labels: Labels = vec![("network", network.clone()), ("type", kind.into())];
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Counts the metadata service's answers by HTTP status.
#[derive(Debug, Default)]
pub struct MetadataRequests {
    by_code: Family<Labels, Counter>,
}

impl nubo_metadata::RequestObserver for MetadataRequests {
    fn answered(&self, _bridge: &str, status: http::StatusCode) {
        self.by_code
            .get_or_create(&vec![("code", status.as_u16().to_string())])
            .inc();
    }
}

/// The etcd session and fence state, read from the session watch at
/// scrape time (no etcd call).
struct SessionCollector(SessionWatch);

impl std::fmt::Debug for SessionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCollector")
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    members: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in members {
        ConstGauge::new(*v).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SessionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.0.status();
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        gauge(
            &mut encoder,
            "agent_etcd_session_up",
            "1 while the liveness lease's keep-alives are acknowledged",
            &[(vec![], flag(status.healthy))],
        )?;
        if let Some(ms) = status.last_ack_age_ms {
            gauge(
                &mut encoder,
                "agent_lease_age_seconds",
                "Seconds since the last acknowledged keep-alive of the liveness lease was sent",
                &[(vec![], ms as f64 / 1000.0)],
            )?;
        }
        gauge(
            &mut encoder,
            "agent_fenced",
            "1 while the node is self-fenced (instances frozen, nothing boots)",
            &[(vec![], flag(status.phase == FencePhase::Fenced))],
        )?;
        let phases = [
            (FencePhase::Normal, "normal"),
            (FencePhase::Held, "held"),
            (FencePhase::Fenced, "fenced"),
            (FencePhase::Recovering, "recovering"),
        ];
        let members: Vec<(Labels, f64)> = phases
            .iter()
            .map(|(p, name)| (vec![("phase", name.to_string())], flag(status.phase == *p)))
            .collect();
        gauge(
            &mut encoder,
            "agent_fence_phase",
            "1 for the node's current self-fencing phase",
            &members,
        )
    }
}

/// Registers the DHCP collector and the metadata counter family in `reg`.
pub(super) fn register_servers(reg: &mut Registry) -> (Arc<DhcpReplies>, Arc<MetadataRequests>) {
    let dhcp = Arc::new(DhcpReplies::default());
    reg.register_collector(Box::new(DhcpCollector(dhcp.clone())));
    let metadata = Arc::new(MetadataRequests::default());
    reg.register(
        "agent_metadata_requests",
        "Metadata requests answered, by HTTP status",
        metadata.by_code.clone(),
    );
    (dhcp, metadata)
}

/// Registers the session and fence collector in `reg`.
pub(super) fn register_session(reg: &mut Registry, session: SessionWatch) {
    reg.register_collector(Box::new(SessionCollector(session)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    #[test]
    fn allocation_sums_every_desired_instance() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        w.instance_on(&n1, net, &[]);
        w.instance_on(&n1, net, &[]);
        let d = crate::state::desired::build(&w.cache, &n1, 1500);
        let one = d.instances.values().next().unwrap().resources;
        let sum = allocated(&d);
        assert_eq!(sum.vcpus, 2 * one.vcpus);
        assert_eq!(sum.ram_mb, 2 * one.ram_mb);
        assert_eq!(sum.disk_gb, 2 * one.disk_gb);
        assert!(sum.vcpus > 0);
        assert_eq!(allocated(&DesiredNode::default()), Resources::default());
        assert_eq!(
            triple(&sum),
            [
                i64::from(sum.vcpus),
                sum.ram_mb as i64 * MIB,
                sum.disk_gb as i64 * GIB
            ]
        );
    }
}
