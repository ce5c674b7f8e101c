//! Storage fencing: cutting a failed node off shared storage before its
//! instances are restarted elsewhere (step (c) of `docs/failure-handling.md`).
//!
//! [`CephFencer`] blocklists every Ceph client of the node (all clients
//! from its storage address: `ceph osd blocklist add IP:0/0`) and lifts it
//! once the agent is back and has finished its recovery. [`LogFencer`] (no
//! shared storage configured) logs and succeeds, [`RecordingFencer`]
//! records calls for tests.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use nubo_common::model::{self, EtcdSessionStatus, FencePhase, Node};
use nubo_common::{keys, NodeName};

/// Why fencing failed; the node stays `suspect` and fencing is retried.
#[derive(Debug, thiserror::Error)]
#[error("fencing node {node} failed: {reason}")]
pub struct FenceError {
    /// The node.
    pub node: NodeName,
    /// What went wrong.
    pub reason: String,
}

/// Cuts nodes off shared storage. Both calls must be idempotent: the leader
/// may call them again after a restart or leader change.
#[tonic::async_trait]
pub trait Fencer: Send + Sync + 'static {
    /// Blocks the node's storage clients; returns once they can no longer
    /// write. Bounded by `fence_timeout` by the caller.
    async fn fence(&self, node: &NodeName) -> Result<(), FenceError>;
    /// Lifts the block when the node's agent is back.
    async fn unfence(&self, node: &NodeName) -> Result<(), FenceError>;
}

/// The default: no shared storage to fence yet; logs and succeeds.
#[derive(Debug, Default)]
pub struct LogFencer;

#[tonic::async_trait]
impl Fencer for LogFencer {
    async fn fence(&self, node: &NodeName) -> Result<(), FenceError> {
        tracing::warn!(node = %node, "fencing node (no storage fencer configured: nothing to block)");
        Ok(())
    }
    async fn unfence(&self, node: &NodeName) -> Result<(), FenceError> {
        tracing::info!(node = %node, "unfencing node (no storage fencer configured)");
        Ok(())
    }
}

/// A call recorded by [`RecordingFencer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceCall {
    /// `fence(node)`.
    Fence(NodeName),
    /// `unfence(node)`.
    Unfence(NodeName),
}

/// Test double: records every call; can be told to fail.
#[derive(Debug, Default)]
pub struct RecordingFencer {
    calls: Mutex<Vec<FenceCall>>,
    fail: Mutex<bool>,
}

impl RecordingFencer {
    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<FenceCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes the next calls fail (`true`) or succeed.
    pub fn set_failing(&self, fail: bool) {
        *self.fail.lock().unwrap_or_else(|e| e.into_inner()) = fail;
    }

    fn record(&self, c: FenceCall, node: &NodeName) -> Result<(), FenceError> {
        if *self.fail.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(FenceError {
                node: node.clone(),
                reason: "test fencer set to fail".into(),
            });
        }
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        Ok(())
    }
}

#[tonic::async_trait]
impl Fencer for RecordingFencer {
    async fn fence(&self, node: &NodeName) -> Result<(), FenceError> {
        self.record(FenceCall::Fence(node.clone()), node)
    }
    async fn unfence(&self, node: &NodeName) -> Result<(), FenceError> {
        self.record(FenceCall::Unfence(node.clone()), node)
    }
}

/// How long a blocklist entry lasts: far longer than a node can stay away
/// unnoticed (the leader lifts it explicitly on return). Ceph drops expired
/// entries by itself, so an entry of a node that is never coming back does
/// not stay forever.
pub const BLOCKLIST_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bound of the unfence check's HTTP request to the agent's node API.
const NODE_API_TIMEOUT: Duration = Duration::from_secs(2);

/// The blocklist address covering every client from `ip` (Ceph matches an
/// entry with port 0 and nonce 0 against any client of that IP). Pure.
pub fn blocklist_addr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:0/0"),
        IpAddr::V6(v6) => format!("[{v6}]:0/0"),
    }
}

/// Whether a node may be unfenced given what its agent reports: only once it
/// is back to normal, i.e. it has re-listed etcd and destroyed every
/// instance moved away while it was fenced (`docs/failure-handling.md`).
/// Pure.
pub fn may_unfence(status: &EtcdSessionStatus) -> bool {
    status.healthy && status.phase == FencePhase::Normal
}

/// Storage fencing through Ceph's OSD blocklist.
///
/// `fence` adds `<storage ip>:0/0` (the node record's storage address,
/// [`Node::storage_ip`]) for [`BLOCKLIST_EXPIRY`], checks that the entry is
/// listed and waits until this client has the OSD map carrying it: every
/// client that connects or acts after that (the instance's new host) is
/// judged by OSDs that reject the fenced node's ops with EBLOCKLISTED.
/// `unfence` first asks the agent (`GET /v1/etcd-status` on its node API)
/// and removes the entry only when it reports phase `normal`; otherwise it
/// fails and the leader retries.
pub struct CephFencer {
    cluster: nubo_storage::Cluster,
    etcd: nubo_store::Etcd,
    expiry: Duration,
    node_api: nubo_nodeapi::NodeApiClient,
}

