//! Agent configuration: a TOML file (`/etc/nubo/agent.toml` by default)
//! overridden field by field by the command-line flags of
//! `docs/CONTRACTS.md`.

pub mod storage;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nubo_common::NodeName;
use serde::Deserialize;

/// Default location of the configuration file (used only when it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nubo/agent.toml";
/// Default etcd endpoint.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

/// Which hypervisor driver runs instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// In-memory driver persisted to `<state-dir>/fake-hypervisor.json`.
    Fake,
    /// Network-namespace guests (not implemented yet).
    Netns,
    /// libvirt/QEMU (`hypervisor::libvirt`).
    Libvirt,
}

/// libvirt domain type (`<domain type=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DomainTypeKind {
    /// Hardware virtualisation.
    #[default]
    Kvm,
    /// QEMU TCG emulation (no /dev/kvm needed).
    Qemu,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Command-line flags (see `docs/CONTRACTS.md`). Every flag overrides the
/// corresponding field of the configuration file.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "nubo-agent", version, about = "nubo per-hypervisor agent")]
pub struct Cli {
    /// TOML configuration file (default /etc/nubo/agent.toml if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// etcd endpoints, comma separated.
    #[arg(long, env = "NUBO_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// Node name (default: hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Underlay (VTEP) address (default 127.0.0.1).
    #[arg(long)]
    pub underlay_ip: Option<IpAddr>,
    /// Underlay MTU (default 1500).
    #[arg(long)]
    pub underlay_mtu: Option<u16>,
    /// Availability zone (default "nova").
    #[arg(long)]
    pub availability_zone: Option<String>,
    /// Node label `k=v` (repeatable; added to the file's labels).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Hypervisor driver (default libvirt).
    #[arg(long, value_enum)]
    pub driver: Option<DriverKind>,
    /// TTL of the liveness lease, in seconds (default 5).
    #[arg(long)]
    pub lease_ttl: Option<u64>,
    /// Freeze instances when no keep-alive has been acknowledged for this
    /// long, in seconds; must be less than the lease TTL (default: TTL − 1 s,
    /// at least 4/5 of the TTL; 4 s with the default TTL).
    #[arg(long)]
    pub self_fence_after_secs: Option<u64>,
    /// Address this node's Ceph clients connect from, the one the storage
    /// fencer blocklists (default: the underlay address).
    #[arg(long)]
    pub storage_ip: Option<IpAddr>,
    /// Never hold instances running on a peer-witnessed etcd outage: freeze whenever
    /// keep-alives go unacknowledged (docs/failure-handling.md).
    #[arg(long)]
    pub no_peer_witness: bool,
    /// Timeout of one peer etcd-status probe, in ms (default 500).
    #[arg(long)]
    pub peer_probe_timeout_ms: Option<u64>,
    /// Capacity override: vCPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Capacity override: memory in MiB.
    #[arg(long)]
    pub ram_mb: Option<u64>,
    /// Capacity override: disk in GiB.
    #[arg(long)]
    pub disk_gb: Option<u64>,
    /// State directory (default /var/lib/nubo).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Fake driver: simulated boot time in milliseconds (default 0).
    #[arg(long)]
    pub fake_boot_ms: Option<u64>,
    /// netns driver: guest namespace name prefix (default "nubo-").
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// Name prefix of this node's router namespaces (default "qrouter-");
    /// every namespace with it that is not a current router is removed.
    #[arg(long)]
    pub router_netns_prefix: Option<String>,
    /// Name prefix of this node's health probe namespaces (default
    /// "nprobe-"); every namespace with it that is not a current probe is
    /// removed.
    #[arg(long)]
    pub probe_netns_prefix: Option<String>,
    /// Seconds between two health probes of a network (default 10; 0
    /// disables the probe).
    #[arg(long)]
    pub probe_interval_secs: Option<u64>,
    /// Do not run the network reconcilers.
    #[arg(long)]
    pub no_network: bool,
    /// Log format (default text).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// libvirt driver: connection URI (default qemu:///system).
    #[arg(long)]
    pub libvirt_uri: Option<String>,
    /// libvirt driver: domain type (default kvm).
    #[arg(long, value_enum)]
    pub domain_type: Option<DomainTypeKind>,
    /// libvirt driver: domain name prefix (default "nubo-").
    #[arg(long)]
    pub libvirt_prefix: Option<String>,
    /// libvirt driver: seconds a graceful shutdown may take before the
    /// domain is destroyed (default 30).
    #[arg(long)]
    pub shutdown_timeout_secs: Option<u64>,
    /// libvirt driver: the destination libvirtd of a live migration, with
    /// `{host}` for its underlay address (default
    /// `qemu+tls://{host}/system`; `qemu+tls` also encrypts the stream).
    #[arg(long)]
    pub migration_uri: Option<String>,
    /// libvirt driver: bandwidth cap of live migrations in MiB/s (default
    /// unlimited).
    #[arg(long)]
    pub migration_bandwidth: Option<u64>,
    /// Coordinator API the agent downloads image data from (default
    /// http://127.0.0.1:7400).
    #[arg(long)]
    pub api_endpoint: Option<String>,
    /// Address of the node API (console logs, captures; default
    /// `<underlay-ip>:7402`).
    #[arg(long)]
    pub node_api_listen: Option<std::net::SocketAddr>,
    /// Serve Prometheus metrics on this address (plain HTTP; TLS and a
    /// bearer token through `[metrics]` in the file).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Period of the per-VM statistics and node usage collection in ms
    /// (default 10000).
    #[arg(long)]
    pub usage_interval_ms: Option<u64>,
    /// PEM CA that signed the coordinators' TLS certificate (for an
    /// https:// --api-endpoint).
    #[arg(long)]
    pub api_ca_cert: Option<PathBuf>,
    /// File holding this node's application credential, one line
    /// `<id>:<secret>` (a user with the cloud-wide `node` role); the agent
    /// exchanges it for a token before each image download.
    #[arg(long)]
    pub api_credential_file: Option<PathBuf>,
    /// PEM CA of etcd's server certificate (etcd over TLS).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd (with --etcd-key).
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// PEM key of --etcd-cert.
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// Physical network → host interface, `physnet1=eth1` (repeatable;
    /// added to the file's `[physnets]`, replacing a mapping of the same
    /// physical network).
    #[arg(long = "physnet")]
    pub physnets: Vec<String>,
}

