//! Tests against a real throwaway Ceph cluster (scripts/ceph-up.sh).
//! A cluster that does not start fails them (with the reason); they are
//! skipped only when the Ceph binaries are missing and
//! `NUBO_TEST_ALLOW_SKIP=ceph` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nubo_storage::testing::TestCluster;
use nubo_storage::{
    BlockStore, Cluster, ConnectOptions, DiskRef, Error, Features, RbdPools, RbdStore,
};

const MIB: u64 = 1 << 20;

fn cluster() -> Option<Arc<TestCluster>> {
    TestCluster::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Creates `name` if missing (pools are per test, the cluster may be shared).
fn pool(admin: &Cluster, name: &str) {
    match admin.create_pool(name) {
        Ok(()) | Err(Error::AlreadyExists { .. }) => {}
        Err(e) => panic!("create pool {name}: {e}"),
    }
}

fn store(admin: &Cluster, prefix: &str) -> RbdStore {
    let pools = RbdPools {
        images: format!("{prefix}-images"),
        disks: format!("{prefix}-vms"),
        volumes: format!("{prefix}-volumes"),
    };
    for p in [&pools.images, &pools.disks, &pools.volumes] {
        pool(admin, p);
    }
    RbdStore::new(admin.clone(), pools)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn image_create_write_read_resize_remove() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    assert_eq!(admin.fsid().expect("fsid").len(), 36);
    assert!(admin.instance_id() > 0);
    assert!(admin.client_addr().expect("addr").contains('/'));
    pool(&admin, "t-basic");
    assert!(admin.pool_exists("t-basic").unwrap());
    assert!(!admin.pool_exists("t-no-such-pool").unwrap());
    let p = admin.pool("t-basic").unwrap();

    p.create("img1", 64 * MIB, Features::DEFAULT)
        .expect("create");
    assert!(matches!(
        p.create("img1", 64 * MIB, Features::DEFAULT),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(p.list().unwrap().contains(&"img1".to_owned()));

    let mut img = p.open("img1").expect("open");
    assert_eq!(img.size().unwrap(), 64 * MIB);
    assert!(img
        .features()
        .unwrap()
        .contains(Features::LAYERING | Features::EXCLUSIVE_LOCK));
    let data = pattern(3 * MIB as usize + 123, 7);
    img.write(5 * MIB + 17, &data).expect("write");
    img.flush().expect("flush");
    assert_eq!(img.read(5 * MIB + 17, data.len()).unwrap(), data);
    assert_eq!(
        img.read(0, 4096).unwrap(),
        vec![0; 4096],
        "unwritten reads zero"
    );

    img.resize(128 * MIB).expect("grow");
    assert_eq!(img.stat().unwrap().size, 128 * MIB);
    img.write(120 * MIB, b"tail").expect("write past old end");
    img.resize(8 * MIB).expect("shrink");
    assert_eq!(img.size().unwrap(), 8 * MIB);
    assert!(
        img.write(8 * MIB, b"x").is_err(),
        "write past the end must fail"
    );
    assert_eq!(img.read(5 * MIB + 17, 16).unwrap(), data[..16]);

    // Open elsewhere (we are a watcher): removal is refused as Busy.
    assert!(matches!(p.remove("img1"), Err(Error::Busy { .. })));
    drop(img);
    p.remove("img1").expect("remove");
    assert!(!p.list().unwrap().contains(&"img1".to_owned()));
}

#[test]
fn bad_input_is_reported_clearly() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    pool(&admin, "t-bad");
    let p = admin.pool("t-bad").unwrap();

    let e = p.create("zero", 0, Features::DEFAULT).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("size must be > 0"), "{e}");
    assert!(matches!(
        p.create("a/b", MIB, Features::DEFAULT),
        Err(Error::InvalidArgument { .. })
    ));

    let e = p.open("no-such-image").unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert_eq!(e.to_string(), "open image t-bad/no-such-image: not found");
    assert!(matches!(
        admin.pool("no-such-pool"),
        Err(Error::NotFound { .. })
    ));

    // Same user, wrong key.
    let key = c
        .cli("ceph-authtool", &["--gen-print-key"])
        .expect("gen key");
    let bad = c.dir().join("bad.keyring");
    std::fs::write(&bad, format!("[client.admin]\n\tkey = {}\n", key.trim())).unwrap();
    let mut opts = ConnectOptions::new(c.conf_path(), &bad, "admin");
    opts.timeout = Some(Duration::from_secs(10));
    let e = Cluster::connect(&opts).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    assert!(e.to_string().contains("wrong cephx key"), "{e}");
}

#[test]
fn import_clone_parent_info_and_qemu_reaches_the_clone() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    let s = store(&admin, "t-clone");
    let data = pattern(10 * MIB as usize, 3);
    let mut src = data.clone();
    src.extend(vec![0u8; 6 * MIB as usize]); // a zero tail: stays sparse
    let size = src.len() as u64;

    let image = s
        .import_image("cirros", &mut Cursor::new(src), size)
        .expect("import");
    assert_eq!(image.spec(), "t-clone-images/img-cirros@base");
    let images = admin.pool("t-clone-images").unwrap();
    let mut base = images.open("img-cirros").unwrap();
    assert!(base.snap_is_protected("base").unwrap());

    let disk = s.clone_root_disk(&image, "vm1", 1).expect("clone");
    assert_eq!(disk.spec(), "t-clone-vms/vm1-disk");
    let vms = admin.pool("t-clone-vms").unwrap();
    let clone = vms.open("vm1-disk").unwrap();
    let parent = clone.parent_info().expect("parent_info");
    assert_eq!(
        (
            parent.pool.as_str(),
            parent.image.as_str(),
            parent.snap.as_str()
        ),
        ("t-clone-images", "img-cirros", "base")
    );
    assert_eq!(clone.size().unwrap(), 1 << 30);
    assert_eq!(
        clone.read(0, data.len()).unwrap(),
        data,
        "clone reads parent data"
    );
    assert!(matches!(
        images.open("img-nope").map(drop),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.clone_root_disk(&image, "vm1", 1),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(
        base.children().unwrap(),
        vec!["t-clone-vms/vm1-disk".to_owned()]
    );
    drop(clone);

    // The parent cannot go while it has a clone.
    let e = s.delete(&image.disk).unwrap_err();
    assert!(
        matches!(&e, Error::HasChildren { children, .. } if children.len() == 1),
        "{e}"
    );
    assert!(matches!(
        base.snap_unprotect("base"),
        Err(Error::Busy { .. })
    ));
    drop(base);
    assert!(matches!(
        images.remove("img-cirros"),
        Err(Error::HasSnapshots { .. })
    ));

    // QEMU (qemu-block-extra) reaches the clone directly.
    let spec = format!("rbd:{}:conf={}", disk.spec(), c.conf_path().display());
    let info = c
        .cli("qemu-img", &["info", "--output=json", &spec])
        .expect("qemu-img info on an rbd clone (is qemu-block-extra installed?)");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 30);
    assert_eq!(info["format"], "raw");

    // An open disk cannot be deleted.
    let held = vms.open("vm1-disk").unwrap();
    assert!(matches!(s.delete(&disk), Err(Error::InUse { .. })));
    drop(held);
    s.delete(&disk).expect("delete clone");
    s.delete(&image.disk).expect("delete image once childless");
    assert!(images.list().unwrap().is_empty());
    assert!(vms.list().unwrap().is_empty());
}

#[test]
fn snapshot_rollback_restores_data() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    let s = store(&admin, "t-rb");
    let vol = s.create_volume("v1", 1).expect("create volume");
    let p = admin.pool(&vol.pool).unwrap();
    p.open(&vol.name).unwrap().write(0, b"before").unwrap();
    let snap = s.snapshot_create(&vol, "s1").unwrap();
    p.open(&vol.name).unwrap().write(0, b"after!").unwrap();
    s.snapshot_rollback(&snap).expect("rollback");
    assert_eq!(p.open(&vol.name).unwrap().read(0, 6).unwrap(), b"before");
    assert_eq!(s.snapshot_list(&vol).unwrap(), vec!["s1".to_owned()]);
    s.snapshot_delete(&snap).unwrap();
    assert!(s.snapshot_list(&vol).unwrap().is_empty());
    assert!(matches!(
        s.create_volume("v0", 0),
        Err(Error::InvalidArgument { .. })
    ));
    s.delete(&vol).unwrap();
}

