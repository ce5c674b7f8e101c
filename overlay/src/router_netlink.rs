//! Observing and applying router namespaces over rtnetlink (and the
//! namespace's `/proc/sys/net` settings).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nubo_netid::MacAddr;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tracing::{debug, info, warn};

use crate::error::{netlink_errno, OverlayError};
use crate::garp::send_gratuitous_arp;
use crate::guest::list_netns_guests;
use crate::netlink::Netlink;
use crate::netns::{create_netns, delete_netns, netns_path, run_in_netns};
use crate::router::{
    LegNeighbour, Neighbour, ObservedLeg, ObservedRouterNs, ObservedRouters, RouterAction,
};
use crate::tap::validate_ifname;

/// Router actions that failed, each with its error.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} router actions failed: {}", failures.len(), failures.iter().map(|(a, e)| format!("{a:?}: {e}")).collect::<Vec<_>>().join("; "))]
pub struct RouterApplyError {
    /// Actions attempted.
    pub total: usize,
    /// The failed ones.
    pub failures: Vec<(RouterAction, OverlayError)>,
}

/// Namespace settings of a router: forwarding on; no IPv6 (the legs would
/// send router solicitations and take SLAAC addresses on tenant networks);
/// ARP answered only for addresses of the receiving leg (else the external
/// leg would answer for the tenant gateways); reverse-path filtering off
/// (replies to a floating IP return through another leg than the DNAT).
const NETNS_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_ignore", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_announce", "2"),
    ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
    ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
    ("/proc/sys/net/ipv4/ip_forward", "1"),
];

/// Observes every namespace whose name starts with `prefix`.
pub async fn observe_routers(prefix: &str) -> Result<ObservedRouters, OverlayError> {
    let mut out = ObservedRouters::default();
    for name in list_netns_guests(prefix)? {
        let ns = run_in_netns(&name, |nl| async move { nl.observe_router_ns().await }).await??;
        out.namespaces.insert(name, ns);
    }
    Ok(out)
}

