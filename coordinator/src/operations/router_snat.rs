//! Per-node router SNAT addresses (`/nubo/v1/router-snat/<node>/<router>`).
//!
//! Every node that hosts a port of one of a router's networks runs a copy
//! of the router and SNATs outbound traffic to an address of the router's
//! external network. Each (router, node) pair needs an address of its own:
//! one address answered for by several nodes would send return traffic to
//! whichever node answered ARP last.
//!
//! The leader keeps `router-snat/` equal to the desired set
//! ([`desired`]): the pairs (router, node) where the router has a gateway
//! and the node hosts at least one bound port on one of the router's
//! networks. [`plan`] compares it with what exists (pure, unit-tested);
//! [`allocate`] and [`release`] apply one pair each in one transaction
//! that writes (or deletes) the address's IPAM entry
//! (`private/ipam/<ext>/<ip>`, holder `router` + `snat_node`) and the
//! record together, guarded by the leader's lease, so two coordinators
//! that both believe they lead can never hand out an address twice. The
//! loop that drives it is [`crate::background::router_snat`].
//!
//! Deleting a router releases its SNAT addresses in the delete's own
//! transaction ([`release_into`]); see `routers::delete` for why.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use nubo_common::keys;
use nubo_common::model::{IpAllocation, Network, RouterSnat};
use nubo_common::{NetworkId, NodeName, RouterId};
use nubo_store::kv::{decode_kv, decode_or_skip};
use nubo_store::TxnBuilder;

use super::ports::{next_ip, reserve_ip, IpHolder, IpPool, MAX_ALLOC_ATTEMPTS};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// A (router, node) pair: one SNAT address.
pub type Pair = (RouterId, NodeName);

/// What the controller needs to know of a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterFacts {
    /// The revision of the router's record (allocations compare it).
    pub mod_rev: i64,
    /// Its external network, when it has a gateway.
    pub gateway: Option<NetworkId>,
    /// Its tenant networks.
    pub subnets: Vec<NetworkId>,
}

/// An existing SNAT record and the revision of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The record.
    pub snat: RouterSnat,
    /// Its key's mod revision (releases compare it).
    pub mod_rev: i64,
}

/// The pairs that should have an address, each with the external network
/// to take it from: for every bound port (`(network, node)`) on a network
/// of a router that has a gateway, that router on that node.
pub fn desired<'a>(
    routers: &HashMap<RouterId, RouterFacts>,
    bound_ports: impl IntoIterator<Item = (&'a NetworkId, &'a NodeName)>,
) -> BTreeMap<Pair, NetworkId> {
    let mut routed: HashMap<&NetworkId, (&RouterId, &NetworkId)> = HashMap::new();
    for (id, r) in routers {
        if let Some(ext) = &r.gateway {
            for n in &r.subnets {
                routed.insert(n, (id, ext));
            }
        }
    }
    let mut want = BTreeMap::new();
    for (net, node) in bound_ports {
        if let Some((r, ext)) = routed.get(net) {
            want.insert((**r, node.clone()), **ext);
        }
    }
    want
}

/// What to change: pairs to give an address (with their external
/// network) and records to release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pairs without a record (or whose record is being released because
    /// it is on another network).
    pub allocate: Vec<(Pair, NetworkId)>,
    /// Records no longer wanted, or on a network that is no longer the
    /// router's external network.
    pub release: Vec<Existing>,
}

impl Plan {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.allocate.is_empty() && self.release.is_empty()
    }
}

/// Compares the desired pairs with the existing records.
pub fn plan(desired: &BTreeMap<Pair, NetworkId>, existing: &BTreeMap<Pair, Existing>) -> Plan {
    let mut p = Plan::default();
    for (pair, e) in existing {
        if desired.get(pair) != Some(&e.snat.network) {
            p.release.push(e.clone());
        }
    }
    for (pair, net) in desired {
        if existing.get(pair).map(|e| &e.snat.network) != Some(net) {
            p.allocate.push((pair.clone(), *net));
        }
    }
    p
}

/// What an allocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocated {
    /// The record was written with this address, at this revision.
    Done(RouterSnat, i64),
    /// Nothing written: the router changed, the record exists already, or
    /// this coordinator no longer leads. The next pass decides again.
    Stale,
}

/// The external networks' address pools of one pass (read once, each
/// address reserved marked as taken).
#[derive(Debug, Default)]
pub struct Pools(HashMap<NetworkId, IpPool>);

