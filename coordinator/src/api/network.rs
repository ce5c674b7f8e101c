//! Networks, ports, security groups and the IPAM reservations behind ports.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use etcd_client::{GetOptions, KeyValue, Txn};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, IpAllocation, Network, Port, QuotaUsage, SecurityGroup};
use nubo_common::proto::{self as pb, networks_server, ports_server, security_groups_server};
use nubo_common::{NetworkId, PortId, ProjectId, SecurityGroupId};
use rand::Rng;
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::validate;
use nubo_store::kv::{decode_or_skip, prefix_empty, put, unchanged, Versioned};
use nubo_store::{Guard, TxnBuilder};

type R<T> = Result<Response<T>, Status>;

/// Networks up to this many addresses have their taken set read before
/// picking (cheap, and avoids blind collisions on nearly full networks).
const SMALL_NETWORK: u64 = 4096;
/// Attempts at reserving an address / MAC before giving up.
pub(crate) const MAX_ALLOC_ATTEMPTS: usize = 64;

/// Addresses known to be taken on one network, for picking candidates.
#[derive(Debug)]
pub(crate) struct IpPool {
    pub(crate) net: Network,
    taken: HashSet<Ipv4Addr>,
    loaded: bool,
}

impl IpPool {
    pub(crate) fn new(net: Network) -> Self {
        Self {
            net,
            taken: HashSet::new(),
            loaded: false,
        }
    }

    /// Marks `ip` as taken (a reservation lost a race); small networks are
    /// re-read before the next pick.
    pub(crate) fn conflict(&mut self, ip: Ipv4Addr) {
        self.taken.insert(ip);
        if ipam::usable_count(self.net.cidr, self.net.gateway) <= SMALL_NETWORK {
            self.loaded = false;
        }
    }

    fn full(&self) -> ApiError {
        ApiError::ResourceExhausted(format!(
            "network {:?} is full: all {} addresses are in use",
            self.net.name,
            ipam::usable_count(self.net.cidr, self.net.gateway)
        ))
    }
}

/// Reserves a new port in `t`: its address and its MAC must be free (the
/// returned guards, in that order, tell which was taken when `t` fails),
/// and writes the port.
pub(crate) fn reserve_port(p: &Port, t: &mut TxnBuilder) -> (Guard, Guard) {
    let ip_key = keys::ipam(&p.network, IpAddr::V4(p.ip));
    let mac_key = keys::mac(&p.mac);
    let ip = t.absent(&ip_key);
    let mac = t.absent(&mac_key);
    t.put(
        &ip_key,
        &IpAllocation {
            port: p.id,
            ip: IpAddr::V4(p.ip),
        },
    );
    t.put(&mac_key, &p.id);
    t.put(&keys::port(&p.id), p);
    (ip, mac)
}

/// Deletes a port in `t` and releases its address, MAC and owner mark.
pub(crate) fn release_port(p: &Port, t: &mut TxnBuilder) {
    t.delete(&keys::port(&p.id));
    t.delete(&keys::ipam(&p.network, IpAddr::V4(p.ip)));
    t.delete(&keys::mac(&p.mac));
    t.delete(&keys::port_owner(&p.id));
}

