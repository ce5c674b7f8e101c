//! `nubo floating ip …`: addresses of external networks mapped 1:1 to a
//! port's fixed address.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{CreateFloatingIpRequest, FloatingIp, SetFloatingIpRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// `nubo floating …`.
#[derive(Debug, Subcommand)]
pub enum FloatingCmd {
    /// Floating IPs.
    #[command(subcommand)]
    Ip(FloatingIpCmd),
}

/// `nubo floating ip …`.
#[derive(Debug, Subcommand)]
pub enum FloatingIpCmd {
    /// Allocate a floating IP from an external network.
    Create {
        /// External network (name or id).
        network: String,
        /// A specific address of it (default: any free one).
        #[arg(long)]
        address: Option<String>,
    },
    /// Associate a floating IP with a server's port or a port.
    Set {
        /// Floating IP (id or address).
        floating_ip: String,
        /// The server (its only port, or the one on --network).
        #[arg(long, conflicts_with = "port", required_unless_present = "port")]
        server: Option<String>,
        /// The port (id or name).
        #[arg(long)]
        port: Option<String>,
        /// With --server: the network of the port to use (the API refuses
        /// it with --port).
        #[arg(long)]
        network: Option<String>,
        /// Which of the port's fixed IPs (default: its first).
        #[arg(long)]
        fixed_ip: Option<std::net::Ipv4Addr>,
    },
    /// Remove a floating IP's association.
    Unset {
        /// Floating IP (id or address).
        floating_ip: String,
    },
    /// List floating IPs.
    List {
        /// Every project's (cloud admin).
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one floating IP.
    Show {
        /// Floating IP (id or address).
        floating_ip: String,
    },
    /// Release floating IPs.
    Delete {
        /// Floating IPs (ids or addresses).
        #[arg(required = true)]
        floating_ips: Vec<String>,
    },
}

/// The JSON (and `show`) form of a floating IP.
pub fn to_json(f: &FloatingIp) -> Value {
    json!({
        "id": f.id,
        "project": f.project,
        "network": f.network_id,
        "address": f.address,
        "port": opt(&f.port_id),
        "fixed_ip": opt(&f.fixed_ip),
        "router": opt(&f.router_id),
        "created_at": opt(&f.created_at),
    })
}

/// The `floating ip list` table.
pub fn table(fips: &[FloatingIp]) -> Table {
    let mut t = Table::new(&["ID", "Address", "Fixed IP", "Port"]);
    for f in fips {
        t.row(vec![
            f.id.clone(),
            f.address.clone(),
            f.fixed_ip.clone(),
            f.port_id.clone(),
        ]);
    }
    t
}

/// Runs a floating IP command.
pub async fn run(cmd: FloatingCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let FloatingCmd::Ip(cmd) = cmd;
    let f = match cmd {
        FloatingIpCmd::Create { network, address } => {
            let req = CreateFloatingIpRequest {
                network,
                project: api.project.clone(),
                address: address.unwrap_or_default(),
            };
            api.floating_ips().create(req).await.or_fail(api)?
        }
        FloatingIpCmd::Set {
            floating_ip,
            server,
            port,
            network,
            fixed_ip,
        } => {
            let req = SetFloatingIpRequest {
                fixed_ip: fixed_ip.map(|f| f.to_string()).unwrap_or_default(),
                r#ref: floating_ip,
                project: api.project.clone(),
                port: port.unwrap_or_default(),
                server: server.unwrap_or_default(),
                network: network.unwrap_or_default(),
            };
            api.floating_ips().set(req).await.or_fail(api)?
        }
        FloatingIpCmd::Unset { floating_ip } => api
            .floating_ips()
            .unset(api.get_req(&floating_ip))
            .await
            .or_fail(api)?,
        FloatingIpCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = api.floating_ips();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.floating_ips, r.next_page_token))
                    }
                })
                .await?;
            return output::items(ctx.format, &items, table, to_json);
        }
        FloatingIpCmd::Show { floating_ip } => api
            .floating_ips()
            .get(api.get_req(&floating_ip))
            .await
            .or_fail(api)?,
        FloatingIpCmd::Delete { floating_ips } => {
            return ctx
                .delete_all("floating IPs", &floating_ips, |r| async move {
                    let req = api.delete_req(&r);
                    api.floating_ips().delete(req).await.or_fail(api).map(drop)
                })
                .await
        }
    };
    output::show(ctx.format, &to_json(&f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_needs_exactly_one_target() {
        let parse = |a: &[&str]| crate::testutil::parse_cmd::<FloatingCmd>(a);
        assert!(parse(&["ip", "set", "10.9.0.5", "--server", "vm"]).is_ok());
        assert!(parse(&["ip", "set", "10.9.0.5", "--port", "p1"]).is_ok());
        assert!(parse(&["ip", "set", "10.9.0.5"]).is_err());
        assert!(parse(&["ip", "set", "10.9.0.5", "--server", "vm", "--port", "p"]).is_err());
    }
}
