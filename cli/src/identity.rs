//! `nubo login`, `nubo project|user|role …`, `nubo quota …` and
//! `nubo audit list` (coordinators running with `auth = "token"`).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{
    AuditEntry, CreateProjectRequest, CreateUserRequest, DeleteRequest, Empty, GetRequest,
    IssueTokenRequest, ListRequest, Project, ProjectQuota, QuotaSet, RoleAssignment,
    SetQuotaRequest, UpdateQuotaRequest, User,
};
use serde_json::{json, Value};

use crate::api::{all_pages, token_path, Call, PAGE_SIZE};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// `nubo login`: user + password, or an application credential (id +
/// secret).
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(long, required_unless_present = "application_credential_id")]
    pub user: Option<String>,
    /// A file holding the password (one line).
    #[arg(long, conflicts_with_all = ["password_stdin", "secret_file"])]
    pub password_file: Option<PathBuf>,
    /// Read the password (or the application credential secret) from
    /// standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// Log in with this application credential instead of a user (its
    /// project is the credential's).
    #[arg(long, conflicts_with = "user")]
    pub application_credential_id: Option<String>,
    /// A file holding the application credential secret (one line).
    #[arg(
        long,
        requires = "application_credential_id",
        conflicts_with_all = ["password_stdin", "user"]
    )]
    pub secret_file: Option<PathBuf>,
    /// Lifetime in seconds (0 = the server's default).
    #[arg(long, default_value_t = 0)]
    pub ttl: u32,
}

/// Project commands (cloud admin).
#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    Create {
        /// Project id, e.g. team-a.
        id: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List projects.
    List,
    /// Delete projects.
    Delete {
        /// Project ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// User commands (cloud admin).
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user.
    Create {
        /// User name.
        name: String,
        /// A file holding the password (one line).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Delete users (and their role assignments).
    Delete {
        /// User names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// A role assignment on the command line.
#[derive(Debug, Args)]
pub struct RoleArgs {
    /// admin, member, reader or node (cloud-wide only: agents).
    pub role: String,
    /// The user.
    #[arg(long)]
    pub user: String,
    /// The project (omit for cloud-wide; cloud-wide admin = cloud admin).
    #[arg(long = "in", value_name = "PROJECT", default_value = "")]
    pub project: String,
}

impl RoleArgs {
    fn request(&self) -> RoleAssignment {
        RoleAssignment {
            user: self.user.clone(),
            project: self.project.clone(),
            role: self.role.clone(),
        }
    }
}

/// Role commands (cloud admin).
#[derive(Debug, Subcommand)]
pub enum RoleCmd {
    /// Give a user a role (in a project with --in, else cloud-wide).
    Grant(RoleArgs),
    /// Take a role away.
    Revoke(RoleArgs),
    /// A user's role assignments (default: yours).
    List {
        /// The user.
        #[arg(long, default_value = "")]
        user: String,
    },
}

/// `nubo quota set` limits; omitted = unlimited.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// The limits.
    #[command(flatten)]
    pub limits: QuotaLimits,
    /// Set the cloud-wide default instead of a project's quota.
    #[arg(long)]
    pub default: bool,
}

/// Quota commands.
#[derive(Debug, Subcommand)]
pub enum QuotaCmd {
    /// The limits and usage of the project (--project, else the token's).
    Show,
    /// Set the limits of the project (cloud admin); omitted = unlimited.
    Set(QuotaArgs),
    /// Change some limits of the project (cloud admin); the others keep
    /// what applies now.
    Update(QuotaUpdateArgs),
    /// Drop the project's own quota: the cloud-wide default applies again
    /// (cloud admin).
    Reset,
    /// The cloud-wide default.
    Default,
}

/// `nubo quota update`: the limits to change.
#[derive(Debug, Args)]
pub struct QuotaUpdateArgs {
    /// The new limits (as `nubo quota set`; omitted = kept).
    #[command(flatten)]
    pub limits: QuotaLimits,
    /// Make these resources unlimited (instances, vcpus, ram_mb, volumes,
    /// gigabytes, ports, networks, security_groups, floating_ips,
    /// snapshots, backups, backup_gigabytes, per_volume_gigabytes).
    #[arg(long, value_delimiter = ',')]
    pub unlimited: Vec<String>,
}

/// Limits of `nubo quota set` and `nubo quota update`.
#[derive(Debug, Args)]
pub struct QuotaLimits {
    /// Servers.
    #[arg(long)]
    pub instances: Option<u64>,
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u64>,
    /// Memory in MiB.
    #[arg(long)]
    pub ram_mb: Option<u64>,
    /// Volumes.
    #[arg(long)]
    pub volumes: Option<u64>,
    /// Volume size in GiB, all volumes together.
    #[arg(long)]
    pub gigabytes: Option<u64>,
    /// Ports.
    #[arg(long)]
    pub ports: Option<u64>,
    /// Networks.
    #[arg(long)]
    pub networks: Option<u64>,
    /// Security groups.
    #[arg(long)]
    pub security_groups: Option<u64>,
    /// Floating IPs.
    #[arg(long)]
    pub floating_ips: Option<u64>,
    /// Volume snapshots (their sizes count in --gigabytes too).
    #[arg(long)]
    pub snapshots: Option<u64>,
    /// Volume backups (nubo has none: kept for Cinder clients, usage 0).
    #[arg(long)]
    pub backups: Option<u64>,
    /// Volume backup GiB (nubo has none: kept for Cinder clients, usage 0).
    #[arg(long)]
    pub backup_gigabytes: Option<u64>,
    /// The largest single volume, GiB.
    #[arg(long)]
    pub per_volume_gigabytes: Option<u64>,
}

impl QuotaLimits {
    /// The gRPC limits.
    fn set(&self) -> QuotaSet {
        QuotaSet {
            instances: self.instances,
            vcpus: self.vcpus,
            ram_mb: self.ram_mb,
            volumes: self.volumes,
            gigabytes: self.gigabytes,
            ports: self.ports,
            networks: self.networks,
            security_groups: self.security_groups,
            floating_ips: self.floating_ips,
            snapshots: self.snapshots,
            backups: self.backups,
            backup_gigabytes: self.backup_gigabytes,
            per_volume_gigabytes: self.per_volume_gigabytes,
        }
    }
}

/// Audit commands (cloud admin).
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// The audit trail, oldest first.
    List,
}

/// The password from a file (one line) or standard input.
pub fn read_password(file: Option<&PathBuf>, stdin: bool) -> Result<String> {
    let text = match (file, stdin) {
        (Some(f), false) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        _ => bail!("give the password with exactly one of --password-file or --password-stdin"),
    };
    let p = text
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&text);
    if p.is_empty() || p.contains('\n') {
        bail!("the password must be one non-empty line");
    }
    Ok(p.to_string())
}

