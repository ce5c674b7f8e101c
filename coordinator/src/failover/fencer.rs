//! Storage fencing: cutting a failed node off shared storage before its
//! instances are restarted elsewhere (step (c) of `docs/failure-handling.md`).
//!
//! Only the hook exists today: [`LogFencer`] (the default) logs and succeeds,
//! [`RecordingFencer`] records calls for tests. A Ceph implementation will
//! run `ceph osd blocklist add <node's client addr>` (and `rm` on unfence).

use std::sync::Mutex;

use nubo_common::NodeName;

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
