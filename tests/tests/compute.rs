//! Compute end to end: real QEMU (TCG) guests through libvirt on two
//! simulated hosts (a private libvirtd per host namespace), driven only
//! through the `nubo` CLI. The guest is `scripts/build-test-guest.sh`'s
//! kernel + busybox initramfs: it prints its DHCP address and its instance
//! id from metadata on the serial console and pings the IPs listed in its
//! user data. Needs root; `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant};

use nubo_tests::net_e2e::find_str;
use nubo_tests::vm_e2e::{guest_ip, VmLab};
use nubo_tests::wait_until;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(120);

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn base_objects(lab: &VmLab) -> Value {
    let cli = &lab.cli;
    lab.base_objects(128, "10.91.0.0/24").unwrap();
    cli.json(&[
        "flavor", "create", "zero", "--vcpus", "1", "--ram", "128", "--disk", "0",
    ])
    .unwrap();
    // Members of "icmp" accept ICMP from the network only through its rule.
    lab.icmp_security_group("10.91.0.0/24").unwrap()
}

/// The etcd key of network `n1` (every guest's): rewriting it makes an
/// agent run a pass ([`VmLab::reconcile_once`]).
fn network_key(lab: &VmLab) -> String {
    let n = lab.cli.json(&["network", "show", "n1"]).unwrap();
    let id = n["id"].as_str().expect("network id").parse().unwrap();
    nubo_common::keys::network(&id)
}

/// `server create … --wait` of an instance that must end in `error`: the
/// CLI exits with 1 and says the batch failed, its summary counts one
/// error, and the instance's row carries the reason (`reason`), as does
/// `server show` afterwards.
fn create_fails(lab: &VmLab, name: &str, image: &str, flavor: &str, reason: &str) {
    let out = lab
        .cli
        .run(&[
            "server",
            "create",
            name,
            "--flavor",
            flavor,
            "--image",
            image,
            "--network",
            "n1",
            "--wait",
            "--timeout",
            "60",
        ])
        .unwrap();
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{name}: {text}");
    assert!(
        out.stderr.ends_with("error: 1 of 1 instances failed\n"),
        "{name}: {text}"
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        (
            v["summary"]["error"].as_u64(),
            v["summary"]["running"].as_u64()
        ),
        (Some(1), Some(0)),
        "{name}: {text}"
    );
    let row = &v["servers"][0];
    assert_eq!(row["state"], "error", "{name}: {text}");
    assert!(
        row["error"].as_str().is_some_and(|e| e.contains(reason)),
        "{name}: no {reason:?} in {text}"
    );
    let s = lab.show(name).unwrap();
    assert_eq!(s["state"], "error", "{s}");
    assert!(s.to_string().contains(reason), "{s}");
}

/// Creates `name` on host `host` (`--wait`) and returns `server show`.
fn create(lab: &VmLab, name: &str, host: u8, user_data: Option<&str>, extra: &[&str]) -> Value {
    let mut args = vec!["--wait", "--timeout", "180"];
    args.extend_from_slice(extra);
    let out = lab
        .create_server(name, Some(host), user_data, &args)
        .unwrap();
    let id = find_str(&out, "id").unwrap_or_else(|| panic!("no id in {out}"));
    lab.show(&id).unwrap()
}

