//! Creating servers: a batch is validated and resolved once (the plan,
//! from the watch-fed cache, re-made from etcd when it went stale), then
//! each server is placed by the placement engine ([`crate::placement`]).
//!
//! Creating one server is ONE etcd transaction that reserves its addresses
//! and MACs, creates its ports, plugs pre-existing ports, bumps the node's
//! usage (compare on the usage key's mod_revision) and writes the
//! assignment and the spec. A failed compare leaves nothing behind; the
//! transaction's guards tell which reservation lost, and only that is
//! retried. With a client token, a retried request returns the servers an
//! earlier attempt created.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{
    self, Assignment, EvacuationPolicy, Flavor, Image, Instance, Keypair, Network, NodeUsage, Port,
    PowerState, SecurityGroup, ServerGroup, Volume,
};
use nubo_common::{
    FlavorName, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId, SecurityGroupId,
    ServerGroupId,
};
use nubo_store::kv::{decode_kv, decode_or_skip, kv_key};
use nubo_store::{Answer, Guard, TxnBuilder, Versioned};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::lookup::Owned;
use super::ports::{reserve_port, IpPool};
use super::servers::{quota_delta, ServerView};
use super::{quotas, server_volumes};
use crate::cache::FromCached;
use crate::error::{ApiError, ApiResult};
use crate::placement::{
    Chosen, GroupConstraint, HostHints, Job, Limits, Request as PlaceRequest, Reservation, Retry,
    Target,
};
use crate::state::Ctx;
use crate::validate;

/// A request to create servers.
#[derive(Debug, Clone)]
pub struct NewServers {
    /// Their name (`<name>-<n>` each when `count` > 1).
    pub name: String,
    /// Their project.
    pub project: ProjectId,
    /// Flavor name.
    pub flavor: String,
    /// Image (id or name; empty with a boot volume made from an image).
    pub image_ref: String,
    /// Networks (ids or names) to create one port on each, in order.
    pub networks: Vec<String>,
    /// Existing ports (ids or names) to plug after those (count 1).
    pub ports: Vec<String>,
    /// Security groups of the new ports (empty: the project's default).
    pub security_groups: Vec<String>,
    /// Keypair name (empty: none).
    pub key_name: String,
    /// User data for cloud-init (at most 64 KiB).
    pub user_data: Vec<u8>,
    /// How many (0 = 1).
    pub count: u32,
    /// At least this many must be created, else those created are deleted
    /// again and the first failure is returned (0: no minimum).
    pub min_count: u32,
    /// Required availability zone (empty: any).
    pub availability_zone: String,
    /// Server group (id or name; empty: none).
    pub server_group: String,
    /// Created powered off.
    pub stopped: bool,
    /// `auto`, `manual` or `never` (empty: auto).
    pub evacuation_policy: String,
    /// Idempotency token (empty: none).
    pub client_token: String,
    /// Existing volumes attached at create (count 1).
    pub volumes: Vec<String>,
    /// Existing volume to boot from (count 1).
    pub boot_volume: String,
    /// Boot from a new volume of this many GiB cloned from the image.
    pub boot_from_volume_size_gb: u64,
    /// Delete the attached volumes with the server.
    pub delete_on_termination: bool,
    /// User key/value metadata (within
    /// [`nubo_common::model::check_server_metadata`]).
    pub metadata: BTreeMap<String, String>,
    /// IPv4 access address (informational; empty: none).
    pub access_ipv4: String,
    /// IPv6 access address (informational; empty: none).
    pub access_ipv6: String,
    /// Scheduler hint `same_host`: servers (ids or names) one of whose
    /// nodes each new server goes to.
    pub same_host: Vec<String>,
    /// Scheduler hint `different_host`: servers whose nodes the new
    /// servers avoid.
    pub different_host: Vec<String>,
}

/// The outcome of one server of a create request.
#[derive(Debug)]
pub struct Created {
    /// Its launch index.
    pub index: u32,
    /// The server, or why it was not created.
    pub result: ApiResult<ServerView>,
}

/// Largest `count` of one create call.
pub const MAX_BATCH: u32 = 1000;

/// Servers of one batch placed concurrently.
const BATCH_CONCURRENCY: usize = 16;

/// Placement transactions tried for one server before giving up.
const MAX_PLACE_ATTEMPTS: usize = 64;

/// Bound on placement rounds including those lost to this coordinator's
/// own concurrent placements on the same node.
const MAX_PLACE_ROUNDS: usize = MAX_PLACE_ATTEMPTS + MAX_BATCH as usize;

/// The best candidates among which one is chosen at random.
const TOP_K: usize = 16;

/// Largest accepted user data.
const MAX_USER_DATA: usize = 64 * 1024;

/// A validated create request, shared by the servers of a batch.
struct Plan {
    project: ProjectId,
    name: String,
    count: u32,
    flavor: Flavor,
    image: ImageId,
    networks: Vec<Network>,
    existing_ports: Vec<Versioned<Port>>,
    security_groups: Vec<SecurityGroupId>,
    /// The names of `security_groups` (for the created servers' views).
    security_group_names: Vec<(SecurityGroupId, String)>,
    key_name: Option<String>,
    user_data_b64: Option<String>,
    metadata: BTreeMap<String, String>,
    access_ipv4: Option<Ipv4Addr>,
    access_ipv6: Option<std::net::Ipv6Addr>,
    availability_zone: Option<String>,
    group: Option<ServerGroup>,
    /// The nodes of the `same_host` servers (`None`: no such hint).
    same_host: Option<HashSet<NodeName>>,
    /// The nodes of the `different_host` servers.
    different_host: Option<HashSet<NodeName>>,
    power: PowerState,
    evacuation: EvacuationPolicy,
    /// Volumes attached at create / the boot volume (see `server_volumes`).
    vols: server_volumes::ServerVolumes,
    /// Every key the plan was decided from, with the mod_revision read
    /// (cache or etcd); each placement transaction compares them all, so a
    /// stale read can fail a placement but never commit one.
    deps: Vec<(String, i64)>,
}

