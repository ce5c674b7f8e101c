//! The network subsystems of the agent, run after compute on every pass
//! (unless `--no-network`), in this order:
//!
//! 0. [`router`]: a namespace per router with work here, its legs
//!    (veths), addresses, routes, neighbours and NAT ruleset;
//! 1. [`overlay`]: bridges `nb-<vni>`, VXLAN `vx-<vni>`, FDB, taps on
//!    bridges (nubo-overlay);
//!    [`provider`]: provider networks' bridges `np-<id>` on a host
//!    interface or a VLAN device on it (`[physnets]`), taps on them;
//! 2. [`firewall`]: security groups and anti-spoofing in one nft batch
//!    (nubo-firewall), applied only when the live fingerprint differs;
//! 3. [`dhcp`]: one DHCP server per bridge with a live lease table
//!    (nubo-dhcp);
//! 4. [`metadata`]: one metadata server serving every bridge (nubo-metadata).
//!
//! Each is a [`crate::reconciler::Subsystem`]: it maps the [`DesiredNode`]
//! to its library's input with a pure function, observes, plans with a pure
//! function (both unit-tested here) and applies. All of them work from the
//! agent's cache: an etcd outage changes nothing on the node.
//!
//! Only ports of instances whose desired power is running are wired: a
//! stopped instance has no tap.

pub mod dhcp;
pub mod firewall;
pub mod metadata;
pub mod overlay;
pub mod probe;
pub mod provider;
pub mod router;

use std::net::IpAddr;

/// Lease time the DHCP responders hand out (one day; addresses are fixed
/// anyway), to guests and health probes alike.
pub const LEASE_SECS: u32 = 86_400;

use crate::reconciler::{Reconcile, SubsystemError};
use crate::state::desired::{DesiredInstance, DesiredNetwork, DesiredNode, DesiredPort};
use nubo_common::model::PowerState;

/// A local port with its instance and network.
#[derive(Debug, Clone, Copy)]
pub struct LocalPort<'a> {
    /// The instance.
    pub instance: &'a DesiredInstance,
    /// The port.
    pub port: &'a DesiredPort,
    /// Its network.
    pub network: &'a DesiredNetwork,
}

/// Ports of the local instances that should be running, in instance then
/// NIC order. Pure.
pub fn running_ports(desired: &DesiredNode) -> Vec<LocalPort<'_>> {
    let mut out = Vec::new();
    for inst in desired.instances.values() {
        if inst.power() != PowerState::Running {
            continue;
        }
        for port in &inst.ports {
            if let Some(network) = desired.networks.get(&port.network) {
                out.push(LocalPort {
                    instance: inst,
                    port,
                    network,
                });
            }
        }
    }
    out
}

/// A DNS label (RFC 1123) from an instance name: lowercase ASCII letters,
/// digits and `-`, other characters become `-`, runs of `-` collapse, no
/// leading or trailing `-`, at most 63 characters; `fallback` when nothing
/// is left. Pure.
pub fn sanitize_hostname(name: &str, fallback: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(63);
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        fallback.to_string()
    } else {
        out
    }
}

/// The node configuration the network subsystems need.
#[derive(Clone)]
pub struct NetworkOptions {
    /// This node's underlay address (VXLAN source).
    pub underlay_ip: IpAddr,
    /// The underlay's MTU.
    pub underlay_mtu: u16,
    /// This node's availability zone (metadata serves it).
    pub availability_zone: String,
    /// Physical networks and their host interfaces.
    pub physnets: provider::Physnets,
    /// Prefix of the routers' network namespaces.
    pub router_netns_prefix: String,
    /// With it, the node's health probes are reconciled too.
    pub probe: Option<probe::ProbeIdentity>,
    /// Where metadata keeps the guests' encrypted passwords.
    pub passwords: Option<std::sync::Arc<dyn nubo_metadata::PasswordStore>>,
}

