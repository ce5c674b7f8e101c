//! The coordinator's background loops, started by [`crate::start`] next to
//! the API: the leader's failure handling, the leader's volume loop, the
//! leader's audit pruning, the leader's guest-stop relay, the leader's
//! router SNAT addresses, the leader's migration loop, the leader's capture
//! loop (images of local root disks) and the token key
//! reload (every coordinator).
//! The leader also collects the cluster gauges of the metrics
//! ([`cluster_gauges`]).
//! They work through the same operations as the API.

pub mod audit;
pub mod captures;
pub mod cluster_gauges;
pub mod failover;
pub mod guest_stops;
pub mod health_machine;
pub mod migrations;
pub mod revoked_tokens;
pub mod router_snat;
pub mod token_keys;
pub mod volume_reconcile;
