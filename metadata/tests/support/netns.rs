//! Network-namespace test topology: a "host" namespace with bridges that
//! own 169.254.169.254/32, and guest namespaces attached by veth.
//!
//! Built on the harness's [`BridgeHost`]: everything is named
//! `nbt<token>…` and deleted on drop.

use std::process::Command;

use nubo_tests::netns::{ip_batch, BridgeHost, GuestLink};

/// A guest: a namespace with `eth0` on one of the host's bridges.
pub struct Guest {
    /// Namespace name.
    pub ns: String,
    /// Guest address (no prefix length).
    pub ip: String,
    /// Guest MAC.
    pub mac: String,
}

/// The topology guard: everything goes with its [`BridgeHost`] on drop.
pub struct Topology {
    /// The host namespace holding the bridges.
    pub host: String,
    lab: BridgeHost,
    veths: usize,
}

impl Topology {
    /// Creates the host namespace with `bridges` (each holding
    /// 169.254.169.254/32), an underlay-like device with a default
    /// route and a route to 10.0.0.0/24 (so replies can only work through
    /// the device-bound on-link fallback), and loose rp_filter as on Debian.
    pub fn new(bridges: &[&str]) -> Self {
        let lab = BridgeHost::new().expect("host namespace");
        let host = lab.host().to_string();
        lab.host_run("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=2"])
            .expect("rp_filter");
        // No dummy driver on every kernel: a veth pair stands in for the underlay.
        ip_batch(
            Some(&host),
            "link add up0 type veth peer name up1
link set up1 up
addr add 10.250.0.1/24 dev up0
link set up0 up
route add default via 10.250.0.254
route add 10.0.0.0/24 via 10.250.0.254
",
        )
        .expect("underlay");
        for bridge in bridges {
            lab.add_bridge(bridge, "169.254.169.254/32")
                .expect("bridge");
        }
        Topology {
            host,
            lab,
            veths: 0,
        }
    }

    /// Adds guest namespace `nbt<token><suffix>` with `eth0` (`ip`/24, `mac`)
    /// plugged into `bridge`, and a route to 169.254.169.254 on eth0.
    pub fn add_guest(&mut self, suffix: &str, bridge: &str, ip_addr: &str, mac: &str) -> Guest {
        self.veths += 1;
        let ns = self.lab.names().name(suffix);
        self.lab
            .add_guests(&[GuestLink {
                netns: ns.clone(),
                host_end: format!("v{}", self.veths),
                bridge: bridge.to_string(),
                mac: Some(mac.to_string()),
                up: true,
                addr: Some(format!("{ip_addr}/24")),
                routes: vec!["169.254.169.254/32".into()],
            }])
            .expect("guest");
        Guest {
            ns,
            ip: ip_addr.to_owned(),
            mac: mac.to_owned(),
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
