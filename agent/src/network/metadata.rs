//! The metadata subsystem: one nubo-metadata server for the node, serving
//! every bridge with running local ports. [`instance_rows`] maps the desired
//! node to `(bridge, InstanceMeta)` rows and [`plan`] compares them with
//! what is served (both pure): a pass adds and removes bridges as networks
//! come and go (re-adding recreated bridges) and replaces the shared
//! [`InstanceTable`] only when a row changed.
//!
//! Callers are identified by the library from (bridge, source IP, neighbour
//! MAC), never from anything they send. The bridges' reverse-path filter is
//! kept loose (`rp_filter` 2) when the namespace is strict, as the library
//! requires.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use base64::Engine;
use nubo_metadata::{InstanceMeta, InstanceTable, MetadataServer};
use serde_json::json;
use tracing::{info, warn};

use super::{finish_server_pass, ifindex, running_ports, sanitize_hostname, LocalPort};
use crate::reconciler::{Subsystem, SubsystemError};
use crate::state::desired::DesiredNode;

/// OpenStack `network_data.json` for one port (the netns driver and most
/// guests have one NIC): the link with MAC and MTU, the static IPv4 network
/// with its default route, and the DNS servers. Pure.
pub fn network_data(lp: &LocalPort<'_>) -> serde_json::Value {
    let net = lp.network;
    let sn = net.subnet_for(lp.port.ip);
    let link_id = lp.port.tap.clone();
    let mut routes = Vec::new();
    if let Some(gw) = sn.gateway {
        routes.push(json!({
            "network": "0.0.0.0",
            "netmask": "0.0.0.0",
            "gateway": gw.to_string(),
        }));
    }
    let dns: Vec<serde_json::Value> = sn
        .dns
        .iter()
        .map(|d| json!({"type": "dns", "address": d.to_string()}))
        .collect();
    json!({
        "links": [{
            "id": link_id,
            "type": "phy",
            "ethernet_mac_address": lp.port.mac.to_string(),
            "mtu": net.mtu,
            "vif_id": lp.port.id.to_string(),
        }],
        "networks": [{
            "id": "network0",
            "type": "ipv4",
            "link": link_id,
            "ip_address": lp.port.ip.to_string(),
            "netmask": sn.cidr.netmask().to_string(),
            "routes": routes,
            "network_id": net.id.to_string(),
            "services": dns,
        }],
        "services": dns,
    })
}

/// The metadata rows of every running local port, one per fixed address:
/// `(bridge, meta)`, sorted by bridge and IP. User data that is not valid base64 is served as absent
/// (and logged). Pure but for that log line.
pub fn instance_rows(
    desired: &DesiredNode,
    availability_zone: &str,
) -> Vec<(String, InstanceMeta)> {
    let mut rows: Vec<(String, InstanceMeta)> = running_ports(desired)
        .into_iter()
        .flat_map(|lp| {
            let inst = lp.instance;
            let id = inst.id();
            let mut m = InstanceMeta::new(id.to_string(), lp.port.ip, lp.port.mac);
            m.name = inst.spec.name.clone();
            m.hostname = sanitize_hostname(&inst.spec.name, &format!("host-{}", id.short_hex(8)));
            m.project_id = inst.spec.project.to_string();
            // Where it actually runs: this node's zone.
            m.availability_zone = availability_zone.to_string();
            m.public_keys = inst
                .keypair
                .iter()
                .map(|k| (k.name.clone(), k.public_key.clone()))
                .collect();
            m.user_data = inst.user_data_b64.as_ref().and_then(|b| {
                match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        warn!(instance = %id, error = %e, "user data is not base64; not served");
                        None
                    }
                }
            });
            m.network_data = network_data(&lp);
            m.launch_index = inst.spec.launch_index;
            m.meta = inst.spec.metadata.clone();
            m.instance_type = Some(inst.spec.flavor.to_string());
            // Known by each of its addresses (the table's key).
            let bridge = lp.network.bridge();
            let mut rows: Vec<(String, InstanceMeta)> = lp
                .port
                .more_ips
                .iter()
                .map(|ip| {
                    let mut other = m.clone();
                    other.local_ipv4 = *ip;
                    (bridge.clone(), other)
                })
                .collect();
            rows.push((bridge, m));
            rows
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1.local_ipv4).cmp(&(&b.0, b.1.local_ipv4)));
    rows
}

