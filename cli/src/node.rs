//! `nubo node …`: hypervisors, their capacity, health and the enable
//! switch; evacuation of a failed node and draining for maintenance.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{
    DrainNodeRequest, EvacuateNodeRequest, MoveResult, Node, Resources, SetNodeEnabledRequest,
};
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
    /// Move the instances (evacuation policy auto and manual) of a node
    /// that is down to other nodes; the node is fenced first.
    Evacuate {
        /// Node name.
        name: String,
        /// Evacuate although the node's agent is alive (you vouch that its
        /// instances are not running).
        #[arg(long)]
        force: bool,
    },
    /// Planned maintenance: disable the node, then stop, move and restart
    /// each of its instances elsewhere.
    Drain {
        /// Node name.
        name: String,
        /// Seconds to wait for the agent to report an instance stopped
        /// (default: the server's, 120).
        #[arg(long, value_name = "S")]
        stop_timeout: Option<u32>,
        /// Live-migrate the running instances (two at a time; none is
        /// rebooted) instead of stopping and restarting them.
        #[arg(long)]
        live: bool,
    },
}

/// The API request of `node evacuate`.
pub fn evacuate_request(name: &str, force: bool) -> EvacuateNodeRequest {
    EvacuateNodeRequest {
        name: name.to_string(),
        force,
    }
}

/// The API request of `node drain`.
pub fn drain_request(name: &str, stop_timeout: Option<u32>, live: bool) -> DrainNodeRequest {
    DrainNodeRequest {
        name: name.to_string(),
        stop_timeout_secs: stop_timeout.unwrap_or(0),
        live,
    }
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
        "health": opt(&n.health),
        "health_reason": opt(&n.health_reason),
        "health_since": opt(&n.health_since),
        "registered_at": opt(&n.registered_at),
        "observed_usage": crate::usage::node_json(n.observed_usage.as_ref()),
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
        "Health",
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
            if n.health.is_empty() {
                "-".to_string()
            } else {
                n.health.clone()
            },
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
            output::items(ctx.format, &items, table, to_json)
        }
        NodeCmd::Show { name } => {
            let n = api.nodes().get(api.get_req(&name)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NodeCmd::Enable { name } => set_enabled(ctx, name, true).await,
        NodeCmd::Disable { name } => set_enabled(ctx, name, false).await,
        NodeCmd::Evacuate { name, force } => {
            let r = api
                .nodes()
                .evacuate(evacuate_request(&name, force))
                .await
                .or_fail(api)?;
            moves(ctx, "evacuated", &name, &r.results)
        }
        NodeCmd::Drain {
            name,
            stop_timeout,
            live,
        } => {
            let r = api
                .nodes()
                .drain(drain_request(&name, stop_timeout, live))
                .await
                .or_fail(api)?;
            moves(ctx, "drained", &name, &r.results)
        }
    }
}

/// The per-instance table of an evacuation or a drain.
pub fn moves_table(results: &[MoveResult]) -> Table {
    let live = results.iter().any(|m| !m.migration_id.is_empty());
    let mut t = if live {
        Table::new(&["Server", "Moved to", "Downtime", "Migration", "Error"])
    } else {
        Table::new(&["Server", "Moved to", "Error"])
    };
    for m in results {
        let to = if m.to_node.is_empty() {
            "-".to_string()
        } else {
            m.to_node.clone()
        };
        if live {
            t.row(vec![
                m.server_id.clone(),
                to,
                m.downtime_ms.map_or("-".into(), |d| format!("{d} ms")),
                m.migration_id.clone(),
                m.error.clone(),
            ]);
        } else {
            t.row(vec![m.server_id.clone(), to, m.error.clone()]);
        }
    }
    t
}

