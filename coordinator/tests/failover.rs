//! Leader failover with real `nubo-coordinator` processes killed with
//! SIGKILL: a follower takes over within about a lease TTL, and a 500-server
//! batch sent while the leader dies — killed once it has answered a random
//! number of the requests, asserted to be mid-batch — ends with exactly 500
//! servers (requests carry client tokens; retries reuse them).
//!
//! The 20-iteration soak: `cargo test -p nubo-coordinator --test failover -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use nubo_common::proto as pb;
use nubo_tests::{Coordinator as Proc, Etcd};
use rand::Rng;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

fn start(etcd: &Etcd, id: &str, dir: &std::path::Path) -> Proc {
    let mut o = nubo_tests::coordinator::CoordinatorOpts::new(&etcd.endpoint(), id);
    o.extra_args = vec!["--lease-ttl".into(), "2".into()];
    Proc::start_with(o, dir).unwrap()
}

async fn is_leader(ch: &Channel) -> Option<bool> {
    let mut c = pb::cluster_client::ClusterClient::new(ch.clone());
    c.status(pb::Empty {})
        .await
        .ok()
        .map(|s| s.into_inner().is_leader)
}

/// Coordinator `a` (waited for until it leads) and `b`, with their
/// channels.
async fn leader_and_follower(etcd: &Etcd, dir: &std::path::Path) -> (Proc, Channel, Proc, Channel) {
    let a = start(etcd, "a", dir);
    let cha = proc_channel(&a).await;
    wait_leader(&cha).await;
    let b = start(etcd, "b", dir);
    let chb = proc_channel(&b).await;
    (a, cha, b, chb)
}

/// Polls until `p` (by its channel) is leader; returns the time waited.
async fn wait_leader(ch: &Channel) -> Duration {
    let t = Instant::now();
    while is_leader(ch).await != Some(true) {
        assert!(t.elapsed() < WAIT, "no leader after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_leader_process_elects_the_follower() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _cha, _b, chb) = leader_and_follower(&etcd, dir.path()).await;
    assert_eq!(is_leader(&chb).await, Some(false));
    a.kill9();
    let took = wait_leader(&chb).await;
    eprintln!("failover after kill -9 took {took:?} (lease TTL 2 s)");
    // The new leader serves writes.
    let mut f = pb::flavors_client::FlavorsClient::new(chb.clone());
    f.create(pb::CreateFlavorRequest {
        name: "after-failover".into(),
        vcpus: 1,
        ram_mb: 64,
        disk_gb: 1,
        display_name: String::new(),
        ..Default::default()
    })
    .await
    .unwrap();
    let s = pb::cluster_client::ClusterClient::new(chb)
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.leader_id, "b");
}

/// One round: 500 single-server creates against the leader, which is
/// killed with SIGKILL once `kill_after` of them have been answered by it;
/// failed requests are retried on the survivor. The kill must land
/// mid-batch: asserted from the answers counted and the instances in etcd
/// at the kill (some, not all), and from requests that then had to be
/// retried. Returns (instances, requests that were retried).
async fn batch_while_the_leader_dies(kill_after: usize) -> (usize, usize) {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, cha, _b, chb) = leader_and_follower(&etcd, dir.path()).await;
    let caps = batch_setup(&etcd, &chb, &[&cha, &chb]).await;
    // Answers from the leader so far; the killer acts on that event.
    let (answered_tx, mut answered) = tokio::sync::watch::channel(0_usize);
    let mut kv = etcd.client().await.unwrap();
    let killer = tokio::spawn(async move {
        answered
            .wait_for(|n| *n >= kill_after)
            .await
            .expect("the batch ended before the kill");
        a.kill9();
        let answered_at_kill = *answered.borrow();
        let in_etcd_at_kill = count_with(&mut kv, &nubo_common::keys::instances_prefix()).await;
        (a, answered_at_kill, in_etcd_at_kill)
    });
    let retried: Vec<bool> = futures::stream::iter(0..500)
        .map(|i| {
            let (cha, chb) = (cha.clone(), chb.clone());
            let answered_tx = answered_tx.clone();
            async move {
                let req = pb::CreateServerRequest {
                    // One token per request, reused by its retries: a
                    // commit whose answer was lost in the kill is returned,
                    // not duplicated.
                    client_token: format!("vm-{i}-token"),
                    ..server_req(&format!("vm-{i}"), &["net"], 0)
                };
                let mut sa = pb::servers_client::ServersClient::new(cha);
                let ok = matches!(
                    sa.create(req.clone()).await,
                    Ok(r) if r.get_ref().results.first().is_some_and(|x| x.server.is_some())
                );
                if ok {
                    answered_tx.send_modify(|n| *n += 1);
                    return false;
                }
                let mut sb = pb::servers_client::ServersClient::new(chb);
                for _ in 0..20 {
                    if let Ok(r) = sb.create(req.clone()).await {
                        let x = &r.get_ref().results[0];
                        assert!(x.server.is_some() || x.code == "Unavailable", "{x:?}");
                        if x.server.is_some() {
                            return true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("vm-{i} could not be created on the survivor");
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let (_a, answered_at_kill, in_etcd_at_kill) = killer.await.unwrap();
    let retried = retried.iter().filter(|r| **r).count();
    // The fault landed mid-batch: the leader had answered some requests
    // (and committed them) but not all, and later requests had to go to
    // the survivor.
    eprintln!(
        "kill after {answered_at_kill} answers ({in_etcd_at_kill} instances in etcd); {retried} requests retried"
    );
    assert!(
        (kill_after..500).contains(&answered_at_kill),
        "kill after {answered_at_kill} answers: not mid-batch"
    );
    assert!(
        in_etcd_at_kill > 0 && in_etcd_at_kill < 500,
        "{in_etcd_at_kill} instances in etcd at the kill: not mid-batch"
    );
    assert!(retried > 0, "no request failed over to the survivor");
    let s = check_invariants(&etcd, &caps).await;
    let names: HashSet<&str> = s.specs.values().map(|i| i.name.as_str()).collect();
    for i in 0..500 {
        assert!(names.contains(format!("vm-{i}").as_str()), "vm-{i} missing");
    }
    // Retries carry the request's client token, so a commit whose answer
    // was lost in the kill is found again instead of duplicated.
    assert_eq!(
        s.specs.len(),
        500,
        "{} instances for 500 requests ({retried} retried)",
        s.specs.len()
    );
    assert_eq!(names.len(), 500, "every name exactly once");
    // The survivor leads.
    wait_leader(&chb).await;
    (s.specs.len(), retried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_of_500_survives_a_leader_kill9() {
    let kill_after = rand::rng().random_range(50..400);
    let (n, retried) = batch_while_the_leader_dies(kill_after).await;
    eprintln!("kill after {kill_after} answers: {n} instances, {retried} requests retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "soak: 20 rounds, run with -- --ignored"]
async fn batch_of_500_survives_a_leader_kill9_20_times() {
    for round in 0..20 {
        let kill_after = rand::rng().random_range(1..450);
        let (n, retried) = batch_while_the_leader_dies(kill_after).await;
        eprintln!(
            "round {round}: kill after {kill_after} answers: {n} instances, {retried} retried"
        );
    }
}
