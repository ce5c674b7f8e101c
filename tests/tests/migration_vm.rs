//! Live migration of a real (TCG) guest between two simulated hosts, each
//! with its own libvirtd (issue 16), the agents driven through the
//! migration protocol (`nubo_common::model::migration`) by this test
//! playing the leader: it writes the destination's `IncomingMigration`,
//! waits for `Prepared`, writes the source's `OutgoingMigration`, waits for
//! `Migrated`, then does the switch transaction itself (assignment, spec
//! copy, instance and port to the destination, orders deleted).
//!
//! Meanwhile another guest pings the migrating one every 10 ms
//! (`fastping` of the test guest): the guest does not reboot (no new
//! `NUBO-GUEST: init`, its uptime continues on the destination's console),
//! keeps its MAC and IP (the pings are answered from the destination), and
//! the longest gap between two answers is printed, with libvirt's downtime,
//! the migration's duration and the load average.
//!
//! The other tests go through `nubo` and the coordinator: `server migrate
//! --live --wait` end to end (DHCP renewal and metadata on the
//! destination), kill -9 of the destination's agent and of the leader
//! mid-migration (the guest on exactly one host, sampled every 100 ms),
//! `node drain --live` of 4 guests, a guest dirtying memory faster than the
//! link moves it finishing in post-copy (memory checked on the destination),
//! a floating IP following live migrations
//! (pinged from an "external host" of the routing lab's wire; live then cold
//! on RBD: ignored), live then cold migration on RBD of a guest
//! with an attached volume (ignored) and the
//! live migration benchmark (ignored, docs/benchmarks.md). Every migrating
//! guest runs the test guest's `tlb-churn` (QEMU 7.2's TCG loses guest
//! writes during migrations otherwise: docs/migration-hosts.md, "Limits").
//!
//! Run (root, after `cargo build -p nubo-agent -p nubo-coordinator -p
//! nubo-cli --bins`):
//!   cargo test -p nubo-tests --test migration_vm -- --test-threads=1 --nocapture
//! The RBD cases need the Ceph packages and are `#[ignore]`d (slower: a
//! throwaway cluster), like the benchmark:
//!   cargo test -p nubo-tests --test migration_vm -- --ignored --test-threads=1 --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant};

use nubo_common::keys;
use nubo_common::model::{
    self, Assignment, IncomingMigration, Instance, MigrationMode, MigrationPhase, MigrationReport,
    OutgoingMigration, Port,
};
use nubo_common::{InstanceId, MigrationId, NodeName};
use nubo_tests::prober::{longest_silence, runs, unix_now, Prober};
use nubo_tests::vm_e2e::{console_value, guest_ip, RbdVmLab, VmLab};
use nubo_tests::wait_until;
use nubo_tests::wire::Wire;

const BOOT: Duration = Duration::from_secs(180);

/// The user data of a guest that migrates: its uptime every second, and
/// the test guest's `tlb-churn`, without which QEMU 7.2's TCG loses guest
/// writes during live migrations (docs/migration-hosts.md, "Limits").
const MIGRATING_GUEST: &str = "uptime\ntlb-churn\n";

fn create(lab: &VmLab, name: &str, host: u8, user_data: &str) -> (InstanceId, String) {
    lab.create_placed(name, host, user_data).unwrap()
}

fn get_json<T: serde::de::DeserializeOwned>(lab: &VmLab, key: &str) -> T {
    let raw = lab
        .etcd
        .get(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} missing"));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn put_json<T: serde::Serialize>(lab: &VmLab, key: &str, v: &T) {
    let s = serde_json::to_string(v).unwrap();
    lab.etcd.etcdctl(&["put", key, &s]).unwrap();
}

/// Waits for the report of `node` on `m` to reach one of `phases`.
fn wait_report(
    lab: &VmLab,
    node: &NodeName,
    m: &MigrationId,
    phases: &[MigrationPhase],
    timeout: Duration,
) -> MigrationReport {
    let key = keys::node_migration_report(node, m);
    let mut last = None;
    let r = wait_until(timeout, &format!("report {phases:?} at {key}"), || {
        last = lab
            .etcd
            .get(&key)?
            .map(|v| serde_json::from_slice::<MigrationReport>(&v))
            .transpose()?;
        Ok(last.as_ref().is_some_and(|r| phases.contains(&r.phase)))
    });
    if let Err(e) = r {
        panic!(
            "{e}; last report: {last:?}\nsource agent log:\n{}\ndestination agent log:\n{}",
            nubo_tests::process::tail(&lab.agents[0].log(), 40),
            nubo_tests::process::tail(&lab.agents[1].log(), 40)
        );
    }
    last.unwrap()
}

