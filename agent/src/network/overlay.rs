//! The overlay subsystem: [`overlay_spec`] maps the desired node to a
//! nubo-overlay [`OverlaySpec`]; each pass observes the namespace over
//! netlink, plans with the library's pure [`nubo_overlay::plan`] (the taps
//! it waits for set apart, [`split_plan`]) and applies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use nubo_overlay::{LocalPort, Netlink, NetworkSpec, ObservedOverlay, OverlayAction, OverlaySpec};
use tracing::{debug, info};

use super::{log_plan, running_ports};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// Builds the overlay spec of this node. Pure.
///
/// Every network with a running local port or a router leg gets its VNI,
/// the taps and MACs of those ports and legs, the remote VTEPs and the
/// remote MACs. The device MTU is
/// derived by the library from the underlay MTU (underlay − VXLAN overhead);
/// a network MTU below that is enforced on the guests through DHCP.
pub fn overlay_spec(desired: &DesiredNode, underlay_ip: IpAddr, underlay_mtu: u16) -> OverlaySpec {
    let mut ports: BTreeMap<u32, Vec<LocalPort>> = BTreeMap::new();
    // Provider networks are wired by the provider subsystem.
    for lp in running_ports(desired)
        .into_iter()
        .filter(|lp| lp.network.provider.is_none())
    {
        ports.entry(lp.network.vni).or_default().push(LocalPort {
            tap: lp.port.tap.clone(),
            mac: lp.port.mac,
        });
    }
    // Router legs are plugged like taps (created by the router subsystem).
    for net in desired.networks.values().filter(|n| n.provider.is_none()) {
        for leg in &net.router_legs {
            ports.entry(net.vni).or_default().push(LocalPort {
                tap: leg.host.clone(),
                mac: leg.mac,
            });
        }
    }
    let networks = desired
        .networks
        .values()
        .filter(|net| net.provider.is_none())
        .filter_map(|net| {
            let mut local = ports.remove(&net.vni)?;
            local.sort_by(|a, b| a.tap.cmp(&b.tap));
            Some(NetworkSpec {
                vni: net.vni,
                ports: local,
                remote_vteps: net
                    .remote_vteps
                    .iter()
                    .copied()
                    .filter(|v| *v != underlay_ip)
                    .collect(),
                remote_macs: net
                    .remote_macs
                    .iter()
                    .filter(|(_, v)| **v != underlay_ip)
                    .map(|(m, v)| (*m, *v))
                    .collect(),
            })
        })
        .collect();
    OverlaySpec {
        underlay_ip,
        underlay_mtu,
        networks,
    }
}

/// The overlay plan: the actions that change the node, and the taps it
/// waits for (created by the hypervisor driver, not by the overlay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayPlan {
    /// Actions to apply, in order.
    pub actions: Vec<OverlayAction>,
    /// Taps not created yet (attached once they exist).
    pub waiting: Vec<String>,
}

impl Plan for OverlayPlan {
    fn len(&self) -> usize {
        self.actions.len()
    }
}

/// Splits a library plan into the actions that change the node and the
/// taps still missing. Pure.
pub fn split_plan(plan: Vec<OverlayAction>) -> OverlayPlan {
    let mut waiting = Vec::new();
    let actions = plan
        .into_iter()
        .filter(|a| match a {
            OverlayAction::WaitForPort { tap, .. } => {
                waiting.push(tap.clone());
                false
            }
            _ => true,
        })
        .collect();
    OverlayPlan { actions, waiting }
}

/// The overlay reconciler.
pub struct Overlay {
    netlink: Netlink,
    underlay_ip: IpAddr,
    underlay_mtu: u16,
    probe: Option<super::probe::ProbeIdentity>,
    first: bool,
}

impl Overlay {
    /// Opens a netlink socket in the agent's network namespace. Must be
    /// called inside a tokio runtime.
    pub fn new(underlay_ip: IpAddr, underlay_mtu: u16) -> Result<Self, SubsystemError> {
        let netlink = Netlink::new().map_err(|e| SubsystemError::Other(e.to_string()))?;
        Ok(Self {
            netlink,
            underlay_ip,
            underlay_mtu,
            probe: None,
            first: true,
        })
    }

