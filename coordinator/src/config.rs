//! Configuration: a TOML file (`/etc/nubo/coordinator.toml`) overridden by
//! command-line flags (see `docs/CONTRACTS.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::error::ServeError;

/// Default configuration file, read when it exists and `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nubo/coordinator.toml";

/// How the scheduler weighs candidate nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Prefer the node with the most free memory (spread the load).
    #[default]
    Spread,
    /// Prefer the node with the least free memory (fill nodes up).
    Pack,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How API callers are authenticated (`auth` in the TOML, `--auth`).
///
/// The default is `token`; `none` is refused unless the coordinator also
/// runs with `insecure` (development only, see [`Config::check_security`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: every caller may do everything (development
    /// only; needs `insecure`).
    None,
    /// Every call except `Tokens.Issue` needs `authorization: Bearer <token>`.
    #[default]
    Token,
}

/// Paths of TLS material (parsed; TLS is not supported yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// CA bundle.
    pub ca: Option<PathBuf>,
    /// Certificate.
    pub cert: Option<PathBuf>,
    /// Private key.
    pub key: Option<PathBuf>,
}

/// The effective configuration of a coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// gRPC API address (port 0 = any free port).
    pub listen: SocketAddr,
    /// HTTP health address (port 0 = any free port).
    pub health_listen: SocketAddr,
    /// The Prometheus endpoint (`[metrics]`, `--metrics-listen`; `None`:
    /// no metrics served).
    pub metrics: Option<nubo_metrics::EndpointConfig>,
    /// Coordinator id used for registration and leader election.
    pub id: String,
    /// vCPU overcommit ratio.
    pub cpu_ratio: f64,
    /// Memory overcommit ratio.
    pub ram_ratio: f64,
    /// Disk overcommit ratio.
    pub disk_ratio: f64,
    /// Weighing policy.
    pub placement: Placement,
    /// Log format (used by the binary).
    pub log_format: LogFormat,
    /// TTL in seconds of the lease holding registration and leadership
    /// (default [`DEFAULT_LEASE_TTL_SECS`]): a killed leader is replaced
    /// after about this long.
    pub lease_ttl_secs: i64,
    /// TLS towards etcd (rejected at start: not supported yet).
    pub etcd_tls: Option<TlsPaths>,
    /// Failure handling timings (see `docs/failure-handling.md`).
    pub failure: FailureConfig,
    /// Migration budgets and timeouts (see `docs/migration.md`).
    pub migration: MigrationConfig,
    /// Where uploaded image data is stored (`<dir>/<image id>/<part>`).
    /// Several coordinators must share it (NFS or similar) until Ceph RBD
    /// replaces it (storage issue).
    pub image_dir: PathBuf,
    /// Authentication of API callers.
    pub auth: AuthMode,
    /// PEM certificate and key of the gRPC API (TLS when both are set).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Development mode (`--insecure`, TOML `insecure = true`): allows a
    /// plain-text API and `auth = "none"`. Without it the coordinator
    /// refuses to start unless it serves TLS with token authentication.
    pub insecure: bool,
    /// Ceph access (volumes, RBD image import, storage fencing), if any.
    pub ceph: Option<CephConfig>,
}

/// Ceph access of the coordinator (`[ceph]` in the TOML, `--ceph-*` flags):
/// volumes, image import into RBD and storage fencing of failed nodes.
/// Without it the volume API answers `FailedPrecondition` and fencing only
/// logs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CephConfig {
    /// `ceph.conf` (mon addresses).
    pub conf: PathBuf,
    /// Ceph client id without the `client.` prefix (default `nubo`).
    #[serde(default = "default_ceph_id")]
    pub client_id: String,
    /// Keyring of that client (default: what `ceph.conf` says).
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    /// Pool of imported images (default `images`).
    #[serde(default = "default_images_pool")]
    pub images_pool: String,
    /// Pool of instance root disks (default `vms`).
    #[serde(default = "default_disks_pool")]
    pub disks_pool: String,
    /// Pool of volumes (default `volumes`).
    #[serde(default = "default_volumes_pool")]
    pub volumes_pool: String,
}

