//! Shared helpers of the coordinator integration tests.
#![allow(dead_code)]

use std::time::Duration;

use etcd_client::PutOptions;
use nubo_common::keys;
use nubo_common::model::{self, Node, NodeUsage, Resources};
use nubo_common::proto as pb;
use nubo_common::NodeName;
use nubo_coordinator::{Config, Coordinator};
use nubo_tests::Etcd;
use tonic::transport::Channel;

pub struct Clients {
    pub flavors: pb::flavors_client::FlavorsClient<Channel>,
    pub images: pb::images_client::ImagesClient<Channel>,
    pub networks: pb::networks_client::NetworksClient<Channel>,
    pub ports: pb::ports_client::PortsClient<Channel>,
    pub secgroups: pb::security_groups_client::SecurityGroupsClient<Channel>,
    pub keypairs: pb::keypairs_client::KeypairsClient<Channel>,
    pub groups: pb::server_groups_client::ServerGroupsClient<Channel>,
    pub servers: pb::servers_client::ServersClient<Channel>,
    pub nodes: pb::nodes_client::NodesClient<Channel>,
    pub cluster: pb::cluster_client::ClusterClient<Channel>,
}

pub async fn clients(c: &Coordinator) -> Clients {
    let ch = Channel::from_shared(c.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Clients {
        flavors: pb::flavors_client::FlavorsClient::new(ch.clone()),
        images: pb::images_client::ImagesClient::new(ch.clone()),
        networks: pb::networks_client::NetworksClient::new(ch.clone()),
        ports: pb::ports_client::PortsClient::new(ch.clone()),
        secgroups: pb::security_groups_client::SecurityGroupsClient::new(ch.clone()),
        keypairs: pb::keypairs_client::KeypairsClient::new(ch.clone()),
        groups: pb::server_groups_client::ServerGroupsClient::new(ch.clone()),
        servers: pb::servers_client::ServersClient::new(ch.clone()),
        nodes: pb::nodes_client::NodesClient::new(ch.clone()),
        cluster: pb::cluster_client::ClusterClient::new(ch),
    }
}

pub async fn coordinator(etcd: &Etcd) -> Coordinator {
    nubo_coordinator::start(Config::for_tests(etcd.endpoint()))
        .await
        .unwrap()
}

/// Registers a node the way an agent does: record + alive key on a lease.
pub async fn register_node(etcd: &Etcd, name: &str, capacity: Resources, az: &str) -> i64 {
    let mut c = etcd.client().await.unwrap();
    let n = NodeName::new(name).unwrap();
    let node = Node {
        name: n.clone(),
        underlay_ip: "10.255.0.1".parse().unwrap(),
        underlay_mtu: 1500,
        availability_zone: az.into(),
        labels: Default::default(),
        capacity,
        agent_version: "test".into(),
        registered_at: model::now(),
    };
    c.put(keys::node(&n), model::encode(&node), None)
        .await
        .unwrap();
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let alive = model::NodeAlive {
        lease,
        since: model::now(),
        pid: 1,
    };
    c.put(
        keys::node_alive(&n),
        model::encode(&alive),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    lease
}

/// Reads a node's usage straight from etcd.
pub async fn usage(etcd: &Etcd, name: &str) -> NodeUsage {
    let mut c = etcd.client().await.unwrap();
    let r = c
        .get(keys::node_usage(&NodeName::new(name).unwrap()), None)
        .await
        .unwrap();
    r.kvs()
        .first()
        .map(|kv| model::decode(name, kv.value()).unwrap())
        .unwrap_or_default()
}

/// Number of keys under a prefix.
pub async fn count(etcd: &Etcd, prefix: &str) -> i64 {
    let mut c = etcd.client().await.unwrap();
    c.get(
        prefix,
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await
    .unwrap()
    .count()
}

/// Waits until the coordinator's view shows `n` alive nodes.
pub async fn wait_nodes(cl: &mut Clients, n: usize) {
    for _ in 0..200 {
        let l = cl
            .nodes
            .list(pb::ListRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if l.nodes.iter().filter(|x| x.alive).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nodes did not show up");
}

pub fn res(vcpus: u32, ram_mb: u64, disk_gb: u64) -> Resources {
    Resources {
        vcpus,
        ram_mb,
        disk_gb,
    }
}

pub async fn setup_basics(cl: &mut Clients) {
    cl.flavors
        .create(pb::CreateFlavorRequest {
            name: "m1.small".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
        })
        .await
        .unwrap();
    cl.images
        .create(pb::CreateImageRequest {
            name: "cirros".into(),
            disk_format: "qcow2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}
