//! Shared helpers of the coordinator integration tests.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use etcd_client::GetOptions;
use nubo_common::model::{Assignment, Instance, Port};
use nubo_common::InstanceId;

use etcd_client::PutOptions;
use nubo_common::keys;
use nubo_common::model::{self, Node, NodeUsage, Resources};
use nubo_common::proto as pb;
use nubo_common::{NodeName, ProjectId};
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
    pub routers: pb::routers_client::RoutersClient<Channel>,
    pub fips: pb::floating_ips_client::FloatingIpsClient<Channel>,
}

impl Clients {
    /// A clone of the nodes client (for use inside polling closures).
    pub fn clone_nodes(&self) -> NodesOnly {
        NodesOnly {
            nodes: self.nodes.clone(),
        }
    }
}

/// Just a nodes client.
pub struct NodesOnly {
    pub nodes: pb::nodes_client::NodesClient<Channel>,
}

/// A connection to the coordinator's gRPC endpoint.
pub async fn channel(c: &Coordinator) -> Channel {
    Channel::from_shared(c.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn clients(c: &Coordinator) -> Clients {
    clients_on(channel(c).await)
}

/// A connection to a coordinator process's gRPC endpoint.
pub async fn proc_channel(p: &nubo_tests::Coordinator) -> Channel {
    Channel::from_shared(p.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Every client on one channel.
pub fn clients_on(ch: Channel) -> Clients {
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
        routers: pb::routers_client::RoutersClient::new(ch.clone()),
        fips: pb::floating_ips_client::FloatingIpsClient::new(ch.clone()),
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

/// Writes project `name` straight to etcd.
/// [`register_node`], then waits until coordinator `c` sees the node alive
/// (its view is fed by a watch: a create right after the write may not
/// see the node yet).
pub async fn register_seen(
    etcd: &Etcd,
    c: &Coordinator,
    name: &str,
    capacity: Resources,
    az: &str,
) -> i64 {
    let lease = register_node(etcd, name, capacity, az).await;
    let n = NodeName::new(name).unwrap();
    for _ in 0..1000 {
        if c.sees_alive(&n) {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("coordinator never saw node {name} alive");
}

pub async fn put_project(etcd: &Etcd, name: &str) {
    let mut c = etcd.client().await.unwrap();
    let id = ProjectId::new(name).unwrap();
    let rec = model::Project {
        id: id.clone(),
        name: name.into(),
        description: String::new(),
        enabled: true,
        created_at: chrono::Utc::now(),
    };
    c.put(keys::project(&id), model::encode(&rec), None)
        .await
        .unwrap();
}

/// Writes user `name` with `password_hash` and its `role` in `project`
/// (cloud-wide with `None`) straight to etcd.
pub async fn put_user(
    etcd: &Etcd,
    name: &str,
    password_hash: &str,
    project: Option<&str>,
    role: model::Role,
) {
    let mut c = etcd.client().await.unwrap();
    let name = model::UserName::new(name).unwrap();
    let user = model::User {
        name: name.clone(),
        password_hash: password_hash.into(),
        enabled: true,
        created_at: chrono::Utc::now(),
    };
    c.put(keys::user(&name), model::encode(&user), None)
        .await
        .unwrap();
    let project = project.map(|p| ProjectId::new(p).unwrap());
    let ra = model::RoleAssignment {
        user: name.clone(),
        project: project.clone(),
        role,
    };
    c.put(
        keys::role(&name, project.as_ref()),
        model::encode(&ra),
        None,
    )
    .await
    .unwrap();
}

/// Revokes an etcd lease (a node's alive key goes with it).
pub async fn revoke(etcd: &Etcd, lease: i64) {
    etcd.client()
        .await
        .unwrap()
        .lease_revoke(lease)
        .await
        .unwrap();
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
    count_with(&mut etcd.client().await.unwrap(), prefix).await
}

/// [`count`] through a client of one's own (e.g. moved into a task).
pub async fn count_with(c: &mut etcd_client::Client, prefix: &str) -> i64 {
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

/// A node as the nodes API shows it.
pub async fn node_info(nodes: &mut pb::nodes_client::NodesClient<Channel>, name: &str) -> pb::Node {
    nodes
        .get(pb::GetRequest {
            r#ref: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Writes an external network `name` of the admin project straight into
/// etcd (external networks are an admin's; the tests have no admin token).
pub async fn put_external(etcd: &Etcd, name: &str, cidr: &str, gw: &str) -> nubo_common::NetworkId {
    let net = model::Network {
        id: nubo_common::NetworkId::new_random(),
        name: name.into(),
        project: ProjectId::new("admin").unwrap(),
        cidr: Some(cidr.parse().unwrap()),
        subnet_name: None,
        gateway: Some(gw.parse().unwrap()),
        vni: 0,
        mtu: 0,
        dns: vec![],
        provider: None,
        external: true,
        shared: false,
        dhcp_disabled: false,
        host_routes: Vec::new(),
        allocation_pools: Vec::new(),
        subnet_id: None,
        more_subnets: Vec::new(),
        created_at: model::now(),
    };
    etcd.client()
        .await
        .unwrap()
        .put(keys::network(&net.id), model::encode(&net), None)
        .await
        .unwrap();
    net.id
}

/// Creates network `name` with `cidr` in the caller's project.
pub async fn create_network(cl: &mut Clients, name: &str, cidr: &str) {
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: name.into(),
            cidr: cidr.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// `m` as a request carrying `Authorization: Bearer <token>` (none when
/// `token` is empty).
pub fn authed<T>(token: &str, m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

/// A token for `user` with `password`.
pub async fn issue_token(
    tokens: &mut pb::tokens_client::TokensClient<Channel>,
    user: &str,
    password: &str,
) -> String {
    tokens
        .issue(pb::IssueTokenRequest {
            user: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// A request for `count` servers `name` (flavor `m1.small`, image `cirros`:
/// what [`setup_basics`] creates) on `networks`.
pub fn server_req(name: &str, networks: &[&str], count: u32) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: name.into(),
        flavor: "m1.small".into(),
        image_ref: "cirros".into(),
        networks: networks.iter().map(|s| s.to_string()).collect(),
        count,
        ..Default::default()
    }
}

/// `servers.create(r)`, which must answer (its results may hold errors).
pub async fn create_servers(
    cl: &mut Clients,
    r: pb::CreateServerRequest,
) -> pb::CreateServerResponse {
    cl.servers.create(r).await.unwrap().into_inner()
}

/// The server of result `i` of a create; panics with that result when it
/// failed.
pub fn created(r: &pb::CreateServerResponse, i: usize) -> pb::Server {
    r.results[i]
        .server
        .clone()
        .unwrap_or_else(|| panic!("result {i}: {:?}", r.results[i]))
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
            display_name: String::new(),
            ..Default::default()
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

/// The set-up of the 500-server batch tests: 10 nodes of 55 × 512 MiB,
/// flavor `m1.small` (512 MiB), image `cirros`, network `net`
/// (10.50.0.0/22), created through `via`; returns once every coordinator
/// in `all` sees the 10 nodes alive. Returns each node's RAM capacity.
pub async fn batch_setup(etcd: &Etcd, via: &Channel, all: &[&Channel]) -> HashMap<NodeName, u64> {
    let mut caps = HashMap::new();
    for i in 0..10 {
        let n = format!("n{i}");
        register_node(etcd, &n, res(64, 55 * 512, 1000), "nova").await;
        caps.insert(NodeName::new(&n).unwrap(), 55 * 512);
    }
    let mut cl = clients_on(via.clone());
    setup_basics(&mut cl).await;
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: "net".into(),
            cidr: "10.50.0.0/22".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for ch in all {
        let mut nodes = pb::nodes_client::NodesClient::new((*ch).clone());
        let t = std::time::Instant::now();
        loop {
            let l = nodes
                .list(pb::ListRequest {
                    page_size: 100,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if l.nodes.iter().filter(|n| n.alive).count() == 10 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "nodes not visible");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    caps
}

pub async fn prefix(etcd: &Etcd, p: &str) -> Vec<(String, Vec<u8>)> {
    let store = etcd.store().await.unwrap();
    store
        .get(p, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
        .collect()
}

/// Writes the status the agent of `node` would write for `id`.
pub async fn report_status(
    etcd: &Etcd,
    id: &InstanceId,
    node: &str,
    state: nubo_common::model::InstanceState,
) {
    let status: nubo_common::model::InstanceStatus = serde_json::from_value(serde_json::json!({
        "state": state,
        "node": node,
        "updated_at": model::now(),
    }))
    .unwrap();
    let mut c = etcd.client().await.unwrap();
    c.put(
        keys::instance_status(&status.node, id),
        model::encode(&status),
        None,
    )
    .await
    .unwrap();
}

pub async fn get<T: serde::de::DeserializeOwned>(etcd: &Etcd, key: &str) -> Option<T> {
    let store = etcd.store().await.unwrap();
    let r = store.get(key, None).await.unwrap();
    r.kvs()
        .first()
        .map(|kv| model::decode(key, kv.value()).unwrap())
}

/// Every instance spec and assignment in etcd.
pub struct Snapshot {
    pub specs: HashMap<InstanceId, Instance>,
    pub assignments: Vec<(NodeName, InstanceId)>,
    pub ports: HashMap<nubo_common::PortId, Port>,
}

/// Asserts, at one etcd revision, that every placed instance's spec has
/// the copy its node reads (`/nubo/v1/hosts/<node>/instances/<id>`) with
/// the same value and mod revision, and that no other copy exists (a
/// moved or deleted instance leaves none behind). Returns how many copies
/// it compared.
pub async fn assert_node_copies(etcd: &Etcd) -> usize {
    let store = etcd.store().await.unwrap();
    let specs = store
        .get(
            keys::instances_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let rev = specs.header().unwrap().revision();
    let copies = store
        .get(
            keys::all_hosts_prefix(),
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await
        .unwrap();
    // Only spec copies: migration orders live under `hosts/<node>/` too.
    let mut copies: HashMap<String, (Vec<u8>, i64)> = copies
        .kvs()
        .iter()
        .filter(|kv| {
            matches!(
                keys::parse(kv.key_str().unwrap()),
                Some(keys::Key::NodeSpec(..))
            )
        })
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value().to_vec(), kv.mod_revision()),
            )
        })
        .collect();
    let mut compared = 0;
    for kv in specs.kvs() {
        let k = kv.key_str().unwrap();
        let Some(keys::Key::Instance(id)) = keys::parse(k) else {
            continue;
        };
        let inst: Instance = model::decode(k, kv.value()).unwrap();
        let Some(node) = inst.node else { continue };
        let ck = keys::node_spec(&node, &id);
        let copy = copies.remove(&ck);
        assert_eq!(
            copy,
            Some((kv.value().to_vec(), kv.mod_revision())),
            "the copy {ck} differs from the spec {k} at revision {rev}"
        );
        compared += 1;
    }
    assert!(
        copies.is_empty(),
        "copies without a spec on their node at revision {rev}: {:?}",
        copies.keys().collect::<Vec<_>>()
    );
    compared
}

pub async fn snapshot(etcd: &Etcd) -> Snapshot {
    assert_node_copies(etcd).await;
    let mut specs = HashMap::new();
    for (k, v) in prefix(etcd, &keys::instances_prefix()).await {
        if let Some(keys::Key::Instance(id)) = keys::parse(&k) {
            specs.insert(id, model::decode::<Instance>(&k, &v).unwrap());
        }
    }
    let assignments = prefix(etcd, &keys::all_assignments_prefix())
        .await
        .into_iter()
        .map(|(k, v)| {
            let a: Assignment = model::decode(&k, &v).unwrap();
            (a.node, a.instance)
        })
        .collect();
    let ports = prefix(etcd, &keys::ports_prefix())
        .await
        .into_iter()
        .map(|(k, v)| {
            let p: Port = model::decode(&k, &v).unwrap();
            (p.id, p)
        })
        .collect();
    Snapshot {
        specs,
        assignments,
        ports,
    }
}

/// Exactly-once placement, usage bookkeeping, capacity and unique IPs.
pub async fn check_invariants(etcd: &Etcd, capacity_ram: &HashMap<NodeName, u64>) -> Snapshot {
    let s = snapshot(etcd).await;
    let mut seen = HashSet::new();
    for (node, id) in &s.assignments {
        assert!(seen.insert(*id), "instance {id} assigned twice");
        let spec = s.specs.get(id).expect("assignment without spec");
        assert_eq!(
            spec.node.as_ref(),
            Some(node),
            "spec of {id} names another node"
        );
    }
    assert_eq!(seen.len(), s.specs.len(), "instances without assignment");
    let mut ram: HashMap<NodeName, (u64, u32)> = HashMap::new();
    for (node, id) in &s.assignments {
        let e = ram.entry(node.clone()).or_default();
        // What it holds: during a pending resize the larger size.
        e.0 += s.specs[id].reserved().ram_mb;
        e.1 += 1;
    }
    for (node, cap) in capacity_ram {
        let u: NodeUsage = get(etcd, &keys::node_usage(node)).await.unwrap_or_default();
        let (r, n) = ram.get(node).copied().unwrap_or_default();
        assert_eq!((u.used.ram_mb, u.instances), (r, n), "usage of {node}");
        assert!(r <= *cap, "{node} over capacity: {r} > {cap}");
    }
    let mut ips = HashSet::new();
    for p in s.ports.values() {
        assert!(
            ips.insert((p.network, p.ip)),
            "duplicate address {:?}",
            p.ip
        );
        if let Some(dev) = p.device {
            assert_eq!(
                p.node, s.specs[&dev].node,
                "port {} bound to another node",
                p.id
            );
        }
    }
    s
}

/// Request builders by reference (in the caller's project).
pub mod req {
    use nubo_common::proto as pb;

    /// Get by name or id.
    pub fn get(r: &str) -> pb::GetRequest {
        pb::GetRequest {
            r#ref: r.into(),
            project: String::new(),
        }
    }

    /// Delete by name or id.
    pub fn del(r: &str) -> pb::DeleteRequest {
        pb::DeleteRequest {
            r#ref: r.into(),
            project: String::new(),
        }
    }
}

/// Flavor `flavor` (1 vCPU, 128 MiB, 1 GiB) made with the admin token
/// `admin`, and image `cirros` made with `member`'s token in its project.
pub async fn flavor_and_image(ch: &Channel, admin: &str, flavor: &str, member: &str) {
    pb::flavors_client::FlavorsClient::new(ch.clone())
        .create(authed(
            admin,
            pb::CreateFlavorRequest {
                name: flavor.into(),
                vcpus: 1,
                ram_mb: 128,
                disk_gb: 1,
                display_name: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    pb::images_client::ImagesClient::new(ch.clone())
        .create(authed(
            member,
            pb::CreateImageRequest {
                name: "cirros".into(),
                disk_format: "qcow2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

/// A token-mode coordinator on `etcd`, bootstrapped with the cloud admin
/// `admin` (password `adminpw`), and for each `(user, project)` that
/// project with `user` (password `pw`) as its member.
pub async fn member_cloud(etcd: &Etcd, members: &[(&str, &str)]) -> Coordinator {
    member_cloud_with(etcd, members, |_| {}).await
}

/// [`member_cloud`] with its configuration changed by `edit` first.
pub async fn member_cloud_with(
    etcd: &Etcd,
    members: &[(&str, &str)],
    edit: impl FnOnce(&mut Config),
) -> Coordinator {
    let store = etcd.store().await.unwrap();
    let pw = nubo_identity::Passwords::with_params(64, 1, 1).unwrap();
    nubo_coordinator::api::bootstrap(
        &store,
        &model::UserName::new("admin").unwrap(),
        "adminpw",
        &pw,
    )
    .await
    .unwrap();
    let hash = pw.hash("pw").unwrap();
    for (user, project) in members {
        put_project(etcd, project).await;
        put_user(etcd, user, &hash, Some(project), model::Role::Member).await;
    }
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = nubo_coordinator::AuthMode::Token;
    edit(&mut cfg);
    nubo_coordinator::start(cfg).await.unwrap()
}
