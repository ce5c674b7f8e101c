//! Real usage measured by the agents: each node's `ObservedUsage` record
//! (`keys::node_observed_usage`, written by its agent once per collection
//! period on its liveness lease), for `server show` and `node show`.
//! Usage is informative: a record that is missing, unreadable or corrupt
//! leaves the answer without usage (logged), never fails it.

use nubo_common::keys;
use nubo_common::model::{InstanceUsage, ObservedUsage, Timestamp};
use nubo_common::{InstanceId, NodeName};

use crate::state::Ctx;

/// The latest usage record of `node`, if its agent published one.
pub async fn of_node(ctx: &Ctx, node: &NodeName) -> Option<ObservedUsage> {
    match ctx
        .store
        .read::<ObservedUsage>(&keys::node_observed_usage(node))
        .await
    {
        Ok(v) => v.map(|v| v.value),
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "usage record unreadable; answered without usage");
            None
        }
    }
}

/// The usage of instance `id` on `node` with the time it was measured.
pub async fn of_instance(
    ctx: &Ctx,
    node: &NodeName,
    id: &InstanceId,
) -> Option<(Timestamp, InstanceUsage)> {
    let mut u = of_node(ctx, node).await?;
    let at = u.at;
    u.instances.remove(id).map(|i| (at, i))
}
