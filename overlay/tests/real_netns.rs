//! Real (root) tests: the library runs inside throw-away network namespaces
//! named `nbt<token>…`, which a guard removes even when a test panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use nubo_netid::{tap_name, MacAddr};
use nubo_overlay::{
    delete_netns_guest, list_netns_guests, netns_guest_exists, plan, plan_provider,
    provider_bridge_name, run_in_netns, FdbEntry, LinkKind, LocalPort, Netlink, NetworkSpec,
    ObservedOverlay, OverlayAction, OverlaySpec, ProviderNetworkSpec, ProviderPlan, ProviderSpec,
};
use nubo_tests::netns::{need_root, Names};
use nubo_tests::wait_until;

// ---------------------------------------------------------------- harness

fn require_root() -> bool {
    need_root().unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn run_ok(args: &[&str]) -> String {
    nubo_tests::netns::run(args[0], &args[1..]).unwrap_or_else(|e| panic!("{e:#}"))
}

fn pings(ns: &str, target: &str) -> bool {
    run(&[
        "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-q", target,
    ])
    .status
    .success()
}

/// Polls `cond` for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(Duration::from_secs(10), what, || Ok(cond())).unwrap();
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

/// observe → plan → apply, then observe again; returns the first plan, the
/// plan computed after applying and the final observation.
async fn reconcile(
    nl: Netlink,
    spec: OverlaySpec,
) -> (Vec<OverlayAction>, Vec<OverlayAction>, ObservedOverlay) {
    let first = plan(&spec, &nl.observe().await.unwrap());
    nl.apply(&first).await.unwrap();
    let observed = nl.observe().await.unwrap();
    let second = plan(&spec, &observed);
    (first, second, observed)
}

/// Two hosts joined by a veth underlay 10.99.0.0/24.
fn two_hosts(lab: &Names) -> (String, String) {
    let h1 = lab.add_netns("h1").unwrap();
    let h2 = lab.add_netns("h2").unwrap();
    run_ok(&[
        "ip", "-n", &h1, "link", "add", "ul", "type", "veth", "peer", "name", "ul", "netns", &h2,
    ]);
    for (ns, addr) in [(&h1, "10.99.0.1/24"), (&h2, "10.99.0.2/24")] {
        run_ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "ul"]);
        run_ok(&["ip", "-n", ns, "link", "set", "ul", "up"]);
    }
    (h1, h2)
}

