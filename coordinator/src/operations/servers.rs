//! Servers: reading them (spec, status, ports), deletion, power actions,
//! metadata. Creation: [`super::server_create`]; resize: [`super::resize`].

use std::collections::{BTreeMap, HashMap, HashSet};

use etcd_client::Txn;
use nubo_common::keys::{self, Key};
use nubo_common::model::{
    self, DeletedServer, Instance, InstanceStatus, Network, NodeUsage, Port, PowerState,
    SecurityGroup, Timestamp,
};
use nubo_common::{InstanceId, NetworkId, NodeName, PortId, ProjectId, SecurityGroupId};
use nubo_store::kv::{decode_kv, decode_or_skip, kv_key, unchanged};
use nubo_store::TxnBuilder;

use super::ports::release_port;
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// A server as front ends show it: its spec, what its agent reports, its
/// ports and the names of their networks.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// The desired spec.
    pub instance: Instance,
    /// The observed state, once its agent reported.
    pub status: Option<InstanceStatus>,
    /// Its ports, in the spec's order.
    pub ports: Vec<Port>,
    /// The names of the ports' networks.
    pub network_names: HashMap<NetworkId, String>,
    /// The floating IPs of its ports.
    pub floating_ips: HashMap<PortId, std::net::Ipv4Addr>,
    /// The security groups of its ports (id and name, each once, in port
    /// order; a group deleted meanwhile is left out).
    pub security_groups: Vec<(SecurityGroupId, String)>,
    /// When it was deleted: a deleted server listed by a `changes_since`
    /// list (its last spec, nothing else).
    pub deleted_at: Option<Timestamp>,
}

impl ServerView {
    /// When it last changed: its deletion, else the later of its spec's
    /// last write (its creation for specs written before nubo stamped
    /// them) and its agent's last report.
    pub fn updated_at(&self) -> Timestamp {
        let spec = self.instance.updated_at.unwrap_or(self.instance.created_at);
        self.deleted_at.unwrap_or_else(|| {
            self.status
                .as_ref()
                .map_or(spec, |s| s.updated_at.max(spec))
        })
    }

    /// What is left of a deleted server, as listed by `changes_since`.
    fn deleted(d: DeletedServer) -> Self {
        ServerView {
            instance: d.instance,
            status: None,
            ports: Vec::new(),
            network_names: HashMap::new(),
            floating_ips: HashMap::new(),
            security_groups: Vec::new(),
            deleted_at: Some(d.deleted_at),
        }
    }
}

/// What one server of these resources counts against its project's quota.
pub(crate) fn quota_delta(r: &nubo_common::model::Resources) -> nubo_identity::QuotaDelta {
    nubo_identity::quota::instances_delta(1, u64::from(r.vcpus), r.ram_mb)
}

/// The views of `insts`: statuses, ports and network names in a few
/// batched reads.
pub(crate) async fn render(ctx: &Ctx, insts: &[Instance]) -> ApiResult<Vec<ServerView>> {
    // Each status is reported under its node's keys; an instance placed
    // nowhere has none.
    let placed: Vec<String> = insts
        .iter()
        .filter_map(|i| i.node.as_ref().map(|n| keys::instance_status(n, &i.id)))
        .collect();
    let mut read = ctx.store.get_many(&placed).await?.into_iter();
    let statuses: Vec<Option<etcd_client::KeyValue>> = insts
        .iter()
        .map(|i| i.node.as_ref().and_then(|_| read.next().flatten()))
        .collect();
    let port_ids: Vec<PortId> = insts.iter().flat_map(|i| i.ports.iter().copied()).collect();
    let port_keys: Vec<String> = port_ids.iter().map(keys::port).collect();
    let ports: HashMap<PortId, Port> = ctx
        .store
        .get_many(&port_keys)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip::<Port>)
        .map(|p| (p.id, p))
        .collect();
    let floating_ips = floating_ips_of(ctx, &port_ids).await?;
    let net_ids: Vec<NetworkId> = ports
        .values()
        .map(|p| p.network)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let net_keys: Vec<String> = net_ids.iter().map(keys::network).collect();
    let names = names_of(ctx, &net_keys, |n: Network| (n.id, n.name)).await?;
    let sg_ids: Vec<SecurityGroupId> = ports
        .values()
        .flat_map(|p| p.security_groups.iter().copied())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let sg_keys: Vec<String> = sg_ids.iter().map(keys::secgroup).collect();
    let sg_names = names_of(ctx, &sg_keys, |g: SecurityGroup| (g.id, g.name)).await?;
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
            let network_names = ps
                .iter()
                .filter_map(|p| names.get(&p.network).map(|n| (p.network, n.clone())))
                .collect();
            let floating_ips = ps
                .iter()
                .filter_map(|p| floating_ips.get(&p.id).map(|a| (p.id, *a)))
                .collect();
            let mut security_groups: Vec<(SecurityGroupId, String)> = Vec::new();
            for g in ps.iter().flat_map(|p| p.security_groups.iter()) {
                if let Some(n) = sg_names.get(g) {
                    if !security_groups.iter().any(|(x, _)| x == g) {
                        security_groups.push((*g, n.clone()));
                    }
                }
            }
            ServerView {
                instance: i.clone(),
                status: st,
                ports: ps,
                network_names,
                floating_ips,
                security_groups,
                deleted_at: None,
            }
        })
        .collect())
}

