//! `nubo-coordinator`: the API server, scheduler and IPAM of nubo.

use anyhow::Context;
use clap::Parser;
use nubo_coordinator::{AdminTls, Cli, Command, Config, EtcdAuthCommand, LogFormat, NodeCommand};
use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let command = cli.command.take();
    let cfg = cli.resolve().context("reading the configuration")?;
    if let Some(Command::Bootstrap {
        admin_password_file,
        admin_user,
    }) = command
    {
        return bootstrap(&cfg, &admin_password_file, &admin_user).await;
    }
    match command {
        Some(Command::EtcdAuth(c)) => return etcd_auth(&cfg, c).await,
        Some(Command::Node(c)) => return node(&cfg, c).await,
        _ => {}
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let c = nubo_coordinator::start(cfg)
        .await
        .context("starting the coordinator")?;
    eprintln!("nubo-coordinator ready on {}", c.grpc_addr());
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let watchdog = async {
        // Ping at half the watchdog timeout.
        let Some(every) = sd_notify::watchdog_enabled().map(|t| t / 2) else {
            return std::future::pending().await;
        };
        tracing::info!(?every, "systemd watchdog enabled");
        loop {
            tokio::time::sleep(every).await;
            // Only while etcd answers: a wedged coordinator gets restarted.
            if c.etcd_healthy(every / 2).await {
                if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "could not ping the systemd watchdog");
                }
            } else {
                tracing::warn!("etcd unhealthy: not feeding the systemd watchdog");
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = watchdog => {}
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    tracing::info!("shutting down");
    c.shutdown().await.context("shutting down")?;
    Ok(())
}

/// `nubo-coordinator bootstrap`: the first cloud admin, in one transaction.
async fn bootstrap(
    cfg: &Config,
    password_file: &std::path::Path,
    user: &str,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(password_file)
        .with_context(|| format!("reading {}", password_file.display()))?;
    let password = nubo_identity::bootstrap::password_from_file(&text)?;
    let admin = nubo_common::model::UserName::new(user)?;
    let etcd = nubo_coordinator::connect_etcd(cfg)
        .await
        .context("connecting to etcd")?;
    let store = etcd;
    match nubo_coordinator::api::bootstrap(
        &store,
        &admin,
        password,
        &nubo_identity::Passwords::production(),
    )
    .await?
    {
        nubo_coordinator::api::Bootstrapped::Created => {
            println!(
                "bootstrapped: user {admin} is cloud admin in project {}; start the coordinators (auth = \"token\" is the default)",
                nubo_identity::bootstrap::ADMIN_PROJECT
            );
            Ok(())
        }
        nubo_coordinator::api::Bootstrapped::AlreadyDone(keys) => anyhow::bail!(
            "the cloud is already bootstrapped ({} exist); nothing was changed",
            keys.join(", ")
        ),
    }
}

/// An etcd connection as etcd's `root` user and its auth client.
async fn admin_etcd(
    cfg: &Config,
    admin: &AdminTls,
) -> anyhow::Result<(nubo_store::Etcd, etcd_client::AuthClient)> {
    let etcd = nubo_store::Etcd::connect(&admin.etcd_config(cfg)?)
        .await
        .context("connecting to etcd")?;
    let auth = etcd.client().auth_client();
    Ok((etcd, auth))
}

/// `nubo-coordinator etcd-auth enable`.
async fn etcd_auth(cfg: &Config, c: EtcdAuthCommand) -> anyhow::Result<()> {
    let EtcdAuthCommand::Enable { admin } = c;
    let (_etcd, mut auth) = admin_etcd(cfg, &admin).await?;
    nubo_coordinator::etcd_auth::enable(&mut auth)
        .await
        .context("enabling etcd authentication")?;
    println!(
        "etcd authentication is on: users {} (root role) and {} (read-write on {}); \
         enrol each node with `nubo-coordinator node enroll`",
        nubo_coordinator::etcd_auth::ROOT_USER,
        nubo_common::keys::ETCD_COORDINATOR_USER,
        nubo_common::keys::ROOT
    );
    Ok(())
}

/// `nubo-coordinator node enroll|revoke`.
async fn node(cfg: &Config, c: NodeCommand) -> anyhow::Result<()> {
    match c {
        NodeCommand::Enroll {
            node,
            ca_cert,
            ca_key,
            out,
            days,
            admin,
        } => {
            let node = nubo_common::NodeName::new(&node)?;
            let user = nubo_common::keys::node_etcd_user(&node);
            let files = nubo_coordinator::pki::EnrolFiles::in_dir(&out);
            // In this order, so that a refused step leaves nothing behind:
            // the certificate in memory (checks the CA), the etcd user and
            // role, then the files.
            let cert = nubo_coordinator::pki::issue_client_cert(
                &ca_cert,
                &ca_key,
                &user,
                Some(node.as_str()),
                days,
            )
            .with_context(|| format!("issuing the certificate of {user}"))?;
            let (_etcd, mut auth) = admin_etcd(cfg, &admin).await?;
            nubo_coordinator::etcd_auth::enroll_node(&mut auth, &node)
                .await
                .with_context(|| format!("creating etcd user and role {user}"))?;
            files
                .write(&cert, &ca_cert)
                .with_context(|| format!("writing the files of {user}"))?;
            println!(
                "node {node} enrolled: etcd user and role {user}; give its agent \
                 --etcd-ca {} --etcd-cert {} --etcd-key {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
        NodeCommand::Revoke { node, admin } => {
            let node = nubo_common::NodeName::new(&node)?;
            let (etcd, mut auth) = admin_etcd(cfg, &admin).await?;
            let r = nubo_coordinator::etcd_auth::revoke_node(&mut auth, &etcd, &node)
                .await
                .with_context(|| format!("revoking node {node}"))?;
            println!(
                "node {node}: etcd user {} {}, role {}, alive lease {}",
                nubo_common::keys::node_etcd_user(&node),
                if r.user { "deleted" } else { "absent" },
                if r.role { "deleted" } else { "absent" },
                r.lease
                    .map(|l| format!("{l:x} revoked"))
                    .unwrap_or_else(|| "none".into())
            );
            Ok(())
        }
    }
}
