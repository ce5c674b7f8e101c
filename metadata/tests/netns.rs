//! Real-network tests (root): a host namespace with bridges owning
//! 169.254.169.254/32, guests in their own namespaces, the server started
//! from a thread that joined the host namespace with setns.
//!
//! Without root they fail; `NUBO_TEST_ALLOW_SKIP=root` (never set in CI)
//! skips them there instead.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use nubo_metadata::{InstanceMeta, InstanceTable, MetadataServer};
use nubo_netid::MacAddr;
use nubo_tests::netns::{in_netns, need_root, run};
use support::netns::{curl, Guest, Topology};

/// True (after saying so) when not root and `NUBO_TEST_ALLOW_SKIP` names
/// `root`; without root and that opt-out, the test fails.
fn skip() -> bool {
    !need_root().unwrap()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nubo_metadata=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// An instance record for a guest, with one named key.
fn meta_for(guest: &Guest, uuid: &str, key_name: &str) -> InstanceMeta {
    let mac: MacAddr = guest.mac.parse().expect("test MAC");
    let ip: Ipv4Addr = guest.ip.parse().expect("test IP");
    let mut meta = InstanceMeta::new(uuid, ip, mac);
    meta.public_keys = vec![(key_name.into(), format!("ssh-ed25519 AAAA{key_name}"))];
    meta.user_data = Some(format!("#cloud-config\n# for {uuid}\n").into_bytes());
    meta
}

/// Starts the server on a thread that joined `host` and adds `bridges`
/// there; the runtime's worker threads stay in the test's own namespace.
fn start_in(
    host: &str,
    rt: &tokio::runtime::Runtime,
    table: InstanceTable,
    bridges: &'static [&'static str],
) -> MetadataServer {
    let handle = rt.handle().clone();
    in_netns(host, move || {
        let _entered = handle.enter();
        let server = MetadataServer::start(table).expect("start");
        for bridge in bridges {
            server.add_bridge(bridge).expect("add_bridge");
        }
        server
    })
    .unwrap()
}

fn assert_instance(guest: &Guest, uuid: &str, key_name: &str) {
    let reply = curl(guest, "/openstack/latest/meta_data.json", &[]);
    assert_eq!(reply.status, 200, "{}: {reply:?}", guest.ns);
    let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("meta_data.json");
    assert_eq!(doc["uuid"], uuid, "{}", guest.ns);
    assert_eq!(
        doc["public_keys"][key_name],
        format!("ssh-ed25519 AAAA{key_name}"),
        "{}",
        guest.ns
    );

    let reply = curl(guest, "/latest/meta-data/instance-id", &[]);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, uuid),
        "{}",
        guest.ns
    );
    let reply = curl(guest, "/latest/meta-data/public-keys/0/openssh-key", &[]);
    assert_eq!(reply.status, 200, "{}", guest.ns);
    assert_eq!(reply.body, format!("ssh-ed25519 AAAA{key_name}"));
    let reply = curl(guest, "/2009-04-04/meta-data/local-ipv4", &[]);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, guest.ip.as_str())
    );
}

/// The TCP listeners on port 80 in the host namespace, as `ss` shows them.
fn listeners(topo: &Topology) -> String {
    run(
        "ip",
        &["netns", "exec", &topo.host, "ss", "-Hltn", "sport = :80"],
    )
    .unwrap()
}

/// Nothing listens any more, and a guest gets no answer. (Without a socket
/// the kernel's RST follows the host's routes, not the bridge, so the guest
/// sees a timeout rather than "connection refused".)
fn assert_no_listener(topo: &Topology, guest: &Guest) {
    let listening = listeners(topo);
    assert!(listening.trim().is_empty(), "still listening: {listening}");
    let reply = curl(guest, "/latest/meta-data/instance-id", &["-m", "2"]);
    assert_ne!(reply.exit, 0, "served after removal: {reply:?}");
}

const UUID_1: &str = "11111111-1111-4111-8111-111111111111";
const UUID_2: &str = "22222222-2222-4222-8222-222222222222";
const UUID_3: &str = "33333333-3333-4333-8333-333333333333";
const UUID_4: &str = "44444444-4444-4444-8444-444444444444";

