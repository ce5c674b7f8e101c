//! `nubo-coordinator`: the API server, scheduler and IPAM of nubo.

use anyhow::Context;
use clap::Parser;
use nubo_coordinator::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Cli::parse()
        .resolve()
        .context("reading the configuration")?;
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
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    c.shutdown().await.context("shutting down")?;
    Ok(())
}
