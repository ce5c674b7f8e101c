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
    Flavor, Image, Instance, InstanceState, InstanceStatus, NodeUsage, PowerState, QuotaUsage,
    Resources,
};
use nubo_common::{FlavorName, NodeName, ProjectId};
use nubo_store::{Answer, TxnBuilder, Versioned};

use super::servers::{quota_delta, ServerView};
use crate::error::{ApiError, ApiResult};
use crate::placement::{Chosen, Job, Limits, Ratios, Reservation, Retry, Target};
use crate::state::Ctx;

/// Transactions tried before answering Unavailable.
const ATTEMPTS: usize = 16;

/// The size `inst` would get from `flavor`, when it may be resized at all
/// (see the module docs); `Ok(None)` = same size. Pure.
pub fn resize_to(
    inst: &Instance,
    status: Option<&InstanceStatus>,
    flavor: &Flavor,
    image_min: Option<(u64, u64)>,
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
    Ok((new != inst.resources).then_some(new))
}

/// ResourceExhausted unless `new` fits on the server's node once its
/// current size is given back. Pure.
pub fn check_fits(
    inst: &Instance,
    flavor: &FlavorName,
    new: Resources,
    node_capacity: Resources,
    used: Resources,
    ratios: &Ratios,
) -> ApiResult<()> {
    let free = ratios
        .effective(node_capacity)
        .saturating_sub(used.saturating_sub(inst.resources));
    if new.vcpus > free.vcpus || new.ram_mb > free.ram_mb {
        let node = inst.node.as_ref().map_or("?", |n| n.as_str());
        return Err(ApiError::ResourceExhausted(format!(
            "node {node} cannot hold flavor {flavor} ({} vCPUs, {} MiB) for server {:?}: \
             {} vCPUs and {} MiB free counting the server's current size",
            new.vcpus, new.ram_mb, inst.name, free.vcpus, free.ram_mb
        )));
    }
    Ok(())
}

/// A resize as a job of the placement engine: the new size is reserved on
/// the server's own node.
struct ResizeJob<'a> {
    ctx: &'a Ctx,
    project: ProjectId,
    server: &'a str,
    flavor: FlavorName,
    /// What this attempt read.
    read: Option<ResizeRead>,
}

struct ResizeRead {
    inst: Versioned<Instance>,
    node: NodeName,
    capacity: Resources,
    flavor: Flavor,
    new: Resources,
    status_rev: i64,
    /// The project's quota usage: its revision and the value to write.
    quota: Option<(i64, QuotaUsage)>,
    /// The spec written.
    next: Instance,
}

