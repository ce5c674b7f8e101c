//! The "physical" network of a [`NetLab`] (or of any lab of host
//! namespaces, [`Wire::for_hosts`]): a root-namespace bridge playing
//! the switch, a second interface in every simulated host plugged into it
//! (the hosts' `[physnets]` interface), an "upstream router" namespace on
//! it holding the provider network's gateway address (untagged, or on a
//! VLAN sub-interface), and "external host" namespaces beside it.
//!
//! Everything is named with the lab's prefix `p`: switch `<p>s`, per host
//! `<p>q<i>` (switch port) ↔ `<p>p` (in the host), the upstream router
//! `<p>r` with `<p>x` (switch port) ↔ `<p>y` and its VLAN device `<p>v`,
//! external host `k` `<p>e<k>` with `<p>w<k>` (switch port) ↔ `eth0`.
//! Removed on drop (the hosts' ends go with the hosts).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::net_e2e::NetLab;
use crate::netns::{netns_exec, run};

/// A lab's physical wiring; see the module doc.
pub struct Wire {
    /// The lab's name prefix.
    pub p: String,
    externals: Vec<String>,
}

impl Wire {
    /// Wires `hosts` hosts of `lab` to a new switch and starts the
    /// upstream router with address `router` (`a.b.c.d/len`): on its
    /// switch port, or on a VLAN sub-interface with id `vlan`.
    pub fn new(lab: &NetLab, hosts: u8, vlan: Option<u16>, router: &str) -> Result<Self> {
        let namespaces: Vec<&str> = lab.hosts[..usize::from(hosts)]
            .iter()
            .map(|h| h.netns())
            .collect();
        Self::for_hosts(&lab.token_prefix(), &namespaces, vlan, router)
    }

    /// [`Wire::new`] for any lab: the hosts are the namespaces `hosts`
    /// (host `i` = `hosts[i - 1]`), everything named with prefix `p`.
    pub fn for_hosts(p: &str, hosts: &[&str], vlan: Option<u16>, router: &str) -> Result<Self> {
        let w = Wire {
            p: p.to_string(),
            externals: Vec::new(),
        };
        let p = &w.p;
        let sw = format!("{p}s");
        run("ip", &["link", "add", &sw, "type", "bridge"])?;
        run("ip", &["link", "set", &sw, "up"])?;
        for (i, ns) in (1u8..).zip(hosts.iter().copied()) {
            let (outer, inner) = (w.switch_port(i), Self::host_link(p));
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns,
                ],
            )?;
            run("ip", &["link", "set", &outer, "master", &sw, "up"])?;
            run("ip", &["-n", ns, "link", "set", &inner, "up"])?;
        }
        let (r, x, y, v) = (
            w.upstream(),
            format!("{p}x"),
            format!("{p}y"),
            format!("{p}v"),
        );
        run("ip", &["netns", "add", &r])?;
        run(
            "ip",
            &[
                "link", "add", &x, "type", "veth", "peer", "name", &y, "netns", &r,
            ],
        )?;
        run("ip", &["link", "set", &x, "master", &sw, "up"])?;
        let vid = vlan.map(|v| v.to_string());
        let cmds = match &vid {
            Some(id) => vec![
                vec!["link", "set", "lo", "up"],
                vec!["link", "set", &y, "up"],
                vec![
                    "link", "add", "link", &y, "name", &v, "type", "vlan", "id", id,
                ],
                vec!["addr", "add", router, "dev", &v],
                vec!["link", "set", &v, "up"],
            ],
            None => vec![
                vec!["link", "set", "lo", "up"],
                vec!["addr", "add", router, "dev", &y],
                vec!["link", "set", &y, "up"],
            ],
        };
        for cmd in cmds {
            let mut args = vec!["-n", r.as_str()];
            args.extend(cmd);
            run("ip", &args)?;
        }
        Ok(w)
    }

    /// The physical interface's name inside every host of a lab with
    /// prefix `p` (what `--physnet physnet1=…` names).
    pub fn host_link(p: &str) -> String {
        format!("{p}p")
    }

    /// The switch port of host `i`.
    pub fn switch_port(&self, i: u8) -> String {
        format!("{}q{i}", self.p)
    }

    /// The upstream router's namespace.
    pub fn upstream(&self) -> String {
        format!("{}r", self.p)
    }

    /// Adds external host number `k` on the switch (untagged) with address
    /// `addr` (`a.b.c.d/len`) and default route via `gateway`; returns its
    /// namespace.
    pub fn add_external_host(&mut self, k: u8, addr: &str, gateway: Ipv4Addr) -> Result<String> {
        let p = &self.p;
        let (ns, port) = (format!("{p}e{k}"), format!("{p}w{k}"));
        run("ip", &["netns", "add", &ns])?;
        self.externals.push(ns.clone());
        run(
            "ip",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run(
            "ip",
            &["link", "set", &port, "master", &format!("{p}s"), "up"],
        )?;
        let gw = gateway.to_string();
        for cmd in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", addr, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", &gw],
        ] {
            let mut args = vec!["-n", ns.as_str()];
            args.extend(cmd);
            run("ip", &args)?;
        }
        Ok(ns)
    }

    /// Runs a program in the upstream router's namespace.
    pub fn in_upstream(&self, program: &str, args: &[&str]) -> Result<std::process::Output> {
        netns_exec(&self.upstream(), program, args)
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        let p = &self.p;
        for ns in &self.externals {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["netns", "del", &format!("{p}r")]);
        let _ = run("ip", &["link", "del", &format!("{p}s")]);
    }
}

/// The MAC of the external leg (`ig…`) of the only router namespace whose
/// name starts with `router_prefix` (a lab agent's
/// [`crate::agent::lab_router_prefix`]).
pub fn external_leg_mac(router_prefix: &str) -> Result<String> {
    let ns = crate::netns::netns_names()?
        .into_iter()
        .find(|n| n.starts_with(router_prefix))
        .with_context(|| format!("no router namespace {router_prefix}*"))?;
    let links = netns_exec(&ns, "ip", &["-o", "link", "show"])?;
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    links
        .lines()
        .find(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("ig")))
        .and_then(|l| l.split("link/ether ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .with_context(|| format!("no external leg in {ns}: {links}"))
}

/// `nubo network create ext --provider-type flat --physical-network
/// physnet1 --cidr <cidr> --gateway <gateway> --external`: the external
/// network on the wire's untagged segment; its JSON.
pub fn create_flat_external(
    cli: &crate::cli::Cli,
    cidr: &str,
    gateway: Ipv4Addr,
) -> Result<serde_json::Value> {
    cli.json(&[
        "network",
        "create",
        "ext",
        "--provider-type",
        "flat",
        "--physical-network",
        "physnet1",
        "--cidr",
        cidr,
        "--gateway",
        &gateway.to_string(),
        "--external",
    ])
}
