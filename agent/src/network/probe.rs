//! The node's health probe: a synthetic client on each network's bridge
//! that exercises the node's DHCP responder and metadata service for real,
//! so that "agent running but DHCP dead" shows in the metrics
//! (`nubo_agent_probe_success{check,network}`, docs/metrics.md).
//!
//! # Shape
//!
//! Every network with a running local port (the bridges the DHCP and
//! metadata subsystems serve, overlay `nb-*` and provider `np-*`) gets a
//! probe: a named namespace
//! `<prefix><12 hex>` (prefix `--probe-netns-prefix`, default
//! [`crate::config::DEFAULT_PROBE_NETNS_PREFIX`]) holding `eth0`, the inside end of a veth whose
//! host end `pb<11 hex>` the overlay (or the provider subsystem) plugs
//! into the bridge like a tap. The
//! [`Probes`] subsystem creates and removes them (observe → pure [`plan`] →
//! apply, like every reconciler); [`run_checks`] probes every target every
//! interval, off the reconcile loop, and records the results.
//!
//! # Why it confuses neither IPAM nor the guests
//!
//! The probe never takes an address from a network's pool: its address is
//! the link-local [`PROBE_IP`]/16, the same on every bridge, and its MAC
//! ([`ProbeIdentity::mac`]) is reserved for this node and bridge (prefix
//! `02:6e:70`, never a port MAC). The agent gives the DHCP responder a
//! fixed lease for that MAC ([`lease`]) and the metadata service a row for
//! it ([`metadata_row`]); the probe sends a DHCPDISCOVER only and checks
//! the OFFER (no REQUEST: nothing is ever leased or renewed, and the
//! responder keeps no state anyway), then GETs
//! `/openstack/latest/meta_data.json` and checks the answer names the
//! probe. Neither DHCP nor metadata traffic leaves the node (the firewall's
//! `overlay_guard`, on VXLAN devices and provider uplinks alike), so a
//! peer's responder can never answer in place of a
//! dead local one, and the per-node MAC never collides across nodes. The
//! probe's interface has IPv6 disabled, so it sends nothing else.
//!
//! A provider network whose physical network is not mapped on this node is
//! not wired, and its probe fails like its guests would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nubo_dhcp::Lease;
use nubo_metadata::InstanceMeta;
use nubo_netid::{stable_hash, MacAddr};
use nubo_overlay::{LocalPort, Netlink, OverlaySpec, GUEST_IFNAME};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{ifindex, log_plan, running_ports};
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;
use crate::telemetry::probe::{Check, ProbeMetrics};

/// The probe's address on every bridge (link-local, outside every pool).
pub const PROBE_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 1);
/// Its prefix length (169.254.169.254 is on-link).
pub const PROBE_PREFIX_LEN: u8 = 16;
/// How long each check waits for its answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The metadata document the probe asks for.
pub const METADATA_PATH: &str = "/openstack/latest/meta_data.json";

/// Who the probes of this node are: the names, MACs and metadata identity
/// derive from the node name (distinct between nodes sharing a kernel in
/// tests) and the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeIdentity {
    /// The node.
    pub node: String,
    /// Name prefix of the probe namespaces (every namespace with it that is
    /// not a current probe is removed).
    pub netns_prefix: String,
}

impl ProbeIdentity {
    fn hash(&self, bridge: &str) -> u64 {
        stable_hash(&["nubo-probe", &self.node, bridge])
    }

    /// The probe's MAC on `bridge`: `02:6e:70` and 24 bits of a hash of
    /// the node and bridge.
    pub fn mac(&self, bridge: &str) -> MacAddr {
        let h = self.hash(bridge).to_be_bytes();
        MacAddr([0x02, 0x6e, 0x70, h[0], h[1], h[2]])
    }

    /// The probe namespace of `bridge`.
    pub fn netns(&self, bridge: &str) -> String {
        format!("{}{:012x}", self.netns_prefix, self.hash(bridge) >> 16)
    }

    /// The host end of the probe's veth on `bridge` (13 characters).
    pub fn host_ifname(&self, bridge: &str) -> String {
        nubo_netid::hashed_name("pb", &["nubo-probe", &self.node, bridge])
    }

