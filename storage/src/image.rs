//! RBD images in one pool: create/clone/remove/list, and the open [`Image`]
//! with its data, snapshot and lock operations.
//!
//! Every call blocks on the network: from async code run it on
//! `tokio::task::spawn_blocking` (the handles are `Send`).

use std::ops::BitOr;

use crate::error::{Context, Error, Result};
use crate::ffi;
use crate::name::validate_name;

/// RBD image feature bits (`rbd/features.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features(pub u64);

impl Features {
    /// COW clones of snapshots.
    pub const LAYERING: Features = Features(1 << 0);
    /// One writer at a time; required for fencing by lock break.
    pub const EXCLUSIVE_LOCK: Features = Features(1 << 2);
    /// Object map (needs exclusive-lock): fast `du`, sparse-aware clones.
    pub const OBJECT_MAP: Features = Features(1 << 3);
    /// Fast diff (needs object-map).
    pub const FAST_DIFF: Features = Features(1 << 4);
    /// Snapshots of clones survive flattening.
    pub const DEEP_FLATTEN: Features = Features(1 << 5);
    /// What nubo creates: layering, exclusive-lock, object-map, fast-diff,
    /// deep-flatten (Ceph's own default set).
    pub const DEFAULT: Features = Features(
        Self::LAYERING.0
            | Self::EXCLUSIVE_LOCK.0
            | Self::OBJECT_MAP.0
            | Self::FAST_DIFF.0
            | Self::DEEP_FLATTEN.0,
    );

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

/// Size and object layout of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes (4 MiB by default).
    pub obj_size: u64,
    /// Number of objects spanning the image.
    pub num_objs: u64,
    /// log2 of the object size.
    pub order: i32,
}

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size when the snapshot was taken.
    pub size: u64,
    /// Name.
    pub name: String,
}

/// The snapshot a clone was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    /// Parent pool.
    pub pool: String,
    /// Parent image.
    pub image: String,
    /// Parent snapshot.
    pub snap: String,
}

/// A client that has the image open (an RBD header watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Client address `ip:port/nonce` — what [`crate::Cluster::blocklist_add`] takes.
    pub addr: String,
    /// Client global id ([`crate::Cluster::instance_id`]).
    pub id: i64,
    /// Watch cookie.
    pub cookie: u64,
}

/// Who holds an image's managed lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwners {
    /// Exclusive (true) or shared lock.
    pub exclusive: bool,
    /// Owner strings as librbd reports them (`client.<id>`), empty if unlocked.
    pub owners: Vec<String>,
}

/// An I/O context on one pool: the factory for its RBD images.
///
/// `Send + Sync`; holds the cluster connection open.
pub struct Pool {
    io: ffi::IoCtx,
    name: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).finish()
    }
}

impl Pool {
    pub(crate) fn new(io: ffi::IoCtx, name: String) -> Self {
        Pool { io, name }
    }

    pub(crate) fn io(&self) -> &ffi::IoCtx {
        &self.io
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn spec(&self, image: &str) -> String {
        format!("{}/{}", self.name, image)
    }

    /// Creates a format-2 image of `size_bytes` (> 0) with `features`
    /// (e.g. [`Features::DEFAULT`]). Sparse: nothing is written.
    pub fn create(&self, name: &str, size_bytes: u64, features: Features) -> Result<()> {
        validate_name("create image", name)?;
        if size_bytes == 0 {
            return Err(Error::invalid(
                "create image",
                self.spec(name),
                "size must be > 0",
            ));
        }
        let opts = ffi::CreateOpts {
            features: features.0,
            order: None,
        };
        self.io
            .create_image(name, size_bytes, &opts)
            .ctx("create image", || self.spec(name))
    }

    /// COW-clones `parent_pool/parent_image@snap` (which must be protected)
    /// into `self/child` with `features` (must include layering).
    pub fn clone_from(
        &self,
        parent_pool: &Pool,
        parent_image: &str,
        snap: &str,
        child: &str,
        features: Features,
    ) -> Result<()> {
        validate_name("clone image", child)?;
        if !features.contains(Features::LAYERING) {
            return Err(Error::invalid(
                "clone image",
                self.spec(child),
                "clones need the layering feature",
            ));
        }
        let opts = ffi::CreateOpts {
            features: features.0,
            order: None,
        };
        parent_pool
            .io
            .clone_image(parent_image, snap, &self.io, child, &opts)
            .ctx("clone image", || {
                format!(
                    "{}@{snap} -> {}",
                    parent_pool.spec(parent_image),
                    self.spec(child)
                )
            })
    }

    /// Removes an image and its data. Fails with [`Error::HasSnapshots`] if
    /// it has snapshots, [`Error::Busy`] if it is open (watched) elsewhere.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.io
            .remove_image(name)
            .ctx("remove image", || self.spec(name))
    }