/// etcd over TLS: `[etcd_tls]` in the file, `--etcd-ca/--etcd-cert/--etcd-key`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA of etcd's server certificate (required).
    pub ca: Option<PathBuf>,
    /// Client certificate (etcd's `--client-cert-auth`), with `key`.
    pub cert: Option<PathBuf>,
    /// Key of `cert`.
    pub key: Option<PathBuf>,
}

/// The configuration file. Field names are the flag names with `_`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// etcd endpoints.
    pub etcd_endpoints: Option<Vec<String>>,
    /// Node name.
    pub node: Option<String>,
    /// Underlay address.
    pub underlay_ip: Option<IpAddr>,
    /// Underlay MTU.
    pub underlay_mtu: Option<u16>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver.
    pub driver: Option<DriverKind>,
    /// Lease TTL in seconds.
    pub lease_ttl: Option<u64>,
    /// Self-fence after this many seconds without an acknowledged keep-alive.
    pub self_fence_after_secs: Option<u64>,
    /// Address of the node's Ceph clients (default: the underlay address).
    pub storage_ip: Option<IpAddr>,
    /// Hold instead of freezing on a peer-witnessed etcd outage (default true).
    pub peer_witness: Option<bool>,
    /// Timeout of one peer etcd-status probe, in ms.
    pub peer_probe_timeout_ms: Option<u64>,
    /// Capacity override: vCPUs.
    pub vcpus: Option<u32>,
    /// Capacity override: MiB.
    pub ram_mb: Option<u64>,
    /// Capacity override: GiB.
    pub disk_gb: Option<u64>,
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Fake boot time in ms.
    pub fake_boot_ms: Option<u64>,
    /// Period of the safety-net reconcile pass in seconds (default 30;
    /// watch events start passes at once, this only catches what a lost
    /// event or an outside change left behind).
    pub resync_interval_secs: Option<u64>,
    /// netns guest prefix.
    pub netns_prefix: Option<String>,
    /// Router namespace prefix.
    pub router_netns_prefix: Option<String>,
    /// Health probe namespace prefix.
    pub probe_netns_prefix: Option<String>,
    /// Seconds between health probes (0: no probe).
    pub probe_interval_secs: Option<u64>,
    /// Disable network reconcilers.
    #[serde(default)]
    pub no_network: bool,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// libvirt URI.
    pub libvirt_uri: Option<String>,
    /// libvirt domain type.
    pub domain_type: Option<DomainTypeKind>,
    /// libvirt domain name prefix.
    pub libvirt_prefix: Option<String>,
    /// Graceful shutdown timeout in seconds.
    pub shutdown_timeout_secs: Option<u64>,
    /// Destination libvirtd URI template of live migrations.
    pub migration_uri: Option<String>,
    /// Bandwidth cap of live migrations in MiB/s.
    pub migration_bandwidth_mib_s: Option<u64>,
    /// Coordinator API endpoint for image downloads.
    pub api_endpoint: Option<String>,
    /// Node API address.
    pub node_api_listen: Option<std::net::SocketAddr>,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: Option<nubo_metrics::EndpointConfig>,
    /// Period of the per-VM statistics and node usage collection, ms.
    pub usage_interval_ms: Option<u64>,
    /// CA of the coordinators' TLS certificate.
    pub api_ca_cert: Option<PathBuf>,
    /// This node's application credential file (`<id>:<secret>`).
    pub api_credential_file: Option<PathBuf>,
    /// etcd over TLS.
    pub etcd_tls: Option<EtcdTls>,
    /// `[storage]`: where root disks and volumes live.
    pub storage: Option<storage::StorageFile>,
    /// `[physnets]`: physical network name → host interface
    /// (`physnet1 = "eth1"`), for provider networks.
    #[serde(default)]
    pub physnets: BTreeMap<String, String>,
}

