//! A `nubo-agent` process, optionally inside a network namespace: the one
//! agent guard of the harness, for fake-driver clusters and for the labs
//! whose agents run real guests ([`Driver::Netns`] in
//! [`crate::net_e2e::NetLab`], [`Driver::Libvirt`] in
//! [`crate::vm_e2e::VmLab`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Host;
use crate::process::{bin_path, Daemon};
use crate::wait::wait_until;

/// How long an agent may take to register (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a libvirt agent may take to be ready (it probes libvirtd).
const LIBVIRT_START_TIMEOUT: Duration = Duration::from_secs(90);

/// How the agent runs instances (`--driver`), with the flags that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    /// `--driver fake`: instances exist only in the agent's state file.
    Fake,
    /// `--driver netns`: every guest is a network namespace named
    /// `<guest_prefix><8 hex digits of the instance id>`.
    Netns {
        /// `--netns-prefix`.
        guest_prefix: String,
    },
    /// `--driver libvirt` (domain type `qemu`, TCG) against a private
    /// libvirtd; domains are named `<domain_prefix><instance id>`.
    Libvirt {
        /// `--libvirt-uri`.
        uri: String,
        /// `--libvirt-prefix`.
        domain_prefix: String,
    },
}

impl Driver {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["--driver".to_string()];
        match self {
            Driver::Fake => a.push("fake".into()),
            Driver::Netns { guest_prefix } => {
                a.extend([
                    "netns".into(),
                    "--netns-prefix".into(),
                    guest_prefix.clone(),
                ]);
            }
            Driver::Libvirt { uri, domain_prefix } => a.extend([
                "libvirt".into(),
                "--libvirt-uri".into(),
                uri.clone(),
                "--domain-type".into(),
                "qemu".into(),
                "--libvirt-prefix".into(),
                domain_prefix.clone(),
                "--shutdown-timeout-secs".into(),
                "3".into(),
            ]),
        }
        a
    }
}