/// Where [`plan`] reads flavors, images, networks, groups and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The watch-fed cache, falling back to etcd on a miss.
    Cache,
    /// etcd only.
    Etcd,
}

/// How one server's placement ended (errors aside).
enum Placed {
    /// Created and placed.
    Server(Box<ServerView>),
    /// Something the plan was decided from changed: re-plan from etcd.
    StalePlan,
    /// A concurrent request with the same client token created it.
    Existing(InstanceId),
}

/// Re-plans (from etcd) of one server whose plan went stale.
const MAX_REPLANS: usize = 4;

impl Plan {
    fn net_names(&self) -> HashMap<NetworkId, String> {
        self.networks
            .iter()
            .map(|n| (n.id, n.name.clone()))
            .collect()
    }
}

/// One server's placement (a [`Job`] of the placement engine): ONE
/// transaction that reserves its addresses and MACs, creates its ports,
/// plugs pre-existing ports, writes the assignment and the spec, counts it
/// in the project's quota and, with a client token, records its index.
/// When a compare fails, its guards tell which reservation lost, and only
/// that is retried.
struct CreateJob<'a> {
    ctx: &'a Ctx,
    plan: &'a Plan,
    id: InstanceId,
    index: u32,
    token: Option<&'a str>,
    name: String,
    now: chrono::DateTime<chrono::Utc>,
    pools: Vec<IpPool>,
    new_ports: Vec<Port>,
    need_ip: Vec<bool>,
    existing: Vec<Versioned<Port>>,
    /// Nodes holding members of the server group, and the revision read.
    members: Option<(HashSet<NodeName>, i64)>,
    /// The project's limits (quotas on).
    quota: Option<nubo_common::model::Quota>,
    qdelta: nubo_identity::QuotaDelta,
    /// This attempt's quota usage: its revision and the value to write.
    quota_step: Option<(i64, nubo_common::model::QuotaUsage)>,
    /// This attempt's guards.
    guards: Option<CreateGuards>,
    /// The spec of this attempt.
    inst: Option<Instance>,
}

/// The guards of one creation attempt, by what they protect.
struct CreateGuards {
    /// Per new port: its address and its MAC are free.
    ports: Vec<(Option<Guard>, Guard)>,
    /// Per plugged port: unchanged since read.
    existing: Vec<Guard>,
    /// No member joined the server group since read.
    group: Option<Guard>,
    /// No other request with this token created this index.
    token: Option<Guard>,
    /// Everything the plan was decided from is unchanged.
    deps: Vec<Guard>,
    /// The project's quota usage is unchanged.
    quota: Option<Guard>,
}

impl<'a> CreateJob<'a> {
    async fn new(
        ctx: &'a Ctx,
        plan: &'a Plan,
        id: InstanceId,
        index: u32,
        token: Option<&'a str>,
    ) -> ApiResult<Self> {
        let name = if plan.count > 1 {
            format!("{}-{}", plan.name, index + 1)
        } else {
            plan.name.clone()
        };
        let now = model::now();
        let pools = plan
            .networks
            .iter()
            .cloned()
            .map(IpPool::new)
            .collect::<ApiResult<Vec<IpPool>>>()?;
        let new_ports: Vec<Port> = plan
            .networks
            .iter()
            .map(|n| Port {
                id: PortId::new_random(),
                name: String::new(),
                description: String::new(),
                admin_state_up: true,
                project: plan.project.clone(),
                network: n.id,
                mac: crate::ipam::random_mac(&mut rand::rng()),
                ip: None,
                more_ips: Vec::new(),
                security_groups: plan.security_groups.clone(),
                port_security: true,
                device: Some(id),
                node: None,
                router: None,
                host: None,
                created_at: now,
            })
            .collect();
        let members = match &plan.group {
            Some(g) => Some(group_members(ctx, g).await?),
            None => None,
        };
        // Quotas (auth = "token"): the project's usage is compared and
        // written in the placement transaction itself.
        let quota = if super::quotas::enforced(ctx) {
            Some(super::quotas::limit(ctx, &plan.project).await?)
        } else {
            None
        };
        let mut qdelta = quota_delta(&plan.flavor.resources);
        qdelta.ports = new_ports.len() as u64;
        Ok(Self {
            ctx,
            plan,
            id,
            index,
            token,
            name,
            now,
            pools,
            need_ip: vec![true; new_ports.len()],
            new_ports,
            existing: plan.existing_ports.clone(),
            members,
            quota,
            qdelta,
            quota_step: None,
            guards: None,
            inst: None,
        })
    }
}

