//! End-to-end compute labs: simulated hosts ([`Underlay`]/[`Host`]) each
//! with a private libvirtd ([`HostLibvirtd`]) and a real
//! `nubo-agent --driver libvirt` booting real (TCG) QEMU guests, plus etcd
//! and a coordinator with an image directory on the underlay bridge.
//!
//! Every libvirtd runs in its host's network namespace and in a private
//! mount namespace where `/run/libvirt`, `/etc/libvirt/qemu`,
//! `/var/lib/libvirt`, `/var/cache/libvirt` and `/var/log/libvirt` are
//! bind mounts of directories under the lab's temporary directory; its
//! socket is `<dir>/run/libvirt-sock`. The agent itself runs with
//! `nsenter --net` only (it must see the normal `/run/netns`) and connects
//! with `qemu+unix:///system?socket=…`.
//!
//! Every libvirtd has its own `host_uuid` (libvirt refuses to migrate a
//! guest to "the same host" otherwise); the libvirtd of a [`VmLab`] host
//! also listens on plain TCP without authentication on the host's underlay
//! address, and its QEMU takes incoming migrations there
//! (`migration_address`): test labs only. Production uses TLS
//! (`qemu+tls://`, `listen_tls`, and QEMU's native TLS for the stream,
//! `migrate_tls`; docs/migration.md).
//!
//! Domains are named `nbt<token>-<uuid>`. Guards clean up on panic:
//! [`HostLibvirtd`] destroys and undefines its domains, kills leftover QEMU
//! processes and then libvirtd and virtlogd, all by pid.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::{Agent, AgentOpts, Driver};
use crate::netns::run;
use crate::process::pid_alive;
use crate::tls::Certs;
use crate::wait::wait_until;
use crate::{Cli, Coordinator, CoordinatorOpts, Etcd, Host, Underlay};

/// Where `scripts/build-test-guest.sh` caches the test guest by default.
pub const GUEST_DIR: &str = "/var/cache/nubo/test-guest";

/// Where the test guest is: `$NUBO_GUEST_DIR` (which the build script
/// honours too) or [`GUEST_DIR`].
pub fn guest_dir() -> PathBuf {
    std::env::var_os("NUBO_GUEST_DIR").map_or_else(|| PathBuf::from(GUEST_DIR), PathBuf::from)
}

/// A private libvirtd (and virtlogd) inside one host namespace.
pub struct HostLibvirtd {
    base: PathBuf,
    uri: String,
    prefix: String,
    /// The underlay address libvirtd listens on (TCP, no auth) and QEMU
    /// takes incoming migrations on.
    listen: Option<Ipv4Addr>,
    /// Whether its QEMUs may use userfaultfd (post-copy migration), see
    /// [`HostLibvirtd::grant_userfaultfd`].
    userfaultfd: bool,
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn kill_pid(pid: u32, sig: i32) {
    if let Ok(p) = i32::try_from(pid) {
        // SAFETY: plain kill(2) on a pid we started (read from its pid file).
        unsafe {
            libc::kill(p, sig);
        }
    }
}

impl HostLibvirtd {
    /// Starts libvirtd for `host` with state under `base` (created); domains
    /// named `prefix…` are cleaned up on drop.
    /// It listens on the host's underlay address for migrations
    /// ([`HostLibvirtd::tcp_uri`]).
    pub fn start(host: &Host, base: &Path, prefix: &str) -> Result<Self> {
        Self::start_with(host.netns(), base, prefix, Some(host.ip()))
    }

    /// [`HostLibvirtd::start`] in network namespace `netns`, not listening
    /// on TCP.
    pub fn start_in(netns: &str, base: &Path, prefix: &str) -> Result<Self> {
        Self::start_with(netns, base, prefix, None)
    }