fn default_ceph_id() -> String {
    "nubo".into()
}
fn default_images_pool() -> String {
    "images".into()
}
fn default_disks_pool() -> String {
    "vms".into()
}
fn default_volumes_pool() -> String {
    "volumes".into()
}

impl CephConfig {
    /// Defaults for everything but the `ceph.conf` path.
    pub fn new(conf: impl Into<PathBuf>) -> Self {
        Self {
            conf: conf.into(),
            client_id: default_ceph_id(),
            keyring: None,
            images_pool: default_images_pool(),
            disks_pool: default_disks_pool(),
            volumes_pool: default_volumes_pool(),
        }
    }
}

/// Default image directory.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/nubo/images";

/// Default coordinator lease TTL: etcd's smallest effective lease TTL with
/// its default election timeout (1 s → minimum TTL 1.5 s, rounded up to 2 s),
/// so a killed leader is replaced in ≈ 2 s.
pub const DEFAULT_LEASE_TTL_SECS: i64 = 2;

/// Failure handling timings of the leader. Defaults assume the agent's
/// lease TTL of 5 s and self-fence after 4 s without a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureConfig {
    /// Time, on this coordinator's monotonic clock, between noticing that a
    /// node's alive key is gone and fencing it (default 3 s). Measured from
    /// the moment *this* leader saw it gone, so a new leader waits again.
    pub suspect_grace: Duration,
    /// Longest a `Fencer` call may take before it counts as failed and is
    /// retried (default 10 s). A node is never evacuated unless fenced.
    pub fence_timeout: Duration,
    /// Interval between evacuation passes of a fenced node whose instances
    /// could not all be placed (default 10 s).
    pub evacuation_retry: Duration,
    /// Period of the leader's failure-handling loop (default 250 ms).
    pub tick: Duration,
    /// Pause before each move of an evacuation pass (default 0: rate
    /// limiting for very large nodes; tests use it to stop a leader half-way).
    pub move_delay: Duration,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self {
            suspect_grace: Duration::from_secs(3),
            fence_timeout: Duration::from_secs(10),
            evacuation_retry: Duration::from_secs(10),
            tick: Duration::from_millis(250),
            move_delay: Duration::ZERO,
        }
    }
}

