//! Routers: a project's tenant networks connected to each other and, through
//! the router's gateway, to one external network (SNAT to the gateway's
//! address). Distributed: no node owns a router; every node hosting a port
//! of a routed network answers as its gateway (the data path is the
//! agents').
//!
//! Invariants kept by etcd transactions: a tenant network is in at most one
//! router (`private/router-interfaces/<network>`, create-if-absent); the
//! gateway address is reserved in the external network's IPAM like a port's;
//! a router with networks is not deleted.

use std::net::IpAddr;

use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, Network, Port, Router, RouterGateway, RouterPort, RouterSnat};
use nubo_common::{ProjectId, RouterId};
use nubo_store::TxnBuilder;

use super::ports::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// Attempts of a read-check-write cycle that lost races before giving up.
const MAX_ATTEMPTS: usize = 16;

fn contended(what: &str) -> ApiError {
    ApiError::Unavailable(format!("{what} changed concurrently too often; retry"))
}

/// Creates router `name` of `project`, with its gateway on the external
/// network `gateway` (id or name) when given; `disabled`: created down.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
    gateway: Option<&str>,
    disabled: bool,
) -> ApiResult<Router> {
    validate::name("router", name)?;
    let ext = match gateway {
        Some(g) => {
            Some(super::lookup::external_network(ctx, project, g, "a router's gateway").await?)
        }
        None => None,
    };
    let id = RouterId::new_random();
    let idx = keys::name_index(NameKind::Router, project, name);
    let mut pool = ext.map(IpPool::new).transpose()?;
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let mut t = TxnBuilder::new();
        let name_free = t.absent(&idx);
        let mut ip_guard = None;
        let gw = match pool.as_mut() {
            Some(pool) => {
                let ip = next_ip(ctx, pool).await?;
                let free = reserve_ip(&mut t, &pool.net.id, ip, IpHolder::RouterGateway(id));
                super::networks::guard_external(ctx, &mut t, &pool.net.id, true).await?;
                ip_guard = Some((free, ip));
                Some(RouterGateway {
                    network: pool.net.id,
                    ip,
                })
            }
            None => None,
        };
        let router = Router {
            id,
            name: name.to_string(),
            project: project.clone(),
            gateway: gw,
            subnets: Vec::new(),
            disabled,
            interface_ports: Vec::new(),
            created_at: model::now(),
        };
        t.put(&idx, &router.id);
        t.put(&keys::router(&router.id), &router);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(router = %router.id, %project, gateway = ?router.gateway, "router created");
            return Ok(router);
        }
        if !a.held(name_free) {
            return Err(ApiError::AlreadyExists(format!(
                "router {name:?} already exists in project {project}"
            )));
        }
        if let (Some((g, ip)), Some(pool)) = (ip_guard, pool.as_mut()) {
            if !a.held(g) {
                pool.conflict(ip);
            }
        }
    }
    Err(contended("the external network's addresses"))
}

/// A router as the API shows it: the record and its per-node SNAT
/// addresses (ordered by node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterView {
    /// The router.
    pub router: Router,
    /// Its SNAT address on each node hosting a port of its networks.
    pub snat: Vec<RouterSnat>,
}

/// `router` with its SNAT addresses.
pub async fn view(ctx: &Ctx, router: Router) -> ApiResult<RouterView> {
    let snat = super::router_snat::of_routers(ctx, &[router.id])
        .await?
        .remove(&router.id)
        .unwrap_or_default();
    Ok(RouterView { router, snat })
}

/// The router `r` (id or name) of `project`, with its SNAT addresses.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<RouterView> {
    view(ctx, super::lookup::router(ctx, project, r).await?.value).await
}

/// One page of the routers `scope` sees, with their SNAT addresses.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<RouterView>> {
    let page: Page<Router> =
        super::lookup::list_scoped(ctx, &keys::routers_prefix(), scope, page).await?;
    let ids: Vec<RouterId> = page.items.iter().map(|r| r.id).collect();
    let mut snat = super::router_snat::of_routers(ctx, &ids).await?;
    Ok(page.map(|router| RouterView {
        snat: snat.remove(&router.id).unwrap_or_default(),
        router,
    }))
}

