//! The block-store interface the agent and coordinator use, and its Ceph RBD
//! implementation. (The local-qcow2 implementation lives elsewhere.)
//!
//! All methods block: call them from `tokio::task::spawn_blocking`.

use std::io::Read;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::image::{Features, Image, Pool};
use crate::name::validate_name;

/// A disk (root disk or volume): an RBD image `pool/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskRef {
    /// Pool.
    pub pool: String,
    /// Image name.
    pub name: String,
}

impl DiskRef {
    /// `pool/name`, as `rbd` and QEMU's `rbd:` URLs spell it.
    pub fn spec(&self) -> String {
        format!("{}/{}", self.pool, self.name)
    }
}

/// A snapshot of a disk or of an imported image: `pool/name@snap`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotRef {
    /// The image.
    pub disk: DiskRef,
    /// Snapshot name.
    pub snap: String,
}

impl SnapshotRef {
    /// `pool/name@snap`.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.disk.spec(), self.snap)
    }
}

/// Block storage for images, root disks and volumes.
///
/// Blocking; implementations are `Send + Sync` so one instance can be shared
/// (in an `Arc`) by many `spawn_blocking` tasks.
pub trait BlockStore: Send + Sync {
    /// Imports `size` bytes from `reader` as glance-like image `image_id`,
    /// then snapshots it as `base` and protects the snapshot, ready to clone.
    fn import_image(&self, image_id: &str, reader: &mut dyn Read, size: u64)
        -> Result<SnapshotRef>;

    /// Makes instance `instance_id`'s root disk: a COW clone of `image`,
    /// grown to `size_gb` GiB (never shrunk below the image).
    fn clone_root_disk(
        &self,
        image: &SnapshotRef,
        instance_id: &str,
        size_gb: u64,
    ) -> Result<DiskRef>;

    /// Creates an empty volume of `size_gb` GiB.
    fn create_volume(&self, volume_id: &str, size_gb: u64) -> Result<DiskRef>;

    /// Deletes a disk or imported image with its (unprotected or protected)
    /// snapshots. Refuses with [`Error::InUse`] if a client has it open and
    /// with [`Error::HasChildren`] if any of its snapshots has clones.
    fn delete(&self, disk: &DiskRef) -> Result<()>;

    /// Creates snapshot `snap` of `disk`.
    fn snapshot_create(&self, disk: &DiskRef, snap: &str) -> Result<SnapshotRef>;

    /// Snapshot names of `disk`, oldest first.
    fn snapshot_list(&self, disk: &DiskRef) -> Result<Vec<String>>;

    /// Deletes a snapshot (unprotecting it first); [`Error::Busy`] if it has
    /// clones.
    fn snapshot_delete(&self, snap: &SnapshotRef) -> Result<()>;

    /// Rolls the disk back to the snapshot (the disk must not be in use).
    fn snapshot_rollback(&self, snap: &SnapshotRef) -> Result<()>;

    /// Fences a client address (`ip:port/nonce`, from [`crate::Watcher`] or
    /// the node's registration) for `expire_secs`: its I/O fails from now on.
    fn fence_client(&self, client_addr: &str, expire_secs: u32) -> Result<()>;
}

/// Pools used by [`RbdStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdPools {
    /// Imported images (Nova/Glance: `images`).
    pub images: String,
    /// Instance root disks (Nova: `vms`).
    pub disks: String,
    /// Volumes (Cinder: `volumes`).
    pub volumes: String,
}

/// Name of the protected snapshot every imported image gets.
pub const BASE_SNAP: &str = "base";
/// Import chunk size: one default RBD object.
pub const IMPORT_CHUNK: usize = 4 << 20;
const GIB: u64 = 1 << 30;

/// [`BlockStore`] on Ceph RBD. Image names: `img-<image_id>`,
/// `<instance_id>-disk`, `vol-<volume_id>`.
#[derive(Debug, Clone)]
pub struct RbdStore {
    cluster: Cluster,
    pools: RbdPools,
    features: Features,
}