/// Two VMs on two hosts: DHCP, metadata, ping across VXLAN, security group
/// removal stops it, kill -9 of the agent adopts the domains (same QEMU
/// pid), a libvirtd restart leaves them running and the agent reconnects
/// (resize while running and revert, stop, resize while stopped, confirm,
/// start), a guest that powers itself off is
/// reported stopped and booted again by `nubo server start`, and delete
/// leaves nothing behind.
#[test]
fn two_vms_dhcp_metadata_ping_adopt_poweroff_delete() {
    let mut lab = VmLab::start(2).unwrap();
    let sg = base_objects(&lab);
    let t0 = Instant::now();
    let a = create(&lab, "vm-a", 1, None, &["--security-group", "icmp"]);
    let a_id = id_of(&a);
    let a_node = a["node"].as_str().unwrap().to_string();
    let a_ip = a["addresses"][0]["ip"].as_str().unwrap().to_string();
    let b = create(
        &lab,
        "vm-b",
        2,
        Some(&format!("ping {a_ip}\n")),
        &["--security-group", "icmp"],
    );
    let b_id = id_of(&b);
    let b_node = b["node"].as_str().unwrap().to_string();
    assert_ne!(a_node, b_node, "AZs pin the VMs to different hosts");

    for (id, node, ip) in [
        (&a_id, &a_node, a_ip.clone()),
        (
            &b_id,
            &b_node,
            b["addresses"][0]["ip"].as_str().unwrap().to_string(),
        ),
    ] {
        let c = lab
            .wait_console(node, id, &format!("NUBO-GUEST-METADATA: {id}"), BOOT)
            .unwrap();
        assert_eq!(guest_ip(&c).map(|i| i.to_string()), Some(ip), "{c}");
    }
    eprintln!(
        "both guests have leases and metadata after {:?}",
        t0.elapsed()
    );
    let ok = format!("NUBO-GUEST-PING {a_ip} ok");
    if let Err(e) = lab.wait_console(&b_node, &b_id, &ok, Duration::from_secs(60)) {
        panic!("{e}\n{}", lab.network_diagnostics());
    }

    // Removing the ICMP rule stops the ping.
    let rule = sg["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["protocol"] == "icmp")
        .and_then(|r| r["id"].as_str())
        .unwrap()
        .to_string();
    lab.cli
        .json(&["secgroup", "rule", "delete", "icmp", &rule])
        .unwrap();
    let b_host = lab.host_of(&b_node).unwrap();
    let before = lab.agents[b_host].console(&b_id).len();
    wait_until(
        Duration::from_secs(30),
        "ping fails after the rule is gone",
        || {
            let c = lab.agents[b_host].console(&b_id);
            let tail = &c[before.min(c.len())..];
            let fails = tail
                .matches(&format!("NUBO-GUEST-PING {a_ip} fail"))
                .count();
            Ok(fails >= 3 && !tail.rsplit("fail").next().unwrap_or("").contains("ok"))
        },
    )
    .unwrap();

    // kill -9 the agent of vm-a's host: the domain is adopted, not recreated.
    let a_host = lab.host_of(&a_node).unwrap();
    let a_dom = lab.domain_name(&a_id);
    let pid = lab.libvirtds[a_host].qemu_pid(&a_dom).expect("qemu pid");
    lab.agents[a_host].kill9();
    lab.agents[a_host].restart().unwrap();
    // Ready means its first pass is done; one more completed pass, then
    // look.
    let net_key = network_key(&lab);
    lab.reconcile_once(a_host, &net_key).unwrap();
    assert_eq!(
        lab.libvirtds[a_host].qemu_pid(&a_dom),
        Some(pid),
        "QEMU replaced"
    );
    assert_eq!(lab.show(&a_id).unwrap()["state"], "running");
    let log = lab.agents[a_host].current_log();
    assert!(
        !log.contains("domain defined"),
        "recreated after restart:\n{log}"
    );

    // libvirtd restarts under the agent: vm-a keeps running (same QEMU),
    // the agent reconnects and re-registers its event callback; stop,
    // resize and start go through the new connection (and vm-c below
    // shows that a guest power-off is still noticed).
    lab.libvirtds[a_host].restart(&lab.hosts[a_host]).unwrap();
    assert_eq!(
        lab.libvirtds[a_host].qemu_pid(&a_dom),
        Some(pid),
        "QEMU died with libvirtd"
    );
    lab.cli
        .json(&[
            "flavor", "create", "t2", "--vcpus", "2", "--ram", "192", "--disk", "1",
        ])
        .unwrap();
    // Resize while running: the agent shuts vm-a down, redefines it with
    // 2 vCPUs / 192 MiB and boots it again; the old flavor is kept until
    // --revert, which gives the old size back the same way.
    let old_flavor = lab.show(&a_id).unwrap()["flavor"]
        .as_str()
        .unwrap()
        .to_string();
    let r = lab
        .cli
        .json(&["server", "resize", &a_id, "--flavor", "t2"])
        .unwrap();
    assert_eq!(r["resized_from"], old_flavor.as_str(), "{r}");
    // The spec changed, the guest not yet: resizing, at the old size.
    assert_eq!(r["resize_phase"], "resizing", "{r}");
    assert_eq!(r["applied_size"]["vcpus"], 1, "{r}");
    let boots = |lab: &VmLab| {
        lab.agents[a_host]
            .console(&a_id)
            .matches(&format!("NUBO-GUEST-METADATA: {a_id}"))
            .count()
    };
    let sized = |lab: &VmLab, cpus: &str, kib: &str| -> anyhow::Result<bool> {
        let info = lab.libvirtds[a_host].virsh(&["dominfo", &a_dom])?;
        Ok(info
            .lines()
            .any(|l| l.starts_with("CPU(s):") && l.ends_with(&format!(" {cpus}")))
            && info.contains(kib)
            && info.contains("running"))
    };
    wait_until(BOOT, "running vm-a rebooted with 2 vCPUs", || {
        Ok(sized(&lab, "2", "196608 KiB")? && boots(&lab) >= 2)
    })
    .unwrap();
    // Its agent reports the size it applied: the resize waits for verify.
    wait_until(Duration::from_secs(30), "vm-a's resize to verify", || {
        let s = lab.show(&a_id)?;
        Ok(s["resize_phase"] == "verify"
            && s["applied_size"] == serde_json::json!({"vcpus": 2, "ram_mb": 192}))
    })
    .unwrap();
    assert_ne!(
        lab.libvirtds[a_host].qemu_pid(&a_dom),
        Some(pid),
        "not restarted"
    );
    let r = lab
        .cli
        .json(&["server", "resize", &a_id, "--revert"])
        .unwrap();
    assert_eq!(
        (r["flavor"].as_str(), &r["resized_from"]),
        (Some(old_flavor.as_str()), &Value::Null),
        "{r}"
    );
    let small_kib = format!("{} KiB", r["resources"]["ram_mb"].as_u64().unwrap() * 1024);
    wait_until(BOOT, "vm-a back at its old size, running", || {
        Ok(sized(&lab, "1", &small_kib)? && boots(&lab) >= 3)
    })
    .unwrap();

    lab.cli.json(&["server", "stop", &a_id]).unwrap();
    wait_until(Duration::from_secs(60), "vm-a stopped", || {
        Ok(lab.show(&a_id)?["state"] == "stopped")
    })
    .unwrap();
    assert_eq!(lab.libvirtds[a_host].qemu_pid(&a_dom), None);
    lab.cli
        .json(&["server", "resize", &a_id, "--flavor", "t2"])
        .unwrap();
    // Stopped: verify once redefined (and still stopped).
    wait_until(
        Duration::from_secs(30),
        "stopped vm-a's resize to verify",
        || {
            let s = lab.show(&a_id)?;
            Ok(s["resize_phase"] == "verify" && s["applied_size"]["vcpus"] == 2)
        },
    )
    .unwrap();
    let r = lab
        .cli
        .json(&["server", "resize", &a_id, "--confirm"])
        .unwrap();
    assert_eq!(
        (r["flavor"].as_str(), &r["resized_from"]),
        (Some("t2"), &Value::Null),
        "{r}"
    );
    wait_until(
        Duration::from_secs(30),
        "vm-a redefined with 2 vCPUs",
        || {
            let info = lab.libvirtds[a_host].virsh(&["dominfo", &a_dom])?;
            Ok(info
                .lines()
                .any(|l| l.starts_with("CPU(s):") && l.ends_with(" 2"))
                && info.contains("196608 KiB"))
        },
    )
    .unwrap();
    lab.cli.json(&["server", "start", &a_id]).unwrap();
    wait_until(BOOT, "vm-a boots again with its new size", || {
        Ok(lab.show(&a_id)?["state"] == "running" && boots(&lab) >= 4)
    })
    .unwrap();
    let log = lab.agents[a_host].current_log();
    assert!(
        log.contains("lifecycle events registered on the new libvirt connection"),
        "no event re-registration:\n{log}"
    );

    // A guest that powers itself off is stopped until `server start`.
    let c = create(&lab, "vm-c", 1, Some("poweroff\n"), &[]);
    let c_id = id_of(&c);
    wait_until(BOOT, "vm-c stopped after powering off", || {
        Ok(lab.show(&c_id)?["state"] == "stopped")
    })
    .unwrap();
    let c_dom = lab.domain_name(&c_id);
    // A pass that saw it stopped has completed: nothing restarted it.
    lab.reconcile_once(a_host, &net_key).unwrap();
    assert_eq!(
        lab.libvirtds[a_host].qemu_pid(&c_dom),
        None,
        "restarted by itself"
    );
    lab.cli.json(&["server", "start", &c_id]).unwrap();
    wait_until(Duration::from_secs(30), "vm-c boots again", || {
        Ok(lab.libvirtds[a_host].qemu_pid(&c_dom).is_some()
            || lab.agents[a_host]
                .console(&c_id)
                .matches("NUBO-GUEST: init")
                .count()
                >= 2)
    })
    .unwrap();

    // Delete: no domain, tap, overlay or console file left.
    for id in [&a_id, &b_id, &c_id] {
        lab.cli.json(&["server", "delete", id]).unwrap();
    }
    lab.wait_nothing_left(Duration::from_secs(60)).unwrap();
}

/// Bad input ends in `error` with the reason, and nothing else is
/// disturbed: a corrupt image file, a flavor disk too small for the image,
/// an image whose data is missing from the store.
#[test]
fn bad_input_ends_in_error_with_the_reason() {
    let lab = VmLab::start(1).unwrap();
    let _ = base_objects(&lab);
    let good = create(&lab, "good", 1, None, &[]);
    let good_id = id_of(&good);

    // Too small: a 1 MiB disk image on a 0 GiB flavor.
    create_fails(
        &lab,
        "small",
        "guest",
        "zero",
        "smaller than the virtual size",
    );

    // Corrupt: the stored disk of a second image is altered.
    let img2 = lab.upload_test_guest("guest2").unwrap();
    let disk = lab.image_dir.join(id_of(&img2)).join("disk");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&disk, bytes).unwrap();
    create_fails(&lab, "corrupt", "guest2", "t", "checksum mismatch");

    // Missing: the data of a third image is gone from the store.
    let img3 = lab.upload_test_guest("guest3").unwrap();
    std::fs::remove_dir_all(lab.image_dir.join(id_of(&img3))).unwrap();
    create_fails(
        &lab,
        "missing",
        "guest3",
        "t",
        "missing from the coordinator",
    );

    // The good VM never noticed.
    assert_eq!(lab.show(&good_id).unwrap()["state"], "running");
    let node = good["node"].as_str().unwrap();
    lab.wait_console(
        node,
        &good_id,
        &format!("NUBO-GUEST-METADATA: {good_id}"),
        BOOT,
    )
    .unwrap();
}

