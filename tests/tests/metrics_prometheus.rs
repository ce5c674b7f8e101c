//! Issue 18's acceptance: a real Prometheus (Debian's package) started by
//! the test scrapes a 2-host cluster running real VMs (libvirt, TCG guests)
//! with the shipped rules of `monitoring/` loaded as they are (only the
//! scrape and evaluation intervals are the test's: 1 s). PromQL shows a
//! VM's CPU seconds rising, its network bytes growing under a ping flood
//! from the other host's VM, each node's reconcile lag; breaking the DHCP
//! responder of one node fires `NuboDhcpNotAnswering` for that node (not
//! the other) within the rule's `for`; scrapes while libvirtd is stopped
//! answer at once with the VM's last values marked stale; a deleted VM's
//! series disappear while the other VM's stay.
//!
//! Needs root, libvirt/QEMU and the test guest; `cargo build --bins` first.
//! About 1.5 min (the DHCP alert's `for` is 1 min; the rest overlaps it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nubo_tests::prometheus::{monitoring_dir, Job, Prometheus, PrometheusOpts};
use nubo_tests::vm_e2e::VmLab;
use nubo_tests::{wait_for, wait_until};

const AGENT_METRICS_PORT: u16 = 9101;
/// The shipped rule's `for` (monitoring/nubo-rules.yml, NuboDhcpNotAnswering).
const DHCP_ALERT_FOR: Duration = Duration::from_secs(60);
/// Probe interval given to the agents.
const PROBE_EVERY_SECS: u64 = 2;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn value(prom: &Prometheus, q: &str) -> Option<f64> {
    match prom.query(q).unwrap().as_slice() {
        [s] => Some(s.value),
        [] => None,
        many => panic!("{q}: several samples {many:?}"),
    }
}

