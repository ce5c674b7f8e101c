//! Floating IPs: addresses of an external network, each mapped 1:1 to a
//! port's fixed address (the node where the port lives does the NAT).
//!
//! Allocation reserves the address in the external network's IPAM in the
//! same transaction that counts it against the `floating_ips` quota: an
//! address is never handed out twice. A port has at most one floating IP
//! (`private/floating-ip-ports/<port>`), and only a port whose network a
//! router connects to the floating IP's network can get one.

use std::net::{IpAddr, Ipv4Addr};

use nubo_common::keys;
use nubo_common::model::{self, FloatingIp, Network, Port, QuotaUsage};
use nubo_common::{FloatingIpId, ProjectId, RouterId};
use nubo_store::kv::decode_or_skip;
use nubo_store::{TxnBuilder, Versioned};

use super::ports::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;

/// Attempts of a read-check-write cycle that lost races before giving up.
const MAX_ATTEMPTS: usize = 16;

fn quota_delta() -> QuotaUsage {
    QuotaUsage {
        floating_ips: 1,
        ..Default::default()
    }
}

/// Allocates a floating IP of `project` on the external network `network`
/// (id or name): `address` when given (it must be a free host address of
/// the network), else a free one.
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    network: &str,
    address: Option<&str>,
) -> ApiResult<FloatingIp> {
    let net = super::lookup::external_network(ctx, project, network, "a floating IP").await?;
    let wanted = match address.map(str::trim).filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => {
            let ip: Ipv4Addr = a.parse().map_err(|_| {
                ApiError::InvalidArgument(format!(
                    "floating IP address {a:?} is not an IPv4 address"
                ))
            })?;
            let cidr = super::networks::subnet_of(&net)?;
            if !ipam::assignable(cidr, net.gateway, ip) {
                return Err(ApiError::InvalidArgument(format!(
                    "address {ip} is not a usable address of network {:?} ({}{})",
                    net.name,
                    cidr,
                    net.gateway
                        .map(|g| format!(", gateway {g}"))
                        .unwrap_or_default()
                )));
            }
            Some(ip)
        }
    };
    let id = FloatingIpId::new_random();
    let mut pool = IpPool::new(net.clone())?;
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let ip = match wanted {
            Some(ip) => ip,
            None => next_ip(ctx, &mut pool).await?,
        };
        let fip = FloatingIp {
            id,
            project: project.clone(),
            network: net.id,
            address: ip,
            port: None,
            fixed_ip: None,
            router: None,
            created_at: model::now(),
        };
        let mut t = TxnBuilder::new();
        let free = reserve_ip(&mut t, &net.id, ip, IpHolder::FloatingIp(id));
        super::networks::guard_external(ctx, &mut t, &net.id, true).await?;
        t.put(&keys::floating_ip(&id), &fip);
        super::quotas::add(ctx, &mut t, project, &quota_delta()).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(floating_ip = %id, %project, address = %ip, network = %net.id, "floating IP allocated");
            return Ok(fip);
        }
        if !a.held(free) {
            if wanted.is_some() {
                return Err(ApiError::AlreadyExists(format!(
                    "address {ip} is already in use on network {:?}",
                    net.name
                )));
            }
            pool.conflict(ip);
        }
    }
    Err(ApiError::Unavailable(
        "the external network's addresses changed concurrently too often; retry".into(),
    ))
}

/// The floating IP `r` (id or address) of `project`.
pub(crate) async fn lookup(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
) -> ApiResult<Versioned<FloatingIp>> {
    let r = r.trim();
    let not_found =
        || ApiError::NotFound(format!("floating IP {r:?} not found in project {project}"));
    if let Ok(u) = uuid::Uuid::parse_str(r) {
        return match ctx
            .store
            .read::<FloatingIp>(&keys::floating_ip(&FloatingIpId::from_uuid(u)))
            .await?
        {
            Some(v) if v.value.project == *project => Ok(v),
            _ => Err(not_found()),
        };
    }
    let ip: Ipv4Addr = r.parse().map_err(|_| {
        ApiError::InvalidArgument(format!("{r:?} is neither a floating IP id nor an address"))
    })?;
    let mut found = ctx
        .store
        .list_all(&keys::floating_ips_prefix(), |kv| {
            let f: FloatingIp = decode_or_skip(kv)?;
            (f.project == *project && f.address == ip).then(|| Versioned {
                value: f,
                mod_rev: kv.mod_revision(),
            })
        })
        .await?;
    match found.len() {
        1 => Ok(found.remove(0)),
        // The same address on two external networks: ask for the id.
        n if n > 1 => Err(ApiError::FailedPrecondition(format!(
            "{n} floating IPs of project {project} have address {ip}; use an id"
        ))),
        _ => Err(not_found()),
    }
}