/// Options of [`Agent::start`].
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// Node name (`--node`).
    pub node: String,
    /// etcd client URLs, comma-separated.
    pub etcd_endpoints: String,
    /// `--driver` and its flags.
    pub driver: Driver,
    /// `--lease-ttl` in seconds.
    pub lease_ttl: u32,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--ram-mb`.
    pub ram_mb: u64,
    /// `--disk-gb`.
    pub disk_gb: u64,
    /// `--underlay-ip`, if set.
    pub underlay_ip: Option<IpAddr>,
    /// `--availability-zone`, if set.
    pub availability_zone: Option<String>,
    /// Run the agent inside this network namespace (`nsenter --net`, not
    /// `ip netns exec`, whose private mount namespace would hide the guest
    /// namespaces a netns-driver agent creates from everyone else).
    pub netns: Option<String>,
    /// Pass `--no-network` (fake-driver clusters need no data path).
    pub no_network: bool,
    /// The agent's `RUST_LOG`.
    pub log_filter: String,
    /// How long [`Agent::start`] and [`Agent::restart`] wait for the agent.
    pub ready_timeout: Duration,
    /// Also count the agent as started once its
    /// `/nubo/v1/nodes/<node>/alive` key names its pid (before its first
    /// reconcile pass is done and it logs `nubo-agent ready`).
    pub ready_on_alive_key: bool,
    /// Where the agent's directory (state directory and log) is made:
    /// inside this directory, world-traversable (QEMU reads the disks and
    /// writes the consoles in it), instead of a private temporary directory.
    pub dir_in: Option<PathBuf>,
    /// Extra command-line flags.
    pub extra_args: Vec<String>,
}

impl AgentOpts {
    /// A fake-driver agent with a 2 s lease, no network reconcilers and
    /// room for 64 vCPUs / 128 GiB / 2 TiB.
    pub fn fake(node: &str, etcd_endpoints: &str) -> Self {
        Self {
            node: node.to_string(),
            etcd_endpoints: etcd_endpoints.to_string(),
            driver: Driver::Fake,
            lease_ttl: 2,
            vcpus: 64,
            ram_mb: 131_072,
            disk_gb: 2_048,
            underlay_ip: None,
            availability_zone: None,
            netns: None,
            no_network: true,
            log_filter: "info".into(),
            ready_timeout: START_TIMEOUT,
            ready_on_alive_key: true,
            dir_in: None,
            extra_args: Vec::new(),
        }
    }

    /// The agent of lab host `i` running real guests with `driver`: node
    /// `hv-<i>`, zone `az-<i>`, inside the host's namespace with its
    /// underlay address, a 3 s lease, the network reconcilers on, and
    /// [`lab_log_filter`] (its reconcile passes in the log). Started once
    /// it logs `nubo-agent ready` (its first reconcile pass is done).
    ///
    /// [`Driver::Libvirt`] gets 64 vCPUs / 64 GiB / 1 TB and the node API
    /// on `<host ip>:7402`; the others room for hundreds of guests and
    /// `--underlay-mtu 1500`.
    pub fn lab(host: &Host, i: u8, etcd_endpoints: &str, driver: Driver) -> Self {
        let mut o = Self::fake(&format!("hv-{i}"), etcd_endpoints);
        o.lease_ttl = 3;
        o.underlay_ip = Some(host.ip().into());
        o.availability_zone = Some(format!("az-{i}"));
        o.netns = Some(host.netns().to_string());
        o.no_network = false;
        o.log_filter = lab_log_filter();
        o.ready_on_alive_key = false;
        match driver {
            Driver::Libvirt { .. } => {
                (o.vcpus, o.ram_mb, o.disk_gb) = (64, 65_536, 1_000);
                o.ready_timeout = LIBVIRT_START_TIMEOUT;
                o.extra_args = vec!["--node-api-listen".into(), format!("{}:7402", host.ip())];
            }
            Driver::Netns { .. } | Driver::Fake => {
                (o.vcpus, o.ram_mb, o.disk_gb) = (256, 1_048_576, 100_000);
                o.extra_args = vec!["--underlay-mtu".into(), "1500".into()];
            }
        }
        o.extra_args
            .extend(["--router-netns-prefix".into(), lab_router_prefix(host)]);
        o.extra_args
            .extend(["--probe-netns-prefix".into(), lab_probe_prefix(host)]);
        o.driver = driver;
        o
    }

    fn args(&self, state_dir: &Path) -> Vec<String> {
        let mut a = self.driver.args();
        a.extend([
            "--node".into(),
            self.node.clone(),
            "--etcd-endpoints".into(),
            self.etcd_endpoints.clone(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--lease-ttl".into(),
            self.lease_ttl.to_string(),
            "--vcpus".into(),
            self.vcpus.to_string(),
            "--ram-mb".into(),
            self.ram_mb.to_string(),
            "--disk-gb".into(),
            self.disk_gb.to_string(),
        ]);
        if let Some(ip) = self.underlay_ip {
            a.extend(["--underlay-ip".into(), ip.to_string()]);
        }
        if let Some(az) = &self.availability_zone {
            a.extend(["--availability-zone".into(), az.clone()]);
        }
        if self.no_network {
            a.push("--no-network".into());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// The router namespace prefix of the lab agent of `host`: the host's
/// namespace name + `r-` (unique per run and host, `nbt`-prefixed, never a
/// prefix of a guest namespace name).
pub fn lab_router_prefix(host: &Host) -> String {
    format!("{}r-", host.netns())
}

/// The health probe namespace prefix of a lab agent on `host`:
/// `<host netns>p-` (test-owned names, see [`AgentOpts::lab`]).
pub fn lab_probe_prefix(host: &Host) -> String {
    format!("{}p-", host.netns())
}

/// The `RUST_LOG` of lab agents: [`PASS_LOG_FILTER`] (info, plus the line
/// ending each reconcile pass), or `$NUBO_TEST_AGENT_LOG` when set (e.g.
/// `info,nubo_agent=debug` for the reconcile timings of a profiling run).
pub fn lab_log_filter() -> String {
    std::env::var("NUBO_TEST_AGENT_LOG").unwrap_or_else(|_| PASS_LOG_FILTER.to_string())
}

/// A running `nubo-agent`; killed (SIGKILL, by pid) on drop. Its state
/// directory and log live in a temporary directory that survives
/// [`Agent::kill9`] and [`Agent::restart`] and is removed on drop.
pub struct Agent {
    daemon: Daemon,
    opts: AgentOpts,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent and waits until it is ready: its log prints
    /// `nubo-agent ready` (or, with [`AgentOpts::ready_on_alive_key`], its
    /// `/nubo/v1/nodes/<node>/alive` key names its pid).
    pub fn start(opts: AgentOpts) -> Result<Self> {
        let prefix = format!("nbt-agent-{}-", opts.node);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match &opts.dir_in {
            Some(parent) => {
                let d = builder.tempdir_in(parent)?;
                crate::netns::run("chmod", &["755", &d.path().display().to_string()])?;
                d
            }
            None => builder.tempdir()?,
        };
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state)?;
        let enter = match &opts.netns {
            Some(ns) => vec!["nsenter".into(), format!("--net=/run/netns/{ns}")],
            None => vec![],
        };
        let daemon = Daemon::spawn(
            &format!("nubo-agent {}", opts.node),
            enter,
            bin_path("nubo-agent")?,
            opts.args(&state),
            dir.path().join("agent.log"),
            &[("RUST_LOG", &opts.log_filter)],
        )?;
        let mut a = Self { daemon, opts, dir };
        a.wait_ready()?;
        Ok(a)
    }

    /// Waits until the current incarnation is ready.
    pub fn wait_ready(&mut self) -> Result<()> {
        let node = self.opts.node.clone();
        let endpoints = self.opts.etcd_endpoints.clone();
        let alive_key = format!("/nubo/v1/nodes/{node}/alive");
        let by_key = self.opts.ready_on_alive_key;
        let daemon = &mut self.daemon;
        wait_until(
            self.opts.ready_timeout,
            &format!("agent {node} to be ready"),
            || {
                daemon.check_running().map_err(crate::wait::fatal)?;
                if daemon.current_log().contains("nubo-agent ready") {
                    return Ok(true);
                }
                if !by_key {
                    return Ok(false);
                }
                // The alive key carries the agent's pid.
                let pid = daemon.pid().unwrap_or(0);
                let v =
                    crate::etcd::etcdctl(&endpoints, &["get", &alive_key, "--print-value-only"])?;
                Ok(serde_json::from_str::<serde_json::Value>(v.trim())
                    .ok()
                    .and_then(|j| j.get("pid").and_then(|p| p.as_u64()))
                    == Some(u64::from(pid)))
            },
        )
        .with_context(|| format!("log tail:\n{}", self.daemon.log_tail()))
    }

    /// Kills the agent with SIGKILL (by pid), as a crash would. Its state
    /// directory (and the fake driver's "running instances") stays.
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts the agent again with the same flags and state directory and
    /// waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.daemon.start(&[("RUST_LOG", &self.opts.log_filter)])?;
        self.wait_ready()
    }

    /// The process id, or `None` once killed (`nsenter` execs the agent:
    /// same process).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.opts.node
    }

    /// The options it was started with.
    pub fn opts(&self) -> &AgentOpts {
        &self.opts
    }

    /// The `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the console log of instance `id` on this node is written.
    pub fn console_path(&self, id: &str) -> PathBuf {
        self.state_dir().join("console").join(format!("{id}.log"))
    }

    /// The console log of an instance on this node (empty until it exists).
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.console_path(id)).unwrap_or_default()
    }

    /// The whole log (every incarnation).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The log since the last (re)start.
    pub fn current_log(&self) -> String {
        self.daemon.current_log()
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// The agents' `RUST_LOG` when a test waits for reconcile passes: `info`,
/// plus the `debug` line that ends every pass (`reconcile pass timing`,
/// inside the span `reconcile{revision=N}`: the etcd revision the pass
/// reconciled up to).
pub const PASS_LOG_FILTER: &str = "info,nubo_agent::agent=debug";

/// The revisions of the reconcile passes completed in an agent's text log
/// (written with [`PASS_LOG_FILTER`]; ANSI colours are ignored), in order.
/// Pure.
pub fn reconcile_passes(log: &str) -> Vec<i64> {
    crate::process::strip_ansi(log)
        .lines()
        .filter(|l| l.contains("reconcile pass timing"))
        .filter_map(|l| {
            let rest = l.split("reconcile{revision=").nth(1)?;
            rest.split('}').next()?.parse().ok()
        })
        .collect()
}

/// Waits until `log()` shows a completed reconcile pass of revision
/// `revision` or later: a pass that saw every change up to that revision
/// (the event a test waits for before asserting that a pass changed
/// nothing, instead of a pause).
pub fn wait_reconciled(
    what: &str,
    revision: i64,
    timeout: Duration,
    log: impl Fn() -> String,
) -> Result<()> {
    crate::wait::wait_for(
        timeout,
        &format!("{what}: a reconcile pass at revision >= {revision}"),
        || {
            let passes = reconcile_passes(&log());
            Ok(if passes.iter().any(|r| *r >= revision) {
                Ok(())
            } else {
                let last = &passes[passes.len().saturating_sub(5)..];
                Err(format!("last passes at revisions {last:?}"))
            })
        },
    )
}

/// Writes `key`'s current value again through `etcdctl` (an event for the
/// watchers, no change of content) and returns the revision of that write:
/// with [`wait_reconciled`], a way to make an agent run one more pass.
pub fn touch(etcd_endpoints: &str, key: &str) -> Result<i64> {
    let value = crate::etcd::get_prefix(etcd_endpoints, key)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .with_context(|| format!("{key} not in etcd"))?;
    let value = String::from_utf8(value).with_context(|| format!("{key} is not UTF-8"))?;
    let out = crate::etcd::etcdctl(etcd_endpoints, &["put", key, &value, "-w", "json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("etcdctl put output: {out}"))?;
    v["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no revision in {out}"))
}

/// [`touch`]es `key` (something the node watches, e.g. a network it hosts)
/// and waits until the agent whose log `log()` returns (node `node`) has
/// completed a pass that saw it.
pub fn reconcile_once(
    etcd_endpoints: &str,
    key: &str,
    node: &str,
    log: impl Fn() -> String,
) -> Result<()> {
    let rev = touch(etcd_endpoints, key)?;
    wait_reconciled(node, rev, Duration::from_secs(60), log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_revisions_of_completed_passes() {
        let log = "\
2026-12-04T21:28:40Z  INFO agent{node=hv-1}: nubo_agent::agent: first reconcile pass done actions=3 failures=0
2026-12-04T21:28:40Z DEBUG agent{node=hv-1}:reconcile{revision=57}: nubo_agent::agent: reconcile pass timing desired_us=10 pass_us=20
2026-12-04T21:28:41Z DEBUG agent{node=hv-1}: nubo_agent::agent: change seen; reconciling generation=4
2026-12-04T21:28:41Z DEBUG agent{node=hv-1}:reconcile{revision=61}: nubo_agent::agent: reconcile pass timing desired_us=9 pass_us=31";
        assert_eq!(reconcile_passes(log), vec![57, 61]);
        assert!(reconcile_passes("INFO nubo-agent ready").is_empty());
        let coloured = "\u{1b}[1mreconcile\u{1b}[0m\u{1b}[1m{\u{1b}[0m\u{1b}[3mrevision\u{1b}[0m\u{1b}[2m=\u{1b}[0m2\u{1b}[1m}\u{1b}[0m\u{1b}[2m:\u{1b}[0m \u{1b}[2mnubo_agent::agent\u{1b}[0m\u{1b}[2m:\u{1b}[0m reconcile pass timing";
        assert_eq!(reconcile_passes(coloured), vec![2]);
    }
}
