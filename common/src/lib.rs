//! Shared vocabulary of nubo: typed identifiers, the resource model stored in
//! etcd, the etcd key layout, the gRPC protocol and small pure helpers used by
//! both the coordinator and the agents.
//!
//! Nothing in this crate does I/O.

pub mod ids;
pub mod keys;
pub mod model;
pub mod proto;

pub use ids::*;