/// Makes reverse-path filtering on `bridge` loose if the namespace would
/// otherwise filter strictly (the effective value is max(all, iface)).
fn loosen_rp_filter(bridge: &str) {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
    };
    let iface = format!("/proc/sys/net/ipv4/conf/{bridge}/rp_filter");
    let all = read("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let cur = read(&iface).unwrap_or(0);
    if all.max(cur) == 1 {
        match std::fs::write(&iface, "2\n") {
            Ok(()) => info!(bridge, "rp_filter set to loose (2) for metadata replies"),
            Err(e) => warn!(bridge, error = %e, "could not loosen rp_filter"),
        }
    }
}

/// The metadata rows served: `(bridge, instance)`.
pub type Rows = Vec<(String, InstanceMeta)>;

/// What a metadata pass observes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetadataObserved {
    /// Whether the server runs.
    pub running: bool,
    /// The rows in its table.
    pub rows: Rows,
    /// The bridges served, with the interface index each was added with.
    pub served: BTreeMap<String, u32>,
    /// The interface index of every bridge served or wanted (`None`: it
    /// does not exist).
    pub bridges: BTreeMap<String, Option<u32>>,
}

/// One metadata change.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataAction {
    /// Replace the instance table.
    Rows {
        /// Every row.
        rows: Rows,
        /// How many rows were added, changed or removed.
        changed: usize,
    },
    /// Start the server (once per process).
    Start,
    /// Stop serving a bridge that is gone or was recreated.
    RemoveBridge {
        /// The bridge.
        bridge: String,
    },
    /// Serve a bridge.
    AddBridge {
        /// The bridge.
        bridge: String,
        /// Its interface index.
        ifindex: u32,
    },
    /// The bridge does not exist yet (the overlay creates it): served
    /// once it does, and the pass is retried.
    WaitForBridge {
        /// The bridge.
        bridge: String,
    },
}

/// The metadata changes that serve `rows`: the table replaced when a row
/// differs, the server started if it does not run, bridges no longer
/// wanted or recreated (another interface index) removed, new ones added.
/// Pure.
pub fn plan(rows: Rows, observed: &MetadataObserved) -> Vec<MetadataAction> {
    let mut out = Vec::new();
    let want: BTreeSet<String> = rows.iter().map(|(b, _)| b.clone()).collect();
    if rows != observed.rows {
        let changed = rows.iter().filter(|r| !observed.rows.contains(r)).count()
            + observed.rows.iter().filter(|r| !rows.contains(r)).count();
        out.push(MetadataAction::Rows { rows, changed });
    }
    if !observed.running {
        out.push(MetadataAction::Start);
    }
    let exists = |b: &String| observed.bridges.get(b).copied().flatten();
    let mut kept = BTreeSet::new();
    for (b, idx) in &observed.served {
        if want.contains(b) && exists(b) == Some(*idx) {
            kept.insert(b.clone());
        } else {
            out.push(MetadataAction::RemoveBridge { bridge: b.clone() });
        }
    }
    for b in want {
        if kept.contains(&b) {
            continue;
        }
        out.push(match exists(&b) {
            Some(ifindex) => MetadataAction::AddBridge { bridge: b, ifindex },
            None => MetadataAction::WaitForBridge { bridge: b },
        });
    }
    out
}

/// The guests' passwords in etcd, under this node's own keys
/// (`keys::instance_password`): written once, read back for the guest.
pub struct EtcdPasswords {
    etcd: nubo_store::Etcd,
    node: nubo_common::NodeName,
}

impl EtcdPasswords {
    /// The passwords of the instances of `node`.
    pub fn new(etcd: nubo_store::Etcd, node: nubo_common::NodeName) -> Self {
        Self { etcd, node }
    }