impl RbdStore {
    /// A store on `cluster` using `pools` (which must exist).
    pub fn new(cluster: Cluster, pools: RbdPools) -> Self {
        RbdStore {
            cluster,
            pools,
            features: Features::DEFAULT,
        }
    }

    /// The connection.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn pool(&self, name: &str) -> Result<Pool> {
        self.cluster.pool(name)
    }

    fn open(&self, disk: &DiskRef) -> Result<(Pool, Image)> {
        let pool = self.pool(&disk.pool)?;
        let image = pool.open(&disk.name)?;
        Ok((pool, image))
    }

    /// Streams `reader` into the open image in [`IMPORT_CHUNK`]s, skipping
    /// all-zero chunks (the new image reads as zeros there: stays sparse).
    /// Returns the bytes actually written.
    fn copy_in(image: &mut Image, reader: &mut dyn Read, size: u64) -> Result<u64> {
        let mut buf = vec![0u8; IMPORT_CHUNK];
        let (mut offset, mut written) = (0u64, 0u64);
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match reader.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(Error::Io {
                            op: "import image",
                            object: image.spec().to_owned(),
                            source,
                        })
                    }
                }
            }
            if filled == 0 {
                break;
            }
            let chunk_len = u64::try_from(filled).unwrap_or(u64::MAX);
            if offset.saturating_add(chunk_len) > size {
                return Err(Error::invalid(
                    "import image",
                    image.spec(),
                    format!("source is longer than the declared {size} bytes"),
                ));
            }
            let chunk = &buf[..filled];
            if chunk.iter().any(|&b| b != 0) {
                image.write(offset, chunk)?;
                written += chunk_len;
            }
            offset += chunk_len;
        }
        if offset != size {
            return Err(Error::invalid(
                "import image",
                image.spec(),
                format!("source ended after {offset} of the declared {size} bytes"),
            ));
        }
        image.flush()?;
        Ok(written)
    }

    /// Best-effort removal of a half-made image (after a failed import or
    /// resize); the original error is what the caller reports.
    fn discard(pool: &Pool, name: &str) {
        if let Err(e) = pool.remove(name) {
            tracing::warn!(image = %name, error = %e, "could not remove half-made image");
        }
    }
}

/// Volume operations of the coordinator's volume API (inherent, so the
/// [`BlockStore`] trait stays what the agents need). All block.
impl RbdStore {
    /// The pools this store uses.
    pub fn pools(&self) -> &RbdPools {
        &self.pools
    }

    /// Volume `volume_id`'s image: `<volumes pool>/vol-<volume_id>`.
    pub fn volume_ref(&self, volume_id: &str) -> DiskRef {
        DiskRef {
            pool: self.pools.volumes.clone(),
            name: format!("vol-{volume_id}"),
        }
    }

    /// Imported image `image_id`'s protected base snapshot:
    /// `<images pool>/img-<image_id>@base`.
    pub fn image_ref(&self, image_id: &str) -> SnapshotRef {
        SnapshotRef {
            disk: DiskRef {
                pool: self.pools.images.clone(),
                name: format!("img-{image_id}"),
            },
            snap: BASE_SNAP.to_owned(),
        }
    }

