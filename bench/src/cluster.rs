//! The simulated cluster: N nodes registered directly in etcd as agents
//! would (record + `/alive` on one shared lease), and the flavor, image and
//! network the benchmark boots from.

use std::collections::HashMap;

use anyhow::{Context, Result};
use etcd_client::{Client, PutOptions, Txn, TxnOp};
use nubo_common::model::{self, Node, NodeAlive, NodeUsage, Resources};
use nubo_common::proto::{
    flavors_client::FlavorsClient, images_client::ImagesClient, networks_client::NetworksClient,
    CreateFlavorRequest, CreateImageRequest, CreateNetworkRequest,
};
use nubo_common::{keys, InstanceId, NodeName};
use tonic::transport::Channel;

use crate::coordinator::Ratios;

/// Capacity of every simulated node: 16 vCPUs, 64 GiB, 1 TB.
pub const NODE_CAPACITY: Resources = Resources {
    vcpus: 16,
    ram_mb: 64 * 1024,
    disk_gb: 1000,
};

/// The flavor every benchmark instance uses.
pub const FLAVOR: Resources = Resources {
    vcpus: 1,
    ram_mb: 2048,
    disk_gb: 20,
};
/// Its name.
pub const FLAVOR_NAME: &str = "bench.small";
/// The image name.
pub const IMAGE_NAME: &str = "bench-image";
/// The network name; a /12 so that addresses never run out.
pub const NETWORK_NAME: &str = "bench-net";
const NETWORK_CIDR: &str = "10.128.0.0/12";

/// Largest number of operations etcd accepts in one transaction (default).
pub const MAX_TXN_OPS: usize = 128;

/// The name of simulated node `i`.
pub fn node_name(i: usize) -> Result<NodeName> {
    Ok(NodeName::new(format!("sim-{i:05}"))?)
}

