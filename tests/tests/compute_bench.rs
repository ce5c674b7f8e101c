//! Compute boot benchmark (`#[ignore]`, run by hand; numbers go into
//! `docs/benchmarks.md`, section "Compute"):
//!
//! ```sh
//! cargo build --bins
//! cargo test -p nubo-tests --test compute_bench -- --ignored --nocapture bench_boot
//! ```
//!
//! API call → the guest has its DHCP lease (`NUBO-GUEST-IP:` on its
//! console) and → it fetched its metadata (`NUBO-GUEST-METADATA:`), for 1 VM
//! and for 10 VMs on 2 hosts (TCG), beside a bare-libvirt boot of the same
//! guest in the same run: same kernel, initrd, command line, memory, vCPUs
//! and qcow2 overlay, defined and started with `virsh` in the same host
//! namespace's libvirtd, its NIC a libvirt-made tap on a plain bridge with
//! busybox `udhcpd` and a trivial HTTP server (Python, `SO_BINDTODEVICE`
//! so it coexists with the agent's own metadata listener) on
//! 169.254.169.254. Rounds alternate bare/nubo; medians are printed in a
//! table, with the agents' VmRSS while 10 VMs run and the load average.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nubo_tests::stats::median;
use nubo_tests::vm_e2e::{guest_dir, VmLab};
use nubo_tests::wait_until;
use serde_json::Value;

/// Rounds of the 1-VM and the 10-VM measurements (each: bare and nubo);
/// `NUBO_BENCH_ROUNDS_1` / `NUBO_BENCH_ROUNDS_10` override them.
const ROUNDS_1: usize = 5;
const ROUNDS_10: usize = 3;

fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const BOOT: Duration = Duration::from_secs(300);
const LEASE: &str = "NUBO-GUEST-IP: ";
const METADATA: &str = "NUBO-GUEST-METADATA: ";
/// The image's kernel command line (`VmLab::upload_test_guest`).
const CMDLINE: &str = "console=ttyS0 quiet";
const RAM_MB: u32 = 128;

/// When one guest reached its markers, counted from the API call.
#[derive(Debug, Clone, Copy)]
struct Times {
    lease: Duration,
    metadata: Duration,
    /// Guest uptime printed with the lease line (kernel start → lease).
    guest_lease: f64,
}

/// The guest uptime printed after `marker`, e.g. `… uptime 3.21`.
fn uptime_after(console: &str, marker: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    line.rsplit("uptime ").next()?.trim().parse().ok()
}

