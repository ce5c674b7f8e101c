//! A throwaway Ceph cluster for a lab: the pools, the coordinator's and
//! the agents' cephx users with production caps, and their configuration
//! (shared by the VM labs and the network lab with Ceph).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nubo_storage::testing::TestCluster;

use crate::Underlay;

/// The RBD pools a lab with Ceph creates.
pub const RBD_POOLS: [&str; 3] = ["images", "vms", "volumes"];

/// The Ceph side of a VM lab whose agents keep root disks and volumes in
/// RBD (`[storage] backend = "rbd"`).
pub struct RbdStorage {
    /// The throwaway cluster, on the underlay gateway.
    pub ceph: TestCluster,
    /// The agents' `--config` (a `[storage]` table).
    pub agent_cfg: PathBuf,
}

/// Starts a Ceph cluster on the underlay gateway (clients in the host
/// namespaces reach it), creates the pools [`RBD_POOLS`], the
/// coordinator's and the agents' cephx users (the caps a production set-up
/// gives them, docs/operator-guide.md) and the agents' config in `dir`;
/// returns them with the coordinator's `--ceph-*` arguments. `None` only
/// when the Ceph binaries are missing and `NUBO_TEST_ALLOW_SKIP=ceph`
/// allows skipping; a cluster that does not start is an error.
pub fn rbd_storage_on(
    underlay: &Underlay,
    dir: &Path,
) -> Result<Option<(RbdStorage, Vec<String>)>> {
    let Some(ceph) = TestCluster::start_on(underlay.gateway())? else {
        return Ok(None);
    };
    for p in RBD_POOLS {
        ceph.cli("ceph", &["osd", "pool", "create", p, "8", "8"])?;
        ceph.cli("rbd", &["pool", "init", p])?;
    }
    let rbd_pools = "profile rbd pool=images, profile rbd pool=vms, profile rbd pool=volumes";
    let agent = ceph.create_user("nubo-agent", &[("mon", "profile rbd"), ("osd", rbd_pools)])?;
    // `df` for the up-front size check, the two blocklist commands for the
    // storage fencer.
    let coord = ceph.create_user(
        "nubo-coord",
        &[
            (
                "mon",
                "profile rbd, allow command df, allow command \"osd blocklist\", allow command \"osd blocklist ls\"",
            ),
            ("osd", rbd_pools),
        ],
    )?;
    let agent_cfg = dir.join("agent-storage.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            // The safety-net pass is pushed out of the tests' reach: every
            // change must arrive through the agent's watch.
            "resync_interval_secs = 3600\n[storage]\nbackend = \"rbd\"\nceph_conf = \"{}\"\nceph_id = \"{}\"\nkeyring = \"{}\"\n",
            ceph.conf_path().display(),
            agent.client_id,
            agent
                .keyring_path
                .context("no agent keyring")?
                .display()
        ),
    )?;
    let coord_keyring = coord.keyring_path.context("no coordinator keyring")?;
    let args = vec![
        "--ceph-conf".to_string(),
        coord.conf_path.display().to_string(),
        "--ceph-id".to_string(),
        coord.client_id,
        "--ceph-keyring".to_string(),
        coord_keyring.display().to_string(),
    ];
    Ok(Some((RbdStorage { ceph, agent_cfg }, args)))
}
