//! The [`Netlink`] handle: observe and apply over rtnetlink.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use nubo_netid::MacAddr;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVxlan};
use tracing::{debug, info, warn};

use crate::error::{netlink_errno, ActionFailure, ApplyError, OverlayError};
use crate::link_action::LinkAction;
use crate::names::{bridge_name, parse_bridge_name, parse_vxlan_name, vxlan_name};
use crate::observed::{LinkKind, ObservedBridge, ObservedOverlay, ObservedPort, ObservedVxlan};
use crate::plan::OverlayAction;
use crate::spec::{FdbEntry, VXLAN_PORT};

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const ENOENT: i32 = libc::ENOENT;

/// A handle on an rtnetlink socket.
///
/// The socket belongs to the network namespace of the thread that called
/// [`Netlink::new`]; every operation acts on that namespace, whatever
/// thread later runs the futures. Cloning is cheap and shares the socket.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// The parts of a link message the overlay cares about.
#[derive(Debug)]
pub(crate) struct LinkSummary {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) kind: LinkKind,
    pub(crate) mtu: u32,
    pub(crate) up: bool,
    pub(crate) master: Option<u32>,
    pub(crate) mac: Option<MacAddr>,
    pub(crate) vxlan: Vec<InfoVxlan>,
    /// The VLAN id of a VLAN device.
    pub(crate) vlan_id: Option<u16>,
    /// The lower link (`IFLA_LINK`: a VLAN device's parent).
    pub(crate) link: Option<u32>,
}

