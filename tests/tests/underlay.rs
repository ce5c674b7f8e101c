//! The simulated-host harness itself: two hosts on an underlay reach each
//! other and the bridge, and leave nothing behind.

use std::time::Duration;

use nubo_tests::netns::{link_names, netns_names};
use nubo_tests::{Etcd, Underlay};

#[test]
fn two_hosts_ping_over_the_underlay_and_are_cleaned_up() {
    let underlay = Underlay::new().unwrap();
    let prefix = underlay.name_prefix();
    assert!(prefix.starts_with("nbt"));
    let h1 = underlay.host(1).unwrap();
    let h2 = underlay.host(2).unwrap();
    for name in [h1.netns(), h2.netns(), underlay.bridge(), h1.interface()] {
        assert!(name.len() <= 15 && name.starts_with(&prefix), "{name}");
    }
    assert!(netns_names().unwrap().contains(&h1.netns().to_string()));

    h1.ping(h2.ip(), Duration::from_secs(20)).unwrap();
    h2.ping(h1.ip(), Duration::from_secs(20)).unwrap();
    h1.ping(underlay.gateway(), Duration::from_secs(20))
        .unwrap();

    // MTU 1500 end to end: a full-size unfragmentable packet gets through.
    let out = h1
        .exec(
            "ping",
            &[
                "-c",
                "1",
                "-w",
                "10",
                "-M",
                "do",
                "-s",
                "1472",
                &h2.ip().to_string(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // etcd listening on the bridge address is reachable from inside a host.
    let etcd = Etcd::start_on(underlay.gateway().into()).unwrap();
    etcd.etcdctl(&["put", "/nbt/x", "1"]).unwrap();
    let out = h2
        .exec(
            "etcdctl",
            &[
                &format!("--endpoints={}", etcd.endpoint()),
                "--command-timeout=10s",
                "get",
                "/nbt/x",
                "--print-value-only",
            ],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    drop(etcd);
    drop(h1);
    drop(h2);
    drop(underlay);
    let leftovers: Vec<String> = netns_names()
        .unwrap()
        .into_iter()
        .chain(link_names().unwrap())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn hosts_on_different_underlays_get_distinct_names_and_subnets() {
    let a = Underlay::new().unwrap();
    let b = Underlay::new().unwrap();
    assert_ne!(a.token(), b.token());
    assert_ne!(a.gateway(), b.gateway());
    // A host on `a` cannot reach `b`'s bridge address... through `a`'s
    // underlay it has no route at all (different /24, no default route).
    let h = a.host(1).unwrap();
    assert!(h.ping(b.gateway(), Duration::from_secs(1)).is_err());
}
