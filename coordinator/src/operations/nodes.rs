//! Nodes: the view of hypervisors, their admin switch, and the operator
//! calls of failure handling (evacuate, drain, the cluster-wide evacuation
//! switch). Any coordinator serves them: every move is one guarded
//! transaction (see [`super::moves`]), so they are safe next to the
//! leader's automatic evacuation.

use std::time::Duration;

use etcd_client::Txn;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{
    EvacuationConfig, EvacuationPolicy, Instance, InstanceState, InstanceStatus, Migration,
    MigrationState, NodeAdmin, NodeHealthState, PowerState,
};
use nubo_common::{InstanceId, NodeName};
use nubo_store::kv::{put, unchanged};
use tracing::Instrument;

use super::evacuation::NO_CAPACITY;
use super::moves::{MoveOpts, Moved};
use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::placement::NodeState;
use crate::state::Ctx;

/// Default time to wait for an agent to report a drained instance stopped.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Instances of one drain migrated concurrently.
const DRAIN_CONCURRENCY: usize = 4;

/// A node and what this coordinator knows about it.
pub type NodeView = (NodeName, NodeState);

/// The outcome of moving one instance off a node.
pub type MoveOutcome = (InstanceId, ApiResult<Moved>);

fn registered(ctx: &Ctx, r: &str) -> ApiResult<NodeView> {
    let name = node_name(r)?;
    match ctx.view.get(&name) {
        Some(st) if st.info.is_some() => Ok((name, st)),
        _ => Err(ApiError::NotFound(format!(
            "node {:?} not found",
            name.as_str()
        ))),
    }
}

/// Evacuates node `node`: fences it (unless it is fenced already) and
/// moves every instance whose evacuation policy is `auto` or `manual`.
/// Refused for a node that is alive unless `force`.
pub async fn evacuate(ctx: &Ctx, node: &str, force: bool) -> ApiResult<Vec<MoveOutcome>> {
    let (name, st) = registered(ctx, node)?;
    let span = tracing::info_span!("evacuate_node", node = %name, force);
    async {
        if st.alive && !force {
            return Err(ApiError::FailedPrecondition(format!(
                "node {name} is alive (its agent holds its lease); use drain for planned \
                 maintenance, or force if you are sure its instances are not running"
            )));
        }
        // Never move anything off a node that is not storage-fenced.
        if !st.fenced() {
            super::evacuation::fence(ctx, &name)
                .await
                .map_err(ApiError::Unavailable)?;
            super::evacuation::write_health(
                ctx,
                &name,
                NodeHealthState::Fenced,
                "fenced by an operator evacuation",
                None,
            )
            .await?;
        }
        let (_, results) = super::evacuation::evacuation_pass(
            ctx,
            &name,
            &[EvacuationPolicy::Auto, EvacuationPolicy::Manual],
            None,
        )
        .await?;
        Ok(results)
    }
    .instrument(span)
    .await
}

/// Sets the cluster-wide switch of automatic evacuation.
pub async fn set_evacuation_enabled(ctx: &Ctx, enabled: bool) -> ApiResult<bool> {
    let cfg = EvacuationConfig { enabled };
    ctx.store
        .txn(Txn::new().and_then([put(&keys::evacuation_config(), &cfg)]))
        .await?;
    tracing::info!(enabled, "automatic evacuation switch set");
    Ok(enabled)
}

/// The outcome of draining one instance: the move, and the migration that
/// moved it (live drain).
pub type DrainOutcome = (InstanceId, ApiResult<Moved>, Option<Migration>);

/// Drains node `node` for maintenance: disables it, then cold-migrates
/// every instance (stop, wait up to `stop_timeout_secs` (0: 120 s) for the
/// agent to report it stopped, move, restore its power state); with
/// `live`, every running instance is live-migrated instead
/// ([`super::migrations`], [`LIVE_DRAIN_CONCURRENCY`] at a time) and
/// stopped ones are moved as they are.
pub async fn drain(
    ctx: &Ctx,
    node: &str,
    stop_timeout_secs: u32,
    live: bool,
) -> ApiResult<Vec<DrainOutcome>> {
    if live {
        return drain_live(ctx, node).await;
    }
    Ok(drain_cold(ctx, node, stop_timeout_secs)
        .await?
        .into_iter()
        .map(|(id, r)| (id, r, None))
        .collect())
}

