//! A hostile guest cannot starve its neighbours of DHCP or metadata: it
//! floods DHCP DISCOVERs (its own MAC and random ones, as fast as one
//! thread sends raw frames) and opens connections to the metadata service
//! as fast as it can (holding hundreds), while two neighbours on its
//! network — one on its host, one on another host — lease and fetch
//! metadata every second with short client timeouts. Real agents
//! (`--driver netns`), etcd, nftables, busybox `udhcpc`, `curl`, `tcpdump`.
//! Needs root, `cargo build --bins` first.
//!
//! Budget of the flooded host's agent during the flood (stated here, checked
//! below): at most half a core of CPU time and 256 MiB resident.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nubo_tests::flood::{clock_ticks, dhcp_flood, metadata_flood, process_usage};
use nubo_tests::net_e2e::{Capture, Guest, NetLab};
use nubo_tests::wait::wait_for;

/// Seconds of flood; the neighbours make one lease and one fetch per second.
const FLOOD_SECS: u32 = 10;
/// CPU budget of the agent during the flood, in cores.
const CPU_BUDGET_CORES: f64 = 0.5;
/// Memory budget of the agent, resident KiB.
const RSS_BUDGET_KIB: u64 = 256 * 1024;
/// Log lines the agent may write during the flood (its summaries are one
/// line per 10 s per kind; everything else is reconcile passes).
const LOG_BUDGET_LINES: usize = 60;

/// One lease with busybox udhcpc: one DISCOVER, one REQUEST, each answered
/// within 1 s (`-t 1 -T 1`), else it fails.
fn lease_within_1s(lab: &NetLab, g: &Guest) -> Result<(), String> {
    let script = lab.udhcpc_script().display().to_string();
    let out = g
        .exec(
            "busybox",
            &[
                "udhcpc", "-i", "eth0", "-n", "-q", "-t", "1", "-T", "1", "-s", &script,
            ],
        )
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && text.contains(&format!("lease ip={}", g.ip)) {
        Ok(())
    } else {
        Err(format!("udhcpc: {text}"))
    }
}

