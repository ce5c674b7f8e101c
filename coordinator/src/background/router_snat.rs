//! The leader's router SNAT loop: keeps `router-snat/` equal to what the
//! routers and the bound ports ask for ([`crate::operations::router_snat`]).
//!
//! Every coordinator follows routers, ports and the SNAT records (one
//! list at one revision, then watches), so a new leader starts from a warm
//! copy; only the leader acts, after every change and every [`PERIOD`]
//! (which retries what could not be done: a full external network, a lost
//! race). Each allocation and release is one transaction guarded by the
//! leader's lease and the revisions it was decided from.
//!
//! A record is released only once it has been unwanted for
//! [`RELEASE_AFTER`]: the three prefixes are watched by separate streams,
//! so for a few milliseconds a record written by another coordinator can be
//! seen before the port that justified it; without the grace the loop
//! could release and reallocate a node's address (and reset that node's
//! outbound connections) for nothing. An allocation needs no grace: one
//! made from a stale view is released by a later pass, and the address is
//! never given twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use etcd_client::{EventType, KeyValue};
use nubo_common::keys::{self, Key};
use nubo_common::model::{self, Port, Router, RouterSnat};
use nubo_common::{NetworkId, NodeName, PortId, RouterId};
use nubo_store::kv::kv_key;
use nubo_store::{ListWatch, Update};
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::ApiError;
use crate::operations::router_snat::{self, Allocated, Existing, Pair, Pools, RouterFacts};
use crate::state::Ctx;

/// How often the leader reconciles without a change.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How long a record must be unwanted before it is released (module docs).
pub const RELEASE_AFTER: Duration = Duration::from_millis(500);
/// How long a pair whose external network is full waits before the next
/// attempt.
pub const FULL_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per pair per this long about a full network.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// The followed copy of routers, bound ports and SNAT records.
#[derive(Debug, Default)]
struct View {
    routers: HashMap<RouterId, RouterFacts>,
    /// Bound ports only: network and node.
    ports: HashMap<PortId, (NetworkId, NodeName)>,
    snats: BTreeMap<Pair, Existing>,
    /// Routers whose record does not decode (hand-edited): their records
    /// are neither allocated nor released until it is readable again.
    unreadable: HashSet<RouterId>,
}

impl View {
    fn apply(&mut self, kv: &KeyValue, deleted: bool) {
        self.apply_raw(kv_key(kv), kv.value(), kv.mod_revision(), deleted);
    }

