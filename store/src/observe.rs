//! A hook for the daemons' metrics: the etcd layer reports each request's
//! duration and each transaction etcd refused (a compare that did not
//! hold), once per call — retries and the resolution of a lost answer
//! included — without depending on any metrics crate.

use std::sync::Arc;
use std::time::Duration;

/// Receives what the etcd layer observes. Called on the request's task:
/// implementations must be quick and must not block (update a counter).
pub trait Observer: Send + Sync + 'static {
    /// A request of kind `op` (`get`, `put`, `delete`, `txn`, `status`,
    /// `lease grant`, … or the name given to [`crate::Etcd::retry`])
    /// finished after `elapsed`, retries included; `ok` is false when it
    /// failed for good.
    fn request(&self, op: &'static str, elapsed: Duration, ok: bool);

    /// etcd answered a transaction with `succeeded = false`: one of its
    /// compares did not hold (another writer got there first, or a guard
    /// such as create-if-absent refused).
    fn txn_conflict(&self);
}

/// A shared observer.
pub type SharedObserver = Arc<dyn Observer>;
