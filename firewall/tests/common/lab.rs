//! A throw-away network lab: one "host" namespace with a bridge `br0`
//! (owning 169.254.169.254) and N guest namespaces, each attached by a veth
//! whose host end `tapN` is a bridge port. Everything is named `nbt<token>…`
//! (the harness's [`BridgeHost`]) and removed on drop, together with every
//! process the lab started.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nubo_firewall::Netns;
use nubo_tests::netns::{BridgeHost, GuestLink};

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

/// The lab; dropping it kills the processes it started and deletes every
/// namespace (with its [`BridgeHost`]).
pub struct Lab {
    /// Name of the host namespace.
    pub host: String,
    /// The guests.
    pub guests: Vec<Guest>,
    children: Mutex<Vec<Child>>,
    net: BridgeHost,
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
    if let Err(e) = nubo_tests::netns::run(args[0], &args[1..]) {
        panic!("{e:#}");
    }
}

/// Polls `f` until it is true or 10 s have passed; returns the last result.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    nubo_tests::wait_until(Duration::from_secs(10), "the condition", || Ok(f())).is_ok()
}

impl Lab {
    /// Builds a lab with `n` guests (10.77.0.11, .12, …).
    pub fn new(n: usize) -> Lab {
        assert!(
            nubo_tests::netns::is_root(),
            "network namespace tests need root"
        );
        let net = BridgeHost::new().expect("host namespace");
        net.add_bridge("br0", "169.254.169.254/16").expect("br0");
        let guests: Vec<Guest> = (0..n)
            .map(|i| Guest {
                ns: net.names().name(&format!("g{i}")),
                tap: format!("tap{i}"),
                mac: [0x02, 0x77, 0, 0, 0, 0x11 + i as u8],
                ip: format!("10.77.0.{}", 11 + i),
            })
            .collect();
        let links: Vec<GuestLink> = guests
            .iter()
            .map(|g| GuestLink {
                netns: g.ns.clone(),
                host_end: g.tap.clone(),
                bridge: "br0".into(),
                mac: Some(nubo_netid::MacAddr(g.mac).to_string()),
                up: true,
                addr: Some(format!("{}/24", g.ip)),
                routes: vec!["169.254.0.0/16".into()],
            })
            .collect();
        net.add_guests(&links).expect("guests");
        Lab {
            host: net.host().to_string(),
            guests,
            children: Mutex::new(Vec::new()),
            net,
        }
    }

    /// Adds a namespace `nbt<token>r` whose `eth0` (10.77.0.99/24) is
    /// bridged through a port named `ifname` (e.g. `vx-1`, standing in for a
    /// VXLAN device towards another node). Returns the namespace name.
    pub fn add_remote(&mut self, ifname: &str) -> String {
        let ns = self.net.names().name("r");
        self.net
            .add_guests(&[GuestLink {
                netns: ns.clone(),
                host_end: ifname.to_string(),
                bridge: "br0".into(),
                up: true,
                addr: Some("10.77.0.99/24".into()),
                ..GuestLink::default()
            }])
            .expect("remote");
        ns
    }

    /// Adds a router namespace `nbt<token>q` whose `eth0` (MAC `mac`,
    /// address `addr`, forwarding on) is bridged into `br0` through the
    /// veth end `host_end` (a `qr…` router leg). Returns the namespace name.
    pub fn add_router_leg(
        &mut self,
        host_end: &str,
        mac: nubo_netid::MacAddr,
        addr: &str,
    ) -> String {
        let ns = self.net.names().name("q");
        self.net
            .add_guests(&[GuestLink {
                netns: ns.clone(),
                host_end: host_end.to_string(),
                bridge: "br0".into(),
                mac: Some(mac.to_string()),
                up: true,
                addr: Some(addr.to_string()),
                ..GuestLink::default()
            }])
            .expect("router leg");
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

/// Opens a packet socket (every protocol) in namespace `ns`, runs
/// `stimulus`, then reads frames for up to 3 s and returns the first one
/// `pred` accepts (or `None`). Frames that arrived while `stimulus` ran are
/// read too: the socket exists before it starts.
pub fn capture(ns: &str, stimulus: impl FnOnce(), pred: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    use std::io::Read;
    let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
    let sock = nubo_firewall::libnft::in_named_netns(ns, || {
        Ok(socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(proto)),
        )
        .expect("packet socket"))
    })
    .expect("enter namespace");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stimulus();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = (&sock).read(&mut buf) {
            if pred(&buf[..n]) {
                return Some(buf[..n].to_vec());
            }
        }
    }
    None
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for child in children.iter_mut() {
            // `ip netns exec` execs the program, so this PID is the process.
            let _ = child.kill();
            let _ = child.wait();
        }
        // The namespaces go with `net`.
    }
}
