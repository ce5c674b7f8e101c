//! Storage end to end: a throwaway Ceph cluster on the underlay, a
//! coordinator started with `--ceph-conf`/`--ceph-id`/`--ceph-keyring`
//! (its own cephx user), two simulated hosts whose agents run with
//! `[storage] backend = "rbd"`, real QEMU (TCG) guests whose disks are RBD
//! images opened by QEMU's librbd.
//!
//! Root disks are COW clones of the imported image; volumes are driven
//! through the CLI only (`nubo volume type create/set`, `nubo volume
//! create/attach/detach --wait/delete`): a volume hot-plugged into a running
//! guest is written there, detached, attached to a guest on the other host
//! and read back identical; a volume type's QoS reaches the domain's
//! `<iotune>` and bounds the guest's write rate, and a changed type reaches
//! the attached disk live, through the agent's watch (also through an agent
//! restart, which adopts the RBD-backed domain and finds its libvirt secret
//! again); the RBD exclusive lock is held by the VM's QEMU; nothing is left
//! in the pools after the volumes and servers are deleted.
//!
//! Needs root and the Ceph packages (`scripts/deps.sh`);
//! `cargo build -p nubo-agent -p nubo-coordinator -p nubo-cli --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant};

use nubo_common::keys;
use nubo_common::model::{volume_serial, InstanceStatus};
use nubo_common::{InstanceId, VolumeId};
use nubo_storage::testing::TestCluster;
use nubo_tests::vm_e2e::{console_value, RbdVmLab, VmLab};
use nubo_tests::wait_until;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(180);

fn create(lab: &VmLab, name: &str, host: u8, user_data: &str) -> (InstanceId, String) {
    lab.create_placed(name, host, user_data).unwrap()
}