impl Job for CreateJob<'_> {
    type Output = Placed;

    async fn prepare(&mut self) -> ApiResult<Option<Placed>> {
        for (j, p) in self.new_ports.iter_mut().enumerate() {
            if self.need_ip[j] {
                p.ip = Some(super::ports::next_ip(self.ctx, &mut self.pools[j]).await?);
                self.need_ip[j] = false;
            }
        }
        self.quota_step = match &self.quota {
            Some(limit) => {
                let (usage, qrev) = super::quotas::usage(self.ctx, &self.plan.project).await?;
                let new =
                    nubo_identity::check_quota(&self.plan.project, limit, &usage, &self.qdelta)
                        .map_err(|e| ApiError::ResourceExhausted(e.to_string()))?;
                Some((qrev, new))
            }
            None => None,
        };
        Ok(None)
    }

    fn target(&self) -> ApiResult<Target<'_>> {
        let plan = self.plan;
        Ok(Target::Scheduled {
            request: PlaceRequest {
                resources: plan.flavor.resources,
                availability_zone: plan.availability_zone.as_deref(),
                group: match (&plan.group, &self.members) {
                    (Some(g), Some((m, _))) => Some(GroupConstraint {
                        policy: g.policy,
                        member_nodes: m,
                    }),
                    _ => None,
                },
                hosts: HostHints {
                    same: plan.same_host.as_ref(),
                    different: plan.different_host.as_ref(),
                },
            },
            avoid: None,
        })
    }

    fn build(&mut self, at: &Chosen, t: &mut TxnBuilder) -> ApiResult<Reservation> {
        let (plan, id, node) = (self.plan, self.id, &at.node);
        let inst = Instance {
            id,
            name: self.name.clone(),
            project: plan.project.clone(),
            flavor: plan.flavor.name.clone(),
            resources: plan.flavor.resources,
            image: plan.image,
            ports: self
                .new_ports
                .iter()
                .map(|p| p.id)
                .chain(self.existing.iter().map(|p| p.value.id))
                .collect(),
            key_name: plan.key_name.clone(),
            user_data_b64: plan.user_data_b64.clone(),
            power: plan.power,
            reboot_generation: 0,
            availability_zone: plan.availability_zone.clone(),
            server_group: plan.group.as_ref().map(|g| g.id),
            node: Some(node.clone()),
            launch_index: self.index,
            evacuation: plan.evacuation,
            volumes: plan.vols.attachments().0,
            boot_volume: plan.vols.attachments().1,
            metadata: plan.metadata.clone(),
            access_ipv4: plan.access_ipv4,
            access_ipv6: plan.access_ipv6,
            locked: None,
            resize: None,
            error_mark: None,
            rebuild_generation: 0,
            created_at: self.now,
            updated_at: None,
        };
        let ikey = keys::instance(&id);
        // A fresh id: never there (no failure read needed).
        t.when(nubo_store::kv::absent(&ikey));
        t.put(
            &keys::assignment(node, &id),
            &Assignment {
                instance: id,
                node: node.clone(),
                assigned_at: self.now,
            },
        );
        super::specs::put_into(t, &inst);
        super::instance_actions::record_into(t, &inst, "create");
        let mut contended = Vec::new();
        plan.vols.attach_ops(id, t, &mut contended);
        let mut ports = Vec::with_capacity(self.new_ports.len());
        for p in self.new_ports.iter_mut() {
            p.node = Some(node.clone());
            ports.push(reserve_port(p, t));
            t.put(&keys::port_owner(&p.id), &id);
            if let Some(ip) = p.ip {
                contended.push(keys::ipam(&p.network, IpAddr::V4(ip)));
            }
            contended.push(keys::mac(&p.mac));
        }
        let mut existing = Vec::with_capacity(self.existing.len());
        for p in &self.existing {
            let key = keys::port(&p.value.id);
            super::ports::check_pluggable_on(&p.value, Some(node))?;
            let mut plugged = p.value.clone();
            plugged.device = Some(id);
            plugged.node = Some(node.clone());
            // Plugged, its binding follows the server.
            plugged.host = None;
            existing.push(t.unchanged_read(&key, p.mod_rev));
            t.put(&key, &plugged);
            contended.push(key);
        }
        let group = match (&plan.group, &self.members) {
            (Some(g), Some((_, rev))) => {
                let guard =
                    t.prefix_unchanged_since(&keys::server_group_members_prefix(&g.id), *rev);
                t.put(&keys::server_group_member(&g.id, &id), node);
                Some(guard)
            }
            _ => None,
        };
        let token = self.token.map(|tok| {
            let tkey = keys::client_token(&plan.project, tok, self.index);
            let guard = t.absent(&tkey);
            t.put(&tkey, &id);
            contended.push(tkey);
            guard
        });
        let deps = plan
            .deps
            .iter()
            .map(|(key, rev)| t.depends_on(key, *rev))
            .collect();
        let quota = self.quota_step.as_ref().map(|(qrev, new)| {
            // Like a node's usage: two placements of one project are never
            // merged into one transaction.
            contended.push(keys::quota_usage(&plan.project));
            quotas::reserve(t, &plan.project, *qrev, new)
        });
        self.guards = Some(CreateGuards {
            ports,
            existing,
            group,
            token,
            deps,
            quota,
        });
        self.inst = Some(inst);
        Ok(Reservation {
            usage: NodeUsage {
                used: at.usage.used.saturating_add(plan.flavor.resources),
                instances: at.usage.instances.saturating_add(1),
            },
            contended,
            mergeable: plan.group.is_none(),
            // The spec carries the user data and the metadata (at most
            // 128 items of 2 x 255 characters); the rest is small.
            // The spec and its node's copy.
            bytes: 4096
                + 2 * (plan.user_data_b64.as_ref().map_or(0, String::len)
                    + plan
                        .metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()),
        })
    }

    async fn committed(&mut self, at: &Chosen, _revision: i64) -> ApiResult<Placed> {
        let inst = self
            .inst
            .take()
            .ok_or_else(|| ApiError::Unavailable("placement lost its spec".into()))?;
        tracing::info!(instance = %self.id, node = %at.node, "server placed");
        let mut ports = std::mem::take(&mut self.new_ports);
        ports.extend(std::mem::take(&mut self.existing).into_iter().map(|p| {
            let mut v = p.value;
            v.device = Some(self.id);
            v.node = Some(at.node.clone());
            v
        }));
        let security_groups = {
            // The groups of its ports whose names the plan knows (those
            // it gave new ports; a passed port's other groups show on
            // the next read).
            let mut out: Vec<(SecurityGroupId, String)> = Vec::new();
            for g in ports.iter().flat_map(|p| p.security_groups.iter()) {
                let known = self.plan.security_group_names.iter().find(|(x, _)| x == g);
                if let Some(k) = known.filter(|_| !out.iter().any(|(x, _)| x == g)) {
                    out.push(k.clone());
                }
            }
            out
        };
        Ok(Placed::Server(Box::new(ServerView {
            instance: inst,
            status: None,
            ports,
            network_names: self.plan.net_names(),
            floating_ips: Default::default(),
            security_groups,
            deleted_at: None,
        })))
    }

    fn failed(&mut self, _at: &Chosen, a: &Answer, node_lost: bool) -> ApiResult<Retry<Placed>> {
        let Some(g) = self.guards.take() else {
            return Ok(Retry::Again);
        };
        if let Some(kv) = g.token.and_then(|t| a.current(t)) {
            let other: InstanceId = decode_kv(kv)?;
            return Ok(Retry::Done(Placed::Existing(other)));
        }
        if g.deps.iter().any(|d| !a.held(*d)) {
            return Ok(Retry::Done(Placed::StalePlan));
        }
        for (j, (p, (ip, mac))) in self.new_ports.iter_mut().zip(&g.ports).enumerate() {
            if let (Some(guard), Some(taken)) = (ip.as_ref(), p.ip) {
                if !a.held(*guard) {
                    self.pools[j].conflict(taken);
                    self.need_ip[j] = true;
                }
            }
            if !a.held(*mac) {
                p.mac = crate::ipam::random_mac(&mut rand::rng());
            }
        }
        for (p, guard) in self.existing.iter_mut().zip(&g.existing) {
            let Some(kv) = a.current(*guard) else {
                return Err(ApiError::NotFound(format!(
                    "port {} was deleted meanwhile",
                    p.value.id
                )));
            };
            if !a.held(*guard) {
                let fresh: Port = decode_kv(kv)?;
                if let Some(dev) = fresh.device {
                    return Err(ApiError::FailedPrecondition(format!(
                        "port {} is already plugged into server {dev}",
                        fresh.id
                    )));
                }
                *p = Versioned {
                    value: fresh,
                    mod_rev: kv.mod_revision(),
                };
            }
        }
        if let (Some((set, rev)), Some(guard)) = (self.members.as_mut(), g.group) {
            *set = a
                .current_all(guard)
                .iter()
                .filter_map(decode_or_skip::<NodeName>)
                .collect();
            *rev = a.revision();
        }
        let quota_lost = g.quota.is_some_and(|q| !a.held(q));
        Ok(if quota_lost && !node_lost {
            // Another placement of the project progressed: not contention.
            Retry::AgainFree
        } else {
            Retry::Again
        })
    }

    fn contention(&self) -> ApiError {
        ApiError::Unavailable(format!(
            "could not place the server after {MAX_PLACE_ATTEMPTS} attempts because of contention; retry"
        ))
    }
}

