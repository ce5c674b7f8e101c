//! A port's fixed addresses: each in a subnet of the port's network, asked
//! for (an address, a subnet, or both) or picked by IPAM, and reserved under
//! `/nubo/v1/private/ipam/<network>/<ip>` in the port's own transaction, so
//! no address is ever held twice. [`set`] replaces a port's set (Neutron's
//! PUT `fixed_ips`, which moves a port to another subnet of its network).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use nubo_common::keys;
use nubo_common::model::{self, Network, Port, Subnet};
use nubo_common::{NetworkId, ProjectId, SubnetId};
use nubo_store::{Guard, TxnBuilder};

use super::ip_pool::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use crate::error::{ApiError, ApiResult};
use crate::ipam;
use crate::state::Ctx;

/// One fixed address as a request gives it: a subnet (id), an address, or
/// both; empty strings are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedIpRequest {
    /// The subnet's id.
    pub subnet: String,
    /// The address.
    pub ip: String,
}

/// One address a port will hold: its subnet and, when asked for, the
/// address itself (else IPAM picks one from `pool`).
#[derive(Debug)]
struct Wanted {
    subnet: Subnet,
    fixed: Option<Ipv4Addr>,
    pool: IpPool,
}

/// The addresses a port asks for, resolved against its network.
#[derive(Debug)]
pub(crate) struct Addresses {
    net_name: String,
    wanted: Vec<Wanted>,
}

/// Resolves `r` against `net`: the subnet named, or the one holding the
/// address; the address must be assignable there. Pure.
fn resolve_one(net: &Network, r: &FixedIpRequest) -> ApiResult<(Subnet, Option<Ipv4Addr>)> {
    let subnet = match r.subnet.trim() {
        "" => None,
        s => {
            let id: SubnetId = s.parse().map_err(|_| {
                ApiError::InvalidArgument(format!("subnet {s:?} is not a subnet id"))
            })?;
            Some(net.subnet(&id).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "subnet {s} is not a subnet of network {:?}",
                    net.name
                ))
            })?)
        }
    };
    let ip = match r.ip.trim() {
        "" => None,
        s => Some(
            s.parse::<Ipv4Addr>()
                .map_err(|_| ApiError::InvalidArgument(format!("ip {s} is not an IPv4 address")))?,
        ),
    };
    let subnet = match (subnet, ip) {
        (Some(sn), _) => sn,
        (None, Some(ip)) => net.subnet_of_ip(ip).ok_or_else(|| {
            ApiError::InvalidArgument(format!("ip {ip} is in no subnet of network {:?}", net.name))
        })?,
        (None, None) => {
            return Err(ApiError::InvalidArgument(
                "a fixed IP needs a subnet or an address (subnet=ID,ip=ADDRESS)".into(),
            ))
        }
    };
    if let Some(ip) = ip {
        if !ipam::assignable(subnet.cidr, subnet.gateway, ip) {
            return Err(ApiError::InvalidArgument(format!(
                "ip {ip} is not an assignable address of network {:?} ({}, gateway {})",
                net.name,
                subnet.cidr,
                subnet.gateway.map_or("none".to_string(), |g| g.to_string())
            )));
        }
    }
    Ok((subnet, ip))
}

impl Addresses {
    /// What a new port of `net` asks for: `fixed` (each entry one address),
    /// else `ip` (one address, legacy field), else one address of the
    /// first subnet; nothing on a network without a subnet. Pure.
    pub(crate) fn resolve(net: &Network, ip: &str, fixed: &[FixedIpRequest]) -> ApiResult<Self> {
        let requests: Vec<FixedIpRequest> = match (fixed, ip.trim()) {
            ([], "") => net
                .subnets()
                .first()
                .map(|s| FixedIpRequest {
                    subnet: s.id.to_string(),
                    ip: String::new(),
                })
                .into_iter()
                .collect(),
            ([], ip) => {
                super::ip_pool::subnet_of(net)?;
                vec![FixedIpRequest {
                    subnet: String::new(),
                    ip: ip.into(),
                }]
            }
            (many, _) => many.to_vec(),
        };
        if !requests.is_empty() {
            super::ip_pool::subnet_of(net)?;
        }
        let mut wanted = Vec::new();
        for r in &requests {
            let (subnet, fixed) = resolve_one(net, r)?;
            if let Some(ip) = fixed {
                if wanted.iter().any(|w: &Wanted| w.fixed == Some(ip)) {
                    return Err(ApiError::InvalidArgument(format!(
                        "ip {ip} is asked for twice"
                    )));
                }
            }
            let pool = IpPool::for_subnet(net.clone(), &subnet);
            wanted.push(Wanted {
                subnet,
                fixed,
                pool,
            });
        }
        Ok(Self {
            net_name: net.name.clone(),
            wanted,
        })
    }

