//! The NICs subsystem: for every instance assigned here that the
//! hypervisor has, observe its NICs (their taps), [`plan`] the difference
//! with the instance's ports (a port added to the server is hot-plugged, a
//! port removed from it is unplugged) and apply it. The network subsystems
//! that run after it wire the new taps (bridge, firewall with
//! anti-spoofing, DHCP reservations) from the same desired ports, so the
//! whole data path converges in one pass.
//!
//! Drivers without NIC hot-plug ([`HypervisorError::Unsupported`] from
//! [`Hypervisor::nics`]) are left alone; a migrating instance's NICs move
//! with it and are not touched.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use nubo_common::InstanceId;
use std::collections::BTreeMap;
use tracing::{debug, info, info_span, warn, Instrument};

use super::hypervisor::{Hypervisor, HypervisorError};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::{DesiredNode, DesiredPort};

/// One NIC operation on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicOp {
    /// Unplug the NIC with this tap (its port left the server).
    Detach(String),
    /// Plug a NIC for this port (added to the server).
    Attach(DesiredPort),
}

/// The operations that bring an instance's NICs (taps `observed`) to its
/// `wanted` ports: detaches first, then attaches in port order. Pure.
pub fn plan(wanted: &[DesiredPort], observed: &[String]) -> Vec<NicOp> {
    let want: BTreeSet<&str> = wanted.iter().map(|p| p.tap.as_str()).collect();
    let have: BTreeSet<&str> = observed.iter().map(String::as_str).collect();
    let mut ops: Vec<NicOp> = observed
        .iter()
        .filter(|t| !want.contains(t.as_str()))
        .map(|t| NicOp::Detach(t.clone()))
        .collect();
    let mut seen = BTreeSet::new();
    ops.extend(
        wanted
            .iter()
            .filter(|p| !have.contains(p.tap.as_str()) && seen.insert(p.tap.as_str()))
            .map(|p| NicOp::Attach(p.clone())),
    );
    ops
}

/// The plan of the NICs subsystem: per instance, its operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicsPlan {
    /// Instances with something to change.
    pub instances: BTreeMap<InstanceId, Vec<NicOp>>,
}

impl Plan for NicsPlan {
    fn len(&self) -> usize {
        self.instances.values().map(Vec::len).sum()
    }
}

/// The taps of each desired, managed instance on the hypervisor.
pub type NicsObserved = BTreeMap<InstanceId, Vec<String>>;

/// The plan of every observed instance. Pure.
pub fn plan_node(desired: &DesiredNode, observed: &NicsObserved) -> NicsPlan {
    let mut out = NicsPlan::default();
    for (id, taps) in observed {
        let Some(d) = desired.instances.get(id).filter(|_| !desired.migrating(id)) else {
            continue;
        };
        let ops = plan(&d.ports, taps);
        if !ops.is_empty() {
            out.instances.insert(*id, ops);
        }
    }
    out
}

/// The NICs subsystem.
pub struct Nics {
    hv: Arc<dyn Hypervisor>,
}

impl Nics {
    /// Reconciles the NICs of the instances on `hv`.
    pub fn new(hv: Arc<dyn Hypervisor>) -> Self {
        Self { hv }
    }
}

#[async_trait]
impl Subsystem for Nics {
    type Observed = NicsObserved;
    type Plan = NicsPlan;

    fn name(&self) -> &'static str {
        "nics"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<NicsObserved, SubsystemError> {
        let present = super::hypervisor::managed_ids(self.hv.as_ref()).await?;
        let mut out = NicsObserved::new();
        for id in desired.instances.keys().filter(|id| present.contains(id)) {
            if desired.migrating(id) {
                continue;
            }
            match self.hv.nics(*id).await {
                Ok(taps) => {
                    out.insert(*id, taps);
                }
                Err(HypervisorError::Unsupported(why)) => {
                    debug!(instance = %id, %why, "no NIC hot-plug on this driver");
                    return Ok(NicsObserved::new());
                }
                // Gone meanwhile: compute handles it.
                Err(HypervisorError::NotFound(_)) => {}
                Err(e) => warn!(instance = %id, error = %e, "could not list NICs"),
            }
        }
        Ok(out)
    }

    fn plan(&self, desired: &DesiredNode, observed: &NicsObserved) -> NicsPlan {
        plan_node(desired, observed)
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: NicsPlan,
    ) -> Result<usize, SubsystemError> {
        let mut done = 0;
        let mut first_error = None;
        for (id, ops) in plan.instances {
            let span = info_span!("nics", instance = %id);
            for op in ops {
                let r = match &op {
                    NicOp::Detach(tap) => {
                        self.hv.detach_nic(id, tap).instrument(span.clone()).await
                    }
                    NicOp::Attach(p) => self.hv.attach_nic(id, p).instrument(span.clone()).await,
                };
                match r {
                    Ok(()) => {
                        info!(parent: &span, ?op, "NIC operation done");
                        done += 1;
                    }
                    Err(e) => {
                        warn!(parent: &span, ?op, error = %e, "NIC operation failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) if done == 0 => Err(e.into()),
            _ => Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::{NetworkId, PortId};

    fn port(n: u8) -> DesiredPort {
        DesiredPort {
            id: PortId::new_random(),
            mac: format!("fa:16:3e:00:00:{n:02x}").parse().unwrap(),
            ip: format!("10.0.0.{n}").parse().unwrap(),
            more_ips: Vec::new(),
            tap: format!("tap{n}"),
            network: NetworkId::new_random(),
            security_groups: Vec::new(),
            port_security: true,
            admin_state_up: true,
        }
    }

    #[test]
    fn added_ports_are_plugged_in_order_and_removed_ones_unplugged_first() {
        let (a, b, c) = (port(1), port(2), port(3));
        let observed = vec!["tap1".to_string(), "tap9".to_string()];
        let ops = plan(&[a.clone(), c.clone(), b.clone()], &observed);
        assert_eq!(
            ops,
            vec![
                NicOp::Detach("tap9".into()),
                NicOp::Attach(c),
                NicOp::Attach(b)
            ]
        );
        // Nothing to do when they match (positive control of the above).
        assert!(plan(std::slice::from_ref(&a), &["tap1".to_string()]).is_empty());
        // A port listed twice is plugged once.
        assert_eq!(plan(&[a.clone(), a.clone()], &[]), vec![NicOp::Attach(a)]);
    }
}
