//! A 500-server batch through two `nubo-coordinator` processes while one
//! member of a 3-member etcd is killed with SIGKILL: the leader, and in
//! another run a follower. No client-side retry: every create must succeed
//! the first time, each server exists exactly once, no node is over
//! capacity, and every API call made while the member stays down succeeds.
//!
//! `cargo build --bins && cargo test -p nubo-coordinator --test etcd_member_loss -- --test-threads=1`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use nubo_common::proto as pb;
use nubo_tests::{Coordinator as Proc, Etcd};

const BATCH: usize = 500;

fn start(etcd: &Etcd, id: &str, dir: &std::path::Path) -> Proc {
    let mut o = nubo_tests::coordinator::CoordinatorOpts::new(&etcd.endpoint(), id);
    // The leader must keep its lease through the member loss: a TTL well
    // above etcd's re-election (500 ms election timeout, slower on a loaded
    // 2-core machine) plus a keep-alive retry; the 2 s default left too
    // little margin once in the suite (lease re-granted 3 s after the kill).
    o.extra_args = vec!["--lease-ttl".into(), "5".into()];
    Proc::start_with(o, dir).unwrap()
}

/// The election record: which coordinator leads, on which lease.
async fn election(etcd: &Etcd) -> serde_json::Value {
    get::<serde_json::Value>(etcd, &nubo_common::keys::election())
        .await
        .expect("a coordinator leads")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Leader,
    Follower,
}

async fn batch_while_an_etcd_member_dies(victim: Victim) {
    let mut etcd = Etcd::start_cluster(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = start(&etcd, "a", dir.path());
    let b = start(&etcd, "b", dir.path());
    let (cha, chb) = (proc_channel(&a).await, proc_channel(&b).await);
    let caps = batch_setup(&etcd, &cha, &[&cha, &chb]).await;
    // The coordinators' election: who leads, on which lease.
    let led_by = election(&etcd).await;
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let target = match victim {
        Victim::Leader => leader,
        Victim::Follower => (leader + 1) % 3,
    };

    // Half the requests go to each coordinator; the member dies once 150
    // answers are in.
    let done = Arc::new(AtomicUsize::new(0));
    let kill_at = 150;
    let requests = futures::stream::iter(0..BATCH)
        .map(|i| {
            let ch = if i % 2 == 0 { cha.clone() } else { chb.clone() };
            let done = done.clone();
            async move {
                let req = pb::CreateServerRequest {
                    client_token: format!("vm-{i}-token"),
                    ..server_req(&format!("vm-{i}"), &["net"], 0)
                };
                let t = Instant::now();
                let r = pb::servers_client::ServersClient::new(ch).create(req).await;
                done.fetch_add(1, Ordering::SeqCst);
                (i, r.map(|r| r.into_inner()), t.elapsed())
            }
        })
        .buffer_unordered(32);
    let mut results = Vec::new();
    let mut requests = std::pin::pin!(requests);
    let mut killed_after = None;
    while let Some(r) = requests.next().await {
        results.push(r);
        if killed_after.is_none() && results.len() >= kill_at {
            etcd.kill_member(target);
            killed_after = Some(done.load(Ordering::SeqCst));
        }
    }
    let killed_after = killed_after.expect("the member was killed");
    eprintln!("{victim:?} (member {target}) killed after {killed_after} of {BATCH} answers");
    assert!(
        killed_after < BATCH - 32,
        "the kill landed mid-batch ({killed_after} answered, more sent after it)"
    );

    let mut failed = Vec::new();
    let mut slowest = Duration::ZERO;
    for (i, r, took) in &results {
        slowest = slowest.max(*took);
        match r {
            Ok(resp) => match resp.results.first() {
                Some(x) if x.server.is_some() => {}
                other => failed.push(format!("vm-{i}: {other:?}")),
            },
            Err(s) => failed.push(format!("vm-{i}: {s}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} creates failed: {failed:?}",
        failed.len()
    );
    eprintln!("all {BATCH} creates succeeded; slowest {slowest:?}");

    let s = check_invariants(&etcd, &caps).await;
    assert_eq!(
        election(&etcd).await,
        led_by,
        "the coordinator leader kept its lease through the member loss"
    );
    let names: HashSet<&str> = s.specs.values().map(|i| i.name.as_str()).collect();
    assert_eq!(s.specs.len(), BATCH, "every server exactly once");
    assert_eq!(names.len(), BATCH);

    // While the member stays down, every call works, on both coordinators.
    for round in 0..20 {
        for ch in [&cha, &chb] {
            let l = pb::servers_client::ServersClient::new(ch.clone())
                .list(pb::ListServersRequest {
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("list {round}: {e}"))
                .into_inner();
            assert_eq!(l.servers.len(), BATCH);
        }
    }
    let extra = pb::servers_client::ServersClient::new(chb.clone())
        .create(server_req("after", &["net"], 10))
        .await
        .unwrap()
        .into_inner();
    assert!(
        extra.results.iter().all(|r| r.server.is_some()),
        "{extra:?}"
    );
    let del = pb::servers_client::ServersClient::new(cha.clone())
        .delete(pb::DeleteRequest {
            r#ref: "vm-0".into(),
            ..Default::default()
        })
        .await;
    assert!(del.is_ok(), "{del:?}");
    check_invariants(&etcd, &caps).await;
    etcd.restart_member(target).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_of_500_survives_kill9_of_the_etcd_leader() {
    batch_while_an_etcd_member_dies(Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_of_500_survives_kill9_of_an_etcd_follower() {
    batch_while_an_etcd_member_dies(Victim::Follower).await;
}
