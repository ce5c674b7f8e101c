//! `Servers.Resize`, `ConfirmResize` and `RevertResize`: a server gets
//! another flavor's vCPUs and RAM, and keeps the old flavor until its owner
//! confirms or reverts (OpenStack `VERIFY_RESIZE`).
//!
//! A resize only rewrites the spec (new flavor and size, and
//! [`PendingResize`] with the old flavor, size and desired power); the
//! server's agent converges: a running domain whose definition has another
//! size is shut down gracefully, redefined and booted again, a stopped one
//! is redefined and stays stopped. Confirm drops the old size; revert puts
//! the old flavor, size and desired power back, and the agent converges
//! the same way.
//!
//! Reservations: while a resize is pending the node and the project's
//! quota hold [`Instance::reserved`] (the larger of both sizes in each
//! dimension), so a revert can never find the node full; confirm and revert
//! give the difference back. Every step is one transaction through the
//! placement engine on the server's own node, comparing the spec and the
//! node's usage, so a concurrent placement, start or resize can never
//! over-fill the node.
//!
//! Phase: the spec changes at once, the guest later. A pending resize is
//! [`ResizePhase::Resizing`] until the agent of the server's node reports
//! (`InstanceStatus::size`) that the guest has the new size and is in its
//! desired power state, then [`ResizePhase::Verify`] (OpenStack
//! `RESIZE` → `VERIFY_RESIZE`); see [`phase`]. After a revert the spec
//! has the old size again and no pending resize, while the guest still
//! has the new one: [`ResizePhase::Reverting`] (OpenStack `REVERT_RESIZE`)
//! until the agent reports the old size — derived from the report alone,
//! so nothing extra is stored and an agent restart changes nothing.
//!
//! The server stays on its node: when the node cannot hold the new size the
//! answer is FailedPrecondition (REST 409) naming the node and the free capacity (the
//! operator moves the server first with `nubo server migrate`, then
//! resizes). The root disk size cannot change (the agent does not grow
//! disks yet).

use nubo_common::keys;
use nubo_common::model::{
    Flavor, GuestSize, Image, Instance, InstanceState, InstanceStatus, NodeUsage, PendingResize,
    PowerState, QuotaUsage, Resources,
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
/// (see the module docs). The root disk is checked apart, after the
/// project's quota ([`same_disk`]): a request over quota is refused for
/// that first, as Nova does. Pure.
pub fn resize_to(
    inst: &Instance,
    flavor: &Flavor,
    image_min: Option<(u64, u64)>,
) -> ApiResult<Resources> {
    let name = &inst.name;
    if let Some(r) = &inst.resize {
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} has a resize from flavor {} waiting; confirm or revert it first \
             (nubo server resize {name} --confirm|--revert)",
            r.old_flavor
        )));
    }
    if flavor.name == inst.flavor {
        return Err(ApiError::InvalidArgument(format!(
            "server {name:?} already has flavor {}: a resize needs another flavor",
            flavor.name
        )));
    }
    let new = flavor.resources;
    if let Some((min_ram, _)) = image_min {
        if new.ram_mb < min_ram {
            return Err(ApiError::InvalidArgument(format!(
                "the server's image needs at least {min_ram} MiB RAM; flavor {} has {} MiB",
                flavor.name, new.ram_mb
            )));
        }
    }
    Ok(new)
}

/// InvalidArgument unless `next` (the spec after a resize) keeps the root
/// disk size of `inst`: the agent does not grow disks yet. Pure.
pub fn same_disk(inst: &Instance, next: &Instance) -> ApiResult<()> {
    if next.resources.disk_gb == inst.resources.disk_gb {
        return Ok(());
    }
    Err(ApiError::InvalidArgument(format!(
        "flavor {} has a {} GiB disk and server {:?} {} GiB: resize changes vCPUs and RAM only",
        next.flavor, next.resources.disk_gb, inst.name, inst.resources.disk_gb
    )))
}

