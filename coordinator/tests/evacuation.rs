//! Failure handling against a real etcd: node failure → suspect → fenced →
//! evacuated (same ports), policies, the cluster switch, recovery, a leader
//! stopped half-way through an evacuation, and drain with a fake agent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use etcd_client::GetOptions;
use nubo_common::keys;
use nubo_common::model::{self, Instance, InstanceState, InstanceStatus, PowerState};
use nubo_common::proto as pb;
use nubo_common::{InstanceId, NodeName};
use nubo_coordinator::{Config, Coordinator, FenceCall, RecordingFencer};
use nubo_tests::Etcd;

const WAIT: Duration = Duration::from_secs(30);

fn nn(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

async fn start(
    etcd: &Etcd,
    fencer: Arc<RecordingFencer>,
    f: impl FnOnce(&mut Config),
) -> Coordinator {
    let mut cfg = Config::for_tests(etcd.endpoint());
    f(&mut cfg);
    nubo_coordinator::start_with_fencer(cfg, fencer)
        .await
        .unwrap()
}

/// Polls `f` every 50 ms until it returns Some, or panics after `WAIT`
/// with the last observation.
async fn until<T, O: std::fmt::Debug, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, O>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(o) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last observed: {o:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn create(cl: &mut Clients, name: &str, count: u32, policy: &str) -> Vec<InstanceId> {
    let r = create_servers(
        cl,
        pb::CreateServerRequest {
            evacuation_policy: policy.into(),
            ..server_req(name, &["net"], count)
        },
    )
    .await;
    (0..r.results.len())
        .map(|i| created(&r, i).id.parse().unwrap())
        .collect()
}

async fn health(mut cl: NodesOnly, node: &str) -> pb::Node {
    node_info(&mut cl.nodes, node).await
}

/// Waits until `node` has health `health`; returns the node as the nodes
/// API shows it then.
async fn wait_health(cl: &Clients, node: &str, health: &str) -> pb::Node {
    until(&format!("{node} {health}"), || async {
        let h = self::health(cl.clone_nodes(), node).await;
        if h.health == health {
            Ok(h)
        } else {
            Err((h.health, h.health_reason))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_node_is_fenced_and_evacuated_with_its_ports_and_comes_back_up() {
    let etcd = Etcd::start().unwrap();
    let fencer = Arc::new(RecordingFencer::default());
    let c = start(&etcd, fencer.clone(), |_| {}).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.40.0.0/22").await;
    let lease0 = register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let auto = create(&mut cl, "auto", 5, "").await;
    let never = create(&mut cl, "never", 1, "never").await;
    let manual = create(&mut cl, "manual", 1, "manual").await;
    register_node(&etcd, "n1", res(8, 3 * 512, 100), "nova").await;
    register_node(&etcd, "n2", res(8, 3 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 3).await;
    wait_health(&cl, "n0", "up").await;
    let before = snapshot(&etcd).await;
    // The password auto[0]'s guest posted to n0's metadata service.
    let mut kv = etcd.client().await.unwrap();
    kv.put(
        keys::instance_password(&nn("n0"), &auto[0]),
        "pw-of-auto-0",
        None,
    )
    .await
    .unwrap();

    revoke(&etcd, lease0).await;
    let h = wait_health(&cl, "n0", "evacuated").await;
    assert!(!h.alive);
    assert_eq!(fencer.calls(), vec![FenceCall::Fence(nn("n0"))]);

    let caps: HashMap<_, _> = [
        (nn("n0"), 8 * 512),
        (nn("n1"), 3 * 512),
        (nn("n2"), 3 * 512),
    ]
    .into();
    let after = check_invariants(&etcd, &caps).await;
    for id in &auto {
        let spec = &after.specs[id];
        let to = spec.node.clone().unwrap();
        assert_ne!(to, nn("n0"), "auto instance {id} was not moved");
        for p in &spec.ports {
            let (old, new) = (&before.ports[p], &after.ports[p]);
            assert_eq!(
                (old.ip, old.mac),
                (new.ip, new.mac),
                "port {p} changed address"
            );
            assert_eq!(new.node.as_ref(), Some(&to));
        }
        let st: InstanceStatus = get(&etcd, &keys::instance_status(&to, id)).await.unwrap();
        assert_eq!((st.state, st.node), (InstanceState::Pending, to));
    }
    for id in never.iter().chain(&manual) {
        assert_eq!(after.specs[id].node, Some(nn("n0")), "{id} must stay");
    }
    // The password moved with its server: served from the new node's keys.
    let to = after.specs[&auto[0]].node.clone().unwrap();
    let pw = |r: Option<Vec<u8>>| r.map(|v| String::from_utf8(v).unwrap());
    let at = |n: &NodeName| keys::instance_password(n, &auto[0]);
    let read = |k: String| {
        let mut kv = kv.clone();
        async move {
            kv.get(k, None)
                .await
                .unwrap()
                .kvs()
                .first()
                .map(|x| x.value().to_vec())
        }
    };
    assert_eq!(pw(read(at(&to)).await).as_deref(), Some("pw-of-auto-0"));
    assert_eq!(read(at(&nn("n0"))).await, None);
    let shown = cl
        .servers
        .get_password(pb::GetRequest {
            r#ref: auto[0].to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.password, "pw-of-auto-0");

    // The agent comes back: up again, unfenced, nothing moves back.
    register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_health(&cl, "n0", "up").await;
    assert_eq!(
        fencer.calls(),
        vec![FenceCall::Fence(nn("n0")), FenceCall::Unfence(nn("n0"))]
    );
    let back = check_invariants(&etcd, &caps).await;
    for id in &auto {
        assert_eq!(back.specs[id].node, after.specs[id].node);
    }
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_capacity_is_reported_and_retried_and_the_switch_stops_evacuation() {
    let etcd = Etcd::start().unwrap();
    let fencer = Arc::new(RecordingFencer::default());
    let c = start(&etcd, fencer.clone(), |_| {}).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.40.0.0/22").await;
    cl.nodes
        .set_evacuation_enabled(pb::SetEvacuationEnabledRequest { enabled: false })
        .await
        .unwrap();
    let lease0 = register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let ids = create(&mut cl, "vm", 4, "auto").await;
    register_node(&etcd, "n1", res(8, 2 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;

    revoke(&etcd, lease0).await;
    let h = until("n0 fenced with the switch off", || async {
        let h = health(cl.clone_nodes(), "n0").await;
        if h.health == "fenced" && h.health_reason.contains("disabled") {
            Ok(h)
        } else {
            Err((h.health, h.health_reason))
        }
    })
    .await;
    assert_eq!(h.health, "fenced");
    // The decision not to move was taken: nothing moved.
    let s = snapshot(&etcd).await;
    assert!(ids.iter().all(|id| s.specs[id].node == Some(nn("n0"))));

    // Switch on: two fit on n1, two are reported and retried.
    cl.nodes
        .set_evacuation_enabled(pb::SetEvacuationEnabledRequest { enabled: true })
        .await
        .unwrap();
    let errors = until("two instances in error", || async {
        let s = snapshot(&etcd).await;
        let mut errs = 0;
        for id in &ids {
            if s.specs[id].node == Some(nn("n0")) {
                let st: Option<InstanceStatus> =
                    get(&etcd, &keys::instance_status(&nn("n0"), id)).await;
                if st.is_some_and(|st| {
                    st.state == InstanceState::Error
                        && st.last_error.as_deref() == Some("evacuation failed: no capacity")
                }) {
                    errs += 1;
                }
            }
        }
        let moved = ids
            .iter()
            .filter(|id| s.specs[*id].node == Some(nn("n1")))
            .count();
        if moved == 2 && errs == 2 {
            Ok(errs)
        } else {
            Err((moved, errs))
        }
    })
    .await;
    assert_eq!(errors, 2);
    register_node(&etcd, "n2", res(8, 2 * 512, 100), "nova").await;
    wait_health(&cl, "n0", "evacuated").await;
    let caps: HashMap<_, _> = [
        (nn("n0"), 8 * 512),
        (nn("n1"), 2 * 512),
        (nn("n2"), 2 * 512),
    ]
    .into();
    let s = check_invariants(&etcd, &caps).await;
    assert!(ids.iter().all(|id| s.specs[id].node != Some(nn("n0"))));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_half_way_is_finished_by_the_next_one() {
    let etcd = Etcd::start().unwrap();
    let fencer = Arc::new(RecordingFencer::default());
    let slow = |c: &mut Config| c.failure.move_delay = Duration::from_millis(300);
    let a = start(&etcd, fencer.clone(), slow).await;
    let mut ca = clients(&a).await;
    until("a leads", || async {
        if a.is_leader() {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    let b = start(&etcd, fencer.clone(), slow).await;
    let mut cb = clients(&b).await;
    setup_basics(&mut ca).await;
    create_network(&mut ca, "net", "10.40.0.0/22").await;
    let lease0 = register_node(&etcd, "n0", res(64, 64 * 512, 100), "nova").await;
    wait_nodes(&mut ca, 1).await;
    let ids = create(&mut ca, "vm", 48, "").await;
    for n in ["n1", "n2", "n3"] {
        register_node(&etcd, n, res(64, 16 * 512, 100), "nova").await;
    }
    wait_nodes(&mut ca, 4).await;
    wait_nodes(&mut cb, 4).await;
    revoke(&etcd, lease0).await;
    let n0 = nn("n0");
    until("a few moves by a", || async {
        let left = prefix(&etcd, &keys::assignments_prefix(&n0)).await.len();
        if (1..40).contains(&left) {
            Ok(())
        } else {
            Err(left)
        }
    })
    .await;
    a.shutdown().await.unwrap();
    let left = prefix(&etcd, &keys::assignments_prefix(&n0)).await.len();
    assert!(left > 0, "a finished everything before it was stopped");
    until("b evacuated n0", || async {
        let h = health(cb.clone_nodes(), "n0").await;
        if h.health == "evacuated" && b.is_leader() {
            Ok(())
        } else {
            Err((h.health, b.is_leader()))
        }
    })
    .await;
    let caps: HashMap<_, _> = [
        (nn("n0"), 64 * 512),
        (nn("n1"), 16 * 512),
        (nn("n2"), 16 * 512),
        (nn("n3"), 16 * 512),
    ]
    .into();
    let s = check_invariants(&etcd, &caps).await;
    assert_eq!(s.specs.len(), ids.len());
    assert!(ids.iter().all(|id| s.specs[id].node != Some(n0.clone())));
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_cold_migrates_everything_and_restores_power() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, Arc::new(RecordingFencer::default()), |_| {}).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.40.0.0/22").await;
    register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let ids = create(&mut cl, "vm", 4, "never").await;
    let stopped = create(&mut cl, "off", 1, "").await;
    cl.servers
        .stop(pb::ServerActionRequest {
            r#ref: stopped[0].to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    register_node(&etcd, "n1", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;

    // A fake agent for n0: reports stopped whatever is desired stopped there.
    let agent = {
        let etcd_client = etcd.client().await.unwrap();
        tokio::spawn(async move {
            let mut c = etcd_client;
            loop {
                let r = c
                    .get(
                        keys::instances_prefix(),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await
                    .unwrap();
                for kv in r.kvs() {
                    let k = kv.key_str().unwrap();
                    let Some(keys::Key::Instance(id)) = keys::parse(k) else {
                        continue;
                    };
                    let i: Instance = model::decode(k, kv.value()).unwrap();
                    if i.node == Some(nn("n0")) && i.power == PowerState::Stopped {
                        let st = InstanceStatus {
                            state: InstanceState::Stopped,
                            node: nn("n0"),
                            updated_at: model::now(),
                            last_error: None,
                            reboot_generation: 0,
                            volumes: Vec::new(),
                            size: None,
                        };
                        c.put(
                            keys::instance_status(&st.node, &id),
                            model::encode(&st),
                            None,
                        )
                        .await
                        .unwrap();
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = cl
        .nodes
        .drain(pb::DrainNodeRequest {
            name: "n0".into(),
            stop_timeout_secs: 20,
            live: false,
        })
        .await
        .unwrap()
        .into_inner();
    agent.abort();
    assert_eq!(r.results.len(), 5);
    assert!(
        r.results
            .iter()
            .all(|m| m.to_node == "n1" && m.error.is_empty()),
        "{r:?}"
    );
    let caps: HashMap<_, _> = [(nn("n0"), 8 * 512), (nn("n1"), 8 * 512)].into();
    let s = check_invariants(&etcd, &caps).await;
    for id in &ids {
        assert_eq!(s.specs[id].node, Some(nn("n1")));
        assert_eq!(s.specs[id].power, PowerState::Running, "power not restored");
    }
    assert_eq!(s.specs[&stopped[0]].power, PowerState::Stopped);
    let n0 = health(cl.clone_nodes(), "n0").await;
    assert!(!n0.enabled, "a drained node stays disabled");
    assert_eq!(n0.health, "up");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_evacuate_refuses_a_live_node_and_moves_manual_instances() {
    let etcd = Etcd::start().unwrap();
    let fencer = Arc::new(RecordingFencer::default());
    // A long grace: the operator acts before the leader would.
    let c = start(&etcd, fencer.clone(), |c| {
        c.failure.suspect_grace = Duration::from_secs(3600)
    })
    .await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.40.0.0/22").await;
    let lease0 = register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let manual = create(&mut cl, "m", 2, "manual").await;
    let never = create(&mut cl, "n", 1, "never").await;
    register_node(&etcd, "n1", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;
    let err = cl
        .nodes
        .evacuate(pb::EvacuateNodeRequest {
            name: "n0".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    revoke(&etcd, lease0).await;
    until("n0 not alive in the view", || async {
        let h = health(cl.clone_nodes(), "n0").await;
        if !h.alive {
            Ok(())
        } else {
            Err(h.alive)
        }
    })
    .await;
    let r = cl
        .nodes
        .evacuate(pb::EvacuateNodeRequest {
            name: "n0".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 2, "{r:?}");
    assert!(r.results.iter().all(|m| m.to_node == "n1"));
    assert_eq!(fencer.calls(), vec![FenceCall::Fence(nn("n0"))]);
    let caps: HashMap<_, _> = [(nn("n0"), 8 * 512), (nn("n1"), 8 * 512)].into();
    let s = check_invariants(&etcd, &caps).await;
    assert!(manual.iter().all(|id| s.specs[id].node == Some(nn("n1"))));
    assert_eq!(s.specs[&never[0]].node, Some(nn("n0")));
    c.shutdown().await.unwrap();
}