/// The network subsystems, in their reconcile order.
pub struct NetworkSubsystems {
    /// The subsystems.
    pub subsystems: Vec<Box<dyn Reconcile>>,
    /// With a probe identity: the probes ready to check
    /// ([`probe::run_checks`]).
    pub probes_ready: Option<tokio::sync::watch::Receiver<Vec<probe::ProbeTarget>>>,
}

/// Builds the network subsystems in their reconcile order, updating
/// `metrics`. With a probe identity, the node's health probes are
/// reconciled too (before the overlay, which plugs them).
pub fn subsystems(
    opts: NetworkOptions,
    metrics: &std::sync::Arc<crate::telemetry::AgentMetrics>,
) -> Result<NetworkSubsystems, SubsystemError> {
    let NetworkOptions {
        underlay_ip,
        underlay_mtu,
        availability_zone,
        physnets,
        router_netns_prefix,
        probe,
        passwords,
    } = opts;
    let mut subs: Vec<Box<dyn Reconcile>> =
        vec![Box::new(router::Routers::new(&router_netns_prefix)?)];
    let mut probes_ready = None;
    let mut publish = None;
    if let Some(ident) = &probe {
        let (probes, publisher, rx) = probe::Probes::new(ident.clone())?;
        subs.push(Box::new(probes));
        publish = Some(publisher);
        probes_ready = Some(rx);
    }
    subs.extend([
        Box::new(overlay::Overlay::new(underlay_ip, underlay_mtu)?.with_probe(probe.clone()))
            as Box<dyn Reconcile>,
        Box::new(provider::Provider::new(physnets.clone())?.with_probe(probe.clone())),
        Box::new(firewall::Firewall::new(physnets).with_metrics(metrics.clone())),
        Box::new(
            dhcp::Dhcp::new()
                .with_replies(metrics.dhcp.clone())
                .with_probe(probe.clone()),
        ),
        Box::new(
            metadata::Metadata::new(&availability_zone)
                .with_observer(metrics.metadata.clone())
                .with_probe(probe)
                .with_passwords(passwords),
        ),
    ]);
    // Last: the probes are checked only once the pass has plugged them and
    // applied the ruleset (see `PublishProbes`).
    if let Some(p) = publish {
        subs.push(Box::new(p));
    }
    Ok(NetworkSubsystems {
        subsystems: subs,
        probes_ready,
    })
}

/// Logs the first plan of a subsystem (on a converged node, after a
/// restart, every one of them is 0) and afterwards only non-empty ones.
pub(crate) fn log_plan(subsystem: &'static str, first: &mut bool, actions: usize) {
    if std::mem::take(first) {
        tracing::info!(subsystem, actions, "initial plan");
    } else if actions > 0 {
        tracing::info!(subsystem, actions, "plan applied");
    }
}

/// Ends a pass of a subsystem that runs servers (DHCP, metadata): the first
/// pass of a process only loads the node's state into fresh servers (what a
/// restart does), so it counts as no change of the node; logs the plan and
/// turns the collected errors into one.
pub(crate) fn finish_server_pass(
    subsystem: &'static str,
    first: &mut bool,
    mut changes: usize,
    errors: Vec<String>,
) -> Result<usize, SubsystemError> {
    if *first {
        tracing::info!(loaded = changes, "state loaded into fresh servers");
        changes = 0;
    }
    log_plan(subsystem, first, changes);
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(SubsystemError::Other(errors.join("; ")))
    }
}

/// The interface index of `name` in the calling thread's network namespace
/// (`None` if it does not exist).
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(sanitize_hostname("Web Server_1", "x"), "web-server-1");
        assert_eq!(sanitize_hostname("--a..b--", "x"), "a-b");
        assert_eq!(sanitize_hostname("ü", "host-1"), "host-1");
        assert_eq!(sanitize_hostname(&"a".repeat(80), "x").len(), 63);
        assert_eq!(
            sanitize_hostname(&format!("{}-b", "a".repeat(62)), "x"),
            "a".repeat(62)
        );
    }

    #[test]
    fn ifindex_of_loopback() {
        assert!(ifindex("lo").is_some());
        assert_eq!(ifindex("nbt-no-such"), None);
    }
}
