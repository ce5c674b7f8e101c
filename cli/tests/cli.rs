//! Runs the `nubo` binary: against an unreachable endpoint, and against a
//! real coordinator (and agent) and etcd. `cargo test` does not build other
//! crates' binaries: `cargo build --bins` first (`scripts/test.sh` does);
//! a missing `nubo-coordinator`/`nubo-agent` fails the test with that hint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nubo_common::model::{self, Node, NodeAlive, Resources};
use nubo_common::{keys, NodeName};
use nubo_tests::ports::free_port;
use nubo_tests::Etcd;
use serde_json::Value;

fn nubo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_nubo")
}

fn nubo(endpoint: &str, args: &[&str]) -> Output {
    Command::new(nubo_bin())
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("NUBO_ENDPOINT")
        .env_remove("NUBO_PROJECT")
        .output()
        .expect("running nubo")
}

#[test]
fn unreachable_endpoint_is_one_clean_line_and_exit_1() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["flavor", "list"][..],
        &["server", "show", "web-1"],
        &["node", "list"],
    ] {
        let out = nubo(&endpoint, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr,
            format!(
                "error: cannot reach the nubo API at {endpoint}: connection refused \
                 (set --endpoint or NUBO_ENDPOINT)\n"
            ),
            "{args:?}"
        );
    }
}