impl Netlink {
    /// Opens an rtnetlink socket in the calling thread's network namespace
    /// and spawns its connection task on the current tokio runtime.
    ///
    /// Must be called from within a tokio runtime.
    pub fn new() -> Result<Netlink, OverlayError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(OverlayError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Reads the overlay state of the namespace: every link (with its kind,
    /// MTU, up flag and master), the addresses of the `nb-*` bridges and
    /// the remote FDB entries of the `vx-*` devices.
    pub async fn observe(&self) -> Result<ObservedOverlay, OverlayError> {
        let links = self.links().await?;
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut addresses = self.addresses().await?;
        let mut fdb = self.vxlan_fdb().await?;
        let mut obs = ObservedOverlay::default();
        for link in links {
            let master = link.master.and_then(|m| names.get(&m).cloned());
            if let Some(vni) = parse_bridge_name(&link.name) {
                obs.bridges.insert(
                    vni,
                    ObservedBridge {
                        kind: link.kind,
                        mtu: link.mtu,
                        up: link.up,
                        addresses: addresses.remove(&link.index).unwrap_or_default(),
                    },
                );
            } else if let Some(vni) = parse_vxlan_name(&link.name) {
                let mut vx = ObservedVxlan {
                    kind: link.kind,
                    vni: None,
                    local: None,
                    dst_port: None,
                    learning: None,
                    group: None,
                    mtu: link.mtu,
                    up: link.up,
                    master,
                    fdb: fdb.remove(&link.index).unwrap_or_default(),
                };
                for info in link.vxlan {
                    match info {
                        InfoVxlan::Id(id) => vx.vni = Some(id),
                        InfoVxlan::Local(a) => vx.local = Some(IpAddr::V4(a)),
                        InfoVxlan::Local6(a) => vx.local = Some(IpAddr::V6(a)),
                        InfoVxlan::Port(p) => vx.dst_port = Some(p),
                        InfoVxlan::Learning(l) => vx.learning = Some(l),
                        InfoVxlan::Group(a) if !a.is_unspecified() => {
                            vx.group = Some(IpAddr::V4(a))
                        }
                        InfoVxlan::Group6(a) if !a.is_unspecified() => {
                            vx.group = Some(IpAddr::V6(a))
                        }
                        _ => {}
                    }
                }
                obs.vxlans.insert(vni, vx);
            } else {
                obs.ports.insert(
                    link.name,
                    ObservedPort {
                        kind: link.kind,
                        mtu: link.mtu,
                        up: link.up,
                        master,
                    },
                );
            }
        }
        Ok(obs)
    }

    /// Applies a plan. Every action is attempted even if an earlier one
    /// failed (later rounds retry); failures are logged and returned
    /// together. Deleting something already gone and adding an address
    /// already present count as success.
    pub async fn apply(&self, actions: &[OverlayAction]) -> Result<(), ApplyError> {
        let mut failures = Vec::new();
        for action in actions {
            match self.apply_one(action).await {
                Ok(()) => debug!(?action, "overlay action applied"),
                Err(error) => {
                    warn!(?action, %error, "overlay action failed");
                    failures.push(ActionFailure {
                        action: action.clone(),
                        error,
                    });
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ApplyError {
                total: actions.len(),
                failures,
            })
        }
    }

    async fn apply_one(&self, action: &OverlayAction) -> Result<(), OverlayError> {
        match action {
            OverlayAction::DeleteNetwork { vni } => {
                info!(vni, "removing overlay network");
                self.delete_link(&vxlan_name(*vni)).await?;
                self.delete_link(&bridge_name(*vni)).await
            }
            OverlayAction::DeleteLink { name } => self.delete_link(name).await,
            OverlayAction::CreateBridge { vni, mtu, mac } => {
                let name = bridge_name(*vni);
                info!(vni, %name, mtu, %mac, "creating bridge");
                let msg = LinkBridge::new(&name)
                    .address(mac.octets().to_vec())
                    .build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| OverlayError::netlink(format!("create bridge {name}"), e))?;
                // Setting the MTU explicitly (not at creation) marks it as
                // chosen by the user, so enslaving ports never lowers it.
                self.set_mtu(&name, *mtu).await
            }
            OverlayAction::CreateVxlan { vni, local, mtu } => {
                let name = vxlan_name(*vni);
                info!(vni, %name, %local, mtu, "creating vxlan device");
                let builder = LinkVxlan::new(&name, *vni).port(VXLAN_PORT).learning(false);
                let builder = match local {
                    IpAddr::V4(a) => builder.local(*a),
                    IpAddr::V6(a) => builder.local6(*a),
                };
                self.handle
                    .link()
                    .add(builder.mtu(*mtu).build())
                    .execute()
                    .await
                    .map_err(|e| OverlayError::netlink(format!("create vxlan {name}"), e))
            }
            OverlayAction::Link(a) => self.apply_link(a).await,
            OverlayAction::AddFdb { vni, entry } => self.add_fdb(*vni, entry).await,
            OverlayAction::DelFdb { vni, entry } => self.del_fdb(*vni, entry).await,
            OverlayAction::WaitForPort { vni, tap } => {
                debug!(vni, %tap, "port interface does not exist yet");
                Ok(())
            }
        }
    }

    /// Deletes a link by name; a link that does not exist is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<(), OverlayError> {
        let Some(index) = self.find_index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(()),
            other => other.map_err(|e| OverlayError::netlink(format!("delete link {name}"), e)),
        }
    }

    /// Whether a link with this name exists in the handle's namespace.
    pub async fn link_exists(&self, name: &str) -> Result<bool, OverlayError> {
        Ok(self.find_index(name).await?.is_some())
    }

