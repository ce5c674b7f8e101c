//! The agent's per-node metrics and health probe, end to end: two simulated
//! hosts with a real `nubo-agent --driver netns` each (real etcd, real
//! bridges, DHCP and metadata), scraped on their real `/metrics`
//! endpoints. Needs root, `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use nubo_tests::metrics::value;
use nubo_tests::net_e2e::{find_str, NetLab};
use nubo_tests::netns::netns_names;
use nubo_tests::wait_until;

const T: Duration = Duration::from_secs(30);
const PORT: u16 = 9101;

fn scrape(lab: &NetLab, host: u8) -> String {
    let addr = SocketAddr::from((lab.underlay.host_ip(host), PORT));
    let (code, body) = nubo_tests::http::get(addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// Waits until the series of host `host` has value `want`.
fn wait_value(lab: &NetLab, host: u8, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let r = wait_until(
        T,
        &format!("{name}{labels:?} = {want} on host {host}"),
        || {
            last = value(&scrape(lab, host), name, labels);
            Ok(last == Some(want))
        },
    );
    assert!(r.is_ok(), "{r:?}; last value {last:?}");
}

const BREAK_TABLE: &str = "nbtbreak";

/// Drops everything that reaches the DHCP responder of host `host` (what
/// docs/metrics.md tells a test to do to break a node's DHCP).
fn break_dhcp(lab: &NetLab, host: u8) {
    let h = &lab.hosts[usize::from(host) - 1];
    let rules = format!(
        "table inet {BREAK_TABLE} {{ chain drop67 {{ type filter hook input priority -300; udp dport 67 drop; }}; }}"
    );
    let out = h.exec("nft", &[&rules]).unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn repair_dhcp(lab: &NetLab, host: u8) {
    let h = &lab.hosts[usize::from(host) - 1];
    let out = h
        .exec("nft", &["delete", "table", "inet", BREAK_TABLE])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Capacity and allocation after servers are placed, reconcile pass and
/// lag histograms growing, fence state, DHCP replies and metadata answers
/// counted after real requests; the health probe succeeding on both hosts,
/// failing only on the host whose DHCP responder is broken and recovering
/// once it is repaired; a node without local ports removes its probe.
#[test]
fn node_metrics_and_health_probe_on_two_hosts() {
    if !nubo_tests::netns::need_root().unwrap() {
        return;
    }
    let prefix;
    {
        let lab = NetLab::start_with(2, |u, i| {
            vec![
                "--metrics-listen".into(),
                format!("{}:{PORT}", u.host_ip(i)),
                "--probe-interval-secs".into(),
                "1".into(),
            ]
        })
        .unwrap();
        prefix = lab.token_prefix();
        lab.base_objects().unwrap();
        let net = lab
            .cli
            .json(&["network", "create", "n1", "--cidr", "10.77.9.0/24"])
            .unwrap();
        let net_id = find_str(&net, "id").unwrap();
        let g1 = lab.server("g1", "n1", 1, &[]).unwrap();
        let g2 = lab.server("g2", "n1", 2, &[]).unwrap();
        lab.wait_wired(&g1).unwrap();
        lab.wait_wired(&g2).unwrap();
        let hv1 = [("node", "hv-1")];

        // Capacity (the lab's overrides) and allocation (flavor t: 1 vCPU,
        // 16 MiB, 1 GiB).
        let m = scrape(&lab, 1);
        assert_eq!(
            value(&m, "nubo_node_capacity_vcpus", &hv1),
            Some(256.0),
            "{m}"
        );
        assert_eq!(
            value(&m, "nubo_node_capacity_memory_bytes", &hv1),
            Some(1_048_576.0 * 1024.0 * 1024.0)
        );
        wait_value(&lab, 1, "nubo_node_allocated_vcpus", &hv1, 1.0);
        wait_value(
            &lab,
            1,
            "nubo_node_allocated_memory_bytes",
            &hv1,
            16.0 * 1024.0 * 1024.0,
        );
        wait_value(
            &lab,
            1,
            "nubo_node_allocated_disk_bytes",
            &hv1,
            1024.0 * 1024.0 * 1024.0,
        );
        // Session up, not fenced.
        assert_eq!(value(&m, "nubo_agent_etcd_session_up", &hv1), Some(1.0));
        assert_eq!(value(&m, "nubo_agent_fenced", &hv1), Some(0.0));
        assert_eq!(
            value(
                &m,
                "nubo_agent_fence_phase",
                &[("node", "hv-1"), ("phase", "normal")]
            ),
            Some(1.0)
        );
        let age = value(&m, "nubo_agent_lease_age_seconds", &hv1).unwrap();
        // Reported and plausible (not a timing assertion: a starved agent
        // would be slower, never negative or absent).
        assert!((0.0..30.0).contains(&age), "lease age {age}");

        // Another server on host 1: allocation follows, the passes and the
        // lag histogram count up.
        let compute = [("node", "hv-1"), ("subsystem", "compute")];
        let passes = value(&m, "nubo_agent_reconcile_pass_seconds_count", &compute).unwrap();
        let lags = value(&m, "nubo_agent_reconcile_lag_seconds_count", &hv1).unwrap();
        assert!(passes >= 1.0 && lags >= 1.0, "{m}");
        let g3 = lab.server("g3", "n1", 1, &[]).unwrap();
        lab.wait_wired(&g3).unwrap();
        wait_value(&lab, 1, "nubo_node_allocated_vcpus", &hv1, 2.0);
        let m = scrape(&lab, 1);
        assert!(value(&m, "nubo_agent_reconcile_pass_seconds_count", &compute).unwrap() > passes);
        assert!(value(&m, "nubo_agent_reconcile_lag_seconds_count", &hv1).unwrap() > lags);
        assert!(value(&m, "nubo_agent_last_reconcile_timestamp_seconds", &hv1).unwrap() > 1.7e9);
        assert!(
            value(&m, "nubo_agent_nftables_apply_seconds_count", &hv1).unwrap() >= 1.0,
            "{m}"
        );
        assert_eq!(
            value(&m, "nubo_agent_nftables_apply_failures_total", &hv1),
            Some(0.0)
        );

        // A real DHCP exchange and a metadata request the probe never
        // makes (a 404): both counted.
        let ack = [
            ("node", "hv-1"),
            ("network", net_id.as_str()),
            ("type", "ack"),
        ];
        let acks = value(&m, "nubo_agent_dhcp_replies_total", &ack).unwrap_or(0.0);
        let not_found = [("node", "hv-1"), ("code", "404")];
        assert_eq!(
            value(&m, "nubo_agent_metadata_requests_total", &not_found),
            None
        );
        g1.udhcpc(&lab.udhcpc_script()).unwrap();
        assert!(g1.metadata("/openstack/latest/no_such_file", &[]).is_err());
        let m = scrape(&lab, 1);
        assert!(
            value(&m, "nubo_agent_dhcp_replies_total", &ack).unwrap() > acks,
            "{m}"
        );
        assert!(value(&m, "nubo_agent_metadata_requests_total", &not_found).unwrap() >= 1.0);

        // The probe: both checks succeed on both hosts.
        for host in [1, 2] {
            let node = format!("hv-{host}");
            for check in ["dhcp", "metadata"] {
                let l = [
                    ("node", node.as_str()),
                    ("network", net_id.as_str()),
                    ("check", check),
                ];
                wait_value(&lab, host, "nubo_agent_probe_success", &l, 1.0);
                let m = scrape(&lab, host);
                assert!(value(&m, "nubo_agent_probe_last_success_timestamp_seconds", &l).is_some());
                eprintln!(
                    "probe {check} on hv-{host}: {:?} s",
                    value(&m, "nubo_agent_probe_duration_seconds", &l)
                );
            }
        }
        // Every per-node name docs/metrics.md promises from the agent is
        // served (the per-VM ones need a driver with guest statistics, and
        // the usage collection's come after its first period: both shown by
        // tests/tests/vm_metrics.rs).
        let m = scrape(&lab, 1);
        let promised: Vec<&str> = include_str!("../../docs/metrics.md")
            .lines()
            .filter(|l| {
                l.starts_with("| `")
                    && l.split('|').nth(4).is_some_and(|f| {
                        f.trim().starts_with("agent") && !f.contains("usage collection")
                    })
            })
            .filter_map(|l| l.split('`').nth(1))
            .filter(|name| !name.starts_with("nubo_vm_"))
            .collect();
        assert!(promised.len() >= 20, "{promised:?}");
        for name in promised {
            // OpenMetrics names a counter's and an info's family without
            // the suffix its samples carry.
            let family = name
                .strip_suffix("_total")
                .or_else(|| name.strip_suffix("_info"))
                .unwrap_or(name);
            assert!(
                m.contains(&format!("# TYPE {family} ")),
                "{name} is in docs/metrics.md but not served:\n{m}"
            );
        }
        // The probe's OFFERs are DHCP replies too.
        let offer = [
            ("node", "hv-1"),
            ("network", net_id.as_str()),
            ("type", "offer"),
        ];
        assert!(value(&scrape(&lab, 1), "nubo_agent_dhcp_replies_total", &offer).unwrap() >= 1.0);
        let dhcp1 = [
            ("node", "hv-1"),
            ("network", net_id.as_str()),
            ("check", "dhcp"),
        ];
        let meta1 = [
            ("node", "hv-1"),
            ("network", net_id.as_str()),
            ("check", "metadata"),
        ];
        let dhcp2 = [
            ("node", "hv-2"),
            ("network", net_id.as_str()),
            ("check", "dhcp"),
        ];

        // Break host 1's DHCP responder: its DHCP check fails, its metadata
        // check and host 2's DHCP check still succeed (positive controls).
        break_dhcp(&lab, 1);
        wait_value(&lab, 1, "nubo_agent_probe_success", &dhcp1, 0.0);
        let m1 = scrape(&lab, 1);
        assert_eq!(value(&m1, "nubo_agent_probe_success", &meta1), Some(1.0));
        assert_eq!(
            value(&scrape(&lab, 2), "nubo_agent_probe_success", &dhcp2),
            Some(1.0)
        );
        // A guest of host 1 cannot get an address either: the probe saw
        // what guests see.
        assert!(g3.udhcpc(&lab.udhcpc_script()).is_err());
        // Repaired: the probe succeeds again.
        repair_dhcp(&lab, 1);
        wait_value(&lab, 1, "nubo_agent_probe_success", &dhcp1, 1.0);

        // No local port left on host 1: its probe namespace and series go.
        let probe_prefix = nubo_tests::agent::lab_probe_prefix(&lab.hosts[0]);
        assert!(netns_names()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&probe_prefix)));
        for g in [&g1, &g3] {
            lab.cli.json(&["server", "delete", &g.id]).unwrap();
        }
        wait_until(T, "host 1's probe namespace removed", || {
            Ok(!netns_names()?.iter().any(|n| n.starts_with(&probe_prefix)))
        })
        .unwrap();
        wait_until(T, "host 1's probe series removed", || {
            Ok(value(&scrape(&lab, 1), "nubo_agent_probe_success", &dhcp1).is_none())
        })
        .unwrap();
        wait_value(&lab, 1, "nubo_node_allocated_vcpus", &hv1, 0.0);
        assert_eq!(
            value(&scrape(&lab, 2), "nubo_agent_probe_success", &dhcp2),
            Some(1.0)
        );
    }
    let left = NetLab::leftovers(&prefix).unwrap();
    assert!(left.is_empty(), "left behind: {left:?}");
}
