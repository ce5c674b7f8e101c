//! The plug gate (local equivalent of Nova waiting for Neutron's
//! `vif-plugged` event, without a timeout): the libvirt driver starts new
//! domains with their vCPUs paused and registers them in [`PlugWaiters`];
//! [`PlugGate`], which runs after the network subsystems on every pass,
//! resumes each of them once every one of its taps is enslaved to the bridge
//! `nb-<vni>` of its network and up (bridge up too). A guest therefore never
//! boots with an unplugged NIC (its DHCP client would give up).
//!
//! "Paused for plugging" is distinct from "paused by self-fencing": only
//! instances the driver registered here are ever resumed by the gate, the
//! gate runs only while the node is not fenced (it is wrapped like compute)
//! and resumes through the gated driver. While held, the driver reports the
//! instance as running (it is booting), so neither compute nor the fencer's
//! recovery resumes it early, and its `resume` is a no-op until the gate
//! released it.
//!
//! The holds survive an agent restart: the libvirt driver records each in
//! its state file before starting the domain and, when it opens, holds
//! again every recorded domain that is still paused
//! (`hypervisor::libvirt::holds_to_restore`), so compute never resumes a
//! guest whose taps the previous incarnation had not wired yet.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use nubo_common::model::PowerState;
use nubo_common::InstanceId;
use nubo_overlay::{Netlink, ObservedOverlay};
use tracing::{debug, info, warn};

use crate::compute::hypervisor::plug::{PlugWaiters, PLUG_SLOW};
use crate::compute::hypervisor::Hypervisor;
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// The instances of `waiting` to resume now: still desired here and
/// running, and every port's tap is up and enslaved to the bridge of its
/// network, which is up too. An instance without ports is resumed at once;
/// one no longer desired (or desired stopped) is left to compute. Pure.
pub fn ready_to_resume(
    waiting: &BTreeSet<InstanceId>,
    desired: &DesiredNode,
    observed: &ObservedOverlay,
) -> Vec<InstanceId> {
    waiting
        .iter()
        .filter(|id| {
            let Some(d) = desired.instances.get(id) else {
                return false;
            };
            d.power() == PowerState::Running
                && d.ports.iter().all(|p| {
                    let Some(net) = desired.networks.get(&p.network) else {
                        return false;
                    };
                    let bridge = net.bridge();
                    // Provider bridges (`np-*`) are observed among the
                    // other links.
                    let bridge_up = match net.provider {
                        None => observed.bridges.get(&net.vni).is_some_and(|b| b.up),
                        Some(_) => observed.ports.get(&bridge).is_some_and(|b| b.up),
                    };
                    bridge_up
                        && observed
                            .ports
                            .get(&p.tap)
                            .is_some_and(|t| t.up && t.master.as_deref() == Some(bridge.as_str()))
                })
        })
        .copied()
        .collect()
}

/// The plug gate subsystem (runs last, after the network subsystems).
pub struct PlugGate {
    waiters: Arc<PlugWaiters>,
    /// The gated driver: refuses to resume while the node is fenced.
    hv: Arc<dyn Hypervisor>,
    netlink: Netlink,
}

impl PlugGate {
    /// A gate releasing `waiters` through `hv`. Must be called inside a
    /// tokio runtime (opens a netlink socket).
    pub fn new(waiters: Arc<PlugWaiters>, hv: Arc<dyn Hypervisor>) -> Result<Self, SubsystemError> {
        let netlink = Netlink::new().map_err(|e| SubsystemError::Other(e.to_string()))?;
        Ok(Self {
            waiters,
            hv,
            netlink,
        })
    }
}

/// What the plug gate observes: the instances waiting and, when there are
/// any, the taps and bridges of the namespace.
#[derive(Debug, Clone, Default)]
pub struct PlugObserved {
    /// Instances held paused for their NICs.
    pub waiting: BTreeSet<InstanceId>,
    /// The overlay as netlink shows it (`None` when nothing waits).
    pub overlay: Option<ObservedOverlay>,
}

/// The plug gate's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlugPlan {
    /// Instances to resume now.
    pub resume: Vec<InstanceId>,
    /// Instances that keep waiting.
    pub waiting: usize,
}

impl Plan for PlugPlan {
    fn len(&self) -> usize {
        self.resume.len()
    }
}

#[async_trait]
impl Subsystem for PlugGate {
    type Observed = PlugObserved;
    type Plan = PlugPlan;

