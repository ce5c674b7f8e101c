//! Block storage through the OpenStack API (issue 17): python-openstackclient
//! (PyPI, its own `clouds.yaml`) drives Cinder volumes and Nova volume
//! attachments on a real cluster — one host with a private libvirtd
//! running a TCG QEMU guest, a throwaway Ceph cluster holding the volumes
//! as RBD images ([`RbdVmLab::start_with_tokens`]: the coordinator serves
//! TLS with token authentication, bootstrapped), `nubo-openstack` in front
//! ([`FrontEnd`]).
//!
//! `openstack volume create --size 1` → available, and `nubo volume show`
//! agrees (id, size, status); `openstack server create --wait` boots the
//! test guest (the image itself is uploaded with `nubo image create`: the
//! test guest is a kernel + initrd, which Glance's API cannot carry);
//! `openstack server add volume` → `volume show` says in-use and attached to
//! the server, `nubo volume show` agrees, and inside the guest the disk
//! appears with the volume's serial; `server remove volume` → the disk
//! leaves the guest and the volume is available again; `volume delete`
//! removes it and its RBD image.
//!
//! Needs root, the Ceph packages and python-openstackclient
//! (`scripts/deps.sh`); `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::time::Duration;

use nubo_common::model::volume_serial;
use nubo_common::VolumeId;
use nubo_tests::openstack_lab::{openstack, FrontEnd};
use nubo_tests::secure::ADMIN_PASSWORD;
use nubo_tests::vm_e2e::RbdVmLab;
use nubo_tests::wait_until;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(240);

fn os(clouds: &Path, args: &[&str]) -> Value {
    openstack(clouds, "nubo", args).unwrap()
}

/// The RBD images of pool `volumes`.
fn rbd_volumes(rbd: &RbdVmLab) -> String {
    rbd.storage.ceph.cli("rbd", &["ls", "volumes"]).unwrap()
}