/// Live migrations of one live drain run concurrently (memory copies
/// share the migration network).
pub const LIVE_DRAIN_CONCURRENCY: usize = 2;

/// Disables `name` for a drain (placements avoid it from now on).
async fn disable_for_drain(ctx: &Ctx, name: &NodeName) -> ApiResult<()> {
    let admin = NodeAdmin {
        enabled: false,
        reason: Some("draining".into()),
    };
    ctx.store
        .txn(Txn::new().and_then([put(&keys::node_admin(name), &admin)]))
        .await?;
    ctx.view.set_admin(name, admin);
    tracing::info!(node = %name, "node disabled for draining");
    Ok(())
}

async fn drain_live(ctx: &Ctx, node: &str) -> ApiResult<Vec<DrainOutcome>> {
    let (name, st) = registered(ctx, node)?;
    if !st.alive {
        return Err(ApiError::FailedPrecondition(format!(
            "node {name} is down; use evacuate"
        )));
    }
    disable_for_drain(ctx, &name).await?;
    let insts = super::moves::assigned_instances(ctx, &name).await?;
    let c = &ctx.cfg.migration;
    // Everything the leader allows a migration, and a margin.
    let limit = c.prepare_timeout + c.budget + c.budget_grace + Duration::from_secs(30);
    let name = &name;
    let results: Vec<DrainOutcome> = futures::stream::iter(insts)
        .map(|i| {
            let span = tracing::info_span!("drain_live", node = %name, instance = %i.id);
            async move {
                let id = i.id;
                if i.power != PowerState::Running {
                    let opts = MoveOpts {
                        leader_lease: None,
                        power: None,
                    };
                    return (
                        id,
                        super::moves::move_instance(ctx, id, name, opts).await,
                        None,
                    );
                }
                let req = super::migrations::NewMigration {
                    project: i.project.clone(),
                    server: id.to_string(),
                    live: true,
                    host: None,
                };
                let m = match super::migrations::migrate(ctx, req).await {
                    Ok(m) => m,
                    Err(e) => return (id, Err(e), None),
                };
                match super::migrations::wait(ctx, &m.id, limit).await {
                    Ok(done) if done.state == MigrationState::Completed => {
                        (id, Ok(Moved::To(done.destination.clone())), Some(done))
                    }
                    Ok(done) => {
                        let why = format!(
                            "migration {} {}: {}",
                            done.id,
                            super::migrations::state_str(done.state),
                            done.error.as_deref().unwrap_or("no reason recorded")
                        );
                        (id, Err(ApiError::FailedPrecondition(why)), Some(done))
                    }
                    Err(e) => (id, Err(e), Some(m)),
                }
            }
            .instrument(span)
        })
        .buffer_unordered(LIVE_DRAIN_CONCURRENCY)
        .collect()
        .await;
    Ok(results)
}

async fn drain_cold(ctx: &Ctx, node: &str, stop_timeout_secs: u32) -> ApiResult<Vec<MoveOutcome>> {
    let (name, st) = registered(ctx, node)?;
    if !st.alive {
        return Err(ApiError::FailedPrecondition(format!(
            "node {name} is down; use evacuate"
        )));
    }
    let timeout = match stop_timeout_secs {
        0 => DEFAULT_STOP_TIMEOUT,
        s => Duration::from_secs(u64::from(s)),
    };
    disable_for_drain(ctx, &name).await?;
    let insts = super::moves::assigned_instances(ctx, &name).await?;
    let name = &name;
    let results: Vec<MoveOutcome> = futures::stream::iter(insts)
        .map(|i| {
            let span = tracing::info_span!("drain", node = %name, instance = %i.id);
            async move {
                let id = i.id;
                (id, cold_migrate(ctx, i, name, timeout).await)
            }
            .instrument(span)
        })
        .buffer_unordered(DRAIN_CONCURRENCY)
        .collect()
        .await;
    Ok(results)
}