#[test]
fn concurrent_volume_and_snapshot_churn_leaves_nothing_behind() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    let s = Arc::new(store(&admin, "t-churn"));
    let started = Instant::now();
    // 10 volumes x 8 snapshots, spread over 4 threads, two rounds.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || -> Result<(), Error> {
                for round in 0..2 {
                    for v in (t..10).step_by(4) {
                        let vol = s.create_volume(&format!("r{round}-v{v}"), 1)?;
                        let snaps: Vec<_> = (0..8)
                            .map(|i| s.snapshot_create(&vol, &format!("s{i}")))
                            .collect::<Result<_, _>>()?;
                        assert_eq!(s.snapshot_list(&vol)?.len(), 8);
                        for snap in snaps.iter().step_by(2) {
                            s.snapshot_delete(snap)?;
                        }
                        assert_eq!(s.snapshot_list(&vol)?.len(), 4);
                        // delete() removes the remaining snapshots itself.
                        s.delete(&vol)?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread panicked").expect("churn");
    }
    eprintln!(
        "churn: 2 x 10 volumes x 8 snapshots on 4 threads in {:?}",
        started.elapsed()
    );
    // `rbd ls -l` lists every image and every snapshot: both must be gone.
    let listed = c
        .cli("rbd", &["ls", "-l", "-p", "t-churn-volumes"])
        .unwrap();
    assert_eq!(listed.trim(), "", "leftover images or snapshots");
    assert!(admin
        .pool("t-churn-volumes")
        .unwrap()
        .list()
        .unwrap()
        .is_empty());
}

