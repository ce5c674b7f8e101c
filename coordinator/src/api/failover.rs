//! Operator calls of failure handling: `Nodes.Evacuate`, `Nodes.Drain`,
//! `Nodes.SetEvacuationEnabled`. Any coordinator serves them: every move is
//! one guarded transaction (see `failover::moves`), so they are safe next to
//! the leader's automatic evacuation.

use std::time::Duration;

use etcd_client::Txn;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{
    EvacuationConfig, EvacuationPolicy, Instance, InstanceState, InstanceStatus, NodeAdmin,
    NodeHealthState, PowerState,
};
use nubo_common::proto as pb;
use nubo_common::{InstanceId, NodeName};
use tracing::Instrument;

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::failover::moves::{MoveOpts, Moved};
use crate::failover::{self, NO_CAPACITY};
use nubo_store::kv::{put, unchanged};

/// Default time to wait for an agent to report a drained instance stopped.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Instances of one drain migrated concurrently.
const DRAIN_CONCURRENCY: usize = 4;

fn result(id: InstanceId, r: ApiResult<Moved>) -> pb::MoveResult {
    match r {
        Ok(Moved::To(n)) => pb::MoveResult {
            server_id: id.to_string(),
            to_node: n.to_string(),
            error: String::new(),
        },
        Ok(Moved::AlreadyGone) => pb::MoveResult {
            server_id: id.to_string(),
            to_node: String::new(),
            error: "no longer on this node (moved or deleted meanwhile)".into(),
        },
        Err(e) => pb::MoveResult {
            server_id: id.to_string(),
            to_node: String::new(),
            error: e.to_string(),
        },
    }
}

impl Ctx {
    fn registered(&self, r: &str) -> ApiResult<(NodeName, crate::placement::scheduler::NodeState)> {
        let name = Self::node_name(r)?;
        match self.view.get(&name) {
            Some(st) if st.info.is_some() => Ok((name, st)),
            _ => Err(ApiError::NotFound(format!(
                "node {:?} not found",
                name.as_str()
            ))),
        }
    }

    pub(crate) async fn evacuate_node(
        &self,
        r: pb::EvacuateNodeRequest,
    ) -> ApiResult<pb::EvacuateNodeResponse> {
        let (name, st) = self.registered(&r.name)?;
        let span = tracing::info_span!("evacuate_node", node = %name, force = r.force);
        async {
            if st.alive && !r.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "node {name} is alive (its agent holds its lease); use drain for planned \
                     maintenance, or force if you are sure its instances are not running"
                )));
            }
            // Never move anything off a node that is not storage-fenced.
            if !st.fenced() {
                failover::fence(self, &name)
                    .await
                    .map_err(ApiError::Unavailable)?;
                failover::write_health(
                    self,
                    &name,
                    NodeHealthState::Fenced,
                    "fenced by an operator evacuation",
                    None,
                )
                .await?;
            }
            let (_, results) = failover::evacuation_pass(
                self,
                &name,
                &[EvacuationPolicy::Auto, EvacuationPolicy::Manual],
                None,
            )
            .await?;
            Ok(pb::EvacuateNodeResponse {
                results: results.into_iter().map(|(id, r)| result(id, r)).collect(),
            })
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn set_evacuation_enabled(
        &self,
        r: pb::SetEvacuationEnabledRequest,
    ) -> ApiResult<pb::EvacuationSettings> {
        let cfg = EvacuationConfig { enabled: r.enabled };
        self.store
            .txn(Txn::new().and_then([put(&keys::evacuation_config(), &cfg)]))
            .await?;
        tracing::info!(enabled = r.enabled, "automatic evacuation switch set");
        Ok(pb::EvacuationSettings { enabled: r.enabled })
    }

    pub(crate) async fn drain_node(
        &self,
        r: pb::DrainNodeRequest,
    ) -> ApiResult<pb::DrainNodeResponse> {
        let (name, st) = self.registered(&r.name)?;
        if !st.alive {
            return Err(ApiError::FailedPrecondition(format!(
                "node {name} is down; use evacuate"
            )));
        }
        let timeout = match r.stop_timeout_secs {
            0 => DEFAULT_STOP_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        let admin = NodeAdmin {
            enabled: false,
            reason: Some("draining".into()),
        };
        self.store
            .txn(Txn::new().and_then([put(&keys::node_admin(&name), &admin)]))
            .await?;
        self.view.set_admin(&name, admin);
        tracing::info!(node = %name, "node disabled for draining");
        let insts = self.assigned_instances(&name).await?;
        let name = &name;
        let results: Vec<pb::MoveResult> = futures::stream::iter(insts)
            .map(|i| {
                let span = tracing::info_span!("drain", node = %name, instance = %i.id);
                async move {
                    let id = i.id;
                    result(id, self.cold_migrate(i, name, timeout).await)
                }
                .instrument(span)
            })
            .buffer_unordered(DRAIN_CONCURRENCY)
            .collect()
            .await;
        Ok(pb::DrainNodeResponse { results })
    }

    /// Stop → wait for the agent to report stopped → move (restoring the
    /// desired power state in the same transaction).
    async fn cold_migrate(
        &self,
        inst: Instance,
        from: &NodeName,
        timeout: Duration,
    ) -> ApiResult<Moved> {
        let id = inst.id;
        let original = inst.power;
        if original == PowerState::Running {
            self.set_power(id, PowerState::Stopped).await?;
            if let Err(e) = self.wait_stopped(id, from, timeout).await {
                let _ = self.set_power(id, original).await;
                return Err(e);
            }
        }
        let r = self
            .move_instance(
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
            let _ = self.set_power(id, original).await;
            if matches!(e, ApiError::ResourceExhausted(_)) {
                tracing::warn!(instance = %id, error = %e, "drain: {NO_CAPACITY}");
            }
        }
        r
    }

    async fn set_power(&self, id: InstanceId, power: PowerState) -> ApiResult<()> {
        let key = keys::instance(&id);
        for _ in 0..16 {
            let Some(mut v) = self.store.read::<Instance>(&key).await? else {
                return Err(ApiError::NotFound(format!("server {id} was deleted")));
            };
            if v.value.power == power {
                return Ok(());
            }
            v.value.power = power;
            let resp = self
                .store
                .txn(
                    Txn::new()
                        .when([unchanged(&key, v.mod_rev)])
                        .and_then([put(&key, &v.value)]),
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
        &self,
        id: InstanceId,
        node: &NodeName,
        timeout: Duration,
    ) -> ApiResult<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let key = keys::instance_status(&id);
        loop {
            if let Some(s) = self.store.read::<InstanceStatus>(&key).await? {
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
}
