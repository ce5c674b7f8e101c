//! `nubo network …`: tenant networks (IPv4 subnets on a VXLAN segment)
//! and provider networks (a flat or VLAN segment of a physical network;
//! admin only, as are external and shared networks).

use std::net::Ipv4Addr;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use nubo_common::proto::{
    CreateNetworkRequest, HostRoute, IpRange, Network, SetSubnetRequest, Subnet,
    UpdateNetworkRequest,
};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Network commands.
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    List {
        /// List the networks of every project.
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one network.
    Show {
        /// Network name or id.
        network: String,
    },
    /// Delete networks.
    Delete {
        /// Network names or ids.
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// A network's subnets.
    #[command(subcommand)]
    Subnet(SubnetCmd),
    /// Rename a network or change its subnet's name, gateway, DNS servers,
    /// host routes or DHCP (guests see it at their next lease renewal).
    Set(SetArgs),
}

/// `nubo network set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Network name or id.
    pub network: String,
    /// The subnet (id) the subnet options change (default: the first).
    #[arg(long)]
    pub subnet: Option<String>,
    /// New name ("" = none: the network is then referenced by its id).
    #[arg(long)]
    pub name: Option<String>,
    /// Make it an external network: routers' gateways and floating IPs
    /// (admin; refused while it is a router's subnet).
    #[arg(long, conflicts_with = "no_external")]
    pub external: bool,
    /// Make it internal again (admin; refused while routers' gateways or
    /// floating IPs are on it).
    #[arg(long)]
    pub no_external: bool,
    /// The subnet's name ("" = none).
    #[arg(long)]
    pub subnet_name: Option<String>,
    /// Gateway address, or "none" (refused while the network is in a router).
    #[arg(long, value_parser = parse_gateway)]
    pub gateway: Option<Gateway>,
    /// Replace the DNS servers (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<Ipv4Addr>,
    /// Remove every DNS server.
    #[arg(long, conflicts_with = "dns")]
    pub no_dns: bool,
    /// Replace the host routes: DESTINATION,NEXTHOP (repeatable).
    #[arg(long = "host-route", value_parser = parse_route)]
    pub host_routes: Vec<HostRoute>,
    /// Remove every host route.
    #[arg(long, conflicts_with = "host_routes")]
    pub no_host_routes: bool,
    /// Stop serving DHCP to its ports.
    #[arg(long, conflicts_with = "dhcp")]
    pub no_dhcp: bool,
    /// Serve DHCP again.
    #[arg(long)]
    pub dhcp: bool,
}

impl SetArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> UpdateNetworkRequest {
        UpdateNetworkRequest {
            r#ref: self.network.clone(),
            project: project.to_string(),
            name: self.name.clone(),
            external: (self.external || self.no_external).then_some(self.external),
            subnet_name: self.subnet_name.clone(),
            gateway: self.gateway.map(|g| gateway_field(Some(g))),
            set_dns: self.no_dns || !self.dns.is_empty(),
            dns: self.dns.iter().map(Ipv4Addr::to_string).collect(),
            set_host_routes: self.no_host_routes || !self.host_routes.is_empty(),
            host_routes: self.host_routes.clone(),
            dhcp_disabled: (self.no_dhcp || self.dhcp).then_some(self.no_dhcp),
            subnet_id: self.subnet.clone().unwrap_or_default(),
        }
    }
}

/// `DESTINATION,NEXTHOP` (checked by the coordinator).
fn parse_route(s: &str) -> Result<HostRoute, String> {
    let (d, h) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected DESTINATION,NEXTHOP"))?;
    Ok(HostRoute {
        destination: d.trim().to_string(),
        nexthop: h.trim().to_string(),
    })
}

/// `nubo network subnet …`.
#[derive(Debug, Subcommand)]
pub enum SubnetCmd {
    /// Add an IPv4 subnet to a network (not overlapping its others).
    #[command(alias = "add")]
    Set(SubnetArgs),
    /// Remove a subnet (no ports, addresses or router left).
    Delete {
        /// Subnet id, or a network (name or id) with one subnet.
        subnet: String,
    },
    /// List a network's subnets.
    List {
        /// Network name or id.
        network: String,
    },
    /// Show one subnet.
    Show {
        /// Subnet id.
        subnet: String,
    },
}

