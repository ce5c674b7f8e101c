//! The firewall subsystem: [`firewall_spec`] maps local ports, their
//! security groups' rules and the groups' cluster-wide members to a
//! nubo-firewall [`FirewallSpec`]; each pass renders it, reads the live
//! tables ([`FirewallObserved`]), plans ([`firewall_action`], the library's
//! `plan`) and applies one atomic nftables transaction (libnftables, in
//! process: no `nft` child) only when the plan says
//! [`FirewallAction::Replace`]. A ruleset that differs from the one this
//! process just applied is applied without listing first
//! ([`must_observe`]): that is the security-group update path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nubo_common::model::{self, SecurityGroupRule};
use nubo_firewall::{
    Direction, EtherType, FirewallAction, FirewallSpec, GroupSpec, PortSpec, Protocol, Remote,
    RuleSpec, Ruleset,
};
use tracing::{debug, info};

use super::provider::Physnets;
use super::{log_plan, running_ports};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// Maps one security group rule. Pure.
pub fn rule_spec(r: &SecurityGroupRule) -> RuleSpec {
    RuleSpec {
        direction: match r.direction {
            model::Direction::Ingress => Direction::Ingress,
            model::Direction::Egress => Direction::Egress,
        },
        ethertype: match r.ethertype {
            model::EtherType::Ipv4 => EtherType::V4,
            model::EtherType::Ipv6 => EtherType::V6,
        },
        protocol: match r.protocol {
            model::Protocol::Any => Protocol::Any,
            model::Protocol::Tcp => Protocol::Tcp,
            model::Protocol::Udp => Protocol::Udp,
            model::Protocol::Icmp => Protocol::Icmp,
            model::Protocol::Number(n) => Protocol::Number(n),
        },
        port_range: r.ports,
        remote: match &r.remote {
            model::Remote::Any => Remote::Any,
            model::Remote::Cidr(net) => Remote::Cidr(*net),
            model::Remote::Group(g) => Remote::Group(g.to_string()),
        },
    }
}

/// Builds the firewall spec of this node from the running local ports and
/// the security groups they use (directly or as remote groups). Pure and
/// deterministic (ports sorted by tap), so the rendered ruleset — and its
/// fingerprint — only changes when the inputs do.
pub fn firewall_spec(desired: &DesiredNode, physnets: &Physnets) -> FirewallSpec {
    let mut ports: Vec<PortSpec> = running_ports(desired)
        .into_iter()
        .map(|lp| PortSpec {
            port_id: lp.port.id.to_string(),
            tap: lp.port.tap.clone(),
            mac: lp.port.mac,
            ips: vec![IpAddr::V4(lp.port.ip)],
            groups: lp
                .port
                .security_groups
                .iter()
                .map(ToString::to_string)
                .collect(),
            port_security: lp.port.port_security,
        })
        .collect();
    ports.sort_by(|a, b| a.tap.cmp(&b.tap));
    let groups: BTreeMap<String, GroupSpec> = desired
        .security_groups
        .iter()
        .map(|(id, g)| {
            let id = id.to_string();
            (
                id.clone(),
                GroupSpec {
                    id,
                    rules: g.group.rules.iter().map(rule_spec).collect(),
                    members: g.members.iter().map(|ip| IpAddr::V4(*ip)).collect(),
                },
            )
        })
        .collect();
    // Provider networks' uplinks (only those the provider subsystem
    // wires: a physical network mapped to a host interface).
    let mut uplinks: Vec<String> = desired
        .networks
        .values()
        .filter_map(|n| super::provider::uplink(n, physnets))
        .collect();
    uplinks.sort();
    uplinks.dedup();
    FirewallSpec {
        ports,
        groups,
        uplinks,
    }
}

/// Whether a pass must list the live tables before deciding, given the
/// desired ruleset's fingerprint and the one this process knows to be live
/// (last applied or observed; `None` on the first pass and after a failed
/// apply). Pure.
///
/// Known and different: the live tables carry the old fingerprint, so
/// [`nubo_firewall::plan`] would answer `Replace` whatever else the listing
/// shows; the listing (3 nftables commands) is skipped and the update goes
/// straight to the one atomic transaction. Unknown, or equal (a pass for
/// another subsystem's change, the periodic resync): list and plan as
/// always, which catches tables deleted or replaced behind nubo's back.
pub fn must_observe(desired_fingerprint: &str, known_live: Option<&str>) -> bool {
    known_live.is_none_or(|live| live == desired_fingerprint)
}

