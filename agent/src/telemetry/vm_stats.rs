//! Per-VM usage metrics and the node's real usage, collected in the
//! background and encoded from the latest snapshot.
//!
//! Once per period ([`crate::config::AgentConfig::usage_interval`], 10 s by
//! default) the collector takes one [`Hypervisor::stats`] call (libvirt: one
//! `virConnectGetAllDomainStats`), joins the counters with the node's
//! instances from the etcd mirror ([`vm_meta`]: name, project, port of each
//! tap) and reads the host's CPU, memory and disk
//! ([`super::node_usage`]). The result replaces the snapshot that
//! [`VmStatsCollector`] encodes on each scrape: a scrape never waits on
//! libvirt. A VM that is gone (deleted, or no longer this node's) is absent
//! from the next snapshot, so its series disappear. When the call fails or
//! times out (libvirtd restarting), the last VM values stay, with
//! `nubo_vm_stats_up 0` and a growing `nubo_vm_stats_age_seconds`.
//!
//! Each pair of successive readings also gives the rates of
//! [`ObservedUsage`] ([`super::usage`]), published to etcd for
//! `nubo server show` / `nubo node show`.
//!
//! Names, types and labels: `docs/metrics.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nubo_common::model::{self, ObservedUsage};
use nubo_common::{InstanceId, NodeName, PortId};
use nubo_metrics::prometheus_client::collector::Collector;
use nubo_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use nubo_metrics::prometheus_client::metrics::counter::ConstCounter;
use nubo_metrics::prometheus_client::metrics::gauge::ConstGauge;
use nubo_metrics::prometheus_client::metrics::histogram::Histogram;
use nubo_metrics::prometheus_client::metrics::MetricType;
use nubo_metrics::prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::node_usage::{self, HostSample};
pub use super::reading::{Reading, VmSample};
use crate::compute::hypervisor::{DiskCounters, Hypervisor, InstanceStats, NicCounters};
use crate::state::cache::Cache;

/// What the metrics say about an instance besides its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmMeta {
    /// Display name.
    pub name: String,
    /// Owner.
    pub project: String,
    /// The port of each tap.
    pub ports: BTreeMap<String, PortId>,
}

/// The instances of this node (the spec copies the mirror holds) with
/// their names, projects and taps. Pure.
pub fn vm_meta(cache: &Cache) -> BTreeMap<InstanceId, VmMeta> {
    cache
        .instances
        .values()
        .map(|i| {
            let ports = i
                .ports
                .iter()
                .filter_map(|p| cache.ports.get(p))
                .map(|p| (p.tap_name(), p.id))
                .collect();
            (
                i.id,
                VmMeta {
                    name: i.name.clone(),
                    project: i.project.to_string(),
                    ports,
                },
            )
        })
        .collect()
}