/// Reads `key` from the cache (when `src` allows and it is there) or
/// from etcd, and records the revision it was read at in `deps`.
async fn fetch<T: FromCached + DeserializeOwned>(
    ctx: &Ctx,
    key: &str,
    src: Source,
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Option<Arc<T>>> {
    if src == Source::Cache {
        if let Some((v, rev)) = ctx.cache.get::<T>(key) {
            deps.push((key.to_string(), rev));
            return Ok(Some(v));
        }
    }
    Ok(match ctx.store.read::<T>(key).await? {
        Some(v) => {
            deps.push((key.to_string(), v.mod_rev));
            Some(Arc::new(v.value))
        }
        None => None,
    })
}

/// [`super::lookup::resolve`] through [`fetch`].
async fn resolve_dep<T: FromCached + DeserializeOwned + Owned>(
    ctx: &Ctx,
    kind: NameKind,
    project: &ProjectId,
    r: &str,
    key_of: impl Fn(uuid::Uuid) -> String,
    src: Source,
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Arc<T>> {
    use super::lookup::{not_found, reference, Reference};
    let key = match reference(kind, project, r, &key_of)? {
        Reference::Key(key) => key,
        Reference::NameIndex(idx) => match fetch::<uuid::Uuid>(ctx, &idx, src, deps).await? {
            Some(id) => key_of(*id),
            None => return Err(not_found(kind, project, r)),
        },
    };
    match fetch::<T>(ctx, &key, src, deps).await? {
        Some(v) if v.project() == project => Ok(v),
        _ => Err(not_found(kind, project, r)),
    }
}

/// The image `r` a server of `project` boots from, through [`fetch`]:
/// the project's own, else another project's by id when it may use it
/// (see `lookup::usable_image`). A deactivated image boots nothing.
async fn image_dep(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    src: Source,
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Arc<Image>> {
    let key_of = |u: uuid::Uuid| keys::image(&ImageId::from_uuid(u));
    let image: Arc<Image> =
        match resolve_dep(ctx, NameKind::Image, project, r, key_of, src, deps).await {
            Err(err @ ApiError::NotFound(_)) => {
                let Ok(u) = uuid::Uuid::parse_str(r.trim()) else {
                    return Err(err);
                };
                match fetch::<Image>(ctx, &key_of(u), src, deps).await? {
                    Some(i) if super::lookup::may_use(&i, project) => i,
                    _ => return Err(err),
                }
            }
            other => other?,
        };
    if image.attrs.deactivated {
        return Err(ApiError::InvalidArgument(format!(
            "image {} is deactivated: no server boots from it until it is reactivated",
            image.id
        )));
    }
    Ok(image)
}

/// The network `r` a server of `project` is plugged into, through
/// [`fetch`]: the project's own, else a shared network (by id, or by its
/// name among shared networks; see `lookup::usable_network`).
async fn network_dep(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    src: Source,
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Arc<Network>> {
    let key_of = |u: uuid::Uuid| keys::network(&NetworkId::from_uuid(u));
    let err = match resolve_dep(ctx, NameKind::Network, project, r, key_of, src, deps).await {
        Err(e @ ApiError::NotFound(_)) => e,
        other => return other,
    };
    use super::lookup::{reference, Reference};
    let key = match reference(NameKind::Network, project, r, key_of)? {
        Reference::Key(key) => key,
        Reference::NameIndex(_) => {
            let idx = keys::shared_network_name(r.trim());
            match fetch::<uuid::Uuid>(ctx, &idx, src, deps).await? {
                Some(id) => key_of(*id),
                None => return Err(err),
            }
        }
    };
    match fetch::<Network>(ctx, &key, src, deps).await? {
        Some(n) if n.shared => Ok(n),
        _ => Err(err),
    }
}

/// The security groups of new ports, through [`fetch`] (empty refs
/// = the project's default group, created on first use).
async fn secgroups_dep(
    ctx: &Ctx,
    project: &ProjectId,
    refs: &[String],
    src: Source,
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Vec<(SecurityGroupId, String)>> {
    let default = |id: uuid::Uuid| vec![(SecurityGroupId::from_uuid(id), "default".to_string())];
    if refs.is_empty() {
        let idx = keys::name_index(NameKind::SecurityGroup, project, "default");
        if let Some(id) = fetch::<uuid::Uuid>(ctx, &idx, src, deps).await? {
            return Ok(default(*id));
        }
        super::security_groups::default_secgroup(ctx, project).await?;
        return match fetch::<uuid::Uuid>(ctx, &idx, Source::Etcd, deps).await? {
            Some(id) => Ok(default(*id)),
            None => Err(ApiError::Unavailable(
                "the default security group was deleted while being created; retry".into(),
            )),
        };
    }
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let g: Arc<SecurityGroup> = resolve_dep(
            ctx,
            NameKind::SecurityGroup,
            project,
            r,
            |u| keys::secgroup(&SecurityGroupId::from_uuid(u)),
            src,
            deps,
        )
        .await?;
        if !out.iter().any(|(id, _)| *id == g.id) {
            out.push((g.id, g.name.clone()));
        }
    }
    Ok(out)
}

/// Validates a create request and resolves everything it references.
/// With [`Source::Cache`] an error is never trusted: the plan is made
/// again from etcd, so every error the caller sees is authoritative.
async fn plan(ctx: &Ctx, r: &NewServers) -> ApiResult<Plan> {
    match plan_from(ctx, r, Source::Cache).await {
        Ok(p) => Ok(p),
        Err(_) => plan_from(ctx, r, Source::Etcd).await,
    }
}

async fn plan_from(ctx: &Ctx, r: &NewServers, src: Source) -> ApiResult<Plan> {
    let mut deps = Vec::new();
    let project = r.project.clone();
    validate::server_name(&r.name)?;
    let count = if r.count == 0 { 1 } else { r.count };
    if count > MAX_BATCH {
        return Err(ApiError::InvalidArgument(format!(
            "count {count} is larger than the maximum of {MAX_BATCH} servers per request"
        )));
    }
    if count > 1 && !r.ports.is_empty() {
        return Err(ApiError::InvalidArgument(
            "existing ports can only be plugged when count is 1".into(),
        ));
    }
    let vols = server_volumes::server_volumes(
        ctx,
        &project,
        &r.boot_volume,
        &r.volumes,
        r.delete_on_termination,
        count,
    )
    .await?;
    deps.extend(vols.deps());
    // Booting from a volume made from an image: that image by default.
    let image_ref = match (&vols.boot, r.image_ref.trim()) {
        (Some(b), "") => b.value.source_image.map(|i| i.to_string()).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "boot volume {:?} was not made from an image; name the image it holds",
                b.value.name
            ))
        })?,
        _ => r.image_ref.clone(),
    };
    let flavor_name =
        FlavorName::new(r.flavor.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    let flavor: Arc<Flavor> = fetch(ctx, &keys::flavor(&flavor_name), src, &mut deps)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("flavor {:?} not found", flavor_name.as_str()))
        })?;
    super::flavors::ensure_usable(&flavor, &project)?;
    let image = image_dep(ctx, &project, &image_ref, src, &mut deps).await?;
    // The root disk is the boot volume when there is one.
    let disk_gb = vols
        .boot
        .as_ref()
        .map_or(flavor.resources.disk_gb, |b| b.value.size_gb);
    if image.min_ram_mb > flavor.resources.ram_mb || image.min_disk_gb > disk_gb {
        return Err(ApiError::InvalidArgument(format!(
            "image {:?} needs at least {} MiB RAM and {} GiB disk; flavor {} has {} MiB and {} GiB",
            image.name,
            image.min_ram_mb,
            image.min_disk_gb,
            flavor.name,
            flavor.resources.ram_mb,
            flavor.resources.disk_gb
        )));
    }
    let mut networks = Vec::with_capacity(r.networks.len());
    for n in &r.networks {
        let net = network_dep(ctx, &project, n, src, &mut deps).await?;
        super::networks::subnet_of(&net)?;
        networks.push(Network::clone(&net));
    }
    let mut existing_ports: Vec<Versioned<Port>> = Vec::with_capacity(r.ports.len());
    for p in &r.ports {
        let port = super::lookup::port(ctx, &project, p).await?;
        super::ports::check_pluggable(&port.value)?;
        if existing_ports.iter().any(|e| e.value.id == port.value.id) {
            return Err(ApiError::InvalidArgument(format!(
                "port {} is listed twice",
                port.value.id
            )));
        }
        existing_ports.push(port);
    }
    let security_group_names = if networks.is_empty() {
        Vec::new()
    } else {
        secgroups_dep(ctx, &project, &r.security_groups, src, &mut deps).await?
    };
    let security_groups = security_group_names.iter().map(|(id, _)| *id).collect();
    let key_name = match r.key_name.trim() {
        "" => None,
        k => {
            validate::name("keypair", k)?;
            let kp: Arc<Keypair> = fetch(ctx, &keys::keypair(&project, k), src, &mut deps)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("keypair {k:?} not found in project {project}"))
                })?;
            Some(kp.name.clone())
        }
    };
    if r.user_data.len() > MAX_USER_DATA {
        return Err(ApiError::InvalidArgument(format!(
            "user_data is {} bytes; the limit is {MAX_USER_DATA}",
            r.user_data.len()
        )));
    }
    let user_data_b64 = (!r.user_data.is_empty())
        .then(|| base64::engine::general_purpose::STANDARD.encode(&r.user_data));
    validate::metadata(&r.metadata)?;
    let access_ipv4 = super::servers::access_ip("IPv4", &r.access_ipv4)?;
    let access_ipv6 = super::servers::access_ip("IPv6", &r.access_ipv6)?;
    let group = match r.server_group.trim() {
        "" => None,
        g => {
            // A name (not unique) is resolved to an id by a scan first.
            let id = match uuid::Uuid::parse_str(g) {
                Ok(_) => g.to_string(),
                Err(_) => super::lookup::server_group(ctx, &project, g)
                    .await?
                    .value
                    .id
                    .to_string(),
            };
            let g: Arc<ServerGroup> = resolve_dep(
                ctx,
                NameKind::ServerGroup,
                &project,
                &id,
                |u| keys::server_group(&ServerGroupId::from_uuid(u)),
                src,
                &mut deps,
            )
            .await?;
            Some(ServerGroup::clone(&g))
        }
    };
    let same_host = hint_nodes(ctx, &project, "same_host", &r.same_host, &mut deps).await?;
    let same_host = narrow_to_bound_host(same_host, bound_host(&existing_ports)?)?;
    let different_host = hint_nodes(
        ctx,
        &project,
        "different_host",
        &r.different_host,
        &mut deps,
    )
    .await?;
    let evacuation = match r.evacuation_policy.to_ascii_lowercase().as_str() {
        "" | "auto" => EvacuationPolicy::Auto,
        "manual" => EvacuationPolicy::Manual,
        "never" => EvacuationPolicy::Never,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "evacuation_policy {other:?} must be auto, manual or never"
            )))
        }
    };
    Ok(Plan {
        project,
        name: r.name.clone(),
        count,
        flavor: Flavor::clone(&flavor),
        image: image.id,
        networks,
        existing_ports,
        security_groups,
        security_group_names,
        key_name,
        user_data_b64,
        metadata: r.metadata.clone(),
        access_ipv4,
        access_ipv6,
        availability_zone: Some(r.availability_zone.trim().to_string()).filter(|s| !s.is_empty()),
        group,
        same_host,
        different_host,
        power: if r.stopped {
            PowerState::Stopped
        } else {
            PowerState::Running
        },
        evacuation,
        vols,
        deps,
    })
}

