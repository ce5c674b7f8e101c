//! End-to-end tests of the foundation: etcd + coordinators + fake-driver
//! agents as real processes, driven through the `nubo` CLI.
//!
//! Needs the binaries: `cargo build --bins` before `cargo test -p nubo-tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nubo_tests::{list_items, pid_alive, wait_for, wait_until, Cli, Cluster};
use serde_json::Value;

/// Generous bound for a cluster to converge on a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(90);

/// The flavor, image and network every test boots from.
struct Catalog {
    flavor: &'static str,
    image: &'static str,
    network: &'static str,
    network_id: String,
}

/// Creates flavor `tiny` (1 vCPU, 256 MiB, 1 GiB), image `cirros` and
/// network `net1` (10.20.0.0/24) through the CLI.
fn catalog(cli: &Cli) -> Result<Catalog> {
    cli.json(&[
        "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
    ])?;
    cli.json(&["image", "create", "cirros"])?;
    let net = cli.json(&["network", "create", "net1", "--cidr", "10.20.0.0/24"])?;
    let network_id = net
        .get("id")
        .and_then(Value::as_str)
        .with_context(|| format!("`network create` printed no id: {net}"))?
        .to_string();
    Ok(Catalog {
        flavor: "tiny",
        image: "cirros",
        network: "net1",
        network_id,
    })
}

/// `nubo server create <name> --count <n> --wait …` with the catalog.
fn create_servers(cli: &Cli, cat: &Catalog, name: &str, count: u32) -> Result<Value> {
    let count = count.to_string();
    cli.json(&[
        "server",
        "create",
        name,
        "--count",
        &count,
        "--wait",
        "--flavor",
        cat.flavor,
        "--image",
        cat.image,
        "--network",
        cat.network,
    ])
}