fn moves(ctx: &Ctx, verb: &str, node: &str, results: &[MoveResult]) -> Result<()> {
    let json: Vec<Value> = results
        .iter()
        .map(|m| {
            json!({
                "server_id": m.server_id,
                "to_node": opt(&m.to_node),
                "error": opt(&m.error),
                "migration_id": opt(&m.migration_id),
                "downtime_ms": m.downtime_ms,
            })
        })
        .collect();
    output::list(ctx.format, &moves_table(results), json)?;
    let failed = results.iter().filter(|m| m.to_node.is_empty()).count();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} instances could not be moved off {node}",
            results.len()
        );
    }
    if ctx.format == crate::output::Format::Table {
        eprintln!("{node} {verb}: {} instances moved", results.len());
    }
    Ok(())
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
                "-",
                "no",
                "4/16",
                "8192/65536",
                "40/1000",
                "2",
                ""
            ]
        );
    }

    fn parse(args: &[&str]) -> Result<NodeCmd, clap::Error> {
        crate::testutil::parse_cmd(args)
    }

    #[test]
    fn evacuate_maps_name_and_force() {
        match parse(&["evacuate", "cmp1"]).unwrap() {
            NodeCmd::Evacuate { name, force } => {
                assert_eq!(
                    evacuate_request(&name, force),
                    EvacuateNodeRequest {
                        name: "cmp1".into(),
                        force: false
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(&["evacuate", "cmp2", "--force"]).unwrap() {
            NodeCmd::Evacuate { name, force } => {
                assert_eq!(
                    evacuate_request(&name, force),
                    EvacuateNodeRequest {
                        name: "cmp2".into(),
                        force: true
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["evacuate"]).is_err());
    }

    #[test]
    fn drain_maps_the_stop_timeout() {
        match parse(&["drain", "cmp1", "--stop-timeout", "30"]).unwrap() {
            NodeCmd::Drain {
                name,
                stop_timeout,
                live,
            } => assert_eq!(
                drain_request(&name, stop_timeout, live),
                DrainNodeRequest {
                    name: "cmp1".into(),
                    stop_timeout_secs: 30,
                    live: false,
                }
            ),
            other => panic!("{other:?}"),
        }
        match parse(&["drain", "cmp1"]).unwrap() {
            NodeCmd::Drain {
                name,
                stop_timeout,
                live,
            } => {
                assert_eq!(
                    drain_request(&name, stop_timeout, live).stop_timeout_secs,
                    0
                )
            }
            other => panic!("{other:?}"),
        }
        match parse(&["drain", "cmp1", "--live"]).unwrap() {
            NodeCmd::Drain {
                name,
                stop_timeout,
                live,
            } => assert!(drain_request(&name, stop_timeout, live).live),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["drain", "cmp1", "--stop-timeout", "-1"]).is_err());
    }

    #[test]
    fn list_shows_health_and_moves_show_where_to() {
        let n = Node {
            name: "cmp9".into(),
            health: "fenced".into(),
            ..Default::default()
        };
        let out = table(&[n]).render();
        let row = out.lines().nth(3).unwrap();
        assert_eq!(row.split('|').map(str::trim).nth(4), Some("fenced"));
        let t = moves_table(&[
            MoveResult {
                server_id: "s1".into(),
                to_node: "cmp2".into(),
                ..Default::default()
            },
            MoveResult {
                server_id: "s2".into(),
                error: "no capacity".into(),
                ..Default::default()
            },
        ])
        .render();
        assert!(t.contains("cmp2"));
        assert!(!t.contains("Downtime"), "{t}");
        assert!(t
            .lines()
            .any(|l| l.contains("s2") && l.contains("no capacity")));
        // A live drain shows each migration and its downtime.
        let t = moves_table(&[
            MoveResult {
                server_id: "s1".into(),
                to_node: "cmp2".into(),
                migration_id: "m1".into(),
                downtime_ms: Some(41),
                ..Default::default()
            },
            MoveResult {
                server_id: "s2".into(),
                migration_id: "m2".into(),
                error: "migration m2 aborted".into(),
                ..Default::default()
            },
        ])
        .render();
        let row: Vec<&str> = t
            .lines()
            .nth(3)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(row[1..5], ["s1", "cmp2", "41 ms", "m1"]);
        let row: Vec<&str> = t
            .lines()
            .nth(4)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(row[1..6], ["s2", "-", "-", "m2", "migration m2 aborted"]);
    }
}
