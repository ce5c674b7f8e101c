//! Migrations, coordinator side, against a real etcd with the coordinator
//! in-process; the test plays both agents by writing their reports
//! (`node-owned/<node>/migrations/<id>`) as the protocol says
//! (`nubo_common::model::migration`, docs/migration.md): live and cold
//! happy paths (everything switched in one revision), abort, source
//! failure, a destination that never prepares, a leader stopped half-way,
//! concurrent requests for one server, bad input, and a live drain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, IncomingMigration, Instance, InstanceState, InstanceStatus, MigrationMode,
    MigrationPhase, MigrationReport, OutgoingMigration, Port, Role, UserName,
};
use nubo_common::proto as pb;
use nubo_common::{InstanceId, MigrationId, NodeName};
use nubo_coordinator::{Config, Coordinator};
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

type Migrations = pb::migrations_client::MigrationsClient<Channel>;

fn nn(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

async fn start(etcd: &Etcd, f: impl FnOnce(&mut Config)) -> Coordinator {
    let mut cfg = Config::for_tests(etcd.endpoint());
    f(&mut cfg);
    nubo_coordinator::start(cfg).await.unwrap()
}

/// One coordinator, flavor/image, network `net`, `count` servers `vm-*`
/// on n0 (reported running by n0's "agent"), then n1 and n2 registered.
async fn cloud(etcd: &Etcd, c: &Coordinator, count: u32) -> (Clients, Migrations, Vec<InstanceId>) {
    let mut cl = clients(c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.60.0.0/24").await;
    register_seen(etcd, c, "n0", res(8, 8 * 512, 100), "nova").await;
    let r = create_servers(&mut cl, server_req("vm", &["net"], count)).await;
    let ids: Vec<InstanceId> = (0..r.results.len())
        .map(|i| created(&r, i).id.parse().unwrap())
        .collect();
    for id in &ids {
        report_status(etcd, id, "n0", InstanceState::Running).await;
    }
    register_seen(etcd, c, "n1", res(8, 4 * 512, 100), "nova").await;
    register_seen(etcd, c, "n2", res(8, 512, 100), "nova").await;
    let m = pb::migrations_client::MigrationsClient::new(channel(c).await);
    (cl, m, ids)
}

async fn migrate(
    m: &mut Migrations,
    server: &str,
    live: bool,
    host: &str,
) -> Result<pb::Migration, tonic::Status> {
    m.create(pb::CreateMigrationRequest {
        r#ref: server.into(),
        project: String::new(),
        live,
        host: host.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn get_mig(m: &mut Migrations, id: &str) -> pb::Migration {
    m.get(req::get(id)).await.unwrap().into_inner()
}

/// Waits until migration `id` is in `state`.
async fn wait_state(m: &mut Migrations, id: &str, state: &str) -> pb::Migration {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = get_mig(m, id).await;
        if g.state == state {
            return g;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "migration {id} never reached {state}: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes what `node`'s agent reports about migration `id`.
async fn report(etcd: &Etcd, node: &str, id: &str, phase: MigrationPhase, downtime: Option<u64>) {
    let id: MigrationId = id.parse().unwrap();
    let detail = (phase == MigrationPhase::Failed).then(|| "libvirt: unable to connect".into());
    let r = MigrationReport {
        downtime_ms: downtime,
        ..MigrationReport::new(id, phase, detail)
    };
    etcd.client()
        .await
        .unwrap()
        .put(
            keys::node_migration_report(&nn(node), &id),
            model::encode(&r),
            None,
        )
        .await
        .unwrap();
}

/// The mod revision of `key` (0: absent).
async fn mod_rev(etcd: &Etcd, key: &str) -> i64 {
    let store = etcd.store().await.unwrap();
    let r = store.get(key, None).await.unwrap();
    r.kvs().first().map_or(0, |kv| kv.mod_revision())
}

/// Nothing of migration `m` is left but its record.
async fn assert_no_traces(etcd: &Etcd, id: &InstanceId, m: &MigrationId) {
    for k in [
        keys::node_incoming(&nn("n1"), id),
        keys::node_outgoing(&nn("n0"), id),
        keys::node_migration_report(&nn("n0"), m),
        keys::node_migration_report(&nn("n1"), m),
        keys::instance_migration(id),
    ] {
        assert_eq!(mod_rev(etcd, &k).await, 0, "{k} left behind");
    }
}

fn caps() -> HashMap<NodeName, u64> {
    [(nn("n0"), 8 * 512), (nn("n1"), 4 * 512), (nn("n2"), 512)].into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_switches_everything_in_one_revision() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |_| {}).await;
    let (_cl, mut m, ids) = cloud(&etcd, &c, 1).await;
    let id = ids[0];
    let before = snapshot(&etcd).await;

    // Named destination (the scheduler's choice is covered by the cold test).
    let mg = migrate(&mut m, &id.to_string(), true, "n1").await.unwrap();
    assert_eq!(
        (
            mg.state.as_str(),
            mg.mode.as_str(),
            mg.source.as_str(),
            mg.destination.as_str()
        ),
        ("preparing", "live", "n0", "n1")
    );
    let mid: MigrationId = mg.id.parse().unwrap();
    // Reserved on n1 in the same transaction as the record and the order.
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 512);
    assert_eq!(usage(&etcd, "n0").await.used.ram_mb, 512);
    let inc: IncomingMigration = get(&etcd, &keys::node_incoming(&nn("n1"), &id))
        .await
        .unwrap();
    assert_eq!((inc.migration, inc.mode), (mid, MigrationMode::Live));
    assert_eq!(inc.spec.node, Some(nn("n1")));
    assert_eq!(
        mod_rev(&etcd, &keys::migration(&mid)).await,
        mod_rev(&etcd, &keys::node_incoming(&nn("n1"), &id)).await
    );
    // No order to the source before the destination is ready.
    assert_eq!(
        mod_rev(&etcd, &keys::node_outgoing(&nn("n0"), &id)).await,
        0
    );

    report(&etcd, "n1", &mg.id, MigrationPhase::Prepared, None).await;
    let g = wait_state(&mut m, &mg.id, "migrating").await;
    assert_eq!(g.destination_phase, "prepared");
    let out: OutgoingMigration = get(&etcd, &keys::node_outgoing(&nn("n0"), &id))
        .await
        .unwrap();
    assert_eq!(
        (out.migration, out.destination.clone(), out.mode, out.abort),
        (mid, nn("n1"), MigrationMode::Live, false)
    );
    assert_eq!((out.budget_secs, out.precopy_budget_secs), (300, 30));
    // Still the source's until the switch.
    assert_eq!(snapshot(&etcd).await.specs[&id].node, Some(nn("n0")));

    // The password the guest posted to n0's metadata service.
    let mut kv = etcd.client().await.unwrap();
    kv.put(keys::instance_password(&nn("n0"), &id), "pw", None)
        .await
        .unwrap();
    report(&etcd, "n0", &mg.id, MigrationPhase::Running, None).await;
    report(&etcd, "n0", &mg.id, MigrationPhase::Migrated, Some(42)).await;
    let done = wait_state(&mut m, &mg.id, "completed").await;
    assert_eq!(done.downtime_ms, Some(42));
    assert!(!done.postcopy, "{done:?}");
    assert!(done.error.is_empty(), "{done:?}");

    let s = check_invariants(&etcd, &caps()).await;
    let spec = &s.specs[&id];
    assert_eq!(spec.node, Some(nn("n1")));
    assert_eq!(s.assignments, vec![(nn("n1"), id)]);
    assert_eq!(usage(&etcd, "n0").await.used.ram_mb, 0);
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 512);
    // Same port (IP, MAC), now owned by n1: agents and floating IPs follow.
    let p = spec.ports[0];
    assert_eq!(
        (s.ports[&p].ip, s.ports[&p].mac),
        (before.ports[&p].ip, before.ports[&p].mac)
    );
    assert_eq!(s.ports[&p].node, Some(nn("n1")));
    let st: InstanceStatus = get(&etcd, &keys::instance_status(&nn("n1"), &id))
        .await
        .unwrap();
    assert_eq!(st.state, InstanceState::Running);
    assert_eq!(
        mod_rev(&etcd, &keys::instance_status(&nn("n0"), &id)).await,
        0
    );
    assert_no_traces(&etcd, &id, &mid).await;
    assert_eq!(
        mod_rev(&etcd, &keys::instance_password(&nn("n0"), &id)).await,
        0
    );
    // ONE revision: record, assignment, spec, node copy, port, usage,
    // the password.
    let rev = mod_rev(&etcd, &keys::migration(&mid)).await;
    for k in [
        keys::instance_password(&nn("n1"), &id),
        keys::assignment(&nn("n1"), &id),
        keys::instance(&id),
        keys::node_spec(&nn("n1"), &id),
        keys::port(&p),
        keys::node_usage(&nn("n0")),
        keys::instance_status(&nn("n1"), &id),
    ] {
        assert_eq!(mod_rev(&etcd, &k).await, rev, "{k} not in the switch");
    }
    let a: Assignment = get(&etcd, &keys::assignment(&nn("n1"), &id)).await.unwrap();
    assert_eq!(a.node, nn("n1"));
    // Listed, newest first, with the downtime.
    let l = m
        .list(pb::ListMigrationsRequest {
            server: "vm".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.migrations.len(), 1);
    assert_eq!(l.migrations[0].server_name, "vm");
    let active = m
        .list(pb::ListMigrationsRequest {
            active_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(active.migrations.is_empty());
    // Over: an abort is refused.
    let e = m.abort(req::get(&mg.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_migration_starts_on_the_destination_after_the_switch() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |_| {}).await;
    let (_cl, mut m, ids) = cloud(&etcd, &c, 1).await;
    let id = ids[0];
    // The scheduler chooses among n1 and n2 (never the source).
    let mg = migrate(&mut m, "vm", false, "").await.unwrap();
    assert_eq!(mg.mode, "cold");
    assert_ne!(mg.destination, "n0");
    let dest = mg.destination.clone();
    report(&etcd, &dest, &mg.id, MigrationPhase::Prepared, None).await;
    wait_state(&mut m, &mg.id, "migrating").await;
    let out: OutgoingMigration = get(&etcd, &keys::node_outgoing(&nn("n0"), &id))
        .await
        .unwrap();
    assert_eq!(out.mode, MigrationMode::Cold);
    report(&etcd, "n0", &mg.id, MigrationPhase::Migrated, None).await;
    let done = wait_state(&mut m, &mg.id, "completed").await;
    assert_eq!(done.downtime_ms, None);
    let s = check_invariants(&etcd, &caps()).await;
    let spec: &Instance = &s.specs[&id];
    assert_eq!(spec.node, Some(nn(&dest)));
    // Desired running: the destination's agent starts it.
    assert_eq!(spec.power, model::PowerState::Running);
    let st: InstanceStatus = get(&etcd, &keys::instance_status(&nn(&dest), &id))
        .await
        .unwrap();
    assert_eq!(st.state, InstanceState::Pending);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_source_failure_and_a_silent_destination_roll_back() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |c| {
        c.migration.prepare_timeout = Duration::from_secs(1)
    })
    .await;
    let (_cl, mut m, ids) = cloud(&etcd, &c, 3).await;
    let caps = caps();

    // 1. Abort while migrating: the source is asked, confirms, rolled back.
    let a = migrate(&mut m, &ids[0].to_string(), true, "n1")
        .await
        .unwrap();
    report(&etcd, "n1", &a.id, MigrationPhase::Prepared, None).await;
    wait_state(&mut m, &a.id, "migrating").await;
    report(&etcd, "n0", &a.id, MigrationPhase::Running, None).await;
    let g = m.abort(req::get(&a.id)).await.unwrap().into_inner();
    assert_eq!(g.state, "aborting");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out: OutgoingMigration = get(&etcd, &keys::node_outgoing(&nn("n0"), &ids[0]))
            .await
            .unwrap();
        if out.abort {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "abort never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without the source's word it stays aborting (never rolled back blind).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get_mig(&mut m, &a.id).await.state, "aborting");
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 512);
    report(&etcd, "n0", &a.id, MigrationPhase::Failed, None).await;
    let g = wait_state(&mut m, &a.id, "aborted").await;
    assert!(g.error.contains("aborted by an operator"), "{g:?}");
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 0);
    assert_no_traces(&etcd, &ids[0], &a.id.parse().unwrap()).await;

    // 2. The source's job fails: failed, with the hypervisor's reason.
    let b = migrate(&mut m, &ids[1].to_string(), true, "n1")
        .await
        .unwrap();
    report(&etcd, "n1", &b.id, MigrationPhase::Prepared, None).await;
    wait_state(&mut m, &b.id, "migrating").await;
    report(&etcd, "n0", &b.id, MigrationPhase::Failed, None).await;
    let g = wait_state(&mut m, &b.id, "failed").await;
    assert!(
        g.error.contains("failed on n0: libvirt: unable to connect"),
        "{g:?}"
    );
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 0);

    // 3. The destination never prepares: failed after the timeout.
    let d = migrate(&mut m, &ids[2].to_string(), true, "n1")
        .await
        .unwrap();
    let g = wait_state(&mut m, &d.id, "failed").await;
    assert!(g.error.contains("n1 did not prepare within 1 s"), "{g:?}");
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 0);
    assert_no_traces(&etcd, &ids[2], &d.id.parse().unwrap()).await;

    // 4. Abort while preparing: at once, no order ever reached the source.
    let e = migrate(&mut m, &ids[0].to_string(), true, "n1")
        .await
        .unwrap();
    m.abort(req::get(&e.id)).await.unwrap();
    wait_state(&mut m, &e.id, "aborted").await;

    // Everything stayed on n0, bookkeeping intact.
    let s = check_invariants(&etcd, &caps).await;
    assert!(ids.iter().all(|id| s.specs[id].node == Some(nn("n0"))));
    assert_eq!(usage(&etcd, "n0").await.used.ram_mb, 3 * 512);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_finishes_or_rolls_back_what_the_old_one_started() {
    let etcd = Etcd::start().unwrap();
    let a = start(&etcd, |_| {}).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !a.is_leader() {
        assert!(tokio::time::Instant::now() < deadline, "a never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = start(&etcd, |_| {}).await;
    let (_cl, mut ma, ids) = cloud(&etcd, &a, 2).await;
    let mut mb = pb::migrations_client::MigrationsClient::new(channel(&b).await);
    let one = migrate(&mut ma, &ids[0].to_string(), true, "n1")
        .await
        .unwrap();
    let two = migrate(&mut ma, &ids[1].to_string(), true, "n1")
        .await
        .unwrap();
    for x in [&one, &two] {
        report(&etcd, "n1", &x.id, MigrationPhase::Prepared, None).await;
        wait_state(&mut ma, &x.id, "migrating").await;
    }
    // The leader goes; meanwhile one guest moves, the other's job fails.
    a.shutdown().await.unwrap();
    report(&etcd, "n0", &one.id, MigrationPhase::Migrated, Some(7)).await;
    report(&etcd, "n0", &two.id, MigrationPhase::Failed, None).await;
    // Shown as switching until the new leader switches it.
    let shown = get_mig(&mut mb, &one.id).await;
    assert!(
        shown.state == "switching" || shown.state == "completed",
        "{shown:?}"
    );
    let g = wait_state(&mut mb, &one.id, "completed").await;
    assert_eq!(g.downtime_ms, Some(7));
    wait_state(&mut mb, &two.id, "failed").await;
    assert!(b.is_leader());
    let s = check_invariants(&etcd, &caps()).await;
    assert_eq!(s.specs[&ids[0]].node, Some(nn("n1")));
    assert_eq!(s.specs[&ids[1]].node, Some(nn("n0")));
    assert_eq!(usage(&etcd, "n1").await.used.ram_mb, 512);
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_server_start_exactly_one_migration() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |_| {}).await;
    let (mut cl, m, ids) = cloud(&etcd, &c, 1).await;
    let id = ids[0];
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut m = m.clone();
            let host = if i % 2 == 0 { "n1" } else { "" };
            tokio::spawn(async move { migrate(&mut m, &id.to_string(), true, host).await })
        })
        .collect();
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(g) => won.push(g),
            Err(e) => {
                assert!(
                    matches!(e.code(), Code::FailedPrecondition | Code::Unavailable),
                    "{e:?}"
                );
            }
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(count(&etcd, &keys::migrations_prefix()).await, 1);
    assert_eq!(count(&etcd, &keys::instance_migrations_prefix()).await, 1);
    let reserved: u64 = [usage(&etcd, "n1").await, usage(&etcd, "n2").await]
        .iter()
        .map(|u| u.used.ram_mb)
        .sum();
    assert_eq!(reserved, 512, "reserved once");
    // While it runs: another request, a delete and a stop are refused.
    let mut m2 = m.clone();
    let e = migrate(&mut m2, "vm", true, "").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already being migrated"), "{e:?}");
    let e = cl.servers.delete(req::del("vm")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("being migrated"), "{e:?}");
    let e = cl
        .servers
        .stop(pb::ServerActionRequest {
            r#ref: "vm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Positive control: once it is over, the delete goes through.
    m2.abort(req::get(&won[0].id)).await.unwrap();
    wait_state(&mut m2, &won[0].id, "aborted").await;
    cl.servers.delete(req::del("vm")).await.unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |_| {}).await;
    let (mut cl, mut m, ids) = cloud(&etcd, &c, 2).await;
    let vm = ids[0].to_string();
    let check = |r: Result<pb::Migration, tonic::Status>, code: Code, text: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(
            e.message().contains(text),
            "{:?} lacks {text:?}",
            e.message()
        );
    };
    check(
        migrate(&mut m, "nope", true, "").await,
        Code::NotFound,
        "nope",
    );
    check(
        migrate(&mut m, &vm, true, "n0").await,
        Code::InvalidArgument,
        "already runs on n0",
    );
    // An unknown destination is a bad argument (Nova: 400), not a
    // missing resource.
    check(
        migrate(&mut m, &vm, true, "n9").await,
        Code::InvalidArgument,
        "destination host \"n9\" is not a node of this cloud",
    );
    // n2 holds one server; fill it, then it has no room.
    let filler = migrate(&mut m, &ids[1].to_string(), true, "n2")
        .await
        .unwrap();
    check(
        migrate(&mut m, &vm, true, "n2").await,
        Code::ResourceExhausted,
        "no room",
    );
    m.abort(req::get(&filler.id)).await.unwrap();
    wait_state(&mut m, &filler.id, "aborted").await;
    // Disabled host.
    cl.nodes
        .set_enabled(pb::SetNodeEnabledRequest {
            name: "n1".into(),
            enabled: false,
        })
        .await
        .unwrap();
    check(
        migrate(&mut m, &vm, true, "n1").await,
        Code::FailedPrecondition,
        "disabled",
    );
    // A server in error, and one not running for a live migration.
    report_status(&etcd, &ids[0], "n0", InstanceState::Error).await;
    check(
        migrate(&mut m, &vm, false, "n2").await,
        Code::FailedPrecondition,
        "in error",
    );
    report_status(&etcd, &ids[0], "n0", InstanceState::Stopped).await;
    check(
        migrate(&mut m, &vm, true, "n2").await,
        Code::FailedPrecondition,
        "not running",
    );
    // Positive control: the same request, cold, on an enabled node.
    let ok = migrate(&mut m, &vm, false, "n2").await.unwrap();
    assert_eq!(ok.state, "preparing");
    let e = m.get(req::get("not-an-id")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_cloud_admins_migrate() {
    use nubo_coordinator::api::bootstrap;
    let etcd = Etcd::start().unwrap();
    let store = etcd.store().await.unwrap();
    let pw = nubo_identity::Passwords::with_params(64, 1, 1).unwrap();
    bootstrap(&store, &UserName::new("admin").unwrap(), "adminpw", &pw)
        .await
        .unwrap();
    put_project(&etcd, "p1").await;
    put_user(
        &etcd,
        "alice",
        &pw.hash("pw").unwrap(),
        Some("p1"),
        Role::Member,
    )
    .await;
    let c = start(&etcd, |c| c.auth = nubo_coordinator::AuthMode::Token).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let admin = issue_token(&mut tokens, "admin", "adminpw").await;
    let mut m = pb::migrations_client::MigrationsClient::new(ch.clone());
    let body = || pb::CreateMigrationRequest {
        r#ref: "vm".into(),
        live: true,
        ..Default::default()
    };
    let e = m.create(authed(&alice, body())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = m
        .list(authed(&alice, pb::ListMigrationsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut nodes = pb::nodes_client::NodesClient::new(ch);
    let e = nodes
        .drain(authed(
            &alice,
            pb::DrainNodeRequest {
                name: "n0".into(),
                live: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Positive control: the admin passes authorization (and learns the
    // server does not exist).
    let e = m.create(authed(&admin, body())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_drain_migrates_every_running_server() {
    let etcd = Etcd::start().unwrap();
    let c = start(&etcd, |_| {}).await;
    let (mut cl, _m, ids) = cloud(&etcd, &c, 4).await;
    // A fake pair of agents: n0's guests "move" as soon as the destination
    // is prepared (the leader only orders the source after that).
    let agents = {
        let etcd_client = etcd.client().await.unwrap();
        tokio::spawn(async move {
            let mut c = etcd_client;
            loop {
                let r = c
                    .get(
                        keys::migrations_prefix(),
                        Some(etcd_client::GetOptions::new().with_prefix()),
                    )
                    .await
                    .unwrap();
                for kv in r.kvs() {
                    let mg: model::Migration =
                        model::decode(kv.key_str().unwrap(), kv.value()).unwrap();
                    let (node, phase) = match mg.state {
                        model::MigrationState::Preparing => {
                            (mg.destination.clone(), MigrationPhase::Prepared)
                        }
                        model::MigrationState::Migrating => {
                            (mg.source.clone(), MigrationPhase::Migrated)
                        }
                        _ => continue,
                    };
                    let rep = MigrationReport {
                        downtime_ms: Some(5),
                        ..MigrationReport::new(mg.id, phase, None)
                    };
                    c.put(
                        keys::node_migration_report(&node, &mg.id),
                        model::encode(&rep),
                        None,
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let r = cl
        .nodes
        .drain(pb::DrainNodeRequest {
            name: "n0".into(),
            live: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    agents.abort();
    assert_eq!(r.results.len(), 4, "{r:?}");
    assert!(
        r.results
            .iter()
            .all(|x| x.error.is_empty() && !x.migration_id.is_empty() && x.downtime_ms == Some(5)),
        "{r:?}"
    );
    let s = check_invariants(&etcd, &caps()).await;
    assert!(ids.iter().all(|id| s.specs[id].node != Some(nn("n0"))));
    // n1 (4 × 512) and n2 (1 × 512) hold them: the scheduler fills by room.
    let ports: Vec<&Port> = s.ports.values().collect();
    assert!(ports.iter().all(|p| p.node != Some(nn("n0"))));
    let n0 = node_info(&mut cl.nodes, "n0").await;
    assert!(!n0.enabled, "a drained node stays disabled");
    c.shutdown().await.unwrap();
}