/// `--count 10 --wait` on two hosts: every guest gets its lease; deleting
/// them leaves no domain, tap, overlay or nft chain.
#[test]
fn ten_vms_get_leases_and_leave_nothing() {
    let lab = VmLab::start(2).unwrap();
    let _ = base_objects(&lab);
    let t0 = Instant::now();
    let args = lab
        .server_create_args(
            "many",
            None,
            None,
            &["--count", "10", "--wait", "--timeout", "300"],
        )
        .unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.cli.run(&args).unwrap();
    if !out.success() {
        let errors: Vec<String> = lab
            .agents
            .iter()
            .flat_map(|a| {
                a.log()
                    .lines()
                    .filter(|l| l.contains("failed"))
                    .take(5)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        panic!("{out:?}\nagent errors:\n{}", errors.join("\n"));
    }
    let out = out.stdout;
    let ids: Vec<String> = lab
        .cli
        .json(&["server", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids.len(), 10, "{out}");
    for id in &ids {
        let s = lab.show(id).unwrap();
        let node = s["node"].as_str().unwrap().to_string();
        lab.wait_console(
            &node,
            id,
            "NUBO-GUEST-IP: 10.91.0.",
            Duration::from_secs(300),
        )
        .unwrap();
    }
    eprintln!("10 guests leased after {:?}", t0.elapsed());
    for id in &ids {
        lab.cli.json(&["server", "delete", id]).unwrap();
    }
    lab.wait_nothing_left(Duration::from_secs(90)).unwrap();
}
