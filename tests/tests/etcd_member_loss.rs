//! The control plane on a 3-member etcd (loopback, separate ports) loses a
//! member: `nubo server create --count 60 --wait` while the leader, or a
//! follower, is killed with SIGKILL; everything afterwards while it stays
//! down (API calls, agents' leases and statuses, evacuation, deletes); a
//! member down for a while and back with nothing done by hand; etcd out of
//! space (NOSPACE) and the runbook's recovery; `--wait` through an API
//! outage.
//!
//! Needs the binaries: `cargo build --bins`, then
//! `cargo test -p nubo-tests --test etcd_member_loss -- --test-threads=1`
//! (the 60 s variant: `-- --ignored member_down_60s`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use nubo_tests::{fatal, list_items, wait_for, wait_until, Cli, Cluster};
use serde_json::Value;

/// Generous bound for the cluster to converge on a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(120);
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// 3 etcd members, 2 coordinators, 3 fake agents that take `boot_ms` to
/// "boot" an instance (so that statuses are written while a member is down).
fn cluster(boot_ms: u64) -> Cluster {
    Cluster::builder()
        .etcd_members(3)
        .coordinators(2)
        .agents(3)
        .agent_capacity(16, 16_384, 500)
        .agent_args(&["--fake-boot-ms", &boot_ms.to_string()])
        .start()
        .unwrap()
}

/// Flavor `tiny` (1 vCPU, 256 MiB, 1 GiB), image `cirros`, network `net1`.
fn catalog(cli: &Cli) -> Result<()> {
    cli.json(&[
        "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
    ])?;
    cli.json(&["image", "create", "cirros"])?;
    cli.json(&["network", "create", "net1", "--cidr", "10.20.0.0/23"])?;
    Ok(())
}

fn create_args<'a>(name: &'a str, count: &'a str) -> Vec<&'a str> {
    vec![
        "server",
        "create",
        name,
        "--count",
        count,
        "--wait",
        "--flavor",
        "tiny",
        "--image",
        "cirros",
        "--network",
        "net1",
    ]
}

/// Instance specs in etcd: name → (id, node).
fn specs(cluster: &Cluster) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for (k, v) in cluster.etcd.get_prefix("/nubo/v1/instances/")? {
        if k.ends_with("/status") {
            continue;
        }
        let j: Value = serde_json::from_slice(&v).with_context(|| format!("{k} is not JSON"))?;
        out.push((
            field(&j, "name").to_string(),
            field(&j, "id").to_string(),
            field(&j, "node").to_string(),
        ));
    }
    Ok(out)
}

/// Statuses in state `running`.
fn running(cluster: &Cluster) -> Result<usize> {
    // Statuses live under each reporting node's own keys.
    Ok(cluster
        .etcd
        .get_prefix(&nubo_common::keys::all_node_owned_prefix())?
        .into_iter()
        .filter(|(k, v)| {
            k.contains("/status/")
                && serde_json::from_slice::<Value>(v).is_ok_and(|j| field(&j, "state") == "running")
        })
        .count())
}

/// The lease each agent's `alive` key is bound to.
fn alive_leases(cluster: &Cluster) -> Result<BTreeMap<String, i64>> {
    let mut out = BTreeMap::new();
    for n in NODES {
        if let Some(v) = cluster.etcd.get(&format!("/nubo/v1/nodes/{n}/alive"))? {
            let j: Value = serde_json::from_slice(&v)?;
            out.insert(n.to_string(), j["lease"].as_i64().unwrap_or(0));
        }
    }
    Ok(out)
}