/// Creates `r.count` servers (see the module docs); each one's outcome,
/// by launch index.
pub async fn create(ctx: &Ctx, r: NewServers) -> ApiResult<Vec<Created>> {
    let (project, min) = (r.project.clone(), r.min_count);
    if min > r.count.max(1) {
        return Err(ApiError::InvalidArgument(format!(
            "min_count {min} is larger than count {}",
            r.count.max(1)
        )));
    }
    let created = create_some(ctx, r).await?;
    let ok = created.iter().filter(|c| c.result.is_ok()).count();
    if ok >= usize::try_from(min).unwrap_or(usize::MAX) {
        return Ok(created);
    }
    // Fewer than the minimum: none stays.
    for c in &created {
        if let Ok(s) = &c.result {
            let id = s.instance.id.to_string();
            if let Err(e) = super::servers::delete(ctx, &project, &id).await {
                tracing::warn!(instance = %id, error = %e, "server beyond a failed min_count not deleted");
            }
        }
    }
    let first = created.into_iter().find_map(|c| c.result.err());
    Err(first.unwrap_or_else(|| {
        ApiError::ResourceExhausted(format!(
            "fewer than min_count {min} servers could be created"
        ))
    }))
}

async fn create_some(ctx: &Ctx, r: NewServers) -> ApiResult<Vec<Created>> {
    validate::client_token(&r.client_token)?;
    // Boot from a new volume: made first, deleted again on failure.
    let (r, boot) = boot_from_new_volume(ctx, r).await?;
    let res = create_planned(ctx, r).await;
    if let Some(vol) = boot {
        // Unused also when a retry with the same client token returned
        // the server an earlier attempt made (with its own volume).
        let used = res.as_ref().is_ok_and(|x| {
            x.iter().any(|c| {
                c.result.as_ref().is_ok_and(|s| {
                    s.instance.boot_volume.as_ref().map(|b| b.volume) == Some(vol.id)
                })
            })
        });
        if !used {
            server_volumes::drop_unused_boot_volume(ctx, &vol).await;
        }
    }
    res
}

