//! Per-VM metrics end to end: a real TCG guest on one lab host (private
//! libvirtd), its agent serving `/metrics` (scraped with curl), collecting
//! every second. Shows the VM's series with its labels, CPU seconds rising
//! between two scrapes, the usage in `nubo server show` / `nubo node show`,
//! a scrape during a libvirtd outage answering at once with the last values
//! marked stale, and the series gone after the server is deleted. Needs
//! root; `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nubo_tests::vm_e2e::VmLab;
use nubo_tests::wait_until;

const METRICS_PORT: u16 = 9101;
/// A scrape that takes longer than this is a hung scrape.
const SCRAPE_BOUND: &str = "3";

/// `GET /metrics` with curl (bounded), the body.
fn scrape(addr: SocketAddr) -> Result<String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", SCRAPE_BOUND])
        .arg(format!("http://{addr}/metrics"))
        .output()?;
    if !out.status.success() {
        bail!("curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The value of the sample whose line starts with `head` (name and the
/// first labels), if present.
fn sample(text: &str, head: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(head))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn vm_series_follow_a_real_guest_through_a_libvirtd_outage_and_its_deletion() {
    let mut lab = VmLab::start_without_agents(1).unwrap();
    let ip = lab.hosts[0].ip();
    let addr = SocketAddr::from((ip, METRICS_PORT));
    lab.start_agents(&[
        "--metrics-listen".into(),
        addr.to_string(),
        "--usage-interval-ms".into(),
        "1000".into(),
    ])
    .unwrap();
    lab.base_objects(128, "10.94.0.0/24").unwrap();
    let (id, node) = lab.create_placed("m1", 1, "").unwrap();
    let shown = lab.show(&id.to_string()).unwrap();
    let port = shown["addresses"][0]["port_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tap = shown["addresses"][0]["tap"].as_str().unwrap().to_owned();
    let project = shown["project"].as_str().unwrap().to_owned();
    let vm = format!("instance=\"{id}\",name=\"m1\",project=\"{project}\",node=\"{node}\"");
    let cpu_head = format!("nubo_vm_cpu_seconds_total{{{vm}}}");

    // The VM's series appear with its labels, its disk by target and its
    // port by id and tap.
    let heads = [
        cpu_head.clone(),
        format!("nubo_vm_memory_used_bytes{{{vm}}}"),
        format!("nubo_vm_memory_available_bytes{{{vm}}}"),
        format!("nubo_vm_disk_read_bytes_total{{{vm},disk=\"vda\"}}"),
        format!("nubo_vm_disk_write_ops_total{{{vm},disk=\"vda\"}}"),
        format!("nubo_vm_network_receive_bytes_total{{{vm},port=\"{port}\",tap=\"{tap}\"}}"),
        format!("nubo_vm_network_transmit_packets_total{{{vm},port=\"{port}\",tap=\"{tap}\"}}"),
        format!("nubo_vm_network_receive_drops_total{{{vm},port=\"{port}\",tap=\"{tap}\"}}"),
        format!("nubo_vm_stats_up{{node=\"{node}\"}} 1"),
        format!("nubo_node_memory_used_bytes{{node=\"{node}\"}}"),
        format!("nubo_node_cpu_busy_seconds_total{{node=\"{node}\"}}"),
    ];
    let mut text = String::new();
    wait_until(Duration::from_secs(60), "the VM's series", || {
        text = scrape(addr)?;
        Ok(heads.iter().all(|h| sample(&text, h).is_some()))
    })
    .with_context(|| format!("last scrape:\n{text}"))
    .unwrap();
    // The guest is given 128 MiB.
    assert_eq!(
        sample(&text, &format!("nubo_vm_memory_available_bytes{{{vm}}}")),
        Some(f64::from(128u32 << 20)),
        "{text}"
    );
    // Its DHCP client sends, and is answered.
    let tx =
        format!("nubo_vm_network_transmit_packets_total{{{vm},port=\"{port}\",tap=\"{tap}\"}}");
    let rx = format!("nubo_vm_network_receive_bytes_total{{{vm},port=\"{port}\",tap=\"{tap}\"}}");
    wait_until(
        Duration::from_secs(60),
        "the guest's traffic counted",
        || {
            text = scrape(addr)?;
            Ok(sample(&text, &tx).unwrap_or(0.0) > 0.0 && sample(&text, &rx).unwrap_or(0.0) > 0.0)
        },
    )
    .with_context(|| format!("last scrape:\n{text}"))
    .unwrap();

    // CPU seconds rise between two scrapes.
    let cpu0 = sample(&text, &cpu_head).unwrap();
    let mut cpu1 = cpu0;
    wait_until(Duration::from_secs(30), "CPU seconds rising", || {
        cpu1 = sample(&scrape(addr)?, &cpu_head).unwrap_or(0.0);
        Ok(cpu1 > cpu0)
    })
    .unwrap();
    eprintln!("CPU seconds {cpu0} -> {cpu1}");

    // `server show` and `node show` carry the usage the agent publishes.
    let mut shown = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), "usage in server show", || {
        shown = lab.show(&id.to_string())?;
        Ok(shown["observed_usage"]["cpu_percent"].is_number())
    })
    .with_context(|| format!("{shown}"))
    .unwrap();
    let u = &shown["observed_usage"];
    assert!(u["cpu_percent"].as_f64().unwrap() > 0.0, "{u}");
    assert_eq!(u["memory_available_bytes"], 128u64 << 20, "{u}");
    assert!(u["net_tx_bytes_per_sec"].is_number(), "{u}");
    let n = lab.cli.json(&["node", "show", &node]).unwrap();
    let nu = &n["observed_usage"];
    assert!(nu["memory_total_bytes"].as_u64().unwrap() > 0, "{n}");
    assert!(nu["disk_used_bytes"].as_u64().unwrap() > 0, "{n}");
    assert!(nu["cpus"].as_u64().unwrap() >= 1, "{n}");
    assert!(nu["instances"].as_u64().unwrap() >= 1, "{n}");

    // libvirtd stops: each scrape answers at once (curl's bound), with the
    // last values, marked stale, and the age growing.
    let host = lab.hosts[0].netns().to_owned();
    lab.libvirtds[0].stop().unwrap();
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    wait_until(Duration::from_secs(30), "stale marker", || {
        let t = Instant::now();
        text = scrape(addr)?;
        slowest = slowest.max(t.elapsed());
        Ok(text.contains(&format!("nubo_vm_stats_up{{node=\"{node}\"}} 0")))
    })
    .with_context(|| format!("last scrape:\n{text}"))
    .unwrap();
    eprintln!("stale after {:?}; slowest scrape {slowest:?}", t0.elapsed());
    assert!(sample(&text, &cpu_head).is_some(), "values kept:\n{text}");
    let age_head = format!("nubo_vm_stats_age_seconds{{node=\"{node}\"}}");
    let age0 = sample(&text, &age_head).unwrap();
    let mut age1 = age0;
    wait_until(Duration::from_secs(10), "age growing", || {
        text = scrape(addr)?;
        age1 = sample(&text, &age_head).unwrap_or(0.0);
        Ok(age1 > age0)
    })
    .unwrap();
    assert!(text.contains(&format!("nubo_vm_stats_up{{node=\"{node}\"}} 0")));
    lab.libvirtds[0].start_again_in(&host).unwrap();
    wait_until(Duration::from_secs(60), "collected again", || {
        text = scrape(addr)?;
        Ok(text.contains(&format!("nubo_vm_stats_up{{node=\"{node}\"}} 1")))
    })
    .with_context(|| format!("last scrape:\n{text}"))
    .unwrap();
    assert!(sample(&text, &age_head).unwrap() < age1, "{text}");

    // Deleted: the VM's series disappear (the endpoint still answers).
    lab.cli
        .json(&["server", "delete", &id.to_string(), "--wait"])
        .unwrap();
    wait_until(Duration::from_secs(60), "series gone", || {
        text = scrape(addr)?;
        Ok(!text.contains(&format!("instance=\"{id}\"")))
    })
    .with_context(|| format!("last scrape:\n{text}"))
    .unwrap();
    assert!(
        text.contains(&format!("nubo_vm_stats_up{{node=\"{node}\"}} 1")),
        "{text}"
    );
}
