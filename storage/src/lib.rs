//! Ceph RBD storage for nubo: a small safe wrapper over librados/librbd
//! ([`Cluster`], [`Pool`], [`Image`]) and the [`BlockStore`] interface with
//! its RBD implementation ([`RbdStore`]).
//!
//! Everything here blocks on the network. The handles are `Send` (and
//! [`Cluster`], [`Pool`] are `Sync`), so async callers move them into
//! `tokio::task::spawn_blocking`.
//!
//! Loading: `librados.so.2` and `librbd.so.1` from Debian 12 (Ceph 16.2,
//! librbd API 1.16; packages `librados2 librbd1`) are `dlopen`ed at the first
//! [`Cluster::connect`], not linked, so a process that never connects maps
//! no Ceph code and the build needs no Ceph headers; a missing library is
//! [`Error::LibraryLoad`]. All `unsafe` code is in the private `ffi` module.
//!
//! With feature `testing`, [`testing::TestCluster`] runs a throwaway
//! single-node cluster via `scripts/ceph-up.sh`.

mod cluster;
mod error;
mod ffi;
mod image;
mod import;
mod name;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use cluster::{BlocklistEntry, Cluster, ConnectOptions};
pub use error::{Error, Result};
pub use image::{Features, Image, ImageInfo, LockOwners, ParentInfo, Pool, SnapInfo, Watcher};
pub use import::raw_image_reader;
pub use store::{
    BlockStore, DiskRef, ImportWait, RbdPools, RbdStore, SnapshotRef, BASE_SNAP, IMPORT_CHUNK,
};