/// Registers `n` nodes and keeps their shared lease alive in a background
/// task (for as long as the runtime lives).
pub async fn register_nodes(client: &Client, n: usize) -> Result<()> {
    let mut c = client.clone();
    let lease = c
        .lease_grant(30, None)
        .await
        .context("granting a lease")?
        .id();
    let now = model::now();
    let alive = model::encode(&NodeAlive {
        lease,
        since: now,
        pid: std::process::id(),
    });
    let mut ops = Vec::with_capacity(MAX_TXN_OPS);
    for i in 0..n {
        let name = node_name(i)?;
        let rec = Node {
            name: name.clone(),
            underlay_ip: std::net::IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]),
            underlay_mtu: 1500,
            availability_zone: "nova".into(),
            labels: Default::default(),
            capacity: NODE_CAPACITY,
            agent_version: "nubo-bench".into(),
            registered_at: now,
        };
        ops.push(TxnOp::put(keys::node(&name), model::encode(&rec), None));
        ops.push(TxnOp::put(
            keys::node_alive(&name),
            alive.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        if ops.len() + 2 > MAX_TXN_OPS || i + 1 == n {
            c.txn(Txn::new().and_then(std::mem::take(&mut ops)))
                .await
                .context("registering nodes")?;
        }
    }
    let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Creates the flavor, image and network through the API.
pub async fn create_resources(channel: &Channel) -> Result<()> {
    FlavorsClient::new(channel.clone())
        .create(CreateFlavorRequest {
            name: FLAVOR_NAME.into(),
            vcpus: FLAVOR.vcpus,
            ram_mb: FLAVOR.ram_mb,
            disk_gb: FLAVOR.disk_gb,
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .context("creating the flavor")?;
    ImagesClient::new(channel.clone())
        .create(CreateImageRequest {
            name: IMAGE_NAME.into(),
            disk_format: "raw".into(),
            ..Default::default()
        })
        .await
        .context("creating the image")?;
    NetworksClient::new(channel.clone())
        .create(CreateNetworkRequest {
            name: NETWORK_NAME.into(),
            cidr: NETWORK_CIDR.into(),
            ..Default::default()
        })
        .await
        .context("creating the network")?;
    Ok(())
}

/// What the capacity audit found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audit {
    /// Nodes whose assigned instances exceed capacity × ratio.
    pub over_capacity: usize,
    /// Nodes whose `/usage` record disagrees with their assignments.
    pub usage_mismatch: usize,
    /// Fewest instances on a node.
    pub min_per_node: u32,
    /// Most instances on a node.
    pub max_per_node: u32,
}

/// Reads every node, usage record and assignment, and checks that no node
/// holds more than its capacity × ratio, counting assignments (the truth)
/// as well as the coordinator's own usage bookkeeping.
pub async fn audit(client: &Client, n: usize, ratios: Ratios) -> Result<Audit> {
    let mut c = client.clone();
    let mut usage: HashMap<NodeName, NodeUsage> = HashMap::new();
    let mut capacity: HashMap<NodeName, Resources> = HashMap::new();
    for kv in get_prefix(&mut c, &keys::nodes_prefix()).await? {
        let key = kv.key_str()?;
        match keys::parse(key) {
            Some(keys::Key::Node(name)) => {
                capacity.insert(name, model::decode::<Node>(key, kv.value())?.capacity);
            }
            Some(keys::Key::NodeUsage(name)) => {
                usage.insert(name, model::decode(key, kv.value())?);
            }
            _ => {}
        }
    }
    let mut assigned: HashMap<NodeName, u32> = HashMap::new();
    for kv in get_prefix(&mut c, &keys::all_assignments_prefix()).await? {
        if let Some(keys::Key::Assignment(node, _)) = keys::parse(kv.key_str()?) {
            *assigned.entry(node).or_default() += 1;
        }
    }
    let mut a = Audit {
        min_per_node: u32::MAX,
        ..Audit::default()
    };
    for i in 0..n {
        let name = node_name(i)?;
        let cap = capacity.get(&name).copied().unwrap_or_default();
        let count = assigned.get(&name).copied().unwrap_or(0);
        let placed = scale(FLAVOR, count);
        let recorded = usage.get(&name).cloned().unwrap_or_default();
        if !fits(placed, cap, ratios) || !fits(recorded.used, cap, ratios) {
            a.over_capacity += 1;
        }
        if recorded.used != placed || recorded.instances != count {
            a.usage_mismatch += 1;
        }
        a.min_per_node = a.min_per_node.min(count);
        a.max_per_node = a.max_per_node.max(count);
    }
    if n == 0 {
        a.min_per_node = 0;
    }
    Ok(a)
}

/// `r` × `k`, saturating.
fn scale(r: Resources, k: u32) -> Resources {
    Resources {
        vcpus: r.vcpus.saturating_mul(k),
        ram_mb: r.ram_mb.saturating_mul(k.into()),
        disk_gb: r.disk_gb.saturating_mul(k.into()),
    }
}

/// `used` fits in `cap` × `ratios`.
pub fn fits(used: Resources, cap: Resources, ratios: Ratios) -> bool {
    f64::from(used.vcpus) <= f64::from(cap.vcpus) * ratios.cpu
        && used.ram_mb as f64 <= cap.ram_mb as f64 * ratios.ram
        && used.disk_gb as f64 <= cap.disk_gb as f64 * ratios.disk
}

async fn get_prefix(c: &mut Client, prefix: &str) -> Result<Vec<etcd_client::KeyValue>> {
    let resp = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {prefix}"))?;
    Ok(resp.kvs().to_vec())
}

/// The instance of an assignment key, if it is one.
pub fn assignment_instance(key: &str) -> Option<(NodeName, InstanceId)> {
    match keys::parse(key)? {
        keys::Key::Assignment(node, id) => Some((node, id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATIOS: Ratios = Ratios {
        cpu: 4.0,
        ram: 1.0,
        disk: 1.0,
    };

    #[test]
    fn capacity_check_applies_ratios() {
        // 32 × 2 GiB fill 64 GiB exactly: fits; one more does not.
        assert!(fits(scale(FLAVOR, 32), NODE_CAPACITY, RATIOS));
        assert!(!fits(scale(FLAVOR, 33), NODE_CAPACITY, RATIOS));
        let cpu_heavy = Resources {
            vcpus: 65,
            ram_mb: 1,
            disk_gb: 1,
        };
        assert!(!fits(cpu_heavy, NODE_CAPACITY, RATIOS));
        assert!(fits(
            Resources {
                vcpus: 64,
                ..cpu_heavy
            },
            NODE_CAPACITY,
            RATIOS
        ));
    }

    #[test]
    fn assignment_keys_are_recognised() {
        let n = node_name(7).unwrap();
        let id = InstanceId::new_random();
        assert_eq!(
            assignment_instance(&keys::assignment(&n, &id)),
            Some((n.clone(), id))
        );
        assert_eq!(assignment_instance(&keys::node(&n)), None);
    }
}