/// The floating IP `r` (id or address) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<FloatingIp> {
    Ok(lookup(ctx, project, r).await?.value)
}

/// One page of the floating IPs `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<FloatingIp>> {
    super::lookup::list_page(ctx, &keys::floating_ips_prefix(), page, |kv| {
        decode_or_skip::<FloatingIp>(kv).filter(|f| scope.sees(&f.project))
    })
    .await
}

/// What to associate a floating IP with.
#[derive(Debug, Clone)]
pub enum Target {
    /// A port (id or name).
    Port(String),
    /// A server (id or name): its only port, or its port on `network`.
    Server {
        /// The server.
        server: String,
        /// Which of its networks, when it has several ports.
        network: Option<String>,
    },
}

/// The port `target` names in `project`.
async fn target_port(ctx: &Ctx, project: &ProjectId, target: &Target) -> ApiResult<Port> {
    match target {
        Target::Port(p) => Ok(super::lookup::port(ctx, project, p).await?.value),
        Target::Server { server, network } => {
            let v = super::servers::get(ctx, project, server).await?;
            let chosen: Vec<&Port> = v
                .ports
                .iter()
                .filter(|p| {
                    network.as_deref().is_none_or(|n| {
                        p.network.to_string() == n
                            || v.network_names
                                .get(&p.network)
                                .is_some_and(|name| name == n)
                    })
                })
                .collect();
            match chosen.as_slice() {
                [p] => Ok((*p).clone()),
                [] => Err(ApiError::FailedPrecondition(format!(
                    "server {server:?} has no port{}",
                    network
                        .as_deref()
                        .map(|n| format!(" on network {n:?}"))
                        .unwrap_or_default()
                ))),
                many => Err(ApiError::FailedPrecondition(format!(
                    "server {server:?} has {} ports: choose one with --network",
                    many.len()
                ))),
            }
        }
    }
}

