//! `nubo server add port|network` and `nubo server remove port`: plug a
//! port into a server (running or not) and unplug it; the node's agent
//! hot-plugs the NIC.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::ServerPortRequest;
use serde_json::json;

use crate::api::Call;
use crate::ctx::Ctx;
use crate::output::{self, Format};

/// `nubo server add …`.
#[derive(Debug, Subcommand)]
pub enum AddCmd {
    /// Plug an existing, unplugged port into a server (NIC hot-plug).
    Port {
        /// Server name or id.
        server: String,
        /// Port name or id.
        port: String,
    },
    /// Plug a new port on a network into a server (NIC hot-plug); the
    /// port is deleted when it is removed or the server is deleted.
    Network {
        /// Server name or id.
        server: String,
        /// Network name or id.
        network: String,
        /// The new port's address (default: allocated).
        #[arg(long)]
        fixed_ip: Option<String>,
    },
}

/// `nubo server remove …`.
#[derive(Debug, Subcommand)]
pub enum RemoveCmd {
    /// Unplug a port from a server (NIC hot-unplug): a port made for the
    /// server is deleted, any other is kept unplugged.
    Port {
        /// Server name or id.
        server: String,
        /// Port name or id.
        port: String,
    },
}

/// The request of an `add` command. Pure.
pub fn add_request(cmd: AddCmd, project: &str) -> ServerPortRequest {
    match cmd {
        AddCmd::Port { server, port } => ServerPortRequest {
            r#ref: server,
            project: project.to_string(),
            port,
            network: String::new(),
            fixed_ip: String::new(),
        },
        AddCmd::Network {
            server,
            network,
            fixed_ip,
        } => ServerPortRequest {
            r#ref: server,
            project: project.to_string(),
            port: String::new(),
            network,
            fixed_ip: fixed_ip.unwrap_or_default(),
        },
    }
}

/// Runs `server add …`: shows the plugged port.
pub async fn add(cmd: AddCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let p = api
        .servers()
        .add_port(add_request(cmd, &api.project))
        .await
        .or_fail(api)?;
    output::show(ctx.format, &crate::port::to_json(&p))
}

/// Runs `server remove …`.
pub async fn remove(cmd: RemoveCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let RemoveCmd::Port { server, port } = cmd;
    let req = ServerPortRequest {
        r#ref: server.clone(),
        project: api.project.clone(),
        port: port.clone(),
        network: String::new(),
        fixed_ip: String::new(),
    };
    api.servers().remove_port(req).await.or_fail(api)?;
    match ctx.format {
        Format::Json => output::emit_json(&json!({"server": server, "removed_port": port})),
        Format::Table => {
            println!("port {port} removed from server {server}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: AddCmd,
    }

    #[test]
    fn add_network_takes_a_fixed_ip_and_add_port_does_not() {
        let c =
            Cli::try_parse_from(["x", "network", "s1", "n1", "--fixed-ip", "10.0.0.9"]).unwrap();
        let r = add_request(c.cmd, "p");
        assert_eq!(
            (r.network.as_str(), r.fixed_ip.as_str()),
            ("n1", "10.0.0.9")
        );
        assert!(r.port.is_empty());
        let c = Cli::try_parse_from(["x", "port", "s1", "p1"]).unwrap();
        let r = add_request(c.cmd, "p");
        assert_eq!((r.r#ref.as_str(), r.port.as_str()), ("s1", "p1"));
        assert!(Cli::try_parse_from(["x", "port", "s1", "p1", "--fixed-ip", "10.0.0.9"]).is_err());
    }
}