/// `nubo server list -f json`, as a list of server objects.
fn servers(cli: &Cli) -> Result<Vec<Value>> {
    list_items(&cli.json(&["server", "list"])?)
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Every IPv4 address found in a server's JSON (its addresses).
fn ipv4s(v: &Value) -> Vec<Ipv4Addr> {
    match v {
        Value::String(s) => s.parse().into_iter().collect(),
        Value::Array(a) => a.iter().flat_map(ipv4s).collect(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.contains("ip") || k.contains("address"))
            .flat_map(|(_, v)| ipv4s(v))
            .collect(),
        _ => Vec::new(),
    }
}

/// Keys under `prefix` in etcd.
fn keys(cluster: &Cluster, prefix: &str) -> Result<Vec<String>> {
    Ok(cluster
        .etcd
        .get_prefix(prefix)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// A node's usage as (vcpus, ram_mb, disk_gb, instances); an absent key is
/// zero usage.
fn usage(cluster: &Cluster, node: &str) -> Result<(u64, u64, u64, u64)> {
    let key = format!("/nubo/v1/nodes/{node}/usage");
    let Some(raw) = cluster.etcd.get(&key)? else {
        return Ok((0, 0, 0, 0));
    };
    let v: Value =
        serde_json::from_slice(&raw).with_context(|| format!("{key} is not JSON: {raw:?}"))?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok((
        n("/used/vcpus"),
        n("/used/ram_mb"),
        n("/used/disk_gb"),
        n("/instances"),
    ))
}

/// The fake driver's records on an agent: instance id → (power, boot count).
fn fake_instances(cluster: &mut Cluster, node: &str) -> Result<BTreeMap<String, (String, u64)>> {
    let path = cluster
        .agent(node)?
        .state_dir()
        .join("fake-hypervisor.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON: {text}", path.display()))?;
    let records = v
        .get("instances")
        .and_then(Value::as_object)
        .with_context(|| format!("no `instances` object in {}: {text}", path.display()))?;
    Ok(records
        .iter()
        .map(|(id, r)| {
            let power = field(r, "power").to_string();
            let boots = r.get("boot_count").and_then(Value::as_u64).unwrap_or(0);
            (id.clone(), (power, boots))
        })
        .collect())
}

/// Asserts a failed command printed exactly one non-empty line on stderr
/// containing every word of `words` (case-insensitive).
fn assert_clear_failure(out: &nubo_tests::CliOutput, words: &[&str]) {
    assert!(
        !out.success(),
        "`{}` should have failed; stdout: {}",
        out.command,
        out.stdout
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "`{}` should print one line on stderr, got: {:?}",
        out.command,
        out.stderr
    );
    let line = lines[0].to_lowercase();
    for w in words {
        assert!(
            line.contains(&w.to_lowercase()),
            "`{}`: stderr {:?} does not mention {w:?}",
            out.command,
            lines[0]
        );
    }
}

/// The OpenStack pain point: a batch of 120 must all come up, spread, with
/// unique addresses, and give everything back when deleted.
#[test]
fn hundred_twenty_servers_run_spread_over_three_nodes_and_free_everything_on_delete() {
    let cluster = Cluster::builder()
        .coordinators(2)
        .agents(3)
        .agent_capacity(64, 131_072, 2_048)
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    let cat = catalog(&cli).unwrap();

    // The batch goes through the second coordinator: any one serves writes.
    let cli2 = cluster.cli_to(1).unwrap();
    let created = create_servers(&cli2, &cat, "web", 120)
        .with_context(|| cluster.logs())
        .unwrap();
    let summary = created
        .get("summary")
        .unwrap_or_else(|| panic!("no summary in the create output: {created}"));
    let n = |k: &str| summary.get(k).and_then(Value::as_u64);
    assert_eq!(
        (n("created"), n("running"), n("error")),
        (Some(120), Some(120), Some(0)),
        "create summary: {summary}"
    );
    let results = list_items(&created).unwrap_or_default();
    assert_eq!(results.len(), 120, "create results: {created}");
    let failed: Vec<&Value> = results
        .iter()
        .filter(|r| r.get("error").is_some_and(|e| !e.is_null() && e != ""))
        .collect();
    assert!(failed.is_empty(), "some creations failed: {failed:?}");

    // `--wait` returned: every server is running, right now.
    let list = servers(&cli).unwrap();
    assert_eq!(list.len(), 120, "server list: {list:?}");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut ips = BTreeSet::new();
    let net: (Ipv4Addr, u32) = ("10.20.0.0".parse().unwrap(), 24);
    for s in &list {
        assert_eq!(field(s, "state"), "running", "not running: {s}");
        let node = field(s, "node");
        assert!(!node.is_empty(), "no node: {s}");
        *per_node.entry(node.to_string()).or_default() += 1;
        let found = ipv4s(s);
        assert_eq!(found.len(), 1, "expected one IP: {s}");
        let ip = found[0];
        assert_eq!(
            u32::from(ip) >> (32 - net.1),
            u32::from(net.0) >> (32 - net.1),
            "{ip} outside 10.20.0.0/24"
        );
        assert!(ips.insert(ip), "IP {ip} handed out twice");
        assert!(field(s, "name").starts_with("web"), "{s}");
    }
    assert_eq!(
        per_node.keys().cloned().collect::<Vec<_>>(),
        vec!["node-1", "node-2", "node-3"],
        "placement: {per_node:?}"
    );
    // Spread placement (the default) over three equal nodes.
    for (node, n) in &per_node {
        assert!((20..=60).contains(n), "{node} got {n}: {per_node:?}");
    }
    let ipam = format!("/nubo/v1/private/ipam/{}/", cat.network_id);
    assert_eq!(keys(&cluster, &ipam).unwrap().len(), 120);
    for node in per_node.keys() {
        let (vcpus, ram, _, n) = usage(&cluster, node).unwrap();
        let expected = per_node[node] as u64;
        assert_eq!(
            (vcpus, ram, n),
            (expected, expected * 256, expected),
            "{node}"
        );
    }

    // Delete them all through the CLI.
    let ids: Vec<&str> = list.iter().map(|s| field(s, "id")).collect();
    let mut args = vec!["server", "delete"];
    args.extend(&ids);
    cli.run(&args).unwrap().ok().unwrap();

    wait_until(CONVERGE, "every server gone", || {
        Ok(servers(&cli)?.is_empty())
    })
    .unwrap();
    wait_for(CONVERGE, "IPAM and usage freed", || {
        let ipam_left = keys(&cluster, &ipam)?;
        let mut used = BTreeMap::new();
        for node in ["node-1", "node-2", "node-3"] {
            let u = usage(&cluster, node)?;
            if u != (0, 0, 0, 0) {
                used.insert(node, u);
            }
        }
        let instances = keys(&cluster, "/nubo/v1/instances/")?;
        let assignments = keys(&cluster, "/nubo/v1/assignments/")?;
        let ports = keys(&cluster, "/nubo/v1/ports/")?;
        if ipam_left.is_empty()
            && used.is_empty()
            && instances.is_empty()
            && assignments.is_empty()
            && ports.is_empty()
        {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "ipam {} keys, usage {used:?}, {} instance keys, {} assignments, {} ports",
                ipam_left.len(),
                instances.len(),
                assignments.len(),
                ports.len()
            )))
        }
    })
    .unwrap();
    // And the agents destroyed their fake instances.
    let mut cluster = cluster;
    for node in ["node-1", "node-2", "node-3"] {
        wait_for(CONVERGE, &format!("{node}'s fake instances gone"), || {
            let left = fake_instances(&mut cluster, node)?;
            Ok(if left.is_empty() { Ok(()) } else { Err(left) })
        })
        .unwrap();
    }
}