/// The leader's switch, in one transaction: assignment, spec copy,
/// instance and port to `dst`, the orders deleted.
fn switch(lab: &VmLab, id: &InstanceId, src: &NodeName, dst: &NodeName) {
    let mut spec: Instance = get_json(lab, &keys::instance(id));
    spec.node = Some(dst.clone());
    let mut assignment: Assignment = get_json(lab, &keys::assignment(src, id));
    assignment.node = dst.clone();
    let mut ops = vec![
        etcd_client::TxnOp::delete(keys::assignment(src, id), None),
        etcd_client::TxnOp::delete(keys::node_spec(src, id), None),
        etcd_client::TxnOp::delete(keys::node_incoming(dst, id), None),
        etcd_client::TxnOp::delete(keys::node_outgoing(src, id), None),
        etcd_client::TxnOp::put(keys::assignment(dst, id), model::encode(&assignment), None),
        etcd_client::TxnOp::put(keys::node_spec(dst, id), model::encode(&spec), None),
        etcd_client::TxnOp::put(keys::instance(id), model::encode(&spec), None),
    ];
    for p in &spec.ports {
        let mut port: Port = get_json(lab, &keys::port(p));
        port.node = Some(dst.clone());
        ops.push(etcd_client::TxnOp::put(
            keys::port(p),
            model::encode(&port),
            None,
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = lab.etcd.client().await.unwrap();
        c.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    });
}

/// `(seq, gaps)` of the pinger's console for target `ip`: the last
/// sequence number printed and every gap (ms) reported.
fn fastping(console: &str, ip: &str) -> (u64, Vec<(u64, u64)>) {
    let mut last = 0;
    let mut gaps = Vec::new();
    let prefix = format!("NUBO-GUEST-FASTPING {ip} ");
    for l in console.lines() {
        let Some(rest) = l.split(&prefix).nth(1) else {
            continue;
        };
        let w: Vec<&str> = rest.split_whitespace().collect();
        match w.as_slice() {
            ["seq", n, ..] => last = n.parse().unwrap_or(last),
            ["gap", ms, "after-seq", n, ..] => {
                gaps.push((n.parse().unwrap_or(0), ms.parse().unwrap_or(0)));
            }
            _ => {}
        }
    }
    (last, gaps)
}

/// Waits until the pinger on host 1 (`p_id`) has 600 more answers from
/// `ip` after sequence `seq_before` (6 s of pings answered after the move:
/// same IP), and returns the gaps `(after seq, ms)` from `seq_before` on.
fn gaps_after_migration(
    lab: &VmLab,
    p_id: &InstanceId,
    ip: &str,
    seq_before: u64,
) -> Vec<(u64, u64)> {
    let mut console = String::new();
    wait_until(
        Duration::from_secs(120),
        "pings answered after the migration",
        || {
            console = lab.agents[0].console(&p_id.to_string());
            Ok(fastping(&console, ip).0 > seq_before + 600)
        },
    )
    .unwrap();
    fastping(&console, ip)
        .1
        .into_iter()
        .filter(|(after, _)| *after >= seq_before)
        .collect()
}

fn uptimes(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(|l| l.split("NUBO-GUEST-UPTIME ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

fn mac_of(lab: &VmLab, host: usize, domain: &str) -> String {
    let out = lab.libvirtds[host].virsh(&["domiflist", domain]).unwrap();
    out.lines()
        .filter_map(|l| l.split_whitespace().last())
        .find(|w| w.matches(':').count() == 5)
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_string()
}

/// The leader's order to `dst` to receive `id` (migration `mid`), and the
/// wait for its `Prepared`: the domain defined there, not started.
fn prepare(
    lab: &VmLab,
    mid: &MigrationId,
    id: &InstanceId,
    src: &NodeName,
    dst: &NodeName,
    what: &str,
) {
    let spec: Instance = get_json(lab, &keys::node_spec(src, id));
    put_json(
        lab,
        &keys::node_incoming(dst, id),
        &IncomingMigration {
            migration: *mid,
            source: src.clone(),
            mode: MigrationMode::Live,
            spec,
        },
    );
    let t = Instant::now();
    wait_report(lab, dst, mid, &[MigrationPhase::Prepared], BOOT);
    eprintln!("{what}: destination prepared in {:?}", t.elapsed());
    let dom = lab.domain_name(&id.to_string());
    let defined = lab.libvirtds[lab.host_of(dst.as_str()).unwrap()]
        .virsh(&["domstate", &dom])
        .unwrap();
    assert!(
        defined.contains("shut off"),
        "prepared, not started: {defined}"
    );
}

/// A migration that runs out of its budget (1 s, while the agents cap
/// migrations at [`BANDWIDTH_MIB_S`]: it cannot finish first): aborted,
/// the guest goes on running on the source, the leader's rollback (orders
/// deleted) undoes the destination's preparation.
///
/// Run after the successful migration: a live migration of a guest whose
/// previous migration was aborted corrupted its virtio-net TX ring on the
/// destination in 2 runs of 3 here (guest: "virtio_net virtio0: output.0:id
/// 8 is not a head!", then soft lockups; QEMU 7.2, TCG): not understood yet.
fn over_budget_is_aborted(
    lab: &VmLab,
    m_id: &InstanceId,
    src: &NodeName,
    dst: &NodeName,
    block: bool,
    what: &str,
) {
    let dom = lab.domain_name(&m_id.to_string());
    let m_id = *m_id;
    let (src, dst) = (src.clone(), dst.clone());
    let (si, di) = (
        lab.host_of(src.as_str()).unwrap(),
        lab.host_of(dst.as_str()).unwrap(),
    );
    let aborted = MigrationId::new_random();
    prepare(lab, &aborted, &m_id, &src, &dst, what);
    let up_src = || uptimes(&lab.agents[si].console(&m_id.to_string()));
    let before_abort = up_src().last().copied().unwrap_or(0.0);
    let inits = |c: &str| c.matches("NUBO-GUEST: init").count();
    let inits_before = inits(&lab.agents[si].console(&m_id.to_string()));
    put_json(
        lab,
        &keys::node_outgoing(&src, &m_id),
        &OutgoingMigration {
            migration: aborted,
            destination: dst.clone(),
            mode: MigrationMode::Live,
            block,
            precopy_budget_secs: 0,
            budget_secs: 1,
            abort: false,
        },
    );
    let failed = wait_report(
        lab,
        &src,
        &aborted,
        &[MigrationPhase::Migrated, MigrationPhase::Failed],
        Duration::from_secs(120),
    );
    eprintln!("{what}: over budget: {failed:?}");
    if failed.phase != MigrationPhase::Failed {
        eprintln!("{}", nubo_tests::process::tail(&lab.agents[si].log(), 60));
    }
    assert_eq!(failed.phase, MigrationPhase::Failed, "{failed:?}");
    let detail = failed.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("aborted (time budget exceeded)"),
        "{detail}"
    );
    let state = lab.libvirtds[si].virsh(&["domstate", &dom]).unwrap();
    assert!(
        state.contains("running"),
        "still runs on the source: {state}"
    );
    lab.etcd
        .etcdctl(&["del", &keys::node_outgoing(&src, &m_id)])
        .unwrap();
    lab.etcd
        .etcdctl(&["del", &keys::node_incoming(&dst, &m_id)])
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "destination undoes its preparation",
        || Ok(!lab.libvirtds[di].domains()?.contains(&dom)),
    )
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the guest goes on on the source",
        || Ok(up_src().last().is_some_and(|u| *u > before_abort + 2.0)),
    )
    .unwrap();
    let src_console = lab.agents[si].console(&m_id.to_string());
    assert_eq!(
        inits(&src_console),
        inits_before,
        "rebooted on the source:\n{src_console}"
    );
}

/// Boots the migrating guest and its pinger on host 1, migrates the first
/// to host 2 live through the protocol, switches, and checks the guest
/// went on running, reachable at the same address.
fn live_migration(lab: &VmLab, cidr: &str, block: bool, what: &str) -> InstanceId {
    lab.base_objects(128, cidr).unwrap();
    let (m_id, m_node) = create(lab, "mig", 1, MIGRATING_GUEST);
    let boot = lab
        .wait_console(&m_node, &m_id.to_string(), "NUBO-GUEST-METADATA: ", BOOT)
        .unwrap();
    let m_ip = guest_ip(&boot).expect("migrating guest has an address");
    let (p_id, p_node) = create(lab, "pinger", 1, &format!("fastping {m_ip}\n"));
    assert_eq!(m_node, p_node);
    lab.wait_console(
        &p_node,
        &p_id.to_string(),
        &format!("NUBO-GUEST-FASTPING {m_ip} seq 300"),
        BOOT,
    )
    .unwrap();
    let src: NodeName = m_node.parse().unwrap();
    let dst: NodeName = lab.agents[1].node().parse().unwrap();
    assert_ne!(src, dst);
    let dom = lab.domain_name(&m_id.to_string());
    let mac_before = mac_of(lab, 0, &dom);

    // 1. Destination: prepare.
    let mid = MigrationId::new_random();
    prepare(lab, &mid, &m_id, &src, &dst, what);

    // 2. Source: migrate.
    let before_p = lab.agents[0].console(&p_id.to_string());
    let (seq_before, _) = fastping(&before_p, &m_ip.to_string());
    let up_before = uptimes(&lab.agents[0].console(&m_id.to_string()));
    let load = load_average();
    put_json(
        lab,
        &keys::node_outgoing(&src, &m_id),
        &OutgoingMigration {
            migration: mid,
            destination: dst.clone(),
            mode: MigrationMode::Live,
            block,
            precopy_budget_secs: 60,
            budget_secs: 120,
            abort: false,
        },
    );
    let t_mig = Instant::now();
    let done = wait_report(
        lab,
        &src,
        &mid,
        &[MigrationPhase::Migrated, MigrationPhase::Failed],
        Duration::from_secs(180),
    );
    let mig_time = t_mig.elapsed();
    assert_eq!(done.phase, MigrationPhase::Migrated, "{done:?}");
    let state = lab.libvirtds[1].virsh(&["domstate", &dom]).unwrap();
    assert!(
        state.contains("running"),
        "runs on the destination: {state}"
    );
    assert!(
        !lab.libvirtds[0].domains().unwrap().contains(&dom),
        "gone from the source"
    );

    // 3. The leader's switch.
    let t_switch = Instant::now();
    switch(lab, &m_id, &src, &dst);
    let status_key = keys::instance_status(&dst, &m_id);
    wait_until(BOOT, "destination reports the instance running", || {
        Ok(lab.etcd.get(&status_key)?.is_some_and(|v| {
            serde_json::from_slice::<serde_json::Value>(&v).is_ok_and(|s| s["state"] == "running")
        }))
    })
    .unwrap();
    eprintln!(
        "{what}: destination reports it running {:?} after the switch",
        t_switch.elapsed()
    );

    // No reboot: the uptime goes on on the destination's console, no new
    // init there; same MAC.
    let dest_console = || lab.agents[1].console(&m_id.to_string());
    let last_before = up_before.last().copied().unwrap_or(0.0);
    let r = wait_until(
        Duration::from_secs(60),
        "uptime continues on the destination",
        || {
            Ok(uptimes(&dest_console())
                .iter()
                .any(|u| *u > last_before + 2.0))
        },
    );
    if let Err(e) = r {
        panic!(
            "{e} (last uptime on the source {last_before})\ndestination console:\n{}\nsource console:\n{}\ndestination agent:\n{}\ndomain: {:?}",
            nubo_tests::process::tail(&dest_console(), 20),
            nubo_tests::process::tail(&lab.agents[0].console(&m_id.to_string()), 10),
            nubo_tests::process::tail(&lab.agents[1].log(), 30),
            lab.libvirtds[1].virsh(&["dominfo", &dom]),
        );
    }
    let after = dest_console();
    assert!(!after.contains("NUBO-GUEST: init"), "rebooted:\n{after}");
    assert!(
        uptimes(&after).iter().all(|u| *u >= last_before),
        "uptime went back: before {last_before}, after {:?}",
        uptimes(&after)
    );
    assert_eq!(mac_of(lab, 1, &dom), mac_before);

    // Same IP: the pinger's pings are answered by the guest on the
    // destination (3 s more of answers after the migration).
    let gaps = gaps_after_migration(lab, &p_id, &m_ip.to_string(), seq_before);
    let max_gap = gaps.iter().map(|(_, ms)| *ms).max().unwrap_or(10);
    eprintln!(
        "{what}: migrated in {mig_time:?} (agent job: {}), libvirt downtime {:?} ms, \
         longest ping gap {max_gap} ms (gaps after seq {seq_before}: {:?}); load average before: {load}",
        done.detail.as_deref().unwrap_or("-"),
        done.downtime_ms,
        gaps,
    );
    assert!(done.downtime_ms.is_some(), "libvirt reported no downtime");

    // The source let go of it: no tap, no status of its own.
    let tap = lab
        .etcd
        .get(&keys::port(
            &get_json::<Instance>(lab, &keys::instance(&m_id)).ports[0],
        ))
        .unwrap()
        .map(|v| serde_json::from_slice::<Port>(&v).unwrap().tap_name())
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "source status and tap gone",
        || {
            let links = lab.hosts[0].exec("ip", &["-o", "link"])?;
            Ok(lab.etcd.get(&keys::instance_status(&src, &m_id))?.is_none()
                && !String::from_utf8_lossy(&links.stdout).contains(&tap))
        },
    )
    .unwrap();

    // Back to host 1, over budget: aborted, it goes on on host 2.
    over_budget_is_aborted(lab, &m_id, &dst, &src, block, what);
    m_id
}

/// The agents' migration bandwidth cap (MiB/s): a 128 MiB guest moves in
/// seconds, never within the over-budget case's 1 s.
const BANDWIDTH_MIB_S: &str = "16";

/// A lab of two hosts whose agents cap migrations at [`BANDWIDTH_MIB_S`]
/// (with `RUST_LOG` = `log_filter` if set), its flavor, image and network
/// on `cidr`, and the two node names.
fn capped_lab(cidr: &str, log_filter: Option<&str>) -> (VmLab, [String; 2]) {
    let mut lab = VmLab::start_without_agents(2).unwrap();
    lab.start_agents_logging(
        &["--migration-bandwidth".into(), BANDWIDTH_MIB_S.into()],
        log_filter,
    )
    .unwrap();
    lab.base_objects(128, cidr).unwrap();
    let nodes = [
        lab.agents[0].node().to_string(),
        lab.agents[1].node().to_string(),
    ];
    (lab, nodes)
}