    /// Starts libvirtd in `netns`, listening on TCP on `listen` if set.
    pub fn start_with(
        netns: &str,
        base: &Path,
        prefix: &str,
        listen: Option<Ipv4Addr>,
    ) -> Result<Self> {
        for d in ["run", "etcq", "lib", "cache", "log"] {
            std::fs::create_dir_all(base.join(d))?;
        }
        let me = Self {
            base: base.to_path_buf(),
            uri: format!(
                "qemu+unix:///system?socket={}/run/libvirt-sock",
                base.display()
            ),
            prefix: prefix.to_string(),
            listen,
            userfaultfd: false,
        };
        me.write_config()?;
        let script = format!(
            "set -e\n{mounts}\nvirtlogd -d -p /run/libvirt/virtlogd.pid\nlibvirtd -d{args} -p /run/libvirt/libvirtd.pid",
            mounts = me.mounts(),
            args = me.libvirtd_args()
        );
        me.launch(netns, &script)?;
        Ok(me)
    }

    /// The shell lines that give libvirtd its private state: the mount points
    /// are created first (a brand-new machine has no `/run/libvirt` until a
    /// libvirtd ran there), then bind-mounted from this lab's directories
    /// inside the private mount namespace of [`HostLibvirtd::launch`].
    fn mounts(&self) -> String {
        let b = self.base.display();
        format!(
            "set -e
mkdir -p /run/libvirt /etc/libvirt/qemu /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind {b}/run /run/libvirt
mount --bind {b}/etcq /etc/libvirt/qemu
mount --bind {b}/lib /var/lib/libvirt
mount --bind {b}/cache /var/cache/libvirt
mount --bind {b}/log /var/log/libvirt
# Hide /dev/kvm (it cannot run guests here) behind a root-only file: while
# it is accessible to QEMU's user (as /dev/null would be) libvirtd 9
# re-probes QEMU on every define (16-50 s each); see docs/CONTRACTS.md.
: > {b}/nokvm; chmod 600 {b}/nokvm
if [ -e /dev/kvm ]; then mount --bind {b}/nokvm /dev/kvm; fi
# No per-QEMU /dev namespace: it would try to move that bind mount into
# each QEMU's /dev and fail (EINVAL). (The stock qemu.conf sets nothing.)
echo 'namespaces = []' > {b}/qemu.conf
{migration}{userfaultfd}mount --bind {b}/qemu.conf /etc/libvirt/qemu.conf
",
            migration = match self.listen {
                // Incoming migrations on the underlay address.
                Some(ip) => format!("echo 'migration_address = \"{ip}\"' >> {b}/qemu.conf\n"),
                None => String::new(),
            },
            userfaultfd = if self.userfaultfd {
                format!(
                    "printf 'user = \"root\"\\ngroup = \"root\"\\nclear_emulator_capabilities = 0\\n' >> {b}/qemu.conf\n"
                )
            } else {
                String::new()
            }
        )
    }

    /// Lets this libvirtd's QEMUs use userfaultfd, which post-copy migration
    /// needs on both ends, and restarts it (before any guest runs).
    ///
    /// Production grants it machine-wide (`vm.unprivileged_userfaultfd = 1`,
    /// docs/migration-hosts.md); a test must not change that sysctl of a
    /// shared machine, and QEMU 7.2 cannot use `/dev/userfaultfd`, so the
    /// lab's QEMUs run as root with their capabilities kept
    /// (`CAP_SYS_PTRACE` allows the `userfaultfd(2)` call).
    pub fn grant_userfaultfd(&mut self, netns: &str) -> Result<()> {
        self.userfaultfd = true;
        self.restart_in(netns)
    }