/// `nubo network subnet set`.
#[derive(Debug, Args)]
pub struct SubnetArgs {
    /// Network name or id.
    pub network: String,
    /// IPv4 subnet, e.g. 10.20.0.0/24.
    #[arg(long)]
    pub cidr: String,
    /// Gateway address handed out by DHCP, or "none" (default: first host address).
    #[arg(long, value_parser = parse_gateway)]
    pub gateway: Option<Gateway>,
    /// DNS server handed out by DHCP (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<Ipv4Addr>,
    /// A name for the subnet (shown to OpenStack clients).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve no DHCP to its ports.
    #[arg(long)]
    pub no_dhcp: bool,
    /// A static route handed out by DHCP: DESTINATION,NEXTHOP (repeatable).
    #[arg(long = "host-route", value_parser = parse_route)]
    pub host_routes: Vec<HostRoute>,
    /// Allocate only from FIRST-LAST (repeatable; default: every host
    /// address but the gateway).
    #[arg(long = "allocation-pool", value_parser = parse_pool)]
    pub allocation_pools: Vec<IpRange>,
}

/// `FIRST-LAST` (checked by the coordinator).
fn parse_pool(s: &str) -> Result<IpRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST"))?;
    Ok(IpRange {
        start: a.trim().to_string(),
        end: b.trim().to_string(),
    })
}

impl SubnetArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> SetSubnetRequest {
        SetSubnetRequest {
            r#ref: self.network.clone(),
            project: project.to_string(),
            cidr: self.cidr.clone(),
            gateway: gateway_field(self.gateway),
            dns: self.dns.iter().map(Ipv4Addr::to_string).collect(),
            name: self.name.clone().unwrap_or_default(),
            dhcp_disabled: self.no_dhcp,
            host_routes: self.host_routes.clone(),
            allocation_pools: self.allocation_pools.clone(),
        }
    }
}

/// The API's gateway field: empty = the default, `none`, or an address.
fn gateway_field(g: Option<Gateway>) -> String {
    match g {
        None => String::new(),
        Some(Gateway::None) => "none".into(),
        Some(Gateway::Ip(ip)) => ip.to_string(),
    }
}

/// `--gateway IP|none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gateway {
    /// This address.
    Ip(Ipv4Addr),
    /// No gateway.
    None,
}

fn parse_gateway(s: &str) -> Result<Gateway, String> {
    if s == "none" {
        return Ok(Gateway::None);
    }
    s.parse()
        .map(Gateway::Ip)
        .map_err(|_| format!("expected an IPv4 address or \"none\", got {s:?}"))
}

/// `nubo network create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network name (unique in the project); without: a network without a
    /// name, referenced by its id (as Neutron allows).
    pub name: Option<String>,
    /// IPv4 subnet, e.g. 10.20.0.0/24 (without: add it later with `nubo
    /// network subnet set`).
    #[arg(long)]
    pub cidr: Option<String>,
    /// Gateway address handed out by DHCP, or "none" (default: first host address).
    #[arg(long, value_parser = parse_gateway, requires = "cidr")]
    pub gateway: Option<Gateway>,
    /// DNS server handed out by DHCP (repeatable).
    #[arg(long = "dns", requires = "cidr")]
    pub dns: Vec<Ipv4Addr>,
    /// Guest MTU (default: underlay MTU − 50).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// A provider network on a physical network (admin): its frames go
    /// untagged (flat) or tagged (vlan) on the interface each agent maps
    /// the physical network to (`[physnets]`).
    #[arg(long, value_enum, requires = "physical_network")]
    pub provider_type: Option<ProviderTypeArg>,
    /// The physical network of a provider network, e.g. physnet1.
    #[arg(long)]
    pub physical_network: Option<String>,
    /// The VLAN id (1-4094) of a vlan provider network.
    #[arg(long)]
    pub segment: Option<u32>,
    /// An external network: routers' gateways and floating IPs (admin).
    #[arg(long)]
    pub external: bool,
    /// Usable by every project (admin).
    #[arg(long)]
    pub shared: bool,
}

