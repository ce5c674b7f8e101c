//! The agent run in-process against a real etcd, on the fake hypervisor.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::*;
use nubo_agent::compute::hypervisor::ObservedPower;
use nubo_common::keys;
use nubo_common::model::{self, InstanceState, Node, NodeAlive, PowerState};
use nubo_common::{InstanceId, NodeName};
use nubo_tests::Etcd;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_120_instances_and_follows_spec_changes() {
    init_tracing();
    let etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("scale-1").unwrap();
    let mut w = World::create(&c).await;
    let agent = InProcessAgent::start(
        config(&etcd.endpoint(), &node, dir.path()),
        Duration::from_millis(20),
    );
    // Registration and liveness.
    wait_until(T, "node registered", || exists(&c, keys::node_alive(&node))).await;
    let resp = c.kv_client().get(keys::node(&node), None).await.unwrap();
    let rec: Node = model::decode("node", resp.kvs()[0].value()).unwrap();
    assert_eq!(rec.capacity.vcpus, 64);
    let alive = c
        .kv_client()
        .get(keys::node_alive(&node), None)
        .await
        .unwrap();
    let lease = alive.kvs()[0].lease();
    assert_ne!(lease, 0, "alive is bound to a lease");
    let a: NodeAlive = model::decode("alive", alive.kvs()[0].value()).unwrap();
    assert_eq!(a.lease, lease);

    // A VM nobody in nubo created must survive everything.
    let foreign = InstanceId::new_random();
    agent.hv.insert_foreign(foreign).await.unwrap();

    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for _ in 0..120 {
        ids.push(w.add_instance(&c, &node).await.id);
    }
    wait_until(T, "120 instances running", || {
        all_in_state(&c, ids.clone(), &node, InstanceState::Running)
    })
    .await;
    eprintln!("120 instances running after {:?}", started.elapsed());
    let snap = agent.snapshot().await;
    assert_eq!(snap.instances.len(), 121);
    assert!(snap.instances.values().all(|r| r.boot_count == 1));

    // No write churn on a converged node: statuses keep their revision
    // across more reconcile passes triggered by other changes (a network
    // rewritten, then a new instance: once that one runs, a pass that saw
    // both has completed).
    let before = statuses(&c).await;
    put(&c, &keys::network(&w.network), &{
        let r = c
            .kv_client()
            .get(keys::network(&w.network), None)
            .await
            .unwrap();
        model::decode::<model::Network>("n", r.kvs()[0].value()).unwrap()
    })
    .await;
    let barrier = w.add_instance(&c, &node).await.id;
    wait_until(T, "the barrier instance running", || {
        all_in_state(&c, vec![barrier], &node, InstanceState::Running)
    })
    .await;
    let mut after = statuses(&c).await;
    after.remove(&barrier);
    assert_eq!(after, before, "statuses rewritten without change");
    delete(&c, &keys::assignment(&node, &barrier)).await;
    wait_until(T, "the barrier instance gone", || async {
        !agent.snapshot().await.instances.contains_key(&barrier)
    })
    .await;

    // Unassign 10: destroyed and their status removed.
    let (gone, kept) = ids.split_at(10);
    for id in gone {
        delete(&c, &keys::assignment(&node, id)).await;
    }
    wait_until(T, "unassigned instances destroyed", || async {
        let s = agent.snapshot().await;
        gone.iter().all(|id| !s.instances.contains_key(id))
    })
    .await;
    wait_until(T, "their statuses removed", || async {
        let st = statuses(&c).await;
        gone.iter().all(|id| !st.contains_key(id))
    })
    .await;
    assert!(all_in_state(&c, kept.to_vec(), &node, InstanceState::Running).await);
    assert!(agent.snapshot().await.instances.contains_key(&foreign));

    // Stop, start and reboot through the spec.
    let target = kept[0];
    let read_spec = || get_spec(&c, &target);
    let mut spec = read_spec().await;
    spec.power = PowerState::Stopped;
    put_spec(&c, &spec).await;
    wait_until(T, "stopped", || {
        all_in_state(&c, vec![target], &node, InstanceState::Stopped)
    })
    .await;
    assert_eq!(
        agent.snapshot().await.instances[&target].power,
        ObservedPower::Stopped
    );
    spec.power = PowerState::Running;
    put_spec(&c, &spec).await;
    wait_until(T, "running again", || {
        all_in_state(&c, vec![target], &node, InstanceState::Running)
    })
    .await;
    assert_eq!(agent.snapshot().await.instances[&target].boot_count, 2);

    spec.reboot_generation = 1;
    put_spec(&c, &spec).await;
    wait_until(T, "reboot acted on", || async {
        statuses(&c)
            .await
            .get(&target)
            .is_some_and(|(s, _)| s.reboot_generation == 1 && s.state == InstanceState::Running)
    })
    .await;
    // Once an instance created after that runs, later passes have seen the
    // reboot done: still exactly one.
    let barrier = w.add_instance(&c, &node).await.id;
    wait_until(T, "a later instance running", || {
        all_in_state(&c, vec![barrier], &node, InstanceState::Running)
    })
    .await;
    let snap = agent.snapshot().await;
    assert_eq!(snap.instances[&target].boot_count, 3, "exactly one reboot");
    // Others untouched.
    assert!(kept[1..]
        .iter()
        .all(|id| snap.instances[id].boot_count == 1));
    assert!(agent.is_running());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_values_are_skipped_and_nothing_is_torn_down() {
    init_tracing();
    let etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("garbage-1").unwrap();
    let mut w = World::create(&c).await;
    let a = w.add_instance(&c, &node).await;
    let b = w.add_instance(&c, &node).await;
    let agent = InProcessAgent::start(config(&etcd.endpoint(), &node, dir.path()), Duration::ZERO);
    wait_until(T, "a and b running", || {
        all_in_state(&c, vec![a.id, b.id], &node, InstanceState::Running)
    })
    .await;

    // Garbage: a new instance spec, b's port, and an assignment.
    let junk_instance = InstanceId::new_random();
    put_raw(
        &c,
        &keys::node_spec(&node, &junk_instance),
        b"{\"this is\": not json",
    )
    .await;
    put(
        &c,
        &keys::assignment(&node, &junk_instance),
        &model::Assignment {
            instance: junk_instance,
            node: node.clone(),
            assigned_at: model::now(),
        },
    )
    .await;
    put_raw(&c, &keys::port(&b.ports[0]), b"42").await;
    let junk_assignment = InstanceId::new_random();
    put_raw(&c, &keys::assignment(&node, &junk_assignment), b"\xff\xfe").await;
    // Malformed ids in keys as well.
    put_raw(&c, "/nubo/v1/instances/not-a-uuid", b"{}").await;

    // A good instance written after the garbage still converges.
    let d = w.add_instance(&c, &node).await;
    wait_until(T, "d running", || {
        all_in_state(&c, vec![d.id], &node, InstanceState::Running)
    })
    .await;
    // b (whose port is garbage) is held, not destroyed, and the reason is reported.
    wait_until(T, "b reports the undecodable port", || async {
        statuses(&c).await.get(&b.id).is_some_and(|(s, _)| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("undecodable"))
        })
    })
    .await;
    let snap = agent.snapshot().await;
    assert_eq!(snap.instances[&a.id].boot_count, 1);
    assert_eq!(snap.instances[&b.id].boot_count, 1);
    assert_eq!(snap.instances[&b.id].power, ObservedPower::Running);
    assert!(!snap.instances.contains_key(&junk_instance));
    assert!(!snap.instances.contains_key(&junk_assignment));
    let st = statuses(&c).await;
    assert_eq!(st[&junk_instance].0.state, InstanceState::Error);
    assert!(all_in_state(&c, vec![a.id], &node, InstanceState::Running).await);

    // Healing the port clears the error without touching the VM.
    let mut port: model::Port = {
        // Rebuild b's port as it was (the test wrote it; re-create from spec).
        let r = c
            .kv_client()
            .get(keys::port(&a.ports[0]), None)
            .await
            .unwrap();
        model::decode("p", r.kvs()[0].value()).unwrap()
    };
    port.id = b.ports[0];
    port.mac = "fa:16:3e:ff:00:01".parse().unwrap();
    put(&c, &keys::port(&b.ports[0]), &port).await;
    wait_until(T, "b healthy again", || async {
        statuses(&c)
            .await
            .get(&b.id)
            .is_some_and(|(s, _)| s.last_error.is_none() && s.state == InstanceState::Running)
    })
    .await;
    assert_eq!(agent.snapshot().await.instances[&b.id].boot_count, 1);
    assert!(agent.is_running());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_leaves_instances_alone_and_the_agent_resyncs() {
    init_tracing();
    let mut etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("outage-1").unwrap();
    let mut w = World::create(&c).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(w.add_instance(&c, &node).await.id);
    }
    let agent = InProcessAgent::start(config(&etcd.endpoint(), &node, dir.path()), Duration::ZERO);
    wait_until(T, "running", || {
        all_in_state(&c, ids.clone(), &node, InstanceState::Running)
    })
    .await;
    let before = agent.snapshot().await;

    etcd.stop();
    // Self-fencing freezes them (evacuation policy auto) once the lease
    // would have expired, but never destroys or reboots them (see
    // self_fence.rs for the details).
    wait_until(T, "instances frozen by self-fencing", || async {
        let s = agent.snapshot().await;
        ids.iter()
            .all(|id| s.instances[id].power == ObservedPower::Paused)
    })
    .await;
    let during = agent.snapshot().await;
    assert_eq!(during.instances.len(), before.instances.len());
    for (id, r) in &before.instances {
        let d = &during.instances[id];
        assert_eq!(
            (d.boot_count, d.created_at),
            (r.boot_count, r.created_at),
            "instance {id} restarted during the outage"
        );
        assert_ne!(d.power, ObservedPower::Stopped, "instance {id} stopped");
    }
    assert!(agent.is_running());
    etcd.restart().unwrap();

    let c = etcd.client().await.unwrap();
    let late = w.add_instance(&c, &node).await.id;
    delete(&c, &keys::assignment(&node, &ids[0])).await;
    wait_until(T, "new instance running after resync", || {
        all_in_state(&c, vec![late], &node, InstanceState::Running)
    })
    .await;
    wait_until(T, "unassigned one destroyed after resync", || async {
        !agent.snapshot().await.instances.contains_key(&ids[0])
    })
    .await;
    wait_until(T, "alive again", || exists(&c, keys::node_alive(&node))).await;
    let after = agent.snapshot().await;
    for id in &ids[1..] {
        assert_eq!(after.instances[id], before.instances[id]);
    }
    agent.stop().await;
}
