//! Real DHCP clients (busybox udhcpc, ISC dhclient) against the server, in
//! network namespaces. Needs root, busybox-static, isc-dhcp-client, iproute2.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use common::*;
use nubo_dhcp::dhcproto::v4::{DhcpOption, Message, MessageType};
use nubo_dhcp::dhcproto::{Decodable, Decoder, Encodable};
use nubo_dhcp::{Lease, LeaseTable};
use nubo_netid::MacAddr;

fn lease(m: MacAddr, ip: [u8; 4], host: &str) -> Lease {
    Lease {
        router: Some(Ipv4Addr::new(ip[0], ip[1], ip[2], 1)),
        dns: vec![Ipv4Addr::new(10, 53, 0, 1), Ipv4Addr::new(10, 53, 0, 2)],
        mtu: Some(1400),
        hostname: Some(host.to_string()),
        domain: Some("nubo.test".to_string()),
        lease_secs: 3600,
        routes: vec![(
            "10.99.0.0/16".parse().expect("net"),
            Ipv4Addr::new(ip[0], ip[1], ip[2], 254),
        )],
        ..Lease::new(m, ip.into(), 24)
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udhcpc_and_dhclient_get_exact_config_unknown_mac_gets_nothing() {
    init_logs();
    let mut topo = Topology::new(&["br0"]);
    let (a, b, stranger) = (mac(1), mac(2), mac(3));
    let guests = topo.add_guests(&[(1, a, "br0"), (2, b, "br0"), (3, stranger, "br0")]);
    let table = LeaseTable::new();
    table
        .upsert(lease(a, [10, 20, 0, 5], "vm-a"))
        .expect("lease a");
    table
        .upsert(lease(b, [10, 20, 0, 6], "vm-b"))
        .expect("lease b");
    let server = topo.server("br0", table.clone()).spawn().expect("spawn");

    // Hostile input first: garbage and a BOOTREPLY from a guest are dropped.
    let garbage_from = guests[2].clone();
    sh(&["ip", "-n", &garbage_from, "link", "set", "eth0", "up"]);
    // Sent again until the responder has seen them: the guest's link was
    // just set up, and a datagram sent before its bridge port forwards is
    // lost on the way (not dropped by the responder).
    let send_garbage = || {
        in_netns(&garbage_from, || {
            let sock = guest_socket(Ipv4Addr::UNSPECIFIED);
            let mut bootreply = request(mac(3), MessageType::Offer, Ipv4Addr::UNSPECIFIED);
            bootreply.set_opcode(nubo_dhcp::dhcproto::v4::Opcode::BootReply);
            let mut datagrams = vec![
                bootreply.to_vec().expect("encode"),
                vec![0xff; 300],
                vec![1; 10],
            ];
            // From a known MAC: an unknown one is dropped before decoding.
            let mut fqdn_bomb = request(mac(1), MessageType::Discover, Ipv4Addr::UNSPECIFIED)
                .to_vec()
                .expect("encode");
            fqdn_bomb.splice(240..240, [81u8, 1, 0]);
            datagrams.push(fqdn_bomb);
            for d in datagrams {
                sock.send_to(&d, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
                    .expect("send garbage");
            }
        })
        .unwrap();
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.stats().dropped < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for 4 dropped datagrams"
        );
        send_garbage();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        server.stats().offers,
        0,
        "no answer to garbage or to the unknown MAC"
    );

    let script = topo.udhcpc_script();
    let run = udhcpc(&guests[0], &script, 5).await;
    assert!(run.ok, "udhcpc failed:\n{}", run.output);
    let expect = [
        ("ip", "10.20.0.5"),
        ("subnet", "255.255.255.0"),
        ("mask", "24"),
        ("router", "10.20.0.1"),
        ("mtu", "1400"),
        ("hostname", "vm-a"),
        ("domain", "nubo.test"),
        ("dns", "10.53.0.1 10.53.0.2"),
        ("broadcast", "10.20.0.255"),
        ("lease", "3600"),
        ("serverid", "169.254.169.254"),
        (
            "staticroutes",
            "10.99.0.0/16 10.20.0.254 169.254.169.254/32 0.0.0.0 0.0.0.0/0 10.20.0.1",
        ),
    ];
    for (k, v) in expect {
        assert_eq!(
            run.env.get(k).map(String::as_str),
            Some(v),
            "udhcpc {k}:\n{}",
            run.output
        );
    }

    let dh = dhclient(&topo, &guests[1]).await;
    let expect = [
        ("new_ip_address", "10.20.0.6"),
        ("new_subnet_mask", "255.255.255.0"),
        ("new_routers", "10.20.0.1"),
        ("new_interface_mtu", "1400"),
        ("new_host_name", "vm-b"),
        ("new_domain_name", "nubo.test"),
        ("new_domain_name_servers", "10.53.0.1 10.53.0.2"),
        ("new_dhcp_server_identifier", "169.254.169.254"),
        (
            "new_rfc3442_classless_static_routes",
            "16 10 99 10 20 0 254 32 169 254 169 254 0 0 0 0 0 10 20 0 1",
        ),
    ];
    for (k, v) in expect {
        assert_eq!(
            dh.get(k).map(String::as_str),
            Some(v),
            "dhclient {k}: {dh:?}"
        );
    }

    // Unknown MAC: the server sees it (counted) but stays silent.
    let ignored_before = server.stats().ignored;
    let run = udhcpc(&guests[2], &script, 2).await;
    assert!(
        !run.ok && run.env.is_empty(),
        "unknown MAC got a lease:\n{}",
        run.output
    );
    assert!(
        server.stats().ignored > ignored_before,
        "server never saw the unknown MAC"
    );

    // Live update: the port appears in the table, no restart needed...
    table
        .upsert(lease(stranger, [10, 20, 0, 7], "vm-c"))
        .expect("lease c");
    let run = udhcpc(&guests[2], &script, 5).await;
    assert_eq!(
        run.env.get("ip").map(String::as_str),
        Some("10.20.0.7"),
        "{}",
        run.output
    );
    // ...and disappears again.
    table.remove(&a);
    let run = udhcpc(&guests[0], &script, 2).await;
    assert!(!run.ok, "removed port still leased:\n{}", run.output);

    let stats = server.stats();
    assert!(stats.offers >= 3 && stats.acks >= 3, "{stats:?}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subnets_on_two_bridges_stay_apart() {
    init_logs();
    let mut topo = Topology::new(&["br0", "br1"]);
    let (a, b) = (mac(11), mac(12));
    // g1: MAC a on br0; g2: MAC b on br1; g3: MAC a again, but on br1.
    let guests = topo.add_guests(&[(1, a, "br0"), (2, b, "br1"), (3, a, "br1")]);
    // A route for the shared subnet via br0: replies on br1 must not follow it.
    sh(&[
        "ip",
        "-n",
        &topo.host,
        "route",
        "add",
        "10.30.0.0/24",
        "dev",
        "br0",
    ]);
    let (t0, t1) = (LeaseTable::new(), LeaseTable::new());
    t0.upsert(lease(a, [10, 30, 0, 5], "vm-a"))
        .expect("lease a");
    t1.upsert(lease(b, [10, 30, 0, 6], "vm-b"))
        .expect("lease b");
    let s0 = topo.server("br0", t0).spawn().expect("spawn br0");
    let s1 = topo.server("br1", t1).spawn().expect("spawn br1");
    let script = topo.udhcpc_script();

    let (r1, r2, r3) = tokio::join!(
        udhcpc(&guests[0], &script, 5),
        udhcpc(&guests[1], &script, 5),
        udhcpc(&guests[2], &script, 2)
    );
    assert_eq!(
        r1.env.get("ip").map(String::as_str),
        Some("10.30.0.5"),
        "{}",
        r1.output
    );
    assert_eq!(
        r2.env.get("ip").map(String::as_str),
        Some("10.30.0.6"),
        "{}",
        r2.output
    );
    assert!(!r3.ok, "br1 answered a MAC only br0 knows:\n{}", r3.output);
    assert_eq!((s0.stats().offers, s1.stats().offers), (1, 1));

    // Unicast renewal from g2 (on br1): the ACK must come back to ciaddr on
    // br1 although the host's only route for 10.30.0.0/24 points at br0.
    // The socket is bound to 10.30.0.6, so it cannot receive broadcasts.
    sh(&[
        "ip",
        "-n",
        &guests[1],
        "addr",
        "add",
        "10.30.0.6/24",
        "dev",
        "eth0",
    ]);
    let ack = in_netns(&guests[1], move || {
        let sock = guest_socket(Ipv4Addr::new(10, 30, 0, 6));
        let req = request(b, MessageType::Request, Ipv4Addr::new(10, 30, 0, 6));
        let bytes = req.to_vec().expect("encode");
        let mut buf = [0u8; 1500];
        // Retry a few times: the first one may race with DAD/neighbour setup.
        for _ in 0..10 {
            sock.send_to(&bytes, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
                .expect("send renewal");
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Message::decode(&mut Decoder::new(&buf[..n])).expect("decode ack");
            }
        }
        panic!("no unicast reply to the renewal");
    })
    .unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 30, 0, 6));
    assert_eq!(s0.stats().acks, 1, "br0 answered br1's renewal");
    assert_eq!(s1.stats().acks, 2);

    s0.shutdown().await.expect("shutdown br0");
    s1.shutdown().await.expect("shutdown br1");
}

/// Guest A floods DISCOVERs from its own MAC (half with the BROADCAST
/// flag, so A's UDP socket can see its replies), about 5,000 a second —
/// 500 times its quota; a line-rate broadcast flood also saturates the
/// neighbours' links and is stopped earlier, by the per-tap nftables
/// limits (`nubo-firewall`, `tests/tests/noisy_neighbours.rs`) — while B leases with
/// udhcpc: B gets its lease, A's excess is dropped by its quota, and the
/// replies to A reach A (positive control) but never B, although B listens
/// on :68 for broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_mac_is_held_to_its_quota_and_its_replies_reach_only_it() {
    init_logs();
    let mut topo = Topology::new(&["br0"]);
    let (a, b) = (mac(21), mac(22));
    let guests = topo.add_guests(&[(1, a, "br0"), (2, b, "br0")]);
    let table = LeaseTable::new();
    table.upsert(lease(a, [10, 21, 0, 5], "vm-a")).expect("a");
    table.upsert(lease(b, [10, 21, 0, 6], "vm-b")).expect("b");
    let server = topo
        .server("br0", table.clone())
        .with_quota(nubo_dhcp::Quota {
            per_second: 10.0,
            burst: 20.0,
        })
        .spawn()
        .expect("spawn");
    for g in &guests {
        sh(&["ip", "-n", g, "link", "set", "eth0", "up"]);
    }
    // B listens for anything on :68 during the flood.
    let b_ns = guests[1].clone();
    let b_listener = std::thread::spawn(move || {
        in_netns(&b_ns, move || {
            let sock = guest_socket(Ipv4Addr::UNSPECIFIED);
            sock.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = [0u8; 1500];
            let mut foreign = 0u32;
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            while std::time::Instant::now() < deadline {
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                        if m.chaddr() == a.0 {
                            foreign += 1;
                        }
                    }
                }
            }
            foreign
        })
        .unwrap()
    });
    let a_ns = guests[0].clone();
    let flood = std::thread::spawn(move || {
        in_netns(&a_ns, move || {
            let sock = guest_socket(Ipv4Addr::UNSPECIFIED);
            sock.set_nonblocking(true).expect("nonblocking");
            let mut bcast = request(a, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
            bcast.set_flags(nubo_dhcp::dhcproto::v4::Flags::default().set_broadcast());
            let datagrams = [
                request(a, MessageType::Discover, Ipv4Addr::UNSPECIFIED)
                    .to_vec()
                    .expect("encode"),
                bcast.to_vec().expect("encode"),
            ];
            let (mut sent, mut seen) = (0u64, 0u64);
            let mut buf = [0u8; 1500];
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                let d = &datagrams[(sent % 2) as usize];
                if sock
                    .send_to(d, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
                    .is_ok()
                {
                    sent += 1;
                }
                if sent % 50 == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
                while let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if Message::decode(&mut Decoder::new(&buf[..n]))
                        .is_ok_and(|m| m.chaddr() == a.0)
                    {
                        seen += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if Message::decode(&mut Decoder::new(&buf[..n])).is_ok_and(|m| m.chaddr() == a.0) {
                    seen += 1;
                }
            }
            (sent, seen)
        })
        .unwrap()
    });
    let script = topo.udhcpc_script();
    let run = udhcpc(&guests[1], &script, 3).await;
    let (sent, seen) = tokio::task::spawn_blocking(move || flood.join().expect("flood"))
        .await
        .expect("join");
    let foreign = tokio::task::spawn_blocking(move || b_listener.join().expect("listener"))
        .await
        .expect("join");
    let stats = server.stats();
    eprintln!("flood: sent {sent}, A saw {seen} replies; B saw {foreign} of A's; {stats:?}");
    assert_eq!(
        run.env.get("ip").map(String::as_str),
        Some("10.21.0.6"),
        "B got no lease during the flood:\n{}",
        run.output
    );
    assert!(sent > 1000, "the flood did not flood: {sent}");
    // A was answered a little (burst + 10/s over ~3 s), the rest dropped.
    assert!(
        stats.limited > 0 && stats.limited + 100 > sent / 2,
        "{stats:?}, sent {sent}"
    );
    assert!(stats.offers < 100, "{stats:?}");
    // A's broadcast-flagged replies reached A...
    assert!(seen > 0, "A never saw its own replies");
    // ...and none reached B.
    assert_eq!(foreign, 0, "B received replies meant for A");
    server.shutdown().await.expect("shutdown");
}

/// 120 guests on one bridge lease concurrently with udhcpc; prints the wall
/// time. `cargo test -p nubo-dhcp --release --test netns -- --ignored --nocapture`
#[ignore = "benchmark: 120 namespaces"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_120_guests_lease_concurrently() {
    const N: u16 = 120;
    init_logs();
    let mut topo = Topology::new(&["br0"]);
    let specs: Vec<(u16, MacAddr, &str)> = (1..=N).map(|i| (i, mac(i), "br0")).collect();
    let setup = std::time::Instant::now();
    let guests = topo.add_guests(&specs);
    let table = LeaseTable::new();
    for i in 1..=N {
        let [hi, lo] = i.to_be_bytes();
        table
            .upsert(lease(mac(i), [10, 40, hi, lo], &format!("vm-{i}")))
            .expect("lease");
    }
    let server = topo.server("br0", table.clone()).spawn().expect("spawn");
    for g in &guests {
        sh(&["ip", "-n", g, "link", "set", "eth0", "up"]);
    }
    eprintln!("setup of {N} guest namespaces: {:?}", setup.elapsed());

    let script = topo.udhcpc_script();
    let start = std::time::Instant::now();
    let children: Vec<_> = guests
        .iter()
        .map(|g| {
            udhcpc_command_direct(g, &script, 5)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut leased = 0;
    for (i, child) in children.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("udhcpc hung")
            .expect("udhcpc");
        let run = parse_udhcpc(out);
        let n = u16::try_from(i + 1).expect("index");
        let [hi, lo] = n.to_be_bytes();
        assert_eq!(
            run.env.get("ip"),
            Some(&format!("10.40.{hi}.{lo}")),
            "{}",
            run.output
        );
        leased += 1;
    }
    let elapsed = start.elapsed();
    let snmp = sh(&["ip", "netns", "exec", &topo.host, "cat", "/proc/net/snmp"]);
    eprintln!(
        "host UDP counters: {}",
        snmp.lines()
            .filter(|l| l.starts_with("Udp:"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    eprintln!(
        "BENCH: {leased} guests leased concurrently with udhcpc in {elapsed:?} ({:?})",
        server.stats()
    );
    server.shutdown().await.expect("shutdown");
}

/// A client-side UDP socket in the current (guest) namespace on `ip`:68,
/// bound to eth0, with a 1 s receive timeout.
fn guest_socket(ip: Ipv4Addr) -> UdpSocket {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    sock.bind_device(Some(b"eth0")).expect("bind eth0");
    sock.set_broadcast(true).expect("broadcast");
    sock.bind(&SocketAddrV4::new(ip, 68).into())
        .expect("bind :68");
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    sock
}

fn request(m: MacAddr, t: MessageType, ciaddr: Ipv4Addr) -> Message {
    let unspec = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(0x6e75_626f, ciaddr, unspec, unspec, unspec, &m.0);
    msg.opts_mut().insert(DhcpOption::MessageType(t));
    msg
}

/// Runs ISC dhclient once in `ns` until it is bound (or 20 s), then kills it
/// by PID; returns the variables its script saw on BOUND.
async fn dhclient(topo: &Topology, ns: &str) -> std::collections::HashMap<String, String> {
    let dir = topo.dir.path();
    let out = dir.join(format!("{ns}.env"));
    let script = topo.script(
        &format!("{ns}-dhclient.sh"),
        &format!(
            "#!/bin/sh\ncase \"$reason\" in\n  PREINIT) ip link set \"$interface\" up ;;\n  BOUND|REBOOT) env | sort > {o}.tmp && mv {o}.tmp {o} ;;\nesac\nexit 0\n",
            o = out.display()
        ),
    );
    let conf = dir.join(format!("{ns}-dhclient.conf"));
    std::fs::write(
        &conf,
        "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
         request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,\n\
         host-name, interface-mtu, rfc3442-classless-static-routes;\n",
    )
    .expect("write dhclient.conf");
    let lf = dir.join(format!("{ns}.leases"));
    let pf = dir.join(format!("{ns}.pid"));
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "dhclient", "-d", "-1", "-v"])
        .arg("-sf")
        .arg(&script)
        .arg("-cf")
        .arg(&conf)
        .arg("-lf")
        .arg(&lf)
        .arg("-pf")
        .arg(&pf)
        .arg("eth0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dhclient");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !out.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dhclient never bound in {ns}"
        );
        if let Ok(Some(status)) = child.try_wait() {
            panic!("dhclient exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `ip netns exec` execs dhclient: the child PID is dhclient's.
    child.start_kill().expect("kill dhclient");
    let _ = child.wait().await;
    std::fs::read_to_string(&out)
        .expect("read env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Which server a benchmark phase measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Baseline {
    Nubo,
    Dnsmasq,
}

/// One DISCOVER→OFFER then REQUEST→ACK exchange from the current (guest)
/// namespace, timed on the client: raw IPv4 frames out of `eth0`, replies
/// read from an `AF_PACKET` socket (so unicast to the offered address is
/// seen too). `None` when a reply does not come within 1 s.
fn timed_exchange(m: MacAddr, xid: u32) -> Option<(Duration, Duration)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new("eth0").unwrap();
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no eth0");
    let proto = 0x0800u16.to_be();
    // SAFETY: plain socket(2).
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let size = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: valid address of the given size.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), size) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: valid option value of the given size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let send = |msg: &Message| {
        let payload = msg.to_vec().unwrap();
        let ip =
            nubo_dhcp::l2::ipv4_udp(Ipv4Addr::UNSPECIFIED, 68, Ipv4Addr::BROADCAST, 67, &payload)
                .unwrap();
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                ip.as_ptr().cast(),
                ip.len(),
                0,
                std::ptr::addr_of!(addr).cast(),
                size,
            )
        };
        assert!(n > 0, "send: {}", std::io::Error::last_os_error());
    };
    let wait = |want: MessageType| -> Option<Message> {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 2048];
        while std::time::Instant::now() < deadline {
            // SAFETY: valid buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let pkt = &buf[..n];
            // IPv4 without options, UDP to port 68.
            if n < 28 + 240 || pkt[9] != 17 || pkt[22..24] != [0, 68] {
                continue;
            }
            let Ok(reply) = Message::decode(&mut Decoder::new(&pkt[28..])) else {
                continue;
            };
            if reply.xid() == xid && reply.opts().msg_type() == Some(want) {
                return Some(reply);
            }
        }
        None
    };
    let unspec = Ipv4Addr::UNSPECIFIED;
    let mut discover = Message::new_with_id(xid, unspec, unspec, unspec, unspec, &m.0);
    discover
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let t0 = std::time::Instant::now();
    send(&discover);
    let offer = wait(MessageType::Offer)?;
    let offered = t0.elapsed();
    let server = match offer
        .opts()
        .get(nubo_dhcp::dhcproto::v4::OptionCode::ServerIdentifier)
    {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return None,
    };
    let mut request = Message::new_with_id(xid, unspec, unspec, unspec, unspec, &m.0);
    let opts = request.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Request));
    opts.insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    opts.insert(DhcpOption::ServerIdentifier(server));
    let t1 = std::time::Instant::now();
    send(&request);
    wait(MessageType::Ack)?;
    Some((offered, t1.elapsed()))
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Per-exchange DHCP latency of nubo's server against dnsmasq (what
/// Neutron's DHCP agent runs), in the same run on the same bridge and
/// guests: 20 guests, one exchange at a time, DISCOVER→OFFER and
/// REQUEST→ACK timed by the client; phases alternate nubo, dnsmasq, nubo,
/// dnsmasq. dnsmasq as Neutron's DHCP agent runs it (static range, one
/// `dhcp-host` per port, `--leasefile-ro`, `--bind-interfaces`) but without
/// its lease-update `--dhcp-script` (one fork per lease), and with
/// `--no-ping` and `--quiet-dhcp`: its fastest configuration. Prints `BENCH:` lines and the ratio of the medians of
/// the whole exchange (nubo / dnsmasq; below 1 means nubo is faster).
/// `cargo test -p nubo-dhcp --release --test netns -- --ignored --nocapture bench_exchange_vs_dnsmasq`
#[ignore = "benchmark: against dnsmasq"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_exchange_vs_dnsmasq() {
    const G: u16 = 20;
    const ROUNDS: u32 = 15;
    let mut topo = Topology::new(&["br0"]);
    sh(&[
        "ip",
        "-n",
        &topo.host,
        "addr",
        "add",
        "10.40.255.254/16",
        "dev",
        "br0",
    ]);
    let specs: Vec<(u16, MacAddr, &str)> = (1..=G).map(|i| (i, mac(i), "br0")).collect();
    let guests = topo.add_guests(&specs);
    for g in &guests {
        sh(&["ip", "-n", g, "link", "set", "eth0", "up"]);
    }
    let table = LeaseTable::new();
    let mut hosts = Vec::new();
    for i in 1..=G {
        let ip = [10, 40, 0, u8::try_from(i).unwrap()];
        table
            .upsert(lease(mac(i), ip, &format!("vm-{i}")))
            .expect("lease");
        hosts.push(format!("--dhcp-host={},{}", mac(i), Ipv4Addr::from(ip)));
    }
    let mut samples: std::collections::HashMap<Baseline, (Vec<Duration>, Vec<Duration>)> =
        std::collections::HashMap::new();
    let mut xid = 1u32;
    for phase in [
        Baseline::Nubo,
        Baseline::Dnsmasq,
        Baseline::Nubo,
        Baseline::Dnsmasq,
    ] {
        // Start the server of the phase and wait until it listens.
        let mut nubo = None;
        let mut dnsmasq = None;
        match phase {
            Baseline::Nubo => {
                nubo = Some(topo.server("br0", table.clone()).spawn().expect("spawn"))
            }
            Baseline::Dnsmasq => {
                let mut cmd = tokio::process::Command::new("ip");
                cmd.args(["netns", "exec", &topo.host, "dnsmasq", "-k"])
                    .args([
                        "--conf-file=/dev/null",
                        "--interface=br0",
                        "--bind-interfaces",
                        "--except-interface=lo",
                        "--port=0",
                        "--dhcp-range=10.40.0.0,static,255.255.0.0,86400",
                        "--dhcp-authoritative",
                        "--no-ping",
                        "--quiet-dhcp",
                        "--log-facility=-",
                    ])
                    .arg("--leasefile-ro")
                    .arg(format!(
                        "--pid-file={}",
                        topo.dir.path().join("d.pid").display()
                    ))
                    .args(&hosts)
                    .kill_on_drop(true);
                dnsmasq = Some(cmd.spawn().expect("spawn dnsmasq"));
            }
        }
        let host = topo.host.clone();
        wait_for("a DHCP listener on br0", move || {
            sh(&["ip", "netns", "exec", &host, "ss", "-Hlun", "sport = :67"]).contains(":67")
        })
        .await;
        let (mut offers, mut acks) = (Vec::new(), Vec::new());
        let mut failed = 0;
        for _ in 0..ROUNDS {
            for (i, g) in guests.iter().enumerate() {
                xid += 1;
                let m = mac(u16::try_from(i + 1).unwrap());
                let x = xid;
                match in_netns(g, move || timed_exchange(m, x)).unwrap() {
                    Some((o, a)) => {
                        offers.push(o);
                        acks.push(a);
                    }
                    None => failed += 1,
                }
            }
        }
        assert_eq!(failed, 0, "{phase:?}: {failed} exchanges got no reply");
        if let Some(s) = nubo {
            s.shutdown().await.expect("shutdown");
        }
        if let Some(mut d) = dnsmasq {
            d.start_kill().expect("kill dnsmasq");
            let _ = d.wait().await;
            let host = topo.host.clone();
            wait_for("dnsmasq gone", move || {
                !sh(&["ip", "netns", "exec", &host, "ss", "-Hlun", "sport = :67"]).contains(":67")
            })
            .await;
        }
        let e = samples.entry(phase).or_default();
        e.0.extend(offers);
        e.1.extend(acks);
    }
    let mut medians = std::collections::HashMap::new();
    for (who, (mut offers, mut acks)) in samples {
        let mut whole: Vec<Duration> = offers.iter().zip(&acks).map(|(o, a)| *o + *a).collect();
        eprintln!(
            "BENCH: {who:?}: {} exchanges, DISCOVER->OFFER p50 {:?} p99 {:?}, REQUEST->ACK p50 {:?} p99 {:?}, whole p50 {:?} p99 {:?}",
            offers.len(),
            percentile(&mut offers, 0.5),
            percentile(&mut offers, 0.99),
            percentile(&mut acks, 0.5),
            percentile(&mut acks, 0.99),
            percentile(&mut whole, 0.5),
            percentile(&mut whole, 0.99),
        );
        medians.insert(who, percentile(&mut whole, 0.5));
    }
    let ratio = medians[&Baseline::Nubo].as_secs_f64() / medians[&Baseline::Dnsmasq].as_secs_f64();
    eprintln!(
        "BENCH: DHCP exchange nubo/dnsmasq ratio (medians of the whole exchange): {ratio:.2}"
    );
}