    fn key(&self, uuid: &str) -> Result<String, nubo_metadata::PasswordError> {
        let id: nubo_common::InstanceId = uuid
            .parse()
            .map_err(|e| nubo_metadata::PasswordError::Store(format!("{e}")))?;
        Ok(nubo_common::keys::instance_password(&self.node, &id))
    }
}

impl nubo_metadata::PasswordStore for EtcdPasswords {
    fn get<'a>(&'a self, uuid: &'a str) -> nubo_metadata::PasswordFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let key = self.key(uuid)?;
            let kv = self
                .etcd
                .get_kv(&key)
                .await
                .map_err(|e| nubo_metadata::PasswordError::Store(e.to_string()))?;
            Ok(kv.map(|kv| kv.value().to_vec()).unwrap_or_default())
        })
    }

    fn set<'a>(
        &'a self,
        uuid: &'a str,
        password: Vec<u8>,
    ) -> nubo_metadata::PasswordFuture<'a, ()> {
        Box::pin(async move {
            let key = self.key(uuid)?;
            let txn = etcd_client::Txn::new()
                .when([nubo_store::kv::absent(&key)])
                .and_then([etcd_client::TxnOp::put(key.as_str(), password, None)]);
            let resp = self
                .etcd
                .txn(txn)
                .await
                .map_err(|e| nubo_metadata::PasswordError::Store(e.to_string()))?;
            if resp.succeeded() {
                Ok(())
            } else {
                Err(nubo_metadata::PasswordError::AlreadySet)
            }
        })
    }
}

/// The metadata reconciler.
pub struct Metadata {
    availability_zone: String,
    table: InstanceTable,
    server: Option<MetadataServer>,
    /// Served bridges and the interface index they were bound to.
    served: BTreeMap<String, u32>,
    applied: Rows,
    first: bool,
    observer: Option<std::sync::Arc<dyn nubo_metadata::RequestObserver>>,
    probe: Option<super::probe::ProbeIdentity>,
    passwords: Option<std::sync::Arc<dyn nubo_metadata::PasswordStore>>,
}

impl Metadata {
    /// Nothing is served until the first pass; `availability_zone` is the
    /// node's, served for every instance.
    pub fn new(availability_zone: &str) -> Self {
        Self {
            availability_zone: availability_zone.to_string(),
            table: InstanceTable::new(),
            server: None,
            served: BTreeMap::new(),
            applied: Vec::new(),
            first: true,
            observer: None,
            probe: None,
            passwords: None,
        }
    }

    /// Keeps the passwords guests post in `store`.
    pub fn with_passwords(
        mut self,
        store: Option<std::sync::Arc<dyn nubo_metadata::PasswordStore>>,
    ) -> Self {
        self.passwords = store;
        self
    }

    /// Reports the status of every answer to `observer`.
    pub fn with_observer(
        mut self,
        observer: std::sync::Arc<dyn nubo_metadata::RequestObserver>,
    ) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Also serves this node's health probes (one row per probe, see
    /// [`super::probe`]).
    pub fn with_probe(mut self, probe: Option<super::probe::ProbeIdentity>) -> Self {
        self.probe = probe;
        self
    }
}

#[async_trait]
impl Subsystem for Metadata {
    type Observed = MetadataObserved;
    type Plan = Vec<MetadataAction>;