/// Applies a router plan from the node's namespace (`host`: a handle
/// there). Every action is attempted (later passes retry what failed);
/// the failures are returned together.
pub async fn apply_routers(
    host: &Netlink,
    actions: &[RouterAction],
) -> Result<(), RouterApplyError> {
    let mut failures = Vec::new();
    for a in actions {
        match apply_one(host, a).await {
            Ok(()) => debug!(action = ?a, "router action applied"),
            Err(e) => {
                warn!(action = ?a, error = %e, "router action failed");
                failures.push((a.clone(), e));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(RouterApplyError {
            total: actions.len(),
            failures,
        })
    }
}

async fn apply_one(host: &Netlink, a: &RouterAction) -> Result<(), OverlayError> {
    match a {
        RouterAction::CreateNetns { netns } => {
            info!(%netns, "creating router namespace");
            create_netns(netns).await?;
            configure(netns).await
        }
        RouterAction::ConfigureNetns { netns } => configure(netns).await,
        RouterAction::DeleteNetns { netns } => {
            info!(%netns, "removing router namespace");
            // Deleting the legs first takes their host ends away at once
            // (the namespace itself may outlive its name for a moment).
            let legs = run_in_netns(netns, |nl| async move {
                let links = nl.links().await?;
                for l in links.iter().filter(|l| l.name != "lo") {
                    nl.delete_link(&l.name).await?;
                }
                Ok::<(), OverlayError>(())
            })
            .await
            .and_then(|r| r);
            if let Err(e) = legs {
                warn!(%netns, error = %e, "could not delete the router legs; removing the namespace anyway");
            }
            delete_netns(netns)
        }
        RouterAction::CreateLeg {
            netns,
            host: host_end,
            inner,
            mac,
            mtu,
        } => {
            info!(%netns, host = %host_end, %inner, %mac, "creating router leg");
            create_leg(host, netns, host_end, inner, *mac, *mtu).await
        }
        RouterAction::DeleteLeg { netns, inner } => {
            let inner = inner.clone();
            in_ns(netns, move |nl| async move { nl.delete_link(&inner).await }).await
        }
        RouterAction::SetUp { netns, inner } => {
            let inner = inner.clone();
            in_ns(netns, move |nl| async move { nl.set_up(&inner).await }).await
        }
        RouterAction::AddAddress { netns, inner, addr } => {
            let (inner, addr) = (inner.clone(), *addr);
            in_ns(netns, move |nl| async move {
                nl.add_address(&inner, IpAddr::V4(addr.addr()), addr.prefix_len())
                    .await
            })
            .await
        }
        RouterAction::DelAddress { netns, inner, addr } => {
            let (inner, addr) = (inner.clone(), *addr);
            in_ns(netns, move |nl| async move {
                nl.del_address(&inner, addr).await
            })
            .await
        }
        RouterAction::Announce {
            netns,
            inner,
            ip,
            mac,
        } => {
            let (inner, ip, mac) = (inner.clone(), *ip, *mac);
            info!(%netns, %inner, %ip, "announcing address (gratuitous ARP)");
            // Announced again later, off the pass: a leg just plugged into
            // its bridge may drop the first copies, and a neighbour holding
            // the address's old MAC (a host that failed) would keep it.
            let (later_ns, later_inner) = (netns.clone(), inner.clone());
            tokio::spawn(async move {
                for pause in REANNOUNCE_AFTER {
                    tokio::time::sleep(pause).await;
                    let ifname = later_inner.clone();
                    let sent = in_ns(&later_ns, move |_| async move {
                        send_gratuitous_arp(&ifname, mac, ip)
                    })
                    .await;
                    if let Err(error) = sent {
                        tracing::debug!(netns = %later_ns, %ip, %error, "re-announcement not sent");
                        return;
                    }
                }
            });
            in_ns(netns, move |_| async move {
                send_gratuitous_arp(&inner, mac, ip)
            })
            .await
        }
        RouterAction::SetDefaultRoute { netns, inner, via } => {
            let (inner, via) = (inner.clone(), *via);
            in_ns(netns, move |nl| async move {
                nl.set_default_route(&inner, via).await
            })
            .await
        }
        RouterAction::DelDefaultRoute { netns } => {
            in_ns(netns, |nl| async move { nl.del_default_route().await }).await
        }
        RouterAction::SetNeighbour {
            netns,
            inner,
            neighbour,
        } => {
            let (inner, n) = (inner.clone(), *neighbour);
            in_ns(
                netns,
                move |nl| async move { nl.set_neighbour(&inner, n).await },
            )
            .await
        }
        RouterAction::DelNeighbour { netns, inner, ip } => {
            let (inner, ip) = (inner.clone(), *ip);
            in_ns(netns, move |nl| async move {
                nl.del_neighbour(&inner, ip).await
            })
            .await
        }
    }
}

/// Runs a fallible netlink job inside `netns`.
/// When an announced address is announced again (after the first copies).
const REANNOUNCE_AFTER: [std::time::Duration; 2] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(3),
];

async fn in_ns<F, Fut>(netns: &str, f: F) -> Result<(), OverlayError>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), OverlayError>>,
{
    run_in_netns(netns, f).await?
}

/// Writes [`NETNS_SYSCTLS`] inside `netns` and sets `lo` up.
async fn configure(netns: &str) -> Result<(), OverlayError> {
    in_ns(netns, |nl| async move {
        for (path, value) in NETNS_SYSCTLS {
            // IPv6 may be compiled out: then there is nothing to disable.
            if path.contains("ipv6") && !std::path::Path::new(path).exists() {
                continue;
            }
            std::fs::write(path, value)
                .map_err(|e| OverlayError::sys(format!("write {value} to {path}"), e))?;
        }
        nl.set_up("lo").await
    })
    .await
}

/// A veth pair: `host_end` in `host`'s namespace (up, not attached: the
/// overlay or provider subsystem attaches it), `inner` created directly
/// inside `netns` with `mac`, then set up.
async fn create_leg(
    host: &Netlink,
    netns: &str,
    host_end: &str,
    inner: &str,
    mac: MacAddr,
    mtu: u32,
) -> Result<(), OverlayError> {
    validate_ifname(host_end)?;
    validate_ifname(inner)?;
    if host.link_exists(host_end).await? {
        // A leftover of a leg whose namespace went away: replace it.
        host.delete_link(host_end).await?;
    }
    let path = netns_path(netns)?;
    let ns_file =
        File::open(&path).map_err(|e| OverlayError::sys(format!("open {}", path.display()), e))?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(inner)
        .address(mac.octets().to_vec())
        .mtu(mtu)
        .setns_by_fd(ns_file.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_end)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    host.handle()
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(|e| OverlayError::netlink(format!("create veth {host_end} for {netns}"), e))?;
    drop(ns_file);
    host.set_up(host_end).await?;
    let inner = inner.to_string();
    in_ns(netns, move |nl| async move { nl.set_up(&inner).await }).await
}

