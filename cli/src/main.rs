//! `nubo`: the operator command line of the nubo private cloud.
//!
//! Nouns and verbs follow the OpenStack client (`nubo server create …`,
//! `nubo flavor list`); every command talks to a coordinator's gRPC API.

mod api;
mod app_cred;
mod cluster;
mod ctx;
mod flavor;
mod floating_ip;
mod identity;
mod image;
mod image_upload;
mod keypair;
mod network;
mod node;
mod output;
mod port;
mod relay;
mod router;
mod secgroup;
mod server;
mod server_group;
#[cfg(test)]
mod testutil;
mod usage;
mod volume;
mod volume_size;
mod volume_transfer;
mod volume_type;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::api::Api;
use crate::ctx::Ctx;
use crate::output::Format;

/// Operate a nubo cloud.
#[derive(Debug, Parser)]
#[command(name = "nubo", version, about)]
struct Cli {
    /// URL of the nubo API (a coordinator, or the coordinators' VIP).
    #[arg(
        long,
        global = true,
        env = "NUBO_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    endpoint: String,
    /// PEM CA certificate that signed the coordinators' TLS certificate
    /// (needed for https:// endpoints; `ca.crt` of scripts/make-certs.sh).
    #[arg(long, global = true, env = "NUBO_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Project to act in (default: the token's project, or the server's
    /// default project without authentication; a cloud admin naming
    /// another project's resource by id acts in that resource's project).
    #[arg(long, global = true, env = "NUBO_PROJECT")]
    project: Option<String>,
    #[command(subcommand)]
    noun: Noun,
}

#[derive(Debug, Subcommand)]
enum Noun {
    /// Instance sizes.
    #[command(subcommand)]
    Flavor(flavor::FlavorCmd),
    /// Boot images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Tenant networks.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// Ports (addresses on networks).
    #[command(subcommand)]
    Port(port::PortCmd),
    /// Security groups and rules.
    #[command(subcommand)]
    Secgroup(secgroup::SecgroupCmd),
    /// SSH keypairs.
    #[command(subcommand)]
    Keypair(keypair::KeypairCmd),
    /// Distributed routers: networks to each other and to an external network.
    #[command(subcommand)]
    Router(router::RouterCmd),
    /// Floating IPs (`nubo floating ip …`).
    #[command(subcommand)]
    Floating(floating_ip::FloatingCmd),
    /// Affinity / anti-affinity groups.
    #[command(subcommand, name = "server-group")]
    ServerGroup(server_group::ServerGroupCmd),
    /// Instances.
    #[command(subcommand)]
    Server(server::ServerCmd),
    /// Hypervisors.
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Coordinators, leader and the automatic evacuation switch.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Get a token (stored in ~/.config/nubo/token, mode 0600; `NUBO_TOKEN`
    /// overrides it) for a coordinator running with auth = "token".
    Login(identity::LoginArgs),
    /// Projects (cloud admin).
    #[command(subcommand)]
    Project(identity::ProjectCmd),
    /// Users (cloud admin).
    #[command(subcommand)]
    User(identity::UserCmd),
    /// Role assignments (cloud admin).
    #[command(subcommand)]
    Role(identity::RoleCmd),
    /// Project quotas and usage.
    #[command(subcommand)]
    Quota(identity::QuotaCmd),
    /// The audit trail (cloud admin).
    #[command(subcommand)]
    Audit(identity::AuditCmd),
    /// Volumes (Ceph RBD block devices), their snapshots and types.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Application credentials (`nubo application credential …`): secrets
    /// for programs, used with `nubo login --application-credential-id`.
    #[command(subcommand)]
    Application(app_cred::ApplicationCmd),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Api::connect(
        &cli.endpoint,
        cli.project.unwrap_or_default(),
        cli.ca_cert.as_deref(),
    )
    .await?;
    let ctx = Ctx {
        api,
        format: cli.format,
    };
    match cli.noun {
        Noun::Flavor(c) => flavor::run(c, &ctx).await,
        Noun::Image(c) => image::run(c, &ctx).await,
        Noun::Network(c) => network::run(c, &ctx).await,
        Noun::Port(c) => port::run(c, &ctx).await,
        Noun::Secgroup(c) => secgroup::run(c, &ctx).await,
        Noun::Keypair(c) => keypair::run(c, &ctx).await,
        Noun::ServerGroup(c) => server_group::run(c, &ctx).await,
        Noun::Router(c) => router::run(c, &ctx).await,
        Noun::Floating(c) => floating_ip::run(c, &ctx).await,
        Noun::Server(c) => server::run(c, &ctx).await,
        Noun::Node(c) => node::run(c, &ctx).await,
        Noun::Cluster(c) => cluster::run(c, &ctx).await,
        Noun::Login(a) => identity::login(a, &ctx).await,
        Noun::Project(c) => identity::project(c, &ctx).await,
        Noun::User(c) => identity::user(c, &ctx).await,
        Noun::Role(c) => identity::role(c, &ctx).await,
        Noun::Quota(c) => identity::quota(c, &ctx).await,
        Noun::Audit(c) => identity::audit(c, &ctx).await,
        Noun::Application(c) => app_cred::run(c, &ctx).await,
        Noun::Volume(c) => volume::run(c, &ctx).await,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", api::one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn login_takes_a_user_or_an_application_credential() {
        let ok = |args: &[&str]| Cli::try_parse_from(args).map(drop);
        ok(&["nubo", "login", "--user", "u", "--password-file", "f"]).unwrap();
        ok(&[
            "nubo",
            "login",
            "--application-credential-id",
            "id",
            "--secret-file",
            "f",
        ])
        .unwrap();
        for bad in [
            &["nubo", "login"][..],
            &[
                "nubo",
                "login",
                "--user",
                "u",
                "--application-credential-id",
                "i",
            ],
            &["nubo", "login", "--user", "u", "--secret-file", "f"],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let c = Cli::try_parse_from([
            "nubo",
            "--ca-cert",
            "/ca.crt",
            "application",
            "credential",
            "list",
        ])
        .unwrap();
        assert_eq!(c.ca_cert, Some(std::path::PathBuf::from("/ca.crt")));
    }
}
