//! The agent's Prometheus metrics (`[metrics]` / `--metrics-listen`).
//!
//! [`AgentMetrics`] holds the families the subsystems update; they are
//! registered once in the agent's registry, which the endpoint of
//! `nubo_metrics` encodes on each scrape. Names, types and labels:
//! `docs/metrics.md`.
//!
//! - [`node`]: per-node families (capacity, allocation, reconcile loop,
//!   nftables) and collectors (DHCP replies, etcd session, fence phase);
//!   the metadata answers' counter;
//! - [`probe`]: the results of the health probe
//!   ([`crate::network::probe`]);
//! - [`vm_stats`]: per-VM usage and the node's real usage, collected in the
//!   background ([`vm_stats::VmStatsTask`]) and encoded from a snapshot
//!   ([`vm_stats::VmStatsCollector`]);
//! - [`usage`]: the usage record published to etcd for `server show` /
//!   `node show`; [`node_usage`]: reading the host's CPU, memory and disk.

pub mod node;
pub mod node_usage;
pub mod probe;
pub mod reading;
pub mod usage;
pub mod vm_stats;

use std::sync::Arc;

use nubo_metrics::prometheus_client::metrics::info::Info;
use nubo_metrics::prometheus_client::registry::Registry;
use tracing::{info, warn, Instrument};

use crate::config::AgentConfig;

/// The metric families of one agent, shared by the subsystems that update
/// them.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Capacity, allocation, reconcile loop, nftables (m-node).
    pub node: node::NodeMetrics,
    /// DHCP replies by network (m-node).
    pub dhcp: Arc<node::DhcpReplies>,
    /// Metadata answers by status (m-node).
    pub metadata: Arc<node::MetadataRequests>,
    /// The health probe's results (m-node).
    pub probe: Arc<probe::ProbeMetrics>,
}

impl AgentMetrics {
    /// Registers the agent's families in `registry` (prefixed `nubo_`).
    pub fn register(registry: &mut Registry, cfg: &AgentConfig) -> Arc<Self> {
        registry.register(
            "agent",
            "The agent's node and version",
            Info::new(vec![
                ("node", cfg.node.to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        let by_node =
            registry.sub_registry_with_label(("node".into(), cfg.node.to_string().into()));
        let node = node::NodeMetrics::register(by_node);
        let (dhcp, metadata) = node::register_servers(by_node);
        let probe = probe::ProbeMetrics::register(by_node);
        Arc::new(Self {
            node,
            dhcp,
            metadata,
            probe,
        })
    }

    /// Registers what is read from the etcd session at scrape time: session
    /// state, lease age, fence phase (with the `node` label).
    pub fn register_session(
        registry: &mut Registry,
        cfg: &AgentConfig,
        session: crate::fencing::SessionWatch,
    ) {
        let by_node =
            registry.sub_registry_with_label(("node".into(), cfg.node.to_string().into()));
        node::register_session(by_node, session);
    }
}

/// A fresh registry with the `nubo` prefix.
pub fn registry() -> Registry {
    Registry::with_prefix(nubo_metrics::PREFIX)
}

/// Binds the endpoint of `cfg.metrics` (if any) and spawns its server on
/// `tasks`. A configuration that cannot be served is an error at start.
pub async fn spawn_endpoint(
    cfg: &AgentConfig,
    registry: Registry,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), nubo_metrics::EndpointError> {
    let Some(ep) = &cfg.metrics else {
        return Ok(());
    };
    let endpoint = nubo_metrics::Endpoint::bind(ep).await?;
    if let Ok(addr) = endpoint.local_addr() {
        info!(%addr, tls = endpoint.is_tls(), "serving metrics on {addr}");
    }
    let registry = Arc::new(registry);
    tasks.spawn(
        async move {
            if let Err(e) = endpoint.serve(registry).await {
                warn!(error = %e, "the metrics endpoint stopped");
            }
        }
        .in_current_span(),
    );
    Ok(())
}
