//! Migrations: moving a server to another node while it runs (live) or
//! stopped (cold), cloud admin only. The protocol between the leader and
//! the two agents is in `nubo_common::model::migration` and
//! `docs/migration.md`.
//!
//! - [`migrate`]: checks the request, picks the destination with THE
//!   placement engine (the scheduler, or `host` checked by the same
//!   filters) and reserves it in ONE transaction with the [`Migration`]
//!   (state `preparing`), the order to the destination and the instance's
//!   migration index (`private/instance-migrations/<instance>`: one
//!   migration per instance; evacuation and drain leave it alone);
//! - [`machine`]: the pure state machine the leader's loop
//!   (`background::migrations`) drives every migration with;
//! - [`apply`]: the guarded transactions a decision implies (advance, the
//!   switch, the rollback);
//! - [`get`], [`list`], [`abort`], [`wait`]: what operators see and do.

pub(crate) mod apply;
pub mod machine;

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::GetOptions;
use nubo_common::keys;
use nubo_common::model::{
    self, IncomingMigration, Instance, InstanceState, InstanceStatus, Migration, MigrationMode,
    MigrationReport, MigrationState, NodeUsage, PowerState, ServerGroupPolicy,
};
use nubo_common::{InstanceId, MigrationId, NodeName, ProjectId, ServerGroupId};
use nubo_store::kv::{decode_kv, decode_or_skip};
use nubo_store::{Answer, TxnBuilder, Versioned};
use tracing::Instrument;

use super::{Page, PageRequest};
use crate::error::{ApiError, ApiResult};
use crate::placement::{
    scheduler, Chosen, GroupConstraint, Job, Limits, Request as PlaceRequest, Reservation, Retry,
    Target,
};
use crate::state::Ctx;

/// Transactions tried for one migration request (contention).
const ATTEMPTS: usize = 16;

/// Best candidates among which the destination is chosen at random.
const TOP_K: usize = 8;

/// A migration request.
#[derive(Debug, Clone)]
pub struct NewMigration {
    /// The server's project.
    pub project: ProjectId,
    /// The server: id or name.
    pub server: String,
    /// Live (keeps running) or cold.
    pub live: bool,
    /// The destination; `None`: the scheduler chooses.
    pub host: Option<String>,
}

/// A migration as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationView {
    /// The record.
    pub migration: Migration,
    /// The state shown (`switching` while a completed move awaits its
    /// switch, see [`machine::shown_state`]).
    pub state: MigrationState,
    /// The server's name and project (empty when it is gone).
    pub server_name: String,
    /// The server's project.
    pub project: Option<ProjectId>,
    /// The source agent's last report.
    pub source_report: Option<MigrationReport>,
    /// The destination agent's last report.
    pub destination_report: Option<MigrationReport>,
}

/// Refuses callers that are not cloud admins (with `auth = "none"`
/// everyone is).
fn admin_only() -> ApiResult<()> {
    if crate::caller::is_cloud_admin() {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(
            "migrating servers is for cloud admins".into(),
        ))
    }
}

/// The active migration of instance `id`, if any (its index).
pub(crate) async fn active_of(ctx: &Ctx, id: &InstanceId) -> ApiResult<Option<MigrationId>> {
    let Some(kv) = ctx.store.get_kv(&keys::instance_migration(id)).await? else {
        return Ok(None);
    };
    match decode_kv::<MigrationId>(&kv) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(instance = %id, error = %e, "unreadable migration index");
            Err(ApiError::FailedPrecondition(format!(
                "server {id} has an unreadable migration index ({e}); see docs/migration.md"
            )))
        }
    }
}

/// FailedPrecondition while instance `inst` is being migrated: what
/// operations that would disturb a migration (delete, power changes) call
/// before they act; their transactions also compare the index absent.
pub(crate) async fn ensure_not_migrating(ctx: &Ctx, inst: &Instance) -> ApiResult<()> {
    match active_of(ctx, &inst.id).await? {
        None => Ok(()),
        Some(m) => Err(ApiError::FailedPrecondition(format!(
            "server {:?} is being migrated (migration {m}); wait for it or abort it \
             (nubo server migration abort {m})",
            inst.name
        ))),
    }
}