#[test]
fn each_guest_gets_its_own_metadata() {
    if skip() {
        return;
    }
    init_tracing();
    let mut topo = Topology::new(&["br1", "br2"]);
    let g1 = topo.add_guest("g1", "br1", "10.0.0.5", "02:00:00:00:01:05");
    let g2 = topo.add_guest("g2", "br1", "10.0.0.6", "02:00:00:00:01:06");
    let g3 = topo.add_guest("g3", "br1", "10.0.0.7", "02:00:00:00:01:07");
    let g4 = topo.add_guest("g4", "br2", "10.0.0.5", "02:00:00:00:02:05");
    let g5 = topo.add_guest("g5", "br1", "10.0.0.9", "02:00:00:00:01:09");

    let table = InstanceTable::new();
    table.insert("br1", meta_for(&g1, UUID_1, "key-one"));
    table.insert("br1", meta_for(&g2, UUID_2, "key-two"));
    // g3's address is known, but with another MAC: a spoofer.
    let mut wrong_mac = meta_for(&g3, UUID_3, "key-three");
    wrong_mac.mac = "02:00:00:00:ff:07".parse().expect("test MAC");
    table.insert("br1", wrong_mac);
    // Same subnet and address as g1, on the other bridge.
    table.insert("br2", meta_for(&g4, UUID_4, "key-four"));
    // g5 is in no table entry at all.

    let rt = runtime();
    let server = start_in(&topo.host, &rt, table, &["br1", "br2"]);
    assert_eq!(server.bridges(), vec!["br1".to_owned(), "br2".to_owned()]);

    assert_instance(&g1, UUID_1, "key-one");
    assert_instance(&g2, UUID_2, "key-two");
    assert_instance(&g4, UUID_4, "key-four");

    // Forged identity headers change nothing.
    let forged = curl(
        &g1,
        "/latest/meta-data/instance-id",
        &[
            "-H",
            "X-Forwarded-For: 10.0.0.6",
            "-H",
            &format!("X-Instance-ID: {UUID_2}"),
            "-H",
            "X-Tenant-ID: other",
            "-H",
            "Host: 10.0.0.6",
        ],
    );
    assert_eq!((forged.status, forged.body.as_str()), (200, UUID_1));

    // Unknown guest and MAC mismatch: 404 with a short body.
    for guest in [&g5, &g3] {
        for path in [
            "/openstack/latest/meta_data.json",
            "/latest/meta-data/instance-id",
        ] {
            let reply = curl(guest, path, &[]);
            assert_eq!(reply.status, 404, "{} {path}: {reply:?}", guest.ns);
            assert_eq!(reply.body, "not found\n");
        }
    }

    // IMDSv2 token, user data and method filtering over real HTTP.
    let token = curl(
        &g1,
        "/latest/api/token",
        &[
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 21600",
        ],
    );
    assert_eq!(token.status, 200, "{token:?}");
    assert_eq!(token.body.len(), 32);
    let user_data = curl(&g2, "/latest/user-data", &[]);
    assert_eq!(user_data.status, 200);
    assert_eq!(user_data.body, format!("#cloud-config\n# for {UUID_2}\n"));
    let post = curl(&g1, "/openstack/latest/meta_data.json", &["-X", "POST"]);
    assert_eq!(post.status, 405);

    rt.block_on(server.shutdown());
    assert!(server.bridges().is_empty());
}

#[test]
fn bridges_can_be_removed_and_added_again() {
    if skip() {
        return;
    }
    init_tracing();
    let mut topo = Topology::new(&["br1"]);
    let g1 = topo.add_guest("g1", "br1", "10.0.0.5", "02:00:00:00:01:05");
    let table = InstanceTable::new();
    table.insert("br1", meta_for(&g1, UUID_1, "key-one"));

    let rt = runtime();
    let server = std::sync::Arc::new(start_in(&topo.host, &rt, table.clone(), &["br1"]));
    assert_instance(&g1, UUID_1, "key-one");
    assert!(
        listeners(&topo).contains("169.254.169.254%br1:80"),
        "{}",
        listeners(&topo)
    );

    // Adding the same bridge twice is refused.
    let again = {
        let server = server.clone();
        let handle = rt.handle().clone();
        in_netns(&topo.host, move || {
            let _entered = handle.enter();
            server.add_bridge("br1").map_err(|e| e.to_string())
        })
        .unwrap()
    };
    assert!(again.is_err(), "{again:?}");

    assert!(rt.block_on(server.remove_bridge("br1")));
    assert!(!rt.block_on(server.remove_bridge("br1")));
    assert_no_listener(&topo, &g1);

    {
        let server = server.clone();
        let handle = rt.handle().clone();
        in_netns(&topo.host, move || {
            let _entered = handle.enter();
            server.add_bridge("br1").expect("re-add br1");
        })
        .unwrap();
    }
    assert_instance(&g1, UUID_1, "key-one");

    // Table changes are live: removing the instance makes it unknown.
    table.remove("br1", "10.0.0.5".parse().expect("ip"));
    assert_eq!(curl(&g1, "/latest/meta-data/instance-id", &[]).status, 404);

    rt.block_on(server.shutdown());
    assert_no_listener(&topo, &g1);
}