    /// The MAC address of a link, `None` if the link does not exist (or has
    /// no Ethernet address).
    pub async fn link_mac(&self, name: &str) -> Result<Option<MacAddr>, OverlayError> {
        let Some(index) = self.find_index(name).await? else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(summarize(msg).mac),
            Ok(None) => Ok(None),
            Err(e) if netlink_errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(OverlayError::netlink(format!("read link {name}"), e)),
        }
    }

    /// Applies one change to an existing link (of an overlay or a provider
    /// plan).
    pub async fn apply_link(&self, action: &LinkAction) -> Result<(), OverlayError> {
        match action {
            LinkAction::AddAddress {
                link,
                addr,
                prefix_len,
            } => self.add_address(link, *addr, *prefix_len).await,
            LinkAction::SetMtu { link, mtu } => self.set_mtu(link, *mtu).await,
            LinkAction::SetMaster { link, master } => self.set_master(link, master).await,
            LinkAction::Detach { link } => self.release(link).await,
            LinkAction::SetUp { link } => self.set_up(link).await,
        }
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, name: &str) -> Result<(), OverlayError> {
        let index = self.index_of(name).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).up(),
            format!("set {name} up"),
        )
        .await
    }

    /// Adds `addr/prefix_len` to `link`; an address already there is not
    /// an error.
    pub async fn add_address(
        &self,
        link: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), OverlayError> {
        let index = self.index_of(link).await?;
        match self
            .handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
        {
            Err(e) if netlink_errno(&e) == Some(EEXIST) => Ok(()),
            other => other.map_err(|e| {
                OverlayError::netlink(format!("add {addr}/{prefix_len} to {link}"), e)
            }),
        }
    }

    /// Enslaves `link` to the bridge `master`.
    pub async fn set_master(&self, link: &str, master: &str) -> Result<(), OverlayError> {
        let index = self.index_of(link).await?;
        let master_index = self.index_of(master).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).controller(master_index),
            format!("enslave {link} to {master}"),
        )
        .await
    }

    /// Releases `link` from its bridge.
    pub async fn release(&self, link: &str) -> Result<(), OverlayError> {
        let index = self.index_of(link).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).nocontroller(),
            format!("release {link} from its bridge"),
        )
        .await
    }

    /// Sets the MTU of a link.
    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), OverlayError> {
        let index = self.index_of(name).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).mtu(mtu),
            format!("set MTU of {name} to {mtu}"),
        )
        .await
    }

    /// Sets the MAC address of a link.
    pub async fn set_mac(&self, name: &str, mac: MacAddr) -> Result<(), OverlayError> {
        let index = self.index_of(name).await?;
        self.set_link(
            LinkUnspec::new_with_index(index).address(mac.octets().to_vec()),
            format!("set MAC of {name} to {mac}"),
        )
        .await
    }

    async fn set_link(
        &self,
        builder: LinkMessageBuilder<LinkUnspec>,
        what: String,
    ) -> Result<(), OverlayError> {
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(|e| OverlayError::netlink(what, e))
    }

    pub(crate) fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// Index of an existing link, or [`OverlayError::NoSuchLink`].
    pub(crate) async fn index_of(&self, name: &str) -> Result<u32, OverlayError> {
        self.find_index(name)
            .await?
            .ok_or_else(|| OverlayError::NoSuchLink(name.to_string()))
    }

    /// Index of a link, `None` if there is no link with this name.
    pub(crate) async fn find_index(&self, name: &str) -> Result<Option<u32>, OverlayError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(found) => Ok(found.map(|msg| msg.header.index)),
            Err(e) if matches!(netlink_errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(OverlayError::netlink(format!("look up link {name}"), e)),
        }
    }

    pub(crate) async fn links(&self) -> Result<Vec<LinkSummary>, OverlayError> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(summarize)
            .try_collect()
            .await
            .map_err(|e| OverlayError::netlink("list links", e))
    }

    pub(crate) async fn addresses(
        &self,
    ) -> Result<HashMap<u32, BTreeSet<(IpAddr, u8)>>, OverlayError> {
        let mut out: HashMap<u32, BTreeSet<(IpAddr, u8)>> = HashMap::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| OverlayError::netlink("list addresses", e))?
        {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
            // peer on point-to-point links, so prefer the former.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                out.entry(msg.header.index)
                    .or_default()
                    .insert((ip, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Remote entries (those with a destination VTEP) of every VXLAN
    /// device's own forwarding database, by device index.
    async fn vxlan_fdb(&self) -> Result<HashMap<u32, BTreeSet<FdbEntry>>, OverlayError> {
        let mut out: HashMap<u32, BTreeSet<FdbEntry>> = HashMap::new();
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| OverlayError::netlink("dump bridge forwarding databases", e))?
        {
            if let Some(entry) = fdb_entry(&msg) {
                out.entry(msg.header.ifindex).or_default().insert(entry);
            }
        }
        Ok(out)
    }

    async fn add_fdb(&self, vni: u32, entry: &FdbEntry) -> Result<(), OverlayError> {
        let link = vxlan_name(vni);
        let index = self.index_of(&link).await?;
        // The all-zeros entry holds one remote per VTEP (append); a unicast
        // MAC lives behind exactly one VTEP (replace).
        let mode = if entry.mac.is_zero() {
            NLM_F_APPEND
        } else {
            NLM_F_REPLACE
        };
        let msg = fdb_message(index, entry);
        self.neighbour_request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | mode,
        )
        .await
        .map_err(|e| OverlayError::netlink(format!("add fdb entry {entry} to {link}"), e))
    }

    async fn del_fdb(&self, vni: u32, entry: &FdbEntry) -> Result<(), OverlayError> {
        let link = vxlan_name(vni);
        let Some(index) = self.find_index(&link).await? else {
            return Ok(());
        };
        let msg = fdb_message(index, entry);
        match self
            .neighbour_request(
                RouteNetlinkMessage::DelNeighbour(msg),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .await
        {
            Err(e) if netlink_errno(&e) == Some(ENOENT) => Ok(()),
            other => other.map_err(|e| {
                OverlayError::netlink(format!("delete fdb entry {entry} from {link}"), e)
            }),
        }
    }

    async fn neighbour_request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(reply) = response.next().await {
            if let NetlinkPayload::Error(err) = reply.payload {
                if err.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
        }
        Ok(())
    }
}

fn fdb_message(index: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
        entry.mac.octets().to_vec(),
    ));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            entry.dst,
        )));
    msg
}

