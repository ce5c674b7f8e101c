//! The coordinator's Prometheus metrics (`[metrics]` / `--metrics-listen`).
//!
//! [`CoordinatorMetrics`] holds the families the layers update; they are
//! registered once in the coordinator's registry, which the endpoint of
//! `nubo_metrics` encodes on each scrape. Names, types and labels:
//! `docs/metrics.md`.
//!
//! - [`api`]: the layer in front of every gRPC service (requests by method
//!   and code, latency).
//! - [`cluster`]: the leader's cluster gauges (node states, capacity and
//!   allocation, quotas, Ceph health), collected in the background and
//!   encoded from the latest snapshot.
//! - [`leadership`]: the leader gauge and transitions, read from the
//!   election state at scrape time.
//! - the etcd layer reports request latency and refused transactions
//!   through [`nubo_store::Observer`] (implemented here).

pub mod api;
pub mod cluster;
pub mod leadership;

use std::sync::Arc;
use std::time::Duration;

use nubo_metrics::buckets;
use nubo_metrics::prometheus_client::encoding::EncodeLabelSet;
use nubo_metrics::prometheus_client::metrics::counter::Counter;
use nubo_metrics::prometheus_client::metrics::family::Family;
use nubo_metrics::prometheus_client::metrics::histogram::Histogram;
use nubo_metrics::prometheus_client::metrics::info::Info;
use nubo_metrics::prometheus_client::registry::Registry;

use crate::config::Config;
use crate::election::LeaderState;

/// A histogram family whose members are built by a plain function.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(buckets::request_seconds())
}

/// `method`, `code` of an API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    /// The gRPC method path (`/nubo.v1.Servers/Create`), or `unknown` for
    /// a path no service answers.
    pub method: String,
    /// The gRPC status code name (`OK`, `NotFound`, …).
    pub code: &'static str,
}

/// `method` of an API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    /// See [`MethodCode::method`].
    pub method: String,
}

/// `op` of an etcd request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// `get`, `put`, `txn`, …
    pub op: &'static str,
}

/// `result` of a placement or an evacuation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// See `docs/metrics.md` for the values.
    pub result: &'static str,
}

/// `kind` of a fencing event.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    /// `fenced`, `fence_failed`, `unfenced`, `unfence_failed`.
    pub kind: &'static str,
}

/// The metric families of one coordinator, shared by the layers that
/// update them.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    /// API requests by method and gRPC code.
    pub api_requests: Family<MethodCode, Counter>,
    /// API request latency by method (until the status is sent).
    pub api_duration: HistogramFamily<Method>,
    /// Placements by result.
    pub placements: Family<Outcome, Counter>,
    /// Transactions etcd refused (a compare did not hold).
    pub txn_conflicts: Counter,
    /// etcd request latency by operation (retries included).
    pub etcd_duration: HistogramFamily<Op>,
    /// Instance evacuations by result.
    pub evacuations: Family<Outcome, Counter>,
    /// Fencing events by kind.
    pub fencing: Family<Kind, Counter>,
    /// The leader's cluster gauges.
    pub cluster: Arc<cluster::ClusterGauges>,
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self {
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(request_histogram),
            placements: Family::default(),
            txn_conflicts: Counter::default(),
            etcd_duration: Family::new_with_constructor(request_histogram),
            evacuations: Family::default(),
            fencing: Family::default(),
            cluster: Arc::default(),
        }
    }
}

impl CoordinatorMetrics {
    /// Registers the coordinator's families in `registry` (prefixed
    /// `nubo_`); `leader` is read at each scrape for the leadership
    /// metrics.
    pub fn register(registry: &mut Registry, cfg: &Config, leader: Arc<LeaderState>) -> Arc<Self> {
        registry.register(
            "coordinator",
            "The coordinator's id and version",
            Info::new(vec![
                ("id", cfg.id.clone()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let m = Self::default();
        registry.register(
            "coordinator_api_requests",
            "gRPC API requests answered, by method and status code",
            m.api_requests.clone(),
        );
        registry.register(
            "coordinator_api_request_duration_seconds",
            "gRPC API request latency until the status was sent, by method",
            m.api_duration.clone(),
        );
        registry.register(
            "coordinator_placements",
            "Placements by result (placed, no_capacity, contention, error)",
            m.placements.clone(),
        );
        registry.register(
            "coordinator_etcd_txn_conflicts",
            "etcd transactions refused because a compare did not hold",
            m.txn_conflicts.clone(),
        );
        registry.register(
            "coordinator_etcd_request_duration_seconds",
            "etcd request latency by operation, retries included",
            m.etcd_duration.clone(),
        );
        registry.register(
            "coordinator_evacuations",
            "Instance evacuations by result (started, succeeded, failed)",
            m.evacuations.clone(),
        );
        registry.register(
            "coordinator_fencing_events",
            "Storage fencing events by kind",
            m.fencing.clone(),
        );
        registry.register_collector(Box::new(leadership::Leadership::new(leader)));
        registry.register_collector(Box::new(m.cluster.clone()));
        Arc::new(m)
    }

    /// Counts a placement's result.
    pub fn placement(&self, result: &'static str) {
        self.placements.get_or_create(&Outcome { result }).inc();
    }

    /// Counts an evacuation event (`started`, `succeeded`, `failed`).
    pub fn evacuation(&self, result: &'static str) {
        self.evacuations.get_or_create(&Outcome { result }).inc();
    }

    /// Counts a fencing event.
    pub fn fencing_event(&self, kind: &'static str) {
        self.fencing.get_or_create(&Kind { kind }).inc();
    }
}

impl nubo_store::Observer for CoordinatorMetrics {
    fn request(&self, op: &'static str, elapsed: Duration, _ok: bool) {
        self.etcd_duration
            .get_or_create(&Op { op })
            .observe(elapsed.as_secs_f64());
    }

    fn txn_conflict(&self) {
        self.txn_conflicts.inc();
    }
}

/// A fresh registry with the `nubo` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(nubo_metrics::PREFIX)
}
