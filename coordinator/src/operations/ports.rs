//! Ports and the address / MAC reservations behind them (IPAM).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use etcd_client::{GetOptions, Txn};
use nubo_common::keys;
use nubo_common::model::{self, IpAllocation, Network, Port, QuotaUsage};
use nubo_common::{
    FloatingIpId, NetworkId, NodeName, PortId, ProjectId, RouterId, SecurityGroupId,
};
use nubo_netid::MacAddr;
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

/// Addresses known to be taken on one network, for picking candidates.
#[derive(Debug)]
pub(crate) struct IpPool {
    pub(crate) net: Network,
    cidr: Ipv4Net,
    taken: HashSet<Ipv4Addr>,
    loaded: bool,
}

impl IpPool {
    /// The pool of `net`; refused for a network without a subnet.
    pub(crate) fn new(net: Network) -> ApiResult<Self> {
        Ok(Self {
            cidr: super::networks::subnet_of(&net)?,
            net,
            taken: HashSet::new(),
            loaded: false,
        })
    }

    /// Marks `ip` as taken (a reservation lost a race); small networks are
    /// re-read before the next pick.
    pub(crate) fn conflict(&mut self, ip: Ipv4Addr) {
        self.taken.insert(ip);
        if ipam::usable_count(self.cidr, self.net.gateway, &self.net.allocation_pools)
            <= SMALL_NETWORK
        {
            self.loaded = false;
        }
    }

    /// Marks `ip` as taken (reserved by this caller) without re-reading.
    pub(crate) fn taken(&mut self, ip: Ipv4Addr) {
        self.taken.insert(ip);
    }