/// Budgets and timeouts of migrations (`docs/migration.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationConfig {
    /// Longest the destination's agent may take to prepare (plug the ports)
    /// before the migration fails (default 60 s).
    pub prepare_timeout: Duration,
    /// Pre-copy time before a live migration switches to post-copy
    /// (default 30 s; sent to the source's agent).
    pub precopy_budget: Duration,
    /// Time after which the source's agent aborts the job and keeps the
    /// guest (default 300 s; sent to the source's agent).
    pub budget: Duration,
    /// How long past `budget` the leader waits for the source's word before
    /// it asks for an abort itself (default 30 s).
    pub budget_grace: Duration,
    /// Period of the leader's migration loop without a change (default 1 s).
    pub tick: Duration,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        Self {
            prepare_timeout: Duration::from_secs(60),
            precopy_budget: Duration::from_secs(30),
            budget: Duration::from_secs(300),
            budget_grace: Duration::from_secs(30),
            tick: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Defaults suitable for tests: the given etcd, ephemeral ports on
    /// 127.0.0.1, a random id.
    pub fn for_tests(etcd_endpoint: impl Into<String>) -> Self {
        Self {
            etcd_endpoints: vec![etcd_endpoint.into()],
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            id: format!("test-{}", uuid::Uuid::new_v4().simple()),
            cpu_ratio: 4.0,
            ram_ratio: 1.0,
            disk_ratio: 1.0,
            placement: Placement::Spread,
            log_format: LogFormat::Text,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
            etcd_tls: None,
            failure: FailureConfig {
                suspect_grace: Duration::from_millis(500),
                fence_timeout: Duration::from_secs(5),
                evacuation_retry: Duration::from_millis(500),
                tick: Duration::from_millis(100),
                move_delay: Duration::ZERO,
            },
            migration: MigrationConfig {
                tick: Duration::from_millis(100),
                ..MigrationConfig::default()
            },
            image_dir: std::env::temp_dir().join("nubo-test-images"),
            auth: AuthMode::None,
            tls: None,
            insecure: true,
            ceph: None,
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ServeError> {
        if self.etcd_endpoints.is_empty() {
            return Err(ServeError::Config(
                "at least one etcd endpoint is required".into(),
            ));
        }
        for (name, v) in [
            ("cpu-ratio", self.cpu_ratio),
            ("ram-ratio", self.ram_ratio),
            ("disk-ratio", self.disk_ratio),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ServeError::Config(format!(
                    "{name} must be a positive number, got {v}"
                )));
            }
        }
        if self.id.is_empty() || self.id.contains('/') {
            return Err(ServeError::Config(format!(
                "coordinator id {:?} must be non-empty and contain no '/'",
                self.id
            )));
        }
        if !(1..=3600).contains(&self.lease_ttl_secs) {
            return Err(ServeError::Config(
                "lease-ttl must be 1..=3600 seconds".into(),
            ));
        }
        let f = &self.failure;
        if f.tick.is_zero() || f.fence_timeout.is_zero() || f.evacuation_retry.is_zero() {
            return Err(ServeError::Config(
                "failure tick, fence-timeout and evacuation-retry must be positive".into(),
            ));
        }
        if let Some(t) = &self.etcd_tls {
            if t.ca.is_none() || t.cert.is_some() != t.key.is_some() {
                return Err(ServeError::Config(
                    "[etcd_tls] needs ca, and cert and key together".into(),
                ));
            }
        }
        Ok(())
    }

    /// The files the coordinator presents to the nodes' APIs (mutual TLS,
    /// `nubo_nodeapi::tls`): its etcd client certificate and the CA, when
    /// `[etcd_tls]` has all three.
    pub fn node_api_tls(&self) -> Option<nubo_nodeapi::TlsFiles> {
        let t = self.etcd_tls.as_ref()?;
        nubo_nodeapi::TlsFiles::from_parts(t.ca.as_ref(), t.cert.as_ref(), t.key.as_ref())
    }

    /// The client of the nodes' APIs ([`Self::node_api_tls`]; plain
    /// without a certificate).
    pub fn node_api_client(&self) -> Result<nubo_nodeapi::NodeApiClient, ServeError> {
        nubo_nodeapi::NodeApiClient::new(self.node_api_tls().as_ref())
            .map_err(|e| ServeError::Config(format!("node API client certificate: {e}")))
    }

    /// Refuses an insecure serving configuration unless `insecure` is set:
    /// the API must serve TLS (`tls_cert` + `tls_key`) and authenticate
    /// callers (`auth = "token"`). Checked when serving starts (not by the
    /// `bootstrap` command, which only talks to etcd).
    pub fn check_security(&self) -> Result<(), ServeError> {
        if self.insecure {
            return Ok(());
        }
        if self.auth == AuthMode::None {
            return Err(ServeError::Config(
                "auth = \"none\" lets every caller do everything: it needs --insecure (development only)".into(),
            ));
        }
        if self.tls.is_none() {
            return Err(ServeError::Config(
                "the API serves TLS only: give --tls-cert and --tls-key (scripts/make-certs.sh makes them), or --insecure for plain text (development only)".into(),
            ));
        }
        Ok(())
    }

    /// What `insecure` currently allows, for the loud start-up warning
    /// (`None` when the configuration is secure).
    pub fn insecurity(&self) -> Option<String> {
        let mut what = Vec::new();
        if self.tls.is_none() {
            what.push("the API is plain text");
        }
        if self.auth == AuthMode::None {
            what.push("there is no authentication (every caller may do everything)");
        }
        (!what.is_empty()).then(|| what.join(" and "))
    }
}