/// Each node's usage equals the instances assigned to it and stays within
/// its capacity (16 vCPUs × cpu ratio 4, 16 GiB).
fn assert_capacity(cluster: &Cluster) -> Result<()> {
    let mut assigned: HashMap<String, u64> = HashMap::new();
    for (k, _) in cluster.etcd.get_prefix("/nubo/v1/assignments/")? {
        let node = k
            .trim_start_matches("/nubo/v1/assignments/")
            .split('/')
            .next()
            .unwrap_or("");
        *assigned.entry(node.to_string()).or_default() += 1;
    }
    for n in NODES {
        let want = assigned.get(n).copied().unwrap_or(0);
        let (ram, count) = match cluster.etcd.get(&format!("/nubo/v1/nodes/{n}/usage"))? {
            Some(v) => {
                let j: Value = serde_json::from_slice(&v)?;
                (
                    j.pointer("/used/ram_mb")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    j["instances"].as_u64().unwrap_or(0),
                )
            }
            None => (0, 0),
        };
        assert_eq!((count, ram), (want, want * 256), "usage of {n}");
        assert!(
            ram <= 16_384 && count <= 64,
            "{n} over capacity: {ram} MiB, {count}"
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Leader,
    Follower,
}

/// The whole story for one victim (module docs).
fn cli_batch_while_an_etcd_member_dies(victim: Victim) {
    let mut cluster = cluster(1500);
    let cli = cluster.cli().unwrap();
    catalog(&cli).unwrap();
    let leases = alive_leases(&cluster).unwrap();
    assert_eq!(leases.len(), 3, "{leases:?}");

    let mut batch = cli.spawn(&create_args("b", "60")).unwrap();
    // Kill once placements have started and before every instance runs.
    wait_until(CONVERGE, "the first placements", || {
        Ok(!specs(&cluster)?.is_empty())
    })
    .unwrap();
    let leader = cluster.etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let target = match victim {
        Victim::Leader => leader,
        Victim::Follower => (leader + 1) % 3,
    };
    let (placed, up) = (specs(&cluster).unwrap().len(), running(&cluster).unwrap());
    assert!(batch.is_running(), "the batch finished before the kill");
    cluster.etcd.kill_member(target);
    let killed = Instant::now();
    eprintln!("{victim:?} (member {target}) killed with {placed} placed, {up} running");
    assert!(up < 60, "the kill landed mid-batch ({up} of 60 running)");

    let out = batch.wait(Duration::from_secs(300)).unwrap();
    assert!(
        out.success(),
        "`{}` failed after the member loss: {}\n{}\n{}",
        out.command,
        out.stderr,
        out.stdout,
        cluster.logs()
    );
    let created = out.json().unwrap();
    let summary = &created["summary"];
    assert_eq!(
        (
            summary["created"].as_u64(),
            summary["running"].as_u64(),
            summary["error"].as_u64()
        ),
        (Some(60), Some(60), Some(0)),
        "{summary}"
    );
    eprintln!("batch done {:?} after the kill", killed.elapsed());
    let s = specs(&cluster).unwrap();
    let names: BTreeSet<String> = s.iter().map(|(n, _, _)| n.clone()).collect();
    let want: BTreeSet<String> = (1..=60).map(|i| format!("b-{i}")).collect();
    assert_eq!(s.len(), 60, "60 instances, not more");
    assert_eq!(names, want, "each of the 60 exactly once");
    assert_capacity(&cluster).unwrap();
    assert!(running(&cluster).unwrap() == 60);

    // The agents kept their leases (no agent had to register again).
    assert_eq!(
        alive_leases(&cluster).unwrap(),
        leases,
        "agents re-registered"
    );

    // Every API call works, on both coordinators, while the member is down.
    for i in 0..20 {
        let cli = cluster.cli_to(i % 2).unwrap();
        let list = list_items(&cli.json(&["server", "list"]).unwrap()).unwrap();
        assert_eq!(list.len(), 60);
    }
    let nodes = list_items(&cli.json(&["node", "list"]).unwrap()).unwrap();
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["alive"].as_bool() == Some(true))
            .count(),
        3,
        "{nodes:?}"
    );
    cli.json(&["server", "show", "b-1"]).unwrap();

    // Evacuation still works: node-3 dies, its instances run elsewhere.
    let on3: BTreeSet<String> = s
        .iter()
        .filter(|(_, _, n)| n == "node-3")
        .map(|(_, id, _)| id.clone())
        .collect();
    assert!(!on3.is_empty(), "nothing on node-3");
    cluster.agent("node-3").unwrap().kill9();
    wait_for(CONVERGE, "node-3's instances running elsewhere", || {
        let list = list_items(&cli.json(&["server", "list"])?)?;
        let moved: Vec<&Value> = list
            .iter()
            .filter(|v| on3.contains(field(v, "id")))
            .collect();
        let done = moved
            .iter()
            .all(|v| field(v, "node") != "node-3" && field(v, "state") == "running");
        Ok(if done && moved.len() == on3.len() {
            Ok(())
        } else {
            Err(moved
                .iter()
                .map(|v| {
                    format!(
                        "{}:{}:{}",
                        field(v, "name"),
                        field(v, "node"),
                        field(v, "state")
                    )
                })
                .collect::<Vec<_>>())
        })
    })
    .with_context(|| cluster.logs())
    .unwrap();
    assert_eq!(
        specs(&cluster).unwrap().len(),
        60,
        "evacuation moved, never copied"
    );
    assert_capacity(&cluster).unwrap();

    // Deleting all 60 reports each one, all deleted.
    let mut args = vec!["server", "delete"];
    let refs: Vec<String> = (1..=60).map(|i| format!("b-{i}")).collect();
    args.extend(refs.iter().map(String::as_str));
    let del = cli.json(&args).unwrap();
    let results = del["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 60, "{del}");
    assert!(
        results.iter().all(|r| field(r, "result") == "deleted"),
        "{del}"
    );
    wait_until(CONVERGE, "every server gone", || {
        Ok(specs(&cluster)?.is_empty())
    })
    .unwrap();
    wait_until(CONVERGE, "every address freed", || {
        Ok(cluster
            .etcd
            .get_prefix("/nubo/v1/private/ipam/")?
            .is_empty())
    })
    .unwrap();
    assert_capacity(&cluster).unwrap();
    cluster.etcd.restart_member(target).unwrap();
}

#[test]
fn cli_batch_of_60_survives_kill9_of_the_etcd_leader() {
    cli_batch_while_an_etcd_member_dies(Victim::Leader);
}

#[test]
fn cli_batch_of_60_survives_kill9_of_an_etcd_follower() {
    cli_batch_while_an_etcd_member_dies(Victim::Follower);
}

/// A member is down for `down`, the API is used all along, then it comes
/// back by itself (restarted like systemd would, nothing else). Proof that
/// it really rejoined: another member is then killed, and the cluster
/// still has a quorum (it needs the returned one) and still serves.
fn member_down_then_back(down: Duration) {
    let mut cluster = cluster(0);
    let cli = cluster.cli().unwrap();
    catalog(&cli).unwrap();
    let leader = cluster.etcd.wait_leader(Duration::from_secs(10)).unwrap();
    cluster.etcd.kill_member(leader);
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < down {
        n += 1;
        let out = cli.json(&create_args(&format!("d{n}"), "2")).unwrap();
        assert_eq!(out["summary"]["running"].as_u64(), Some(2), "{out}");
        cli.json(&["server", "list"]).unwrap();
    }
    cluster.etcd.restart_member(leader).unwrap();
    eprintln!(
        "member {leader} back after {:?}; {n} batches meanwhile",
        t.elapsed()
    );
    let other = (leader + 1) % 3;
    cluster.etcd.kill_member(other);
    let out = cli.json(&create_args("after", "3")).unwrap();
    assert_eq!(out["summary"]["running"].as_u64(), Some(3), "{out}");
    let total = specs(&cluster).unwrap().len();
    assert_eq!(total, 2 * n + 3);
    assert_capacity(&cluster).unwrap();
    // Agents never lost their registration.
    assert_eq!(alive_leases(&cluster).unwrap().len(), 3);
}

#[test]
fn member_down_10s_then_back_needs_nothing_by_hand() {
    member_down_then_back(Duration::from_secs(10));
}

#[test]
#[ignore = "60 s outage; run with --ignored"]
fn member_down_60s_then_back_needs_nothing_by_hand() {
    member_down_then_back(Duration::from_secs(60));
}

/// `--wait` through an API outage (the coordinator killed and restarted
/// while it polls): it warns, keeps polling, and ends with the table.
#[test]
fn wait_survives_an_api_outage_and_ends_with_the_table() {
    let mut cluster = Cluster::builder()
        .coordinators(1)
        .agents(1)
        .agent_args(&["--fake-boot-ms", "10000"])
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    catalog(&cli).unwrap();
    let mut batch = cli.spawn(&create_args("w", "3")).unwrap();
    // The create call has returned and --wait polls: its first progress
    // line is out (the guests take 10 s to "boot", so it still says
    // building). Killing the coordinator before that would fail the create
    // call itself, which is another test.
    wait_until(CONVERGE, "--wait polling", || {
        let err = batch.stderr_so_far();
        if !batch.is_running() {
            return Err(fatal(anyhow::anyhow!("the CLI ended early: {err}")));
        }
        Ok(err.contains("3 building"))
    })
    .unwrap();
    assert_eq!(specs(&cluster).unwrap().len(), 3);
    cluster.coordinators[0].kill9();
    wait_until(CONVERGE, "a failed poll reported", || {
        let err = batch.stderr_so_far();
        if !batch.is_running() {
            return Err(fatal(anyhow::anyhow!("the CLI ended: {err}")));
        }
        Ok(err.contains("polling failed"))
    })
    .unwrap();
    assert!(
        batch.is_running(),
        "--wait gave up on the first failed poll"
    );
    cluster.coordinators[0].restart().unwrap();
    let out = batch.wait(Duration::from_secs(120)).unwrap();
    assert!(out.success(), "{}\n{}", out.stderr, out.stdout);
    let v = out.json().unwrap();
    assert_eq!(v["summary"]["running"].as_u64(), Some(3), "{v}");
    assert_eq!(list_items(&v).unwrap().len(), 3);
}

/// Every key and value under `/nubo/v1/`.
fn everything(cluster: &Cluster) -> Result<Vec<(String, Vec<u8>)>> {
    cluster.etcd.get_prefix("/nubo/v1/")
}

/// etcd with a small space quota: fill it (history of one key, as status
/// churn does), then the API refuses writes with an error naming the cause,
/// nothing is half-written, reads still work; the runbook's recovery
/// (compact, defragment every member, disarm) brings writes back.
#[test]
fn etcd_out_of_space_is_named_and_the_runbook_recovers_it() {
    let cluster = Cluster::builder()
        .etcd_members(3)
        .etcd_quota(24 * 1024 * 1024)
        .coordinators(1)
        .agents(1)
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    catalog(&cli).unwrap();
    cli.json(&create_args("ok", "2")).unwrap();

    // Fill: 512 KiB values on one key until etcd says NOSPACE.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let filled = rt.block_on(async {
        let store = cluster.etcd.store().await.unwrap();
        let value: Vec<u8> = (0..512 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for i in 0..400 {
            match store.put("/nbt/filler", value.clone(), None).await {
                Ok(_) => {}
                Err(nubo_store::StoreError::NoSpace { .. }) => return Some(i),
                Err(e) => panic!("filling: {e}"),
            }
        }
        None
    });
    let writes = filled.expect("etcd never ran out of space");
    eprintln!("NOSPACE after {writes} writes of 512 KiB");
    let alarms = cluster.etcd.etcdctl(&["alarm", "list"]).unwrap();
    assert!(alarms.contains("NOSPACE"), "{alarms}");

    let before = everything(&cluster).unwrap();
    // A batch: each instance fails, naming the cause.
    let out = cli.run(&create_args("full", "3")).unwrap();
    assert!(!out.success(), "{}", out.stdout);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    let results = list_items(&v).unwrap_or_default();
    let errors: Vec<&str> = results.iter().map(|r| field(r, "error")).collect();
    let text = format!("{}{}", out.stdout, out.stderr);
    eprintln!("out of space, `nubo server create` says:\n{text}");
    assert!(
        text.contains("out of space")
            && text.contains("NOSPACE")
            && text.contains("etcd out of space"),
        "the error names the cause and the runbook: {text}"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.is_empty() || e.contains("out of space")),
        "{errors:?}"
    );
    // A single write: one clear line.
    let f = cli
        .run(&[
            "flavor", "create", "big", "--vcpus", "2", "--ram", "512", "--disk", "1",
        ])
        .unwrap();
    assert!(!f.success());
    assert!(f.stderr.contains("out of space"), "{}", f.stderr);
    eprintln!("`nubo flavor create` says: {}", f.stderr);
    // Nothing half-written; reads still work.
    let after = everything(&cluster).unwrap();
    assert_eq!(
        before.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        after.iter().map(|(k, _)| k).collect::<Vec<_>>(),
        "keys written while out of space"
    );
    assert_eq!(before, after, "values changed while out of space");
    assert_eq!(
        list_items(&cli.json(&["server", "list"]).unwrap())
            .unwrap()
            .len(),
        2
    );

    // The runbook: compact to the current revision, defragment every
    // member, disarm the alarm.
    let status = cluster
        .etcd
        .etcdctl(&["endpoint", "status", "-w", "json"])
        .unwrap();
    let j: Value = serde_json::from_str(&status).unwrap();
    let rev = j[0]["Status"]["header"]["revision"].as_i64().unwrap();
    cluster
        .etcd
        .etcdctl(&["compact", &rev.to_string()])
        .unwrap();
    cluster.etcd.etcdctl(&["defrag", "--cluster"]).unwrap();
    cluster.etcd.etcdctl(&["alarm", "disarm"]).unwrap();
    let alarms = cluster.etcd.etcdctl(&["alarm", "list"]).unwrap();
    assert!(!alarms.contains("NOSPACE"), "{alarms}");
    let out = cli.json(&create_args("back", "3")).unwrap();
    assert_eq!(out["summary"]["running"].as_u64(), Some(3), "{out}");
    cli.json(&[
        "flavor", "create", "big", "--vcpus", "2", "--ram", "512", "--disk", "1",
    ])
    .unwrap();
}
