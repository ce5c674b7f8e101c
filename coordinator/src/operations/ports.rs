//! Ports and the address / MAC reservations behind them (IPAM).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use etcd_client::{GetOptions, Txn};
use nubo_common::keys;
use nubo_common::model::{self, IpAllocation, Network, Port, QuotaUsage, Subnet};
use nubo_common::{FloatingIpId, NetworkId, NodeName, PortId, ProjectId, RouterId};
use nubo_store::kv::{put, unchanged};
use nubo_store::{Guard, TxnBuilder};

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;
use crate::validate;

/// Networks up to this many addresses have their taken set read before
/// picking (cheap, and avoids blind collisions on nearly full networks).
const SMALL_NETWORK: u64 = 4096;

/// Attempts at reserving an address / MAC before giving up.
pub(crate) const MAX_ALLOC_ATTEMPTS: usize = 64;

/// Addresses known to be taken on one subnet of a network, for picking
/// candidates.
#[derive(Debug)]
pub(crate) struct IpPool {
    pub(crate) net: Network,
    cidr: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    taken: HashSet<Ipv4Addr>,
    loaded: bool,
}

impl IpPool {
    /// The pool of the first subnet of `net`; refused for a network
    /// without a subnet.
    pub(crate) fn new(net: Network) -> ApiResult<Self> {
        Ok(Self {
            cidr: super::networks::subnet_of(&net)?,
            gateway: net.gateway,
            ranges: net.allocation_pools.clone(),
            net,
            taken: HashSet::new(),
            loaded: false,
        })
    }

    /// The pool of subnet `sn` of `net`.
    pub(crate) fn for_subnet(net: Network, sn: &Subnet) -> Self {
        Self {
            cidr: sn.cidr,
            gateway: sn.gateway,
            ranges: sn.allocation_pools.clone(),
            net,
            taken: HashSet::new(),
            loaded: false,
        }
    }

    /// Marks `ip` as taken (a reservation lost a race); small networks are
    /// re-read before the next pick.
    pub(crate) fn conflict(&mut self, ip: Ipv4Addr) {
        self.taken.insert(ip);
        if ipam::usable_count(self.cidr, self.gateway, &self.ranges) <= SMALL_NETWORK {
            self.loaded = false;
        }
    }

    /// Marks `ip` as taken (reserved by this caller) without re-reading.
    pub(crate) fn taken(&mut self, ip: Ipv4Addr) {
        self.taken.insert(ip);
    }

    fn full(&self) -> ApiError {
        ApiError::ResourceExhausted(format!(
            "subnet {} of network {:?} is full: all {} addresses are in use",
            self.cidr,
            self.net.name,
            ipam::usable_count(self.cidr, self.gateway, &self.ranges)
        ))
    }
}

/// Who holds an address of a network's IPAM.
#[derive(Debug, Clone)]
pub(crate) enum IpHolder {
    /// A port's fixed address.
    Port(PortId),
    /// A floating IP.
    FloatingIp(FloatingIpId),
    /// A router's gateway address.
    RouterGateway(RouterId),
    /// A router's SNAT address on one node.
    RouterSnat(RouterId, NodeName),
}

/// Reserves address `ip` of `network` for `holder` in `t`: the address
/// must be free (the returned guard tells, when `t` fails, whether it was
/// taken). The one place an IPAM entry is written.
pub(crate) fn reserve_ip(
    t: &mut TxnBuilder,
    network: &NetworkId,
    ip: Ipv4Addr,
    holder: IpHolder,
) -> Guard {
    let key = keys::ipam(network, IpAddr::V4(ip));
    let free = t.absent(&key);
    let mut a = IpAllocation {
        port: None,
        floating_ip: None,
        router: None,
        snat_node: None,
        ip: IpAddr::V4(ip),
    };
    match holder {
        IpHolder::Port(p) => a.port = Some(p),
        IpHolder::FloatingIp(f) => a.floating_ip = Some(f),
        IpHolder::RouterGateway(r) => a.router = Some(r),
        IpHolder::RouterSnat(r, n) => {
            a.router = Some(r);
            a.snat_node = Some(n);
        }
    }
    t.put(&key, &a);
    free
}

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

pub(crate) async fn load_taken(ctx: &Ctx, net: &NetworkId) -> ApiResult<HashSet<Ipv4Addr>> {
    let prefix = keys::ipam_prefix(net);
    let mut taken = HashSet::new();
    let mut start = prefix.clone().into_bytes();
    let end = keys::prefix_end(&prefix);
    loop {
        let resp = ctx
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
pub(crate) async fn next_ip(ctx: &Ctx, pool: &mut IpPool) -> ApiResult<Ipv4Addr> {
    let small = ipam::usable_count(pool.cidr, pool.gateway, &pool.ranges) <= SMALL_NETWORK;
    if small && !pool.loaded {
        pool.taken = load_taken(ctx, &pool.net.id).await?;
        pool.loaded = true;
    }
    loop {
        let pick = ipam::pick(
            pool.cidr,
            pool.gateway,
            &pool.ranges,
            &pool.taken,
            &mut rand::rng(),
        );
        match pick {
            Some(ip) => return Ok(ip),
            None if pool.loaded => return Err(pool.full()),
            None => {
                pool.taken = load_taken(ctx, &pool.net.id).await?;
                pool.loaded = true;
            }
        }
    }
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