/// The records at `keys` (absent or undecodable ones left out) as
/// `id → name` by `pair`, in one batched read.
async fn names_of<T: serde::de::DeserializeOwned, K: std::hash::Hash + Eq>(
    ctx: &Ctx,
    keys: &[String],
    pair: impl Fn(T) -> (K, String),
) -> ApiResult<HashMap<K, String>> {
    Ok(ctx
        .store
        .get_many(keys)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip::<T>)
        .map(pair)
        .collect())
}

/// The floating IP addresses of `ports` (through the port index: two
/// batched reads).
async fn floating_ips_of(
    ctx: &Ctx,
    ports: &[PortId],
) -> ApiResult<HashMap<PortId, std::net::Ipv4Addr>> {
    let index: Vec<String> = ports.iter().map(keys::floating_ip_port).collect();
    let ids: Vec<nubo_common::FloatingIpId> = ctx
        .store
        .get_many(&index)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let fips: Vec<String> = ids.iter().map(keys::floating_ip).collect();
    Ok(ctx
        .store
        .get_many(&fips)
        .await?
        .iter()
        .flatten()
        .filter_map(decode_or_skip::<nubo_common::model::FloatingIp>)
        .filter_map(|f| f.port.map(|p| (p, f.address)))
        .collect())
}

/// The view of one server.
pub(crate) async fn view(ctx: &Ctx, inst: &Instance) -> ApiResult<ServerView> {
    render(ctx, std::slice::from_ref(inst))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound("server vanished".into()))
}

/// The server `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    let inst = super::lookup::server(ctx, project, r).await?;
    let mut v = render(ctx, std::slice::from_ref(&inst.value)).await?;
    v.pop()
        .ok_or_else(|| ApiError::NotFound(format!("server {r:?} not found")))
}

/// What a server listing asks for.
#[derive(Debug, Clone)]
pub struct ListServers {
    /// Whose servers.
    pub scope: Scope,
    /// Which page.
    pub page: PageRequest,
    /// Only servers on this node (empty: all).
    pub node: String,
    /// Only servers whose name starts with this.
    pub name_prefix: String,
    /// Only servers that changed at or after this time ([`ServerView::
    /// updated_at`]), and then also the servers deleted since (kept for
    /// [`DELETED_SERVER_RETENTION_SECS`]), after the last page's live ones.
    pub changes_since: Option<Timestamp>,
}

