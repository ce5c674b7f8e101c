//! `nubo secgroup …`: security groups and their rules.

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use nubo_common::proto::{
    AddRuleRequest, CreateSecurityGroupRequest, DeleteRuleRequest, SecurityGroup,
    SecurityGroupRule, UpdateSecurityGroupRequest,
};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Format, Table};

/// Security group commands.
#[derive(Debug, Subcommand)]
pub enum SecgroupCmd {
    /// Create a security group.
    Create(CreateArgs),
    /// List security groups.
    List {
        /// List the groups of every project.
        #[arg(long)]
        all_projects: bool,
    },
    /// Show a security group and its rules.
    Show {
        /// Security group name or id.
        group: String,
    },
    /// Delete security groups.
    Delete {
        /// Security group names or ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Manage a group's rules.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Rename a group or change its description ("default" keeps its name).
    Set {
        /// Security group name or id.
        group: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
    },
}

/// `nubo secgroup create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Security group name.
    pub name: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// Rule commands.
#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Add an allow rule to a group.
    Create(RuleArgs),
    /// Remove a rule from a group.
    Delete {
        /// Security group name or id.
        group: String,
        /// Rule id.
        rule_id: String,
    },
}

/// Traffic direction, seen from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Direction {
    /// Towards the instance.
    Ingress,
    /// Leaving the instance.
    Egress,
}

/// IP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EtherType {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// An inclusive destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let num = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{p:?} is not a port number (1-65535)"))
    };
    let (lo, hi) = match s.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi {
        return Err(format!("port range {s:?} ends before it starts"));
    }
    Ok(PortRange(lo, hi))
}

fn parse_protocol(s: &str) -> Result<String, String> {
    let s = s.to_ascii_lowercase();
    match s.as_str() {
        "tcp" | "udp" | "icmp" | "any" => Ok(s),
        n if n.parse::<u8>().is_ok() => Ok(s),
        _ => Err("expected tcp, udp, icmp, any or a protocol number (0-255)".into()),
    }
}

/// `nubo secgroup rule create`.
#[derive(Debug, Args)]
pub struct RuleArgs {
    /// Security group name or id.
    pub group: String,
    /// Direction of the allowed traffic.
    #[arg(long, value_enum)]
    pub direction: Direction,
    /// IP version.
    #[arg(long, value_enum, default_value_t = EtherType::Ipv4)]
    pub ethertype: EtherType,
    /// tcp, udp, icmp, any, or an IP protocol number.
    #[arg(long, default_value = "any", value_parser = parse_protocol)]
    pub protocol: String,
    /// Destination port or range (22, 8000:8080); tcp and udp only.
    #[arg(long, value_parser = parse_port_range)]
    pub port: Option<PortRange>,
    /// Allowed remote addresses (CIDR).
    #[arg(long, conflicts_with = "remote_group")]
    pub remote_ip: Option<String>,
    /// Allowed remote group: ports that are members of this group (name or id).
    #[arg(long)]
    pub remote_group: Option<String>,
    /// ICMP type (protocol icmp; default: every type).
    #[arg(long)]
    pub icmp_type: Option<u8>,
    /// ICMP code (needs --icmp-type; default: every code).
    #[arg(long, requires = "icmp_type")]
    pub icmp_code: Option<u8>,
}

impl RuleArgs {
    /// The API request for `project`. `remote_group_id` is the resolved id
    /// of `--remote-group`.
    pub fn request(
        &self,
        project: &str,
        remote_group_id: Option<String>,
    ) -> Result<AddRuleRequest> {
        if self.port.is_some() && !matches!(self.protocol.as_str(), "tcp" | "udp" | "6" | "17") {
            bail!("--port needs --protocol tcp or udp");
        }
        let PortRange(port_min, port_max) = self.port.unwrap_or(PortRange(0, 0));
        Ok(AddRuleRequest {
            group_ref: self.group.clone(),
            project: project.to_string(),
            rule: Some(SecurityGroupRule {
                id: String::new(),
                direction: match self.direction {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                }
                .into(),
                ethertype: match self.ethertype {
                    EtherType::Ipv4 => "ipv4",
                    EtherType::Ipv6 => "ipv6",
                }
                .into(),
                protocol: self.protocol.clone(),
                port_min: port_min.into(),
                port_max: port_max.into(),
                remote_cidr: self.remote_ip.clone().unwrap_or_default(),
                remote_group_id: remote_group_id.unwrap_or_default(),
                icmp_type: self.icmp_type.map(u32::from),
                icmp_code: self.icmp_code.map(u32::from),
            }),
        })
    }
}

