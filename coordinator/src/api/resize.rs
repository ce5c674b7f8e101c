//! `Servers.Resize`: a stopped server gets another flavor's vCPUs and RAM.
//!
//! Allowed only while the server's desired power is `stopped` AND its agent
//! reports it `stopped` (the domain is shut off, so the agent can redefine
//! it; `nubo server start` then boots it with the new size). The new size
//! is reserved on the same node in the transaction that rewrites the spec:
//! compares on the spec, the status and the node's usage, so a concurrent
//! placement, start or resize can never over-fill the node. The root disk
//! size cannot change (the agent does not grow disks yet).

use nubo_common::keys;
use nubo_common::model::{
    Flavor, Image, Instance, InstanceState, InstanceStatus, Node, NodeUsage, PowerState, Resources,
};
use nubo_common::proto as pb;
use nubo_common::FlavorName;

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::scheduler::Ratios;
use crate::validate;
use nubo_store::kv::{absent, put, unchanged};

/// Transactions tried before answering Unavailable.
const ATTEMPTS: usize = 16;

/// Decides whether `inst` may take `flavor`'s size. `node_capacity` is the
/// node's physical capacity, `used` what is reserved there now (including
/// this server). `Ok(None)` = nothing to change (same size). Pure.
pub fn check_resize(
    inst: &Instance,
    status: Option<&InstanceStatus>,
    flavor: &Flavor,
    image_min: Option<(u64, u64)>,
    node_capacity: Resources,
    used: Resources,
    ratios: &Ratios,
) -> ApiResult<Option<Resources>> {
    let name = &inst.name;
    if inst.power != PowerState::Stopped {
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} is running; stop it before resizing (nubo server stop {name})"
        )));
    }
    let stopped = status
        .is_some_and(|s| s.state == InstanceState::Stopped && Some(&s.node) == inst.node.as_ref());
    if !stopped {
        let state = status.map_or("unknown", |s| s.state.as_str());
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} is not reported stopped yet (state {state}); retry once it is"
        )));
    }
    let new = flavor.resources;
    if new.disk_gb != inst.resources.disk_gb {
        return Err(ApiError::InvalidArgument(format!(
            "flavor {} has a {} GiB disk and server {name:?} {} GiB: resize changes vCPUs and RAM only",
            flavor.name, new.disk_gb, inst.resources.disk_gb
        )));
    }
    if let Some((min_ram, _)) = image_min {
        if new.ram_mb < min_ram {
            return Err(ApiError::InvalidArgument(format!(
                "the server's image needs at least {min_ram} MiB RAM; flavor {} has {} MiB",
                flavor.name, new.ram_mb
            )));
        }
    }
    if new == inst.resources {
        return Ok(None);
    }
    // What the node offers once this server's current size is given back.
    let free = ratios
        .effective(node_capacity)
        .saturating_sub(used.saturating_sub(inst.resources));
    if new.vcpus > free.vcpus || new.ram_mb > free.ram_mb {
        let node = inst.node.as_ref().map_or("?", |n| n.as_str());
        return Err(ApiError::ResourceExhausted(format!(
            "node {node} cannot hold flavor {} ({} vCPUs, {} MiB) for server {name:?}: \
             {} vCPUs and {} MiB free counting the server's current size",
            flavor.name, new.vcpus, new.ram_mb, free.vcpus, free.ram_mb
        )));
    }
    Ok(Some(new))
}

