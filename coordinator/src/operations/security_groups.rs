//! Security groups: their rules, and the project's `default` group made on
//! first use.

use etcd_client::{KeyValue, Txn};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{self, Port, QuotaUsage, SecurityGroup, SecurityGroupRule};
use nubo_common::{PortId, ProjectId, SecurityGroupId};
use nubo_store::kv::{absent, decode_or_skip, put, unchanged};
use nubo_store::{TxnBuilder, Versioned};

use super::{Page, PageRequest, Scope};
use crate::error::{ApiError, ApiResult};
use crate::state::Ctx;
use crate::validate;

/// The project's "default" security group, created on first use.
pub(crate) async fn default_secgroup(ctx: &Ctx, project: &ProjectId) -> ApiResult<SecurityGroupId> {
    let idx = keys::name_index(NameKind::SecurityGroup, project, "default");
    for _ in 0..5 {
        if let Some(id) = ctx.store.read::<SecurityGroupId>(&idx).await? {
            return Ok(id.value);
        }
        let id = SecurityGroupId::new_random();
        let sg = SecurityGroup {
            id,
            name: "default".into(),
            project: project.clone(),
            description: "Default security group".into(),
            rules: SecurityGroup::default_rules(id),
            created_at: model::now(),
        };
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([absent(&idx)])
                    .and_then([put(&idx, &id), put(&keys::secgroup(&id), &sg)]),
            )
            .await?;
        if resp.succeeded() {
            tracing::info!(project = %project, secgroup = %id, "created the default security group");
            return Ok(id);
        }
    }
    Err(ApiError::Unavailable(
        "could not create the default security group; retry".into(),
    ))
}

/// Resolves security group refs (empty = the project's default group).
pub(crate) async fn secgroups(
    ctx: &Ctx,
    project: &ProjectId,
    refs: &[String],
) -> ApiResult<Vec<SecurityGroupId>> {
    if refs.is_empty() {
        return Ok(vec![default_secgroup(ctx, project).await?]);
    }
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let g: Versioned<SecurityGroup> =
            super::lookup::resolve(ctx, NameKind::SecurityGroup, project, r, |u| {
                keys::secgroup(&SecurityGroupId::from_uuid(u))
            })
            .await?;
        if !out.contains(&g.value.id) {
            out.push(g.value.id);
        }
    }
    Ok(out)
}

/// Creates security group `name` of `project` (a group named `default`
/// gets the default rules).
pub async fn create(
    ctx: &Ctx,
    project: &ProjectId,
    name: &str,
    description: &str,
) -> ApiResult<SecurityGroup> {
    let project = project.clone();
    validate::name("security group", name)?;
    if description.len() > 255 {
        return Err(ApiError::InvalidArgument(
            "description is longer than 255 characters".into(),
        ));
    }
    let id = SecurityGroupId::new_random();
    let g = SecurityGroup {
        id,
        name: name.to_string(),
        project: project.clone(),
        description: description.to_string(),
        rules: if name == "default" {
            SecurityGroup::default_rules(id)
        } else {
            Vec::new()
        },
        created_at: model::now(),
    };
    let idx = keys::name_index(NameKind::SecurityGroup, &project, &g.name);
    // The project's "default" group (also created on first use) is free.
    let delta = QuotaUsage {
        security_groups: u64::from(g.name != "default"),
        ..Default::default()
    };
    for _ in 0..16 {
        let mut t = TxnBuilder::new();
        let name_free = t.absent(&idx);
        t.put(&idx, &id);
        t.put(&keys::secgroup(&id), &g);
        let quota_on = super::quotas::add(ctx, &mut t, &project, &delta)
            .await?
            .is_some();
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            return Ok(g);
        }
        if !quota_on || !a.held(name_free) {
            return Err(ApiError::AlreadyExists(format!(
                "security group {:?} already exists in project {project}",
                g.name
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the project's usage changed concurrently too often; retry".into(),
    ))
}

/// The security group `r` (id or name) of `project`.
pub async fn get(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<SecurityGroup> {
    Ok(super::lookup::secgroup(ctx, project, r).await?.value)
}

/// One page of the security groups `scope` sees.
pub async fn list(ctx: &Ctx, scope: &Scope, page: &PageRequest) -> ApiResult<Page<SecurityGroup>> {
    super::lookup::list_scoped(ctx, &keys::secgroups_prefix(), scope, page).await
}

/// Deletes security group `r` of `project`; refused while ports use it.
pub async fn delete(ctx: &Ctx, project: &ProjectId, r: &str) -> ApiResult<()> {
    for _ in 0..32 {
        let g = super::lookup::secgroup(ctx, project, r).await?;
        let id = g.value.id;
        let rev = ctx.store.revision().await?;
        let users: Vec<PortId> = ctx
            .store
            .list_all(&keys::ports_prefix(), |kv: &KeyValue| {
                decode_or_skip::<Port>(kv)
                    .filter(|p| p.security_groups.contains(&id))
                    .map(|p| p.id)
            })
            .await?;
        if let Some(first) = users.first() {
            return Err(ApiError::FailedPrecondition(format!(
                "security group {:?} is used by port {first}{}; remove it from the ports first",
                g.value.name,
                match users.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                }
            )));
        }
        let key = keys::secgroup(&id);
        let mut t = TxnBuilder::new();
        t.unchanged(&key, g.mod_rev);
        t.prefix_unchanged_since(&keys::ports_prefix(), rev);
        t.delete(&key);
        t.delete(&keys::name_index(
            NameKind::SecurityGroup,
            project,
            &g.value.name,
        ));
        let delta = QuotaUsage {
            security_groups: u64::from(g.value.name != "default"),
            ..Default::default()
        };
        super::quotas::release(ctx, &mut t, &g.value.project, &delta).await?;
        if ctx.store.commit(&t).await?.succeeded() {
            return Ok(());
        }
    }
    Err(ApiError::Unavailable(
        "ports changed concurrently too often; retry".into(),
    ))
}

async fn edit_rules(
    ctx: &Ctx,
    project: &ProjectId,
    group_ref: &str,
    edit: impl Fn(&mut SecurityGroup) -> ApiResult<()>,
) -> ApiResult<SecurityGroup> {
    for _ in 0..8 {
        let mut g = super::lookup::secgroup(ctx, project, group_ref).await?;
        edit(&mut g.value)?;
        let key = keys::secgroup(&g.value.id);
        let resp = ctx
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, g.mod_rev)])
                    .and_then([put(&key, &g.value)]),
            )
            .await?;
        if resp.succeeded() {
            return Ok(g.value);
        }
    }
    Err(ApiError::Unavailable(
        "the security group changed concurrently too often; retry".into(),
    ))
}