/// Writes the token where later commands find it (mode 0600).
pub fn store_token(token: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = token_path().ok_or_else(|| anyhow!("HOME is not set: cannot store the token"))?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(path)
}

/// Runs `nubo login`.
pub async fn login(args: LoginArgs, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let req = match (args.user, args.application_credential_id) {
        (Some(user), None) => IssueTokenRequest {
            user,
            password: read_password(args.password_file.as_ref(), args.password_stdin)?,
            project: api.project.clone(),
            ttl_secs: args.ttl,
            ..Default::default()
        },
        (None, Some(id)) => IssueTokenRequest {
            application_credential_id: id,
            application_credential_secret: read_password(
                args.secret_file.as_ref(),
                args.password_stdin,
            )
            .context("the application credential secret (--secret-file or --password-stdin)")?,
            ttl_secs: args.ttl,
            ..Default::default()
        },
        _ => bail!("give either --user or --application-credential-id"),
    };
    let t = api.tokens().issue(req).await.or_fail(api)?;
    let path = store_token(&t.token)?;
    output::show(
        ctx.format,
        &json!({
            "user": t.user,
            "project": t.project,
            "roles": t.roles.join(","),
            "expires_at": t.expires_at,
            "token_file": path.display().to_string(),
        }),
    )
}

fn project_json(p: &Project) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "description": opt(&p.description),
        "enabled": p.enabled,
        "created_at": opt(&p.created_at),
    })
}

fn user_json(u: &User) -> Value {
    json!({ "name": u.name, "enabled": u.enabled, "created_at": opt(&u.created_at) })
}

fn role_json(a: &RoleAssignment) -> Value {
    json!({ "user": a.user, "project": opt(&a.project), "role": a.role })
}

fn list_req(page_token: String) -> ListRequest {
    ListRequest {
        page_size: PAGE_SIZE,
        page_token,
        ..Default::default()
    }
}

