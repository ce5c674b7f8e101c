//! The leader's failure-handling loop: drives every node through the health
//! state machine ([`super::health_machine`]), fences, and starts evacuation
//! passes ([`crate::operations::evacuation`]). Idle while following. See
//! `docs/failure-handling.md` for the protocol and its timings.
//!
//! Every write of this loop compares that the election key is still on this
//! coordinator's lease, so two coordinators never drive it at once. All its
//! state is in etcd (`/nodes/<n>/health`, assignments), so a new leader just
//! continues: nodes still `fenced` with instances assigned get evacuated.

use std::collections::HashMap;
use std::time::Instant;

use nubo_common::model::{EvacuationPolicy, NodeHealthState};
use nubo_common::NodeName;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::health_machine::{self as machine, Observation, Step};
use crate::error::ApiResult;
use crate::operations::evacuation::{
    evacuation_enabled, evacuation_pass, fence, write_health, PassOutcome,
};
use crate::state::Ctx;

#[derive(Default)]
struct NodeRt {
    /// When this leader first saw the alive key absent (monotonic).
    down_since: Option<Instant>,
    /// When this leader first saw the alive key present (its first tick for
    /// nodes already alive when it took over).
    up_since: Option<Instant>,
    /// The running evacuation pass.
    pass: Option<JoinHandle<ApiResult<PassOutcome>>>,
    /// Earliest next pass.
    next_pass: Option<Instant>,
    /// Result of the last pass: instances it could not move.
    last_failed: Option<usize>,
    /// Last fencing error written, to avoid rewriting the same reason.
    fence_error: Option<String>,
}

/// The leader's failure-handling loop; idle while following.
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let mut rts: HashMap<NodeName, NodeRt> = HashMap::new();
    let mut leading = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.cfg.failure.tick) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let Some(lease) = ctx.leader.leader_lease() else {
            if leading {
                tracing::info!("no longer leader: failure handling paused");
                abort_all(&mut rts);
                leading = false;
            }
            continue;
        };
        if !leading {
            tracing::info!("leader: failure handling active");
            rts.clear();
            leading = true;
        }
        if let Err(e) = tick(&ctx, lease, &mut rts).await {
            tracing::warn!(error = %e, "failure handling tick failed");
        }
    }
    abort_all(&mut rts);
}

fn abort_all(rts: &mut HashMap<NodeName, NodeRt>) {
    for rt in rts.values_mut() {
        if let Some(p) = rt.pass.take() {
            p.abort();
        }
    }
    rts.clear();
}

