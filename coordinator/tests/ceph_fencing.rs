//! Storage fencing with a real Ceph cluster: the leader's `CephFencer`
//! blocklists every client of a failed node's storage address before its
//! instances move (both sampled: the entry is seen while the instance is
//! still on the failed node, never missing once it moved), and lifts it
//! only once the agent reports it has recovered.
//!
//! The "node" is a network namespace on an `nbt` underlay bridge (the Ceph
//! daemons listen on the bridge's address) running `qemu-io` on an RBD image
//! with `cache=none`: QEMU's own librbd, a long-lived client, writing
//! straight to the OSDs. Its liveness is a record plus an alive key on a
//! lease, as an agent writes them, and its node API a stub answering
//! `/v1/etcd-status`.
//!
//! Fails when Ceph does not start (skipped only with the Ceph binaries
//! missing and `NUBO_TEST_ALLOW_SKIP=ceph`). Needs
//! root (namespaces): `cargo test -p nubo-coordinator --test ceph_fencing`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nubo_common::model::{self, EtcdSessionStatus, FencePhase, Node};
use nubo_common::proto as pb;
use nubo_common::{keys, InstanceId, NodeName};
use nubo_coordinator::config::CephConfig;
use nubo_coordinator::Config;
use nubo_storage::testing::TestCluster;
use nubo_storage::Features;
use nubo_tests::netns::{Host, Underlay};
use nubo_tests::Etcd;

const POOL: &str = "nbt-fence";
const IMAGE: &str = "disk";
const WAIT: Duration = Duration::from_secs(60);

/// A long-lived `qemu-io` on the image, inside the host's namespace.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

fn rbd_spec(c: &TestCluster) -> String {
    format!(
        "rbd:{POOL}/{IMAGE}:id=admin:conf={}:keyring={}",
        c.conf_path().display(),
        c.admin_keyring().display()
    )
}