/// One page of servers (in id order).
pub async fn list(ctx: &Ctx, r: &ListServers) -> ApiResult<Page<ServerView>> {
    let node = match r.node.trim() {
        "" => None,
        n => Some(NodeName::new(n)?),
    };
    let page = super::lookup::list_page(ctx, &keys::instances_prefix(), &r.page, |kv| {
        let k = std::str::from_utf8(kv.key()).ok()?;
        if !matches!(keys::parse(k), Some(Key::Instance(_))) {
            return None;
        }
        let i: Instance = decode_or_skip(kv)?;
        let ok = r.scope.sees(&i.project)
            && node.as_ref().is_none_or(|n| i.node.as_ref() == Some(n))
            && i.name.starts_with(&r.name_prefix);
        ok.then_some(i)
    })
    .await?;
    let mut items = render(ctx, &page.items).await?;
    if let Some(since) = r.changes_since {
        items.retain(|v| v.updated_at() >= since);
        if page.next.is_empty() {
            items.extend(deleted_since(ctx, r, node.as_ref(), since).await?);
        }
    }
    Ok(Page {
        items,
        next: page.next,
    })
}

/// The servers in `r`'s scope (and on `node`) deleted at or after `since`,
/// in id order.
async fn deleted_since(
    ctx: &Ctx,
    r: &ListServers,
    node: Option<&NodeName>,
    since: Timestamp,
) -> ApiResult<Vec<ServerView>> {
    let gone = ctx
        .store
        .list_all(
            &keys::deleted_servers_prefix(),
            decode_or_skip::<DeletedServer>,
        )
        .await?;
    Ok(gone
        .into_iter()
        .filter(|d| {
            let i = &d.instance;
            d.deleted_at >= since
                && r.scope.sees(&i.project)
                && node.is_none_or(|n| i.node.as_ref() == Some(n))
                && i.name.starts_with(&r.name_prefix)
        })
        .map(ServerView::deleted)
        .collect())
}

/// How long what is left of a deleted server ([`DeletedServer`]) is kept
/// for lists of changes (`changes_since`): 7 days, then etcd drops it.
pub const DELETED_SERVER_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// Deletes the server `r` of `project`: its spec, status, assignment,
/// group membership and the ports made for it; plugged ports are
/// unplugged, volumes released (or deleted with it); its node's usage and
/// its project's quota usage are given back. One transaction.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    // The lease of what is left of it (for `changes_since` lists); one
    // that ends up unused expires on its own.
    let mut tombstone_lease = None;
    for _ in 0..64 {
        let inst = super::lookup::server(ctx, project, r).await?;
        let i = &inst.value;
        ensure_unlocked(i)?;
        super::migrations::ensure_not_migrating(ctx, i).await?;
        let mut keys_to_read: Vec<String> = i.ports.iter().map(keys::port).collect();
        keys_to_read.extend(i.ports.iter().map(keys::port_owner));
        let read = ctx.store.get_many(&keys_to_read).await?;
        let (port_kvs, owner_kvs) = read.split_at(i.ports.len());
        let ikey = keys::instance(&i.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&ikey, inst.mod_rev);
        t.absent(&keys::instance_migration(&i.id));
        super::specs::delete_into(&mut t, i);
        t.delete_prefix(&keys::instance_actions_prefix(&i.id));
        let lease = match tombstone_lease {
            Some(l) => l,
            None => {
                *tombstone_lease.insert(ctx.store.lease_grant(DELETED_SERVER_RETENTION_SECS).await?)
            }
        };
        t.op(etcd_client::TxnOp::put(
            keys::deleted_server(&i.id),
            model::encode(&DeletedServer {
                instance: Instance {
                    user_data_b64: None,
                    ..i.clone()
                },
                deleted_at: model::now(),
            }),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        ));
        let mut new_usage = None;
        if let Some(node) = &i.node {
            t.delete(&keys::assignment(node, &i.id));
            t.delete(&keys::instance_password(node, &i.id));
            let ukey = keys::node_usage(node);
            if let Some(u) = ctx.store.read::<NodeUsage>(&ukey).await? {
                let nu = NodeUsage {
                    used: u.value.used.saturating_sub(i.reserved()),
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
        let mut released = Vec::new();
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
                released.push(port.id);
            } else if port.device == Some(i.id) {
                let mut p = port;
                p.device = None;
                p.node = None;
                t.put(&keys::port(&p.id), &p);
            }
        }
        // Their floating IPs stay allocated, unassociated.
        super::ports::disassociate_ports_into(ctx, &released, &mut t).await?;
        // Attached volumes: released or (delete_on_termination)
        // deleted by the volume reconciler once the hypervisor let go.
        super::volumes::release_volumes_of(ctx, i, &mut t).await?;
        let mut qdelta = quota_delta(&i.reserved());
        qdelta.ports = owned_ports;
        super::quotas::release(ctx, &mut t, &i.project, &qdelta).await?;
        if ctx.placement.release(&t, new_usage).await? {
            tracing::info!(instance = %i.id, "server deleted");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the server changed concurrently too often; retry".into(),
    ))
}

