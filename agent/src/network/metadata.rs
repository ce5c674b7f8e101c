//! The metadata subsystem: one nubo-metadata server for the node, serving
//! every bridge with running local ports. [`instance_rows`] maps the desired
//! node to `(bridge, InstanceMeta)` rows (pure); a pass adds and removes
//! bridges as networks come and go (re-adding recreated bridges) and
//! replaces the shared [`InstanceTable`] only when a row changed.
//!
//! Callers are identified by the library from (bridge, source IP, neighbour
//! MAC), never from anything they send. The bridges' reverse-path filter is
//! kept loose (`rp_filter` 2) when the namespace is strict, as the library
//! requires.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use base64::Engine;
use nubo_metadata::{InstanceMeta, InstanceTable, MetadataServer};
use nubo_overlay::bridge_name;
use serde_json::json;
use tracing::{info, warn};

use super::{finish_server_pass, ifindex, running_ports, sanitize_hostname, LocalPort};
use crate::desired::DesiredNode;
use crate::reconciler::{Subsystem, SubsystemError};

/// OpenStack `network_data.json` for one port (the netns driver and most
/// guests have one NIC): the link with MAC and MTU, the static IPv4 network
/// with its default route, and the DNS servers. Pure.
pub fn network_data(lp: &LocalPort<'_>) -> serde_json::Value {
    let net = lp.network;
    let link_id = lp.port.tap.clone();
    let mut routes = Vec::new();
    if let Some(gw) = net.gateway {
        routes.push(json!({
            "network": "0.0.0.0",
            "netmask": "0.0.0.0",
            "gateway": gw.to_string(),
        }));
    }
    let dns: Vec<serde_json::Value> = net
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
            "netmask": net.cidr.netmask().to_string(),
            "routes": routes,
            "network_id": net.id.to_string(),
            "services": dns,
        }],
        "services": dns,
    })
}

/// The metadata rows of every running local port: `(bridge, meta)`, sorted
/// by bridge and IP. User data that is not valid base64 is served as absent
/// (and logged). Pure but for that log line.
pub fn instance_rows(
    desired: &DesiredNode,
    availability_zone: &str,
) -> Vec<(String, InstanceMeta)> {
    let mut rows: Vec<(String, InstanceMeta)> = running_ports(desired)
        .into_iter()
        .map(|lp| {
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
            m.instance_type = Some(inst.spec.flavor.to_string());
            (bridge_name(lp.network.vni), m)
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

/// The metadata reconciler.
pub struct Metadata {
    availability_zone: String,
    table: InstanceTable,
    server: Option<MetadataServer>,
    /// Served bridges and the interface index they were bound to.
    served: BTreeMap<String, u32>,
    applied: Vec<(String, InstanceMeta)>,
    first: bool,
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
        }
    }
}

#[async_trait]
impl Subsystem for Metadata {
    fn name(&self) -> &'static str {
        "metadata"
    }

    async fn reconcile(&mut self, desired: &DesiredNode) -> Result<usize, SubsystemError> {
        let rows = instance_rows(desired, &self.availability_zone);
        let mut changes = 0;
        let mut errors = Vec::new();
        if rows != self.applied {
            changes += rows.iter().filter(|r| !self.applied.contains(r)).count()
                + self.applied.iter().filter(|r| !rows.contains(r)).count();
            self.table.replace_all(rows.iter().cloned());
            self.applied = rows.clone();
        }
        let server = match &self.server {
            Some(s) => s,
            None => {
                let s = MetadataServer::start(self.table.clone())
                    .map_err(|e| SubsystemError::Other(format!("metadata server: {e}")))?;
                self.server.insert(s)
            }
        };
        let want: BTreeSet<String> = rows.into_iter().map(|(b, _)| b).collect();
        let stale: Vec<String> = self
            .served
            .iter()
            .filter(|(b, idx)| !want.contains(*b) || ifindex(b) != Some(**idx))
            .map(|(b, _)| b.clone())
            .collect();
        for b in stale {
            server.remove_bridge(&b).await;
            self.served.remove(&b);
            info!(bridge = %b, "metadata no longer served");
        }
        for b in want {
            if self.served.contains_key(&b) {
                continue;
            }
            let Some(idx) = ifindex(&b) else {
                errors.push(format!("bridge {b} does not exist yet"));
                continue;
            };
            loosen_rp_filter(&b);
            match server.add_bridge(&b) {
                Ok(()) => {
                    self.served.insert(b, idx);
                }
                Err(e) => errors.push(format!("metadata on {b}: {e}")),
            }
        }
        finish_server_pass("metadata", &mut self.first, changes, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::build;
    use crate::testutil::*;
    use nubo_common::keys;
    use nubo_common::model::{self, Keypair};

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
            .apply(&keys::instance(&i1), Some(&model::encode(&spec)), 901);
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
        assert_eq!(m.local_ipv4, p1.ip);
        assert_eq!(m.mac.0, p1.mac.octets());
        let nd = &m.network_data;
        assert_eq!(nd["links"][0]["ethernet_mac_address"], p1.mac.to_string());
        assert_eq!(nd["networks"][0]["ip_address"], p1.ip.to_string());
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
            .apply(&keys::instance(&i1), Some(&model::encode(&spec)), 901);
        let d = build(&w.cache, &n1, 1500);
        assert_eq!(instance_rows(&d, "nova")[0].1.user_data, None);
    }
}
