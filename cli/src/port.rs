//! `nubo port …`: addresses on networks, pluggable into servers.

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{
    CreatePortRequest, FixedIp, Port, Server, ServerAddress, UpdatePortRequest,
};
use serde_json::{json, Value};
use tonic::Code;

use crate::api::{Api, Call};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Port commands.
#[derive(Debug, Subcommand)]
pub enum PortCmd {
    /// Capture a port's traffic (tcpdump on its node, streamed here).
    Capture {
        /// Port name or id, or a server name or id (its port; with several
        /// ports, `--network` chooses one).
        target: String,
        /// With a server: the network whose port to capture (name or id).
        #[arg(long)]
        network: Option<String>,
        /// Stop after this many packets.
        #[arg(long)]
        count: Option<u32>,
    },
    /// Create a port.
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
    /// Change a port's name, description, administrative state, security
    /// groups or fixed IPs.
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
    #[arg(long, conflicts_with = "fixed_ips")]
    pub ip: Option<Ipv4Addr>,
    /// A fixed IP: subnet=SUBNET_ID,ip=ADDRESS (either part may be left
    /// out; repeatable: one address each).
    #[arg(long = "fixed-ip", value_parser = parse_fixed_ip)]
    pub fixed_ips: Vec<FixedIp>,
    /// Security group (name or id, repeatable; default: the project's "default").
    #[arg(long = "security-group", conflicts_with = "no_port_security")]
    pub security_groups: Vec<String>,
    /// No security group at all (port security on: only DHCP and metadata pass).
    #[arg(long = "no-security-group", conflicts_with = "security_groups")]
    pub no_security_groups: bool,
    /// Disable anti-spoofing and security groups on the port.
    #[arg(long)]
    pub no_port_security: bool,
    /// Description.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Create it administratively down (it passes no traffic until `port set --enable`).
    #[arg(long)]
    pub disable: bool,
    /// Its MAC (aa:bb:cc:dd:ee:ff, unicast, unique; default: nubo picks one).
    #[arg(long)]
    pub mac: Option<String>,
    /// Bind it to this node before a server plugs it (admin; Neutron's
    /// binding:host_id): only a server on that node may then plug it.
    #[arg(long)]
    pub host: Option<String>,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> CreatePortRequest {
        CreatePortRequest {
            name: self.name.clone(),
            project: project.to_string(),
            network_ref: self.network.clone(),
            ip: self.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            fixed_ips: self.fixed_ips.clone(),
            security_groups: self.security_groups.clone(),
            no_port_security: self.no_port_security,
            description: self.description.clone(),
            disabled: self.disable,
            mac: self.mac.clone().unwrap_or_default(),
            no_security_groups: self.no_security_groups,
            host: self.host.clone().unwrap_or_default(),
        }
    }
}

/// `subnet=ID,ip=ADDRESS`, either part optional (checked by the
/// coordinator).
fn parse_fixed_ip(s: &str) -> Result<FixedIp, String> {
    let mut f = FixedIp::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("subnet", v)) => f.subnet_id = v.trim().to_string(),
            Some(("ip", v)) => f.ip = v.trim().to_string(),
            _ => return Err(format!("{part:?}: expected subnet=ID or ip=ADDRESS")),
        }
    }
    if f.subnet_id.is_empty() && f.ip.is_empty() {
        return Err(format!("{s:?}: give subnet=ID and/or ip=ADDRESS"));
    }
    Ok(f)
}

/// `nubo port set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Port name or id.
    pub port: String,
    /// The port's new security groups (names or ids; replaces the current ones).
    #[arg(long = "security-group")]
    pub security_groups: Vec<String>,
    /// Remove every security group.
    #[arg(long = "no-security-group", conflicts_with = "security_groups")]
    pub no_security_groups: bool,
    /// New name (empty clears it).
    #[arg(long)]
    pub name: Option<String>,
    /// New description.
    #[arg(long)]
    pub description: Option<String>,
    /// Administratively up: the port passes traffic again.
    #[arg(long)]
    pub enable: bool,
    /// Administratively down: the port passes no traffic.
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    /// The port's new fixed IPs, subnet=SUBNET_ID,ip=ADDRESS (repeatable;
    /// replaces the current ones; a subnet alone keeps the port's address
    /// there, else gets a new one).
    #[arg(long = "fixed-ip", value_parser = parse_fixed_ip)]
    pub fixed_ips: Vec<FixedIp>,
    /// The node an unplugged port is bound to (admin; "" clears it).
    #[arg(long)]
    pub host: Option<String>,
}

