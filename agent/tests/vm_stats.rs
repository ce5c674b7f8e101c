//! The agent's per-VM statistics on real drivers.
//!
//! - [`netns_guest_counters_come_from_its_veth`]: the netns driver's
//!   counters of a guest namespace, seen from the guest.
//! - [`bench_metrics_scrape_10_real_100_fake_vms`] (`#[ignore]`d):
//!
//! Benchmark of the agent's per-VM metrics: `/metrics` scrape latency with
//! 10 real TCG guests (a private libvirtd, real bulk statistics) and 100
//! fake VMs (the fake driver's synthetic counters) on one node, and the
//! CPU cost of the background collection per VM per minute.
//!
//! One agent cannot run the libvirt and the fake driver at once, so the
//! closest honest setup is assembled from the agent's own parts: a driver
//! ([`Mixed`]) whose `stats` is the libvirt driver's bulk call plus the
//! fake driver's, the agent's collection ([`VmStatsTask`]) joining them with
//! 110 instances in a mirror cache, and the agent's registry served by
//! `nubo_metrics::Endpoint` exactly as `nubo-agent --metrics-listen` does.
//! Root only; `#[ignore]`d (docs/benchmarks.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nubo_agent::compute::hypervisor::fake::{FakeRecord, FakeState, STATE_FILE};
use nubo_agent::compute::hypervisor::netns::{GuestNic, GuestRecord, NetnsState};
use nubo_agent::compute::hypervisor::{
    libvirt::instance_stats, HypervisorError, InstanceStats, ObservedPower,
};
use nubo_agent::state::cache::Cache;
use nubo_agent::state::desired::DesiredInstance;
use nubo_agent::telemetry::vm_stats::{VmStatsCollector, VmStatsTask};
use nubo_agent::NetnsHypervisor;
use nubo_agent::{FakeHypervisor, Hypervisor, ObservedInstance};
use nubo_common::model::{self, Instance, Port};
use nubo_common::{InstanceId, NodeName, PortId};
use nubo_libvirt::{
    DiskSpec, DomainSpec, DomainType, DriverConfig, ImageCache, KernelBoot, LibvirtDriver, Nic,
};
use nubo_tests::netns::{ip_batch, is_root, netns_exec, Names};
use nubo_tests::stats::percentile;
use nubo_tests::vm_e2e::{ensure_test_guest, guest_dir, HostLibvirtd};
use sha2::{Digest, Sha256};

const REAL: usize = 10;
const FAKE: usize = 100;
const SCRAPES: usize = 1000;
const COLLECTIONS: usize = 30;
/// The agent's default collection period (what "per minute" assumes).
const PERIOD: Duration = Duration::from_secs(10);

/// The libvirt driver's statistics plus the fake driver's; nothing else.
struct Mixed {
    real: LibvirtDriver,
    fake: FakeHypervisor,
}

fn unsupported<T>() -> Result<T, HypervisorError> {
    Err(HypervisorError::Unsupported("benchmark driver".into()))
}

#[async_trait]
impl Hypervisor for Mixed {
    fn driver(&self) -> &'static str {
        "mixed"
    }
    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        unsupported()
    }
    async fn create(&self, _: &DesiredInstance) -> Result<(), HypervisorError> {
        unsupported()
    }
    async fn start(&self, _: InstanceId) -> Result<(), HypervisorError> {
        unsupported()
    }
    async fn stop(&self, _: InstanceId) -> Result<(), HypervisorError> {
        unsupported()
    }
    async fn reboot(&self, _: InstanceId) -> Result<(), HypervisorError> {
        unsupported()
    }
    async fn destroy(&self, _: InstanceId) -> Result<(), HypervisorError> {
        unsupported()
    }
    async fn stats(&self) -> Result<Vec<InstanceStats>, HypervisorError> {
        let real = self
            .real
            .all_domain_stats()
            .await
            .map_err(|e| HypervisorError::Backend(e.to_string()))?;
        let mut out: Vec<InstanceStats> = real.iter().filter_map(instance_stats).collect();
        out.extend(self.fake.stats().await?);
        Ok(out)
    }
}

fn instance(id: InstanceId, name: &str, port: PortId) -> Instance {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "project": "bench", "flavor": "t",
        "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
        "image": uuid::Uuid::new_v4(), "ports": [port], "power": "running",
        "created_at": model::now(),
    }))
    .unwrap()
}