impl FileConfig {
    /// Parses a configuration file's text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// The `[physnets]` of the file with the `--physnet name=iface` flags on
/// top; every name and interface checked (an interface name is 1-15 bytes
/// without `/`, whitespace or NUL).
pub fn physnets(
    mut file: BTreeMap<String, String>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, ConfigError> {
    for f in flags {
        let (k, v) = f.split_once('=').ok_or_else(|| ConfigError::Invalid {
            field: "physnet",
            reason: format!("{f:?} is not physnet=interface"),
        })?;
        file.insert(k.trim().to_string(), v.trim().to_string());
    }
    for (name, iface) in &file {
        if name.is_empty() || name.contains('/') {
            return Err(ConfigError::Invalid {
                field: "physnets",
                reason: format!("physical network name {name:?} is empty or contains '/'"),
            });
        }
        let bad = iface.is_empty()
            || iface.len() > 15
            || iface
                .chars()
                .any(|c| c == '/' || c == '\0' || c.is_whitespace());
        if bad {
            return Err(ConfigError::Invalid {
                field: "physnets",
                reason: format!(
                    "interface {iface:?} of physical network {name:?} is not a valid interface name (1-15 bytes, no '/', whitespace or NUL)"
                ),
            });
        }
    }
    Ok(file)
}

/// Capacity overrides; `None` components come from `sysinfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityOverride {
    /// vCPUs.
    pub vcpus: Option<u32>,
    /// Memory in MiB.
    pub ram_mb: Option<u64>,
    /// Disk in GiB.
    pub disk_gb: Option<u64>,
}

/// The resolved agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// etcd endpoints (at least one).
    pub etcd_endpoints: Vec<String>,
    /// This node's name.
    pub node: NodeName,
    /// Underlay (VTEP) address.
    pub underlay_ip: IpAddr,
    /// Underlay MTU.
    pub underlay_mtu: u16,
    /// Availability zone.
    pub availability_zone: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Hypervisor driver.
    pub driver: DriverKind,
    /// Liveness lease TTL.
    pub lease_ttl: Duration,
    /// Self-fencing delay; `None` = derived from the TTL (see
    /// [`AgentConfig::self_fence_after`]).
    pub self_fence_after: Option<Duration>,
    /// Address of the node's Ceph clients, published as the node label
    /// `nubo.storage-ip` (`None` = the underlay address).
    pub storage_ip: Option<IpAddr>,
    /// Ask peers before freezing on unacknowledged keep-alives, and keep
    /// instances running when every peer has lost etcd too.
    pub peer_witness: bool,
    /// Timeout of one peer etcd-status probe.
    pub peer_probe_timeout: Duration,
    /// Capacity overrides.
    pub capacity: CapacityOverride,
    /// State directory.
    pub state_dir: PathBuf,
    /// Fake driver boot time.
    pub fake_boot: Duration,
    /// netns guest prefix.
    pub netns_prefix: String,
    /// Name prefix of the router namespaces (never a prefix of
    /// `netns_prefix`, nor the other way round: each subsystem removes the
    /// namespaces with its prefix that it does not want).
    pub router_netns_prefix: String,
    /// Name prefix of the health probe namespaces (overlapping neither of
    /// the two above).
    pub probe_netns_prefix: String,
    /// Interval of the health probe (`None`: no probe).
    pub probe_interval: Option<Duration>,
    /// Network reconcilers disabled.
    pub no_network: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Period of the safety-net reconcile (`resync_interval_secs` in the
    /// file; 30 s).
    pub resync_interval: Duration,
    /// libvirt driver settings.
    pub libvirt: LibvirtSettings,
    /// Coordinator API endpoint for image downloads.
    pub api_endpoint: String,
    /// Node API address (`None` = `<underlay-ip>:7402`).
    pub node_api_listen: Option<std::net::SocketAddr>,
    /// The Prometheus endpoint (`None`: no metrics served).
    pub metrics: Option<nubo_metrics::EndpointConfig>,
    /// Period of the per-VM statistics and node usage collection
    /// (`usage_interval_ms`; 10 s): one bulk hypervisor call, one etcd
    /// write of the usage record.
    pub usage_interval: Duration,
    /// How image downloads authenticate to the coordinator API.
    pub api_auth: ApiAuth,
    /// etcd over TLS (`None` = plain http://).
    pub etcd_tls: Option<EtcdTls>,
    /// Where root disks and volumes live (`[storage]`).
    pub storage: storage::StorageSettings,
    /// Physical network → host interface (`[physnets]`, `--physnet`).
    pub physnets: BTreeMap<String, String>,
}

/// The agent's credentials towards the coordinator API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiAuth {
    /// CA of the coordinators' TLS certificate (https:// endpoints).
    pub ca_cert: Option<PathBuf>,
    /// Application credential file, one line `<id>:<secret>`.
    pub credential_file: Option<PathBuf>,
}

