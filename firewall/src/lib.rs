//! nubo-firewall: security groups and anti-spoofing for the ports of one
//! node, enforced with nftables on Linux bridges.
//!
//! The agent maps its ports and security groups to a [`FirewallSpec`],
//! renders it with the pure [`ruleset`] function, compares it with the live
//! tables ([`current`] + [`plan`]) and, if needed, [`apply`]s it in one
//! atomic transaction: the same text `nft -f` would read, run in process
//! through libnftables ([`libnft`], linked from `libnftables.so.1`). See
//! [`render`] for the layout of the tables and why conntrack state comes
//! through `br_netfilter`.
//!
//! [`router`] renders and applies the separate, much smaller table of a
//! router namespace: floating-IP DNAT/SNAT, the node's SNAT address and
//! the router's forward filter.

pub mod compile;
pub mod error;
pub mod interval;
pub mod libnft;
pub mod names;
pub mod nft;
pub mod render;
pub mod router;
pub mod spec;

pub use error::FirewallError;
pub use libnft::Nft;
pub use nft::{
    apply, apply_in, current, current_in, plan, remove, remove_in, FirewallAction, Netns,
};
pub use nft::{limit_counters, limit_counters_in, parse_counters};
pub use render::{
    gateway_counter, limit_counter, ruleset, ruleset_with_mode, GatewayCounter, LimitKind,
    RenderMode, Ruleset,
};
pub use router::{
    apply_router_ruleset, loaded_router_fingerprint, remove_router_ruleset, router_counters,
    router_fingerprint, router_ruleset, ExternalLeg, FloatingNat, InternalLeg, RouterNatSpec,
    RouterSpecError,
};
pub use spec::{
    Direction, EtherType, FirewallSpec, GroupSpec, GuestLimits, PortSpec, Protocol, Rate, Remote,
    RoutedGateway, RuleSpec,
};