/// "22", "8000:8080" or "" (all ports).
fn ports_text(r: &SecurityGroupRule) -> String {
    if let Some(t) = r.icmp_type {
        return match r.icmp_code {
            Some(c) => format!("type {t} code {c}"),
            None => format!("type {t}"),
        };
    }
    match (r.port_min, r.port_max) {
        (0, 0) => String::new(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}:{b}"),
    }
}

/// A CIDR, "group <id>" or "any".
fn remote_text(r: &SecurityGroupRule) -> String {
    if !r.remote_cidr.is_empty() {
        r.remote_cidr.clone()
    } else if !r.remote_group_id.is_empty() {
        format!("group {}", r.remote_group_id)
    } else {
        "any".into()
    }
}

fn rule_json(r: &SecurityGroupRule) -> Value {
    json!({
        "id": r.id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": if r.protocol.is_empty() { "any" } else { r.protocol.as_str() },
        "port_min": r.port_min,
        "port_max": r.port_max,
        "remote_cidr": opt(&r.remote_cidr),
        "remote_group_id": opt(&r.remote_group_id),
    })
}

/// The JSON form of a security group.
pub fn to_json(g: &SecurityGroup) -> Value {
    json!({
        "id": g.id,
        "name": g.name,
        "project": g.project,
        "description": g.description,
        "rules": g.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "created_at": opt(&g.created_at),
    })
}

/// The rules table of `secgroup show`.
pub fn rules_table(g: &SecurityGroup) -> Table {
    let mut t = Table::new(&[
        "Rule ID",
        "Direction",
        "Ethertype",
        "Protocol",
        "Ports",
        "Remote",
    ]);
    for r in &g.rules {
        t.row(vec![
            r.id.clone(),
            r.direction.clone(),
            r.ethertype.clone(),
            if r.protocol.is_empty() {
                "any".into()
            } else {
                r.protocol.clone()
            },
            ports_text(r),
            remote_text(r),
        ]);
    }
    t
}

/// The `secgroup list` table.
pub fn table(groups: &[SecurityGroup]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Description", "Rules"]);
    for g in groups {
        t.row(vec![
            g.id.clone(),
            g.name.clone(),
            g.description.clone(),
            g.rules.len().to_string(),
        ]);
    }
    t
}

fn show(format: Format, g: &SecurityGroup) -> Result<()> {
    match format {
        Format::Json => output::emit_json(&to_json(g)),
        Format::Table => {
            let mut fields = to_json(g);
            if let Value::Object(m) = &mut fields {
                m.remove("rules");
            }
            let text = format!(
                "{}{}",
                output::fields_table(&fields).render(),
                rules_table(g).render()
            );
            output::emit(&text)
        }
    }
}

