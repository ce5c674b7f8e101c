//! Failure handling's operations: node health writes, storage fencing
//! calls and evacuation passes (through [`super::moves`]), used by the
//! leader's loop ([`crate::background::failover`]) and by operators
//! (`Nodes.Evacuate`). See `docs/failure-handling.md` for the protocol
//! and its timings.

use etcd_client::Txn;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{self, EvacuationConfig, EvacuationPolicy, NodeHealth, NodeHealthState};
use nubo_common::{InstanceId, NodeName};
use nubo_store::kv::put;
use tracing::Instrument;

use super::moves::{self, MoveOpts, Moved};
use crate::election::leader_guard;
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;

/// Moves of one evacuation pass run concurrently.
const EVACUATION_CONCURRENCY: usize = 8;

/// The message of instances that could not be re-placed.
pub const NO_CAPACITY: &str = "evacuation failed: no capacity";

/// What an evacuation pass achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Instances moved.
    pub moved: usize,
    /// Instances that could not be moved (retried later).
    pub failed: usize,
}

/// Reads the cluster-wide evacuation switch (absent or unreadable =
/// enabled: evacuation is the safe default once fenced).
pub async fn evacuation_enabled(ctx: &Ctx) -> ApiResult<bool> {
    match ctx
        .store
        .read::<EvacuationConfig>(&keys::evacuation_config())
        .await
        .map_err(ApiError::from)
    {
        Ok(v) => Ok(v.is_none_or(|v| v.value.enabled)),
        Err(ApiError::FailedPrecondition(why)) => {
            tracing::warn!(why, "unreadable evacuation switch; treating it as enabled");
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Writes a node's health (with the leader guard when `lease` is given) and
/// records it in the view. Returns false when the guard failed.
pub async fn write_health(
    ctx: &Ctx,
    node: &NodeName,
    state: NodeHealthState,
    reason: &str,
    lease: Option<i64>,
) -> ApiResult<bool> {
    let h = NodeHealth {
        state,
        since: model::now(),
        reason: reason.to_string(),
    };
    let key = keys::node_health(node);
    let compares: Vec<_> = lease.map(leader_guard).into_iter().collect();
    let resp = ctx
        .store
        .txn(Txn::new().when(compares).and_then([put(&key, &h)]))
        .await?;
    if resp.succeeded() {
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        ctx.view.record_health(node, Some(h), rev);
        tracing::info!(node = %node, health = state.as_str(), reason, "node health changed");
    }
    Ok(resp.succeeded())
}

/// Fences a node within `fence_timeout`.
/// Counts the event (`fenced` / `fence_failed`).
pub async fn fence(ctx: &Ctx, node: &NodeName) -> Result<(), String> {
    let r = match tokio::time::timeout(ctx.cfg.failure.fence_timeout, ctx.fencer.fence(node)).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "fencing did not complete within {:?}",
            ctx.cfg.failure.fence_timeout
        )),
    };
    ctx.metrics
        .fencing_event(if r.is_ok() { "fenced" } else { "fence_failed" });
    r
}

/// One evacuation pass over `node`: moves every instance whose policy is in
/// `policies` (each move counted: `nubo_coordinator_evacuations_total`). Instances that do not fit anywhere get status error
/// [`NO_CAPACITY`] and stay assigned to `node`.
pub async fn evacuation_pass(
    ctx: &Ctx,
    node: &NodeName,
    policies: &[EvacuationPolicy],
    lease: Option<i64>,
) -> ApiResult<(PassOutcome, Vec<(InstanceId, ApiResult<Moved>)>)> {
    let insts = moves::assigned_instances(ctx, node).await?;
    let todo: Vec<_> = insts
        .into_iter()
        .filter(|i| policies.contains(&i.evacuation))
        .map(|i| i.id)
        .collect();
    let delay = ctx.cfg.failure.move_delay;
    let results: Vec<_> = futures::stream::iter(todo)
        .map(|id| {
            let span = tracing::info_span!("evacuate", node = %node, instance = %id);
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let opts = MoveOpts {
                    leader_lease: lease,
                    power: None,
                };
                ctx.metrics.evacuation("started");
                let r = moves::move_instance(ctx, id, node, opts).await;
                match &r {
                    Ok(Moved::To(_)) => ctx.metrics.evacuation("succeeded"),
                    // Deleted meanwhile: nothing left to evacuate.
                    Ok(Moved::AlreadyGone) => {}
                    Err(_) => ctx.metrics.evacuation("failed"),
                }
                if let Err(ApiError::ResourceExhausted(why)) = &r {
                    tracing::warn!(instance = %id, node = %node, why, "cannot evacuate: no capacity");
                    let _ = moves::mark_move_failed(ctx, id, node, NO_CAPACITY, lease)
                        .await
                        .map_err(|e| tracing::warn!(instance = %id, error = %e, "could not record the failure"));
                }
                (id, r)
            }
            .instrument(span)
        })
        .buffer_unordered(EVACUATION_CONCURRENCY)
        .collect()
        .await;
    let mut out = PassOutcome::default();
    for (_, r) in &results {
        match r {
            Ok(Moved::To(_)) => out.moved += 1,
            Ok(Moved::AlreadyGone) => {}
            Err(_) => out.failed += 1,
        }
    }
    Ok((out, results))
}