async fn create_planned(ctx: &Ctx, r: NewServers) -> ApiResult<Vec<Created>> {
    let token = validate::client_token(&r.client_token)?;
    let plan = Arc::new(plan(ctx, &r).await?);
    // With a client token, the servers an earlier attempt created are
    // returned as they are, and only the missing indices are created.
    let mut done: HashMap<u32, InstanceId> = HashMap::new();
    if let Some(t) = token {
        let resp = ctx
            .store
            .get(
                keys::client_token_prefix(&plan.project, t),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        for kv in resp.kvs() {
            let index = kv_key(kv)
                .rsplit('/')
                .next()
                .and_then(|i| i.parse::<u32>().ok());
            if let (Some(i), Some(id)) = (index, decode_or_skip::<InstanceId>(kv)) {
                if i < plan.count {
                    done.insert(i, id);
                }
            }
        }
    }
    let mut results = existing_results(ctx, &done).await?;
    let plan = &plan;
    let r = &r;
    let todo: Vec<u32> = (0..plan.count).filter(|i| !done.contains_key(i)).collect();
    let created: Vec<Created> = futures::stream::iter(todo)
        .map(|i| async move {
            let id = InstanceId::new_random();
            let span = tracing::info_span!("create_server", instance = %id, index = i);
            let result = create_with_replans(ctx, r, plan, token, id, i)
                .instrument(span)
                .await;
            if let Err(e) = &result {
                tracing::info!(instance = %id, index = i, error = %e, "server not created");
            }
            Created { index: i, result }
        })
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect()
        .await;
    results.extend(created);
    results.sort_by_key(|r| r.index);
    Ok(results)
}

/// One server: placement with the batch's plan, re-planned from etcd
/// when something the plan used changed meanwhile.
async fn create_with_replans(
    ctx: &Ctx,
    r: &NewServers,
    plan: &Arc<Plan>,
    token: Option<&str>,
    id: InstanceId,
    index: u32,
) -> ApiResult<ServerView> {
    let mut plan = plan.clone();
    for _ in 0..MAX_REPLANS {
        match create_one(ctx, &plan, id, index, token).await? {
            Placed::Server(s) => return Ok(*s),
            Placed::Existing(other) => {
                let done = HashMap::from([(index, other)]);
                let mut v = existing_results(ctx, &done).await?;
                return match v.pop() {
                    Some(c) => c.result,
                    None => Err(ApiError::NotFound(format!("server {other} vanished"))),
                };
            }
            Placed::StalePlan => {
                tracing::debug!(instance = %id, "plan went stale; re-planning from etcd");
                plan = Arc::new(plan_from(ctx, r, Source::Etcd).await?);
            }
        }
    }
    Err(ApiError::Unavailable(
        "the flavor, image, networks or groups of this request changed concurrently too often; retry"
            .into(),
    ))
}

/// The results of servers created earlier under a client token.
async fn existing_results(ctx: &Ctx, done: &HashMap<u32, InstanceId>) -> ApiResult<Vec<Created>> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let order: Vec<(u32, InstanceId)> = done.iter().map(|(i, id)| (*i, *id)).collect();
    let keys_: Vec<String> = order.iter().map(|(_, id)| keys::instance(id)).collect();
    let specs = ctx.store.get_many(&keys_).await?;
    let mut found = Vec::new();
    let mut out = Vec::new();
    for ((index, id), kv) in order.iter().zip(&specs) {
        match kv.as_ref().and_then(decode_or_skip::<Instance>) {
            Some(inst) => found.push((*index, inst)),
            None => out.push(Created {
                index: *index,
                result: Err(ApiError::NotFound(format!(
                    "server {id} created earlier with this client token no longer exists"
                ))),
            }),
        }
    }
    let insts: Vec<Instance> = found.iter().map(|(_, i)| i.clone()).collect();
    let rendered = super::servers::render(ctx, &insts).await?;
    out.extend(
        found
            .iter()
            .zip(rendered)
            .map(|((index, _), server)| Created {
                index: *index,
                result: Ok(server),
            }),
    );
    Ok(out)
}