/// `--provider-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderTypeArg {
    /// Untagged frames on the physical network's interface.
    Flat,
    /// 802.1Q frames tagged with `--segment`.
    Vlan,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> CreateNetworkRequest {
        CreateNetworkRequest {
            name: self.name.clone().unwrap_or_default(),
            project: project.to_string(),
            cidr: self.cidr.clone().unwrap_or_default(),
            gateway: gateway_field(self.gateway),
            dns: self.dns.iter().map(Ipv4Addr::to_string).collect(),
            mtu: self.mtu.unwrap_or(0),
            provider_type: match self.provider_type {
                None => String::new(),
                Some(ProviderTypeArg::Flat) => "flat".into(),
                Some(ProviderTypeArg::Vlan) => "vlan".into(),
            },
            physical_network: self.physical_network.clone().unwrap_or_default(),
            segment: self.segment.unwrap_or(0),
            external: self.external,
            shared: self.shared,
        }
    }
}

/// The JSON (and `show`) form of a network.
pub fn to_json(n: &Network) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "project": n.project,
        "cidr": opt(&n.cidr),
        "subnet_name": opt(&n.subnet_name),
        "gateway": opt(&n.gateway),
        "vni": n.vni,
        "mtu": n.mtu,
        "dns": n.dns,
        "provider_type": opt(&n.provider_type),
        "physical_network": opt(&n.physical_network),
        "segment": (n.segment != 0).then_some(n.segment),
        "external": n.external,
        "shared": n.shared,
        "dhcp": !n.dhcp_disabled,
        "allocation_pools": n
            .allocation_pools
            .iter()
            .map(|p| format!("{}-{}", p.start, p.end))
            .collect::<Vec<_>>(),
        "host_routes": n
            .host_routes
            .iter()
            .map(|r| json!({"destination": r.destination, "nexthop": r.nexthop}))
            .collect::<Vec<_>>(),
        "subnets": n.subnets.iter().map(subnet_json).collect::<Vec<_>>(),
        "created_at": opt(&n.created_at),
    })
}

/// The JSON form of a subnet.
pub fn subnet_json(s: &Subnet) -> Value {
    json!({
        "id": s.id,
        "name": opt(&s.name),
        "cidr": s.cidr,
        "gateway": opt(&s.gateway),
        "dns": s.dns,
        "dhcp": !s.dhcp_disabled,
        "allocation_pools": s
            .allocation_pools
            .iter()
            .map(|p| format!("{}-{}", p.start, p.end))
            .collect::<Vec<_>>(),
        "host_routes": s
            .host_routes
            .iter()
            .map(|r| json!({"destination": r.destination, "nexthop": r.nexthop}))
            .collect::<Vec<_>>(),
    })
}

/// The `network subnet list` table.
pub fn subnet_table(subnets: &[Subnet]) -> Table {
    let mut t = Table::new(&["ID", "Name", "CIDR", "Gateway", "DHCP"]);
    for s in subnets {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.cidr.clone(),
            s.gateway.clone(),
            (!s.dhcp_disabled).to_string(),
        ]);
    }
    t
}

/// The segment column: `vxlan 42`, `vlan 120 physnet1`, `flat physnet1`.
fn segment(n: &Network) -> String {
    match n.provider_type.as_str() {
        "" => format!("vxlan {}", n.vni),
        "vlan" => format!("vlan {} {}", n.segment, n.physical_network),
        other => format!("{other} {}", n.physical_network),
    }
}