#[test]
fn live_block_migration_of_a_local_disk_keeps_the_guest_running() {
    let mut lab = VmLab::start_without_agents(2).unwrap();
    lab.start_agents(&["--migration-bandwidth".into(), BANDWIDTH_MIB_S.into()])
        .unwrap();
    live_migration(&lab, "10.94.0.0/24", true, "local disk (block migration)");
}

#[test]
#[ignore = "starts a Ceph cluster; run with --ignored"]
fn live_migration_on_rbd_keeps_the_guest_running() {
    let extra = ["--migration-bandwidth".to_string(), BANDWIDTH_MIB_S.into()];
    let Some(rbd) = RbdVmLab::start_with(2, &extra).unwrap() else {
        return;
    };
    let id = live_migration(&rbd.lab, "10.95.0.0/24", false, "RBD root disk");
    // One client uses the image: the QEMU it runs in (the migrated-from
    // one closed it; the aborted attempt's killed incoming QEMU leaves a
    // watch until Ceph times it out, ~30 s).
    let mut status = String::new();
    wait_until(Duration::from_secs(90), "one RBD watcher", || {
        status = rbd.storage.ceph.cli(
            "rbd",
            &["status", &format!("vms/{id}-disk"), "--format", "json"],
        )?;
        let v: serde_json::Value = serde_json::from_str(&status)?;
        Ok(v["watchers"].as_array().map(Vec::len) == Some(1))
    })
    .unwrap_or_else(|e| panic!("{e}: {status}"));
}

