//! The provider-network subsystem: [`provider_spec`] maps the provider
//! networks with running local ports and the agent's `[physnets]` (physical
//! network → host interface) to a nubo-overlay [`ProviderSpec`]; each pass
//! observes the links over netlink, plans with the library's pure
//! [`nubo_overlay::plan_provider`] and applies: a bridge `np-<id>` per
//! network, its uplink the host interface (flat) or a VLAN device on it
//! (vlan), the guests' taps on it.
//!
//! A network whose physical network is not in `[physnets]`, or whose
//! interface is missing, is not wired (its ports stay unplugged): the agent
//! logs it once (again only after it was fixed and broke anew), never
//! panics.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use nubo_overlay::{
    Netlink, ObservedProvider, ProviderAction, ProviderNetworkSpec, ProviderPlan, ProviderSpec,
};
use tracing::{debug, error, info};

use super::{log_plan, running_ports};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::{DesiredNetwork, DesiredNode};

/// Physical network name → host interface (`[physnets]`).
pub type Physnets = BTreeMap<String, String>;

/// The uplink interface of `net` on this node: `None` for an overlay
/// network or one whose physical network is not mapped. Pure.
pub fn uplink(net: &DesiredNetwork, physnets: &Physnets) -> Option<String> {
    let p = net.provider.as_ref()?;
    let iface = physnets.get(&p.physical_network)?;
    Some(match p.segment {
        Some(vid) => nubo_overlay::vlan_device_name(iface, vid),
        None => iface.clone(),
    })
}

/// The provider spec of this node, and the networks left out because their
/// physical network is not mapped (`(network id, physical network)`).
/// Pure.
pub fn provider_spec(
    desired: &DesiredNode,
    physnets: &Physnets,
) -> (ProviderSpec, Vec<(String, String)>) {
    let mut taps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for lp in running_ports(desired) {
        if lp.network.provider.is_some() {
            taps.entry(lp.network.id.to_string())
                .or_default()
                .insert(lp.port.tap.clone());
        }
    }
    for net in desired.networks.values().filter(|n| n.provider.is_some()) {
        for leg in &net.router_legs {
            taps.entry(net.id.to_string())
                .or_default()
                .insert(leg.host.clone());
        }
    }
    let mut spec = ProviderSpec::default();
    let mut unmapped = Vec::new();
    for net in desired.networks.values() {
        let (Some(p), Some(t)) = (&net.provider, taps.remove(&net.id.to_string())) else {
            continue;
        };
        let Some(iface) = physnets.get(&p.physical_network) else {
            unmapped.push((net.id.to_string(), p.physical_network.clone()));
            continue;
        };
        spec.networks.push(ProviderNetworkSpec {
            bridge: net.bridge(),
            interface: iface.clone(),
            vlan: p.segment,
            taps: t.into_iter().collect(),
        });
    }
    (spec, unmapped)
}

/// The plan of a pass: the library's, and the networks not wired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderPassPlan {
    /// Actions, taps waited for, networks with a problem.
    pub plan: ProviderPlan,
    /// Networks whose physical network is not in `[physnets]`.
    pub unmapped: Vec<(String, String)>,
}

impl Plan for ProviderPassPlan {
    fn len(&self) -> usize {
        self.plan.actions.len()
    }
}

/// The provider-network reconciler.
pub struct Provider {
    netlink: Netlink,
    physnets: Physnets,
    first: bool,
    /// Problems already logged (logged again only once they went away).
    logged: BTreeSet<String>,
    probe: Option<super::probe::ProbeIdentity>,
}

impl Provider {
    /// Opens a netlink socket in the agent's network namespace. Must be
    /// called inside a tokio runtime.
    pub fn new(physnets: Physnets) -> Result<Self, SubsystemError> {
        let netlink = Netlink::new().map_err(|e| SubsystemError::Other(e.to_string()))?;
        Ok(Self {
            netlink,
            physnets,
            first: true,
            logged: BTreeSet::new(),
            probe: None,
        })
    }

    /// Also plugs this node's health probes into provider bridges.
    pub fn with_probe(mut self, probe: Option<super::probe::ProbeIdentity>) -> Self {
        self.probe = probe;
        self
    }

    /// Logs each current problem once.
    fn report(&mut self, plan: &ProviderPassPlan) {
        let (fresh, now) = problems_to_log(&self.logged, plan);
        for msg in fresh {
            error!("{msg}");
        }
        self.logged = now;
    }
}

/// The problems of `plan` as messages: those not in `logged` (to log
/// now), and all of them (what is logged after this pass). A problem that
/// went away is forgotten, so it is logged again if it comes back. Pure.
pub fn problems_to_log(
    logged: &BTreeSet<String>,
    plan: &ProviderPassPlan,
) -> (Vec<String>, BTreeSet<String>) {
    let all: BTreeSet<String> = plan
        .unmapped
        .iter()
        .map(|(network, physnet)| {
            format!(
                "provider network {network}: physical network {physnet:?} is not in this agent's [physnets] (or --physnet); its ports are not plugged"
            )
        })
        .chain(plan.plan.problems.iter().map(|(bridge, reason)| {
            format!("provider bridge {bridge}: {reason}; its ports are not plugged")
        }))
        .collect();
    let fresh = all.difference(logged).cloned().collect();
    (fresh, all)
}