    fn full(&self) -> ApiError {
        ApiError::ResourceExhausted(format!(
            "network {:?} is full: all {} addresses are in use",
            self.net.name,
            ipam::usable_count(self.cidr, self.net.gateway, &self.net.allocation_pools)
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
    let ip =
        p.ip.map(|ip| reserve_ip(t, &p.network, ip, IpHolder::Port(p.id)));
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
    match p.ip {
        Some(ip) => t.delete(&keys::ipam(&p.network, IpAddr::V4(ip))),
        None => t.delete(&keys::bare_port(&p.network, &p.id)),
    };
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

async fn load_taken(ctx: &Ctx, net: &NetworkId) -> ApiResult<HashSet<Ipv4Addr>> {
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
    let small = ipam::usable_count(pool.cidr, pool.net.gateway, &pool.net.allocation_pools)
        <= SMALL_NETWORK;
    if small && !pool.loaded {
        pool.taken = load_taken(ctx, &pool.net.id).await?;
        pool.loaded = true;
    }
    loop {
        let pick = ipam::pick(
            pool.cidr,
            pool.net.gateway,
            &pool.net.allocation_pools,
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
    /// Security groups (ids or names); empty = the project's `default`
    /// unless `no_security_groups`.
    pub security_groups: Vec<String>,
    /// No security group at all (Neutron's `security_groups: []`): with
    /// port security on, only DHCP and metadata pass.
    pub no_security_groups: bool,
    /// No anti-spoofing and no security groups.
    pub no_port_security: bool,
    /// Free-form description.
    pub description: String,
    /// Made administratively down (passes no traffic until enabled).
    pub disabled: bool,
    /// A chosen MAC (`aa:bb:cc:dd:ee:ff`, unicast, not all-zero, unique in
    /// the cluster); empty = a random `fa:16:3e` one.
    pub mac: String,
}

/// Changes to a port's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct PortChanges {
    /// New name (empty clears it).
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Administratively up (`true`) or down.
    pub admin_state_up: Option<bool>,
    /// New security groups (ids or names) when not empty.
    pub security_groups: Vec<String>,
    /// Remove every security group (exclusive with `security_groups`).
    pub no_security_groups: bool,
}

/// A chosen port MAC, checked: six hex octets, unicast, not all-zero, and
/// not in nubo's router OUI (gateway and node routing MACs live there: a
/// guest holding one could pose as a distributed gateway). Pure.
pub(crate) fn chosen_mac(s: &str) -> ApiResult<MacAddr> {
    let mac: MacAddr = s.trim().parse().map_err(|_| {
        ApiError::InvalidArgument(format!(
            "mac {s:?} is not a MAC address (six hex octets, aa:bb:cc:dd:ee:ff)"
        ))
    })?;
    if mac.is_zero() || mac.is_multicast() {
        return Err(ApiError::InvalidArgument(format!(
            "mac {mac} is not a unicast address: a port's MAC must be unicast and not all-zero"
        )));
    }
    if mac.octets()[..3] == nubo_netid::ROUTER_MAC_PREFIX {
        return Err(ApiError::InvalidArgument(format!(
            "mac {mac} is in nubo's router range (fa:16:3f:…), reserved for router gateways"
        )));
    }
    Ok(mac)
}

/// Checks a port's name and description. Pure.
fn check_text(name: &str, description: &str) -> ApiResult<()> {
    if !name.is_empty() {
        validate::name("port", name)?;
    }
    validate::description(description)
}

/// The security groups asked for, resolved: `none` = no group, an empty
/// list = the project's `default`.
async fn resolve_groups(
    ctx: &Ctx,
    project: &ProjectId,
    refs: &[String],
    none: bool,
) -> ApiResult<Vec<SecurityGroupId>> {
    match (none, refs.is_empty()) {
        (true, true) => Ok(Vec::new()),
        (true, false) => Err(ApiError::InvalidArgument(
            "security groups and \"no security group\" exclude each other".into(),
        )),
        (false, _) => super::security_groups::secgroups(ctx, project, refs).await,
    }
}

/// Creates a port of `project` with a MAC of its own and, when its network
/// has a subnet, an address (a port of a network without a subnet has none).
pub async fn create(ctx: &Ctx, project: &ProjectId, r: NewPort) -> ApiResult<Port> {
    let project = project.clone();
    check_text(&r.name, &r.description)?;
    let chosen = match r.mac.trim() {
        "" => None,
        s => Some(chosen_mac(s)?),
    };
    let net = super::lookup::usable_network(ctx, &project, &r.network)
        .await?
        .value;
    let fixed = match r.ip.trim() {
        "" => None,
        s => {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| ApiError::InvalidArgument(format!("ip {s} is not an IPv4 address")))?;
            let cidr = super::networks::subnet_of(&net)?;
            if !ipam::assignable(cidr, net.gateway, ip) {
                return Err(ApiError::InvalidArgument(format!(
                    "ip {ip} is not an assignable address of network {:?} ({}, gateway {})",
                    net.name,
                    cidr,
                    net.gateway.map_or("none".to_string(), |g| g.to_string())
                )));
            }
            Some(ip)
        }
    };
    let sgs = resolve_groups(ctx, &project, &r.security_groups, r.no_security_groups).await?;
    let net_name = net.name.clone();
    let mut port = Port {
        id: PortId::new_random(),
        name: r.name.clone(),
        description: r.description.clone(),
        admin_state_up: !r.disabled,
        project,
        network: net.id,
        mac: chosen.unwrap_or_else(|| ipam::random_mac(&mut rand::rng())),
        ip: None,
        security_groups: sgs,
        port_security: !r.no_port_security,
        device: None,
        node: None,
        router: None,
        created_at: model::now(),
    };
    // No subnet: the port has no address (Neutron's port on a bare network).
    let mut pool = match net.cidr {
        Some(_) => Some(IpPool::new(net)?),
        None => None,
    };
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        port.ip = match (fixed, pool.as_mut()) {
            (Some(ip), _) => Some(ip),
            (None, Some(pool)) => Some(next_ip(ctx, pool).await?),
            (None, None) => None,
        };
        let mut t = TxnBuilder::new();
        let (ip_free, mac_free) = reserve_port(&port, &mut t);
        let delta = QuotaUsage {
            ports: 1,
            ..Default::default()
        };
        super::quotas::add(ctx, &mut t, &port.project, &delta).await?;
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(port = %port.id, network = %port.network, ip = ?port.ip, "port created");
            return Ok(port);
        }
        if let (Some(guard), Some(ip)) = (ip_free, port.ip) {
            if !a.held(guard) {
                if fixed.is_some() {
                    return Err(ApiError::AlreadyExists(format!(
                        "address {ip} is already in use on network {net_name:?}"
                    )));
                }
                if let Some(pool) = pool.as_mut() {
                    pool.conflict(ip);
                }
            }
        }
        if !a.held(mac_free) {
            if let Some(mac) = chosen {
                return Err(ApiError::AlreadyExists(format!(
                    "mac {mac} is already in use by another port"
                )));
            }
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

/// Changes the name, description, administrative state and/or security
/// groups of port `r` of `project` (one guarded write; the agents of the
/// port's node follow the record).
pub async fn update(ctx: &Ctx, project: &ProjectId, r: &str, c: PortChanges) -> ApiResult<Port> {
    check_text(
        c.name.as_deref().unwrap_or_default(),
        c.description.as_deref().unwrap_or_default(),
    )?;
    let sgs = match (c.no_security_groups, c.security_groups.is_empty()) {
        (false, true) => None,
        (none, _) => Some(resolve_groups(ctx, project, &c.security_groups, none).await?),
    };
    for _ in 0..8 {
        let mut p = super::lookup::port(ctx, project, r).await?;
        let v = &mut p.value;
        if let Some(sgs) = &sgs {
            v.security_groups = sgs.clone();
        }
        if let Some(name) = &c.name {
            v.name = name.clone();
        }
        if let Some(d) = &c.description {
            v.description = d.clone();
        }
        if let Some(up) = c.admin_state_up {
            v.admin_state_up = up;
        }
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
            tracing::info!(port = %p.value.id, admin_state_up = p.value.admin_state_up, "port updated");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chosen_mac_is_a_unicast_non_zero_non_router_address() {
        assert_eq!(
            chosen_mac(" FA:16:3E:00:00:0A ").unwrap().to_string(),
            "fa:16:3e:00:00:0a"
        );
        assert!(chosen_mac("02:00:00:00:00:01").is_ok());
        for (bad, why) in [
            ("00:00:00:00:00:00", "unicast"),
            ("01:00:5e:00:00:01", "unicast"),
            ("ff:ff:ff:ff:ff:ff", "unicast"),
            ("fa:16:3f:00:00:01", "router range"),
            ("fa:16:3e:00:00", "not a MAC"),
            ("fa-16-3e-00-00-01", "not a MAC"),
            ("zz:16:3e:00:00:01", "not a MAC"),
        ] {
            match chosen_mac(bad) {
                Err(ApiError::InvalidArgument(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