/// The TOML file; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    etcd_endpoints: Option<Vec<String>>,
    listen: Option<SocketAddr>,
    health_listen: Option<SocketAddr>,
    metrics: Option<nubo_metrics::EndpointConfig>,
    id: Option<String>,
    cpu_ratio: Option<f64>,
    ram_ratio: Option<f64>,
    disk_ratio: Option<f64>,
    placement: Option<Placement>,
    log_format: Option<LogFormat>,
    lease_ttl_secs: Option<i64>,
    etcd_tls: Option<TlsPaths>,
    suspect_grace_secs: Option<f64>,
    fence_timeout_secs: Option<f64>,
    evacuation_retry_secs: Option<f64>,
    failure_tick_ms: Option<u64>,
    evacuation_move_delay_ms: Option<u64>,
    migration_prepare_timeout_secs: Option<u64>,
    migration_precopy_budget_secs: Option<u64>,
    migration_budget_secs: Option<u64>,
    image_dir: Option<PathBuf>,
    auth: Option<AuthMode>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure: Option<bool>,
    ceph: Option<CephConfig>,
}

/// Command-line flags of `nubo-coordinator`; each overrides the file.
#[derive(Debug, Default, Parser)]
#[command(
    name = "nubo-coordinator",
    version,
    about = "nubo coordinator: API, scheduler, IPAM"
)]
pub struct Cli {
    /// TOML configuration file (default /etc/nubo/coordinator.toml if it exists).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// etcd endpoints, comma-separated (default http://127.0.0.1:2379).
    #[arg(
        long,
        global = true,
        env = "NUBO_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,
    /// gRPC API address (default 0.0.0.0:7400).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// HTTP /healthz and /readyz address (default 0.0.0.0:7401).
    #[arg(long)]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics on this address (plain HTTP; TLS and a
    /// bearer token through `[metrics]` in the file).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Coordinator id for leader election (default <hostname>-<pid>).
    #[arg(long)]
    pub id: Option<String>,
    /// vCPU overcommit ratio (default 4.0).
    #[arg(long)]
    pub cpu_ratio: Option<f64>,
    /// Memory overcommit ratio (default 1.0).
    #[arg(long)]
    pub ram_ratio: Option<f64>,
    /// Disk overcommit ratio (default 1.0).
    #[arg(long)]
    pub disk_ratio: Option<f64>,
    /// Weighing policy (default spread).
    #[arg(long, value_enum)]
    pub placement: Option<Placement>,
    /// Log format (default text); the level comes from RUST_LOG.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// TTL in seconds of the coordinator lease (leader failover time; default 2).
    #[arg(long)]
    pub lease_ttl: Option<i64>,
    /// Seconds between a node's alive key vanishing and fencing it (default 3).
    #[arg(long)]
    pub suspect_grace: Option<f64>,
    /// Seconds a fencing call may take before it is retried (default 10).
    #[arg(long)]
    pub fence_timeout: Option<f64>,
    /// Seconds between evacuation retries of unplaceable instances (default 10).
    #[arg(long)]
    pub evacuation_retry: Option<f64>,
    /// Directory of uploaded image data (default /var/lib/nubo/images);
    /// must be shared by all coordinators.
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    /// Authentication of API callers: `token` (default) or `none`
    /// (development only: needs --insecure).
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Development only: allow a plain-text API (no --tls-cert/--tls-key)
    /// and --auth none. Never use it where the API is reachable by others.
    #[arg(long)]
    pub insecure: bool,
    /// PEM certificate (chain) of the gRPC API; with --tls-key, serve TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC API.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// `ceph.conf` of the cluster holding volumes (enables `[ceph]`).
    #[arg(long)]
    pub ceph_conf: Option<PathBuf>,
    /// Ceph client id, without `client.` (default `nubo`).
    #[arg(long)]
    pub ceph_id: Option<String>,
    /// Keyring of the Ceph client.
    #[arg(long)]
    pub ceph_keyring: Option<PathBuf>,
    /// A one-off command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off commands of `nubo-coordinator`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Creates the first cloud admin (project `admin`, user, cloud-wide
    /// admin role, token signing key, default quota) in one etcd
    /// transaction; refuses when the cloud is already bootstrapped.
    Bootstrap {
        /// A file holding the admin password (one line).
        #[arg(long)]
        admin_password_file: PathBuf,
        /// The admin user name.
        #[arg(long, default_value = "admin")]
        admin_user: String,
    },
    /// etcd's own authentication (least privilege, docs/operator-guide.md
    /// "etcd permissions").
    #[command(subcommand)]
    EtcdAuth(EtcdAuthCommand),
    /// A node's etcd identity: its client certificate, user and role.
    #[command(subcommand)]
    Node(NodeCommand),
}

