//! A `nubo-coordinator` process.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ports::free_port_on;
use crate::process::{bin_path, Daemon};
use crate::wait::wait_until;

/// How long a coordinator may take to serve (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of [`Coordinator::start_with`].
#[derive(Debug, Clone)]
pub struct CoordinatorOpts {
    /// etcd client URLs, comma-separated.
    pub etcd_endpoints: String,
    /// Coordinator id for leader election.
    pub id: String,
    /// Address to listen on (gRPC and health); 127.0.0.1 by default.
    pub ip: IpAddr,
    /// Extra command-line flags (e.g. `--placement pack`).
    pub extra_args: Vec<String>,
    /// `None` (default): `--insecure --auth none`, for tests that are not
    /// about security. `Some`: the production default (TLS API, token
    /// authentication, etcd settings from a TOML file).
    pub secure: Option<SecureOpts>,
}

/// The secure (default) configuration of a harness coordinator.
#[derive(Debug, Clone)]
pub struct SecureOpts {
    /// PEM certificate of the gRPC API (`--tls-cert`).
    pub tls_cert: PathBuf,
    /// PEM key of the gRPC API (`--tls-key`).
    pub tls_key: PathBuf,
    /// A `--config` TOML (e.g. its `[etcd_tls]` section), if any.
    pub config: Option<PathBuf>,
}

impl CoordinatorOpts {
    /// Defaults: listen on 127.0.0.1, no extra flags.
    pub fn new(etcd_endpoints: &str, id: &str) -> Self {
        Self {
            etcd_endpoints: etcd_endpoints.to_string(),
            id: id.to_string(),
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            extra_args: Vec::new(),
            secure: None,
        }
    }
}

/// A running `nubo-coordinator`; killed (SIGKILL, by pid) on drop.
pub struct Coordinator {
    daemon: Daemon,
    opts: CoordinatorOpts,
    grpc: SocketAddr,
    health: SocketAddr,
}

impl Coordinator {
    /// Starts a coordinator on 127.0.0.1 with free ports, logging to
    /// `<dir>/coordinator-<id>.log`, and waits until it serves.
    pub fn start(etcd_endpoints: &str, id: &str, dir: &Path) -> Result<Self> {
        Self::start_with(CoordinatorOpts::new(etcd_endpoints, id), dir)
    }

    /// Starts a coordinator with `opts` and waits until its gRPC port
    /// accepts connections and `/healthz` answers 200. A start that fails
    /// because a port picked as free was taken meanwhile is retried on other
    /// ports; any other failure is returned with the log tail.
    pub fn start_with(opts: CoordinatorOpts, dir: &Path) -> Result<Self> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut c = Self::spawn(opts.clone(), dir)?;
            match c.wait_serving() {
                Ok(()) => return Ok(c),
                Err(e) => {
                    let raced = !c.daemon.is_running() && c.daemon.current_log().contains("in use");
                    if !raced || attempt >= 3 {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn spawn(opts: CoordinatorOpts, dir: &Path) -> Result<Self> {
        let grpc = SocketAddr::new(opts.ip, free_port_on(opts.ip));
        let health = SocketAddr::new(opts.ip, free_port_on(opts.ip));
        let mut args = vec![
            "--etcd-endpoints".to_string(),
            opts.etcd_endpoints.clone(),
            "--listen".into(),
            grpc.to_string(),
            "--health-listen".into(),
            health.to_string(),
            "--id".into(),
            opts.id.clone(),
        ];
        match &opts.secure {
            None => args.extend(["--insecure".into(), "--auth".into(), "none".into()]),
            Some(s) => {
                args.extend([
                    "--tls-cert".into(),
                    s.tls_cert.display().to_string(),
                    "--tls-key".into(),
                    s.tls_key.display().to_string(),
                ]);
                if let Some(c) = &s.config {
                    args.extend(["--config".into(), c.display().to_string()]);
                }
            }
        }
        args.extend(opts.extra_args.iter().cloned());
        let daemon = Daemon::spawn(
            &format!("nubo-coordinator {}", opts.id),
            vec![],
            bin_path("nubo-coordinator")?,
            args,
            dir.join(format!("coordinator-{}.log", opts.id)),
            &[("RUST_LOG", "info")],
        )?;
        Ok(Self {
            daemon,
            opts,
            grpc,
            health,
        })
    }

    fn wait_serving(&mut self) -> Result<()> {
        let (grpc, health) = (self.grpc, self.health);
        let daemon = &mut self.daemon;
        wait_until(
            START_TIMEOUT,
            &format!("coordinator {} to serve on {grpc}", self.opts.id),
            || {
                daemon.check_running().map_err(crate::wait::fatal)?;
                TcpStream::connect_timeout(&grpc, Duration::from_secs(1))
                    .with_context(|| format!("gRPC port {grpc}"))?;
                let (status, body) = crate::http::get(health, "/healthz")?;
                anyhow::ensure!(status == 200, "/healthz answered {status}: {body}");
                Ok(true)
            },
        )
        .with_context(|| format!("log tail:\n{}", self.daemon.log_tail()))
    }

    /// Kills the coordinator with SIGKILL (by pid), as a crash would.
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts it again with the same flags and ports and waits until it serves.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.start(&[("RUST_LOG", "info")])?;
        self.wait_serving()
    }

    /// The process id, or `None` once killed.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// The gRPC endpoint URL for the CLI, e.g. `http://127.0.0.1:24001`
    /// (`https://` when started with [`SecureOpts`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.opts.secure.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.grpc)
    }

    /// The health listener address (`/healthz`, `/readyz`).
    pub fn health_addr(&self) -> SocketAddr {
        self.health
    }

    /// The body of `/readyz` ("leader" or "follower") when it answers 200.
    pub fn readyz(&self) -> Result<String> {
        let (status, body) = crate::http::get(self.health, "/readyz")?;
        anyhow::ensure!(status == 200, "/readyz answered {status}: {body}");
        Ok(body.trim().to_string())
    }

    /// The coordinator id.
    pub fn id(&self) -> &str {
        &self.opts.id
    }

    /// The whole log (every incarnation).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}
