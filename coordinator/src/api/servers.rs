//! Servers: batch creation with placement, deletion, power actions.
//!
//! Creating one server is ONE etcd transaction that reserves its addresses
//! and MACs, creates its ports, plugs pre-existing ports, bumps the node's
//! usage (compare on the usage key's mod_revision) and writes the
//! assignment and the spec. A failed compare leaves nothing behind; the
//! failure's probes tell which reservation lost, and only that is retried.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use base64::Engine;
use etcd_client::Txn;
use futures::StreamExt;
use nubo_common::keys::{self, Key, NameKind};
use nubo_common::model::{
    self, Assignment, EvacuationPolicy, Flavor, Image, Instance, InstanceStatus, Keypair, Network,
    NodeUsage, Port, PowerState, SecurityGroup, ServerGroup,
};
use nubo_common::proto::{self as pb, servers_server};
use nubo_common::{
    FlavorName, ImageId, InstanceId, NetworkId, NodeName, PortId, ProjectId, SecurityGroupId,
    ServerGroupId,
};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use nubo_store::kv::{decode_kv, decode_or_skip, kv_key, put, unchanged, Versioned};
use nubo_store::{Answer, Guard, TxnBuilder};

use super::network::{release_port, reserve_port, IpPool};
use super::{quota, reply, Ctx, Owned};
use crate::cache::FromCached;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::placement::{
    Chosen, GroupConstraint, Job, Limits, Request as PlaceRequest, Reservation, Retry, Target,
};
use crate::validate;

type R<T> = Result<Response<T>, Status>;

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
    key_name: Option<String>,
    user_data_b64: Option<String>,
    availability_zone: Option<String>,
    group: Option<ServerGroup>,
    power: PowerState,
    evacuation: EvacuationPolicy,
    /// Volumes attached at create / the boot volume (see `server_volumes`).
    vols: super::server_volumes::ServerVolumes,
    /// Every key the plan was decided from, with the mod_revision read
    /// (cache or etcd); each placement transaction compares them all, so a
    /// stale read can fail a placement but never commit one.
    deps: Vec<(String, i64)>,
}