    /// Runs `script` in a private mount namespace inside network namespace
    /// `netns`, then waits until libvirtd answers.
    fn launch(&self, netns: &str, script: &str) -> Result<()> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],
        )
        .context("starting libvirtd in the host namespace")?;
        wait_until(Duration::from_secs(60), "private libvirtd answers", || {
            Ok(std::process::Command::new("virsh")
                .args(["-c", &self.uri, "version"])
                .output()?
                .status
                .success())
        })
    }

    /// Restarts libvirtd (SIGTERM by pid, then started again with the same
    /// state directories; virtlogd keeps running). Running domains survive:
    /// the new libvirtd reattaches to their QEMU processes.
    pub fn restart(&self, host: &Host) -> Result<()> {
        self.restart_in(host.netns())
    }

    /// [`HostLibvirtd::restart`] in network namespace `netns`.
    pub fn restart_in(&self, netns: &str) -> Result<()> {
        self.stop()?;
        self.start_again_in(netns)
    }

    /// Stops libvirtd (SIGTERM by pid) and waits until it exited; running
    /// domains keep running. [`HostLibvirtd::start_again_in`] brings it back.
    pub fn stop(&self) -> Result<()> {
        let pidfile = self.base.join("run/libvirtd.pid");
        let pid = read_pid(&pidfile).context("libvirtd pid file")?;
        kill_pid(pid, libc::SIGTERM);
        wait_until(Duration::from_secs(30), "libvirtd exits", || {
            Ok(!pid_alive(pid))
        })
    }

    /// Starts a stopped libvirtd again in network namespace `netns`, with
    /// the same state directories; it reattaches to the running domains.
    pub fn start_again_in(&self, netns: &str) -> Result<()> {
        let script = format!(
            "set -e\n{mounts}\nlibvirtd -d{args} -p /run/libvirt/libvirtd.pid",
            mounts = self.mounts(),
            args = self.libvirtd_args()
        );
        self.launch(netns, &script)
    }

    /// Writes `<base>/libvirtd.conf` (a host UUID of its own, kept across
    /// restarts; TCP listening without authentication when
    /// [`HostLibvirtd::listen`] is set) once.
    fn write_config(&self) -> Result<()> {
        let path = self.base.join("libvirtd.conf");
        if path.exists() {
            return Ok(());
        }
        let mut conf = format!("host_uuid = \"{}\"\n", uuid::Uuid::new_v4());
        if let Some(ip) = self.listen {
            // Test labs only: production uses listen_tls with certificates.
            conf.push_str(&format!(
                "listen_tls = 0\nlisten_tcp = 1\nlisten_addr = \"{ip}\"\nauth_tcp = \"none\"\n"
            ));
        }
        std::fs::write(&path, conf)?;
        Ok(())
    }

    /// The options of libvirtd besides `-d` and its pid file: TCP
    /// listening when asked, its configuration. (The command itself stays
    /// in the scripts' text, where the inventory scan sees it.)
    fn libvirtd_args(&self) -> String {
        let listen = if self.listen.is_some() { " -l" } else { "" };
        format!("{listen} -f {}/libvirtd.conf", self.base.display())
    }

    /// `qemu+tcp://<ip>/system` when it listens on TCP.
    pub fn tcp_uri(&self) -> Option<String> {
        self.listen.map(|ip| format!("qemu+tcp://{ip}/system"))
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// `virsh -c <uri> <args>` output (must succeed).
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-c", self.uri.as_str()];
        full.extend_from_slice(args);
        run("virsh", &full)
    }

    /// Names of every domain (any state).
    pub fn domains(&self) -> Result<Vec<String>> {
        Ok(self
            .virsh(&["list", "--all", "--name"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// PID of the QEMU process of domain `name`, if it runs.
    pub fn qemu_pid(&self, name: &str) -> Option<u32> {
        read_pid(&self.base.join("run/qemu").join(format!("{name}.pid"))).filter(|p| pid_alive(*p))
    }
}

impl Drop for HostLibvirtd {
    fn drop(&mut self) {
        if let Ok(names) = self.domains() {
            for n in names.iter().filter(|n| n.starts_with(&self.prefix)) {
                let _ = self.virsh(&["destroy", n]);
                let _ = self.virsh(&["undefine", n, "--nvram"]);
            }
        }
        // QEMU processes left behind (libvirtd unresponsive).
        if let Ok(rd) = std::fs::read_dir(self.base.join("run/qemu")) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid") {
                    if let Some(pid) = read_pid(&p) {
                        kill_pid(pid, libc::SIGKILL);
                    }
                }
            }
        }
        // A QEMU of ours whose pid file is gone (found by its domain name).
        let needle = format!("guest={}", self.prefix);
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    kill_pid(pid, libc::SIGKILL);
                }
            }
        }
        // A capability probe QEMU (`qmp-*/qmp.pid`) would outlive libvirtd.
        if let Ok(rd) = std::fs::read_dir(self.base.join("lib/qemu")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("qmp-") {
                    if let Some(pid) = read_pid(&e.path().join("qmp.pid")) {
                        kill_pid(pid, libc::SIGKILL);
                    }
                }
            }
        }
        for f in ["libvirtd.pid", "virtlogd.pid"] {
            if let Some(pid) = read_pid(&self.base.join("run").join(f)) {
                kill_pid(pid, libc::SIGTERM);
                for _ in 0..50 {
                    if !pid_alive(pid) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if pid_alive(pid) {
                    kill_pid(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// etcd, a coordinator with an image directory, N hosts each with a
/// private libvirtd and a libvirt agent.
pub struct VmLab {
    /// The agents (index 0 = host 1).
    pub agents: Vec<Agent>,
    /// The libvirt daemons (index 0 = host 1).
    pub libvirtds: Vec<HostLibvirtd>,
    /// The coordinator.
    pub coordinator: Coordinator,
    /// etcd.
    pub etcd: Etcd,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The underlay.
    pub underlay: Underlay,
    /// CLI bound to the coordinator.
    pub cli: Cli,
    /// The coordinator's image directory.
    pub image_dir: PathBuf,
    /// Scratch directory (world-traversable: QEMU reads from it).
    pub dir: tempfile::TempDir,
    /// With tokens ([`VmLab::start_without_agents_opts`]): the certificates
    /// of the coordinator's TLS API (`ca.crt` is what clients trust).
    pub certs: Option<Certs>,
    /// With tokens: the agents' node application credential
    /// (`--api-credential-file`), made when the first agent starts.
    node_credential: Option<PathBuf>,
}

impl VmLab {
    /// Starts a lab with `n` hosts. Builds the test guest if needed.
    pub fn start(n: u8) -> Result<Self> {
        let mut lab = Self::start_without_agents(n)?;
        lab.start_agents(&[])?;
        Ok(lab)
    }

    /// Starts the agent of every host with `extra` arguments (after
    /// [`VmLab::start_without_agents`]).
    pub fn start_agents(&mut self, extra: &[String]) -> Result<()> {
        self.start_agents_logging(extra, None)
    }

    /// [`VmLab::start_agents`] with `RUST_LOG` = `log_filter` when set
    /// (e.g. `nubo_dhcp=debug` for the DHCP replies each agent sends).
    pub fn start_agents_logging(
        &mut self,
        extra: &[String],
        log_filter: Option<&str>,
    ) -> Result<()> {
        let prefix = self.domain_prefix();
        for idx in self.agents.len()..self.hosts.len() {
            let i = u8::try_from(idx + 1)?;
            let driver = Driver::Libvirt {
                uri: self.libvirtds[idx].uri().to_string(),
                domain_prefix: prefix.clone(),
            };
            let mut opts = AgentOpts::lab(&self.hosts[idx], i, &self.etcd.endpoint(), driver);
            if let Some(f) = log_filter {
                opts.log_filter = f.to_string();
            }
            opts.dir_in = Some(self.dir.path().to_path_buf());
            opts.extra_args
                .extend(["--api-endpoint".into(), self.coordinator.endpoint()]);
            opts.extra_args.extend(self.api_auth_args()?);
            // Labs: plain TCP between the libvirtds (production: qemu+tls).
            opts.extra_args
                .extend(["--migration-uri".into(), "qemu+tcp://{host}/system".into()]);
            opts.extra_args.extend(extra.iter().cloned());
            let a = Agent::start(opts).with_context(|| format!("agent of host {i}"))?;
            self.agents.push(a);
        }
        Ok(())
    }

    /// With tokens: the agents' `--api-ca-cert` and `--api-credential-file`
    /// (the node credential is made on first use); none without.
    fn api_auth_args(&mut self) -> Result<Vec<String>> {
        let Some(certs) = &self.certs else {
            return Ok(Vec::new());
        };
        let ca = certs.ca();
        let cred = match &self.node_credential {
            Some(c) => c.clone(),
            None => {
                let c = crate::secure::node_credential(
                    &self.cli,
                    &self.coordinator.endpoint(),
                    &ca,
                    self.dir.path(),
                )?;
                self.node_credential = Some(c.clone());
                c
            }
        };
        Ok(vec![
            "--api-ca-cert".into(),
            ca.display().to_string(),
            "--api-credential-file".into(),
            cred.display().to_string(),
        ])
    }

    /// Everything of [`VmLab::start`] but the agents: for tests that must
    /// start something on the underlay first (a Ceph cluster) and configure
    /// the agents for it ([`VmLab::start_agents`]).
    pub fn start_without_agents(n: u8) -> Result<Self> {
        Self::start_without_agents_with(n, |_, _| Ok(Vec::new()))
    }

    /// [`VmLab::start_without_agents`] with a step between the underlay and
    /// the coordinator: `before_coordinator` gets the underlay and the lab's
    /// scratch directory once etcd runs, may start something there (a Ceph
    /// cluster on the underlay gateway) and returns extra coordinator
    /// arguments (e.g. `--ceph-conf`, `--ceph-id`, `--ceph-keyring`).
    pub fn start_without_agents_with(
        n: u8,
        before_coordinator: impl FnOnce(&Underlay, &Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        Self::start_without_agents_opts(n, false, before_coordinator)
    }

    /// [`VmLab::start_without_agents_with`]; with `tokens` the coordinator
    /// runs as in production (TLS API, token authentication, bootstrapped:
    /// [`crate::secure::lab_tokens`], what `NetLab::start_with_tokens` does),
    /// [`VmLab::cli`] is the bootstrap admin, logged in, and the agents
    /// fetch images with a node application credential.
    pub fn start_without_agents_opts(
        n: u8,
        tokens: bool,
        before_coordinator: impl FnOnce(&Underlay, &Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        ensure_test_guest()?;
        let underlay = Underlay::new()?;
        let mut hosts = Vec::new();
        for i in 1..=n {
            hosts.push(underlay.host(i)?);
        }
        let dir = tempfile::Builder::new().prefix("nbt-vmlab-").tempdir()?;
        run("chmod", &["755", &dir.path().display().to_string()])?;
        let image_dir = dir.path().join("images");
        let etcd = Etcd::start_on(underlay.gateway().into())?;
        let mut copts = CoordinatorOpts::new(&etcd.endpoint(), "c1");
        copts.ip = underlay.gateway().into();
        copts
            .extra_args
            .extend(["--image-dir".to_string(), image_dir.display().to_string()]);
        copts
            .extra_args
            .extend(before_coordinator(&underlay, dir.path())?);
        let (coordinator, cli, certs) = crate::secure::lab_coordinator(
            copts,
            tokens,
            &underlay.gateway().to_string(),
            &etcd.endpoint(),
            dir.path(),
        )?;
        let mut lab = Self {
            agents: Vec::new(),
            libvirtds: Vec::new(),
            coordinator,
            etcd,
            hosts,
            underlay,
            cli,
            image_dir,
            dir,
            certs,
            node_credential: None,
        };
        let prefix = lab.domain_prefix();
        for i in 1..=n {
            let h = &lab.hosts[usize::from(i) - 1];
            let lv = HostLibvirtd::start(h, &lab.dir.path().join(format!("libvirt-{i}")), &prefix)
                .with_context(|| format!("libvirtd of host {i}"))?;
            lab.libvirtds.push(lv);
        }
        Ok(lab)
    }

    /// [`HostLibvirtd::grant_userfaultfd`] on every host (post-copy
    /// migrations), before any guest runs.
    pub fn grant_userfaultfd(&mut self) -> Result<()> {
        for (lv, h) in self.libvirtds.iter_mut().zip(&self.hosts) {
            lv.grant_userfaultfd(h.netns())?;
        }
        Ok(())
    }

    /// Domain name prefix: `nbt<token>-`.
    pub fn domain_prefix(&self) -> String {
        format!("{}-", self.underlay.name_prefix())
    }

    /// Domain name of an instance.
    pub fn domain_name(&self, id: &str) -> String {
        format!("{}{id}", self.domain_prefix())
    }

    /// Index (0-based) of the host whose agent is node `node`.
    pub fn host_of(&self, node: &str) -> Result<usize> {
        self.agents
            .iter()
            .position(|a| a.node() == node)
            .with_context(|| format!("no agent for node {node:?}"))
    }

    /// `nubo server show` as JSON.
    pub fn show(&self, server: &str) -> Result<Value> {
        self.cli.json(&["server", "show", server])
    }

    /// Makes the agent of host index `host` run one more reconcile pass and
    /// waits until it has completed: `key` (something that node watches,
    /// e.g. a network it hosts) is written again with the same value. The
    /// event a test waits for before asserting that a pass did nothing.
    pub fn reconcile_once(&self, host: usize, key: &str) -> Result<()> {
        let a = &self.agents[host];
        crate::agent::reconcile_once(&self.etcd.endpoint(), key, a.node(), || a.log())
    }

    /// Waits until the console of `id` (on node `node`) contains `needle`;
    /// returns the console text.
    pub fn wait_console(
        &self,
        node: &str,
        id: &str,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let a = &self.agents[self.host_of(node)?];
        let mut text = String::new();
        let r = wait_until(
            timeout,
            &format!("console of {id} shows {needle:?}"),
            || {
                text = a.console(id);
                Ok(text.contains(needle))
            },
        );
        match r {
            Ok(()) => Ok(text),
            Err(e) => bail!("{e}\nconsole:\n{}", crate::process::tail(&text, 30)),
        }
    }

    /// Flavor `t` (1 vCPU, `ram_mb` MiB, 1 GB disk), the test guest as image
    /// `guest` (checked `active`) and network `n1` on `cidr`: what
    /// [`VmLab::create_server`] boots. Returns the image's JSON.
    pub fn base_objects(&self, ram_mb: u32, cidr: &str) -> Result<Value> {
        let ram = ram_mb.to_string();
        self.cli.json(&[
            "flavor", "create", "t", "--vcpus", "1", "--ram", &ram, "--disk", "1",
        ])?;
        let img = self.upload_test_guest("guest")?;
        anyhow::ensure!(img["status"] == "active", "image not active: {img}");
        self.cli
            .json(&["network", "create", "n1", "--cidr", cidr])?;
        Ok(img)
    }

    /// Every host's nftables ruleset, bridge FDB and links: what a test
    /// prints when traffic between guests does not arrive.
    pub fn network_diagnostics(&self) -> String {
        let mut diag = String::new();
        for h in &self.hosts {
            for args in [
                &["nft", "list", "ruleset"][..],
                &["bridge", "fdb", "show"],
                &["ip", "-d", "link"],
            ] {
                let out = match h.exec(args[0], &args[1..]) {
                    Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                    Err(e) => format!("{e:#}"),
                };
                diag.push_str(&format!("== {} {args:?}\n{out}\n", h.netns()));
            }
        }
        diag
    }

    /// Security group `icmp`: egress allowed, ingress ICMP from `cidr` only
    /// (a new group has no rules at all). Returns the last rule's JSON (the
    /// group with its rules).
    pub fn icmp_security_group(&self, cidr: &str) -> Result<Value> {
        let cli = &self.cli;
        cli.json(&["secgroup", "create", "icmp"])?;
        cli.json(&[
            "secgroup",
            "rule",
            "create",
            "icmp",
            "--direction",
            "egress",
        ])?;
        cli.json(&[
            "secgroup",
            "rule",
            "create",
            "icmp",
            "--direction",
            "ingress",
            "--protocol",
            "icmp",
            "--remote-ip",
            cidr,
        ])
    }

    /// The arguments of `nubo server create NAME --flavor t --image guest
    /// --network n1` (the [`VmLab::base_objects`]) followed by `extra`; in
    /// zone `az-<host>` (that host's) when `host` is set; with `user_data`
    /// written to a file in the lab directory first.
    pub fn server_create_args(
        &self,
        name: &str,
        host: Option<u8>,
        user_data: Option<&str>,
        extra: &[&str],
    ) -> Result<Vec<String>> {
        let mut args: Vec<String> = [
            "server",
            "create",
            name,
            "--flavor",
            "t",
            "--image",
            "guest",
            "--network",
            "n1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(h) = host {
            args.extend(["--availability-zone".into(), format!("az-{h}")]);
        }
        if let Some(text) = user_data {
            let ud = self.dir.path().join(format!("ud-{name}"));
            std::fs::write(&ud, text)?;
            args.extend(["--user-data".into(), ud.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Ok(args)
    }

    /// Runs `nubo server create` with [`VmLab::server_create_args`] and
    /// returns its JSON.
    pub fn create_server(
        &self,
        name: &str,
        host: Option<u8>,
        user_data: Option<&str>,
        extra: &[&str],
    ) -> Result<Value> {
        let args = self.server_create_args(name, host, user_data, extra)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli.json(&args)
    }

    /// `nubo server create NAME` in zone `az-<host>` with `user_data`,
    /// waited for (`--wait`); returns its id and node.
    pub fn create_placed(
        &self,
        name: &str,
        host: u8,
        user_data: &str,
    ) -> Result<(nubo_common::InstanceId, String)> {
        let out = self.create_server(
            name,
            Some(host),
            Some(user_data),
            &["--wait", "--timeout", "240"],
        )?;
        let id = crate::net_e2e::find_str(&out, "id").with_context(|| format!("no id in {out}"))?;
        let node = self.show(&id)?["node"]
            .as_str()
            .with_context(|| format!("{name} has no node"))?
            .to_string();
        Ok((id.parse()?, node))
    }

    /// Waits until no host has a domain of this lab, a tap, or a port chain
    /// in its ruleset (each host in turn, `timeout` for its domains), then
    /// checks that no agent kept an instance overlay: what deleting every
    /// server must leave.
    pub fn wait_nothing_left(&self, timeout: Duration) -> Result<()> {
        for (i, lv) in self.libvirtds.iter().enumerate() {
            wait_until(
                timeout,
                &format!("domains gone from host {}", i + 1),
                || {
                    Ok(lv
                        .domains()?
                        .iter()
                        .all(|d| !d.starts_with(&self.domain_prefix())))
                },
            )?;
            let host = &self.hosts[i];
            let mut seen = String::new();
            let r = wait_until(
                Duration::from_secs(30),
                &format!("taps and port chains gone from host {}", i + 1),
                || {
                    let l = host.exec("ip", &["-o", "link"])?;
                    let n = host.exec("nft", &["list", "ruleset"])?;
                    let (links, rules) = (
                        String::from_utf8_lossy(&l.stdout).into_owned(),
                        String::from_utf8_lossy(&n.stdout).into_owned(),
                    );
                    let gone = !links.contains(": tap") && !rules.contains("chain port");
                    seen = format!("{links}\n{rules}");
                    Ok(gone)
                },
            );
            r.with_context(|| format!("last seen:\n{seen}"))?;
            let inst = self.agents[i].state_dir().join("instances");
            let left: Vec<_> = std::fs::read_dir(&inst)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            anyhow::ensure!(left.is_empty(), "overlays left on host {}: {left:?}", i + 1);
        }
        Ok(())
    }

    /// Uploads the test guest as image `name` (kernel + initrd + a small
    /// empty raw disk), returning the CLI's JSON.
    pub fn upload_test_guest(&self, name: &str) -> Result<Value> {
        let disk = self.dir.path().join("empty.raw");
        if !disk.exists() {
            let f = std::fs::File::create(&disk)?;
            f.set_len(1 << 20)?;
        }
        let g = guest_dir();
        self.cli.json(&[
            "image",
            "create",
            name,
            "--file",
            &disk.display().to_string(),
            "--kernel",
            &g.join("vmlinuz").display().to_string(),
            "--initrd",
            &g.join("initrd.gz").display().to_string(),
            "--cmdline",
            "console=ttyS0 quiet",
        ])
    }
}

pub use crate::ceph_lab::{rbd_storage_on, RbdStorage, RBD_POOLS};

/// A [`VmLab`] whose coordinator and agents use a real Ceph cluster
/// ([`rbd_storage_on`]): root disks are RBD clones, volumes RBD images.
/// Fields drop in order: the lab (guests, agents, coordinator) before the
/// cluster.
pub struct RbdVmLab {
    /// The lab.
    pub lab: VmLab,
    /// The cluster and the agents' storage configuration.
    pub storage: RbdStorage,
}

impl RbdVmLab {
    /// Starts the lab with `n` hosts and the cluster. `None` only when Ceph
    /// is missing and skipping it is allowed (see [`rbd_storage_on`]).
    pub fn start(n: u8) -> Result<Option<Self>> {
        Self::start_with(n, &[])
    }

    /// [`RbdVmLab::start`] with `extra` agent arguments.
    pub fn start_with(n: u8, extra: &[String]) -> Result<Option<Self>> {
        Self::start_inner(n, extra, false)
    }

    /// [`RbdVmLab::start`] with a coordinator as in production (TLS API,
    /// token authentication, bootstrapped; see
    /// [`VmLab::start_without_agents_opts`]): [`VmLab::cli`] is the
    /// bootstrap admin (project `admin`).
    pub fn start_with_tokens(n: u8) -> Result<Option<Self>> {
        Self::start_inner(n, &[], true)
    }

    /// [`RbdVmLab::start`] with a step between the lab and its agents:
    /// `before_agents` gets the lab without agents (to wire its hosts,
    /// say) and returns extra agent arguments.
    pub fn start_then(
        n: u8,
        before_agents: impl FnOnce(&VmLab) -> Result<Vec<String>>,
    ) -> Result<Option<Self>> {
        Self::start_inner_then(n, false, before_agents)
    }

    fn start_inner(n: u8, extra: &[String], tokens: bool) -> Result<Option<Self>> {
        Self::start_inner_then(n, tokens, |_| Ok(extra.to_vec()))
    }

    fn start_inner_then(
        n: u8,
        tokens: bool,
        before_agents: impl FnOnce(&VmLab) -> Result<Vec<String>>,
    ) -> Result<Option<Self>> {
        let mut storage = None;
        let mut lab = VmLab::start_without_agents_opts(n, tokens, |underlay, dir| {
            Ok(match rbd_storage_on(underlay, dir)? {
                Some((s, args)) => {
                    storage = Some(s);
                    args
                }
                None => Vec::new(),
            })
        })?;
        let Some(storage) = storage else {
            return Ok(None);
        };
        let mut args = vec!["--config".into(), storage.agent_cfg.display().to_string()];
        args.extend(before_agents(&lab)?);
        lab.start_agents(&args)?;
        Ok(Some(Self { lab, storage }))
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        // libvirtds (domains), then the rest, go with the fields.
    }
}

/// Builds (or finds cached) the test guest.
pub fn ensure_test_guest() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-guest.sh");
    let out = std::process::Command::new(&script).output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The text after the last `prefix` on a console, up to the end of its
/// line (trimmed). Pure.
pub fn console_value(console: &str, prefix: &str) -> Option<String> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
}

/// The first IPv4 address printed as `NUBO-GUEST-IP: a.b.c.d/len` in a
/// console log. Pure.
pub fn guest_ip(console: &str) -> Option<Ipv4Addr> {
    console.lines().find_map(|l| {
        let rest = l.split("NUBO-GUEST-IP: ").nth(1)?;
        rest.split('/').next()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_guest_ip_line() {
        let c = "boot\r\nNUBO-GUEST-IP: 10.9.0.5/24 uptime 3.1\nNUBO-GUEST-METADATA: x";
        assert_eq!(guest_ip(c), Some(Ipv4Addr::new(10, 9, 0, 5)));
        assert_eq!(guest_ip("NUBO-GUEST-IP:  uptime"), None);
    }
}