    fn name(&self) -> &'static str {
        "metadata"
    }

    async fn observe(&mut self, desired: &DesiredNode) -> Result<MetadataObserved, SubsystemError> {
        let bridges = self
            .served
            .keys()
            .cloned()
            .chain(running_ports(desired).iter().map(|lp| lp.network.bridge()))
            .map(|b| {
                let idx = ifindex(&b);
                (b, idx)
            })
            .collect();
        Ok(MetadataObserved {
            running: self.server.is_some(),
            rows: self.applied.clone(),
            served: self.served.clone(),
            bridges,
        })
    }

    fn plan(&self, desired: &DesiredNode, observed: &MetadataObserved) -> Vec<MetadataAction> {
        let mut rows = instance_rows(desired, &self.availability_zone);
        if let Some(ident) = &self.probe {
            rows.extend(
                super::probe::targets(desired, ident)
                    .values()
                    .map(|t| super::probe::metadata_row(ident, t)),
            );
            rows.sort_by(|a, b| (&a.0, a.1.local_ipv4).cmp(&(&b.0, b.1.local_ipv4)));
        }
        plan(rows, observed)
    }

    async fn apply(
        &mut self,
        _desired: &DesiredNode,
        plan: Vec<MetadataAction>,
    ) -> Result<usize, SubsystemError> {
        let mut changes = 0;
        let mut errors = Vec::new();
        for action in plan {
            match action {
                MetadataAction::Rows { rows, changed } => {
                    self.table.replace_all(rows.iter().cloned());
                    self.applied = rows;
                    changes += changed;
                }
                MetadataAction::Start => {
                    let s = MetadataServer::start(self.table.clone())
                        .map_err(|e| SubsystemError::Other(format!("metadata server: {e}")))?;
                    let s = match &self.passwords {
                        Some(p) => s.with_passwords(p.clone()),
                        None => s,
                    };
                    self.server = Some(match &self.observer {
                        Some(o) => s.with_observer(o.clone()),
                        None => s,
                    });
                }
                MetadataAction::RemoveBridge { bridge } => {
                    if let Some(server) = &self.server {
                        server.remove_bridge(&bridge).await;
                    }
                    self.served.remove(&bridge);
                    info!(bridge = %bridge, "metadata no longer served");
                }
                MetadataAction::AddBridge { bridge, ifindex } => {
                    let Some(server) = &self.server else {
                        continue;
                    };
                    loosen_rp_filter(&bridge);
                    match server.add_bridge(&bridge) {
                        Ok(()) => {
                            self.served.insert(bridge, ifindex);
                        }
                        Err(e) => errors.push(format!("metadata on {bridge}: {e}")),
                    }
                }
                MetadataAction::WaitForBridge { bridge } => {
                    errors.push(format!("bridge {bridge} does not exist yet"));
                }
            }
        }
        finish_server_pass("metadata", &mut self.first, changes, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::desired::build;
    use crate::testutil::*;
    use nubo_common::keys;
    use nubo_common::model::{self, Keypair};
    use nubo_netid::MacAddr;

    #[test]
    fn rows_carry_identity_keys_user_data_and_network_data() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let (i1, p1) = w.instance_on(&n1, net, &[]);
        let mut spec = w.cache.instances[&i1].clone();
        spec.name = "Web_1".into();
        spec.key_name = Some("k".into());
        spec.user_data_b64 = Some("aGVsbG8=".into());
        spec.metadata = [("role".to_string(), "web".to_string())].into();
        let kp = Keypair {
            name: "k".into(),
            project: spec.project.clone(),
            public_key: "ssh-ed25519 AAAA test".into(),
            fingerprint: "SHA256:x".into(),
            created_at: model::now(),
        };
        w.cache.apply(
            &keys::keypair(&spec.project, "k"),
            Some(&model::encode(&kp)),
            900,
        );
        w.cache
            .apply(&keys::node_spec(&n1, &i1), Some(&model::encode(&spec)), 901);
        let d = build(&w.cache, &n1, 1500);
        let rows = instance_rows(&d, "az-1");
        assert_eq!(rows.len(), 1);
        let (bridge, m) = &rows[0];
        assert_eq!(bridge, "nb-100");
        assert_eq!(m.uuid, i1.to_string());
        assert_eq!(m.name, "Web_1");
        assert_eq!(m.hostname, "web-1");
        assert_eq!(m.availability_zone, "az-1");
        assert_eq!(
            m.public_keys,
            vec![("k".to_string(), "ssh-ed25519 AAAA test".to_string())]
        );
        assert_eq!(m.user_data.as_deref(), Some(&b"hello"[..]));
        // The server's metadata is the guest's `meta`.
        assert_eq!(m.meta.get("role").map(String::as_str), Some("web"));
        assert_eq!(m.meta.len(), 1);
        assert_eq!(Some(m.local_ipv4), p1.ip);
        assert_eq!(m.mac.0, p1.mac.octets());
        let nd = &m.network_data;
        assert_eq!(nd["links"][0]["ethernet_mac_address"], p1.mac.to_string());
        assert_eq!(nd["networks"][0]["ip_address"], p1.ip.unwrap().to_string());
        assert_eq!(nd["networks"][0]["netmask"], "255.255.255.0");
        assert_eq!(nd["networks"][0]["routes"][0]["gateway"], "192.168.0.1");
        assert_eq!(nd["links"][0]["mtu"], 1450);
    }

    #[test]
    fn bad_user_data_is_not_served() {
        let mut w = World::new();
        let n1 = node_name("n1");
        w.node(&n1, "10.0.0.1");
        let net = w.network(100, 0);
        let (i1, _) = w.instance_on(&n1, net, &[]);
        let mut spec = w.cache.instances[&i1].clone();
        spec.user_data_b64 = Some("%%%".into());
        w.cache
            .apply(&keys::node_spec(&n1, &i1), Some(&model::encode(&spec)), 901);
        let d = build(&w.cache, &n1, 1500);
        assert_eq!(instance_rows(&d, "nova")[0].1.user_data, None);
    }

    fn row(bridge: &str, ip: u8) -> (String, InstanceMeta) {
        (
            bridge.to_string(),
            InstanceMeta::new(
                format!("i-{ip}"),
                std::net::Ipv4Addr::new(10, 0, 0, ip),
                MacAddr([2, 0, 0, 0, 0, ip]),
            ),
        )
    }

    fn served(rows: Rows, bridges: &[(&str, u32)]) -> MetadataObserved {
        MetadataObserved {
            running: true,
            rows,
            served: bridges.iter().map(|(b, i)| (b.to_string(), *i)).collect(),
            bridges: bridges
                .iter()
                .map(|(b, i)| (b.to_string(), Some(*i)))
                .collect(),
        }
    }

    #[test]
    fn a_converged_node_has_an_empty_plan_and_a_fresh_one_starts_everything() {
        let rows = vec![row("nb-1", 5), row("nb-2", 6)];
        let o = served(rows.clone(), &[("nb-1", 7), ("nb-2", 8)]);
        assert_eq!(plan(rows.clone(), &o), vec![]);
        let fresh = MetadataObserved {
            bridges: o.bridges.clone(),
            ..MetadataObserved::default()
        };
        assert_eq!(
            plan(rows.clone(), &fresh),
            vec![
                MetadataAction::Rows { rows, changed: 2 },
                MetadataAction::Start,
                MetadataAction::AddBridge {
                    bridge: "nb-1".into(),
                    ifindex: 7
                },
                MetadataAction::AddBridge {
                    bridge: "nb-2".into(),
                    ifindex: 8
                },
            ]
        );
    }

    #[test]
    fn bridges_follow_the_networks_and_recreated_ones_are_added_again() {
        let mut o = served(
            vec![row("nb-1", 5), row("nb-2", 6)],
            &[("nb-1", 7), ("nb-2", 8)],
        );
        // nb-1 recreated (new index), nb-2 has no port left, nb-3 is new
        // but not created yet.
        o.bridges.insert("nb-1".into(), Some(17));
        o.bridges.insert("nb-3".into(), None);
        let rows = vec![row("nb-1", 5), row("nb-3", 9)];
        assert_eq!(
            plan(rows.clone(), &o),
            vec![
                MetadataAction::Rows { rows, changed: 2 },
                MetadataAction::RemoveBridge {
                    bridge: "nb-1".into()
                },
                MetadataAction::RemoveBridge {
                    bridge: "nb-2".into()
                },
                MetadataAction::AddBridge {
                    bridge: "nb-1".into(),
                    ifindex: 17
                },
                MetadataAction::WaitForBridge {
                    bridge: "nb-3".into()
                },
            ]
        );
    }
}