/// How a router joins a network.
#[derive(Debug, Clone, Copy)]
pub enum Interface<'a> {
    /// The network (id or name): the router answers on its gateway address.
    Network(&'a str),
    /// A port (id or name) of the network, with an address and no server:
    /// the router answers on the port's address and MAC.
    Port(&'a str),
}

/// Why port `p` cannot become an interface of router `rt`, if it cannot.
fn unfit_interface_port(p: &Port, rt: &Router) -> Option<String> {
    if let Some(dev) = p.device {
        return Some(format!(
            "port {} is plugged into server {dev}; a router interface port has no server",
            p.id
        ));
    }
    if p.router.is_some_and(|r| r != rt.id) {
        return Some(format!("port {} is already a router's interface", p.id));
    }
    if p.ip.is_none() {
        return Some(format!(
            "port {} has no fixed IP for the router to answer on",
            p.id
        ));
    }
    None
}

/// Connects a network of `project` to router `r`, by the network or by one
/// of its ports (`by`): the network must be a tenant network of the project
/// with an address for the router (its gateway, or the port's), in no
/// other router, and must not overlap the router's other networks.
pub async fn add_subnet(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    by: Interface<'_>,
) -> ApiResult<Router> {
    for _ in 0..MAX_ATTEMPTS {
        let router = super::lookup::router(ctx, project, r).await?;
        let port = match by {
            Interface::Port(p) => Some(super::lookup::port(ctx, project, p).await?),
            Interface::Network(_) => None,
        };
        let net_ref = match (by, &port) {
            (_, Some(p)) => p.value.network.to_string(),
            (Interface::Network(n), None) | (Interface::Port(n), None) => n.to_string(),
        };
        let network = super::lookup::network(ctx, project, &net_ref).await?.value;
        if network.external {
            return Err(ApiError::InvalidArgument(format!(
                "network {:?} is external: make it the router's gateway, not one of its subnets",
                network.name
            )));
        }
        let mut rt = router.value.clone();
        match &port {
            None if network.gateway.is_none() => {
                return Err(ApiError::InvalidArgument(format!(
                    "network {:?} has no gateway address for the router to answer on (create it with --gateway, or add the router by a port)",
                    network.name
                )));
            }
            None => {}
            Some(p) => {
                if let Some(why) = unfit_interface_port(&p.value, &rt) {
                    return Err(ApiError::FailedPrecondition(why));
                }
            }
        }
        if rt.subnets.contains(&network.id) {
            let same = match (&port, rt.interface_port(&network.id)) {
                (None, None) => true,
                (Some(p), Some(ip)) => ip.port == p.value.id,
                _ => false,
            };
            if same {
                return Ok(rt);
            }
            return Err(ApiError::FailedPrecondition(format!(
                "router {:?} already has an interface on network {:?}; remove it first",
                rt.name, network.name
            )));
        }
        let others: Vec<(String, ipnet::Ipv4Net)> = ctx
            .store
            .get_many(&rt.subnets.iter().map(keys::network).collect::<Vec<_>>())
            .await?
            .iter()
            .flatten()
            .filter_map(nubo_store::kv::decode_or_skip::<Network>)
            .filter_map(|o| Some((o.name, o.cidr?)))
            .collect();
        let subnet = super::networks::subnet_of(&network)?;
        if let Some((name, cidr)) = validate::find_overlap(subnet, &others) {
            return Err(ApiError::InvalidArgument(format!(
                "network {:?} ({subnet}) overlaps network {name:?} ({cidr}) of router {:?}",
                network.name, rt.name
            )));
        }
        let iface = keys::router_interface(&network.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::router(&rt.id), router.mod_rev);
        let free = t.absent(&iface);
        super::networks::guard_external(ctx, &mut t, &network.id, false).await?;
        rt.subnets.push(network.id);
        if let Some(p) = &port {
            let (Some(ip), pkey) = (p.value.ip, keys::port(&p.value.id)) else {
                continue;
            };
            let mut v = p.value.clone();
            v.router = Some(rt.id);
            t.unchanged(&pkey, p.mod_rev);
            t.put(&pkey, &v);
            rt.interface_ports.push(RouterPort {
                network: network.id,
                port: v.id,
                ip,
                mac: v.mac,
            });
        }
        t.put(&iface, &rt.id);
        t.put(&keys::router(&rt.id), &rt);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(router = %rt.id, network = %network.id,
                port = ?port.map(|p| p.value.id), "subnet added to router");
            return Ok(rt);
        }
        if !a.held(free) {
            let holder = ctx
                .store
                .read::<RouterId>(&iface)
                .await?
                .map(|v| v.value.to_string())
                .unwrap_or_default();
            return Err(ApiError::FailedPrecondition(format!(
                "network {:?} is already attached to router {holder}; remove it there first",
                network.name
            )));
        }
    }
    Err(contended("the router"))
}

