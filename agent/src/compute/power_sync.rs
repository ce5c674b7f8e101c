//! Power-state sync: when a guest powers itself off (libvirt reports a stop
//! nubo did not ask for), the instance's desired power becomes `stopped`,
//! as Nova's power-state sync does. The desired power then decides: the
//! agent does not boot it again until someone runs `nubo server start`.
//!
//! A node's etcd role may not write instance specs, so the agent reports
//! the stop under its own keys (`/nubo/v1/guest-stops/<node>/<id>`,
//! [`GuestStop`]) naming the revision of the spec copy it read; it keeps
//! the guest off while the report stands for that spec
//! (`crate::state::desired`), and the leading coordinator writes the
//! stopped power into the spec and deletes the report. The report is
//! written in a transaction guarded by the copy's revision and this node's
//! assignment, so it never stands for a spec changed since (a concurrent
//! user request) nor for an instance that moved elsewhere.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, GuestStop, Instance, PowerState};
use nubo_common::{InstanceId, NodeName};
use nubo_store::Etcd;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::store::StoreError;

/// What to report for an instance whose guest stopped by itself, given
/// the spec (copy) at `spec_revision`. Pure: `Some(report)` when its
/// desired power was running.
pub fn stop_report(spec: &Instance, spec_revision: i64) -> Option<GuestStop> {
    (spec.power == PowerState::Running).then(|| GuestStop {
        spec_revision,
        at: model::now(),
    })
}

/// Reports the stop of `id`. `Ok(true)` if a report was written.
pub async fn record_guest_stop(
    etcd: &Etcd,
    node: &NodeName,
    id: InstanceId,
) -> Result<bool, StoreError> {
    let key = keys::node_spec(node, &id);
    for _ in 0..8 {
        let Some(kv) = etcd.get_kv(&key).await? else {
            return Ok(false);
        };
        let mod_rev = kv.mod_revision();
        let Ok(spec) = model::decode::<Instance>(&key, kv.value()) else {
            return Ok(false);
        };
        let Some(report) = stop_report(&spec, mod_rev) else {
            return Ok(false);
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_rev),
                Compare::version(keys::assignment(node, &id), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(
                keys::guest_stop(node, &id),
                model::encode(&report),
                None,
            )]);
        if etcd.txn(txn).await?.succeeded() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Consumes guest-stop notifications until the channel closes.
pub async fn run(etcd: Etcd, node: NodeName, mut rx: mpsc::UnboundedReceiver<InstanceId>) {
    while let Some(id) = rx.recv().await {
        let mut delay = std::time::Duration::from_millis(200);
        for _ in 0..10 {
            match record_guest_stop(&etcd, &node, id).await {
                Ok(true) => {
                    info!(instance = %id, "guest powered itself off; stop reported");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    warn!(instance = %id, error = %e, "could not record guest stop; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_running_specs_are_reported() {
        let mut spec = crate::testutil::instance(vec![]);
        spec.power = PowerState::Running;
        let report = stop_report(&spec, 42).unwrap();
        assert_eq!(report.spec_revision, 42);
        spec.power = PowerState::Stopped;
        assert!(stop_report(&spec, 42).is_none());
    }
}