fn network(vni: u32, ports: &[(&str, MacAddr)], vtep: &str, remote: &[MacAddr]) -> NetworkSpec {
    NetworkSpec {
        vni,
        ports: ports
            .iter()
            .map(|(tap, mac)| LocalPort {
                tap: tap.to_string(),
                mac: *mac,
            })
            .collect(),
        remote_vteps: [ip(vtep)].into_iter().collect(),
        remote_macs: remote.iter().map(|m| (*m, ip(vtep))).collect(),
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "current_thread")]
async fn vxlan_between_two_hosts_pings_isolates_and_cleans_up() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let (h1, h2) = two_hosts(&lab);

    // Two networks with the SAME CIDR 10.0.0.0/24, one guest of each on
    // each host.
    let (g1a, g1b, g2a, g2b) = (
        lab.name("g1a"),
        lab.name("g1b"),
        lab.name("g2a"),
        lab.name("g2b"),
    );
    let tap = |id: &str| tap_name(&format!("{}{id}-0000-4000-8000-000000000000", lab.token()));
    let (t1a, t1b, t2a, t2b) = (tap("1a1"), tap("1b1"), tap("2a1"), tap("2b1"));
    let (m1a, m1b, m2a, m2b) = (
        mac("02:00:00:64:01:01"),
        mac("02:00:00:c8:01:01"),
        mac("02:00:00:64:02:01"),
        mac("02:00:00:c8:02:01"),
    );
    for (host, guests) in [
        (
            &h1,
            [
                (g1a.clone(), t1a.clone(), m1a),
                (g1b.clone(), t1b.clone(), m1b),
            ],
        ),
        (
            &h2,
            [
                (g2a.clone(), t2a.clone(), m2a),
                (g2b.clone(), t2b.clone(), m2b),
            ],
        ),
    ] {
        run_in_netns(host, move |nl| async move {
            for (ns, tap, mac) in guests {
                nl.create_netns_guest(&ns, &tap, mac, 1450).await?;
            }
            Ok::<_, nubo_overlay::OverlayError>(())
        })
        .await
        .unwrap()
        .unwrap();
    }
    for g in [&g1a, &g1b, &g2a, &g2b] {
        assert!(netns_guest_exists(g), "{g} missing");
    }

    let spec1 = OverlaySpec {
        underlay_ip: ip("10.99.0.1"),
        underlay_mtu: 1500,
        networks: vec![
            network(100, &[(&t1a, m1a)], "10.99.0.2", &[m2a]),
            network(200, &[(&t1b, m1b)], "10.99.0.2", &[m2b]),
        ],
    };
    let spec2 = OverlaySpec {
        underlay_ip: ip("10.99.0.2"),
        underlay_mtu: 1500,
        networks: vec![
            network(100, &[(&t2a, m2a)], "10.99.0.1", &[m1a]),
            network(200, &[(&t2b, m2b)], "10.99.0.1", &[m1b]),
        ],
    };
    for (host, spec) in [(&h1, spec1.clone()), (&h2, spec2.clone())] {
        let (first, second, observed) = run_in_netns(host, move |nl| reconcile(nl, spec))
            .await
            .unwrap();
        assert!(!first.is_empty());
        assert_eq!(
            second,
            vec![],
            "re-planning after apply must be empty on {host}"
        );
        let vx = &observed.vxlans[&100];
        assert_eq!(vx.mtu, 1450);
        assert_eq!(vx.master.as_deref(), Some("nb-100"));
        assert_eq!(observed.bridges[&100].mtu, 1450);
        assert!(observed.bridges[&200]
            .addresses
            .contains(&(ip("169.254.169.254"), 32)));
        assert!(vx.fdb.iter().any(|e| e.mac.is_zero()));
    }
    // Independently of our own observation: what iproute2 sees.
    let details = run_ok(&["ip", "-n", &h1, "-d", "link", "show", "vx-100"]);
    assert!(details.contains("local 10.99.0.1"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(details.contains("master nb-100"), "{details}");
    let fdb = run_ok(&[
        "ip", "netns", "exec", &h1, "bridge", "fdb", "show", "dev", "vx-100",
    ]);
    assert!(fdb.contains("00:00:00:00:00:00 dst 10.99.0.2"), "{fdb}");
    assert!(fdb.contains(&format!("{m2a} dst 10.99.0.2")), "{fdb}");

    // A second, unchanged reconcile round from a fresh handle: empty plan.
    let again = run_in_netns(&h2, move |nl| async move {
        plan(&spec2, &nl.observe().await.unwrap())
    })
    .await
    .unwrap();
    assert_eq!(again, vec![]);

    for (ns, addr) in [
        (&g1a, "10.0.0.1/24"),
        (&g2a, "10.0.0.2/24"),
        (&g1b, "10.0.0.1/24"),
        (&g2b, "10.0.0.3/24"),
    ] {
        run_ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
    }
    eventually("g1a pings g2a across VXLAN 100", || pings(&g1a, "10.0.0.2"));
    eventually("g1b pings g2b across VXLAN 200", || pings(&g1b, "10.0.0.3"));
    // Isolation: same CIDR, other network's hosts are unreachable.
    assert!(
        !pings(&g1a, "10.0.0.3"),
        "network 100 reached a guest of network 200"
    );
    assert!(
        !pings(&g1b, "10.0.0.2"),
        "network 200 reached a guest of network 100"
    );

    // The last port of network 200 on h1 leaves: bridge and vxlan go.
    delete_netns_guest(&g1b).await.unwrap();
    assert!(!netns_guest_exists(&g1b));
    assert!(!list_netns_guests(&lab.prefix()).unwrap().contains(&g1b));
    let mut spec1_after = spec1.clone();
    spec1_after.networks[1].ports.clear();
    let t1b_host = t1b.clone();
    let (first, second, observed, host_end_exists) = run_in_netns(&h1, move |nl| async move {
        let host_end_exists = nl.link_exists(&t1b_host).await.unwrap();
        let (first, second, observed) = reconcile(nl, spec1_after).await;
        (first, second, observed, host_end_exists)
    })
    .await
    .unwrap();
    assert!(
        !host_end_exists,
        "deleting the guest must delete its veth host end"
    );
    assert_eq!(first, vec![OverlayAction::DeleteNetwork { vni: 200 }]);
    assert_eq!(second, vec![]);
    assert!(!observed.bridges.contains_key(&200) && !observed.vxlans.contains_key(&200));
    assert!(!run(&["ip", "-n", &h1, "link", "show", "nb-200"])
        .status
        .success());
    assert!(!run(&["ip", "-n", &h1, "link", "show", "vx-200"])
        .status
        .success());
    assert!(observed.bridges.contains_key(&100));
    eventually("network 100 still works", || pings(&g1a, "10.0.0.2"));
}

#[tokio::test(flavor = "current_thread")]
async fn misconfigured_vxlan_is_recreated_and_fdb_follows_vteps() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let host = lab.add_netns("r").unwrap();
    run_ok(&[
        "ip", "-n", &host, "link", "add", "ul", "type", "veth", "peer", "name", "ulp",
    ]);
    run_ok(&[
        "ip",
        "-n",
        &host,
        "addr",
        "add",
        "10.98.0.1/24",
        "dev",
        "ul",
    ]);
    run_ok(&["ip", "-n", &host, "link", "set", "ul", "up"]);
    run_ok(&[
        "ip",
        "-n",
        &host,
        "link",
        "add",
        "vx-300",
        "type",
        "vxlan",
        "id",
        "300",
        "local",
        "10.98.0.9",
        "dstport",
        "4789",
        "nolearning",
    ]);
    let tap = lab.name("tp");
    let vteps: BTreeSet<IpAddr> = [ip("10.98.0.2"), ip("10.98.0.3")].into_iter().collect();
    let spec = OverlaySpec {
        underlay_ip: ip("10.98.0.1"),
        underlay_mtu: 1500,
        networks: vec![NetworkSpec {
            vni: 300,
            ports: vec![LocalPort {
                tap: tap.clone(),
                mac: mac("02:00:00:00:03:01"),
            }],
            remote_vteps: vteps,
            remote_macs: vec![],
        }],
    };
    let tap2 = tap.clone();
    let spec2 = spec.clone();
    let (first, second, observed) = run_in_netns(&host, move |nl| async move {
        // The tap is missing at first: the plan waits for it.
        let waiting = plan(&spec2, &nl.observe().await.unwrap());
        assert!(waiting.contains(&OverlayAction::WaitForPort {
            vni: 300,
            tap: tap2.clone()
        }));
        nl.create_tap(&tap2, mac("fe:00:00:00:03:01"), 1500)
            .await
            .unwrap();
        reconcile(nl, spec2).await
    })
    .await
    .unwrap();
    let recreate = first
        .iter()
        .position(|a| {
            *a == OverlayAction::DeleteLink {
                name: "vx-300".into(),
            }
        })
        .expect("the misconfigured vxlan must be deleted");
    assert!(
        matches!(
            first.get(recreate + 1),
            Some(OverlayAction::CreateVxlan { vni: 300, .. })
        ),
        "{first:?}"
    );
    assert_eq!(second, vec![]);
    assert_eq!(observed.vxlans[&300].local, Some(ip("10.98.0.1")));
    assert_eq!(observed.ports[&tap].master.as_deref(), Some("nb-300"));
    let details = run_ok(&["ip", "-n", &host, "-d", "link", "show", "vx-300"]);
    assert!(details.contains("local 10.98.0.1"), "{details}");
    let flood = |host: &str| {
        run_ok(&[
            "ip", "netns", "exec", host, "bridge", "fdb", "show", "dev", "vx-300",
        ])
        .lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00 dst"))
        .count()
    };
    assert_eq!(flood(&host), 2);

    // One VTEP leaves: exactly its flood entry goes.
    let mut smaller = spec.clone();
    smaller.networks[0].remote_vteps.remove(&ip("10.98.0.3"));
    let (first, second, _) = run_in_netns(&host, move |nl| reconcile(nl, smaller))
        .await
        .unwrap();
    assert_eq!(
        first,
        vec![OverlayAction::DelFdb {
            vni: 300,
            entry: FdbEntry {
                mac: MacAddr::ZERO,
                dst: ip("10.98.0.3")
            }
        }]
    );
    assert_eq!(second, vec![]);
    assert_eq!(flood(&host), 1);

    // Underlay MTU change resizes everything in place.
    let mut jumbo = spec.clone();
    jumbo.underlay_mtu = 9000;
    jumbo.networks[0].remote_vteps.remove(&ip("10.98.0.3"));
    let (first, second, observed) = run_in_netns(&host, move |nl| reconcile(nl, jumbo))
        .await
        .unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(second, vec![]);
    assert_eq!(observed.bridges[&300].mtu, 8950);
    assert_eq!(observed.ports[&tap].mtu, 8950);
}