/// Joins the hypervisor's counters with the node's instances; counters of
/// an instance that is not (or no longer) this node's are dropped. Pure.
pub fn join(stats: Vec<InstanceStats>, meta: &BTreeMap<InstanceId, VmMeta>) -> Vec<VmSample> {
    let mut out: Vec<VmSample> = stats
        .into_iter()
        .filter_map(|s| {
            let m = meta.get(&s.id)?;
            let ports = s
                .nics
                .iter()
                .map(|n| {
                    m.ports
                        .get(&n.tap)
                        .map(|p| p.to_string())
                        .unwrap_or_default()
                })
                .collect();
            Some(VmSample {
                id: s.id.to_string(),
                name: m.name.clone(),
                project: m.project.clone(),
                stats: s,
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// What a scrape encodes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Whether the latest collection succeeded.
    pub up: bool,
    /// The latest successful reading (kept while collections fail).
    pub reading: Option<Arc<Reading>>,
    /// The latest host reading.
    pub host: Option<HostSample>,
    /// Busy CPU fraction of the host over the last period.
    pub cpu_ratio: Option<f64>,
}

#[derive(Debug)]
struct Shared {
    node: String,
    snapshot: RwLock<Arc<Snapshot>>,
    collection: Histogram,
}

/// The collector of the per-VM and node usage families; cheap to clone.
#[derive(Debug, Clone)]
pub struct VmStatsCollector(Arc<Shared>);

impl VmStatsCollector {
    /// A collector for `node` with an empty snapshot (`nubo_vm_stats_up 0`
    /// until the first collection).
    pub fn new(node: &NodeName) -> Self {
        VmStatsCollector(Arc::new(Shared {
            node: node.to_string(),
            snapshot: RwLock::new(Arc::new(Snapshot {
                up: false,
                reading: None,
                host: None,
                cpu_ratio: None,
            })),
            collection: Histogram::new(nubo_metrics::buckets::pass_seconds()),
        }))
    }

    /// Registers a collector for `node` in `registry` and returns a handle
    /// to feed it.
    pub fn register(registry: &mut Registry, node: &NodeName) -> Self {
        let c = Self::new(node);
        registry.register_collector(Box::new(c.clone()));
        c
    }

    /// The snapshot scrapes encode now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.0.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the snapshot.
    pub fn publish(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        match self.0.snapshot.write() {
            Ok(mut s) => *s = snap,
            Err(p) => *p.into_inner() = snap,
        }
    }

    /// Records the duration of one collection.
    pub fn observe_collection(&self, d: Duration) {
        self.0.collection.observe(d.as_secs_f64());
    }
}

/// Encodes one family: a descriptor, then one sample per `(labels, metric)`.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut f = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in samples {
        m.encode(f.encode_family(&labels)?)?;
    }
    Ok(())
}

type VmLabels<'a> = [(&'static str, &'a str); 4];

fn vm_labels<'a>(vm: &'a VmSample, node: &'a str) -> VmLabels<'a> {
    [
        ("instance", vm.id.as_str()),
        ("name", vm.name.as_str()),
        ("project", vm.project.as_str()),
        ("node", node),
    ]
}

/// A counter family of a device: name, help, and the field it reads.
type CounterFamily<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The per-VM gauge families: name, help, and the value they read.
type GaugeFamily = (
    &'static str,
    &'static str,
    fn(&InstanceStats) -> Option<u64>,
);

const VM_GAUGES: [GaugeFamily; 2] = [
    (
        "vm_memory_used_bytes",
        "Memory in use by the VM (guest-reported, else QEMU's resident memory)",
        |s| s.memory_used_bytes,
    ),
    ("vm_memory_available_bytes", "Memory the VM has", |s| {
        s.memory_available_bytes
    }),
];

/// The per-VM counter families of disks.
const DISK_COUNTERS: [CounterFamily<DiskCounters>; 4] = [
    (
        "vm_disk_read_bytes",
        "Bytes read by the VM from a disk",
        |d| d.read_bytes,
    ),
    (
        "vm_disk_write_bytes",
        "Bytes written by the VM to a disk",
        |d| d.write_bytes,
    ),
    (
        "vm_disk_read_ops",
        "Read operations of the VM on a disk",
        |d| d.read_ops,
    ),
    (
        "vm_disk_write_ops",
        "Write operations of the VM on a disk",
        |d| d.write_ops,
    ),
];

/// The per-VM counter families of ports, seen from the VM.
const NIC_COUNTERS: [CounterFamily<NicCounters>; 6] = [
    (
        "vm_network_receive_bytes",
        "Bytes received by the VM on a port",
        |n| n.rx_bytes,
    ),
    (
        "vm_network_transmit_bytes",
        "Bytes sent by the VM on a port",
        |n| n.tx_bytes,
    ),
    (
        "vm_network_receive_packets",
        "Packets received by the VM on a port",
        |n| n.rx_packets,
    ),
    (
        "vm_network_transmit_packets",
        "Packets sent by the VM on a port",
        |n| n.tx_packets,
    ),
    (
        "vm_network_receive_drops",
        "Packets to the VM dropped on a port",
        |n| n.rx_drops,
    ),
    (
        "vm_network_transmit_drops",
        "Packets from the VM dropped on a port",
        |n| n.tx_drops,
    ),
];

impl Collector for VmStatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let snap = self.snapshot();
        let node = self.0.node.as_str();
        let nl = [("node", node)];
        family(
            &mut enc,
            "vm_stats_up",
            "1 when the latest per-VM statistics collection succeeded, 0 while the hypervisor is unreachable (values are then stale)",
            MetricType::Gauge,
            [(nl, ConstGauge::new(i64::from(snap.up)))],
        )?;
        if let Some(r) = &snap.reading {
            family(
                &mut enc,
                "vm_stats_age_seconds",
                "Age of the per-VM values served (time since the last successful collection)",
                MetricType::Gauge,
                [(nl, ConstGauge::new(r.at.elapsed().as_secs_f64()))],
            )?;
        }
        {
            let mut f = enc.encode_descriptor(
                "vm_stats_collection_seconds",
                "Duration of one per-VM statistics collection",
                None,
                MetricType::Histogram,
            )?;
            self.0.collection.encode(f.encode_family(&nl)?)?;
        }
        let vms: &[VmSample] = snap
            .reading
            .as_ref()
            .map(|r| r.vms.as_slice())
            .unwrap_or(&[]);
        family(
            &mut enc,
            "vm_cpu_seconds",
            "CPU time consumed by the VM",
            MetricType::Counter,
            vms.iter().filter_map(|v| {
                let ns = v.stats.cpu_ns?;
                Some((vm_labels(v, node), ConstCounter::new(ns as f64 / 1e9)))
            }),
        )?;
        for (name, help, field) in VM_GAUGES {
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                vms.iter()
                    .filter_map(|v| Some((vm_labels(v, node), ConstGauge::new(field(&v.stats)?)))),
            )?;
        }
        for (name, help, field) in DISK_COUNTERS {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                vms.iter().flat_map(|v| {
                    v.stats.disks.iter().map(move |d| {
                        let [a, b, c, e] = vm_labels(v, node);
                        (
                            [a, b, c, e, ("disk", d.target.as_str())],
                            ConstCounter::new(field(d)),
                        )
                    })
                }),
            )?;
        }
        for (name, help, field) in NIC_COUNTERS {
            family(
                &mut enc,
                name,
                help,
                MetricType::Counter,
                vms.iter().flat_map(|v| {
                    v.stats.nics.iter().zip(&v.ports).map(move |(n, port)| {
                        let [a, b, c, e] = vm_labels(v, node);
                        (
                            [a, b, c, e, ("port", port.as_str()), ("tap", n.tap.as_str())],
                            ConstCounter::new(field(n)),
                        )
                    })
                }),
            )?;
        }
        let Some(h) = &snap.host else {
            return Ok(());
        };
        if let Some(busy) = h.cpu_busy_seconds {
            family(
                &mut enc,
                "node_cpu_busy_seconds",
                "Busy CPU time of the host, all CPUs together",
                MetricType::Counter,
                [(nl, ConstCounter::new(busy))],
            )?;
        }
        if let Some(ratio) = snap.cpu_ratio {
            family(
                &mut enc,
                "node_cpu_usage_ratio",
                "Busy fraction (0-1) of all the host's CPUs over the last collection period",
                MetricType::Gauge,
                [(nl, ConstGauge::new(ratio))],
            )?;
        }
        let path = h.disk_path.to_string_lossy();
        let gauges = [
            (
                "node_memory_used_bytes",
                "Memory in use on the host (total - available)",
                h.memory_used_bytes,
                None,
            ),
            (
                "node_memory_total_bytes",
                "Memory installed on the host",
                h.memory_total_bytes,
                None,
            ),
            (
                "node_disk_used_bytes",
                "Used bytes of the filesystem holding the agent's instance directory",
                h.disk_used_bytes,
                Some(path.as_ref()),
            ),
            (
                "node_disk_total_bytes",
                "Size of the filesystem holding the agent's instance directory",
                h.disk_total_bytes,
                Some(path.as_ref()),
            ),
        ];
        for (name, help, value, path) in gauges {
            // The disk gauges name the filesystem's mount point.
            let labels: Vec<(&str, &str)> = [("node", node)]
                .into_iter()
                .chain(path.map(|p| ("path", p)))
                .collect();
            family(
                &mut enc,
                name,
                help,
                MetricType::Gauge,
                [(labels, ConstGauge::new(value))],
            )?;
        }
        Ok(())
    }
}