    /// The identity the metadata service serves to the probe.
    pub fn uuid(&self) -> String {
        format!("nubo-probe-{}", self.node)
    }
}

/// One network's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The network id (the `network` label).
    pub network: String,
    /// Its bridge.
    pub bridge: String,
    /// VNI of the network (for the overlay spec).
    pub vni: u32,
    /// A provider network (plugged by the provider subsystem).
    pub provider: bool,
    /// The probe namespace.
    pub netns: String,
    /// Host end of the veth, plugged into the bridge.
    pub host_ifname: String,
    /// The probe's MAC.
    pub mac: MacAddr,
    /// MTU of the veth.
    pub mtu: u32,
}

/// The probes this node wants, by bridge: one per network with a running
/// local port. Pure.
pub fn targets(desired: &DesiredNode, ident: &ProbeIdentity) -> BTreeMap<String, ProbeTarget> {
    running_ports(desired)
        .into_iter()
        .map(|lp| {
            let bridge = lp.network.bridge();
            let t = ProbeTarget {
                network: lp.network.id.to_string(),
                vni: lp.network.vni,
                provider: lp.network.provider.is_some(),
                netns: ident.netns(&bridge),
                host_ifname: ident.host_ifname(&bridge),
                mac: ident.mac(&bridge),
                mtu: u32::from(lp.network.mtu.max(68)),
                bridge: bridge.clone(),
            };
            (bridge, t)
        })
        .collect()
}

/// The fixed lease of a probe (its link-local address; no router, no DNS).
pub fn lease(t: &ProbeTarget) -> Lease {
    Lease {
        lease_secs: super::LEASE_SECS,
        ..Lease::new(t.mac, PROBE_IP, PROBE_PREFIX_LEN)
    }
}

/// The metadata row of a probe: `(bridge, meta)`.
pub fn metadata_row(ident: &ProbeIdentity, t: &ProbeTarget) -> (String, InstanceMeta) {
    let mut m = InstanceMeta::new(ident.uuid(), PROBE_IP, t.mac);
    m.name = "nubo-probe".into();
    m.hostname = "nubo-probe".into();
    (t.bridge.clone(), m)
}

/// Adds the probes' veths to the overlay spec, as ports of their
/// networks. Pure.
pub fn plug_into(spec: &mut OverlaySpec, desired: &DesiredNode, ident: &ProbeIdentity) {
    for t in targets(desired, ident).values().filter(|t| !t.provider) {
        if let Some(net) = spec.networks.iter_mut().find(|n| n.vni == t.vni) {
            net.ports.push(LocalPort {
                tap: t.host_ifname.clone(),
                mac: t.mac,
            });
            net.ports.sort_by(|a, b| a.tap.cmp(&b.tap));
        }
    }
}

/// Adds the probes' veths of provider networks to the provider spec, as
/// taps of their bridges. Pure.
pub fn plug_into_provider(
    spec: &mut nubo_overlay::ProviderSpec,
    desired: &DesiredNode,
    ident: &ProbeIdentity,
) {
    for t in targets(desired, ident).values().filter(|t| t.provider) {
        if let Some(net) = spec.networks.iter_mut().find(|n| n.bridge == t.bridge) {
            net.taps.push(t.host_ifname.clone());
            net.taps.sort();
        }
    }
}

/// What a probe pass observes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeObserved {
    /// The namespaces with the probe prefix.
    pub namespaces: BTreeSet<String>,
    /// The host veth ends of the wanted probes that exist.
    pub host_links: BTreeSet<String>,
}

/// One change of the probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    /// Create the namespace and veth of a probe and address it.
    Create(ProbeTarget),
    /// Remove a probe namespace (its veth goes with it).
    Delete {
        /// The namespace.
        netns: String,
    },
}