impl Pools {
    async fn get(&mut self, ctx: &Ctx, net: &NetworkId) -> ApiResult<&mut IpPool> {
        if !self.0.contains_key(net) {
            let n = ctx
                .store
                .read::<Network>(&keys::network(net))
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("external network {net} is gone")))?;
            self.0.insert(*net, IpPool::new(n.value)?);
        }
        self.0
            .get_mut(net)
            .ok_or_else(|| ApiError::NotFound(format!("external network {net} is gone")))
    }
}

/// Gives `pair` an address of `network`: one transaction creates the IPAM
/// entry (create-if-absent) and the record (create-if-absent), compared
/// with the router's revision `router_rev` (it still has this gateway and
/// these networks) and with the leader's `lease`. A full network is
/// [`ApiError::ResourceExhausted`].
pub async fn allocate(
    ctx: &Ctx,
    pools: &mut Pools,
    lease: i64,
    pair: &Pair,
    network: &NetworkId,
    router_rev: i64,
) -> ApiResult<Allocated> {
    let (router, node) = pair;
    let key = keys::router_snat(node, router);
    let pool = pools.get(ctx, network).await?;
    for _ in 0..MAX_ALLOC_ATTEMPTS {
        let ip = next_ip(ctx, pool).await?;
        let mut t = TxnBuilder::new();
        t.when(crate::election::leader_guard(lease));
        t.unchanged(&keys::router(router), router_rev);
        t.present(&keys::network(network));
        let new = t.absent(&key);
        let free = reserve_ip(
            &mut t,
            network,
            ip,
            IpHolder::RouterSnat(*router, node.clone()),
        );
        let snat = RouterSnat {
            router: *router,
            node: node.clone(),
            network: *network,
            ip,
        };
        t.put(&key, &snat);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            pool.taken(ip);
            tracing::info!(%router, %node, %network, %ip, "router SNAT address allocated");
            return Ok(Allocated::Done(snat, a.revision()));
        }
        if !a.held(free) && a.held(new) {
            pool.conflict(ip);
            continue;
        }
        return Ok(Allocated::Stale);
    }
    Err(ApiError::Unavailable(
        "the external network's addresses changed concurrently too often; retry".into(),
    ))
}

/// Adds to `t` the release of `snat` (its key at `mod_rev`): the record is
/// deleted and, when the IPAM entry of its address is still held by this
/// router on this node, that entry too (compared with its revision, so an
/// entry someone else holds is never deleted).
pub(crate) async fn release_into(
    ctx: &Ctx,
    t: &mut TxnBuilder,
    snat: &RouterSnat,
    mod_rev: i64,
) -> ApiResult<()> {
    let key = keys::router_snat(&snat.node, &snat.router);
    t.unchanged(&key, mod_rev);
    t.delete(&key);
    let ipam = keys::ipam(&snat.network, IpAddr::V4(snat.ip));
    match ctx.store.get_kv(&ipam).await? {
        Some(kv) => {
            let ours = decode_kv::<IpAllocation>(&kv).is_ok_and(|a| {
                a.router == Some(snat.router) && a.snat_node.as_ref() == Some(&snat.node)
            });
            if ours {
                t.unchanged(&ipam, kv.mod_revision());
                t.delete(&ipam);
            } else {
                tracing::warn!(router = %snat.router, node = %snat.node, ip = %snat.ip,
                    "the address of a router SNAT record is held by something else; only the record is deleted");
            }
        }
        None => {
            t.absent(&ipam);
        }
    }
    Ok(())
}

/// Releases one record (see [`release_into`]), compared with the leader's
/// `lease`. `false`: something changed meanwhile; the next pass decides
/// again.
pub async fn release(ctx: &Ctx, lease: i64, e: &Existing) -> ApiResult<bool> {
    let mut t = TxnBuilder::new();
    t.when(crate::election::leader_guard(lease));
    release_into(ctx, &mut t, &e.snat, e.mod_rev).await?;
    let done = ctx.store.commit(&t).await?.succeeded();
    if done {
        tracing::info!(router = %e.snat.router, node = %e.snat.node, ip = %e.snat.ip,
            "router SNAT address released");
    }
    Ok(done)
}

