//! The leader's pruning of the audit trail (see [`crate::audit`]).

use std::time::Duration;

use nubo_identity::audit::RETENTION;
use tokio::sync::watch;

use crate::operations::audit::prune;
use crate::state::Ctx;

/// The leader's pruning loop (every minute).
pub async fn run_pruner(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if ctx.leader.is_leader() {
            if let Err(e) = prune(&ctx.store, RETENTION).await {
                tracing::warn!(error = %e, "could not prune the audit trail");
            }
        }
    }
}