/// `nubo-coordinator etcd-auth …`.
#[derive(Debug, clap::Subcommand)]
pub enum EtcdAuthCommand {
    /// Creates etcd's `root` user and the coordinators' user
    /// (`coordinator`, read-write on /nubo/v1/), then turns etcd
    /// authentication on. Idempotent. Needs etcd with
    /// `--client-cert-auth`; once on, every client is the user named by
    /// its certificate's CN.
    Enable {
        /// The etcd administrator's credential.
        #[command(flatten)]
        admin: AdminTls,
    },
}

/// `nubo-coordinator node …`.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Issues NODE's etcd client certificate (CN `nubo-node-NODE`, signed
    /// by the cluster CA) into --out (`ca.crt`, `etcd-client.crt`,
    /// `etcd-client.key` mode 0600) and creates or updates its etcd user
    /// and role (what the node may read and write). Run again to rotate.
    Enroll {
        /// The node's name (the agent's `--node`).
        node: String,
        /// The cluster CA certificate (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// The cluster CA key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// Where the node's files are written (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// Validity of the certificate in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The etcd administrator's credential.
        #[command(flatten)]
        admin: AdminTls,
    },
    /// Deletes NODE's etcd user and role and revokes the lease of its
    /// alive key: every new request with its certificate is refused.
    /// Idempotent.
    #[command(alias = "remove")]
    Revoke {
        /// The node's name.
        node: String,
        /// The etcd administrator's credential.
        #[command(flatten)]
        admin: AdminTls,
    },
}

/// The etcd client certificate of etcd's `root` user (CN `root`), used
/// instead of `[etcd_tls]`'s for the user and role commands; the CA
/// stays `[etcd_tls]`'s `ca` unless --etcd-ca is given.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTls {
    /// Client certificate with CN `root`.
    #[arg(long)]
    pub admin_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    pub admin_key: PathBuf,
    /// CA of the etcd members (default: `[etcd_tls]`'s `ca`).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
}

impl AdminTls {
    /// `cfg`'s etcd connection with this credential.
    pub fn etcd_config(&self, cfg: &Config) -> Result<nubo_store::EtcdConfig, ServeError> {
        let ca = self
            .etcd_ca
            .clone()
            .or_else(|| cfg.etcd_tls.as_ref().and_then(|t| t.ca.clone()))
            .ok_or_else(|| {
                ServeError::Config("the etcd CA is unknown: give --etcd-ca or [etcd_tls] ca".into())
            })?;
        Ok(
            nubo_store::EtcdConfig::new(cfg.etcd_endpoints.clone()).with_tls(Some(
                nubo_store::TlsFiles {
                    ca: Some(ca),
                    cert: Some(self.admin_cert.clone()),
                    key: Some(self.admin_key.clone()),
                },
            )),
        )
    }
}