/// The spec changes recorded as instance actions (by their `what`).
const RECORDED_ACTIONS: &[&str] = &["start", "stop", "reboot", "rebuild", "lock", "unlock"];

/// The owner's actions that drop an admin's error mark (they say what the
/// server should be now, as in Nova a rebuild or reboot leaves `ERROR`).
const CLEARS_ERROR_MARK: &[&str] = &["start", "stop", "reboot", "rebuild"];

/// The states a cloud admin may set by hand ([`reset_state`]).
pub const RESET_STATES: &[&str] = &["error", "active"];

/// Sets the recorded state of server `r` of `project` by hand (cloud
/// admins only; OpenStack `os-resetState`): `error` marks it
/// [`Instance::error_mark`] (shown as `error` until dropped), `active`
/// drops the mark so what its agent reports shows again. Only the record
/// changes: nothing is done on its node (the guest keeps running or
/// stays off). Allowed on a locked server; refused while it is being
/// migrated (the migration moves the spec it read: abort it first);
/// audited as every call.
pub async fn reset_state(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    state: &str,
) -> ApiResult<ServerView> {
    if !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(
            "only a cloud admin may reset a server's state".into(),
        ));
    }
    let error = match state {
        "error" => true,
        "active" => false,
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "state {other:?} cannot be set by hand: only {} (error marks the server, active drops the mark)",
                RESET_STATES.join(" or ")
            )))
        }
    };
    let by = crate::caller::caller_name().unwrap_or_else(|| "admin".into());
    for _ in 0..16 {
        let mut inst = super::lookup::server(ctx, project, r).await?;
        // A migration moves the spec it read: abort it first.
        super::migrations::ensure_not_migrating(ctx, &inst.value).await?;
        let mark = error.then(|| model::ErrorMark {
            by: by.clone(),
            at: model::now(),
        });
        if inst.value.error_mark.is_some() == mark.is_some() {
            // Already so: nothing to write (the first mark's time stays).
            return view(ctx, &inst.value).await;
        }
        inst.value.error_mark = mark;
        let key = keys::instance(&inst.value.id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([
                        unchanged(&key, inst.mod_rev),
                        nubo_store::kv::absent(&keys::instance_migration(&inst.value.id)),
                    ])
                    .and_then(super::specs::put_ops(&inst.value)),
            )
            .await?;
        if resp.succeeded() {
            tracing::warn!(instance = %inst.value.id, state, by = %by, "server state reset by hand");
            return view(ctx, &inst.value).await;
        }
    }
    Err(ApiError::Unavailable(
        "the server changed concurrently too often; retry".into(),
    ))
}

/// OpenStack's `injectNetworkInfo` (cloud admins only): nubo has nothing
/// to inject — a server's agent serves its addresses, routes and DNS by
/// DHCP and metadata from the current records, so a guest always gets the
/// network it has. Checks the caller and that the server exists, writes
/// nothing, answers the server as it is.
pub async fn inject_network_info(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    if !crate::caller::is_cloud_admin() {
        return Err(ApiError::PermissionDenied(
            "only a cloud admin may ask to inject network info".into(),
        ));
    }
    let inst = super::lookup::server(ctx, project, r).await?;
    tracing::info!(instance = %inst.value.id, "injectNetworkInfo: nothing to inject (DHCP and metadata are always current)");
    view(ctx, &inst.value).await
}

