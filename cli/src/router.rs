//! `nubo router …`: distributed routers between a project's networks and
//! an external network.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{CreateRouterRequest, Router, RouterSubnetRequest, UpdateRouterRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Router commands.
#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    /// Create a router.
    Create {
        /// Router name.
        name: String,
        /// External network (name or id) for its gateway: outbound SNAT
        /// and floating IPs.
        #[arg(long)]
        external_gateway: Option<String>,
        /// Create it down (no node routes for it until `router set --enable`).
        #[arg(long)]
        disable: bool,
    },
    /// List routers.
    List {
        /// Every project's (cloud admin).
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one router.
    Show {
        /// Router name or id.
        router: String,
    },
    /// Connect a network to a router (`nubo router add subnet R NET`, or by
    /// one of its ports: `nubo router add port R PORT`).
    #[command(subcommand)]
    Add(SubnetCmd),
    /// Disconnect a network (`nubo router remove subnet R NET`; a port
    /// interface is removed by its network).
    #[command(subcommand)]
    Remove(SubnetCmd),
    /// Rename a router, take it down (`--disable`: no node routes for
    /// it) or up again (`--enable`), or set, change or clear its gateway.
    Set {
        /// Router name or id.
        router: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Take it down.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Bring it up.
        #[arg(long)]
        enable: bool,
        /// Set or change its gateway to this external network (name or id).
        #[arg(long, conflicts_with = "no_external_gateway")]
        external_gateway: Option<String>,
        /// Remove its gateway (no outbound SNAT, no floating IPs).
        #[arg(long)]
        no_external_gateway: bool,
    },
    /// Delete routers (they must have no networks).
    Delete {
        /// Router names or ids.
        #[arg(required = true)]
        routers: Vec<String>,
    },
}

/// `… subnet ROUTER NETWORK`.
#[derive(Debug, Subcommand)]
pub enum SubnetCmd {
    /// A tenant network of the router.
    Subnet {
        /// Router name or id.
        router: String,
        /// Network name or id.
        network: String,
    },
    /// A port of a tenant network (`add` only): the router takes its
    /// address and MAC there; removing the network's interface deletes it.
    Port {
        /// Router name or id.
        router: String,
        /// Port name or id.
        port: String,
    },
}

/// The JSON (and `show`) form of a router.
pub fn to_json(r: &Router) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "project": r.project,
        "external_gateway": opt(&r.gateway_network_id),
        "gateway_ip": opt(&r.gateway_ip),
        "subnets": r.subnet_ids,
        "disabled": r.disabled,
        "snat_addresses": r
            .snat_addresses
            .iter()
            .map(|s| json!({ "node": s.node, "ip": s.ip }))
            .collect::<Vec<_>>(),
        "created_at": opt(&r.created_at),
    })
}

/// The `router list` table.
pub fn table(routers: &[Router]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Gateway IP", "Networks"]);
    for r in routers {
        t.row(vec![
            r.id.clone(),
            r.name.clone(),
            r.gateway_ip.clone(),
            r.subnet_ids.len().to_string(),
        ]);
    }
    t
}

/// Runs a router command.
pub async fn run(cmd: RouterCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let subnet_req = |c: SubnetCmd| {
        let (router, network, port) = match c {
            SubnetCmd::Subnet { router, network } => (router, network, String::new()),
            SubnetCmd::Port { router, port } => (router, String::new(), port),
        };
        RouterSubnetRequest {
            r#ref: router,
            project: api.project.clone(),
            network,
            port,
        }
    };
    let r = match cmd {
        RouterCmd::Create {
            name,
            external_gateway,
            disable,
        } => {
            let req = CreateRouterRequest {
                name,
                project: api.project.clone(),
                external_gateway: external_gateway.unwrap_or_default(),
                disabled: disable,
            };
            api.routers().create(req).await.or_fail(api)?
        }
        RouterCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = api.routers();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.routers, r.next_page_token))
                    }
                })
                .await?;
            return output::items(ctx.format, &items, table, to_json);
        }
        RouterCmd::Set {
            router,
            name,
            disable,
            enable,
            external_gateway,
            no_external_gateway,
        } => {
            let req = UpdateRouterRequest {
                r#ref: router,
                project: api.project.clone(),
                name,
                disabled: (disable || enable).then_some(disable),
                external_gateway: match no_external_gateway {
                    true => Some(String::new()),
                    false => external_gateway,
                },
            };
            api.routers().update(req).await.or_fail(api)?
        }
        RouterCmd::Show { router } => api.routers().get(api.get_req(&router)).await.or_fail(api)?,
        RouterCmd::Add(c) => api.routers().add_subnet(subnet_req(c)).await.or_fail(api)?,
        RouterCmd::Remove(c) => api
            .routers()
            .remove_subnet(subnet_req(c))
            .await
            .or_fail(api)?,
        RouterCmd::Delete { routers } => {
            return ctx
                .delete_all("routers", &routers, |r| async move {
                    let req = api.delete_req(&r);
                    api.routers().delete(req).await.or_fail(api).map(drop)
                })
                .await
        }
    };
    output::show(ctx.format, &to_json(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::proto::RouterSnatAddress;

    #[test]
    fn show_lists_the_snat_address_of_each_node() {
        let r = Router {
            id: "r-1".into(),
            name: "r1".into(),
            snat_addresses: vec![
                RouterSnatAddress {
                    node: "hv-a".into(),
                    ip: "10.77.0.7".into(),
                },
                RouterSnatAddress {
                    node: "hv-b".into(),
                    ip: "10.77.0.9".into(),
                },
            ],
            ..Default::default()
        };
        let j = to_json(&r);
        assert_eq!(
            j["snat_addresses"],
            json!([{"node": "hv-a", "ip": "10.77.0.7"}, {"node": "hv-b", "ip": "10.77.0.9"}])
        );
        let table = crate::output::fields_table(&j).render();
        assert!(
            table.contains("ip=10.77.0.7, node=hv-a") && table.contains("ip=10.77.0.9, node=hv-b"),
            "{table}"
        );
        // None yet: an empty list, not a missing field.
        assert_eq!(to_json(&Router::default())["snat_addresses"], json!([]));
    }

    #[test]
    fn add_subnet_parses_as_two_words() {
        let c: RouterCmd = crate::testutil::parse_cmd(&["add", "subnet", "r1", "net1"]).unwrap();
        assert!(matches!(
            c,
            RouterCmd::Add(SubnetCmd::Subnet { ref router, ref network })
                if router == "r1" && network == "net1"
        ));
        assert!(crate::testutil::parse_cmd::<RouterCmd>(&["add", "r1", "net1"]).is_err());
    }
}
