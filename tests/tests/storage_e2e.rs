//! Storage end to end: a throwaway Ceph cluster on the underlay, two
//! simulated hosts whose agents run with `[storage] backend = "rbd"`, real
//! QEMU (TCG) guests whose disks are RBD images opened by QEMU's librbd.
//!
//! Root disks are COW clones of the imported image; a volume hot-plugged
//! into a running guest is written there, detached, attached to a guest on
//! the other host and read back identical; a volume type's QoS reaches the
//! domain's `<iotune>` and bounds the guest's write rate, and a changed
//! type reaches the attached disk live (also through an agent restart,
//! which adopts the RBD-backed domain and finds its libvirt secret again);
//! the RBD exclusive lock is held by the VM's QEMU; nothing is left in the
//! pools after the servers are deleted.
//!
//! The volume API (`nubo volume`) is not in the CLI yet: the test writes
//! the volume, volume-type and attachment records into etcd itself, as the
//! coordinator would, and creates the RBD images with `rbd`. Needs root and
//! the Ceph packages (`scripts/deps.sh`); `cargo build --bins` first.

use std::time::{Duration, Instant};

use nubo_common::keys;
use nubo_common::model::{volume_serial, Instance, InstanceStatus};
use nubo_common::{InstanceId, VolumeId};
use nubo_storage::testing::TestCluster;
use nubo_tests::net_e2e::find_str;
use nubo_tests::vm_e2e::VmLab;
use nubo_tests::wait_until;
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(180);
const POOLS: [&str; 3] = ["images", "vms", "volumes"];

/// Starts the Ceph cluster on the lab's underlay, creates the pools and
/// the agents' cephx user, and writes the agents' config; `None` = Ceph
/// not installed (skipped loudly by `TestCluster`).
fn ceph_for(lab: &VmLab) -> Option<(TestCluster, std::path::PathBuf)> {
    let ceph = TestCluster::start_on(lab.underlay.gateway()).expect("start ceph")?;
    for p in POOLS {
        ceph.cli("ceph", &["osd", "pool", "create", p, "8", "8"])
            .expect("create pool");
        ceph.cli("rbd", &["pool", "init", p]).expect("init pool");
    }
    let opts = ceph
        .create_user(
            "nubo-agent",
            &[
                ("mon", "profile rbd"),
                (
                    "osd",
                    "profile rbd pool=images, profile rbd pool=vms, profile rbd pool=volumes",
                ),
            ],
        )
        .expect("cephx user");
    let cfg = lab.dir.path().join("agent-storage.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nbackend = \"rbd\"\nceph_conf = \"{}\"\nceph_id = \"nubo-agent\"\nkeyring = \"{}\"\n",
            ceph.conf_path().display(),
            opts.keyring_path.expect("keyring").display()
        ),
    )
    .expect("write agent config");
    Some((ceph, cfg))
}

fn base_objects(lab: &VmLab) -> Value {
    let cli = &lab.cli;
    cli.json(&[
        "flavor", "create", "t", "--vcpus", "1", "--ram", "128", "--disk", "1",
    ])
    .unwrap();
    let img = lab.upload_test_guest("guest").unwrap();
    assert_eq!(img["status"], "active", "{img}");
    cli.json(&["network", "create", "n1", "--cidr", "10.93.0.0/24"])
        .unwrap();
    img
}

fn create(lab: &VmLab, name: &str, host: u8, user_data: &str) -> (InstanceId, String) {
    let ud = lab.dir.path().join(format!("ud-{name}"));
    std::fs::write(&ud, user_data).unwrap();
    let az = format!("az-{host}");
    let out = lab
        .cli
        .json(&[
            "server",
            "create",
            name,
            "--flavor",
            "t",
            "--image",
            "guest",
            "--network",
            "n1",
            "--availability-zone",
            &az,
            "--user-data",
            &ud.display().to_string(),
            "--wait",
            "--timeout",
            "240",
        ])
        .unwrap();
    let id = find_str(&out, "id").unwrap_or_else(|| panic!("no id in {out}"));
    let node = lab.show(&id).unwrap()["node"].as_str().unwrap().to_string();
    (id.parse().unwrap(), node)
}

