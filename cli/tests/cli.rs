//! Runs the `nubo` binary: against an unreachable endpoint, and — when
//! `nubo-coordinator` has been built next to it — against a real
//! coordinator and etcd.

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

/// A `nubo-coordinator` child process, killed (by pid) on drop.
struct Coordinator {
    child: Child,
    log: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coordinator {
    fn start(bin: &Path, etcd: &Etcd, listen: &str, dir: &Path) -> Coordinator {
        let log = dir.join("coordinator.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .arg("--etcd-endpoints")
            .arg(etcd.endpoint())
            .arg("--listen")
            .arg(listen)
            .arg("--health-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting nubo-coordinator");
        let mut c = Coordinator { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(listen).is_err() {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("nubo-coordinator exited with {status}:\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "coordinator not serving:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
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
    let bin = Path::new(nubo_bin()).with_file_name("nubo-coordinator");
    if !bin.exists() {
        println!("SKIP: coordinator not built");
        return;
    }
    let etcd = Etcd::start().expect("etcd");
    let dir = etcd.dir();
    let listen = format!("127.0.0.1:{}", free_port());
    let coord = Coordinator::start(&bin, &etcd, &listen, &dir);
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