/// Load: 32 concurrent clients inside one guest for `NUBO_MD_LOAD_SECS`
/// (default 5) seconds, first with keep-alive connections, then with one
/// connection per request. Run with:
/// `cargo test -p nubo-metadata --release --test netns -- --ignored --nocapture load`
#[test]
#[ignore = "benchmark: run explicitly with --ignored"]
fn load_32_clients() {
    if skip() {
        return;
    }
    init_tracing();
    let seconds: u64 = std::env::var("NUBO_MD_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut topo = Topology::new(&["br1"]);
    let g1 = topo.add_guest("g1", "br1", "10.0.0.5", "02:00:00:00:01:05");
    let table = InstanceTable::new();
    table.insert("br1", meta_for(&g1, UUID_1, "key-one"));
    let rt = runtime();
    let server = start_in(&topo.host, &rt, table, &["br1"]);

    for keep_alive in [true, false] {
        let report = in_netns(&g1.ns, move || {
            let client_rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("client runtime");
            client_rt.block_on(support::load::run_load(
                SocketAddr::from(([169, 254, 169, 254], 80)),
                "/openstack/latest/meta_data.json",
                32,
                Duration::from_secs(seconds),
                keep_alive,
            ))
        })
        .unwrap();
        let mode = if keep_alive {
            "keep-alive"
        } else {
            "connection per request"
        };
        println!("metadata load, 32 clients, {mode}: {report}");
        assert!(report.ok > 0, "no successful request: {report}");
        assert_eq!(report.errors, 0, "{report}");
    }
    rt.block_on(server.shutdown());
}

/// Reads from `s` until EOF or an error; `true` when the server closed
/// the connection within the stream's read timeout.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Guest g1 opens 100 connections and holds them (half trickling a
/// request head, slowloris), then pipelines 300 requests on one more:
/// its connections over its cap are closed at once, its held ones after
/// the header timeout, its excess requests get 429 — while g2 on the same
/// bridge is answered every time (and g1 again once it lets go).
#[test]
fn a_guest_holding_connections_cannot_starve_its_neighbour() {
    if skip() {
        return;
    }
    init_tracing();
    let mut topo = Topology::new(&["br1"]);
    let g1 = topo.add_guest("g1", "br1", "10.0.0.5", "02:00:00:00:01:05");
    let g2 = topo.add_guest("g2", "br1", "10.0.0.6", "02:00:00:00:01:06");
    let table = InstanceTable::new();
    table.insert("br1", meta_for(&g1, UUID_1, "key-one"));
    table.insert("br1", meta_for(&g2, UUID_2, "key-two"));
    let rt = runtime();
    let server = start_in(&topo.host, &rt, table, &["br1"]);
    // Positive control first: both are served.
    assert_instance(&g1, UUID_1, "key-one");

    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let hostile = std::thread::spawn({
        let ns = g1.ns.clone();
        move || {
            in_netns(&ns, move || {
                use std::io::Write;
                let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
                let mut streams = Vec::new();
                // Reset before connect() even returned: refused too.
                let mut reset_early = 0;
                for i in 0..100 {
                    let mut s =
                        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Ok(s) => s,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                                reset_early += 1;
                                continue;
                            }
                            Err(e) => panic!("connect: {e}"),
                        };
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    if i % 2 == 0 {
                        let _ = s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nX-Slow: ");
                    }
                    streams.push(s);
                }
                // Closed at once: those over the per-client cap.
                let mut open: Vec<_> = streams
                    .into_iter()
                    .filter_map(|mut s| (!closed_by_server(&mut s)).then_some(s))
                    .collect();
                let still_open = open.len();
                opened_tx.send(100 - still_open).unwrap();
                eprintln!("{reset_early} connections reset before connect() returned");
                held_rx.recv().unwrap();
                // The ones still open are closed by the header timeout.
                for s in &mut open {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                }
                let timed_out = open
                    .iter_mut()
                    .filter_map(|s| closed_by_server(s).then_some(()))
                    .count();
                (still_open, timed_out)
            })
            .unwrap()
        }
    });
    let refused = opened_rx.recv().unwrap();
    assert!(refused >= 90, "only {refused} of 100 connections refused");
    // g2 is served while g1 holds its connections.
    for _ in 0..10 {
        let reply = curl(&g2, "/latest/meta-data/instance-id", &["-m", "1"]);
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, UUID_2),
            "{reply:?}"
        );
    }
    held_tx.send(()).unwrap();
    let (still_open, timed_out) = hostile.join().unwrap();
    assert!(still_open > 0 && still_open <= 8, "{still_open} held");
    assert_eq!(timed_out, still_open, "slow connections were not closed");

    // 300 pipelined requests on one connection: the rate limit answers 429.
    let statuses = in_netns(&g1.ns, || {
        use std::io::{Read, Write};
        let addr: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        let req = "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while out
            .windows(9)
            .filter(|w| w.starts_with(b"HTTP/1.1 "))
            .count()
            < 300
        {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&out).to_string();
        (
            text.matches("HTTP/1.1 200").count(),
            text.matches("HTTP/1.1 429").count(),
        )
    })
    .unwrap();
    assert!(statuses.0 > 0 && statuses.1 > 0, "{statuses:?}");
    assert_eq!(statuses.0 + statuses.1, 300, "{statuses:?}");
    // Other clients are not affected by g1's rate.
    let reply = curl(&g2, "/latest/meta-data/instance-id", &["-m", "1"]);
    assert_eq!(reply.status, 200, "{reply:?}");
    rt.block_on(server.shutdown());
}
