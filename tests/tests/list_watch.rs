//! nubo-store's list-then-watch loop (`nubo_store::ListWatch`, the one both
//! daemons keep their copies of etcd with) against a real etcd: it reads
//! and streams only the prefixes it was given, lists them at one revision
//! across pages, hands over each prefix's events in order with how far that
//! prefix is known, and lists again when asked. (A watch whose revision was
//! compacted lists again too: `agent/tests/binary.rs`,
//! `resuming_into_a_compacted_revision_relists`.)
//!
//! `cargo test -p nubo-tests --test list_watch`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{EventType, Txn, TxnOp};
use nubo_store::{ListWatch, Update};
use nubo_tests::Etcd;

async fn next(lw: &mut ListWatch) -> Update {
    tokio::time::timeout(Duration::from_secs(20), lw.next())
        .await
        .expect("no update within 20 s")
        .unwrap()
}

fn key(kv: &etcd_client::KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_watches_only_its_prefixes() {
    let etcd = Etcd::start().unwrap();
    let store = etcd.store().await.unwrap();
    let mut want = BTreeSet::new();
    for i in 0..15 {
        store
            .put(format!("/nbt/lw/a/{i:02}"), "x", None)
            .await
            .unwrap();
        want.insert(format!("/nbt/lw/a/{i:02}"));
    }
    for i in 0..4 {
        store
            .put(format!("/nbt/lw/b/{i}"), "x", None)
            .await
            .unwrap();
        want.insert(format!("/nbt/lw/b/{i}"));
    }
    // Between the two prefixes and after them: never read.
    store.put("/nbt/lw/ab", "private", None).await.unwrap();
    let last = store
        .put("/nbt/lw/private/token", "private", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // Pages of 4 keys: the listing takes several reads, all at one revision.
    let mut lw = ListWatch::new(
        store.clone(),
        vec!["/nbt/lw/a/".into(), "/nbt/lw/b/".into()],
    )
    .with_page(4);
    let Update::Listed { revision, kvs, .. } = next(&mut lw).await else {
        panic!("the first update is a listing");
    };
    assert!(revision >= last, "listed at {revision}, before {last}");
    let got: BTreeSet<String> = kvs.iter().map(key).collect();
    assert_eq!(got, want);
    assert_eq!(kvs.len(), want.len(), "each key once");

    // Private writes, then a put under b, a delete under a, and one
    // transaction writing under both.
    store
        .put("/nbt/lw/private/token", "rotated", None)
        .await
        .unwrap();
    store.put("/nbt/lw/ab", "changed", None).await.unwrap();
    let put_b = store
        .put("/nbt/lw/b/9", "x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    store.delete("/nbt/lw/a/03", None).await.unwrap();
    let txn = store
        .txn(Txn::new().and_then([
            TxnOp::put("/nbt/lw/a/99", "t", None),
            TxnOp::put("/nbt/lw/b/99", "t", None),
            TxnOp::put("/nbt/lw/private/x", "t", None),
        ]))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // Per prefix: the events in revision order, each with its progress.
    let mut seen: [Vec<(String, EventType, i64)>; 2] = [Vec::new(), Vec::new()];
    let mut progress = [0i64; 2];
    while seen[0].len() + seen[1].len() < 4 {
        match next(&mut lw).await {
            Update::Events {
                prefix,
                events,
                progress: p,
            } => {
                for ev in &events {
                    let kv = ev.kv().unwrap();
                    seen[prefix].push((key(kv), ev.event_type(), kv.mod_revision()));
                }
                assert!(p > progress[prefix], "progress moves forward");
                assert_eq!(Some(p), seen[prefix].last().map(|e| e.2));
                progress[prefix] = p;
            }
            Update::Listed { .. } => panic!("listed again without a reason"),
        }
    }
    let names = |v: &[(String, EventType, i64)]| {
        v.iter()
            .map(|(k, t, _)| format!("{k} {t:?}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&seen[0]),
        vec!["/nbt/lw/a/03 Delete", "/nbt/lw/a/99 Put"]
    );
    assert_eq!(names(&seen[1]), vec!["/nbt/lw/b/9 Put", "/nbt/lw/b/99 Put"]);
    assert_eq!(seen[1][0].2, put_b);
    // The transaction reached each prefix separately, at its revision.
    assert_eq!(progress, [txn, txn]);

    // Nothing else arrives (the private writes were never streamed).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), lw.next())
            .await
            .is_err(),
        "an unexpected update"
    );

    // Asked to, it lists again: the current state, at a newer revision.
    lw.relist();
    let Update::Listed {
        revision: again,
        kvs,
        ..
    } = next(&mut lw).await
    else {
        panic!("relist() lists");
    };
    assert!(again >= txn);
    let got: BTreeSet<String> = kvs.iter().map(key).collect();
    want.remove("/nbt/lw/a/03");
    want.extend([
        "/nbt/lw/a/99".into(),
        "/nbt/lw/b/9".into(),
        "/nbt/lw/b/99".into(),
    ]);
    assert_eq!(got, want);
}
