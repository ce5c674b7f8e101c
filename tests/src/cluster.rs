//! A whole control plane in processes: etcd, coordinators and fake agents.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::agent::{Agent, AgentOpts, Driver};
use crate::cli::Cli;
use crate::coordinator::Coordinator;
use crate::etcd::Etcd;
use crate::netns::Host;

/// Builds a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    coordinators: usize,
    agents: usize,
    agent_template: AgentOpts,
    coordinator_args: Vec<String>,
    listen_ip: Option<IpAddr>,
    hosts: Vec<(String, IpAddr)>,
    etcd_members: usize,
    etcd_quota: Option<u64>,
}

impl ClusterBuilder {
    /// Runs the agents on simulated hosts: agent `i` inside `hosts[i]`'s
    /// namespace with `--underlay-ip` its address, and etcd plus the
    /// coordinators on the underlay bridge address so the hosts reach them.
    /// Sets the number of agents to `hosts.len()`.
    pub fn on_hosts(mut self, hosts: &[&Host]) -> Self {
        self.hosts = hosts
            .iter()
            .map(|h| (h.netns().to_string(), IpAddr::V4(h.ip())))
            .collect();
        self.agents = hosts.len();
        if let Some(h) = hosts.first() {
            self.listen_ip = Some(IpAddr::V4(h.gateway()));
        }
        self
    }

    /// `--driver` of every agent (default [`Driver::Fake`]).
    pub fn driver(mut self, driver: Driver) -> Self {
        self.agent_template.driver = driver;
        self
    }

    /// Run the agents' network reconcilers (default: `--no-network`).
    pub fn network(mut self, on: bool) -> Self {
        self.agent_template.no_network = !on;
        self
    }

    /// Number of etcd members (default 1; 3 for control-plane safety tests).
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// etcd's `--quota-backend-bytes` (default etcd's own).
    pub fn etcd_quota(mut self, bytes: u64) -> Self {
        self.etcd_quota = Some(bytes);
        self
    }

    /// Number of coordinators (default 1).
    pub fn coordinators(mut self, n: usize) -> Self {
        self.coordinators = n;
        self
    }

    /// Number of fake-driver agents, named `node-1`…`node-<n>` (default 1).
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// Capacity of every agent.
    pub fn agent_capacity(mut self, vcpus: u32, ram_mb: u64, disk_gb: u64) -> Self {
        self.agent_template.vcpus = vcpus;
        self.agent_template.ram_mb = ram_mb;
        self.agent_template.disk_gb = disk_gb;
        self
    }

    /// `--lease-ttl` of every agent (default 2 s).
    pub fn lease_ttl(mut self, secs: u32) -> Self {
        self.agent_template.lease_ttl = secs;
        self
    }

    /// Extra flags for every agent.
    pub fn agent_args(mut self, args: &[&str]) -> Self {
        self.agent_template
            .extra_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra flags for every coordinator.
    pub fn coordinator_args(mut self, args: &[&str]) -> Self {
        self.coordinator_args
            .extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Starts etcd, then the coordinators (`coord-1`…), then the agents,
    /// each waited for; on any failure everything started so far is stopped.
    pub fn start(self) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("nbt-cluster-").tempdir()?;
        let mut eo = crate::etcd::EtcdOpts {
            members: self.etcd_members,
            quota_backend_bytes: self.etcd_quota,
            ..Default::default()
        };
        if let Some(ip) = self.listen_ip {
            eo.ip = ip;
        }
        let etcd = Etcd::start_with(eo)?;
        let mut cluster = Cluster {
            agents: Vec::new(),
            coordinators: Vec::new(),
            etcd,
            dir,
        };
        for i in 1..=self.coordinators {
            let mut opts =
                crate::CoordinatorOpts::new(&cluster.etcd.endpoint(), &format!("coord-{i}"));
            opts.extra_args = self.coordinator_args.clone();
            if let Some(ip) = self.listen_ip {
                opts.ip = ip;
            }
            let c = Coordinator::start_with(opts, cluster.dir.path())
                .with_context(|| format!("starting coordinator coord-{i}"))?;
            cluster.coordinators.push(c);
        }
        for i in 1..=self.agents {
            let mut opts = self.agent_template.clone();
            opts.node = format!("node-{i}");
            opts.etcd_endpoints = cluster.etcd.endpoint();
            if let Some((netns, ip)) = self.hosts.get(i - 1) {
                opts.netns = Some(netns.clone());
                opts.underlay_ip = Some(*ip);
            }
            let a = Agent::start(opts).with_context(|| format!("starting agent node-{i}"))?;
            cluster.agents.push(a);
        }
        Ok(cluster)
    }
}

/// etcd + coordinators + agents, all stopped (by pid) when dropped.
///
/// Fields drop in declaration order: agents and coordinators die before etcd.
pub struct Cluster {
    /// The agents, `node-1`….
    pub agents: Vec<Agent>,
    /// The coordinators, `coord-1`….
    pub coordinators: Vec<Coordinator>,
    /// The etcd server (one member or a cluster).
    pub etcd: Etcd,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A builder: 1 coordinator, 1 fake agent with a 2 s lease by default.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            coordinators: 1,
            agents: 1,
            agent_template: AgentOpts::fake("node", ""),
            coordinator_args: Vec::new(),
            listen_ip: None,
            hosts: Vec::new(),
            etcd_members: 1,
            etcd_quota: None,
        }
    }

    /// A CLI talking to the first coordinator.
    pub fn cli(&self) -> Result<Cli> {
        self.cli_to(0)
    }

    /// A CLI talking to coordinator `i`.
    pub fn cli_to(&self, i: usize) -> Result<Cli> {
        let c = self
            .coordinators
            .get(i)
            .with_context(|| format!("no coordinator #{i}"))?;
        Cli::new(&c.endpoint())
    }

    /// The agent of `node`.
    pub fn agent(&mut self, node: &str) -> Result<&mut Agent> {
        self.agents
            .iter_mut()
            .find(|a| a.node() == node)
            .with_context(|| format!("no agent {node}"))
    }

    /// Directory holding the coordinators' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every daemon's log tail, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for c in &self.coordinators {
            s += &format!("--- coordinator {} ---\n{}\n", c.id(), c.log_tail());
        }
        for a in &self.agents {
            s += &format!("--- agent {} ---\n{}\n", a.node(), a.log_tail());
        }
        s
    }
}