/// Every SNAT record of `routers`, by router, each list ordered by node.
pub async fn of_routers(
    ctx: &Ctx,
    routers: &[RouterId],
) -> ApiResult<HashMap<RouterId, Vec<RouterSnat>>> {
    let all: Vec<RouterSnat> = ctx
        .store
        .list_all(&keys::router_snats_prefix(), |kv| {
            decode_or_skip::<RouterSnat>(kv).filter(|s| routers.contains(&s.router))
        })
        .await?;
    let mut out: HashMap<RouterId, Vec<RouterSnat>> = HashMap::new();
    for s in all {
        out.entry(s.router).or_default().push(s);
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| a.node.cmp(&b.node));
    }
    Ok(out)
}

/// The SNAT records of one router, with their key revisions.
pub(crate) async fn of_router(ctx: &Ctx, router: &RouterId) -> ApiResult<Vec<Existing>> {
    Ok(ctx
        .store
        .list_all(&keys::router_snats_prefix(), |kv| {
            decode_or_skip::<RouterSnat>(kv)
                .filter(|s| s.router == *router)
                .map(|snat| Existing {
                    snat,
                    mod_rev: kv.mod_revision(),
                })
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(n: &str) -> NodeName {
        NodeName::new(n).unwrap()
    }

    fn existing(r: RouterId, n: &str, net: NetworkId, last: u8) -> (Pair, Existing) {
        (
            (r, node(n)),
            Existing {
                snat: RouterSnat {
                    router: r,
                    node: node(n),
                    network: net,
                    ip: Ipv4Addr::new(10, 77, 0, last),
                },
                mod_rev: 7,
            },
        )
    }

    #[test]
    fn desired_pairs_follow_bound_ports_on_routed_networks_with_a_gateway() {
        let (ext, net1, net2, lonely, net3) = (
            NetworkId::new_random(),
            NetworkId::new_random(),
            NetworkId::new_random(),
            NetworkId::new_random(),
            NetworkId::new_random(),
        );
        let (r1, r2) = (RouterId::new_random(), RouterId::new_random());
        let routers = HashMap::from([
            (
                r1,
                RouterFacts {
                    mod_rev: 1,
                    gateway: Some(ext),
                    subnets: vec![net1, net2],
                },
            ),
            // No gateway: no SNAT anywhere.
            (
                r2,
                RouterFacts {
                    mod_rev: 1,
                    gateway: None,
                    subnets: vec![net3],
                },
            ),
        ]);
        let (a, b, c) = (node("hv-a"), node("hv-b"), node("hv-c"));
        let ports = [
            (net1, a.clone()),
            (net2, a.clone()), // two networks of r1 on one node: one pair
            (net2, b.clone()),
            (lonely, c.clone()), // not routed
            (net3, c.clone()),   // routed without gateway
        ];
        let want = desired(&routers, ports.iter().map(|(n, x)| (n, x)));
        assert_eq!(
            want,
            BTreeMap::from([((r1, a.clone()), ext), ((r1, b.clone()), ext)])
        );
        assert!(desired(&routers, std::iter::empty()).is_empty());
    }

    #[test]
    fn plan_allocates_the_missing_and_releases_the_unwanted() {
        let (ext, other) = (NetworkId::new_random(), NetworkId::new_random());
        let (r1, r2) = (RouterId::new_random(), RouterId::new_random());
        let want = BTreeMap::from([
            ((r1, node("a")), ext),
            ((r1, node("b")), ext),
            ((r2, node("a")), ext),
        ]);
        let have = BTreeMap::from([
            existing(r1, "a", ext, 2),   // kept
            existing(r1, "c", ext, 3),   // node left
            existing(r2, "a", other, 4), // gateway moved to another network
        ]);
        let p = plan(&want, &have);
        let allocate: std::collections::BTreeSet<_> = p.allocate.iter().cloned().collect();
        assert_eq!(
            allocate,
            [((r1, node("b")), ext), ((r2, node("a")), ext)].into()
        );
        assert_eq!(p.allocate.len(), 2);
        let released: Vec<_> = p
            .release
            .iter()
            .map(|e| (e.snat.router, e.snat.node.to_string()))
            .collect();
        assert!(released.contains(&(r1, "c".into())));
        assert!(released.contains(&(r2, "a".into())));
        assert_eq!(released.len(), 2);
        // Idempotent: once applied, nothing to do.
        let applied = BTreeMap::from([
            existing(r1, "a", ext, 2),
            existing(r1, "b", ext, 5),
            existing(r2, "a", ext, 6),
        ]);
        assert!(plan(&want, &applied).is_empty());
        // Nothing wanted: everything goes.
        assert_eq!(plan(&BTreeMap::new(), &applied).release.len(), 3);
        assert!(plan(&BTreeMap::new(), &BTreeMap::new()).is_empty());
    }
}