#[test]
fn fencing_blocklists_a_writer_and_hands_the_lock_over() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    pool(&admin, "t-fence");
    admin
        .pool("t-fence")
        .unwrap()
        .create("shared", 64 * MIB, Features::DEFAULT)
        .unwrap();
    let rbd_caps = [("mon", "profile rbd"), ("osd", "profile rbd pool=t-fence")];

    // Client A: its own cephx user, takes the exclusive lock and writes.
    let a = Cluster::connect(&c.create_user("nbt-a", &rbd_caps).unwrap()).expect("connect A");
    let a_pool = a.pool("t-fence").unwrap();
    let mut a_img = a_pool.open("shared").unwrap();
    a_img
        .lock_acquire(true)
        .expect("A takes the exclusive lock");
    assert!(a_img.is_exclusive_lock_owner().unwrap());
    a_img.write(0, b"A was here").expect("A writes");
    a_img.flush().unwrap();
    let a_addr = a.client_addr().unwrap();
    let watchers = a_img.watchers().unwrap();
    assert!(
        watchers.iter().any(|w| w.addr == a_addr),
        "{watchers:?} vs {a_addr}"
    );
    let owners = admin
        .pool("t-fence")
        .unwrap()
        .open("shared")
        .unwrap()
        .lock_get_owners()
        .unwrap();
    assert!(owners.exclusive);
    assert_eq!(owners.owners.len(), 1, "{owners:?}");

    // The coordinator fences A.
    let s = RbdStore::new(
        admin.clone(),
        RbdPools {
            images: "t-fence".into(),
            disks: "t-fence".into(),
            volumes: "t-fence".into(),
        },
    );
    s.fence_client(&a_addr, 600).expect("fence A");
    assert!(admin
        .blocklist_ls()
        .unwrap()
        .iter()
        .any(|e| e.addr == a_addr));
    // A's next op is judged against the map with the blocklist entry.
    a.wait_for_latest_osdmap().unwrap();
    // librbd's write-back cache may accept a write locally; the flush is
    // what reaches the OSDs. Under load the new OSD map can take a moment
    // to reach A's session: retry for a bounded time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let e = loop {
        match a_img.write(0, b"A again").and_then(|()| a_img.flush()) {
            Err(e) => break e,
            Ok(()) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Ok(()) => panic!("A could still write 30 s after being blocklisted"),
        }
    };
    assert!(matches!(e, Error::Blocklisted { .. }), "{e}");

    // Client B takes over: the dead owner's lock is broken, B writes.
    let b = Cluster::connect(&c.create_user("nbt-b", &rbd_caps).unwrap()).expect("connect B");
    let mut b_img = b.pool("t-fence").unwrap().open("shared").unwrap();
    b_img
        .lock_acquire(true)
        .expect("B takes the exclusive lock");
    assert!(b_img.is_exclusive_lock_owner().unwrap());
    b_img.write(0, b"B took over").expect("B writes");
    assert_eq!(b_img.read(0, 11).unwrap(), b"B took over");
    let e = a_img.read(0, 4).unwrap_err();
    assert!(matches!(e, Error::Blocklisted { .. }), "{e}");

    drop(a_img);
    drop(a_pool);
    drop(a);
    admin.blocklist_rm(&a_addr).unwrap();
    assert!(!admin
        .blocklist_ls()
        .unwrap()
        .iter()
        .any(|e| e.addr == a_addr));
    drop(b_img);
    s.delete(&DiskRef {
        pool: "t-fence".into(),
        name: "shared".into(),
    })
    .unwrap();
}

