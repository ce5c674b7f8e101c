//! IPAM of a network's subnets: the pool of free addresses of one subnet,
//! picking the next address to try, reading the taken ones, and the one
//! place an address is reserved (`/nubo/v1/private/ipam/<network>/<ip>`,
//! create-if-absent in the caller's transaction).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use etcd_client::GetOptions;
use ipnet::Ipv4Net;
use nubo_common::keys;
use nubo_common::model::{IpAllocation, Network, Subnet};
use nubo_common::{FloatingIpId, NetworkId, NodeName, PortId, RouterId};
use nubo_store::{Guard, TxnBuilder};

use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;

/// The subnet of `net`, or a clear error for a network created without
/// one.
pub fn subnet_of(net: &Network) -> ApiResult<Ipv4Net> {
    net.cidr.ok_or_else(|| {
        ApiError::FailedPrecondition(format!(
            "network {:?} has no subnet yet: add one first (nubo network subnet set {} --cidr CIDR)",
            net.name, net.name
        ))
    })
}

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
            cidr: subnet_of(&net)?,
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
