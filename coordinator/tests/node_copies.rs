//! Every path that writes an instance spec writes the copy its node reads
//! (`/nubo/v1/hosts/<node>/instances/<id>`, the only instance data a
//! node's etcd role may read) in the same transaction: after create, stop,
//! start, reboot, resize, a guest-stop report settled by the leader and
//! delete, the copies equal the specs at the
//! same revision and none is left over; statuses go with their instance.
//! (Evacuation, drain and volume attach/detach check the same through
//! `common::snapshot` in tests/evacuation.rs and tests/volumes.rs.) Real
//! etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::model::{self, GuestStop, Instance, InstanceState, PowerState};
use nubo_common::proto as pb;
use nubo_common::{keys, InstanceId, NodeName};
use nubo_tests::Etcd;

fn action(r: &str) -> pb::ServerActionRequest {
    pb::ServerActionRequest {
        r#ref: r.into(),
        ..Default::default()
    }
}

/// The spec and its mod revision.
async fn spec(etcd: &Etcd, id: &InstanceId) -> (Instance, i64) {
    let mut c = etcd.client().await.unwrap();
    let r = c.get(keys::instance(id), None).await.unwrap();
    let kv = &r.kvs()[0];
    (
        model::decode("spec", kv.value()).unwrap(),
        kv.mod_revision(),
    )
}

/// Polls `f` every 50 ms for up to 20 s.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_write_keeps_the_node_copy_equal() {
    let etcd = Etcd::start().unwrap();
    let coord = coordinator(&etcd).await;
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "n1", res(8, 8192, 100), "nova").await;
    register_node(&etcd, "n2", res(8, 8192, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;
    cl.flavors
        .create(pb::CreateFlavorRequest {
            name: "m1.big".into(),
            vcpus: 2,
            ram_mb: 1024,
            disk_gb: 1,
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();

    let r = create_servers(&mut cl, server_req("web", &[], 3)).await;
    let ids: Vec<String> = (0..3).map(|i| created(&r, i).id).collect();
    assert_eq!(assert_node_copies(&etcd).await, 3);
    let a = ids[0].clone();
    let aid: InstanceId = a.parse().unwrap();

    // Power operations.
    cl.servers.stop(action(&a)).await.unwrap();
    assert_eq!(assert_node_copies(&etcd).await, 3);
    cl.servers.start(action(&a)).await.unwrap();
    cl.servers.reboot(action(&a)).await.unwrap();
    assert_eq!(assert_node_copies(&etcd).await, 3);

    // Resize (stopped, reported stopped by its node) and confirm.
    cl.servers.stop(action(&a)).await.unwrap();
    let node = spec(&etcd, &aid).await.0.node.unwrap();
    report_status(&etcd, &aid, node.as_str(), InstanceState::Stopped).await;
    cl.servers
        .resize(pb::ResizeServerRequest {
            r#ref: a.clone(),
            flavor: "m1.big".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(spec(&etcd, &aid).await.0.flavor.as_str(), "m1.big");
    assert_eq!(assert_node_copies(&etcd).await, 3);
    cl.servers.confirm_resize(action(&a)).await.unwrap();
    assert!(spec(&etcd, &aid).await.0.resize.is_none());
    assert_eq!(assert_node_copies(&etcd).await, 3);

    // A guest-stop report for the current spec: the leader stops it in the
    // spec (and the copy) and removes the report. One for an older spec
    // only goes away.
    cl.servers.start(action(&a)).await.unwrap();
    let (s, rev) = spec(&etcd, &aid).await;
    assert_eq!(s.power, PowerState::Running);
    let stale_id: InstanceId = ids[1].parse().unwrap();
    let (stale, stale_rev) = spec(&etcd, &stale_id).await;
    let mut c = etcd.client().await.unwrap();
    for (node, id, spec_revision) in [
        (&node, &aid, rev),
        (stale.node.as_ref().unwrap(), &stale_id, stale_rev - 1),
    ] {
        c.put(
            keys::guest_stop(node, id),
            model::encode(&GuestStop {
                spec_revision,
                at: model::now(),
            }),
            None,
        )
        .await
        .unwrap();
    }
    let gone = |n: NodeName, id: InstanceId| {
        let etcd = &etcd;
        async move {
            let mut c = etcd.client().await.unwrap();
            let r = c.get(keys::guest_stop(&n, &id), None).await.unwrap();
            r.kvs().is_empty()
        }
    };
    until("the leader settles both reports", || async {
        gone(node.clone(), aid).await && gone(stale.node.clone().unwrap(), stale_id).await
    })
    .await;
    assert_eq!(spec(&etcd, &aid).await.0.power, PowerState::Stopped);
    let (after, after_rev) = spec(&etcd, &stale_id).await;
    assert_eq!(
        (after.power, after_rev),
        (PowerState::Running, stale_rev),
        "a report for an older spec changes nothing"
    );
    assert_eq!(assert_node_copies(&etcd).await, 3);

    // The move paths (evacuation, drain) are checked by every
    // `common::snapshot` of tests/evacuation.rs.
    let mut c = etcd.client().await.unwrap();

    // Delete: spec, copy and status go.
    for id in &ids {
        cl.servers
            .delete(pb::DeleteRequest {
                r#ref: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(assert_node_copies(&etcd).await, 0);
    let statuses = c
        .get(
            keys::all_node_owned_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(statuses.kvs().is_empty());
}