/// The flags column: `external`, `shared`.
fn flags(n: &Network) -> String {
    [(n.external, "external"), (n.shared, "shared")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect::<Vec<_>>()
        .join(",")
}

/// The `network list` table.
pub fn table(nets: &[Network]) -> Table {
    let mut t = Table::new(&["ID", "Name", "CIDR", "Gateway", "Segment", "MTU", "Flags"]);
    for n in nets {
        t.row(vec![
            n.id.clone(),
            n.name.clone(),
            n.cidr.clone(),
            n.gateway.clone(),
            segment(n),
            n.mtu.to_string(),
            flags(n),
        ]);
    }
    t
}

/// Runs a network command.
pub async fn run(cmd: NetworkCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        NetworkCmd::Create(args) => {
            let n = api
                .networks()
                .create(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NetworkCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = api.networks();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.networks, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        NetworkCmd::Show { network } => {
            let n = api
                .networks()
                .get(api.get_req(&network))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NetworkCmd::Delete { networks } => {
            ctx.delete_all("networks", &networks, |r| async move {
                let req = api.delete_req(&r);
                api.networks().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
        NetworkCmd::Subnet(SubnetCmd::Set(args)) => {
            let n = api
                .networks()
                .set_subnet(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NetworkCmd::Set(args) => {
            let n = api
                .networks()
                .update(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NetworkCmd::Subnet(SubnetCmd::Delete { subnet }) => {
            let n = api
                .networks()
                .delete_subnet(api.delete_req(&subnet))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&n))
        }
        NetworkCmd::Subnet(SubnetCmd::List { network }) => {
            let n = api
                .networks()
                .get(api.get_req(&network))
                .await
                .or_fail(api)?;
            output::items(ctx.format, &n.subnets, subnet_table, subnet_json)
        }
        NetworkCmd::Subnet(SubnetCmd::Show { subnet }) => {
            let n = api
                .networks()
                .get_subnet(api.get_req(&subnet))
                .await
                .or_fail(api)?;
            match n.subnets.iter().find(|s| s.id == subnet) {
                Some(s) => output::show(ctx.format, &subnet_json(s)),
                None => anyhow::bail!("network {:?} has several subnets: give a subnet id", n.name),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<CreateNetworkRequest, clap::Error> {
        crate::testutil::parse_args::<CreateArgs>(args).map(|a| a.request("p"))
    }

    #[test]
    fn a_network_without_a_name_and_router_external_flags() {
        let r = parse(&["--cidr", "10.0.0.0/24"]).unwrap();
        assert_eq!((r.name.as_str(), r.cidr.as_str()), ("", "10.0.0.0/24"));
        let set = |args: &[&str]| {
            crate::testutil::parse_args::<SetArgs>(args).map(|a| a.request("p").external)
        };
        assert_eq!(set(&["n", "--external"]).unwrap(), Some(true));
        assert_eq!(set(&["n", "--no-external"]).unwrap(), Some(false));
        assert_eq!(set(&["n", "--name", "x"]).unwrap(), None);
        assert!(set(&["n", "--external", "--no-external"]).is_err());
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let r = parse(&[
            "net1",
            "--cidr",
            "10.0.0.0/24",
            "--gateway",
            "10.0.0.254",
            "--dns",
            "1.1.1.1",
            "--dns",
            "9.9.9.9",
            "--mtu",
            "1400",
        ])
        .unwrap();
        assert_eq!(
            r,
            CreateNetworkRequest {
                name: "net1".into(),
                project: "p".into(),
                cidr: "10.0.0.0/24".into(),
                gateway: "10.0.0.254".into(),
                dns: vec!["1.1.1.1".into(), "9.9.9.9".into()],
                mtu: 1400,
                ..Default::default()
            }
        );
    }

    #[test]
    fn provider_flags_map_to_the_request() {
        let r = parse(&[
            "ext",
            "--cidr",
            "10.99.0.0/24",
            "--provider-type",
            "vlan",
            "--physical-network",
            "physnet1",
            "--segment",
            "120",
            "--external",
            "--shared",
        ])
        .unwrap();
        assert_eq!(
            (
                r.provider_type.as_str(),
                r.physical_network.as_str(),
                r.segment,
                r.external,
                r.shared
            ),
            ("vlan", "physnet1", 120, true, true)
        );
        let r = parse(&["n", "--cidr", "10.0.0.0/24"]).unwrap();
        assert_eq!((r.provider_type.as_str(), r.segment), ("", 0));
        // An unknown type, or a type without its physical network.
        assert!(parse(&[
            "n",
            "--cidr",
            "10.0.0.0/24",
            "--provider-type",
            "vxlan",
            "--physical-network",
            "p"
        ])
        .is_err());
        assert!(parse(&["n", "--cidr", "10.0.0.0/24", "--provider-type", "flat"]).is_err());
    }

    #[test]
    fn gateway_none_and_default() {
        let r = parse(&["n", "--cidr", "10.0.0.0/24", "--gateway", "none"]).unwrap();
        assert_eq!(r.gateway, "none");
        let r = parse(&["n", "--cidr", "10.0.0.0/24"]).unwrap();
        assert_eq!((r.gateway.as_str(), r.mtu), ("", 0));
        assert!(parse(&["n", "--cidr", "x", "--gateway", "bogus"]).is_err());
    }
}
