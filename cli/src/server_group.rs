//! `nubo server-group …`: affinity and anti-affinity groups.

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use nubo_common::proto::{CreateServerGroupRequest, ServerGroup};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Server group commands.
#[derive(Debug, Subcommand)]
pub enum ServerGroupCmd {
    /// Create a server group.
    Create(CreateArgs),
    /// List server groups.
    List,
    /// Show one server group.
    Show {
        /// Server group name or id.
        group: String,
    },
    /// Delete server groups.
    Delete {
        /// Server group names or ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
}

/// Placement policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    /// Every member on the same node.
    Affinity,
    /// Every member on a different node.
    AntiAffinity,
}

/// `nubo server-group create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Server group name.
    pub name: String,
    /// Placement policy.
    #[arg(long, value_enum)]
    pub policy: Policy,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> CreateServerGroupRequest {
        CreateServerGroupRequest {
            name: self.name.clone(),
            project: project.to_string(),
            policy: match self.policy {
                Policy::Affinity => "affinity",
                Policy::AntiAffinity => "anti-affinity",
            }
            .to_string(),
        }
    }
}

/// The JSON (and `show`) form of a server group.
pub fn to_json(g: &ServerGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "project": g.project,
        "policy": g.policy,
        "created_at": opt(&g.created_at),
    })
}

/// The `server-group list` table.
pub fn table(groups: &[ServerGroup]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Policy"]);
    for g in groups {
        t.row(vec![g.id.clone(), g.name.clone(), g.policy.clone()]);
    }
    t
}

/// Runs a server group command.
pub async fn run(cmd: ServerGroupCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        ServerGroupCmd::Create(args) => {
            let g = api
                .server_groups()
                .create(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&g))
        }
        ServerGroupCmd::List => {
            let items = api
                .list_all(false, |req| {
                    let mut c = api.server_groups();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.server_groups, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        ServerGroupCmd::Show { group } => {
            let g = api
                .server_groups()
                .get(api.get_req(&group))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&g))
        }
        ServerGroupCmd::Delete { groups } => {
            ctx.delete_all("server groups", &groups, |r| async move {
                let req = api.delete_req(&r);
                api.server_groups().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_match_the_api() {
        let a = CreateArgs {
            name: "g".into(),
            policy: Policy::AntiAffinity,
        };
        assert_eq!(
            a.request("p"),
            CreateServerGroupRequest {
                name: "g".into(),
                project: "p".into(),
                policy: "anti-affinity".into()
            }
        );
    }
}