    /// Also plugs this node's health probes into their bridges.
    pub fn with_probe(mut self, probe: Option<super::probe::ProbeIdentity>) -> Self {
        self.probe = probe;
        self
    }
}

#[async_trait]
impl Subsystem for Overlay {
    type Observed = ObservedOverlay;
    type Plan = OverlayPlan;

    fn name(&self) -> &'static str {
        "overlay"
    }

    async fn observe(&mut self, _desired: &DesiredNode) -> Result<ObservedOverlay, SubsystemError> {
        self.netlink
            .observe()
            .await
            .map_err(|e| SubsystemError::Other(format!("observe overlay: {e}")))
    }

    fn plan(&self, desired: &DesiredNode, observed: &ObservedOverlay) -> OverlayPlan {
        let mut spec = overlay_spec(desired, self.underlay_ip, self.underlay_mtu);
        if let Some(ident) = &self.probe {
            super::probe::plug_into(&mut spec, desired, ident);
        }
        split_plan(nubo_overlay::plan(&spec, observed))
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: OverlayPlan,
    ) -> Result<usize, SubsystemError> {
        if !plan.waiting.is_empty() {
            debug!(taps = ?plan.waiting, "taps not created yet; attached once they exist");
        }
        log_plan("overlay", &mut self.first, plan.actions.len());
        if plan.actions.is_empty() {
            return Ok(0);
        }
        info!(plan = ?plan.actions, "applying overlay plan");
        self.netlink
            .apply(&plan.actions)
            .await
            .map_err(|e| SubsystemError::Other(format!("apply overlay: {e}")))?;
        Ok(plan.actions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;
    use nubo_common::keys;
    use nubo_common::model::PowerState;
    use nubo_overlay::LinkAction;

    #[test]
    fn spec_has_local_taps_remote_vteps_and_macs() {
        let mut w = World::new();
        let (n1, n2) = (node_name("n1"), node_name("n2"));
        w.node(&n1, "10.0.0.1");
        w.node(&n2, "10.0.0.2");
        let net = w.network(100, 0);
        let other = w.network(200, 0);
        let (_i1, p1) = w.instance_on(&n1, net, &[]);
        let (_i2, p2) = w.instance_on(&n2, net, &[]);
        let (_i3, _p3) = w.instance_on(&n2, other, &[]);
        let d = build(&w.cache, &n1, 1500);
        let ip1: IpAddr = "10.0.0.1".parse().unwrap();
        let spec = overlay_spec(&d, ip1, 1500);
        assert_eq!(spec.underlay_ip, ip1);
        assert_eq!(spec.networks.len(), 1, "only networks with local ports");
        let n = &spec.networks[0];
        assert_eq!(n.vni, 100);
        assert_eq!(
            n.ports,
            vec![LocalPort {
                tap: p1.tap_name(),
                mac: p1.mac
            }]
        );
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(n.remote_vteps.iter().collect::<Vec<_>>(), vec![&ip2]);
        assert_eq!(n.remote_macs, vec![(p2.mac, ip2)]);
    }

    #[test]
    fn stopped_instances_have_no_tap() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let (i1, _) = w.instance_on(&n1, net, &[]);
        let mut spec = w.cache.instances[&i1].clone();
        spec.power = PowerState::Stopped;
        w.cache.apply(
            &keys::node_spec(&n1, &i1),
            Some(&nubo_common::model::encode(&spec)),
            1000,
        );
        let d = build(&w.cache, &n1, 1500);
        assert!(overlay_spec(&d, "10.0.0.1".parse().unwrap(), 1500)
            .networks
            .is_empty());
    }

    #[test]
    fn waiting_for_taps_is_not_an_action() {
        let plan = vec![
            OverlayAction::Link(LinkAction::SetUp {
                link: "nb-1".into(),
            }),
            OverlayAction::WaitForPort {
                vni: 1,
                tap: "tapx".into(),
            },
        ];
        let OverlayPlan { actions, waiting } = split_plan(plan);
        assert_eq!(
            actions,
            vec![OverlayAction::Link(LinkAction::SetUp {
                link: "nb-1".into()
            })]
        );
        assert_eq!(waiting, vec!["tapx".to_string()]);
    }
}
