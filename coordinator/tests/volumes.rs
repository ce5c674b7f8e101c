//! Volumes through the gRPC API against a real etcd and a real throwaway
//! Ceph cluster (storage/src/testing.rs): lifecycle, bad input, snapshot
//! churn by concurrent clients on two coordinators, attach races, quotas.
//! Each test uses its own pools (`<test>-volumes`, …) on the shared cluster,
//! and checks them with the admin client at the end.
//!
//! A cluster that does not start fails them (with the reason); they are
//! skipped only when the Ceph binaries are missing and
//! `NUBO_TEST_ALLOW_SKIP=ceph` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::req::{del, get};
use common::*;
use futures::StreamExt;
use nubo_common::keys;
use nubo_common::model::{Image, Volume};
use nubo_common::proto as pb;
use nubo_coordinator::config::CephConfig;
use nubo_coordinator::{Config, Coordinator};
use nubo_storage::testing::{test_pools, TestCluster};
use nubo_storage::{BlockStore, Cluster, RbdPools, RbdStore};
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::Code;

type Volumes = pb::volumes_client::VolumesClient<Channel>;
type Types = pb::volume_types_client::VolumeTypesClient<Channel>;

fn cluster() -> Option<Arc<TestCluster>> {
    TestCluster::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// Pools `<prefix>-images|vms|volumes`, created if missing.
fn pools(admin: &Cluster, prefix: &str) -> RbdPools {
    test_pools(admin, prefix).unwrap_or_else(|e| panic!("create pools {prefix}-…: {e}"))
}

/// The admin client, pools `<prefix>-…` (see [`pools`]) and a
/// coordinator's Ceph configuration for them.
fn ceph_setup(c: &TestCluster, prefix: &str) -> (Cluster, RbdPools, CephConfig) {
    let admin = c.admin().expect("admin");
    let p = pools(&admin, prefix);
    let ceph = ceph_config(c, &p);
    (admin, p, ceph)
}

/// A cephx user like a production coordinator's (`profile rbd`).
fn ceph_config(c: &TestCluster, p: &RbdPools) -> CephConfig {
    let opts = c
        .create_user(
            "nubo-coord",
            &[
                ("mon", "profile rbd, allow command df"),
                ("osd", "profile rbd"),
            ],
        )
        .expect("create cephx user");
    CephConfig {
        conf: opts.conf_path,
        client_id: opts.client_id,
        keyring: opts.keyring_path,
        images_pool: p.images.clone(),
        disks_pool: p.disks.clone(),
        volumes_pool: p.volumes.clone(),
    }
}

async fn ceph_coordinator(etcd: &Etcd, ceph: &CephConfig) -> Coordinator {
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.ceph = Some(ceph.clone());
    nubo_coordinator::start(cfg)
        .await
        .expect("start coordinator with ceph")
}

/// A coordinator with `ceph`, the basics (flavor, image) and node `n1`
/// (16 vCPUs, 16 GiB), seen alive.
async fn one_node_cloud(etcd: &Etcd, ceph: &CephConfig) -> (Coordinator, Clients) {
    let coord = ceph_coordinator(etcd, ceph).await;
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    register_node(etcd, "n1", res(16, 16 * 1024, 1000), "nova").await;
    wait_nodes(&mut cl, 1).await;
    (coord, cl)
}

fn create(name: &str, size_gb: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        size_gb,
        ..Default::default()
    }
}

fn snap(volume: &str, name: &str) -> pb::VolumeSnapshotRequest {
    pb::VolumeSnapshotRequest {
        r#ref: volume.into(),
        project: String::new(),
        name: name.into(),
        ..Default::default()
    }
}

async fn server(cl: &mut Clients, name: &str) -> String {
    let r = create_servers(cl, server_req(name, &[], 0)).await;
    created(&r, 0).id
}