/// `nubo volume create NAME --size 1G [--type T]`: the coordinator creates
/// the RBD image `volumes/vol-<id>`.
fn create_volume(lab: &VmLab, ceph: &TestCluster, name: &str, vtype: Option<&str>) -> VolumeId {
    let mut args = vec!["volume", "create", name, "--size", "1G"];
    if let Some(t) = vtype {
        args.extend(["--type", t]);
    }
    let v = lab.cli.json(&args).unwrap();
    assert_eq!(v["status"], "available", "{v}");
    assert_eq!(v["type"].as_str(), vtype, "{v}");
    let id: VolumeId = v["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["rbd_image"], format!("volumes/vol-{id}"), "{v}");
    let info = rbd_json(ceph, &["info", &format!("volumes/vol-{id}")]);
    assert_eq!(info["size"], 1u64 << 30, "{info}");
    id
}

/// `nubo volume attach VOLUME SERVER [--device DEV]`; returns the guest
/// device nubo chose.
fn attach(lab: &VmLab, volume: &str, server: &str, device: Option<&str>) -> String {
    let mut args = vec!["volume", "attach", volume, server];
    args.extend(device.iter().flat_map(|d| ["--device", *d]));
    let v = lab.cli.json(&args).unwrap();
    assert_eq!(v["status"], "in-use", "{v}");
    v["device"].as_str().unwrap_or_default().to_string()
}

/// `nubo volume detach VOLUME --wait`: returns once the coordinator saw the
/// agent let it go.
fn detach(lab: &VmLab, volume: &str) {
    let v = lab
        .cli
        .json(&["volume", "detach", volume, "--wait", "--timeout", "120"])
        .unwrap();
    assert_eq!(v["status"], "available", "{v}");
    assert!(v["attached_to"].is_null(), "{v}");
}

/// Waits until the live `write_iops_sec` of `dev` in domain `dom` is `iops`.
fn wait_live_iops(
    lab: &VmLab,
    host: usize,
    dom: &str,
    dev: &str,
    iops: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let suffix = format!(" {iops}");
    wait_until(
        timeout,
        &format!("live write_iops_sec of {dev} is {iops}"),
        || {
            let live = lab.libvirtds[host].virsh(&["blkdeviotune", dom, dev, "--live"])?;
            Ok(live
                .lines()
                .any(|l| l.starts_with("write_iops_sec") && l.trim_end().ends_with(&suffix)))
        },
    )
}

fn reported_volumes(lab: &VmLab, id: InstanceId) -> Vec<VolumeId> {
    // The status lives under the keys of the instance's node.
    let Some(node) = lab
        .etcd
        .get(&keys::instance(&id))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<nubo_common::model::Instance>(&b).ok())
        .and_then(|i| i.node)
    else {
        return Vec::new();
    };
    lab.etcd
        .get(&keys::instance_status(&node, &id))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<InstanceStatus>(&b).ok())
        .map(|s| s.volumes)
        .unwrap_or_default()
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
    let Some(mut rbd) = RbdVmLab::start(2).unwrap() else {
        return;
    };
    let (lab, ceph) = (&mut rbd.lab, &rbd.storage.ceph);
    let img = lab.base_objects(128, "10.93.0.0/24").unwrap();
    let image_id = img["id"].as_str().unwrap().to_string();

    // A plain volume and one of a type limited to 200 write IOPS, through
    // the CLI (the guests' user data names their serials).
    let t = lab
        .cli
        .json(&["volume", "type", "create", "iops200", "--write-iops", "200"])
        .unwrap();
    assert_eq!(t["write_iops_sec"], 200, "{t}");
    let vol = create_volume(lab, ceph, "data", None);
    let fast = create_volume(lab, ceph, "fast", Some("iops200"));
    let (serial, serial_fast) = (volume_serial(&vol), volume_serial(&fast));
    let t0 = Instant::now();
    let (a, a_node) = create(
        lab,
        "vm-a",
        1,
        &format!("disk-watch\ndisk-write {serial} nubo-pattern-42\ndisk-iops {serial_fast} 8\n"),
    );
    let (b, b_node) = create(lab, "vm-b", 2, &format!("disk-watch\ndisk-read {serial}\n"));
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
        let info = rbd_json(ceph, &["info", &format!("vms/{id}-disk")]);
        assert_eq!(info["parent"]["pool"], "images", "{info}");
        assert_eq!(info["parent"]["image"], format!("img-{image_id}"), "{info}");
        assert_eq!(info["parent"]["snapshot"], "base", "{info}");
    }

    // Both volumes hot-plugged into running vm-a: the first at the lowest
    // free device, the second where asked (a free device is taken).
    assert_eq!(attach(lab, "data", "vm-a", None), "vdb");
    assert_eq!(attach(lab, "fast", "vm-a", Some("vdd")), "vdd");
    let a_host = lab.host_of(&a_node).unwrap();
    let c = lab
        .wait_console(
            &a_node,
            &a.to_string(),
            &format!("NUBO-GUEST-DISK-WRITE {serial} ok"),
            BOOT,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", diag(lab, a_host, a)));
    let written = console_value(&c, &format!("NUBO-GUEST-DISK-WRITE {serial} ok")).unwrap();
    assert!(c.contains("NUBO-GUEST-DISK-ADDED vdb"), "{c}");
    wait_until(Duration::from_secs(60), "vm-a reports both volumes", || {
        Ok(reported_volumes(lab, a) == vec![vol, fast])
    })
    .unwrap();
    let shown = lab.cli.json(&["volume", "show", "fast"]).unwrap();
    assert_eq!(shown["attached_to"], a.to_string(), "{shown}");

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
    // A changed type reaches the disk already attached: live
    // virDomainSetBlockIoTune, in the pass the agent's watch starts (the
    // periodic pass is an hour away here).
    let dom = lab.domain_name(&a.to_string());
    let changed = Instant::now();
    let t = lab
        .cli
        .json(&["volume", "type", "set", "iops200", "--write-iops", "100"])
        .unwrap();
    assert_eq!(t["write_iops_sec"], 100, "{t}");
    wait_live_iops(lab, a_host, &dom, "vdd", 100, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", diag(lab, a_host, a)));
    let took = changed.elapsed();
    eprintln!("type change reached the attached disk after {took:?}");

    // kill -9 of the agent; the type changes back meanwhile. The restarted
    // agent finds its libvirt secret again (one secret of that usage),
    // adopts the RBD-backed domain (same QEMU) and retunes the attached
    // disk in its first pass.
    let pid = lab.libvirtds[a_host].qemu_pid(&dom).expect("qemu of vm-a");
    lab.agents[a_host].kill9();
    lab.cli
        .json(&["volume", "type", "set", "iops200", "--write-iops", "200"])
        .unwrap();
    lab.agents[a_host].restart().unwrap();
    let secrets = lab.libvirtds[a_host].virsh(&["secret-list"]).unwrap();
    assert_eq!(
        secrets.matches("client.nubo-agent secret").count(),
        1,
        "{secrets}"
    );
    wait_live_iops(lab, a_host, &dom, "vdd", 200, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("restarted agent retunes vdd: {e}\n{}", diag(lab, a_host, a)));
    assert_eq!(
        lab.libvirtds[a_host].qemu_pid(&dom),
        Some(pid),
        "QEMU replaced"
    );
    assert!(!lab.agents[a_host].current_log().contains("domain defined"));
    assert_eq!(reported_volumes(lab, a), vec![vol, fast]);

    // Exclusive lock: held by the one client that has the volume open,
    // vm-a's QEMU (neither the agent nor the coordinator keeps volumes open).
    let locks = rbd_json(ceph, &["lock", "ls", &format!("volumes/vol-{vol}")]);
    let status = rbd_json(ceph, &["status", &format!("volumes/vol-{vol}")]);
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
    detach(lab, "data");
    wait_until(
        Duration::from_secs(90),
        "vm-a no longer reports the volume",
        || Ok(reported_volumes(lab, a) == vec![fast]),
    )
    .unwrap();
    let status = rbd_json(ceph, &["status", &format!("volumes/vol-{vol}")]);
    assert!(
        status["watchers"].as_array().is_none_or(|w| w.is_empty()),
        "vm-a's QEMU still has the volume open: {status}"
    );
    assert_eq!(attach(lab, "data", "vm-b", None), "vdb");
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

    // Detach both, delete the servers (root disks go) and the volumes
    // (`nubo volume delete`: the coordinator removes their RBD images).
    detach(lab, "data");
    detach(lab, "fast");
    assert!(reported_volumes(lab, a).is_empty());
    assert!(reported_volumes(lab, b).is_empty());
    for id in [a, b] {
        lab.cli.run(&["server", "delete", &id.to_string()]).unwrap();
    }
    wait_until(Duration::from_secs(120), "root disks removed", || {
        Ok(ceph.cli("rbd", &["ls", "vms"])?.trim().is_empty())
    })
    .unwrap();
    let out = lab.cli.run(&["volume", "delete", "data", "fast"]).unwrap();
    assert!(out.success(), "{}", out.stderr);
    wait_until(Duration::from_secs(60), "volumes removed", || {
        Ok(ceph.cli("rbd", &["ls", "volumes"])?.trim().is_empty()
            && lab
                .cli
                .json(&["volume", "list"])?
                .as_array()
                .is_some_and(|l| l.is_empty()))
    })
    .unwrap();
    let out = lab
        .cli
        .run(&["volume", "type", "delete", "iops200"])
        .unwrap();
    assert!(out.success(), "{}", out.stderr);
    // Empty pools; only the imported image remains (a cache shared by all
    // instances).
    assert!(ceph.cli("rbd", &["ls", "vms"]).unwrap().trim().is_empty());
    assert!(ceph
        .cli("rbd", &["ls", "volumes"])
        .unwrap()
        .trim()
        .is_empty());
    assert_eq!(
        ceph.cli("rbd", &["ls", "images"]).unwrap().trim(),
        format!("img-{image_id}")
    );
    drop(rbd);
}