    /// [`View::apply`] on the parts of a key-value (`rev`: its mod
    /// revision).
    fn apply_raw(&mut self, key: &str, value: &[u8], rev: i64, deleted: bool) {
        match keys::parse(key) {
            Some(Key::Router(id)) => {
                self.unreadable.remove(&id);
                if deleted {
                    self.routers.remove(&id);
                    return;
                }
                match model::decode::<Router>(key, value) {
                    Ok(r) => {
                        self.routers.insert(
                            id,
                            RouterFacts {
                                mod_rev: rev,
                                gateway: r.gateway.map(|g| g.network),
                                subnets: r.subnets,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(key, error = %e, "unreadable router: its SNAT addresses are left as they are");
                        self.routers.remove(&id);
                        self.unreadable.insert(id);
                    }
                }
            }
            Some(Key::Port(id)) => {
                if deleted {
                    self.ports.remove(&id);
                    return;
                }
                match model::decode::<Port>(key, value) {
                    Ok(p) => match (p.device, p.node) {
                        (Some(_), Some(node)) => {
                            self.ports.insert(id, (p.network, node));
                        }
                        _ => {
                            self.ports.remove(&id);
                        }
                    },
                    // What was known of it stays (no release on a bad value).
                    Err(e) => tracing::warn!(key, error = %e, "unreadable port"),
                }
            }
            Some(Key::RouterSnat(node, router)) => {
                let s = (!deleted)
                    .then(|| model::decode::<RouterSnat>(key, value).ok())
                    .flatten()
                    .filter(|s| s.node == node && s.router == router);
                match s {
                    Some(snat) => {
                        self.snats
                            .insert((router, node), Existing { snat, mod_rev: rev });
                    }
                    None if deleted => {
                        self.snats.remove(&(router, node));
                    }
                    None => {
                        // Unreadable: released (and rewritten if wanted).
                        tracing::warn!(key, "unreadable router SNAT record");
                        self.snats.insert(
                            (router, node.clone()),
                            Existing {
                                snat: RouterSnat {
                                    router,
                                    node,
                                    network: NetworkId::from_uuid(uuid::Uuid::nil()),
                                    ip: std::net::Ipv4Addr::UNSPECIFIED,
                                },
                                mod_rev: rev,
                            },
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn replace(&mut self, kvs: &[KeyValue]) {
        *self = Self::default();
        for kv in kvs {
            self.apply(kv, false);
        }
    }
}

/// The loop's memory between passes.
#[derive(Debug, Default)]
struct Pacing {
    /// When each currently unwanted record was first seen unwanted.
    unwanted_since: HashMap<Pair, Instant>,
    /// Pairs whose network was full: not tried before the instant.
    full_until: HashMap<Pair, Instant>,
    /// When the last "network full" warning of a pair was logged.
    warned: HashMap<Pair, Instant>,
}

/// Runs until shutdown.
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let mut lw = ListWatch::new(
        ctx.store.clone(),
        vec![
            keys::routers_prefix(),
            keys::ports_prefix(),
            keys::router_snats_prefix(),
        ],
    );
    let mut view = View::default();
    let mut pacing = Pacing::default();
    let mut listed = false;
    loop {
        let update = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            u = lw.next() => Some(u),
            _ = tokio::time::sleep(PERIOD) => None,
        };
        let mut next = update;
        // Take every update already waiting before deciding (a burst of
        // port events makes one pass, not one per event).
        while let Some(u) = next {
            match u {
                Ok(Update::Listed { kvs, .. }) => {
                    view.replace(&kvs);
                    listed = true;
                }
                Ok(Update::Events { events, .. }) => {
                    for ev in &events {
                        if let Some(kv) = ev.kv() {
                            view.apply(kv, ev.event_type() == EventType::Delete);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "router SNAT loop: list/watch failed");
                    tokio::time::sleep(PERIOD).await;
                }
            }
            next = tokio::time::timeout(Duration::ZERO, lw.next()).await.ok();
        }
        let Some(lease) = ctx.leader.leader_lease() else {
            continue;
        };
        if listed {
            pass(&ctx, lease, &mut view, &mut pacing).await;
        }
    }
}

/// One reconciliation from the followed view; what it writes is applied
/// to the view at once (the watch confirms it later).
async fn pass(ctx: &Ctx, lease: i64, view: &mut View, pacing: &mut Pacing) {
    let want = router_snat::desired(&view.routers, view.ports.values().map(|(n, x)| (n, x)));
    let plan = router_snat::plan(&want, &view.snats);
    let now = Instant::now();
    let unwanted: Vec<Pair> = plan
        .release
        .iter()
        .map(|e| (e.snat.router, e.snat.node.clone()))
        .collect();
    pacing.unwanted_since.retain(|p, _| unwanted.contains(p));
    for e in &plan.release {
        if view.unreadable.contains(&e.snat.router) {
            continue;
        }
        let pair = (e.snat.router, e.snat.node.clone());
        let since = *pacing.unwanted_since.entry(pair.clone()).or_insert(now);
        if now.duration_since(since) < RELEASE_AFTER {
            continue;
        }
        let span = tracing::info_span!("router_snat_release", router = %pair.0, node = %pair.1);
        let r = router_snat::release(ctx, lease, e)
            .instrument(span.clone())
            .await;
        let _g = span.entered();
        match r {
            Ok(true) => {
                view.snats.remove(&pair);
                pacing.unwanted_since.remove(&pair);
            }
            Ok(false) => tracing::debug!("router SNAT release lost a race; next pass"),
            Err(e) => tracing::warn!(error = %e, "router SNAT address not released"),
        }
    }
    pacing.full_until.retain(|_, t| *t > now);
    pacing
        .warned
        .retain(|_, t| now.duration_since(*t) < WARN_EVERY);
    let mut pools = Pools::default();
    for (pair, net) in &plan.allocate {
        // A record on another network is released first (above); until
        // then the pair keeps it.
        if view.snats.contains_key(pair) || pacing.full_until.contains_key(pair) {
            continue;
        }
        let Some(router_rev) = view.routers.get(&pair.0).map(|r| r.mod_rev) else {
            continue;
        };
        let span = tracing::info_span!("router_snat_allocate", router = %pair.0, node = %pair.1);
        let r = router_snat::allocate(ctx, &mut pools, lease, pair, net, router_rev)
            .instrument(span.clone())
            .await;
        let _g = span.entered();
        match r {
            Ok(Allocated::Done(snat, rev)) => {
                view.snats
                    .insert(pair.clone(), Existing { snat, mod_rev: rev });
            }
            Ok(Allocated::Stale) => tracing::debug!("router SNAT allocation was stale; next pass"),
            Err(ApiError::ResourceExhausted(why)) => {
                pacing.full_until.insert(pair.clone(), now + FULL_BACKOFF);
                if !pacing.warned.contains_key(pair) {
                    pacing.warned.insert(pair.clone(), now);
                    tracing::warn!(network = %net, %why,
                        "no address left for a router's SNAT on this node: its guests have no way out until one is freed (retried every {FULL_BACKOFF:?}; this warning at most every {WARN_EVERY:?})");
                }
            }
            Err(e) => tracing::warn!(error = %e, "router SNAT address not allocated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::RouterGateway;

    fn router(id: RouterId, ext: NetworkId, subnets: Vec<NetworkId>) -> Vec<u8> {
        model::encode(&Router {
            id,
            name: "r1".into(),
            disabled: false,
            interface_ports: Vec::new(),
            project: nubo_common::ProjectId::new("p1").unwrap(),
            gateway: Some(RouterGateway {
                network: ext,
                ip: "10.77.0.2".parse().unwrap(),
            }),
            subnets,
            created_at: model::now(),
        })
    }

    fn port(id: PortId, net: NetworkId, node: Option<&str>) -> Vec<u8> {
        model::encode(&Port {
            id,
            name: String::new(),
            description: String::new(),
            admin_state_up: true,
            project: nubo_common::ProjectId::new("p1").unwrap(),
            network: net,
            mac: "fa:16:3e:00:00:01".parse().unwrap(),
            ip: Some("10.0.0.5".parse().unwrap()),
            more_ips: Vec::new(),
            security_groups: vec![],
            port_security: true,
            device: node.map(|_| nubo_common::InstanceId::new_random()),
            node: node.map(|n| NodeName::new(n).unwrap()),
            router: None,
            host: None,
            created_at: model::now(),
        })
    }

    #[test]
    fn the_view_keeps_bound_ports_and_never_drops_an_unreadable_router() {
        let (r, ext, net) = (
            RouterId::new_random(),
            NetworkId::new_random(),
            NetworkId::new_random(),
        );
        let (p1, p2) = (PortId::new_random(), PortId::new_random());
        let mut v = View::default();
        v.apply_raw(&keys::router(&r), &router(r, ext, vec![net]), 3, false);
        v.apply_raw(&keys::port(&p1), &port(p1, net, Some("hv-a")), 4, false);
        v.apply_raw(&keys::port(&p2), &port(p2, net, None), 5, false);
        assert_eq!(v.routers[&r].mod_rev, 3);
        assert_eq!(v.ports.len(), 1, "an unbound port asks for nothing");
        let want = router_snat::desired(&v.routers, v.ports.values().map(|(n, x)| (n, x)));
        assert_eq!(want.len(), 1);
        // A port whose value does not decode keeps what was known of it.
        v.apply_raw(&keys::port(&p1), b"garbage", 6, false);
        assert!(v.ports.contains_key(&p1));
        // Unbinding and deleting drop it.
        v.apply_raw(&keys::port(&p1), &port(p1, net, None), 7, false);
        assert!(v.ports.is_empty());
        // An unreadable router is remembered as such (its records are not
        // released), until readable or deleted.
        v.apply_raw(&keys::router(&r), b"garbage", 8, false);
        assert!(v.unreadable.contains(&r) && !v.routers.contains_key(&r));
        v.apply_raw(&keys::router(&r), b"", 9, true);
        assert!(v.unreadable.is_empty() && v.routers.is_empty());
        // A SNAT record under a key that names another pair is not trusted.
        let node = NodeName::new("hv-a").unwrap();
        let snat = model::encode(&RouterSnat {
            router: r,
            node: NodeName::new("hv-b").unwrap(),
            network: ext,
            ip: "10.77.0.9".parse().unwrap(),
        });
        v.apply_raw(&keys::router_snat(&node, &r), &snat, 10, false);
        let e = &v.snats[&(r, node.clone())];
        assert_eq!(
            (e.snat.network, e.mod_rev),
            (NetworkId::from_uuid(uuid::Uuid::nil()), 10)
        );
        v.apply_raw(&keys::router_snat(&node, &r), b"", 11, true);
        assert!(v.snats.is_empty());
    }
}