/// Changes the spec of server `r` of `project` with `edit` (which may
/// refuse) in one transaction on the revision it read, retried when the
/// spec changed meanwhile. Refused while the server is being migrated (a
/// migration moves the guest as it is).
async fn edit_spec(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    what: &'static str,
    edit: impl Fn(&mut Instance) -> ApiResult<()>,
) -> ApiResult<ServerView> {
    for _ in 0..16 {
        let mut inst = super::lookup::server(ctx, project, r).await?;
        super::migrations::ensure_not_migrating(ctx, &inst.value).await?;
        if !matches!(what, "lock" | "unlock") {
            ensure_unlocked(&inst.value)?;
        }
        edit(&mut inst.value)?;
        if CLEARS_ERROR_MARK.contains(&what) {
            inst.value.error_mark = None;
        }
        let key = keys::instance(&inst.value.id);
        let mut ops = super::specs::put_ops(&inst.value);
        // What OpenStack records as instance actions.
        let recorded = RECORDED_ACTIONS.contains(&what);
        if recorded {
            ops.push(super::instance_actions::record_op(&inst.value, what));
        }
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([
                        unchanged(&key, inst.mod_rev),
                        nubo_store::kv::absent(&keys::instance_migration(&inst.value.id)),
                    ])
                    .and_then(ops),
            )
            .await?;
        if resp.succeeded() {
            if recorded {
                super::instance_actions::prune(ctx, &inst.value.id).await;
            }
            tracing::info!(instance = %inst.value.id, what, power = ?inst.value.power, reboot_generation = inst.value.reboot_generation, "server spec changed");
            return view(ctx, &inst.value).await;
        }
    }
    Err(ApiError::Unavailable(
        "the server changed concurrently too often; retry".into(),
    ))
}

async fn power(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    what: &'static str,
    edit: impl Fn(&mut Instance),
) -> ApiResult<ServerView> {
    edit_spec(ctx, project, r, what, |i| {
        edit(i);
        Ok(())
    })
    .await
}

/// Sets metadata `items` on server `r` of `project`: merged into what it
/// has (a key it has gets the new value), or replacing all of it with
/// `replace`. The result must pass [`validate::metadata`]; nothing changes
/// when it does not.
pub async fn set_metadata(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    items: &BTreeMap<String, String>,
    replace: bool,
) -> ApiResult<ServerView> {
    edit_spec(ctx, project, r, "metadata", |i| {
        let mut next = if replace {
            BTreeMap::new()
        } else {
            i.metadata.clone()
        };
        next.extend(items.iter().map(|(k, v)| (k.clone(), v.clone())));
        validate::metadata(&next)?;
        i.metadata = next;
        Ok(())
    })
    .await
}

/// Changes to a server's name and access addresses (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct ServerChanges {
    /// A new name (a valid server name; names need not be unique).
    pub name: Option<String>,
    /// A new IPv4 access address ("" clears it).
    pub access_ipv4: Option<String>,
    /// A new IPv6 access address ("" clears it).
    pub access_ipv6: Option<String>,
}

/// An access address of `family` ("" = none). Pure.
pub(crate) fn access_ip<T: std::str::FromStr>(family: &str, s: &str) -> ApiResult<Option<T>> {
    match s.trim() {
        "" => Ok(None),
        a => a.parse().map(Some).map_err(|_| {
            ApiError::InvalidArgument(format!("access address {a:?} is not an {family} address"))
        }),
    }
}

/// Applies `changes` to server `r` of `project` (one transaction; all
/// checked before anything changes).
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    changes: &ServerChanges,
) -> ApiResult<ServerView> {
    if let Some(n) = &changes.name {
        crate::validate::server_name(n)?;
    }
    let v4 = changes
        .access_ipv4
        .as_deref()
        .map(|a| access_ip("IPv4", a))
        .transpose()?;
    let v6 = changes
        .access_ipv6
        .as_deref()
        .map(|a| access_ip("IPv6", a))
        .transpose()?;
    edit_spec(ctx, project, r, "update", |i| {
        if let Some(n) = &changes.name {
            i.name.clone_from(n);
        }
        if let Some(a) = v4 {
            i.access_ipv4 = a;
        }
        if let Some(a) = v6 {
            i.access_ipv6 = a;
        }
        Ok(())
    })
    .await
}