fn put_json(lab: &VmLab, key: &str, v: &Value) {
    lab.etcd.etcdctl(&["put", key, &v.to_string()]).unwrap();
}

/// Creates volume `id` (1 GiB RBD image + its record), of type `vtype`.
fn create_volume(lab: &VmLab, ceph: &TestCluster, id: VolumeId, vtype: Option<&str>) {
    ceph.cli(
        "rbd",
        &["create", &format!("volumes/vol-{id}"), "--size", "1024"],
    )
    .unwrap();
    put_json(
        lab,
        &keys::volume(&id),
        &json!({
            "id": id, "name": format!("v-{id}"), "project": "admin", "size_gb": 1,
            "volume_type": vtype, "status": "available",
            "created_at": "2026-01-01T00:00:00Z",
        }),
    );
}

/// Sets the volumes of instance `id` (what the coordinator's attach and
/// detach write).
fn set_volumes(lab: &VmLab, id: InstanceId, volumes: &[VolumeId]) {
    let key = keys::instance(&id);
    let mut inst: Value =
        serde_json::from_slice(&lab.etcd.get(&key).unwrap().expect("instance record")).unwrap();
    inst["volumes"] = volumes
        .iter()
        .map(|v| json!({"volume": v, "delete_on_termination": false}))
        .collect();
    // Still a valid Instance.
    let _: Instance = serde_json::from_value(inst.clone()).unwrap();
    put_json(lab, &key, &inst);
}

fn reported_volumes(lab: &VmLab, id: InstanceId) -> Vec<VolumeId> {
    lab.etcd
        .get(&keys::instance_status(&id))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<InstanceStatus>(&b).ok())
        .map(|s| s.volumes)
        .unwrap_or_default()
}

/// The text after `prefix` up to the end of its line, on the console.
fn console_value(console: &str, prefix: &str) -> Option<String> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
}

fn rbd_json(ceph: &TestCluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    serde_json::from_str(&ceph.cli("rbd", &a).unwrap()).unwrap()
}

/// The volume lines of an agent's log and the domain's disks, for failures.
fn diag(lab: &VmLab, host: usize, id: InstanceId) -> String {
    let log: Vec<String> = lab.agents[host]
        .log()
        .lines()
        .filter(|l| l.contains("volume") || l.contains("WARN") || l.contains("ERROR"))
        .map(str::to_string)
        .collect();
    let xml = lab.libvirtds[host]
        .virsh(&["dumpxml", &lab.domain_name(&id.to_string())])
        .unwrap_or_else(|e| e.to_string());
    let disks: Vec<&str> = xml
        .lines()
        .filter(|l| l.contains("<source") || l.contains("<target dev") || l.contains("iops"))
        .collect();
    format!(
        "agent log (volumes, warnings):\n{}\ndomain disks:\n{}",
        nubo_tests::process::tail(&log.join("\n"), 40),
        disks.join("\n")
    )
}

