//! `nubo server image` of a server whose root disk is on its node (no
//! Ceph): the agent copies it and the leader reads the copy through the
//! node API into the image store. Real agent (`--driver netns`: each guest
//! has a small raw disk file, `<state-dir>/netns-disks/<id>.raw`, which the
//! test writes a marker into as the guest would), real coordinator, the
//! CLI. The image ends `active` with the size and SHA-256 of the disk as
//! it was, in raw and converted to qcow2 on the node; a server boots from
//! it; the node keeps no copy afterwards; a capture of a server whose disk
//! is gone ends in `error` with the node's reason. And on libvirt (a TCG
//! guest, local qcow2 overlay): a running guest is captured by a backup
//! job without being stopped (same QEMU process, still running), a
//! shut-off one by `qemu-img convert`, equal to its disk
//! (`qemu-img compare`). Needs root, `cargo build --bins` first (and the
//! test guest, built by the lab if missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use nubo_tests::net_e2e::{find_str, NetLab};
use nubo_tests::vm_e2e::VmLab;
use nubo_tests::{wait_for, Cli};
use serde_json::Value;

/// Waits until image `name` is no longer queued; returns it.
fn settled(cli: &Cli, name: &str) -> Value {
    wait_for(Duration::from_secs(60), "image settled", || {
        let img = cli.json(&["image", "show", name])?;
        Ok(if img["status"] == "queued" {
            Err(img)
        } else {
            Ok(img)
        })
    })
    .unwrap()
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn server_image_of_a_local_disk_is_active_with_the_disks_bytes() {
    let lab = NetLab::start(1).unwrap();
    lab.base_objects().unwrap();
    let cli = &lab.cli;
    cli.json(&["network", "create", "n", "--cidr", "10.94.0.0/24"])
        .unwrap();
    let g = lab.server("cap-vm", "n", 1, &[]).unwrap();
    let state = lab.agents[0].state_dir();
    let disk = state.join("netns-disks").join(format!("{}.raw", g.id));
    assert!(
        disk.is_file(),
        "the netns guest has its disk {}",
        disk.display()
    );
    // The guest writes something.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(64 * 1024)).unwrap();
        f.write_all(b"NUBO-CAPTURE-MARKER").unwrap();
        f.sync_all().unwrap();
    }
    let want_sha = sha256(&disk);
    let want_size = std::fs::metadata(&disk).unwrap().len();

    let img = cli.json(&["server", "image", "cap-vm", "snap"]).unwrap();
    assert_eq!(img["status"], "queued", "{img}");
    let done = settled(cli, "snap");
    assert_eq!(done["status"], "active", "{done}");
    assert_eq!(done["checksum_sha256"], want_sha.as_str(), "{done}");
    assert_eq!(done["size_bytes"], want_size, "{done}");
    assert_eq!(done["disk_format"], "raw");
    assert_eq!(done["properties"]["instance_uuid"], g.id.as_str());

    // The node keeps nothing once the image is stored.
    let captures = state.join("captures");
    wait_for(Duration::from_secs(20), "node's copy removed", || {
        let left: Vec<_> = std::fs::read_dir(&captures)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        Ok(if left.is_empty() { Ok(()) } else { Err(left) })
    })
    .unwrap();

    // qcow2: converted on the node.
    cli.json(&[
        "server",
        "image",
        "cap-vm",
        "snap-q",
        "--disk-format",
        "qcow2",
    ])
    .unwrap();
    let q = settled(cli, "snap-q");
    assert_eq!(q["status"], "active", "{q}");
    assert_eq!(q["disk_format"], "qcow2");
    assert_ne!(
        q["checksum_sha256"],
        want_sha.as_str(),
        "a qcow2 file, not the raw disk"
    );

    // A server boots from the snapshot.
    let out = cli
        .json(&[
            "server",
            "create",
            "from-snap",
            "--wait",
            "--timeout",
            "120",
            "--flavor",
            "t",
            "--image",
            "snap",
            "--network",
            "n",
        ])
        .unwrap();
    let id = find_str(&out, "id").unwrap_or_else(|| panic!("no id in {out}"));
    let show = cli.json(&["server", "show", &id]).unwrap();
    assert_eq!(show["state"], "running", "{show}");
    assert_eq!(show["image_id"], done["id"], "{show}");

    // The disk gone (as if destroyed under the agent): error, with the
    // node's reason, and again nothing left on the node.
    std::fs::remove_file(&disk).unwrap();
    std::fs::create_dir(&disk).unwrap();
    cli.json(&["server", "image", "cap-vm", "snap-bad"])
        .unwrap();
    let bad = settled(cli, "snap-bad");
    assert_eq!(bad["status"], "error", "{bad}");
    assert!(
        bad["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cap-vm")
            || bad["status_reason"]
                .as_str()
                .unwrap_or_default()
                .contains(&g.id),
        "{bad}"
    );
    std::fs::remove_dir(&disk).unwrap();
}

/// `qemu-img` on the lab's files (`args`), which must succeed; its stdout.
fn qemu_img(args: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn server_image_of_a_running_and_a_stopped_libvirt_guest() {
    let lab = VmLab::start(1).unwrap();
    lab.base_objects(128, "10.95.0.0/24").unwrap();
    let cli = &lab.cli;
    let out = lab
        .create_server("cap-vm", Some(1), None, &["--wait", "--timeout", "240"])
        .unwrap();
    let id = find_str(&out, "id").unwrap_or_else(|| panic!("no id in {out}"));
    let dom = lab.domain_name(&id);
    let lv = &lab.libvirtds[0];
    let pid = lv.qemu_pid(&dom).expect("the guest runs");
    let root = lv
        .virsh(&["domblklist", &dom])
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("vda")).then(|| w.next().unwrap_or_default().to_string())
        })
        .expect("vda in domblklist");

    // Running: a backup job; the guest is neither stopped nor restarted.
    cli.json(&[
        "server",
        "image",
        "cap-vm",
        "run-snap",
        "--disk-format",
        "qcow2",
    ])
    .unwrap();
    let img = settled(cli, "run-snap");
    assert_eq!(img["status"], "active", "{img}");
    assert_eq!(lv.qemu_pid(&dom), Some(pid), "same QEMU process");
    assert_eq!(lab.show(&id).unwrap()["state"], "running");
    let stored = lab.image_dir.join(img["id"].as_str().unwrap()).join("disk");
    let info: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output",
        "json",
        &stored.to_string_lossy(),
    ]))
    .unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 1u64 << 30, "{info}");
    assert!(
        info.get("backing-filename").is_none(),
        "self-contained: {info}"
    );

    // Shut off: qemu-img convert of the overlay and its base, equal to it.
    cli.json(&["server", "stop", &id]).unwrap();
    wait_for(Duration::from_secs(60), "cap-vm stopped", || {
        let s = lab.show(&id)?;
        Ok(if s["state"] == "stopped" {
            Ok(())
        } else {
            Err(s)
        })
    })
    .unwrap();
    cli.json(&["server", "image", "cap-vm", "off-snap"])
        .unwrap();
    let img = settled(cli, "off-snap");
    assert_eq!(img["status"], "active", "{img}");
    assert_eq!(img["disk_format"], "raw");
    let stored = lab.image_dir.join(img["id"].as_str().unwrap()).join("disk");
    let same = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        &root,
        &stored.to_string_lossy(),
    ]);
    assert!(same.contains("identical"), "{same}");
    assert_eq!(lv.qemu_pid(&dom), None, "still shut off");
}
