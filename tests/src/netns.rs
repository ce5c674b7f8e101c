//! Network namespaces for tests, shared by the end-to-end labs and by the
//! root tests of the leaf crates (overlay, firewall, DHCP, metadata), which
//! use this crate as a dev-dependency:
//!
//! - [`Names`]: a per-run name prefix `nbt<token>`; dropping it deletes every
//!   namespace (killing what runs inside) and root link carrying it;
//! - [`BridgeHost`]: a "hypervisor" namespace with bridges and guest
//!   namespaces plugged into them by veth pairs;
//! - [`Underlay`] and [`Host`]: an underlay bridge in the root namespace and
//!   one namespace per simulated host, joined to it by a veth;
//! - [`in_netns`], [`need_root`], [`run`], [`ip_batch`], [`delete_netns`].
//!
//! Hygiene: every namespace and link is named `nbt<token>…` with a 4-char
//! token unique to its [`Names`], underlay addresses are 10.250.<k>.0/24
//! with a `<k>` no root-namespace address uses yet, and guards delete what
//! they created. Tokens are registered in `/tmp/nbt-net/<token>` with the
//! owning pid; a later run deletes the leftovers of owners that died
//! without running their destructors (SIGKILL'd test binaries).

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Harness-wide name prefix of namespaces and links.
pub const PREFIX: &str = "nbt";

/// Length of the per-underlay token.
const TOKEN_LEN: usize = 4;

fn registry_dir() -> PathBuf {
    std::env::temp_dir().join("nbt-net")
}