/// Renames security group `r` of `project` and/or changes its
/// description; the project's "default" group keeps its name (as in
/// Neutron: it is found by that name).
pub async fn update(
    ctx: &Ctx,
    project: &ProjectId,
    r: &str,
    name: Option<&str>,
    description: Option<&str>,
) -> ApiResult<SecurityGroup> {
    if let Some(n) = name {
        validate::name("security group", n)?;
    }
    for _ in 0..8 {
        let g = super::lookup::secgroup(ctx, project, r).await?;
        let old = g.value;
        let mut sg = old.clone();
        let key = keys::secgroup(&sg.id);
        let mut t = TxnBuilder::new();
        t.unchanged(&key, g.mod_rev);
        let mut name_free = None;
        if let Some(n) = name.filter(|n| *n != sg.name) {
            if sg.name == "default" {
                return Err(ApiError::FailedPrecondition(
                    "the \"default\" security group cannot be renamed".into(),
                ));
            }
            let idx = keys::name_index(NameKind::SecurityGroup, &sg.project, n);
            name_free = Some(t.absent(&idx));
            t.delete(&keys::name_index(
                NameKind::SecurityGroup,
                &sg.project,
                &sg.name,
            ));
            t.put(&idx, &sg.id);
            sg.name = n.to_string();
        }
        if let Some(d) = description {
            sg.description = d.to_string();
        }
        if sg == old {
            return Ok(sg);
        }
        t.put(&key, &sg);
        let a = ctx.store.commit(&t).await?;
        if a.succeeded() {
            tracing::info!(secgroup = %sg.id, name = %sg.name, "security group updated");
            return Ok(sg);
        }
        if name_free.is_some_and(|f| !a.held(f)) {
            return Err(ApiError::AlreadyExists(format!(
                "security group {:?} already exists in project {}",
                sg.name, sg.project
            )));
        }
    }
    Err(ApiError::Unavailable(
        "the security group changed concurrently too often; retry".into(),
    ))
}

/// Adds `rule` to security group `group` of `project`; AlreadyExists
/// when an identical rule is there.
pub async fn add_rule(
    ctx: &Ctx,
    project: &ProjectId,
    group: &str,
    rule: SecurityGroupRule,
) -> ApiResult<SecurityGroup> {
    if let model::Remote::Group(g) = &rule.remote {
        super::lookup::secgroup(ctx, project, &g.to_string()).await?;
    }
    edit_rules(ctx, project, group, |g| {
        let same = g.rules.iter().any(|x| {
            (
                x.direction,
                x.ethertype,
                x.protocol,
                x.ports,
                x.icmp,
                &x.remote,
            ) == (
                rule.direction,
                rule.ethertype,
                rule.protocol,
                rule.ports,
                rule.icmp,
                &rule.remote,
            )
        });
        if same {
            return Err(ApiError::AlreadyExists(format!(
                "security group {:?} already has this rule",
                g.name
            )));
        }
        g.rules.push(rule.clone());
        Ok(())
    })
    .await
}

/// Removes rule `rule_id` from security group `group` of `project`.
pub async fn delete_rule(
    ctx: &Ctx,
    project: &ProjectId,
    group: &str,
    rule_id: &str,
) -> ApiResult<SecurityGroup> {
    let id: nubo_common::RuleId = rule_id.trim().parse()?;
    edit_rules(ctx, project, group, |g| {
        let before = g.rules.len();
        g.rules.retain(|x| x.id != id);
        if g.rules.len() == before {
            return Err(ApiError::NotFound(format!(
                "rule {id} not found in security group {:?}",
                g.name
            )));
        }
        Ok(())
    })
    .await
}
