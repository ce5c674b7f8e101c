//! The simulated-host harness itself: two hosts on an underlay reach each
//! other and the bridge, and leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use nubo_tests::netns::{link_names, netns_names};
use nubo_tests::{Etcd, Underlay};

#[test]
fn two_hosts_ping_over_the_underlay_and_are_cleaned_up() {
    let underlay = Underlay::new().unwrap();
    let prefix = underlay.name_prefix();
    assert!(prefix.starts_with("nbt"));
    let h1 = underlay.host(1).unwrap();
    let h2 = underlay.host(2).unwrap();
    for name in [h1.netns(), h2.netns(), underlay.bridge(), h1.interface()] {
        assert!(name.len() <= 15 && name.starts_with(&prefix), "{name}");
    }
    assert!(netns_names().unwrap().contains(&h1.netns().to_string()));

    h1.ping(h2.ip(), Duration::from_secs(20)).unwrap();
    h2.ping(h1.ip(), Duration::from_secs(20)).unwrap();
    h1.ping(underlay.gateway(), Duration::from_secs(20))
        .unwrap();

    // MTU 1500 end to end: a full-size unfragmentable packet gets through.
    let out = h1
        .exec(
            "ping",
            &[
                "-c",
                "1",
                "-w",
                "10",
                "-M",
                "do",
                "-s",
                "1472",
                &h2.ip().to_string(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // etcd listening on the bridge address is reachable from inside a host.
    let etcd = Etcd::start_on(underlay.gateway().into()).unwrap();
    etcd.etcdctl(&["put", "/nbt/x", "1"]).unwrap();
    let out = h2
        .exec(
            "etcdctl",
            &[
                &format!("--endpoints={}", etcd.endpoint()),
                "--command-timeout=10s",
                "get",
                "/nbt/x",
                "--print-value-only",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    drop(etcd);
    drop(h1);
    drop(h2);
    drop(underlay);
    let leftovers: Vec<String> = netns_names()
        .unwrap()
        .into_iter()
        .chain(link_names().unwrap())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn hosts_on_different_underlays_get_distinct_names_and_subnets() {
    let a = Underlay::new().unwrap();
    let b = Underlay::new().unwrap();
    assert_ne!(a.token(), b.token());
    assert_ne!(a.gateway(), b.gateway());
    // A host on `a` cannot reach `b`'s bridge address... through `a`'s
    // underlay it has no route at all (different /24, no default route).
    let h = a.host(1).unwrap();
    assert!(h.ping(b.gateway(), Duration::from_secs(1)).is_err());
}

/// An agent runs inside a simulated host and registers with its underlay
/// address, against etcd and a coordinator listening on the bridge.
#[test]
fn agent_runs_inside_a_host_namespace() {
    use nubo_tests::{Agent, AgentOpts, Cli, Coordinator, CoordinatorOpts};

    let underlay = Underlay::new().unwrap();
    let host = underlay.host(1).unwrap();
    let etcd = Etcd::start_on(underlay.gateway().into()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut copts = CoordinatorOpts::new(&etcd.endpoint(), "c1");
    copts.ip = underlay.gateway().into();
    let coordinator = Coordinator::start_with(copts, logs.path()).unwrap();

    let mut opts = AgentOpts::fake("hv-1", &etcd.endpoint());
    opts.netns = Some(host.netns().to_string());
    opts.underlay_ip = Some(host.ip().into());
    let mut agent = Agent::start(opts).unwrap();
    let pid = agent.pid().unwrap();
    // The agent process really lives in the host's namespace.
    let ns_of = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    let ns_pids = host.exec("ip", &["netns", "pids", host.netns()]).unwrap();
    assert!(
        String::from_utf8_lossy(&ns_pids.stdout)
            .split_whitespace()
            .any(|p| p == pid.to_string()),
        "agent pid {pid} not in {}",
        host.netns()
    );
    assert_ne!(ns_of(&pid.to_string()), ns_of("self"));

    let node = etcd
        .get("/nubo/v1/nodes/hv-1")
        .unwrap()
        .expect("node record");
    let node: serde_json::Value = serde_json::from_slice(&node).unwrap();
    assert_eq!(node["underlay_ip"], host.ip().to_string());

    let cli = Cli::new(&coordinator.endpoint()).unwrap();
    cli.json(&[
        "flavor", "create", "t", "--vcpus", "1", "--ram", "64", "--disk", "1",
    ])
    .unwrap();
    cli.json(&["image", "create", "i"]).unwrap();
    cli.json(&["network", "create", "n", "--cidr", "10.21.0.0/24"])
        .unwrap();
    let out = cli
        .json(&[
            "server",
            "create",
            "vm",
            "--wait",
            "--flavor",
            "t",
            "--image",
            "i",
            "--network",
            "n",
        ])
        .unwrap();
    assert!(out.to_string().contains("hv-1"), "{out}");
    agent.kill9();
}

/// A cluster whose agents run on simulated hosts.
#[test]
fn cluster_on_hosts_places_servers_on_both_hosts() {
    let underlay = Underlay::new().unwrap();
    let (h1, h2) = (underlay.host(1).unwrap(), underlay.host(2).unwrap());
    let cluster = nubo_tests::Cluster::builder()
        .on_hosts(&[&h1, &h2])
        .start()
        .unwrap();
    assert!(cluster
        .etcd
        .endpoint()
        .contains(&underlay.gateway().to_string()));
    for (node, host) in [("node-1", &h1), ("node-2", &h2)] {
        let v = cluster.etcd.get(&format!("/nubo/v1/nodes/{node}")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&v.expect("node record")).unwrap();
        assert_eq!(v["underlay_ip"], host.ip().to_string());
    }
    let cli = cluster.cli().unwrap();
    cli.json(&[
        "flavor", "create", "t", "--vcpus", "1", "--ram", "64", "--disk", "1",
    ])
    .unwrap();
    cli.json(&["image", "create", "i"]).unwrap();
    cli.json(&["network", "create", "n", "--cidr", "10.21.0.0/24"])
        .unwrap();
    cli.json(&[
        "server",
        "create",
        "vm",
        "--count",
        "4",
        "--wait",
        "--flavor",
        "t",
        "--image",
        "i",
        "--network",
        "n",
    ])
    .unwrap();
    let list = nubo_tests::list_items(&cli.json(&["server", "list"]).unwrap()).unwrap();
    let nodes: std::collections::BTreeSet<&str> =
        list.iter().filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["node-1", "node-2"]);
}

/// Leftovers of a test process that died without running destructors are
/// deleted by the next run.
#[test]
fn leftovers_of_a_dead_run_are_swept() {
    use nubo_tests::netns::run;
    // A pid that certainly is dead: a child we spawned and reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let dead = child.id();
    let token = format!("zz{:02}", std::process::id() % 100);
    let registry = std::env::temp_dir().join("nbt-net");
    std::fs::create_dir_all(&registry).unwrap();
    let bridge = format!("nbt{token}u");
    let ns = format!("nbt{token}h1");
    run("ip", &["link", "add", &bridge, "type", "bridge"]).unwrap();
    run("ip", &["netns", "add", &ns]).unwrap();
    // Registered last: a concurrent run's sweep then finds the owner and
    // its leftovers together (registered first, a sweep in between would
    // forget the owner before its leftovers exist).
    std::fs::write(registry.join(&token), dead.to_string()).unwrap();

    let _u = Underlay::new().unwrap();
    assert!(
        !link_names().unwrap().contains(&bridge),
        "{bridge} not swept"
    );
    assert!(!netns_names().unwrap().contains(&ns), "{ns} not swept");
    assert!(!registry.join(&token).exists());
}
