//! End-to-end networking labs: simulated hosts ([`Underlay`]/[`Host`]) each
//! running a real `nubo-agent --driver netns`, etcd and one coordinator on
//! the underlay bridge, guests that are network namespaces.
//!
//! Agents are started with `nsenter --net=/run/netns/<host>` (not `ip netns
//! exec`, whose private mount namespace would hide the guest namespaces the
//! agent creates). Guest namespaces are named `nbt<token>g<host>…`; the
//! [`NetLab`] guard kills the agents (by pid) and deletes every namespace
//! and link carrying its token, even on panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agent::{Agent, AgentOpts, Driver};
use crate::netns::{link_names, netns_command, netns_exec, netns_names, run};
use crate::tls::Certs;
use crate::wait::wait_until;
use crate::{Cli, Coordinator, CoordinatorOpts, Etcd, Host, Underlay};

/// A guest (instance) as the API and the lab know it.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Instance id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Node.
    pub node: String,
    /// Fixed IP.
    pub ip: Ipv4Addr,
    /// MAC.
    pub mac: String,
    /// Port id.
    pub port: String,
    /// Network namespace of the guest.
    pub netns: String,
    /// The host namespace it runs in.
    pub host_netns: String,
}

impl Guest {
    /// The name of its port's tap (the host end of its veth).
    pub fn tap(&self) -> String {
        nubo_netid::tap_name(&self.port)
    }

    /// A command running `program` inside the guest.
    pub fn command(&self, program: &str) -> Command {
        netns_command(&self.netns, program)
    }

    /// Runs `program args` in the guest.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        netns_exec(&self.netns, program, args)
    }

    /// Runs `program args` in the guest; fails unless it succeeds; stdout.
    pub fn ok(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.exec(program, args)?;
        if !out.status.success() {
            bail!(
                "`{program} {}` in {} failed ({}): {}{}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One ping with a `secs` deadline; true if answered.
    pub fn pings(&self, ip: Ipv4Addr, secs: u32) -> bool {
        crate::netns::pings_from(&self.netns, ip, secs)
    }

    /// `nc -z -w <secs> ip port`: true if a TCP connection was established.
    pub fn tcp_open(&self, ip: Ipv4Addr, port: u16, secs: u32) -> bool {
        self.exec(
            "nc",
            &[
                "-z",
                "-w",
                &secs.to_string(),
                &ip.to_string(),
                &port.to_string(),
            ],
        )
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// IPv4 addresses on eth0 as `a.b.c.d/len`.
    pub fn addresses(&self) -> Result<Vec<String>> {
        let out = self.ok("ip", &["-4", "-o", "addr", "show", "dev", "eth0"])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.position(|w| w == "inet")?;
                it.next().map(str::to_string)
            })
            .collect())
    }

    /// Gets an address with busybox `udhcpc` and the lab's script (address,
    /// MTU, option-121 routes); returns udhcpc's output.
    pub fn udhcpc(&self, script: &Path) -> Result<String> {
        let s = script.display().to_string();
        self.ok(
            "busybox",
            &["udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-s", &s],
        )
    }

    /// `curl -s` of the metadata service with extra headers.
    pub fn metadata(&self, path: &str, headers: &[&str]) -> Result<String> {
        let url = format!("http://169.254.169.254{path}");
        let mut args = vec!["-sS", "--max-time", "5", "-f"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        self.ok("curl", &args)
    }

    /// Spawns a long-running process in the guest (killed by pid by the
    /// returned guard).
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {program} in {}", self.netns))?;
        Ok(ChildGuard(Some(child)))
    }

    /// Spawns a long-running process in the guest whose output lines are
    /// collected as they come ([`Watched`]).
    pub fn spawn_watched(&self, program: &str, args: &[&str]) -> Result<Watched> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Watched::spawn(
            cmd,
            &format!("`{program} {}` in {}", args.join(" "), self.name),
        )
    }

    /// Waits until a socket listens on `port` in the guest (`ss -ltn`, or
    /// `ss -lun` with `udp`): the event a test waits for after starting a
    /// server, instead of a pause.
    pub fn wait_listening(&self, udp: bool, port: u16) -> Result<()> {
        let flags = if udp { "-Hlun" } else { "-Hltn" };
        let suffix = format!(":{port}");
        wait_until(
            Duration::from_secs(10),
            &format!("a listener on port {port} in {}", self.name),
            || {
                let out = self.ok("ss", &[flags])?;
                Ok(out.lines().any(|l| {
                    l.split_whitespace()
                        .nth(3)
                        .is_some_and(|local| local.ends_with(&suffix))
                }))
            },
        )
    }
}