/// Whether `inst` (with its source's reported `status`) may be migrated
/// in `mode`: not in error, and for a live migration desired and reported
/// running. Pure.
pub fn check_movable(
    inst: &Instance,
    status: Option<&InstanceStatus>,
    mode: MigrationMode,
) -> ApiResult<NodeName> {
    let name = &inst.name;
    let Some(source) = inst.node.clone() else {
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} is not placed on a node yet"
        )));
    };
    if let Some(r) = &inst.resize {
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} has a resize from flavor {} waiting; confirm or revert it \
             (nubo server resize {name} --confirm|--revert) before migrating",
            r.old_flavor
        )));
    }
    let state = status.filter(|s| s.node == source).map(|s| s.state);
    if state == Some(InstanceState::Error) {
        let why = status
            .and_then(|s| s.last_error.clone())
            .unwrap_or_default();
        return Err(ApiError::FailedPrecondition(format!(
            "server {name:?} is in error ({why}); repair it (stop/start, or delete) before migrating"
        )));
    }
    match mode {
        MigrationMode::Live => {
            if inst.power != PowerState::Running || state != Some(InstanceState::Running) {
                let shown = state.map_or("unknown", |s| s.as_str());
                return Err(ApiError::FailedPrecondition(format!(
                    "server {name:?} is not running (state {shown}): a live migration needs a \
                     running server; use a cold migration (without --live)"
                )));
            }
        }
        MigrationMode::Cold => {
            if !matches!(state, Some(InstanceState::Running | InstanceState::Stopped)) {
                let shown = state.map_or("unknown", |s| s.as_str());
                return Err(ApiError::FailedPrecondition(format!(
                    "server {name:?} is {shown}: only a running or stopped server can be migrated"
                )));
            }
        }
    }
    Ok(source)
}

/// What one attempt of a migration request read.
struct MigrateRead {
    inst: Instance,
    inst_rev: i64,
    source: NodeName,
    assignment_rev: i64,
    status_rev: i64,
    group: Option<(ServerGroupId, HashSet<NodeName>, i64)>,
    policy: Option<ServerGroupPolicy>,
}

/// A migration request as a job of the placement engine.
struct MigrateJob<'a> {
    ctx: &'a Ctx,
    id: InstanceId,
    mode: MigrationMode,
    host: Option<NodeName>,
    read: Option<MigrateRead>,
    record: Option<Migration>,
}

impl MigrateJob<'_> {
    fn request<'r>(&self, r: &'r MigrateRead) -> PlaceRequest<'r> {
        PlaceRequest {
            resources: r.inst.resources,
            availability_zone: r.inst.availability_zone.as_deref(),
            group: match (&r.group, r.policy) {
                (Some((_, m, _)), Some(policy)) => Some(GroupConstraint {
                    policy,
                    member_nodes: m,
                }),
                _ => None,
            },
            // Hints apply at creation only (nubo keeps none).
            hosts: Default::default(),
        }
    }

    /// The scheduler's filters applied to the one node an operator named,
    /// with the usage this attempt reserves against.
    fn check_host(&self, r: &MigrateRead, at: &Chosen) -> ApiResult<()> {
        let node = &at.node;
        let Some(mut st) = self.ctx.view.get(node) else {
            return Err(ApiError::NotFound(format!("node {node} not found")));
        };
        st.usage = at.usage.clone();
        let req = self.request(r);
        let ratios = self.ctx.placement.ratios();
        let one = std::iter::once((node, &st));
        match scheduler::candidates(
            one,
            &req,
            ratios,
            self.ctx.cfg.placement,
            &HashSet::new(),
            1,
        ) {
            Ok(_) => Ok(()),
            Err(rej) if rej.dead > 0 => Err(ApiError::FailedPrecondition(format!(
                "node {node} is down or fenced: it cannot receive server {:?}",
                r.inst.name
            ))),
            Err(rej) if rej.disabled > 0 => Err(ApiError::FailedPrecondition(format!(
                "node {node} is disabled ({}): enable it first (nubo node enable {node})",
                st.admin.reason.as_deref().unwrap_or("no reason given")
            ))),
            Err(rej) if rej.capacity > 0 => Err(ApiError::ResourceExhausted(format!(
                "node {node} has no room for server {:?}: {}",
                r.inst.name,
                rej.explain(&req)
            ))),
            Err(rej) => Err(ApiError::FailedPrecondition(format!(
                "node {node} cannot take server {:?}: {}",
                r.inst.name,
                rej.explain(&req)
            ))),
        }
    }
}

