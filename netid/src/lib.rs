//! `nubo-netid`: the network identifiers every nubo crate shares, written
//! once: the Ethernet [`MacAddr`] and the [`tap_name`] of a port.
//!
//! The crate has no dependencies (serde support is the optional `serde`
//! feature), so that the leaf crates (overlay, firewall, DHCP, metadata)
//! and the shared model (`nubo-common`) can all use the same type without
//! depending on each other.

mod mac;
mod names;

pub use mac::{MacAddr, MacParseError, PORT_MAC_PREFIX, ROUTER_MAC_PREFIX};
pub use names::{fnv1a64, hashed_name, stable_hash, tap_name, TAP_HEX_DIGITS};