impl QemuIo {
    fn start(host: &Host, spec: &str) -> Self {
        let mut child = host
            .command("qemu-io")
            .args(["-f", "raw", "-t", "none", spec])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io in the host namespace");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for r in [
            Box::new(out) as Box<dyn std::io::Read + Send>,
            Box::new(err) as Box<dyn std::io::Read + Send>,
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        return;
                    }
                }
            });
        }
        let stdin = child.stdin.take().expect("stdin");
        QemuIo {
            child,
            stdin,
            lines,
        }
    }

    /// One 4 KiB write; Err with qemu-io's message when it failed.
    fn write(&mut self, pattern: u8) -> Result<(), String> {
        writeln!(self.stdin, "write -P {pattern} 0 4k").expect("qemu-io stdin");
        self.stdin.flush().expect("qemu-io stdin");
        let mut seen = Vec::new();
        loop {
            let l = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("qemu-io silent for {WAIT:?}; so far {seen:?}"));
            if l.contains("wrote 4096/4096") {
                return Ok(());
            }
            if l.contains("failed") || l.contains("rror") {
                return Err(l);
            }
            seen.push(l);
        }
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh client from the host (new process, new nonce): one write.
fn one_shot_write(host: &Host, spec: &str) -> Result<(), String> {
    let out = host
        .exec(
            "qemu-io",
            &["-f", "raw", "-t", "none", "-c", "write -P 7 0 4k", spec],
        )
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.contains("wrote 4096/4096") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Serves `/v1/etcd-status` for node `n0` with the phase in `phase`,
/// counting the requests in `asked`.
async fn node_api_stub(
    phase: Arc<Mutex<FencePhase>>,
    asked: Arc<AtomicUsize>,
) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/etcd-status",
        axum::routing::get(move || {
            let phase = *phase.lock().unwrap();
            asked.fetch_add(1, Ordering::SeqCst);
            async move {
                axum::Json(EtcdSessionStatus {
                    node: NodeName::new("n0").unwrap(),
                    healthy: true,
                    last_ack_age_ms: Some(5),
                    phase,
                })
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

/// Registers n0 as its agent does (record + alive key on a fresh lease),
/// with the storage IP and node API labels; returns the lease.
async fn register_n0(etcd: &Etcd, storage_ip: &str, api: std::net::SocketAddr) -> i64 {
    let lease = register_node(etcd, "n0", res(8, 4096, 100), "nova").await;
    let key = keys::node(&NodeName::new("n0").unwrap());
    let mut node: Node = get(etcd, &key).await.unwrap();
    node.labels.extend([
        (model::STORAGE_IP_LABEL.to_string(), storage_ip.to_string()),
        (model::NODE_API_LABEL.to_string(), api.to_string()),
    ]);
    etcd.client()
        .await
        .unwrap()
        .put(key, model::encode(&node), None)
        .await
        .unwrap();
    lease
}

async fn health(cl: &mut Clients, node: &str) -> String {
    node_info(&mut cl.nodes, node).await.health
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn spec_node(etcd: &Etcd, id: InstanceId) -> Option<String> {
    get::<model::Instance>(etcd, &keys::instance(&id))
        .await
        .and_then(|i| i.node)
        .map(|n| n.to_string())
}

async fn blocklisted(admin: &nubo_storage::Cluster, addr: &str) -> bool {
    let (admin, addr) = (admin.clone(), addr.to_string());
    tokio::task::spawn_blocking(move || {
        admin.blocklist_ls().unwrap().iter().any(|e| e.addr == addr)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ceph_fencer_blocklists_the_failed_node_before_its_instance_moves() {
    let underlay = Underlay::new().expect("underlay bridge");
    let host = underlay.host(1).expect("host namespace");
    let Some(ceph) = TestCluster::start_on(underlay.gateway()).unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let admin = ceph.admin().expect("admin");
    admin.create_pool(POOL).expect("pool");
    admin
        .pool(POOL)
        .unwrap()
        .create(IMAGE, 64 << 20, Features::DEFAULT)
        .expect("image");
    let spec = rbd_spec(&ceph);
    let storage_ip = host.ip().to_string();
    let entry = format!("{storage_ip}:0/0");

    let etcd = Etcd::start().unwrap();
    let mut cfg = Config::for_tests(etcd.endpoint());
    // A pause before each move of an evacuation: the window in which the
    // sampler below must see the blocklist entry while the instance is
    // still on n0.
    cfg.failure.move_delay = Duration::from_secs(1);
    cfg.ceph = Some(CephConfig {
        client_id: "admin".into(),
        keyring: Some(ceph.admin_keyring()),
        images_pool: POOL.into(),
        disks_pool: POOL.into(),
        volumes_pool: POOL.into(),
        ..CephConfig::new(ceph.conf_path())
    });
    // `start` builds the CephFencer from `[ceph]`.
    let c = nubo_coordinator::start(cfg).await.unwrap();
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.40.0.0/22").await;
    let phase = Arc::new(Mutex::new(FencePhase::Normal));
    let asked = Arc::new(AtomicUsize::new(0));
    let api = node_api_stub(phase.clone(), asked.clone()).await;
    let lease = register_n0(&etcd, &storage_ip, api).await;
    wait_nodes(&mut cl, 1).await;
    let r = cl
        .servers
        .create(pb::CreateServerRequest {
            name: "vm".into(),
            flavor: "m1.small".into(),
            image_ref: "cirros".into(),
            networks: vec!["net".into()],
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id: InstanceId = r.results[0].server.as_ref().unwrap().id.parse().unwrap();
    register_node(&etcd, "n1", res(8, 4096, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;
    assert_eq!(spec_node(&etcd, id).await.as_deref(), Some("n0"));

    // The "instance" writes from n0.
    let mut vm = QemuIo::start(&host, &spec);
    vm.write(1).expect("n0 writes before the failure");

    // n0's lease goes: suspect → CephFencer → fenced → moved to n1. Both
    // sides are sampled, the blocklist first, then where the instance is:
    // a sample "listed, still on n0" proves the fence came before the move;
    // a "moved" read followed by an "unlisted" read would disprove it.
    let t0 = std::time::Instant::now();
    revoke(&etcd, lease).await;
    let mut samples: Vec<(bool, bool)> = Vec::new();
    loop {
        let listed = blocklisted(&admin, &entry).await;
        let moved = spec_node(&etcd, id).await.as_deref() == Some("n1");
        samples.push((listed, moved));
        if moved {
            samples.push((blocklisted(&admin, &entry).await, true));
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "the instance did not move to n1 within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "lease revoked → instance moved: {:?} (suspect grace {:?} + blocklist + move delay); \
         {} samples, {} of them blocklisted while still on n0",
        t0.elapsed(),
        Config::for_tests(etcd.endpoint()).failure.suspect_grace,
        samples.len(),
        samples.iter().filter(|&&(l, m)| l && !m).count()
    );
    let first_moved = samples
        .iter()
        .position(|(_, m)| *m)
        .unwrap_or(samples.len());
    assert!(
        samples[first_moved..].iter().all(|(listed, _)| *listed),
        "{entry} unlisted after the move was visible: {samples:?}"
    );
    assert!(
        samples.iter().any(|&(listed, moved)| listed && !moved),
        "no sample saw {entry} blocklisted while the instance was still on n0: {samples:?}"
    );
    let h = health(&mut cl, "n0").await;
    assert!(h == "fenced" || h == "evacuated", "n0 is {h}");

    // The running client on n0 cannot write any more (bounded: the new OSD
    // map reaches its session asynchronously)...
    let err = until("n0's writes to fail", async || vm.write(2).err()).await;
    assert!(
        err.contains("transport endpoint shutdown") || err.contains("108"),
        "unexpected error: {err}"
    );
    println!("fenced n0, running client: {err}");
    // ...nor can any new client from that address.
    let err = one_shot_write(&host, &spec).expect_err("a new client on n0 wrote while fenced");
    println!("fenced n0, new client: {err}");
    drop(vm);

    // n0 comes back but is still recovering: the fence stays.
    *phase.lock().unwrap() = FencePhase::Recovering;
    let asked_before = asked.load(Ordering::SeqCst);
    register_n0(&etcd, &storage_ip, api).await;
    wait_nodes(&mut cl, 2).await;
    // The leader asks n0's node API before it lifts the fence, once per
    // tick: a second request means the answer to the first ("recovering")
    // has been acted on.
    until("two unfence checks against n0's node API", async || {
        (asked.load(Ordering::SeqCst) >= asked_before + 2).then_some(())
    })
    .await;
    assert!(
        blocklisted(&admin, &entry).await,
        "unfenced before the agent recovered"
    );
    assert_ne!(health(&mut cl, "n0").await, "up");

    // Recovered: unfenced, up, and a new client on n0 writes again.
    *phase.lock().unwrap() = FencePhase::Normal;
    until("n0 up", async || {
        (health(&mut cl, "n0").await == "up").then_some(())
    })
    .await;
    assert!(!blocklisted(&admin, &entry).await, "{entry} still listed");
    one_shot_write(&host, &spec).expect("n0 writes again after the unfence");
    assert_eq!(
        spec_node(&etcd, id).await.as_deref(),
        Some("n1"),
        "nothing moves back"
    );
    c.shutdown().await.unwrap();
    drop(ceph);
}