/// FailedPrecondition (REST: 409) unless `after` fits on the server's node
/// once `before` (what the server holds there now) is given back; quota is
/// what answers ResourceExhausted. Pure.
pub fn check_fits(
    inst: &Instance,
    flavor: &FlavorName,
    before: Resources,
    after: Resources,
    node_capacity: Resources,
    used: Resources,
    ratios: &Ratios,
) -> ApiResult<()> {
    let free = ratios
        .effective(node_capacity)
        .saturating_sub(used.saturating_sub(before));
    if after.vcpus > free.vcpus || after.ram_mb > free.ram_mb {
        let node = inst.node.as_ref().map_or("?", |n| n.as_str());
        return Err(ApiError::FailedPrecondition(format!(
            "node {node} cannot hold flavor {flavor} ({} vCPUs, {} MiB) for server {:?}: \
             {} vCPUs and {} MiB free counting the server's current size; resize stays on \
             the server's node (move it first: nubo server migrate {})",
            after.vcpus, after.ram_mb, inst.name, free.vcpus, free.ram_mb, inst.name
        )));
    }
    Ok(())
}

/// Where a pending resize is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizePhase {
    /// No resize pending.
    None,
    /// The spec has the new size; the guest does not have it yet.
    Resizing,
    /// The guest has the new size: waiting for confirm or revert.
    Verify,
    /// Reverted: the spec has the old size again, the guest not yet.
    Reverting,
}

impl ResizePhase {
    /// The API name (`""`, `resizing`, `verify`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResizePhase::None => "",
            ResizePhase::Resizing => "resizing",
            ResizePhase::Verify => "verify",
            ResizePhase::Reverting => "reverting",
        }
    }
}

/// The phase of `inst`'s pending resize given the status its node's agent
/// reported: `Verify` once the reported size is the spec's and the guest
/// is in its desired power state. A status without a size (an agent or
/// driver that does not report sizes, which could never be waited for)
/// counts as applied once the guest is running or stopped; a status of
/// another node or none at all (an evacuated server not re-created yet)
/// is `Resizing`. Without a pending resize, a guest whose node reports
/// another size than the spec's is `Reverting` (only a revert makes the
/// spec smaller or larger than a settled guest). Pure.
pub fn phase(inst: &Instance, status: Option<&InstanceStatus>) -> ResizePhase {
    let own = status.filter(|s| inst.node.as_ref() == Some(&s.node));
    let sized = |s: &InstanceStatus| s.size.is_none_or(|g| g == GuestSize::of(&inst.resources));
    if inst.resize.is_none() {
        return match own {
            Some(s) if !sized(s) => ResizePhase::Reverting,
            _ => ResizePhase::None,
        };
    }
    let Some(s) = own else {
        return ResizePhase::Resizing;
    };
    let settled = matches!(
        (inst.power, s.state),
        (PowerState::Running, InstanceState::Running)
            | (PowerState::Stopped, InstanceState::Stopped)
    );
    if settled && sized(s) {
        ResizePhase::Verify
    } else {
        ResizePhase::Resizing
    }
}

/// The three steps of a resize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Resize to this flavor.
    Resize(FlavorName),
    /// Keep the new size.
    Confirm,
    /// Put the old size back.
    Revert,
}

impl Step {
    /// The instance action recorded (Nova's names).
    fn action(&self) -> &'static str {
        match self {
            Step::Resize(_) => "resize",
            Step::Confirm => "confirmResize",
            Step::Revert => "revertResize",
        }
    }
}

/// The spec after confirming or reverting `inst`'s pending resize
/// (FailedPrecondition when none is pending). Pure.
pub fn finish(inst: &Instance, revert: bool) -> ApiResult<Instance> {
    let Some(r) = &inst.resize else {
        return Err(ApiError::FailedPrecondition(format!(
            "server {:?} has no resize to {}",
            inst.name,
            if revert { "revert" } else { "confirm" }
        )));
    };
    let mut next = inst.clone();
    if revert {
        next.flavor = r.old_flavor.clone();
        next.resources = r.old_resources;
        next.power = r.old_power;
    }
    next.resize = None;
    Ok(next)
}

/// A resize step as a job of the placement engine: the change of
/// reservation is made on the server's own node.
struct ResizeJob<'a> {
    ctx: &'a Ctx,
    project: ProjectId,
    server: &'a str,
    step: Step,
    /// What this attempt read.
    read: Option<ResizeRead>,
}

struct ResizeRead {
    inst: Versioned<Instance>,
    node: NodeName,
    capacity: Resources,
    /// The flavor shown in errors.
    flavor: FlavorName,
    /// What the server holds on its node before and after.
    before: Resources,
    after: Resources,
    /// The project's quota usage: its revision and the value to write.
    quota: Option<(i64, QuotaUsage)>,
    /// The spec written.
    next: Instance,
}