#[test]
fn openstack_client_creates_attaches_and_deletes_a_volume() {
    let Some(rbd) = RbdVmLab::start_with_tokens(1).unwrap() else {
        return;
    };
    let lab = &rbd.lab;
    lab.base_objects(128, "10.95.0.0/24").unwrap();
    let certs = lab.certs.as_ref().expect("a lab with tokens");
    let front = FrontEnd::start(&lab.coordinator.endpoint(), certs, lab.dir.path()).unwrap();
    // The bootstrap admin in its project `admin`, which owns the image and
    // the network base_objects made.
    let clouds = front
        .clouds_yaml(&[("nubo", "admin", ADMIN_PASSWORD, "admin")])
        .unwrap();
    let clouds = clouds.as_path();

    // volume create: Cinder's view and nubo's agree.
    let created = os(
        clouds,
        &["volume", "create", "--size", "1", "vol1", "-f", "json"],
    );
    assert_eq!(created["status"], "available", "{created}");
    let vol_id = created["id"].as_str().unwrap().to_string();
    let shown = os(clouds, &["volume", "show", "vol1", "-f", "json"]);
    let native = lab.cli.json(&["volume", "show", "vol1"]).unwrap();
    assert_eq!(shown["id"], native["id"], "{shown}\n{native}");
    // The creator: the token's user, in Cinder's user_id and nubo's view.
    assert_eq!(
        (shown["user_id"].as_str(), native["created_by"].as_str()),
        (Some("admin"), Some("admin")),
        "{shown}\n{native}"
    );
    assert_eq!(shown["size"], 1, "{shown}");
    assert_eq!(native["size_gb"], 1, "{native}");
    assert_eq!(
        (shown["status"].as_str(), native["status"].as_str()),
        (Some("available"), Some("available")),
        "{shown}\n{native}"
    );
    let vid: VolumeId = vol_id.parse().unwrap();
    assert!(rbd_volumes(&rbd).contains(&format!("vol-{vid}")));
    let serial = volume_serial(&vid);
    assert_eq!(native["serial"], serial.as_str(), "{native}");

    // A real guest through Nova's API, watching its disks: the arguments
    // of `nubo server create` are openstackclient's too (name, --flavor,
    // --image, --network, --user-data FILE).
    let args = lab
        .server_create_args("vm1", None, Some("disk-watch\n"), &["--wait", "-f", "json"])
        .unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = os(clouds, &args);
    assert_eq!(server["status"], "ACTIVE", "{server}");
    let sid = server["id"].as_str().unwrap().to_string();
    let node = lab.show(&sid).unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    // Booted: the root disk is seen by the disk watcher, no other disk.
    let c = lab
        .wait_console(&node, &sid, &format!("NUBO-GUEST-METADATA: {sid}"), BOOT)
        .unwrap();
    assert!(!c.contains(&serial), "{c}");
    // Nova's os-getConsoleOutput: the node's console log, its last lines.
    let marker = format!("NUBO-GUEST-METADATA: {sid}");
    let log = os(clouds, &["console", "log", "show", "vm1"]);
    assert!(log.as_str().unwrap().contains(&marker), "{log}");
    let tail = os(clouds, &["console", "log", "show", "--lines", "2", "vm1"]);
    let tail = tail.as_str().unwrap();
    assert!(tail.trim_end().lines().count() <= 2, "{tail}");
    assert!(
        !tail.is_empty() && log.as_str().unwrap().contains(tail.trim_end()),
        "{tail}"
    );

    // server add volume: in-use, attached to the server, in both views;
    // the disk appears in the running guest with the volume's serial.
    os(clouds, &["server", "add", "volume", "vm1", "vol1"]);
    let shown = os(clouds, &["volume", "show", "vol1", "-f", "json"]);
    assert_eq!(shown["status"], "in-use", "{shown}");
    let att = shown["attachments"].as_array().unwrap();
    assert_eq!(att.len(), 1, "{shown}");
    assert_eq!(att[0]["server_id"], sid.as_str(), "{shown}");
    let native = lab.cli.json(&["volume", "show", "vol1"]).unwrap();
    assert_eq!(native["status"], "in-use", "{native}");
    assert_eq!(native["attached_to"], sid.as_str(), "{native}");
    let listed = os(clouds, &["server", "volume", "list", "vm1", "-f", "json"]);
    assert!(listed.to_string().contains(&vol_id), "{listed}");
    lab.wait_console(
        &node,
        &sid,
        &format!("NUBO-GUEST-DISK-ADDED vdb {serial}"),
        BOOT,
    )
    .unwrap();

    // server remove volume: the disk leaves the guest, the volume is
    // available again (the detach completes when the agent let it go).
    os(clouds, &["server", "remove", "volume", "vm1", "vol1"]);
    lab.wait_console(
        &node,
        &sid,
        &format!("NUBO-GUEST-DISK-REMOVED vdb {serial}"),
        BOOT,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(120),
        "vol1 available after the detach",
        || {
            let v = openstack(clouds, "nubo", &["volume", "show", "vol1", "-f", "json"])?;
            Ok(v["status"] == "available" && v["attachments"] == serde_json::json!([]))
        },
    )
    .unwrap();
    let native = lab.cli.json(&["volume", "show", "vol1"]).unwrap();
    assert_eq!(native["status"], "available", "{native}");
    assert!(native["attached_to"].is_null(), "{native}");

    // volume set --size (Cinder's os-extend): nubo grows it; smaller is
    // refused and changes nothing.
    os(clouds, &["volume", "set", "--size", "2", "vol1"]);
    let native = lab.cli.json(&["volume", "show", "vol1"]).unwrap();
    assert_eq!(native["size_gb"], 2, "{native}");
    assert!(openstack(clouds, "nubo", &["volume", "set", "--size", "1", "vol1"]).is_err());
    assert_eq!(
        lab.cli.json(&["volume", "show", "vol1"]).unwrap()["size_gb"],
        2
    );

    // volume delete: gone from both views and from the pool.
    os(clouds, &["volume", "delete", "vol1"]);
    wait_until(Duration::from_secs(60), "vol1 deleted", || {
        Ok(lab.cli.json(&["volume", "show", "vol1"]).is_err())
    })
    .unwrap();
    assert!(openstack(clouds, "nubo", &["volume", "show", "vol1"]).is_err());
    assert!(!rbd_volumes(&rbd).contains(&format!("vol-{vid}")));
    os(clouds, &["server", "delete", "--wait", "vm1"]);
    lab.wait_nothing_left(Duration::from_secs(120)).unwrap();
}