/// Runs a command and fails with its stderr unless it succeeds.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip [-n ns] -batch -` with `lines` (one `ip` command per line, no
/// leading `ip`): many commands for the price of one process.
pub fn ip_batch(ns: Option<&str>, lines: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("stdin of ip -batch")?
        .write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch in {} failed ({}): {}",
            ns.unwrap_or("the root namespace"),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root (namespaces, veth, nftables): `Ok(true)` as
/// root; `Ok(false)` (after printing `SKIP`) when not root and
/// `NUBO_TEST_ALLOW_SKIP` names `root`; an error otherwise.
pub fn need_root() -> Result<bool> {
    if is_root() {
        return Ok(true);
    }
    if std::env::var("NUBO_TEST_ALLOW_SKIP").is_ok_and(|v| v.split(',').any(|c| c.trim() == "root"))
    {
        eprintln!("SKIP (NUBO_TEST_ALLOW_SKIP=root): needs root");
        return Ok(false);
    }
    bail!("these tests need root (run as root, or set NUBO_TEST_ALLOW_SKIP=root to skip them)")
}

/// Runs `f` on a fresh thread that first joins network namespace `ns`; the
/// thread ends afterwards, so no other thread ever changes namespace. A
/// panic of `f` is passed on.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = PathBuf::from("/run/netns").join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let thread = std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    });
    match thread.join() {
        Ok(r) => r.with_context(|| format!("setns {}", path.display())),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec`).
pub fn netns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// One ping from namespace `ns` with a `secs` deadline; true if answered.
pub fn pings_from(ns: &str, ip: std::net::Ipv4Addr, secs: u32) -> bool {
    let (secs, ip) = (secs.to_string(), ip.to_string());
    netns_exec(ns, "ping", &["-c", "1", "-W", "1", "-w", &secs, "-q", &ip])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `program args` inside namespace `ns` (stdin empty) and returns its
/// output, whatever its exit status.
pub fn netns_exec(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    netns_command(ns, program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} in {ns}"))
}

/// One DHCP exchange in namespace `ns` with busybox `udhcpc` on `eth0`,
/// configuring nothing (`-s /bin/true`, 3 tries 1 s apart): its output if
/// it obtained a lease from some server, else an error carrying it.
pub fn udhcpc_once(ns: &str) -> Result<String> {
    let out = netns_exec(
        ns,
        "busybox",
        &[
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !(out.status.success() && text.contains("obtained")) {
        bail!("udhcpc in {ns}: {text}");
    }
    Ok(text)
}

/// Deletes namespace `ns`, first killing (SIGKILL, by pid) every process
/// left inside. Errors mean it is already gone.
pub fn delete_netns(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a pid living in a namespace of this run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_names() -> Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Names of all links in the root namespace (`ip -o link`).
pub fn link_names() -> Result<Vec<String>> {
    Ok(run("ip", &["-o", "link", "show"])?
        .lines()
        .filter_map(|l| {
            // "12: name@peer: <FLAGS> ..."
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect())
}

/// Holds an exclusive `flock` on the registry lock file while alive, so that
/// concurrent test processes allocate tokens and subnets one at a time.
struct RegistryLock(#[allow(dead_code)] std::fs::File);

impl RegistryLock {
    fn take() -> Result<Self> {
        std::fs::create_dir_all(registry_dir())?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(registry_dir().join(".lock"))?;
        // SAFETY: flock on a file descriptor we own; released on close.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("flock: {}", std::io::Error::last_os_error());
        }
        Ok(Self(f))
    }
}

/// Deletes namespaces and links of tokens whose owner process is gone.
fn sweep_stale(_lock: &RegistryLock) -> Result<()> {
    let (netns, links) = (netns_names()?, link_names()?);
    for entry in std::fs::read_dir(registry_dir())? {
        let entry = entry?;
        let token = entry.file_name().to_string_lossy().into_owned();
        if token.len() != TOKEN_LEN {
            continue;
        }
        let pid: u32 = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if pid != 0 && crate::process::pid_alive(pid) {
            continue;
        }
        let ours = format!("{PREFIX}{token}");
        for ns in netns.iter().filter(|n| n.starts_with(&ours)) {
            delete_netns(ns);
        }
        for l in links.iter().filter(|n| n.starts_with(&ours)) {
            let _ = run("ip", &["link", "del", l]);
        }
        let _ = std::fs::remove_file(entry.path());
    }
    Ok(())
}

fn new_token(lock: &RegistryLock) -> Result<String> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let (netns, links) = (netns_names()?, link_names()?);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0..1000u32 {
        let mut x = std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(COUNTER.fetch_add(1, Ordering::SeqCst).wrapping_mul(7919))
            .wrapping_add(nanos)
            .wrapping_add(attempt);
        let mut token = String::new();
        for _ in 0..TOKEN_LEN {
            token.push(ALPHABET[(x % 36) as usize] as char);
            x /= 36;
        }
        let ours = format!("{PREFIX}{token}");
        let taken = registry_dir().join(&token).exists()
            || netns.iter().chain(&links).any(|n| n.starts_with(&ours));
        if !taken {
            std::fs::write(registry_dir().join(&token), std::process::id().to_string())?;
            let _ = lock;
            return Ok(token);
        }
    }
    bail!("no free network token found")
}

fn free_subnet(_lock: &RegistryLock) -> Result<u8> {
    let addrs = run("ip", &["-4", "-o", "addr", "show"])?;
    let start = (std::process::id() % 200) as u8;
    (0..=253u8)
        .map(|i| 1 + (start.wrapping_add(i) % 254))
        .find(|k| !addrs.contains(&format!(" 10.250.{k}.")))
        .context("no free 10.250.<k>.0/24 subnet")
}

/// A per-run name prefix `nbt<token>` (a 4-char token no namespace, link
/// or live run uses; registered with this process's pid). Dropping it
/// deletes every namespace whose name starts with the prefix (killing what
/// runs inside) and every root-namespace link, then the registration.
pub struct Names {
    token: String,
}

impl Names {
    /// Takes a fresh token (and deletes the leftovers of dead runs first).
    pub fn new() -> Result<Self> {
        let lock = RegistryLock::take()?;
        sweep_stale(&lock)?;
        Ok(Self {
            token: new_token(&lock)?,
        })
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `nbt<token>`: the prefix of every name of this run.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}", self.token)
    }

    /// `nbt<token><suffix>`; interface names allow 15 characters, so a
    /// suffix of up to 8.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix())
    }

    /// Creates namespace `nbt<token><suffix>` with `lo` up; returns its name.
    pub fn add_netns(&self, suffix: &str) -> Result<String> {
        let ns = self.name(suffix);
        run("ip", &["netns", "add", &ns])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let ours = self.prefix();
        if let Ok(names) = netns_names() {
            for ns in names.iter().filter(|n| n.starts_with(&ours)) {
                delete_netns(ns);
            }
        }
        if let Ok(links) = link_names() {
            for l in links.iter().filter(|n| n.starts_with(&ours)) {
                let _ = run("ip", &["link", "del", l]);
            }
        }
        let _ = std::fs::remove_file(registry_dir().join(&self.token));
    }
}

/// A guest namespace of a [`BridgeHost`]: `eth0` inside, the other end of
/// its veth (`host_end`) a port of `bridge` in the host namespace.
#[derive(Debug, Clone, Default)]
pub struct GuestLink {
    /// Full name of the guest namespace (see [`Names::name`]).
    pub netns: String,
    /// Name of the host end of the veth.
    pub host_end: String,
    /// Bridge of the host namespace the host end is plugged into.
    pub bridge: String,
    /// MAC address of the guest's `eth0` (the kernel's random one if unset).
    pub mac: Option<String>,
    /// Bring `lo` and `eth0` up in the guest (else only the host end is up).
    pub up: bool,
    /// Address of `eth0` (`a.b.c.d/len`), if any (needs `up`).
    pub addr: Option<String>,
    /// Routes through `eth0` (destinations, e.g. `169.254.169.254/32`).
    pub routes: Vec<String>,
}

/// A "hypervisor" namespace `nbt<token>h` with bridges, and guest
/// namespaces plugged into them by veth pairs. Everything goes with its
/// [`Names`] on drop.
pub struct BridgeHost {
    host: String,
    names: Names,
}

impl BridgeHost {
    /// Creates the host namespace (with `lo` up) under fresh [`Names`].
    pub fn new() -> Result<Self> {
        let names = Names::new()?;
        let host = names.add_netns("h")?;
        Ok(Self { host, names })
    }

    /// The host namespace.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The names of this run.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Runs `program args` in the host namespace; fails unless it succeeds.
    pub fn host_run(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.host, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Adds bridge `bridge` holding `addr` (`a.b.c.d/len`), up.
    pub fn add_bridge(&self, bridge: &str, addr: &str) -> Result<()> {
        ip_batch(
            Some(&self.host),
            &format!("link add {bridge} type bridge\naddr add {addr} dev {bridge}\nlink set {bridge} up\n"),
        )
    }

    /// Creates the guests' namespaces and veth pairs (a few `ip -batch`
    /// runs, not one process per step).
    pub fn add_guests(&self, guests: &[GuestLink]) -> Result<()> {
        let mut root = String::new();
        let mut host = String::new();
        for g in guests {
            root += &format!("netns add {}\n", g.netns);
            let mac = g
                .mac
                .as_ref()
                .map(|m| format!(" address {m}"))
                .unwrap_or_default();
            host += &format!(
                "link add {} type veth peer name eth0{mac} netns {}\nlink set {} master {} up\n",
                g.host_end, g.netns, g.host_end, g.bridge
            );
        }
        ip_batch(None, &root)?;
        ip_batch(Some(&self.host), &host)?;
        for g in guests.iter().filter(|g| g.up) {
            let mut lines = String::from("link set lo up\n");
            if let Some(a) = &g.addr {
                lines += &format!("addr add {a} dev eth0\n");
            }
            lines += "link set eth0 up\n";
            for r in &g.routes {
                lines += &format!("route add {r} dev eth0\n");
            }
            ip_batch(Some(&g.netns), &lines)?;
        }
        Ok(())
    }
}

/// A bridge `nbt<token>u` in the root namespace holding `10.250.<k>.1/24`:
/// the simulated underlay network. etcd and coordinators can listen on
/// [`Underlay::gateway`]; hosts created with [`Underlay::host`] reach it.
/// The bridge is deleted on drop.
pub struct Underlay {
    subnet: u8,
    bridge: String,
    names: Names,
}

impl Underlay {
    /// Creates the bridge with a fresh token and a free 10.250.<k>.0/24.
    pub fn new() -> Result<Self> {
        let lock = RegistryLock::take()?;
        sweep_stale(&lock)?;
        let names = Names {
            token: new_token(&lock)?,
        };
        let subnet = free_subnet(&lock)?;
        let bridge = names.name("u");
        // From here on, Drop cleans up whatever was created.
        let u = Self {
            subnet,
            bridge,
            names,
        };
        let br = u.bridge.as_str();
        run("ip", &["link", "add", br, "type", "bridge"])?;
        run("ip", &["link", "set", br, "mtu", "1500"])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/24", u.gateway()), "dev", br],
        )?;
        run("ip", &["link", "set", br, "up"])?;
        drop(lock);
        Ok(u)
    }

    /// The per-underlay token (names start with `nbt<token>`).
    pub fn token(&self) -> &str {
        self.names.token()
    }

    /// `nbt<token>`: the prefix of every name this underlay and its hosts use.
    pub fn name_prefix(&self) -> String {
        self.names.prefix()
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's address, `10.250.<k>.1`.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, 1)
    }

    /// The address host `i` gets: `10.250.<k>.<10+i>`.
    pub fn host_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.subnet, 10u8.saturating_add(i))
    }

    /// Creates host `i` (0..=200): namespace `nbt<token>h<i>` with lo up and
    /// a veth (`nbt<token>b<i>` inside, `nbt<token>a<i>` on the bridge),
    /// MTU 1500, address `10.250.<k>.<10+i>/24`.
    pub fn host(&self, i: u8) -> Result<Host> {
        anyhow::ensure!(i <= 200, "host index {i} out of range");
        let h = Host {
            netns: format!("{}h{i}", self.name_prefix()),
            outer: format!("{}a{i}", self.name_prefix()),
            inner: format!("{}b{i}", self.name_prefix()),
            ip: self.host_ip(i),
            gateway: self.gateway(),
        };
        let (ns, outer, inner) = (h.netns.as_str(), h.outer.as_str(), h.inner.as_str());
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link", "add", outer, "mtu", "1500", "type", "veth", "peer", "name", inner, "mtu",
                "1500", "netns", ns,
            ],
        )?;
        run("ip", &["link", "set", outer, "master", &self.bridge])?;
        run("ip", &["link", "set", outer, "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                inner,
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", inner, "up"])?;
        Ok(h)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        // Errors mean it is already gone; nothing else to do in a destructor.
        // Whatever else carries the prefix goes with `names`.
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// A simulated host: a network namespace on the underlay. The namespace
/// (and with it the veth pair) is deleted on drop. Processes started in it
/// are not tracked here: guard them separately (e.g. [`crate::Agent`]).
pub struct Host {
    netns: String,
    outer: String,
    inner: String,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
}

impl Host {
    /// The namespace name.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host's underlay address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The underlay bridge's address (where etcd and coordinators listen).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The veth name inside the namespace.
    pub fn interface(&self) -> &str {
        &self.inner
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        netns_command(&self.netns, program)
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        netns_exec(&self.netns, program, args)
    }

    /// Sends ICMP echo requests to `ip` until one is answered (or `timeout`).
    pub fn ping(&self, ip: Ipv4Addr, timeout: std::time::Duration) -> Result<()> {
        let secs = timeout.as_secs().max(1).to_string();
        let out = self.exec(
            "ping",
            &["-c", "1", "-i", "0.2", "-w", &secs, "-q", &ip.to_string()],
        )?;
        if !out.status.success() {
            bail!(
                "{} ({}) cannot ping {ip}: {}{}",
                self.netns,
                self.ip,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace destroys the inner veth and thus its peer;
        // the explicit link delete covers a namespace still pinned by a
        // process. Errors mean already gone.
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.outer]);
    }
}