impl Job for MigrateJob<'_> {
    type Output = Migration;

    async fn prepare(&mut self) -> ApiResult<Option<Migration>> {
        let (ctx, id) = (self.ctx, self.id);
        let Some(spec) = ctx.store.read::<Instance>(&keys::instance(&id)).await? else {
            return Err(ApiError::NotFound(format!("server {id} not found")));
        };
        let inst = spec.value;
        if let Some(m) = active_of(ctx, &id).await? {
            return Err(ApiError::FailedPrecondition(format!(
                "server {:?} is already being migrated (migration {m}); wait for it or abort it \
                 (nubo server migration abort {m})",
                inst.name
            )));
        }
        let status = match &inst.node {
            Some(n) => {
                ctx.store
                    .read::<InstanceStatus>(&keys::instance_status(n, &id))
                    .await?
            }
            None => None,
        };
        let source = check_movable(&inst, status.as_ref().map(|s| &s.value), self.mode)?;
        if self.host.as_ref() == Some(&source) {
            return Err(ApiError::InvalidArgument(format!(
                "server {:?} already runs on {source}: choose another node",
                inst.name
            )));
        }
        // The source's agent runs the hypervisor's job: it must be up.
        if !ctx
            .view
            .get(&source)
            .is_some_and(|s| s.alive && !s.fenced())
        {
            return Err(ApiError::FailedPrecondition(format!(
                "the source node {source} is down: its servers can only be evacuated \
                 (nubo node evacuate {source})"
            )));
        }
        let Some(akv) = ctx.store.get_kv(&keys::assignment(&source, &id)).await? else {
            return Err(ApiError::Unavailable(format!(
                "server {:?} is moving; retry",
                inst.name
            )));
        };
        let (group, policy) = super::moves::group_of(ctx, &inst, &source).await?;
        self.read = Some(MigrateRead {
            inst_rev: spec.mod_rev,
            assignment_rev: akv.mod_revision(),
            status_rev: status.map_or(0, |s| s.mod_rev),
            inst,
            source,
            group,
            policy,
        });
        Ok(None)
    }

    fn target(&self) -> ApiResult<Target<'_>> {
        let Some(r) = &self.read else {
            return Err(ApiError::Unavailable("migration without a reading".into()));
        };
        Ok(match &self.host {
            Some(h) => Target::Node(h),
            None => Target::Scheduled {
                request: self.request(r),
                avoid: Some(&r.source),
            },
        })
    }

    fn build(&mut self, at: &Chosen, t: &mut TxnBuilder) -> ApiResult<Reservation> {
        let Some(r) = &self.read else {
            return Err(ApiError::Unavailable("migration without a reading".into()));
        };
        if at.node == r.source {
            return Err(ApiError::Unavailable(
                "the scheduler chose the source node".into(),
            ));
        }
        if self.host.is_some() {
            self.check_host(r, at)?;
        }
        let id = r.inst.id;
        let now = model::now();
        let m = Migration {
            id: MigrationId::new_random(),
            instance: id,
            source: r.source.clone(),
            destination: at.node.clone(),
            mode: self.mode,
            // Shared storage (RBD) unless the node's local backend holds
            // the root disk: the agents decide; block stays false here.
            block: false,
            state: MigrationState::Preparing,
            error: None,
            downtime_ms: None,
            postcopy: false,
            created_at: now,
            updated_at: now,
        };
        let mut spec = r.inst.clone();
        spec.node = Some(at.node.clone());
        let incoming = IncomingMigration {
            migration: m.id,
            source: r.source.clone(),
            mode: self.mode,
            spec,
        };
        let index = keys::instance_migration(&id);
        t.unchanged(&keys::instance(&id), r.inst_rev);
        t.unchanged(&keys::assignment(&r.source, &id), r.assignment_rev);
        t.unchanged(&keys::instance_status(&r.source, &id), r.status_rev);
        t.absent(&index);
        if let Some((g, _, rev)) = &r.group {
            t.prefix_unchanged_since(&keys::server_group_members_prefix(g), *rev);
        }
        t.put(&keys::migration(&m.id), &m);
        t.put(&index, &m.id);
        t.put(&keys::node_incoming(&at.node, &id), &incoming);
        let bytes = 8192 + r.inst.user_data_b64.as_ref().map_or(0, String::len);
        self.record = Some(m);
        Ok(Reservation {
            usage: NodeUsage {
                used: at.usage.used.saturating_add(r.inst.resources),
                instances: at.usage.instances.saturating_add(1),
            },
            contended: vec![index],
            mergeable: false,
            bytes,
        })
    }

    async fn committed(&mut self, at: &Chosen, _revision: i64) -> ApiResult<Migration> {
        let Some(m) = self.record.take() else {
            return Err(ApiError::Unavailable("migration without a record".into()));
        };
        tracing::info!(instance = %m.instance, migration = %m.id, source = %m.source, destination = %at.node, mode = ?m.mode, "migration started: destination reserved");
        Ok(m)
    }

    fn failed(&mut self, _at: &Chosen, _a: &Answer, _lost: bool) -> ApiResult<Retry<Migration>> {
        // Read again: the server may have moved, or another migration won.
        Ok(Retry::Again)
    }

    fn contention(&self) -> ApiError {
        ApiError::Unavailable(format!(
            "server {} or its nodes changed concurrently too often; retry",
            self.id
        ))
    }
}