/// The changes [`update`] makes to a router; `None` leaves a part as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterChange<'a> {
    /// A new name (unique in the project).
    pub name: Option<&'a str>,
    /// Take it down (`true`) or up.
    pub disabled: Option<bool>,
    /// Its gateway: an external network (id or name), or `""` for none.
    pub gateway: Option<&'a str>,
}

/// Renames router `r` of `project`, takes it down or up and/or sets,
/// changes or clears its gateway: one transaction guarded by the router's
/// revision; a new name takes the project's name index entry like a create
/// does; a new gateway address is reserved in the external network's IPAM
/// and the old one released in the same transaction (the leader's SNAT loop
/// then moves the per-node SNAT addresses). A gateway change is refused
/// while floating IPs go through the router.
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    change: RouterChange<'_>,
) -> ApiResult<Router> {
    let RouterChange {
        name,
        disabled,
        gateway,
    } = change;
    if let Some(n) = name {
        validate::name("router", n)?;
    }
    // The wanted external network: None = no change, Some(None) = none.
    let mut pool = match gateway.map(str::trim) {
        None => None,
        Some("") => Some(None),
        Some(g) => Some(Some(IpPool::new(
            super::lookup::external_network(ctx, project, g, "a router's gateway").await?,
        )?)),
    };
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let router = super::lookup::router(ctx, project, r).await?;
        let mut rt = router.value.clone();
        let mut t = TxnBuilder::new();
        let mut ip_guard = None;
        if let Some(wanted) = pool.as_mut() {
            let now = rt.gateway.as_ref().map(|g| g.network);
            let next = wanted.as_ref().map(|p| p.net.id);
            if now != next {
                let fips = super::floating_ips::through_router(ctx, &rt.id, None).await?;
                if !fips.is_empty() {
                    return Err(ApiError::FailedPrecondition(format!(
                        "floating IPs {} go through router {:?}'s gateway; unset them before changing it",
                        fips.join(", "),
                        rt.name
                    )));
                }
                if let Some(old) = &rt.gateway {
                    t.delete(&keys::ipam(&old.network, IpAddr::V4(old.ip)));
                }
                rt.gateway = match wanted.as_mut() {
                    Some(p) => {
                        let ip = next_ip(ctx, p).await?;
                        let free =
                            reserve_ip(&mut t, &p.net.id, ip, IpHolder::RouterGateway(rt.id));
                        super::networks::guard_external(ctx, &mut t, &p.net.id, true).await?;
                        ip_guard = Some((free, ip));
                        Some(RouterGateway {
                            network: p.net.id,
                            ip,
                        })
                    }
                    None => None,
                };
            }
        }
        t.unchanged(&keys::router(&rt.id), router.mod_rev);
        let mut name_free = None;
        if let Some(n) = name.filter(|n| *n != rt.name) {
            let idx = keys::name_index(NameKind::Router, project, n);
            name_free = Some(t.absent(&idx));
            t.delete(&keys::name_index(NameKind::Router, project, &rt.name));
            t.put(&idx, &rt.id);
            rt.name = n.to_string();
        }
        if let Some(d) = disabled {
            rt.disabled = d;
        }
        if rt == router.value {
            return Ok(rt);
        }
        t.put(&keys::router(&rt.id), &rt);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(router = %rt.id, name = %rt.name, disabled = rt.disabled,
                gateway = ?rt.gateway, "router updated");
            return Ok(rt);
        }
        if name_free.is_some_and(|g| !a.held(g)) {
            return Err(ApiError::AlreadyExists(format!(
                "router {:?} already exists in project {project}",
                rt.name
            )));
        }
        if let (Some((g, ip)), Some(Some(p))) = (ip_guard, pool.as_mut()) {
            if !a.held(g) {
                p.conflict(ip);
            }
        }
    }
    Err(contended("the router"))
}

