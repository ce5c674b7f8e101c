//! The cluster gauges the alert rules need, exported by the leader only (so
//! that a query over every coordinator sees each node once): node states,
//! capacity and allocation per node, quota limits and use per project,
//! Ceph health. A background task (`background::cluster_gauges`) takes a
//! snapshot every [`INTERVAL`] (the node view is in memory; quotas are two etcd range
//! reads; Ceph health one monitor command, bounded by a timeout); a scrape
//! encodes the latest snapshot and never waits on etcd or Ceph. A follower,
//! or a leader whose last collection is older than [`MAX_AGE`], exports
//! none of these series.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nubo_common::model::{Quota, QuotaResource, QuotaUsage, Resources};
use nubo_metrics::prometheus_client::collector::Collector;
use nubo_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use nubo_metrics::prometheus_client::metrics::gauge::ConstGauge;
use nubo_metrics::prometheus_client::metrics::MetricType;

/// How often the leader collects.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// A snapshot older than this is not exported (collection stuck).
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Longest a Ceph health request may take.
pub const CEPH_TIMEOUT: Duration = Duration::from_secs(5);

/// A node's state for `nubo_cluster_node_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStateName {
    /// Its alive key exists and it is not fenced.
    Alive,
    /// Its alive key is gone (lease expired) and it is not fenced yet.
    Dead,
    /// Fenced or evacuated by failure handling.
    Fenced,
}

impl NodeStateName {
    /// Every state, in label order.
    pub const ALL: [NodeStateName; 3] = [Self::Alive, Self::Dead, Self::Fenced];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::Fenced => "fenced",
        }
    }
}

/// One node in a snapshot.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Node name.
    pub node: String,
    /// Its state.
    pub state: NodeStateName,
    /// Its capacity (as registered by its agent).
    pub capacity: Resources,
    /// What placements allocated on it.
    pub allocated: Resources,
}

/// One project's quota in a snapshot.
#[derive(Debug, Clone)]
pub struct QuotaRow {
    /// Project id.
    pub project: String,
    /// Effective limits (own, else the stored default, else the cloud's).
    pub limit: Quota,
    /// Usage.
    pub used: QuotaUsage,
}

/// The Ceph health states exported (state set).
pub const CEPH_STATES: [&str; 4] = ["HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR", "unreachable"];

/// What the leader collected.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Nodes with a registration record.
    pub nodes: Vec<NodeRow>,
    /// Projects with a usage record.
    pub quotas: Vec<QuotaRow>,
    /// Ceph's `health` status (one of [`CEPH_STATES`]) when Ceph is
    /// configured.
    pub ceph: Option<&'static str>,
    /// Wall-clock time of the collection, seconds since the epoch.
    pub collected_unix: f64,
}

/// The latest snapshot, encoded at each scrape.
#[derive(Debug, Default)]
pub struct ClusterGauges {
    latest: RwLock<Option<(Instant, Arc<Snapshot>)>>,
}

impl ClusterGauges {
    /// Replaces the snapshot (`None`: export nothing, e.g. on a follower).
    pub fn set(&self, s: Option<Snapshot>) {
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) =
            s.map(|s| (Instant::now(), Arc::new(s)));
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        let g = self.latest.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .filter(|(at, _)| at.elapsed() <= MAX_AGE)
            .map(|(_, s)| s.clone())
    }
}

fn resources(r: &Resources) -> [(&'static str, i64); 3] {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    [
        ("vcpus", i64::from(r.vcpus)),
        ("ram_bytes", i(r.ram_mb.saturating_mul(MIB))),
        ("disk_bytes", i(r.disk_gb.saturating_mul(GIB))),
    ]
}