/// Removes metadata `keys` from server `r` of `project`; a key it does not
/// have is NotFound and nothing is removed.
pub async fn unset_metadata(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    keys: &[String],
) -> ApiResult<ServerView> {
    edit_spec(ctx, project, r, "metadata", |i| {
        if let Some(k) = keys.iter().find(|k| !i.metadata.contains_key(k.as_str())) {
            return Err(ApiError::NotFound(format!(
                "server {:?} has no metadata key {k:?}",
                i.name
            )));
        }
        for k in keys {
            i.metadata.remove(k);
        }
        Ok(())
    })
    .await
}

/// Asks for server `r` of `project` to run.
pub async fn start(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    power(ctx, project, r, "start", |i| i.power = PowerState::Running).await
}

/// Asks for server `r` of `project` to be stopped.
pub async fn stop(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    power(ctx, project, r, "stop", |i| i.power = PowerState::Stopped).await
}

/// Asks for server `r` of `project` to be rebooted (and to run).
pub async fn reboot(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    power(ctx, project, r, "reboot", |i| {
        i.power = PowerState::Running;
        i.reboot_generation = i.reboot_generation.saturating_add(1);
    })
    .await
}

/// What a rebuild changes besides the root disk.
#[derive(Debug, Clone, Default)]
pub struct Rebuild {
    /// The image to rebuild from (id or name; "" = the one it has).
    pub image: String,
    /// A new name (`None`: unchanged).
    pub name: Option<String>,
    /// New metadata replacing what it has (`None`: unchanged).
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Rebuilds server `r` of `project`: its root disk is made again from
/// `rb.image` (same id, ports, addresses and volumes; the power it should
/// have is kept). The agent re-creates the instance once it sees the new
/// generation; until then the server shows `rebuilding`. A server booted
/// from a volume has no root disk to rebuild (FailedPrecondition).
pub async fn rebuild(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    rb: &Rebuild,
) -> ApiResult<ServerView> {
    if let Some(n) = &rb.name {
        crate::validate::server_name(n)?;
    }
    if let Some(m) = &rb.metadata {
        validate::metadata(m)?;
    }
    let current = super::lookup::server(ctx, project, r).await?.value;
    let image = match rb.image.trim() {
        "" => current.image.to_string(),
        i => i.to_string(),
    };
    let image = super::lookup::image(ctx, project, &image).await?.value;
    if image.status != nubo_common::model::ImageStatus::Active {
        return Err(ApiError::FailedPrecondition(format!(
            "image {:?} is {:?}, not active",
            image.name, image.status
        )));
    }
    edit_spec(ctx, project, r, "rebuild", |i| {
        if i.boot_volume.is_some() {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} boots from a volume: there is no root disk to rebuild",
                i.name
            )));
        }
        if image.min_ram_mb > i.resources.ram_mb || image.min_disk_gb > i.resources.disk_gb {
            return Err(ApiError::InvalidArgument(format!(
                "image {:?} needs at least {} MiB RAM and {} GiB disk; server {:?} has {} MiB and {} GiB",
                image.name,
                image.min_ram_mb,
                image.min_disk_gb,
                i.name,
                i.resources.ram_mb,
                i.resources.disk_gb
            )));
        }
        i.image = image.id;
        if let Some(n) = &rb.name {
            i.name.clone_from(n);
        }
        if let Some(m) = &rb.metadata {
            i.metadata.clone_from(m);
        }
        i.reboot_generation = i.reboot_generation.saturating_add(1);
        i.rebuild_generation = i.reboot_generation;
        Ok(())
    })
    .await
}

/// Most characters of a lock's reason (as Nova's `locked_reason`).
pub const MAX_LOCK_REASON: usize = 255;

/// Refuses a change of locked server `i` (FailedPrecondition) unless the
/// caller is a cloud admin (always allowed, as in Nova).
pub(crate) fn ensure_unlocked(i: &Instance) -> ApiResult<()> {
    match &i.locked {
        Some(reason) if !crate::caller::is_cloud_admin() => Err(ApiError::FailedPrecondition(
            locked_message(&i.name, &i.id, reason),
        )),
        _ => Ok(()),
    }
}