/// Associates floating IP `r` with the port `target` names, at its fixed
/// address `fixed_ip` (one of the port's; `None`: its first): the port's
/// network must be connected by a router to the floating IP's network;
/// the port must have no other floating IP. Re-associating moves it.
pub async fn associate(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    target: &Target,
    fixed_ip: Option<&str>,
) -> ApiResult<FloatingIp> {
    let wanted = fixed_ip
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<std::net::Ipv4Addr>().map_err(|_| {
                ApiError::InvalidArgument(format!("fixed IP {s:?} is not an IPv4 address"))
            })
        })
        .transpose()?;
    for _ in 0..MAX_ATTEMPTS {
        let fip = lookup(ctx, project, r).await?;
        let port = target_port(ctx, project, target).await?;
        // Read again with its revision: the transaction below holds it, so
        // the address chosen is the port's when it commits.
        let Some(read) = ctx.store.read::<Port>(&keys::port(&port.id)).await? else {
            continue;
        };
        let (port, port_rev) = (read.value, read.mod_rev);
        let Some(first) = port.ip else {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} has no fixed IP (its network has no subnet): a floating IP needs one",
                port.id
            )));
        };
        let fixed_ip = match wanted {
            None => first,
            Some(ip) if port.ips().contains(&ip) => ip,
            Some(ip) => {
                return Err(ApiError::InvalidArgument(format!(
                    "{ip} is not a fixed IP of port {}",
                    port.id
                )))
            }
        };
        let router_id = ctx
            .store
            .read::<RouterId>(&keys::router_interface(&port.network))
            .await?
            .map(|v| v.value);
        let router = match router_id {
            Some(id) => ctx
                .store
                .read::<model::Router>(&keys::router(&id))
                .await?
                .map(|v| v.value),
            None => None,
        };
        let routed = router.as_ref().filter(|rt| {
            rt.gateway
                .as_ref()
                .is_some_and(|g| g.network == fip.value.network)
        });
        let Some(router) = routed else {
            let net = ctx
                .store
                .read::<Network>(&keys::network(&port.network))
                .await?
                .map(|v| v.value.name)
                .unwrap_or_else(|| port.network.to_string());
            // NotFound, as Neutron's ExternalGatewayForFloatingIPNotFound:
            // no router is found on the way out.
            return Err(ApiError::NotFound(format!(
                "port {}'s network {net:?} is not connected to the floating IP's external network by a router (nubo router create … --external-gateway, nubo router add subnet)",
                port.id
            )));
        };
        let mut f = fip.value.clone();
        if f.port == Some(port.id) && f.fixed_ip == Some(fixed_ip) {
            return Ok(f);
        }
        let index = keys::floating_ip_port(&port.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::floating_ip(&f.id), fip.mod_rev);
        // Moving to another address of the same port keeps its index.
        let port_free = match f.port == Some(port.id) {
            true => t.present(&index),
            false => t.absent(&index),
        };
        t.unchanged(&keys::port(&port.id), port_rev);
        t.present(&keys::router_interface(&port.network));
        if let Some(old) = f.port.filter(|p| *p != port.id) {
            t.delete(&keys::floating_ip_port(&old));
        }
        f.port = Some(port.id);
        f.fixed_ip = Some(fixed_ip);
        f.router = Some(router.id);
        t.put(&index, &f.id);
        t.put(&keys::floating_ip(&f.id), &f);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(floating_ip = %f.id, port = %port.id, address = %f.address,
                fixed_ip = %fixed_ip, "floating IP associated");
            return Ok(f);
        }
        if !a.held(port_free) {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} already has a floating IP; unset it first",
                port.id
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the floating IP changed concurrently too often; retry".into(),
    ))
}

/// Removes the association of floating IP `r` (nothing when it has none).
pub async fn disassociate(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<FloatingIp> {
    for _ in 0..MAX_ATTEMPTS {
        let fip = lookup(ctx, project, r).await?;
        let mut f = fip.value.clone();
        let Some(port) = f.port.take() else {
            return Ok(f);
        };
        f.fixed_ip = None;
        f.router = None;
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::floating_ip(&f.id), fip.mod_rev);
        t.delete(&keys::floating_ip_port(&port));
        t.put(&keys::floating_ip(&f.id), &f);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(floating_ip = %f.id, %port, "floating IP disassociated");
            return Ok(f);
        }
    }
    Err(ApiError::Unavailable(
        "the floating IP changed concurrently too often; retry".into(),
    ))
}

/// Releases floating IP `r` (disassociating it first).
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for _ in 0..MAX_ATTEMPTS {
        let fip = lookup(ctx, project, r).await?;
        let f = &fip.value;
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::floating_ip(&f.id), fip.mod_rev);
        t.delete(&keys::floating_ip(&f.id));
        t.delete(&keys::ipam(&f.network, IpAddr::V4(f.address)));
        if let Some(p) = f.port {
            t.delete(&keys::floating_ip_port(&p));
        }
        super::quotas::release(ctx, &mut t, &f.project, &quota_delta()).await?;
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(floating_ip = %f.id, address = %f.address, "floating IP released");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the floating IP changed concurrently too often; retry".into(),
    ))
}

/// The addresses of the floating IPs associated through router `router`
/// (only those whose ports are on `network`, when given).
pub(crate) async fn through_router(
    ctx: &Ctx,
    router: &RouterId,
    network: Option<&Network>,
) -> ApiResult<Vec<String>> {
    let fips: Vec<FloatingIp> = ctx
        .store
        .list_all(&keys::floating_ips_prefix(), |kv| {
            decode_or_skip::<FloatingIp>(kv).filter(|f| f.router.as_ref() == Some(router))
        })
        .await?;
    Ok(fips
        .into_iter()
        .filter(|f| {
            network.is_none_or(|n| {
                f.fixed_ip
                    .is_some_and(|ip| n.cidr.is_some_and(|c| c.contains(&ip)))
            })
        })
        .map(|f| f.address.to_string())
        .collect())
}
