//! A `nubo-agent` process, optionally inside a network namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{bin_path, Daemon};
use crate::wait::wait_until;

/// How long an agent may take to register (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of [`Agent::start`].
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// Node name (`--node`).
    pub node: String,
    /// etcd client URLs, comma-separated.
    pub etcd_endpoints: String,
    /// `--driver` (`fake`, `netns`, `libvirt`).
    pub driver: String,
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
    /// Run the agent inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Pass `--no-network` (fake-driver clusters need no data path).
    pub no_network: bool,
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
            driver: "fake".into(),
            lease_ttl: 2,
            vcpus: 64,
            ram_mb: 131_072,
            disk_gb: 2_048,
            underlay_ip: None,
            netns: None,
            no_network: true,
            extra_args: Vec::new(),
        }
    }

    fn args(&self, state_dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--driver".to_string(),
            self.driver.clone(),
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
        ];
        if let Some(ip) = self.underlay_ip {
            a.extend(["--underlay-ip".into(), ip.to_string()]);
        }
        if self.no_network {
            a.push("--no-network".into());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
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
    /// Starts an agent and waits until it is registered: its log prints
    /// `nubo-agent ready` or its `/nubo/v1/nodes/<node>/alive` key names its pid.
    pub fn start(opts: AgentOpts) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nbt-agent-{}-", opts.node))
            .tempdir()?;
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state)?;
        let prefix = match &opts.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => vec![],
        };
        let daemon = Daemon::spawn(
            &format!("nubo-agent {}", opts.node),
            prefix,
            bin_path("nubo-agent")?,
            opts.args(&state),
            dir.path().join("agent.log"),
            &[("RUST_LOG", "info")],
        )?;
        let mut a = Self { daemon, opts, dir };
        a.wait_ready()?;
        Ok(a)
    }

    /// Waits until the current incarnation is registered.
    pub fn wait_ready(&mut self) -> Result<()> {
        let node = self.opts.node.clone();
        let endpoints = self.opts.etcd_endpoints.clone();
        let alive_key = format!("/nubo/v1/nodes/{node}/alive");
        let daemon = &mut self.daemon;
        wait_until(START_TIMEOUT, &format!("agent {node} to be ready"), || {
            daemon.check_running().map_err(crate::wait::fatal)?;
            if daemon.current_log().contains("nubo-agent ready") {
                return Ok(true);
            }
            // Fallback: the alive key carries the agent's pid.
            let pid = daemon.pid().unwrap_or(0);
            let v = crate::etcd::etcdctl(&endpoints, &["get", &alive_key, "--print-value-only"])?;
            Ok(serde_json::from_str::<serde_json::Value>(v.trim())
                .ok()
                .and_then(|j| j.get("pid").and_then(|p| p.as_u64()))
                == Some(u64::from(pid)))
        })
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
        self.daemon.start(&[("RUST_LOG", "info")])?;
        self.wait_ready()
    }

    /// The process id, or `None` once killed.
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