/// Waits until `q` has one sample satisfying `ok`; returns it.
fn wait_sample(prom: &Prometheus, q: &str, timeout: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    wait_for(timeout, q, || {
        Ok(match value(prom, q) {
            Some(v) if ok(v) => Ok(v),
            other => Err(other),
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\nprometheus:\n{}", prom.log_tail()))
}

fn create(lab: &VmLab, name: &str, host: u8, user_data: &str) -> (String, String, String) {
    let out = lab
        .create_server(
            name,
            Some(host),
            Some(user_data),
            &["--security-group", "icmp", "--wait", "--timeout", "240"],
        )
        .unwrap();
    let id = nubo_tests::net_e2e::find_str(&out, "id").unwrap();
    let show = lab.show(&id).unwrap();
    let node = show["node"].as_str().unwrap().to_string();
    let ip = show["addresses"][0]["ip"].as_str().unwrap().to_string();
    (id, node, ip)
}

#[test]
fn prometheus_scrapes_a_two_host_cluster_with_vms_and_the_dhcp_alert_fires() {
    let t0 = Instant::now();
    let coord_port = nubo_tests::ports::free_port();
    let mut lab = VmLab::start_without_agents_with(2, |u, _| {
        Ok(vec![
            "--metrics-listen".into(),
            format!("{}:{coord_port}", u.gateway()),
        ])
    })
    .unwrap();
    // Each agent in its own host namespace: the same port on every host.
    lab.start_agents(&[
        "--metrics-listen".into(),
        format!("0.0.0.0:{AGENT_METRICS_PORT}"),
        "--usage-interval-ms".into(),
        "1000".into(),
        "--probe-interval-secs".into(),
        PROBE_EVERY_SECS.to_string(),
    ])
    .unwrap();
    let cidr = "10.92.0.0/24";
    lab.base_objects(128, cidr).unwrap();
    lab.icmp_security_group(cidr).unwrap();

    let agent_targets: Vec<String> = lab
        .hosts
        .iter()
        .map(|h| format!("{}:{AGENT_METRICS_PORT}", h.ip()))
        .collect();
    let prom = Prometheus::start(PrometheusOpts {
        rule_files: vec![monitoring_dir().join("nubo-rules.yml")],
        jobs: vec![
            Job {
                honor_labels: true,
                ..Job::plain("nubo-agent", agent_targets.clone())
            },
            Job::plain(
                "nubo-coordinator",
                vec![format!("{}:{coord_port}", lab.underlay.gateway())],
            ),
        ],
        ..Default::default()
    })
    .unwrap();
    wait_sample(
        &prom,
        r#"sum(up{job="nubo-agent"})"#,
        Duration::from_secs(30),
        |v| v == 2.0,
    );
    wait_sample(
        &prom,
        r#"up{job="nubo-coordinator"}"#,
        Duration::from_secs(30),
        |v| v == 1.0,
    );

    // VM a on host 1.
    let (a, node_a, a_ip) = create(&lab, "vm-a", 1, "uptime\n");
    // Its lease and metadata first: node a's DHCP is broken below.
    lab.wait_console(
        &node_a,
        &a,
        &format!("NUBO-GUEST-METADATA: {a}"),
        Duration::from_secs(120),
    )
    .unwrap();
    eprintln!("vm-a {a} on {node_a} ({a_ip}) up after {:?}", t0.elapsed());
    let cpu_a = format!(r#"nubo_vm_cpu_seconds_total{{instance="{a}"}}"#);
    let first = wait_sample(&prom, &cpu_a, Duration::from_secs(30), |v| v > 0.0);
    let rx_a = format!(r#"sum(nubo_vm_network_receive_bytes_total{{instance="{a}"}})"#);
    let rx_before = wait_sample(&prom, &rx_a, Duration::from_secs(30), |_| true);

    // The DHCP responder of node a stops answering (what m-node's probe
    // must catch): its probe goes to 0, and only its.
    wait_sample(
        &prom,
        &format!(r#"min(nubo_agent_probe_success{{check="dhcp",node="{node_a}"}})"#),
        Duration::from_secs(30),
        |v| v == 1.0,
    );
    let broke_at = unix_now();
    let h1 = &lab.hosts[0];
    for args in [
        &["add", "table", "inet", "nbtbreak"][..],
        &[
            "add",
            "chain",
            "inet",
            "nbtbreak",
            "in",
            "{ type filter hook input priority -300; }",
        ],
        &[
            "add", "rule", "inet", "nbtbreak", "in", "udp", "dport", "67", "drop",
        ],
    ] {
        let o = h1.exec("nft", args).unwrap();
        assert!(
            o.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // VM b on host 2 floods a with pings (every 10 ms).
    let (b, node_b, _) = create(&lab, "vm-b", 2, &format!("fastping {a_ip}\n"));
    assert_ne!(node_a, node_b);
    let flood = format!("NUBO-GUEST-FASTPING {a_ip} seq 200");
    if let Err(e) = lab.wait_console(&node_b, &b, &flood, Duration::from_secs(120)) {
        panic!(
            "{e:#}\nvm-a's console:\n{}\n{}",
            lab.agents[0].console(&a),
            lab.network_diagnostics()
        );
    }
    // 200 echo requests of 98 bytes on the wire (ICMP 64 + IP 20 + Ethernet 14).
    let rx_after = wait_sample(&prom, &rx_a, Duration::from_secs(30), |v| {
        v >= rx_before + 200.0 * 98.0
    });
    eprintln!(
        "vm-a received {} bytes during the flood",
        rx_after - rx_before
    );
    let later = wait_sample(&prom, &cpu_a, Duration::from_secs(30), |v| v > first);
    eprintln!("vm-a CPU seconds {first} -> {later}");
    let rate = value(&prom, &format!("rate({cpu_a}[20s])")).unwrap();
    assert!(rate > 0.0, "CPU seconds not rising: rate {rate}");

    // Each node's reconcile lag.
    for node in [&node_a, &node_b] {
        wait_sample(
            &prom,
            &format!(r#"sum(nubo_agent_reconcile_lag_seconds_count{{node="{node}"}})"#),
            Duration::from_secs(30),
            |v| v > 0.0,
        );
        let p99 = value(
            &prom,
            &format!(
                r#"histogram_quantile(0.99, sum by (le) (nubo_agent_reconcile_lag_seconds_bucket{{node="{node}"}}))"#
            ),
        )
        .unwrap();
        eprintln!("{node}: reconcile lag p99 {p99} s (since start)");
    }

    // A scrape during a libvirtd outage (stopped, then started again)
    // answers at once, with vm-a's last values marked stale
    // (`nubo_vm_stats_up 0`, and `nubo_vm_stats_age_seconds` growing).
    let url = format!("http://{}/metrics", agent_targets[0]);
    let up_line = format!(r#"nubo_vm_stats_up{{node="{node_a}"}}"#);
    let a_series = format!(r#"instance="{a}""#);
    let scrape = || {
        let t = Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-sS", "-f", "--max-time", "10", &url])
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(
            out.status.success(),
            "scrape failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(body.contains(&a_series), "vm-a's series missing:\n{body}");
        (body, took)
    };
    let (before, _) = scrape();
    assert!(before.contains(&format!("{up_line} 1")), "{before}");
    let mut worst = Duration::ZERO;
    let mut scrapes = 0;
    lab.libvirtds[0].stop().unwrap();
    let stale = wait_for(
        Duration::from_secs(20),
        "the stale marker during the outage",
        || {
            let (body, took) = scrape();
            worst = worst.max(took);
            scrapes += 1;
            Ok(if body.contains(&format!("{up_line} 0")) {
                Ok(body)
            } else {
                Err(took)
            })
        },
    )
    .unwrap();
    assert!(
        stale.contains(&format!(r#"nubo_vm_stats_age_seconds{{node="{node_a}"}}"#)),
        "{stale}"
    );
    lab.libvirtds[0]
        .start_again_in(lab.hosts[0].netns())
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "fresh statistics after the outage",
        || {
            let (body, took) = scrape();
            worst = worst.max(took);
            scrapes += 1;
            Ok(body.contains(&format!("{up_line} 1")))
        },
    )
    .unwrap();
    eprintln!("{scrapes} scrapes during the libvirtd outage, slowest {worst:?}");
    assert!(worst < Duration::from_secs(5), "a scrape waited {worst:?}");

    // The DHCP alert: pending once the probe reported 0, firing after its
    // `for`, for node a only.
    let labels_a = [("check", "dhcp"), ("node", node_a.as_str())];
    let deadline = DHCP_ALERT_FOR + Duration::from_secs(45);
    wait_until(deadline, "NuboDhcpNotAnswering firing for node a", || {
        Ok(prom
            .alert_state("NuboDhcpNotAnswering", &labels_a)?
            .as_deref()
            == Some("firing"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nalerts: {:?}", prom.alerts()));
    let active_at = value(
        &prom,
        &format!(r#"max(ALERTS_FOR_STATE{{alertname="NuboDhcpNotAnswering",node="{node_a}"}})"#),
    )
    .unwrap();
    let to_pending = active_at - broke_at;
    eprintln!(
        "NuboDhcpNotAnswering: pending {to_pending:.1} s after the break, firing {:.1} s after it (for: {DHCP_ALERT_FOR:?})",
        unix_now() - broke_at
    );
    assert!(
        (0.0..=f64::from(u32::try_from(PROBE_EVERY_SECS).unwrap()) + 10.0).contains(&to_pending),
        "pending {to_pending} s after the break"
    );
    assert_eq!(
        prom.alert_state("NuboDhcpNotAnswering", &[("node", node_b.as_str())])
            .unwrap(),
        None,
        "node b's DHCP answers"
    );
    let o = h1
        .exec("nft", &["delete", "table", "inet", "nbtbreak"])
        .unwrap();
    assert!(o.status.success());

    // Deleting vm-b removes its series; vm-a's stay.
    let cpu_b = format!(r#"nubo_vm_cpu_seconds_total{{instance="{b}"}}"#);
    assert!(value(&prom, &cpu_b).is_some());
    lab.cli.json(&["server", "delete", &b]).unwrap();
    wait_until(Duration::from_secs(60), "vm-b's series gone", || {
        Ok(prom.query(&format!(r#"{{instance="{b}"}}"#))?.is_empty())
    })
    .unwrap();
    assert!(value(&prom, &cpu_a).is_some(), "vm-a's series must stay");
    eprintln!("done after {:?}", t0.elapsed());
}
