//! Agent-side failure handling against a real etcd, on the fake driver:
//! self-fencing (freeze) when keep-alives are no longer acknowledged, and
//! the return: resume what is still assigned, destroy what was moved away,
//! never overwrite the status written for the new node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use nubo_agent::compute::hypervisor::fake::FakeState;
use nubo_agent::compute::hypervisor::{HypervisorError, ObservedPower};
use nubo_agent::state::desired::DesiredInstance;
use nubo_agent::{AgentConfig, FakeHypervisor, Hypervisor, ObservedInstance};
use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, EvacuationPolicy, Instance, InstanceState, InstanceStatus,
};
use nubo_common::{InstanceId, NodeName};
use nubo_tests::Etcd;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(60);

/// A hypervisor operation, recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Start,
    Stop,
    Reboot,
    Destroy,
    Pause,
    Resume,
}

impl Op {
    fn boots(self) -> bool {
        matches!(self, Op::Create | Op::Start | Op::Reboot | Op::Resume)
    }
}

/// The fake driver, recording every successful mutating call.
struct Recording {
    fake: Arc<FakeHypervisor>,
    ops: Mutex<Vec<(Instant, Op, InstanceId)>>,
}

impl Recording {
    fn record(&self, op: Op, id: InstanceId, r: &Result<(), HypervisorError>) {
        if r.is_ok() {
            self.ops.lock().unwrap().push((Instant::now(), op, id));
        }
    }
    fn ops_since(&self, t: Instant) -> Vec<(Op, InstanceId)> {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, _)| *at >= t)
            .map(|(_, op, id)| (*op, *id))
            .collect()
    }
}

#[async_trait]
impl Hypervisor for Recording {
    fn driver(&self) -> &'static str {
        "fake"
    }
    async fn list(&self) -> Result<Vec<ObservedInstance>, HypervisorError> {
        self.fake.list().await
    }
    async fn create(&self, spec: &DesiredInstance) -> Result<(), HypervisorError> {
        let r = self.fake.create(spec).await;
        self.record(Op::Create, spec.id(), &r);
        r
    }
    async fn start(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.start(id).await;
        self.record(Op::Start, id, &r);
        r
    }
    async fn stop(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.stop(id).await;
        self.record(Op::Stop, id, &r);
        r
    }
    async fn reboot(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.reboot(id).await;
        self.record(Op::Reboot, id, &r);
        r
    }
    async fn destroy(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.destroy(id).await;
        self.record(Op::Destroy, id, &r);
        r
    }
    async fn pause(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.pause(id).await;
        self.record(Op::Pause, id, &r);
        r
    }
    async fn resume(&self, id: InstanceId) -> Result<(), HypervisorError> {
        let r = self.fake.resume(id).await;
        self.record(Op::Resume, id, &r);
        r
    }
}