/// Starts migrating a server (module docs); answers with the record in
/// state `preparing`: the leader drives it from there.
pub async fn migrate(ctx: &Ctx, req: NewMigration) -> ApiResult<Migration> {
    admin_only()?;
    let inst = super::lookup::server(ctx, &req.project, &req.server).await?;
    let host = match req.host.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) => {
            let n = NodeName::new(h).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
            // A bad argument of an existing server's migration (400, as
            // Nova's "Compute host … could not be found"), not a missing
            // resource.
            if ctx.view.get(&n).and_then(|s| s.info).is_none() {
                return Err(ApiError::InvalidArgument(format!(
                    "destination host {:?} is not a node of this cloud (nubo node list)",
                    n.as_str()
                )));
            }
            Some(n)
        }
    };
    let mode = if req.live {
        MigrationMode::Live
    } else {
        MigrationMode::Cold
    };
    let id = inst.value.id;
    let span = tracing::info_span!("migrate", instance = %id, host = ?host, ?mode);
    let mut job = MigrateJob {
        ctx,
        id,
        mode,
        host,
        read: None,
        record: None,
    };
    ctx.placement
        .place(
            &mut job,
            Limits {
                attempts: ATTEMPTS,
                rounds: ATTEMPTS,
                top_k: TOP_K,
            },
        )
        .instrument(span)
        .await
}