#[test]
fn rbd_root_disks_volumes_hotplug_qos_and_cleanup() {
    let mut lab = VmLab::start_without_agents(2).unwrap();
    let Some((ceph, cfg)) = ceph_for(&lab) else {
        return;
    };
    lab.start_agents(&["--config".into(), cfg.display().to_string()])
        .unwrap();
    let img = base_objects(&lab);
    let image_id = img["id"].as_str().unwrap().to_string();

    let (vol, fast) = (VolumeId::new_random(), VolumeId::new_random());
    let (serial, serial_fast) = (volume_serial(&vol), volume_serial(&fast));
    let t0 = Instant::now();
    let (a, a_node) = create(
        &lab,
        "vm-a",
        1,
        &format!("disk-watch\ndisk-write {serial} nubo-pattern-42\ndisk-iops {serial_fast} 8\n"),
    );
    let (b, b_node) = create(
        &lab,
        "vm-b",
        2,
        &format!("disk-watch\ndisk-read {serial}\n"),
    );
    assert_ne!(a_node, b_node);
    for (id, node) in [(a, &a_node), (b, &b_node)] {
        lab.wait_console(
            node,
            &id.to_string(),
            &format!("NUBO-GUEST-METADATA: {id}"),
            BOOT,
        )
        .unwrap();
    }
    eprintln!(
        "both RBD-backed guests have leases and metadata after {:?}",
        t0.elapsed()
    );

    // Root disks are COW clones of the imported image's base snapshot.
    for id in [a, b] {
        let info = rbd_json(&ceph, &["info", &format!("vms/{id}-disk")]);
        assert_eq!(info["parent"]["pool"], "images", "{info}");
        assert_eq!(info["parent"]["image"], format!("img-{image_id}"), "{info}");
        assert_eq!(info["parent"]["snapshot"], "base", "{info}");
    }

    // A plain volume and one of a type limited to 200 write IOPS, hot-plugged
    // into running vm-a.
    put_json(
        &lab,
        &keys::volume_type("iops200"),
        &json!({"name": "iops200", "qos": {"write_iops_sec": 200}, "created_at": "2026-01-01T00:00:00Z"}),
    );
    create_volume(&lab, &ceph, vol, None);
    create_volume(&lab, &ceph, fast, Some("iops200"));
    set_volumes(&lab, a, &[vol, fast]);
    let a_host = lab.host_of(&a_node).unwrap();
    let c = lab
        .wait_console(
            &a_node,
            &a.to_string(),
            &format!("NUBO-GUEST-DISK-WRITE {serial} ok"),
            BOOT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", diag(&lab, a_host, a)));
    let written = console_value(&c, &format!("NUBO-GUEST-DISK-WRITE {serial} ok")).unwrap();
    assert!(c.contains("NUBO-GUEST-DISK-ADDED vdb"), "{c}");
    wait_until(Duration::from_secs(60), "vm-a reports both volumes", || {
        Ok(reported_volumes(&lab, a) == vec![vol, fast])
    })
    .unwrap();

    // QoS: in the domain's <iotune>, and the guest's write loop is bounded.
    let xml = lab.libvirtds[a_host]
        .virsh(&["dumpxml", &lab.domain_name(&a.to_string())])
        .unwrap();
    assert!(
        xml.contains("<write_iops_sec>200</write_iops_sec>"),
        "{xml}"
    );
    let c = lab
        .wait_console(
            &a_node,
            &a.to_string(),
            &format!("NUBO-GUEST-DISK-IOPS {serial_fast} "),
            BOOT,
        )
        .unwrap();
    let iops: u64 = console_value(&c, &format!("NUBO-GUEST-DISK-IOPS {serial_fast} "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("iops figure");
    eprintln!("guest write loop on the 200-IOPS volume: {iops} IOPS");
    assert!(iops <= 220, "QoS not applied: {iops} IOPS > 110% of 200");
    assert!(iops > 0);
    // A changed type reaches the disk already attached (live
    // virDomainSetBlockIoTune, at the agent's next pass: ≤ resync interval).
    put_json(
        &lab,
        &keys::volume_type("iops200"),
        &json!({"name": "iops200", "qos": {"write_iops_sec": 100}, "created_at": "2026-01-01T00:00:00Z"}),
    );
    let dom = lab.domain_name(&a.to_string());
    wait_until(
        Duration::from_secs(60),
        "live iotune follows the type",
        || {
            let live = lab.libvirtds[a_host].virsh(&["blkdeviotune", &dom, "vdc", "--live"])?;
            Ok(live
                .lines()
                .any(|l| l.starts_with("write_iops_sec") && l.trim_end().ends_with(" 100")))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diag(&lab, a_host, a)));

    // kill -9 of the agent; the type changes back meanwhile. The restarted
    // agent finds its libvirt secret again (one secret of that usage),
    // adopts the RBD-backed domain (same QEMU) and retunes the attached
    // disk in its first pass.
    let pid = lab.libvirtds[a_host].qemu_pid(&dom).expect("qemu of vm-a");
    lab.agents[a_host].kill9();
    put_json(
        &lab,
        &keys::volume_type("iops200"),
        &json!({"name": "iops200", "qos": {"write_iops_sec": 200}, "created_at": "2026-01-01T00:00:00Z"}),
    );
    lab.agents[a_host].restart().unwrap();
    let secrets = lab.libvirtds[a_host].virsh(&["secret-list"]).unwrap();
    assert_eq!(
        secrets.matches("client.nubo-agent secret").count(),
        1,
        "{secrets}"
    );
    wait_until(
        Duration::from_secs(30),
        "restarted agent retunes vdc",
        || {
            let live = lab.libvirtds[a_host].virsh(&["blkdeviotune", &dom, "vdc", "--live"])?;
            Ok(live
                .lines()
                .any(|l| l.starts_with("write_iops_sec") && l.trim_end().ends_with(" 200")))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diag(&lab, a_host, a)));
    assert_eq!(
        lab.libvirtds[a_host].qemu_pid(&dom),
        Some(pid),
        "QEMU replaced"
    );
    assert!(!lab.agents[a_host].current_log().contains("domain defined"));
    assert_eq!(reported_volumes(&lab, a), vec![vol, fast]);

    // Exclusive lock: held by the one client that has the volume open,
    // vm-a's QEMU (the agent never opens volumes).
    let locks = rbd_json(&ceph, &["lock", "ls", &format!("volumes/vol-{vol}")]);
    let status = rbd_json(&ceph, &["status", &format!("volumes/vol-{vol}")]);
    let watchers = status["watchers"].as_array().cloned().unwrap_or_default();
    assert_eq!(watchers.len(), 1, "{status}");
    let locker_addr = locks
        .as_array()
        .and_then(|l| l.first())
        .and_then(|l| l["address"].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        locker_addr,
        watchers[0]["address"].as_str().unwrap(),
        "{locks} {status}"
    );
    let qemu_pid = lab.libvirtds[a_host]
        .qemu_pid(&lab.domain_name(&a.to_string()))
        .expect("qemu of vm-a");
    eprintln!("exclusive lock of vol-{vol}: {locker_addr} (vm-a's QEMU, pid {qemu_pid})");

    // Detach from vm-a, attach to vm-b on the other host: same bytes.
    set_volumes(&lab, a, &[fast]);
    wait_until(
        Duration::from_secs(90),
        "vm-a no longer reports the volume",
        || Ok(reported_volumes(&lab, a) == vec![fast]),
    )
    .unwrap();
    let status = rbd_json(&ceph, &["status", &format!("volumes/vol-{vol}")]);
    assert!(
        status["watchers"].as_array().is_none_or(|w| w.is_empty()),
        "vm-a's QEMU still has the volume open: {status}"
    );
    set_volumes(&lab, b, &[vol]);
    let c = lab
        .wait_console(
            &b_node,
            &b.to_string(),
            &format!("NUBO-GUEST-DISK-READ {serial} "),
            BOOT,
        )
        .unwrap();
    let read = console_value(&c, &format!("NUBO-GUEST-DISK-READ {serial} ")).unwrap();
    assert_eq!(read, written, "pattern differs after moving the volume");
    eprintln!("pattern {written} read back on the other host");

    // Delete: root disks go, volumes stay (the coordinator owns them).
    set_volumes(&lab, a, &[]);
    set_volumes(&lab, b, &[]);
    for id in [a, b] {
        lab.cli.run(&["server", "delete", &id.to_string()]).unwrap();
    }
    wait_until(Duration::from_secs(120), "root disks removed", || {
        Ok(ceph.cli("rbd", &["ls", "vms"])?.trim().is_empty())
    })
    .unwrap();
    for v in [vol, fast] {
        ceph.cli("rbd", &["rm", &format!("volumes/vol-{v}")])
            .unwrap();
    }
    assert!(ceph
        .cli("rbd", &["ls", "volumes"])
        .unwrap()
        .trim()
        .is_empty());
    // Only the imported image remains (a cache shared by all instances).
    assert_eq!(
        ceph.cli("rbd", &["ls", "images"]).unwrap().trim(),
        format!("img-{image_id}")
    );
    drop(ceph);
}
