//! `Servers.Resize` against a real etcd, the agent played by the test
//! (it writes the status a fake agent would): refused while running or not
//! yet reported stopped, refused when the node cannot hold the new size or
//! the disk size differs; otherwise the spec and the node's usage change in
//! one transaction.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::model::{Instance, InstanceState};
use nubo_common::proto as pb;
use nubo_common::{keys, NodeName};
use nubo_tests::Etcd;
use tonic::Code;

async fn flavor(cl: &mut Clients, name: &str, vcpus: u32, ram_mb: u64, disk_gb: u64) {
    cl.flavors
        .create(pb::CreateFlavorRequest {
            name: name.into(),
            vcpus,
            ram_mb,
            disk_gb,
        })
        .await
        .unwrap();
}

async fn resize(cl: &mut Clients, id: &str, flavor: &str) -> Result<pb::Server, tonic::Status> {
    cl.servers
        .resize(pb::ResizeServerRequest {
            r#ref: id.into(),
            flavor: flavor.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Writes the status the node's agent would write.
async fn report(etcd: &Etcd, id: &str, node: &str, state: InstanceState) {
    report_status(etcd, &id.parse().unwrap(), node, state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_only_a_stopped_server_and_only_if_it_fits() {
    let etcd = Etcd::start().unwrap();
    let coord = coordinator(&etcd).await;
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    // RAM is what fills (ratio 1.0): 2048 MiB.
    register_node(&etcd, "n1", res(4, 2048, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    flavor(&mut cl, "m1.big", 2, 1024, 1).await;
    flavor(&mut cl, "m1.huge", 2, 1600, 1).await;
    flavor(&mut cl, "m1.disk", 1, 512, 5).await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let r = create_servers(&mut cl, server_req(name, &[], 1)).await;
        ids.push(created(&r, 0).id);
    }
    let a = ids[0].clone();
    // a + b: 1024 of 2048 MiB.
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);

    // Desired running.
    let e = resize(&mut cl, &a, "m1.big").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("stop it before resizing"), "{e:?}");

    // Stopped, but the agent has not reported it stopped yet.
    cl.servers
        .stop(pb::ServerActionRequest {
            r#ref: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    report(&etcd, &a, "n1", InstanceState::Running).await;
    let e = resize(&mut cl, &a, "m1.big").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not reported stopped yet"), "{e:?}");

    report(&etcd, &a, "n1", InstanceState::Stopped).await;
    // Another disk size, an unknown flavor, a size the node cannot hold
    // (1600 + b's 512 > 2048): refused, nothing changes.
    let e = resize(&mut cl, &a, "m1.disk").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = resize(&mut cl, &a, "m1.nope").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = resize(&mut cl, &a, "m1.huge").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("1536 MiB free"), "{e:?}");
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);

    // Fits: spec and usage change together.
    resize(&mut cl, &a, "m1.big").await.unwrap();
    let u = usage(&etcd, "n1").await;
    assert_eq!((u.used.vcpus, u.used.ram_mb, u.instances), (3, 1536, 2));
    let spec: Instance = get(&etcd, &keys::instance(&a.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(spec.flavor.as_str(), "m1.big");
    assert_eq!((spec.resources.vcpus, spec.resources.ram_mb), (2, 1024));
    assert_eq!(spec.node, Some(NodeName::new("n1").unwrap()));
    // Same size again: nothing to do. Back down: usage shrinks.
    resize(&mut cl, &a, "m1.big").await.unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1536);
    resize(&mut cl, &a, "m1.small").await.unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);
    // Deleting it gives back what it holds now.
    cl.servers
        .delete(pb::DeleteRequest {
            r#ref: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 512);
}
