//! Network-namespace test topology: a "host" namespace with bridges that
//! own 169.254.169.254/32, and guest namespaces attached by veth.
//!
//! Everything is named `nbt<token>…`; the guard's Drop deletes all
//! namespaces it created (which removes their bridges and veths).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// A per-run token: 4 hex chars from the pid and the clock.
pub fn run_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mixed = std::process::id() ^ nanos ^ (nanos >> 16) ^ n.wrapping_mul(0x9e37);
    format!("{:04x}", mixed & 0xffff)
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    run("ip", args);
}

/// Runs a command, panicking with its output on failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `f` on a fresh thread that first joins network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A guest: a namespace with `eth0` on one of the host's bridges.
pub struct Guest {
    /// Namespace name.
    pub ns: String,
    /// Guest address (no prefix length).
    pub ip: String,
    /// Guest MAC.
    pub mac: String,
}

/// The topology guard. Drop deletes every namespace it created.
pub struct Topology {
    /// The per-run token.
    pub token: String,
    /// The host namespace holding the bridges.
    pub host: String,
    namespaces: Vec<String>,
    veths: usize,
}

impl Topology {
    /// Creates the host namespace with `bridges` (each holding
    /// 169.254.169.254/32), an underlay-like device with a default
    /// route and a route to 10.0.0.0/24 (so replies can only work through
    /// the device-bound on-link fallback), and loose rp_filter as on Debian.
    pub fn new(bridges: &[&str]) -> Self {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "network namespace tests need root (run as root, or set NUBO_TEST_ALLOW_SKIP=root to skip them)"
        );
        let token = run_token();
        let host = format!("nbt{token}h");
        let mut topo = Topology {
            token,
            host: host.clone(),
            namespaces: Vec::new(),
            veths: 0,
        };
        ip(&["netns", "add", &host]);
        topo.namespaces.push(host.clone());
        ip(&["-n", &host, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &host,
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.rp_filter=2",
            ],
        );
        // No dummy driver on every kernel: a veth pair stands in for the underlay.
        ip(&[
            "-n", &host, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", &host, "link", "set", "up1", "up"]);
        ip(&["-n", &host, "addr", "add", "10.250.0.1/24", "dev", "up0"]);
        ip(&["-n", &host, "link", "set", "up0", "up"]);
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "default",
            "via",
            "10.250.0.254",
        ]);
        ip(&[
            "-n",
            &host,
            "route",
            "add",
            "10.0.0.0/24",
            "via",
            "10.250.0.254",
        ]);
        for bridge in bridges {
            ip(&["-n", &host, "link", "add", bridge, "type", "bridge"]);
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                "169.254.169.254/32",
                "dev",
                bridge,
            ]);
            ip(&["-n", &host, "link", "set", bridge, "up"]);
        }
        topo
    }

    /// Adds guest namespace `nbt<token><suffix>` with `eth0` (`ip`/24, `mac`)
    /// plugged into `bridge`, and a route to 169.254.169.254 on eth0.
    pub fn add_guest(&mut self, suffix: &str, bridge: &str, ip_addr: &str, mac: &str) -> Guest {
        let ns = format!("nbt{}{suffix}", self.token);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.veths += 1;
        let host_end = format!("v{}", self.veths);
        ip(&[
            "-n", &self.host, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ip(&[
            "-n", &self.host, "link", "set", &host_end, "master", bridge, "up",
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", "eth0", "address", mac]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "169.254.169.254/32",
            "dev",
            "eth0",
        ]);
        Guest {
            ns,
            ip: ip_addr.to_owned(),
            mac: mac.to_owned(),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An HTTP answer seen by curl inside a guest.
#[derive(Debug)]
pub struct CurlReply {
    /// curl's exit code (0 = transfer done; 7 = could not connect).
    pub exit: i32,
    /// HTTP status (0 if none).
    pub status: u16,
    /// Body.
    pub body: String,
}

/// Runs curl in `guest` against `path` on 169.254.169.254 with extra args.
pub fn curl(guest: &Guest, path: &str, extra: &[&str]) -> CurlReply {
    let url = format!("http://169.254.169.254{path}");
    let output = Command::new("ip")
        .args(["netns", "exec", &guest.ns, "curl", "-s", "-m", "10"])
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(&url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlReply {
        exit: output.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}