impl Job for ResizeJob<'_> {
    type Output = ServerView;

    async fn prepare(&mut self) -> ApiResult<Option<ServerView>> {
        let ctx = self.ctx;
        let inst = super::lookup::server(ctx, &self.project, self.server).await?;
        let i = &inst.value;
        super::servers::ensure_unlocked(i)?;
        let flavor = ctx
            .store
            .read::<Flavor>(&keys::flavor(&self.flavor))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("flavor {:?} not found", self.flavor.as_str()))
            })?
            .value;
        let Some(node) = i.node.clone() else {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} is not placed on a node",
                i.name
            )));
        };
        let status = ctx
            .store
            .read::<InstanceStatus>(&keys::instance_status(&node, &i.id))
            .await?;
        let image = ctx.store.read::<Image>(&keys::image(&i.image)).await?;
        let Some(new) = resize_to(
            i,
            status.as_ref().map(|s| &s.value),
            &flavor,
            image
                .as_ref()
                .map(|im| (im.value.min_ram_mb, im.value.min_disk_gb)),
        )?
        else {
            let mut v = super::servers::render(ctx, std::slice::from_ref(i)).await?;
            return v
                .pop()
                .map(Some)
                .ok_or_else(|| ApiError::NotFound("server vanished".into()));
        };
        let capacity = ctx
            .view
            .get(&node)
            .and_then(|n| n.info)
            .map(|n| n.capacity)
            .ok_or_else(|| ApiError::FailedPrecondition(format!("node {node} not registered")))?;
        // Decide from the node's usage as etcd has it now.
        if let Some(kv) = ctx.store.get_kv(&keys::node_usage(&node)).await? {
            ctx.view.apply_usage_kv(&node, &kv);
        }
        let quota = if super::quotas::enforced(ctx) {
            let limit = super::quotas::limit(ctx, &i.project).await?;
            let (qu, qrev) = super::quotas::usage(ctx, &i.project).await?;
            let without = qu.saturating_sub(&quota_delta(&i.resources));
            let with = nubo_identity::check_quota(&i.project, &limit, &without, &quota_delta(&new))
                .map_err(|e| ApiError::ResourceExhausted(e.to_string()))?;
            Some((qrev, with))
        } else {
            None
        };
        let mut next = i.clone();
        next.flavor = flavor.name.clone();
        next.resources = new;
        self.read = Some(ResizeRead {
            status_rev: status.map_or(0, |s| s.mod_rev),
            inst,
            node,
            capacity,
            flavor,
            new,
            quota,
            next,
        });
        Ok(None)
    }

    fn target(&self) -> ApiResult<Target<'_>> {
        match &self.read {
            Some(r) => Ok(Target::Node(&r.node)),
            None => Err(ApiError::Unavailable("resize without a reading".into())),
        }
    }

    fn build(&mut self, at: &Chosen, t: &mut TxnBuilder) -> ApiResult<Reservation> {
        let Some(r) = &self.read else {
            return Err(ApiError::Unavailable("resize without a reading".into()));
        };
        let i = &r.inst.value;
        let used = at.usage.used;
        check_fits(
            i,
            &r.flavor.name,
            r.new,
            r.capacity,
            used,
            self.ctx.placement.ratios(),
        )?;
        let ikey = keys::instance(&i.id);
        t.unchanged(&ikey, r.inst.mod_rev);
        t.unchanged(&keys::instance_status(&r.node, &i.id), r.status_rev);
        super::specs::put_into(t, &r.next);
        super::instance_actions::record_into(t, &r.next, "resize");
        if let Some((qrev, with)) = &r.quota {
            super::quotas::reserve(t, &i.project, *qrev, with);
        }
        Ok(Reservation {
            usage: NodeUsage {
                used: used.saturating_sub(i.resources).saturating_add(r.new),
                instances: if at.usage_rev == 0 {
                    1
                } else {
                    at.usage.instances
                },
            },
            contended: Vec::new(),
            mergeable: false,
            // The spec and its node's copy.
            bytes: 4096 + 2 * r.next.user_data_b64.as_ref().map_or(0, String::len),
        })
    }

    async fn committed(&mut self, _at: &Chosen, _revision: i64) -> ApiResult<ServerView> {
        let Some(r) = self.read.take() else {
            return Err(ApiError::Unavailable("resize without a reading".into()));
        };
        tracing::info!(instance = %r.next.id, flavor = %r.flavor.name, vcpus = r.new.vcpus, ram_mb = r.new.ram_mb, "server resized");
        let mut v = super::servers::render(self.ctx, std::slice::from_ref(&r.next)).await?;
        v.pop()
            .ok_or_else(|| ApiError::NotFound("server vanished".into()))
    }

    fn failed(&mut self, _at: &Chosen, _a: &Answer, _lost: bool) -> ApiResult<Retry<ServerView>> {
        Ok(Retry::Again)
    }

    fn contention(&self) -> ApiError {
        ApiError::Unavailable("the server or its node changed concurrently too often; retry".into())
    }
}

/// Resizes a stopped server (see the module docs).
/// Resizes stopped server `server` of `project` to flavor `flavor` (see the
/// module docs).
pub async fn resize(
    ctx: &Ctx,
    project: &ProjectId,
    server: &str,
    flavor: &str,
) -> ApiResult<ServerView> {
    let flavor = FlavorName::new(flavor.trim())
        .map_err(|e| ApiError::InvalidArgument(format!("flavor: {e}")))?;
    let mut job = ResizeJob {
        ctx,
        project: project.clone(),
        server,
        flavor,
        read: None,
    };
    ctx.placement
        .place(
            &mut job,
            Limits {
                attempts: ATTEMPTS,
                rounds: ATTEMPTS,
                top_k: 1,
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decides whether `inst` may take `flavor`'s size. `node_capacity` is the
    /// node's physical capacity, `used` what is reserved there now (including
    /// this server). `Ok(None)` = nothing to change (same size). Pure.
    fn check_resize(
        inst: &Instance,
        status: Option<&InstanceStatus>,
        flavor: &Flavor,
        image_min: Option<(u64, u64)>,
        node_capacity: Resources,
        used: Resources,
        ratios: &Ratios,
    ) -> ApiResult<Option<Resources>> {
        let Some(new) = resize_to(inst, status, flavor, image_min)? else {
            return Ok(None);
        };
        check_fits(inst, &flavor.name, new, node_capacity, used, ratios)?;
        Ok(Some(new))
    }
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
