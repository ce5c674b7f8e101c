//! Benchmarks of the OpenStack front end against the native API, in the
//! same run (docs/benchmarks.md): `openstack server list --long` with
//! 1,000 servers vs `nubo server list`, and 120 servers created by one
//! Compute request (`min_count` = `max_count` = 120) vs one native batch
//! (`nubo server create --count 120`), wall time until every one runs.
//!
//! A scale benchmark, so the hypervisors are fake-driver agents (two
//! nodes of 64 vCPUs / 128 GiB) behind a production-like coordinator
//! (TLS, tokens, etcd with client certificates: `SecureCloud`);
//! `nubo-openstack` in front ([`FrontEnd`]).
//!
//! `cargo build --bins && sudo cargo test -p nubo-tests --test
//! openstack_bench -- --ignored --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant};

use nubo_tests::agent::Agent;
use nubo_tests::netns::need_root;
use nubo_tests::openstack_lab::{openstack, FrontEnd};
use nubo_tests::secure::SecureCloud;
use nubo_tests::stats::median;
use nubo_tests::{list_items, wait_for, Cli};

/// Servers of `cli`'s project that run.
fn running(cli: &Cli) -> usize {
    list_items(&cli.json(&["server", "list"]).unwrap())
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "running")
        .count()
}

/// Waits until `n` servers of the project run; the seconds since `t0`.
fn until_running(cli: &Cli, n: usize, t0: Instant) -> f64 {
    wait_for(Duration::from_secs(600), "servers running", || {
        let r = running(cli);
        Ok(if r >= n {
            Ok(())
        } else {
            Err(format!("{r} of {n}"))
        })
    })
    .unwrap();
    t0.elapsed().as_secs_f64()
}

/// `nubo server create NAME --count COUNT` of the benchmark's flavor,
/// image and network (one native batch).
fn create_batch(cli: &Cli, name: &str, count: u32) {
    cli.json(&[
        "server",
        "create",
        name,
        "--flavor",
        "nano",
        "--image",
        "cirros",
        "--network",
        "net1",
        "--count",
        &count.to_string(),
    ])
    .unwrap();
}

/// Deletes every server of the project and waits until none is left.
fn delete_all(cli: &Cli) {
    let names: Vec<String> = list_items(&cli.json(&["server", "list"]).unwrap())
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for chunk in names.chunks(100) {
        let mut args = vec!["server", "delete"];
        args.extend(chunk.iter().map(String::as_str));
        cli.json(&args).unwrap();
    }
    wait_for(Duration::from_secs(600), "servers deleted", || {
        let left = list_items(&cli.json(&["server", "list"])?)?.len();
        Ok(if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        })
    })
    .unwrap();
}

#[test]
#[ignore = "benchmark"]
fn bench_openstack_list_and_batch_create_vs_native() {
    if !need_root().unwrap() {
        return;
    }
    let cloud = SecureCloud::start().unwrap();
    let admin = &cloud.admin;
    admin
        .json(&[
            "flavor", "create", "nano", "--vcpus", "1", "--ram", "64", "--disk", "1",
        ])
        .unwrap();
    let alice = cloud.member("alice", "team-a").unwrap();
    // No limits for the project (omitted = unlimited).
    admin
        .json(&["--project", "team-a", "quota", "set"])
        .unwrap();
    alice.json(&["image", "create", "cirros"]).unwrap();
    alice
        .json(&["network", "create", "net1", "--cidr", "10.40.0.0/20"])
        .unwrap();
    let cred = cloud.node_credential().unwrap();
    let mut agents = Vec::new();
    for node in ["hv-1", "hv-2"] {
        let mut o = cloud.agent_opts(node, &cred).unwrap();
        o.vcpus = 1024;
        o.ram_mb = 1024 * 1024;
        agents.push(Agent::start(o).unwrap());
    }
    let dir = tempfile::Builder::new()
        .prefix("nbt-osbench-")
        .tempdir()
        .unwrap();
    let fe = FrontEnd::start(
        &cloud.coordinator.endpoint(),
        cloud.etcd.certs(),
        dir.path(),
    )
    .unwrap();
    let clouds = fe
        .clouds_yaml(&[("nubo", "alice", "alice-password", "team-a")])
        .unwrap();
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // 120 servers: one native batch, then one Compute request.
    let t0 = Instant::now();
    create_batch(&alice, "nat", 120);
    let native = until_running(&alice, 120, t0);
    delete_all(&alice);
    let t0 = Instant::now();
    openstack(
        &clouds,
        "nubo",
        &[
            "server",
            "create",
            "--flavor",
            "nano",
            "--image",
            "cirros",
            "--network",
            "net1",
            "--min",
            "120",
            "--max",
            "120",
            "os",
        ],
    )
    .unwrap();
    let through = until_running(&alice, 120, t0);
    println!(
        "120 servers to running: OpenStack API (one max_count=120 request) {through:.1} s, native batch {native:.1} s: ratio {:.2} (load {})",
        through / native,
        load().trim()
    );
    delete_all(&alice);

    // 1,000 servers listed.
    for i in 0..8 {
        create_batch(&alice, &format!("s{i}"), 125);
    }
    until_running(&alice, 1000, Instant::now());
    let (mut os, mut ours, mut short, mut raw) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let token = openstack(&clouds, "nubo", &["token", "issue", "-f", "json"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        // The adapter alone: one GET of /servers/detail.
        let t = Instant::now();
        let out = fe
            .curl()
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "-H",
                &format!("X-Auth-Token: {token}"),
            ])
            .arg(format!("{}/compute/v2.1/servers/detail", fe.url))
            .status()
            .unwrap();
        assert!(out.success());
        raw.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        openstack(&clouds, "nubo", &["server", "list", "-f", "json"]).unwrap();
        short.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let listed =
            openstack(&clouds, "nubo", &["server", "list", "--long", "-f", "json"]).unwrap();
        os.push(t.elapsed().as_secs_f64());
        assert_eq!(listed.as_array().unwrap().len(), 1000);
        let t = Instant::now();
        let listed = alice.json(&["server", "list"]).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        assert_eq!(list_items(&listed).unwrap().len(), 1000);
    }
    println!(
        "1,000 servers listed: `openstack server list --long` {:.2} s, `nubo server list` {:.2} s (medians of 3; {os:?} / {ours:?}); `openstack server list` {:.2} s, one GET /servers/detail {:.2} s; load {}",
        median(&os),
        median(&ours),
        median(&short),
        median(&raw),
        load().trim()
    );
}
