//! Throughput benchmark (manual): `cargo test -p nubo-firewall --release
//! --test bench -- --ignored --nocapture`. Needs root and `iperf3`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::lab::{eventually, Lab};
use common::specs::*;
use nubo_firewall::{apply_in, ruleset_with_mode, Direction, Protocol, RenderMode};

#[test]
#[ignore = "benchmark, run by hand"]
fn iperf3_between_two_guests() {
    let lab = Lab::new(2);
    lab.spawn(&lab.guests[1].ns, &["iperf3", "-s", "-p", "65000"]);
    for (n, mode) in [
        (10, RenderMode::Sets),
        (1_000, RenderMode::Sets),
        (10_000, RenderMode::Sets),
        (10_000, RenderMode::Linear),
    ] {
        let g1 = &lab.guests[1];
        let mut spec = many_rules(n, &g1.tap, g1.mac, &g1.ip);
        // The rule iperf3 needs sorts last, the worst case for linear mode.
        let group = spec.groups.get_mut("many").expect("group");
        group.rules.push(rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some((65000, 65000)),
            cidr("10.77.0.0/24"),
        ));
        let g0 = &lab.guests[0];
        spec.ports
            .push(port("p-client", &g0.tap, g0.mac, &g0.ip, &["client"]));
        spec.groups.insert("client".into(), group_any_egress());
        apply_in(&lab.netns(), &ruleset_with_mode(&spec, mode)).expect("apply");
        assert!(eventually(|| lab.tcp(0, &g1.ip, 65000)));
        let out = lab.exec(
            &g0.ns,
            &["iperf3", "-c", &g1.ip, "-p", "65000", "-t", "3", "-f", "g"],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .rfind(|l| l.contains("receiver"))
            .unwrap_or("no result")
            .to_string();
        println!("{n:>6} rules {mode:?}: {line}");
        let crr = lab.exec(&g0.ns, &["sh", "-c", &format!("i=0; end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do nc -z -w 1 {} 65000 && i=$((i+1)); done; echo $i", g1.ip)]);
        println!(
            "{n:>6} rules {mode:?}: new connections in 3 s: {}",
            String::from_utf8_lossy(&crr.stdout).trim()
        );
    }
}

fn group_any_egress() -> nubo_firewall::GroupSpec {
    group(
        "client",
        vec![rule(
            Direction::Egress,
            Protocol::Any,
            None,
            nubo_firewall::Remote::Any,
        )],
        &[],
    )
}