impl Cli {
    /// Reads the configuration file (if any) and applies the flags on top.
    pub fn resolve(self) -> Result<Config, ServeError> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                read_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    fn merge(self, f: FileConfig) -> Result<Config, ServeError> {
        let cfg = Config {
            etcd_endpoints: self
                .etcd_endpoints
                .or(f.etcd_endpoints)
                .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]),
            listen: self
                .listen
                .or(f.listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7400))),
            health_listen: self
                .health_listen
                .or(f.health_listen)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7401))),
            metrics: match (self.metrics_listen, f.metrics) {
                (Some(listen), Some(m)) => Some(nubo_metrics::EndpointConfig { listen, ..m }),
                (Some(listen), None) => Some(nubo_metrics::EndpointConfig::plain(listen)),
                (None, m) => m,
            },
            id: self.id.or(f.id).unwrap_or_else(default_id),
            cpu_ratio: self.cpu_ratio.or(f.cpu_ratio).unwrap_or(4.0),
            ram_ratio: self.ram_ratio.or(f.ram_ratio).unwrap_or(1.0),
            disk_ratio: self.disk_ratio.or(f.disk_ratio).unwrap_or(1.0),
            placement: self.placement.or(f.placement).unwrap_or_default(),
            log_format: self.log_format.or(f.log_format).unwrap_or_default(),
            lease_ttl_secs: self
                .lease_ttl
                .or(f.lease_ttl_secs)
                .unwrap_or(DEFAULT_LEASE_TTL_SECS),
            etcd_tls: f.etcd_tls,
            failure: {
                let d = FailureConfig::default();
                FailureConfig {
                    suspect_grace: secs(
                        "suspect-grace",
                        self.suspect_grace.or(f.suspect_grace_secs),
                        d.suspect_grace,
                    )?,
                    fence_timeout: secs(
                        "fence-timeout",
                        self.fence_timeout.or(f.fence_timeout_secs),
                        d.fence_timeout,
                    )?,
                    evacuation_retry: secs(
                        "evacuation-retry",
                        self.evacuation_retry.or(f.evacuation_retry_secs),
                        d.evacuation_retry,
                    )?,
                    tick: f.failure_tick_ms.map_or(d.tick, Duration::from_millis),
                    move_delay: f
                        .evacuation_move_delay_ms
                        .map_or(d.move_delay, Duration::from_millis),
                }
            },
            migration: {
                let d = MigrationConfig::default();
                MigrationConfig {
                    prepare_timeout: f
                        .migration_prepare_timeout_secs
                        .map_or(d.prepare_timeout, Duration::from_secs),
                    precopy_budget: f
                        .migration_precopy_budget_secs
                        .map_or(d.precopy_budget, Duration::from_secs),
                    budget: f
                        .migration_budget_secs
                        .map_or(d.budget, Duration::from_secs),
                    ..d
                }
            },
            image_dir: self
                .image_dir
                .or(f.image_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_DIR)),
            auth: self.auth.or(f.auth).unwrap_or_default(),
            insecure: self.insecure || f.insecure.unwrap_or(false),
            tls: match (self.tls_cert.or(f.tls_cert), self.tls_key.or(f.tls_key)) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => {
                    return Err(ServeError::Config(
                        "tls-cert and tls-key must be given together".into(),
                    ))
                }
            },
            ceph: merge_ceph(self.ceph_conf, self.ceph_id, self.ceph_keyring, f.ceph)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `[ceph]` from the file with the `--ceph-*` flags on top; the flags alone
/// (with `--ceph-conf`) enable it too.
fn merge_ceph(
    conf: Option<PathBuf>,
    id: Option<String>,
    keyring: Option<PathBuf>,
    file: Option<CephConfig>,
) -> Result<Option<CephConfig>, ServeError> {
    let mut c = match (file, conf) {
        (Some(mut f), Some(conf)) => {
            f.conf = conf;
            f
        }
        (Some(f), None) => f,
        (None, Some(conf)) => CephConfig::new(conf),
        (None, None) if id.is_some() || keyring.is_some() => {
            return Err(ServeError::Config(
                "--ceph-id and --ceph-keyring need --ceph-conf (or [ceph] conf)".into(),
            ))
        }
        (None, None) => return Ok(None),
    };
    if let Some(id) = id {
        c.client_id = id;
    }
    if keyring.is_some() {
        c.keyring = keyring;
    }
    if c.client_id.is_empty() || c.client_id.starts_with("client.") {
        return Err(ServeError::Config(format!(
            "ceph client id {:?} must be non-empty and without the \"client.\" prefix",
            c.client_id
        )));
    }
    Ok(Some(c))
}

