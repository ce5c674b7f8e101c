//! nubo's etcd layer (`nubo-store`) against a real 3-member etcd cluster
//! on loopback: members killed with SIGKILL under load, answers lost on
//! the wire, watches and leases moved to live members.
//!
//! `cargo test -p nubo-tests --test etcd_cluster -- --test-threads=2`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp};
use nubo_store::{EtcdConfig, WatchSpec};
use nubo_tests::Etcd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn cfg(etcd: &Etcd, prefer_leader: bool) -> EtcdConfig {
    EtcdConfig::new(etcd.endpoints()).prefer_leader(prefer_leader)
}

/// What a load loop saw.
#[derive(Debug, Default)]
struct Seen {
    ok: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Puts, linearizable gets and a guarded counter increment, in a loop
/// until `stop`; errors are recorded, not fatal.
async fn load(store: nubo_store::Etcd, tag: &'static str, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let key = format!("/nbt/load/{tag}/{}", i % 50);
        let r: Result<(), nubo_store::StoreError> = async {
            store.put(key.clone(), i.to_string(), None).await?;
            let got = store.get(key.clone(), None).await?;
            assert_eq!(got.kvs()[0].value(), i.to_string().as_bytes());
            // Guarded read-modify-write of one counter per loop.
            let ckey = format!("/nbt/count/{tag}");
            loop {
                let cur = store.get(ckey.clone(), None).await?;
                let (n, rev) = cur.kvs().first().map_or((0u64, 0), |kv| {
                    (
                        String::from_utf8_lossy(kv.value()).parse().unwrap_or(0),
                        kv.mod_revision(),
                    )
                });
                let guard = if rev == 0 {
                    Compare::create_revision(ckey.clone(), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(ckey.clone(), CompareOp::Equal, rev)
                };
                let t = Txn::new().when([guard]).and_then([TxnOp::put(
                    ckey.clone(),
                    (n + 1).to_string(),
                    None,
                )]);
                if store.txn(t).await?.succeeded() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => {
                seen.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => seen.errors.lock().unwrap().push(e.to_string()),
        }
    }
}

/// Waits until `seen` counted `n` more successful rounds (the load is
/// really running on the cluster as it is now).
async fn progress(seen: &Seen, n: u64) {
    let start = seen.ok.load(Ordering::Relaxed);
    let t = Instant::now();
    while seen.ok.load(Ordering::Relaxed) < start + n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no progress: {:?}",
            seen.errors.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter(store: &nubo_store::Etcd, tag: &str) -> u64 {
    let r = store.get(format!("/nbt/count/{tag}"), None).await.unwrap();
    r.kvs()
        .first()
        .map_or(0, |kv| String::from_utf8_lossy(kv.value()).parse().unwrap())
}

/// Two clients (one preferring the leader, one sticky to a random member)
/// keep working, without a single error, while a follower and then the
/// leader are killed; the guarded counters count every successful round
/// exactly once. A plain `etcd_client` connected to the same endpoints
/// fails while a member is down (the bug this layer fixes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_fails_while_a_follower_and_then_the_leader_are_killed() {
    let mut etcd = Etcd::start_cluster(3).unwrap();
    let a = nubo_store::Etcd::connect(&cfg(&etcd, true)).await.unwrap();
    let b = nubo_store::Etcd::connect(&cfg(&etcd, false)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (sa, sb) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let ta = tokio::spawn(load(a.clone(), "a", stop.clone(), sa.clone()));
    let tb = tokio::spawn(load(b.clone(), "b", stop.clone(), sb.clone()));
    progress(&sa, 20).await;
    progress(&sb, 20).await;

    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let follower = (leader + 1) % 3;
    etcd.kill_member(follower);
    eprintln!("killed follower {follower}");
    progress(&sa, 50).await;
    progress(&sb, 50).await;

    // Positive control: the client library's own balancing, same endpoints.
    let raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap();
    let mut raw_errors = 0;
    for i in 0..60 {
        if raw
            .kv_client()
            .put(format!("/nbt/raw/{i}"), "x", None)
            .await
            .is_err()
        {
            raw_errors += 1;
        }
    }
    eprintln!("plain etcd_client: {raw_errors}/60 puts failed with one member down");
    assert!(
        raw_errors > 0,
        "the plain client should hit the dead member"
    );

    etcd.restart_member(follower).unwrap();
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    etcd.kill_member(leader);
    eprintln!("killed leader {leader}");
    progress(&sa, 50).await;
    progress(&sb, 50).await;
    let up: Vec<bool> = a.members().iter().map(|m| m.up).collect();
    assert!(
        !up[leader],
        "the pool took the dead leader out: {:?}",
        a.members()
    );

    stop.store(true, Ordering::Relaxed);
    ta.await.unwrap();
    tb.await.unwrap();
    for (tag, s, store) in [("a", &sa, &a), ("b", &sb, &b)] {
        let errors = s.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "client {tag}: {errors:?}");
        let ok = s.ok.load(Ordering::Relaxed);
        assert_eq!(
            counter(store, tag).await,
            ok,
            "client {tag}: one increment per round"
        );
        eprintln!("client {tag}: {ok} rounds, 0 errors");
    }
}

/// A TCP proxy in front of one etcd member that, once a client→server
/// chunk contains `marker`, either forwards it and drops every answer
/// (`forward = true`: the write reaches etcd, its answer is lost) or drops
/// it (`forward = false`), then cuts the connection.
async fn cutting_proxy(
    target: String,
    marker: &'static [u8],
    forward: bool,
) -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    let target = target.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else {
                return;
            };
            if cut2.load(Ordering::SeqCst) {
                // After the cut the member stays "down".
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(&target).await else {
                continue;
            };
            let cut = cut2.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = {
                    let cut = cut.clone();
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let hit = buf[..n].windows(marker.len()).any(|w| w == marker);
                            if hit {
                                cut.store(true, Ordering::SeqCst);
                                if forward {
                                    let _ = sw.write_all(&buf[..n]).await;
                                    // Let etcd apply it; its answer is dropped.
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                                return;
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if cut.load(Ordering::SeqCst) {
                            return;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                // Whichever side ends first ends the connection.
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr, cut)
}

/// A client whose first member is the cutting proxy (in front of the
/// leader) and whose others are the real members.
async fn client_through(etcd: &Etcd, proxy: &str, leader: usize) -> nubo_store::Etcd {
    let mut eps = vec![proxy.to_string()];
    eps.extend(
        (0..3)
            .filter(|i| *i != leader)
            .map(|i| etcd.member_endpoint(i)),
    );
    nubo_store::Etcd::connect(&EtcdConfig::new(eps))
        .await
        .unwrap()
}

/// The answer of a guarded create is lost after etcd applied it: the
/// layer reads the keys back, finds its own value and reports success —
/// not a conflict, and nothing written twice. A counter bumped in the same
/// transaction moves by exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_answer_of_an_applied_transaction_is_resolved_as_applied() {
    let etcd = Etcd::start_cluster(3).unwrap();
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let setup = etcd.store().await.unwrap();
    setup.put("/nbt/usage", "0", None).await.unwrap();
    let rev = setup.get("/nbt/usage", None).await.unwrap().kvs()[0].mod_revision();
    let (proxy, cut) = cutting_proxy(etcd.member_endpoint(leader), b"CUT-AFTER-APPLY", true).await;
    let store = in_use_proxy(&etcd, &proxy, leader).await;
    let t = Txn::new()
        .when([
            Compare::create_revision("/nbt/inst/x", CompareOp::Equal, 0),
            Compare::mod_revision("/nbt/usage", CompareOp::Equal, rev),
        ])
        .and_then([
            TxnOp::put("/nbt/inst/x", "spec CUT-AFTER-APPLY", None),
            TxnOp::put("/nbt/usage", "1", None),
        ])
        .or_else([TxnOp::get("/nbt/inst/x", None)]);
    let resp = store.txn(t).await.unwrap();
    assert!(
        cut.load(Ordering::SeqCst),
        "the proxy cut the answer (the test did what it says)"
    );
    assert!(resp.succeeded(), "reported as applied, not as a conflict");
    let usage = setup.get("/nbt/usage", None).await.unwrap();
    assert_eq!(usage.kvs()[0].value(), b"1", "applied exactly once");
    assert_eq!(
        setup.get("/nbt/inst/x", None).await.unwrap().kvs()[0].value(),
        b"spec CUT-AFTER-APPLY"
    );
}

/// The transaction is lost on the way (etcd never sees it): the layer
/// finds it did not apply and sends it again through a live member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_lost_before_etcd_is_sent_again_and_applies_once() {
    let etcd = Etcd::start_cluster(3).unwrap();
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let setup = etcd.store().await.unwrap();
    setup.put("/nbt/usage", "0", None).await.unwrap();
    let rev = setup.get("/nbt/usage", None).await.unwrap().kvs()[0].mod_revision();
    let (proxy, cut) = cutting_proxy(etcd.member_endpoint(leader), b"CUT-BEFORE-ETCD", false).await;
    let store = in_use_proxy(&etcd, &proxy, leader).await;
    let t = Txn::new()
        .when([Compare::mod_revision("/nbt/usage", CompareOp::Equal, rev)])
        .and_then([TxnOp::put("/nbt/usage", "1 CUT-BEFORE-ETCD", None)]);
    let resp = store.txn(t).await.unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy dropped the request");
    assert!(resp.succeeded());
    let usage = setup.get("/nbt/usage", None).await.unwrap();
    assert_eq!(usage.kvs()[0].value(), b"1 CUT-BEFORE-ETCD");
    assert_eq!(
        usage.kvs()[0].version(),
        2,
        "written once after the initial put"
    );
}

/// A client with the proxy as the member it uses (retried until the random
/// sticky choice lands on the proxy; the proxy works until its marker).
async fn in_use_proxy(etcd: &Etcd, proxy: &str, leader: usize) -> nubo_store::Etcd {
    for _ in 0..100 {
        let s = client_through(etcd, proxy, leader).await;
        if s.members().first().is_some_and(|m| m.in_use) {
            // The proxy really forwards.
            s.get("/nbt/usage", None).await.unwrap();
            return s;
        }
    }
    panic!("the proxy was never chosen");
}

/// A watch keeps delivering every event, once and in order, while the
/// member it streams from is killed and the writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_moves_to_a_live_member_and_misses_nothing() {
    let mut etcd = Etcd::start_cluster(3).unwrap();
    let store = nubo_store::Etcd::connect(&cfg(&etcd, false)).await.unwrap();
    let writer = etcd.store().await.unwrap();
    let start = writer.put("/nbt/w/0", "0", None).await.unwrap();
    let from = start.header().unwrap().revision() + 1;
    let mut watch = store.watch(
        "/nbt/w/",
        WatchSpec {
            prefix: true,
            prev_kv: false,
        },
        from,
    );
    let n = 300u64;
    let w = tokio::spawn(async move {
        for i in 1..=n {
            writer
                .put(format!("/nbt/w/{i}"), i.to_string(), None)
                .await
                .unwrap();
        }
    });
    // (revision, value) of every event. The writer's store retries a put
    // whose answer was lost with the killed member, so a value may be
    // written twice — at two revisions; the watch must still deliver every
    // revision once, in order, and miss no value.
    let mut got: Vec<(i64, u64)> = Vec::new();
    let mut killed = None;
    while got.last().is_none_or(|(_, v)| *v < n) {
        let resp = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("watch stalled")
            .unwrap();
        for ev in resp.events() {
            assert_eq!(ev.event_type(), EventType::Put);
            let kv = ev.kv().unwrap();
            got.push((
                kv.mod_revision(),
                String::from_utf8_lossy(kv.value()).parse::<u64>().unwrap(),
            ));
        }
        if killed.is_none() && got.len() > 50 {
            let i = store.members().iter().position(|m| m.in_use).unwrap();
            etcd.kill_member(i);
            eprintln!(
                "killed member {i} under the watch after {} events",
                got.len()
            );
            killed = Some(i);
        }
    }
    w.await.unwrap();
    assert!(killed.is_some());
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "every revision once, in order: {got:?}"
    );
    let mut values: Vec<u64> = got.iter().map(|(_, v)| *v).collect();
    values.dedup();
    assert_eq!(values, (1..=n).collect::<Vec<_>>(), "every value, in order");
}

/// A lease kept alive through the layer outlives the loss of the member
/// its keep-alives went to: its key is never deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_survives_the_loss_of_its_member() {
    let mut etcd = Etcd::start_cluster(3).unwrap();
    let store = nubo_store::Etcd::connect(&cfg(&etcd, false)).await.unwrap();
    let lease = store.lease_grant(2).await.unwrap();
    store
        .put("/nbt/alive", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let observer = etcd.store().await.unwrap();
    let rev = observer
        .get("/nbt/alive", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut watch = observer.watch("/nbt/alive", WatchSpec::default(), rev + 1);
    let deleted = Arc::new(AtomicBool::new(false));
    let d2 = deleted.clone();
    let wt = tokio::spawn(async move {
        while let Ok(r) = watch.next().await {
            if r.events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                d2.store(true, Ordering::SeqCst);
            }
        }
    });
    let in_use = store.members().iter().position(|m| m.in_use).unwrap();
    let t = Instant::now();
    let mut renewals = BTreeMap::new();
    let mut i = 0;
    while t.elapsed() < Duration::from_secs(6) {
        if i == 3 {
            etcd.kill_member(in_use);
        }
        let alive = store.lease_keep_alive_once(lease).await.unwrap();
        assert!(alive, "lease lost after {:?}", t.elapsed());
        *renewals.entry(i >= 3).or_insert(0) += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        renewals.get(&true).copied().unwrap_or(0) >= 5,
        "{renewals:?}"
    );
    assert!(!deleted.load(Ordering::SeqCst), "the alive key was deleted");
    // Positive control: stop renewing and the key goes.
    let t = Instant::now();
    while !deleted.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wt.abort();
}