fn gauge_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Vec<(&'a str, &'a str)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ClusterGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.current() else {
            return Ok(());
        };
        let ts = ConstGauge::new(s.collected_unix);
        ts.encode(encoder.encode_descriptor(
            "cluster_collected_timestamp_seconds",
            "When the leader collected the cluster gauges (Unix time)",
            None,
            ts.metric_type(),
        )?)?;
        gauge_family(
            &mut encoder,
            "cluster_node_state",
            "Node state as a state set: 1 for the node's state (alive, dead, fenced), 0 for the others",
            s.nodes.iter().flat_map(|n| {
                NodeStateName::ALL.into_iter().map(move |st| {
                    (
                        vec![("node", n.node.as_str()), ("state", st.as_str())],
                        i64::from(n.state == st),
                    )
                })
            }),
        )?;
        gauge_family(
            &mut encoder,
            "cluster_node_capacity",
            "Node capacity by resource (vcpus, ram_bytes, disk_bytes), before overcommit ratios",
            s.nodes.iter().flat_map(|n| {
                resources(&n.capacity)
                    .into_iter()
                    .map(move |(r, v)| (vec![("node", n.node.as_str()), ("resource", r)], v))
            }),
        )?;
        gauge_family(
            &mut encoder,
            "cluster_node_allocated",
            "Resources allocated on the node by placements (vcpus, ram_bytes, disk_bytes)",
            s.nodes.iter().flat_map(|n| {
                resources(&n.allocated)
                    .into_iter()
                    .map(move |(r, v)| (vec![("node", n.node.as_str()), ("resource", r)], v))
            }),
        )?;
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauge_family(
            &mut encoder,
            "cluster_quota_limit",
            "A project's quota limit by resource (absent: unlimited)",
            s.quotas.iter().flat_map(|q| {
                QuotaResource::ALL.into_iter().filter_map(move |r| {
                    q.limit.get(r).map(|l| {
                        (
                            vec![("project", q.project.as_str()), ("resource", r.as_str())],
                            i(l),
                        )
                    })
                })
            }),
        )?;
        gauge_family(
            &mut encoder,
            "cluster_quota_used",
            "A project's quota use by resource",
            s.quotas.iter().flat_map(|q| {
                QuotaResource::ALL.into_iter().map(move |r| {
                    (
                        vec![("project", q.project.as_str()), ("resource", r.as_str())],
                        i(q.used.get(r)),
                    )
                })
            }),
        )?;
        if let Some(status) = s.ceph {
            gauge_family(
                &mut encoder,
                "cluster_ceph_health",
                "Ceph health as a state set (HEALTH_OK, HEALTH_WARN, HEALTH_ERR, unreachable)",
                CEPH_STATES
                    .into_iter()
                    .map(|st| (vec![("status", st)], i64::from(st == status))),
            )?;
        }
        Ok(())
    }
}

/// The `status` of `ceph health -f json`, as one of [`CEPH_STATES`].
pub fn parse_ceph_status(json: &[u8]) -> &'static str {
    let status = serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("status")?.as_str().map(str::to_string));
    match status.as_deref() {
        Some("HEALTH_OK") => "HEALTH_OK",
        Some("HEALTH_WARN") => "HEALTH_WARN",
        Some("HEALTH_ERR") => "HEALTH_ERR",
        _ => "unreachable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_metrics::prometheus_client::registry::Registry;

    fn encode(g: Arc<ClusterGauges>) -> String {
        let mut r = Registry::with_prefix("nubo");
        r.register_collector(Box::new(g));
        let mut out = String::new();
        nubo_metrics::prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn a_snapshot_is_encoded_as_state_sets_and_gauges_and_none_is_nothing() {
        let g = Arc::new(ClusterGauges::default());
        assert!(
            !encode(g.clone()).contains("nubo_cluster"),
            "nothing before a collection"
        );
        let mut limit = Quota::UNLIMITED;
        limit.vcpus = Some(8);
        g.set(Some(Snapshot {
            nodes: vec![NodeRow {
                node: "n1".into(),
                state: NodeStateName::Dead,
                capacity: Resources {
                    vcpus: 4,
                    ram_mb: 1024,
                    disk_gb: 1,
                },
                allocated: Resources {
                    vcpus: 2,
                    ram_mb: 512,
                    disk_gb: 0,
                },
            }],
            quotas: vec![QuotaRow {
                project: "p1".into(),
                limit,
                used: QuotaUsage {
                    vcpus: 6,
                    ..Default::default()
                },
            }],
            ceph: Some("HEALTH_WARN"),
            collected_unix: 1.0,
        }));
        let text = encode(g.clone());
        for line in [
            r#"nubo_cluster_node_state{node="n1",state="dead"} 1"#,
            r#"nubo_cluster_node_state{node="n1",state="alive"} 0"#,
            r#"nubo_cluster_node_capacity{node="n1",resource="ram_bytes"} 1073741824"#,
            r#"nubo_cluster_node_allocated{node="n1",resource="vcpus"} 2"#,
            r#"nubo_cluster_quota_limit{project="p1",resource="vcpus"} 8"#,
            r#"nubo_cluster_quota_used{project="p1",resource="vcpus"} 6"#,
            r#"nubo_cluster_ceph_health{status="HEALTH_WARN"} 1"#,
            r#"nubo_cluster_ceph_health{status="HEALTH_OK"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(
            !text.contains(r#"nubo_cluster_quota_limit{project="p1",resource="instances"}"#),
            "an unlimited resource has no limit series:\n{text}"
        );
        g.set(None);
        assert!(!encode(g).contains("nubo_cluster"));
    }

    #[test]
    fn ceph_status_is_parsed_and_anything_else_is_unreachable() {
        assert_eq!(
            parse_ceph_status(br#"{"status":"HEALTH_OK","checks":{}}"#),
            "HEALTH_OK"
        );
        assert_eq!(
            parse_ceph_status(br#"{"status":"HEALTH_ERR"}"#),
            "HEALTH_ERR"
        );
        assert_eq!(parse_ceph_status(b"not json"), "unreachable");
        assert_eq!(
            parse_ceph_status(br#"{"status":"HEALTH_WHAT"}"#),
            "unreachable"
        );
    }
}