    /// Makes volume `volume_id` a COW clone of `image`, grown to `size_gb`
    /// GiB (refused when smaller than the image; the half-made clone is
    /// removed on any failure).
    pub fn clone_volume_from_image(
        &self,
        image: &SnapshotRef,
        volume_id: &str,
        size_gb: u64,
    ) -> Result<DiskRef> {
        let disk = self.volume_ref(volume_id);
        validate_name("clone volume", &disk.name)?;
        let want = size_gb.checked_mul(GIB).filter(|&b| b > 0).ok_or_else(|| {
            Error::invalid("clone volume", disk.spec(), "size_gb must be 1..=2^34")
        })?;
        let parent_pool = self.pool(&image.disk.pool)?;
        let pool = self.pool(&disk.pool)?;
        pool.clone_from(
            &parent_pool,
            &image.disk.name,
            &image.snap,
            &disk.name,
            self.features,
        )?;
        let grow = (|| {
            let mut img = pool.open(&disk.name)?;
            let have = img.size()?;
            if want < have {
                return Err(Error::invalid(
                    "clone volume",
                    img.spec(),
                    format!("{size_gb} GiB is smaller than the image ({have} bytes)"),
                ));
            }
            if want > have {
                img.resize(want)?;
            }
            Ok(())
        })();
        if let Err(e) = grow {
            Self::discard(&pool, &disk.name);
            return Err(e);
        }
        Ok(disk)
    }

    /// Makes volume `volume_id` a full, independent copy of snapshot `src`
    /// (of another volume), grown to `size_gb` GiB: a clone of the
    /// snapshot (protected for the time of the clone when it was not),
    /// flattened so the source volume and its snapshot stay deletable.
    /// The half-made volume is removed on any failure.
    pub fn copy_volume_from_snapshot(
        &self,
        src: &SnapshotRef,
        volume_id: &str,
        size_gb: u64,
    ) -> Result<DiskRef> {
        let (_src_pool, mut src_img) = self.open(&src.disk)?;
        let protected_here = if src_img.snap_is_protected(&src.snap)? {
            false
        } else {
            src_img.snap_protect(&src.snap)?;
            true
        };
        let made = self
            .clone_volume_from_image(src, volume_id, size_gb)
            .and_then(|disk| {
                let flat = (|| {
                    let (_pool, mut img) = self.open(&disk)?;
                    img.flatten()
                })();
                match flat {
                    Ok(()) => Ok(disk),
                    Err(e) => {
                        if let Ok(pool) = self.pool(&disk.pool) {
                            Self::discard(&pool, &disk.name);
                        }
                        Err(e)
                    }
                }
            });
        if protected_here {
            // A concurrent copy of the same snapshot may still hold a
            // clone: it unprotects when it is done.
            if let Err(e) = src_img.snap_unprotect(&src.snap) {
                tracing::info!(snapshot = %src.snap, error = %e, "snapshot left protected");
            }
        }
        made
    }

    /// Makes volume `volume_id` a full copy of volume `src_volume_id` as it
    /// is now (through a temporary snapshot `clone-<volume_id>` of the
    /// source, removed afterwards), grown to `size_gb` GiB.
    pub fn copy_volume(
        &self,
        src_volume_id: &str,
        volume_id: &str,
        size_gb: u64,
    ) -> Result<DiskRef> {
        let src = self.volume_ref(src_volume_id);
        let snap = self.snapshot_create(&src, &format!("clone-{volume_id}"))?;
        let made = self.copy_volume_from_snapshot(&snap, volume_id, size_gb);
        if let Err(e) = self.snapshot_delete(&snap) {
            tracing::warn!(snapshot = %snap.spec(), error = %e, "temporary clone snapshot left behind");
        }
        made
    }