impl Ctx {
    /// The current etcd revision.
    async fn revision(&self) -> ApiResult<i64> {
        let r = self
            .store
            .get(keys::election(), Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn load_taken(&self, net: &NetworkId) -> ApiResult<HashSet<Ipv4Addr>> {
        let prefix = keys::ipam_prefix(net);
        let mut taken = HashSet::new();
        let mut start = prefix.clone().into_bytes();
        let end = keys::prefix_end(&prefix);
        loop {
            let resp = self
                .store
                .get(
                    start.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_keys_only()
                            .with_limit(5000),
                    ),
                )
                .await?;
            for kv in resp.kvs() {
                let k = String::from_utf8_lossy(kv.key());
                if let Some(Ok(ip)) = k.strip_prefix(&prefix).map(str::parse::<Ipv4Addr>) {
                    taken.insert(ip);
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(taken),
            }
        }
    }

    /// Picks the next address to try on a network.
    pub(crate) async fn next_ip(&self, pool: &mut IpPool) -> ApiResult<Ipv4Addr> {
        let small = ipam::usable_count(pool.net.cidr, pool.net.gateway) <= SMALL_NETWORK;
        if small && !pool.loaded {
            pool.taken = self.load_taken(&pool.net.id).await?;
            pool.loaded = true;
        }
        loop {
            let pick = ipam::pick(
                pool.net.cidr,
                pool.net.gateway,
                &pool.taken,
                &mut rand::rng(),
            );
            match pick {
                Some(ip) => return Ok(ip),
                None if pool.loaded => return Err(pool.full()),
                None => {
                    pool.taken = self.load_taken(&pool.net.id).await?;
                    pool.loaded = true;
                }
            }
        }
    }

    pub(crate) async fn network(
        &self,
        project: &ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<Network>> {
        self.resolve(NameKind::Network, "network", project, r, |u| {
            keys::network(&NetworkId::from_uuid(u))
        })
        .await
    }

    async fn create_network(&self, r: pb::CreateNetworkRequest) -> ApiResult<pb::Network> {
        let project = validate::project(&r.project)?;
        validate::name("network", &r.name)?;
        let cidr = validate::cidr(&r.cidr)?;
        let gateway = validate::gateway(&r.gateway, cidr)?;
        let dns = validate::dns(&r.dns)?;
        let mtu = match r.mtu {
            0 => 0,
            m @ 576..=9000 => m as u16,
            m => {
                return Err(ApiError::InvalidArgument(format!(
                    "mtu {m} must be 0 (default) or 576-9000"
                )))
            }
        };
        let idx = keys::name_index(NameKind::Network, &project, &r.name);
        for _ in 0..16 {
            // The project's networks, read at a revision the txn then
            // compares against: a concurrent create forces a re-check.
            let rev = self.revision().await?;
            let existing = self
                .store
                .list_all(&keys::networks_prefix(), |kv| {
                    decode_or_skip::<Network>(kv)
                        .filter(|n| n.project == project)
                        .map(|n| (n.name, n.cidr))
                })
                .await?;
            if existing.iter().any(|(n, _)| *n == r.name) {
                return Err(ApiError::AlreadyExists(format!(
                    "network {:?} already exists in project {project}",
                    r.name
                )));
            }
            if let Some((name, other)) = validate::find_overlap(cidr, &existing) {
                return Err(ApiError::InvalidArgument(format!(
                    "network {cidr} overlaps network {name:?} ({other}) in project {project}"
                )));
            }
            let vni = rand::rng().random_range(1..16_000_000u32);
            let net = Network {
                id: NetworkId::new_random(),
                name: r.name.clone(),
                project: project.clone(),
                cidr,
                gateway,
                vni,
                mtu,
                dns: dns.clone(),
                created_at: model::now(),
            };
            let vkey = keys::vni(vni);
            let mut t = TxnBuilder::new();
            let name_free = t.absent(&idx);
            t.absent(&vkey);
            t.prefix_unchanged_since(&keys::networks_prefix(), rev);
            t.put(&idx, &net.id);
            t.put(&vkey, &net.id);
            t.put(&keys::network(&net.id), &net);
            let delta = QuotaUsage {
                networks: 1,
                ..Default::default()
            };
            self.quota_add(&mut t, &project, &delta).await?;
            let a = self.store.commit(&t).await?;
            if a.succeeded() {
                tracing::info!(network = %net.id, project = %project, %cidr, vni, "network created");
                return Ok(convert::network(&net));
            }
            if !a.held(name_free) {
                return Err(ApiError::AlreadyExists(format!(
                    "network {:?} already exists in project {project}",
                    r.name
                )));
            }
        }
        Err(ApiError::Unavailable(
            "too many concurrent network changes; retry".into(),
        ))
    }

    async fn delete_network(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        for attempt in 1..=16 {
            let net = self.network(&project, &r.r#ref).await?;
            let n = net.value;
            let key = keys::network(&n.id);
            let ipam_prefix = keys::ipam_prefix(&n.id);
            let mut t = TxnBuilder::new();
            t.unchanged(&key, net.mod_rev);
            t.when(prefix_empty(&ipam_prefix));
            t.delete(&key);
            t.delete(&keys::name_index(NameKind::Network, &project, &n.name));
            t.delete(&keys::vni(n.vni));
            let delta = QuotaUsage {
                networks: 1,
                ..Default::default()
            };
            let quota_on = self
                .quota_release(&mut t, &n.project, &delta)
                .await?
                .is_some();
            if self.store.commit(&t).await?.succeeded() {
                tracing::info!(network = %n.id, "network deleted");
                return Ok(pb::Empty {});
            }
            let used = self
                .store
                .get(
                    ipam_prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?
                .count();
            if used > 0 {
                return Err(ApiError::FailedPrecondition(format!(
                    "network {:?} still has {used} ports; delete them first",
                    n.name
                )));
            }
            // Without quotas, only the port check can fail; with them, a
            // concurrent usage change is retried.
            if !quota_on || attempt == 16 {
                break;
            }
        }
        Err(ApiError::Unavailable(
            "the network changed concurrently too often; retry".into(),
        ))
    }

    pub(crate) async fn port(&self, project: &ProjectId, r: &str) -> ApiResult<Versioned<Port>> {
        self.resolve_scan("port", project, r, &keys::ports_prefix(), |u| {
            keys::port(&PortId::from_uuid(u))
        })
        .await
    }

    async fn create_port(&self, r: pb::CreatePortRequest) -> ApiResult<pb::Port> {
        let project = validate::project(&r.project)?;
        if !r.name.is_empty() {
            validate::name("port", &r.name)?;
        }
        let net = self.network(&project, &r.network_ref).await?.value;
        let fixed = match r.ip.trim() {
            "" => None,
            s => {
                let ip: Ipv4Addr = s.parse().map_err(|_| {
                    ApiError::InvalidArgument(format!("ip {s} is not an IPv4 address"))
                })?;
                if !ipam::assignable(net.cidr, net.gateway, ip) {
                    return Err(ApiError::InvalidArgument(format!(
                        "ip {ip} is not an assignable address of network {:?} ({}, gateway {})",
                        net.name,
                        net.cidr,
                        net.gateway.map_or("none".to_string(), |g| g.to_string())
                    )));
                }
                Some(ip)
            }
        };
        let sgs = self.secgroups(&project, &r.security_groups).await?;
        let mut pool = IpPool::new(net);
        let mut port = Port {
            id: PortId::new_random(),
            name: r.name.clone(),
            project,
            network: pool.net.id,
            mac: ipam::random_mac(&mut rand::rng()),
            ip: Ipv4Addr::UNSPECIFIED,
            security_groups: sgs,
            port_security: !r.no_port_security,
            device: None,
            node: None,
            created_at: model::now(),
        };
        for _ in 0..MAX_ALLOC_ATTEMPTS {
            port.ip = match fixed {
                Some(ip) => ip,
                None => self.next_ip(&mut pool).await?,
            };
            let mut t = TxnBuilder::new();
            let (ip_free, mac_free) = reserve_port(&port, &mut t);
            let delta = QuotaUsage {
                ports: 1,
                ..Default::default()
            };
            self.quota_add(&mut t, &port.project, &delta).await?;
            let a = self.store.commit(&t).await?;
            if a.succeeded() {
                tracing::info!(port = %port.id, network = %port.network, ip = %port.ip, "port created");
                return Ok(convert::port(&port));
            }
            if !a.held(ip_free) {
                if fixed.is_some() {
                    return Err(ApiError::AlreadyExists(format!(
                        "address {} is already in use on network {:?}",
                        port.ip, pool.net.name
                    )));
                }
                pool.conflict(port.ip);
            }
            if !a.held(mac_free) {
                port.mac = ipam::random_mac(&mut rand::rng());
            }
        }
        Err(ApiError::Unavailable(format!(
            "could not reserve an address on network {:?} after {MAX_ALLOC_ATTEMPTS} attempts (heavy contention); retry",
            pool.net.name
        )))
    }

    async fn update_port(&self, r: pb::UpdatePortRequest) -> ApiResult<pb::Port> {
        let project = validate::project(&r.project)?;
        let sgs = self.secgroups(&project, &r.security_groups).await?;
        for _ in 0..8 {
            let mut p = self.port(&project, &r.r#ref).await?;
            p.value.security_groups = sgs.clone();
            let key = keys::port(&p.value.id);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, p.mod_rev)])
                        .and_then([put(&key, &p.value)]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(convert::port(&p.value));
            }
        }
        Err(ApiError::Unavailable(
            "the port changed concurrently too often; retry".into(),
        ))
    }

    async fn delete_port(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        for _ in 0..32 {
            let p = self.port(&project, &r.r#ref).await?;
            if let Some(dev) = p.value.device {
                return Err(ApiError::FailedPrecondition(format!(
                    "port {} is plugged into server {dev}; delete the server first",
                    p.value.id
                )));
            }
            let mut t = TxnBuilder::new();
            t.unchanged(&keys::port(&p.value.id), p.mod_rev);
            release_port(&p.value, &mut t);
            let delta = QuotaUsage {
                ports: 1,
                ..Default::default()
            };
            self.quota_release(&mut t, &p.value.project, &delta).await?;
            if self.store.commit(&t).await?.succeeded() {
                tracing::info!(port = %p.value.id, "port deleted");
                return Ok(pb::Empty {});
            }
        }
        Err(ApiError::Unavailable(
            "the port changed concurrently too often; retry".into(),
        ))
    }

    pub(crate) async fn secgroup(
        &self,
        project: &ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<SecurityGroup>> {
        self.resolve(NameKind::SecurityGroup, "security group", project, r, |u| {
            keys::secgroup(&SecurityGroupId::from_uuid(u))
        })
        .await
    }

    async fn create_secgroup(
        &self,
        r: pb::CreateSecurityGroupRequest,
    ) -> ApiResult<pb::SecurityGroup> {
        let project = validate::project(&r.project)?;
        validate::name("security group", &r.name)?;
        if r.description.len() > 255 {
            return Err(ApiError::InvalidArgument(
                "description is longer than 255 characters".into(),
            ));
        }
        let id = SecurityGroupId::new_random();
        let g = SecurityGroup {
            id,
            name: r.name.clone(),
            project: project.clone(),
            description: r.description.clone(),
            rules: if r.name == "default" {
                SecurityGroup::default_rules(id)
            } else {
                Vec::new()
            },
            created_at: model::now(),
        };
        let idx = keys::name_index(NameKind::SecurityGroup, &project, &g.name);
        // The project's "default" group (also created on first use) is free.
        let delta = QuotaUsage {
            security_groups: u64::from(g.name != "default"),
            ..Default::default()
        };
        for _ in 0..16 {
            let mut t = TxnBuilder::new();
            let name_free = t.absent(&idx);
            t.put(&idx, &id);
            t.put(&keys::secgroup(&id), &g);
            let quota_on = self.quota_add(&mut t, &project, &delta).await?.is_some();
            let a = self.store.commit(&t).await?;
            if a.succeeded() {
                return Ok(convert::secgroup(&g));
            }
            if !quota_on || !a.held(name_free) {
                return Err(ApiError::AlreadyExists(format!(
                    "security group {:?} already exists in project {project}",
                    g.name
                )));
            }
        }
        Err(ApiError::Unavailable(
            "the project's usage changed concurrently too often; retry".into(),
        ))
    }

    async fn delete_secgroup(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        for _ in 0..32 {
            let g = self.secgroup(&project, &r.r#ref).await?;
            let id = g.value.id;
            let rev = self.revision().await?;
            let users: Vec<PortId> = self
                .store
                .list_all(&keys::ports_prefix(), |kv: &KeyValue| {
                    decode_or_skip::<Port>(kv)
                        .filter(|p| p.security_groups.contains(&id))
                        .map(|p| p.id)
                })
                .await?;
            if let Some(first) = users.first() {
                return Err(ApiError::FailedPrecondition(format!(
                    "security group {:?} is used by port {first}{}; remove it from the ports first",
                    g.value.name,
                    match users.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    }
                )));
            }
            let key = keys::secgroup(&id);
            let mut t = TxnBuilder::new();
            t.unchanged(&key, g.mod_rev);
            t.prefix_unchanged_since(&keys::ports_prefix(), rev);
            t.delete(&key);
            t.delete(&keys::name_index(
                NameKind::SecurityGroup,
                &project,
                &g.value.name,
            ));
            let delta = QuotaUsage {
                security_groups: u64::from(g.value.name != "default"),
                ..Default::default()
            };
            self.quota_release(&mut t, &g.value.project, &delta).await?;
            if self.store.commit(&t).await?.succeeded() {
                return Ok(pb::Empty {});
            }
        }
        Err(ApiError::Unavailable(
            "ports changed concurrently too often; retry".into(),
        ))
    }

    async fn edit_rules(
        &self,
        project: &ProjectId,
        group_ref: &str,
        edit: impl Fn(&mut SecurityGroup) -> ApiResult<()>,
    ) -> ApiResult<pb::SecurityGroup> {
        for _ in 0..8 {
            let mut g = self.secgroup(project, group_ref).await?;
            edit(&mut g.value)?;
            let key = keys::secgroup(&g.value.id);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, g.mod_rev)])
                        .and_then([put(&key, &g.value)]),
                )
                .await?;
            if resp.succeeded() {
                return Ok(convert::secgroup(&g.value));
            }
        }
        Err(ApiError::Unavailable(
            "the security group changed concurrently too often; retry".into(),
        ))
    }

    async fn add_rule(&self, r: pb::AddRuleRequest) -> ApiResult<pb::SecurityGroup> {
        let project = validate::project(&r.project)?;
        let Some(rule) = r.rule.as_ref() else {
            return Err(ApiError::InvalidArgument("rule is required".into()));
        };
        let rule = convert::rule_from_proto(rule)?;
        if let model::Remote::Group(g) = &rule.remote {
            self.secgroup(&project, &g.to_string()).await?;
        }
        self.edit_rules(&project, &r.group_ref, |g| {
            let same = g.rules.iter().any(|x| {
                (x.direction, x.ethertype, x.protocol, x.ports, &x.remote)
                    == (
                        rule.direction,
                        rule.ethertype,
                        rule.protocol,
                        rule.ports,
                        &rule.remote,
                    )
            });
            if same {
                return Err(ApiError::AlreadyExists(format!(
                    "security group {:?} already has this rule",
                    g.name
                )));
            }
            g.rules.push(rule.clone());
            Ok(())
        })
        .await
    }

    async fn delete_rule(&self, r: pb::DeleteRuleRequest) -> ApiResult<pb::SecurityGroup> {
        let project = validate::project(&r.project)?;
        let id: nubo_common::RuleId = r.rule_id.trim().parse()?;
        self.edit_rules(&project, &r.group_ref, |g| {
            let before = g.rules.len();
            g.rules.retain(|x| x.id != id);
            if g.rules.len() == before {
                return Err(ApiError::NotFound(format!(
                    "rule {id} not found in security group {:?}",
                    g.name
                )));
            }
            Ok(())
        })
        .await
    }
}

#[tonic::async_trait]
impl networks_server::Networks for Ctx {
    async fn create(&self, r: Request<pb::CreateNetworkRequest>) -> R<pb::Network> {
        reply(self.create_network(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Network> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::network(&self.network(&p, &r.r#ref).await?.value))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListNetworksResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::networks_prefix(), &r, convert::network)
            .await;
        reply(
            page.map(|(networks, next_page_token)| pb::ListNetworksResponse {
                networks,
                next_page_token,
            }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_network(r.into_inner()).await)
    }
}

#[tonic::async_trait]
impl ports_server::Ports for Ctx {
    async fn create(&self, r: Request<pb::CreatePortRequest>) -> R<pb::Port> {
        reply(self.create_port(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::port(&self.port(&p, &r.r#ref).await?.value))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListPortsResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::ports_prefix(), &r, convert::port)
            .await;
        reply(page.map(|(ports, next_page_token)| pb::ListPortsResponse {
            ports,
            next_page_token,
        }))
    }
    async fn update(&self, r: Request<pb::UpdatePortRequest>) -> R<pb::Port> {
        reply(self.update_port(r.into_inner()).await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_port(r.into_inner()).await)
    }
}

#[tonic::async_trait]
impl security_groups_server::SecurityGroups for Ctx {
    async fn create(&self, r: Request<pb::CreateSecurityGroupRequest>) -> R<pb::SecurityGroup> {
        reply(self.create_secgroup(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::SecurityGroup> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::secgroup(&self.secgroup(&p, &r.r#ref).await?.value))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListSecurityGroupsResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::secgroups_prefix(), &r, convert::secgroup)
            .await;
        reply(page.map(
            |(security_groups, next_page_token)| pb::ListSecurityGroupsResponse {
                security_groups,
                next_page_token,
            },
        ))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_secgroup(r.into_inner()).await)
    }
    async fn add_rule(&self, r: Request<pb::AddRuleRequest>) -> R<pb::SecurityGroup> {
        reply(self.add_rule(r.into_inner()).await)
    }
    async fn delete_rule(&self, r: Request<pb::DeleteRuleRequest>) -> R<pb::SecurityGroup> {
        reply(self.delete_rule(r.into_inner()).await)
    }
}
