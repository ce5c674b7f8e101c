//! `nubo port …`: addresses on networks, pluggable into servers.

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Args, Subcommand};
use nubo_common::proto::{CreatePortRequest, Port, UpdatePortRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Port commands.
#[derive(Debug, Subcommand)]
pub enum PortCmd {
    /// Create a port.
    Capture {
        /// Port id.
        port: String,
        /// Stop after this many packets.
        #[arg(long)]
        count: Option<u32>,
    },
    Create(CreateArgs),
    /// List ports.
    List {
        /// List the ports of every project.
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one port.
    Show {
        /// Port name or id.
        port: String,
    },
    /// Change a port's security groups.
    Set(SetArgs),
    /// Delete ports.
    Delete {
        /// Port names or ids.
        #[arg(required = true)]
        ports: Vec<String>,
    },
}

/// `nubo port create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Port name.
    pub name: String,
    /// Network (name or id).
    #[arg(long)]
    pub network: String,
    /// Fixed IPv4 address (default: allocated).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Security group (name or id, repeatable; default: the project's "default").
    #[arg(long = "security-group", conflicts_with = "no_port_security")]
    pub security_groups: Vec<String>,
    /// Disable anti-spoofing and security groups on the port.
    #[arg(long)]
    pub no_port_security: bool,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> CreatePortRequest {
        CreatePortRequest {
            name: self.name.clone(),
            project: project.to_string(),
            network_ref: self.network.clone(),
            ip: self.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            security_groups: self.security_groups.clone(),
            no_port_security: self.no_port_security,
        }
    }
}

/// `nubo port set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Port name or id.
    pub port: String,
    /// The port's new security groups (names or ids; replaces the current ones).
    #[arg(long = "security-group", required = true)]
    pub security_groups: Vec<String>,
}

impl SetArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> UpdatePortRequest {
        UpdatePortRequest {
            r#ref: self.port.clone(),
            project: project.to_string(),
            security_groups: self.security_groups.clone(),
        }
    }
}

/// The JSON (and `show`) form of a port.
pub fn to_json(p: &Port) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "project": p.project,
        "network_id": p.network_id,
        "mac": p.mac,
        "ip": p.ip,
        "security_group_ids": p.security_group_ids,
        "device_id": opt(&p.device_id),
        "node": opt(&p.node),
        "tap": opt(&p.tap),
        "port_security": p.port_security,
        "created_at": opt(&p.created_at),
    })
}

/// The `port list` table.
pub fn table(ports: &[Port]) -> Table {
    let mut t = Table::new(&["ID", "Name", "MAC", "IP", "Device", "Node"]);
    for p in ports {
        t.row(vec![
            p.id.clone(),
            p.name.clone(),
            p.mac.clone(),
            p.ip.clone(),
            p.device_id.clone(),
            p.node.clone(),
        ]);
    }
    t
}

/// Runs a port command.
pub async fn run(cmd: PortCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        PortCmd::Create(args) => {
            let p = api
                .ports()
                .create(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&p))
        }
        PortCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = api.ports();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.ports, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        PortCmd::Capture { port, count } => {
            let p = api.ports().get(api.get_req(&port)).await.or_fail(api)?;
            let addr = crate::node_api::address(api, &p.node).await?;
            let q = count.map(|c| format!("?count={c}")).unwrap_or_default();
            crate::node_api::stream(&addr, &format!("/v1/capture/{}{q}", p.tap)).await
        }
        PortCmd::Show { port } => {
            let p = api.ports().get(api.get_req(&port)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&p))
        }
        PortCmd::Set(args) => {
            let p = api
                .ports()
                .update(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&p))
        }
        PortCmd::Delete { ports } => {
            ctx.delete_all("ports", &ports, |r| async move {
                let req = api.delete_req(&r);
                api.ports().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        c: PortCmd,
    }

    fn parse(args: &[&str]) -> Result<PortCmd, clap::Error> {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        T::try_parse_from(argv).map(|t| t.c)
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let Ok(PortCmd::Create(a)) = parse(&[
            "create",
            "p1",
            "--network",
            "net1",
            "--ip",
            "10.0.0.9",
            "--security-group",
            "web",
            "--security-group",
            "ssh",
        ]) else {
            panic!("not a create")
        };
        assert_eq!(
            a.request("proj"),
            CreatePortRequest {
                name: "p1".into(),
                project: "proj".into(),
                network_ref: "net1".into(),
                ip: "10.0.0.9".into(),
                security_groups: vec!["web".into(), "ssh".into()],
                no_port_security: false,
            }
        );
    }

    #[test]
    fn no_port_security_excludes_security_groups() {
        assert!(parse(&["create", "p", "--network", "n", "--no-port-security"]).is_ok());
        assert!(parse(&[
            "create",
            "p",
            "--network",
            "n",
            "--no-port-security",
            "--security-group",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn set_replaces_security_groups_and_needs_one() {
        let Ok(PortCmd::Set(a)) = parse(&["set", "p1", "--security-group", "web"]) else {
            panic!("not a set")
        };
        assert_eq!(a.request("").security_groups, vec!["web".to_string()]);
        assert!(parse(&["set", "p1"]).is_err());
    }
}