    /// Writes snapshot `snap`'s data to file `dest` (created or truncated;
    /// all-zero chunks are skipped, so the file stays sparse there) and
    /// returns its size in bytes. The snapshot is read-only: a disk in use
    /// keeps running while it is read.
    pub fn export_snapshot(&self, snap: &SnapshotRef, dest: &std::path::Path) -> Result<u64> {
        use std::io::{Seek, SeekFrom, Write};
        let io = |op: &'static str| {
            let object = dest.display().to_string();
            move |source| Error::Io { op, object, source }
        };
        let pool = self.pool(&snap.disk.pool)?;
        let image = pool.open_at_snap(&snap.disk.name, &snap.snap)?;
        let size = image.size()?;
        let mut f = std::fs::File::create(dest).map_err(io("create"))?;
        let mut offset = 0u64;
        while offset < size {
            let len =
                usize::try_from((size - offset).min(IMPORT_CHUNK as u64)).unwrap_or(IMPORT_CHUNK);
            let buf = image.read(offset, len)?;
            if buf.is_empty() {
                break;
            }
            if buf.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(buf.len() as i64))
                    .map_err(io("seek"))?;
            } else {
                f.write_all(&buf).map_err(io("write"))?;
            }
            offset += buf.len() as u64;
        }
        f.set_len(size).map_err(io("set length of"))?;
        f.sync_all().map_err(io("fsync"))?;
        Ok(size)
    }

    /// Grows `disk` to `size_gb` GiB; shrinking (or a size of 0) is refused
    /// with [`Error::InvalidArgument`], the same size is a no-op.
    pub fn resize_volume(&self, disk: &DiskRef, size_gb: u64) -> Result<()> {
        let want = size_gb.checked_mul(GIB).filter(|&b| b > 0).ok_or_else(|| {
            Error::invalid("resize volume", disk.spec(), "size_gb must be 1..=2^34")
        })?;
        let (_pool, mut image) = self.open(disk)?;
        let have = image.size()?;
        if want < have {
            return Err(Error::invalid(
                "resize volume",
                disk.spec(),
                format!(
                    "{size_gb} GiB is smaller than the current {have} bytes (volumes only grow)"
                ),
            ));
        }
        if want > have {
            image.resize(want)?;
        }
        Ok(())
    }

    /// Addresses of the clients other than this one that have `disk` open
    /// (`rbd status`): empty once every hypervisor let it go.
    pub fn disk_watchers(&self, disk: &DiskRef) -> Result<Vec<String>> {
        let (_pool, image) = self.open(disk)?;
        let own = i64::try_from(self.cluster.instance_id()).ok();
        Ok(image
            .watchers()?
            .into_iter()
            .filter(|w| Some(w.id) != own)
            .map(|w| w.addr)
            .collect())
    }

    /// Bytes that can still be written to `pool` (`ceph df`'s `max_avail`,
    /// which accounts for replication and the fullest OSD).
    pub fn pool_max_avail(&self, pool: &str) -> Result<u64> {
        let out = self
            .cluster
            .mon_command(&serde_json::json!({"prefix": "df", "format": "json"}))?;
        let bad = |reason: String| Error::Protocol {
            op: "ceph df",
            object: pool.to_owned(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| bad(format!("not JSON: {e}")))?;
        v["pools"]
            .as_array()
            .ok_or_else(|| bad("no \"pools\" array".into()))?
            .iter()
            .find(|p| p["name"].as_str() == Some(pool))
            .ok_or_else(|| Error::NotFound {
                op: "ceph df",
                object: pool.to_owned(),
            })?["stats"]["max_avail"]
            .as_u64()
            .ok_or_else(|| bad("no stats.max_avail".into()))
    }
}

/// How [`RbdStore::ensure_image`] waits for another client's import.
#[derive(Debug, Clone, Copy)]
pub struct ImportWait {
    /// Give up after this long.
    pub timeout: std::time::Duration,
    /// Poll interval.
    pub poll: std::time::Duration,
}

impl Default for ImportWait {
    fn default() -> Self {
        ImportWait {
            timeout: std::time::Duration::from_secs(600),
            poll: std::time::Duration::from_millis(500),
        }
    }
}

impl RbdStore {
    /// The protected `base` snapshot of image `image_id` if the image is
    /// fully imported (it has the snapshot, protected), else `None`.
    pub fn image_snapshot(&self, image_id: &str) -> Result<Option<SnapshotRef>> {
        let snap = self.image_ref(image_id);
        validate_name("look up image", &snap.disk.name)?;
        let image = match self.pool(&snap.disk.pool)?.open(&snap.disk.name) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let has_base = image.snap_list()?.iter().any(|s| s.name == BASE_SNAP);
        if !has_base || !image.snap_is_protected(BASE_SNAP)? {
            return Ok(None);
        }
        Ok(Some(snap))
    }

