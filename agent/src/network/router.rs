//! The router subsystem: this node's copies of the distributed routers
//! (docs/routing.md). [`routers_spec`] maps the desired routers to
//! nubo-overlay's [`RoutersSpec`] (a namespace per router, its legs,
//! addresses, default route and neighbours) and [`nat_spec`] to
//! nubo-firewall's per-namespace NAT ruleset; each pass observes the
//! namespaces, plans with the pure [`nubo_overlay::plan_routers`], applies,
//! then loads each namespace's ruleset when it differs from the one there.
//!
//! Runs before the overlay and provider subsystems, which plug the legs'
//! host ends into the bridges like taps.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use nubo_common::RouterId;
use nubo_firewall::router::{ExternalLeg, FloatingNat, InternalLeg, RouterNatSpec};
use nubo_overlay::{
    Neighbour, Netlink, ObservedRouters, RouterAction, RouterLeg, RouterSpec, RoutersSpec,
};
use tracing::{info, warn};

use super::log_plan;
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;
use crate::state::routing::DesiredRouter;

/// The namespace of router `id` on this node: the prefix and the first 12
/// hex digits of the id.
pub fn router_netns(prefix: &str, id: &RouterId) -> String {
    let hex: String = id
        .to_string()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("{prefix}{hex}")
}

/// The MTU of the legs on a network: its guests' MTU.
fn leg_mtu(desired: &DesiredNode, net: &nubo_common::NetworkId) -> u32 {
    desired.networks.get(net).map_or(1500, |n| u32::from(n.mtu))
}

/// The router namespaces of this node. Pure.
pub fn routers_spec(desired: &DesiredNode, prefix: &str) -> RoutersSpec {
    let routers = desired
        .routers
        .values()
        .map(|r| router_spec(desired, prefix, r))
        .collect();
    RoutersSpec {
        prefix: prefix.to_string(),
        routers,
    }
}

fn router_spec(desired: &DesiredNode, prefix: &str, r: &DesiredRouter) -> RouterSpec {
    let mut legs: Vec<RouterLeg> = r
        .legs
        .iter()
        .filter_map(|l| {
            let addr = Ipv4Net::new(l.gateway, l.cidr.prefix_len()).ok()?;
            Some(RouterLeg {
                host: l.host.clone(),
                inner: l.inner.clone(),
                mac: l.mac,
                mtu: leg_mtu(desired, &l.network),
                addresses: [addr].into(),
                announce: false,
            })
        })
        .collect();
    let mut default_route = None;
    if let Some(x) = &r.external {
        // The SNAT address carries the subnet (the connected route to the
        // upstream router); floating IPs are /32. Without a SNAT address
        // yet, the first floating IP carries it.
        let mut addresses = BTreeSet::new();
        let mut subnet_carrier = x.snat.or_else(|| x.floating.keys().next().copied());
        for ip in x.snat.iter().chain(x.floating.keys()) {
            let len = if subnet_carrier == Some(*ip) {
                subnet_carrier = None;
                x.cidr.prefix_len()
            } else {
                32
            };
            if let Ok(a) = Ipv4Net::new(*ip, len) {
                addresses.insert(a);
            }
        }
        if let (Some(up), false) = (x.upstream, addresses.is_empty()) {
            default_route = Some((x.inner.clone(), up));
        }
        legs.push(RouterLeg {
            host: x.host.clone(),
            inner: x.inner.clone(),
            mac: x.mac,
            mtu: leg_mtu(desired, &x.network),
            addresses,
            announce: true,
        });
    }
    RouterSpec {
        netns: router_netns(prefix, &r.id),
        legs,
        default_route,
        neighbours: r
            .neighbours
            .iter()
            .map(|(ip, mac)| Neighbour { ip: *ip, mac: *mac })
            .collect(),
    }
}

/// The NAT and forwarding ruleset of a router's namespace. Pure.
pub fn nat_spec(r: &DesiredRouter) -> RouterNatSpec {
    RouterNatSpec {
        internal: r
            .legs
            .iter()
            .map(|l| InternalLeg {
                leg: l.inner.clone(),
                cidr: l.cidr,
            })
            .collect(),
        external: r.external.as_ref().map(|x| ExternalLeg {
            leg: x.inner.clone(),
            snat: x.snat,
            floating: x
                .floating
                .iter()
                .map(|(f, fixed)| FloatingNat {
                    floating: *f,
                    fixed: *fixed,
                })
                .collect(),
        }),
    }
}

