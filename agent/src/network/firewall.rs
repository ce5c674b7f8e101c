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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nubo_common::model::{self, SecurityGroupRule};
use nubo_firewall::{
    limit_counter, Direction, EtherType, FirewallAction, FirewallSpec, GroupSpec, LimitKind,
    PortSpec, Protocol, Remote, RoutedGateway, RuleSpec, Ruleset,
};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::provider::Physnets;
use super::{log_plan, running_ports};
use crate::reconciler::{Plan, Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;
use crate::state::routing::node_routing_mac;

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
        icmp: r.icmp.map(|m| (m.icmp_type, m.code)),
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
            ips: std::iter::once(lp.port.ip)
                .chain(lp.port.more_ips.iter().copied())
                .map(IpAddr::V4)
                .collect(),
            groups: lp
                .port
                .security_groups
                .iter()
                .map(ToString::to_string)
                .collect(),
            port_security: lp.port.port_security,
            admin_state_up: lp.port.admin_state_up,
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
    // Provider networks' uplinks: every mapped physical network's
    // interface, guarded from the first pass on (a provider bridge made
    // later in a pass already holds the metadata address, whose own
    // IGMP/ARP must never reach the wire), and the VLAN devices of the
    // provider networks wired here.
    let mut uplinks: Vec<String> = physnets
        .values()
        .cloned()
        .chain(
            desired
                .networks
                .values()
                .filter_map(|n| super::provider::uplink(n, physnets)),
        )
        .collect();
    uplinks.sort();
    uplinks.dedup();
    FirewallSpec {
        ports,
        groups,
        uplinks,
        routed: routed_gateways(desired, physnets),
        ..FirewallSpec::default()
    }
}