impl Ctx {
    /// Resizes a stopped server (see the module docs).
    pub(crate) async fn resize_server(&self, r: pb::ResizeServerRequest) -> ApiResult<pb::Server> {
        let project = validate::project(&r.project)?;
        let flavor_name = FlavorName::new(r.flavor.trim())
            .map_err(|e| ApiError::InvalidArgument(format!("flavor: {e}")))?;
        for _ in 0..ATTEMPTS {
            let inst = self.server_spec(&project, &r.r#ref).await?;
            let i = &inst.value;
            let flavor = self
                .store
                .read::<Flavor>(&keys::flavor(&flavor_name))
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!("flavor {:?} not found", flavor_name.as_str()))
                })?;
            let Some(node) = i.node.clone() else {
                return Err(ApiError::FailedPrecondition(format!(
                    "server {:?} is not placed on a node",
                    i.name
                )));
            };
            let skey = keys::instance_status(&i.id);
            let status = self.store.read::<InstanceStatus>(&skey).await?;
            let image = self.store.read::<Image>(&keys::image(&i.image)).await?;
            let node_info = self
                .store
                .read::<Node>(&keys::node(&node))
                .await?
                .ok_or_else(|| {
                    ApiError::FailedPrecondition(format!("node {node} not registered"))
                })?;
            let ukey = keys::node_usage(&node);
            let usage = self.store.read::<NodeUsage>(&ukey).await?;
            let used = usage.as_ref().map(|u| u.value.used).unwrap_or_default();
            let Some(new) = check_resize(
                i,
                status.as_ref().map(|s| &s.value),
                &flavor.value,
                image
                    .as_ref()
                    .map(|im| (im.value.min_ram_mb, im.value.min_disk_gb)),
                node_info.value.capacity,
                used,
                &self.ratios,
            )?
            else {
                let mut v = self.render(std::slice::from_ref(i)).await?;
                return v
                    .pop()
                    .ok_or_else(|| ApiError::NotFound("server vanished".into()));
            };
            let mut next = i.clone();
            next.flavor = flavor.value.name.clone();
            next.resources = new;
            let ikey = keys::instance(&i.id);
            let mut compares = vec![unchanged(&ikey, inst.mod_rev)];
            compares.push(match &status {
                Some(s) => unchanged(&skey, s.mod_rev),
                None => absent(&skey),
            });
            let new_usage = NodeUsage {
                used: used.saturating_sub(i.resources).saturating_add(new),
                instances: usage.as_ref().map_or(1, |u| u.value.instances),
            };
            compares.push(match &usage {
                Some(u) => unchanged(&ukey, u.mod_rev),
                None => absent(&ukey),
            });
            let mut ops = vec![put(&ikey, &next), put(&ukey, &new_usage)];
            if self.quotas_on() {
                let limit = self.quota_limit(&i.project).await?;
                let (qu, qrev) = self.quota_usage(&i.project).await?;
                let without = qu.saturating_sub(&super::servers::quota_delta(&i.resources));
                let with = nubo_identity::check_quota(
                    &i.project,
                    &limit,
                    &without,
                    &super::servers::quota_delta(&new),
                )
                .map_err(|e| ApiError::ResourceExhausted(e.to_string()))?;
                let (cmp, op) = super::quota::usage_txn(&i.project, qrev, &with);
                compares.push(cmp);
                ops.push(op);
            }
            if self
                .commit_usage(compares, ops, Some((node, new_usage)))
                .await?
            {
                tracing::info!(instance = %i.id, flavor = %flavor.value.name, vcpus = new.vcpus, ram_mb = new.ram_mb, "server resized");
                let mut v = self.render(std::slice::from_ref(&next)).await?;
                return v
                    .pop()
                    .ok_or_else(|| ApiError::NotFound("server vanished".into()));
            }
        }
        Err(ApiError::Unavailable(
            "the server or its node changed concurrently too often; retry".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::{InstanceId, NodeName};

    fn res(vcpus: u32, ram_mb: u64, disk_gb: u64) -> Resources {
        Resources {
            vcpus,
            ram_mb,
            disk_gb,
        }
    }

    fn fixture() -> (Instance, InstanceStatus, Flavor) {
        let node = NodeName::new("hv-1").unwrap();
        let inst: Instance = serde_json::from_value(serde_json::json!({
            "id": InstanceId::new_random(),
            "name": "web",
            "project": "p1",
            "flavor": "small",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "image": nubo_common::ImageId::new_random(),
            "ports": [],
            "power": "stopped",
            "node": "hv-1",
            "created_at": nubo_common::model::now(),
        }))
        .unwrap();
        let status: InstanceStatus = serde_json::from_value(serde_json::json!({
            "state": "stopped",
            "node": node,
            "updated_at": nubo_common::model::now(),
        }))
        .unwrap();
        let flavor: Flavor = serde_json::from_value(serde_json::json!({
            "name": "big",
            "resources": {"vcpus": 2, "ram_mb": 256, "disk_gb": 1},
            "created_at": nubo_common::model::now(),
        }))
        .unwrap();
        (inst, status, flavor)
    }

    const RATIOS: Ratios = Ratios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    };

    fn check(
        inst: &Instance,
        status: Option<&InstanceStatus>,
        flavor: &Flavor,
        cap: Resources,
        used: Resources,
    ) -> ApiResult<Option<Resources>> {
        check_resize(inst, status, flavor, None, cap, used, &RATIOS)
    }

    #[test]
    fn a_stopped_server_that_fits_is_resized() {
        let (inst, st, big) = fixture();
        // 4 vCPUs / 512 MiB, this server holds 1 / 128 of the 3 / 384 used.
        let r = check(&inst, Some(&st), &big, res(4, 512, 10), res(3, 384, 3)).unwrap();
        assert_eq!(r, Some(res(2, 256, 1)));
        // Shrinking always fits.
        let mut small = big.clone();
        small.resources = res(1, 64, 1);
        assert_eq!(
            check(&inst, Some(&st), &small, res(1, 128, 1), res(1, 128, 1)).unwrap(),
            Some(res(1, 64, 1))
        );
        // Same size: nothing to do.
        small.resources = inst.resources;
        assert_eq!(
            check(&inst, Some(&st), &small, res(1, 128, 1), res(1, 128, 1)).unwrap(),
            None
        );
    }

    #[test]
    fn refused_when_running_not_yet_stopped_too_big_or_other_disk() {
        let (mut inst, mut st, big) = fixture();
        let cap = res(4, 512, 10);
        let used = res(1, 128, 1);
        // Full node: 1 vCPU free besides this server's.
        let e = check(&inst, Some(&st), &big, res(4, 300, 10), res(4, 300, 1)).unwrap_err();
        assert!(matches!(e, ApiError::ResourceExhausted(_)), "{e}");
        assert!(e.to_string().contains("1 vCPUs and 128 MiB free"), "{e}");
        // Other disk size.
        let mut other_disk = big.clone();
        other_disk.resources.disk_gb = 2;
        let e = check(&inst, Some(&st), &other_disk, cap, used).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        // Image needs more RAM than the flavor has.
        let e =
            check_resize(&inst, Some(&st), &big, Some((512, 0)), cap, used, &RATIOS).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        // Desired stopped but the agent still reports it running.
        st.state = InstanceState::Running;
        let e = check(&inst, Some(&st), &big, cap, used).unwrap_err();
        assert!(
            e.to_string()
                .contains("not reported stopped yet (state running)"),
            "{e}"
        );
        let e = check(&inst, None, &big, cap, used).unwrap_err();
        assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e}");
        // Reported stopped, but by another node.
        st.state = InstanceState::Stopped;
        st.node = NodeName::new("hv-2").unwrap();
        assert!(check(&inst, Some(&st), &big, cap, used).is_err());
        // Desired running.
        inst.power = PowerState::Running;
        let e = check(&inst, Some(&st), &big, cap, used).unwrap_err();
        assert!(e.to_string().contains("stop it before resizing"), "{e}");
    }
}