/// The instance id from the metadata service within 500 ms.
fn metadata_within_500ms(g: &Guest) -> Result<(), String> {
    let out = g
        .exec(
            "curl",
            &[
                "-sS",
                "-f",
                "--max-time",
                "0.5",
                "http://169.254.169.254/latest/meta-data/instance-id",
            ],
        )
        .map_err(|e| e.to_string())?;
    let body = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && body.trim() == g.id {
        Ok(())
    } else {
        Err(format!(
            "curl ({}): {body}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Two hosts, network n1; `bad` and `near` on hv-1, `far` on hv-2, each
/// leased and served metadata once.
fn setup() -> (NetLab, Guest, Guest, Guest) {
    let lab = NetLab::start(2).unwrap();
    lab.base_objects().unwrap();
    lab.cli
        .json(&["network", "create", "n1", "--cidr", "10.77.9.0/24"])
        .unwrap();
    let bad = lab.server("bad", "n1", 1, &[]).unwrap();
    let near = lab.server("near", "n1", 1, &[]).unwrap();
    let far = lab.server("far", "n1", 2, &[]).unwrap();
    assert_eq!(
        (bad.node.as_str(), near.node.as_str(), far.node.as_str()),
        ("hv-1", "hv-1", "hv-2")
    );
    for g in [&bad, &near, &far] {
        lab.wait_wired(g).unwrap();
        g.udhcpc(&lab.udhcpc_script()).unwrap();
        assert_eq!(
            g.metadata("/latest/meta-data/instance-id", &[])
                .unwrap()
                .trim(),
            g.id
        );
    }
    (lab, bad, near, far)
}

#[test]
fn a_flooding_guest_cannot_starve_its_neighbours() {
    let (lab, bad, near, far) = setup();
    // Positive control of the per-exchange checks: unloaded, they pass.
    lease_within_1s(&lab, &near).unwrap();
    metadata_within_500ms(&near).unwrap();

    let agent = &lab.agents[0];
    let pid = agent.pid().expect("agent 1 runs");
    let capture = Capture::start(&near.netns, "-vv udp src port 67").unwrap();
    let log_before = agent.log().lines().count();
    let (cpu_before, _) = process_usage(pid).unwrap();
    let bad_mac = bad.mac.parse().unwrap();
    let dhcp = dhcp_flood(&bad.netns, "eth0", bad_mac).unwrap();
    let meta = metadata_flood(&bad.netns, 600).unwrap();
    let started = Instant::now();

    // The neighbours, each in its own thread, once a second.
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let rounds = std::thread::scope(|s| {
        let handles: Vec<_> = [&near, &far]
            .into_iter()
            .map(|g| {
                let failures = Arc::clone(&failures);
                let lab = &lab;
                s.spawn(move || {
                    let mut rounds = 0;
                    for i in 0..FLOOD_SECS {
                        let tick = started + Duration::from_secs(u64::from(i));
                        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let t = started.elapsed().as_secs_f64();
                        if let Err(e) = lease_within_1s(lab, g) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} lease at {t:.1}s: {e}", g.name));
                        }
                        if let Err(e) = metadata_within_500ms(g) {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} metadata at {t:.1}s: {e}", g.name));
                        }
                        rounds += 1;
                    }
                    rounds
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<u32>>()
    });
    let flood_secs = started.elapsed().as_secs_f64();
    let dhcp_report = dhcp.stop().unwrap();
    let meta_report = meta.stop().unwrap();
    let (cpu_after, rss_kib) = process_usage(pid).unwrap();
    let cpu_cores = (cpu_after - cpu_before) as f64 / clock_ticks() as f64 / flood_secs;
    eprintln!(
        "flood of {flood_secs:.1} s: DHCP {dhcp_report:?}, metadata {meta_report:?}; \
         agent CPU {cpu_cores:.3} cores, RSS {rss_kib} KiB; neighbour rounds {rounds:?}"
    );

    // The flood was one: a guest that could not flood proves nothing.
    assert!(
        dhcp_report.own > 10_000 && dhcp_report.random > 10_000,
        "{dhcp_report:?}"
    );
    assert!(
        meta_report.attempted > 500 && meta_report.established > 0,
        "{meta_report:?}"
    );
    // Every lease and every fetch of both neighbours succeeded.
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(rounds, vec![FLOOD_SECS, FLOOD_SECS]);

    // What was limited is counted per port: the agent's summary names the
    // flooding guest's port (within one report interval).
    let summary = wait_for(
        Duration::from_secs(15),
        "the agent's limit summary naming the flooding port, and the metadata refusals",
        || {
            let log = agent.log();
            let after: Vec<&str> = log.lines().skip(log_before).collect();
            let metadata = after.iter().any(|l| l.contains("metadata clients refused"));
            Ok(after
                .iter()
                .find(|l| l.contains("guest rate limits dropped traffic") && l.contains(&bad.port))
                .filter(|_| metadata)
                .map(|l| l.to_string())
                .ok_or("not yet"))
        },
    );
    let summary = summary.unwrap();
    assert!(summary.contains("dhcp="), "{summary}");

    // The agent stayed within its budget and its log bounded.
    assert!(
        cpu_cores <= CPU_BUDGET_CORES,
        "agent used {cpu_cores:.2} cores during the flood"
    );
    assert!(rss_kib <= RSS_BUDGET_KIB, "agent RSS {rss_kib} KiB");
    let log = agent.log();
    let during: Vec<&str> = log.lines().skip(log_before).collect();
    eprintln!(
        "agent log during the flood ({} lines):\n{}",
        during.len(),
        during.join("\n")
    );
    // The metadata flood reached the service with hundreds of connections
    // (the ones over its per-client cap are counted there), which refused
    // them.
    let refused: u64 = during
        .iter()
        .filter(|l| l.contains("metadata clients refused"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("connections_over_client_cap="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    assert!(
        refused >= 100,
        "only {refused} connections refused over the client cap:\n{}",
        during.join("\n")
    );
    assert!(
        during.len() <= LOG_BUDGET_LINES,
        "{} log lines during the flood:\n{}",
        during.len(),
        during.join("\n")
    );
    assert!(
        !during.iter().any(|l| l.contains("netlink_proto")),
        "netlink warnings:\n{}",
        during.join("\n")
    );

    // No reply meant for the flooding guest reached the neighbour, which
    // did capture its own replies (positive control).
    let frames = capture.stop();
    let text = frames.join("\n");
    let own = format!("Client-Ethernet-Address {}", near.mac);
    let foreign = format!("Client-Ethernet-Address {}", bad.mac);
    assert!(
        text.contains(&own),
        "the capture missed the neighbour's own replies:\n{text}"
    );
    assert!(
        !text.contains(&foreign),
        "replies to the flooding guest reached its neighbour:\n{text}"
    );

    // After the flood the flooding guest leases again.
    bad.udhcpc(&lab.udhcpc_script()).unwrap();
    assert_eq!(
        bad.metadata("/latest/meta-data/instance-id", &[])
            .unwrap()
            .trim(),
        bad.id
    );
}

/// A lease (busybox udhcpc, wall time of the whole run: process start,
/// DISCOVER/OFFER/REQUEST/ACK, the script configuring the address; about
/// 90 ms of it is udhcpc itself, whatever the server) and a metadata fetch
/// (curl's `time_total`) of a neighbour every 400 ms (4 DHCP packets a
/// second, under its own per-port limit of 10), for `secs` seconds;
/// failures counted.
fn neighbour_samples(lab: &NetLab, g: &Guest, secs: u64) -> (Vec<f64>, Vec<f64>, usize) {
    let (mut leases, mut fetches, mut failed) = (Vec::new(), Vec::new(), 0);
    let script = lab.udhcpc_script().display().to_string();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut next = start;
    while Instant::now() < end {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += Duration::from_millis(400);
        let t = Instant::now();
        let out = g
            .exec(
                "busybox",
                &[
                    "udhcpc", "-i", "eth0", "-n", "-q", "-t", "1", "-T", "1", "-s", &script,
                ],
            )
            .unwrap();
        if out.status.success() {
            leases.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            failed += 1;
        }
        let out = g
            .exec(
                "curl",
                &[
                    "-sS",
                    "-f",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{time_total}",
                    "--max-time",
                    "2",
                    "http://169.254.169.254/latest/meta-data/instance-id",
                ],
            )
            .unwrap();
        match String::from_utf8_lossy(&out.stdout).trim().parse::<f64>() {
            Ok(s) if out.status.success() => fetches.push(s * 1000.0),
            _ => failed += 1,
        }
    }
    (leases, fetches, failed)
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// The neighbours' lease and metadata latency, p50/p99, unloaded then
/// during a 15 s flood (same lab, same run), and the agent's CPU.
/// `cargo build --release --bins && NUBO_BIN_DIR=target/release cargo test
/// -p nubo-tests --release --test noisy_neighbours -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_neighbour_latency_under_flood() {
    let (lab, bad, near, far) = setup();
    let pid = lab.agents[0].pid().expect("agent 1 runs");
    let report = |what: &str, g: &Guest, (mut l, mut m, failed): (Vec<f64>, Vec<f64>, usize)| {
        eprintln!(
            "BENCH: {what} {}: {} leases p50 {:.1} ms p99 {:.1} ms; {} metadata fetches p50 {:.1} ms p99 {:.1} ms; {failed} failed",
            g.name,
            l.len(),
            p(&mut l, 0.5),
            p(&mut l, 0.99),
            m.len(),
            p(&mut m, 0.5),
            p(&mut m, 0.99),
        );
    };
    let (quiet_near, quiet_far) = std::thread::scope(|s| {
        let a = s.spawn(|| neighbour_samples(&lab, &near, 10));
        let b = s.spawn(|| neighbour_samples(&lab, &far, 10));
        (a.join().unwrap(), b.join().unwrap())
    });
    report("unloaded", &near, quiet_near);
    report("unloaded", &far, quiet_far);
    let (cpu0, _) = process_usage(pid).unwrap();
    let t0 = Instant::now();
    let dhcp = dhcp_flood(&bad.netns, "eth0", bad.mac.parse().unwrap()).unwrap();
    let meta = metadata_flood(&bad.netns, 600).unwrap();
    let (loud_near, loud_far) = std::thread::scope(|s| {
        let a = s.spawn(|| neighbour_samples(&lab, &near, 15));
        let b = s.spawn(|| neighbour_samples(&lab, &far, 15));
        (a.join().unwrap(), b.join().unwrap())
    });
    let secs = t0.elapsed().as_secs_f64();
    let (d, m) = (dhcp.stop().unwrap(), meta.stop().unwrap());
    let (cpu1, rss) = process_usage(pid).unwrap();
    report("under flood", &near, loud_near);
    report("under flood", &far, loud_far);
    eprintln!(
        "BENCH: flood {secs:.1} s: DHCP {d:?} ({:.0} frames/s), metadata {m:?}; agent CPU {:.3} cores, RSS {rss} KiB",
        (d.own + d.random) as f64 / secs,
        (cpu1 - cpu0) as f64 / clock_ticks() as f64 / secs
    );
}
