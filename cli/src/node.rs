//! `nubo node …`: hypervisors, their capacity and the enable switch.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{Node, Resources, SetNodeEnabledRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Node commands.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes with their usage.
    List,
    /// Show one node.
    Show {
        /// Node name.
        name: String,
    },
    /// Allow new instances on a node.
    Enable {
        /// Node name.
        name: String,
    },
    /// Stop placing new instances on a node (running ones stay).
    Disable {
        /// Node name.
        name: String,
    },
}

fn resources_json(r: Option<&Resources>) -> Value {
    let r = r.copied().unwrap_or_default();
    json!({ "vcpus": r.vcpus, "ram_mb": r.ram_mb, "disk_gb": r.disk_gb })
}

/// The JSON (and `show`) form of a node.
pub fn to_json(n: &Node) -> Value {
    json!({
        "name": n.name,
        "underlay_ip": n.underlay_ip,
        "availability_zone": n.availability_zone,
        "labels": n.labels,
        "capacity": resources_json(n.capacity.as_ref()),
        "usage": resources_json(n.usage.as_ref()),
        "instances": n.instances,
        "alive": n.alive,
        "enabled": n.enabled,
        "registered_at": opt(&n.registered_at),
    })
}

fn used_total(used: u64, total: u64) -> String {
    format!("{used}/{total}")
}

/// The `node list` table.
pub fn table(nodes: &[Node]) -> Table {
    let mut t = Table::new(&[
        "Name",
        "AZ",
        "Alive",
        "Enabled",
        "vCPU used/total",
        "RAM MiB used/total",
        "Disk GiB used/total",
        "Instances",
    ]);
    for n in nodes {
        let cap = n.capacity.unwrap_or_default();
        let use_ = n.usage.unwrap_or_default();
        t.row(vec![
            n.name.clone(),
            n.availability_zone.clone(),
            yes_no(n.alive),
            yes_no(n.enabled),
            used_total(use_.vcpus.into(), cap.vcpus.into()),
            used_total(use_.ram_mb, cap.ram_mb),
            used_total(use_.disk_gb, cap.disk_gb),
            n.instances.to_string(),
        ]);
    }
    t
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// Runs a node command.
pub async fn run(cmd: NodeCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        NodeCmd::List => {
            let items = api
                .list_all(false, |req| {
                    let mut c = api.nodes();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.nodes, r.next_page_token))
                    }
                })
                .await?;
            output::list(
                ctx.format,
                &table(&items),
                items.iter().map(to_json).collect(),
            )
        }
        NodeCmd::Show { name } => {
            let n = api.nodes().get(api.get_req(&name)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NodeCmd::Enable { name } => set_enabled(ctx, name, true).await,
        NodeCmd::Disable { name } => set_enabled(ctx, name, false).await,
    }
}

async fn set_enabled(ctx: &Ctx, name: String, enabled: bool) -> Result<()> {
    let api = &ctx.api;
    let n = api
        .nodes()
        .set_enabled(SetNodeEnabledRequest { name, enabled })
        .await
        .or_fail(api)?;
    output::show(ctx.format, &to_json(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_shows_used_over_total() {
        let n = Node {
            name: "cmp1".into(),
            availability_zone: "nova".into(),
            capacity: Some(Resources {
                vcpus: 16,
                ram_mb: 65536,
                disk_gb: 1000,
            }),
            usage: Some(Resources {
                vcpus: 4,
                ram_mb: 8192,
                disk_gb: 40,
            }),
            instances: 2,
            alive: true,
            enabled: false,
            ..Default::default()
        };
        let out = table(&[n]).render();
        let row = out.lines().nth(3).unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "",
                "cmp1",
                "nova",
                "yes",
                "no",
                "4/16",
                "8192/65536",
                "40/1000",
                "2",
                ""
            ]
        );
    }
}