/// What a firewall pass knows before planning: the ruleset the desired
/// node renders to, and the live tables when they were listed.
#[derive(Debug, Clone)]
pub struct FirewallObserved {
    /// The desired ruleset, rendered.
    pub desired: Ruleset,
    /// The live tables (`Some(None)`: nubo's tables do not exist), or
    /// `None` when they were not listed because the live ruleset is known
    /// to be another one ([`must_observe`]).
    pub live: Option<Option<String>>,
    /// Time spent rendering.
    pub render: Duration,
    /// Time spent listing.
    pub listing: Duration,
}

/// The firewall plan: replace the live tables with the desired ruleset,
/// or nothing.
#[derive(Debug, Clone)]
pub struct FirewallPlan {
    /// What to do.
    pub action: FirewallAction,
    /// The ruleset to apply.
    pub ruleset: Ruleset,
    /// Whether the live tables were listed for this plan.
    pub listed: bool,
    /// Time spent rendering and listing (for the pass timing).
    pub timings: (Duration, Duration),
}

impl Plan for FirewallPlan {
    fn len(&self) -> usize {
        usize::from(self.action == FirewallAction::Replace)
    }
}

/// The action a pass takes: the library's comparison of the desired
/// ruleset with the live tables, or a replacement when they were not
/// listed. Pure.
pub fn firewall_action(observed: &FirewallObserved) -> FirewallAction {
    match &observed.live {
        Some(live) => nubo_firewall::plan(&observed.desired, live.as_deref()),
        None => FirewallAction::Replace,
    }
}

/// The firewall reconciler (in the agent's network namespace).
#[derive(Debug)]
pub struct Firewall {
    first: bool,
    /// Fingerprint of the ruleset last applied or found live by this process.
    known_live: Option<String>,
    /// Physical networks → host interfaces (provider uplinks).
    physnets: Physnets,
}

impl Firewall {
    /// A reconciler; nothing is touched until the first pass.
    pub fn new(physnets: Physnets) -> Self {
        Self {
            first: true,
            known_live: None,
            physnets,
        }
    }
}

impl Default for Firewall {
    fn default() -> Self {
        Self::new(Physnets::new())
    }
}

/// Runs `f` (libnftables) on the blocking pool: it blocks on netlink (and
/// on its process-wide lock). The agent runs inside its host's network
/// namespace, so `Netns::Current` is the right one on any blocking-pool
/// thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, nubo_firewall::FirewallError> + Send + 'static,
) -> Result<T, SubsystemError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SubsystemError::Other(format!("firewall task: {e}")))?
        .map_err(|e| SubsystemError::Other(format!("firewall: {e}")))
}

#[async_trait]
impl Subsystem for Firewall {
    type Observed = FirewallObserved;
    type Plan = FirewallPlan;

    fn name(&self) -> &'static str {
        "firewall"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<FirewallObserved, SubsystemError> {
        let started = Instant::now();
        let rs = nubo_firewall::ruleset(&firewall_spec(desired, &self.physnets));
        let render = started.elapsed();
        let list = must_observe(rs.fingerprint(), self.known_live.as_deref());
        // Until this pass succeeds, what is live is unknown.
        self.known_live = None;
        let t = Instant::now();
        let live = if list {
            Some(blocking(nubo_firewall::current).await?)
        } else {
            None
        };
        Ok(FirewallObserved {
            desired: rs,
            live,
            render,
            listing: t.elapsed(),
        })
    }