async fn tick(ctx: &Ctx, lease: i64, rts: &mut HashMap<NodeName, NodeRt>) -> ApiResult<()> {
    let now = Instant::now();
    let mut switch: Option<bool> = None;
    let nodes = ctx.view.all();
    for (name, st) in &nodes {
        let rt = rts.entry(name.clone()).or_default();
        if st.alive {
            rt.down_since = None;
            rt.up_since.get_or_insert(now);
        } else {
            rt.up_since = None;
            rt.down_since.get_or_insert(now);
        }
    }
    let ups: Vec<(NodeName, Instant)> = rts
        .iter()
        .filter_map(|(n, rt)| rt.up_since.map(|u| (n.clone(), u)))
        .collect();
    for (name, st) in nodes {
        let rt = rts.entry(name.clone()).or_default();
        let targets_settled = machine::targets_settled(&name, rt.down_since, &ups, now);
        // Collect a finished pass.
        if rt.pass.as_ref().is_some_and(|p| p.is_finished()) {
            if let Some(p) = rt.pass.take() {
                match p.await {
                    Ok(Ok(o)) => {
                        tracing::info!(node = %name, moved = o.moved, failed = o.failed, "evacuation pass done");
                        rt.last_failed = Some(o.failed);
                        if o.failed > 0 {
                            rt.next_pass = Some(now + ctx.cfg.failure.evacuation_retry);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node = %name, error = %e, "evacuation pass failed");
                        rt.next_pass = Some(now + ctx.cfg.failure.evacuation_retry);
                    }
                    Err(e) => tracing::warn!(node = %name, error = %e, "evacuation pass aborted"),
                }
            }
        }
        let stored = st.health.as_ref().map(|h| h.state);
        let fenced_down = stored == Some(NodeHealthState::Fenced) && !st.alive;
        let mut auto_left = None;
        let mut enabled = true;
        let due = rt.pass.is_none() && rt.next_pass.is_none_or(|t| t <= now);
        if fenced_down && due {
            auto_left = Some(
                crate::operations::moves::assigned_instances(ctx, &name)
                    .await?
                    .iter()
                    .filter(|i| i.evacuation == EvacuationPolicy::Auto)
                    .count(),
            );
            enabled = match switch {
                Some(s) => s,
                None => *switch.insert(evacuation_enabled(ctx).await?),
            };
        }
        let obs = Observation {
            stored,
            alive: st.alive,
            down_for: rt.down_since.map(|t| now.saturating_duration_since(t)),
            auto_left,
            evacuation_enabled: enabled,
            evacuation_due: due,
            targets_settled,
        };
        let span = tracing::info_span!("node_health", node = %name);
        match machine::step(&obs, ctx.cfg.failure.suspect_grace) {
            Step::Nothing => {
                if fenced_down && due && !enabled {
                    let reason = "automatic evacuation is disabled cluster-wide";
                    if st.health.as_ref().is_some_and(|h| h.reason != reason) {
                        write_health(ctx, &name, NodeHealthState::Fenced, reason, Some(lease))
                            .instrument(span)
                            .await?;
                    }
                }
            }
            Step::MarkUp { unfence } => {
                async {
                    if unfence {
                        let r = ctx.fencer.unfence(&name).await;
                        ctx.metrics.fencing_event(if r.is_ok() {
                            "unfenced"
                        } else {
                            "unfence_failed"
                        });
                        if let Err(e) = r {
                            // Retried every tick: log each new reason once.
                            let e = e.to_string();
                            if rt.fence_error.as_deref() != Some(e.as_str()) {
                                tracing::warn!(node = %name, error = %e, "unfencing failed; retrying");
                                rt.fence_error = Some(e);
                            }
                            return Ok(false);
                        }
                    }
                    rt.fence_error = None;
                    rt.last_failed = None;
                    rt.next_pass = None;
                    write_health(ctx, &name, NodeHealthState::Up, "agent alive", Some(lease)).await
                }
                .instrument(span)
                .await?;
            }
            Step::MarkSuspect => {
                write_health(
                    ctx,
                    &name,
                    NodeHealthState::Suspect,
                    "alive key gone: the agent's lease expired",
                    Some(lease),
                )
                .instrument(span)
                .await?;
            }
            Step::Fence => {
                async {
                    match fence(ctx, &name).await {
                        Ok(()) => {
                            write_health(
                                ctx,
                                &name,
                                NodeHealthState::Fenced,
                                "storage fenced after the suspect grace",
                                Some(lease),
                            )
                            .await
                        }
                        Err(e) => {
                            tracing::warn!(node = %name, error = %e, "fencing failed; retrying");
                            if rt.fence_error.as_deref() == Some(e.as_str()) {
                                return Ok(false);
                            }
                            rt.fence_error = Some(e.clone());
                            write_health(
                                ctx,
                                &name,
                                NodeHealthState::Suspect,
                                &format!("fencing failed, retrying: {e}"),
                                Some(lease),
                            )
                            .await
                        }
                    }
                }
                .instrument(span)
                .await?;
            }
            Step::Evacuate => {
                let (c, n) = (ctx.clone(), name.clone());
                tracing::info!(node = %name, auto_left = ?auto_left, "starting an evacuation pass");
                rt.pass = Some(tokio::spawn(
                    async move {
                        evacuation_pass(&c, &n, &[EvacuationPolicy::Auto], Some(lease))
                            .await
                            .map(|(o, _)| o)
                    }
                    .instrument(span),
                ));
            }
            Step::MarkEvacuated => {
                write_health(
                    ctx,
                    &name,
                    NodeHealthState::Evacuated,
                    "every instance with evacuation policy auto was moved",
                    Some(lease),
                )
                .instrument(span)
                .await?;
            }
        }
    }
    Ok(())
}