impl std::fmt::Debug for CephFencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephFencer")
            .field("cluster", &self.cluster)
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl CephFencer {
    /// A fencer acting through `cluster` (a client with `mon` caps allowing
    /// `osd blocklist`, e.g. `profile rbd` or admin), reading node records
    /// from `etcd` and asking the nodes' APIs through `node_api` before it
    /// lifts a fence.
    pub fn new(
        cluster: nubo_storage::Cluster,
        etcd: nubo_store::Etcd,
        node_api: nubo_nodeapi::NodeApiClient,
    ) -> Self {
        Self {
            cluster,
            etcd,
            expiry: BLOCKLIST_EXPIRY,
            node_api,
        }
    }

    /// Overrides [`BLOCKLIST_EXPIRY`].
    pub fn with_expiry(mut self, expiry: Duration) -> Self {
        self.expiry = expiry;
        self
    }

    fn err(node: &NodeName, reason: impl Into<String>) -> FenceError {
        FenceError {
            node: node.clone(),
            reason: reason.into(),
        }
    }

    async fn node_record(&self, node: &NodeName) -> Result<Node, FenceError> {
        let key = keys::node(node);
        let resp = self
            .etcd
            .get(key.as_str(), None)
            .await
            .map_err(|e| Self::err(node, format!("cannot read {key}: {e}")))?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| Self::err(node, format!("{key} is missing")))?;
        model::decode::<Node>(&key, kv.value()).map_err(|e| Self::err(node, e.to_string()))
    }

    async fn addr(&self, node: &NodeName) -> Result<(Node, String), FenceError> {
        let rec = self.node_record(node).await?;
        let ip = rec.storage_ip().ok_or_else(|| {
            Self::err(
                node,
                format!("label {} does not parse", model::STORAGE_IP_LABEL),
            )
        })?;
        Ok((rec, blocklist_addr(ip)))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        node: &NodeName,
        f: impl FnOnce(nubo_storage::Cluster) -> nubo_storage::Result<T> + Send + 'static,
    ) -> Result<T, FenceError> {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(c))
            .await
            .map_err(|e| Self::err(node, format!("ceph task failed: {e}")))?
            .map_err(|e| Self::err(node, e.to_string()))
    }
}

#[tonic::async_trait]
impl Fencer for CephFencer {
    async fn fence(&self, node: &NodeName) -> Result<(), FenceError> {
        let (_, addr) = self.addr(node).await?;
        let expire = u32::try_from(self.expiry.as_secs()).unwrap_or(u32::MAX);
        let a = addr.clone();
        let listed = self
            .blocking(node, move |c| {
                c.blocklist_add(&a, expire)?;
                let listed = c.blocklist_ls()?.iter().any(|e| e.addr == a);
                // The map carrying the entry is committed; make sure this
                // client has it too before anything moves.
                c.wait_for_latest_osdmap()?;
                Ok(listed)
            })
            .await?;
        if !listed {
            return Err(Self::err(
                node,
                format!("{addr} not in the OSD blocklist after adding it"),
            ));
        }
        tracing::warn!(node = %node, %addr, expiry = ?self.expiry, "node storage-fenced: Ceph blocklist entry added");
        Ok(())
    }

    async fn unfence(&self, node: &NodeName) -> Result<(), FenceError> {
        let (rec, addr) = self.addr(node).await?;
        let api = rec
            .node_api()
            .ok_or_else(|| Self::err(node, "no node API address to confirm its recovery"))?;
        let status = self
            .node_api
            .etcd_status(node, api, NODE_API_TIMEOUT)
            .await
            .map_err(|e| Self::err(node, e.to_string()))?;
        if status.node != *node {
            return Err(Self::err(
                node,
                format!("node API {api} answered for node {}", status.node),
            ));
        }
        if !may_unfence(&status) {
            return Err(Self::err(
                node,
                format!(
                    "agent not recovered yet (healthy {}, phase {:?}); keeping the blocklist",
                    status.healthy, status.phase
                ),
            ));
        }
        let a = addr.clone();
        self.blocking(node, move |c| c.blocklist_rm(&a)).await?;
        tracing::info!(node = %node, %addr, "node unfenced: Ceph blocklist entry removed");
        Ok(())
    }
}

/// The fencer shared by the API and the leader loop.
pub type SharedFencer = std::sync::Arc<dyn Fencer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocklist_address_covers_every_client_of_the_ip() {
        assert_eq!(blocklist_addr("10.1.2.3".parse().unwrap()), "10.1.2.3:0/0");
        assert_eq!(blocklist_addr("fd00::1".parse().unwrap()), "[fd00::1]:0/0");
    }

    #[test]
    fn unfence_only_after_the_agent_recovered() {
        let mut st = EtcdSessionStatus {
            node: NodeName::new("n1").unwrap(),
            healthy: true,
            last_ack_age_ms: Some(10),
            phase: FencePhase::Normal,
        };
        assert!(may_unfence(&st));
        for p in [FencePhase::Recovering, FencePhase::Fenced, FencePhase::Held] {
            st.phase = p;
            assert!(!may_unfence(&st), "{p:?}");
        }
        st.phase = FencePhase::Normal;
        st.healthy = false;
        assert!(!may_unfence(&st));
    }
}