/// Settings of the libvirt driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtSettings {
    /// Connection URI.
    pub uri: String,
    /// Domain type.
    pub domain_type: DomainTypeKind,
    /// Domain name prefix.
    pub prefix: String,
    /// Graceful shutdown timeout.
    pub shutdown_timeout: Duration,
    /// How this node's libvirtd reaches another node's for a live
    /// migration (peer to peer): a URI with `{host}` standing for the
    /// destination's underlay address. Default `qemu+tls://{host}/system`;
    /// with a `qemu+tls` URI the migration stream uses QEMU's native TLS
    /// too. Test labs use `qemu+tcp://{host}/system` (plain TCP).
    pub migration_uri: String,
    /// Bandwidth cap of a live migration's stream in MiB/s (memory and
    /// disks; `None`: unlimited), so that migrations leave room on the
    /// underlay.
    pub migration_bandwidth_mib_s: Option<u64>,
}

/// The default of [`LibvirtSettings::migration_uri`].
pub const DEFAULT_MIGRATION_URI: &str = "qemu+tls://{host}/system";

impl Default for LibvirtSettings {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            domain_type: DomainTypeKind::Kvm,
            prefix: "nubo-".into(),
            shutdown_timeout: Duration::from_secs(30),
            migration_uri: DEFAULT_MIGRATION_URI.into(),
            migration_bandwidth_mib_s: None,
        }
    }
}

/// Default name prefix of the health probe's namespaces
/// (`network::probe`).
pub const DEFAULT_PROBE_NETNS_PREFIX: &str = "nprobe-";
/// Default interval between two health probes of a network.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Default coordinator endpoint for image downloads.
pub const DEFAULT_API_ENDPOINT: &str = "http://127.0.0.1:7400";
/// Default port of the node API.
pub const DEFAULT_NODE_API_PORT: u16 = 7402;

impl AgentConfig {
    /// A configuration with every default and the given node and endpoints
    /// (handy for tests and embedding).
    pub fn new(node: NodeName, etcd_endpoints: Vec<String>) -> Self {
        Self {
            etcd_endpoints,
            node,
            underlay_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            underlay_mtu: 1500,
            availability_zone: "nova".into(),
            labels: BTreeMap::new(),
            driver: DriverKind::Libvirt,
            lease_ttl: Duration::from_secs(5),
            self_fence_after: None,
            storage_ip: None,
            peer_witness: true,
            peer_probe_timeout: Duration::from_millis(500),
            capacity: CapacityOverride::default(),
            state_dir: PathBuf::from("/var/lib/nubo"),
            fake_boot: Duration::ZERO,
            netns_prefix: "nubo-".into(),
            router_netns_prefix: "qrouter-".into(),
            probe_netns_prefix: DEFAULT_PROBE_NETNS_PREFIX.into(),
            probe_interval: Some(DEFAULT_PROBE_INTERVAL),
            no_network: false,
            log_format: LogFormat::Text,
            resync_interval: Duration::from_secs(30),
            libvirt: LibvirtSettings::default(),
            api_endpoint: DEFAULT_API_ENDPOINT.into(),
            node_api_listen: None,
            metrics: None,
            usage_interval: Duration::from_secs(10),
            api_auth: ApiAuth::default(),
            etcd_tls: None,
            storage: storage::StorageSettings::default(),
            physnets: BTreeMap::new(),
        }
    }

    /// The effective self-fencing delay: the configured one if it is less
    /// than the lease TTL, else TTL − 1 s but at least 4/5 of the TTL (4 s at
    /// the default TTL of 5 s). Always strictly less than the TTL, which is
    /// what makes the agent freeze before its lease can expire
    /// (`docs/failure-handling.md`).
    pub fn self_fence_after(&self) -> Duration {
        let ttl = self.lease_ttl;
        match self.self_fence_after {
            Some(d) if !d.is_zero() && d < ttl => d,
            _ => ttl
                .saturating_sub(Duration::from_secs(1))
                .max(ttl.mul_f64(0.8)),
        }
    }

    /// How recent an acknowledged keep-alive must be for the etcd session to
    /// count as healthy: one keep-alive period plus two keep-alive timeouts
    /// (TTL/3 + 2·TTL/6: the previous round trip, the pause, the next round
    /// trip), so a working session never looks unhealthy to peers (an
    /// unhealthy report is the direction that lets a peer keep running).
    pub fn session_healthy_within(&self) -> Duration {
        self.lease_ttl.mul_f64(2.0 / 3.0)
    }

    /// The TLS files of the node API: the etcd client certificate (which
    /// `nubo-coordinator node enroll` issues for both uses) and the CA,
    /// when all three are configured; `None` serves plain HTTP.
    pub fn node_api_tls(&self) -> Option<nubo_nodeapi::TlsFiles> {
        let t = self.etcd_tls.as_ref()?;
        nubo_nodeapi::TlsFiles::from_parts(t.ca.as_ref(), t.cert.as_ref(), t.key.as_ref())
    }

    /// The node API address: the configured one or `<underlay-ip>:7402`.
    pub fn node_api(&self) -> std::net::SocketAddr {
        self.node_api_listen.unwrap_or(std::net::SocketAddr::new(
            self.underlay_ip,
            DEFAULT_NODE_API_PORT,
        ))
    }