/// Polls until the volume has `status` (the reconciler runs every second).
async fn wait_status(v: &mut Volumes, r: &str, status: &str) -> pb::Volume {
    let mut last = None;
    for _ in 0..300 {
        match v.get(get(r)).await {
            Ok(x) if x.get_ref().status == status => return x.into_inner(),
            Ok(x) => last = Some(x.into_inner().status),
            Err(e) if e.code() == Code::NotFound && status == "gone" => {
                return pb::Volume::default()
            }
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("volume {r} never became {status}; last: {last:?}");
}

/// Images and snapshots left in a pool, as `image` and `image@snap`.
fn leftovers(admin: &Cluster, pool: &str) -> Vec<String> {
    let p = admin.pool(pool).expect("open pool");
    let mut out = Vec::new();
    for name in p.list().expect("list pool") {
        if let Ok(img) = p.open(&name) {
            for s in img.snap_list().unwrap_or_default() {
                out.push(format!("{name}@{}", s.name));
            }
        }
        out.push(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_lifecycle_and_bad_input() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-life");
    let etcd = Etcd::start().unwrap();
    let (coord, mut cl) = one_node_cloud(&etcd, &ceph).await;
    let ch = channel(&coord).await;
    let mut v = Volumes::new(ch.clone());
    let mut t = Types::new(ch.clone());

    // Types.
    let ty = t
        .create(pb::CreateVolumeTypeRequest {
            name: "ssd".into(),
            qos: Some(pb::VolumeQos {
                write_iops_sec: Some(200),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ty.qos.unwrap().write_iops_sec, Some(200));
    let ty = t
        .set_qos(pb::SetVolumeTypeQosRequest {
            name: "ssd".into(),
            qos: Some(pb::VolumeQos {
                read_iops_sec: Some(500),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let q = ty.qos.unwrap();
    assert_eq!((q.read_iops_sec, q.write_iops_sec), (Some(500), Some(200)));

    // Create, show.
    let mut req = create("data1", 1);
    req.volume_type = "ssd".into();
    let vol = v.create(req).await.unwrap().into_inner();
    assert_eq!(vol.status, "available");
    assert_eq!(vol.size_gb, 1);
    assert_eq!(vol.volume_type, "ssd");
    // auth = "none": there is no caller, so no creator is recorded.
    assert_eq!(vol.created_by, "");
    assert_eq!(vol.rbd_image, format!("{}/vol-{}", p.volumes, vol.id));
    let pool = admin.pool(&p.volumes).unwrap();
    assert_eq!(
        pool.open(&format!("vol-{}", vol.id))
            .unwrap()
            .size()
            .unwrap(),
        1 << 30
    );
    assert_eq!(v.get(get("data1")).await.unwrap().into_inner().id, vol.id);
    let e = t.delete(del("ssd")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Bad input: clear errors and nothing left behind.
    let before = leftovers(&admin, &p.volumes);
    // Every key but the nodes' (the leader's failure handling writes
    // their health in the background).
    let keys_of = |kvs: Vec<(String, Vec<u8>)>| -> Vec<String> {
        kvs.into_iter()
            .map(|(k, _)| k)
            .filter(|k| !k.starts_with(&keys::nodes_prefix()))
            .collect()
    };
    let keys_before = keys_of(prefix(&etcd, "/nubo/v1/").await);
    for (req, code, words) in [
        (
            create("zero", 0),
            Code::InvalidArgument,
            "at least 1 GiB (got 0)",
        ),
        (create("neg", -5), Code::InvalidArgument, "negative"),
        (
            create("huge", 60_000),
            Code::ResourceExhausted,
            "beyond the free space",
        ),
        (
            create("bad/name", 1),
            Code::InvalidArgument,
            "may contain only",
        ),
        (create("data1", 1), Code::AlreadyExists, "exists"),
        (
            pb::CreateVolumeRequest {
                volume_type: "nope".into(),
                ..create("typed", 1)
            },
            Code::NotFound,
            "volume type \"nope\" not found",
        ),
        // An image that was never imported into Ceph: the clone fails after
        // the reservation, which is undone.
        (
            pb::CreateVolumeRequest {
                image_ref: "cirros".into(),
                ..create("from-missing", 1)
            },
            Code::FailedPrecondition,
            "not imported into Ceph",
        ),
    ] {
        let e = v.create(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
        assert!(e.message().contains(words), "{req:?}: {}", e.message());
    }
    assert_eq!(leftovers(&admin, &p.volumes), before);
    assert_eq!(keys_of(prefix(&etcd, "/nubo/v1/").await), keys_before);

    // Resize: grow only.
    let r = v
        .resize(pb::ResizeVolumeRequest {
            r#ref: "data1".into(),
            project: String::new(),
            size_gb: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.size_gb, 2);
    assert_eq!(
        pool.open(&format!("vol-{}", vol.id))
            .unwrap()
            .size()
            .unwrap(),
        2 << 30
    );
    let e = v
        .resize(pb::ResizeVolumeRequest {
            r#ref: "data1".into(),
            project: String::new(),
            size_gb: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Snapshots and revert: the data comes back.
    let spec = format!("vol-{}", vol.id);
    {
        let mut img = pool.open(&spec).unwrap();
        img.write(4096, b"before-snapshot").unwrap();
        img.flush().unwrap();
    }
    v.create_snapshot(snap("data1", "s1")).await.unwrap();
    let e = v.create_snapshot(snap("data1", "s1")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    {
        let mut img = pool.open(&spec).unwrap();
        img.write(4096, b"after--snapshot").unwrap();
        img.flush().unwrap();
    }
    let list = v.list_snapshots(get("data1")).await.unwrap().into_inner();
    assert_eq!(list.snapshots.len(), 1);
    assert_eq!(list.snapshots[0].size_gb, 2);
    let reverted = v.revert_snapshot(snap("data1", "s1")).await.unwrap();
    assert_eq!(reverted.get_ref().status, "available");
    assert_eq!(
        pool.open(&spec).unwrap().read(4096, 15).unwrap(),
        b"before-snapshot"
    );

    // Attach; attach elsewhere, delete, resize, revert while attached fail.
    let s1 = server(&mut cl, "vm1").await;
    let s2 = server(&mut cl, "vm2").await;
    let a = v
        .attach(pb::AttachVolumeRequest {
            r#ref: "data1".into(),
            server_ref: "vm1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.status.as_str(), a.attached_to.as_str(), a.device.as_str()),
        ("in-use", s1.as_str(), "vdb")
    );
    let inst: nubo_common::model::Instance =
        common::get(&etcd, &keys::instance(&s1.parse().unwrap()))
            .await
            .unwrap();
    assert_eq!(inst.volumes.len(), 1);
    assert_eq!(inst.volumes[0].volume.to_string(), vol.id);
    let e = v
        .attach(pb::AttachVolumeRequest {
            r#ref: "data1".into(),
            server_ref: "vm2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("\"vm1\"") && e.message().contains(&s1),
        "{}",
        e.message()
    );
    let e = v.delete(del("data1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("attached to server \"vm1\""),
        "{}",
        e.message()
    );
    assert!(
        pool.open(&spec).is_ok(),
        "an attached volume's image must stay"
    );
    let e = v.revert_snapshot(snap("data1", "s1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Snapshots of attached volumes are allowed (crash-consistent).
    v.create_snapshot(snap("data1", "s2")).await.unwrap();

    // Detach: detaching, then available once nothing holds the image —
    // here the agent of vm1's node still reports it plugged (the guest has
    // not released it), so its device stays taken: another volume attached
    // meanwhile gets the next one, even when it asks for vdb.
    let node = inst.node.clone().expect("vm1 is placed");
    let plugged = |vols: &[&str]| {
        serde_json::json!({
            "state": "running", "node": node, "updated_at": nubo_common::model::now(),
            "volumes": vols,
        })
    };
    let mut kv = etcd.client().await.unwrap();
    let status_key = keys::instance_status(&node, &inst.id);
    kv.put(status_key.as_str(), plugged(&[&vol.id]).to_string(), None)
        .await
        .unwrap();
    let d = v
        .detach(pb::DetachVolumeRequest {
            r#ref: "data1".into(),
            project: String::new(),
            if_attached: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, "detaching");
    let inst: nubo_common::model::Instance =
        common::get(&etcd, &keys::instance(&s1.parse().unwrap()))
            .await
            .unwrap();
    assert!(inst.volumes.is_empty());
    v.create(create("extra", 1)).await.unwrap();
    let x = v
        .attach(pb::AttachVolumeRequest {
            r#ref: "extra".into(),
            server_ref: "vm1".into(),
            device: "/dev/vdb".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(x.device, "vdc", "vdb is still plugged");
    assert_eq!(
        wait_status(&mut v, "data1", "detaching").await.device,
        "vdb"
    );
    // A volume deleted while detaching is deleted once released, not
    // before (here: not while the agent reports it plugged).
    kv.put(
        status_key.as_str(),
        plugged(&[&vol.id, &x.id]).to_string(),
        None,
    )
    .await
    .unwrap();
    v.detach(pb::DetachVolumeRequest {
        r#ref: "extra".into(),
        project: String::new(),
        if_attached: false,
    })
    .await
    .unwrap();
    v.delete(del("extra")).await.unwrap();
    let held_since = std::time::Instant::now();
    while held_since.elapsed() < Duration::from_secs(3) {
        // Three passes of the volume loop (one per second).
        let x = v.get(get("extra")).await.unwrap().into_inner();
        assert_eq!(x.status, "deleting", "deleted while still plugged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(pool.open(&format!("vol-{}", x.id)).is_ok());
    kv.put(status_key.as_str(), plugged(&[]).to_string(), None)
        .await
        .unwrap();
    let back = wait_status(&mut v, "data1", "available").await;
    assert!(back.attached_to.is_empty() && back.device.is_empty());
    wait_status(&mut v, "extra", "gone").await;
    assert!(pool.open(&format!("vol-{}", x.id)).is_err());

    // Delete-on-termination: deleting vm2 deletes its volume; a volume
    // without it becomes available when vm1 goes.
    v.create(create("scratch", 1)).await.unwrap();
    v.attach(pb::AttachVolumeRequest {
        r#ref: "scratch".into(),
        server_ref: s2.clone(),
        delete_on_termination: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // A free device asked for is taken.
    let a = v
        .attach(pb::AttachVolumeRequest {
            r#ref: "data1".into(),
            server_ref: s1.clone(),
            device: "vdd".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.device, "vdd");
    cl.servers.delete(del("vm2")).await.unwrap();
    cl.servers.delete(del("vm1")).await.unwrap();
    wait_status(&mut v, "scratch", "gone").await;
    wait_status(&mut v, "data1", "available").await;

    // Delete: RBD image, snapshots and records go.
    v.delete(del("data1")).await.unwrap();
    assert_eq!(
        v.get(get("data1")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        leftovers(&admin, &p.volumes).is_empty(),
        "{:?}",
        leftovers(&admin, &p.volumes)
    );
    assert!(prefix(&etcd, &keys::volume_snapshots_root())
        .await
        .is_empty());
    assert!(prefix(&etcd, &keys::volumes_prefix()).await.is_empty());
    t.delete(del("ssd")).await.unwrap();

    // A volume cloned from an image imported into Ceph.
    let img: Vec<(String, Vec<u8>)> = prefix(&etcd, &keys::images_prefix()).await;
    let image: Image = nubo_common::model::decode(&img[0].0, &img[0].1).unwrap();
    let store = RbdStore::new(admin.clone(), p.clone());
    let data = vec![0x5a_u8; 1 << 20];
    let parent = store
        .import_image(
            &image.id.to_string(),
            &mut std::io::Cursor::new(data.clone()),
            1 << 20,
        )
        .unwrap();
    let boot = v
        .create(pb::CreateVolumeRequest {
            image_ref: "cirros".into(),
            ..create("boot1", 1)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(boot.source_image, image.id.to_string());
    let cloned = pool.open(&format!("vol-{}", boot.id)).unwrap();
    let parent_info = cloned.parent_info().unwrap();
    assert_eq!(
        (parent_info.image.as_str(), parent_info.snap.as_str()),
        (parent.disk.name.as_str(), "base")
    );
    assert_eq!(cloned.read(0, 16).unwrap(), data[..16]);
    drop(cloned);
    v.delete(del("boot1")).await.unwrap();
    store.delete(&parent.disk).unwrap();
    assert!(leftovers(&admin, &p.volumes).is_empty());

    // An image uploaded to the coordinator but never booted anywhere: the
    // coordinator imports it into Ceph itself (once), then clones.
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let sha = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&payload))
    };
    pb::images_client::ImagesClient::new(ch.clone())
        .create(pb::CreateImageRequest {
            name: "uploaded".into(),
            disk_format: "raw".into(),
            size_bytes: payload.len() as u64,
            checksum_sha256: sha,
            ..Default::default()
        })
        .await
        .unwrap();
    let up = pb::image_data_client::ImageDataClient::new(ch.clone())
        .upload(tokio_stream::iter(vec![pb::ImageChunk {
            image: "uploaded".into(),
            project: String::new(),
            part: "disk".into(),
            size_bytes: payload.len() as u64,
            data: payload.clone(),
        }]))
        .await
        .unwrap()
        .into_inner();
    let mut from_upload = Vec::new();
    for name in ["up1", "up2"] {
        let vol = v
            .create(pb::CreateVolumeRequest {
                image_ref: "uploaded".into(),
                ..create(name, 1)
            })
            .await
            .unwrap()
            .into_inner();
        let img = pool.open(&format!("vol-{}", vol.id)).unwrap();
        let parent = img.parent_info().unwrap();
        assert_eq!(
            (parent.image.as_str(), parent.snap.as_str()),
            (format!("img-{}", up.id).as_str(), "base")
        );
        assert_eq!(img.read(4096, 4096).unwrap(), payload[4096..8192]);
        from_upload.push(name);
    }
    for name in from_upload {
        v.delete(del(name)).await.unwrap();
    }
    assert!(leftovers(&admin, &p.volumes).is_empty());
    store.delete(&store.image_ref(&up.id).disk).unwrap();

    coord.shutdown().await.unwrap();
}

/// Snapshots addressed by id, volumes copied from a snapshot or from a
/// volume (independent full copies: the source's snapshot and the source
/// stay deletable), a volume's attributes (description, metadata, marks,
/// image metadata, rename, generated names) and the attach reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_ids_copies_and_volume_attributes() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-copy");
    let etcd = Etcd::start().unwrap();
    let coord = ceph_coordinator(&etcd, &ceph).await;
    let mut v = Volumes::new(channel(&coord).await);
    let pool = admin.pool(&p.volumes).unwrap();
    let write = |id: &str, byte: u8| {
        let mut img = pool.open(&format!("vol-{id}")).unwrap();
        img.write(0, &[byte; 4096]).unwrap();
        img.flush().unwrap();
    };
    let read = |id: &str| {
        pool.open(&format!("vol-{id}"))
            .unwrap()
            .read(0, 4096)
            .unwrap()
    };

    let src = v.create(create("src", 1)).await.unwrap().into_inner();
    write(&src.id, 0xaa);
    let s1 = v
        .create_snapshot(pb::VolumeSnapshotRequest {
            description: "before".into(),
            metadata: [("k".to_string(), "v".to_string())].into(),
            ..snap("src", "s1")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s1.id.parse::<uuid::Uuid>().is_ok(), "{s1:?}");
    assert_eq!(
        (s1.description.as_str(), s1.metadata["k"].as_str()),
        ("before", "v")
    );
    let got = v.get_snapshot(get(&s1.id)).await.unwrap().into_inner();
    assert_eq!(got, s1);
    let listed = v
        .list_project_snapshots(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(listed, vec![s1.clone()]);
    for bad in ["not-a-uuid", "00000000-0000-4000-8000-000000000000"] {
        let e = v.get_snapshot(get(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{bad}: {e:?}");
    }
    write(&src.id, 0xbb);

    // From the snapshot, no size: the snapshot's; its data, not today's.
    let from_snap = v
        .create(pb::CreateVolumeRequest {
            snapshot_id: s1.id.clone(),
            ..create("from-snap", 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (from_snap.size_gb, from_snap.source_snapshot.as_str()),
        (1, s1.id.as_str())
    );
    assert_eq!(read(&from_snap.id), vec![0xaa; 4096]);
    // From the volume as it is now; the temporary snapshot is gone.
    let from_vol = v
        .create(pb::CreateVolumeRequest {
            source_volume: "src".into(),
            ..create("from-vol", 2)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (from_vol.size_gb, from_vol.source_volume.as_str()),
        (2, src.id.as_str())
    );
    assert_eq!(read(&from_vol.id), vec![0xbb; 4096]);
    assert_eq!(
        leftovers(&admin, &p.volumes)
            .iter()
            .filter(|x| x.starts_with(&format!("vol-{}@", src.id)))
            .collect::<Vec<_>>(),
        vec![&format!("vol-{}@s1", src.id)]
    );
    // Smaller than the source, an unknown snapshot, two sources: refused.
    for (req, code) in [
        (
            pb::CreateVolumeRequest {
                source_volume: "from-vol".into(),
                ..create("too-small", 1)
            },
            Code::InvalidArgument,
        ),
        (
            pb::CreateVolumeRequest {
                snapshot_id: "00000000-0000-4000-8000-000000000000".into(),
                ..create("no-snap", 1)
            },
            Code::NotFound,
        ),
        (
            pb::CreateVolumeRequest {
                snapshot_id: s1.id.clone(),
                source_volume: "src".into(),
                ..create("two", 1)
            },
            Code::InvalidArgument,
        ),
    ] {
        let e = v.create(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
    }

    // Snapshot rename keeps the RBD snapshot; delete by id removes it while
    // the copy made from it lives on (it was flattened).
    let renamed = v
        .update_snapshot(pb::UpdateVolumeSnapshotRequest {
            id: s1.id.clone(),
            name: Some("s1-new".into()),
            remove_metadata: vec!["k".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (renamed.name.as_str(), renamed.id.as_str()),
        ("s1-new", s1.id.as_str())
    );
    assert!(renamed.metadata.is_empty());
    v.delete_snapshot(pb::VolumeSnapshotRequest {
        id: s1.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        v.get_snapshot(get(&s1.id)).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(!leftovers(&admin, &p.volumes)
        .iter()
        .any(|x| x.contains('@')));
    assert_eq!(read(&from_snap.id), vec![0xaa; 4096]);

    // Attributes.
    let u = |f: fn(&mut pb::UpdateVolumeRequest)| {
        let mut r = pb::UpdateVolumeRequest {
            r#ref: "src".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let x = v
        .update(u(|r| {
            r.description = Some("data".into());
            r.metadata = [("a".to_string(), "1".to_string())].into();
            r.bootable = Some(true);
            r.read_only = Some(true);
            r.set_image_metadata = [("image_id".to_string(), "i".to_string())].into();
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            x.description.as_str(),
            x.bootable,
            x.read_only,
            x.metadata["a"].as_str()
        ),
        ("data", true, Some(true), "1")
    );
    assert_eq!(x.image_metadata["image_id"], "i");
    let e = v
        .update(u(|r| r.remove_metadata = vec!["missing".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let x = v
        .update(u(|r| {
            r.name = Some("src2".into());
            r.remove_metadata = vec!["a".into()];
            r.unset_image_metadata = vec!["image_id".into()];
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(x.name, "src2");
    assert!(x.metadata.is_empty() && x.image_metadata.is_empty());
    assert_eq!(v.get(get("src2")).await.unwrap().into_inner().id, src.id);
    assert_eq!(v.get(get("src")).await.unwrap_err().code(), Code::NotFound);
    // The name of another volume is taken.
    let e = v
        .update(pb::UpdateVolumeRequest {
            r#ref: "src2".into(),
            name: Some("from-vol".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    // An unnamed volume is named after its id.
    let anon = v.create(create("", 1)).await.unwrap().into_inner();
    assert_eq!(anon.name, format!("volume-{}", anon.id));

    // Reservation: available → attaching → available; twice is refused.
    let r = v.reserve(get(&anon.id)).await.unwrap().into_inner();
    assert_eq!(r.status, "attaching");
    assert_eq!(
        v.reserve(get(&anon.id)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        v.unreserve(get(&anon.id))
            .await
            .unwrap()
            .into_inner()
            .status,
        "available"
    );
    assert_eq!(
        v.unreserve(get(&anon.id)).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    for r in [anon.id.as_str(), "src2", "from-snap", "from-vol"] {
        v.delete(del(r)).await.unwrap();
    }
    assert!(leftovers(&admin, &p.volumes).is_empty());
    coord.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cephx_key_or_pool_stops_the_start() {
    let Some(c) = cluster() else { return };
    let (_admin, _p, mut ceph) = ceph_setup(&c, "vt-key");
    let etcd = Etcd::start().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.keyring");
    std::fs::write(
        &wrong,
        "[client.nubo-coord]\n\tkey = AQBJvXVlAAAAABAAEvEb7pm1e0K2cbTyWgEbjg==\n",
    )
    .unwrap();
    let good = ceph.keyring.replace(wrong);
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.ceph = Some(ceph.clone());
    let e = nubo_coordinator::start(cfg)
        .await
        .err()
        .expect("must refuse");
    let msg = e.to_string();
    assert!(msg.contains("client.nubo-coord"), "{msg}");
    assert!(
        msg.contains("permission denied") || msg.contains("wrong cephx key"),
        "{msg}"
    );

    ceph.keyring = good;
    ceph.volumes_pool = "vt-no-such-pool".into();
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.ceph = Some(ceph);
    let e = nubo_coordinator::start(cfg)
        .await
        .err()
        .expect("must refuse");
    assert!(
        e.to_string().contains("\"vt-no-such-pool\" does not exist"),
        "{e}"
    );
}

/// The proof-of-concept killer: 10 volumes × 8 snapshots created and
/// deleted in a loop by 4 concurrent clients spread over two coordinators.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_churn_by_four_clients_leaves_nothing() {
    churn("vt-churn", 2).await;
}

/// `bench_volume_snapshot_churn`: the churn above for
/// `NUBO_BENCH_ROUNDS` rounds (default 5); prints the wall time and the
/// latencies of snapshot create/delete (docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark"]
async fn bench_volume_snapshot_churn() {
    let rounds = std::env::var("NUBO_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let Some(st) = churn("vt-bench", rounds).await else {
        return;
    };
    let pct = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i].as_secs_f64() * 1000.0
    };
    let (mut c, mut d) = (st.snap_create, st.snap_delete);
    let ops = rounds * (10 + 80 + 40 + 10);
    println!(
        "BENCH volume churn: {rounds} rounds x (10 volumes, 80 snapshot creates, 40 snapshot deletes, 10 volume deletes) = {ops} API calls in {:.1} s ({:.1} calls/s); snapshot create p50 {:.0} ms p99 {:.0} ms; snapshot delete p50 {:.0} ms p99 {:.0} ms",
        st.elapsed.as_secs_f64(),
        ops as f64 / st.elapsed.as_secs_f64(),
        pct(&mut c, 0.5),
        pct(&mut c, 0.99),
        pct(&mut d, 0.5),
        pct(&mut d, 0.99),
    );
}

/// What [`churn`] measured.
struct ChurnStats {
    elapsed: Duration,
    snap_create: Vec<Duration>,
    snap_delete: Vec<Duration>,
}

/// `rounds` of: 10 volumes created, 8 snapshots each (4 concurrent clients
/// over two coordinators), half the snapshots deleted one by one, every
/// volume deleted; after each round neither Ceph nor etcd holds anything.
async fn churn(pool_prefix: &str, rounds: usize) -> Option<ChurnStats> {
    let c = cluster()?;
    let admin = c.admin().expect("admin");
    let p = pools(&admin, pool_prefix);
    let ceph = ceph_config(&c, &p);
    let etcd = Etcd::start().unwrap();
    let (a, b) = (
        ceph_coordinator(&etcd, &ceph).await,
        ceph_coordinator(&etcd, &ceph).await,
    );
    let (cha, chb) = (channel(&a).await, channel(&b).await);
    let client = |i: usize| {
        Volumes::new(if i.is_multiple_of(2) {
            cha.clone()
        } else {
            chb.clone()
        })
    };
    let started = std::time::Instant::now();
    let (mut snap_create, mut snap_delete) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // 4 clients create the 10 volumes.
        let names: Vec<String> = (0..10).map(|i| format!("churn-{round}-{i}")).collect();
        let created: Vec<Result<_, tonic::Status>> =
            futures::stream::iter(names.iter().enumerate())
                .map(|(i, n)| {
                    let mut v = client(i);
                    async move { v.create(create(n, 1)).await }
                })
                .buffer_unordered(4)
                .collect()
                .await;
        for r in created {
            r.unwrap();
        }
        // Every volume gets 8 snapshots, the 80 requests spread over the 4
        // clients, 4 at a time, several on one volume at once.
        let work: Vec<(usize, String, String)> = (0..8)
            .flat_map(|s| names.iter().map(move |n| (n.clone(), format!("s{s}"))))
            .enumerate()
            .map(|(i, (n, s))| (i % 4, n, s))
            .collect();
        let made: Vec<(Result<_, tonic::Status>, Duration)> = futures::stream::iter(work.clone())
            .map(|(i, n, s)| {
                let mut v = client(i);
                async move {
                    let t = std::time::Instant::now();
                    (v.create_snapshot(snap(&n, &s)).await, t.elapsed())
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for (r, took) in made {
            r.unwrap();
            snap_create.push(took);
        }
        for n in &names {
            let l = client(0).list_snapshots(get(n)).await.unwrap().into_inner();
            assert_eq!(l.snapshots.len(), 8, "{n}");
            let spec = format!(
                "vol-{}",
                client(1).get(get(n)).await.unwrap().into_inner().id
            );
            let rbd = admin
                .pool(&p.volumes)
                .unwrap()
                .open(&spec)
                .unwrap()
                .snap_list()
                .unwrap();
            assert_eq!(rbd.len(), 8, "{spec}");
        }
        // Half the volumes lose their snapshots one by one; the other half
        // are deleted with theirs.
        let (one_by_one, with_volume) = names.split_at(5);
        let gone: Vec<(Result<_, tonic::Status>, Duration)> =
            futures::stream::iter(work.into_iter().filter(|(_, n, _)| one_by_one.contains(n)))
                .map(|(i, n, s)| {
                    let mut v = client(i);
                    async move {
                        let t = std::time::Instant::now();
                        (v.delete_snapshot(snap(&n, &s)).await, t.elapsed())
                    }
                })
                .buffer_unordered(4)
                .collect()
                .await;
        for (r, took) in gone {
            r.unwrap();
            snap_delete.push(took);
        }
        let deleted: Vec<Result<_, tonic::Status>> =
            futures::stream::iter(one_by_one.iter().chain(with_volume).enumerate())
                .map(|(i, n)| {
                    let mut v = client(i);
                    async move { v.delete(del(n)).await }
                })
                .buffer_unordered(4)
                .collect()
                .await;
        for r in deleted {
            r.unwrap();
        }
        let left = leftovers(&admin, &p.volumes);
        assert!(left.is_empty(), "round {round}: left in Ceph: {left:?}");
        assert!(prefix(&etcd, &keys::volumes_prefix()).await.is_empty());
        assert!(prefix(&etcd, &keys::volume_snapshots_root())
            .await
            .is_empty());
    }
    let elapsed = started.elapsed();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    Some(ChurnStats {
        elapsed,
        snap_create,
        snap_delete,
    })
}

/// Two coordinators, 8 clients attaching one volume to 8 servers at once:
/// exactly one wins; the others are told which server holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attaches_through_two_coordinators_attach_once() {
    let Some(c) = cluster() else { return };
    let (_admin, _p, ceph) = ceph_setup(&c, "vt-race");
    let etcd = Etcd::start().unwrap();
    let (a, b) = (
        ceph_coordinator(&etcd, &ceph).await,
        ceph_coordinator(&etcd, &ceph).await,
    );
    let mut cl = clients(&a).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "n1", res(64, 64 * 1024, 1000), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let mut servers = Vec::new();
    for i in 0..8 {
        servers.push(server(&mut cl, &format!("vm{i}")).await);
    }
    let (cha, chb) = (channel(&a).await, channel(&b).await);
    Volumes::new(cha.clone())
        .create(create("shared", 1))
        .await
        .unwrap();
    let results: Vec<Result<_, tonic::Status>> =
        futures::stream::iter(servers.clone().into_iter().enumerate())
            .map(|(i, s)| {
                let mut v = Volumes::new(if i.is_multiple_of(2) {
                    cha.clone()
                } else {
                    chb.clone()
                });
                async move {
                    v.attach(pb::AttachVolumeRequest {
                        r#ref: "shared".into(),
                        server_ref: s,
                        ..Default::default()
                    })
                    .await
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let holder = won[0].get_ref().attached_to.clone();
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains(&holder), "{}", e.message());
        }
    }
    // Exactly one instance spec lists it, and it is the holder.
    let mut listing = 0;
    for s in &servers {
        let i: nubo_common::model::Instance =
            common::get(&etcd, &keys::instance(&s.parse().unwrap()))
                .await
                .unwrap();
        if !i.volumes.is_empty() {
            listing += 1;
            assert_eq!(&i.id.to_string(), &holder);
        }
    }
    assert_eq!(listing, 1);
    let vols: Vec<(String, Vec<u8>)> = prefix(&etcd, &keys::volumes_prefix()).await;
    let v: Volume = nubo_common::model::decode(&vols[0].0, &vols[0].1).unwrap();
    assert_eq!(v.attached_to.map(|i| i.to_string()), Some(holder));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// `boot_from_volume_size_gb` clones the image into a new volume the server
/// boots from; `volumes` are attached at create; with
/// `delete_on_termination` they go with the server. A failed create leaves
/// no boot volume behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boot_from_volume_and_volumes_at_create() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-boot");
    let etcd = Etcd::start().unwrap();
    let (coord, mut cl) = one_node_cloud(&etcd, &ceph).await;
    let mut v = Volumes::new(channel(&coord).await);
    let img: Vec<(String, Vec<u8>)> = prefix(&etcd, &keys::images_prefix()).await;
    let image: Image = nubo_common::model::decode(&img[0].0, &img[0].1).unwrap();
    let store = RbdStore::new(admin.clone(), p.clone());
    let parent = store
        .import_image(
            &image.id.to_string(),
            &mut std::io::Read::take(std::io::repeat(0x42), 1 << 20),
            1 << 20,
        )
        .unwrap();

    v.create(create("data", 1)).await.unwrap();
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            boot_from_volume_size_gb: 2,
            volumes: vec!["data".into()],
            delete_on_termination: true,
            ..server_req("bfv", &[], 0)
        },
    )
    .await;
    let s = created(&r, 0);
    assert!(!s.boot_volume_id.is_empty());
    let boot = v.get(get(&s.boot_volume_id)).await.unwrap().into_inner();
    assert_eq!(boot.name, "bfv-boot");
    assert_eq!(
        (boot.status.as_str(), boot.attached_to.as_str()),
        ("in-use", s.id.as_str())
    );
    assert!(boot.boot && boot.delete_on_termination);
    assert_eq!(boot.size_gb, 2);
    let data = v.get(get("data")).await.unwrap().into_inner();
    assert_eq!(s.volume_ids, vec![data.id.clone()]);
    assert_eq!(data.status, "in-use");
    assert_eq!((boot.device.as_str(), data.device.as_str()), ("vda", "vdb"));
    let pool = admin.pool(&p.volumes).unwrap();
    let parent_info = pool
        .open(&format!("vol-{}", boot.id))
        .unwrap()
        .parent_info()
        .unwrap();
    assert_eq!(parent_info.image, parent.disk.name);
    // The boot disk cannot be detached.
    let e = v
        .detach(pb::DetachVolumeRequest {
            r#ref: boot.id.clone(),
            project: String::new(),
            if_attached: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // A volume in use cannot be attached at create; nothing is left over
    // from that attempt (its boot volume is removed again).
    let e = cl
        .servers
        .create(pb::CreateServerRequest {
            boot_from_volume_size_gb: 1,
            volumes: vec!["data".into()],
            ..server_req("again", &[], 0)
        })
        .await;
    let msg = match e {
        Err(e) => e.message().to_string(),
        Ok(r) => r.into_inner().results[0].error.clone(),
    };
    assert!(msg.contains("attached to server \"bfv\""), "{msg}");
    wait_status(&mut v, "again-boot", "gone").await;

    // Deleting the server deletes both volumes (delete_on_termination).
    cl.servers.delete(del("bfv")).await.unwrap();
    wait_status(&mut v, &boot.id, "gone").await;
    wait_status(&mut v, "data", "gone").await;
    let left: Vec<String> = leftovers(&admin, &p.volumes);
    assert!(left.is_empty(), "{left:?}");
    store.delete(&parent.disk).unwrap();
    coord.shutdown().await.unwrap();
}

/// Quotas `volumes` and `gigabytes` (auth = "token") hold under concurrent
/// creates and resizes through two coordinators; another project does not
/// see the volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_quotas_hold_under_concurrency() {
    use nubo_common::model::{Role, UserName};

    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-quota");
    let etcd = Etcd::start().unwrap();
    let store = etcd.store().await.unwrap();
    let passwords = nubo_identity::Passwords::with_params(64, 1, 1).unwrap();
    nubo_coordinator::api::bootstrap(
        &store,
        &UserName::new("admin").unwrap(),
        "adminpw",
        &passwords,
    )
    .await
    .unwrap();
    let hash = passwords.hash("pw").unwrap();
    for (u, proj) in [("alice", "p1"), ("bob", "p2")] {
        put_project(&etcd, proj).await;
        put_user(&etcd, u, &hash, Some(proj), Role::Member).await;
    }
    let start = || {
        let mut cfg = Config::for_tests(etcd.endpoint());
        cfg.auth = nubo_coordinator::AuthMode::Token;
        cfg.ceph = Some(ceph.clone());
        nubo_coordinator::start(cfg)
    };
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    let (cha, chb) = (channel(&a).await, channel(&b).await);
    let login = |user: &'static str, pw: &'static str| {
        let ch = cha.clone();
        async move { issue_token(&mut pb::tokens_client::TokensClient::new(ch), user, pw).await }
    };
    let (root, alice, bob) = (
        login("admin", "adminpw").await,
        login("alice", "pw").await,
        login("bob", "pw").await,
    );
    use common::authed as req;
    // The limits through the CLI (`nubo quota set --volumes --gigabytes`),
    // read back through the API.
    let cli_dir = tempfile::tempdir().unwrap();
    let cli_as = |user: &str, pw: &str| {
        let cli = nubo_tests::Cli::new(&a.endpoint())
            .and_then(|cli| cli.with_token_store(&cli_dir.path().join(user)))
            .unwrap();
        cli.login(user, pw, cli_dir.path()).unwrap();
        cli
    };
    let (admin_cli, alice_cli) =
        tokio::task::block_in_place(|| (cli_as("admin", "adminpw"), cli_as("alice", "pw")));
    tokio::task::block_in_place(|| {
        admin_cli.json(&[
            "quota",
            "set",
            "--project",
            "p1",
            "--volumes",
            "3",
            "--gigabytes",
            "5",
        ])
    })
    .unwrap();
    let limits = pb::quotas_client::QuotasClient::new(cha.clone())
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!((limits.volumes, limits.gigabytes), (Some(3), Some(5)));
    let over = |resource: &str, limit: u64, in_use: u64, requested: u64| {
        format!(
            "quota exceeded for {resource} in project \"p1\": limit {limit}, in use {in_use}, requested {requested}"
        )
    };
    let cli_refused = |args: &[&str], want: &str| {
        let out = tokio::task::block_in_place(|| alice_cli.run(args)).unwrap();
        assert_eq!(
            (out.code, out.stderr.as_str()),
            (1, format!("error: {want}\n").as_str()),
            "{args:?}: {}",
            out.stdout
        );
    };

    // 10 concurrent creates of 1 GiB: exactly 3 fit.
    let results: Vec<Result<_, tonic::Status>> = futures::stream::iter(0..10_u32)
        .map(|i| {
            let mut v = Volumes::new(if i.is_multiple_of(2) {
                cha.clone()
            } else {
                chb.clone()
            });
            let r = req(&alice, create(&format!("q{i}"), 1));
            async move { v.create(r).await }
        })
        .buffer_unordered(10)
        .collect()
        .await;
    let ok: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|v| v.get_ref().name.clone()))
        .collect();
    assert_eq!(ok.len(), 3, "{results:?}");
    // Each records its creator (the token's user), also in `nubo volume show`.
    for r in results.iter().flatten() {
        assert_eq!(r.get_ref().created_by, "alice", "{r:?}");
    }
    let shown =
        tokio::task::block_in_place(|| alice_cli.json(&["volume", "show", &ok[0]])).unwrap();
    assert_eq!(shown["created_by"], "alice", "{shown}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert_eq!(e.message(), over("volumes", 3, 3, 1));
        }
    }
    cli_refused(
        &["volume", "create", "q10", "--size", "1G"],
        &over("volumes", 3, 3, 1),
    );
    // Concurrent grows: 2 GiB more fit (5 in all), not 4.
    let grows: Vec<(String, Result<_, tonic::Status>)> = futures::stream::iter(ok.clone())
        .map(|n| {
            let mut v = Volumes::new(chb.clone());
            let r = req(
                &alice,
                pb::ResizeVolumeRequest {
                    r#ref: n.clone(),
                    project: String::new(),
                    size_gb: 3,
                },
            );
            async move { (n, v.resize(r).await) }
        })
        .buffer_unordered(3)
        .collect()
        .await;
    assert_eq!(
        grows.iter().filter(|(_, r)| r.is_ok()).count(),
        1,
        "{grows:?}"
    );
    let mut still_small = None;
    for (name, r) in &grows {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert_eq!(e.message(), over("gigabytes", 5, 5, 2));
            still_small = Some(name.clone());
        }
    }
    let still_small = still_small.expect("a volume whose grow was refused");
    cli_refused(
        &["volume", "resize", &still_small, "--size", "3G"],
        &over("gigabytes", 5, 5, 2),
    );
    let usage = pb::quotas_client::QuotasClient::new(cha.clone())
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!((usage.volumes, usage.gigabytes), (Some(3), Some(5)));

    // Another project neither sees nor touches them.
    let mut vb = Volumes::new(cha.clone());
    let e = vb.get(req(&bob, get(&ok[0]))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = vb.delete(req(&bob, del(&ok[0]))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed = vb
        .list(req(&bob, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.volumes.is_empty());
    // Members cannot make volume types.
    let e = Types::new(cha.clone())
        .create(req(
            &alice,
            pb::CreateVolumeTypeRequest {
                name: "fast".into(),
                qos: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // Deletes give the quota back.
    for n in &ok {
        Volumes::new(cha.clone())
            .delete(req(&alice, del(n)))
            .await
            .unwrap();
    }
    let usage = pb::quotas_client::QuotasClient::new(cha.clone())
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(
        (usage.volumes.unwrap_or(0), usage.gigabytes.unwrap_or(0)),
        (0, 0)
    );
    assert!(leftovers(&admin, &p.volumes).is_empty());
    // Mutating calls are audited, refused ones included.
    let audit = pb::audit_client::AuditClient::new(cha.clone())
        .list(req(
            &root,
            pb::ListRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<(&str, &str)> = audit
        .records
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str()))
        .collect();
    for want in [
        ("volumes.create", "ok"),
        ("volumes.create", "ResourceExhausted"),
        ("volumes.resize", "ok"),
        ("volumes.delete", "ok"),
        ("volumetypes.create", "PermissionDenied"),
    ] {
        assert!(actions.contains(&want), "{want:?} not in {actions:?}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The operator's view: `nubo volume …` against a coordinator with Ceph.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_volume_smoke() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-cli");
    let etcd = Etcd::start().unwrap();
    let (coord, _cl) = one_node_cloud(&etcd, &ceph).await;
    let cli =
        nubo_tests::Cli::new(&coord.endpoint()).expect("nubo binary (cargo build -p nubo-cli)");
    let pool = p.volumes.clone();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| cli.json(args).unwrap_or_else(|e| panic!("{e:#}"));
        let t = run(&["volume", "type", "create", "ssd", "--write-iops", "200"]);
        assert_eq!(t["write_iops_sec"], 200);
        let t = run(&["volume", "type", "set", "ssd", "--read-iops", "300"]);
        assert_eq!(
            (t["read_iops_sec"].as_u64(), t["write_iops_sec"].as_u64()),
            (Some(300), Some(200))
        );
        let v = run(&["volume", "create", "d1", "--size", "1G", "--type", "ssd"]);
        assert_eq!(v["status"], "available");
        assert_eq!(
            v["rbd_image"],
            format!("{pool}/vol-{}", v["id"].as_str().unwrap())
        );
        let bad = cli.run(&["volume", "create", "d0", "--size", "0"]).unwrap();
        assert!(!bad.success());
        assert!(bad.stderr.contains("at least 1 GiB"), "{}", bad.stderr);
        let bad = cli
            .run(&["volume", "create", "dn", "--size", "-2G"])
            .unwrap();
        assert!(bad.stderr.contains("negative"), "{}", bad.stderr);
        let list = run(&["volume", "list"]);
        assert_eq!(list.as_array().unwrap().len(), 1);
        run(&[
            "server", "create", "vm1", "--flavor", "m1.small", "--image", "cirros",
        ]);
        let a = run(&["volume", "attach", "d1", "vm1"]);
        assert_eq!(a["status"], "in-use");
        let bad = cli.run(&["volume", "delete", "d1"]).unwrap();
        assert!(
            bad.stderr.contains("attached to server \"vm1\""),
            "{}",
            bad.stderr
        );
        run(&["volume", "snapshot", "create", "d1", "s1"]);
        let snaps = run(&["volume", "snapshot", "list", "d1"]);
        assert_eq!(snaps[0]["name"], "s1");
        let d = run(&["volume", "detach", "d1", "--wait"]);
        assert_eq!(d["status"], "available");
        let r = run(&["volume", "resize", "d1", "--size", "2G"]);
        assert_eq!(r["size_gb"], 2);
        run(&["volume", "snapshot", "delete", "d1", "s1"]);
        run(&["volume", "delete", "d1"]);
        run(&["volume", "type", "delete", "ssd"]);
        assert!(run(&["volume", "list"]).as_array().unwrap().is_empty());
    })
    .await
    .unwrap();
    assert!(leftovers(&admin, &p.volumes).is_empty());
    coord.shutdown().await.unwrap();
}

/// A volume transfer: offered by p1 (`awaiting-transfer`, not deletable),
/// invisible to p2's list, refused with a wrong key, withdrawn, offered
/// again and accepted by p2 through the CLI — the volume, its snapshot
/// and its quota usage move, the accepting user becomes its user; an
/// accept beyond the receiving project's quota is refused and moves
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_transfer_moves_the_volume_its_snapshots_and_quota() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-xfer");
    let etcd = Etcd::start().unwrap();
    let coord = member_cloud_with(&etcd, &[("alice", "p1"), ("bob", "p2")], |cfg| {
        cfg.ceph = Some(ceph.clone())
    })
    .await;
    let ch = channel(&coord).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;
    use common::authed as req;
    let mut v = Volumes::new(ch.clone());
    let usage = |tok: String| {
        let ch = ch.clone();
        async move {
            let u = pb::quotas_client::QuotasClient::new(ch)
                .get(req(&tok, get("")))
                .await
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            (u.volumes.unwrap_or(0), u.gigabytes.unwrap_or(0))
        }
    };

    let vol = v
        .create(req(&alice, create("tv", 2)))
        .await
        .unwrap()
        .into_inner();
    v.create_snapshot(req(&alice, snap("tv", "s1")))
        .await
        .unwrap();
    let offer = |tok: &str| {
        req(
            tok,
            pb::CreateVolumeTransferRequest {
                project: String::new(),
                volume: "tv".into(),
                name: "to bob".into(),
            },
        )
    };
    let t = v.create_transfer(offer(&alice)).await.unwrap().into_inner();
    assert_eq!(
        (t.volume_id.as_str(), t.auth_key.len()),
        (vol.id.as_str(), 16)
    );
    let got = v.get(req(&alice, get("tv"))).await.unwrap().into_inner();
    assert_eq!(got.status, "awaiting-transfer");
    // Offered: neither deletable nor offered twice.
    let e = v.delete(req(&alice, del("tv"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = v.create_transfer(offer(&alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The owner lists and shows it (no key shown again); p2 does not.
    let list = |tok: String| {
        let ch = ch.clone();
        async move {
            Volumes::new(ch)
                .list_transfers(req(&tok, pb::ListRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .transfers
        }
    };
    let mine = list(alice.clone()).await;
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].id.as_str(), mine[0].auth_key.as_str()),
        (t.id.as_str(), "")
    );
    assert!(list(bob.clone()).await.is_empty());
    let e = v.get_transfer(req(&bob, get(&t.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A wrong key moves nothing.
    let accept = |tok: &str, id: &str, key: &str| {
        req(
            tok,
            pb::AcceptVolumeTransferRequest {
                project: String::new(),
                id: id.into(),
                auth_key: key.into(),
            },
        )
    };
    let e = v
        .accept_transfer(accept(&bob, &t.id, "0000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(
        v.get(req(&alice, get("tv")))
            .await
            .unwrap()
            .into_inner()
            .status,
        "awaiting-transfer"
    );
    // Withdrawn: available again, the old key is useless.
    v.delete_transfer(req(&alice, del(&t.id))).await.unwrap();
    assert_eq!(
        v.get(req(&alice, get("tv")))
            .await
            .unwrap()
            .into_inner()
            .status,
        "available"
    );
    let e = v
        .accept_transfer(accept(&bob, &t.id, &t.auth_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Offered and accepted through the CLI.
    let cli_dir = tempfile::tempdir().unwrap();
    let cli_as = |user: &str| {
        let cli = nubo_tests::Cli::new(&coord.endpoint())
            .and_then(|cli| cli.with_token_store(&cli_dir.path().join(user)))
            .unwrap();
        cli.login(user, "pw", cli_dir.path()).unwrap();
        cli
    };
    let (alice_cli, bob_cli) = tokio::task::block_in_place(|| (cli_as("alice"), cli_as("bob")));
    let offered = tokio::task::block_in_place(|| {
        alice_cli.json(&["volume", "transfer", "create", "tv", "--name", "again"])
    })
    .unwrap();
    let (tid, key) = (
        offered["id"].as_str().unwrap().to_string(),
        offered["auth_key"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        (usage(alice.clone()).await, usage(bob.clone()).await),
        // The 2 GiB volume and its 2 GiB snapshot (as Cinder counts).
        ((1, 4), (0, 0))
    );
    let moved =
        tokio::task::block_in_place(|| bob_cli.json(&["volume", "transfer", "accept", &tid, &key]))
            .unwrap();
    assert_eq!(
        (
            &moved["id"],
            &moved["project"],
            &moved["status"],
            &moved["created_by"]
        ),
        (
            &serde_json::json!(vol.id),
            &serde_json::json!("p2"),
            &serde_json::json!("available"),
            &serde_json::json!("bob")
        )
    );
    assert_eq!(
        (usage(alice.clone()).await, usage(bob.clone()).await),
        ((0, 0), (1, 4))
    );
    let e = v.get(req(&alice, get(&vol.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        v.get(req(&bob, get("tv"))).await.unwrap().into_inner().id,
        vol.id
    );
    let snaps = v
        .list_snapshots(req(&bob, get("tv")))
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(
        snaps
            .iter()
            .map(|s| (s.name.as_str(), s.project.as_str()))
            .collect::<Vec<_>>(),
        [("s1", "p2")]
    );
    assert!(list(alice.clone()).await.is_empty());
    assert!(list(bob.clone()).await.is_empty());

    // Back to p1 beyond its quota (0 volumes): refused, nothing moves.
    pb::quotas_client::QuotasClient::new(ch.clone())
        .set(req(
            &root,
            pb::SetQuotaRequest {
                project: "p1".into(),
                limits: Some(pb::QuotaSet {
                    volumes: Some(0),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap();
    let back = v.create_transfer(offer(&bob)).await.unwrap().into_inner();
    let e = v
        .accept_transfer(accept(&alice, &back.id, &back.auth_key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        (usage(alice.clone()).await, usage(bob.clone()).await),
        ((0, 0), (1, 4))
    );
    v.delete_transfer(req(&bob, del(&back.id))).await.unwrap();
    // Another project's member cannot delete it by id; a cloud admin can
    // (Cinder's admin, as Tempest's clean-ups do).
    let e = v.delete(req(&alice, del(&vol.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let snaps = v
        .list_snapshots(req(&root, get(&vol.id)))
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(snaps.len(), 1);
    v.delete(req(&root, del(&vol.id))).await.unwrap();
    assert_eq!(usage(bob.clone()).await, (0, 0));
    assert!(leftovers(&admin, &p.volumes).is_empty());
}

/// Polls until image `id` is `active` (the capture copies in the
/// background); fails on `error` with its reason.
async fn wait_image_active(ch: &Channel, id: &str) -> pb::Image {
    let mut imgs = pb::images_client::ImagesClient::new(ch.clone());
    for _ in 0..600 {
        let i = imgs.get(get(id)).await.unwrap().into_inner();
        match i.status.as_str() {
            "active" => return i,
            "error" => panic!("image {id} failed: {}", i.status_reason),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("image {id} never became active");
}

/// Images from disks: a volume's data (raw through gRPC, qcow2 through
/// the CLI) and a boot-from-volume server's root disk become images with
/// the disk's bytes; the volume stays available and no capture snapshot
/// is left; a format nubo does not make and a server with no root disk
/// in Ceph are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_from_a_volume_and_a_server_root_disk() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-capture");
    let etcd = Etcd::start().unwrap();
    let images = tempfile::tempdir().unwrap();
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.ceph = Some(ceph.clone());
    cfg.image_dir = images.path().to_path_buf();
    let coord = nubo_coordinator::start(cfg).await.unwrap();
    let mut cl = clients(&coord).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "n1", res(16, 16 * 1024, 1000), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let ch = channel(&coord).await;
    let mut v = Volumes::new(ch.clone());
    let stored = |id: &str| images.path().join(id).join("disk");

    let vol = v.create(create("src", 1)).await.unwrap().into_inner();
    let at = (1u64 << 20) + 5;
    {
        let pool = admin.pool(&p.volumes).unwrap();
        let mut img = pool.open(&format!("vol-{}", vol.id)).unwrap();
        img.write(at, b"nubo capture").unwrap();
        img.flush().unwrap();
    }
    let upload = |name: &str, format: &str| pb::UploadVolumeToImageRequest {
        volume: "src".into(),
        image_name: name.into(),
        disk_format: format.into(),
        ..Default::default()
    };
    let e = v.upload_to_image(upload("bad", "vmdk")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let raw = v
        .upload_to_image(upload("from-vol", "raw"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raw.properties["source_volume_id"], vol.id);
    let cli = nubo_tests::Cli::new(&coord.endpoint()).expect("nubo binary");
    let q = tokio::task::block_in_place(|| {
        cli.json(&[
            "volume",
            "upload-image",
            "src",
            "from-vol-q",
            "--disk-format",
            "qcow2",
        ])
    })
    .unwrap();
    let raw = wait_image_active(&ch, &raw.id).await;
    assert_eq!((raw.disk_format.as_str(), raw.size_bytes), ("raw", 1 << 30));
    let data = std::fs::read(stored(&raw.id)).unwrap();
    assert_eq!(&data[at as usize..at as usize + 12], b"nubo capture");
    assert!(data[..at as usize].iter().all(|b| *b == 0));
    let qid = q["id"].as_str().unwrap().to_string();
    let qimg = wait_image_active(&ch, &qid).await;
    assert_eq!(qimg.disk_format, "qcow2");
    // The qcow2 holds the same disk.
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(stored(&qid))
        .arg(stored(&raw.id))
        .status()
        .unwrap();
    assert!(same.success());
    assert_eq!(
        v.get(get("src")).await.unwrap().into_inner().status,
        "available"
    );
    let left = leftovers(&admin, &p.volumes);
    assert!(!left.iter().any(|n| n.contains("@capture-")), "{left:?}");

    // A server: with no root disk in Ceph (the test node runs no agent),
    // refused; booted from a volume, its boot volume is captured.
    let img: Vec<(String, Vec<u8>)> = prefix(&etcd, &keys::images_prefix()).await;
    let base: Image = img
        .iter()
        .map(|(k, v)| nubo_common::model::decode::<Image>(k, v).unwrap())
        .find(|i| i.name == "cirros")
        .unwrap();
    let store = RbdStore::new(admin.clone(), p.clone());
    let parent = store
        .import_image(
            &base.id.to_string(),
            &mut std::io::Read::take(std::io::repeat(0x42), 1 << 20),
            1 << 20,
        )
        .unwrap();
    let r = create_servers(&mut cl, server_req("plain", &[], 0)).await;
    let plain = created(&r, 0);
    let shot = |server: &str| pb::CreateServerImageRequest {
        server: server.into(),
        name: format!("{server}-snap"),
        ..Default::default()
    };
    // A root disk on the node's local storage: the image waits `queued` for
    // the node's agent (none runs here; coordinator/tests/captures.rs and
    // tests/tests/image_capture.rs follow that path to `active`).
    let local = cl
        .servers
        .create_image(shot("plain"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(local.status, "queued", "{local:?}");
    assert_eq!(local.properties["instance_uuid"], plain.id, "{local:?}");
    cl.images
        .delete(pb::DeleteRequest {
            r#ref: local.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            boot_from_volume_size_gb: 1,
            delete_on_termination: true,
            ..server_req("bfv", &[], 0)
        },
    )
    .await;
    let bfv = created(&r, 0);
    let snap = cl
        .servers
        .create_image(shot("bfv"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            snap.properties["image_type"].as_str(),
            snap.properties["instance_uuid"].as_str()
        ),
        ("snapshot", bfv.id.as_str())
    );
    let snap = wait_image_active(&ch, &snap.id).await;
    assert_eq!(snap.size_bytes, 1 << 30);
    let data = std::fs::read(stored(&snap.id)).unwrap();
    assert!(data[..1 << 20].iter().all(|b| *b == 0x42));
    assert!(data[1 << 20..].iter().all(|b| *b == 0));

    cl.servers.delete(del("bfv")).await.unwrap();
    cl.servers.delete(del(&plain.id)).await.unwrap();
    wait_status(&mut v, &bfv.boot_volume_id, "gone").await;
    v.delete(del("src")).await.unwrap();
    let left = leftovers(&admin, &p.volumes);
    assert!(left.is_empty(), "{left:?}");
    store.delete(&parent.disk).unwrap();
    coord.shutdown().await.unwrap();
}

/// Cinder's admin actions on nubo (two projects, a cloud admin and
/// members): status resets change the record only, are admin-only and
/// audited, and a status set by hand is never finished by the volume loop;
/// force-delete whatever the status (RBD image and quota gone), never an
/// attached volume; snapshot resets, force-delete and the owner's
/// progress report; the snapshot quota (`snapshots` and `gigabytes`, as
/// Cinder counts) and `per_volume_gigabytes` refused in the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_resets_and_forces_volumes_and_snapshots_and_snapshot_quotas() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-admin");
    let etcd = Etcd::start().unwrap();
    let coord = member_cloud_with(&etcd, &[("alice", "p1"), ("bob", "p2")], |cfg| {
        cfg.ceph = Some(ceph.clone())
    })
    .await;
    let ch = channel(&coord).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;
    use common::authed as req;
    let mut v = Volumes::new(ch.clone());
    let mut quotas = pb::quotas_client::QuotasClient::new(ch.clone());
    let reset = |r: &str, status: &str| pb::ResetVolumeStatusRequest {
        r#ref: r.into(),
        status: status.into(),
        ..Default::default()
    };
    let vol = v
        .create(req(&alice, create("stuck", 1)))
        .await
        .unwrap()
        .into_inner();

    // Members cannot reset or force anything, not even their own.
    for e in [
        v.reset_status(req(&alice, reset(&vol.id, "error")))
            .await
            .unwrap_err(),
        v.force_delete(req(&alice, del(&vol.id))).await.unwrap_err(),
        v.force_detach(req(
            &alice,
            pb::DetachVolumeRequest {
                r#ref: vol.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    // The admin, by id, on p1's volume: the record only, who and when.
    for status in ["error", "available", "maintenance"] {
        let got = v
            .reset_status(req(&root, reset(&vol.id, status)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.status, status);
        let seen = v.get(req(&alice, get("stuck"))).await.unwrap().into_inner();
        assert_eq!(seen.status, status);
        assert!(
            seen.status_reset
                .contains(&format!("-> {status} by admin at")),
            "{seen:?}"
        );
    }
    // maintenance: nothing moves it on but the admin.
    let e = v.delete(req(&alice, del("stuck"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = v
        .create_snapshot(req(&alice, snap("stuck", "s0")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // Bad resets name what is allowed; the attachment is not a status.
    let e = v
        .reset_status(req(&root, reset(&vol.id, "reverting")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("maintenance"), "{e:?}");
    let e = v
        .reset_status(req(
            &root,
            pb::ResetVolumeStatusRequest {
                attach_status: "attached".into(),
                ..reset(&vol.id, "in-use")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not attached"), "{e:?}");
    let e = v
        .reset_status(req(
            &root,
            pb::ResetVolumeStatusRequest {
                migration_status: "migrating".into(),
                ..reset(&vol.id, "available")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A `detaching` set by hand is the admin's: the volume loop (every
    // second) would otherwise release a volume not attached at once.
    v.reset_status(req(&root, reset(&vol.id, "detaching")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        v.get(req(&alice, get("stuck")))
            .await
            .unwrap()
            .into_inner()
            .status,
        "detaching"
    );
    // Force-delete in `creating` (set by hand): image, record, quota gone.
    v.reset_status(req(&root, reset(&vol.id, "creating")))
        .await
        .unwrap();
    v.force_delete(req(&root, del(&vol.id))).await.unwrap();
    let e = v.get(req(&alice, get(&vol.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let usage = |tok: String| {
        let ch = ch.clone();
        async move {
            let u = pb::quotas_client::QuotasClient::new(ch)
                .get(req(&tok, get("")))
                .await
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            (
                u.volumes.unwrap_or(0),
                u.gigabytes.unwrap_or(0),
                u.snapshots.unwrap_or(0),
            )
        }
    };
    assert_eq!(usage(alice.clone()).await, (0, 0, 0));
    assert!(leftovers(&admin, &p.volumes).is_empty());

    // Snapshot quota: 1 snapshot, 3 GiB for volumes and snapshots.
    quotas
        .update(req(
            &root,
            pb::UpdateQuotaRequest {
                project: "p1".into(),
                limits: Some(pb::QuotaSet {
                    snapshots: Some(1),
                    gigabytes: Some(3),
                    backups: Some(11),
                    backup_gigabytes: Some(1009),
                    per_volume_gigabytes: Some(2),
                    ..Default::default()
                }),
                unlimited: vec![],
            },
        ))
        .await
        .unwrap();
    let e = v.create(req(&alice, create("huge", 3))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("per_volume_gigabytes"), "{e:?}");
    v.create(req(&alice, create("data", 1))).await.unwrap();
    let s1 = v
        .create_snapshot(req(&alice, snap("data", "s1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s1.status.as_str(), s1.progress.as_str()),
        ("available", "")
    );
    assert_eq!(usage(alice.clone()).await, (1, 2, 1));
    let e = v
        .create_snapshot(req(&alice, snap("data", "s2")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("quota exceeded for snapshots"),
        "{e:?}"
    );
    // Two snapshots allowed, but 2 GiB: the snapshot's size is refused.
    quotas
        .update(req(
            &root,
            pb::UpdateQuotaRequest {
                project: "p1".into(),
                limits: Some(pb::QuotaSet {
                    snapshots: Some(2),
                    gigabytes: Some(2),
                    ..Default::default()
                }),
                unlimited: vec![],
            },
        ))
        .await
        .unwrap();
    let e = v
        .create_snapshot(req(&alice, snap("data", "s2")))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("quota exceeded for gigabytes"),
        "{e:?}"
    );
    let q = quotas
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(
        (q.backups, q.backup_gigabytes, q.per_volume_gigabytes),
        (Some(11), Some(1009), Some(2))
    );

    // Snapshot resets: admin only, any project's by id.
    let sreset = |status: &str| pb::ResetSnapshotStatusRequest {
        r#ref: s1.id.clone(),
        project: String::new(),
        status: status.into(),
    };
    let e = v
        .reset_snapshot_status(req(&alice, sreset("error")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let got = v
        .reset_snapshot_status(req(&root, sreset("creating")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "creating");
    // A copy of a snapshot that is not available is refused.
    let e = v
        .create(req(
            &alice,
            pb::CreateVolumeRequest {
                snapshot_id: s1.id.clone(),
                ..create("copy", 0)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // The owner reports progress from `creating`; other moves are refused.
    let upd = |status: &str, progress: &str| pb::UpdateSnapshotStatusRequest {
        r#ref: s1.id.clone(),
        project: String::new(),
        status: status.into(),
        progress: progress.into(),
    };
    let got = v
        .update_snapshot_status(req(&alice, upd("error", "80%")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.status.as_str(), got.progress.as_str()),
        ("error", "80%")
    );
    let e = v
        .update_snapshot_status(req(&alice, upd("available", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = v
        .update_snapshot_status(req(&bob, upd("error", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    v.reset_snapshot_status(req(&root, sreset("deleting")))
        .await
        .unwrap();
    let e = v
        .delete_snapshot(req(
            &alice,
            pb::VolumeSnapshotRequest {
                id: s1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = v
        .force_delete_snapshot(req(&alice, del(&s1.id)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    v.force_delete_snapshot(req(&root, del(&s1.id)))
        .await
        .unwrap();
    assert_eq!(usage(alice.clone()).await, (1, 1, 0));
    assert!(
        leftovers(&admin, &p.volumes)
            .iter()
            .all(|l| !l.contains('@')),
        "{:?}",
        leftovers(&admin, &p.volumes)
    );
    // A volume deleted with its snapshots gives their quota back too.
    v.create_snapshot(req(&alice, snap("data", "s3")))
        .await
        .unwrap();
    assert_eq!(usage(alice.clone()).await, (1, 2, 1));
    v.delete(req(&alice, del("data"))).await.unwrap();
    assert_eq!(usage(alice.clone()).await, (0, 0, 0));
    assert!(leftovers(&admin, &p.volumes).is_empty());

    // Audited: who reset what, refused attempts included.
    let audit = pb::audit_client::AuditClient::new(ch.clone())
        .list(req(
            &root,
            pb::ListRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<(&str, &str, &str)> = audit
        .records
        .iter()
        .map(|r| (r.action.as_str(), r.outcome.as_str(), r.user.as_str()))
        .collect();
    for want in [
        ("volumes.resetstatus", "ok", "admin"),
        ("volumes.resetstatus", "PermissionDenied", "alice"),
        ("volumes.forcedelete", "ok", "admin"),
        ("volumes.resetsnapshotstatus", "ok", "admin"),
        ("volumes.forcedeletesnapshot", "ok", "admin"),
    ] {
        assert!(actions.contains(&want), "{want:?} not in {actions:?}");
    }
    coord.shutdown().await.unwrap();
}

/// Force-detach and resets of an attached volume (no auth: the caller is
/// a cloud admin): a volume reset to `available` while attached stays
/// attached (the server's spec is the truth) — another attach and a
/// delete are refused, a detach still works; reset to `error`, a
/// force-detach takes it out of the server's spec and it becomes
/// `available` once released; force-delete refuses an attached volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn force_detach_and_resets_of_an_attached_volume() {
    let Some(c) = cluster() else { return };
    let (admin, p, ceph) = ceph_setup(&c, "vt-fdetach");
    let etcd = Etcd::start().unwrap();
    let (coord, mut cl) = one_node_cloud(&etcd, &ceph).await;
    let mut v = Volumes::new(channel(&coord).await);
    let s1 = server(&mut cl, "s1").await;
    let s2 = server(&mut cl, "s2").await;
    let attach = |server: &str| pb::AttachVolumeRequest {
        r#ref: "d".into(),
        server_ref: server.into(),
        ..Default::default()
    };
    v.create(create("d", 1)).await.unwrap();
    v.attach(attach(&s1)).await.unwrap();
    let got = v
        .reset_status(pb::ResetVolumeStatusRequest {
            r#ref: "d".into(),
            status: "available".into(),
            attach_status: "attached".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.status.as_str(), got.attached_to.as_str()),
        ("available", s1.as_str())
    );
    let e = v.attach(attach(&s2)).await.unwrap_err();
    assert!(e.message().contains("attached to server"), "{e:?}");
    let e = v.delete(del("d")).await.unwrap_err();
    assert!(e.message().contains("detach it first"), "{e:?}");
    let e = v.force_delete(del("d")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("force-detach"), "{e:?}");
    let e = v
        .reset_status(pb::ResetVolumeStatusRequest {
            r#ref: "d".into(),
            attach_status: "detached".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("force-detach"), "{e:?}");
    // Reset to error: a plain detach refuses nothing it should not, the
    // force-detach releases it.
    v.reset_status(pb::ResetVolumeStatusRequest {
        r#ref: "d".into(),
        status: "maintenance".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = v
        .detach(pb::DetachVolumeRequest {
            r#ref: "d".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    v.force_detach(pb::DetachVolumeRequest {
        r#ref: "d".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let done = wait_status(&mut v, "d", "available").await;
    assert!(done.attached_to.is_empty(), "{done:?}");
    let key = keys::instance(&s1.parse().unwrap());
    let spec: Vec<(String, Vec<u8>)> = prefix(&etcd, &key).await;
    let (k, raw) = spec.iter().find(|(k, _)| *k == key).unwrap();
    let inst: nubo_common::model::Instance = nubo_common::model::decode(k, raw).unwrap();
    assert!(inst.volumes.is_empty(), "{:?}", inst.volumes);
    // Cinder's os-detach of a volume not attached: left as it is.
    let again = v
        .detach(pb::DetachVolumeRequest {
            r#ref: "d".into(),
            if_attached: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.status, "available");
    v.delete(del("d")).await.unwrap();
    assert!(leftovers(&admin, &p.volumes).is_empty());
    coord.shutdown().await.unwrap();
}
