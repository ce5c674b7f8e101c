//! `nubo port capture` streams a guest's traffic from the node it runs on,
//! addressed by server name (its only port), by port id, and refused with a
//! clear message for a name that is neither. Real agent (`--driver netns`),
//! real tcpdump on the node, real ICMP between two guests. Needs root,
//! `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use nubo_tests::net_e2e::{Guest, NetLab};
use nubo_tests::Cli;

fn objects(lab: &NetLab) {
    lab.base_objects().unwrap();
    let cli = &lab.cli;
    cli.json(&["network", "create", "n", "--cidr", "10.93.0.0/24"])
        .unwrap();
    // Egress anywhere, ICMP in: the pings of the test.
    cli.json(&["secgroup", "create", "cap"]).unwrap();
    for rule in [
        &["--direction", "egress"][..],
        &["--direction", "ingress", "--protocol", "icmp"],
    ] {
        let mut args = vec!["secgroup", "rule", "create", "cap"];
        args.extend_from_slice(rule);
        cli.json(&args).unwrap();
    }
}

/// Captures `count` packets with `nubo port capture <target>` while `from`
/// pings `to`; returns the capture's stdout.
fn capture_while_pinging(cli: &Cli, target: &str, from: &Guest, to: &Guest) -> String {
    let _ping = from
        .spawn("ping", &["-i", "0.2", &to.ip.to_string()])
        .unwrap();
    let out = cli
        .run(&["port", "capture", target, "--count", "4"])
        .unwrap()
        .ok()
        .unwrap();
    out.stdout
}

#[test]
fn capture_by_server_name_and_by_port() {
    let lab = NetLab::start(1).unwrap();
    objects(&lab);
    let a = lab
        .server("cap-a", "n", 1, &["--security-group", "cap"])
        .unwrap();
    let b = lab
        .server("cap-b", "n", 1, &["--security-group", "cap"])
        .unwrap();
    for g in [&a, &b] {
        g.udhcpc(&lab.udhcpc_script()).unwrap();
    }
    let cli = Cli::new(lab.cli.endpoint()).unwrap();

    // By server name: the server's only port.
    let text = capture_while_pinging(&cli, "cap-a", &b, &a);
    let echo = format!("{} > {}: ICMP echo request", b.ip, a.ip);
    assert!(text.contains(&echo), "capture by server name:\n{text}");
    assert!(
        text.contains(&a.mac),
        "frames of cap-a's MAC {}:\n{text}",
        a.mac
    );

    // By port id: the same tap.
    let text = capture_while_pinging(&cli, &a.port, &b, &a);
    assert!(text.contains(&echo), "capture by port id:\n{text}");

    // Neither a port nor a server: a clear refusal, nothing captured.
    let out = cli
        .run(&["port", "capture", "no-such-thing", "--count", "1"])
        .unwrap();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("no port or server \"no-such-thing\" in project"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
