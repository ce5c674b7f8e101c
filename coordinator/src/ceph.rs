//! The coordinator's connection to Ceph ([`CephConfig`]): one RADOS client
//! shared by the volume API, RBD image import and the storage fencer.

use std::sync::Arc;

use nubo_storage::{Cluster, ConnectOptions, RbdPools, RbdStore};

use crate::config::CephConfig;
use crate::error::ServeError;

/// Connects to the cluster and checks that the configured pools exist.
/// librados blocks, so this runs on the blocking pool.
pub async fn connect(cfg: &CephConfig) -> Result<Arc<RbdStore>, ServeError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || connect_blocking(&cfg))
        .await
        .map_err(|e| ServeError::Config(format!("ceph connect task failed: {e}")))?
}

fn connect_blocking(cfg: &CephConfig) -> Result<Arc<RbdStore>, ServeError> {
    let opts = ConnectOptions {
        conf_path: cfg.conf.clone(),
        keyring_path: cfg.keyring.clone(),
        client_id: cfg.client_id.clone(),
        timeout: Some(std::time::Duration::from_secs(30)),
    };
    let cluster = Cluster::connect(&opts).map_err(|e| {
        ServeError::Config(format!(
            "ceph: cannot connect as client.{} with {}: {e}",
            cfg.client_id,
            cfg.conf.display()
        ))
    })?;
    for pool in [&cfg.images_pool, &cfg.disks_pool, &cfg.volumes_pool] {
        match cluster.pool_exists(pool) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ServeError::Config(format!(
                    "ceph: pool {pool:?} does not exist (create it with `ceph osd pool create {pool}` and `rbd pool init {pool}`)"
                )))
            }
            Err(e) => return Err(ServeError::Config(format!("ceph: pool {pool:?}: {e}"))),
        }
    }
    tracing::info!(client = %cluster.client_name(), "connected to ceph");
    Ok(Arc::new(RbdStore::new(
        cluster,
        RbdPools {
            images: cfg.images_pool.clone(),
            disks: cfg.disks_pool.clone(),
            volumes: cfg.volumes_pool.clone(),
        },
    )))
}
