//! The etcd layer's metrics hook (`nubo_store::Observer`) against a real
//! etcd: one report per call with its operation, and a conflict exactly
//! for a transaction whose compare did not hold.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use nubo_store::Observer;
use nubo_tests::Etcd;

#[derive(Default)]
struct Recorded {
    requests: Mutex<Vec<(&'static str, bool)>>,
    conflicts: Mutex<u32>,
}

impl Observer for Recorded {
    fn request(&self, op: &'static str, _elapsed: Duration, ok: bool) {
        self.requests.lock().unwrap().push((op, ok));
    }

    fn txn_conflict(&self) {
        *self.conflicts.lock().unwrap() += 1;
    }
}

#[tokio::test]
async fn each_call_is_reported_once_and_only_refused_transactions_are_conflicts() {
    let etcd = Etcd::start().unwrap();
    let rec = Arc::new(Recorded::default());
    let store = etcd.store().await.unwrap().with_observer(rec.clone());
    // A clone made afterwards reports too.
    let clone = store.clone();
    clone.put("/obs/k", "v1", None).await.unwrap();
    let got = store.get("/obs/k", None).await.unwrap();
    let rev = got.kvs()[0].mod_revision();
    // Applies: the key is at `rev`.
    let ok = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/obs/k", CompareOp::Equal, rev)])
                .and_then([TxnOp::put("/obs/k", "v2", None)]),
        )
        .await
        .unwrap();
    assert!(ok.succeeded());
    assert_eq!(
        *rec.conflicts.lock().unwrap(),
        0,
        "an applied transaction is no conflict"
    );
    // Refused: the key moved on since `rev`.
    let refused = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/obs/k", CompareOp::Equal, rev)])
                .and_then([TxnOp::put("/obs/k", "v3", None)]),
        )
        .await
        .unwrap();
    assert!(!refused.succeeded());
    assert_eq!(*rec.conflicts.lock().unwrap(), 1);
    assert_eq!(
        *rec.requests.lock().unwrap(),
        vec![("put", true), ("get", true), ("txn", true), ("txn", true)]
    );
    // Without the hook nothing is reported.
    etcd.store()
        .await
        .unwrap()
        .put("/obs/k", "v4", None)
        .await
        .unwrap();
    assert_eq!(rec.requests.lock().unwrap().len(), 4);
}