/// Why a locked server refuses a change. Pure.
fn locked_message(name: &str, id: &InstanceId, reason: &str) -> String {
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    };
    format!("server {name:?} ({id}) is locked{why}: unlock it first (nubo server unlock)")
}

/// The password the guest of server `r` of `project` posted to its
/// node's metadata service ("" when none; kept under the node it was
/// posted on, so a server moved since shows none).
pub async fn password(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<String> {
    let inst = super::lookup::server(ctx, project, r).await?;
    let Some(node) = &inst.value.node else {
        return Ok(String::new());
    };
    let kv = ctx
        .store
        .get_kv(&keys::instance_password(node, &inst.value.id))
        .await?;
    Ok(kv
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default())
}

/// Clears the password of server `r` of `project` (see [`password`]).
pub async fn clear_password(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    let inst = super::lookup::server(ctx, project, r).await?;
    if let Some(node) = &inst.value.node {
        ctx.store
            .delete(keys::instance_password(node, &inst.value.id), None)
            .await?;
        tracing::info!(instance = %inst.value.id, "server password cleared");
    }
    Ok(())
}

/// Locks server `r` of `project` with `reason` (see [`ensure_unlocked`]);
/// locking a locked server sets the reason again.
pub async fn lock(ctx: &Ctx, project: &ProjectId, r: &str, reason: &str) -> ApiResult<ServerView> {
    if reason.chars().count() > MAX_LOCK_REASON {
        return Err(ApiError::InvalidArgument(format!(
            "a lock reason has at most {MAX_LOCK_REASON} characters"
        )));
    }
    let reason = reason.trim().to_string();
    edit_spec(ctx, project, r, "lock", |i| {
        i.locked = Some(reason.clone());
        Ok(())
    })
    .await
}

/// Unlocks server `r` of `project` (unlocking an unlocked server changes
/// nothing).
pub async fn unlock(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<ServerView> {
    edit_spec(ctx, project, r, "unlock", |i| {
        i.locked = None;
        Ok(())
    })
    .await
}

/// An availability zone servers may be placed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Its name ("" = the nodes registered without a zone).
    pub name: String,
    /// True when one of its nodes is alive and enabled.
    pub available: bool,
}

/// The zones of `nodes` (name, alive and enabled), sorted by name. Pure.
pub fn zones_of(nodes: impl IntoIterator<Item = (String, bool)>) -> Vec<Zone> {
    let mut zones: BTreeMap<String, bool> = BTreeMap::new();
    for (name, up) in nodes {
        *zones.entry(name).or_default() |= up;
    }
    zones
        .into_iter()
        .map(|(name, available)| Zone { name, available })
        .collect()
}

/// The availability zones of the registered nodes, without the nodes
/// (what any member or reader may read; node names stay admin-only).
pub fn zones(ctx: &Ctx) -> Vec<Zone> {
    zones_of(ctx.view.all().into_iter().map(|(_, st)| {
        let name = st
            .info
            .as_ref()
            .map(|i| i.availability_zone.clone())
            .unwrap_or_default();
        (name, st.alive && st.admin.enabled)
    }))
}

#[cfg(test)]
mod lock_and_zone_tests {
    use super::*;

    #[test]
    fn zones_merge_nodes_and_are_available_when_one_node_is() {
        let z = zones_of([
            ("b".to_string(), false),
            ("a".to_string(), false),
            ("b".to_string(), true),
            (String::new(), true),
        ]);
        let names: Vec<(&str, bool)> = z.iter().map(|z| (z.name.as_str(), z.available)).collect();
        assert_eq!(names, [("", true), ("a", false), ("b", true)]);
        assert!(zones_of(Vec::new()).is_empty());
    }

    #[test]
    fn a_locked_message_names_the_reason_when_there_is_one() {
        let id = InstanceId::new_random();
        assert!(locked_message("vm", &id, "")
            .ends_with("is locked: unlock it first (nubo server unlock)"));
        assert!(locked_message("vm", &id, "audit").contains("is locked (audit)"));
    }
}