    /// Keeps, for an entry naming only a subnet, the address `current`
    /// already holds in it (Neutron's update keeps it).
    fn keep(&mut self, current: &[Ipv4Addr]) {
        let mut used: Vec<Ipv4Addr> = self.wanted.iter().filter_map(|w| w.fixed).collect();
        for w in self.wanted.iter_mut().filter(|w| w.fixed.is_none()) {
            if let Some(ip) = current
                .iter()
                .find(|ip| w.subnet.cidr.contains(*ip) && !used.contains(ip))
            {
                w.fixed = Some(*ip);
                used.push(*ip);
            }
        }
    }

    /// The addresses to try next: the asked-for ones, and a pick per
    /// other entry (distinct from each other).
    pub(crate) async fn pick(&mut self, ctx: &Ctx) -> ApiResult<Vec<Ipv4Addr>> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for i in 0..self.wanted.len() {
            let ip = match self.wanted[i].fixed {
                Some(ip) => ip,
                None => {
                    let mut ip = next_ip(ctx, &mut self.wanted[i].pool).await?;
                    while out.contains(&ip) {
                        self.wanted[i].pool.taken(ip);
                        ip = next_ip(ctx, &mut self.wanted[i].pool).await?;
                    }
                    ip
                }
            };
            out.push(ip);
        }
        Ok(out)
    }

    /// Records that `ips[i]` (as [`Addresses::pick`] gave them) was taken
    /// when the reservation failed: an asked-for address is a clear error,
    /// a picked one is tried again.
    pub(crate) fn conflict(&mut self, ips: &[Ipv4Addr], taken: &[bool]) -> ApiResult<()> {
        for ((w, ip), taken) in self.wanted.iter_mut().zip(ips).zip(taken) {
            if !taken {
                continue;
            }
            if w.fixed == Some(*ip) {
                return Err(ApiError::AlreadyExists(format!(
                    "address {ip} is already in use on network {:?}",
                    self.net_name
                )));
            }
            w.pool.conflict(*ip);
        }
        Ok(())
    }
}

/// Replaces the fixed addresses of port `r` of `project` with `fixed`
/// (at least one): an entry naming only a subnet keeps the address the
/// port has there, else gets a new one; addresses no longer held are
/// released and new ones reserved in one transaction guarded by the
/// port's revision. Refused for a router's interface, and while a
/// floating IP maps to an address being dropped. A plugged port's node
/// converges (DHCP answers the new first address on the guest's next
/// request).
pub async fn set(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    fixed: &[FixedIpRequest],
) -> ApiResult<Port> {
    if fixed.is_empty() {
        return Err(ApiError::InvalidArgument(
            "a port keeps at least one fixed IP (nubo)".into(),
        ));
    }
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let p = super::lookup::port(ctx, project, r).await?;
        let old = p.value;
        if let Some(rt) = old.router {
            return Err(ApiError::FailedPrecondition(format!(
                "port {} is an interface of router {rt}: its address is the router's",
                old.id
            )));
        }
        let net = ctx
            .store
            .read::<Network>(&keys::network(&old.network))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("network {} of port {}", old.network, old.id))
            })?;
        let mut want = Addresses::resolve(&net.value, "", fixed)?;
        let current = old.ips();
        want.keep(&current);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ips = want.pick(ctx).await?;
            let mut port = old.clone();
            port.ip = ips.first().copied();
            port.more_ips = ips.iter().skip(1).copied().collect();
            if port == old {
                return Ok(port);
            }
            let mut t = TxnBuilder::new();
            t.unchanged(&keys::port(&old.id), p.mod_rev);
            t.unchanged(&keys::network(&net.value.id), net.mod_rev);
            let fip_index = keys::floating_ip_port(&old.id);
            let fip = ctx
                .store
                .read::<nubo_common::FloatingIpId>(&fip_index)
                .await?;
            match &fip {
                Some(f) => {
                    t.unchanged(&fip_index, f.mod_rev);
                    let fkey = keys::floating_ip(&f.value);
                    if let Some(rec) = ctx.store.read::<model::FloatingIp>(&fkey).await? {
                        if let Some(kept) = rec.value.fixed_ip.filter(|ip| !ips.contains(ip)) {
                            return Err(ApiError::FailedPrecondition(format!(
                                "floating IP {} maps to address {kept} of port {}: disassociate it first",
                                rec.value.address, old.id
                            )));
                        }
                        t.unchanged(&fkey, rec.mod_rev);
                    }
                }
                None => {
                    t.absent(&fip_index);
                }
            }
            for ip in current.iter().filter(|ip| !ips.contains(ip)) {
                t.delete(&keys::ipam(&old.network, IpAddr::V4(*ip)));
            }
            let guards: Vec<(usize, Guard)> = ips
                .iter()
                .enumerate()
                .filter(|(_, ip)| !current.contains(ip))
                .map(|(i, ip)| {
                    (
                        i,
                        reserve_ip(&mut t, &old.network, *ip, IpHolder::Port(old.id)),
                    )
                })
                .collect();
            t.put(&keys::port(&old.id), &port);
            let a = ctx.store.commit(&t).await?;
            if a.succeeded() {
                tracing::info!(port = %port.id, ips = ?port.ips(), "port's fixed IPs replaced");
                return Ok(port);
            }
            let mut taken = vec![false; ips.len()];
            for (i, g) in &guards {
                taken[*i] = !a.held(*g);
            }
            if !taken.iter().any(|t| *t) || attempt >= 8 {
                break; // the port, its network or its floating IP changed: re-read
            }
            want.conflict(&ips, &taken)?;
        }
    }
    Err(ApiError::Unavailable(
        "the port changed concurrently too often; retry".into(),
    ))
}