/// An in-process agent on a [`Recording`] fake driver.
struct Agent {
    hv: Arc<Recording>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    fn start(cfg: AgentConfig) -> Self {
        let fake = Arc::new(FakeHypervisor::open(&cfg.state_dir, Duration::ZERO).unwrap());
        let hv = Arc::new(Recording {
            fake,
            ops: Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dyn_hv: Arc<dyn Hypervisor> = hv.clone();
        let task = tokio::spawn(async move {
            nubo_agent::run_with_hypervisor(cfg, dyn_hv, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            hv,
            stop: Some(tx),
            task,
        }
    }
    async fn snapshot(&self) -> FakeState {
        self.hv.fake.snapshot().await
    }
    async fn power(&self, id: &InstanceId) -> Option<ObservedPower> {
        self.snapshot().await.instances.get(id).map(|r| r.power)
    }
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap();
    }
}

async fn set_policy(c: &Client, id: &InstanceId, p: EvacuationPolicy) {
    let mut spec: Instance = get_spec(c, id).await;
    spec.evacuation = p;
    put_spec(c, &spec).await;
}

/// What the coordinator's evacuation does for one instance (one txn):
/// assignment moved, spec and status name the new node.
async fn move_instance(c: &Client, id: &InstanceId, from: &NodeName, to: &NodeName) {
    let mut spec: Instance = get_spec(c, id).await;
    spec.node = Some(to.clone());
    let status = InstanceStatus {
        state: InstanceState::Running,
        node: to.clone(),
        updated_at: model::now(),
        last_error: None,
        reboot_generation: 0,
        volumes: Vec::new(),
        size: None,
    };
    let from_key = keys::assignment(from, id);
    let txn = Txn::new()
        .when([Compare::version(from_key.as_str(), CompareOp::Greater, 0)])
        .and_then([
            TxnOp::delete(from_key.as_str(), None),
            TxnOp::put(
                keys::assignment(to, id),
                model::encode(&Assignment {
                    instance: *id,
                    node: to.clone(),
                    assigned_at: model::now(),
                }),
                None,
            ),
            TxnOp::put(keys::instance(id), model::encode(&spec), None),
            TxnOp::put(keys::node_spec(to, id), model::encode(&spec), None),
            TxnOp::delete(keys::node_spec(from, id), None),
            TxnOp::delete(keys::instance_status(from, id), None),
            TxnOp::put(keys::instance_status(to, id), model::encode(&status), None),
        ]);
    assert!(c.kv_client().txn(txn).await.unwrap().succeeded());
}

fn fenced_config(endpoint: &str, node: &NodeName, dir: &std::path::Path) -> AgentConfig {
    let cfg = config(endpoint, node, dir);
    // TTL 2 s (test config): the agent freezes after 1.6 s of silence.
    assert!(cfg.self_fence_after() < cfg.lease_ttl);
    cfg
}

/// etcd down for `outage`: instances with policy auto/manual are frozen,
/// `never` keeps running, the agent keeps running; after etcd returns they
/// run again without having been rebooted or re-created.
async fn etcd_outage(outage: Duration) {
    init_tracing();
    let mut etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("outage-fence-1").unwrap();
    let mut w = World::create(&c).await;
    let auto: Vec<InstanceId> = vec![
        w.add_instance(&c, &node).await.id,
        w.add_instance(&c, &node).await.id,
    ];
    let manual = w.add_instance(&c, &node).await.id;
    set_policy(&c, &manual, EvacuationPolicy::Manual).await;
    let never = w.add_instance(&c, &node).await.id;
    set_policy(&c, &never, EvacuationPolicy::Never).await;
    let frozen: Vec<InstanceId> = auto.iter().copied().chain([manual]).collect();
    let all: Vec<InstanceId> = frozen.iter().copied().chain([never]).collect();

    let agent = Agent::start(fenced_config(&etcd.endpoint(), &node, dir.path()));
    wait_until(T, "running", || {
        all_in_state(&c, all.clone(), &node, InstanceState::Running)
    })
    .await;
    let before = agent.snapshot().await;

    let down = Instant::now();
    etcd.stop();
    wait_until(T, "auto and manual instances frozen", || async {
        let s = agent.snapshot().await;
        frozen
            .iter()
            .all(|id| s.instances[id].power == ObservedPower::Paused)
    })
    .await;
    eprintln!("frozen {:?} after etcd stopped", down.elapsed());
    assert_eq!(agent.power(&never).await, Some(ObservedPower::Running));
    while down.elapsed() < outage {
        assert!(!agent.task.is_finished(), "agent exited during the outage");
        assert_eq!(
            agent.power(&never).await,
            Some(ObservedPower::Running),
            "`never` instance touched during the outage"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    etcd.restart().unwrap();
    let c = etcd.client().await.unwrap();

    wait_until(T, "resumed after etcd returned", || async {
        let s = agent.snapshot().await;
        all.iter()
            .all(|id| s.instances[id].power == ObservedPower::Running)
    })
    .await;
    wait_until(T, "statuses running", || {
        all_in_state(&c, all.clone(), &node, InstanceState::Running)
    })
    .await;
    wait_until(T, "alive", || exists(&c, keys::node_alive(&node))).await;
    // Nothing re-created or rebooted: same records as before the outage.
    assert_eq!(agent.snapshot().await, before);
    let ops = agent.hv.ops_since(down);
    assert!(
        ops.iter()
            .all(|(op, _)| matches!(op, Op::Pause | Op::Resume)),
        "only freezes and resumes during and after the outage: {ops:?}"
    );
    for id in &frozen {
        assert!(ops.contains(&(Op::Pause, *id)) && ops.contains(&(Op::Resume, *id)));
    }
    assert!(ops.iter().all(|(_, id)| *id != never));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_of_20s_freezes_then_resumes_without_reboot() {
    etcd_outage(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 s outage; run with --ignored"]
async fn etcd_outage_of_60s_freezes_then_resumes_without_reboot() {
    etcd_outage(Duration::from_secs(60)).await;
}

/// A TCP proxy to etcd that can cut this agent off (existing connections
/// dropped, new ones closed at once) while etcd stays up for everyone else.
struct Cutter {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Cutter {
    async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("etcd endpoint host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() {
                    drop(down);
                    continue;
                }
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// A node cut off from etcd (etcd up for everyone else): it freezes before
/// its lease expires; the "coordinator" moves two of its instances away;
/// when it comes back it destroys those two without ever running them
/// again, leaves their status alone, and resumes the one still assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_destroys_what_was_moved_away_and_keeps_its_status() {
    init_tracing();
    let etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let cutter = Cutter::start(&etcd.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("cut-1").unwrap();
    let other = NodeName::new("cut-2").unwrap();
    let mut w = World::create(&c).await;
    let moved: Vec<InstanceId> = vec![
        w.add_instance(&c, &node).await.id,
        w.add_instance(&c, &node).await.id,
    ];
    let stays = w.add_instance(&c, &node).await.id;
    let never = w.add_instance(&c, &node).await.id;
    set_policy(&c, &never, EvacuationPolicy::Never).await;
    let all: Vec<InstanceId> = moved.iter().copied().chain([stays, never]).collect();

    let agent = Agent::start(fenced_config(&cutter.endpoint(), &node, dir.path()));
    wait_until(T, "running", || {
        all_in_state(&c, all.clone(), &node, InstanceState::Running)
    })
    .await;
    let before = agent.snapshot().await;

    let cut_at = Instant::now();
    cutter.set(true);
    wait_until(T, "lease expired (alive key gone)", || async {
        !exists(&c, keys::node_alive(&node)).await
    })
    .await;
    wait_until(T, "auto instances frozen", || async {
        let s = agent.snapshot().await;
        moved
            .iter()
            .chain([&stays])
            .all(|id| s.instances[id].power == ObservedPower::Paused)
    })
    .await;
    assert_eq!(agent.power(&never).await, Some(ObservedPower::Running));

    // Evacuation, as the leader would do it once the node is fenced.
    for id in &moved {
        move_instance(&c, id, &node, &other).await;
    }
    let moved_statuses: Vec<(InstanceStatus, i64)> = {
        let st = statuses(&c).await;
        moved.iter().map(|id| st[id].clone()).collect()
    };
    assert!(moved_statuses.iter().all(|(s, _)| s.node == other));

    cutter.set(false);
    wait_until(T, "alive again", || exists(&c, keys::node_alive(&node))).await;
    wait_until(T, "moved instances destroyed here", || async {
        let s = agent.snapshot().await;
        moved.iter().all(|id| !s.instances.contains_key(id))
    })
    .await;
    wait_until(T, "the still-assigned one resumed", || async {
        agent.power(&stays).await == Some(ObservedPower::Running)
    })
    .await;
    // Compute runs again: a new instance converges…
    let late = w.add_instance(&c, &node).await.id;
    wait_until(T, "new instance running", || {
        all_in_state(&c, vec![late, stays, never], &node, InstanceState::Running)
    })
    .await;
    // …and the moved ones' statuses are still the new node's, untouched.
    let st = statuses(&c).await;
    for (id, prev) in moved.iter().zip(&moved_statuses) {
        assert_eq!(&st[id], prev, "status of moved instance {id} overwritten");
    }
    let ops = agent.hv.ops_since(cut_at);
    for id in &moved {
        assert!(
            !ops.iter().any(|(op, i)| i == id && op.boots()),
            "moved instance {id} run again: {ops:?}"
        );
        assert!(ops.contains(&(Op::Destroy, *id)), "{ops:?}");
    }
    assert!(!ops.iter().any(|(_, i)| *i == never), "{ops:?}");
    let after = agent.snapshot().await;
    for id in [stays, never] {
        assert_eq!(after.instances[&id], before.instances[&id], "{id}");
    }
    agent.stop().await;
}
