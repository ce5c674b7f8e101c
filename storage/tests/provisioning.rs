//! Root-disk provisioning as the agents do it (real throwaway Ceph):
//! `RbdStore::ensure_image` imports an image exactly once even when several
//! clients race for it, and the `bench_*` test compares COW clones with full
//! copies (docs/benchmarks.md, "Storage").

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nubo_storage::testing::TestCluster;
use nubo_storage::{BlockStore, Cluster, Error, ImportWait, RbdPools, RbdStore, BASE_SNAP};

const MIB: u64 = 1 << 20;

fn store(admin: &Cluster, prefix: &str) -> RbdStore {
    let pools = RbdPools {
        images: format!("{prefix}-images"),
        disks: format!("{prefix}-vms"),
        volumes: format!("{prefix}-volumes"),
    };
    for p in [&pools.images, &pools.disks, &pools.volumes] {
        match admin.create_pool(p) {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => panic!("create pool {p}: {e}"),
        }
    }
    RbdStore::new(admin.clone(), pools)
}

/// Non-zero bytes (so an import writes every chunk).
fn image_data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) | 1).collect()
}

#[test]
fn ensure_image_imports_once_under_a_race() {
    let Some(c) = TestCluster::shared().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let admin = c.admin().expect("admin");
    let store = Arc::new(store(&admin, "t-ensure"));
    let data = Arc::new(image_data(8 * MIB as usize));
    let opened = Arc::new(AtomicUsize::new(0));
    let wait = ImportWait {
        timeout: Duration::from_secs(60),
        poll: Duration::from_millis(100),
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, data, opened) = (store.clone(), data.clone(), opened.clone());
            std::thread::spawn(move || {
                let mut open = || {
                    opened.fetch_add(1, Ordering::SeqCst);
                    let r: Box<dyn Read> = Box::new(Cursor::new(data.to_vec()));
                    Ok((r, data.len() as u64))
                };
                store.ensure_image("race", &mut open, wait)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread").expect("ensure_image"))
        .collect();
    assert_eq!(
        results.iter().filter(|(_, imported)| *imported).count(),
        1,
        "exactly one client imports"
    );
    for (snap, _) in &results {
        assert_eq!(snap.spec(), format!("t-ensure-images/img-race@{BASE_SNAP}"));
    }
    // Later calls find it without opening the source.
    let before = opened.load(Ordering::SeqCst);
    let mut never =
        || -> nubo_storage::Result<(Box<dyn Read>, u64)> { panic!("must not re-import") };
    let (_, imported) = store.ensure_image("race", &mut never, wait).unwrap();
    assert!(!imported);
    assert_eq!(opened.load(Ordering::SeqCst), before);
    // A clone, then cleanup leaves nothing.
    let (snap, _) = &results[0];
    let disk = store.clone_root_disk(snap, "i-1", 1).unwrap();
    assert!(store.disk_exists(&disk).unwrap());
    assert!(store.remove_root_disk("i-1").unwrap());
    assert!(!store.remove_root_disk("i-1").unwrap(), "already gone");
    store.delete(&snap.disk).unwrap();
    assert!(store.image_snapshot("race").unwrap().is_none());
}

/// `rbd du` totals of a pool: (provisioned, used) bytes.
fn pool_du(c: &TestCluster, pool: &str) -> (u64, u64) {
    let out = c
        .cli("rbd", &["du", "-p", pool, "--format", "json"])
        .expect("rbd du");
    let v: serde_json::Value = serde_json::from_str(&out).expect("du json");
    (
        v["total_provisioned_size"].as_u64().unwrap_or(0),
        v["total_used_size"].as_u64().unwrap_or(0),
    )
}

/// Root disks for a 120-instance batch: COW clones of the imported image
/// (8 concurrent workers, as the agent's compute runs 8 creates at once)
/// versus full copies of the image. Prints a table; see
/// docs/benchmarks.md. `cargo test -p nubo-storage --test provisioning --
/// --ignored --nocapture bench_`
#[test]
#[ignore]
fn bench_root_disk_provisioning() {
    let Some(c) = TestCluster::shared().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let admin = c.admin().expect("admin");
    let store = Arc::new(store(&admin, "b-prov"));
    let image_mib: u64 = 64;
    let data = image_data((image_mib * MIB) as usize);
    let t = Instant::now();
    let snap = store
        .import_image("bench", &mut Cursor::new(data.clone()), data.len() as u64)
        .expect("import");
    let import = t.elapsed();

    // Clones: 120 instances, 8 workers.
    let n = 120usize;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (store, snap, next) = (store.clone(), snap.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                store
                    .clone_root_disk(&snap, &format!("inst-{i}"), 1)
                    .expect("clone");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let clones = t.elapsed();
    let (clone_prov, clone_used) = pool_du(&c, "b-prov-vms");

    // Full copies: each a complete import of the image (what a non-COW
    // backend writes per instance); 10 of them, extrapolated to 120.
    let copies = 10usize;
    let t = Instant::now();
    for i in 0..copies {
        store
            .import_image(
                &format!("copy-{i}"),
                &mut Cursor::new(data.clone()),
                data.len() as u64,
            )
            .expect("full copy");
    }
    let full = t.elapsed();
    let (_, images_used) = pool_du(&c, "b-prov-images");

    let per_clone_ms = clones.as_secs_f64() * 1000.0 / n as f64;
    let per_copy_ms = full.as_secs_f64() * 1000.0 / copies as f64;
    println!("| what | instances | time | per instance | bytes written |");
    println!("|---|---|---|---|---|");
    println!(
        "| image import (once) | - | {:.2} s | - | {} MiB |",
        import.as_secs_f64(),
        image_mib
    );
    println!(
        "| COW clones (8 workers) | {n} | {:.2} s | {per_clone_ms:.1} ms | {} KiB used ({} GiB provisioned) |",
        clones.as_secs_f64(),
        clone_used / 1024,
        clone_prov >> 30
    );
    println!(
        "| full copies (sequential) | {copies} | {:.2} s | {per_copy_ms:.1} ms | {} MiB (images pool incl. the original) |",
        full.as_secs_f64(),
        images_used / MIB
    );
    println!(
        "| full copies, 120 extrapolated | 120 | {:.1} s | | {} MiB |",
        per_copy_ms * 120.0 / 1000.0,
        image_mib * 120
    );

    // Cleanup.
    for i in 0..n {
        store
            .remove_root_disk(&format!("inst-{i}"))
            .expect("remove");
    }
    store.delete(&snap.disk).expect("delete image");
    for i in 0..copies {
        store
            .delete(&store.image_ref(&format!("copy-{i}")).disk)
            .expect("delete copy");
    }
    println!(
        "120 root disks in {clones:?}: target < 10 s {}",
        if clones < Duration::from_secs(10) {
            "met"
        } else {
            "MISSED"
        }
    );
}