/// The background collection of one agent.
pub struct VmStatsTask {
    /// The node.
    pub node: NodeName,
    /// The agent's state directory (its filesystem is the node's disk).
    pub state_dir: PathBuf,
    /// Collection period.
    pub period: Duration,
    /// The driver (not the fencing gate: reading counters is harmless).
    pub hypervisor: Arc<dyn Hypervisor>,
    /// The etcd mirror (names, projects, ports of this node's instances).
    pub cache: Arc<tokio::sync::RwLock<Cache>>,
    /// The collector scrapes read.
    pub collector: VmStatsCollector,
    /// Where each period's [`ObservedUsage`] goes (the etcd publisher).
    pub usage: watch::Sender<Option<ObservedUsage>>,
}

impl VmStatsTask {
    /// Collects every `period` until dropped.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut c = self.start();
        loop {
            tick.tick().await;
            c.once().await;
        }
    }

    /// The collection state, for callers that pace it themselves
    /// ([`Collection::once`]).
    pub fn start(self) -> Collection {
        Collection {
            host: Arc::new(std::sync::Mutex::new((
                node_usage::system(),
                sysinfo::Disks::new(),
            ))),
            prev_host: None,
            was_up: true,
            task: self,
        }
    }
}

/// A running collection: the task and what one collection keeps for the
/// next (the previous host reading, the sysinfo handles).
pub struct Collection {
    task: VmStatsTask,
    host: Arc<std::sync::Mutex<(sysinfo::System, sysinfo::Disks)>>,
    prev_host: Option<(Instant, HostSample)>,
    was_up: bool,
}