/// Runs a security group command.
pub async fn run(cmd: SecgroupCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        SecgroupCmd::Create(a) => {
            let req = CreateSecurityGroupRequest {
                name: a.name,
                project: api.project.clone(),
                description: a.description,
            };
            let g = api.secgroups().create(req).await.or_fail(api)?;
            show(ctx.format, &g)
        }
        SecgroupCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = api.secgroups();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.security_groups, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        SecgroupCmd::Set {
            group,
            name,
            description,
        } => {
            let g = api
                .secgroups()
                .update(UpdateSecurityGroupRequest {
                    r#ref: group,
                    project: api.project.clone(),
                    name,
                    description,
                })
                .await
                .or_fail(api)?;
            show(ctx.format, &g)
        }
        SecgroupCmd::Show { group } => {
            let g = api
                .secgroups()
                .get(api.get_req(&group))
                .await
                .or_fail(api)?;
            show(ctx.format, &g)
        }
        SecgroupCmd::Delete { groups } => {
            ctx.delete_all("security groups", &groups, |r| async move {
                let req = api.delete_req(&r);
                api.secgroups().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
        SecgroupCmd::Rule(RuleCmd::Create(a)) => {
            // Validate locally before resolving anything remotely.
            a.request(&api.project, None)?;
            let remote_group_id = match &a.remote_group {
                None => None,
                Some(r) => Some(api.secgroups().get(api.get_req(r)).await.or_fail(api)?.id),
            };
            let req = a.request(&api.project, remote_group_id)?;
            let g = api.secgroups().add_rule(req).await.or_fail(api)?;
            show(ctx.format, &g)
        }
        SecgroupCmd::Rule(RuleCmd::Delete { group, rule_id }) => {
            let req = DeleteRuleRequest {
                group_ref: group,
                project: api.project.clone(),
                rule_id,
            };
            let g = api.secgroups().delete_rule(req).await.or_fail(api)?;
            show(ctx.format, &g)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RuleArgs,
    }

    fn rule(args: &[&str]) -> Result<SecurityGroupRule> {
        let mut argv = vec!["t", "web"];
        argv.extend_from_slice(args);
        let t = T::try_parse_from(argv)?;
        let remote = t.a.remote_group.as_ref().map(|_| "G-ID".to_string());
        let req = t.a.request("p", remote)?;
        assert_eq!((req.group_ref.as_str(), req.project.as_str()), ("web", "p"));
        Ok(req.rule.unwrap_or_default())
    }

    #[test]
    fn ssh_from_a_cidr() {
        let r = rule(&[
            "--direction",
            "ingress",
            "--protocol",
            "TCP",
            "--port",
            "22",
            "--remote-ip",
            "192.0.2.0/24",
        ])
        .unwrap();
        assert_eq!(
            r,
            SecurityGroupRule {
                id: String::new(),
                direction: "ingress".into(),
                ethertype: "ipv4".into(),
                protocol: "tcp".into(),
                port_min: 22,
                port_max: 22,
                remote_cidr: "192.0.2.0/24".into(),
                remote_group_id: String::new(),
                ..Default::default()
            }
        );
        assert_eq!(ports_text(&r), "22");
        assert_eq!(remote_text(&r), "192.0.2.0/24");
    }

    #[test]
    fn port_range_and_remote_group() {
        let r = rule(&[
            "--direction",
            "egress",
            "--protocol",
            "udp",
            "--port",
            "8000:8080",
            "--remote-group",
            "db",
        ])
        .unwrap();
        assert_eq!((r.port_min, r.port_max), (8000, 8080));
        assert_eq!(r.remote_group_id, "G-ID");
        assert_eq!(ports_text(&r), "8000:8080");
        assert_eq!(remote_text(&r), "group G-ID");
    }

    #[test]
    fn defaults_are_any_protocol_any_remote() {
        let r = rule(&["--direction", "egress"]).unwrap();
        assert_eq!((r.protocol.as_str(), r.port_min), ("any", 0));
        assert_eq!(
            (ports_text(&r).as_str(), remote_text(&r).as_str()),
            ("", "any")
        );
    }

    #[test]
    fn invalid_rules_are_refused() {
        let msg = |args: &[&str]| rule(args).unwrap_err().to_string();
        assert_eq!(
            msg(&["--direction", "ingress", "--port", "22"]),
            "--port needs --protocol tcp or udp"
        );
        assert!(msg(&[
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--port",
            "90:80"
        ])
        .contains("ends before it starts"));
        assert!(msg(&["--direction", "ingress", "--protocol", "gre"]).contains("protocol"));
        assert!(rule(&["--direction", "ingress", "--protocol", "47"]).is_ok());
        assert!(rule(&[
            "--direction",
            "ingress",
            "--remote-ip",
            "1.0.0.0/8",
            "--remote-group",
            "x"
        ])
        .is_err());
        assert!(rule(&["--direction", "sideways"]).is_err());
    }
}
