//! Network-namespace harness for the root-only tests: RAII guards that
//! create `nbt<token>…` namespaces, bridges and veth pairs and delete them
//! (killing any process left inside) even when a test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nubo_dhcp::{DhcpServer, LeaseTable, METADATA_IP};
use nubo_netid::MacAddr;
use nubo_tests::netns::{is_root, BridgeHost, GuestLink};

pub use nubo_tests::netns::in_netns;

/// Runs a command, returning stdout; panics with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    nubo_tests::netns::run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A host namespace with bridges (each owning 169.254.169.254/32) and guest
/// namespaces attached by veth pairs; guests' interface is `eth0`.
/// Everything goes with its [`BridgeHost`] on drop.
pub struct Topology {
    /// The "hypervisor" namespace holding the bridges.
    pub host: String,
    lab: BridgeHost,
    /// Scratch directory (scripts, lease files).
    pub dir: tempfile::TempDir,
}

/// A deterministic locally administered MAC for test guest `i`.
pub fn mac(i: u16) -> MacAddr {
    let [hi, lo] = i.to_be_bytes();
    MacAddr([0x02, 0x6e, 0x62, 0x74, hi, lo])
}

impl Topology {
    /// Creates the host namespace and the given bridges in it.
    pub fn new(bridges: &[&str]) -> Self {
        assert!(
            is_root(),
            "these tests create network namespaces and must run as root"
        );
        let lab = BridgeHost::new().expect("host namespace");
        for br in bridges {
            lab.add_bridge(br, &format!("{METADATA_IP}/32"))
                .expect("bridge");
        }
        Self {
            host: lab.host().to_string(),
            lab,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Adds guests `(index, mac, bridge)` (`eth0` left down); returns their
    /// namespace names.
    pub fn add_guests(&mut self, guests: &[(u16, MacAddr, &str)]) -> Vec<String> {
        let links: Vec<GuestLink> = guests
            .iter()
            .map(|(i, m, br)| GuestLink {
                netns: self.lab.names().name(&format!("g{i}")),
                host_end: format!("v{i}"),
                bridge: br.to_string(),
                mac: Some(m.to_string()),
                ..GuestLink::default()
            })
            .collect();
        self.lab.add_guests(&links).expect("guests");
        links.into_iter().map(|g| g.netns).collect()
    }

    /// Binds a DHCP server on `bridge` inside the host namespace.
    pub fn server(&self, bridge: &str, table: LeaseTable) -> DhcpServer {
        let br = bridge.to_string();
        in_netns(&self.host, move || {
            DhcpServer::bind(&br, METADATA_IP, table)
        })
        .expect("enter the host namespace")
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
