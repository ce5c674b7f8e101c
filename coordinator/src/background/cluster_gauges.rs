//! The leader's collection of the cluster gauges
//! ([`crate::telemetry::cluster`]): a snapshot every
//! [`cluster::INTERVAL`] while this coordinator leads (the node view is in
//! memory; quotas are two etcd range reads; Ceph health one monitor
//! command, bounded by [`cluster::CEPH_TIMEOUT`]), cleared while it follows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nubo_common::keys;
use nubo_common::model::{Quota, QuotaUsage};
use nubo_identity::quota::effective_quota;
use nubo_store::kv::{decode_or_skip, kv_key};
use tokio::sync::watch;

use crate::state::Ctx;
use crate::telemetry::cluster::{
    self, parse_ceph_status, ClusterGauges, NodeRow, NodeStateName, QuotaRow, Snapshot, INTERVAL,
};

/// Collects every [`INTERVAL`] while this coordinator leads; clears the
/// snapshot while it follows.
pub async fn run(ctx: Ctx, gauges: Arc<ClusterGauges>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if ctx.leader.is_leader() {
            match collect(&ctx).await {
                Ok(s) => gauges.set(Some(s)),
                // The previous snapshot stays until MAX_AGE.
                Err(e) => tracing::warn!(error = %e, "metrics: cluster gauges not collected"),
            }
        } else {
            gauges.set(None);
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// One collection.
pub async fn collect(ctx: &Ctx) -> Result<Snapshot, nubo_store::StoreError> {
    let nodes = ctx
        .view
        .all()
        .into_iter()
        .filter_map(|(name, st)| {
            let info = st.info.as_ref()?;
            let state = if st.fenced() {
                NodeStateName::Fenced
            } else if st.alive {
                NodeStateName::Alive
            } else {
                NodeStateName::Dead
            };
            Some(NodeRow {
                node: name.to_string(),
                state,
                capacity: info.capacity,
                allocated: st.usage.used,
            })
        })
        .collect();
    let quotas = quotas(ctx).await?;
    let ceph = match ctx.ceph.get() {
        Some(rbd) => Some(ceph_health(rbd.clone()).await),
        None => None,
    };
    Ok(Snapshot {
        nodes,
        quotas,
        ceph,
        collected_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    })
}

async fn quotas(ctx: &Ctx) -> Result<Vec<QuotaRow>, nubo_store::StoreError> {
    let (qp, up) = (keys::quotas_prefix(), keys::quota_usage_prefix());
    let own: BTreeMap<String, Quota> = ctx
        .store
        .list_all(&qp, |kv| {
            let project = kv_key(kv).strip_prefix(&qp)?.to_string();
            Some((project, decode_or_skip::<Quota>(kv)?))
        })
        .await?
        .into_iter()
        .collect();
    let default = own.get(keys::DEFAULT_QUOTA).copied();
    let usage = ctx
        .store
        .list_all(&up, |kv| {
            let project = kv_key(kv).strip_prefix(&up)?.to_string();
            Some((project, decode_or_skip::<QuotaUsage>(kv)?))
        })
        .await?;
    Ok(usage
        .into_iter()
        .map(|(project, used)| QuotaRow {
            limit: effective_quota(own.get(&project).copied(), default),
            project,
            used,
        })
        .collect())
}

/// `ceph health` through the coordinator's monitor connection, on the
/// blocking pool, bounded by [`cluster::CEPH_TIMEOUT`].
async fn ceph_health(rbd: Arc<nubo_storage::RbdStore>) -> &'static str {
    let call = tokio::task::spawn_blocking(move || {
        rbd.cluster()
            .mon_command(&serde_json::json!({"prefix": "health", "format": "json"}))
    });
    let out = match tokio::time::timeout(cluster::CEPH_TIMEOUT, call).await {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "metrics: ceph health failed");
            return "unreachable";
        }
        Ok(Err(_)) | Err(_) => return "unreachable",
    };
    parse_ceph_status(&out)
}
