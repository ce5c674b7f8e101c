//! Ports and the address / MAC reservations behind them (IPAM).

use std::net::IpAddr;

use etcd_client::Txn;
use nubo_common::keys;
use nubo_common::model::{self, Port, QuotaUsage};
use nubo_common::{PortId, ProjectId};
use nubo_store::kv::{put, unchanged};
use nubo_store::{Guard, TxnBuilder};

pub(crate) use super::ip_pool::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;
use crate::validate;

/// Reserves a new port in `t`: its address and its MAC must be free (the
/// returned guards, in that order, tell which was taken when `t` fails),
/// and writes the port.
/// A port without an address reserves none (its address guard is `None`).
pub(crate) fn reserve_port(p: &Port, t: &mut TxnBuilder) -> (Option<Guard>, Guard) {
    let (ips, mac) = reserve_port_ips(p, t);
    (ips.into_iter().next(), mac)
}

/// [`reserve_port`] with a guard for each of the port's addresses
/// ([`Port::ips`] order).
pub(crate) fn reserve_port_ips(p: &Port, t: &mut TxnBuilder) -> (Vec<Guard>, Guard) {
    let ip = p
        .ips()
        .into_iter()
        .map(|ip| reserve_ip(t, &p.network, ip, IpHolder::Port(p.id)))
        .collect();
    if p.ip.is_none() {
        t.put(&keys::bare_port(&p.network, &p.id), &p.id);
    }
    let mac_key = keys::mac(&p.mac);
    let mac = t.absent(&mac_key);
    t.put(&mac_key, &p.id);
    t.put(&keys::port(&p.id), p);
    (ip, mac)
}

/// Deletes a port in `t` and releases its address, MAC and owner mark.
pub(crate) fn release_port(p: &Port, t: &mut TxnBuilder) {
    t.delete(&keys::port(&p.id));
    for ip in p.ips() {
        t.delete(&keys::ipam(&p.network, IpAddr::V4(ip)));
    }
    if p.ip.is_none() {
        t.delete(&keys::bare_port(&p.network, &p.id));
    }
    t.delete(&keys::mac(&p.mac));
    t.delete(&keys::port_owner(&p.id));
}

/// Adds to `t` (a transaction deleting `ports`) the disassociation of their
/// floating IPs: each one's record loses its port, its index goes, and the
/// indexes are guarded so that an association made meanwhile fails `t`.
pub(crate) async fn disassociate_ports_into(
    ctx: &Ctx,
    ports: &[PortId],
    t: &mut TxnBuilder,
) -> ApiResult<()> {
    let index: Vec<String> = ports.iter().map(keys::floating_ip_port).collect();
    let read = ctx.store.get_many(&index).await?;
    for (key, kv) in index.iter().zip(read) {
        let Some(kv) = kv else {
            t.absent(key);
            continue;
        };
        t.unchanged(key, kv.mod_revision());
        t.delete(key);
        let Ok(id) = nubo_store::kv::decode_kv::<nubo_common::FloatingIpId>(&kv) else {
            tracing::warn!(%key, "unreadable floating IP index removed with its port");
            continue;
        };
        let fkey = keys::floating_ip(&id);
        if let Some(f) = ctx.store.read::<model::FloatingIp>(&fkey).await? {
            let mut v = f.value;
            v.port = None;
            v.fixed_ip = None;
            v.router = None;
            t.unchanged(&fkey, f.mod_rev);
            t.put(&fkey, &v);
        }
    }
    Ok(())
}
/// Whether `port` can be plugged into a server: not plugged anywhere, not
/// a router's interface, and with an address (a port made before its
/// network had a subnet has none). Pure.
pub(crate) fn check_pluggable(port: &Port) -> ApiResult<()> {
    if let Some(dev) = port.device {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} is already plugged into server {dev}",
            port.id
        )));
    }
    if let Some(r) = port.router {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} is an interface of router {r}",
            port.id
        )));
    }
    if port.ip.is_none() {
        return Err(ApiError::FailedPrecondition(format!(
            "port {} has no fixed IP (it was made before its network had a subnet); a server's port needs one: make a new port",
            port.id
        )));
    }
    Ok(())
}