/// Stop → wait for the agent to report stopped → move (restoring the
/// desired power state in the same transaction).
async fn cold_migrate(
    ctx: &Ctx,
    inst: Instance,
    from: &NodeName,
    timeout: Duration,
) -> ApiResult<Moved> {
    let id = inst.id;
    let original = inst.power;
    if original == PowerState::Running {
        set_power(ctx, id, PowerState::Stopped).await?;
        if let Err(e) = wait_stopped(ctx, id, from, timeout).await {
            let _ = set_power(ctx, id, original).await;
            return Err(e);
        }
    }
    let r = super::moves::move_instance(
        ctx,
        id,
        from,
        MoveOpts {
            leader_lease: None,
            power: Some(original),
        },
    )
    .await;
    if let Err(e) = &r {
        // Not moved: let it run where it is again.
        let _ = set_power(ctx, id, original).await;
        if matches!(e, ApiError::ResourceExhausted(_)) {
            tracing::warn!(instance = %id, error = %e, "drain: {NO_CAPACITY}");
        }
    }
    r
}

async fn set_power(ctx: &Ctx, id: InstanceId, power: PowerState) -> ApiResult<()> {
    let key = keys::instance(&id);
    for _ in 0..16 {
        let Some(mut v) = ctx.store.read::<Instance>(&key).await? else {
            return Err(ApiError::NotFound(format!("server {id} was deleted")));
        };
        if v.value.power == power {
            return Ok(());
        }
        v.value.power = power;
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, v.mod_rev)])
                    .and_then(super::specs::put_ops(&v.value)),
            )
            .await?;
        if resp.succeeded() {
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(format!(
        "server {id} changed concurrently too often"
    )))
}

async fn wait_stopped(
    ctx: &Ctx,
    id: InstanceId,
    node: &NodeName,
    timeout: Duration,
) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let key = keys::instance_status(node, &id);
    loop {
        if let Some(s) = ctx.store.read::<InstanceStatus>(&key).await? {
            if s.value.state == InstanceState::Stopped && &s.value.node == node {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "the agent of {node} did not report server {id} stopped within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node name from a request.
fn node_name(r: &str) -> ApiResult<NodeName> {
    NodeName::new(r.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Node `r` as this coordinator's view knows it.
pub fn get(ctx: &Ctx, r: &str) -> ApiResult<NodeView> {
    registered(ctx, r)
}

/// One page of the registered nodes, in name order.
pub fn list(ctx: &Ctx, page: &PageRequest) -> ApiResult<Page<NodeView>> {
    let size = crate::paging::page_size_of(page.size)?;
    let after = match crate::paging::decode_token(&page.token, &keys::nodes_prefix())? {
        Some(raw) => {
            let k = String::from_utf8_lossy(&raw).into_owned();
            match keys::parse(&k) {
                Some(keys::Key::Node(n)) => Some(n),
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "page_token is not valid for this list".into(),
                    ))
                }
            }
        }
        None => None,
    };
    let (items, more) = ctx.view.page(after.as_ref(), size);
    let next = match (more, items.last()) {
        (true, Some((n, _))) => crate::paging::encode_token(keys::node(n).as_bytes()),
        _ => String::new(),
    };
    Ok(Page { items, next })
}

/// Enables or disables node `r` for new placements.
pub async fn set_enabled(ctx: &Ctx, r: &str, enabled: bool) -> ApiResult<NodeView> {
    let name = node_name(r)?;
    if ctx.view.get(&name).and_then(|s| s.info).is_none() {
        return Err(ApiError::NotFound(format!(
            "node {:?} not found",
            name.as_str()
        )));
    }
    let admin = NodeAdmin {
        enabled,
        reason: (!enabled).then(|| "disabled through the API".to_string()),
    };
    ctx.store
        .txn(Txn::new().and_then([put(&keys::node_admin(&name), &admin)]))
        .await?;
    ctx.view.set_admin(&name, admin);
    tracing::info!(node = %name, enabled, "node admin switch set");
    registered(ctx, name.as_str())
}