    /// Loads the file named by `--config` (or the default path if it exists)
    /// and applies the flags on top.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => FileConfig::read(p)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                FileConfig::read(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        Self::merge(file, cli)
    }

    /// Merges a parsed file and the flags (flags win).
    pub fn merge(file: FileConfig, cli: &Cli) -> Result<Self, ConfigError> {
        let node_name = match cli.node.clone().or(file.node) {
            Some(n) => n,
            None => sysinfo::System::host_name().ok_or_else(|| ConfigError::Invalid {
                field: "node",
                reason: "no --node given and the hostname is unknown".into(),
            })?,
        };
        let node = NodeName::new(node_name).map_err(|e| ConfigError::Invalid {
            field: "node",
            reason: e.to_string(),
        })?;
        let etcd_endpoints: Vec<String> = cli
            .etcd_endpoints
            .clone()
            .or(file.etcd_endpoints)
            .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINT.into()])
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                field: "etcd_endpoints",
                reason: "at least one endpoint is required".into(),
            });
        }
        let mut labels = file.labels;
        for l in &cli.labels {
            let (k, v) = l.split_once('=').ok_or_else(|| ConfigError::Invalid {
                field: "label",
                reason: format!("{l:?} is not k=v"),
            })?;
            labels.insert(k.to_string(), v.to_string());
        }
        let lease_secs = cli.lease_ttl.or(file.lease_ttl).unwrap_or(5);
        if lease_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "lease_ttl",
                reason: "must be at least 1 second".into(),
            });
        }
        let self_fence_after = cli.self_fence_after_secs.or(file.self_fence_after_secs);
        if let Some(sfa) = self_fence_after {
            if sfa == 0 || sfa >= lease_secs {
                return Err(ConfigError::Invalid {
                    field: "self_fence_after_secs",
                    reason: format!(
                        "{sfa} s: must be at least 1 s and less than the lease TTL ({lease_secs} s), \
                         so the agent freezes its instances before its lease can expire"
                    ),
                });
            }
        }
        let mut cfg = Self::new(node, etcd_endpoints);
        cfg.self_fence_after = self_fence_after.map(Duration::from_secs);
        cfg.storage_ip = cli.storage_ip.or(file.storage_ip);
        cfg.peer_witness = !cli.no_peer_witness && file.peer_witness.unwrap_or(true);
        if let Some(ms) = cli.peer_probe_timeout_ms.or(file.peer_probe_timeout_ms) {
            cfg.peer_probe_timeout = Duration::from_millis(ms.max(1));
        }
        cfg.underlay_ip = cli
            .underlay_ip
            .or(file.underlay_ip)
            .unwrap_or(cfg.underlay_ip);
        cfg.underlay_mtu = cli
            .underlay_mtu
            .or(file.underlay_mtu)
            .unwrap_or(cfg.underlay_mtu);
        cfg.availability_zone = cli
            .availability_zone
            .clone()
            .or(file.availability_zone)
            .unwrap_or(cfg.availability_zone);
        cfg.labels = labels;
        cfg.driver = cli.driver.or(file.driver).unwrap_or(cfg.driver);
        cfg.lease_ttl = Duration::from_secs(lease_secs);
        cfg.capacity = CapacityOverride {
            vcpus: cli.vcpus.or(file.vcpus),
            ram_mb: cli.ram_mb.or(file.ram_mb),
            disk_gb: cli.disk_gb.or(file.disk_gb),
        };
        cfg.state_dir = cli
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or(cfg.state_dir);
        cfg.fake_boot = Duration::from_millis(cli.fake_boot_ms.or(file.fake_boot_ms).unwrap_or(0));
        if let Some(secs) = file.resync_interval_secs {
            if !(1..=86_400).contains(&secs) {
                return Err(ConfigError::Invalid {
                    field: "resync_interval_secs",
                    reason: format!("{secs} is outside 1..=86400"),
                });
            }
            cfg.resync_interval = Duration::from_secs(secs);
        }
        cfg.netns_prefix = cli
            .netns_prefix
            .clone()
            .or(file.netns_prefix)
            .unwrap_or(cfg.netns_prefix);
        cfg.router_netns_prefix = cli
            .router_netns_prefix
            .clone()
            .or(file.router_netns_prefix)
            .unwrap_or(cfg.router_netns_prefix);
        let (g, r) = (&cfg.netns_prefix, &cfg.router_netns_prefix);
        if r.is_empty() || r.contains('/') || r.len() > 200 {
            return Err(ConfigError::Invalid {
                field: "router_netns_prefix",
                reason: format!("{r:?} is not a namespace name prefix (1-200 characters, no '/')"),
            });
        }
        if g.starts_with(r.as_str()) || r.starts_with(g.as_str()) {
            return Err(ConfigError::Invalid {
                field: "router_netns_prefix",
                reason: format!(
                    "{r:?} and the guest prefix {g:?} overlap: one subsystem would remove the other's namespaces"
                ),
            });
        }
        let (g, r) = (g.clone(), r.clone());
        cfg.probe_netns_prefix = cli
            .probe_netns_prefix
            .clone()
            .or(file.probe_netns_prefix)
            .unwrap_or(cfg.probe_netns_prefix);
        let p = &cfg.probe_netns_prefix;
        if p.is_empty() || p.contains('/') || p.len() > 200 {
            return Err(ConfigError::Invalid {
                field: "probe_netns_prefix",
                reason: format!("{p:?} is not a namespace name prefix (1-200 characters, no '/')"),
            });
        }
        for (other, what) in [(&g, "guest"), (&r, "router")] {
            if p.starts_with(other.as_str()) || other.starts_with(p.as_str()) {
                return Err(ConfigError::Invalid {
                    field: "probe_netns_prefix",
                    reason: format!(
                        "{p:?} and the {what} prefix {other:?} overlap: one subsystem would remove the other's namespaces"
                    ),
                });
            }
        }
        if let Some(secs) = cli.probe_interval_secs.or(file.probe_interval_secs) {
            cfg.probe_interval = (secs > 0).then(|| Duration::from_secs(secs));
        }
        cfg.no_network = cli.no_network || file.no_network;
        cfg.log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        let lv = &mut cfg.libvirt;
        lv.uri = cli
            .libvirt_uri
            .clone()
            .or(file.libvirt_uri)
            .unwrap_or_else(|| lv.uri.clone());
        lv.domain_type = cli.domain_type.or(file.domain_type).unwrap_or_default();
        lv.prefix = cli
            .libvirt_prefix
            .clone()
            .or(file.libvirt_prefix)
            .unwrap_or_else(|| lv.prefix.clone());
        if let Some(t) = cli.shutdown_timeout_secs.or(file.shutdown_timeout_secs) {
            lv.shutdown_timeout = Duration::from_secs(t);
        }
        if let Some(u) = cli.migration_uri.clone().or(file.migration_uri) {
            lv.migration_uri = u;
        }
        lv.migration_bandwidth_mib_s = cli
            .migration_bandwidth
            .or(file.migration_bandwidth_mib_s)
            .filter(|b| *b > 0);
        cfg.api_endpoint = cli
            .api_endpoint
            .clone()
            .or(file.api_endpoint)
            .unwrap_or(cfg.api_endpoint);
        cfg.node_api_listen = cli.node_api_listen.or(file.node_api_listen);
        cfg.metrics = match (cli.metrics_listen, file.metrics.clone()) {
            (Some(listen), Some(m)) => Some(nubo_metrics::EndpointConfig { listen, ..m }),
            (Some(listen), None) => Some(nubo_metrics::EndpointConfig::plain(listen)),
            (None, m) => m,
        };
        if let Some(ms) = cli.usage_interval_ms.or(file.usage_interval_ms) {
            if !(100..=3_600_000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    field: "usage_interval_ms",
                    reason: format!("{ms} is outside 100..=3600000"),
                });
            }
            cfg.usage_interval = Duration::from_millis(ms);
        }
        cfg.api_auth = ApiAuth {
            ca_cert: cli.api_ca_cert.clone().or(file.api_ca_cert),
            credential_file: cli.api_credential_file.clone().or(file.api_credential_file),
        };
        cfg.storage = storage::StorageSettings::from_file(file.storage.clone().unwrap_or_default());
        cfg.physnets = physnets(file.physnets.clone(), &cli.physnets)?;
        let mut tls = file.etcd_tls.unwrap_or_default();
        tls.ca = cli.etcd_ca.clone().or(tls.ca);
        tls.cert = cli.etcd_cert.clone().or(tls.cert);
        tls.key = cli.etcd_key.clone().or(tls.key);
        cfg.etcd_tls = if tls == EtcdTls::default() {
            None
        } else if tls.ca.is_none() || tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::Invalid {
                field: "etcd_tls",
                reason: "needs ca, and cert and key together".into(),
            });
        } else {
            Some(tls)
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["nubo-agent"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            r#"
            etcd_endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
            node = "from-file"
            underlay_ip = "10.1.0.5"
            availability_zone = "az1"
            labels = { rack = "r1", ssd = "yes" }
            driver = "fake"
            lease_ttl = 9
            state_dir = "/srv/nubo"
            "#,
            Path::new("t.toml"),
        )
        .unwrap();
        let c = AgentConfig::merge(
            file,
            &cli(&[
                "--node",
                "from-flag",
                "--label",
                "rack=r2",
                "--lease-ttl",
                "3",
                "--vcpus",
                "7",
            ]),
        )
        .unwrap();
        assert_eq!(c.node.as_str(), "from-flag");
        assert_eq!(c.etcd_endpoints.len(), 2);
        assert_eq!(c.underlay_ip.to_string(), "10.1.0.5");
        assert_eq!(c.availability_zone, "az1");
        assert_eq!(c.labels["rack"], "r2");
        assert_eq!(c.labels["ssd"], "yes");
        assert_eq!(c.driver, DriverKind::Fake);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.capacity.vcpus, Some(7));
        assert_eq!(c.capacity.ram_mb, None);
        assert_eq!(c.state_dir, PathBuf::from("/srv/nubo"));
    }

    #[test]
    fn physnets_from_the_file_and_flags() {
        let file = FileConfig::parse(
            "[physnets]\nphysnet1 = \"eth1\"\nphysnet2 = \"eth2\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = AgentConfig::merge(
            file,
            &cli(&[
                "--node",
                "n1",
                "--physnet",
                "physnet2=bond0",
                "--physnet",
                "ext=eth3",
            ]),
        )
        .unwrap();
        assert_eq!(
            c.physnets.into_iter().collect::<Vec<_>>(),
            [("ext", "eth3"), ("physnet1", "eth1"), ("physnet2", "bond0")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        for bad in [
            "physnet1",
            "physnet1=",
            "physnet1=a-very-long-interface",
            "p=eth 1",
        ] {
            let e = AgentConfig::merge(
                FileConfig::default(),
                &cli(&["--node", "n1", "--physnet", bad]),
            )
            .unwrap_err();
            assert!(e.to_string().contains("physnet"), "{bad}: {e}");
        }
    }

    #[test]
    fn storage_ip_and_peer_witness_settings() {
        let c = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.storage_ip, None);
        assert!(c.peer_witness);
        assert_eq!(c.peer_probe_timeout, Duration::from_millis(500));
        assert_eq!(c.session_healthy_within().as_millis(), 3333);
        let file = FileConfig::parse(
            "storage_ip = \"10.9.0.7\"\npeer_witness = false\npeer_probe_timeout_ms = 200",
            Path::new("t.toml"),
        )
        .unwrap();
        let c = AgentConfig::merge(file, &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.storage_ip, Some("10.9.0.7".parse().unwrap()));
        assert!(!c.peer_witness);
        assert_eq!(c.peer_probe_timeout, Duration::from_millis(200));
        let c = AgentConfig::merge(
            FileConfig::default(),
            &cli(&[
                "--node",
                "n1",
                "--storage-ip",
                "10.9.0.8",
                "--no-peer-witness",
            ]),
        )
        .unwrap();
        assert_eq!(c.storage_ip, Some("10.9.0.8".parse().unwrap()));
        assert!(!c.peer_witness);
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.underlay_ip.to_string(), "127.0.0.1");
        assert_eq!(c.underlay_mtu, 1500);
        assert_eq!(c.availability_zone, "nova");
        assert_eq!(c.driver, DriverKind::Libvirt);
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/nubo"));
        assert_eq!(c.netns_prefix, "nubo-");
        assert_eq!(c.libvirt, LibvirtSettings::default());
        assert_eq!(c.api_endpoint, DEFAULT_API_ENDPOINT);
        assert_eq!(c.node_api(), "127.0.0.1:7402".parse().unwrap());
        let c = AgentConfig::merge(
            FileConfig::default(),
            &cli(&[
                "--node",
                "n1",
                "--domain-type",
                "qemu",
                "--libvirt-uri",
                "qemu+unix:///system?socket=/x/libvirt-sock",
                "--api-endpoint",
                "http://10.0.0.1:7400",
                "--shutdown-timeout-secs",
                "2",
            ]),
        )
        .unwrap();
        assert_eq!(c.libvirt.domain_type, DomainTypeKind::Qemu);
        assert_eq!(c.libvirt.uri, "qemu+unix:///system?socket=/x/libvirt-sock");
        assert_eq!(c.libvirt.shutdown_timeout, Duration::from_secs(2));
        assert_eq!(c.api_endpoint, "http://10.0.0.1:7400");
    }

    #[test]
    fn self_fence_after_is_validated_against_the_lease_ttl() {
        let c = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.self_fence_after(), Duration::from_secs(4));
        let c = AgentConfig::merge(
            FileConfig::default(),
            &cli(&["--node", "n1", "--lease-ttl", "2"]),
        )
        .unwrap();
        assert_eq!(c.self_fence_after(), Duration::from_millis(1600));
        let c = AgentConfig::merge(
            FileConfig::parse("self_fence_after_secs = 7\nlease_ttl = 10", Path::new("t")).unwrap(),
            &cli(&["--node", "n1"]),
        )
        .unwrap();
        assert_eq!(c.self_fence_after(), Duration::from_secs(7));
        for bad in [
            ["--self-fence-after-secs", "5"],
            ["--self-fence-after-secs", "0"],
        ] {
            let mut args = vec!["--node", "n1"];
            args.extend(bad);
            assert!(AgentConfig::merge(FileConfig::default(), &cli(&args)).is_err());
        }
        // A programmatic configuration cannot get it wrong either.
        let mut c = AgentConfig::new(c.node.clone(), vec![]);
        c.lease_ttl = Duration::from_secs(3);
        c.self_fence_after = Some(Duration::from_secs(3));
        assert_eq!(c.self_fence_after(), Duration::from_millis(2400));
    }

    #[test]
    fn comma_separated_endpoints_and_bad_values() {
        let c = AgentConfig::merge(
            FileConfig::default(),
            &cli(&["--node", "n1", "--etcd-endpoints", "http://a:1,http://b:2"]),
        )
        .unwrap();
        assert_eq!(c.etcd_endpoints, vec!["http://a:1", "http://b:2"]);
        assert!(AgentConfig::merge(FileConfig::default(), &cli(&["--node", "bad/name"])).is_err());
        assert!(AgentConfig::merge(
            FileConfig::default(),
            &cli(&["--node", "n", "--label", "x"])
        )
        .is_err());
        assert!(FileConfig::parse("nope = 1", Path::new("x")).is_err());
    }

    #[test]
    fn metrics_from_the_file_with_the_flag_overriding_the_address() {
        let file = FileConfig::parse(
            "[metrics]\nlisten = \"0.0.0.0:9101\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\n\
             bearer_token_file = \"/t\"\n",
            Path::new("x"),
        )
        .unwrap();
        let c = AgentConfig::merge(file.clone(), &cli(&["--node", "n1"])).unwrap();
        let m = c.metrics.unwrap();
        assert_eq!(m.listen, "0.0.0.0:9101".parse().unwrap());
        assert_eq!(m.bearer_token_file, Some(PathBuf::from("/t")));
        let c = AgentConfig::merge(
            file,
            &cli(&["--node", "n1", "--metrics-listen", "10.0.0.1:9"]),
        )
        .unwrap();
        let m = c.metrics.unwrap();
        assert_eq!(m.listen, "10.0.0.1:9".parse().unwrap());
        assert_eq!(
            m.tls_cert,
            Some(PathBuf::from("/c")),
            "the file's TLS is kept"
        );
        let c = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.metrics, None, "no metrics unless configured");
        assert!(
            FileConfig::parse("[metrics]\nlisten = \"x\"\n", Path::new("x")).is_err(),
            "a bad address is refused"
        );
        assert!(
            FileConfig::parse(
                "[metrics]\nlisten = \"1.2.3.4:1\"\ntoken = \"x\"\n",
                Path::new("x")
            )
            .is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn credentials_and_etcd_tls_from_file_and_flags() {
        let file = FileConfig::parse(
            "api_endpoint = \"https://10.0.0.1:7400\"\napi_ca_cert = \"/etc/nubo/ca.crt\"\n\
             api_credential_file = \"/etc/nubo/node.cred\"\n\
             [etc_placeholder]\n",
            Path::new("x"),
        );
        assert!(file.is_err(), "unknown sections are refused");
        let file = FileConfig::parse(
            "api_ca_cert = \"/etc/nubo/ca.crt\"\napi_credential_file = \"/etc/nubo/node.cred\"\n\
             [etcd_tls]\nca = \"/etc/nubo/ca.crt\"\ncert = \"/c\"\nkey = \"/k\"\n",
            Path::new("x"),
        )
        .unwrap();
        let c = AgentConfig::merge(file.clone(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.api_auth.ca_cert, Some(PathBuf::from("/etc/nubo/ca.crt")));
        assert_eq!(
            c.api_auth.credential_file,
            Some(PathBuf::from("/etc/nubo/node.cred"))
        );
        let tls = c.etcd_tls.unwrap();
        assert_eq!(tls.cert, Some(PathBuf::from("/c")));
        let c = AgentConfig::merge(file, &cli(&["--node", "n1", "--etcd-cert", "/c2"])).unwrap();
        assert_eq!(c.etcd_tls.unwrap().cert, Some(PathBuf::from("/c2")));
        let plain = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(plain.etcd_tls, None);
        assert_eq!(plain.api_auth, ApiAuth::default());
        // A client certificate without its key, or no CA: refused.
        for bad in [
            vec!["--node", "n1", "--etcd-ca", "/ca", "--etcd-cert", "/c"],
            vec!["--node", "n1", "--etcd-cert", "/c", "--etcd-key", "/k"],
        ] {
            assert!(AgentConfig::merge(FileConfig::default(), &cli(&bad)).is_err());
        }
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let file = FileConfig::parse(
            include_str!("../../../docs/examples/agent.toml"),
            Path::new("agent.toml"),
        )
        .unwrap();
        let c = AgentConfig::merge(file, &cli(&[])).unwrap();
        assert!(c.api_endpoint.starts_with("https://"));
        assert!(c.api_auth.ca_cert.is_some() && c.api_auth.credential_file.is_some());
        assert_eq!(c.physnets["physnet1"], "eth1");
        assert!(c.etcd_tls.and_then(|t| t.cert).is_some());
    }

    #[test]
    fn the_probe_has_defaults_can_be_disabled_and_its_prefix_overlaps_nothing() {
        let c = AgentConfig::merge(FileConfig::default(), &cli(&["--node", "n1"])).unwrap();
        assert_eq!(c.probe_netns_prefix, "nprobe-");
        assert_eq!(c.probe_interval, Some(Duration::from_secs(10)));
        let args = [
            "--node",
            "n1",
            "--probe-interval-secs",
            "0",
            "--probe-netns-prefix",
            "p-",
        ];
        let c = AgentConfig::merge(FileConfig::default(), &cli(&args)).unwrap();
        assert_eq!(
            (c.probe_interval, c.probe_netns_prefix.as_str()),
            (None, "p-")
        );
        // Overlapping the guest ("nubo-") or router ("qrouter-") prefix,
        // or not a name prefix: refused.
        for bad in ["nubo-probe-", "nub", "qrouter-p", "a/b", ""] {
            let args = ["--node", "n1", "--probe-netns-prefix", bad];
            assert!(
                AgentConfig::merge(FileConfig::default(), &cli(&args)).is_err(),
                "{bad:?}"
            );
        }
    }
}
