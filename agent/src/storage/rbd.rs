//! The Ceph RBD backend. An image is imported once into the images pool
//! (`img-<id>`, protected snapshot `base`) from this node's verified
//! download — race-safe across agents, see
//! [`nubo_storage::RbdStore::ensure_image`]; a root disk is a COW clone
//! `<disks>/<instance>-disk` of that snapshot, grown to the flavor's size;
//! volumes are `<volumes>/vol-<id>`. QEMU opens them itself (libvirt
//! network disks authenticated by the libvirt secret of `client.<id>`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nubo_common::{InstanceId, VolumeId};
use nubo_libvirt::{DiskSpec, MonHost, RbdDisk};
use nubo_storage::{BlockStore, Cluster, ConnectOptions, ImportWait, RbdPools, RbdStore};
use tracing::{info, warn};

use super::images::ImageFetcher;
use super::{PreparedRoot, StorageBackend, StorageError};
use crate::config::storage::{mon_hosts_from_conf, split_host_port, StorageSettings};
use crate::state::desired::DesiredInstance;

/// How long a root disk removal retries while QEMU's watch lingers.
const REMOVE_RETRY: Duration = Duration::from_secs(60);

/// Root disks and volumes on Ceph RBD.
#[derive(Debug, Clone)]
pub struct RbdBackend {
    store: Arc<RbdStore>,
    images: ImageFetcher,
    /// Template for QEMU's view of a disk (name filled in per disk).
    qemu: RbdDisk,
    scratch: PathBuf,
    /// One import at a time from this agent (the others wait for it).
    imports: Arc<tokio::sync::Mutex<()>>,
}

fn ceph(what: impl Into<String>) -> impl FnOnce(nubo_storage::Error) -> StorageError {
    let what = what.into();
    move |source| StorageError::Ceph { what, source }
}

impl RbdBackend {
    /// Connects to the cluster as `client.<ceph_id>`. `secret_uuid` is the
    /// libvirt secret holding the same key (see
    /// [`nubo_libvirt::LibvirtDriver::ensure_ceph_secret`]).
    pub async fn connect(
        s: &StorageSettings,
        images: ImageFetcher,
        state_dir: &Path,
        secret_uuid: String,
    ) -> Result<Self, StorageError> {
        let hosts = match &s.mon_hosts {
            Some(h) => h.iter().map(|a| split_host_port(a)).collect(),
            None => {
                let text = std::fs::read_to_string(&s.ceph_conf).map_err(|e| {
                    StorageError::Config(format!("read {}: {e}", s.ceph_conf.display()))
                })?;
                mon_hosts_from_conf(&text)
            }
        };
        if hosts.is_empty() {
            return Err(StorageError::Config(format!(
                "no monitor address: set [storage] mon_hosts or `mon host` in {}",
                s.ceph_conf.display()
            )));
        }
        let opts = ConnectOptions::new(&s.ceph_conf, &s.keyring, &s.ceph_id);
        let cluster = tokio::task::spawn_blocking(move || Cluster::connect(&opts))
            .await?
            .map_err(ceph(format!("connect to ceph as client.{}", s.ceph_id)))?;
        let pools = RbdPools {
            images: s.images_pool.clone(),
            disks: s.disks_pool.clone(),
            volumes: s.volumes_pool.clone(),
        };
        info!(client = %s.ceph_id, ?pools, "connected to ceph");
        Ok(RbdBackend {
            store: Arc::new(RbdStore::new(cluster, pools)),
            images,
            qemu: RbdDisk {
                name: String::new(),
                hosts: hosts
                    .into_iter()
                    .map(|(host, port)| MonHost { host, port })
                    .collect(),
                username: s.ceph_id.clone(),
                secret_uuid,
            },
            scratch: state_dir.join("downloads"),
            imports: Arc::default(),
        })
    }

    /// The store (for tests and tools).
    pub fn store(&self) -> &RbdStore {
        &self.store
    }

    fn qemu_disk(&self, spec: String) -> RbdDisk {
        RbdDisk {
            name: spec,
            ..self.qemu.clone()
        }
    }