impl Collection {
    /// One collection: the hypervisor's counters (bounded by the period),
    /// the host's usage, a new snapshot and usage record.
    pub async fn once(&mut self) {
        let t = &self.task;
        let host = &self.host;
        let prev_host = &mut self.prev_host;
        let was_up = &mut self.was_up;
        let started = Instant::now();
        let stats = tokio::time::timeout(t.period, t.hypervisor.stats()).await;
        let h = Arc::clone(host);
        let dir = t.state_dir.clone();
        let host_now = tokio::task::spawn_blocking(move || {
            let mut g = match h.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let (sys, disks) = &mut *g;
            node_usage::sample(sys, disks, &dir)
        })
        .await
        .ok();
        let meta = vm_meta(&*t.cache.read().await);
        let previous = t.collector.snapshot();
        let reading = match stats {
            Ok(Ok(list)) => {
                if !*was_up {
                    info!(node = %t.node, "per-VM statistics collected again");
                }
                *was_up = true;
                Some(Arc::new(Reading {
                    at: Instant::now(),
                    wall: model::now(),
                    vms: join(list, &meta),
                }))
            }
            Ok(Err(e)) => {
                if std::mem::take(was_up) {
                    warn!(node = %t.node, error = %e, "per-VM statistics unavailable; serving the last values as stale");
                } else {
                    debug!(node = %t.node, error = %e, "per-VM statistics still unavailable");
                }
                None
            }
            Err(_) => {
                if std::mem::take(was_up) {
                    warn!(node = %t.node, timeout = ?t.period, "per-VM statistics timed out; serving the last values as stale");
                }
                None
            }
        };
        t.collector.observe_collection(started.elapsed());
        let now = Instant::now();
        let cpu_ratio = match (&*prev_host, &host_now) {
            (Some((_, a)), Some(b)) => b.cpu.zip(a.cpu).and_then(|(b, a)| b.busy_ratio_since(&a)),
            _ => None,
        };
        let usage = match (&host_now, &*prev_host) {
            (Some(h), Some((t0, _))) => Some(super::usage::observed(
                h,
                cpu_ratio,
                now.saturating_duration_since(*t0),
                previous.reading.as_deref().filter(|_| previous.up),
                reading.as_deref(),
            )),
            _ => None,
        };
        t.collector.publish(Snapshot {
            up: reading.is_some(),
            reading: reading.or_else(|| previous.reading.clone()),
            host: host_now.clone(),
            cpu_ratio,
        });
        if let Some(u) = usage {
            t.usage.send_replace(Some(u));
        }
        if let Some(h) = host_now {
            *prev_host = Some((now, h));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_metrics::prometheus_client::encoding::text::encode;

    fn stats(id: InstanceId, cpu_ns: u64, tap: &str) -> InstanceStats {
        InstanceStats {
            id,
            cpu_ns: Some(cpu_ns),
            memory_used_bytes: Some(100 << 20),
            memory_available_bytes: Some(256 << 20),
            disks: vec![DiskCounters {
                target: "vda".into(),
                read_bytes: 4096,
                read_ops: 1,
                write_bytes: 8192,
                write_ops: 2,
            }],
            nics: vec![NicCounters {
                tap: tap.into(),
                rx_bytes: 1500,
                rx_packets: 1,
                rx_drops: 0,
                tx_bytes: 700,
                tx_packets: 2,
                tx_drops: 3,
            }],
        }
    }

    fn meta_of(id: InstanceId, name: &str, tap: &str, port: PortId) -> (InstanceId, VmMeta) {
        (
            id,
            VmMeta {
                name: name.into(),
                project: "demo".into(),
                ports: [(tap.to_owned(), port)].into(),
            },
        )
    }

    fn scrape(c: &VmStatsCollector) -> String {
        let mut reg = crate::telemetry::registry();
        reg.register_collector(Box::new(c.clone()));
        let mut out = String::new();
        encode(&mut out, &reg).unwrap();
        out
    }

    fn reading(vms: Vec<VmSample>) -> Option<Arc<Reading>> {
        Some(Arc::new(Reading {
            at: Instant::now(),
            wall: model::now(),
            vms,
        }))
    }

    #[test]
    fn meta_comes_from_the_mirrored_specs_and_ports() {
        let (id, p1, p2) = (
            InstanceId::new_random(),
            PortId::new_random(),
            PortId::new_random(),
        );
        let mut cache = Cache::default();
        let inst: nubo_common::model::Instance = serde_json::from_value(serde_json::json!({
            "id": id, "name": "web", "project": "demo", "flavor": "t",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "image": nubo_common::ImageId::new_random(), "ports": [p1, p2], "power": "running",
            "created_at": model::now(),
        }))
        .unwrap();
        cache.instances.insert(id, inst);
        let port: nubo_common::model::Port = serde_json::from_value(serde_json::json!({
            "id": p1, "project": "demo", "network": nubo_common::NetworkId::new_random(),
            "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5", "device": id,
            "created_at": model::now(),
        }))
        .unwrap();
        let tap = port.tap_name();
        cache.ports.insert(p1, port);
        // p2 is not mirrored (yet): no tap is attributed to it.
        let m = vm_meta(&cache);
        assert_eq!(
            m[&id],
            VmMeta {
                name: "web".into(),
                project: "demo".into(),
                ports: [(tap, p1)].into(),
            }
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn counters_join_their_instance_and_ports_unknown_ones_are_dropped() {
        let (a, b, stranger) = (
            InstanceId::new_random(),
            InstanceId::new_random(),
            InstanceId::new_random(),
        );
        let port = PortId::new_random();
        let meta: BTreeMap<_, _> = [
            meta_of(a, "web", "tapa", port),
            meta_of(b, "db", "tapb", PortId::new_random()),
        ]
        .into();
        let mut sb = stats(b, 5, "tapb");
        sb.nics.push(NicCounters {
            tap: "tap-not-a-port".into(),
            ..NicCounters::default()
        });
        let joined = join(
            vec![stats(stranger, 1, "tapz"), sb, stats(a, 7, "tapa")],
            &meta,
        );
        let ids: Vec<_> = joined.iter().map(|v| v.id.clone()).collect();
        let mut want = vec![a.to_string(), b.to_string()];
        want.sort();
        assert_eq!(ids, want);
        let va = joined.iter().find(|v| v.id == a.to_string()).unwrap();
        assert_eq!((va.name.as_str(), va.project.as_str()), ("web", "demo"));
        assert_eq!(va.ports, vec![port.to_string()]);
        let vb = joined.iter().find(|v| v.id == b.to_string()).unwrap();
        assert_eq!(vb.ports[1], "");
    }

    #[test]
    fn encodes_every_family_with_its_labels() {
        let node = NodeName::new("node-1").unwrap();
        let c = VmStatsCollector::new(&node);
        let id = InstanceId::new_random();
        let port = PortId::new_random();
        let meta: BTreeMap<_, _> = [meta_of(id, "web \"1\"", "tapa", port)].into();
        c.publish(Snapshot {
            up: true,
            reading: reading(join(vec![stats(id, 2_500_000_000, "tapa")], &meta)),
            host: None,
            cpu_ratio: None,
        });
        c.observe_collection(Duration::from_millis(3));
        let text = scrape(&c);
        let vm =
            format!("instance=\"{id}\",name=\"web \\\"1\\\"\",project=\"demo\",node=\"node-1\"");
        for line in [
            "nubo_vm_stats_up{node=\"node-1\"} 1".to_owned(),
            format!("nubo_vm_cpu_seconds_total{{{vm}}} 2.5"),
            format!("nubo_vm_memory_used_bytes{{{vm}}} {}", 100u64 << 20),
            format!("nubo_vm_memory_available_bytes{{{vm}}} {}", 256u64 << 20),
            format!("nubo_vm_disk_read_bytes_total{{{vm},disk=\"vda\"}} 4096"),
            format!("nubo_vm_disk_write_bytes_total{{{vm},disk=\"vda\"}} 8192"),
            format!("nubo_vm_disk_read_ops_total{{{vm},disk=\"vda\"}} 1"),
            format!("nubo_vm_disk_write_ops_total{{{vm},disk=\"vda\"}} 2"),
            format!(
                "nubo_vm_network_receive_bytes_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 1500"
            ),
            format!(
                "nubo_vm_network_transmit_bytes_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 700"
            ),
            format!("nubo_vm_network_receive_packets_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 1"),
            format!(
                "nubo_vm_network_transmit_packets_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 2"
            ),
            format!("nubo_vm_network_receive_drops_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 0"),
            format!("nubo_vm_network_transmit_drops_total{{{vm},port=\"{port}\",tap=\"tapa\"}} 3"),
            "nubo_vm_stats_collection_seconds_count{node=\"node-1\"} 1".to_owned(),
            "# TYPE nubo_vm_cpu_seconds counter".to_owned(),
            "# TYPE nubo_vm_stats_collection_seconds histogram".to_owned(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            text.contains("nubo_vm_stats_age_seconds{node=\"node-1\"} "),
            "{text}"
        );
    }

    #[test]
    fn an_empty_collector_says_down_and_has_no_vm_series() {
        let c = VmStatsCollector::new(&NodeName::new("n").unwrap());
        let text = scrape(&c);
        assert!(text.contains("nubo_vm_stats_up{node=\"n\"} 0"), "{text}");
        assert!(!text.contains("nubo_vm_stats_age_seconds{"), "{text}");
        assert!(!text.contains("nubo_vm_cpu_seconds_total{"), "{text}");
    }

    #[test]
    fn a_deleted_vm_disappears_and_a_failed_collection_keeps_stale_values() {
        let node = NodeName::new("n").unwrap();
        let c = VmStatsCollector::new(&node);
        let (a, b) = (InstanceId::new_random(), InstanceId::new_random());
        let meta: BTreeMap<_, _> = [
            meta_of(a, "a", "tapa", PortId::new_random()),
            meta_of(b, "b", "tapb", PortId::new_random()),
        ]
        .into();
        c.publish(Snapshot {
            up: true,
            reading: reading(join(vec![stats(a, 1, "tapa"), stats(b, 1, "tapb")], &meta)),
            host: None,
            cpu_ratio: None,
        });
        let text = scrape(&c);
        assert!(
            text.contains(&format!("instance=\"{b}\"")),
            "positive control:\n{text}"
        );
        // b deleted: gone from the hypervisor and from the mirror.
        let meta: BTreeMap<_, _> = [meta_of(a, "a", "tapa", PortId::new_random())].into();
        c.publish(Snapshot {
            up: true,
            reading: reading(join(vec![stats(a, 2, "tapa"), stats(b, 2, "tapb")], &meta)),
            host: None,
            cpu_ratio: None,
        });
        let text = scrape(&c);
        assert!(!text.contains(&format!("instance=\"{b}\"")), "{text}");
        assert!(text.contains(&format!("instance=\"{a}\"")), "{text}");
        // The next collection fails: a's values stay, marked stale.
        let prev = c.snapshot();
        c.publish(Snapshot {
            up: false,
            reading: prev.reading.clone(),
            host: None,
            cpu_ratio: None,
        });
        let text = scrape(&c);
        assert!(text.contains("nubo_vm_stats_up{node=\"n\"} 0"), "{text}");
        assert!(
            text.contains(&format!("nubo_vm_cpu_seconds_total{{instance=\"{a}\"")),
            "{text}"
        );
        assert!(
            text.contains("nubo_vm_stats_age_seconds{node=\"n\"} "),
            "{text}"
        );
    }

    #[test]
    fn node_families_come_from_the_host_reading() {
        let c = VmStatsCollector::new(&NodeName::new("n").unwrap());
        c.publish(Snapshot {
            up: true,
            reading: reading(vec![]),
            host: Some(HostSample {
                cpu: None,
                cpu_busy_seconds: Some(12.5),
                cpus: 2,
                memory_used_bytes: 1000,
                memory_total_bytes: 4000,
                disk_path: PathBuf::from("/"),
                disk_used_bytes: 10,
                disk_total_bytes: 100,
            }),
            cpu_ratio: Some(0.25),
        });
        let text = scrape(&c);
        for line in [
            "nubo_node_cpu_busy_seconds_total{node=\"n\"} 12.5",
            "nubo_node_cpu_usage_ratio{node=\"n\"} 0.25",
            "nubo_node_memory_used_bytes{node=\"n\"} 1000",
            "nubo_node_memory_total_bytes{node=\"n\"} 4000",
            "nubo_node_disk_used_bytes{node=\"n\",path=\"/\"} 10",
            "nubo_node_disk_total_bytes{node=\"n\",path=\"/\"} 100",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