/// Runs a project command.
pub async fn project(cmd: ProjectCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        ProjectCmd::Create {
            id,
            name,
            description,
        } => {
            let p = api
                .identity()
                .create_project(CreateProjectRequest {
                    id,
                    name,
                    description,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &project_json(&p))
        }
        ProjectCmd::List => {
            let items = all_pages(|tok| {
                let mut c = api.identity();
                async move {
                    let r = c.list_projects(list_req(tok)).await.or_fail(api)?;
                    Ok((r.projects, r.next_page_token))
                }
            })
            .await?;
            let mut t = Table::new(&["ID", "Name", "Enabled"]);
            for p in &items {
                t.row(vec![p.id.clone(), p.name.clone(), p.enabled.to_string()]);
            }
            output::list(ctx.format, &t, items.iter().map(project_json).collect())
        }
        ProjectCmd::Delete { ids } => {
            ctx.delete_all("projects", &ids, |id| async move {
                api.identity()
                    .delete_project(DeleteRequest {
                        r#ref: id,
                        project: String::new(),
                    })
                    .await
                    .or_fail(api)
                    .map(drop)
            })
            .await
        }
    }
}

/// Runs a user command.
pub async fn user(cmd: UserCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        UserCmd::Create {
            name,
            password_file,
            password_stdin,
        } => {
            let password = read_password(password_file.as_ref(), password_stdin)?;
            let u = api
                .identity()
                .create_user(CreateUserRequest { name, password })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &user_json(&u))
        }
        UserCmd::List => {
            let items = all_pages(|tok| {
                let mut c = api.identity();
                async move {
                    let r = c.list_users(list_req(tok)).await.or_fail(api)?;
                    Ok((r.users, r.next_page_token))
                }
            })
            .await?;
            let mut t = Table::new(&["Name", "Enabled"]);
            for u in &items {
                t.row(vec![u.name.clone(), u.enabled.to_string()]);
            }
            output::list(ctx.format, &t, items.iter().map(user_json).collect())
        }
        UserCmd::Delete { names } => {
            ctx.delete_all("users", &names, |name| async move {
                api.identity()
                    .delete_user(DeleteRequest {
                        r#ref: name,
                        project: String::new(),
                    })
                    .await
                    .or_fail(api)
                    .map(drop)
            })
            .await
        }
    }
}

/// Runs a role command.
pub async fn role(cmd: RoleCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        RoleCmd::Grant(a) => {
            let r = api.identity().grant(a.request()).await.or_fail(api)?;
            output::show(ctx.format, &role_json(&r))
        }
        RoleCmd::Revoke(a) => {
            api.identity().revoke(a.request()).await.or_fail(api)?;
            Ok(())
        }
        RoleCmd::List { user } => {
            let r = api
                .identity()
                .list_role_assignments(GetRequest {
                    r#ref: user,
                    project: String::new(),
                })
                .await
                .or_fail(api)?;
            let mut t = Table::new(&["User", "Project", "Role"]);
            for a in &r.assignments {
                let scope = if a.project.is_empty() {
                    "(cloud)".to_string()
                } else {
                    a.project.clone()
                };
                t.row(vec![a.user.clone(), scope, a.role.clone()]);
            }
            output::list(
                ctx.format,
                &t,
                r.assignments.iter().map(role_json).collect(),
            )
        }
    }
}

fn quota_value(v: Option<u64>) -> Value {
    v.map_or(Value::String("unlimited".into()), Value::from)
}

fn quota_json(q: &ProjectQuota) -> Value {
    let l = q.limits.unwrap_or_default();
    let u = q.usage.unwrap_or_default();
    let row = |limit: Option<u64>, used: Option<u64>| json!({ "limit": quota_value(limit), "in_use": used.unwrap_or(0) });
    json!({
        "project": opt(&q.project),
        "instances": row(l.instances, u.instances),
        "vcpus": row(l.vcpus, u.vcpus),
        "ram_mb": row(l.ram_mb, u.ram_mb),
        "volumes": row(l.volumes, u.volumes),
        "gigabytes": row(l.gigabytes, u.gigabytes),
        "ports": row(l.ports, u.ports),
        "networks": row(l.networks, u.networks),
        "security_groups": row(l.security_groups, u.security_groups),
        "floating_ips": row(l.floating_ips, u.floating_ips),
        "snapshots": row(l.snapshots, u.snapshots),
        "backups": row(l.backups, u.backups),
        "backup_gigabytes": row(l.backup_gigabytes, u.backup_gigabytes),
        "per_volume_gigabytes": row(l.per_volume_gigabytes, u.per_volume_gigabytes),
    })
}