/// kill -9 of an agent: its liveness key goes with its lease, and the
/// restarted agent adopts the fake driver's instances as they are (same boot
/// counters). The agent is restarted as soon as its key is gone, well before
/// any evacuation grace period could move its instances.
#[test]
fn killed_agent_loses_its_alive_key_and_restarts_without_touching_its_instances() {
    let lease_ttl = 2;
    let mut cluster = Cluster::builder()
        .coordinators(1)
        .agents(2)
        .lease_ttl(lease_ttl)
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    let cat = catalog(&cli).unwrap();
    create_servers(&cli, &cat, "db", 6)
        .with_context(|| cluster.logs())
        .unwrap();
    let on_node1: BTreeSet<String> = servers(&cli)
        .unwrap()
        .iter()
        .filter(|s| field(s, "node") == "node-1")
        .map(|s| field(s, "id").to_string())
        .collect();
    assert!(!on_node1.is_empty(), "nothing placed on node-1");

    let before = fake_instances(&mut cluster, "node-1").unwrap();
    assert_eq!(
        before.keys().cloned().collect::<BTreeSet<_>>(),
        on_node1,
        "node-1's fake hypervisor vs the API"
    );
    assert!(
        before.values().all(|(p, b)| p == "running" && *b >= 1),
        "{before:?}"
    );

    let alive = "/nubo/v1/nodes/node-1/alive";
    assert!(cluster.etcd.get(alive).unwrap().is_some());
    let agent = cluster.agent("node-1").unwrap();
    let old_pid = agent.pid().unwrap();
    agent.kill9();
    assert!(!pid_alive(old_pid));
    let killed_at = Instant::now();
    // The lease expires after at most its TTL; the margin covers etcd's
    // expiry sweep and a loaded machine.
    wait_until(
        Duration::from_secs(u64::from(lease_ttl) + 10),
        "node-1's alive key to disappear",
        || Ok(cluster.etcd.get(alive)?.is_none()),
    )
    .unwrap();
    eprintln!("alive key gone {:?} after kill -9", killed_at.elapsed());
    // The other node is unaffected.
    assert!(cluster
        .etcd
        .get("/nubo/v1/nodes/node-2/alive")
        .unwrap()
        .is_some());

    let agent = cluster.agent("node-1").unwrap();
    agent.restart().unwrap();
    let new_pid = agent.pid().unwrap();
    wait_until(CONVERGE, "node-1 alive again with its new pid", || {
        let Some(v) = cluster.etcd.get(alive)? else {
            return Ok(false);
        };
        let v: Value = serde_json::from_slice(&v)?;
        Ok(v.get("pid").and_then(Value::as_u64) == Some(u64::from(new_pid)))
    })
    .unwrap();

    // The restarted agent works: a new batch reaches running (one of each
    // pair lands on node-1 under spread placement), and its state is
    // reported for every instance.
    create_servers(&cli, &cat, "after", 2)
        .with_context(|| cluster.logs())
        .unwrap();
    wait_for(CONVERGE, "every server running", || {
        let list = servers(&cli)?;
        let not_running: Vec<String> = list
            .iter()
            .filter(|s| field(s, "state") != "running")
            .map(|s| format!("{} {}", field(s, "name"), field(s, "state")))
            .collect();
        Ok(if list.len() == 8 && not_running.is_empty() {
            Ok(())
        } else {
            Err((list.len(), not_running))
        })
    })
    .unwrap();

    let after = fake_instances(&mut cluster, "node-1").unwrap();
    for (id, rec) in &before {
        assert_eq!(
            after.get(id),
            Some(rec),
            "instance {id} was touched by the restart (before {rec:?})"
        );
    }
    let log = cluster.agent("node-1").unwrap().current_log();
    assert!(
        !log.contains("panicked"),
        "restarted agent panicked:\n{log}"
    );
}

