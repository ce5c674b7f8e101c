//! Prometheus metrics of nubo's daemons.
//!
//! Metrics are built and encoded with the maintained `prometheus-client`
//! crate (re-exported as [`prometheus_client`]): never hand-formatted. Each
//! daemon owns a [`prometheus_client::registry::Registry`] holding its
//! families (registered with `nubo_` names in base units, counters ending in
//! `_total`, label-only `_info` gauges) and collectors that encode a
//! snapshot taken in the background, so a scrape never waits on libvirt,
//! etcd or the kernel.
//!
//! - [`endpoint`]: the `/metrics` listener: TLS with an optional client
//!   CA, an optional bearer token, a bounded encode time.
//! - [`buckets`]: the histogram bucket layouts shared by every daemon.
//!
//! What each daemon exports, with types and labels: `docs/metrics.md`.

pub mod buckets;
pub mod endpoint;

pub use endpoint::{Endpoint, EndpointConfig, EndpointError};
pub use prometheus_client;

/// The prefix of every metric nubo exports.
pub const PREFIX: &str = "nubo";
