//! Where instance disks live: the [`StorageBackend`] trait and its two
//! implementations, [`local::LocalBackend`] (per-node image cache + qcow2
//! overlay, the default) and [`rbd::RbdBackend`] (Ceph RBD: root disks are
//! COW clones of the imported image, volumes are RBD images). Selected by
//! the agent's `[storage] backend`.

pub mod images;
pub mod local;
pub mod rbd;

use std::path::PathBuf;

use async_trait::async_trait;
use nubo_common::{InstanceId, VolumeId};
use nubo_libvirt::{DiskSpec, RbdDisk};

use crate::state::desired::DesiredInstance;

pub use crate::config::storage::{BackendKind, StorageFile, StorageSettings};
pub use local::LocalBackend;
pub use rbd::RbdBackend;

/// Why a disk could not be prepared or removed. The message ends up in the
/// instance's status, so it names the disk and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The image could not be downloaded or cached locally.
    #[error(transparent)]
    Fetch(#[from] images::FetchError),
    /// The local overlay could not be made or removed.
    #[error("instance {instance}: {source}")]
    Local {
        /// The instance.
        instance: InstanceId,
        /// The cache error.
        #[source]
        source: nubo_libvirt::ImageError,
    },
    /// A Ceph operation failed.
    #[error("{what}: {source}")]
    Ceph {
        /// What was being done (names the image, disk or volume).
        what: String,
        /// The RBD error.
        #[source]
        source: nubo_storage::Error,
    },
    /// The backend's configuration is unusable (keyring, conf, …).
    #[error("storage configuration: {0}")]
    Config(String),
    /// The backend cannot do this (volumes on the local backend).
    #[error("the {backend} storage backend does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// Converting the image for import failed.
    #[error("image {image}: {message}")]
    Convert {
        /// The image.
        image: String,
        /// What failed.
        message: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("storage worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A root disk ready for the domain, and the image's kernel for direct
/// kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRoot {
    /// The root disk.
    pub disk: DiskSpec,
    /// `(kernel, initrd)` when the image carries its own kernel.
    pub kernel: Option<(PathBuf, Option<PathBuf>)>,
}

/// Instance disks on one node. Object-safe; implementations run their
/// blocking work in `spawn_blocking`.
#[async_trait]
pub trait StorageBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs and errors (`local`, `rbd`).
    fn name(&self) -> &'static str;

    /// Makes the root disk of `spec` (or returns the existing one
    /// unchanged: it holds the instance's data) and the image's kernel.
    async fn prepare_root(&self, spec: &DesiredInstance) -> Result<PreparedRoot, StorageError>;

    /// Removes the root disk of `id`; missing is fine. Never touches
    /// volumes.
    async fn remove_root(&self, id: InstanceId) -> Result<(), StorageError>;

    /// Whether root disks are shared by every node (Ceph RBD): a live
    /// migration then moves no disk, and a node that only prepared to
    /// receive an instance never removes its root disk.
    fn root_is_shared(&self) -> bool {
        false
    }

    /// How QEMU reaches volume `id`.
    fn volume_source(&self, id: &VolumeId) -> Result<RbdDisk, StorageError> {
        let _ = id;
        Err(StorageError::Unsupported {
            backend: self.name(),
            what: "volumes",
        })
    }
}

/// Opens the backend `cfg.storage` selects. For `rbd`, first defines the
/// libvirt secret (`client.<id> secret`) holding the keyring's cephx key
/// on `driver`'s libvirtd (idempotent), then connects to the cluster.
pub async fn open(
    cfg: &crate::config::AgentConfig,
    images: images::ImageFetcher,
    driver: &nubo_libvirt::LibvirtDriver,
) -> Result<std::sync::Arc<dyn StorageBackend>, StorageError> {
    use base64::Engine as _;
    let s = &cfg.storage;
    match s.backend {
        BackendKind::Local => Ok(std::sync::Arc::new(LocalBackend::new(images))),
        BackendKind::Rbd => {
            let text = std::fs::read_to_string(&s.keyring).map_err(|e| {
                StorageError::Config(format!("read keyring {}: {e}", s.keyring.display()))
            })?;
            let key = crate::config::storage::keyring_key(&text, &s.ceph_id).ok_or_else(|| {
                StorageError::Config(format!("no key in keyring {}", s.keyring.display()))
            })?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.as_bytes())
                .map_err(|e| {
                    StorageError::Config(format!(
                        "key in keyring {} is not base64: {e}",
                        s.keyring.display()
                    ))
                })?;
            let uuid = driver
                .ensure_ceph_secret(&s.secret_usage(), &raw)
                .await
                .map_err(|e| StorageError::Config(format!("libvirt secret: {e}")))?;
            tracing::info!(usage = %s.secret_usage(), %uuid, "libvirt ceph secret ready");
            Ok(std::sync::Arc::new(
                RbdBackend::connect(s, images, &cfg.state_dir, uuid).await?,
            ))
        }
    }
}