fn port(id: PortId, device: InstanceId) -> Port {
    serde_json::from_value(serde_json::json!({
        "id": id, "project": "bench", "network": uuid::Uuid::new_v4(),
        "mac": "fa:16:3e:00:00:01", "ip": "10.0.0.5", "device": device,
        "created_at": model::now(),
    }))
    .unwrap()
}

/// Process CPU time (user + system) of `pid` from `/proc/<pid>/stat`.
fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / nubo_agent::telemetry::node_usage::ticks_per_second())
}

/// CPU time (user + system) of this process, µs precision (`getrusage`).
fn self_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `n` sequential scrapes of `addr`; sorted latencies and the last body.
fn scrapes(addr: SocketAddr, n: usize) -> (Vec<Duration>, String) {
    let mut lat = Vec::with_capacity(n);
    let mut body = String::new();
    for _ in 0..n {
        let t = Instant::now();
        let (status, b) = nubo_tests::http::get(addr, "/metrics").unwrap();
        lat.push(t.elapsed());
        assert_eq!(status, 200, "{b}");
        body = b;
    }
    lat.sort();
    (lat, body)
}

async fn serve(registry: nubo_metrics::prometheus_client::registry::Registry) -> SocketAddr {
    let ep = nubo_metrics::EndpointConfig::plain("127.0.0.1:0".parse().unwrap());
    let endpoint = nubo_metrics::Endpoint::bind(&ep).await.unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move { endpoint.serve(Arc::new(registry)).await });
    addr
}

