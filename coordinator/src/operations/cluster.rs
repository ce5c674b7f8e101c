//! Cluster status: this coordinator, the leader, the evacuation switch.

use crate::error::ApiResult;
use crate::state::Ctx;

/// What a coordinator knows about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This coordinator's id.
    pub coordinator_id: String,
    /// It leads.
    pub is_leader: bool,
    /// The leader's id, when known.
    pub leader_id: String,
    /// This coordinator's version.
    pub version: String,
    /// Automatic evacuation is enabled cluster-wide.
    pub evacuation_enabled: bool,
}

/// The cluster's status as this coordinator sees it.
pub async fn status(ctx: &Ctx) -> ApiResult<Status> {
    Ok(Status {
        coordinator_id: ctx.cfg.id.clone(),
        is_leader: ctx.leader.is_leader(),
        leader_id: ctx.leader.leader_id(),
        version: env!("CARGO_PKG_VERSION").into(),
        evacuation_enabled: super::evacuation::evacuation_enabled(ctx).await?,
    })
}
