//! `Servers.Resize`, `ConfirmResize` and `RevertResize` against a real
//! etcd (no agent: the spec is what an agent would converge to): a running
//! or stopped server takes the new size at once and keeps the old flavor
//! until confirm/revert; the node holds the larger of both sizes meanwhile
//! and gets the difference back on confirm/revert; a node that cannot hold
//! the new size, another disk size, an unknown flavor and a second resize
//! are refused with nothing changed; the steps are recorded as instance
//! actions; delete during a pending resize gives back all it holds. The
//! phase (`resizing` → `verify`) follows the size the agent reports; an
//! evacuation during a pending resize moves the larger size it holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::keys;
use nubo_common::model::{GuestSize, Instance, InstanceState, InstanceStatus, PowerState};
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

async fn flavor(cl: &mut Clients, name: &str, vcpus: u32, ram_mb: u64, disk_gb: u64) {
    cl.flavors
        .create(pb::CreateFlavorRequest {
            name: name.into(),
            vcpus,
            ram_mb,
            disk_gb,
            display_name: String::new(),
            ..Default::default()
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

fn action(id: &str) -> pb::ServerActionRequest {
    pb::ServerActionRequest {
        r#ref: id.into(),
        ..Default::default()
    }
}

async fn spec(etcd: &Etcd, id: &str) -> Instance {
    get(etcd, &keys::instance(&id.parse().unwrap()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_running_or_stopped_then_confirm_or_revert() {
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
    flavor(&mut cl, "m1.tiny", 1, 256, 1).await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let r = create_servers(&mut cl, server_req(name, &[], 1)).await;
        ids.push(created(&r, 0).id);
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    // a + b (m1.small, 512 MiB each): 1024 of 2048 MiB.
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);

    // Refused, nothing changes: another disk size, an unknown flavor, the
    // same flavor, a size the node cannot hold (1600 + b's 512 > 2048),
    // nothing to confirm or revert.
    let e = resize(&mut cl, &a, "m1.disk").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = resize(&mut cl, &a, "m1.nope").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = resize(&mut cl, &a, "m1.small").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = resize(&mut cl, &a, "m1.huge").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("node n1 cannot hold flavor m1.huge"),
        "{e:?}"
    );
    assert!(e.message().contains("1536 MiB free"), "{e:?}");
    for e in [
        cl.servers.confirm_resize(action(&a)).await.unwrap_err(),
        cl.servers.revert_resize(action(&a)).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    }
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);

    // A running server: the spec takes the new size at once (its agent
    // converges), keeps running, and remembers the old flavor.
    let s = resize(&mut cl, &a, "m1.big").await.unwrap();
    assert_eq!(
        (s.flavor.as_str(), s.resized_from.as_str()),
        ("m1.big", "m1.small")
    );
    let sp = spec(&etcd, &a).await;
    assert_eq!((sp.resources.vcpus, sp.resources.ram_mb), (2, 1024));
    assert_eq!(sp.power, PowerState::Running);
    let u = usage(&etcd, "n1").await;
    assert_eq!((u.used.vcpus, u.used.ram_mb, u.instances), (3, 1536, 2));
    // No second resize while one is pending.
    let e = resize(&mut cl, &a, "m1.tiny").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("--confirm|--revert"), "{e:?}");
    // Revert: old flavor and size back, usage back.
    let s = cl
        .servers
        .revert_resize(action(&a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.flavor.as_str(), s.resized_from.as_str()),
        ("m1.small", "")
    );
    let sp = spec(&etcd, &a).await;
    assert_eq!((sp.resources.vcpus, sp.resources.ram_mb), (1, 512));
    assert!(sp.resize.is_none());
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);

    // Shrinking a stopped server: the node holds the old (larger) size
    // until confirm; a start while pending keeps what the revert restores.
    cl.servers.stop(action(&b)).await.unwrap();
    let s = resize(&mut cl, &b, "m1.tiny").await.unwrap();
    assert_eq!(s.desired_power, "stopped");
    assert_eq!(spec(&etcd, &b).await.resources.ram_mb, 256);
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1024);
    cl.servers.confirm_resize(action(&b)).await.unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 768);
    let sp = spec(&etcd, &b).await;
    assert_eq!(
        (sp.flavor.as_str(), sp.resources.ram_mb, sp.power),
        ("m1.tiny", 256, PowerState::Stopped)
    );

    // Revert restores the desired power of the time of the resize.
    resize(&mut cl, &b, "m1.big").await.unwrap();
    cl.servers.start(action(&b)).await.unwrap();
    assert_eq!(spec(&etcd, &b).await.power, PowerState::Running);
    cl.servers.revert_resize(action(&b)).await.unwrap();
    let sp = spec(&etcd, &b).await;
    assert_eq!(
        (sp.flavor.as_str(), sp.power),
        ("m1.tiny", PowerState::Stopped)
    );

    // The steps are recorded.
    let acts = cl
        .servers
        .list_actions(pb::GetRequest {
            r#ref: b.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = acts.actions.iter().map(|x| x.action.as_str()).collect();
    assert!(
        names.ends_with(&[
            "stop",
            "resize",
            "confirmResize",
            "resize",
            "start",
            "revertResize"
        ]),
        "{names:?}"
    );

    // Deleting during a pending resize gives back the larger size.
    resize(&mut cl, &a, "m1.big").await.unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1280);
    cl.servers
        .delete(pb::DeleteRequest {
            r#ref: a.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 256);
}

/// Writes the status the agent of `node` reports for `id`: `state`, with
/// the guest's size (vCPUs, MiB) when given.
async fn report_sized(
    etcd: &Etcd,
    id: &str,
    node: &str,
    state: InstanceState,
    size: Option<(u32, u64)>,
) {
    let status = InstanceStatus {
        state,
        node: node.parse().unwrap(),
        updated_at: nubo_common::model::now(),
        last_error: None,
        reboot_generation: 0,
        volumes: Vec::new(),
        size: size.map(|(vcpus, ram_mb)| GuestSize { vcpus, ram_mb }),
    };
    let mut c = etcd.client().await.unwrap();
    c.put(
        keys::instance_status(&status.node, &id.parse().unwrap()),
        nubo_common::model::encode(&status),
        None,
    )
    .await
    .unwrap();
}

async fn show(cl: &mut Clients, id: &str) -> pb::Server {
    cl.servers
        .get(pb::GetRequest {
            r#ref: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phase_follows_the_size_the_agent_reports() {
    let etcd = Etcd::start().unwrap();
    let coord = coordinator(&etcd).await;
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "n1", res(4, 4096, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    flavor(&mut cl, "m1.big", 2, 1024, 1).await;
    let r = create_servers(&mut cl, server_req("a", &[], 1)).await;
    let a = created(&r, 0).id;
    // An agent that reported before sizes existed, then with its size.
    report_status(&etcd, &a.parse().unwrap(), "n1", InstanceState::Running).await;
    let s = show(&mut cl, &a).await;
    assert_eq!((s.resize_phase.as_str(), s.applied_vcpus), ("", 0));
    report_sized(&etcd, &a, "n1", InstanceState::Running, Some((1, 512))).await;
    let s = show(&mut cl, &a).await;
    assert_eq!((s.applied_vcpus, s.applied_ram_mb), (1, 512));

    // Resized: the spec has the new size at once, the guest not yet.
    let s = resize(&mut cl, &a, "m1.big").await.unwrap();
    assert_eq!(s.resize_phase, "resizing");
    // Shut down for the redefinition, redefined but not booted again:
    // still resizing.
    report_sized(&etcd, &a, "n1", InstanceState::Stopped, Some((1, 512))).await;
    assert_eq!(show(&mut cl, &a).await.resize_phase, "resizing");
    report_sized(&etcd, &a, "n1", InstanceState::Stopped, Some((2, 1024))).await;
    assert_eq!(show(&mut cl, &a).await.resize_phase, "resizing");
    // Booted with the new size: waiting for confirm or revert.
    report_sized(&etcd, &a, "n1", InstanceState::Running, Some((2, 1024))).await;
    let s = show(&mut cl, &a).await;
    assert_eq!(
        (s.resize_phase.as_str(), s.applied_vcpus, s.applied_ram_mb),
        ("verify", 2, 1024)
    );
    // Revert: reverting until the agent reports the old size again.
    let s = cl
        .servers
        .revert_resize(action(&a))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.resize_phase.as_str(), s.applied_vcpus), ("reverting", 2));
    report_sized(&etcd, &a, "n1", InstanceState::Stopped, Some((1, 512))).await;
    assert_eq!(show(&mut cl, &a).await.resize_phase, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuation_during_a_pending_resize_moves_what_it_holds() {
    use nubo_coordinator::{Config, RecordingFencer};
    use std::sync::Arc;
    use std::time::Duration;
    let etcd = Etcd::start().unwrap();
    let mut cfg = Config::for_tests(etcd.endpoint());
    // The operator evacuates, not the leader.
    cfg.failure.suspect_grace = Duration::from_secs(3600);
    let coord = nubo_coordinator::start_with_fencer(cfg, Arc::new(RecordingFencer::default()))
        .await
        .unwrap();
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    let lease = register_node(&etcd, "n1", res(4, 2048, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    flavor(&mut cl, "m1.big", 2, 1024, 1).await;
    flavor(&mut cl, "m1.tiny", 1, 256, 1).await;
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            evacuation_policy: "manual".into(),
            ..server_req("a", &[], 2)
        },
    )
    .await;
    let (a, b) = (created(&r, 0).id, created(&r, 1).id);
    // a grows (512 → 1024), b shrinks (512 → 256): n1 holds the larger
    // of each, 1024 + 512.
    resize(&mut cl, &a, "m1.big").await.unwrap();
    resize(&mut cl, &b, "m1.tiny").await.unwrap();
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 1536);
    // n2 can hold 1536 but not 2048: placing by the larger size still
    // fits, and a revert of either then fits too.
    register_node(&etcd, "n2", res(4, 1536, 100), "nova").await;
    wait_nodes(&mut cl, 2).await;
    revoke(&etcd, lease).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node_info(&mut cl.nodes, "n1").await.alive {
        assert!(tokio::time::Instant::now() < deadline, "n1 still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = cl
        .nodes
        .evacuate(pb::EvacuateNodeRequest {
            name: "n1".into(),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.results.len(), 2, "{moved:?}");
    // Everything n1 held moved: n1 holds nothing, n2 the larger sizes.
    let (u1, u2) = (usage(&etcd, "n1").await, usage(&etcd, "n2").await);
    assert_eq!((u1.used.ram_mb, u1.used.vcpus, u1.instances), (0, 0, 0));
    assert_eq!((u2.used.ram_mb, u2.used.vcpus, u2.instances), (1536, 3, 2));
    let caps: std::collections::HashMap<_, _> = [
        (nubo_common::NodeName::new("n1").unwrap(), 2048),
        (nubo_common::NodeName::new("n2").unwrap(), 1536),
    ]
    .into();
    check_invariants(&etcd, &caps).await;
    // Still pending on n2, not re-created there yet: resizing.
    let s = show(&mut cl, &a).await;
    assert_eq!(
        (
            s.node.as_str(),
            s.resized_from.as_str(),
            s.resize_phase.as_str()
        ),
        ("n2", "m1.small", "resizing")
    );
    // Confirm a, revert b: n2 gives back the differences, nothing more.
    cl.servers.confirm_resize(action(&a)).await.unwrap();
    assert_eq!(usage(&etcd, "n2").await.used.ram_mb, 1536);
    cl.servers.revert_resize(action(&b)).await.unwrap();
    assert_eq!(usage(&etcd, "n2").await.used.ram_mb, 1536);
    assert_eq!(spec(&etcd, &b).await.resources.ram_mb, 512);
    check_invariants(&etcd, &caps).await;
    // Deleting both leaves n2 empty.
    for id in [&a, &b] {
        cl.servers
            .delete(pb::DeleteRequest {
                r#ref: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let u2 = usage(&etcd, "n2").await;
    assert_eq!((u2.used.ram_mb, u2.used.vcpus, u2.instances), (0, 0, 0));
}