    /// Names of the pool's images.
    pub fn list(&self) -> Result<Vec<String>> {
        self.io
            .list_images()
            .ctx("list images", || self.name.clone())
    }

    /// Opens an image read-write at its head.
    pub fn open(&self, name: &str) -> Result<Image> {
        let raw = self
            .io
            .open_image(name, None)
            .ctx("open image", || self.spec(name))?;
        Ok(Image {
            raw,
            spec: self.spec(name),
        })
    }

    /// Opens an image read-only at snapshot `snap`.
    pub fn open_at_snap(&self, name: &str, snap: &str) -> Result<Image> {
        let spec = format!("{}@{snap}", self.spec(name));
        let raw = self
            .io
            .open_image(name, Some(snap))
            .ctx("open image", || spec.clone())?;
        Ok(Image { raw, spec })
    }
}

/// An open RBD image; closed on drop (releasing its exclusive lock).
///
/// `Send` (not `Sync`): move it into `spawn_blocking`. While open, the
/// client is a watcher of the image, so it cannot be removed elsewhere.
pub struct Image {
    raw: ffi::Image,
    spec: String,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("spec", &self.spec).finish()
    }
}

impl Image {
    /// `pool/image` (or `pool/image@snap`).
    pub fn spec(&self) -> &str {
        &self.spec
    }

    fn snap_spec(&self, snap: &str) -> String {
        format!("{}@{snap}", self.spec)
    }