impl ResizeJob<'_> {
    /// The spec after this step and the flavor it is about.
    async fn next_spec(&self, i: &Instance) -> ApiResult<(Instance, FlavorName)> {
        let ctx = self.ctx;
        match &self.step {
            Step::Resize(name) => {
                let flavor = ctx
                    .store
                    .read::<Flavor>(&keys::flavor(name))
                    .await?
                    .ok_or_else(|| {
                        ApiError::NotFound(format!("flavor {:?} not found", name.as_str()))
                    })?
                    .value;
                super::flavors::ensure_usable(&flavor, &i.project)?;
                super::migrations::ensure_not_migrating(ctx, i).await?;
                let image = ctx.store.read::<Image>(&keys::image(&i.image)).await?;
                let new = resize_to(
                    i,
                    &flavor,
                    image
                        .as_ref()
                        .map(|im| (im.value.min_ram_mb, im.value.min_disk_gb)),
                )?;
                let mut next = i.clone();
                next.flavor = flavor.name.clone();
                next.resources = new;
                next.resize = Some(PendingResize {
                    old_flavor: i.flavor.clone(),
                    old_resources: i.resources,
                    old_power: i.power,
                    at: nubo_common::model::now(),
                });
                Ok((next, flavor.name))
            }
            Step::Confirm => Ok((finish(i, false)?, i.flavor.clone())),
            Step::Revert => {
                let next = finish(i, true)?;
                let f = next.flavor.clone();
                Ok((next, f))
            }
        }
    }
}

