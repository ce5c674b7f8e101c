//! Network-namespace harness for the root-only tests: RAII guards that
//! create `nbt<token>…` namespaces, bridges and veth pairs and delete them
//! (killing any process left inside) even when a test panics.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nubo_dhcp::{DhcpServer, LeaseTable, METADATA_IP};
use nubo_netid::MacAddr;

/// Fails the test unless running as root (the tests need netns/veth).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create network namespaces and must run as root"
    );
}

/// A short unique per-run, per-call token: 4 hex chars + a counter letter.
pub fn token() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = std::process::id() ^ nanos;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "nbt{:04x}{}",
        mix & 0xffff,
        char::from(b'a' + (n % 26) as u8)
    )
}

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip -n <ns> -batch -` with the given lines.
pub fn ip_batch(ns: Option<&str>, lines: &str) {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write batch");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh thread that entered network namespace `ns`; the
/// thread ends afterwards, so no other thread is ever moved.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: valid fd of a netns file; affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A network namespace deleted on drop (processes left inside are killed by PID).
pub struct Netns {
    /// The namespace name.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up.
    pub fn new(name: &str) -> Self {
        assert!(
            name.starts_with("nbt") && name.len() <= 15,
            "bad test netns name {name}"
        );
        sh(&["ip", "netns", "add", name]);
        let ns = Self {
            name: name.to_string(),
        };
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) on a PID living in our own test namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A host namespace with bridges (each owning 169.254.169.254/32) and guest
/// namespaces attached by veth pairs; guests' interface is `eth0`.
pub struct Topology {
    /// Name prefix of everything created.
    pub token: String,
    /// Guests first, so they are deleted before the host.
    pub guests: Vec<Netns>,
    /// The "hypervisor" namespace holding the bridges.
    pub host: Netns,
    /// Scratch directory (scripts, lease files).
    pub dir: tempfile::TempDir,
}

/// A deterministic locally administered MAC for test guest `i`.
pub fn mac(i: u16) -> MacAddr {
    let [hi, lo] = i.to_be_bytes();
    MacAddr([0x02, 0x6e, 0x62, 0x74, hi, lo])
}

/// `aa:bb:...` form of a MAC.
pub fn mac_str(m: &MacAddr) -> String {
    m.to_string()
}

impl Topology {
    /// Creates the host namespace and the given bridges in it.
    pub fn new(bridges: &[&str]) -> Self {
        require_root();
        let token = token();
        let host = Netns::new(&format!("{token}h"));
        let mut batch = String::new();
        for br in bridges {
            batch += &format!(
                "link add {br} type bridge\naddr add {METADATA_IP}/32 dev {br}\nlink set {br} up\n"
            );
        }
        ip_batch(Some(&host.name), &batch);
        Self {
            token,
            guests: Vec::new(),
            host,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Adds guests `(index, mac, bridge)`; returns their namespace names.
    pub fn add_guests(&mut self, guests: &[(u16, MacAddr, &str)]) -> Vec<String> {
        let mut names = Vec::new();
        let mut root = String::new();
        for (i, _, _) in guests {
            let name = format!("{}g{i}", self.token);
            root += &format!("netns add {name}\n");
            names.push(name);
        }
        ip_batch(None, &root);
        for name in &names {
            self.guests.push(Netns { name: name.clone() });
        }
        let mut host = String::new();
        for ((i, m, br), name) in guests.iter().zip(&names) {
            host += &format!(
                "link add v{i} type veth peer name eth0 address {} netns {name}\nlink set v{i} master {br} up\n",
                mac_str(m)
            );
        }
        ip_batch(Some(&self.host.name), &host);
        names
    }

    /// Binds a DHCP server on `bridge` inside the host namespace.
    pub fn server(&self, bridge: &str, table: LeaseTable) -> DhcpServer {
        let br = bridge.to_string();
        in_netns(&self.host.name, move || {
            DhcpServer::bind(&br, METADATA_IP, table)
        })
        .expect("bind DHCP server")
    }

    /// Writes an executable script into the scratch dir.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, body).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// The udhcpc script printing the environment on `bound`.
    pub fn udhcpc_script(&self) -> PathBuf {
        self.script(
            "udhcpc.sh",
            "#!/bin/sh\ncase \"$1\" in\n  bound|renew) env | sort | sed 's/^/DHCPENV /' ;;\nesac\nexit 0\n",
        )
    }
}

/// Result of one udhcpc run.
pub struct UdhcpcRun {
    /// Whether udhcpc exited with success (lease obtained).
    pub ok: bool,
    /// Variables the script printed on `bound`.
    pub env: std::collections::HashMap<String, String>,
    /// Raw output, for failure messages.
    pub output: String,
}

/// Starts busybox udhcpc in `ns` (brings eth0 up first); not awaited.
pub fn udhcpc_command(ns: &str, script: &Path, tries: u32) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!(
            "ip link set eth0 up && exec busybox udhcpc -i eth0 -n -q -f -t {tries} -T 1 -A 1 -s {}",
            script.display()
        ))
        .kill_on_drop(true);
    cmd
}

/// Starts busybox udhcpc in `ns` whose eth0 is already up; not awaited.
pub fn udhcpc_command_direct(ns: &str, script: &Path, tries: u32) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args([
        "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-T", "1", "-A",
        "1",
    ])
    .arg("-t")
    .arg(tries.to_string())
    .arg("-s")
    .arg(script)
    .kill_on_drop(true);
    cmd
}

/// Runs udhcpc in `ns` to completion (bounded by a timeout) and parses its output.
pub async fn udhcpc(ns: &str, script: &Path, tries: u32) -> UdhcpcRun {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        udhcpc_command(ns, script, tries).output(),
    )
    .await
    .expect("udhcpc did not finish within 30 s")
    .expect("spawn udhcpc");
    parse_udhcpc(out)
}

/// Parses the output of a finished udhcpc.
pub fn parse_udhcpc(out: std::process::Output) -> UdhcpcRun {
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let env = output
        .lines()
        .filter_map(|l| l.strip_prefix("DHCPENV "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    UdhcpcRun {
        ok: out.status.success(),
        env,
        output,
    }
}

/// Polls `cond` every 20 ms for up to 10 s.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