/// The changes that make the probes of the node `want`: a wanted probe
/// whose namespace is missing is created; one whose namespace exists
/// without its host veth (half-created, or the veth deleted) is deleted
/// and created again; namespaces with the prefix that no wanted probe uses
/// are deleted. Pure; empty on a converged node.
pub fn plan(want: &BTreeMap<String, ProbeTarget>, observed: &ProbeObserved) -> Vec<ProbeAction> {
    let mut out = Vec::new();
    let wanted: BTreeSet<&str> = want.values().map(|t| t.netns.as_str()).collect();
    for ns in &observed.namespaces {
        if !wanted.contains(ns.as_str()) {
            out.push(ProbeAction::Delete { netns: ns.clone() });
        }
    }
    for t in want.values() {
        let exists = observed.namespaces.contains(&t.netns);
        if exists && observed.host_links.contains(&t.host_ifname) {
            continue;
        }
        if exists {
            out.push(ProbeAction::Delete {
                netns: t.netns.clone(),
            });
        }
        out.push(ProbeAction::Create(t.clone()));
    }
    out
}

/// The probes made in a pass, waiting for the end of that pass.
type Pending = Arc<Mutex<Option<Vec<ProbeTarget>>>>;

/// The probe reconciler: makes and removes the probe namespaces. The
/// probes that exist after its pass are handed to [`PublishProbes`], which
/// runs last in the network pass and only then tells [`run_checks`].
pub struct Probes {
    ident: ProbeIdentity,
    netlink: Netlink,
    pending: Pending,
    first: bool,
}

/// Publishes the probes ready to check once the whole network pass has run.
///
/// A probe made in a pass is plugged into its bridge by the overlay or
/// provider subsystem later in that pass, and the node's ruleset (which
/// keeps DHCP and metadata off the wire) is applied after that: a probe
/// checked before the end of the pass could send its DHCPDISCOVER onto
/// a provider network's uplink before the guard exists. This subsystem
/// runs after every other network subsystem.
pub struct PublishProbes {
    pending: Pending,
    ready: watch::Sender<Vec<ProbeTarget>>,
}

#[async_trait]
impl crate::reconciler::Reconcile for PublishProbes {
    fn name(&self) -> &'static str {
        "probe-publish"
    }

    async fn reconcile(&mut self, _desired: &DesiredNode) -> Result<usize, SubsystemError> {
        let pending = match self.pending.lock() {
            Ok(mut p) => p.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(ready) = pending {
            self.ready.send_if_modified(|cur| {
                let changed = *cur != ready;
                if changed {
                    *cur = ready;
                }
                changed
            });
        }
        // Telling the checker is not a change of the node.
        Ok(0)
    }
}

impl Probes {
    /// A reconciler for `ident`'s probes, the publisher that must run last
    /// in the network pass, and the receiving end of the probes ready to
    /// check. Must be called inside a tokio runtime.
    pub fn new(
        ident: ProbeIdentity,
    ) -> Result<(Self, PublishProbes, watch::Receiver<Vec<ProbeTarget>>), SubsystemError> {
        let netlink = Netlink::new().map_err(|e| SubsystemError::Other(e.to_string()))?;
        let (ready, rx) = watch::channel(Vec::new());
        let pending = Pending::default();
        Ok((
            Self {
                ident,
                netlink,
                pending: pending.clone(),
                first: true,
            },
            PublishProbes { pending, ready },
            rx,
        ))
    }

