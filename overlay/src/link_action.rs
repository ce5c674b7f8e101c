//! Changes to one existing link, shared by the overlay plan
//! ([`crate::OverlayAction::Link`]) and the provider plan
//! ([`crate::ProviderAction::Link`]), and applied in one place
//! ([`crate::Netlink::apply_link`]).

use std::net::IpAddr;

/// One change to an existing link, named (not indexed) so that a plan is
/// meaningful on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkAction {
    /// Add an address to a link.
    AddAddress {
        /// Link name.
        link: String,
        /// The address.
        addr: IpAddr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// Change the MTU of a link.
    SetMtu {
        /// Link name.
        link: String,
        /// New MTU.
        mtu: u32,
    },
    /// Enslave `link` to bridge `master`.
    SetMaster {
        /// Link name.
        link: String,
        /// Bridge name.
        master: String,
    },
    /// Release `link` from its bridge (a port that no longer belongs there).
    Detach {
        /// Link name.
        link: String,
    },
    /// Set a link administratively up.
    SetUp {
        /// Link name.
        link: String,
    },
}