impl SetArgs {
    /// The API request for `project`; an error when it changes nothing.
    pub fn request(&self, project: &str) -> Result<UpdatePortRequest> {
        let r = UpdatePortRequest {
            r#ref: self.port.clone(),
            project: project.to_string(),
            security_groups: self.security_groups.clone(),
            no_security_groups: self.no_security_groups,
            name: self.name.clone(),
            description: self.description.clone(),
            admin_state_up: (self.enable || self.disable).then_some(self.enable),
            set_fixed_ips: !self.fixed_ips.is_empty(),
            fixed_ips: self.fixed_ips.clone(),
            host: self.host.clone(),
        };
        let unchanged = UpdatePortRequest {
            r#ref: r.r#ref.clone(),
            project: r.project.clone(),
            ..Default::default()
        };
        if r == unchanged {
            bail!("nothing to change: give --name, --description, --enable/--disable, --security-group, --no-security-group, --fixed-ip or --host");
        }
        Ok(r)
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
        "fixed_ips": p
            .fixed_ips
            .iter()
            .map(|f| json!({"subnet_id": opt(&f.subnet_id), "ip": f.ip}))
            .collect::<Vec<_>>(),
        "security_group_ids": p.security_group_ids,
        "device_id": opt(&p.device_id),
        "node": opt(&p.node),
        "requested_host": opt(&p.requested_host),
        "tap": opt(&p.tap),
        "port_security": p.port_security,
        "description": p.description,
        "admin_state_up": p.admin_state_up,
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
            match p.fixed_ips.len() {
                0 | 1 => p.ip.clone(),
                _ => p
                    .fixed_ips
                    .iter()
                    .map(|f| f.ip.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            },
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
        PortCmd::Capture {
            target,
            network,
            count,
        } => {
            let port = capture_target(api, &target, network.as_deref()).await?;
            let req = nubo_common::proto::CaptureRequest {
                r#ref: port,
                project: api.project.clone(),
                count,
            };
            let stream = api.ports().capture(req).await.or_fail(api)?;
            crate::relay::copy_to_stdout(api, stream).await
        }
        PortCmd::Show { port } => {
            let p = api.ports().get(api.get_req(&port)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&p))
        }
        PortCmd::Set(args) => {
            let p = api
                .ports()
                .update(args.request(&api.project)?)
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

/// The port to capture for `target` (its id): a port, or else a server's.
async fn capture_target(api: &Api, target: &str, network: Option<&str>) -> Result<String> {
    match api.ports().get(api.get_req(target)).await {
        Ok(p) => {
            let p = p.into_inner();
            if let Some(n) = network {
                if n != p.network_id {
                    bail!(
                        "--network {n} is for a server; port {target} is on network {}",
                        p.network_id
                    );
                }
            }
            if p.node.is_empty() || p.tap.is_empty() {
                bail!("port {target} is not plugged on a node: nothing to capture");
            }
            return Ok(p.id);
        }
        Err(s) if s.code() == Code::NotFound => {}
        Err(s) => return Err(api.error(s)),
    }
    let server = match api.servers().get(api.get_req(target)).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == Code::NotFound => {
            bail!("no port or server {target:?} in project {}", api.project)
        }
        Err(s) => return Err(api.error(s)),
    };
    server_port(&server, network)
}

/// Picks the server's port to capture (its id): its only one, or the one
/// on `network` (name or id).
pub fn server_port(s: &Server, network: Option<&str>) -> Result<String> {
    let name_of = |a: &ServerAddress| {
        if a.network_name.is_empty() {
            a.network_id.clone()
        } else {
            a.network_name.clone()
        }
    };
    let chosen: Vec<&ServerAddress> = s
        .addresses
        .iter()
        .filter(|a| network.is_none_or(|n| n == a.network_id || n == a.network_name))
        .collect();
    let a = match (chosen.as_slice(), network) {
        ([a], _) => *a,
        ([], None) => bail!("server {} has no port", s.name),
        ([], Some(n)) => bail!(
            "server {} has no port on network {n} (its networks: {})",
            s.name,
            s.addresses
                .iter()
                .map(name_of)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, _) => bail!(
            "server {} has {} ports: choose one with --network ({})",
            s.name,
            chosen.len(),
            chosen
                .iter()
                .map(|a| name_of(a))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if s.node.is_empty() || a.tap.is_empty() {
        bail!(
            "server {} is not placed on a node yet: no tap to capture on",
            s.name
        );
    }
    Ok(a.port_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<PortCmd, clap::Error> {
        crate::testutil::parse_cmd(args)
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
                ..Default::default()
            }
        );
        let Ok(PortCmd::Create(a)) = parse(&[
            "create",
            "p2",
            "--network",
            "net1",
            "--mac",
            "02:00:00:00:00:09",
            "--disable",
            "--no-security-group",
            "--description",
            "d",
        ]) else {
            panic!("not a create")
        };
        let r = a.request("proj");
        assert_eq!(
            (
                r.mac.as_str(),
                r.disabled,
                r.no_security_groups,
                r.description.as_str()
            ),
            ("02:00:00:00:00:09", true, true, "d")
        );
        assert!(parse(&[
            "create",
            "p",
            "--network",
            "n",
            "--no-security-group",
            "--security-group",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn fixed_ips_are_repeated_subnet_and_address_pairs() {
        let Ok(PortCmd::Create(a)) = parse(&[
            "create",
            "p1",
            "--network",
            "net1",
            "--fixed-ip",
            "subnet=s1",
            "--fixed-ip",
            "subnet=s2,ip=10.1.0.9",
            "--fixed-ip",
            "ip=10.0.0.7",
        ]) else {
            panic!("not a create")
        };
        let f = |s: &str, ip: &str| FixedIp {
            subnet_id: s.into(),
            ip: ip.into(),
        };
        assert_eq!(
            a.request("p").fixed_ips,
            vec![f("s1", ""), f("s2", "10.1.0.9"), f("", "10.0.0.7")]
        );
        for bad in ["net=x", "subnet", ""] {
            assert!(
                parse(&["create", "p", "--network", "n", "--fixed-ip", bad]).is_err(),
                "{bad:?}"
            );
        }
        let Ok(PortCmd::Set(s)) = parse(&["set", "p1", "--fixed-ip", "subnet=s2"]) else {
            panic!("not a set")
        };
        let r = s.request("p").unwrap();
        assert!(r.set_fixed_ips && r.security_groups.is_empty());
        assert_eq!(r.fixed_ips, vec![f("s2", "")]);
    }

    fn server(node: &str, nets: &[(&str, &str)]) -> Server {
        Server {
            name: "vm-a".into(),
            node: node.into(),
            addresses: nets
                .iter()
                .map(|(net, tap)| ServerAddress {
                    network_id: format!("id-{net}"),
                    network_name: net.to_string(),
                    tap: tap.to_string(),
                    port_id: format!("port-{tap}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn capture_by_server_picks_its_port() {
        let one = server("hv-1", &[("net1", "tapaaa")]);
        assert_eq!(server_port(&one, None).unwrap(), "port-tapaaa");
        let two = server("hv-1", &[("net1", "tapaaa"), ("net2", "tapbbb")]);
        let e = server_port(&two, None).unwrap_err().to_string();
        assert!(
            e.contains("has 2 ports: choose one with --network (net1, net2)"),
            "{e}"
        );
        assert_eq!(server_port(&two, Some("net2")).unwrap(), "port-tapbbb");
        assert_eq!(server_port(&two, Some("id-net1")).unwrap(), "port-tapaaa");
        let e = server_port(&two, Some("net9")).unwrap_err().to_string();
        assert!(
            e.contains("no port on network net9 (its networks: net1, net2)"),
            "{e}"
        );
        let e = server_port(&server("", &[("net1", "")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not placed on a node yet"), "{e}");
        let e = server_port(&server("hv-1", &[]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no port"), "{e}");
        assert!(matches!(
            parse(&["capture", "vm-a", "--network", "net2", "--count", "5"]),
            Ok(PortCmd::Capture { count: Some(5), .. })
        ));
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

    fn set(args: &[&str]) -> Result<UpdatePortRequest> {
        let mut all = vec!["set", "p1"];
        all.extend_from_slice(args);
        let Ok(PortCmd::Set(a)) = parse(&all) else {
            bail!("not a set")
        };
        a.request("")
    }

    #[test]
    fn set_changes_only_what_is_given_and_something() {
        let r = set(&["--security-group", "web"]).unwrap();
        assert_eq!(r.security_groups, vec!["web".to_string()]);
        assert_eq!((r.name, r.admin_state_up), (None, None));
        let r = set(&["--name", "n2", "--description", "", "--disable"]).unwrap();
        assert_eq!(
            (
                r.name.as_deref(),
                r.description.as_deref(),
                r.admin_state_up
            ),
            (Some("n2"), Some(""), Some(false))
        );
        assert!(r.security_groups.is_empty() && !r.no_security_groups);
        assert_eq!(set(&["--enable"]).unwrap().admin_state_up, Some(true));
        assert!(set(&["--no-security-group"]).unwrap().no_security_groups);
        assert!(set(&[]).is_err(), "nothing to change");
        assert!(set(&["--enable", "--disable"]).is_err());
        assert!(set(&["--no-security-group", "--security-group", "x"]).is_err());
    }
}