    async fn create(&self, t: &ProbeTarget) -> Result<(), String> {
        self.netlink
            .create_netns_guest(&t.netns, &t.host_ifname, t.mac, t.mtu)
            .await
            .map_err(|e| e.to_string())?;
        let addressed = nubo_overlay::run_in_netns(&t.netns, |nl| async move {
            // Nothing but the probe's own exchanges leaves the namespace.
            for path in [
                "/proc/sys/net/ipv6/conf/all/disable_ipv6",
                "/proc/sys/net/ipv6/conf/default/disable_ipv6",
            ] {
                if let Err(e) = std::fs::write(path, "1\n") {
                    debug!(path, error = %e, "cannot disable IPv6 in the probe namespace");
                }
            }
            nl.add_address(GUEST_IFNAME, IpAddr::V4(PROBE_IP), PROBE_PREFIX_LEN)
                .await
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = addressed {
            if let Err(cleanup) = nubo_overlay::delete_netns_guest(&t.netns).await {
                warn!(netns = %t.netns, error = %cleanup, "cannot remove a half-made probe");
            }
            return Err(e);
        }
        info!(netns = %t.netns, bridge = %t.bridge, mac = %t.mac, "health probe created");
        Ok(())
    }
}

#[async_trait]
impl Subsystem for Probes {
    type Observed = ProbeObserved;
    type Plan = Vec<ProbeAction>;

    fn name(&self) -> &'static str {
        "probe"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<ProbeObserved, SubsystemError> {
        let namespaces = nubo_overlay::list_netns_guests(&self.ident.netns_prefix)
            .map_err(|e| SubsystemError::Other(format!("list probe namespaces: {e}")))?
            .into_iter()
            .collect();
        let host_links = targets(desired, &self.ident)
            .into_values()
            .map(|t| t.host_ifname)
            .filter(|l| ifindex(l).is_some())
            .collect();
        Ok(ProbeObserved {
            namespaces,
            host_links,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &ProbeObserved) -> Vec<ProbeAction> {
        plan(&targets(desired, &self.ident), observed)
    }

    async fn apply(
        &mut self,
        desired: &DesiredNode,
        plan: Vec<ProbeAction>,
    ) -> Result<usize, SubsystemError> {
        let n = plan.len();
        let mut errors = Vec::new();
        let mut failed = BTreeSet::new();
        for action in plan {
            match action {
                ProbeAction::Delete { netns } => {
                    match nubo_overlay::delete_netns_guest(&netns).await {
                        Ok(()) => info!(netns = %netns, "health probe removed"),
                        Err(e) => errors.push(format!("remove probe {netns}: {e}")),
                    }
                }
                ProbeAction::Create(t) => {
                    if let Err(e) = self.create(&t).await {
                        errors.push(format!("probe on {}: {e}", t.bridge));
                        failed.insert(t.netns);
                    }
                }
            }
        }
        let ready: Vec<ProbeTarget> = targets(desired, &self.ident)
            .into_values()
            .filter(|t| !failed.contains(&t.netns))
            .collect();
        match self.pending.lock() {
            Ok(mut p) => *p = Some(ready),
            Err(poisoned) => *poisoned.into_inner() = Some(ready),
        }
        log_plan("probe", &mut self.first, n);
        if errors.is_empty() {
            Ok(n)
        } else {
            Err(SubsystemError::Other(errors.join("; ")))
        }
    }
}

/// A fresh DHCP transaction id.
fn xid() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// The DHCP check: the OFFER must carry the probe's fixed address.
async fn check_dhcp(mac: MacAddr) -> Result<(), String> {
    let offer = nubo_dhcp::probe::discover(GUEST_IFNAME, mac, xid(), CHECK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if offer.yiaddr != PROBE_IP {
        return Err(format!("offered {} instead of {PROBE_IP}", offer.yiaddr));
    }
    Ok(())
}

/// The status code and body of `GET path` on `169.254.169.254:80`
/// (HTTP/1.1 through hyper).
async fn http_get(path: &str) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::connect((nubo_metadata::METADATA_ADDR, 80))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, String>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, nubo_metadata::METADATA_ADDR.to_string())
        .body(String::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The metadata check: 200 and a document naming the probe.
async fn check_metadata(uuid: String) -> Result<(), String> {
    let (status, body) = tokio::time::timeout(CHECK_TIMEOUT, http_get(METADATA_PATH))
        .await
        .map_err(|_| format!("no answer within {CHECK_TIMEOUT:?}"))??;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let doc: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("not JSON: {e}"))?;
    if doc.get("uuid").and_then(|u| u.as_str()) != Some(uuid.as_str()) {
        return Err(format!("the document is not the probe's: {body}"));
    }
    Ok(())
}

/// Runs both checks inside the probe's namespace (one thread for both);
/// each check's result and duration.
async fn probe_target(t: &ProbeTarget, uuid: &str) -> Vec<(Check, Result<(), String>, Duration)> {
    let (mac, uuid) = (t.mac, uuid.to_string());
    let started = Instant::now();
    let inside = nubo_overlay::run_in_netns(&t.netns, move |_| async move {
        let mut out = Vec::new();
        for check in Check::ALL {
            let t0 = Instant::now();
            let r = match check {
                Check::Dhcp => check_dhcp(mac).await,
                Check::Metadata => check_metadata(uuid.clone()).await,
            };
            out.push((check, r, t0.elapsed()));
        }
        out
    })
    .await;
    match inside {
        Ok(out) => out,
        Err(e) => Check::ALL
            .iter()
            .map(|c| (*c, Err(format!("probe namespace: {e}")), started.elapsed()))
            .collect(),
    }
}

/// Probes every ready target every `interval` (all networks concurrently)
/// until `targets` closes, and
/// records each check's result in `metrics` (the series of networks no
/// longer probed are removed). A failure is logged when it starts and when
/// it ends, not at every probe.
pub async fn run_checks(
    ident: ProbeIdentity,
    mut targets: watch::Receiver<Vec<ProbeTarget>>,
    metrics: Arc<ProbeMetrics>,
    interval: Duration,
) {
    let uuid = ident.uuid();
    let mut failing: BTreeSet<(String, Check)> = BTreeSet::new();
    let mut probed: BTreeSet<String> = BTreeSet::new();
    loop {
        let current = targets.borrow_and_update().clone();
        let networks: BTreeSet<String> = current.iter().map(|t| t.network.clone()).collect();
        for gone in probed.difference(&networks) {
            metrics.forget(gone);
        }
        failing.retain(|(n, _)| networks.contains(n));
        probed = networks;
        // Every network at once: a round takes at most two check timeouts,
        // however many networks fail.
        let rounds =
            futures::future::join_all(current.iter().map(|t| probe_target(t, &uuid))).await;
        for (t, results) in current.iter().zip(rounds) {
            for (check, result, elapsed) in results {
                metrics.record(check, &t.network, result.is_ok(), elapsed);
                let key = (t.network.clone(), check);
                match result {
                    Ok(()) => {
                        if failing.remove(&key) {
                            info!(network = %t.network, bridge = %t.bridge, check = check.as_str(),
                                "health probe succeeds again");
                        }
                    }
                    Err(e) => {
                        if failing.insert(key) {
                            warn!(network = %t.network, bridge = %t.bridge, check = check.as_str(),
                                error = %e, "health probe FAILED");
                        }
                    }
                }
            }
        }
        tokio::select! {
            r = targets.changed() => if r.is_err() { return },
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;

    fn ident() -> ProbeIdentity {
        ProbeIdentity {
            node: "n1".into(),
            netns_prefix: "nprobe-".into(),
        }
    }

    #[test]
    fn names_and_macs_are_stable_distinct_and_never_port_macs() {
        let (a, b) = (
            ident(),
            ProbeIdentity {
                node: "n2".into(),
                ..ident()
            },
        );
        assert_eq!(a.netns("nb-100"), a.netns("nb-100"));
        assert_ne!(a.netns("nb-100"), a.netns("nb-200"));
        assert_ne!(a.netns("nb-100"), b.netns("nb-100"));
        assert_ne!(a.mac("nb-100"), b.mac("nb-100"));
        assert!(a.netns("nb-1").starts_with("nprobe-"));
        assert!(a.host_ifname("nb-100").len() <= 15);
        let mac = a.mac("nb-100");
        assert_eq!(mac.0[0] & 1, 0, "unicast");
        assert_eq!(mac.0[0] & 2, 2, "locally administered");
        assert_ne!(&mac.0[..3], &nubo_netid::PORT_MAC_PREFIX[..]);
        assert!(lease(&targets_of_one()[0]).validate().is_ok());
    }

    fn targets_of_one() -> Vec<ProbeTarget> {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        w.instance_on(&n1, net, &[]);
        let d = build(&w.cache, &n1, 1500);
        targets(&d, &ident()).into_values().collect()
    }

    #[test]
    fn one_probe_per_network_with_running_local_ports() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let (net, net2) = (w.network(100, 0), w.network(200, 1400));
        w.instance_on(&n1, net, &[]);
        w.instance_on(&n1, net, &[]);
        w.instance_on(&n1, net2, &[]);
        let d = build(&w.cache, &n1, 1500);
        let t = targets(&d, &ident());
        assert_eq!(
            t.keys().collect::<Vec<_>>(),
            vec![&"nb-100".to_string(), &"nb-200".to_string()]
        );
        assert_eq!(t["nb-200"].mtu, 1400);
        assert_eq!(t["nb-100"].network, d.networks[&net].id.to_string());
        // The probes are plugged into the overlay like taps.
        let mut spec = super::super::overlay::overlay_spec(&d, "10.0.0.1".parse().unwrap(), 1500);
        plug_into(&mut spec, &d, &ident());
        let n100 = spec.networks.iter().find(|n| n.vni == 100).unwrap();
        assert!(n100
            .ports
            .iter()
            .any(|p| p.tap == t["nb-100"].host_ifname && p.mac == t["nb-100"].mac));
        // No local port: no probe.
        assert!(targets(&DesiredNode::default(), &ident()).is_empty());
    }

    #[test]
    fn provider_networks_get_their_probe_plugged_by_the_provider_subsystem() {
        use nubo_common::model::{ProviderSegment, ProviderType};
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let overlay = w.network(100, 0);
        let vlan = w.provider_network(ProviderSegment {
            kind: ProviderType::Vlan,
            physical_network: "physnet1".into(),
            segment: Some(120),
        });
        w.instance_on(&n1, vlan, &[]);
        w.instance_on(&n1, overlay, &[]);
        let d = build(&w.cache, &n1, 1500);
        let t = targets(&d, &ident());
        let pb = nubo_overlay::provider_bridge_name(&vlan.to_string());
        assert!(t[&pb].provider && !t["nb-100"].provider);
        let physnets = [("physnet1".to_string(), "eth1".to_string())].into();
        let (mut spec, _) = super::super::provider::provider_spec(&d, &physnets);
        plug_into_provider(&mut spec, &d, &ident());
        assert!(spec.networks[0].taps.contains(&t[&pb].host_ifname));
        assert!(!spec.networks[0].taps.contains(&t["nb-100"].host_ifname));
        let mut ov = super::super::overlay::overlay_spec(&d, "10.0.0.1".parse().unwrap(), 1500);
        plug_into(&mut ov, &d, &ident());
        let taps: Vec<&str> = ov
            .networks
            .iter()
            .flat_map(|n| n.ports.iter().map(|p| p.tap.as_str()))
            .collect();
        assert!(taps.contains(&t["nb-100"].host_ifname.as_str()));
        assert!(!taps.contains(&t[&pb].host_ifname.as_str()));
    }

    #[test]
    fn plan_creates_missing_repairs_half_made_and_removes_unwanted_probes() {
        let t = targets_of_one().remove(0);
        let want = BTreeMap::from([(t.bridge.clone(), t.clone())]);
        // Nothing there: create.
        assert_eq!(
            plan(&want, &ProbeObserved::default()),
            vec![ProbeAction::Create(t.clone())]
        );
        // Converged: nothing.
        let converged = ProbeObserved {
            namespaces: BTreeSet::from([t.netns.clone()]),
            host_links: BTreeSet::from([t.host_ifname.clone()]),
        };
        assert_eq!(plan(&want, &converged), vec![]);
        // The namespace without its veth: delete, then create.
        let half = ProbeObserved {
            namespaces: BTreeSet::from([t.netns.clone()]),
            host_links: BTreeSet::new(),
        };
        assert_eq!(
            plan(&want, &half),
            vec![
                ProbeAction::Delete {
                    netns: t.netns.clone()
                },
                ProbeAction::Create(t.clone())
            ]
        );
        // A stale probe (network gone from the node): removed.
        let stale = ProbeObserved {
            namespaces: BTreeSet::from([t.netns.clone(), "nprobe-000000000000".into()]),
            host_links: BTreeSet::from([t.host_ifname.clone()]),
        };
        assert_eq!(
            plan(&want, &stale),
            vec![ProbeAction::Delete {
                netns: "nprobe-000000000000".into()
            }]
        );
        assert_eq!(
            plan(&BTreeMap::new(), &converged),
            vec![ProbeAction::Delete { netns: t.netns }]
        );
    }
}