/// The one node the ports a server is created with are bound to by a
/// cloud admin (Neutron's `binding:host_id`, [`Port::host`]), if any: the
/// server can only be placed there. Ports bound to different nodes can
/// never be plugged together: InvalidArgument naming them. Pure.
fn bound_host(ports: &[Versioned<Port>]) -> ApiResult<Option<(NodeName, PortId)>> {
    let mut found: Option<(NodeName, PortId)> = None;
    for p in ports {
        let Some(h) = &p.value.host else { continue };
        match &found {
            Some((other, first)) if other != h => {
                return Err(ApiError::InvalidArgument(format!(
                    "port {first} is bound to host {other} and port {} to host {h}: one server \
                     cannot plug both",
                    p.value.id
                )))
            }
            Some(_) => {}
            None => found = Some((h.clone(), p.value.id)),
        }
    }
    Ok(found)
}

/// The `same_host` node set once a port's binding is applied: only the
/// port's host, which a `same_host` hint must allow (InvalidArgument
/// otherwise). Pure.
fn narrow_to_bound_host(
    same_host: Option<HashSet<NodeName>>,
    bound: Option<(NodeName, PortId)>,
) -> ApiResult<Option<HashSet<NodeName>>> {
    let Some((host, port)) = bound else {
        return Ok(same_host);
    };
    if same_host.as_ref().is_some_and(|s| !s.contains(&host)) {
        return Err(ApiError::InvalidArgument(format!(
            "port {port} is bound to host {host}, which the same_host hint does not allow"
        )));
    }
    Ok(Some(HashSet::from([host])))
}

