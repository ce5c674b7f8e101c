//! `nubo server migrate` and `nubo server migration list|show|abort`
//! (cloud admin): moving a server to another node, live or cold
//! (docs/migration.md).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{CreateMigrationRequest, ListMigrationsRequest, Migration};
use serde_json::{json, Value};

use crate::api::{Api, Call, PAGE_SIZE};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Format, Table};

/// `nubo server migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Server name or id.
    pub server: String,
    /// Keep the guest running (live migration); without it the server is
    /// stopped, moved and started again (cold).
    #[arg(long)]
    pub live: bool,
    /// The destination node (default: the scheduler chooses).
    #[arg(long, value_name = "NODE")]
    pub host: Option<String>,
    /// Wait until the migration is over; print its final state and the
    /// guest's downtime (exit status 1 unless it completed).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

impl MigrateArgs {
    /// The API request in `project`.
    pub fn request(&self, project: &str) -> CreateMigrationRequest {
        CreateMigrationRequest {
            r#ref: self.server.clone(),
            project: project.to_string(),
            live: self.live,
            host: self.host.clone().unwrap_or_default(),
        }
    }
}

/// `nubo server migration …`.
#[derive(Debug, Subcommand)]
pub enum MigrationCmd {
    /// List migrations, newest first.
    List {
        /// Only this server's (name or id).
        #[arg(long)]
        server: Option<String>,
        /// Only migrations not over yet.
        #[arg(long)]
        active: bool,
    },
    /// Show one migration.
    Show {
        /// Migration id.
        id: String,
    },
    /// Stop a migration: the server stays where it was (unless the
    /// hypervisor already moved it: then it completes).
    Abort {
        /// Migration id.
        id: String,
    },
}

/// `12 ms` (`12 ms, post-copy` for one that finished in post-copy), or
/// `-` when unknown.
pub fn downtime_text(m: &Migration) -> String {
    let d = m.downtime_ms.map_or("-".into(), |d| format!("{d} ms"));
    if m.postcopy {
        format!("{d}, post-copy")
    } else {
        d
    }
}

/// The JSON (and `show`) form of a migration.
pub fn to_json(m: &Migration) -> Value {
    json!({
        "id": m.id,
        "server_id": m.server_id,
        "server_name": opt(&m.server_name),
        "project": opt(&m.project),
        "source": m.source,
        "destination": m.destination,
        "mode": m.mode,
        "state": m.state,
        "error": opt(&m.error),
        "downtime_ms": m.downtime_ms,
        "postcopy": m.postcopy,
        "block": m.block,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
        "source_phase": opt(&m.source_phase),
        "destination_phase": opt(&m.destination_phase),
        "detail": opt(&m.detail),
    })
}

/// The `server migration list` table.
pub fn table(ms: &[Migration]) -> Table {
    let mut t = Table::new(&[
        "ID", "Server", "Mode", "State", "From", "To", "Downtime", "Created", "Error",
    ]);
    for m in ms {
        t.row(vec![
            m.id.clone(),
            if m.server_name.is_empty() {
                m.server_id.clone()
            } else {
                m.server_name.clone()
            },
            m.mode.clone(),
            m.state.clone(),
            m.source.clone(),
            m.destination.clone(),
            downtime_text(m),
            m.created_at.clone(),
            m.error.clone(),
        ]);
    }
    t
}

/// States after which nothing changes.
pub fn is_final(state: &str) -> bool {
    matches!(state, "completed" | "aborted" | "failed")
}

/// The line `--wait` prints, and whether it is a success.
pub fn outcome_line(m: &Migration) -> (String, bool) {
    let who = if m.server_name.is_empty() {
        &m.server_id
    } else {
        &m.server_name
    };
    match m.state.as_str() {
        "completed" => (
            format!(
                "server {who} {} migrated from {} to {} (downtime {}; migration {})",
                m.mode,
                m.source,
                m.destination,
                downtime_text(m),
                m.id
            ),
            true,
        ),
        s => (
            format!(
                "migration {} of server {who} {s}: {}; it stays on {}",
                m.id,
                if m.error.is_empty() {
                    "no reason recorded"
                } else {
                    &m.error
                },
                m.source
            ),
            false,
        ),
    }
}

fn show(format: Format, m: &Migration) -> Result<()> {
    output::show(format, &to_json(m))
}