/// The networks of `ports` (to name the subnet of each address), read in
/// one request; a missing or unreadable one is left out.
pub async fn networks_of(ctx: &Ctx, ports: &[Port]) -> ApiResult<HashMap<NetworkId, Network>> {
    let ids: BTreeSet<NetworkId> = ports.iter().map(|p| p.network).collect();
    let keys: Vec<String> = ids.iter().map(keys::network).collect();
    Ok(ctx
        .store
        .get_many(&keys)
        .await?
        .iter()
        .flatten()
        .filter_map(nubo_store::kv::decode_or_skip::<Network>)
        .map(|n| (n.id, n))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net() -> Network {
        let mut n: Network = serde_json::from_value(serde_json::json!({
            "id": "0b6f4f4e-7c1e-4d5a-9a53-4c3f2d1e0a11", "name": "n", "project": "p",
            "cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "vni": 7,
            "created_at": "2026-01-01T00:00:00Z"}))
        .unwrap();
        let mut s = n.subnets();
        s.push(Subnet {
            id: "5d0c2d52-5bb8-4e0c-8d9e-6c1a6f0c2b22".parse().unwrap(),
            name: None,
            cidr: "10.1.0.0/24".parse().unwrap(),
            gateway: Some("10.1.0.1".parse().unwrap()),
            dns: Vec::new(),
            dhcp_disabled: false,
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
        });
        n.set_subnets(s);
        n
    }

    fn req(subnet: &str, ip: &str) -> FixedIpRequest {
        FixedIpRequest {
            subnet: subnet.into(),
            ip: ip.into(),
        }
    }

    #[test]
    fn requests_resolve_to_subnets_or_say_why_not() {
        let n = net();
        let second = "5d0c2d52-5bb8-4e0c-8d9e-6c1a6f0c2b22";
        let a = Addresses::resolve(&n, "", &[]).unwrap();
        assert_eq!(a.wanted.len(), 1);
        assert_eq!(a.wanted[0].subnet.id, n.first_subnet_id());
        let a = Addresses::resolve(&n, "", &[req(second, ""), req("", "10.0.0.7")]).unwrap();
        assert_eq!(a.wanted[0].subnet.cidr.to_string(), "10.1.0.0/24");
        assert_eq!(a.wanted[1].fixed, Some("10.0.0.7".parse().unwrap()));
        let a = Addresses::resolve(&n, "10.1.0.9", &[]).unwrap();
        assert_eq!(a.wanted[0].subnet.cidr.to_string(), "10.1.0.0/24");
        for (bad, why) in [
            (vec![req("", "10.2.0.9")], "in no subnet"),
            (vec![req(second, "10.0.0.9")], "not an assignable address"),
            (vec![req("", "10.1.0.1")], "not an assignable address"),
            (vec![req("", "")], "needs a subnet or an address"),
            (vec![req("nope", "")], "not a subnet id"),
            (
                vec![req("9d0c2d52-5bb8-4e0c-8d9e-6c1a6f0c2b22", "")],
                "not a subnet of network",
            ),
            (vec![req("", "10.0.0.9"), req("", "10.0.0.9")], "twice"),
        ] {
            let e = Addresses::resolve(&n, "", &bad).unwrap_err();
            assert!(e.to_string().contains(why), "{e} lacks {why:?}");
        }
        let mut bare = n.clone();
        bare.set_subnets(Vec::new());
        assert!(Addresses::resolve(&bare, "", &[])
            .unwrap()
            .wanted
            .is_empty());
        assert!(Addresses::resolve(&bare, "10.0.0.9", &[]).is_err());
    }

    #[test]
    fn an_update_keeps_the_address_held_in_a_named_subnet() {
        let n = net();
        let first = n.first_subnet_id().to_string();
        let second = "5d0c2d52-5bb8-4e0c-8d9e-6c1a6f0c2b22";
        let mut a = Addresses::resolve(&n, "", &[req(&first, ""), req(second, "")]).unwrap();
        a.keep(&["10.0.0.5".parse().unwrap()]);
        assert_eq!(a.wanted[0].fixed, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(a.wanted[1].fixed, None);
    }
}
