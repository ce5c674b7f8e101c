//! The coordinator's Prometheus metrics (`[metrics]` / `--metrics-listen`).
//!
//! [`CoordinatorMetrics`] holds the families the layers update; they are
//! registered once in the coordinator's registry, which the endpoint of
//! `nubo_metrics` encodes on each scrape. Names, types and labels:
//! `docs/metrics.md`.

use std::sync::Arc;

use nubo_metrics::prometheus_client::metrics::info::Info;
use nubo_metrics::prometheus_client::registry::Registry;

use crate::config::Config;

/// The metric families of one coordinator, shared by the layers that
/// update them.
#[derive(Debug, Default)]
pub struct CoordinatorMetrics {}

impl CoordinatorMetrics {
    /// Registers the coordinator's families in `registry` (prefixed
    /// `nubo_`).
    pub fn register(registry: &mut Registry, cfg: &Config) -> Arc<Self> {
        registry.register(
            "coordinator",
            "The coordinator's id and version",
            Info::new(vec![
                ("id", cfg.id.clone()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        Arc::new(Self {})
    }
}

/// A fresh registry with the `nubo` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(nubo_metrics::PREFIX)
}
