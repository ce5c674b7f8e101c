//! Power-state sync: when a guest powers itself off (libvirt reports a stop
//! nubo did not ask for), the instance's desired power becomes `stopped`,
//! as Nova's power-state sync does. The desired power then decides: the
//! agent does not boot it again until someone runs `nubo server start`.
//!
//! The write is a compare-and-swap on the instance spec's mod revision,
//! guarded by this node's assignment, so it never overrides a concurrent
//! user request and never touches an instance that moved elsewhere.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use nubo_common::keys;
use nubo_common::model::{self, Instance, PowerState};
use nubo_common::{InstanceId, NodeName};
use nubo_store::Etcd;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::store::StoreError;

/// What to do with the spec of an instance whose guest stopped by itself.
/// Pure: `Some(new spec)` when its desired power must become stopped.
pub fn stopped_spec(spec: &Instance) -> Option<Instance> {
    (spec.power == PowerState::Running).then(|| Instance {
        power: PowerState::Stopped,
        ..spec.clone()
    })
}

/// Records the stop of `id` in its spec. `Ok(true)` if the spec changed.
pub async fn record_guest_stop(
    etcd: &Etcd,
    node: &NodeName,
    id: InstanceId,
) -> Result<bool, StoreError> {
    let key = keys::instance(&id);
    for _ in 0..8 {
        let Some(kv) = etcd.get_kv(&key).await? else {
            return Ok(false);
        };
        let mod_rev = kv.mod_revision();
        let Ok(spec) = model::decode::<Instance>(&key, kv.value()) else {
            return Ok(false);
        };
        let Some(next) = stopped_spec(&spec) else {
            return Ok(false);
        };
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_rev),
                Compare::version(keys::assignment(node, &id), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(key.as_str(), model::encode(&next), None)]);
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
                    info!(instance = %id, "guest powered itself off; desired power set to stopped");
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
    fn only_running_specs_change() {
        let mut spec = crate::testutil::instance(vec![]);
        spec.power = PowerState::Running;
        let next = stopped_spec(&spec).unwrap();
        assert_eq!(next.power, PowerState::Stopped);
        assert_eq!(next.id, spec.id);
        spec.power = PowerState::Stopped;
        assert!(stopped_spec(&spec).is_none());
    }
}