fn quota_table(q: &ProjectQuota) -> Table {
    let l = q.limits.unwrap_or_default();
    let u = q.usage.unwrap_or_default();
    let mut t = Table::new(&["Resource", "Limit", "In use"]);
    let lim = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    for (name, limit, used) in [
        ("instances", l.instances, u.instances),
        ("vcpus", l.vcpus, u.vcpus),
        ("ram_mb", l.ram_mb, u.ram_mb),
        ("volumes", l.volumes, u.volumes),
        ("gigabytes", l.gigabytes, u.gigabytes),
        ("ports", l.ports, u.ports),
        ("networks", l.networks, u.networks),
        ("security_groups", l.security_groups, u.security_groups),
        ("floating_ips", l.floating_ips, u.floating_ips),
        ("snapshots", l.snapshots, u.snapshots),
        ("backups", l.backups, u.backups),
        ("backup_gigabytes", l.backup_gigabytes, u.backup_gigabytes),
        (
            "per_volume_gigabytes",
            l.per_volume_gigabytes,
            u.per_volume_gigabytes,
        ),
    ] {
        t.row(vec![
            name.to_string(),
            lim(limit),
            used.unwrap_or(0).to_string(),
        ]);
    }
    t
}

/// Runs a quota command.
pub async fn quota(cmd: QuotaCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let q = match cmd {
        QuotaCmd::Show => api
            .quotas()
            .get(GetRequest {
                r#ref: String::new(),
                project: api.project.clone(),
            })
            .await
            .or_fail(api)?,
        QuotaCmd::Set(a) => {
            if !a.default && api.project.is_empty() {
                bail!("name the project with --project (or --default for the cloud-wide default)");
            }
            api.quotas()
                .set(SetQuotaRequest {
                    project: if a.default {
                        String::new()
                    } else {
                        api.project.clone()
                    },
                    limits: Some(a.limits.set()),
                })
                .await
                .or_fail(api)?
        }
        QuotaCmd::Update(a) => {
            if api.project.is_empty() {
                bail!("name the project with --project");
            }
            api.quotas()
                .update(UpdateQuotaRequest {
                    project: api.project.clone(),
                    limits: Some(a.limits.set()),
                    unlimited: a.unlimited,
                })
                .await
                .or_fail(api)?
        }
        QuotaCmd::Reset => {
            if api.project.is_empty() {
                bail!("name the project with --project");
            }
            api.quotas()
                .reset(GetRequest {
                    r#ref: String::new(),
                    project: api.project.clone(),
                })
                .await
                .or_fail(api)?
        }
        QuotaCmd::Default => api.quotas().get_default(Empty {}).await.or_fail(api)?,
    };
    match ctx.format {
        output::Format::Table => output::emit(&quota_table(&q).render()),
        output::Format::Json => output::emit_json(&quota_json(&q)),
    }
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "time": e.time,
        "user": opt(&e.user),
        "project": opt(&e.project),
        "acted_in_project": opt(&e.acted_in_project),
        "action": e.action,
        "resource": opt(&e.resource_id),
        "outcome": e.outcome,
        "message": opt(&e.message),
    })
}

/// Runs an audit command.
pub async fn audit(cmd: AuditCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        AuditCmd::List => {
            let items = all_pages(|tok| {
                let mut c = api.audit();
                async move {
                    let r = c.list(list_req(tok)).await.or_fail(api)?;
                    Ok((r.records, r.next_page_token))
                }
            })
            .await?;
            let mut t = Table::new(&["Time", "User", "Project", "Action", "Resource", "Outcome"]);
            for e in &items {
                t.row(vec![
                    e.time.clone(),
                    e.user.clone(),
                    if e.acted_in_project.is_empty() {
                        e.project.clone()
                    } else {
                        format!("{} (acted in {})", e.project, e.acted_in_project)
                    },
                    e.action.clone(),
                    e.resource_id.clone(),
                    e.outcome.clone(),
                ]);
            }
            output::list(ctx.format, &t, items.iter().map(audit_json).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_one_line() {
        let dir = std::env::temp_dir().join(format!("nubo-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_password(Some(&f), false).unwrap(), "s3cret");
        std::fs::write(&f, "a\nb\n").unwrap();
        assert!(read_password(Some(&f), false).is_err());
        assert!(read_password(None, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