/// The view of `m`: the record read again with its server and both
/// reports in one transaction (one revision), so that a switch committed
/// between the caller's read and this one cannot show the record's old
/// state without the report that explains it (`m` stays when the record
/// was deleted meanwhile).
async fn render(ctx: &Ctx, m: Migration) -> ApiResult<MigrationView> {
    let got = ctx
        .store
        .get_many(&[
            keys::migration(&m.id),
            keys::instance(&m.instance),
            keys::node_migration_report(&m.source, &m.id),
            keys::node_migration_report(&m.destination, &m.id),
        ])
        .await?;
    let m = got[0]
        .as_ref()
        .and_then(decode_or_skip::<Migration>)
        .filter(|now| now.id == m.id)
        .unwrap_or(m);
    let inst = got[1].as_ref().and_then(decode_or_skip::<Instance>);
    let source_report = got[2].as_ref().and_then(decode_or_skip::<MigrationReport>);
    let destination_report = got[3].as_ref().and_then(decode_or_skip::<MigrationReport>);
    Ok(MigrationView {
        state: machine::shown_state(&m, source_report.as_ref()),
        server_name: inst.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
        project: inst.map(|i| i.project),
        migration: m,
        source_report,
        destination_report,
    })
}

fn migration_id(r: &str) -> ApiResult<MigrationId> {
    r.trim()
        .parse()
        .map_err(|_| ApiError::InvalidArgument(format!("{r:?} is not a migration id")))
}

async fn read(ctx: &Ctx, id: &MigrationId) -> ApiResult<Versioned<Migration>> {
    ctx.store
        .read::<Migration>(&keys::migration(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("migration {id} not found")))
}

/// Migration `r` (its id).
pub async fn get(ctx: &Ctx, r: &str) -> ApiResult<MigrationView> {
    admin_only()?;
    let m = read(ctx, &migration_id(r)?).await?;
    render(ctx, m.value).await
}

/// Which migrations a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListMigrations {
    /// Only this server's (resolved in `project`).
    pub server: Option<String>,
    /// The project `server` is resolved in.
    pub project: Option<ProjectId>,
    /// Only those not over yet.
    pub active_only: bool,
    /// The page.
    pub page: PageRequest,
}

/// The migrations, newest first.
pub async fn list(ctx: &Ctx, l: &ListMigrations) -> ApiResult<Page<MigrationView>> {
    admin_only()?;
    let server = match (&l.server, &l.project) {
        (Some(s), Some(p)) if !s.trim().is_empty() => {
            Some(super::lookup::server(ctx, p, s).await?.value.id)
        }
        _ => None,
    };
    let resp = ctx
        .store
        .get(
            keys::migrations_prefix(),
            Some(GetOptions::new().with_prefix()),
        )
        .await?;
    let mut all: Vec<Migration> = resp
        .kvs()
        .iter()
        .filter_map(decode_or_skip::<Migration>)
        .filter(|m| server.is_none_or(|s| m.instance == s))
        .filter(|m| !l.active_only || !m.state.is_final())
        .collect();
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let size = crate::paging::page_size_of(l.page.size)?;
    let start = match crate::paging::decode_token(&l.page.token, &keys::migrations_prefix())? {
        Some(raw) => String::from_utf8_lossy(&raw)
            .parse::<usize>()
            .map_err(|_| {
                ApiError::InvalidArgument("page_token is not valid for this list".into())
            })?,
        None => 0,
    };
    let end = start.saturating_add(size).min(all.len());
    let next = if end < all.len() {
        crate::paging::encode_token(end.to_string().as_bytes())
    } else {
        String::new()
    };
    let mut items = Vec::new();
    for m in all.into_iter().skip(start).take(end.saturating_sub(start)) {
        items.push(render(ctx, m).await?);
    }
    Ok(Page { items, next })
}