/// The nodes of the servers a scheduler hint (`same_host` /
/// `different_host`) lists, each of the project (ids or names; one not
/// found is a 400 naming the hint); their specs join `deps`, so a server
/// that moves meanwhile fails the placement (then retried). A listed
/// server placed nowhere adds no node. `None` when the hint is absent.
async fn hint_nodes(
    ctx: &Ctx,
    project: &ProjectId,
    hint: &str,
    servers: &[String],
    deps: &mut Vec<(String, i64)>,
) -> ApiResult<Option<HashSet<NodeName>>> {
    if servers.is_empty() {
        return Ok(None);
    }
    let mut nodes = HashSet::new();
    for s in servers {
        let inst = match super::lookup::server(ctx, project, s.trim()).await {
            Ok(i) => i,
            Err(ApiError::NotFound(m)) => {
                return Err(ApiError::InvalidArgument(format!(
                    "scheduler hint {hint}: {m}"
                )))
            }
            Err(e) => return Err(e),
        };
        deps.push((keys::instance(&inst.value.id), inst.mod_rev));
        nodes.extend(inst.value.node.clone());
    }
    Ok(Some(nodes))
}

async fn group_members(ctx: &Ctx, g: &ServerGroup) -> ApiResult<(HashSet<NodeName>, i64)> {
    let resp = ctx
        .store
        .get(
            keys::server_group_members_prefix(&g.id),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    Ok((
        resp.kvs()
            .iter()
            .filter_map(decode_or_skip::<NodeName>)
            .collect(),
        rev,
    ))
}

async fn create_one(
    ctx: &Ctx,
    plan: &Plan,
    id: InstanceId,
    index: u32,
    token: Option<&str>,
) -> ApiResult<Placed> {
    let mut job = CreateJob::new(ctx, plan, id, index, token).await?;
    ctx.placement
        .place(
            &mut job,
            Limits {
                attempts: MAX_PLACE_ATTEMPTS,
                rounds: MAX_PLACE_ROUNDS,
                top_k: TOP_K,
            },
        )
        .await
}

/// With `boot_from_volume_size_gb`: creates the boot volume (named
/// `<server>-boot`, cloned from the image) and returns the request
/// rewritten to boot from it, plus the volume to delete if the server
/// is not created.
async fn boot_from_new_volume(ctx: &Ctx, r: NewServers) -> ApiResult<(NewServers, Option<Volume>)> {
    if r.boot_from_volume_size_gb == 0 {
        return Ok((r, None));
    }
    if !r.boot_volume.trim().is_empty() {
        return Err(ApiError::InvalidArgument(
            "boot_volume and boot_from_volume_size_gb exclude each other".into(),
        ));
    }
    if r.count > 1 {
        return Err(ApiError::InvalidArgument(
            "boot from a new volume needs count 1".into(),
        ));
    }
    if r.image_ref.trim().is_empty() {
        return Err(ApiError::InvalidArgument(
            "boot from a new volume needs an image to clone".into(),
        ));
    }
    let project = r.project.clone();
    crate::validate::server_name(&r.name)?;
    let size = i64::try_from(r.boot_from_volume_size_gb).unwrap_or(i64::MAX);
    // Volume names are stricter than server names.
    let mut volume_name = format!("{}-boot", r.name);
    if validate::name("volume", &volume_name).is_err() {
        volume_name = format!("boot-{}", uuid::Uuid::new_v4().simple());
    }
    let nv = super::volumes::new_volume(ctx, project, &volume_name, size, "", &r.image_ref).await?;
    let vol = super::volumes::create_volume_from(ctx, nv).await?;
    let mut r = r;
    r.boot_volume = vol.id.to_string();
    Ok((r, Some(vol)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(host: Option<&str>) -> Versioned<Port> {
        Versioned {
            value: Port {
                id: PortId::new_random(),
                name: String::new(),
                description: String::new(),
                admin_state_up: true,
                project: ProjectId::default_project(),
                network: NetworkId::new_random(),
                mac: "fa:16:3e:00:00:01".parse().unwrap(),
                ip: None,
                more_ips: Vec::new(),
                security_groups: Vec::new(),
                port_security: true,
                device: None,
                node: None,
                host: host.map(|h| h.parse().unwrap()),
                router: None,
                created_at: nubo_common::model::now(),
            },
            mod_rev: 1,
        }
    }

    fn nodes(n: &[&str]) -> HashSet<NodeName> {
        n.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_port_bound_to_a_host_places_the_server_there() {
        // No bound port: the hint is unchanged.
        let free = [port(None), port(None)];
        assert_eq!(bound_host(&free).unwrap(), None);
        let hint = Some(nodes(&["a", "b"]));
        assert_eq!(narrow_to_bound_host(hint.clone(), None).unwrap(), hint);
        // A bound port (twice the same host is fine): only that node.
        let ports = [port(None), port(Some("b")), port(Some("b"))];
        let bound = bound_host(&ports).unwrap();
        assert_eq!(bound.as_ref().map(|(h, _)| h.as_str()), Some("b"));
        assert_eq!(
            narrow_to_bound_host(None, bound.clone()).unwrap(),
            Some(nodes(&["b"]))
        );
        assert_eq!(
            narrow_to_bound_host(hint, bound.clone()).unwrap(),
            Some(nodes(&["b"]))
        );
        // A same_host hint that excludes the port's host, and ports bound
        // to two hosts: refused, naming them.
        let e = narrow_to_bound_host(Some(nodes(&["a"])), bound).unwrap_err();
        assert!(
            matches!(&e, ApiError::InvalidArgument(m) if m.contains("bound to host b") && m.contains("same_host")),
            "{e:?}"
        );
        let e = bound_host(&[port(Some("a")), port(Some("b"))]).unwrap_err();
        assert!(
            matches!(&e, ApiError::InvalidArgument(m) if m.contains("host a") && m.contains("host b")),
            "{e:?}"
        );
    }
}
