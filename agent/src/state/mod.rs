//! What the agent knows: the [`mirror`] keeps the typed [`cache`] of the
//! node-relevant part of etcd in step (list, then watch), and [`desired`]
//! resolves this node's desired state from it with a pure function.

pub mod cache;
pub mod desired;
pub mod mirror;
pub mod routing;