/// Mistakes are refused with one readable line and leave nothing behind;
/// hand-written garbage in etcd is logged and skipped, never fatal.
#[test]
fn bad_input_fails_with_one_clear_line_and_garbage_in_etcd_is_survived() {
    let mut cluster = Cluster::builder()
        .coordinators(1)
        .agents(1)
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    let cat = catalog(&cli).unwrap();
    let create = |flavor: &str, image: &str, network: &str| {
        cli.run(&[
            "server",
            "create",
            "bad",
            "--wait",
            "--flavor",
            flavor,
            "--image",
            image,
            "--network",
            network,
        ])
        .unwrap()
    };
    let out = create("no-such-flavor", cat.image, cat.network);
    assert_clear_failure(&out, &["flavor", "no-such-flavor"]);
    let out = create(cat.flavor, "no-such-image", cat.network);
    assert_clear_failure(&out, &["image", "no-such-image"]);
    let out = create(cat.flavor, cat.image, "no-such-net");
    assert_clear_failure(&out, &["network", "no-such-net"]);

    let out = cli
        .run(&["network", "create", "badcidr", "--cidr", "10.1.2.3/33"])
        .unwrap();
    assert_clear_failure(&out, &["10.1.2.3/33"]);
    // An overlapping subnet is fine (only a router refuses two).
    let out = cli
        .run(&["network", "create", "over", "--cidr", "10.20.0.128/25"])
        .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli.run(&["network", "delete", "over"]).unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli
        .run(&["network", "create", cat.network, "--cidr", "10.99.0.0/24"])
        .unwrap();
    assert_clear_failure(&out, &[cat.network, "exists"]);

    // None of it left anything behind.
    assert!(servers(&cli).unwrap().is_empty());
    assert!(keys(&cluster, "/nubo/v1/private/ipam/").unwrap().is_empty());
    let nets = list_items(&cli.json(&["network", "list"]).unwrap()).unwrap();
    assert_eq!(nets.len(), 1, "{nets:?}");

    // A real server, then garbage: an unparsable instance spec and its
    // node's copy, assigned to the node so the agent reads it too (the
    // copy: a node cannot read the specs).
    create_servers(&cli, &cat, "ok", 1)
        .with_context(|| cluster.logs())
        .unwrap();
    let bad_id = "7d7c9f7e-2a43-4b8e-9f61-3c1d2b0a9e55";
    let bad_key = format!("/nubo/v1/instances/{bad_id}");
    let bad_copy = format!("/nubo/v1/hosts/node-1/instances/{bad_id}");
    cluster.etcd.etcdctl(&["put", &bad_key, "garbage"]).unwrap();
    cluster
        .etcd
        .etcdctl(&["put", &bad_copy, "garbage"])
        .unwrap();
    let assignment = format!(
        r#"{{"instance":"{bad_id}","node":"node-1","assigned_at":"2026-01-01T00:00:00Z"}}"#
    );
    cluster
        .etcd
        .etcdctl(&[
            "put",
            &format!("/nubo/v1/assignments/node-1/{bad_id}"),
            &assignment,
        ])
        .unwrap();

    let list = servers(&cli).unwrap();
    assert!(
        list.iter().any(|s| field(s, "name").starts_with("ok")),
        "the valid server is still listed: {list:?}"
    );
    let coord_pid = cluster.coordinators[0].pid().unwrap();
    let agent_pid = cluster.agents[0].pid().unwrap();
    wait_until(CONVERGE, "both daemons to log the garbage key", || {
        let c = cluster.coordinators[0].log().contains(&bad_key);
        let a = cluster.agents[0].log().contains(&bad_copy);
        Ok(c && a)
    })
    .with_context(|| cluster.logs())
    .unwrap();
    // Still up, and still serving: a new server reaches running.
    create_servers(&cli, &cat, "ok2", 1)
        .with_context(|| cluster.logs())
        .unwrap();
    assert!(
        pid_alive(coord_pid),
        "coordinator died:\n{}",
        cluster.logs()
    );
    assert!(pid_alive(agent_pid), "agent died:\n{}", cluster.logs());
    assert!(cluster.coordinators[0].is_running());
    assert!(cluster.agent("node-1").unwrap().is_running());
}