/// Measurement, not a check: `cargo test -p nubo-storage --test ceph --
/// --ignored --nocapture bench`. Prints wall times and bytes written.
#[test]
#[ignore]
fn bench_import_1gib_vs_120_clones() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().expect("connect admin");
    let s = Arc::new(store(&admin, "t-bench"));
    let used = || -> u64 {
        let df: serde_json::Value =
            serde_json::from_str(&c.cli("ceph", &["df", "-f", "json"]).unwrap()).unwrap();
        df["stats"]["total_used_raw_bytes"].as_u64().unwrap_or(0)
    };
    let du = |pool: &str| c.cli("rbd", &["du", "-p", pool]).unwrap_or_default();

    let before = used();
    let t = Instant::now();
    let image = s
        .import_image("zero1g", &mut std::io::repeat(0).take(1 << 30), 1 << 30)
        .unwrap();
    let import = t.elapsed();
    std::thread::sleep(Duration::from_secs(3)); // mgr stats period is 1 s
    let after_import = used();
    eprintln!(
        "import 1 GiB zero image: {import:?}; ceph df raw used +{} bytes\n{}",
        after_import.saturating_sub(before),
        du("t-bench-images")
    );

    let t = Instant::now();
    for i in 0..120 {
        s.clone_root_disk(&image, &format!("seq{i}"), 1).unwrap();
    }
    let seq = t.elapsed();
    let t = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (s, image) = (Arc::clone(&s), image.clone());
            std::thread::spawn(move || {
                for i in (w..120).step_by(8) {
                    s.clone_root_disk(&image, &format!("par{i}"), 1).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let par = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let after_clones = used();
    let vms = admin.pool("t-bench-vms").unwrap();
    assert_eq!(vms.list().unwrap().len(), 240);
    let du_vms = du("t-bench-vms");
    eprintln!(
        "120 clones sequential: {seq:?}; 120 clones with 8 threads: {par:?}; \
         ceph df raw used +{} bytes for 240 clones\nrbd du (last lines):\n{}",
        after_clones.saturating_sub(after_import),
        du_vms.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    let names: BTreeSet<String> = vms.list().unwrap().into_iter().collect();
    for n in names {
        s.delete(&DiskRef {
            pool: "t-bench-vms".into(),
            name: n,
        })
        .unwrap();
    }
    s.delete(&image.disk).unwrap();
}
