//! Client tokens (idempotent creates) and the resource cache's staleness
//! guard, against real etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nubo_common::model::{self, Flavor, Instance, NodeUsage};
use nubo_common::proto as pb;
use nubo_common::proto::servers_server::Servers;
use nubo_common::{keys, FlavorName, NodeName};
use nubo_coordinator::{election::LeaderState, placement::ClusterView, state::Ctx};
use nubo_coordinator::{Config, LogFencer};
use nubo_tests::Etcd;

fn req(name: &str, count: u32, token: &str) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        client_token: token.into(),
        ..server_req(name, &[], count)
    }
}

fn ids(r: &pb::CreateServerResponse) -> Vec<String> {
    r.results
        .iter()
        .map(|x| x.server.as_ref().expect("created").id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_with_its_token_returns_the_same_servers() {
    let etcd = Etcd::start().unwrap();
    let (a, b) = (coordinator(&etcd).await, coordinator(&etcd).await);
    let (mut ca, mut cb) = (clients(&a).await, clients(&b).await);
    setup_basics(&mut ca).await;
    register_node(&etcd, "n0", res(64, 64 * 512, 1000), "nova").await;
    wait_nodes(&mut ca, 1).await;
    wait_nodes(&mut cb, 1).await;

    // A batch that "failed" after two of its three servers: the retry
    // (here on the other coordinator) returns those two and adds the third.
    let first = ca
        .servers
        .create(req("web", 2, "tok-a"))
        .await
        .unwrap()
        .into_inner();
    let two = ids(&first);
    let retry = cb
        .servers
        .create(req("web", 3, "tok-a"))
        .await
        .unwrap()
        .into_inner();
    let three = ids(&retry);
    assert_eq!(three.len(), 3);
    assert_eq!(
        &three[..2],
        &two[..],
        "indices 0 and 1 are the same servers"
    );
    assert_eq!(
        retry.results.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    // Again: nothing new.
    let again = ca
        .servers
        .create(req("web", 3, "tok-a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&again), three);
    assert_eq!(count(&etcd, &keys::instances_prefix()).await, 3);
    assert_eq!(usage(&etcd, "n0").await.instances, 3);

    // Another token creates new servers; no token never deduplicates.
    let other = ca
        .servers
        .create(req("web", 1, "tok-b"))
        .await
        .unwrap()
        .into_inner();
    assert!(!three.contains(&ids(&other)[0]));
    for _ in 0..2 {
        ca.servers.create(req("solo", 1, "")).await.unwrap();
    }
    assert_eq!(count(&etcd, &keys::instances_prefix()).await, 6);

    // Concurrent requests with one token: exactly one server.
    let mut handles = Vec::new();
    for i in 0..8 {
        let mut s = if i % 2 == 0 {
            ca.servers.clone()
        } else {
            cb.servers.clone()
        };
        handles.push(tokio::spawn(async move {
            ids(&s
                .create(req("race", 1, "tok-race"))
                .await
                .unwrap()
                .into_inner())[0]
                .clone()
        }));
    }
    let mut seen = HashSet::new();
    for h in handles {
        seen.insert(h.await.unwrap());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(count(&etcd, &keys::instances_prefix()).await, 7);

    // Tokens must be key-safe.
    let bad = ca.servers.create(req("x", 1, "a/b")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A cache entry older than etcd (a watch event not yet applied) is used to
/// plan, but the placement transaction compares its revision, fails, and
/// the server is planned again from etcd: nothing is ever placed from a
/// stale flavor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cache_entry_never_commits_a_placement() {
    let etcd = Etcd::start().unwrap();
    let store = etcd.store().await.unwrap();
    let cfg = Config::for_tests(etcd.endpoint());
    let view = Arc::new(ClusterView::default());
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(view.clone().run(store.clone(), rx));
    let node_api = cfg.node_api_client().unwrap();
    let ctx = Ctx::new(
        store.clone(),
        view.clone(),
        Arc::new(LeaderState::default()),
        cfg,
        Arc::new(LogFencer),
        node_api,
        Arc::default(),
    );
    register_node(&etcd, "n0", res(64, 64 * 512, 1000), "nova").await;
    let t = Instant::now();
    while view
        .get(&NodeName::new("n0").unwrap())
        .is_none_or(|n| !n.alive)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "node not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    use nubo_common::proto::flavors_server::Flavors;
    use nubo_common::proto::images_server::Images;
    Flavors::create(
        &ctx,
        tonic::Request::new(pb::CreateFlavorRequest {
            name: "m1.small".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
            display_name: String::new(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    Images::create(
        &ctx,
        tonic::Request::new(pb::CreateImageRequest {
            name: "cirros".into(),
            disk_format: "qcow2".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap();

    // The cache believes the flavor has 256 MiB, at a revision etcd no
    // longer has for that key.
    let key = keys::flavor(&FlavorName::new("m1.small").unwrap());
    let stale = model::encode(&Flavor {
        name: FlavorName::new("m1.small").unwrap(),
        resources: res(1, 256, 1),
        extra: Default::default(),
        created_at: model::now(),
        display_name: String::new(),
        private: false,
        access: Default::default(),
    });
    ctx.cache.apply_raw(&key, &stale, 1, false);
    assert_eq!(
        ctx.cache.get::<Flavor>(&key).unwrap().0.resources.ram_mb,
        256
    );

    let r = Servers::create(&ctx, tonic::Request::new(req("vm", 1, "")))
        .await
        .unwrap()
        .into_inner();
    let s = r.results[0].server.as_ref().expect("created");
    let inst: Instance = get(&etcd, &keys::instance(&s.id.parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        inst.resources.ram_mb, 512,
        "placed from etcd, not the stale cache"
    );
    let u: NodeUsage = get(&etcd, &keys::node_usage(&NodeName::new("n0").unwrap()))
        .await
        .unwrap();
    assert_eq!(u.used.ram_mb, 512);
    stop.send_replace(true);
}
