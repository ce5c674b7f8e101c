//! `nubo-openstack`: serves the OpenStack REST API (see the library doc)
//! in front of the coordinators' gRPC API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "nubo-openstack",
    about = "OpenStack-compatible REST API in front of nubo's coordinators"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:5000", env = "NUBO_OPENSTACK_LISTEN")]
    listen: String,
    /// The coordinators' gRPC API (their virtual address).
    #[arg(long, env = "NUBO_ENDPOINT")]
    coordinator: String,
    /// The cluster CA, to verify an https:// coordinator.
    #[arg(long, env = "NUBO_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The URL clients reach this front end at (the catalog's base);
    /// default `http://<listen>`.
    #[arg(long)]
    public_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let upstream =
        nubo_openstack::Upstream::new(&args.coordinator, args.ca_cert.as_deref(), &public)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, public = %public, coordinator = %args.coordinator, "nubo-openstack ready");
    axum::serve(listener, nubo_openstack::router(upstream))
        .await
        .context("serving")?;
    Ok(())
}
