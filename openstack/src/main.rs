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
    /// default `https://<listen>` with a certificate, else `http://<listen>`.
    #[arg(long)]
    public_url: Option<String>,
    /// Serve HTTPS with this certificate (PEM chain; with `--tls-key`).
    /// Production: always (tokens and passwords cross this API).
    #[arg(long, env = "NUBO_OPENSTACK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "NUBO_OPENSTACK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    // Read at start: a bad certificate fails here, not at the first client.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            nubo_nodeapi::tls::server_config(cert, key, None)
                .context("the front end's TLS certificate")?,
        ),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", args.listen));
    let upstream =
        nubo_openstack::Upstream::new(&args.coordinator, args.ca_cert.as_deref(), &public)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, public = %public, coordinator = %args.coordinator, tls = tls.is_some(), "nubo-openstack ready");
    nubo_nodeapi::server::serve(listener, nubo_openstack::router(upstream), tls)
        .await
        .context("serving")?;
    Ok(())
}