async fn wait(api: &Api, id: &str, timeout: Duration) -> Result<Migration> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = api.migrations().get(api.get_req(id)).await.or_fail(api)?;
        if is_final(&m.state) {
            return Ok(m);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s: migration {id} is still {}",
                timeout.as_secs(),
                m.state
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `server migrate`.
pub async fn migrate(args: MigrateArgs, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let m = api
        .migrations()
        .create(args.request(&api.project))
        .await
        .or_fail(api)?;
    if !args.wait {
        if ctx.format == Format::Table {
            eprintln!(
                "migration {} started ({} to {}); follow it with: nubo server migration show {}",
                m.id, m.source, m.destination, m.id
            );
        }
        return show(ctx.format, &m);
    }
    let done = wait(api, &m.id, Duration::from_secs(args.timeout)).await?;
    let (line, ok) = outcome_line(&done);
    match ctx.format {
        Format::Json => output::emit_json(&to_json(&done))?,
        Format::Table => output::emit(&format!("{line}\n"))?,
    }
    if !ok {
        bail!("migration {} {}", done.id, done.state);
    }
    Ok(())
}

/// Runs `server migration …`.
pub async fn run(cmd: MigrationCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        MigrationCmd::List { server, active } => {
            let base = ListMigrationsRequest {
                page_size: PAGE_SIZE,
                page_token: String::new(),
                server: server.unwrap_or_default(),
                project: api.project.clone(),
                active_only: active,
            };
            let items = crate::api::all_pages(|page_token| {
                let mut c = api.migrations();
                let req = ListMigrationsRequest {
                    page_token,
                    ..base.clone()
                };
                async move {
                    let r = c.list(req).await.or_fail(api)?;
                    Ok((r.migrations, r.next_page_token))
                }
            })
            .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        MigrationCmd::Show { id } => {
            let m = api.migrations().get(api.get_req(&id)).await.or_fail(api)?;
            show(ctx.format, &m)
        }
        MigrationCmd::Abort { id } => {
            let m = api
                .migrations()
                .abort(api.get_req(&id))
                .await
                .or_fail(api)?;
            show(ctx.format, &m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mig(state: &str) -> Migration {
        Migration {
            id: "m-1".into(),
            server_id: "s-1".into(),
            server_name: "web".into(),
            source: "cmp1".into(),
            destination: "cmp2".into(),
            mode: "live".into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[derive(Debug, clap::Parser)]
    struct Top {
        #[command(flatten)]
        args: MigrateArgs,
    }

    #[test]
    fn migrate_flags_map_to_the_request() {
        use clap::Parser;
        let t = Top::try_parse_from(["x", "web", "--live", "--host", "cmp2", "--wait"]).unwrap();
        assert!(t.args.wait);
        assert_eq!(
            t.args.request("p1"),
            CreateMigrationRequest {
                r#ref: "web".into(),
                project: "p1".into(),
                live: true,
                host: "cmp2".into(),
            }
        );
        let t = Top::try_parse_from(["x", "web"]).unwrap();
        let r = t.args.request("");
        assert!(!r.live && r.host.is_empty() && !t.args.wait);
        assert!(Top::try_parse_from(["x"]).is_err());
    }

    #[test]
    fn wait_prints_the_downtime_and_fails_unless_completed() {
        let mut m = mig("completed");
        m.downtime_ms = Some(37);
        let (line, ok) = outcome_line(&m);
        assert!(ok);
        assert_eq!(
            line,
            "server web live migrated from cmp1 to cmp2 (downtime 37 ms; migration m-1)"
        );
        m.postcopy = true;
        assert!(outcome_line(&m).0.contains("(downtime 37 ms, post-copy;"));
        m.downtime_ms = None;
        m.postcopy = false;
        assert!(outcome_line(&m).0.contains("(downtime -;"));
        let mut f = mig("failed");
        f.error = "the destination cmp2 did not prepare within 60 s".into();
        let (line, ok) = outcome_line(&f);
        assert!(!ok);
        assert!(
            line.contains("failed: the destination cmp2 did not prepare"),
            "{line}"
        );
        assert!(line.ends_with("it stays on cmp1"), "{line}");
        assert!(!outcome_line(&mig("aborted")).1);
        assert!(is_final("aborted") && !is_final("switching") && !is_final("preparing"));
    }

    #[test]
    fn list_shows_state_route_and_downtime() {
        let mut m = mig("completed");
        m.downtime_ms = Some(12);
        let mut other = mig("aborting");
        other.server_name.clear();
        let out = table(&[m, other]).render();
        let row: Vec<&str> = out
            .lines()
            .nth(3)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            row[1..8],
            ["m-1", "web", "live", "completed", "cmp1", "cmp2", "12 ms"]
        );
        let row: Vec<&str> = out
            .lines()
            .nth(4)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!((row[2], row[4], row[7]), ("s-1", "aborting", "-"));
        let j = to_json(&mig("migrating"));
        assert_eq!(j["downtime_ms"], Value::Null);
        assert_eq!(j["error"], Value::Null);
        assert_eq!(j["state"], "migrating");
    }
}