#[tokio::test(flavor = "current_thread")]
async fn taps_and_guests_are_created_and_deleted() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let host = lab.add_netns("t").unwrap();
    let tap = lab.name("tap");
    let guest = lab.name("g");
    let veth = lab.name("veth");
    let tap2 = tap.clone();
    let (guest2, veth2) = (guest.clone(), veth.clone());
    let observed = run_in_netns(&host, move |nl| async move {
        nl.create_tap(&tap2, mac("fe:00:00:00:00:01"), 1400)
            .await
            .unwrap();
        nl.create_netns_guest(&guest2, &veth2, mac("02:00:00:00:00:02"), 1450)
            .await
            .unwrap();
        // A second guest with the same namespace name is refused.
        assert!(nl
            .create_netns_guest(&guest2, "othr", mac("02:00:00:00:00:03"), 1450)
            .await
            .is_err());
        nl.observe().await.unwrap()
    })
    .await
    .unwrap();
    assert_eq!(observed.ports[&tap].kind, LinkKind::Tun);
    assert_eq!(observed.ports[&tap].mtu, 1400);
    assert_eq!(observed.ports[&veth].kind, LinkKind::Veth);
    assert!(
        !observed.ports.contains_key("othr"),
        "failed create must clean up"
    );
    let tap_info = run_ok(&["ip", "-n", &host, "-o", "link", "show", &tap]);
    assert!(tap_info.contains("fe:00:00:00:00:01"), "{tap_info}");
    let eth0 = run_ok(&["ip", "-n", &guest, "-o", "link", "show", "eth0"]);
    assert!(
        eth0.contains("02:00:00:00:00:02") && eth0.contains("UP"),
        "{eth0}"
    );
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    let lo = run_ok(&["ip", "-n", &guest, "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    assert_eq!(list_netns_guests(&guest).unwrap(), vec![guest.clone()]);

    delete_netns_guest(&guest).await.unwrap();
    delete_netns_guest(&guest).await.unwrap(); // idempotent
    assert!(!netns_guest_exists(&guest));
    let (tap3, veth3) = (tap.clone(), veth.clone());
    let (tap_left, veth_left) = run_in_netns(&host, move |nl| async move {
        nl.delete_link(&tap3).await.unwrap();
        nl.delete_link(&tap3).await.unwrap(); // idempotent
        (
            nl.link_exists(&tap3).await.unwrap(),
            nl.link_exists(&veth3).await.unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(!tap_left && !veth_left);
}

#[tokio::test(flavor = "current_thread")]
async fn panics_inside_a_namespace_are_reported() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let host = lab.add_netns("p").unwrap();
    let err = run_in_netns::<_, _, ()>(&host, |_nl| async { panic!("boom") })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert!(run_in_netns(&lab.name("none"), |_nl| async {})
        .await
        .is_err());
}

// ------------------------------------------------------- provider networks

/// observe → plan → apply → observe → plan for provider networks in `ns`:
/// the first plan, the apply result, the second plan.
async fn reconcile_provider(
    ns: &str,
    spec: ProviderSpec,
) -> (ProviderPlan, Result<(), String>, ProviderPlan) {
    run_in_netns(ns, move |nl| async move {
        let first = plan_provider(&spec, &nl.observe_provider().await.unwrap());
        let applied = nl
            .apply_provider(&first.actions)
            .await
            .map_err(|e| e.to_string());
        let second = plan_provider(&spec, &nl.observe_provider().await.unwrap());
        (first, applied, second)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn provider_flat_bridge_converges_and_removal_keeps_the_interface() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let h = lab.add_netns("h").unwrap();
    // (veth pairs: this project's test kernels lack the dummy driver)
    run_ok(&[
        "ip", "-n", &h, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    run_ok(&[
        "ip", "-n", &h, "link", "add", "tapx", "type", "veth", "peer", "name", "tapxp",
    ]);
    let bridge = provider_bridge_name("0123abcd-ef01-4567-89ab-cdef01234567");
    let spec = ProviderSpec {
        networks: vec![ProviderNetworkSpec {
            bridge: bridge.clone(),
            interface: "eth1".into(),
            vlan: None,
            taps: vec!["tapx".into(), "tapmissing".into()],
        }],
    };
    let (first, applied, second) = reconcile_provider(&h, spec.clone()).await;
    applied.unwrap();
    assert!(!first.actions.is_empty());
    assert!(second.actions.is_empty(), "not converged: {second:?}");
    assert_eq!(second.waiting, vec!["tapmissing".to_string()]);
    for l in ["eth1", "tapx"] {
        let d = run_ok(&["ip", "-n", &h, "-o", "link", "show", l]);
        assert!(d.contains(&format!("master {bridge}")), "{d}");
        assert!(d.contains(",UP"), "{d}");
    }
    let a = run_ok(&["ip", "-n", &h, "-o", "addr", "show", "dev", &bridge]);
    assert!(a.contains("169.254.169.254/32"), "{a}");
    // Again: nothing to do (a restarted agent changes nothing).
    let (again, applied, _) = reconcile_provider(&h, spec).await;
    applied.unwrap();
    assert!(again.actions.is_empty(), "{again:?}");
    // No local port any more: the bridge goes, eth1 stays (released).
    let (gone, applied, after) = reconcile_provider(&h, ProviderSpec::default()).await;
    applied.unwrap();
    assert_eq!(gone.actions.len(), 1, "{gone:?}");
    assert!(after.actions.is_empty(), "{after:?}");
    let links = run_ok(&["ip", "-n", &h, "-o", "link", "show"]);
    assert!(!links.contains(&bridge), "{links}");
    assert!(links.contains(" eth1@"), "{links}");
    assert!(!links.contains("master"), "{links}");
}

/// With 802.1Q support the VLAN device is created on the interface and
/// removed with the bridge; without it (a kernel lacking
/// `CONFIG_VLAN_8021Q`) apply reports the failed creation and the network
/// is left unwired, nothing panics.
#[tokio::test(flavor = "current_thread")]
async fn provider_vlan_device_is_created_and_removed_or_its_failure_reported() {
    if !require_root() {
        return;
    }
    let lab = Names::new().unwrap();
    let h = lab.add_netns("h").unwrap();
    // (veth pairs: this project's test kernels lack the dummy driver)
    run_ok(&[
        "ip", "-n", &h, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p",
    ]);
    run_ok(&[
        "ip", "-n", &h, "link", "add", "tapx", "type", "veth", "peer", "name", "tapxp",
    ]);
    let kernel_vlan = run(&[
        "ip", "-n", &h, "link", "add", "link", "eth1", "name", "probe", "type", "vlan", "id", "7",
    ])
    .status
    .success();
    run(&["ip", "-n", &h, "link", "del", "probe"]);
    let bridge = provider_bridge_name("99999999-ef01-4567-89ab-cdef01234567");
    let spec = ProviderSpec {
        networks: vec![ProviderNetworkSpec {
            bridge: bridge.clone(),
            interface: "eth1".into(),
            vlan: Some(120),
            taps: vec!["tapx".into()],
        }],
    };
    let (_, applied, second) = reconcile_provider(&h, spec).await;
    if kernel_vlan {
        applied.unwrap();
        assert!(second.actions.is_empty(), "{second:?}");
        let d = run_ok(&["ip", "-n", &h, "-d", "-o", "link", "show", "eth1.120"]);
        assert!(d.contains("vlan protocol 802.1Q id 120"), "{d}");
        assert!(d.contains(&format!("master {bridge}")), "{d}");
        let (_, applied, _) = reconcile_provider(&h, ProviderSpec::default()).await;
        applied.unwrap();
        let links = run_ok(&["ip", "-n", &h, "-o", "link", "show"]);
        assert!(
            !links.contains("eth1.120") && !links.contains(&bridge),
            "{links}"
        );
        assert!(links.contains(" eth1@"), "{links}");
    } else {
        let e = applied.unwrap_err();
        assert!(e.contains("create VLAN 120 eth1.120 on eth1"), "{e}");
        assert!(
            !second.actions.is_empty(),
            "the failed step stays planned (retried each pass)"
        );
        let d = run_ok(&["ip", "-n", &h, "-o", "link", "show", "tapx"]);
        assert!(
            d.contains(&format!("master {bridge}")),
            "the taps still go on the bridge: {d}"
        );
    }
}