    /// Imports the image into the images pool unless it is there.
    async fn ensure_imported(
        &self,
        image_id: String,
        disk: &Path,
    ) -> Result<nubo_storage::SnapshotRef, StorageError> {
        let store = self.store.clone();
        let id = image_id.clone();
        if let Some(snap) = tokio::task::spawn_blocking(move || store.image_snapshot(&id))
            .await?
            .map_err(ceph(format!("look up image {image_id}")))?
        {
            return Ok(snap);
        }
        let _one = self.imports.lock().await;
        let format = nubo_libvirt::image_info(disk)
            .await
            .map_err(|e| StorageError::Convert {
                image: image_id.clone(),
                message: e.to_string(),
            })?
            .format;
        let (store, disk, scratch) = (self.store.clone(), disk.to_path_buf(), self.scratch.clone());
        let id = image_id.clone();
        let started = std::time::Instant::now();
        let (snap, imported) = tokio::task::spawn_blocking(move || {
            let mut open = || nubo_storage::raw_image_reader(&disk, &format, &scratch, &id);
            store.ensure_image(&id, &mut open, ImportWait::default())
        })
        .await?
        .map_err(ceph(format!("import image {image_id}")))?;
        if imported {
            info!(image = %image_id, ms = started.elapsed().as_millis() as u64, "imported image into ceph");
        }
        Ok(snap)
    }
}

#[async_trait]
impl StorageBackend for RbdBackend {
    fn name(&self) -> &'static str {
        "rbd"
    }

    fn root_is_shared(&self) -> bool {
        true
    }

    async fn prepare_root(&self, spec: &DesiredInstance) -> Result<PreparedRoot, StorageError> {
        let id = spec.id();
        let local = self.images.ensure(&spec.image).await?;
        let kernel = local.kernel.clone().map(|k| (k, local.initrd.clone()));
        if let Some(boot) = &spec.spec.boot_volume {
            // Boot from volume: the volume is vda; no root disk of its own.
            return Ok(PreparedRoot {
                disk: DiskSpec::Rbd(self.volume_source(&boot.volume)?),
                kernel,
            });
        }
        let root = self.store.root_disk_ref(&id.to_string());
        let store = self.store.clone();
        let r = root.clone();
        let exists = tokio::task::spawn_blocking(move || store.disk_exists(&r))
            .await?
            .map_err(ceph(format!("look up root disk {}", root.spec())))?;
        if !exists {
            let snap = self
                .ensure_imported(spec.image.id.to_string(), &local.disk)
                .await?;
            let (store, size_gb) = (self.store.clone(), spec.resources.disk_gb);
            let started = std::time::Instant::now();
            let cloned = tokio::task::spawn_blocking(move || {
                store.clone_root_disk(&snap, &id.to_string(), size_gb)
            })
            .await?;
            match cloned {
                Ok(_) => {}
                // A clone made by an earlier, interrupted attempt.
                Err(nubo_storage::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(ceph(format!("clone root disk {}", root.spec()))(e)),
            }
            info!(instance = %id, disk = %root.spec(), ms = started.elapsed().as_millis() as u64, "root disk cloned");
        }
        Ok(PreparedRoot {
            disk: DiskSpec::Rbd(self.qemu_disk(root.spec())),
            kernel,
        })
    }

    async fn remove_root(&self, id: InstanceId) -> Result<(), StorageError> {
        let store = self.store.clone();
        let deadline = std::time::Instant::now() + REMOVE_RETRY;
        loop {
            let s = store.clone();
            let r =
                tokio::task::spawn_blocking(move || s.remove_root_disk(&id.to_string())).await?;
            match r {
                Ok(_) => return Ok(()),
                // QEMU's watch outlives it briefly after a hard stop.
                Err(e @ (nubo_storage::Error::InUse { .. } | nubo_storage::Error::Busy { .. }))
                    if std::time::Instant::now() < deadline =>
                {
                    warn!(instance = %id, error = %e, "root disk still open; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(ceph(format!("remove root disk of {id}"))(e)),
            }
        }
    }

    fn volume_source(&self, id: &VolumeId) -> Result<RbdDisk, StorageError> {
        Ok(self.qemu_disk(self.store.volume_ref(&id.to_string()).spec()))
    }
}