#[test]
fn malformed_endpoint_is_reported() {
    let out = nubo("127.0.0.1:7400", &["flavor", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: invalid endpoint \"127.0.0.1:7400\": expected http://HOST:PORT\n"
    );
}

/// A daemon child process (coordinator, agent), killed by pid on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `bin args…` logging to `dir/<name>.log`, then waits (30 s at
    /// most) until `ready(&log)` holds.
    fn start(bin: &Path, args: &[String], dir: &Path, ready: impl Fn(&Daemon) -> bool) -> Daemon {
        let name = bin.file_name().and_then(|n| n.to_str()).unwrap_or("daemon");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting a daemon");
        let mut d = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&d) {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("{name} exited with {status}:\n{}", d.log());
            }
            assert!(Instant::now() < deadline, "{name} not ready:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts a coordinator on `listen`; ready once it accepts connections.
fn start_coordinator(bin: &Path, etcd: &Etcd, listen: &str) -> Daemon {
    let args = [
        "--etcd-endpoints".to_string(),
        etcd.endpoint(),
        "--listen".into(),
        listen.into(),
        "--health-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        // Not about security: development mode (plain text, no tokens).
        "--insecure".into(),
        "--auth".into(),
        "none".into(),
    ];
    Daemon::start(bin, &args, &etcd.dir(), |_| {
        TcpStream::connect(listen).is_ok()
    })
}

/// Registers a node the way an agent does (record + `/alive` on a lease).
async fn register_node(etcd: &Etcd, name: &str) {
    let mut c = etcd.client().await.expect("etcd client");
    let node = NodeName::new(name).expect("node name");
    let rec = Node {
        name: node.clone(),
        underlay_ip: "127.0.0.1".parse().expect("ip"),
        underlay_mtu: 1500,
        availability_zone: "nova".into(),
        labels: Default::default(),
        capacity: Resources {
            vcpus: 8,
            ram_mb: 16384,
            disk_gb: 200,
        },
        agent_version: "cli-test".into(),
        registered_at: model::now(),
    };
    let lease = c.lease_grant(60, None).await.expect("lease").id();
    let alive = NodeAlive {
        lease,
        since: model::now(),
        pid: std::process::id(),
    };
    c.put(keys::node(&node), model::encode(&rec), None)
        .await
        .expect("put node");
    c.put(
        keys::node_alive(&node),
        model::encode(&alive),
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put alive");
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "nubo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flavor_network_server_round_trip_against_a_real_coordinator() {
    let bin = nubo_tests::bin_path("nubo-coordinator").unwrap_or_else(|e| panic!("{e:#}"));
    let etcd = Etcd::start().expect("etcd");
    let listen = format!("127.0.0.1:{}", free_port());
    let coord = start_coordinator(&bin, &etcd, &listen);
    let ep = format!("http://{listen}");
    register_node(&etcd, "cmp-1").await;

    let run = |args: &[&str]| {
        let mut a = vec!["-f", "json"];
        a.extend_from_slice(args);
        nubo(&ep, &a)
    };

    let f = ok_json(run(&[
        "flavor", "create", "m1.tiny", "--vcpus", "1", "--ram", "512", "--disk", "1",
    ]));
    assert_eq!(
        (f["name"].as_str(), f["vcpus"].as_u64()),
        (Some("m1.tiny"), Some(1))
    );
    let flavors = ok_json(run(&["flavor", "list"]));
    assert_eq!(flavors.as_array().map(Vec::len), Some(1), "{flavors}");

    let missing = run(&["flavor", "show", "m9.huge"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("m9.huge"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let n = ok_json(run(&[
        "network",
        "create",
        "front",
        "--cidr",
        "10.20.0.0/24",
    ]));
    assert_eq!(n["cidr"], "10.20.0.0/24");
    ok_json(run(&[
        "image",
        "create",
        "cirros",
        "--disk-format",
        "qcow2",
    ]));

    let created = ok_json(run(&[
        "server",
        "create",
        "web",
        "--flavor",
        "m1.tiny",
        "--image",
        "cirros",
        "--network",
        "front",
        "--count",
        "2",
    ]));
    assert_eq!(created["summary"]["created"], 2, "{created}");
    let ids: Vec<String> = created["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert!(created["servers"][0]["networks"]
        .as_str()
        .is_some_and(|s| s.starts_with("front=10.20.0.")));

    let listed = ok_json(run(&["server", "list", "--name-prefix", "web"]));
    let listed_ids: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    for id in &ids {
        assert!(listed_ids.contains(&id.as_str()), "{id} not in {listed}");
    }

    let shown = ok_json(run(&["server", "show", &ids[0]]));
    assert_eq!(shown["node"], "cmp-1");
    let tap = shown["addresses"][0]["tap"].as_str().expect("tap");
    assert_eq!(
        shown["addresses"][0]["tcpdump"],
        format!("tcpdump -i {tap} -nn")
    );
    let table = nubo(&ep, &["server", "show", &ids[0]]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&format!(
        "Capture traffic on node cmp-1:\n  tcpdump -i {tap} -nn"
    )));

    let nodes = ok_json(run(&["node", "list"]));
    assert_eq!(nodes[0]["name"], "cmp-1", "{nodes}");
    assert_eq!(nodes[0]["instances"], 2, "{nodes}");

    let del = ok_json(run(&["server", "delete", &ids[0], &ids[1]]));
    assert_eq!(del["deleted"].as_array().map(Vec::len), Some(2));
    drop(coord);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_create_wait_follows_a_batch_until_running() {
    let coordinator = nubo_tests::bin_path("nubo-coordinator").unwrap_or_else(|e| panic!("{e:#}"));
    let agent = nubo_tests::bin_path("nubo-agent").unwrap_or_else(|e| panic!("{e:#}"));
    let etcd = Etcd::start().expect("etcd");
    let listen = format!("127.0.0.1:{}", free_port());
    let _coord = start_coordinator(&coordinator, &etcd, &listen);
    let state = etcd.dir().join("agent-state");
    let args: Vec<String> = [
        "--etcd-endpoints",
        &etcd.endpoint(),
        "--node",
        "cmp-w",
        "--driver",
        "fake",
        "--no-network",
        "--state-dir",
        &state.to_string_lossy(),
        "--vcpus",
        "8",
        "--ram-mb",
        "16384",
        "--disk-gb",
        "200",
        "--fake-boot-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _agent = Daemon::start(&agent, &args, &etcd.dir(), |d| {
        d.log().contains("nubo-agent ready")
    });
    let ep = format!("http://{listen}");
    for args in [
        &[
            "flavor", "create", "m1.big", "--vcpus", "4", "--ram", "8192", "--disk", "10",
        ][..],
        &["image", "create", "cirros"],
        &["network", "create", "front", "--cidr", "10.30.0.0/24"],
    ] {
        let out = nubo(&ep, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 16 GiB of RAM hold two 8 GiB instances: the third is refused.
    let out = nubo(
        &ep,
        &[
            "server",
            "create",
            "db",
            "--flavor",
            "m1.big",
            "--image",
            "cirros",
            "--network",
            "front",
            "--count",
            "3",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("3 requested: 2 running, 0 error, 1 not created"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("| running ").count(), 2, "{stdout}");
    assert!(stdout.contains("| not created |"), "{stdout}");
    // Not a terminal: progress comes as lines, the last one complete.
    assert!(
        stderr.contains("2/2 running, 0 error, 0 building…\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("error: 1 of 3 instances failed\n"),
        "{stderr}"
    );
}