    fn name(&self) -> &'static str {
        "plug_gate"
    }

    async fn observe(&mut self, _desired: &DesiredNode) -> Result<PlugObserved, SubsystemError> {
        let waiting = self.waiters.waiting();
        if waiting.is_empty() {
            return Ok(PlugObserved::default());
        }
        let overlay = self
            .netlink
            .observe()
            .await
            .map_err(|e| SubsystemError::Other(format!("observe taps: {e}")))?;
        Ok(PlugObserved {
            waiting,
            overlay: Some(overlay),
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &PlugObserved) -> PlugPlan {
        let Some(overlay) = &observed.overlay else {
            return PlugPlan::default();
        };
        let resume = ready_to_resume(&observed.waiting, desired, overlay);
        PlugPlan {
            waiting: observed.waiting.len() - resume.len(),
            resume,
        }
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: PlugPlan,
    ) -> Result<usize, SubsystemError> {
        if plan.resume.is_empty() && plan.waiting == 0 {
            return Ok(0);
        }
        let mut resumed = 0;
        let mut errors = Vec::new();
        for id in &plan.resume {
            self.waiters.set_released(id, true);
            match self.hv.resume(*id).await {
                Ok(()) => {
                    self.waiters.forget(id);
                    info!(instance = %id, "NICs plugged; guest resumed");
                    resumed += 1;
                }
                Err(e) => {
                    self.waiters.set_released(id, false);
                    errors.push(format!("resume {id}: {e}"));
                }
            }
        }
        if plan.waiting > 0 {
            debug!(
                waiting = plan.waiting,
                "instances still waiting for their NICs"
            );
        }
        for id in self.waiters.newly_slow() {
            warn!(instance = %id, after = ?PLUG_SLOW, "still waiting for its NICs to be plugged; guest kept paused");
        }
        if errors.is_empty() {
            Ok(resumed)
        } else {
            Err(SubsystemError::Other(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use nubo_overlay::{LinkKind, ObservedBridge, ObservedPort};

    fn port(up: bool, master: Option<&str>) -> ObservedPort {
        ObservedPort {
            kind: LinkKind::Tun,
            mtu: 1450,
            up,
            master: master.map(str::to_string),
        }
    }

    fn bridge(up: bool) -> ObservedBridge {
        ObservedBridge {
            kind: LinkKind::Bridge,
            mtu: 1450,
            up,
            addresses: BTreeSet::new(),
        }
    }

    #[test]
    fn resumes_only_instances_whose_taps_are_all_wired() {
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let (a, pa) = w.instance_on(&n, net, &[]);
        let (b, pb) = w.instance_on(&n, net, &[]);
        let (c, pc) = w.instance_on(&n, net, &[]);
        let (gone, _) = w.instance_on(&n, net, &[]);
        let mut d = crate::state::desired::build(&w.cache, &n, 1500);
        d.instances.remove(&gone);
        let waiting = BTreeSet::from([a, b, c, gone]);
        let mut obs = ObservedOverlay::default();
        obs.bridges.insert(7, bridge(true));
        obs.ports.insert(pa.tap_name(), port(true, Some("nb-7")));
        // Enslaved but down; c's tap is not enslaved yet.
        obs.ports.insert(pb.tap_name(), port(false, Some("nb-7")));
        obs.ports.insert(pc.tap_name(), port(true, None));
        assert_eq!(ready_to_resume(&waiting, &d, &obs), vec![a]);
        // Wrong bridge.
        obs.ports.insert(pc.tap_name(), port(true, Some("nb-8")));
        assert_eq!(ready_to_resume(&waiting, &d, &obs), vec![a]);
        // The bridge itself down: nothing.
        obs.bridges.insert(7, bridge(false));
        assert!(ready_to_resume(&waiting, &d, &obs).is_empty());
        // Not waiting (e.g. paused by self-fencing): never resumed.
        obs.bridges.insert(7, bridge(true));
        obs.ports.insert(pb.tap_name(), port(true, Some("nb-7")));
        obs.ports.insert(pc.tap_name(), port(true, Some("nb-7")));
        let only_b = BTreeSet::from([b]);
        assert_eq!(ready_to_resume(&only_b, &d, &obs), vec![b]);
        let mut all = ready_to_resume(&waiting, &d, &obs);
        all.sort();
        let mut expected = vec![a, b, c];
        expected.sort();
        assert_eq!(
            all, expected,
            "an instance no longer desired is left to compute"
        );
    }

    #[test]
    fn a_stopped_or_portless_instance() {
        let mut w = World::new();
        let n = node_name("n1");
        w.node(&n, "10.0.0.1");
        let net = w.network(7, 0);
        let (a, _) = w.instance_on(&n, net, &[]);
        let (b, _) = w.instance_on(&n, net, &[]);
        let mut d = crate::state::desired::build(&w.cache, &n, 1500);
        d.instances.get_mut(&a).unwrap().ports.clear();
        d.instances.get_mut(&b).unwrap().spec.power = PowerState::Stopped;
        let waiting = BTreeSet::from([a, b]);
        assert_eq!(
            ready_to_resume(&waiting, &d, &ObservedOverlay::default()),
            vec![a]
        );
    }

    #[test]
    fn waiters_hold_release_and_forget() {
        let w = PlugWaiters::new();
        let id = InstanceId::new_random();
        assert!(!w.is_held(&id) && !w.recheck_soon());
        w.hold(id);
        assert!(w.is_held(&id) && w.recheck_soon());
        assert_eq!(w.waiting(), BTreeSet::from([id]));
        w.set_released(&id, true);
        assert!(!w.is_held(&id) && w.contains(&id) && !w.recheck_soon());
        assert!(w.waiting().is_empty());
        w.set_released(&id, false);
        assert!(w.is_held(&id));
        w.forget(&id);
        assert!(!w.contains(&id));
    }
}
