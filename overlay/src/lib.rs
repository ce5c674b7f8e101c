//! `nubo-overlay`: the per-node L2 overlay of nubo.
//!
//! Per network (identified by its VNI) a node that hosts at least one of the
//! network's ports has a Linux bridge `nb-<vni>` and a VXLAN device
//! `vx-<vni>` enslaved to it (UDP 4789, `nolearning`, no multicast group,
//! head-end replication through all-zeros FDB entries, one per remote VTEP,
//! plus static FDB entries for known remote port MACs). Instance taps are
//! enslaved to the bridge. The bridge owns `169.254.169.254/32`, the address
//! the node's metadata and DHCP servers answer from.
//!
//! The reconciler follows the usual nubo shape:
//! [`Netlink::observe`] → pure [`plan`] → [`Netlink::apply`].
//!
//! Provider networks (a flat or VLAN segment of a physical network) get a
//! bridge `np-<id>` whose uplink is the host interface or a VLAN device on
//! it: [`Netlink::observe_provider`] → pure [`plan_provider`] →
//! [`Netlink::apply_provider`].
//!
//! The crate also provides the primitives instance drivers need: persistent
//! taps ([`Netlink::create_tap`]; names from [`nubo_netid::tap_name`]) and the netns "guest"
//! driver, an instance that is a network namespace wired to the node with a
//! veth pair ([`Netlink::create_netns_guest`] and friends).
//!
//! All netlink traffic goes through one [`Netlink`] handle, whose socket lives
//! in the network namespace of the thread that created it.

#![warn(missing_docs)]

mod error;
mod garp;
mod guest;
mod link_action;
mod names;
mod netlink;
mod netns;
mod observed;
mod plan;
mod provider;
mod provider_netlink;
mod router;
mod router_netlink;
mod spec;
mod tap;

pub use error::{ActionFailure, ApplyError, OverlayError};
pub use garp::{
    gratuitous_arp_frame, link_mac, send_gratuitous_arp, send_gratuitous_arp_to,
    unicast_gratuitous_arp_frame,
};
pub use guest::{
    create_empty_netns_guest, delete_netns_guest, list_netns_guests, netns_guest_exists,
    remove_netns_guest_nic, GUEST_IFNAME,
};
pub use link_action::LinkAction;
pub use names::{bridge_name, parse_bridge_name, parse_vxlan_name, vxlan_name};
pub use netlink::Netlink;
pub use netns::run_in_netns;
pub use observed::{LinkKind, ObservedBridge, ObservedOverlay, ObservedPort, ObservedVxlan};
pub use plan::{plan, OverlayAction};
pub use provider::{
    is_provider_bridge_name, plan_provider, provider_bridge_name, vlan_device_name, ObservedLink,
    ObservedProvider, ProviderAction, ProviderNetworkSpec, ProviderPlan, ProviderSpec,
};
pub use provider_netlink::ProviderApplyError;
pub use router::{
    plan_routers, LegNeighbour, Neighbour, ObservedLeg, ObservedRouterNs, ObservedRouters,
    RouterAction, RouterLeg, RouterSpec, RoutersSpec,
};
pub use router_netlink::{apply_routers, observe_routers, RouterApplyError};
pub use spec::{
    network_mtu, FdbEntry, LocalPort, NetworkSpec, OverlaySpec, METADATA_ADDR, METADATA_PREFIX_LEN,
    VXLAN_PORT,
};