impl Job for ResizeJob<'_> {
    type Output = ServerView;

    async fn prepare(&mut self) -> ApiResult<Option<ServerView>> {
        let ctx = self.ctx;
        let inst = super::lookup::server(ctx, &self.project, self.server).await?;
        let i = &inst.value;
        super::servers::ensure_unlocked(i)?;
        let Some(node) = i.node.clone() else {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} is not placed on a node",
                i.name
            )));
        };
        let (next, flavor) = self.next_spec(i).await?;
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
        let (before, after) = (i.reserved(), next.reserved());
        let quota = if super::quotas::enforced(ctx) {
            let (qu, qrev) = super::quotas::usage(ctx, &i.project).await?;
            let without = qu.saturating_sub(&quota_delta(&before));
            let with = if matches!(self.step, Step::Resize(_)) {
                let limit = super::quotas::limit(ctx, &i.project).await?;
                nubo_identity::check_quota(&i.project, &limit, &without, &quota_delta(&after))
                    .map_err(|e| ApiError::ResourceExhausted(e.to_string()))?
            } else {
                // Confirm and revert only give back.
                without.saturating_add(&quota_delta(&after))
            };
            Some((qrev, with))
        } else {
            None
        };
        same_disk(i, &next)?;
        self.read = Some(ResizeRead {
            inst,
            node,
            capacity,
            flavor,
            before,
            after,
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
        if matches!(self.step, Step::Resize(_)) {
            check_fits(
                i,
                &r.flavor,
                r.before,
                r.after,
                r.capacity,
                used,
                self.ctx.placement.ratios(),
            )?;
        }
        let ikey = keys::instance(&i.id);
        t.unchanged(&ikey, r.inst.mod_rev);
        t.absent(&keys::instance_migration(&i.id));
        super::specs::put_into(t, &r.next);
        super::instance_actions::record_into(t, &r.next, self.step.action());
        if let Some((qrev, with)) = &r.quota {
            super::quotas::reserve(t, &i.project, *qrev, with);
        }
        Ok(Reservation {
            usage: NodeUsage {
                used: used.saturating_sub(r.before).saturating_add(r.after),
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
        tracing::info!(instance = %r.next.id, node = %r.node, step = self.step.action(), flavor = %r.next.flavor, vcpus = r.next.resources.vcpus, ram_mb = r.next.resources.ram_mb, "server resize step");
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

/// Runs one resize step on server `server` of `project` (see the module
/// docs).
pub async fn run(
    ctx: &Ctx,
    project: &ProjectId,
    server: &str,
    step: Step,
) -> ApiResult<ServerView> {
    let mut job = ResizeJob {
        ctx,
        project: project.clone(),
        server,
        step,
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

/// Resizes server `server` of `project` to flavor `flavor`, pending
/// confirm or revert (see the module docs).
pub async fn resize(
    ctx: &Ctx,
    project: &ProjectId,
    server: &str,
    flavor: &str,
) -> ApiResult<ServerView> {
    let flavor = FlavorName::new(flavor.trim())
        .map_err(|e| ApiError::InvalidArgument(format!("flavor: {e}")))?;
    run(ctx, project, server, Step::Resize(flavor)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::model::PowerState;
    use nubo_common::InstanceId;

    fn res(vcpus: u32, ram_mb: u64, disk_gb: u64) -> Resources {
        Resources {
            vcpus,
            ram_mb,
            disk_gb,
        }
    }

    fn fixture() -> (Instance, Flavor) {
        let inst: Instance = serde_json::from_value(serde_json::json!({
            "id": InstanceId::new_random(),
            "name": "web",
            "project": "p1",
            "flavor": "small",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "image": nubo_common::ImageId::new_random(),
            "ports": [],
            "power": "running",
            "node": "hv-1",
            "created_at": nubo_common::model::now(),
        }))
        .unwrap();
        let flavor: Flavor = serde_json::from_value(serde_json::json!({
            "name": "big",
            "resources": {"vcpus": 2, "ram_mb": 256, "disk_gb": 1},
            "created_at": nubo_common::model::now(),
        }))
        .unwrap();
        (inst, flavor)
    }

    const RATIOS: Ratios = Ratios {
        cpu: 1.0,
        ram: 1.0,
        disk: 1.0,
    };

    /// `inst` after a resize to `flavor` (as `next_spec` builds it).
    fn resized(inst: &Instance, flavor: &Flavor) -> Instance {
        let mut next = inst.clone();
        next.flavor = flavor.name.clone();
        next.resources = resize_to(inst, flavor, None).unwrap();
        next.resize = Some(PendingResize {
            old_flavor: inst.flavor.clone(),
            old_resources: inst.resources,
            old_power: inst.power,
            at: nubo_common::model::now(),
        });
        next
    }

    #[test]
    fn running_and_stopped_servers_resize_and_hold_the_larger_size_until_confirmed() {
        let (mut inst, big) = fixture();
        for power in [PowerState::Running, PowerState::Stopped] {
            inst.power = power;
            let next = resized(&inst, &big);
            assert_eq!(next.resources, res(2, 256, 1));
            assert_eq!(next.power, power, "the desired power is kept");
            // Growing: the node holds the new size.
            assert_eq!(next.reserved(), res(2, 256, 1));
            // Confirm keeps the new size, revert puts the old one back.
            let confirmed = finish(&next, false).unwrap();
            assert_eq!(
                (confirmed.flavor.as_str(), confirmed.resources),
                ("big", res(2, 256, 1))
            );
            assert!(confirmed.resize.is_none());
            let reverted = finish(&next, true).unwrap();
            assert_eq!(
                (reverted.flavor.as_str(), reverted.resources),
                ("small", res(1, 128, 1))
            );
            assert_eq!(reverted.power, power);
            assert!(reverted.resize.is_none());
        }
        // Mixed (more vCPUs, less RAM): the larger of each while pending.
        let mut mixed = big.clone();
        mixed.resources = res(2, 64, 1);
        assert_eq!(resized(&inst, &mixed).reserved(), res(2, 128, 1));
        // A revert restores the power of the time of the resize.
        let mut next = resized(&inst, &big);
        next.power = PowerState::Running;
        assert_eq!(finish(&next, true).unwrap().power, inst.power);
    }

    #[test]
    fn fits_counts_what_the_server_holds_and_names_the_node() {
        let (inst, big) = fixture();
        let fits = |cap: Resources, used: Resources| {
            check_fits(
                &inst,
                &big.name,
                inst.reserved(),
                big.resources,
                cap,
                used,
                &RATIOS,
            )
        };
        // 4 vCPUs / 512 MiB, this server holds 1 / 128 of the 3 / 384 used.
        assert!(fits(res(4, 512, 10), res(3, 384, 3)).is_ok());
        // Full node: 1 vCPU and 128 MiB free besides this server's.
        let e = fits(res(4, 300, 10), res(4, 300, 1)).unwrap_err();
        assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e}");
        assert!(
            e.to_string().contains("node hv-1 cannot hold flavor big"),
            "{e}"
        );
        assert!(e.to_string().contains("1 vCPUs and 128 MiB free"), "{e}");
    }

    #[test]
    fn refused_for_the_same_flavor_another_disk_a_small_image_or_a_pending_resize() {
        let (inst, big) = fixture();
        let mut same = big.clone();
        same.name = inst.flavor.clone();
        let e = resize_to(&inst, &same, None).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        let mut other_disk = big.clone();
        other_disk.resources.disk_gb = 2;
        let e = same_disk(&inst, &resized(&inst, &other_disk)).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("2 GiB disk"), "{e}");
        assert!(same_disk(&inst, &resized(&inst, &big)).is_ok());
        let e = resize_to(&inst, &big, Some((512, 0))).unwrap_err();
        assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
        // Positive control: the same flavor and image limits pass.
        assert!(resize_to(&inst, &big, Some((256, 0))).is_ok());
        // Pending: no second resize; nothing to confirm or revert without one.
        let next = resized(&inst, &big);
        let e = resize_to(&next, &same, None).unwrap_err();
        assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("--confirm|--revert"), "{e}");
        for revert in [false, true] {
            let e = finish(&inst, revert).unwrap_err();
            assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e}");
        }
    }
    #[test]
    fn phase_follows_the_size_and_power_the_agent_reports() {
        let (inst, big) = fixture();
        let st = |node: &str, state: InstanceState, size: Option<(u32, u64)>| InstanceStatus {
            state,
            node: node.parse().unwrap(),
            updated_at: nubo_common::model::now(),
            last_error: None,
            reboot_generation: 0,
            volumes: Vec::new(),
            size: size.map(|(vcpus, ram_mb)| GuestSize { vcpus, ram_mb }),
        };
        let old = Some((1, 128));
        let new = Some((2, 256));
        // No resize pending: no phase, whatever is reported.
        assert_eq!(
            phase(&inst, Some(&st("hv-1", InstanceState::Running, old))),
            ResizePhase::None
        );
        let mut next = resized(&inst, &big);
        // Not reported yet, the old size, shut down for the redefinition,
        // redefined but not booted again, another node's report: resizing.
        for s in [
            None,
            Some(st("hv-1", InstanceState::Running, old)),
            Some(st("hv-1", InstanceState::Stopped, old)),
            Some(st("hv-1", InstanceState::Stopped, new)),
            Some(st("hv-1", InstanceState::Pending, None)),
            Some(st("hv-2", InstanceState::Running, new)),
        ] {
            assert_eq!(phase(&next, s.as_ref()), ResizePhase::Resizing, "{s:?}");
        }
        // Applied and running again: verify.
        let done = st("hv-1", InstanceState::Running, new);
        assert_eq!(phase(&next, Some(&done)), ResizePhase::Verify);
        assert_eq!(ResizePhase::Verify.as_str(), "verify");
        // A stopped server: verify once stopped with the new size.
        next.power = PowerState::Stopped;
        assert_eq!(phase(&next, Some(&done)), ResizePhase::Resizing);
        assert_eq!(
            phase(&next, Some(&st("hv-1", InstanceState::Stopped, new))),
            ResizePhase::Verify
        );
        // A driver that reports no size: applied once settled.
        assert_eq!(
            phase(&next, Some(&st("hv-1", InstanceState::Stopped, None))),
            ResizePhase::Verify
        );
        // Reverted: the old size in the spec, the new one on the guest
        // until the agent has redefined it; another node's report, a
        // driver without sizes: no phase.
        let reverted = finish(&next, true).unwrap();
        for (s, want) in [
            (
                st("hv-1", InstanceState::Running, new),
                ResizePhase::Reverting,
            ),
            (
                st("hv-1", InstanceState::Stopped, new),
                ResizePhase::Reverting,
            ),
            (st("hv-1", InstanceState::Stopped, old), ResizePhase::None),
            (st("hv-1", InstanceState::Running, old), ResizePhase::None),
            (st("hv-2", InstanceState::Running, new), ResizePhase::None),
            (st("hv-1", InstanceState::Running, None), ResizePhase::None),
        ] {
            assert_eq!(phase(&reverted, Some(&s)), want, "{s:?}");
        }
        assert_eq!(ResizePhase::Reverting.as_str(), "reverting");
    }
}
