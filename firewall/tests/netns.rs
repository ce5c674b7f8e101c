//! Real traffic through real rulesets, each test in fresh namespaces (root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::lab::{eventually, must, run, Lab};
use common::specs::*;
use nubo_firewall::libnft::in_named_netns;
use nubo_firewall::{
    apply_in, current_in, plan, remove_in, ruleset, ruleset_with_mode, Direction, FirewallAction,
    FirewallError, FirewallSpec, Nft, PortSpec, Protocol, Remote, RenderMode,
};

fn lab_port(lab: &Lab, g: usize, groups: &[&str]) -> PortSpec {
    let guest = &lab.guests[g];
    port(
        &format!("port-{g}"),
        &guest.tap,
        guest.mac,
        &guest.ip,
        groups,
    )
}

fn apply(lab: &Lab, spec: &FirewallSpec) {
    apply_in(&lab.netns(), &ruleset(spec)).expect("apply");
}

#[test]
fn kernel_accepts_every_rendering_and_restart_is_a_noop() {
    let lab = Lab::new(0);
    let ns = lab.netns();
    let mut specs: Vec<(String, nubo_firewall::Ruleset)> = Vec::new();
    for (name, spec) in [
        (
            "default",
            spec(
                vec![port("a", "tapa", [2, 0, 0, 0, 0, 1], "10.77.0.11", &["d"])],
                vec![default_group("d", &["10.77.0.11"])],
            ),
        ),
        (
            "many",
            many_rules(10_000, "tapa", [2, 0, 0, 0, 0, 1], "10.77.0.11"),
        ),
        ("icmp", icmp_type_code()),
    ] {
        specs.push((format!("{name}/sets"), ruleset(&spec)));
        specs.push((
            format!("{name}/linear"),
            ruleset_with_mode(&spec, RenderMode::Linear),
        ));
    }
    assert_eq!(current_in(&ns).expect("list"), None);
    for (name, rs) in &specs {
        apply_in(&ns, rs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let listed = current_in(&ns).expect("list").expect("tables exist");
        assert_eq!(plan(rs, Some(&listed)), FirewallAction::Noop, "{name}");
        // A restarted agent plans against the live tables: nothing to do, and
        // the tables stay byte-for-byte the same.
        let again = current_in(&ns).expect("list").expect("tables exist");
        assert_eq!(listed, again, "{name}");
        let other = &specs[0].1;
        if other != rs {
            assert_eq!(
                plan(other, Some(&listed)),
                FirewallAction::Replace,
                "{name}"
            );
        }
    }
    remove_in(&ns).expect("remove");
    assert_eq!(current_in(&ns).expect("list"), None);
    remove_in(&ns).expect("remove is idempotent");
}

/// `cat` of a file inside the lab's host namespace.
fn host_cat(lab: &Lab, path: &str) -> String {
    let out = lab.exec(&lab.host, &["cat", path]);
    assert!(out.status.success(), "cat {path}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn library_applies_in_a_fresh_namespace_and_reads_it_back() {
    let lab = Lab::new(1);
    let ns = lab.netns();
    let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    // Off, so the apply has to turn it on: in the lab's namespace.
    lab.host_ok(&["sh", "-c", &format!("echo 0 > {sysctl}")]);
    assert_eq!(host_cat(&lab, sysctl), "0");
    let rs = ruleset(&spec(
        vec![lab_port(&lab, 0, &["default"])],
        vec![default_group("default", &[&lab.guests[0].ip])],
    ));
    assert_eq!(current_in(&ns).expect("list"), None);

    apply_in(&ns, &rs).expect("apply through libnftables");
    assert_eq!(
        host_cat(&lab, sysctl),
        "1",
        "bridge netfilter enabled there"
    );

    // Read back through the library: both tables, our fingerprint, no-op.
    let listed = current_in(&ns).expect("list").expect("tables exist");
    assert!(listed.starts_with("table bridge nubo {"), "{listed}");
    assert!(listed.contains("table inet nubo {"), "{listed}");
    assert_eq!(plan(&rs, Some(&listed)), FirewallAction::Noop);
    // The `nft` program in that namespace sees the very same tables, and
    // the library prints them as it does.
    let by_program = lab.exec(&lab.host, &["nft", "list", "table", "bridge", "nubo"]);
    assert!(by_program.status.success(), "{by_program:?}");
    let by_program = String::from_utf8_lossy(&by_program.stdout).to_string();
    assert!(
        listed.starts_with(&by_program),
        "library:\n{listed}\nnft:\n{by_program}"
    );
    // And they are where the lab's guest port is filtered.
    assert!(listed.contains(&lab.guests[0].tap), "{listed}");

    // JSON output through the wrapper, in the same namespace.
    let json = in_named_netns(&lab.host, || {
        let mut nft = Nft::new()?;
        nft.set_json(true);
        nft.run("list as JSON", "list table bridge nubo")
    })
    .expect("JSON listing");
    let json: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let items = json["nftables"].as_array().expect("nftables array");
    assert!(
        items
            .iter()
            .any(|i| i["table"]["family"] == "bridge" && i["table"]["name"] == "nubo"),
        "{json}"
    );

    // A transaction the kernel rejects (its second command fails) changes
    // nothing, and the error carries libnftables' text.
    let err = in_named_netns(&lab.host, || {
        Nft::new()?.run(
            "bad transaction",
            "delete table bridge nubo\ndelete table bridge nubo\n",
        )
    })
    .expect_err("the second delete fails");
    let FirewallError::Nft { what, message, .. } = &err else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(*what, "bad transaction");
    assert!(message.contains("No such file or directory"), "{message}");
    assert_eq!(
        current_in(&ns).expect("list").as_deref(),
        Some(listed.as_str()),
        "the failed transaction left the tables as they were"
    );

    remove_in(&ns).expect("remove");
    assert_eq!(current_in(&ns).expect("list"), None);
}

#[test]
fn current_acts_on_the_calling_threads_namespace() {
    // `Netns::Current` keeps one library context; a thread in another
    // namespace must get one of its own, not the cached one.
    let (a, b) = (Lab::new(0), Lab::new(0));
    let rs = ruleset(&FirewallSpec::default());
    in_named_netns(&a.host, || nubo_firewall::apply(&rs)).expect("apply in a");
    let in_b = in_named_netns(&b.host, nubo_firewall::current).expect("list in b");
    assert_eq!(in_b, None, "b is untouched");
    let in_a = in_named_netns(&a.host, nubo_firewall::current).expect("list in a");
    assert_eq!(plan(&rs, in_a.as_deref()), FirewallAction::Noop);
    in_named_netns(&a.host, nubo_firewall::remove).expect("remove in a");
    assert_eq!(current_in(&a.netns()).expect("list"), None);
    // Removing absent tables is a no-op, in b too.
    in_named_netns(&b.host, nubo_firewall::remove).expect("remove in b");
}

#[test]
fn same_group_reaches_non_members_do_not() {
    let lab = Lab::new(3);
    // g0, g1 in "default" (egress any, ingress from members); g2 in "other"
    // (egress any, no ingress at all).
    let spec = spec(
        vec![
            lab_port(&lab, 0, &["default"]),
            lab_port(&lab, 1, &["default"]),
            lab_port(&lab, 2, &["other"]),
        ],
        vec![
            default_group("default", &[&lab.guests[0].ip, &lab.guests[1].ip]),
            group(
                "other",
                vec![rule(Direction::Egress, Protocol::Any, None, Remote::Any)],
                &[&lab.guests[2].ip],
            ),
        ],
    );
    apply(&lab, &spec);
    let (ip0, ip1, ip2) = (
        lab.guests[0].ip.clone(),
        lab.guests[1].ip.clone(),
        lab.guests[2].ip.clone(),
    );
    assert!(eventually(|| lab.ping(0, &ip1)), "member to member");
    assert!(eventually(|| lab.ping(1, &ip0)), "member to member");
    assert!(
        !lab.ping(2, &ip0),
        "non-member must not reach a default-group port"
    );
    assert!(
        !lab.ping(0, &ip2),
        "nothing may reach a port without ingress rules"
    );
}

#[test]
fn tcp22_from_cidr_only_and_removing_the_rule_closes_new_connections() {
    let lab = Lab::new(3);
    let ssh_only_from_g0 = |with_rule: bool| {
        let mut rules = vec![rule(Direction::Egress, Protocol::Any, None, Remote::Any)];
        if with_rule {
            rules.push(rule(
                Direction::Ingress,
                Protocol::Tcp,
                Some((22, 22)),
                cidr(&format!("{}/32", lab.guests[0].ip)),
            ));
        }
        spec(
            vec![
                lab_port(&lab, 0, &["client"]),
                lab_port(&lab, 1, &["ssh"]),
                lab_port(&lab, 2, &["client"]),
            ],
            vec![
                group("ssh", rules, &[]),
                group(
                    "client",
                    vec![rule(Direction::Egress, Protocol::Any, None, Remote::Any)],
                    &[],
                ),
            ],
        )
    };
    lab.listen(Some(1), 22);
    lab.listen(Some(1), 23);
    apply(&lab, &ssh_only_from_g0(true));
    let ip1 = lab.guests[1].ip.clone();
    assert!(
        eventually(|| lab.tcp(0, &ip1, 22)),
        "tcp/22 from the CIDR is open"
    );
    assert!(!lab.tcp(0, &ip1, 23), "tcp/23 is not");
    assert!(!lab.ping(0, &ip1), "icmp is not");
    assert!(!lab.tcp(2, &ip1, 22), "tcp/22 from outside the CIDR is not");

    apply(&lab, &ssh_only_from_g0(false));
    assert!(
        !lab.tcp(0, &ip1, 22),
        "after removing the rule new connections fail"
    );
    apply(&lab, &ssh_only_from_g0(true));
    assert!(eventually(|| lab.tcp(0, &ip1, 22)), "and it opens again");
}

/// g0 and g1 in a group that allows everything in and out, so only
/// anti-spoofing can stop traffic between them.
fn open_spec(lab: &Lab, g0_secured: bool) -> FirewallSpec {
    let open = group(
        "open",
        vec![
            rule(Direction::Egress, Protocol::Any, None, Remote::Any),
            rule(Direction::Ingress, Protocol::Any, None, Remote::Any),
        ],
        &[],
    );
    let mut ports: Vec<PortSpec> = (0..lab.guests.len())
        .map(|g| lab_port(lab, g, &["open"]))
        .collect();
    ports[0].port_security = g0_secured;
    spec(ports, vec![open])
}

#[test]
fn spoofed_ip_and_mac_are_dropped() {
    let lab = Lab::new(2);
    apply(&lab, &open_spec(&lab, true));
    let ip1 = lab.guests[1].ip.clone();
    assert!(eventually(|| lab.ping(0, &ip1)), "own address works");

    lab.guest_ok(0, &["ip", "addr", "flush", "dev", "eth0"]);
    lab.guest_ok(0, &["ip", "addr", "add", "10.77.0.50/24", "dev", "eth0"]);
    assert!(!lab.ping(0, &ip1), "spoofed source IP must be dropped");

    lab.guest_ok(0, &["ip", "addr", "flush", "dev", "eth0"]);
    lab.guest_ok(
        0,
        &[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.guests[0].ip),
            "dev",
            "eth0",
        ],
    );
    assert!(eventually(|| lab.ping(0, &ip1)), "own address works again");

    lab.guest_ok(
        0,
        &["ip", "link", "set", "eth0", "address", "02:77:00:00:00:99"],
    );
    assert!(!lab.ping(0, &ip1), "changed MAC must be dropped");
}

fn dhcp_lease(lab: &Lab) -> bool {
    nubo_tests::netns::udhcpc_once(&lab.guests[1].ns).is_ok()
}

/// Starts a busybox udhcpd serving 10.77.0.100-110 in `ns`; returns the
/// files to delete afterwards.
fn start_udhcpd(lab: &Lab, ns: &str) -> [std::path::PathBuf; 2] {
    let conf = std::env::temp_dir().join(format!("{ns}-udhcpd.conf"));
    let leases = std::env::temp_dir().join(format!("{ns}-udhcpd.leases"));
    std::fs::write(
        &conf,
        format!(
            "start 10.77.0.100\nend 10.77.0.110\ninterface eth0\nlease_file {}\n",
            leases.display()
        ),
    )
    .expect("write udhcpd.conf");
    std::fs::write(&leases, "").expect("write leases");
    lab.spawn(
        ns,
        &["busybox", "udhcpd", "-f", &conf.display().to_string()],
    );
    [conf, leases]
}

#[test]
fn dhcp_never_crosses_into_vxlan_devices() {
    let mut lab = Lab::new(2);
    let remote = lab.add_remote("vx-1");
    let files = start_udhcpd(&lab, &remote);
    // Control: without nubo's tables the remote node's DHCP server answers.
    assert!(
        eventually(|| dhcp_lease(&lab)),
        "control: lease across the overlay"
    );
    apply(&lab, &open_spec(&lab, true));
    assert!(!dhcp_lease(&lab), "DHCP must stay on the node");
    // Ordinary traffic still crosses the overlay.
    assert!(
        eventually(|| lab.ping(1, "10.77.0.99")),
        "overlay traffic still flows"
    );
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn guest_cannot_act_as_dhcp_server() {
    let lab = Lab::new(2);
    let files = start_udhcpd(&lab, &lab.guests[0].ns);

    // Control: with g0 unfiltered, the rogue server does hand out a lease.
    apply(&lab, &open_spec(&lab, false));
    assert!(
        eventually(|| dhcp_lease(&lab)),
        "control: lease from unfiltered server"
    );
    // With port security on g0, it cannot.
    apply(&lab, &open_spec(&lab, true));
    assert!(!dhcp_lease(&lab), "guest DHCP server must be blocked");
    for f in files {
        let _ = std::fs::remove_file(f);
    }
}

fn neigh_mac(lab: &Lab, g: usize, ip: &str) -> String {
    let out = lab.exec(
        &lab.guests[g].ns,
        &["ip", "neigh", "show", ip, "dev", "eth0"],
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn arp_spoof(lab: &Lab, claimed_ip: &str) {
    // Unsolicited ARP replies claiming `claimed_ip` with g0's MAC.
    let _ = lab.exec(
        &lab.guests[0].ns,
        &[
            "busybox", "arping", "-A", "-c", "2", "-w", "2", "-I", "eth0", "-s", claimed_ip,
            claimed_ip,
        ],
    );
}

#[test]
fn arp_reply_for_another_ip_is_dropped() {
    let lab = Lab::new(3);
    let (ip1, g0_mac) = (
        lab.guests[1].ip.clone(),
        nubo_netid::MacAddr(lab.guests[0].mac).to_string(),
    );
    // arping must bind to the address it claims.
    lab.guest_ok(0, &["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
    // Control: unfiltered g0 can poison g2's cache entry for g1.
    apply(&lab, &open_spec(&lab, false));
    assert!(eventually(|| lab.ping(2, &ip1)));
    assert!(
        eventually(|| {
            arp_spoof(&lab, &ip1);
            neigh_mac(&lab, 2, &ip1).contains(&g0_mac)
        }),
        "control: spoofed ARP reaches g2"
    );
    // Secured: g2 learns g1's real MAC again and g0's replies are dropped.
    apply(&lab, &open_spec(&lab, true));
    let _ = lab.exec(&lab.guests[2].ns, &["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(eventually(|| lab.ping(2, &ip1)));
    for _ in 0..3 {
        arp_spoof(&lab, &ip1);
        assert!(
            !neigh_mac(&lab, 2, &ip1).contains(&g0_mac),
            "spoofed ARP must be dropped"
        );
    }
}

#[test]
fn guest_reaches_metadata_on_the_host_but_nothing_else() {
    let lab = Lab::new(1);
    lab.listen(None, 80);
    lab.listen(None, 22);
    // The metadata server answers guests through the bridge.
    lab.host_ok(&["ip", "route", "add", "10.77.0.0/24", "dev", "br0"]);
    let spec = spec(
        vec![lab_port(&lab, 0, &["default"])],
        vec![default_group("default", &[&lab.guests[0].ip])],
    );
    apply(&lab, &spec);
    assert!(
        eventually(|| lab.tcp(0, "169.254.169.254", 80)),
        "metadata port reachable"
    );
    assert!(
        !lab.tcp(0, "169.254.169.254", 22),
        "other host ports are not"
    );
}

/// Sends `n` DHCP-client datagrams (UDP 68 -> 255.255.255.255:67) from
/// guest `g`'s address.
fn send_dhcp(lab: &Lab, g: usize, n: usize) {
    let ip: std::net::Ipv4Addr = lab.guests[g].ip.parse().unwrap();
    in_named_netns(&lab.guests[g].ns, move || {
        let sock = std::net::UdpSocket::bind((ip, 68)).unwrap();
        sock.set_broadcast(true).unwrap();
        for _ in 0..n {
            sock.send_to(&[0u8; 300], ("255.255.255.255", 67)).unwrap();
        }
        Ok(())
    })
    .unwrap();
}

/// Guest 0 sends 200 DHCP datagrams with a limit of 5/s (burst 5): the
/// kernel drops the excess in prerouting, before any host socket, and
/// counts it in guest 0's counter; guest 1's budget and counter are its own.
#[test]
fn guest_limits_drop_the_excess_per_tap_and_count_it() {
    let lab = Lab::new(2);
    let mut spec = spec(vec![lab_port(&lab, 0, &[]), lab_port(&lab, 1, &[])], vec![]);
    spec.limits.dhcp = nubo_firewall::Rate {
        per_second: 5,
        burst: 5,
    };
    apply(&lab, &spec);
    let counter = |g: usize| {
        let all = nubo_firewall::limit_counters_in(&lab.netns()).unwrap();
        all[&nubo_firewall::limit_counter(&format!("port-{g}"), nubo_firewall::LimitKind::Dhcp)]
    };
    assert_eq!((counter(0), counter(1)), (0, 0));
    // What reaches the host: a socket on :67 of the bridge.
    let listener = in_named_netns(&lab.host, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind_device(Some(b"br0")).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 67).into())
            .unwrap();
        s.set_nonblocking(true).unwrap();
        Ok(std::net::UdpSocket::from(s))
    })
    .unwrap();
    let received = std::cell::Cell::new(0usize);
    let drain = || {
        let mut buf = [0u8; 1500];
        let n = std::iter::from_fn(|| listener.recv_from(&mut buf).ok()).count();
        received.set(received.get() + n);
        received.get()
    };
    send_dhcp(&lab, 0, 200);
    // Every datagram either reached the host or was counted as limited.
    assert!(
        eventually(|| drain() + usize::try_from(counter(0)).unwrap() == 200),
        "{} received + {} limited != 200",
        received.get(),
        counter(0)
    );
    let limited = usize::try_from(counter(0)).unwrap();
    assert!(limited >= 150, "only {limited} of 200 limited");
    assert_eq!(counter(1), 0, "guest 1 charged for guest 0's flood");
    // Guest 1 has its own budget: all 3 of its datagrams arrive.
    received.set(0);
    send_dhcp(&lab, 1, 3);
    assert!(
        eventually(|| drain() == 3),
        "{} of guest 1's 3 arrived",
        received.get()
    );
    assert_eq!(counter(1), 0);
    assert_eq!(
        usize::try_from(counter(0)).unwrap(),
        limited,
        "guest 1's datagrams counted for guest 0"
    );
}

/// MAC of `eth0` in namespace `ns`.
fn eth0_mac(lab: &Lab, ns: &str) -> String {
    let out = lab.exec(ns, &["cat", "/sys/class/net/eth0/address"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One ARP request from `ns` for `ip`; whether a reply came (busybox
/// arping exits 0 only then).
fn arping(lab: &Lab, ns: &str, ip: &str) -> bool {
    lab.exec(
        ns,
        &[
            "busybox", "arping", "-f", "-c", "1", "-w", "1", "-I", "eth0", ip,
        ],
    )
    .status
    .success()
}

/// Whether the host bridge has learned `mac` behind port `dev`.
fn learned(lab: &Lab, mac: &str, dev: &str) -> bool {
    let out = lab.exec(&lab.host, &["bridge", "fdb", "show", "br", "br0"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(mac) && l.contains(&format!(" dev {dev} ")))
}

/// An ICMP echo request to `dst` (an Ethernet frame).
fn is_echo_to(frame: &[u8], dst: [u8; 4]) -> bool {
    frame.len() >= 35
        && frame[12..14] == [0x08, 0x00]
        && frame[23] == 1
        && frame[30..34] == dst
        && frame[34] == 8
}

/// An ARP frame whose sender protocol address is `spa`.
fn is_arp_from(frame: &[u8], spa: [u8; 4]) -> bool {
    frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[28..32] == spa
}

/// The distributed gateway: a router namespace's leg (`qr…`, the gateway
/// MAC and IP) on a bridge with a guest and a VXLAN port (`vx-1`, here a
/// namespace standing in for the other nodes). With the gateway declared
/// routed behind `vx-1`: the other side's ARP for the gateway is not
/// answered, the gateway's own ARP does not leave, routed frames leave with
/// the node MAC, and the bridge never learns the gateway MAC behind
/// `vx-1`; the local guest still reaches its gateway (and its replies count
/// as established, though the guest's group admits only its members).
/// Each negative has its control without the routed entry.
#[test]
fn routed_gateway_stays_on_its_node() {
    use nubo_firewall::{gateway_counter, limit_counters_in, GatewayCounter, RoutedGateway};
    use nubo_netid::MacAddr;
    let mut lab = Lab::new(1);
    let remote = lab.add_remote("vx-1");
    let gw_mac = MacAddr::router_mac(&["router", "network"]);
    let node_mac = MacAddr([0x02, 0x6e, 0x6f, 0x64, 0x65, 0x01]);
    let leg = nubo_netid::hashed_name("qr", &[&lab.host, "network"]);
    let router = lab.add_router_leg(&leg, gw_mac, "10.77.0.1/24");
    let (gw_mac_s, node_mac_s) = (gw_mac.to_string(), node_mac.to_string());
    let remote_mac = eth0_mac(&lab, &remote);
    // The router resolves the remote host statically (its ARP will not
    // cross the VXLAN port).
    lab.exec(
        &router,
        &[
            "ip",
            "neigh",
            "replace",
            "10.77.0.99",
            "lladdr",
            &remote_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let plain = spec(
        vec![lab_port(&lab, 0, &["default"])],
        vec![default_group("default", &[&lab.guests[0].ip])],
    );
    let mut routed = plain.clone();
    routed.routed.push(RoutedGateway {
        vxlan: "vx-1".into(),
        ip: "10.77.0.1".parse().unwrap(),
        mac: gw_mac,
        node_mac,
    });
    let counter = |kind| {
        limit_counters_in(&lab.netns())
            .unwrap()
            .get(&gateway_counter("vx-1", kind))
            .copied()
            .unwrap_or(0)
    };
    let router_echo_src = || {
        let frame = common::lab::capture(
            &remote,
            || {
                lab.exec(&router, &["ping", "-c1", "-W1", "-n", "10.77.0.99"]);
            },
            |f| is_echo_to(f, [10, 77, 0, 99]),
        )
        .expect("the router's echo request reaches the remote side");
        MacAddr::from_slice(&frame[6..12]).unwrap()
    };

    // Controls: without the routed entry the gateway is visible across vx-1.
    apply(&lab, &plain);
    assert!(
        eventually(|| lab.ping(0, "10.77.0.1")),
        "guest reaches its gateway"
    );
    assert!(
        eventually(|| arping(&lab, &remote, "10.77.0.1")),
        "control: ARP across vx-1 answered"
    );
    assert_eq!(
        router_echo_src(),
        gw_mac,
        "control: routed frames carry the gateway MAC"
    );

    apply(&lab, &routed);
    let listed = current_in(&lab.netns()).unwrap().unwrap();
    assert!(listed.contains("chain gw_in_vx-1 {"), "{listed}");
    assert!(
        listed.contains(&format!("ether saddr set {node_mac_s}")),
        "{listed}"
    );
    // The local guest still reaches (and resolves) its gateway.
    lab.guest_ok(0, &["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(
        eventually(|| lab.ping(0, "10.77.0.1")),
        "guest reaches its gateway"
    );
    // The other side's ARP for the gateway is dropped at vx-1.
    let _ = lab.exec(&remote, &["ip", "neigh", "flush", "dev", "eth0"]);
    assert!(
        !arping(&lab, &remote, "10.77.0.1"),
        "ARP for the gateway from vx-1 answered"
    );
    assert!(counter(GatewayCounter::InDropped) >= 1);
    // Routed frames leave with the node MAC.
    assert_eq!(router_echo_src(), node_mac, "source MAC not rewritten");
    assert!(counter(GatewayCounter::Rewritten) >= 1);
    // The gateway's own ARP stays on the node.
    lab.exec(
        &router,
        &["ip", "neigh", "del", "10.77.0.99", "dev", "eth0"],
    );
    let out_before = counter(GatewayCounter::OutDropped);
    let leaked = common::lab::capture(
        &remote,
        || {
            lab.exec(&router, &["ping", "-c1", "-W1", "-n", "10.77.0.99"]);
        },
        |f| is_arp_from(f, [10, 77, 0, 1]),
    );
    assert_eq!(leaked, None, "the gateway's ARP left by vx-1");
    assert!(counter(GatewayCounter::OutDropped) > out_before);

    // Frames from the gateway MAC coming in by vx-1 are dropped before the
    // bridge learns it there (the remote host takes the gateway MAC).
    assert!(
        learned(&lab, &remote_mac, "vx-1"),
        "control: the bridge learns vx-1's MACs"
    );
    lab.exec(
        &remote,
        &["ip", "link", "set", "eth0", "address", &gw_mac_s],
    );
    let in_before = counter(GatewayCounter::InDropped);
    arping(&lab, &remote, &lab.guests[0].ip);
    lab.ping(0, "10.77.0.1");
    assert!(counter(GatewayCounter::InDropped) > in_before);
    assert!(
        !learned(&lab, &gw_mac_s, "vx-1"),
        "gateway MAC learned behind vx-1"
    );
    assert!(
        learned(&lab, &gw_mac_s, &leg),
        "gateway MAC learned on its leg"
    );
    // Control: without the routed entry the bridge does learn it there.
    apply(&lab, &plain);
    assert!(
        eventually(|| {
            arping(&lab, &remote, &lab.guests[0].ip);
            learned(&lab, &gw_mac_s, "vx-1")
        }),
        "control: the gateway MAC from vx-1 is learned without the rules"
    );
}

/// Sends one UDP datagram from namespace `ns` (source `from`, an ephemeral
/// port) to `to`.
fn udp_send(ns: &str, from: &str, to: std::net::SocketAddr) {
    let from: std::net::Ipv4Addr = from.parse().unwrap();
    in_named_netns(ns, move || {
        let sock = std::net::UdpSocket::bind((from, 0)).unwrap();
        sock.send_to(b"nubo", to).unwrap();
        Ok(())
    })
    .unwrap();
}

/// The source address of the next datagram `sock` receives within 1 s.
fn udp_source(sock: &std::net::UdpSocket) -> Option<std::net::IpAddr> {
    let mut buf = [0u8; 64];
    sock.recv_from(&mut buf).ok().map(|(_, peer)| peer.ip())
}

/// A router namespace between an external host (10.78.0.2) and two tenant
/// subnets (guest g1 10.77.0.5 with floating IP 10.78.0.20, guest g2
/// 10.77.1.6 without): DNAT of the floating IP, 1:1 SNAT of its fixed IP,
/// the node's SNAT address for the others (dropped when there is none),
/// east-west between subnets, nothing from outside but DNATed traffic;
/// re-applying the same spec changes nothing; removal is idempotent.
#[test]
fn router_namespace_nats_floating_ips_and_filters_inbound() {
    use nubo_firewall::router::{COUNTER_INBOUND, COUNTER_OUTBOUND};
    use nubo_firewall::{
        apply_router_ruleset, remove_router_ruleset, router_counters, router_ruleset, ExternalLeg,
        FloatingNat, InternalLeg, RouterNatSpec,
    };
    assert!(
        nubo_tests::netns::is_root(),
        "network namespace tests need root"
    );
    let names = nubo_tests::netns::Names::new().expect("names");
    let ns = |s: &str| names.add_netns(s).expect("netns");
    let (router, ext, g1, g2) = (ns("q"), ns("x"), ns("g1"), ns("g2"));
    let batch = |ns: &str, lines: &str| nubo_tests::netns::ip_batch(Some(ns), lines).expect(lines);
    batch(
        &router,
        &format!(
            "link add qg0 type veth peer name eth0 netns {ext}\n\
             link add qi0 type veth peer name eth0 netns {g1}\n\
             link add qi1 type veth peer name eth0 netns {g2}\n\
             addr add 10.78.0.10/24 dev qg0\naddr add 10.78.0.20/32 dev qg0\n\
             addr add 10.77.0.1/24 dev qi0\naddr add 10.77.1.1/24 dev qi1\n\
             link set qg0 up\nlink set qi0 up\nlink set qi1 up\n"
        ),
    );
    must(&[
        "ip",
        "netns",
        "exec",
        &router,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    batch(
        &ext,
        "addr add 10.78.0.2/24 dev eth0\nlink set eth0 up\nroute add 10.77.0.0/16 via 10.78.0.10\n",
    );
    batch(
        &g1,
        "addr add 10.77.0.5/24 dev eth0\nlink set eth0 up\nroute add default via 10.77.0.1\n",
    );
    batch(
        &g2,
        "addr add 10.77.1.6/24 dev eth0\nlink set eth0 up\nroute add default via 10.77.1.1\n",
    );
    let ping = |from: &str, ip: &str| {
        run(&["ip", "netns", "exec", from, "ping", "-c1", "-W1", "-n", ip])
            .status
            .success()
    };
    let server = in_named_netns(&ext, || {
        let s = std::net::UdpSocket::bind(("10.78.0.2", 5555)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        Ok(s)
    })
    .unwrap();
    let to = "10.78.0.2:5555".parse().unwrap();
    let counter = |name: &str| {
        router_counters(&router)
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    };

    // Control: plain routing lets the external host reach a fixed IP.
    assert!(
        eventually(|| ping(&ext, "10.77.0.5")),
        "control: routed without the table"
    );

    let mut spec = RouterNatSpec {
        external: Some(ExternalLeg {
            leg: "qg0".into(),
            snat: Some("10.78.0.10".parse().unwrap()),
            floating: vec![FloatingNat {
                floating: "10.78.0.20".parse().unwrap(),
                fixed: "10.77.0.5".parse().unwrap(),
            }],
        }),
        internal: vec![
            InternalLeg {
                leg: "qi0".into(),
                cidr: "10.77.0.0/24".parse().unwrap(),
            },
            InternalLeg {
                leg: "qi1".into(),
                cidr: "10.77.1.0/24".parse().unwrap(),
            },
        ],
    };
    assert_eq!(
        apply_router_ruleset(&router, &spec).unwrap(),
        FirewallAction::Replace
    );
    let list = || {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &router,
            "nft",
            "list",
            "table",
            "ip",
            "nubo-router",
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listed = list();
    assert!(
        listed.contains("ip daddr set ip daddr map @floating_dnat notrack"),
        "{listed}"
    );
    assert!(listed.contains("10.78.0.20 : 10.77.0.5"), "{listed}");

    // DNAT: the floating IP reaches g1; the fixed IP is not reachable.
    assert!(
        eventually(|| ping(&ext, "10.78.0.20")),
        "floating IP reaches g1"
    );
    assert!(!ping(&ext, "10.77.0.5"), "fixed IP reachable from outside");
    assert!(counter(COUNTER_INBOUND) >= 1);
    // SNAT: g1 leaves as its floating IP, g2 as the node's SNAT address.
    udp_send(&g1, "10.77.0.5", to);
    assert_eq!(udp_source(&server), Some("10.78.0.20".parse().unwrap()));
    udp_send(&g2, "10.77.1.6", to);
    assert_eq!(udp_source(&server), Some("10.78.0.10".parse().unwrap()));
    // East-west between the router's subnets.
    assert!(eventually(|| ping(&g1, "10.77.1.6")), "east-west");

    // Same spec again: nothing is touched (the counters keep their counts).
    let before = list();
    assert_eq!(
        apply_router_ruleset(&router, &spec).unwrap(),
        FirewallAction::Noop
    );
    assert_eq!(list(), before);
    assert!(
        counter(COUNTER_INBOUND) >= 1,
        "table replaced by a no-op apply"
    );

    // No SNAT address: g2's traffic is dropped, not leaked; g1 still leaves.
    spec.external.as_mut().unwrap().snat = None;
    assert_eq!(
        apply_router_ruleset(&router, &spec).unwrap(),
        FirewallAction::Replace
    );
    assert!(!list().contains("snat to 10.78.0.10"));
    udp_send(&g2, "10.77.1.6", to);
    assert_eq!(udp_source(&server), None, "g2 left without a SNAT address");
    assert!(counter(COUNTER_OUTBOUND) >= 1);
    udp_send(&g1, "10.77.0.5", to);
    assert_eq!(udp_source(&server), Some("10.78.0.20".parse().unwrap()));

    // The live table is the one router_ruleset renders (its fingerprint).
    let script = router_ruleset(&spec).unwrap();
    let comment = script
        .lines()
        .find(|l| l.contains("comment"))
        .unwrap()
        .trim();
    assert!(list().contains(comment), "{comment} not in {}", list());

    // A router without gateway: its subnets still reach each other, the
    // outside gets nothing.
    let no_gateway = RouterNatSpec {
        external: None,
        ..spec.clone()
    };
    assert_eq!(
        apply_router_ruleset(&router, &no_gateway).unwrap(),
        FirewallAction::Replace
    );
    assert!(
        eventually(|| ping(&g1, "10.77.1.6")),
        "east-west without gateway"
    );
    assert!(
        !ping(&ext, "10.77.0.5"),
        "outside reaches a router without gateway"
    );
    assert!(counter(nubo_firewall::router::COUNTER_OTHER) >= 1);

    // Removal, idempotent, also once the namespace is gone.
    remove_router_ruleset(&router).unwrap();
    let tables = run(&["ip", "netns", "exec", &router, "nft", "list", "tables"]);
    assert!(!String::from_utf8_lossy(&tables.stdout).contains("nubo-router"));
    remove_router_ruleset(&router).unwrap();
    assert!(router_counters(&router).unwrap().is_empty());
    remove_router_ruleset(&names.name("gone")).unwrap();
    // Control: without the table, the fixed IP is routed again.
    assert!(
        eventually(|| ping(&ext, "10.77.0.5")),
        "control: routed after removal"
    );
}