/// Boots `REAL` guests on a private libvirtd (one tap each, named as the
/// agent names a port's tap); returns the driver and the guests' ids and
/// ports.
async fn real_guests(
    names: &Names,
    dir: &Path,
) -> (HostLibvirtd, LibvirtDriver, Vec<(InstanceId, PortId)>) {
    for d in ["disks", "logs"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("logs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ns = names.add_netns("").unwrap();
    let guests: Vec<(InstanceId, PortId)> = (0..REAL)
        .map(|_| (InstanceId::new_random(), PortId::new_random()))
        .collect();
    let br = names.name("b");
    let mut batch = format!("link add {br} type bridge\nlink set {br} up\n");
    for (_, p) in &guests {
        let tap = nubo_netid::tap_name(&p.to_string());
        batch.push_str(&format!(
            "tuntap add dev {tap} mode tap\nlink set {tap} master {br} up\n"
        ));
    }
    ip_batch(Some(&ns), &batch).unwrap();
    let prefix = format!("{}-", names.prefix());
    let lv = HostLibvirtd::start_in(&ns, dir, &prefix).unwrap();
    let driver = LibvirtDriver::connect_with(DriverConfig {
        uri: lv.uri().to_string(),
        name_prefix: prefix,
        qemu_pid_dir: dir.join("run").join("qemu"),
    })
    .await
    .unwrap();
    let cache = ImageCache::new(dir.join("disks"));
    let raw = dir.join("empty.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    let sha: String = Sha256::digest(std::fs::read(&raw).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = cache.ensure_base("empty", &raw, &sha).await.unwrap();
    ensure_test_guest().unwrap();
    let g = guest_dir();
    for (i, (id, p)) in guests.iter().enumerate() {
        let disk = cache
            .create_overlay(&base, &id.to_string(), 1)
            .await
            .unwrap();
        let spec = DomainSpec {
            instance_id: id.to_string(),
            name: format!("real-{i}"),
            vcpus: 1,
            memory_mb: 128,
            disk: DiskSpec::LocalQcow2 { path: disk },
            volumes: vec![],
            kernel: Some(KernelBoot {
                kernel: g.join("vmlinuz"),
                initrd: Some(g.join("initrd.gz")),
                cmdline: Some("console=ttyS0 panic=-1 quiet".into()),
            }),
            nics: vec![Nic {
                tap: nubo_netid::tap_name(&p.to_string()),
                mac: format!("52:54:00:78:00:{i:02x}"),
                mtu: None,
            }],
            console_log: dir.join("logs").join(format!("{id}.log")),
            domain_type: DomainType::Qemu,
            vnc: false,
        };
        driver.define_and_start(&spec).await.unwrap();
    }
    (lv, driver, guests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: docs/benchmarks.md"]
async fn bench_metrics_scrape_10_real_100_fake_vms() {
    assert!(is_root(), "the benchmark needs root (private libvirtd)");
    let names = Names::new().unwrap();
    let dir = tempfile::Builder::new()
        .prefix(&names.prefix())
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (lv, real, guests) = real_guests(&names, dir.path()).await;

    // 100 running fake VMs, one tap each.
    let fake_dir = dir.path().join("fake");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let created = model::now() - chrono::Duration::minutes(5);
    let fakes: Vec<(InstanceId, PortId)> = (0..FAKE)
        .map(|_| (InstanceId::new_random(), PortId::new_random()))
        .collect();
    let state = FakeState {
        instances: fakes
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    FakeRecord {
                        name: "fake".into(),
                        power: ObservedPower::Running,
                        boot_count: 1,
                        created_at: created,
                        managed: true,
                        volumes: vec![],
                        taps: vec![nubo_netid::tap_name(&p.to_string())],
                    },
                )
            })
            .collect(),
    };
    std::fs::write(
        fake_dir.join(STATE_FILE),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let fake = FakeHypervisor::open(&fake_dir, Duration::ZERO).unwrap();

    // The mirror as the agent would hold it: 110 instances and their ports.
    let mut cache = Cache::default();
    for (i, (id, p)) in guests.iter().chain(&fakes).enumerate() {
        cache
            .instances
            .insert(*id, instance(*id, &format!("vm-{i}"), *p));
        cache.ports.insert(*p, port(*p, *id));
    }
    let node = NodeName::new("bench-node").unwrap();
    let hv: Arc<dyn Hypervisor> = Arc::new(Mixed { real, fake });
    let (usage_tx, _usage_rx) = tokio::sync::watch::channel(None);

    // Baseline in the same run: the agent's registry without VM families.
    let mut base_reg = nubo_agent::telemetry::registry();
    let cfg = nubo_agent::AgentConfig::new(node.clone(), vec![]);
    let _ = nubo_agent::telemetry::AgentMetrics::register(&mut base_reg, &cfg);
    let base_addr = serve(base_reg).await;

    let mut registry = nubo_agent::telemetry::registry();
    let _ = nubo_agent::telemetry::AgentMetrics::register(&mut registry, &cfg);
    let collector = VmStatsCollector::register(&mut registry, &node);
    let addr = serve(registry).await;
    let mut collection = VmStatsTask {
        node: node.clone(),
        state_dir: dir.path().to_path_buf(),
        period: PERIOD,
        hypervisor: hv,
        cache: Arc::new(tokio::sync::RwLock::new(cache)),
        collector: collector.clone(),
        usage: usage_tx,
    }
    .start();

    // Wait until every real guest runs and reports CPU time.
    let t0 = Instant::now();
    loop {
        collection.once().await;
        let snap = collector.snapshot();
        let with_cpu = snap
            .reading
            .as_ref()
            .map(|r| r.vms.iter().filter(|v| v.stats.cpu_ns.is_some()).count())
            .unwrap_or(0);
        if with_cpu == REAL + FAKE {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "only {with_cpu} VMs with CPU time"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // CPU cost of collections, back to back (nothing else runs here).
    let libvirtd: u32 = std::fs::read_to_string(dir.path().join("run/libvirtd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (a0, l0, w0) = (self_cpu(), proc_cpu(libvirtd), Instant::now());
    for _ in 0..COLLECTIONS {
        collection.once().await;
    }
    let n = COLLECTIONS as u32;
    let (agent_cpu, lv_cpu, wall) = (
        (self_cpu() - a0) / n,
        (proc_cpu(libvirtd) - l0) / n,
        w0.elapsed() / n,
    );
    let per_vm_min = |d: Duration| {
        d.as_secs_f64() * 1000.0 * (60.0 / PERIOD.as_secs_f64()) / (REAL + FAKE) as f64
    };

    // Scrapes while the collection keeps running (every second here, ten
    // times the default, so scrapes meet snapshot swaps).
    let collecting = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            collection.once().await;
        }
    });
    let (base_lat, _) = tokio::task::spawn_blocking(move || scrapes(base_addr, SCRAPES / 5))
        .await
        .unwrap();
    let (lat, body) = tokio::task::spawn_blocking(move || scrapes(addr, SCRAPES))
        .await
        .unwrap();
    collecting.abort();
    let cpu_series = body
        .lines()
        .filter(|l| l.starts_with("nubo_vm_cpu_seconds_total{"))
        .count();
    assert_eq!(cpu_series, REAL + FAKE, "{body}");
    let rx_series = body
        .lines()
        .filter(|l| {
            l.starts_with("nubo_vm_network_receive_bytes_total{") && !l.contains("port=\"\"")
        })
        .count();
    assert_eq!(rx_series, REAL + FAKE, "every port labelled");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "metrics scrape ({} VMs, {} lines, {} bytes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         baseline (no VM families) p99 {:.2} ms",
        REAL + FAKE,
        body.lines().count(),
        body.len(),
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0)),
        ms(*lat.last().unwrap()),
        ms(percentile(&base_lat, 99.0)),
    );
    println!(
        "one collection ({} VMs): wall {:.1} ms, agent CPU {:.2} ms, libvirtd CPU {:.2} ms; \
         per VM per minute at a {:?} period: agent {:.3} ms, libvirtd {:.3} ms",
        REAL + FAKE,
        ms(wall),
        ms(agent_cpu),
        ms(lv_cpu),
        PERIOD,
        per_vm_min(agent_cpu),
        per_vm_min(lv_cpu),
    );
    drop(lv);
}

/// A link's own counter from sysfs.
fn sysfs_counter(link: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{link}/statistics/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn netns_guest_counters_come_from_its_veth() {
    assert!(is_root(), "the netns driver test needs root");
    let names = Names::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = InstanceId::new_random();
    let prefix = names.name("g");
    let ns = names.add_netns(&format!("g{}", id.short_hex(8))).unwrap();
    let tap = names.name("v");
    ip_batch(
        None,
        &format!("link add {tap} type veth peer name eth0 netns {ns}\nlink set {tap} up\n"),
    )
    .unwrap();
    ip_batch(
        Some(&ns),
        "addr add 10.97.0.2/24 dev eth0\nlink set eth0 up\n",
    )
    .unwrap();
    let state = NetnsState {
        guests: [(
            ns.clone(),
            GuestRecord {
                id,
                nics: vec![GuestNic {
                    ifname: "eth0".into(),
                    tap: tap.clone(),
                    mac: "fa:16:3e:00:00:02".into(),
                }],
                legacy_tap: String::new(),
                legacy_mac: String::new(),
                mtu: 1500,
                stopped: false,
                boot_count: 1,
                created_at: model::now(),
                paused: false,
                saved_routes: vec![],
                size: None,
            },
        )]
        .into(),
    };
    std::fs::write(
        dir.path()
            .join(nubo_agent::compute::hypervisor::netns::STATE_FILE),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    let hv = NetnsHypervisor::open(&prefix, dir.path(), 1500).unwrap();
    let before = hv.stats().await.unwrap();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].id, id);
    assert_eq!(before[0].cpu_ns, None);
    assert_eq!(before[0].nics.len(), 1, "{before:?}");
    assert_eq!(before[0].nics[0].tap, tap);
    // The guest sends (ARP requests for a neighbour that never answers).
    let _ = netns_exec(
        &ns,
        "ping",
        &["-c", "3", "-i", "0.2", "-W", "1", "10.97.0.9"],
    );
    let after = hv.stats().await.unwrap();
    let (b, a) = (&before[0].nics[0], &after[0].nics[0]);
    assert!(a.tx_packets >= b.tx_packets + 3, "{b:?} -> {a:?}");
    assert!(a.tx_bytes > b.tx_bytes, "{b:?} -> {a:?}");
    // Seen from the guest: what it sends is what the host end receives.
    assert_eq!(a.tx_packets, sysfs_counter(&tap, "rx_packets"));
    assert_eq!(a.rx_packets, sysfs_counter(&tap, "tx_packets"));
    // A guest whose namespace is gone reports nothing.
    ip_batch(None, &format!("link del {tap}\n")).unwrap();
    nubo_tests::netns::run("ip", &["netns", "del", &ns]).unwrap();
    assert!(hv.stats().await.unwrap().is_empty());
}
