//! `nubo-coordinator`: the API server, scheduler and IPAM of nubo.

use anyhow::Context;
use clap::Parser;
use nubo_coordinator::{sdnotify, Cli, LogFormat};
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
    if let Err(e) = sdnotify::notify("READY=1") {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let watchdog = async {
        let Some(every) = sdnotify::watchdog_interval() else {
            return std::future::pending().await;
        };
        tracing::info!(?every, "systemd watchdog enabled");
        loop {
            tokio::time::sleep(every).await;
            // Only while etcd answers: a wedged coordinator gets restarted.
            if c.etcd_healthy(every / 2).await {
                if let Err(e) = sdnotify::notify("WATCHDOG=1") {
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
    let _ = sdnotify::notify("STOPPING=1");
    tracing::info!("shutting down");
    c.shutdown().await.context("shutting down")?;
    Ok(())
}