    fn plan(&self, _desired: &DesiredNode, observed: &FirewallObserved) -> FirewallPlan {
        FirewallPlan {
            action: firewall_action(observed),
            ruleset: observed.desired.clone(),
            listed: observed.live.is_some(),
            timings: (observed.render, observed.listing),
        }
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: FirewallPlan,
    ) -> Result<usize, SubsystemError> {
        let n = plan.len();
        let fingerprint = plan.ruleset.fingerprint().to_string();
        let t = Instant::now();
        if n > 0 {
            let rs = plan.ruleset;
            blocking(move || nubo_firewall::apply(&rs)).await?;
        }
        let (render, listing) = plan.timings;
        debug!(
            render_us = render.as_micros() as u64,
            observed = plan.listed,
            observe_us = listing.as_micros() as u64,
            apply_us = t.elapsed().as_micros() as u64,
            "firewall pass timing"
        );
        self.known_live = Some(fingerprint.clone());
        log_plan("firewall", &mut self.first, n);
        if n > 0 {
            info!(%fingerprint, "firewall ruleset replaced");
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;

    #[test]
    fn spec_holds_ports_rules_and_members() {
        let mut w = World::new();
        let (n1, n2) = (node_name("n1"), node_name("n2"));
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        let net = w.network(100, 0);
        let sg = w.secgroup_self_referencing();
        let (_i1, p1) = w.instance_on(&n1, net, &[sg]);
        let (_i2, p2) = w.instance_on(&n2, net, &[sg]);
        let (_i3, p3) = w.instance_on(&n1, net, &[]);
        let d = build(&w.cache, &n1, 1500);
        let spec = firewall_spec(&d, &Physnets::new());
        assert_eq!(spec.ports.len(), 2);
        let port1 = spec.ports.iter().find(|p| p.tap == p1.tap_name()).unwrap();
        assert_eq!(port1.mac.0, p1.mac.octets());
        assert_eq!(port1.ips, vec![IpAddr::V4(p1.ip)]);
        assert_eq!(port1.groups, vec![sg.to_string()]);
        assert!(port1.port_security);
        let port3 = spec.ports.iter().find(|p| p.tap == p3.tap_name()).unwrap();
        assert!(port3.groups.is_empty());
        let g = &spec.groups[&sg.to_string()];
        assert_eq!(g.rules.len(), 2);
        assert!(g.rules.iter().any(
            |r| r.remote == Remote::Group(sg.to_string()) && r.direction == Direction::Ingress
        ));
        let mut members = g.members.clone();
        members.sort();
        assert_eq!(members, vec![IpAddr::V4(p1.ip), IpAddr::V4(p2.ip)]);
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let sg = w.secgroup_self_referencing();
        for _ in 0..3 {
            w.instance_on(&n1, net, &[sg]);
        }
        let d = build(&w.cache, &n1, 1500);
        let a = nubo_firewall::ruleset(&firewall_spec(&d, &Physnets::new()));
        let b = nubo_firewall::ruleset(&firewall_spec(&d.clone(), &Physnets::new()));
        assert_eq!(a, b);
    }

    #[test]
    fn live_tables_are_listed_unless_known_to_differ() {
        // First pass (or after a failure): list.
        assert!(must_observe("aa", None));
        // Nothing changed since the last apply: list (drift check).
        assert!(must_observe("aa", Some("aa")));
        // A new ruleset while the old one is known live: replace directly.
        assert!(!must_observe("bb", Some("aa")));
    }

    #[test]
    fn rules_map_field_by_field() {
        let r = SecurityGroupRule {
            id: nubo_common::RuleId::new_random(),
            direction: model::Direction::Ingress,
            ethertype: model::EtherType::Ipv4,
            protocol: model::Protocol::Tcp,
            ports: Some((22, 22)),
            remote: model::Remote::Cidr("10.9.0.0/16".parse().unwrap()),
        };
        assert_eq!(
            rule_spec(&r),
            RuleSpec {
                direction: Direction::Ingress,
                ethertype: EtherType::V4,
                protocol: Protocol::Tcp,
                port_range: Some((22, 22)),
                remote: Remote::Cidr("10.9.0.0/16".parse().unwrap()),
            }
        );
    }

    #[test]
    fn the_plan_replaces_only_what_differs_from_the_live_tables() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        w.instance_on(&n1, net, &[]);
        let rs = nubo_firewall::ruleset(&firewall_spec(
            &build(&w.cache, &n1, 1500),
            &Physnets::new(),
        ));
        let observed = |live| FirewallObserved {
            desired: rs.clone(),
            live,
            render: Duration::ZERO,
            listing: Duration::ZERO,
        };
        let fw = Firewall::default();
        let d = DesiredNode::default();
        // Listed and identical: nothing to do.
        let same = observed(Some(Some(rs.text().to_string())));
        assert_eq!(firewall_action(&same), FirewallAction::Noop);
        assert!(fw.plan(&d, &same).is_empty());
        // No table, or not listed because known to differ: replace.
        assert_eq!(
            firewall_action(&observed(Some(None))),
            FirewallAction::Replace
        );
        let p = fw.plan(&d, &observed(None));
        assert_eq!((p.len(), p.listed), (1, false));
        assert_eq!(p.ruleset, rs);
    }
}