/// The router plan: namespace actions, and the rulesets to (re)load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterPlan {
    /// Netlink actions, in order.
    pub actions: Vec<RouterAction>,
    /// Namespace → ruleset, for the namespaces whose ruleset differs.
    pub rulesets: BTreeMap<String, RouterNatSpec>,
}

impl Plan for RouterPlan {
    fn len(&self) -> usize {
        self.actions.len() + self.rulesets.len()
    }
}

/// What a pass sees: the namespaces, and the fingerprint of the ruleset
/// loaded in each.
#[derive(Debug, Clone, Default)]
pub struct ObservedRouting {
    /// The namespaces.
    pub namespaces: ObservedRouters,
    /// Namespace → the fingerprint of its ruleset (`None`: none loaded, or
    /// unreadable).
    pub rulesets: BTreeMap<String, Option<String>>,
}

/// The router reconciler.
pub struct Routers {
    host: Netlink,
    prefix: String,
    first: bool,
}

impl Routers {
    /// Opens a netlink socket in the agent's namespace. Must be called
    /// inside a tokio runtime.
    pub fn new(prefix: &str) -> Result<Self, SubsystemError> {
        let host = Netlink::new().map_err(|e| SubsystemError::Other(e.to_string()))?;
        Ok(Self {
            host,
            prefix: prefix.to_string(),
            first: true,
        })
    }
}

#[async_trait]
impl Subsystem for Routers {
    type Observed = ObservedRouting;
    type Plan = RouterPlan;