/// Where [`Ctx::plan`] reads flavors, images, networks, groups and keys.
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
    Server(Box<pb::Server>),
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
    ports: Vec<(Guard, Guard)>,
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
        let pools: Vec<IpPool> = plan.networks.iter().cloned().map(IpPool::new).collect();
        let new_ports: Vec<Port> = plan
            .networks
            .iter()
            .map(|n| Port {
                id: PortId::new_random(),
                name: String::new(),
                project: plan.project.clone(),
                network: n.id,
                mac: crate::ipam::random_mac(&mut rand::rng()),
                ip: Ipv4Addr::UNSPECIFIED,
                security_groups: plan.security_groups.clone(),
                port_security: true,
                device: Some(id),
                node: None,
                created_at: now,
            })
            .collect();
        let members = match &plan.group {
            Some(g) => Some(ctx.group_members(g).await?),
            None => None,
        };
        // Quotas (auth = "token"): the project's usage is compared and
        // written in the placement transaction itself.
        let quota = if ctx.quotas_on() {
            Some(ctx.quota_limit(&plan.project).await?)
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
                p.ip = self.ctx.next_ip(&mut self.pools[j]).await?;
                self.need_ip[j] = false;
            }
        }
        self.quota_step = match &self.quota {
            Some(limit) => {
                let (usage, qrev) = self.ctx.quota_usage(&self.plan.project).await?;
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
            created_at: self.now,
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
        t.put(&ikey, &inst);
        let mut contended = Vec::new();
        plan.vols.attach_ops(id, t, &mut contended);
        let mut ports = Vec::with_capacity(self.new_ports.len());
        for p in self.new_ports.iter_mut() {
            p.node = Some(node.clone());
            ports.push(reserve_port(p, t));
            t.put(&keys::port_owner(&p.id), &id);
            contended.push(keys::ipam(&p.network, IpAddr::V4(p.ip)));
            contended.push(keys::mac(&p.mac));
        }
        let mut existing = Vec::with_capacity(self.existing.len());
        for p in &self.existing {
            let key = keys::port(&p.value.id);
            let mut plugged = p.value.clone();
            plugged.device = Some(id);
            plugged.node = Some(node.clone());
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
            quota::reserve(t, &plan.project, *qrev, new)
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
            // The spec carries the user data; the rest is small.
            bytes: 4096 + plan.user_data_b64.as_ref().map_or(0, String::len),
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
        Ok(Placed::Server(Box::new(convert::server(
            &inst,
            None,
            &ports,
            &self.plan.net_names(),
        ))))
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
            if !a.held(*ip) {
                self.pools[j].conflict(p.ip);
                self.need_ip[j] = true;
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

impl Ctx {
    /// Reads `key` from the cache (when `src` allows and it is there) or
    /// from etcd, and records the revision it was read at in `deps`.
    async fn fetch<T: FromCached + DeserializeOwned>(
        &self,
        key: &str,
        src: Source,
        deps: &mut Vec<(String, i64)>,
    ) -> ApiResult<Option<Arc<T>>> {
        if src == Source::Cache {
            if let Some((v, rev)) = self.cache.get::<T>(key) {
                deps.push((key.to_string(), rev));
                return Ok(Some(v));
            }
        }
        Ok(match self.store.read::<T>(key).await? {
            Some(v) => {
                deps.push((key.to_string(), v.mod_rev));
                Some(Arc::new(v.value))
            }
            None => None,
        })
    }

    /// [`Ctx::resolve`] through [`Ctx::fetch`].
    async fn resolve_dep<T: FromCached + DeserializeOwned + Owned>(
        &self,
        kind: NameKind,
        project: &ProjectId,
        r: &str,
        key_of: impl Fn(uuid::Uuid) -> String,
        src: Source,
        deps: &mut Vec<(String, i64)>,
    ) -> ApiResult<Arc<T>> {
        let label = match kind {
            NameKind::Network => "network",
            NameKind::SecurityGroup => "security group",
            NameKind::Image => "image",
            NameKind::ServerGroup => "server group",
            NameKind::Volume => "volume",
        };
        let r = r.trim();
        if r.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "a {label} id or name is required"
            )));
        }
        let not_found =
            || ApiError::NotFound(format!("{label} {r:?} not found in project {project}"));
        let key = match uuid::Uuid::parse_str(r) {
            Ok(u) => key_of(u),
            Err(_) => {
                let idx = keys::name_index(kind, project, r);
                match self.fetch::<uuid::Uuid>(&idx, src, deps).await? {
                    Some(id) => key_of(*id),
                    None => return Err(not_found()),
                }
            }
        };
        match self.fetch::<T>(&key, src, deps).await? {
            Some(v) if v.project() == project => Ok(v),
            _ => Err(not_found()),
        }
    }

    /// The security groups of new ports, through [`Ctx::fetch`] (empty refs
    /// = the project's default group, created on first use).
    async fn secgroups_dep(
        &self,
        project: &ProjectId,
        refs: &[String],
        src: Source,
        deps: &mut Vec<(String, i64)>,
    ) -> ApiResult<Vec<SecurityGroupId>> {
        if refs.is_empty() {
            let idx = keys::name_index(NameKind::SecurityGroup, project, "default");
            if let Some(id) = self.fetch::<uuid::Uuid>(&idx, src, deps).await? {
                return Ok(vec![SecurityGroupId::from_uuid(*id)]);
            }
            self.default_secgroup(project).await?;
            return match self.fetch::<uuid::Uuid>(&idx, Source::Etcd, deps).await? {
                Some(id) => Ok(vec![SecurityGroupId::from_uuid(*id)]),
                None => Err(ApiError::Unavailable(
                    "the default security group was deleted while being created; retry".into(),
                )),
            };
        }
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let g: Arc<SecurityGroup> = self
                .resolve_dep(
                    NameKind::SecurityGroup,
                    project,
                    r,
                    |u| keys::secgroup(&SecurityGroupId::from_uuid(u)),
                    src,
                    deps,
                )
                .await?;
            if !out.contains(&g.id) {
                out.push(g.id);
            }
        }
        Ok(out)
    }

    /// Validates a create request and resolves everything it references.
    /// With [`Source::Cache`] an error is never trusted: the plan is made
    /// again from etcd, so every error the caller sees is authoritative.
    async fn plan(&self, r: &pb::CreateServerRequest) -> ApiResult<Plan> {
        match self.plan_from(r, Source::Cache).await {
            Ok(p) => Ok(p),
            Err(_) => self.plan_from(r, Source::Etcd).await,
        }
    }

    async fn plan_from(&self, r: &pb::CreateServerRequest, src: Source) -> ApiResult<Plan> {
        let mut deps = Vec::new();
        let project = validate::project(&r.project)?;
        validate::name("server", &r.name)?;
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
        let vols = self.server_volumes(&project, r, count).await?;
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
        let flavor_name = FlavorName::new(r.flavor.trim())
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let flavor: Arc<Flavor> = self
            .fetch(&keys::flavor(&flavor_name), src, &mut deps)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("flavor {:?} not found", flavor_name.as_str()))
            })?;
        let image: Arc<Image> = self
            .resolve_dep(
                NameKind::Image,
                &project,
                &image_ref,
                |u| keys::image(&ImageId::from_uuid(u)),
                src,
                &mut deps,
            )
            .await?;
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
            let net: Arc<Network> = self
                .resolve_dep(
                    NameKind::Network,
                    &project,
                    n,
                    |u| keys::network(&NetworkId::from_uuid(u)),
                    src,
                    &mut deps,
                )
                .await?;
            networks.push(Network::clone(&net));
        }
        let mut existing_ports: Vec<Versioned<Port>> = Vec::with_capacity(r.ports.len());
        for p in &r.ports {
            let port = self.port(&project, p).await?;
            if let Some(dev) = port.value.device {
                return Err(ApiError::FailedPrecondition(format!(
                    "port {} is already plugged into server {dev}",
                    port.value.id
                )));
            }
            if existing_ports.iter().any(|e| e.value.id == port.value.id) {
                return Err(ApiError::InvalidArgument(format!(
                    "port {} is listed twice",
                    port.value.id
                )));
            }
            existing_ports.push(port);
        }
        let security_groups = if networks.is_empty() {
            Vec::new()
        } else {
            self.secgroups_dep(&project, &r.security_groups, src, &mut deps)
                .await?
        };
        let key_name = match r.key_name.trim() {
            "" => None,
            k => {
                validate::name("keypair", k)?;
                let kp: Arc<Keypair> = self
                    .fetch(&keys::keypair(&project, k), src, &mut deps)
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
        let group = match r.server_group.trim() {
            "" => None,
            g => {
                let g: Arc<ServerGroup> = self
                    .resolve_dep(
                        NameKind::ServerGroup,
                        &project,
                        g,
                        |u| keys::server_group(&ServerGroupId::from_uuid(u)),
                        src,
                        &mut deps,
                    )
                    .await?;
                Some(ServerGroup::clone(&g))
            }
        };
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
            key_name,
            user_data_b64,
            availability_zone: Some(r.availability_zone.trim().to_string())
                .filter(|s| !s.is_empty()),
            group,
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

    async fn create_servers(
        &self,
        r: pb::CreateServerRequest,
    ) -> ApiResult<pb::CreateServerResponse> {
        validate::client_token(&r.client_token)?;
        // Boot from a new volume: made first, deleted again on failure.
        let (r, boot) = self.boot_from_new_volume(r).await?;
        let res = self.create_servers_planned(r).await;
        if let Some(vol) = boot {
            // Unused also when a retry with the same client token returned
            // the server an earlier attempt made (with its own volume).
            let used = res.as_ref().is_ok_and(|x| {
                x.results.iter().any(|s| {
                    s.server
                        .as_ref()
                        .is_some_and(|s| s.boot_volume_id == vol.id.to_string())
                })
            });
            if !used {
                self.drop_unused_boot_volume(&vol).await;
            }
        }
        res
    }

    async fn create_servers_planned(
        &self,
        r: pb::CreateServerRequest,
    ) -> ApiResult<pb::CreateServerResponse> {
        let token = validate::client_token(&r.client_token)?;
        let plan = Arc::new(self.plan(&r).await?);
        // With a client token, the servers an earlier attempt created are
        // returned as they are, and only the missing indices are created.
        let mut done: HashMap<u32, InstanceId> = HashMap::new();
        if let Some(t) = token {
            let resp = self
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
        let mut results = self.existing_results(&done).await?;
        let plan = &plan;
        let r = &r;
        let todo: Vec<u32> = (0..plan.count).filter(|i| !done.contains_key(i)).collect();
        let created: Vec<pb::ServerResult> = futures::stream::iter(todo)
            .map(|i| async move {
                let id = InstanceId::new_random();
                let span = tracing::info_span!("create_server", instance = %id, index = i);
                match self
                    .create_with_replans(r, plan, token, id, i)
                    .instrument(span)
                    .await
                {
                    Ok(server) => pb::ServerResult {
                        server: Some(server),
                        error: String::new(),
                        code: String::new(),
                        index: i,
                    },
                    Err(e) => {
                        tracing::info!(instance = %id, index = i, error = %e, "server not created");
                        pb::ServerResult {
                            server: None,
                            error: e.to_string(),
                            code: e.code_name().into(),
                            index: i,
                        }
                    }
                }
            })
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect()
            .await;
        results.extend(created);
        results.sort_by_key(|r| r.index);
        Ok(pb::CreateServerResponse { results })
    }

    /// One server: placement with the batch's plan, re-planned from etcd
    /// when something the plan used changed meanwhile.
    async fn create_with_replans(
        &self,
        r: &pb::CreateServerRequest,
        plan: &Arc<Plan>,
        token: Option<&str>,
        id: InstanceId,
        index: u32,
    ) -> ApiResult<pb::Server> {
        let mut plan = plan.clone();
        for _ in 0..MAX_REPLANS {
            match self.create_one(&plan, id, index, token).await? {
                Placed::Server(s) => return Ok(*s),
                Placed::Existing(other) => {
                    let done = HashMap::from([(index, other)]);
                    let mut v = self.existing_results(&done).await?;
                    return match v.pop() {
                        Some(pb::ServerResult {
                            server: Some(s), ..
                        }) => Ok(s),
                        Some(res) => Err(ApiError::NotFound(res.error)),
                        None => Err(ApiError::NotFound(format!("server {other} vanished"))),
                    };
                }
                Placed::StalePlan => {
                    tracing::debug!(instance = %id, "plan went stale; re-planning from etcd");
                    plan = Arc::new(self.plan_from(r, Source::Etcd).await?);
                }
            }
        }
        Err(ApiError::Unavailable(
            "the flavor, image, networks or groups of this request changed concurrently too often; retry"
                .into(),
        ))
    }

    /// The results of servers created earlier under a client token.
    async fn existing_results(
        &self,
        done: &HashMap<u32, InstanceId>,
    ) -> ApiResult<Vec<pb::ServerResult>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let order: Vec<(u32, InstanceId)> = done.iter().map(|(i, id)| (*i, *id)).collect();
        let keys_: Vec<String> = order.iter().map(|(_, id)| keys::instance(id)).collect();
        let specs = self.store.get_many(&keys_).await?;
        let mut found = Vec::new();
        let mut out = Vec::new();
        for ((index, id), kv) in order.iter().zip(&specs) {
            match kv.as_ref().and_then(decode_or_skip::<Instance>) {
                Some(inst) => found.push((*index, inst)),
                None => out.push(pb::ServerResult {
                    server: None,
                    error: format!(
                        "server {id} created earlier with this client token no longer exists"
                    ),
                    code: "NotFound".into(),
                    index: *index,
                }),
            }
        }
        let insts: Vec<Instance> = found.iter().map(|(_, i)| i.clone()).collect();
        let rendered = self.render(&insts).await?;
        out.extend(
            found
                .iter()
                .zip(rendered)
                .map(|((index, _), server)| pb::ServerResult {
                    server: Some(server),
                    error: String::new(),
                    code: String::new(),
                    index: *index,
                }),
        );
        Ok(out)
    }

    async fn group_members(&self, g: &ServerGroup) -> ApiResult<(HashSet<NodeName>, i64)> {
        let resp = self
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
        &self,
        plan: &Plan,
        id: InstanceId,
        index: u32,
        token: Option<&str>,
    ) -> ApiResult<Placed> {
        let mut job = CreateJob::new(self, plan, id, index, token).await?;
        self.placement
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

    pub(crate) async fn server_spec(
        &self,
        project: &ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<Instance>> {
        self.resolve_scan("server", project, r, &keys::instances_prefix(), |u| {
            keys::instance(&InstanceId::from_uuid(u))
        })
        .await
    }

    /// Builds the API view of servers: statuses, ports and network names in
    /// a few batched reads.
    pub(super) async fn render(&self, insts: &[Instance]) -> ApiResult<Vec<pb::Server>> {
        let status_keys: Vec<String> = insts.iter().map(|i| keys::instance_status(&i.id)).collect();
        let port_ids: Vec<PortId> = insts.iter().flat_map(|i| i.ports.iter().copied()).collect();
        let port_keys: Vec<String> = port_ids.iter().map(keys::port).collect();
        let statuses = self.store.get_many(&status_keys).await?;
        let ports: HashMap<PortId, Port> = self
            .store
            .get_many(&port_keys)
            .await?
            .iter()
            .flatten()
            .filter_map(decode_or_skip::<Port>)
            .map(|p| (p.id, p))
            .collect();
        let net_ids: Vec<NetworkId> = ports
            .values()
            .map(|p| p.network)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let net_keys: Vec<String> = net_ids.iter().map(keys::network).collect();
        let names: HashMap<NetworkId, String> = self
            .store
            .get_many(&net_keys)
            .await?
            .iter()
            .flatten()
            .filter_map(decode_or_skip::<Network>)
            .map(|n| (n.id, n.name))
            .collect();
        Ok(insts
            .iter()
            .zip(statuses)
            .map(|(i, st)| {
                let st: Option<InstanceStatus> = st.as_ref().and_then(decode_or_skip);
                let ps: Vec<Port> = i
                    .ports
                    .iter()
                    .filter_map(|p| ports.get(p).cloned())
                    .collect();
                convert::server(i, st.as_ref(), &ps, &names)
            })
            .collect())
    }

    async fn get_server(&self, r: pb::GetRequest) -> ApiResult<pb::Server> {
        let project = validate::project(&r.project)?;
        let inst = self.server_spec(&project, &r.r#ref).await?;
        let mut v = self.render(std::slice::from_ref(&inst.value)).await?;
        v.pop()
            .ok_or_else(|| ApiError::NotFound(format!("server {:?} not found", r.r#ref)))
    }

    async fn list_servers(&self, r: pb::ListServersRequest) -> ApiResult<pb::ListServersResponse> {
        let project = validate::project(&r.project)?;
        let node = match r.node.trim() {
            "" => None,
            n => Some(NodeName::new(n)?),
        };
        let (insts, next_page_token) = crate::paging::list_page(
            &self.store,
            &keys::instances_prefix(),
            r.page_size,
            &r.page_token,
            |kv| {
                let k = std::str::from_utf8(kv.key()).ok()?;
                if !matches!(keys::parse(k), Some(Key::Instance(_))) {
                    return None;
                }
                let i: Instance = decode_or_skip(kv)?;
                let ok = (super::in_scope(r.all_projects, &project, &i.project))
                    && node.as_ref().is_none_or(|n| i.node.as_ref() == Some(n))
                    && i.name.starts_with(&r.name_prefix);
                ok.then_some(i)
            },
        )
        .await?;
        Ok(pb::ListServersResponse {
            servers: self.render(&insts).await?,
            next_page_token,
        })
    }

    async fn delete_server(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        for _ in 0..64 {
            let inst = self.server_spec(&project, &r.r#ref).await?;
            let i = &inst.value;
            let mut keys_to_read: Vec<String> = i.ports.iter().map(keys::port).collect();
            keys_to_read.extend(i.ports.iter().map(keys::port_owner));
            let read = self.store.get_many(&keys_to_read).await?;
            let (port_kvs, owner_kvs) = read.split_at(i.ports.len());
            let ikey = keys::instance(&i.id);
            let mut t = TxnBuilder::new();
            t.unchanged(&ikey, inst.mod_rev);
            t.delete(&ikey);
            t.delete(&keys::instance_status(&i.id));
            let mut new_usage = None;
            if let Some(node) = &i.node {
                t.delete(&keys::assignment(node, &i.id));
                let ukey = keys::node_usage(node);
                if let Some(u) = self.store.read::<NodeUsage>(&ukey).await? {
                    let nu = NodeUsage {
                        used: u.value.used.saturating_sub(i.resources),
                        instances: u.value.instances.saturating_sub(1),
                    };
                    t.unchanged(&ukey, u.mod_rev);
                    t.put(&ukey, &nu);
                    new_usage = Some((node.clone(), nu));
                }
            }
            if let Some(g) = &i.server_group {
                t.delete(&keys::server_group_member(g, &i.id));
            }
            let mut owned_ports = 0;
            for (pkv, okv) in port_kvs.iter().zip(owner_kvs) {
                let Some(pkv) = pkv else { continue };
                let Ok(port) = decode_kv::<Port>(pkv) else {
                    tracing::warn!(instance = %i.id, key = kv_key(pkv), "unreadable port left in place");
                    continue;
                };
                let owned = okv
                    .as_ref()
                    .and_then(|kv| decode_kv::<InstanceId>(kv).ok())
                    .is_some_and(|o| o == i.id);
                t.unchanged(&keys::port(&port.id), pkv.mod_revision());
                if owned {
                    owned_ports += 1;
                    release_port(&port, &mut t);
                } else if port.device == Some(i.id) {
                    let mut p = port;
                    p.device = None;
                    p.node = None;
                    t.put(&keys::port(&p.id), &p);
                }
            }
            // Attached volumes: released or (delete_on_termination)
            // deleted by the volume reconciler once the hypervisor let go.
            self.release_volumes_of(i, &mut t).await?;
            let mut qdelta = quota_delta(&i.resources);
            qdelta.ports = owned_ports;
            self.quota_release(&mut t, &i.project, &qdelta).await?;
            if self.placement.release(&t, new_usage).await? {
                tracing::info!(instance = %i.id, "server deleted");
                return Ok(pb::Empty {});
            }
        }
        Err(ApiError::Unavailable(
            "the server changed concurrently too often; retry".into(),
        ))
    }

    async fn power(
        &self,
        r: pb::ServerActionRequest,
        edit: impl Fn(&mut Instance),
    ) -> ApiResult<pb::Server> {
        let project = validate::project(&r.project)?;
        for _ in 0..16 {
            let mut inst = self.server_spec(&project, &r.r#ref).await?;
            edit(&mut inst.value);
            let key = keys::instance(&inst.value.id);
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, inst.mod_rev)])
                        .and_then([put(&key, &inst.value)]),
                )
                .await?;
            if resp.succeeded() {
                tracing::info!(instance = %inst.value.id, power = ?inst.value.power, reboot_generation = inst.value.reboot_generation, "power state requested");
                let mut v = self.render(std::slice::from_ref(&inst.value)).await?;
                return v
                    .pop()
                    .ok_or_else(|| ApiError::NotFound("server vanished".into()));
            }
        }
        Err(ApiError::Unavailable(
            "the server changed concurrently too often; retry".into(),
        ))
    }
}

#[tonic::async_trait]
impl servers_server::Servers for Ctx {
    async fn create(&self, r: Request<pb::CreateServerRequest>) -> R<pb::CreateServerResponse> {
        reply(self.create_servers(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Server> {
        reply(self.get_server(r.into_inner()).await)
    }
    async fn list(&self, r: Request<pb::ListServersRequest>) -> R<pb::ListServersResponse> {
        reply(self.list_servers(r.into_inner()).await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_server(r.into_inner()).await)
    }
    async fn start(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        reply(
            self.power(r.into_inner(), |i| i.power = PowerState::Running)
                .await,
        )
    }
    async fn stop(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        reply(
            self.power(r.into_inner(), |i| i.power = PowerState::Stopped)
                .await,
        )
    }
    async fn resize(&self, r: Request<pb::ResizeServerRequest>) -> R<pb::Server> {
        reply(self.resize_server(r.into_inner()).await)
    }
    async fn reboot(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        reply(
            self.power(r.into_inner(), |i| {
                i.power = PowerState::Running;
                i.reboot_generation = i.reboot_generation.saturating_add(1);
            })
            .await,
        )
    }
}

/// What one server of these resources counts against its project's quota.
pub(super) fn quota_delta(r: &nubo_common::model::Resources) -> nubo_identity::QuotaDelta {
    nubo_identity::quota::instances_delta(1, u64::from(r.vcpus), r.ram_mb)
}
