//! The local backend: the verified image in the node's cache, a qcow2
//! overlay per instance (`<state-dir>/instances/<id>/disk.qcow2`).

use async_trait::async_trait;
use nubo_common::InstanceId;
use nubo_libvirt::DiskSpec;

use super::images::ImageFetcher;
use super::{PreparedRoot, StorageBackend, StorageError};
use crate::state::desired::DesiredInstance;

/// Per-node image cache + qcow2 overlays.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    images: ImageFetcher,
}

impl LocalBackend {
    /// A backend downloading images through `images`.
    pub fn new(images: ImageFetcher) -> Self {
        LocalBackend { images }
    }
}

#[async_trait]
impl StorageBackend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn prepare_root(&self, spec: &DesiredInstance) -> Result<PreparedRoot, StorageError> {
        let id = spec.id();
        if spec.spec.boot_volume.is_some() {
            return Err(StorageError::Unsupported {
                backend: "local",
                what: "booting from a volume",
            });
        }
        let local = self.images.ensure(&spec.image).await?;
        let overlay = self
            .images
            .cache()
            .create_overlay(&local.disk, &id.to_string(), spec.resources.disk_gb)
            .await
            .map_err(|source| StorageError::Local {
                instance: id,
                source,
            })?;
        Ok(PreparedRoot {
            disk: DiskSpec::LocalQcow2 { path: overlay },
            kernel: local.kernel.map(|k| (k, local.initrd)),
        })
    }

    async fn remove_root(&self, id: InstanceId) -> Result<(), StorageError> {
        self.images
            .cache()
            .remove_overlay(&id.to_string())
            .await
            .map_err(|source| StorageError::Local {
                instance: id,
                source,
            })
    }
}
