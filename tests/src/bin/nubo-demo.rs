//! A demo cloud on this machine: etcd, a coordinator and two simulated
//! hypervisors (network namespaces, each with its own libvirtd and a real
//! `nubo-agent --driver libvirt`), then two VMs booted through the CLI on
//! different hosts: each gets its address from nubo's DHCP, reads its id
//! from nubo's metadata service and pings the other across VXLAN. The
//! coordinator and the agents serve Prometheus metrics, scraped by a real
//! Prometheus (Debian's package) with the alert rules of `monitoring/`.
//!
//! Run it through `scripts/demo.sh` (installs packages, builds, builds the
//! test guest). It keeps the cloud up until Ctrl-C (or `--once`: exit after
//! the VMs are up, for a smoke test), then removes everything it created.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nubo_tests::prometheus::{monitoring_dir, Job, Prometheus, PrometheusOpts};
use nubo_tests::vm_e2e::VmLab;
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(240);
/// The agents' metrics port (each agent in its own host namespace).
const AGENT_METRICS_PORT: u16 = 9101;

fn main() -> Result<()> {
    let once = std::env::args().any(|a| a == "--once");
    let t0 = Instant::now();
    say("starting etcd, a coordinator and 2 hosts (namespaces with libvirtd + nubo-agent)…");
    let coord_metrics = nubo_tests::ports::free_port();
    let mut lab = VmLab::start_without_agents_with(2, |u, _| {
        Ok(vec![
            "--metrics-listen".into(),
            format!("{}:{coord_metrics}", u.gateway()),
        ])
    })
    .context("starting the demo cloud")?;
    lab.start_agents(&[
        "--metrics-listen".into(),
        format!("0.0.0.0:{AGENT_METRICS_PORT}"),
    ])
    .context("starting the agents")?;
    let cli = &lab.cli;
    say(&format!("control plane up in {:.1?}", t0.elapsed()));

    say("nubo flavor create m1.tiny --vcpus 1 --ram 192 --disk 1");
    cli.json(&[
        "flavor", "create", "m1.tiny", "--vcpus", "1", "--ram", "192", "--disk", "1",
    ])?;
    say("nubo image create tiny --file <1 MiB disk> --kernel vmlinuz --initrd initrd.gz");
    let img = lab.upload_test_guest("tiny")?;
    if img["status"] != "active" {
        bail!("image upload did not become active: {img}");
    }
    say("nubo network create demo-net --cidr 10.30.0.0/24");
    cli.json(&["network", "create", "demo-net", "--cidr", "10.30.0.0/24"])?;

    let a = create(&lab, "vm-a", 1, None)?;
    let a_ip = a["addresses"][0]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ud = lab.dir.path().join("vm-b.user-data");
    std::fs::write(&ud, format!("ping {a_ip}\n"))?;
    let b = create(&lab, "vm-b", 2, Some(&ud.display().to_string()))?;

    for s in [&a, &b] {
        let id = s["id"].as_str().unwrap_or_default();
        let node = s["node"].as_str().unwrap_or_default();
        let console = lab.wait_console(node, id, &format!("NUBO-GUEST-METADATA: {id}"), BOOT)?;
        say(&format!(
            "{} on {node}:",
            s["name"].as_str().unwrap_or_default()
        ));
        for line in console.lines().filter(|l| l.starts_with("NUBO-GUEST")) {
            println!("    {line}");
        }
    }
    let b_id = b["id"].as_str().unwrap_or_default();
    let b_node = b["node"].as_str().unwrap_or_default();
    let ping = lab.wait_console(b_node, b_id, &format!("NUBO-GUEST-PING {a_ip} ok"), BOOT)?;
    if let Some(l) = ping
        .lines()
        .rev()
        .find(|l| l.starts_with("NUBO-GUEST-PING"))
    {
        say(&format!("vm-b → vm-a across VXLAN: {l}"));
    }
    say("starting Prometheus with monitoring/nubo-rules.yml, scraping the coordinator and both agents");
    let prom = Prometheus::start(PrometheusOpts {
        scrape_interval: Duration::from_secs(5),
        evaluation_interval: Duration::from_secs(5),
        rule_files: vec![monitoring_dir().join("nubo-rules.yml")],
        jobs: vec![
            Job {
                honor_labels: true,
                ..Job::plain(
                    "nubo-agent",
                    lab.hosts
                        .iter()
                        .map(|h| format!("{}:{AGENT_METRICS_PORT}", h.ip()))
                        .collect(),
                )
            },
            Job::plain(
                "nubo-coordinator",
                vec![format!("{}:{coord_metrics}", lab.underlay.gateway())],
            ),
        ],
    })?;
    let cpu = r#"count(nubo_vm_cpu_seconds_total{name=~"vm-a|vm-b"})"#;
    nubo_tests::wait_until(
        Duration::from_secs(60),
        "Prometheus has both VMs' CPU series",
        || Ok(prom.value(cpu).ok() == Some(2.0)),
    )?;
    say(&format!(
        "Prometheus sees both VMs (PromQL {cpu} = 2); {} scrape targets up",
        prom.value("sum(up)").unwrap_or_default()
    ));
    say(&format!("demo cloud ready in {:.1?}", t0.elapsed()));

    let nubo = nubo_tests::bin_path("nubo")?;
    println!();
    println!("Try it (in another shell; this demo coordinator runs --insecure --auth none,");
    println!(
        "development mode: plain text and no tokens, see docs/operator-guide.md \"Security\"):"
    );
    println!("  export NUBO_ENDPOINT={}", lab.coordinator.endpoint());
    println!("  alias nubo={}", nubo.display());
    println!("  nubo server list");
    println!("  nubo node list");
    println!(
        "  ETCDCTL_API=3 etcdctl --endpoints={} get --prefix /nubo/v1/ | less",
        lab.etcd.endpoint()
    );
    println!("  nubo server show vm-a   # observed_usage: CPU, memory, disk and network rates");
    println!(
        "  curl -s http://{}:{AGENT_METRICS_PORT}/metrics | grep ^nubo_vm_",
        lab.hosts[0].ip()
    );
    println!(
        "  Prometheus: http://{}/alerts (rules loaded), http://{}/graph?g0.expr=rate(nubo_vm_cpu_seconds_total[1m])",
        prom.addr(),
        prom.addr()
    );
    if once {
        say("--once: tearing down");
        return Ok(());
    }
    println!();
    say("press Ctrl-C to stop the demo and remove everything it created");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(tokio::signal::ctrl_c())?;
    say("stopping…");
    Ok(())
}

fn create(lab: &VmLab, name: &str, host: u8, user_data: Option<&str>) -> Result<Value> {
    let az = format!("az-{host}");
    let mut args = vec![
        "server",
        "create",
        name,
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--network",
        "demo-net",
        "--availability-zone",
        &az,
        "--wait",
        "--timeout",
        "240",
    ];
    if let Some(ud) = user_data {
        args.extend(["--user-data", ud]);
    }
    say(&format!("nubo {}", args.join(" ")));
    let out = lab.cli.json(&args)?;
    let id = find_id(&out).with_context(|| format!("no server id in {out}"))?;
    lab.show(&id)
}

fn find_id(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| m.values().find_map(find_id)),
        Value::Array(a) => a.iter().find_map(find_id),
        _ => None,
    }
}

fn say(s: &str) {
    println!("==> {s}");
}