    /// Size and layout.
    pub fn stat(&self) -> Result<ImageInfo> {
        let i = self.raw.stat().ctx("stat image", || self.spec.clone())?;
        Ok(ImageInfo {
            size: i.size,
            obj_size: i.obj_size,
            num_objs: i.num_objs,
            order: i.order,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.stat().map(|i| i.size)
    }

    /// Enabled feature bits.
    pub fn features(&self) -> Result<Features> {
        self.raw
            .features()
            .map(Features)
            .ctx("get features", || self.spec.clone())
    }

    /// Grows or shrinks the image (shrinking discards data past the end).
    pub fn resize(&mut self, size_bytes: u64) -> Result<()> {
        if size_bytes == 0 {
            return Err(Error::invalid(
                "resize image",
                &self.spec,
                "size must be > 0",
            ));
        }
        self.raw
            .resize(size_bytes)
            .ctx("resize image", || self.spec.clone())
    }

    /// The snapshot this image was cloned from; [`Error::NotFound`] if it is
    /// not a clone.
    pub fn parent_info(&self) -> Result<ParentInfo> {
        let p = self.raw.parent().ctx("get parent", || self.spec.clone())?;
        Ok(ParentInfo {
            pool: p.pool,
            image: p.image,
            snap: p.snap,
        })
    }

    /// Clones of any of this image's snapshots, as `pool/image`.
    pub fn children(&self) -> Result<Vec<String>> {
        self.raw
            .children()
            .ctx("list children", || self.spec.clone())
    }

    /// Writes all of `data` at `offset`. Past the end of the image is
    /// [`Error::InvalidArgument`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let n = self.raw.write(offset, data).ctx("write", || {
            format!("{} [{offset}+{}]", self.spec, data.len())
        })?;
        if n != data.len() {
            return Err(Error::Protocol {
                op: "write",
                object: self.spec.clone(),
                reason: format!("short write: {n} of {} bytes", data.len()),
            });
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` (fewer only at the image's end).
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self
            .raw
            .read(offset, &mut buf)
            .ctx("read", || format!("{} [{offset}+{len}]", self.spec))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Flushes librbd's write-back cache to the OSDs.
    pub fn flush(&mut self) -> Result<()> {
        self.raw.flush().ctx("flush", || self.spec.clone())
    }

    /// Snapshots of the image.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        let snaps = self
            .raw
            .snap_list()
            .ctx("list snapshots", || self.spec.clone())?;
        Ok(snaps
            .into_iter()
            .map(|s| SnapInfo {
                id: s.id,
                size: s.size,
                name: s.name,
            })
            .collect())
    }

    /// Creates snapshot `name`.
    pub fn snap_create(&mut self, name: &str) -> Result<()> {
        validate_name("create snapshot", name)?;
        self.raw
            .snap_create(name)
            .ctx("create snapshot", || self.snap_spec(name))
    }

    /// Removes snapshot `name`; [`Error::Busy`] if it is protected.
    pub fn snap_remove(&mut self, name: &str) -> Result<()> {
        self.raw
            .snap_remove(name)
            .ctx("remove snapshot", || self.snap_spec(name))
    }

    /// Rolls the image back to snapshot `name` (rewrites every object).
    pub fn snap_rollback(&mut self, name: &str) -> Result<()> {
        self.raw
            .snap_rollback(name)
            .ctx("roll back to snapshot", || self.snap_spec(name))
    }

    /// Copies every block the image shares with its parent snapshot into
    /// the image, which then no longer depends on the parent.
    pub fn flatten(&mut self) -> Result<()> {
        self.raw
            .flatten()
            .ctx("flatten image", || self.spec.clone())
    }

    /// Protects snapshot `name` so it can be cloned (and not removed).
    pub fn snap_protect(&mut self, name: &str) -> Result<()> {
        self.raw
            .snap_protect(name)
            .ctx("protect snapshot", || self.snap_spec(name))
    }

    /// Unprotects snapshot `name`; [`Error::Busy`] while it has clones.
    pub fn snap_unprotect(&mut self, name: &str) -> Result<()> {
        self.raw
            .snap_unprotect(name)
            .ctx("unprotect snapshot", || self.snap_spec(name))
    }

    /// True when snapshot `name` is protected.
    pub fn snap_is_protected(&self, name: &str) -> Result<bool> {
        self.raw
            .snap_is_protected(name)
            .ctx("query snapshot protection", || self.snap_spec(name))
    }

    /// Takes the managed lock and keeps it (librbd stops handing it over on
    /// request). Exclusive needs the exclusive-lock feature. Fails with
    /// [`Error::ReadOnly`] while a live client holds it.
    pub fn lock_acquire(&mut self, exclusive: bool) -> Result<()> {
        self.raw
            .lock_acquire(ffi::lock_mode(exclusive))
            .ctx("acquire lock", || self.spec.clone())
    }

    /// Releases a lock taken with [`Image::lock_acquire`].
    pub fn lock_release(&mut self) -> Result<()> {
        self.raw
            .lock_release()
            .ctx("release lock", || self.spec.clone())
    }

    /// True when this handle holds the exclusive lock.
    pub fn is_exclusive_lock_owner(&self) -> Result<bool> {
        self.raw
            .is_exclusive_lock_owner()
            .ctx("query lock owner", || self.spec.clone())
    }

    /// Current lock holders.
    pub fn lock_get_owners(&self) -> Result<LockOwners> {
        let (exclusive, owners) = self
            .raw
            .lock_owners()
            .ctx("get lock owners", || self.spec.clone())?;
        Ok(LockOwners { exclusive, owners })
    }

    /// Breaks `owner`'s lock (one of [`Image::lock_get_owners`]). librbd
    /// blocklists the owner first (`rbd_blocklist_on_break_lock`), so a
    /// still-running owner is fenced, not just unlocked.
    pub fn lock_break(&mut self, exclusive: bool, owner: &str) -> Result<()> {
        self.raw
            .lock_break(ffi::lock_mode(exclusive), owner)
            .ctx("break lock", || format!("{} held by {owner}", self.spec))
    }

    /// Clients that have the image open (`rbd status`), this handle included.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let w = self
            .raw
            .watchers()
            .ctx("list watchers", || self.spec.clone())?;
        Ok(w.into_iter()
            .map(|(addr, id, cookie)| Watcher { addr, id, cookie })
            .collect())
    }
}
