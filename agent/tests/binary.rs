//! The `nubo-agent` binary as a process: `kill -9`, lease expiry, restart
//! without side effects, and a watch that resumes into a compacted revision.
//! As in production: etcd over TLS with its authentication on, the agent
//! with the certificate of `nubo-coordinator node enroll` (its node's
//! etcd role only), the test writing as the coordinator.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nubo_agent::compute::hypervisor::fake::{FakeState, STATE_FILE};
use nubo_common::keys;
use nubo_common::model::{self, InstanceState, NodeAlive};
use nubo_common::NodeName;
use nubo_tests::tls::{ClientFiles, TlsEtcd};

const T: Duration = Duration::from_secs(60);
const LEASE_TTL: u64 = 2;

/// A `nubo-agent` child process, killed (SIGKILL) on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(etcd: &Secure, node: &NodeName, state_dir: &Path, log_name: &str) -> Self {
        let log = state_dir.join(log_name);
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_nubo-agent"))
            .args(["--etcd-endpoints", &etcd.etcd.endpoint()])
            .arg("--etcd-ca")
            .arg(etcd.etcd.certs().ca())
            .arg("--etcd-cert")
            .arg(&etcd.node.cert)
            .arg("--etcd-key")
            .arg(&etcd.node.key)
            .args(["--node", node.as_str()])
            .args(["--driver", "fake"])
            // Root namespace: no bridges, no nftables.
            .arg("--no-network")
            .args(["--fake-boot-ms", "10"])
            .args(["--lease-ttl", &LEASE_TTL.to_string()])
            .args(["--vcpus", "32", "--ram-mb", "65536", "--disk-gb", "500"])
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--config")
            .arg(state_dir.join("agent.toml"))
            // Every reconcile pass logs its revision (see `wait_reconciled`).
            .env("RUST_LOG", nubo_tests::agent::PASS_LOG_FILTER)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, node: &NodeName) {
        let line = format!("nubo-agent ready node={node}");
        let deadline = Instant::now() + T;
        while !self.log().contains(&line) {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("agent exited with {st}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd with authentication on, `node` enrolled, and a client as the
/// coordinator.
struct Secure {
    etcd: TlsEtcd,
    node: ClientFiles,
}

impl Secure {
    async fn start(node: &NodeName) -> (Self, etcd_client::Client) {
        let etcd = TlsEtcd::start().unwrap();
        etcd.enable_auth().unwrap();
        let files = etcd.enroll(node.as_str()).unwrap();
        let c = etcd.client("coordinator").await.unwrap();
        (Self { etcd, node: files }, c)
    }
}

/// Writes `key` again with its value (as the coordinator); the revision.
async fn touch(c: &etcd_client::Client, key: &str) -> i64 {
    let mut kv = c.kv_client();
    let r = kv.get(key, None).await.unwrap();
    let value = r.kvs()[0].value().to_vec();
    let put = kv.put(key, value, None).await.unwrap();
    put.header().unwrap().revision()
}

fn write_config(dir: &Path) {
    // Exercise the file too; flags override its node and endpoints.
    std::fs::write(
        dir.join("agent.toml"),
        "node = \"from-file\"\navailability_zone = \"az-test\"\nlabels = { rack = \"r7\" }\n",
    )
    .unwrap();
}

async fn alive_lease(c: &etcd_client::Client, node: &NodeName) -> Option<i64> {
    let r = c.kv_client().get(keys::node_alive(node), None).await.ok()?;
    let kv = r.kvs().first()?;
    let a: NodeAlive = model::decode("alive", kv.value()).ok()?;
    Some(a.lease)
}

/// The agent's first listing (`state listed from etcd keys=N revision=R`)
/// holds exactly the keys under `keys::agent_watch_prefixes(node)` at R, and
/// fewer than `/nubo/v1/` holds (the private keys exist, unread).
async fn listed_only_node_relevant_keys(c: &etcd_client::Client, node: &NodeName, log: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("state listed from etcd"))
        .unwrap_or_else(|| panic!("no listing in the log:\n{log}"));
    // Without the terminal colours around field names.
    let mut plain = String::new();
    let mut in_escape = false;
    for ch in line.chars() {
        match (in_escape, ch) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, _) => plain.push(ch),
            (true, _) => {}
        }
    }
    let line = plain.as_str();
    let field = |name: &str| -> i64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"));
        let rest = &line[at + name.len() + 1..];
        rest.split(|ch: char| !ch.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (listed, revision) = (field("keys"), field("revision"));
    let count = |prefix: String| {
        let mut kv = c.kv_client();
        async move {
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only()
                .with_revision(revision);
            kv.get(prefix, Some(opts)).await.unwrap().count()
        }
    };
    let mut relevant = 0;
    for p in keys::agent_watch_prefixes(node) {
        relevant += count(p).await;
    }
    let all = count(keys::ROOT.to_string()).await;
    assert_eq!(listed, relevant, "{line}");
    assert!(
        all >= relevant + 4,
        "the private keys exist: {all} vs {relevant}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_expires_the_lease_and_a_restart_touches_nothing() {
    let node = NodeName::new("kill9-1").unwrap();
    let (etcd, c) = Secure::start(&node).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let mut w = World::create(&c).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(w.add_instance(&c, &node).await.id);
    }

    // Coordinator-private data a hypervisor must never read.
    for (k, v) in [
        (keys::token_key(), "secret"),
        (keys::audit("0001"), "{}"),
        (
            keys::quota_usage(&nubo_common::ProjectId::default_project()),
            "{}",
        ),
        (keys::users_prefix() + "admin", "{}"),
    ] {
        c.kv_client().put(k, v, None).await.unwrap();
    }

    let mut agent = AgentProcess::spawn(&etcd, &node, dir.path(), "run1.log");
    agent.wait_ready(&node).await;
    listed_only_node_relevant_keys(&c, &node, &agent.log()).await;
    wait_until(T, "running", || {
        all_in_state(&c, ids.clone(), &node, InstanceState::Running)
    })
    .await;
    let r = c.kv_client().get(keys::node(&node), None).await.unwrap();
    let rec: model::Node = model::decode("node", r.kvs()[0].value()).unwrap();
    assert_eq!(rec.availability_zone, "az-test");
    assert_eq!(rec.labels["rack"], "r7");
    assert_eq!(rec.capacity.vcpus, 32);

    let hv_before = FakeState::load(&dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(hv_before.instances.len(), 20);
    let statuses_before = statuses(&c).await;

    agent.kill9();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(LEASE_TTL + 4),
        "alive key gone after kill -9",
        || async { !exists(&c, keys::node_alive(&node)).await },
    )
    .await;
    eprintln!("alive key gone {:?} after kill -9", killed.elapsed());
    assert!(exists(&c, keys::node(&node)).await, "node record stays");

    let mut agent = AgentProcess::spawn(&etcd, &node, dir.path(), "run2.log");
    agent.wait_ready(&node).await;
    wait_until(T, "alive again", || exists(&c, keys::node_alive(&node))).await;
    // One more pass, after the agent's own alive write and a rewrite of
    // the network (no change of content), has completed: the restarted
    // agent settled without touching anything.
    let log_path = agent.log.clone();
    let rev = touch(&c, &keys::network(&w.network)).await;
    tokio::task::spawn_blocking(move || {
        nubo_tests::agent::wait_reconciled("restarted agent", rev, T, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let hv_after = FakeState::load(&dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(hv_after, hv_before, "restart changed the hypervisor");
    assert_eq!(
        statuses(&c).await,
        statuses_before,
        "restart rewrote statuses"
    );
    let log = agent.log();
    assert!(
        !log.contains("applying compute plan"),
        "restart planned actions:\n{log}"
    );
    // Everything above ran within the node's etcd role.
    assert!(!log.contains("permission denied"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_into_a_compacted_revision_relists() {
    let node = NodeName::new("compact-1").unwrap();
    let (mut etcd, c) = Secure::start(&node).await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    let mut w = World::create(&c).await;
    let a = w.add_instance(&c, &node).await.id;
    let b = w.add_instance(&c, &node).await.id;

    let mut agent = AgentProcess::spawn(&etcd, &node, dir.path(), "run.log");
    agent.wait_ready(&node).await;
    wait_until(T, "running", || {
        all_in_state(&c, vec![a, b], &node, InstanceState::Running)
    })
    .await;
    let old_lease = alive_lease(&c, &node).await.unwrap();

    // Freeze the agent, break its connections, change things and compact
    // behind its back; freeze long enough for its lease to expire too.
    agent.signal("STOP");
    etcd.etcd.restart().unwrap();
    let c = etcd.etcd.client("coordinator").await.unwrap();
    delete(&c, &keys::assignment(&node, &a)).await;
    let d = w.add_instance(&c, &node).await.id;
    let rev = c
        .kv_client()
        .get(keys::network(&w.network), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let root = etcd.etcd.root().unwrap();
    let compacted = etcd
        .etcd
        .etcdctl_with(Some(&root), &["compact", &rev.to_string()])
        .unwrap();
    assert!(compacted.status.success(), "{compacted:?}");
    let frozen = Instant::now();
    wait_until(T, "the frozen agent's lease expired", || async {
        !exists(&c, keys::node_alive(&node)).await
    })
    .await;
    eprintln!(
        "lease of the frozen agent expired after {:?}",
        frozen.elapsed()
    );
    agent.signal("CONT");

    wait_until(T, "new instance running after relist", || {
        all_in_state(&c, vec![d], &node, InstanceState::Running)
    })
    .await;
    wait_until(T, "unassigned instance destroyed after relist", || async {
        let st = FakeState::load(&dir.path().join(STATE_FILE)).unwrap();
        !st.instances.contains_key(&a) && st.instances.contains_key(&b)
    })
    .await;
    wait_until(T, "status of the unassigned instance removed", || async {
        !statuses(&c).await.contains_key(&a)
    })
    .await;
    // The frozen agent also self-fenced (its lease expired): its recovery
    // asks for a fresh list, which may pre-empt the compacted watch.
    let log = agent.log();
    assert!(
        log.contains("compacted; listing again") || log.contains("fresh list requested"),
        "{log}"
    );
    wait_until(T, "alive on a new lease", || async {
        alive_lease(&c, &node).await.is_some_and(|l| l != old_lease)
    })
    .await;
    let st = FakeState::load(&dir.path().join(STATE_FILE)).unwrap();
    assert_eq!(st.instances[&b].boot_count, 1);
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent still running"
    );
    assert!(
        !agent.log().contains("permission denied"),
        "{}",
        agent.log()
    );
}