/// Asks migration `r` to stop (see `docs/migration.md`): the record goes
/// to `aborting`; the leader asks the source to stop the job and rolls
/// back once it confirms. A migration whose guest already moved completes.
pub async fn abort(ctx: &Ctx, r: &str) -> ApiResult<MigrationView> {
    admin_only()?;
    let id = migration_id(r)?;
    for _ in 0..16 {
        let m = read(ctx, &id).await?;
        match m.value.state {
            s if s.is_final() => {
                return Err(ApiError::FailedPrecondition(format!(
                    "migration {id} is already over ({})",
                    state_str(s)
                )))
            }
            MigrationState::Aborting => return render(ctx, m.value).await,
            _ => {}
        }
        let by = crate::caller::caller_name()
            .map(|u| format!(" ({u})"))
            .unwrap_or_default();
        let next = Migration {
            state: MigrationState::Aborting,
            error: Some(format!("aborted by an operator{by}")),
            updated_at: model::now(),
            ..m.value.clone()
        };
        let mut t = TxnBuilder::new();
        t.unchanged(&keys::migration(&id), m.mod_rev);
        t.put(&keys::migration(&id), &next);
        if ctx.store.commit(&t).await?.succeeded() {
            tracing::info!(migration = %id, instance = %next.instance, "migration abort requested");
            return render(ctx, next).await;
        }
    }
    Err(ApiError::Unavailable(format!(
        "migration {id} changed concurrently too often; retry"
    )))
}

/// Waits until migration `id` is over (or `timeout` passed: Unavailable);
/// polls etcd every 100 ms.
pub async fn wait(ctx: &Ctx, id: &MigrationId, timeout: Duration) -> ApiResult<Migration> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = read(ctx, id).await?.value;
        if m.state.is_final() {
            return Ok(m);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "migration {id} is still {} after {} s",
                state_str(m.state),
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API name of a state.
pub fn state_str(s: MigrationState) -> &'static str {
    match s {
        MigrationState::Preparing => "preparing",
        MigrationState::Migrating => "migrating",
        MigrationState::Switching => "switching",
        MigrationState::Completed => "completed",
        MigrationState::Aborting => "aborting",
        MigrationState::Aborted => "aborted",
        MigrationState::Failed => "failed",
    }
}

/// The API name of a mode.
pub fn mode_str(m: MigrationMode) -> &'static str {
    match m {
        MigrationMode::Live => "live",
        MigrationMode::Cold => "cold",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(power: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": InstanceId::new_random(),
            "name": "web",
            "project": "p1",
            "flavor": "small",
            "resources": {"vcpus": 1, "ram_mb": 128, "disk_gb": 1},
            "image": nubo_common::ImageId::new_random(),
            "ports": [],
            "power": power,
            "node": "hv-1",
            "created_at": model::now(),
        }))
        .unwrap()
    }

    fn status(state: &str, node: &str) -> InstanceStatus {
        serde_json::from_value(serde_json::json!({
            "state": state,
            "node": node,
            "updated_at": model::now(),
            "last_error": "disk gone",
        }))
        .unwrap()
    }

    #[test]
    fn live_needs_a_running_server_and_nothing_in_error_moves() {
        let hv1 = NodeName::new("hv-1").unwrap();
        let running = status("running", "hv-1");
        assert_eq!(
            check_movable(&inst("running"), Some(&running), MigrationMode::Live).unwrap(),
            hv1
        );
        assert_eq!(
            check_movable(&inst("running"), Some(&running), MigrationMode::Cold).unwrap(),
            hv1
        );
        let stopped = status("stopped", "hv-1");
        let e = check_movable(&inst("stopped"), Some(&stopped), MigrationMode::Live).unwrap_err();
        assert!(e.to_string().contains("not running (state stopped)"), "{e}");
        assert!(check_movable(&inst("stopped"), Some(&stopped), MigrationMode::Cold).is_ok());
        let error = status("error", "hv-1");
        for mode in [MigrationMode::Live, MigrationMode::Cold] {
            let e = check_movable(&inst("running"), Some(&error), mode).unwrap_err();
            assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e}");
            assert!(e.to_string().contains("in error (disk gone)"), "{e}");
        }
        // A status reported by another node does not count.
        let elsewhere = status("running", "hv-2");
        assert!(check_movable(&inst("running"), Some(&elsewhere), MigrationMode::Live).is_err());
        assert!(check_movable(&inst("running"), None, MigrationMode::Cold).is_err());
        let mut unplaced = inst("running");
        unplaced.node = None;
        let e = check_movable(&unplaced, Some(&running), MigrationMode::Live).unwrap_err();
        assert!(e.to_string().contains("not placed"), "{e}");
    }
}