/// A duration in seconds from the file or a flag.
fn secs(name: &str, v: Option<f64>, default: Duration) -> Result<Duration, ServeError> {
    match v {
        None => Ok(default),
        Some(v) => Duration::try_from_secs_f64(v).map_err(|_| {
            ServeError::Config(format!("{name} must be a non-negative number of seconds"))
        }),
    }
}

fn read_file(p: &Path) -> Result<FileConfig, ServeError> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", p.display())))?;
    parse_file(&text).map_err(|e| ServeError::Config(format!("{}: {e}", p.display())))
}

fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

/// `<hostname>-<pid>`.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "coordinator".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file = parse_file(
            "etcd_endpoints = [\"http://a:2379\", \"http://b:2379\"]\nlisten = \"127.0.0.1:9000\"\ncpu_ratio = 8.0\nplacement = \"pack\"\n",
        )
        .unwrap();
        let cli = Cli {
            listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..Cli::default()
        };
        let cfg = cli.merge(file).unwrap();
        assert_eq!(cfg.etcd_endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(cfg.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(cfg.cpu_ratio, 8.0);
        assert_eq!(cfg.ram_ratio, 1.0);
        assert_eq!(cfg.placement, Placement::Pack);
        assert_eq!(cfg.health_listen, "0.0.0.0:7401".parse().unwrap());
        assert_eq!(cfg.lease_ttl_secs, DEFAULT_LEASE_TTL_SECS);
        assert_eq!(cfg.failure, FailureConfig::default());
    }

    #[test]
    fn failure_timings_come_from_file_and_flags() {
        let file = parse_file("suspect_grace_secs = 7.5\nlease_ttl_secs = 4\n").unwrap();
        let cli = Cli {
            fence_timeout: Some(2.0),
            lease_ttl: Some(3),
            ..Cli::default()
        };
        let cfg = cli.merge(file).unwrap();
        assert_eq!(cfg.failure.suspect_grace, Duration::from_millis(7500));
        assert_eq!(cfg.failure.fence_timeout, Duration::from_secs(2));
        assert_eq!(cfg.lease_ttl_secs, 3);
        let bad = Cli {
            suspect_grace: Some(-1.0),
            ..Cli::default()
        };
        assert!(bad.merge(FileConfig::default()).is_err());
    }

    #[test]
    fn metrics_come_from_the_file_and_the_flag() {
        let file =
            parse_file("[metrics]\nlisten = \"0.0.0.0:9100\"\nclient_ca = \"/ca\"\n").unwrap();
        assert!(Cli::default()
            .merge(FileConfig::default())
            .unwrap()
            .metrics
            .is_none());
        let cfg = Cli::default().merge(file).unwrap();
        let m = cfg.metrics.unwrap();
        assert_eq!(m.listen, "0.0.0.0:9100".parse().unwrap());
        assert_eq!(m.client_ca, Some(PathBuf::from("/ca")));
        let cli = Cli {
            metrics_listen: Some("127.0.0.1:9".parse().unwrap()),
            ..Cli::default()
        };
        let m = cli.merge(FileConfig::default()).unwrap().metrics.unwrap();
        assert_eq!(
            m,
            nubo_metrics::EndpointConfig::plain("127.0.0.1:9".parse().unwrap())
        );
        assert!(parse_file("[metrics]\nport = 1\n").is_err());
    }

    #[test]
    fn cli_parses_comma_separated_endpoints() {
        let cli = Cli::try_parse_from([
            "nubo-coordinator",
            "--etcd-endpoints",
            "http://a:1,http://b:2",
            "--placement",
            "pack",
        ])
        .unwrap();
        assert_eq!(cli.etcd_endpoints.unwrap().len(), 2);
        assert_eq!(cli.placement, Some(Placement::Pack));
    }

    #[test]
    fn bad_values_and_tls_are_rejected() {
        assert!(parse_file("bogus = 1").is_err());
        let cli = Cli {
            cpu_ratio: Some(0.0),
            ..Cli::default()
        };
        assert!(cli.merge(FileConfig::default()).is_err());
        let file = parse_file("[etcd_tls]\ncert = \"/x\"\n").unwrap();
        let err = Cli::default().merge(file).unwrap_err();
        assert!(err.to_string().contains("needs ca"), "{err}");
        let file = parse_file("[etcd_tls]\nca = \"/x\"\n").unwrap();
        assert!(Cli::default().merge(file).is_ok());
        let cli = Cli::parse_from(["nubo-coordinator", "--tls-cert", "/c"]);
        assert!(cli.merge(FileConfig::default()).is_err());
    }

    #[test]
    fn auth_defaults_to_token_and_is_set_by_file_or_flag() {
        let cfg = Cli::default().merge(FileConfig::default()).unwrap();
        assert_eq!(cfg.auth, AuthMode::Token);
        assert!(!cfg.insecure);
        let file = parse_file("auth = \"none\"\n").unwrap();
        assert_eq!(Cli::default().merge(file).unwrap().auth, AuthMode::None);
        let cli = Cli::parse_from(["nubo-coordinator", "--auth", "none"]);
        assert_eq!(cli.auth, Some(AuthMode::None));
        let cli = Cli::parse_from([
            "nubo-coordinator",
            "bootstrap",
            "--admin-password-file",
            "/pw",
            "--etcd-endpoints",
            "http://e:2379",
        ]);
        assert_eq!(cli.etcd_endpoints, Some(vec!["http://e:2379".to_string()]));
        assert!(matches!(cli.command, Some(Command::Bootstrap { .. })));
    }

    #[test]
    fn insecure_serving_needs_the_insecure_flag() {
        // Default: token auth, but no TLS → refused.
        let cfg = Cli::default().merge(FileConfig::default()).unwrap();
        let err = cfg.check_security().unwrap_err();
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        // TLS + token: fine.
        let cli = Cli::parse_from(["nubo-coordinator", "--tls-cert", "/c", "--tls-key", "/k"]);
        let cfg = cli.merge(FileConfig::default()).unwrap();
        cfg.check_security().unwrap();
        assert_eq!(cfg.insecurity(), None);
        // auth none over TLS: refused without --insecure.
        let cli = Cli::parse_from([
            "nubo-coordinator",
            "--tls-cert",
            "/c",
            "--tls-key",
            "/k",
            "--auth",
            "none",
        ]);
        let err = cli.merge(FileConfig::default()).unwrap().check_security();
        assert!(err.unwrap_err().to_string().contains("--insecure"));
        // --insecure (flag or file) allows both, and says so.
        let cli = Cli::parse_from(["nubo-coordinator", "--insecure", "--auth", "none"]);
        let cfg = cli.merge(FileConfig::default()).unwrap();
        cfg.check_security().unwrap();
        let warn = cfg.insecurity().unwrap();
        assert!(warn.contains("plain text") && warn.contains("no authentication"));
        let file = parse_file("insecure = true\n").unwrap();
        let cfg = Cli::default().merge(file).unwrap();
        assert!(cfg.insecure && cfg.auth == AuthMode::Token);
        cfg.check_security().unwrap();
    }

    #[test]
    fn the_example_configuration_is_valid_and_secure() {
        let file = parse_file(include_str!("../../docs/examples/coordinator.toml")).unwrap();
        let cfg = Cli::default().merge(file).unwrap();
        cfg.check_security().unwrap();
        assert_eq!(cfg.insecurity(), None);
        assert!(cfg.etcd_tls.is_some());
    }
}