    fn name(&self) -> &'static str {
        "routers"
    }

    async fn observe(&mut self, _desired: &DesiredNode) -> Result<ObservedRouting, SubsystemError> {
        let namespaces = nubo_overlay::observe_routers(&self.prefix)
            .await
            .map_err(|e| SubsystemError::Other(format!("observe routers: {e}")))?;
        let mut rulesets = BTreeMap::new();
        for ns in namespaces.namespaces.keys() {
            let name = ns.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                nubo_firewall::router::loaded_router_fingerprint(&name)
            })
            .await
            .map_err(|e| SubsystemError::Other(format!("ruleset reader: {e}")))?;
            let loaded = match loaded {
                Ok(fingerprint) => fingerprint,
                Err(e) => {
                    warn!(netns = %ns, error = %e, "cannot read the router ruleset; reloading it");
                    None
                }
            };
            rulesets.insert(ns.clone(), loaded);
        }
        Ok(ObservedRouting {
            namespaces,
            rulesets,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &ObservedRouting) -> RouterPlan {
        let spec = routers_spec(desired, &self.prefix);
        let actions = nubo_overlay::plan_routers(&spec, &observed.namespaces);
        let rulesets = desired
            .routers
            .values()
            .map(|r| (router_netns(&self.prefix, &r.id), nat_spec(r)))
            .filter(|(ns, want)| {
                let want = nubo_firewall::router::router_fingerprint(want);
                observed
                    .rulesets
                    .get(ns)
                    .is_none_or(|have| have.as_deref() != want.as_deref().ok())
            })
            .collect();
        RouterPlan { actions, rulesets }
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: RouterPlan,
    ) -> Result<usize, SubsystemError> {
        log_plan("routers", &mut self.first, plan.len());
        if plan.len() == 0 {
            return Ok(0);
        }
        let mut errors = Vec::new();
        if !plan.actions.is_empty() {
            info!(plan = ?plan.actions, "applying router plan");
            if let Err(e) = nubo_overlay::apply_routers(&self.host, &plan.actions).await {
                errors.push(format!("apply routers: {e}"));
            }
        }
        for (ns, spec) in &plan.rulesets {
            let (name, spec) = (ns.clone(), spec.clone());
            let applied = tokio::task::spawn_blocking(move || {
                nubo_firewall::router::apply_router_ruleset(&name, &spec)
            })
            .await;
            match applied {
                Ok(Ok(_)) => info!(netns = %ns, "router ruleset loaded"),
                Ok(Err(e)) => errors.push(format!("router ruleset in {ns}: {e}")),
                Err(e) => errors.push(format!("router ruleset in {ns}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(plan.len())
        } else {
            Err(SubsystemError::Other(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::firewall::firewall_spec;
    use crate::network::overlay::overlay_spec;
    use crate::state::desired::build;
    use crate::testutil::*;

    /// n1 hosts a port of net A (routed with B by r, gateway on ext).
    fn world(snat: bool, fip: bool) -> (World, RouterId, nubo_common::NetworkId) {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let a = w.network(100, 0);
        let b = w.network(200, 0);
        let ext = w.external_network();
        let r = w.router(&[a, b], Some(ext));
        let (_, p1) = w.instance_on(&n1, a, &[]);
        if fip {
            w.floating_ip(ext, "10.77.0.50", &p1, r);
        }
        if snat {
            w.router_snat(&n1, r, ext, "10.77.0.10");
        }
        (w, r, b)
    }

    fn addrs(leg: &RouterLeg) -> Vec<String> {
        leg.addresses.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn namespace_legs_addresses_and_default_route() {
        let (w, r, _) = world(true, true);
        let d = build(&w.cache, &node_name("n1"), 1500);
        let spec = routers_spec(&d, "qrouter-");
        assert_eq!(spec.routers.len(), 1);
        let ns = &spec.routers[0];
        assert_eq!(ns.netns, router_netns("qrouter-", &r));
        assert_eq!(ns.netns.len(), "qrouter-".len() + 12);
        assert_eq!(ns.legs.len(), 3);
        assert_eq!(addrs(&ns.legs[0]), ["192.168.0.1/24"]);
        assert!(!ns.legs[0].announce);
        let ext = &ns.legs[2];
        assert!(ext.announce);
        assert_eq!(addrs(ext), ["10.77.0.10/24", "10.77.0.50/32"]);
        assert_eq!(ext.mtu, 1500);
        assert_eq!(ns.legs[0].mtu, 1450);
        let (leg, via) = ns.default_route.clone().unwrap();
        assert_eq!(
            (leg, via.to_string()),
            (ext.inner.clone(), "10.77.0.1".into())
        );
        assert!(ns
            .neighbours
            .iter()
            .any(|n| n.ip.to_string() == "192.168.0.11"));

        let nat = nat_spec(&d.routers[&r]);
        let x = nat.external.unwrap();
        assert_eq!(x.snat.map(|s| s.to_string()), Some("10.77.0.10".into()));
        assert_eq!(x.floating.len(), 1);
        assert_eq!(nat.internal.len(), 2);
    }

    #[test]
    fn without_snat_the_first_floating_ip_carries_the_subnet() {
        let (w, _, _) = world(false, true);
        let d = build(&w.cache, &node_name("n1"), 1500);
        let spec = routers_spec(&d, "qrouter-");
        assert_eq!(addrs(&spec.routers[0].legs[2]), ["10.77.0.50/24"]);
        assert!(spec.routers[0].default_route.is_some());
        // Neither: no address, no default route (nothing could leave).
        let (w, _, _) = world(false, false);
        let d = build(&w.cache, &node_name("n1"), 1500);
        let spec = routers_spec(&d, "qrouter-");
        assert!(spec.routers[0].legs[2].addresses.is_empty());
        assert!(spec.routers[0].default_route.is_none());
    }

    #[test]
    fn legs_are_plugged_and_guarded_at_the_vxlan_devices() {
        let (w, _, b) = world(true, false);
        let d = build(&w.cache, &node_name("n1"), 1500);
        // Net B has no local port: its bridge exists for the router's leg.
        let ov = overlay_spec(&d, "10.0.0.1".parse().unwrap(), 1500);
        let vni_b = d.networks[&b].vni;
        let net_b = ov.networks.iter().find(|n| n.vni == vni_b).unwrap();
        assert_eq!(net_b.ports.len(), 1);
        assert!(net_b.ports[0].tap.starts_with("qr"));
        let fw = firewall_spec(&d, &Default::default());
        let devices: Vec<&str> = fw.routed.iter().map(|g| g.vxlan.as_str()).collect();
        assert_eq!(devices, ["vx-100", "vx-200"]);
        assert!(fw.routed.iter().all(|g| g.node_mac != g.mac));
    }
}