    /// Makes sure image `image_id` is imported (with its protected `base`
    /// snapshot), importing it from `open()` (reader, size) only if it is
    /// not. Race-safe across clients: when another one is importing it
    /// (create fails with "already exists"), waits for its `base` snapshot;
    /// if that import fails and removes the image, imports it here. Returns
    /// the snapshot and whether this call imported it.
    pub fn ensure_image(
        &self,
        image_id: &str,
        open: &mut dyn FnMut() -> Result<(Box<dyn Read>, u64)>,
        wait: ImportWait,
    ) -> Result<(SnapshotRef, bool)> {
        let deadline = std::time::Instant::now() + wait.timeout;
        loop {
            if let Some(snap) = self.image_snapshot(image_id)? {
                return Ok((snap, false));
            }
            if !self.disk_exists(&self.image_ref(image_id).disk)? {
                let (mut reader, size) = open()?;
                match self.import_image(image_id, &mut reader, size) {
                    Ok(snap) => return Ok((snap, true)),
                    // Another client created it first: wait for its snapshot.
                    Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    op: "wait for image import",
                    object: format!("{}/img-{image_id}@{BASE_SNAP}", self.pools.images),
                });
            }
            std::thread::sleep(wait.poll);
        }
    }

    /// Removes the root disk of `instance_id` (`<disks>/<id>-disk`) if it
    /// exists; `Ok(false)` when there was none.
    pub fn remove_root_disk(&self, instance_id: &str) -> Result<bool> {
        let disk = self.root_disk_ref(instance_id);
        match self.delete(&disk) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `<disks pool>/<instance_id>-disk`.
    pub fn root_disk_ref(&self, instance_id: &str) -> DiskRef {
        DiskRef {
            pool: self.pools.disks.clone(),
            name: format!("{instance_id}-disk"),
        }
    }

    /// Whether disk `disk` exists.
    pub fn disk_exists(&self, disk: &DiskRef) -> Result<bool> {
        match self.pool(&disk.pool)?.open(&disk.name) {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl BlockStore for RbdStore {
    fn import_image(
        &self,
        image_id: &str,
        reader: &mut dyn Read,
        size: u64,
    ) -> Result<SnapshotRef> {
        let name = format!("img-{image_id}");
        validate_name("import image", &name)?;
        let pool = self.pool(&self.pools.images)?;
        pool.create(&name, size, self.features)?;
        let result = (|| {
            let mut image = pool.open(&name)?;
            let written = Self::copy_in(&mut image, reader, size)?;
            image.snap_create(BASE_SNAP)?;
            image.snap_protect(BASE_SNAP)?;
            tracing::info!(image = %image.spec(), size, written, "imported image");
            Ok(())
        })();
        if let Err(e) = result {
            if let Ok(mut image) = pool.open(&name) {
                // Undo a snapshot made before the failure, then the image.
                let _ = image.snap_unprotect(BASE_SNAP);
                let _ = image.snap_remove(BASE_SNAP);
            }
            Self::discard(&pool, &name);
            return Err(e);
        }
        Ok(SnapshotRef {
            disk: DiskRef {
                pool: self.pools.images.clone(),
                name,
            },
            snap: BASE_SNAP.to_owned(),
        })
    }

    fn clone_root_disk(
        &self,
        image: &SnapshotRef,
        instance_id: &str,
        size_gb: u64,
    ) -> Result<DiskRef> {
        let name = format!("{instance_id}-disk");
        validate_name("clone root disk", &name)?;
        let want = size_gb
            .checked_mul(GIB)
            .filter(|&b| b > 0)
            .ok_or_else(|| Error::invalid("clone root disk", &name, "size_gb must be 1..=2^34"))?;
        let parent_pool = self.pool(&image.disk.pool)?;
        let pool = self.pool(&self.pools.disks)?;
        pool.clone_from(
            &parent_pool,
            &image.disk.name,
            &image.snap,
            &name,
            self.features,
        )?;
        let grow = (|| {
            let mut disk = pool.open(&name)?;
            let have = disk.size()?;
            if want < have {
                return Err(Error::invalid(
                    "clone root disk",
                    disk.spec(),
                    format!("{size_gb} GiB is smaller than the image ({have} bytes)"),
                ));
            }
            if want > have {
                disk.resize(want)?;
            }
            Ok(())
        })();
        if let Err(e) = grow {
            Self::discard(&pool, &name);
            return Err(e);
        }
        Ok(DiskRef {
            pool: self.pools.disks.clone(),
            name,
        })
    }

    fn create_volume(&self, volume_id: &str, size_gb: u64) -> Result<DiskRef> {
        let name = format!("vol-{volume_id}");
        let bytes = size_gb
            .checked_mul(GIB)
            .filter(|&b| b > 0)
            .ok_or_else(|| Error::invalid("create volume", &name, "size_gb must be 1..=2^34"))?;
        self.pool(&self.pools.volumes)?
            .create(&name, bytes, self.features)?;
        Ok(DiskRef {
            pool: self.pools.volumes.clone(),
            name,
        })
    }

    fn delete(&self, disk: &DiskRef) -> Result<()> {
        let (pool, mut image) = self.open(disk)?;
        let children = image.children()?;
        if !children.is_empty() {
            return Err(Error::HasChildren {
                op: "delete disk",
                object: disk.spec(),
                children,
            });
        }
        // Our own handle is one watcher; any other (another client, or
        // another handle of this one) means the disk is in use.
        let own = i64::try_from(self.cluster.instance_id()).ok();
        let mut watchers = image.watchers()?;
        if let Some(i) = watchers.iter().position(|w| Some(w.id) == own) {
            watchers.remove(i);
        }
        let others: Vec<String> = watchers.into_iter().map(|w| w.addr).collect();
        if !others.is_empty() {
            return Err(Error::InUse {
                op: "delete disk",
                object: disk.spec(),
                watchers: others,
            });
        }
        for snap in image.snap_list()? {
            if image.snap_is_protected(&snap.name)? {
                image.snap_unprotect(&snap.name)?;
            }
            image.snap_remove(&snap.name)?;
        }
        drop(image);
        pool.remove(&disk.name)
    }

    fn snapshot_create(&self, disk: &DiskRef, snap: &str) -> Result<SnapshotRef> {
        let (_pool, mut image) = self.open(disk)?;
        image.snap_create(snap)?;
        Ok(SnapshotRef {
            disk: disk.clone(),
            snap: snap.to_owned(),
        })
    }

    fn snapshot_list(&self, disk: &DiskRef) -> Result<Vec<String>> {
        let (_pool, image) = self.open(disk)?;
        Ok(image.snap_list()?.into_iter().map(|s| s.name).collect())
    }

    fn snapshot_delete(&self, snap: &SnapshotRef) -> Result<()> {
        let (_pool, mut image) = self.open(&snap.disk)?;
        if image.snap_is_protected(&snap.snap)? {
            image.snap_unprotect(&snap.snap)?;
        }
        image.snap_remove(&snap.snap)
    }

    fn snapshot_rollback(&self, snap: &SnapshotRef) -> Result<()> {
        let (_pool, mut image) = self.open(&snap.disk)?;
        image.snap_rollback(&snap.snap)
    }

    fn fence_client(&self, client_addr: &str, expire_secs: u32) -> Result<()> {
        self.cluster.blocklist_add(client_addr, expire_secs)?;
        tracing::warn!(client = %client_addr, expire_secs, "fenced ceph client");
        Ok(())
    }
}
