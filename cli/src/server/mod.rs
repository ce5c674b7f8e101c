//! `nubo server …`: instances. Creation and `--wait` live in
//! [`create`], migrations in [`migrate`].

mod create;
mod migrate;
mod nics;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{
    ListServersRequest, ResizeServerRequest, Server, ServerActionRequest, SetServerMetadataRequest,
    UnsetServerMetadataRequest, UpdateServerRequest,
};
use serde_json::{json, Value};

use crate::api::{Api, Call, PAGE_SIZE};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Format, Table};

/// Server commands.
#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Create one or many servers.
    Create(Box<create::CreateArgs>),
    /// List servers.
    List(ListArgs),
    /// Show a server: placement, ports, taps and where to tcpdump.
    Show {
        /// Server name or id.
        server: String,
    },
    /// Print the serial console log (from the node's agent).
    Console {
        /// Server name or id.
        server: String,
        /// Keep printing what the guest writes.
        #[arg(long)]
        follow: bool,
    },
    /// Delete servers.
    Delete {
        /// Server names or ids.
        #[arg(required = true)]
        servers: Vec<String>,
        /// Wait until they are gone.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Power a server on.
    Start {
        /// Server name or id.
        server: String,
    },
    /// Power a server off.
    Stop {
        /// Server name or id.
        server: String,
    },
    /// Reboot a server.
    Reboot {
        /// Server name or id.
        server: String,
    },
    /// Rebuild a server: its root disk made again from an image (the one
    /// it has by default); same id, ports, addresses, volumes and power.
    Rebuild {
        /// Server name or id.
        server: String,
        /// Image id or name.
        #[arg(long)]
        image: Option<String>,
        /// New name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Lock a server: its changes (power, rename, metadata, resize,
    /// delete) are refused for anyone but cloud admins until unlocked.
    Lock {
        /// Server name or id.
        server: String,
        /// Why (shown in `server show`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Unlock a locked server.
    Unlock {
        /// Server name or id.
        server: String,
    },
    /// Add a security group to every port of a server (the firewalls of
    /// its node converge).
    AddSecurityGroup {
        /// Server name or id.
        server: String,
        /// Security group name or id.
        group: String,
    },
    /// The password the server's guest posted to the metadata service
    /// (empty when none; typically encrypted with the server's key).
    Password {
        /// Server name or id.
        server: String,
        /// Clear it instead (the guest may then post a new one).
        #[arg(long)]
        clear: bool,
    },
    /// Remove a security group from every port of a server (a port may be
    /// left with none: then only its anti-spoofing rules apply).
    RemoveSecurityGroup {
        /// Server name or id.
        server: String,
        /// Security group name or id.
        group: String,
    },
    /// List the availability zones servers may be placed in.
    Zones,
    /// What was done to a server (create, start, stop, reboot, rebuild,
    /// resize, lock, unlock), oldest first, with request ids.
    Actions {
        /// Server name or id.
        server: String,
    },
    /// Move a server to another node (cloud admin): live with `--live`
    /// (it keeps running), otherwise cold (stopped, moved, started).
    Migrate(migrate::MigrateArgs),
    /// Migrations: list, show, abort.
    #[command(subcommand)]
    Migration(migrate::MigrationCmd),
    /// Give a server another flavor's vCPUs and RAM (same disk size): a
    /// running server is shut down, resized and booted again, a stopped one
    /// stays stopped. The old flavor is kept (`resized_from`) until
    /// `--confirm` (keep the new size) or `--revert` (old size and power
    /// back). The server stays on its node. `nubo server show` tells
    /// `resize_phase` (`resizing` until its agent reports the new size
    /// applied, then `verify`; after `--revert`, `reverting` until the old
    /// size is back) and the `applied_size`.
    Resize {
        /// Server name or id.
        server: String,
        /// The new flavor.
        #[arg(long, required_unless_present_any = ["confirm", "revert"], conflicts_with_all = ["confirm", "revert"])]
        flavor: Option<String>,
        /// Confirm the pending resize.
        #[arg(long, conflicts_with = "revert")]
        confirm: bool,
        /// Revert the pending resize.
        #[arg(long)]
        revert: bool,
    },
    /// Set metadata items of a server (served to the guest as `meta`)
    /// and/or rename it.
    Set {
        /// Server name or id.
        server: String,
        /// KEY=VALUE; repeatable.
        #[arg(long = "property", value_parser = key_value, required_unless_present_any = ["name", "state"])]
        properties: Vec<(String, String)>,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// Cloud admins: mark the server `error` by hand, or `active` to
        /// drop that mark (only the record changes, nothing on its node;
        /// audited).
        #[arg(long, value_parser = ["error", "active"])]
        state: Option<String>,
    },
    /// Remove metadata items of a server.
    Unset {
        /// Server name or id.
        server: String,
        /// KEY; repeatable.
        #[arg(long = "property", required = true)]
        properties: Vec<String>,
    },
    /// Make an image of a server's root disk (crash-consistent now; the
    /// image is queued until copied, then active).
    Image {
        /// Server name or id.
        server: String,
        /// The new image's name.
        name: String,
        /// raw or qcow2.
        #[arg(long, default_value = "raw")]
        disk_format: String,
        /// Image property KEY=VALUE; repeatable.
        #[arg(long = "property", value_parser = key_value)]
        properties: Vec<(String, String)>,
    },
    /// Plug a port (or a new port on a network) into a server: NIC
    /// hot-plug.
    #[command(subcommand)]
    Add(nics::AddCmd),
    /// Unplug a port from a server: NIC hot-unplug.
    #[command(subcommand)]
    Remove(nics::RemoveCmd),
}

/// Parses a `--property KEY=VALUE` (the value may contain `=`).
pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `nubo server list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only servers on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only servers whose name starts with this.
    #[arg(long)]
    pub name_prefix: Option<String>,
    /// Servers of every project.
    #[arg(long)]
    pub all_projects: bool,
    /// Only servers that changed at or after this RFC 3339 time, and the
    /// servers deleted since (state `deleted`; kept 7 days).
    #[arg(long)]
    pub changes_since: Option<String>,
}

impl ListArgs {
    /// The first-page request for `project`.
    pub fn request(&self, project: &str) -> ListServersRequest {
        ListServersRequest {
            page_size: PAGE_SIZE,
            page_token: String::new(),
            project: project.to_string(),
            all_projects: self.all_projects,
            node: self.node.clone().unwrap_or_default(),
            name_prefix: self.name_prefix.clone().unwrap_or_default(),
            changes_since: self.changes_since.clone().unwrap_or_default(),
        }
    }
}

/// Every server matching `base`, following pagination to the end.
pub async fn list_all(api: &Api, base: ListServersRequest) -> Result<Vec<Server>> {
    crate::api::all_pages(|page_token| {
        let mut c = api.servers();
        let req = ListServersRequest {
            page_token,
            ..base.clone()
        };
        async move {
            let r = c.list(req).await.or_fail(api)?;
            Ok((r.servers, r.next_page_token))
        }
    })
    .await
}

/// `net=ip; net2=ip2` (network name, or id when the name is unknown).
pub fn networks_text(s: &Server) -> String {
    s.addresses
        .iter()
        .map(|a| {
            let net = if a.network_name.is_empty() {
                &a.network_id
            } else {
                &a.network_name
            };
            if a.floating_ip.is_empty() {
                format!("{net}={}", a.ip)
            } else {
                format!("{net}={}, {}", a.ip, a.floating_ip)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The command that captures a tap's traffic on its node.
pub fn tcpdump(tap: &str) -> String {
    format!("tcpdump -i {tap} -nn")
}

/// The JSON (and `show`) form of a server.
pub fn to_json(s: &Server) -> Value {
    let res = s.resources.unwrap_or_default();
    json!({
        "id": s.id,
        "name": s.name,
        "project": s.project,
        "flavor": s.flavor,
        "image_id": s.image_id,
        "key_name": opt(&s.key_name),
        "desired_power": s.desired_power,
        "state": s.state,
        "node": opt(&s.node),
        "last_error": opt(&s.last_error),
        "addresses": s.addresses.iter().map(|a| json!({
            "network_id": a.network_id,
            "network_name": a.network_name,
            "port_id": a.port_id,
            "ip": a.ip,
            "mac": a.mac,
            "tap": a.tap,
            "floating_ip": opt(&a.floating_ip),
            "tcpdump": tcpdump(&a.tap),
        })).collect::<Vec<_>>(),
        "availability_zone": opt(&s.availability_zone),
        "server_group_id": opt(&s.server_group_id),
        "resources": { "vcpus": res.vcpus, "ram_mb": res.ram_mb, "disk_gb": res.disk_gb },
        "created_at": opt(&s.created_at),
        "updated_at": opt(&s.updated_at),
        "launch_index": s.launch_index,
        "evacuation_policy": opt(&s.evacuation_policy),
        "metadata": s.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "access_ipv4": opt(&s.access_ipv4),
        "access_ipv6": opt(&s.access_ipv6),
        "locked": s.locked,
        "locked_reason": opt(&s.locked_reason),
        "resized_from": opt(&s.resized_from),
        "resize_phase": opt(&s.resize_phase),
        "applied_size": if s.applied_vcpus == 0 { Value::Null } else {
            json!({ "vcpus": s.applied_vcpus, "ram_mb": s.applied_ram_mb })
        },
        "security_groups": s.security_groups.iter().map(|g| json!({
            "id": g.id,
            "name": g.name,
        })).collect::<Vec<_>>(),
        "observed_usage": crate::usage::server_json(s.observed_usage.as_ref()),
    })
}

/// The `server list` table.
pub fn table(servers: &[Server]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Status", "Node", "Networks", "Flavor"]);
    for s in servers {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.state.clone(),
            s.node.clone(),
            networks_text(s),
            s.flavor.clone(),
        ]);
    }
    t
}

/// `server show` in table format: the fields, a ports table and the exact
/// capture command for each tap, with the node to run it on.
pub fn show_text(s: &Server) -> String {
    let mut fields = to_json(s);
    if let Value::Object(m) = &mut fields {
        m.insert("addresses".into(), Value::String(networks_text(s)));
        let groups: Vec<&str> = s.security_groups.iter().map(|g| g.name.as_str()).collect();
        m.insert("security_groups".into(), Value::String(groups.join(", ")));
    }
    let mut out = output::fields_table(&fields).render();
    if s.addresses.is_empty() {
        return out;
    }
    let mut ports = Table::new(&["Network", "IP", "Floating IP", "MAC", "Tap", "Port ID"]);
    for a in &s.addresses {
        let net = if a.network_name.is_empty() {
            &a.network_id
        } else {
            &a.network_name
        };
        ports.row(vec![
            net.clone(),
            a.ip.clone(),
            a.floating_ip.clone(),
            a.mac.clone(),
            a.tap.clone(),
            a.port_id.clone(),
        ]);
    }
    out.push_str(&ports.render());
    if s.node.is_empty() {
        out.push_str("Not placed on a node yet: no tap to capture on.\n");
    } else {
        out.push_str(&format!("Capture traffic on node {}:\n", s.node));
        for a in &s.addresses {
            out.push_str(&format!("  {}    # {}\n", tcpdump(&a.tap), a.ip));
        }
        out.push_str(&format!("or from here: nubo port capture {}", s.name));
        if s.addresses.len() > 1 {
            out.push_str(" --network NETWORK");
        }
        out.push('\n');
    }
    out
}

fn show(format: Format, s: &Server) -> Result<()> {
    match format {
        Format::Json => output::emit_json(&to_json(s)),
        Format::Table => output::emit(&show_text(s)),
    }
}

/// Runs a server command.
pub async fn run(cmd: ServerCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let action = |r: String| ServerActionRequest {
        r#ref: r,
        project: api.project.clone(),
    };
    match cmd {
        ServerCmd::Create(args) => create::run(*args, ctx).await,
        ServerCmd::Migrate(args) => migrate::migrate(args, ctx).await,
        ServerCmd::Migration(cmd) => migrate::run(cmd, ctx).await,
        ServerCmd::List(args) => {
            let items = list_all(api, args.request(&api.project)).await?;
            output::items(ctx.format, &items, table, to_json)
        }
        ServerCmd::Show { server } => {
            let s = api.servers().get(api.get_req(&server)).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Console { server, follow } => {
            let req = nubo_common::proto::ConsoleRequest {
                r#ref: server,
                project: api.project.clone(),
                follow,
            };
            let stream = api.servers().console(req).await.or_fail(api)?;
            crate::relay::copy_to_stdout(api, stream).await
        }
        ServerCmd::Start { server } => {
            let s = api.servers().start(action(server)).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Stop { server } => {
            let s = api.servers().stop(action(server)).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Reboot { server } => {
            let s = api.servers().reboot(action(server)).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Rebuild {
            server,
            image,
            name,
        } => {
            let req = nubo_common::proto::RebuildServerRequest {
                r#ref: server,
                project: api.project.clone(),
                image: image.unwrap_or_default(),
                name,
                ..Default::default()
            };
            let s = api.servers().rebuild(req).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Lock { server, reason } => {
            let req = nubo_common::proto::LockServerRequest {
                r#ref: server,
                project: api.project.clone(),
                reason,
            };
            let s = api.servers().lock(req).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Unlock { server } => {
            let s = api.servers().unlock(action(server)).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Password { server, clear } => {
            if clear {
                api.servers()
                    .clear_password(action(server))
                    .await
                    .or_fail(api)?;
                return Ok(());
            }
            let p = api
                .servers()
                .get_password(api.get_req(&server))
                .await
                .or_fail(api)?;
            match ctx.format {
                Format::Json => output::emit_json(&json!({"password": p.password})),
                Format::Table => {
                    println!("{}", p.password);
                    Ok(())
                }
            }
        }
        ServerCmd::AddSecurityGroup { server, group } => {
            let req = nubo_common::proto::ServerSecurityGroupRequest {
                r#ref: server,
                project: api.project.clone(),
                security_group: group,
            };
            let s = api.servers().add_security_group(req).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::RemoveSecurityGroup { server, group } => {
            let req = nubo_common::proto::ServerSecurityGroupRequest {
                r#ref: server,
                project: api.project.clone(),
                security_group: group,
            };
            let s = api
                .servers()
                .remove_security_group(req)
                .await
                .or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Image {
            server,
            name,
            disk_format,
            properties,
        } => {
            let i = api
                .servers()
                .create_image(nubo_common::proto::CreateServerImageRequest {
                    project: api.project.clone(),
                    server,
                    name,
                    properties: properties.into_iter().collect(),
                    disk_format,
                })
                .await
                .or_fail(api)?;
            crate::output::show(ctx.format, &crate::image::to_json(&i))
        }
        ServerCmd::Actions { server } => {
            let r = api
                .servers()
                .list_actions(api.get_req(&server))
                .await
                .or_fail(api)?;
            let mut t = Table::new(&["Action", "Request ID", "User", "Start"]);
            for a in &r.actions {
                t.row(vec![
                    a.action.clone(),
                    a.request_id.clone(),
                    a.user.clone(),
                    a.start_time.clone(),
                ]);
            }
            let json: Vec<Value> = r
                .actions
                .iter()
                .map(|a| {
                    json!({"action": a.action, "request_id": a.request_id, "user": a.user,
                        "project": a.project, "start_time": a.start_time})
                })
                .collect();
            match ctx.format {
                Format::Json => output::emit_json(&Value::Array(json)),
                Format::Table => output::emit(&t.render()),
            }
        }
        ServerCmd::Zones => {
            let req = nubo_common::proto::ListRequest {
                project: api.project.clone(),
                ..Default::default()
            };
            let zones = api.servers().list_zones(req).await.or_fail(api)?.zones;
            let mut t = Table::new(&["Zone", "Available"]);
            for z in &zones {
                t.row(vec![z.name.clone(), z.available.to_string()]);
            }
            let json: Vec<Value> = zones
                .iter()
                .map(|z| json!({"name": z.name, "available": z.available}))
                .collect();
            match ctx.format {
                Format::Json => output::emit_json(&Value::Array(json)),
                Format::Table => output::emit(&t.render()),
            }
        }
        ServerCmd::Resize {
            server,
            flavor,
            confirm,
            revert,
        } => {
            let action = ServerActionRequest {
                r#ref: server.clone(),
                project: api.project.clone(),
            };
            let s = match flavor {
                Some(flavor) if !confirm && !revert => {
                    let req = ResizeServerRequest {
                        r#ref: server,
                        project: api.project.clone(),
                        flavor,
                    };
                    api.servers().resize(req).await.or_fail(api)?
                }
                _ if confirm => api.servers().confirm_resize(action).await.or_fail(api)?,
                _ => api.servers().revert_resize(action).await.or_fail(api)?,
            };
            show(ctx.format, &s)
        }
        ServerCmd::Set {
            server,
            properties,
            name,
            state,
        } => {
            let mut shown = None;
            if let Some(state) = state {
                let req = nubo_common::proto::ResetServerStateRequest {
                    r#ref: server.clone(),
                    project: api.project.clone(),
                    state,
                };
                shown = Some(api.servers().reset_state(req).await.or_fail(api)?);
            }
            if !properties.is_empty() {
                let req = SetServerMetadataRequest {
                    r#ref: server.clone(),
                    project: api.project.clone(),
                    metadata: properties.into_iter().collect(),
                    replace: false,
                };
                shown = Some(api.servers().set_metadata(req).await.or_fail(api)?);
            }
            if let Some(name) = name {
                let req = UpdateServerRequest {
                    r#ref: shown.as_ref().map_or(server, |s| s.id.clone()),
                    project: api.project.clone(),
                    name: Some(name),
                    ..Default::default()
                };
                shown = Some(api.servers().update(req).await.or_fail(api)?);
            }
            match shown {
                Some(s) => show(ctx.format, &s),
                None => bail!("nothing to change: give --property, --name or --state"),
            }
        }
        ServerCmd::Unset { server, properties } => {
            let req = UnsetServerMetadataRequest {
                r#ref: server,
                project: api.project.clone(),
                keys: properties,
            };
            let s = api.servers().unset_metadata(req).await.or_fail(api)?;
            show(ctx.format, &s)
        }
        ServerCmd::Delete {
            servers,
            wait,
            timeout,
        } => delete(ctx, servers, wait, Duration::from_secs(timeout)).await,
        ServerCmd::Add(cmd) => nics::add(cmd, ctx).await,
        ServerCmd::Remove(cmd) => nics::remove(cmd, ctx).await,
    }
}

/// Pauses between the attempts of one server's delete that met an
/// unavailable API.
const DELETE_RETRIES: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// What became of one server of a `server delete`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    /// The reference given on the command line.
    pub reference: String,
    /// The server's id and name, once resolved.
    pub server: Option<(String, String)>,
    /// The error, if it was not deleted.
    pub error: Option<String>,
}

/// Deletes the server `r`: resolves it, then deletes it by id. Transient
/// failures are retried; a server that is gone after a delete whose answer
/// was lost counts as deleted.
async fn delete_one(api: &Api, r: &str) -> Deleted {
    let mut out = Deleted {
        reference: r.to_string(),
        server: None,
        error: None,
    };
    let mut pauses = DELETE_RETRIES.iter();
    let mut sent = false;
    loop {
        let step = async {
            let id = match &out.server {
                Some((id, _)) => id.clone(),
                None => {
                    let s = api.servers().get(api.get_req(r)).await?.into_inner();
                    out.server = Some((s.id.clone(), s.name.clone()));
                    s.id
                }
            };
            sent = true;
            api.servers().delete(api.delete_req(&id)).await.map(|_| ())
        }
        .await;
        match step {
            Ok(()) => return out,
            // The delete whose answer was lost did it.
            Err(s) if s.code() == tonic::Code::NotFound && sent && out.server.is_some() => {
                return out
            }
            Err(s) if create::transient(&s) => match pauses.next() {
                Some(d) => {
                    eprintln!(
                        "warning: deleting {r}: {}; retrying in {d:?}",
                        crate::api::one_line(s.message())
                    );
                    tokio::time::sleep(*d).await;
                }
                None => {
                    out.error = Some(format!("{:#}", api.error(s)));
                    return out;
                }
            },
            Err(s) => {
                out.error = Some(format!("{:#}", api.error(s)));
                return out;
            }
        }
    }
}

/// The per-server outcome table of a delete.
pub fn deleted_table(results: &[Deleted]) -> Table {
    let mut t = Table::new(&["Server", "ID", "Result", "Error"]);
    for d in results {
        t.row(vec![
            d.server
                .as_ref()
                .map_or(d.reference.clone(), |(_, n)| n.clone()),
            d.server
                .as_ref()
                .map(|(id, _)| id.clone())
                .unwrap_or_default(),
            if d.error.is_none() {
                "deleted"
            } else {
                "failed"
            }
            .to_string(),
            d.error.clone().unwrap_or_default(),
        ]);
    }
    t
}

/// Deletes servers, reporting each one's outcome (a table when more than
/// one was asked for or any failed; JSON: `deleted` and `results`); with
/// `wait`, polls until none of them is listed any more.
async fn delete(ctx: &Ctx, refs: Vec<String>, wait: bool, timeout: Duration) -> Result<()> {
    let api = &ctx.api;
    let mut results = Vec::with_capacity(refs.len());
    for r in &refs {
        results.push(delete_one(api, r).await);
    }
    let failed: Vec<&Deleted> = results.iter().filter(|d| d.error.is_some()).collect();
    if refs.len() == 1 {
        if let Some(e) = failed.first().and_then(|d| d.error.clone()) {
            bail!("{e}");
        }
    }
    match ctx.format {
        Format::Json => output::emit_json(&json!({
            "deleted": results.iter().filter(|d| d.error.is_none()).map(|d| d.reference.as_str()).collect::<Vec<_>>(),
            "results": results.iter().map(|d| json!({
                "ref": d.reference,
                "id": d.server.as_ref().map(|(id, _)| id.as_str()),
                "name": d.server.as_ref().map(|(_, n)| n.as_str()),
                "result": if d.error.is_none() { "deleted" } else { "failed" },
                "error": d.error,
            })).collect::<Vec<_>>(),
        }))?,
        Format::Table if refs.len() > 1 => output::emit(&deleted_table(&results).render())?,
        Format::Table => {}
    }
    if !failed.is_empty() {
        bail!(
            "failed to delete {} of {} servers",
            failed.len(),
            refs.len()
        );
    }
    let gone: Vec<(String, String)> = results.into_iter().filter_map(|d| d.server).collect();
    if !wait || gone.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = gone.iter().map(|(_, n)| n.as_str()).collect();
    let base = ListServersRequest {
        page_size: PAGE_SIZE,
        project: api.project.clone(),
        name_prefix: common_prefix(&names),
        ..Default::default()
    };
    let mut pending: HashSet<String> = gone.into_iter().map(|(id, _)| id).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let listed: HashMap<String, Server> = list_all(api, base.clone())
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        pending.retain(|id| listed.contains_key(id));
        if pending.is_empty() {
            return Ok(());
        }
        if let Some(s) = pending
            .iter()
            .filter_map(|id| listed.get(id))
            .find(|s| s.state == "error")
        {
            bail!("server {} failed to delete: {}", s.name, s.last_error);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {}s: {} server(s) still deleting",
                timeout.as_secs(),
                pending.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The longest common prefix of `names` (used as a List filter when waiting).
pub fn common_prefix(names: &[&str]) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    let mut len = first.len();
    for n in &names[1..] {
        len = first
            .char_indices()
            .zip(n.chars())
            .take_while(|((_, a), b)| a == b)
            .map(|((i, a), _)| i + a.len_utf8())
            .last()
            .unwrap_or(0)
            .min(len);
    }
    first[..len].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nubo_common::proto::ServerAddress;

    #[test]
    fn resize_takes_a_flavor_or_confirm_or_revert() {
        let parse = |a: &[&str]| crate::testutil::parse_cmd::<ServerCmd>(a);
        for (args, want) in [
            (
                &["resize", "web", "--flavor", "m2"][..],
                (Some("m2"), false, false),
            ),
            (&["resize", "web", "--confirm"][..], (None, true, false)),
            (&["resize", "web", "--revert"][..], (None, false, true)),
        ] {
            match parse(args).unwrap() {
                ServerCmd::Resize {
                    server,
                    flavor,
                    confirm,
                    revert,
                } => {
                    assert_eq!(server, "web");
                    assert_eq!((flavor.as_deref(), confirm, revert), want, "{args:?}");
                }
                _ => panic!("{args:?} is not a resize"),
            }
        }
        for bad in [
            &["resize", "web"][..],
            &["resize", "web", "--confirm", "--revert"],
            &["resize", "web", "--flavor", "m2", "--confirm"],
            &["resize", "web", "--flavor", "m2", "--revert"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    fn server() -> Server {
        Server {
            id: "1b4e28ba-2fa1-11d2-883f-0016d3cca427".into(),
            name: "web-1".into(),
            flavor: "m1.small".into(),
            state: "running".into(),
            node: "cmp-3".into(),
            addresses: vec![
                ServerAddress {
                    network_id: "n1".into(),
                    network_name: "front".into(),
                    port_id: "p1".into(),
                    ip: "10.0.0.5".into(),
                    mac: "fa:16:3e:00:00:01".into(),
                    tap: "tap0123456789a".into(),
                    floating_ip: "10.77.0.50".into(),
                },
                ServerAddress {
                    network_id: "n2".into(),
                    ip: "10.1.0.9".into(),
                    tap: "tapbbbbbbbbbbb".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn list_row_has_the_operator_columns() {
        let out = table(&[server()]).render();
        let row: Vec<&str> = out
            .lines()
            .nth(3)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            row[1..7],
            [
                "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "web-1",
                "running",
                "cmp-3",
                "front=10.0.0.5, 10.77.0.50; n2=10.1.0.9",
                "m1.small"
            ]
        );
    }

    #[test]
    fn show_tells_where_to_tcpdump() {
        let text = show_text(&server());
        assert!(text.contains("Capture traffic on node cmp-3:\n"), "{text}");
        assert!(
            text.contains("  tcpdump -i tap0123456789a -nn    # 10.0.0.5\n"),
            "{text}"
        );
        assert!(text.contains("| fa:16:3e:00:00:01 |"), "{text}");
        let mut unplaced = server();
        unplaced.node.clear();
        assert!(show_text(&unplaced).contains("Not placed on a node yet"));
        let j = to_json(&server());
        assert_eq!(
            j["addresses"][1]["tcpdump"],
            "tcpdump -i tapbbbbbbbbbbb -nn"
        );
        assert_eq!(j["node"], "cmp-3");
        assert_eq!(j["key_name"], Value::Null);
        assert_eq!(j["addresses"][0]["floating_ip"], "10.77.0.50");
        assert_eq!(j["addresses"][1]["floating_ip"], Value::Null);
        assert!(networks_text(&server()).starts_with("front=10.0.0.5, 10.77.0.50; "));
        // No size reported, no resize: null.
        assert_eq!(j["applied_size"], Value::Null);
        assert_eq!(j["resize_phase"], Value::Null);
        let mut resizing = server();
        resizing.resized_from = "m1.tiny".into();
        resizing.resize_phase = "resizing".into();
        resizing.applied_vcpus = 1;
        resizing.applied_ram_mb = 512;
        let j = to_json(&resizing);
        assert_eq!(j["resize_phase"], "resizing");
        assert_eq!(j["applied_size"], json!({"vcpus": 1, "ram_mb": 512}));
    }

    #[test]
    fn list_args_map_to_filters() {
        let a = ListArgs {
            node: Some("cmp-1".into()),
            name_prefix: Some("web-".into()),
            all_projects: true,
            changes_since: Some("2026-12-05T20:00:00Z".into()),
        };
        let r = a.request("p");
        assert_eq!(r.changes_since, "2026-12-05T20:00:00Z");
        assert_eq!(
            (
                r.node.as_str(),
                r.name_prefix.as_str(),
                r.all_projects,
                r.page_size
            ),
            ("cmp-1", "web-", true, PAGE_SIZE)
        );
    }

    #[test]
    fn common_prefix_of_names() {
        assert_eq!(common_prefix(&["web-1", "web-10", "web-2"]), "web-");
        assert_eq!(common_prefix(&["a", "b"]), "");
        assert_eq!(common_prefix(&["solo"]), "solo");
        assert_eq!(common_prefix(&[]), "");
        assert_eq!(common_prefix(&["été-1", "été-2"]), "été-");
    }
}
