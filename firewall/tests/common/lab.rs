//! A throw-away network lab: one "host" namespace with a bridge `br0`
//! (owning 169.254.169.254) and N guest namespaces, each attached by a veth
//! whose host end `tapN` is a bridge port. Everything is named `nbt<token>…`
//! and removed on drop, together with every process the lab started.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nubo_firewall::Netns;

/// One guest namespace.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Namespace name.
    pub ns: String,
    /// Host-side veth name (the bridge port).
    pub tap: String,
    /// MAC of the guest's `eth0`.
    pub mac: [u8; 6],
    /// IPv4 address of the guest's `eth0` (no prefix).
    pub ip: String,
}

/// The lab; dropping it deletes all namespaces and kills started processes.
pub struct Lab {
    /// Name of the host namespace.
    pub host: String,
    /// The guests.
    pub guests: Vec<Guest>,
    namespaces: Vec<String>,
    children: Mutex<Vec<Child>>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = std::process::id().wrapping_mul(2_654_435_761)
        ^ nanos
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503);
    format!("{:04x}", mix & 0xffff)
}

/// Runs a command, returning its output (never panics on failure status).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it is true or 10 s have passed; returns the last result.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Lab {
    /// Builds a lab with `n` guests (10.77.0.11, .12, …).
    pub fn new(n: usize) -> Lab {
        assert!(
            std::fs::read_to_string("/proc/self/status")
                .map(|s| s
                    .lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
                .unwrap_or(false),
            "network namespace tests need root"
        );
        let existing = String::from_utf8_lossy(&run(&["ip", "netns", "list"]).stdout).to_string();
        let tok = loop {
            let t = token();
            if !existing.contains(&format!("nbt{t}")) {
                break t;
            }
        };
        let host = format!("nbt{tok}h");
        let mut lab = Lab {
            host: host.clone(),
            guests: Vec::new(),
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
        };
        must(&["ip", "netns", "add", &host]);
        lab.namespaces.push(host.clone());
        lab.host_ok(&["ip", "link", "set", "lo", "up"]);
        lab.host_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lab.host_ok(&["ip", "addr", "add", "169.254.169.254/16", "dev", "br0"]);
        lab.host_ok(&["ip", "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("nbt{tok}g{i}");
            must(&["ip", "netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let tap = format!("tap{i}");
            let mac = [0x02, 0x77, 0, 0, 0, 0x11 + i as u8];
            let mac_s = nubo_netid::MacAddr(mac).to_string();
            let ip = format!("10.77.0.{}", 11 + i);
            lab.host_ok(&[
                "ip", "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            lab.host_ok(&["ip", "link", "set", &tap, "master", "br0", "up"]);
            for cmd in [
                vec!["ip", "link", "set", "lo", "up"],
                vec!["ip", "link", "set", "eth0", "address", &mac_s],
                vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "route", "add", "169.254.0.0/16", "dev", "eth0"],
            ] {
                must(&[&["ip", "netns", "exec", &ns][..], &cmd[..]].concat());
            }
            lab.guests.push(Guest { ns, tap, mac, ip });
        }
        lab
    }

    /// Adds a namespace `nbt<token>r` whose `eth0` (10.77.0.99/24) is
    /// bridged through a port named `ifname` (e.g. `vx-1`, standing in for a
    /// VXLAN device towards another node). Returns the namespace name.
    pub fn add_remote(&mut self, ifname: &str) -> String {
        let ns = format!("{}r", self.host.trim_end_matches('h'));
        must(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.host_ok(&[
            "ip", "link", "add", ifname, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.host_ok(&["ip", "link", "set", ifname, "master", "br0", "up"]);
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", "10.77.0.99/24", "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
        ] {
            must(&[&["ip", "netns", "exec", &ns][..], &cmd[..]].concat());
        }
        ns
    }

    /// The host namespace as a firewall target.
    pub fn netns(&self) -> Netns {
        Netns::Named(self.host.clone())
    }

    /// Runs a command in namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        run(&[&["ip", "netns", "exec", ns][..], args].concat())
    }

    /// Runs a command in the host namespace that must succeed.
    pub fn host_ok(&self, args: &[&str]) {
        must(&[&["ip", "netns", "exec", &self.host][..], args].concat());
    }

    /// Runs a command in guest `g` that must succeed.
    pub fn guest_ok(&self, g: usize, args: &[&str]) {
        must(&[&["ip", "netns", "exec", &self.guests[g].ns][..], args].concat());
    }

    /// Starts a background process in `ns`; it is killed when the lab drops.
    pub fn spawn(&self, ns: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    /// Starts a TCP listener on `port` in guest `g` (or the host if `None`).
    pub fn listen(&self, g: Option<usize>, port: u16) {
        let ns = g.map_or(self.host.clone(), |g| self.guests[g].ns.clone());
        self.spawn(&ns, &["nc", "-lk", &port.to_string()]);
    }

    /// One ping from guest `g` to `ip` (1 s timeout).
    pub fn ping(&self, g: usize, ip: &str) -> bool {
        self.exec(&self.guests[g].ns, &["ping", "-c1", "-W1", "-n", ip])
            .status
            .success()
    }

    /// One TCP connect from guest `g` to `ip:port` (2 s timeout).
    pub fn tcp(&self, g: usize, ip: &str, port: u16) -> bool {
        self.exec(
            &self.guests[g].ns,
            &["nc", "-z", "-w", "2", ip, &port.to_string()],
        )
        .status
        .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            // `ip netns exec` execs the program, so this PID is the process.
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