/// `etcdctl get --prefix /nubo/v1/` is readable: every value is JSON
/// (docs/etcd-layout.md: "Every value is JSON").
#[test]
fn every_value_under_nubo_v1_is_json() {
    let cluster = Cluster::builder()
        .coordinators(2)
        .agents(2)
        .start()
        .unwrap();
    let cli = cluster.cli().unwrap();
    let cat = catalog(&cli).unwrap();
    create_servers(&cli, &cat, "j", 4)
        .with_context(|| cluster.logs())
        .unwrap();
    let kvs = cluster.etcd.get_prefix("/nubo/v1/").unwrap();
    let mut bad = Vec::new();
    let mut kinds = BTreeSet::new();
    for (k, v) in &kvs {
        // The kind: the first segment, or the first two under private/.
        if let Some(rest) = k.strip_prefix("/nubo/v1/") {
            let mut seg = rest.split('/');
            let kind = match (seg.next(), seg.next()) {
                (Some("private"), Some(sub)) => format!("private/{sub}"),
                (Some(first), _) => first.to_string(),
                (None, _) => continue,
            };
            kinds.insert(kind);
        }
        if serde_json::from_slice::<Value>(v).is_err() {
            bad.push(format!("{k} = {:?}", String::from_utf8_lossy(v)));
        }
    }
    assert!(
        bad.is_empty(),
        "values that are not JSON:\n{}",
        bad.join("\n")
    );
    // The check covered the whole model, not an empty prefix.
    for kind in [
        "nodes",
        "flavors",
        "images",
        "networks",
        // IPAM and the rest of the coordinators' data.
        "private/ipam",
        "private/macs",
        "private/names",
        "ports",
        "instances",
        "assignments",
        // The nodes' spec copies and statuses.
        "hosts",
        "node-owned",
    ] {
        assert!(kinds.contains(kind), "no {kind} keys in {kinds:?}");
    }
}

/// Guard: the helper that classifies CLI failures rejects a success and a
/// multi-line error (so the bad-input test can fail).
#[test]
fn clear_failure_check_is_strict() {
    let ok = nubo_tests::CliOutput {
        command: "x".into(),
        code: 0,
        stdout: String::new(),
        stderr: String::new(),
    };
    assert!(std::panic::catch_unwind(|| assert_clear_failure(&ok, &[])).is_err());
    let two = nubo_tests::CliOutput {
        code: 1,
        stderr: "error: a\ncaused by: b\n".into(),
        ..ok.clone()
    };
    assert!(std::panic::catch_unwind(|| assert_clear_failure(&two, &["a"])).is_err());
    let good = nubo_tests::CliOutput {
        code: 1,
        stderr: "error: flavor x not found\n".into(),
        ..ok
    };
    assert_clear_failure(&good, &["flavor", "X"]);
}