/// Disconnects network `net` from router `r`; refused while floating IPs
/// of ports on that network go through the router. An interface made from
/// a port deletes that port (as Neutron does).
pub async fn remove_subnet(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    by: Interface<'_>,
) -> ApiResult<Router> {
    let net = match by {
        Interface::Network(n) => n.to_string(),
        Interface::Port(p) => super::lookup::port(ctx, project, p)
            .await?
            .value
            .network
            .to_string(),
    };
    for _ in 0..MAX_ATTEMPTS {
        let router = super::lookup::router(ctx, project, r).await?;
        let network = super::lookup::network(ctx, project, &net).await?.value;
        let mut rt = router.value.clone();
        if !rt.subnets.contains(&network.id) {
            return Err(ApiError::FailedPrecondition(format!(
                "network {:?} is not attached to router {:?}",
                network.name, rt.name
            )));
        }
        let fips = super::floating_ips::through_router(ctx, &rt.id, Some(&network)).await?;
        if !fips.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "floating IPs {} reach ports of network {:?} through router {:?}; unset them first",
                fips.join(", "),
                network.name,
                rt.name
            )));
        }
        rt.subnets.retain(|n| *n != network.id);
        let mut t = TxnBuilder::new();
        if let Some(ip) = rt.interface_port(&network.id).cloned() {
            rt.interface_ports.retain(|p| p.network != network.id);
            let pkey = keys::port(&ip.port);
            if let Some(p) = ctx.store.read::<Port>(&pkey).await? {
                t.unchanged(&pkey, p.mod_rev);
                super::ports::release_port(&p.value, &mut t);
                let delta = model::QuotaUsage {
                    ports: 1,
                    ..Default::default()
                };
                super::quotas::release(ctx, &mut t, &p.value.project, &delta).await?;
            }
        }
        t.unchanged(&keys::router(&rt.id), router.mod_rev);
        t.delete(&keys::router_interface(&network.id));
        t.put(&keys::router(&rt.id), &rt);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(router = %rt.id, network = %network.id, "subnet removed from router");
            return Ok(rt);
        }
    }
    Err(contended("the router"))
}

/// Deletes router `r` of `project`: refused while it has networks; its
/// gateway address and its per-node SNAT addresses are released.
///
/// The SNAT addresses go in the delete's own transaction rather than
/// being left to the leader's loop (which would release them too, as
/// records of a router that no longer exists): when the call returns, the
/// external network's addresses are free and the network can be deleted,
/// with no window in which a deleted router still holds them. The
/// transaction also compares that no SNAT record was written since they
/// were listed, so one allocated meanwhile cannot be left behind.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for _ in 0..MAX_ATTEMPTS {
        let router = super::lookup::router(ctx, project, r).await?;
        let rt = &router.value;
        if !rt.subnets.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "router {:?} still has {} network(s); remove them first (nubo router remove subnet)",
                rt.name,
                rt.subnets.len()
            )));
        }
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::router(&rt.id), router.mod_rev);
        let listed_at = ctx.store.revision().await?;
        t.prefix_unchanged_since(&keys::router_snats_prefix(), listed_at);
        for e in super::router_snat::of_router(ctx, &rt.id).await? {
            super::router_snat::release_into(ctx, &mut t, &e.snat, e.mod_rev).await?;
        }
        t.delete(&keys::router(&rt.id));
        t.delete(&keys::name_index(NameKind::Router, project, &rt.name));
        if let Some(g) = &rt.gateway {
            t.delete(&keys::ipam(&g.network, IpAddr::V4(g.ip)));
        }
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(router = %rt.id, "router deleted");
            return Ok(());
        }
    }
    Err(contended("the router"))
}
