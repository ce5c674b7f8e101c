//! The leader's guest-stop loop: Nova's power-state sync, relayed.
//!
//! A guest that powers itself off is reported by its node's agent at
//! `/nubo/v1/guest-stops/<node>/<id>` (`GuestStop`): a node's etcd role may
//! not write instance specs. The agent keeps the guest off while the
//! report stands. The leading coordinator sets the spec's desired power to
//! `stopped` (spec and node copy, [`crate::operations::specs`]) in the
//! transaction that deletes the report, when the spec is still the one the
//! report names (its revision) and still places the instance on that node;
//! otherwise (a `nubo server start` since, a move, a deletion) the report
//! is only deleted. Every coordinator follows the reports (list, then
//! watch); only the leader acts, each time they change and every
//! [`PERIOD`], so a new leader picks up what its predecessor left.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, Txn, TxnOp};
use nubo_common::keys::{self, Key};
use nubo_common::model::{GuestStop, Instance, PowerState};
use nubo_common::{InstanceId, NodeName};
use nubo_store::kv::{decode_kv, kv_key, unchanged};
use nubo_store::{ListWatch, Update};
use tokio::sync::watch;

use crate::error::ApiResult;
use crate::state::Ctx;

/// How often the leader looks at the reports it knows without a change.
pub const PERIOD: Duration = Duration::from_secs(1);

/// A report as read: its content and the revision of its key.
type Reports = BTreeMap<(NodeName, InstanceId), (Option<GuestStop>, i64)>;

fn remember(reports: &mut Reports, key: &str, value: Option<&[u8]>, rev: i64) {
    let Some(Key::GuestStop(node, id)) = keys::parse(key) else {
        return;
    };
    match value {
        None => {
            reports.remove(&(node, id));
        }
        Some(v) => {
            let stop = nubo_common::model::decode::<GuestStop>(key, v)
                .map_err(|e| tracing::warn!(key, error = %e, "undecodable guest-stop report"))
                .ok();
            reports.insert((node, id), (stop, rev));
        }
    }
}

/// Runs until shutdown.
pub async fn run(ctx: Ctx, mut shutdown: watch::Receiver<bool>) {
    let mut lw = ListWatch::new(ctx.store.clone(), vec![keys::all_guest_stops_prefix()]);
    let mut reports = Reports::new();
    loop {
        let update = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            u = lw.next() => Some(u),
            _ = tokio::time::sleep(PERIOD) => None,
        };
        match update {
            Some(Ok(Update::Listed { kvs, .. })) => {
                reports.clear();
                for kv in &kvs {
                    remember(
                        &mut reports,
                        kv_key(kv),
                        Some(kv.value()),
                        kv.mod_revision(),
                    );
                }
            }
            Some(Ok(Update::Events { events, .. })) => {
                for ev in &events {
                    let Some(kv) = ev.kv() else { continue };
                    let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                    remember(&mut reports, kv_key(kv), value, kv.mod_revision());
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "guest-stop reports: list/watch failed");
                tokio::time::sleep(PERIOD).await;
                continue;
            }
            None => {}
        }
        let Some(lease) = ctx.leader.leader_lease() else {
            continue;
        };
        for ((node, id), (stop, rev)) in &reports {
            if let Err(e) = settle(&ctx, node, *id, stop.as_ref(), *rev, lease).await {
                tracing::warn!(instance = %id, %node, error = %e, "guest-stop report not settled");
            }
        }
    }
}

/// Settles one report (module docs): the spec's desired power becomes
/// stopped when the report stands for the current spec, and the report is
/// deleted, in one transaction guarded by the leader's lease.
async fn settle(
    ctx: &Ctx,
    node: &NodeName,
    id: InstanceId,
    stop: Option<&GuestStop>,
    report_rev: i64,
    lease: i64,
) -> ApiResult<()> {
    let rkey = keys::guest_stop(node, &id);
    let ikey = keys::instance(&id);
    let spec = ctx.store.get_kv(&ikey).await?;
    let mut compares = vec![
        unchanged(&rkey, report_rev),
        crate::election::leader_guard(lease),
    ];
    let mut ops = vec![TxnOp::delete(rkey.as_str(), None)];
    match &spec {
        Some(kv) => {
            compares.push(unchanged(&ikey, kv.mod_revision()));
            if let (Ok(inst), Some(stop)) = (decode_kv::<Instance>(kv), stop) {
                let current = stop.spec_revision == kv.mod_revision()
                    && inst.node.as_ref() == Some(node)
                    && inst.power == PowerState::Running;
                if current {
                    let next = Instance {
                        power: PowerState::Stopped,
                        ..inst
                    };
                    ops.extend(crate::operations::specs::put_ops(&next));
                    tracing::info!(instance = %id, %node, "guest powered itself off; desired power set to stopped");
                }
            }
        }
        None => compares.push(nubo_store::kv::absent(&ikey)),
    }
    // A failed compare: something moved; the next pass decides again.
    ctx.store
        .txn(Txn::new().when(compares).and_then(ops))
        .await?;
    Ok(())
}