/// A child process killed (SIGKILL, by pid) and reaped on drop.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// The child.
    pub fn child(&mut self) -> Result<&mut Child> {
        self.0.as_mut().context("child already reaped")
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.child()?.stdin.as_mut().context("no stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills it and returns its stdout and stderr.
    pub fn finish(mut self) -> Result<(String, String)> {
        let mut child = self.0.take().context("child already reaped")?;
        let _ = child.kill();
        let out = child.wait_with_output()?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The udhcpc script the tests use: applies address, MTU and the
/// option-121 routes (else the router) like a cloud image would.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig)
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr replace "$ip/$mask" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        if [ "$2" = "0.0.0.0" ]; then
          ip route replace "$1" dev "$interface"
        else
          ip route replace "$1" via "$2" dev "$interface" onlink
        fi
        shift 2
      done
    elif [ -n "$router" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi
    echo "lease ip=$ip mask=$mask mtu=$mtu hostname=$hostname routes=$staticroutes"
    ;;
esac
exit 0
"#;

/// A dhclient script (no /etc/resolv.conf or other host file is touched):
/// records the environment and applies address, MTU and the metadata route.
pub const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
env | grep '^new_\|^reason' > "$(dirname "$0")/dhclient-$interface.env"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    case " $new_rfc3442_classless_static_routes " in
      *" 32 169 254 169 254 0 0 0 0 "*) ip route replace 169.254.169.254/32 dev "$interface" ;;
    esac
    ;;
esac
exit 0
"#;

/// A dhclient configuration requesting MTU and classless routes.
pub const DHCLIENT_CONF: &str = "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\
request subnet-mask, broadcast-address, routers, interface-mtu, rfc3442-classless-static-routes, host-name;\n";

/// etcd, a coordinator, N hosts with a netns agent each.
pub struct NetLab {
    /// The agents (index 0 = host 1).
    pub agents: Vec<Agent>,
    /// The coordinator (root namespace, on the underlay address).
    pub coordinator: Coordinator,
    /// With [`NetLab::start_with_tokens_and_ceph`]: the Ceph cluster of the
    /// coordinator's volume API (on the underlay gateway; dropped after the
    /// coordinator, before the underlay).
    pub ceph: Option<crate::ceph_lab::RbdStorage>,
    /// etcd on the underlay address.
    pub etcd: Etcd,
    /// The hosts.
    pub hosts: Vec<Host>,
    /// The underlay bridge.
    pub underlay: Underlay,
    /// CLI bound to the coordinator.
    pub cli: Cli,
    /// Scratch directory (scripts, logs).
    pub dir: tempfile::TempDir,
    /// With [`NetLab::start_with_tokens`]: the certificates of the
    /// coordinator's TLS API (`ca.crt` is what clients trust).
    pub certs: Option<Certs>,
}

impl NetLab {
    /// Starts a lab with `n` hosts.
    pub fn start(n: u8) -> Result<Self> {
        Self::start_with(n, |_, _| Vec::new())
    }

    /// Starts a lab with `n` hosts whose agent `i` gets the extra flags
    /// `agent_args(underlay, i)` (e.g. `--physnet` naming a link of the
    /// lab's prefix).
    pub fn start_with(n: u8, agent_args: impl Fn(&Underlay, u8) -> Vec<String>) -> Result<Self> {
        Self::start_inner(n, agent_args, false, false)
    }

    /// Starts a lab with `n` hosts whose coordinator runs as in production:
    /// its API over TLS (certificates of `scripts/make-certs.sh` for the
    /// underlay gateway, [`NetLab::certs`]) with token authentication, the
    /// cloud bootstrapped first ([`crate::secure::bootstrap`]); [`NetLab::cli`]
    /// is the bootstrap admin, logged in. etcd and the agents are as in
    /// [`NetLab::start`] (the netns driver needs no image data from the API).
    pub fn start_with_tokens(n: u8) -> Result<Self> {
        Self::start_inner(n, |_, _| Vec::new(), true, false)
    }

    /// [`NetLab::start_with_tokens`] plus a throwaway Ceph cluster behind
    /// the coordinator's volume API ([`crate::ceph_lab::rbd_storage_on`]):
    /// volumes are real RBD images (the netns driver attaches none).
    pub fn start_with_tokens_and_ceph(n: u8) -> Result<Self> {
        Self::start_inner(n, |_, _| Vec::new(), true, true)
    }

    fn start_inner(
        n: u8,
        agent_args: impl Fn(&Underlay, u8) -> Vec<String>,
        tokens: bool,
        with_ceph: bool,
    ) -> Result<Self> {
        let underlay = Underlay::new()?;
        let mut hosts = Vec::new();
        for i in 1..=n {
            hosts.push(underlay.host(i)?);
        }
        let dir = tempfile::Builder::new().prefix("nbt-netlab-").tempdir()?;
        let etcd = Etcd::start_on(underlay.gateway().into())?;
        let mut copts = CoordinatorOpts::new(&etcd.endpoint(), "c1");
        copts.ip = underlay.gateway().into();
        let mut ceph = None;
        if with_ceph {
            if let Some((storage, args)) = crate::ceph_lab::rbd_storage_on(&underlay, dir.path())? {
                copts.extra_args.extend(args);
                ceph = Some(storage);
            }
        }
        let (coordinator, cli, certs) = crate::secure::lab_coordinator(
            copts,
            tokens,
            &underlay.gateway().to_string(),
            &etcd.endpoint(),
            dir.path(),
        )?;
        let mut lab = Self {
            agents: Vec::new(),
            coordinator,
            ceph,
            etcd,
            hosts,
            underlay,
            cli,
            dir,
            certs,
        };
        for i in 1..=n {
            let driver = Driver::Netns {
                guest_prefix: lab.guest_prefix(i),
            };
            let mut opts = AgentOpts::lab(
                &lab.hosts[usize::from(i) - 1],
                i,
                &lab.etcd.endpoint(),
                driver,
            );
            opts.extra_args.extend(agent_args(&lab.underlay, i));
            let a = Agent::start(opts).with_context(|| format!("agent of host {i}"))?;
            lab.agents.push(a);
        }
        for (name, text) in [
            ("udhcpc.sh", UDHCPC_SCRIPT),
            ("dhclient.sh", DHCLIENT_SCRIPT),
            ("dhclient.conf", DHCLIENT_CONF),
        ] {
            let p = lab.dir.path().join(name);
            std::fs::write(&p, text)?;
            run("chmod", &["755", &p.display().to_string()])?;
        }
        Ok(lab)
    }

    /// Creates the flavor `t` (1 vCPU, 16 MiB) and the image `i` that
    /// [`NetLab::server`] boots (the netns driver needs no image data).
    pub fn base_objects(&self) -> Result<()> {
        self.cli.json(&[
            "flavor", "create", "t", "--vcpus", "1", "--ram", "16", "--disk", "1",
        ])?;
        self.cli.json(&["image", "create", "i"])?;
        Ok(())
    }

    /// With [`NetLab::start_with_tokens`]: a new project `project` and its
    /// member `user` (password `<user>-password`), logged in.
    pub fn member(&self, user: &str, project: &str) -> Result<Cli> {
        let certs = self
            .certs
            .as_ref()
            .context("members need a lab with tokens (NetLab::start_with_tokens)")?;
        crate::secure::member_cli(
            &self.cli,
            &self.coordinator.endpoint(),
            &certs.ca(),
            self.dir.path(),
            user,
            project,
        )
    }

    /// Prefix of every name this lab creates.
    pub fn token_prefix(&self) -> String {
        self.underlay.name_prefix()
    }

    /// Guest namespace prefix of host `i`: `nbt<token>g<i>`.
    pub fn guest_prefix(&self, i: u8) -> String {
        format!("{}g{i}", self.underlay.name_prefix())
    }

    /// Router namespace prefix of host `i` (see [`AgentOpts::lab`]): each
    /// simulated host runs its own copy of a router.
    pub fn router_prefix(&self, i: u8) -> String {
        crate::agent::lab_router_prefix(&self.hosts[usize::from(i) - 1])
    }

    /// The namespace of guest `id` on host `i`: its [`NetLab::guest_prefix`]
    /// and the first 8 hex digits of the id (what the netns driver names it).
    pub fn guest_netns(&self, i: u8, id: &str) -> String {
        format!("{}{}", self.guest_prefix(i), guest_suffix(id))
    }

    /// Path of the udhcpc script.
    pub fn udhcpc_script(&self) -> PathBuf {
        self.dir.path().join("udhcpc.sh")
    }

    /// Creates a server on host `host` (through its availability zone) and
    /// waits until it runs; extra CLI flags are appended (`network` may be
    /// empty when `--port` is among them).
    pub fn server(&self, name: &str, network: &str, host: u8, extra: &[&str]) -> Result<Guest> {
        let az = format!("az-{host}");
        let mut args = vec![
            "server",
            "create",
            name,
            "--wait",
            "--timeout",
            "120",
            "--flavor",
            "t",
            "--image",
            "i",
            "--availability-zone",
            &az,
        ];
        if !network.is_empty() {
            args.extend(["--network", network]);
        }
        args.extend_from_slice(extra);
        let out = self.cli.json(&args)?;
        let text = out.to_string();
        let id = find_str(&out, "id").with_context(|| format!("no id in {text}"))?;
        let mut show_args = vec!["server", "show", id.as_str()];
        if let Some(pos) = extra.iter().position(|a| *a == "--project") {
            show_args.extend(extra.get(pos..pos + 2).unwrap_or_default());
        }
        let show = self.cli.json(&show_args)?;
        anyhow::ensure!(show["state"] == "running", "server not running: {show}");
        let addr = &show["addresses"][0];
        Ok(Guest {
            id: id.clone(),
            name: name.to_string(),
            node: show["node"].as_str().unwrap_or_default().to_string(),
            ip: addr["ip"]
                .as_str()
                .context("no ip")?
                .parse()
                .context("bad ip")?,
            mac: addr["mac"].as_str().context("no mac")?.to_string(),
            port: addr["port_id"].as_str().context("no port")?.to_string(),
            netns: self.guest_netns(host, &id),
            host_netns: self.hosts[usize::from(host) - 1].netns().to_string(),
        })
    }

    /// Waits until the guest namespace exists and its tap is on a bridge.
    pub fn wait_wired(&self, g: &Guest) -> Result<()> {
        let host = self
            .hosts
            .iter()
            .find(|h| h.netns() == g.host_netns)
            .context("unknown host")?;
        let tap = g.tap();
        wait_until(
            Duration::from_secs(30),
            &format!("{} wired", g.name),
            || {
                let out = host.exec("ip", &["-o", "link", "show", &tap])?;
                let s = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok(netns_names()?.contains(&g.netns)
                    && s.contains("master nb-")
                    && s.contains("UP"))
            },
        )
    }

    /// Makes the agent of host `i` run one more reconcile pass and waits
    /// until it has completed ([`crate::agent::reconcile_once`] on `key`, a
    /// network that host serves).
    pub fn reconcile_once(&self, i: u8, key: &str) -> Result<()> {
        let a = &self.agents[usize::from(i) - 1];
        crate::agent::reconcile_once(&self.etcd.endpoint(), key, a.node(), || a.log())
    }

    /// Kills every agent (-9), restarts them, and checks that each one's
    /// first pass changed nothing: `actions=0 failures=0`, an empty initial
    /// plan for each of `subsystems`, no guest recreated.
    pub fn restart_agents_unchanged(&mut self, subsystems: &[&str]) -> Result<()> {
        for a in &mut self.agents {
            a.kill9();
        }
        for a in &mut self.agents {
            a.restart()?;
        }
        for a in &self.agents {
            let node = a.node().to_string();
            wait_until(
                Duration::from_secs(30),
                &format!("{node} first pass"),
                || Ok(a.current_log().contains("first reconcile pass done")),
            )?;
            let log = a.current_log();
            anyhow::ensure!(
                log.contains("first reconcile pass done actions=0 failures=0"),
                "{node} changed something on restart:\n{log}"
            );
            for s in subsystems {
                anyhow::ensure!(
                    log.contains(&format!("initial plan subsystem=\"{s}\" actions=0"))
                        || log.contains(&format!("initial plan subsystem={s} actions=0")),
                    "{node}: {s} plan not empty:\n{log}"
                );
            }
            anyhow::ensure!(
                !log.contains("netns guest created"),
                "{node} recreated a guest"
            );
        }
        Ok(())
    }

    /// `nft list ruleset` in host `i`'s namespace.
    pub fn ruleset(&self, i: u8) -> Result<String> {
        let out = self.hosts[usize::from(i) - 1].exec("nft", &["list", "ruleset"])?;
        anyhow::ensure!(out.status.success(), "nft list ruleset failed: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Namespaces and root links still carrying this lab's token.
    pub fn leftovers(prefix: &str) -> Result<Vec<String>> {
        Ok(netns_names()?
            .into_iter()
            .chain(link_names()?)
            .filter(|n| n.starts_with(prefix))
            .collect())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        // Guests outlive their agent (as VMs would): delete them here.
        let prefix = format!("{}g", self.underlay.name_prefix());
        if let Ok(names) = netns_names() {
            for ns in names.iter().filter(|n| n.starts_with(&prefix)) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
        // Hosts, etcd, coordinator and underlay go with the fields.
    }
}

/// The first 8 hex digits of an instance id: what the netns driver appends
/// to its `--netns-prefix` to name the guest's namespace.
pub fn guest_suffix(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(8).collect()
}

/// The first string field `key` anywhere in `v` (depth first).
pub fn find_str(v: &Value, key: &str) -> Option<String> {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(s)) = m.get(key) {
                return Some(s.clone());
            }
            m.values().find_map(|x| find_str(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| find_str(x, key)),
        _ => None,
    }
}

/// A child process whose stdout and stderr lines are collected as they
/// come (one reader thread each), so that a test waits for a line instead of
/// sleeping. Killed (SIGKILL, by pid) and reaped on drop.
pub struct Watched {
    child: ChildGuard,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    what: String,
}

/// How often [`Watched`] looks at the lines collected so far.
const WATCH_POLL: Duration = Duration::from_millis(10);

impl Watched {
    /// Spawns `cmd` (stdin piped, stdout and stderr collected); `what`
    /// names it in errors.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {what}"))?;
        let (stdout, stderr) = (Arc::<Mutex<Vec<String>>>::default(), Arc::default());
        let mut readers = Vec::new();
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        for (src, dst) in [
            (Box::new(out) as Box<dyn Read + Send>, Arc::clone(&stdout)),
            (Box::new(err) as Box<dyn Read + Send>, Arc::clone(&stderr)),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(src).lines().map_while(Result::ok) {
                    dst.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            }));
        }
        Ok(Self {
            child: ChildGuard(Some(child)),
            stdout,
            stderr,
            readers,
            what: what.to_string(),
        })
    }

    /// The stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until a stdout line at index `from` or later satisfies `pred`
    /// and returns it; fails at `timeout`, or at once when the process has
    /// exited without printing it.
    pub fn wait_stdout(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let buf = Arc::clone(&self.stdout);
        self.wait_line(&buf, from, timeout, what, pred)
    }

    /// [`Watched::wait_stdout`] on stderr.
    pub fn wait_stderr(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let buf = Arc::clone(&self.stderr);
        self.wait_line(&buf, from, timeout, what, pred)
    }

    fn wait_line(
        &mut self,
        buf: &Mutex<Vec<String>>,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let find = || {
            buf.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .skip(from)
                .find(|l| pred(l))
                .cloned()
        };
        let start = Instant::now();
        loop {
            // Whether it ran before the look at the lines: a process that
            // printed the line and then exited still counts.
            let running = self.child.running();
            if let Some(l) = find() {
                return Ok(l);
            }
            if !running {
                // The readers may still be draining the pipes.
                std::thread::sleep(WATCH_POLL);
                if let Some(l) = find() {
                    return Ok(l);
                }
                bail!(
                    "{} exited before {what}: stdout {:?}, stderr {:?}",
                    self.what,
                    tail_lines(&self.stdout_lines(), 20),
                    tail_lines(&self.stderr_lines(), 20)
                );
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{}: no {what} after {timeout:?}: stdout {:?}, stderr {:?}",
                    self.what,
                    tail_lines(&self.stdout_lines(), 20),
                    tail_lines(&self.stderr_lines(), 20)
                );
            }
            std::thread::sleep(WATCH_POLL);
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.running()
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        self.child.send_line(line)
    }

    /// Kills it and returns every (stdout, stderr) line it printed.
    pub fn stop(mut self) -> (Vec<String>, Vec<String>) {
        if let Some(mut c) = self.child.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (self.stdout_lines(), self.stderr_lines())
    }
}

/// The last `n` lines of `lines`.
fn tail_lines(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// `tcpdump -i eth0 -n -l -e [filter]` inside a guest namespace; every
/// captured frame is one line. [`Capture::start`] returns once tcpdump
/// printed "listening on" (the filter is installed: frames sent from then
/// on are captured).
pub struct Capture {
    proc: Watched,
    ns: String,
}

impl Capture {
    /// Starts the capture in `ns` and waits until it listens.
    pub fn start(ns: &str, filter: &str) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-l", "-e",
        ])
        .args(filter.split_whitespace());
        Self::spawn(cmd, ns)
    }

    /// Starts a capture on `link` inside namespace `ns` (e.g. a bridge of a
    /// simulated host) and waits until it listens.
    pub fn start_in(ns: &str, link: &str, filter: &str) -> Result<Self> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "--immediate-mode",
            "-i",
            link,
            "-n",
            "-l",
            "-e",
        ])
        .args(filter.split_whitespace());
        Self::spawn(cmd, ns)
    }

    /// Starts a capture on `link` of the root namespace (e.g. a port of
    /// a test's bridge) and waits until it listens.
    pub fn start_on_link(link: &str, filter: &str) -> Result<Self> {
        let mut cmd = Command::new("tcpdump");
        cmd.args(["-i", link, "-n", "-l", "-e"])
            .args(filter.split_whitespace());
        Self::spawn(cmd, link)
    }

    fn spawn(cmd: Command, ns: &str) -> Result<Self> {
        let mut proc = Watched::spawn(cmd, &format!("tcpdump in {ns}"))?;
        proc.wait_stderr(0, Duration::from_secs(10), "\"listening on\"", |l| {
            l.contains("listening on")
        })?;
        Ok(Self {
            proc,
            ns: ns.to_string(),
        })
    }

    /// The frames captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// Waits until a frame at index `from` or later satisfies `pred`;
    /// returns its line.
    pub fn wait_frame(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let what = format!("{what} (captured in {})", self.ns);
        self.proc.wait_stdout(from, timeout, &what, pred)
    }

    /// Stops tcpdump and returns every frame it captured.
    pub fn stop(self) -> Vec<String> {
        self.proc.stop().0
    }
}
