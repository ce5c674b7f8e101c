//! Simulated hosts for networking tests: an underlay bridge in the root
//! namespace and one network namespace per "host", joined to it by a veth.
//!
//! Hygiene: every namespace and link is named `nbt<token>…` with a 4-char
//! token unique to this [`Underlay`], addresses are 10.250.<k>.0/24 with a
//! `<k>` no root-namespace address uses yet, and guards delete what they
//! created. Tokens are registered in `/tmp/nbt-net/<token>` with the owning
//! pid; a later run deletes the leftovers of owners that died without
//! running their destructors (SIGKILL'd test binaries).

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
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
            let _ = run("ip", &["netns", "del", ns]);
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

/// A bridge `nbt<token>u` in the root namespace holding `10.250.<k>.1/24`:
/// the simulated underlay network. etcd and coordinators can listen on
/// [`Underlay::gateway`]; hosts created with [`Underlay::host`] reach it.
/// The bridge is deleted on drop.
pub struct Underlay {
    token: String,
    subnet: u8,
    bridge: String,
}

impl Underlay {
    /// Creates the bridge with a fresh token and a free 10.250.<k>.0/24.
    pub fn new() -> Result<Self> {
        let lock = RegistryLock::take()?;
        sweep_stale(&lock)?;
        let token = new_token(&lock)?;
        let subnet = free_subnet(&lock)?;
        let bridge = format!("{PREFIX}{token}u");
        // From here on, Drop cleans up whatever was created.
        let u = Self {
            token,
            subnet,
            bridge,
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
        &self.token
    }

    /// `nbt<token>`: the prefix of every name this underlay and its hosts use.
    pub fn name_prefix(&self) -> String {
        format!("{PREFIX}{}", self.token)
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
        let _ = run("ip", &["link", "del", &self.bridge]);
        let _ = std::fs::remove_file(registry_dir().join(&self.token));
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
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.netns))
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