#[async_trait]
impl Subsystem for Provider {
    type Observed = ObservedProvider;
    type Plan = ProviderPassPlan;

    fn name(&self) -> &'static str {
        "provider"
    }

    async fn observe(
        &mut self,
        _desired: &DesiredNode,
    ) -> Result<ObservedProvider, SubsystemError> {
        self.netlink
            .observe_provider()
            .await
            .map_err(|e| SubsystemError::Other(format!("observe provider networks: {e}")))
    }

    fn plan(&self, desired: &DesiredNode, observed: &ObservedProvider) -> ProviderPassPlan {
        let (mut spec, unmapped) = provider_spec(desired, &self.physnets);
        if let Some(ident) = &self.probe {
            super::probe::plug_into_provider(&mut spec, desired, ident);
        }
        ProviderPassPlan {
            plan: nubo_overlay::plan_provider(&spec, observed),
            unmapped,
        }
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: ProviderPassPlan,
    ) -> Result<usize, SubsystemError> {
        self.report(&plan);
        if !plan.plan.waiting.is_empty() {
            debug!(taps = ?plan.plan.waiting, "taps not created yet; attached once they exist");
        }
        let actions: Vec<ProviderAction> = plan.plan.actions;
        log_plan("provider", &mut self.first, actions.len());
        if actions.is_empty() {
            return Ok(0);
        }
        info!(plan = ?actions, "applying provider-network plan");
        self.netlink
            .apply_provider(&actions)
            .await
            .map_err(|e| SubsystemError::Other(format!("apply provider networks: {e}")))?;
        Ok(actions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;
    use nubo_common::model::{ProviderSegment, ProviderType};

    fn physnets() -> Physnets {
        [("physnet1".to_string(), "eth1".to_string())].into()
    }

    #[test]
    fn provider_networks_get_their_interface_and_taps_overlay_ones_do_not() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let overlay = w.network(100, 0);
        let vlan = w.provider_network(ProviderSegment {
            kind: ProviderType::Vlan,
            physical_network: "physnet1".into(),
            segment: Some(120),
        });
        let unmapped = w.provider_network(ProviderSegment {
            kind: ProviderType::Flat,
            physical_network: "physnet9".into(),
            segment: None,
        });
        let (_i1, p1) = w.instance_on(&n1, vlan, &[]);
        let (_i2, _p2) = w.instance_on(&n1, overlay, &[]);
        let (_i3, _p3) = w.instance_on(&n1, unmapped, &[]);
        let d = build(&w.cache, &n1, 1500);
        let (spec, missing) = provider_spec(&d, &physnets());
        assert_eq!(
            spec.networks,
            vec![ProviderNetworkSpec {
                bridge: nubo_overlay::provider_bridge_name(&vlan.to_string()),
                interface: "eth1".into(),
                vlan: Some(120),
                taps: vec![p1.tap_name()],
            }]
        );
        assert_eq!(
            missing,
            vec![(unmapped.to_string(), "physnet9".to_string())]
        );
        // DHCP and metadata serve the provider bridge; the overlay leaves
        // the network alone; the firewall knows the uplink.
        assert_eq!(d.networks[&vlan].bridge(), spec.networks[0].bridge);
        assert_eq!(d.networks[&vlan].mtu, 1500);
        assert!(super::super::dhcp::leases(&d).contains_key(&spec.networks[0].bridge));
        let o = super::super::overlay::overlay_spec(&d, "10.0.0.1".parse().unwrap(), 1500);
        assert_eq!(o.networks.len(), 1);
        assert_eq!(o.networks[0].vni, 100);
        let fw = super::super::firewall::firewall_spec(&d, &physnets());
        // Every mapped interface is guarded from the first pass on, and
        // the VLAN device of the network wired here.
        assert_eq!(fw.uplinks, vec!["eth1".to_string(), "eth1.120".to_string()]);
    }

    #[test]
    fn a_problem_is_logged_once_and_again_after_it_went_away() {
        let plan = ProviderPassPlan {
            unmapped: vec![("net-a".into(), "physnet9".into())],
            ..Default::default()
        };
        let (fresh, logged) = problems_to_log(&BTreeSet::new(), &plan);
        assert_eq!(fresh.len(), 1);
        assert!(
            fresh[0].contains("\"physnet9\" is not in this agent's [physnets]"),
            "{fresh:?}"
        );
        // The next passes: nothing new.
        let (again, logged) = problems_to_log(&logged, &plan);
        assert!(again.is_empty());
        // Fixed, then broken again: logged again.
        let (none, cleared) = problems_to_log(&logged, &ProviderPassPlan::default());
        assert!(none.is_empty() && cleared.is_empty());
        let (back, _) = problems_to_log(&cleared, &plan);
        assert_eq!(back, fresh);
    }
}