/// `nubo server migrate --live --wait` end to end: the coordinator's
/// migration (placement, orders, the leader's state machine and switch)
/// driving both agents' libvirt migration of a TCG guest on a local disk
/// (block migration), while another guest pings it every 10 ms. On the
/// destination: no reboot (its uptime goes on), the same MAC, the pings
/// answered (same IP), and the guest renews its lease (a unicast renewal,
/// answered by the destination's DHCP responder, none by the source's any
/// more) and reads its metadata there.
///
/// (This test was flaky, 4 of 7 runs: the guest's memory came over stale
/// from QEMU 7.2's TCG, see docs/migration-hosts.md "Limits"; the guest's
/// `tlb-churn` works around it.)
#[test]
fn nubo_server_migrate_live_through_the_coordinator() {
    let (lab, [_, dst]) = capped_lab(
        "10.96.0.0/24",
        Some("info,nubo_agent::agent=debug,nubo_dhcp=debug"),
    );
    let lab = &lab;
    // No zone (a migration stays in the requested zone, and each lab host
    // is its own): placed on host 1 by disabling host 2 meanwhile.
    lab.cli.json(&["node", "disable", &dst]).unwrap();
    let out = lab
        .create_server(
            "mig",
            None,
            Some(&format!("{MIGRATING_GUEST}renew 3\n")),
            &["--wait", "--timeout", "240"],
        )
        .unwrap();
    lab.cli.json(&["node", "enable", &dst]).unwrap();
    let m_id: InstanceId = nubo_tests::net_e2e::find_str(&out, "id")
        .unwrap()
        .parse()
        .unwrap();
    let m_node = lab.show(&m_id.to_string()).unwrap()["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(m_node, dst);
    let boot = lab
        .wait_console(&m_node, &m_id.to_string(), "NUBO-GUEST-METADATA: ", BOOT)
        .unwrap();
    let m_ip = guest_ip(&boot).expect("migrating guest has an address");
    let (p_id, _) = create(lab, "pinger", 1, &format!("fastping {m_ip}\n"));
    lab.wait_console(
        &m_node,
        &p_id.to_string(),
        &format!("NUBO-GUEST-FASTPING {m_ip} seq 300"),
        BOOT,
    )
    .unwrap();
    let (seq_before, _) = fastping(&lab.agents[0].console(&p_id.to_string()), &m_ip.to_string());
    let up_before = uptimes(&lab.agents[0].console(&m_id.to_string()));
    let dom = lab.domain_name(&m_id.to_string());
    let mac = mac_of(lab, 0, &dom);
    let dhcp_reply = "reply sent iface=";
    let replies_to = |log: &str| {
        log.lines()
            .filter(|l| l.contains(dhcp_reply) && l.contains(&format!("mac={mac}")))
            .count()
    };
    // Positive control: the source answered the guest (boot, renewals).
    wait_until(
        Duration::from_secs(30),
        "the source renews the lease",
        || Ok(replies_to(&lab.agents[0].log()) >= 2),
    )
    .unwrap();
    let load = load_average();
    let (migration, took) = migrate_live_wait(lab, "mig", &dst);
    let shown = lab.cli.json(&["server", "show", "mig"]).unwrap();
    assert_eq!(shown["node"], dst.as_str(), "{shown}");
    assert_eq!(shown["state"], "running", "{shown}");

    // No reboot, and the pinger's pings answered from the destination.
    let last_before = up_before.last().copied().unwrap_or(0.0);
    let r = wait_until(
        Duration::from_secs(60),
        "uptime continues on the destination",
        || {
            Ok(uptimes(&lab.agents[1].console(&m_id.to_string()))
                .iter()
                .any(|u| *u > last_before + 2.0))
        },
    );
    if let Err(e) = r {
        let p_console = lab.agents[0].console(&p_id.to_string());
        panic!("{}", format!(
            "{e} (last uptime on the source {last_before})\ndestination console ({} bytes, path {:?}):\n{}\npinger (seq before {seq_before}):\n{}\ndestination domain: {:?} {:?}\nsource domains: {:?}\ndestination agent:\n{}\nsource agent:\n{}\ncoordinator:\n{}",
            lab.agents[1].console(&m_id.to_string()).len(),
            lab.agents[1].console_path(&m_id.to_string()),
            nubo_tests::process::tail(&lab.agents[1].console(&m_id.to_string()), 30),
            nubo_tests::process::tail(&p_console, 15),
            lab.libvirtds[1].virsh(&["domstate", "--reason", &dom]),
            lab.libvirtds[1].virsh(&["dumpxml", &dom]).map(|x| x.lines().filter(|l| l.contains("source path") || l.contains("<log")).map(str::to_string).collect::<Vec<_>>()),
            lab.libvirtds[0].domains(),
            nubo_tests::process::tail(&lab.agents[1].log(), 60),
            nubo_tests::process::tail(&lab.agents[0].log(), 40),
            nubo_tests::process::tail(&lab.coordinator.log(), 40),
        ) + &format!(
            "\nqemu logs:\n{}\n{}",
            std::fs::read_to_string(lab.dir.path().join(format!("libvirt-1/log/qemu/{dom}.log"))).unwrap_or_default(),
            std::fs::read_to_string(lab.dir.path().join(format!("libvirt-2/log/qemu/{dom}.log"))).unwrap_or_default(),
        ));
    }
    assert!(!lab.agents[1]
        .console(&m_id.to_string())
        .contains("NUBO-GUEST: init"));
    // Same MAC; on the destination the guest renews its lease (same IP)
    // from the destination's DHCP responder, not the source's, and reads
    // its metadata.
    assert_eq!(mac_of(lab, 1, &dom), mac);
    let src_replies = replies_to(&lab.agents[0].log());
    let console = || lab.agents[1].console(&m_id.to_string());
    wait_until(
        Duration::from_secs(30),
        "lease renewed and metadata read on the destination",
        || {
            let c = console();
            Ok(c.contains(&format!("NUBO-GUEST-DHCP renew {m_ip} "))
                && c.contains(&format!("NUBO-GUEST-MD {m_id} "))
                && replies_to(&lab.agents[1].log()) >= 1)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\ndestination console:\n{}", console()));
    assert_eq!(
        replies_to(&lab.agents[0].log()),
        src_replies,
        "the source still answers the guest's DHCP"
    );
    let max_gap = gaps_after_migration(lab, &p_id, &m_ip.to_string(), seq_before)
        .iter()
        .map(|(_, ms)| *ms)
        .max()
        .unwrap_or(10);
    eprintln!(
        "nubo server migrate --live --wait: {took:?} ({}), longest ping gap {max_gap} ms; load before: {load}",
        migration
    );
}

/// One look at one host's libvirtd by [`Placement`]: the domain was
/// running there (or not) at some instant between `start` and `end`.
#[derive(Debug, Clone, Copy)]
struct Look {
    host: usize,
    start: Instant,
    end: Instant,
    running: bool,
}

/// The looks of [`Placement`] so far.
type Looks = std::sync::Arc<std::sync::Mutex<Vec<Look>>>;

/// Where a domain runs, sampled every 100 ms by a background thread that
/// asks every host's libvirtd at once (one thread per host per sample).
struct Placement {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    looks: Looks,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Placement {
    fn start(lab: &VmLab, dom: &str) -> Self {
        let uris: Vec<String> = lab.libvirtds.iter().map(|l| l.uri().to_string()).collect();
        let dom = dom.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let looks = Looks::default();
        let (s, v) = (stop.clone(), looks.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let sample: Vec<Look> = std::thread::scope(|sc| {
                    let handles: Vec<_> = uris
                        .iter()
                        .enumerate()
                        .map(|(host, uri)| {
                            let dom = &dom;
                            sc.spawn(move || {
                                let start = Instant::now();
                                let running = std::process::Command::new("virsh")
                                    .args(["-c", uri, "domstate", dom])
                                    .output()
                                    .is_ok_and(|o| {
                                        o.status.success()
                                            && String::from_utf8_lossy(&o.stdout).trim()
                                                == "running"
                                    });
                                Look {
                                    host,
                                    start,
                                    end: Instant::now(),
                                    running,
                                }
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                v.lock().unwrap().extend(sample);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        Self {
            stop,
            looks,
            thread: Some(thread),
        }
    }

    /// The looks that started at or after `from`.
    fn since(&self, from: Instant) -> Vec<Look> {
        self.looks
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.start >= from)
            .copied()
            .collect()
    }

    /// Checks one episode (looks from `from`, the migration final at
    /// `end`) that moved the guest from host index `before` to `after`
    /// (the same when it stayed): it ran on `before` first; it never ran on
    /// two hosts at once (`before` seen running in a look that began after
    /// a look had seen it running on `after` ended; when it stayed: never
    /// seen running anywhere else); from `end` on (at least one second of
    /// samples) it runs on `after` and nowhere else.
    fn check(&self, what: &str, from: Instant, end: Instant, before: usize, after: usize) {
        wait_until(
            Duration::from_secs(30),
            "one second of samples after the end",
            || Ok(self.since(end).len() >= 10 * self.hosts()),
        )
        .unwrap();
        let looks = self.since(from);
        let first = looks.iter().find(|l| l.running).unwrap();
        assert_eq!(
            first.host,
            before,
            "{what}: ran on host {} first",
            before + 1
        );
        let on = |h: usize| looks.iter().filter(move |l| l.host == h && l.running);
        if before == after {
            let elsewhere: Vec<_> = looks
                .iter()
                .filter(|l| l.running && l.host != before)
                .collect();
            assert!(
                elsewhere.is_empty(),
                "{what}: ran on another host: {elsewhere:?}"
            );
        } else if let Some(arrived) = on(after).map(|l| l.end).min() {
            let twice: Vec<_> = on(before).filter(|l| l.start > arrived).collect();
            assert!(
                twice.is_empty(),
                "{what}: ran on host {} after it had run on host {}: {twice:?}",
                before + 1,
                after + 1
            );
        }
        let after_end: Vec<_> = looks.iter().filter(|l| l.start >= end).collect();
        assert!(
            after_end.iter().all(|l| l.running == (l.host == after)),
            "{what}: not on exactly host {} after the end: {after_end:?}",
            after + 1
        );
        let longest = looks
            .iter()
            .map(|l| l.end - l.start)
            .max()
            .unwrap_or_default();
        eprintln!(
            "{what}: {} looks in {:?}, the longest {longest:?}",
            looks.len(),
            end - from
        );
    }

    /// How many hosts each sample looks at.
    fn hosts(&self) -> usize {
        self.looks
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.host + 1)
            .max()
            .unwrap_or(1)
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `nubo server migration show` of `id` once its state is final.
fn wait_final(lab: &VmLab, id: &str, timeout: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let r = wait_until(timeout, &format!("migration {id} final"), || {
        let Ok(m) = lab.cli.json(&["server", "migration", "show", id]) else {
            return Ok(false);
        };
        last = m;
        Ok(matches!(
            last["state"].as_str(),
            Some("completed" | "aborted" | "failed")
        ))
    });
    if let Err(e) = r {
        panic!(
            "{e}: {last}\ncoordinator:\n{}\nsource agent:\n{}\ndestination agent:\n{}",
            nubo_tests::process::tail(&lab.coordinator.log(), 30),
            nubo_tests::process::tail(&lab.agents[0].log(), 30),
            nubo_tests::process::tail(&lab.agents[1].log(), 30)
        );
    }
    last
}

/// Starts `nubo server migrate NAME --live --host DST` (no wait) and
/// waits until the source's agent reports its libvirt job running.
fn start_live_migration(lab: &VmLab, name: &str, dst: &str) -> String {
    let m = lab
        .cli
        .json(&["server", "migrate", name, "--live", "--host", dst])
        .unwrap();
    let id = m["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(120), "the source's job running", || {
        let m = lab.cli.json(&["server", "migration", "show", &id])?;
        Ok(m["source_phase"] == "running")
    })
    .unwrap();
    id
}

/// kill -9 of the destination's agent, then of the (only) coordinator,
/// the leader, each in the middle of a live migration (the source's
/// libvirt job running), then of the leader again right after an
/// operator's abort: every migration ends in a final state that says
/// where the guest is (completed twice, then aborted and rolled back),
/// and, sampled on both libvirtds every 100 ms for the whole episode, the
/// guest never runs on two hosts at once and runs on exactly one
/// afterwards (the one the migration names), without a reboot.
#[test]
fn kill_9_of_the_destination_agent_or_the_leader_mid_migration_leaves_one_guest() {
    let (mut lab, [h1, h2]) = capped_lab("10.97.0.0/24", None);
    let id = guests_on_host_1(&lab, &["mig"])[0];
    let dom = lab.domain_name(&id.to_string());
    let placement = Placement::start(&lab, &dom);

    // 1. The destination's agent dies mid-migration and comes back.
    let t1 = Instant::now();
    let m1 = start_live_migration(&lab, "mig", &h2);
    lab.agents[1].kill9();
    lab.agents[1].restart().unwrap();
    let done = wait_final(&lab, &m1, Duration::from_secs(300));
    let end1 = Instant::now();
    eprintln!("destination agent killed: {done}");
    let on = match done["state"].as_str() {
        Some("completed") => 1,
        _ => 0,
    };
    wait_until(Duration::from_secs(60), "the server's node", || {
        Ok(lab.show("mig")?["node"] == [h1.as_str(), h2.as_str()][on])
    })
    .unwrap();
    placement.check("destination agent killed", t1, end1, 0, on);
    if on == 1 {
        // The restarted agent took the guest as its own.
        assert!(
            lab.agents[1].current_log().contains("arrived by migration"),
            "{}",
            lab.agents[1].log_tail()
        );
    }

    // 2. The leader dies mid-migration (back to where it came from) and
    // a coordinator starts again: the new leader finishes the migration.
    let (src, dst) = (on, 1 - on);
    let t2 = Instant::now();
    let m2 = start_live_migration(&lab, "mig", [h1.as_str(), h2.as_str()][dst]);
    lab.coordinator.kill9();
    lab.coordinator.restart().unwrap();
    let done = wait_final(&lab, &m2, Duration::from_secs(300));
    let end2 = Instant::now();
    eprintln!("leader killed: {done}");
    let on = if done["state"] == "completed" {
        dst
    } else {
        src
    };
    wait_until(Duration::from_secs(60), "the server's node", || {
        Ok(lab.show("mig")?["node"] == [h1.as_str(), h2.as_str()][on])
    })
    .unwrap();
    placement.check("leader killed", t2, end2, src, on);
    let console = lab.agents[on].console(&id.to_string());
    assert!(
        !console.contains("NUBO-GUEST: init"),
        "rebooted:\n{console}"
    );

    // 3. The operator aborts a migration and the leader dies right after:
    // the new leader resumes the abort and rolls it back (the guest stays
    // where it was).
    let (src, dst) = (on, 1 - on);
    let src_console = lab.agents[src].console(&id.to_string());
    let up = uptimes(&src_console).last().copied().unwrap();
    let t3 = Instant::now();
    let m3 = start_live_migration(&lab, "mig", [h1.as_str(), h2.as_str()][dst]);
    let aborting = lab
        .cli
        .json(&["server", "migration", "abort", &m3])
        .unwrap();
    lab.coordinator.kill9();
    assert_eq!(aborting["state"], "aborting", "{aborting}");
    lab.coordinator.restart().unwrap();
    let done = wait_final(&lab, &m3, Duration::from_secs(300));
    let end3 = Instant::now();
    eprintln!("abort, then the leader killed: {done}");
    assert_eq!(
        done["state"],
        "aborted",
        "rolled back: {done}\ncoordinator:\n{}\nsource agent:\n{}",
        nubo_tests::process::tail(&lab.coordinator.log(), 40),
        nubo_tests::process::tail(&lab.agents[src].log(), 40)
    );
    let on = src;
    wait_until(Duration::from_secs(60), "the server's node", || {
        Ok(lab.show("mig")?["node"] == [h1.as_str(), h2.as_str()][on])
    })
    .unwrap();
    placement.check("abort, then the leader killed", t3, end3, src, on);
    // The destination's preparation undone.
    wait_until(
        Duration::from_secs(60),
        "the destination undoes its preparation",
        || Ok(!lab.libvirtds[dst].domains()?.contains(&dom)),
    )
    .unwrap();
    // The guest stayed: its console goes on from where it was.
    uptime_goes_on(&lab, on, &id, up, src_console.len());
}

/// Creates `names` on host 1 (host 2 disabled meanwhile) as migrating
/// guests and waits until each prints its uptime; returns their ids.
fn guests_on_host_1(lab: &VmLab, names: &[&str]) -> Vec<InstanceId> {
    let h2 = lab.agents[1].node().to_string();
    lab.cli.json(&["node", "disable", &h2]).unwrap();
    let ids: Vec<InstanceId> = names
        .iter()
        .map(|n| {
            let out = lab
                .create_server(
                    n,
                    None,
                    Some(MIGRATING_GUEST),
                    &["--wait", "--timeout", "300"],
                )
                .unwrap();
            nubo_tests::net_e2e::find_str(&out, "id")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    lab.cli.json(&["node", "enable", &h2]).unwrap();
    for id in &ids {
        lab.wait_console(
            lab.agents[0].node(),
            &id.to_string(),
            "NUBO-GUEST-UPTIME ",
            BOOT,
        )
        .unwrap();
    }
    ids
}

/// Waits until the guest `id`'s uptime on host index `host`'s console
/// (from byte `from` on: 0 for a guest that arrived there) passes `after`
/// + 2 s, and checks it did not boot again nor go back meanwhile.
fn uptime_goes_on(lab: &VmLab, host: usize, id: &InstanceId, after: f64, from: usize) {
    let console = || {
        let c = lab.agents[host].console(&id.to_string());
        c.get(from..).unwrap_or_default().to_string()
    };
    wait_until(
        Duration::from_secs(60),
        &format!("{id}'s uptime goes on"),
        || Ok(uptimes(&console()).iter().any(|u| *u > after + 2.0)),
    )
    .unwrap_or_else(|e| panic!("{e} (after {after})\nconsole:\n{}", console()));
    let c = console();
    assert!(!c.contains("NUBO-GUEST: init"), "{id} rebooted:\n{c}");
    assert!(
        uptimes(&c).iter().all(|u| *u >= after),
        "{id}: uptime went back: {after} then {:?}",
        uptimes(&c)
    );
}

/// The `dirty` checks of a console: `(pass, intact, MiB/s)` per
/// `NUBO-GUEST-DIRTY pass N ok|bad MiBps R` line.
fn dirty_checks(console: &str) -> Vec<(u64, bool, u64)> {
    console
        .lines()
        .filter_map(|l| l.split("NUBO-GUEST-DIRTY pass ").nth(1))
        .filter_map(|rest| {
            let w: Vec<&str> = rest.split_whitespace().collect();
            match w.as_slice() {
                [n, state, "MiBps", r, ..] => {
                    Some((n.parse().ok()?, *state == "ok", r.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// Post-copy (issue 16: "auto-converge, then post-copy within a time
/// budget"): a guest rewriting 2 × 12 MiB of its memory over and over, faster
/// than the agents' migration cap ([`BANDWIDTH_MIB_S`] MiB/s) moves it,
/// cannot finish in pre-copy; with the coordinator's pre-copy budget at
/// 3 s the source switches the job to post-copy and `nubo server migrate
/// --live --wait` completes, the migration marked `postcopy`. On the
/// destination the guest goes on (no reboot, its uptime continues) and its
/// memory is whole: the rewriting goes on there and every check of the copy
/// against the original passes (a page lost or stale in post-copy fails it).
///
/// The labs' QEMUs get userfaultfd (which post-copy needs on both ends) by
/// [`VmLab::grant_userfaultfd`]; production: docs/migration-hosts.md.
#[test]
fn a_guest_dirtying_memory_faster_than_the_link_finishes_in_post_copy() {
    let mut lab = VmLab::start_without_agents_with(2, |_, dir| {
        let conf = dir.join("coordinator-migrations.toml");
        std::fs::write(&conf, "migration_precopy_budget_secs = 3\n")?;
        Ok(vec!["--config".into(), conf.display().to_string()])
    })
    .unwrap();
    lab.grant_userfaultfd().unwrap();
    lab.start_agents(&["--migration-bandwidth".into(), BANDWIDTH_MIB_S.into()])
        .unwrap();
    lab.base_objects(128, "10.92.0.0/24").unwrap();
    // On host 1 without pinning it there (a pinned server stays in its
    // zone): host 2 is disabled while it is placed.
    let dst = lab.agents[1].node().to_string();
    lab.cli.json(&["node", "disable", &dst]).unwrap();
    let out = lab
        .create_server(
            "dirty",
            None,
            Some("uptime\ntlb-churn\ndirty 12\n"),
            &["--wait", "--timeout", "240"],
        )
        .unwrap();
    lab.cli.json(&["node", "enable", &dst]).unwrap();
    let id: InstanceId = nubo_tests::net_e2e::find_str(&out, "id")
        .unwrap()
        .parse()
        .unwrap();
    let node = lab.agents[0].node().to_string();
    let console = lab
        .wait_console(&node, &id.to_string(), "NUBO-GUEST-DIRTY pass 8 ", BOOT)
        .unwrap();
    // The positive control: the guest rewrites its memory faster than the
    // link moves it, and its checks pass while it stays put.
    let before = dirty_checks(&console);
    let cap: u64 = BANDWIDTH_MIB_S.parse().unwrap();
    assert!(before.iter().all(|c| c.1), "{before:?}\n{console}");
    assert!(
        before.iter().any(|c| c.2 > cap),
        "the guest must dirty memory faster than {cap} MiB/s: {before:?}"
    );
    let up = uptimes(&console).last().copied().unwrap();
    let load = load_average();
    let (m, took) = migrate_live_wait(&lab, "dirty", &dst);
    eprintln!(
        "post-copy: {took:?}, guest rewriting at {:?} MiB/s (load before: {load}): {m}",
        before.iter().map(|c| c.2).collect::<Vec<_>>()
    );
    assert_eq!(
        m["postcopy"],
        true,
        "{m}\n{}",
        nubo_tests::process::tail(&lab.agents[0].log(), 40)
    );
    assert_eq!(lab.show("dirty").unwrap()["node"], dst.as_str());
    uptime_goes_on(&lab, 1, &id, up, 0);
    let mut after = Vec::new();
    wait_until(
        Duration::from_secs(120),
        "two checks of the rewritten memory on the destination",
        || {
            after = dirty_checks(&lab.agents[1].console(&id.to_string()));
            Ok(after.len() >= 2)
        },
    )
    .unwrap();
    assert!(
        after.iter().all(|c| c.1),
        "memory damaged in post-copy: {after:?}"
    );
    assert!(
        after.first().unwrap().0 > before.last().unwrap().0,
        "the passes go on from where they were: {before:?} then {after:?}"
    );
}

/// `nubo node drain NODE --live` moves 4 running guests to the other host,
/// none rebooted (each one's uptime goes on on the destination's console),
/// every one running there and gone from the drained host.
#[test]
fn live_drain_moves_four_guests_without_a_reboot() {
    let (lab, [h1, h2]) = capped_lab("10.98.0.0/24", None);
    let ids = guests_on_host_1(&lab, &["d1", "d2", "d3", "d4"]);
    let before: Vec<f64> = ids
        .iter()
        .map(|id| {
            uptimes(&lab.agents[0].console(&id.to_string()))
                .last()
                .copied()
                .unwrap()
        })
        .collect();
    let t = Instant::now();
    let load = load_average();
    let out = lab.cli.json(&["node", "drain", &h1, "--live"]).unwrap();
    let took = t.elapsed();
    eprintln!("live drain of 4 guests: {took:?} (load before: {load}): {out}");
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{out}");
    for r in rows {
        assert_eq!(r["to_node"], h2.as_str(), "{out}");
        assert!(r["error"].is_null(), "{out}");
        assert!(r["migration_id"].is_string(), "{out}");
    }
    for (id, up) in ids.iter().zip(before) {
        let shown = lab.show(&id.to_string()).unwrap();
        assert_eq!(shown["node"], h2.as_str(), "{shown}");
        let dom = lab.domain_name(&id.to_string());
        let state = lab.libvirtds[1].virsh(&["domstate", &dom]).unwrap();
        assert_eq!(state.trim(), "running", "{id} on host 2");
        assert!(
            !lab.libvirtds[0].domains().unwrap().contains(&dom),
            "{id} still defined on the drained host"
        );
        uptime_goes_on(&lab, 1, id, up, 0);
    }
}

/// `server migrate NAME --live --host DST --wait`: the completed
/// migration's JSON and the command's wall time.
fn migrate_live_wait(lab: &VmLab, name: &str, dst: &str) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    let out = lab
        .cli
        .run(&["server", "migrate", name, "--live", "--host", dst, "--wait"])
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.success(),
        "migrate {name}: {}{}",
        out.stdout,
        out.stderr
    );
    let m = lab
        .cli
        .json(&["server", "migration", "list", "--server", name])
        .unwrap();
    let last = m
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|m| m["created_at"].as_str().unwrap_or_default().to_string())
        .cloned()
        .unwrap();
    assert_eq!(last["state"], "completed", "{last}");
    (last, took)
}

/// The live migration benchmark (docs/benchmarks.md, "Live migration"):
/// a 128 MiB guest on a local disk (block migration; on an RBD root disk
/// with `NUBO_BENCH_RBD=1`, which starts a Ceph cluster) live-migrated back
/// and forth `NUBO_BENCH_MIGRATIONS` times (default 10) while a guest on
/// host 1 pings it every 10 ms: downtime as QEMU reports it (libvirt's
/// job statistics, `downtime_ms` of the migration) and as the longest ping
/// gap after each move, p50/p99; then the total time of one live
/// migration of a 512 MiB guest and of a live drain of 4 guests. The
/// agents cap migrations at `NUBO_BENCH_MIGRATION_MIBS` MiB/s (default
/// 16, as the other tests; 0: no cap).
///
///   cargo test -p nubo-tests --test migration_vm -- --ignored --exact \
///     live_migration_benchmark --test-threads=1 --nocapture
#[test]
#[ignore = "benchmark: several minutes of TCG guests; run with --ignored"]
fn live_migration_benchmark() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("NUBO_BENCH_MIGRATIONS", 10);
    let cap = env("NUBO_BENCH_MIGRATION_MIBS", 16);
    let extra: Vec<String> = if cap > 0 {
        vec!["--migration-bandwidth".into(), cap.to_string()]
    } else {
        Vec::new()
    };
    let (rbd_lab, local_lab);
    let (lab, disk) = if env("NUBO_BENCH_RBD", 0) == 1 {
        rbd_lab = RbdVmLab::start_with(2, &extra)
            .unwrap()
            .expect("NUBO_BENCH_RBD=1 needs the Ceph packages");
        (&rbd_lab.lab, "RBD root disk")
    } else {
        let mut l = VmLab::start_without_agents(2).unwrap();
        l.start_agents(&extra).unwrap();
        local_lab = l;
        (&local_lab, "local disk, block migration")
    };
    lab.base_objects(128, "10.99.0.0/24").unwrap();
    let hosts = [
        lab.agents[0].node().to_string(),
        lab.agents[1].node().to_string(),
    ];
    let m_id = guests_on_host_1(lab, &["bm"])[0];
    let boot = lab
        .wait_console(&hosts[0], &m_id.to_string(), "NUBO-GUEST-METADATA: ", BOOT)
        .unwrap();
    let m_ip = guest_ip(&boot).unwrap().to_string();
    let (p_id, _) = create(lab, "pinger", 1, &format!("fastping {m_ip}\n"));
    lab.wait_console(
        &hosts[0],
        &p_id.to_string(),
        &format!("NUBO-GUEST-FASTPING {m_ip} seq 300"),
        BOOT,
    )
    .unwrap();
    let load_start = load_average();
    let (mut qemu, mut gaps, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let dst = &hosts[usize::from(i % 2 == 0)];
        let (seq_before, _) = fastping(&lab.agents[0].console(&p_id.to_string()), &m_ip);
        let (m, took) = migrate_live_wait(lab, "bm", dst);
        let downtime = Duration::from_millis(m["downtime_ms"].as_u64().unwrap());
        let gap = gaps_after_migration(lab, &p_id, &m_ip, seq_before)
            .iter()
            .map(|(_, ms)| *ms)
            .max()
            .unwrap_or(10);
        eprintln!(
            "migration {}/{n} to {dst}: {took:?}, QEMU downtime {downtime:?}, longest ping gap {gap} ms; load {}",
            i + 1,
            load_average().trim()
        );
        qemu.push(downtime);
        gaps.push(Duration::from_millis(gap));
        totals.push(took);
    }
    let p = |v: &[Duration], q| nubo_tests::stats::percentile(v, q).as_millis();
    eprintln!(
        "BENCH live migration x{n} (cap {cap} MiB/s, {disk}): QEMU downtime p50 {} ms p99 {} ms; ping gap p50 {} ms p99 {} ms; migration p50 {} ms p99 {} ms; load at start {}, at end {}",
        p(&qemu, 50.0),
        p(&qemu, 99.0),
        p(&gaps, 50.0),
        p(&gaps, 99.0),
        p(&totals, 50.0),
        p(&totals, 99.0),
        load_start.trim(),
        load_average().trim()
    );
    // Back to host 1 and stop both: room for the next part.
    if lab.show("bm").unwrap()["node"] != hosts[0].as_str() {
        migrate_live_wait(lab, "bm", &hosts[0]);
    }
    for s in ["bm", "pinger"] {
        lab.cli.json(&["server", "delete", s, "--wait"]).unwrap();
    }

    // One 512 MiB guest.
    lab.cli
        .json(&[
            "flavor", "create", "t512", "--vcpus", "1", "--ram", "512", "--disk", "1",
        ])
        .unwrap();
    // No zone (a migration stays in its zone; each lab host is its own):
    // host 2 disabled meanwhile.
    let mut args = lab
        .server_create_args(
            "big",
            None,
            Some(MIGRATING_GUEST),
            &["--wait", "--timeout", "300"],
        )
        .unwrap();
    let f = args.iter().position(|a| a == "--flavor").unwrap();
    args[f + 1] = "t512".into();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.cli.json(&["node", "disable", &hosts[1]]).unwrap();
    let big = lab.cli.json(&argv).unwrap();
    lab.cli.json(&["node", "enable", &hosts[1]]).unwrap();
    let big_id = nubo_tests::net_e2e::find_str(&big, "id").unwrap();
    lab.wait_console(&hosts[0], &big_id, "NUBO-GUEST-UPTIME ", BOOT)
        .unwrap();
    let load = load_average();
    let (m, took) = migrate_live_wait(lab, "big", &hosts[1]);
    eprintln!(
        "BENCH live migration of a 512 MiB guest: {took:?} (QEMU downtime {} ms, agent: {}); load before {}",
        m["downtime_ms"],
        m["detail"],
        load.trim()
    );
    lab.cli
        .json(&["server", "delete", "big", "--wait"])
        .unwrap();

    // A live drain of 4 guests.
    let ids = guests_on_host_1(lab, &["d1", "d2", "d3", "d4"]);
    let load = load_average();
    let t = Instant::now();
    let out = lab
        .cli
        .json(&["node", "drain", &hosts[0], "--live"])
        .unwrap();
    let took = t.elapsed();
    let rows = out.as_array().unwrap();
    assert_eq!(rows.len(), ids.len(), "{out}");
    assert!(
        rows.iter().all(|r| r["to_node"] == hosts[1].as_str()),
        "{out}"
    );
    let downtimes: Vec<String> = rows.iter().map(|r| r["downtime_ms"].to_string()).collect();
    eprintln!(
        "BENCH live drain of 4 guests: {took:?} (QEMU downtimes {downtimes:?} ms); load before {}",
        load.trim()
    );
}

/// The `NUBO-GUEST-DISK-MARK SERIAL read|wrote WORD` lines of the test
/// guest's `disk-marks` in `console`, each with the byte offset of its
/// line.
fn disk_marks(console: &str, serial: &str) -> Vec<(usize, bool, String)> {
    let tag = format!("NUBO-GUEST-DISK-MARK {serial} ");
    let mut out = Vec::new();
    let mut at = 0;
    for line in console.split_inclusive('\n') {
        if let Some(rest) = line.find(&tag).map(|i| &line[i + tag.len()..]) {
            let mut w = rest.split_whitespace();
            let op = w.next().unwrap_or_default();
            let word = w.next().unwrap_or_default().to_string();
            if op == "read" || op == "wrote" {
                out.push((at, op == "wrote", word));
            }
        }
        at += line.len();
    }
    out
}

/// Checks that every read of `marks` (after the first write) finds the
/// word written just before it, and that no write failed. Returns the
/// number of reads checked.
fn marks_continue(marks: &[(usize, bool, String)], what: &str) -> usize {
    let mut last: Option<&str> = None;
    let mut checked = 0;
    for (_, wrote, word) in marks {
        if *wrote {
            assert_ne!(word, "fail", "{what}: a write failed: {marks:?}");
            last = Some(word);
        } else if let Some(w) = last {
            assert_eq!(word, w, "{what}: read another word than written: {marks:?}");
            checked += 1;
        }
    }
    checked
}

/// The centiseconds of uptime in a `disk-marks` word (`m<cs>`).
fn mark_cs(word: &str) -> Option<u64> {
    word.strip_prefix('m')?.parse().ok()
}

/// Waits until the guest's `disk-marks` of `serial` on the console
/// `after` (of the host it moved to) read twice and wrote once, and checks
/// them: each read finds the word written just before it there, and the
/// first read, when it comes before the first write there, finds a word
/// written on the host it left (`before`, that host's console read before
/// the move: the word is at least as recent as the last one seen written
/// there). Returns that first cross-host read's word (`None`: the move
/// fell between a read and its write, logged).
fn marks_after_move(
    before: &str,
    after: impl Fn() -> String,
    serial: &str,
    what: &str,
) -> Option<String> {
    let last_before = disk_marks(before, serial)
        .iter()
        .rfind(|m| m.1)
        .and_then(|m| mark_cs(&m.2))
        .unwrap_or_else(|| panic!("{what}: no word written before the move:\n{before}"));
    wait_until(
        Duration::from_secs(90),
        &format!("{what}: the guest uses its volume after the move"),
        || {
            let m = disk_marks(&after(), serial);
            Ok(m.iter().filter(|m| !m.1).count() >= 2 && m.iter().any(|m| m.1))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", after()));
    let marks = disk_marks(&after(), serial);
    assert!(marks_continue(&marks, what) >= 1, "{what}: {marks:?}");
    match marks.first() {
        Some((_, false, word)) => {
            let cs =
                mark_cs(word).unwrap_or_else(|| panic!("{what}: read {word:?} first: {marks:?}"));
            assert!(
                cs >= last_before,
                "{what}: read m{cs}, older than m{last_before} written before the move"
            );
            Some(word.clone())
        }
        _ => {
            eprintln!("{what}: the move fell between a read and its write: {marks:?}");
            None
        }
    }
}

/// The RBD exclusive lock of `image`: (locker, its address) once exactly
/// one client watches the image and it holds the lock.
fn sole_lock_holder(ceph: &nubo_storage::testing::TestCluster, image: &str) -> (String, String) {
    let rbd = |args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        Ok(serde_json::from_str(&ceph.cli("rbd", &a)?)?)
    };
    let mut seen = String::new();
    let mut holder = (String::new(), String::new());
    wait_until(
        Duration::from_secs(90),
        "one RBD watcher holding the lock",
        || {
            let (locks, status) = (rbd(&["lock", "ls", image])?, rbd(&["status", image])?);
            seen = format!("{locks} {status}");
            let watchers = status["watchers"].as_array().cloned().unwrap_or_default();
            let lock = locks.as_array().and_then(|l| l.first()).cloned();
            let (Some(lock), [w]) = (lock, watchers.as_slice()) else {
                return Ok(false);
            };
            holder = (
                lock["locker"].as_str().unwrap_or_default().to_string(),
                lock["address"].as_str().unwrap_or_default().to_string(),
            );
            Ok(w["address"].as_str() == Some(holder.1.as_str()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {seen}"));
    holder
}

/// A guest on an RBD root disk with an attached 1 GiB Ceph volume
/// (`nubo volume attach`) moves with it (issue 16, point 3):
/// - live (`nubo server migrate NAME --live --wait`): the destination's
///   definition carries the volume's disk (same serial, device, PCI
///   address, the destination's libvirt secret); the guest, not rebooted,
///   goes on reading on the destination the word it wrote last on the
///   source and writing new ones (its `disk-marks` loop, on the volume by
///   its serial); it sees no unplug nor plug (its `disk-watch`), the
///   destination's agent neither attaches nor detaches it; `nubo volume
///   show` says in-use, attached to the server; the destination's status
///   reports the volume; the volume's exclusive lock is held by the one
///   client left, another than before, connected from host 2's address
///   (its QEMU: the agents keep no volume open; the source has no domain
///   left);
/// - cold, back (`nubo server migrate NAME --host H1 --wait`): stopped on
///   host 2, started on host 1 with the same IP (its DHCP lease there),
///   MAC, root disk (the marker it wrote on its first boot is found, not
///   written again) and volume (the guest reads the word it wrote last on
///   host 2; the lock held from host 1 again).
#[test]
#[ignore = "starts a Ceph cluster; run with --ignored"]
fn live_then_cold_migration_on_rbd_carries_the_volume() {
    let extra = ["--migration-bandwidth".to_string(), BANDWIDTH_MIB_S.into()];
    let Some(rbd) = RbdVmLab::start_with(2, &extra).unwrap() else {
        return;
    };
    let lab = &rbd.lab;
    let ceph = &rbd.storage.ceph;
    lab.base_objects(128, "10.93.0.0/24").unwrap();
    let (h1, h2) = (
        lab.agents[0].node().to_string(),
        lab.agents[1].node().to_string(),
    );
    let v = lab
        .cli
        .json(&["volume", "create", "data", "--size", "1G"])
        .unwrap();
    let vol: nubo_common::VolumeId = v["id"].as_str().unwrap().parse().unwrap();
    let serial = model::volume_serial(&vol);
    let image = format!("volumes/vol-{vol}");
    lab.cli.json(&["node", "disable", &h2]).unwrap();
    let out = lab
        .create_server(
            "mv",
            None,
            Some(&format!(
                "{MIGRATING_GUEST}disk-watch\ndisk-mark vda nubo-cold-marker\ndisk-marks {serial} 2\n"
            )),
            &["--wait", "--timeout", "300"],
        )
        .unwrap();
    lab.cli.json(&["node", "enable", &h2]).unwrap();
    let id: InstanceId = nubo_tests::net_e2e::find_str(&out, "id")
        .unwrap()
        .parse()
        .unwrap();
    let sid = id.to_string();
    let c1 = lab
        .wait_console(&h1, &sid, "NUBO-GUEST-DISK-WRITE vda ok ", BOOT)
        .unwrap();
    let root_marker = console_value(&c1, "NUBO-GUEST-DISK-WRITE vda ok ").unwrap();
    let ip = guest_ip(&c1).unwrap();
    let dom = lab.domain_name(&sid);
    let mac = mac_of(lab, 0, &dom);

    // Attached while it runs on host 1; the guest reads back what it wrote.
    let a = lab.cli.json(&["volume", "attach", "data", "mv"]).unwrap();
    assert_eq!(a["status"], "in-use", "{a}");
    wait_until(
        Duration::from_secs(120),
        "the guest uses its volume",
        || Ok(marks_continue(&disk_marks(&lab.agents[0].console(&sid), &serial), "host 1") >= 2),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.agents[0].console(&sid)));
    // Each host's QEMU reaches Ceph from the host's namespace: its
    // underlay address names the host (the agents keep no volume open).
    let on_host = |addr: &str, host: usize| addr.starts_with(&format!("{}:", lab.hosts[host].ip()));
    let (locker_before, addr) = sole_lock_holder(ceph, &image);
    assert!(on_host(&addr, 0), "lock held from {addr}, not host 1");

    // Live to host 2.
    // (The source's console log goes with the guest: read it before.)
    let before = lab.agents[0].console(&sid);
    let up_before = uptimes(&before);
    let load = load_average();
    let (migration, took) = migrate_live_wait(lab, "mv", &h2);
    eprintln!("live migration with a volume: {took:?} ({migration}); load before: {load}");
    let shown = lab.show("mv").unwrap();
    assert_eq!(shown["node"], h2.as_str(), "{shown}");
    uptime_goes_on(lab, 1, &id, up_before.last().copied().unwrap_or(0.0), 0);
    assert!(!lab.libvirtds[0].domains().unwrap().contains(&dom));
    // The destination reads what was written and writes on.
    let crossed = marks_after_move(&before, || lab.agents[1].console(&sid), &serial, "live");
    eprintln!("live: host 2 read first {crossed:?}");
    let dst_console = lab.agents[1].console(&sid);
    assert!(
        !dst_console.contains("NUBO-GUEST-DISK-REMOVED")
            && !dst_console.contains("NUBO-GUEST-DISK-ADDED"),
        "the guest saw its disks change:\n{dst_console}"
    );
    let dst_log = lab.agents[1].log();
    assert!(
        !dst_log.contains("volume attached") && !dst_log.contains("volume detach requested"),
        "the destination's agent re-plugged the volume:\n{}",
        nubo_tests::process::tail(&dst_log, 40)
    );
    // Positive control of the agent's log check: it logged the plug on host 1.
    assert!(lab.agents[0].log().contains("volume attached"));
    let shown = lab.cli.json(&["volume", "show", "data"]).unwrap();
    assert_eq!(shown["status"], "in-use", "{shown}");
    assert_eq!(shown["attached_to"], sid.as_str(), "{shown}");
    wait_until(Duration::from_secs(30), "host 2 reports the volume", || {
        let st = lab
            .etcd
            .get(&keys::instance_status(&NodeName::new(&h2).unwrap(), &id))?;
        Ok(st
            .and_then(|b| serde_json::from_slice::<model::InstanceStatus>(&b).ok())
            .is_some_and(|s| s.volumes == vec![vol]))
    })
    .unwrap();
    let (locker_after, addr) = sole_lock_holder(ceph, &image);
    assert_ne!(locker_after, locker_before, "the lock did not change hands");
    assert!(on_host(&addr, 1), "lock held from {addr}, not host 2");
    eprintln!(
        "exclusive lock of {image}: {locker_before} on host 1, then {locker_after} ({addr}), host 2's QEMU pid {:?}",
        lab.libvirtds[1].qemu_pid(&dom)
    );

    // Cold, back to host 1.
    let before = lab.agents[1].console(&sid);
    let t = Instant::now();
    let out = lab
        .cli
        .run(&["server", "migrate", "mv", "--host", &h1, "--wait"])
        .unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let shown = lab.show("mv").unwrap();
    assert_eq!(shown["node"], h1.as_str(), "{shown}");
    let last_boot = || {
        let c = lab.agents[0].console(&sid);
        let at = c.rfind("NUBO-GUEST: init").unwrap_or(c.len());
        c[at..].to_string()
    };
    wait_until(
        BOOT,
        "the guest booted on host 1 and read its root disk",
        || Ok(last_boot().contains("NUBO-GUEST-DISK-READ vda ")),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", last_boot()));
    let crossed = marks_after_move(&before, last_boot, &serial, "cold");
    assert!(crossed.is_some(), "a booted guest reads first");
    eprintln!(
        "cold migration: {:?} until the guest used its disks on host 1",
        t.elapsed()
    );
    let c = last_boot();
    assert_eq!(
        console_value(&c, "NUBO-GUEST-DISK-READ vda ").as_deref(),
        Some(root_marker.as_str()),
        "the same root disk:\n{c}"
    );
    assert!(
        !c.contains("NUBO-GUEST-DISK-WRITE"),
        "marker written again:\n{c}"
    );
    assert_eq!(guest_ip(&c), Some(ip), "same IP:\n{c}");
    assert_eq!(mac_of(lab, 0, &dom), mac);
    assert!(!lab.libvirtds[1].domains().unwrap().contains(&dom));
    let shown = lab.cli.json(&["volume", "show", "data"]).unwrap();
    assert_eq!(shown["attached_to"], sid.as_str(), "{shown}");
    let (locker_back, addr) = sole_lock_holder(ceph, &image);
    assert_ne!(locker_back, locker_after);
    assert!(on_host(&addr, 0), "lock held from {addr}, not host 1");
    let m = lab
        .cli
        .json(&["server", "migration", "list", "--server", "mv"])
        .unwrap();
    assert!(m.to_string().contains("\"mode\":\"cold\""), "{m}");
}

/// The external network of the floating IP tests (flat on physnet1): the
/// upstream router, the external host.
const EXT_CIDR: &str = "10.98.0.0/24";
const EXT_UPSTREAM: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 98, 0, 1);
const EXT_HOST: &str = "10.98.0.200/24";

/// The physical network of the routing lab (`nubo_tests::wire`) for the
/// hosts of `lab`: a switch, the upstream router, an "external host"
/// namespace; returns it, the external host's namespace and the agents'
/// `--physnet physnet1=…`.
fn fip_wire(lab: &VmLab) -> (Wire, String, Vec<String>) {
    let p = lab.underlay.name_prefix();
    let namespaces: Vec<&str> = lab.hosts.iter().map(|h| h.netns()).collect();
    let mut wire = Wire::for_hosts(&p, &namespaces, None, &format!("{EXT_UPSTREAM}/24")).unwrap();
    let ext_host = wire.add_external_host(1, EXT_HOST, EXT_UPSTREAM).unwrap();
    let args = vec![
        "--physnet".into(),
        format!("physnet1={}", Wire::host_link(&p)),
    ];
    (wire, ext_host, args)
}

/// The longest silence of the floating IP path that still counts as
/// steady: the TCG guest answers late now and then (silences of up to
/// ~300 ms seen over 2 s at load 5), a lost path stays silent.
const STEADY: f64 = 0.5;

/// A server with a floating IP, pinged from outside every 10 ms.
struct FipServer<'a> {
    lab: &'a VmLab,
    id: String,
    ip: std::net::Ipv4Addr,
    ext_host: String,
    prober: Prober,
    nodes: [String; 2],
}

impl<'a> FipServer<'a> {
    /// The external network `ext`, n1 (`cidr`) behind router r1, security
    /// group `icmp` and server `fip` on host 1 (the guest of the other
    /// migration tests: uptime, tlb-churn) with a floating IP of ext; once
    /// it answers through host 1's router copy, steadily for 2 s.
    fn start(lab: &'a VmLab, ext_host: String, cidr: &str) -> Self {
        lab.base_objects(128, cidr).unwrap();
        let nodes = [
            lab.agents[0].node().to_string(),
            lab.agents[1].node().to_string(),
        ];
        let cli = &lab.cli;
        nubo_tests::wire::create_flat_external(cli, EXT_CIDR, EXT_UPSTREAM).unwrap();
        cli.json(&["router", "create", "r1", "--external-gateway", "ext"])
            .unwrap();
        cli.json(&["router", "add", "subnet", "r1", "n1"]).unwrap();
        lab.icmp_security_group("0.0.0.0/0").unwrap();
        // No zone (a migration stays in the requested zone): placed on
        // host 1 by disabling host 2 meanwhile.
        cli.json(&["node", "disable", &nodes[1]]).unwrap();
        let out = lab
            .create_server(
                "fip",
                None,
                Some(MIGRATING_GUEST),
                &["--security-group", "icmp", "--wait", "--timeout", "240"],
            )
            .unwrap();
        cli.json(&["node", "enable", &nodes[1]]).unwrap();
        let id = nubo_tests::net_e2e::find_str(&out, "id").unwrap();
        assert_eq!(lab.show(&id).unwrap()["node"], nodes[0].as_str());
        let fip = cli.json(&["floating", "ip", "create", "ext"]).unwrap();
        let ip: std::net::Ipv4Addr = fip["address"].as_str().unwrap().parse().unwrap();
        cli.json(&[
            "floating",
            "ip",
            "set",
            fip["id"].as_str().unwrap(),
            "--server",
            "fip",
        ])
        .unwrap();
        let prober = Prober::start(&ext_host, ip, 10).unwrap();
        let s = FipServer {
            lab,
            id,
            ip,
            ext_host,
            prober,
            nodes,
        };
        // The guest booted, leased its address and default route (the
        // router), and answers its floating IP through host 1's router.
        s.answers_after("the floating IP answers on host 1", unix_now(), BOOT);
        s.answered_by(0);
        let steady = s.steady("before the first move");
        eprintln!(
            "floating IP {ip}: longest silence over 2 s before any move {:.0} ms",
            steady * 1000.0
        );
        s
    }

    /// Waits for an answer timestamped after `since`.
    fn answers_after(&self, what: &str, since: f64, timeout: Duration) -> f64 {
        wait_for_answer(&self.prober, since, timeout).unwrap_or_else(|e| {
            panic!(
                "{what}: {e}\nprober:\n{}\n{}",
                runs(&self.prober.lines()),
                self.lab.network_diagnostics()
            )
        })
    }

    /// Asserts the external host's ARP entry for the floating IP holds the
    /// MAC of host `idx`'s (0-based) router's external leg.
    fn answered_by(&self, idx: usize) {
        let prefix = nubo_tests::agent::lab_router_prefix(&self.lab.hosts[idx]);
        let leg = nubo_tests::wire::external_leg_mac(&prefix).unwrap();
        let out = nubo_tests::netns::netns_exec(
            &self.ext_host,
            "ip",
            &["neigh", "show", &self.ip.to_string()],
        )
        .unwrap();
        let neigh = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            neigh.contains(&format!("lladdr {leg}")),
            "the external host's ARP entry for {}: {neigh} (host {}'s router leg: {leg})",
            self.ip,
            idx + 1
        );
    }

    /// Waits until 2 s of probes went without a silence of [`STEADY`]; returns
    /// the longest silence of those 2 s.
    fn steady(&self, what: &str) -> f64 {
        let mut longest = f64::NAN;
        wait_until(
            Duration::from_secs(60),
            &format!("2 s of steady answers {what}"),
            || {
                let now = unix_now();
                longest =
                    longest_silence(&self.prober.lines(), now - 2.0, now).unwrap_or(f64::INFINITY);
                Ok(longest < STEADY)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", runs(&self.prober.lines())));
        longest
    }

    /// `server migrate fip --live --host <host idx> --wait`: the guest
    /// keeps running (no new init on the destination's console), the
    /// floating IP answers again through the destination's router and
    /// stays so (2 s without a silence of [`STEADY`]). Returns the longest
    /// silence of the floating IP path from the command to the first
    /// answer after it (seconds) and QEMU's downtime (ms).
    fn live_to(&self, idx: usize) -> (f64, serde_json::Value) {
        let load = load_average();
        let t0 = unix_now();
        let (migration, took) = migrate_live_wait(self.lab, "fip", &self.nodes[idx]);
        let done = unix_now();
        let back = self.answers_after(
            "the floating IP answers after the live migration",
            done,
            Duration::from_secs(60),
        );
        self.answered_by(idx);
        assert!(
            !self.lab.agents[idx]
                .console(&self.id)
                .contains("NUBO-GUEST: init"),
            "the guest rebooted on the destination"
        );
        let after = self.steady("after the live migration");
        let lost = longest_silence(&self.prober.lines(), t0, back).unwrap();
        eprintln!(
            "floating IP {} live to host {}: longest silence {:.0} ms (after it {:.0} ms), QEMU downtime {} ms, migration {took:?}; load before: {load}",
            self.ip,
            idx + 1,
            lost * 1000.0,
            after * 1000.0,
            migration["downtime_ms"]
        );
        (lost, migration["downtime_ms"].clone())
    }

    /// `server migrate fip --host <host idx> --wait` (cold): the guest
    /// boots there and the floating IP answers through its router.
    fn cold_to(&self, idx: usize) {
        let t0 = unix_now();
        let out = self
            .lab
            .cli
            .run(&[
                "server",
                "migrate",
                "fip",
                "--host",
                &self.nodes[idx],
                "--wait",
            ])
            .unwrap();
        assert!(out.success(), "cold migrate: {}{}", out.stdout, out.stderr);
        assert_eq!(
            self.lab.show(&self.id).unwrap()["node"],
            self.nodes[idx].as_str()
        );
        let back = self.answers_after(
            "the floating IP answers after the cold migration",
            unix_now(),
            BOOT,
        );
        self.answered_by(idx);
        self.steady("after the cold migration");
        eprintln!(
            "floating IP {} cold to host {}: answered {:.1} s after the command",
            self.ip,
            idx + 1,
            back - t0
        );
    }
}

/// The first answer of `prober` after `since`, waited for.
fn wait_for_answer(prober: &Prober, since: f64, timeout: Duration) -> anyhow::Result<f64> {
    nubo_tests::wait_for(timeout, "an answer", || {
        Ok(prober.first_answer_after(since).ok_or("none yet"))
    })
}

/// The floating IP follows its server through live migrations (issue 16
/// "floating IPs follow", issue 15): a TCG guest on a local disk, on n1
/// behind router r1 (its default route via the router, from DHCP), with a
/// floating IP of the external network `ext` (flat on physnet1: the
/// routing lab's wire, its upstream router and an "external host"
/// namespace). The external host pings the floating IP every 10 ms
/// throughout. `server migrate --live --wait` to host 2 and back: each
/// time the answers come back through the destination's router copy (the
/// external host's ARP entry for the floating IP holds that host's
/// external leg's MAC: the gratuitous ARP of the arriving floating IP), the
/// reply path included (the guest's default route, the router's neighbour
/// entry for the guest's MAC), without a reboot, and stay steady; the
/// longest silence of the floating IP path is printed with QEMU's
/// downtime and the load average (docs/benchmarks.md, "Floating IP
/// during a live migration").
#[test]
fn a_floating_ip_follows_live_migrations() {
    let mut lab = VmLab::start_without_agents(2).unwrap();
    let (_wire, ext_host, mut args) = fip_wire(&lab);
    args.extend(["--migration-bandwidth".into(), BANDWIDTH_MIB_S.into()]);
    lab.start_agents(&args).unwrap();
    let s = FipServer::start(&lab, ext_host, "10.97.0.0/24");
    s.live_to(1);
    s.live_to(0);
}

/// [`a_floating_ip_follows_live_migrations`] on an RBD root disk, then a
/// cold migration (which needs shared storage): the guest boots on the
/// other host and its floating IP answers there.
#[test]
#[ignore = "starts a Ceph cluster; run with --ignored"]
fn a_floating_ip_follows_live_and_cold_migrations_on_rbd() {
    let mut wired = None;
    let Some(rbd) = RbdVmLab::start_then(2, |lab| {
        let (wire, ext_host, mut args) = fip_wire(lab);
        wired = Some((wire, ext_host));
        args.extend(["--migration-bandwidth".into(), BANDWIDTH_MIB_S.into()]);
        Ok(args)
    })
    .unwrap() else {
        return;
    };
    let (_wire, ext_host) = wired.unwrap();
    let s = FipServer::start(&rbd.lab, ext_host, "10.99.0.0/24");
    s.live_to(1);
    s.cold_to(0);
}