/// Polls `consoles` (name → candidate files: whichever exists) until every
/// one shows the metadata line; returns the times since `t0`.
fn watch_consoles(
    t0: Instant,
    consoles: &BTreeMap<String, Vec<PathBuf>>,
    failed: &dyn Fn() -> Option<String>,
) -> Result<Vec<Times>> {
    let mut lease: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut done: BTreeMap<&str, Times> = BTreeMap::new();
    while done.len() < consoles.len() {
        if let Some(e) = failed() {
            bail!("starting the guests failed: {e}");
        }
        if t0.elapsed() > BOOT {
            let missing: Vec<_> = consoles
                .iter()
                .filter(|(n, _)| !done.contains_key(n.as_str()))
                .map(|(n, p)| {
                    let c = read_any(p).unwrap_or_default();
                    format!("{n}:\n{}", nubo_tests::process::tail(&c, 10))
                })
                .collect();
            bail!("guests not booted after {BOOT:?}:\n{}", missing.join("\n"));
        }
        for (name, path) in consoles {
            if done.contains_key(name.as_str()) {
                continue;
            }
            let Some(c) = read_any(path) else {
                continue;
            };
            let now = t0.elapsed();
            if c.contains(LEASE) {
                lease.entry(name).or_insert(now);
            }
            if c.contains(METADATA) {
                let l = *lease.entry(name).or_insert(now);
                done.insert(
                    name,
                    Times {
                        lease: l,
                        metadata: now,
                        guest_lease: uptime_after(&c, LEASE).unwrap_or(f64::NAN),
                    },
                );
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(done.into_values().collect())
}

fn read_any(paths: &[PathBuf]) -> Option<String> {
    paths.iter().find_map(|p| std::fs::read_to_string(p).ok())
}

/// A batch's figures: the last guest (all done) and the median guest.
#[derive(Debug, Clone, Copy)]
struct Batch {
    all_lease: f64,
    all_metadata: f64,
    median_metadata: f64,
    guest_lease: f64,
}

fn batch(times: &[Times]) -> Batch {
    let secs = |f: fn(&Times) -> f64| -> Vec<f64> { times.iter().map(f).collect() };
    let lease = secs(|t| t.lease.as_secs_f64());
    let md = secs(|t| t.metadata.as_secs_f64());
    Batch {
        all_lease: lease.iter().cloned().fold(0.0, f64::max),
        all_metadata: md.iter().cloned().fold(0.0, f64::max),
        median_metadata: median(&md),
        guest_lease: median(&secs(|t| t.guest_lease)),
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Memory of a process, in kB (`/proc/<pid>/status`).
#[derive(Debug, Clone, Copy)]
struct Rss {
    vm_rss: u64,
    anon: u64,
    file: u64,
}

fn rss_kb(pid: u32) -> Option<Rss> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let l = s.lines().find(|l| l.starts_with(name))?;
        l.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Rss {
        vm_rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// A child process killed (by pid) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const METADATA_SERVER: &str = r#"
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = b"bare-guest"
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
        super().server_bind()
S(("169.254.169.254", 80), H).serve_forever()
"#;

/// The bare side on one host: a plain bridge with udhcpd and an HTTP
/// server on 169.254.169.254 (both gone with the host namespace / on drop).
struct BareNet {
    bridge: String,
    _dhcpd: Proc,
    _http: Proc,
}

impl BareNet {
    fn start(lab: &VmLab, host: usize, dir: &Path) -> Result<Self> {
        let h = &lab.hosts[host];
        let ns = h.netns().to_string();
        let bridge = format!("{}r{host}", lab.underlay.name_prefix());
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &ns]).args(args));
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", "10.93.0.1/24", "dev", &bridge])?;
        ip(&["addr", "add", "169.254.169.254/32", "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        let leases = dir.join(format!("udhcpd-{host}.leases"));
        std::fs::write(&leases, "")?;
        let conf = dir.join(format!("udhcpd-{host}.conf"));
        std::fs::write(
            &conf,
            format!(
                "start 10.93.0.100\nend 10.93.0.200\ninterface {bridge}\nlease_file {}\n\
                 pidfile {}\nopt router 10.93.0.1\nopt subnet 255.255.255.0\nopt lease 3600\n",
                leases.display(),
                dir.join(format!("udhcpd-{host}.pid")).display()
            ),
        )?;
        // -a 0: no ARP probe before an offer (nubo's server does none either).
        let dhcpd = Proc(
            Command::new("ip")
                .args(["netns", "exec", &ns, "busybox", "udhcpd", "-f", "-a", "0"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let http = Proc(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "python3",
                    "-c",
                    METADATA_SERVER,
                    &bridge,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let me = Self {
            bridge,
            _dhcpd: dhcpd,
            _http: http,
        };
        wait_until(Duration::from_secs(20), "bare servers listen", || {
            let tcp = run_ok(Command::new("ip").args(["netns", "exec", &ns, "ss", "-ltnH"]))?;
            let udp = run_ok(Command::new("ip").args(["netns", "exec", &ns, "ss", "-lunH"]))?;
            Ok(tcp.contains(&format!("169.254.169.254%{}:80", me.bridge))
                && udp.contains(&format!("%{}:67", me.bridge)))
        })?;
        Ok(me)
    }
}

/// The files of one bare guest.
struct BareGuest {
    name: String,
    disk: PathBuf,
    console: PathBuf,
    xml: PathBuf,
}

/// One bare guest: a qcow2 overlay of the image's disk and a domain with
/// the same kernel/initrd/cmdline/memory/vCPUs as nubo's, its NIC a
/// libvirt-made tap on `bridge`.
fn bare_domain_xml(name: &str, disk: &Path, bridge: &str, mac: &str, console: &Path) -> String {
    let g = guest_dir();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{RAM_MB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{console}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = g.join("vmlinuz").display(),
        initrd = g.join("initrd.gz").display(),
        disk = disk.display(),
        console = console.display(),
    )
}

/// Boots `per_host[i]` bare guests on host `i` (one thread per host, the
/// guests of a host one after the other, like the agent's serialized
/// defines): overlay + define + start. Returns the times and cleans up.
fn bare_round(
    lab: &VmLab,
    nets: &[BareNet],
    per_host: &[usize],
    round: &str,
) -> Result<Vec<Times>> {
    let dir = lab.dir.path().join("bare");
    std::fs::create_dir_all(&dir)?;
    let base = lab.dir.path().join("empty.raw");
    let mut consoles = BTreeMap::new();
    let mut plan: Vec<Vec<BareGuest>> = Vec::new();
    for (h, n) in per_host.iter().enumerate() {
        let mut v = Vec::new();
        for j in 0..*n {
            let name = format!("{}bare-{round}-{h}-{j}", lab.domain_prefix());
            let disk = dir.join(format!("{name}.qcow2"));
            let console = dir.join(format!("{name}.log"));
            let xml = dir.join(format!("{name}.xml"));
            let mac = format!("52:54:00:93:{h:02x}:{j:02x}");
            std::fs::write(
                &xml,
                bare_domain_xml(&name, &disk, &nets[h].bridge, &mac, &console),
            )?;
            consoles.insert(name.clone(), vec![console.clone()]);
            v.push(BareGuest {
                name,
                disk,
                console,
                xml,
            });
        }
        plan.push(v);
    }
    let t0 = Instant::now();
    let failure: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let times = std::thread::scope(|s| -> Result<Vec<Times>> {
        let mut threads = Vec::new();
        for (h, doms) in plan.iter().enumerate() {
            let lv = &lab.libvirtds[h];
            let base = &base;
            let failure = &failure;
            threads.push(s.spawn(move || -> Result<()> {
                let r = (|| -> Result<()> {
                    for BareGuest {
                        name, disk, xml, ..
                    } in doms
                    {
                        run_ok(
                            Command::new("qemu-img")
                                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                                .arg(base)
                                .arg(disk)
                                .arg("1G"),
                        )?;
                        lv.virsh(&["define", &xml.display().to_string()])?;
                        lv.virsh(&["start", name])?;
                    }
                    Ok(())
                })();
                if let Err(e) = &r {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(format!("{e:#}"));
                    }
                }
                r
            }));
        }
        let times = watch_consoles(t0, &consoles, &|| {
            failure.lock().ok().and_then(|f| f.clone())
        });
        for t in threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("bare starter panicked"))??;
        }
        times
    });
    for (h, doms) in plan.iter().enumerate() {
        for BareGuest {
            name,
            disk,
            console,
            xml,
        } in doms
        {
            let _ = lab.libvirtds[h].virsh(&["destroy", name]);
            let _ = lab.libvirtds[h].virsh(&["undefine", name]);
            for f in [disk, console, xml] {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    times
}

fn console_path(lab: &VmLab, id: &str) -> Vec<PathBuf> {
    lab.agents.iter().map(|a| a.console_path(id)).collect()
}

/// `nubo server create NAME --count n` (no `--wait`; on host `host` when
/// set) → consoles, and the agents' VmRSS (kB) once every guest fetched its
/// metadata; then deletes them.
fn nubo_round(
    lab: &VmLab,
    name: &str,
    n: usize,
    host: Option<u8>,
) -> Result<(Vec<Times>, Vec<Rss>)> {
    let count = n.to_string();
    let args = lab.server_create_args(name, host, None, &["--count", &count])?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let out = lab.cli.json(&args)?;
    let api = t0.elapsed();
    let ids = ids_in(&out);
    anyhow::ensure!(ids.len() == n, "expected {n} ids in {out}");
    // Whichever agent runs it writes its console.
    let consoles: BTreeMap<String, Vec<PathBuf>> = ids
        .iter()
        .map(|id| (id.clone(), console_path(lab, id)))
        .collect();
    let times = watch_consoles(t0, &consoles, &|| None)?;
    let rss = lab
        .agents
        .iter()
        .filter_map(|a| a.pid().and_then(rss_kb))
        .collect();
    eprintln!("  nubo {name}: API call returned after {api:?}");
    for id in &ids {
        lab.cli.json(&["server", "delete", id])?;
    }
    for lv in &lab.libvirtds {
        wait_until(Duration::from_secs(120), "nubo domains gone", || {
            let p = lab.domain_prefix();
            Ok(lv
                .domains()?
                .iter()
                .all(|d| !d.starts_with(&p) || d.contains("bare-")))
        })?;
    }
    Ok((times, rss))
}

fn ids_in(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(id)) = m.get("id") {
                    out.push(id.clone());
                    return;
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

fn row(what: &str, bare: &[Batch], nubo: &[Batch], pick: fn(&Batch) -> f64) -> String {
    let b: Vec<f64> = bare.iter().map(pick).collect();
    let n: Vec<f64> = nubo.iter().map(pick).collect();
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (mb, mn) = (median(&b), median(&n));
    format!(
        "| {what} | {} | **{mb:.2}** | {} | **{mn:.2}** | **{:.2}** |",
        fmt(&b),
        fmt(&n),
        mn / mb
    )
}

#[test]
#[ignore = "benchmark: boots ~40 TCG guests (~10 min); run by hand, see docs/benchmarks.md"]
fn bench_boot_nubo_vs_bare_libvirt() {
    let lab = VmLab::start(2).unwrap();
    let load0 = load_avg();
    lab.base_objects(RAM_MB, "10.91.0.0/24").unwrap();
    let nets: Vec<BareNet> = (0..lab.hosts.len())
        .map(|h| BareNet::start(&lab, h, lab.dir.path()).unwrap())
        .collect();

    // Warm-up (not in the medians): the agents download the image, each
    // libvirtd probes QEMU on its first define.
    let cold_bare = batch(&bare_round(&lab, &nets, &[1, 1], "w").unwrap());
    let (cold, _) = nubo_round(&lab, "warm", 2, None).unwrap();
    let cold_nubo = batch(&cold);
    eprintln!("cold: bare {cold_bare:?}\n      nubo {cold_nubo:?}");

    let (mut b1, mut n1) = (Vec::new(), Vec::new());
    for r in 0..rounds("NUBO_BENCH_ROUNDS_1", ROUNDS_1) {
        let name = format!("one{r}");
        let mut go_bare = || {
            b1.push(batch(
                &bare_round(&lab, &nets, &[1, 0], &format!("a{r}")).unwrap(),
            ))
        };
        if r % 2 == 0 {
            go_bare();
            n1.push(batch(&nubo_round(&lab, &name, 1, Some(1)).unwrap().0));
        } else {
            n1.push(batch(&nubo_round(&lab, &name, 1, Some(1)).unwrap().0));
            go_bare();
        }
        eprintln!(
            "1 VM round {r}: bare {:?}\n              nubo {:?}",
            b1.last(),
            n1.last()
        );
    }
    let (mut b10, mut n10, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds("NUBO_BENCH_ROUNDS_10", ROUNDS_10) {
        let name = format!("ten{r}");
        let mut go_bare = || {
            b10.push(batch(
                &bare_round(&lab, &nets, &[5, 5], &format!("b{r}")).unwrap(),
            ))
        };
        let mut go_nubo = || {
            let (t, kb) = nubo_round(&lab, &name, 10, None).unwrap();
            rss.push(kb);
            n10.push(batch(&t));
        };
        if r % 2 == 0 {
            go_bare();
            go_nubo();
        } else {
            go_nubo();
            go_bare();
        }
        eprintln!(
            "10 VM round {r}: bare {:?}\n               nubo {:?}",
            b10.last(),
            n10.last()
        );
    }
    let load1 = load_avg();
    let rss_max = rss.iter().flatten().map(|r| r.vm_rss).max().unwrap_or(0);
    let table = [
        "| seconds from the API call / `virsh define` | bare runs | bare median | nubo runs | nubo median | nubo/bare |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
        row("1 VM → lease", &b1, &n1, |b| b.all_lease),
        row("1 VM → metadata", &b1, &n1, |b| b.all_metadata),
        row("1 VM: guest uptime at lease", &b1, &n1, |b| b.guest_lease),
        row("10 VMs → all leases", &b10, &n10, |b| b.all_lease),
        row("10 VMs → all metadata", &b10, &n10, |b| b.all_metadata),
        row("10 VMs: median guest → metadata", &b10, &n10, |b| b.median_metadata),
        row("10 VMs: guest uptime at lease (median)", &b10, &n10, |b| b.guest_lease),
    ];
    println!("\n{}\n", table.join("\n"));
    println!(
        "cold (first VM per host, image download + first define): bare {:.2} s, nubo {:.2} s to metadata",
        cold_bare.all_metadata, cold_nubo.all_metadata
    );
    let each: Vec<String> = rss
        .iter()
        .flatten()
        .map(|r| format!("{} ({} anon + {} file)", r.vm_rss, r.anon, r.file))
        .collect();
    println!(
        "agent VmRSS with 10 VMs running (both agents, every round), kB: {}; max {rss_max} kB",
        each.join(", ")
    );
    println!("load average: {load0} at start, {load1} at end");
    assert!(rss_max > 0, "agent RSS not measured");
}