/// The gateways of the local router copies, each at the device leading to
/// the other nodes' copies of the same gateway: the VXLAN device of an
/// overlay network, the uplink of a provider network. Pure.
fn routed_gateways(desired: &DesiredNode, physnets: &Physnets) -> Vec<RoutedGateway> {
    let Some(node) = &desired.node else {
        return Vec::new();
    };
    let node_mac = node_routing_mac(node);
    let mut out: Vec<RoutedGateway> = desired
        .routers
        .values()
        .flat_map(|r| &r.legs)
        .filter_map(|leg| {
            let net = desired.networks.get(&leg.network)?;
            let device = match net.provider {
                None => nubo_overlay::vxlan_name(net.vni),
                Some(_) => super::provider::uplink(net, physnets)?,
            };
            Some(RoutedGateway {
                vxlan: device,
                ip: leg.gateway,
                mac: leg.mac,
                node_mac,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.vxlan, a.ip).cmp(&(&b.vxlan, b.ip)));
    out
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

/// How often the per-port limit counters are read and, when something
/// was dropped, summed up in one log line.
pub const LIMIT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// At most this many ports are named in one limit report line.
const REPORT_TOP: usize = 5;

/// What the kernel's per-port guest limits dropped, per port and kind, as
/// totals since the agent started (the nft counters restart at zero when
/// the ruleset is replaced; the deltas are accumulated here). Shared with
/// the reporter task; for the metrics endpoint once it exists.
#[derive(Debug, Clone, Default)]
pub struct LimitCounters {
    inner: Arc<Mutex<LimitState>>,
}

#[derive(Debug, Default)]
struct LimitState {
    /// Counter name -> (port id, kind), for the current ports.
    names: BTreeMap<String, (String, LimitKind)>,
    /// Last raw value read per counter name.
    last: BTreeMap<String, u64>,
    /// Totals per (port id, kind).
    totals: BTreeMap<(String, LimitKind), u64>,
}

impl LimitCounters {
    /// Totals dropped per (port id, kind) since the agent started.
    pub fn totals(&self) -> BTreeMap<(String, LimitKind), u64> {
        self.lock().totals.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the ports of the spec being enforced.
    fn set_ports(&self, spec: &FirewallSpec) {
        let names = spec
            .ports
            .iter()
            .flat_map(|p| {
                LimitKind::ALL
                    .into_iter()
                    .map(|k| (limit_counter(&p.port_id, k), (p.port_id.clone(), k)))
            })
            .collect();
        self.lock().names = names;
    }

    /// Takes one reading of the nft counters; returns what was dropped
    /// since the previous reading, per (port, kind), largest first.
    fn record(&self, raw: &BTreeMap<String, u64>) -> Vec<(String, LimitKind, u64)> {
        let mut state = self.lock();
        let state = &mut *state;
        let deltas = limit_deltas(&state.names, &state.last, raw);
        for (port, kind, d) in &deltas {
            *state.totals.entry((port.clone(), *kind)).or_default() += d;
        }
        state.last = raw.clone();
        deltas
    }
}

/// What each known limit counter grew by between two readings, largest
/// first; a counter that went down was reset by a ruleset replacement, so
/// its whole value is new. Pure.
pub fn limit_deltas(
    names: &BTreeMap<String, (String, LimitKind)>,
    last: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> Vec<(String, LimitKind, u64)> {
    let mut out: Vec<(String, LimitKind, u64)> = now
        .iter()
        .filter_map(|(name, &value)| {
            let (port, kind) = names.get(name)?;
            let before = last.get(name).copied().unwrap_or(0);
            let delta = if value >= before {
                value - before
            } else {
                value
            };
            (delta > 0).then(|| (port.clone(), *kind, delta))
        })
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    out
}

/// One summary of a report interval: totals by kind and the ports that
/// dropped most, e.g. `port-a dhcp=1200, port-b metadata=30`. Pure.
pub fn limit_summary(deltas: &[(String, LimitKind, u64)]) -> (u64, u64, String) {
    let sum = |k| deltas.iter().filter(|d| d.1 == k).map(|d| d.2).sum::<u64>();
    let top: Vec<String> = deltas
        .iter()
        .take(REPORT_TOP)
        .map(|(p, k, d)| format!("{p} {}={d}", k.as_str()))
        .collect();
    (
        sum(LimitKind::Dhcp),
        sum(LimitKind::MetadataConnections),
        top.join(", "),
    )
}

/// Reads the limit counters every [`LIMIT_REPORT_INTERVAL`] and logs one
/// line per interval when a guest limit dropped something: never a line
/// per packet, whatever a guest sends.
async fn report_limits(counters: LimitCounters) {
    let mut tick = tokio::time::interval(LIMIT_REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_before = false;
    loop {
        tick.tick().await;
        match blocking(nubo_firewall::limit_counters).await {
            Ok(raw) => {
                failed_before = false;
                let deltas = counters.record(&raw);
                if deltas.is_empty() {
                    continue;
                }
                let (dhcp, metadata, top) = limit_summary(&deltas);
                let ports: std::collections::BTreeSet<&str> =
                    deltas.iter().map(|d| d.0.as_str()).collect();
                warn!(
                    interval_s = LIMIT_REPORT_INTERVAL.as_secs(),
                    ports = ports.len(),
                    dhcp_dropped = dhcp,
                    metadata_connections_dropped = metadata,
                    top = %top,
                    "guest rate limits dropped traffic"
                );
            }
            Err(e) => {
                if !std::mem::replace(&mut failed_before, true) {
                    warn!(error = %e, "cannot read the guest limit counters");
                }
            }
        }
    }
}

/// The firewall reconciler (in the agent's network namespace).
#[derive(Debug)]
pub struct Firewall {
    first: bool,
    /// Fingerprint of the ruleset last applied or found live by this process.
    known_live: Option<String>,
    /// What the per-port guest limits dropped.
    limits: LimitCounters,
    /// The task reporting them (started on the first pass).
    reporter: Option<JoinHandle<()>>,
    /// Physical networks → host interfaces (provider uplinks).
    physnets: Physnets,
    /// Where nftables apply durations and failures are counted.
    metrics: Option<std::sync::Arc<crate::telemetry::AgentMetrics>>,
}

impl Firewall {
    /// A reconciler; nothing is touched until the first pass.
    pub fn new(physnets: Physnets) -> Self {
        Self {
            first: true,
            known_live: None,
            physnets,
            limits: LimitCounters::default(),
            reporter: None,
            metrics: None,
        }
    }

    /// Counts every nftables transaction's duration and failure in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::telemetry::AgentMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// What the per-port guest limits dropped so far.
    pub fn limit_counters(&self) -> LimitCounters {
        self.limits.clone()
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Some(task) = self.reporter.take() {
            task.abort();
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
        if self.reporter.is_none() {
            self.reporter = Some(tokio::spawn(report_limits(self.limits.clone())));
        }
        let started = Instant::now();
        let spec = firewall_spec(desired, &self.physnets);
        self.limits.set_ports(&spec);
        let rs = nubo_firewall::ruleset(&spec);
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
            let applied = blocking(move || nubo_firewall::apply(&rs)).await;
            if let Some(m) = &self.metrics {
                m.node.nft_applied(t.elapsed(), applied.is_ok());
            }
            applied?;
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
    use nubo_common::keys;

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
        assert_eq!(port1.ips, vec![IpAddr::V4(p1.ip.unwrap())]);
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
        assert_eq!(
            members,
            vec![IpAddr::V4(p1.ip.unwrap()), IpAddr::V4(p2.ip.unwrap())]
        );
    }

    #[test]
    fn a_down_port_is_down_in_the_spec_and_dropped_in_the_ruleset() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let (_i1, p1) = w.instance_on(&n1, net, &[]);
        let (_i2, mut p2) = w.instance_on(&n1, net, &[]);
        let up = firewall_spec(&build(&w.cache, &n1, 1500), &Physnets::new());
        assert!(up.ports.iter().all(|p| p.admin_state_up));
        p2.admin_state_up = false;
        w.put(keys::port(&p2.id), &p2);
        let spec = firewall_spec(&build(&w.cache, &n1, 1500), &Physnets::new());
        let state = |tap: String| {
            spec.ports
                .iter()
                .find(|p| p.tap == tap)
                .unwrap()
                .admin_state_up
        };
        assert!(state(p1.tap_name()));
        assert!(!state(p2.tap_name()));
        let text = nubo_firewall::ruleset(&spec).text().to_string();
        let drop = format!("iifname {{ \"{}\" }} drop", p2.tap_name());
        assert!(text.contains(&drop), "{text}");
        assert!(!text.contains(&format!("{{ \"{}\" }} drop", p1.tap_name())));
        assert_ne!(
            nubo_firewall::ruleset(&up).fingerprint(),
            nubo_firewall::ruleset(&spec).fingerprint()
        );
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
    fn limit_deltas_count_growth_and_resets_of_known_counters() {
        let names: BTreeMap<String, (String, LimitKind)> = [
            ("c1".to_string(), ("pa".to_string(), LimitKind::Dhcp)),
            (
                "c2".to_string(),
                ("pb".to_string(), LimitKind::MetadataConnections),
            ),
        ]
        .into();
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let d = limit_deltas(
            &names,
            &m(&[("c1", 10)]),
            &m(&[("c1", 25), ("c2", 3), ("x", 9)]),
        );
        assert_eq!(
            d,
            vec![
                ("pa".to_string(), LimitKind::Dhcp, 15),
                ("pb".to_string(), LimitKind::MetadataConnections, 3)
            ]
        );
        // A reset (ruleset replaced) counts the new value whole.
        let d = limit_deltas(&names, &m(&[("c1", 25)]), &m(&[("c1", 4)]));
        assert_eq!(d, vec![("pa".to_string(), LimitKind::Dhcp, 4)]);
        // Nothing grew: nothing to report.
        assert!(limit_deltas(&names, &m(&[("c1", 4)]), &m(&[("c1", 4)])).is_empty());
        let (dhcp, meta, top) = limit_summary(&[
            ("pa".to_string(), LimitKind::Dhcp, 15),
            ("pb".to_string(), LimitKind::MetadataConnections, 3),
        ]);
        assert_eq!((dhcp, meta), (15, 3));
        assert_eq!(top, "pa dhcp=15, pb metadata=3");
        // Totals accumulate across readings.
        let c = LimitCounters::default();
        c.lock().names = names;
        c.record(&m(&[("c1", 5)]));
        c.record(&m(&[("c1", 2)]));
        assert_eq!(c.totals()[&("pa".to_string(), LimitKind::Dhcp)], 7);
    }

    #[test]
    fn rules_map_field_by_field() {
        let r = SecurityGroupRule {
            id: nubo_common::RuleId::new_random(),
            direction: model::Direction::Ingress,
            ethertype: model::EtherType::Ipv4,
            protocol: model::Protocol::Tcp,
            ports: Some((22, 22)),
            icmp: None,
            remote: model::Remote::Cidr("10.9.0.0/16".parse().unwrap()),
        };
        assert_eq!(
            rule_spec(&r),
            RuleSpec {
                direction: Direction::Ingress,
                ethertype: EtherType::V4,
                protocol: Protocol::Tcp,
                port_range: Some((22, 22)),
                icmp: None,
                remote: Remote::Cidr("10.9.0.0/16".parse().unwrap()),
            }
        );
        let echo = SecurityGroupRule {
            protocol: model::Protocol::Icmp,
            ports: None,
            icmp: Some(model::IcmpMatch {
                icmp_type: 8,
                code: Some(0),
            }),
            ..r
        };
        assert_eq!(rule_spec(&echo).icmp, Some((8, Some(0))));
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