impl Netlink {
    /// The router-relevant state of this handle's namespace.
    async fn observe_router_ns(&self) -> Result<ObservedRouterNs, OverlayError> {
        let links = self.links().await?;
        let mut addresses = self.addresses().await?;
        let mut out = ObservedRouterNs {
            forwarding: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
                .map(|v| v.trim() == "1")
                .unwrap_or(false),
            ..ObservedRouterNs::default()
        };
        let mut names = std::collections::HashMap::new();
        for l in links {
            names.insert(l.index, l.name.clone());
            if l.name == "lo" {
                continue;
            }
            let v4: BTreeSet<Ipv4Net> = addresses
                .remove(&l.index)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(ip, len)| match ip {
                    IpAddr::V4(a) => Ipv4Net::new(a, len).ok(),
                    IpAddr::V6(_) => None,
                })
                .collect();
            out.links.insert(
                l.name,
                ObservedLeg {
                    mac: l.mac,
                    mtu: l.mtu,
                    up: l.up,
                    addresses: v4,
                },
            );
        }
        out.default_route = self.default_route(&names).await?;
        out.neighbours = self.permanent_neighbours(&names).await?;
        Ok(out)
    }

    async fn default_route(
        &self,
        names: &std::collections::HashMap<u32, String>,
    ) -> Result<Option<(String, Ipv4Addr)>, OverlayError> {
        let mut stream = self
            .handle()
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| OverlayError::netlink("list routes", e))?
        {
            if msg.header.destination_prefix_length != 0
                || msg.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            let mut via = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                    RouteAttribute::Oif(i) => oif = names.get(i).cloned(),
                    _ => {}
                }
            }
            if let (Some(leg), Some(via)) = (oif, via) {
                return Ok(Some((leg, via)));
            }
        }
        Ok(None)
    }

    async fn permanent_neighbours(
        &self,
        names: &std::collections::HashMap<u32, String>,
    ) -> Result<BTreeSet<LegNeighbour>, OverlayError> {
        let mut out = BTreeSet::new();
        let mut stream = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| OverlayError::netlink("list neighbours", e))?
        {
            if msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let Some(leg) = names.get(&msg.header.ifindex) else {
                continue;
            };
            let mut ip = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.insert((leg.clone(), Neighbour { ip, mac }));
            }
        }
        Ok(out)
    }

    /// Removes an IPv4 address from a link (missing is fine).
    async fn del_address(&self, link: &str, addr: Ipv4Net) -> Result<(), OverlayError> {
        let index = self.index_of(link).await?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
        match self.handle().address().del(msg).execute().await {
            Err(e) if netlink_errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            other => {
                other.map_err(|e| OverlayError::netlink(format!("remove {addr} from {link}"), e))
            }
        }
    }

    async fn set_default_route(&self, leg: &str, via: Ipv4Addr) -> Result<(), OverlayError> {
        let index = self.index_of(leg).await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(via)
            .output_interface(index)
            .build();
        self.handle()
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| OverlayError::netlink(format!("default route via {via} dev {leg}"), e))
    }

    async fn del_default_route(&self) -> Result<(), OverlayError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .build();
        match self.handle().route().del(route).execute().await {
            Err(e) if netlink_errno(&e) == Some(libc::ESRCH) => Ok(()),
            other => other.map_err(|e| OverlayError::netlink("remove the default route", e)),
        }
    }

    async fn set_neighbour(&self, leg: &str, n: Neighbour) -> Result<(), OverlayError> {
        let index = self.index_of(leg).await?;
        self.handle()
            .neighbours()
            .add(index, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                OverlayError::netlink(format!("neighbour {} lladdr {} dev {leg}", n.ip, n.mac), e)
            })
    }

    async fn del_neighbour(&self, leg: &str, ip: Ipv4Addr) -> Result<(), OverlayError> {
        let Some(index) = self.find_index(leg).await? else {
            return Ok(());
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle().neighbours().del(msg).execute().await {
            Err(e) if netlink_errno(&e) == Some(libc::ENOENT) => Ok(()),
            other => other
                .map_err(|e| OverlayError::netlink(format!("remove neighbour {ip} dev {leg}"), e)),
        }
    }
}