/// A remote FDB entry of a VXLAN device, `None` for entries without a
/// destination (bridge-learned entries, local addresses).
fn fdb_entry(msg: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = MacAddr::from_slice(bytes),
            NeighbourAttribute::Destination(addr) => dst = neighbour_ip(addr),
            _ => {}
        }
    }
    Some(FdbEntry {
        mac: mac?,
        dst: dst?,
    })
}

/// In bridge-family messages the destination comes unparsed: 4 or 16 bytes.
fn neighbour_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn summarize(msg: LinkMessage) -> LinkSummary {
    let mut s = LinkSummary {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Unknown,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        mac: None,
        vxlan: Vec::new(),
        vlan_id: None,
        link: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => s.name = name,
            LinkAttribute::Mtu(mtu) => s.mtu = mtu,
            LinkAttribute::Controller(index) if index != 0 => s.master = Some(index),
            LinkAttribute::Address(bytes) => s.mac = MacAddr::from_slice(&bytes),
            LinkAttribute::Link(index) if index != 0 => s.link = Some(index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => s.kind = link_kind(kind),
                        LinkInfo::Data(InfoData::Vxlan(data)) => s.vxlan = data,
                        LinkInfo::Data(InfoData::Vlan(data)) => {
                            s.vlan_id = data.iter().find_map(|i| match i {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    s
}

fn link_kind(kind: InfoKind) -> LinkKind {
    match kind {
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Vxlan => LinkKind::Vxlan,
        InfoKind::Tun => LinkKind::Tun,
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Vlan => LinkKind::Vlan,
        other => LinkKind::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_entry_parses_bridge_family_destination() {
        let mut msg = NeighbourMessage::default();
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![10, 99, 0, 2],
            )));
        assert_eq!(
            fdb_entry(&msg),
            Some(FdbEntry {
                mac: MacAddr::ZERO,
                dst: "10.99.0.2".parse().unwrap()
            })
        );
    }

    #[test]
    fn fdb_entry_without_destination_is_skipped() {
        let mut msg = NeighbourMessage::default();
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        assert_eq!(fdb_entry(&msg), None);
    }

    #[test]
    fn fdb_message_round_trips() {
        let entry = FdbEntry {
            mac: "02:00:00:00:00:07".parse().unwrap(),
            dst: "fd00::2".parse().unwrap(),
        };
        let msg = fdb_message(7, &entry);
        assert_eq!(msg.header.ifindex, 7);
        assert_eq!(fdb_entry(&msg), Some(entry));
    }
}