/// A new port (not plugged into a server).
#[derive(Debug, Clone, Default)]
pub struct NewPort {
    /// Its name (optional, not unique).
    pub name: String,
    /// Its network (id or name).
    pub network: String,
    /// A fixed address; empty = allocated.
    pub ip: String,
    /// Fixed addresses (subnet and/or address each), instead of `ip`.
    pub fixed_ips: Vec<super::fixed_ips::FixedIpRequest>,
    /// Security groups (ids or names); empty = the project's `default`.
    pub security_groups: Vec<String>,
    /// No anti-spoofing and no security groups.
    pub no_port_security: bool,
}

/// Creates a port of `project` with a MAC of its own and, when its network
/// has a subnet, an address (a port of a network without a subnet has none).
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewPort) -> ApiResult<Port> {
    let project = project.clone();
    if !r.name.is_empty() {
        validate::name("port", &r.name)?;
    }
    let net = super::lookup::usable_network(ctx, &project, &r.network)
        .await?
        .value;
    // No subnet: the port has no address (Neutron's port on a bare network).
    let mut addresses = super::fixed_ips::Addresses::resolve(&net, &r.ip, &r.fixed_ips)?;
    let sgs = super::security_groups::secgroups(ctx, &project, &r.security_groups).await?;
    let net_name = net.name.clone();
    let mut port = Port {
        id: PortId::new_random(),
        name: r.name.clone(),
        project,
        network: net.id,
        mac: ipam::random_mac(&mut rand::rng()),
        ip: None,
        more_ips: Vec::new(),
        security_groups: sgs,
        port_security: !r.no_port_security,
        device: None,
        node: None,
        router: None,
        created_at: model::now(),
    };
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let ips = addresses.pick(ctx).await?;
        port.ip = ips.first().copied();
        port.more_ips = ips.iter().skip(1).copied().collect();
        let mut t = TxnBuilder::new();
        let (ips_free, mac_free) = reserve_port_ips(&port, &mut t);
        let delta = QuotaUsage {
            ports: 1,
            ..Default::default()
        };
        super::quotas::add(ctx, &mut t, &port.project, &delta).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(port = %port.id, network = %port.network, ips = ?port.ips(), "port created");
            return Ok(port);
        }
        let taken: Vec<bool> = ips_free.iter().map(|g| !a.held(*g)).collect();
        addresses.conflict(&ips, &taken)?;
        if !a.held(mac_free) {
            port.mac = ipam::random_mac(&mut rand::rng());
        }
    }
    Err(ApiError::Unavailable(format!(
        "could not reserve an address on network {net_name:?} after {MAX_ALLOC_ATTEMPTS} attempts (heavy contention); retry"
    )))
}

/// The port `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<Port> {
    Ok(super::lookup::port(ctx, project, r).await?.value)
}

/// One page of the ports `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<Port>> {
    super::lookup::list_scoped(ctx, &keys::ports_prefix(), scope, page).await
}

/// Replaces the security groups of port `r` of `project`.
pub async fn set_security_groups(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    security_groups: &[String],
) -> ApiResult<Port> {
    let sgs = super::security_groups::secgroups(ctx, project, security_groups).await?;
    for _ in 0..8 {
        let mut p = super::lookup::port(ctx, project, r).await?;
        p.value.security_groups = sgs.clone();
        let key = keys::port(&p.value.id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, p.mod_rev)])
                    .and_then([put(&key, &p.value)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(p.value);
        }
    }
    Err(ApiError::Unavailable(
        "the port changed concurrently too often; retry".into(),
    ))
}

/// Deletes port `r` of `project` and releases its address and MAC;
/// refused while it is plugged into a server.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for _ in 0..32 {
        let p = super::lookup::port(ctx, project, r).await?;
        if let Some(dev) = p.value.device {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} is plugged into server {dev}; delete the server first",
                p.value.id
            )));
        }
        if let Some(r) = p.value.router {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} is an interface of router {r}; remove it from the router (which deletes it)",
                p.value.id
            )));
        }
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::port(&p.value.id), p.mod_rev);
        release_port(&p.value, &mut t);
        disassociate_ports_into(ctx, &[p.value.id], &mut t).await?;
        let delta = QuotaUsage {
            ports: 1,
            ..Default::default()
        };
        super::quotas::release(ctx, &mut t, &p.value.project, &delta).await?;
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(port = %p.value.id, "port deleted");
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "the port changed concurrently too often; retry".into(),
    ))
}
