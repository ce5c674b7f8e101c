//! Throwaway etcd (Debian's `etcd-server`) per test: one member, or a
//! cluster of several members on loopback (separate ports, one `nbt-etcd-…`
//! directory), each member killable and restartable on its own.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port_on;

/// How to start an [`Etcd`].
#[derive(Debug, Clone)]
pub struct EtcdOpts {
    /// Number of members (1, 3, 5…).
    pub members: usize,
    /// Address every member listens on.
    pub ip: IpAddr,
    /// `--quota-backend-bytes` (etcd's space quota; default etcd's 2 GiB).
    pub quota_backend_bytes: Option<u64>,
    /// `--election-timeout` in ms (default 500: faster elections on a
    /// loaded 2-core machine; etcd's own default is 1000); the heartbeat
    /// interval is a tenth of it.
    pub election_timeout_ms: u64,
    /// Serve clients over HTTPS only, requiring client certificates
    /// (`crate::tls::TlsEtcd`); `None`: plain HTTP. The `etcdctl`
    /// helpers of [`Etcd`] present no certificate.
    pub client_tls: Option<ClientTls>,
}

/// The client-side TLS of the members (PEM files).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA whose client certificates are accepted (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// The members' server certificate and key.
    pub server_cert: PathBuf,
    /// See `server_cert`.
    pub server_key: PathBuf,
    /// A client certificate and key of the CA for the health probe.
    pub probe_cert: PathBuf,
    /// See `probe_cert`.
    pub probe_key: PathBuf,
}

impl Default for EtcdOpts {
    fn default() -> Self {
        Self {
            members: 1,
            ip: IpAddr::from([127, 0, 0, 1]),
            quota_backend_bytes: None,
            election_timeout_ms: 500,
            client_tls: None,
        }
    }
}

/// One member process.
struct Member {
    name: String,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

/// A running etcd (one member or a cluster); every member is stopped
/// (SIGKILL, by pid) and the data removed on drop.
pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    ip: IpAddr,
    quota_backend_bytes: Option<u64>,
    election_timeout_ms: u64,
    client_tls: Option<ClientTls>,
}

impl Etcd {
    /// Starts one etcd listening on 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_with(EtcdOpts::default())
    }

    /// Starts one etcd listening on `ip` (e.g. an address on a test bridge
    /// that network namespaces can reach).
    pub fn start_on(ip: IpAddr) -> Result<Self> {
        Self::start_with(EtcdOpts {
            ip,
            ..EtcdOpts::default()
        })
    }

    /// Starts a cluster of `members` members on 127.0.0.1.
    pub fn start_cluster(members: usize) -> Result<Self> {
        Self::start_with(EtcdOpts {
            members,
            ..EtcdOpts::default()
        })
    }

    /// Starts etcd as `opts` says; returns once every member is healthy
    /// (the cluster has a leader). A port probed free but taken before
    /// etcd bound it (another process's outgoing connection can get it:
    /// the probe range overlaps the ephemeral range) is retried with fresh
    /// ports, twice at most.
    pub fn start_with(opts: EtcdOpts) -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::start_once(opts.clone()) {
                Err(e) if attempt < 2 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                    eprintln!("etcd: a probed port was taken meanwhile; starting again ({e:#})");
                }
                r => return r,
            }
        }
    }

    fn start_once(opts: EtcdOpts) -> Result<Self> {
        if opts.members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let dir = tempfile::Builder::new().prefix("nbt-etcd-").tempdir()?;
        let members = (0..opts.members)
            .map(|i| Member {
                name: if opts.members == 1 {
                    "nbt".to_string()
                } else {
                    format!("nbt{i}")
                },
                child: None,
                client_port: free_port_on(opts.ip),
                peer_port: free_port_on(opts.ip),
            })
            .collect();
        let mut etcd = Self {
            members,
            dir,
            ip: opts.ip,
            quota_backend_bytes: opts.quota_backend_bytes,
            election_timeout_ms: opts.election_timeout_ms.max(10),
            client_tls: opts.client_tls,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn(i)?;
        }
        for i in 0..etcd.members.len() {
            etcd.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(etcd)
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        if self.members.len() == 1 {
            self.dir.path().to_path_buf()
        } else {
            self.dir.path().join(&self.members[i].name)
        }
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:{}", m.name, self.ip, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let dir = self.member_dir(i);
        std::fs::create_dir_all(&dir)?;
        let client = self.member_endpoint(i);
        let m = &self.members[i];
        let peer = format!("http://{}:{}", self.ip, m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))?;
        let mut cmd = etcd_command();
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster()))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=nbt-{}",
                std::process::id()
            ))
            .arg(format!(
                "--heartbeat-interval={}",
                self.election_timeout_ms / 10
            ))
            .arg(format!("--election-timeout={}", self.election_timeout_ms))
            .arg("--snapshot-count=100000")
            .arg("--log-level=warn");
        if let Some(q) = self.quota_backend_bytes {
            cmd.arg(format!("--quota-backend-bytes={q}"));
        }
        if let Some(t) = &self.client_tls {
            cmd.arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg(format!("--cert-file={}", t.server_cert.display()))
                .arg(format!("--key-file={}", t.server_key.display()));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is Debian's etcd-server installed?)")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let url = format!("{}/health", self.member_endpoint(i));
        let curl_args: Vec<std::ffi::OsString> = match &self.client_tls {
            Some(t) => vec![
                "--cacert".into(),
                t.ca.clone().into(),
                "--cert".into(),
                t.probe_cert.clone().into(),
                "--key".into(),
                t.probe_key.clone().into(),
            ],
            None => Vec::new(),
        };
        let r = poll_health(self.members[i].child.as_mut(), &url, &curl_args, timeout)?;
        r.map_err(|u| u.error(&format!("etcd member {i}"), timeout, &self.member_log(i)))
    }

    /// The client URLs, comma-separated (what `--etcd-endpoints` and
    /// `etcdctl --endpoints` take), e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> String {
        self.endpoints().join(",")
    }

    /// The client URL of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.member_endpoint(i))
            .collect()
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// The client URL of member `i`.
    pub fn member_endpoint(&self, i: usize) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{}", self.ip, self.members[i].client_port)
    }

    /// The process id of the first member (to stop or freeze it in chaos
    /// tests of a single etcd).
    pub fn pid(&self) -> Option<u32> {
        self.member_pid(0)
    }

    /// The process id of member `i`, while it runs.
    pub fn member_pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Kills member `i` with SIGKILL (by pid), keeping its data.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts member `i` (after [`Etcd::kill_member`]) on its ports with
    /// its data; returns once it reports healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        self.kill_member(i);
        self.spawn(i)?;
        self.wait_healthy(i, Duration::from_secs(30))
    }

    /// The index of the member that is the raft leader now, asked of every
    /// running member (`etcdctl endpoint status`).
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let Ok(out) = etcdctl(
                &self.member_endpoint(i),
                &["endpoint", "status", "-w", "json"],
            ) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
                continue;
            };
            let st = &v[0]["Status"];
            let (Some(me), Some(leader)) =
                (st["header"]["member_id"].as_u64(), st["leader"].as_u64())
            else {
                continue;
            };
            if leader == 0 {
                continue;
            }
            if me == leader {
                return Some(i);
            }
            // Ask the leader itself next: it confirms.
        }
        None
    }

    /// [`Etcd::leader`], waited for (up to `timeout`).
    pub fn wait_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader() {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no etcd leader after {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every member (SIGKILL) but keeps the data, for outage tests.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Restarts every member on the same ports with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(())
    }

    fn member_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.member_dir(i).join("etcd.log")).unwrap_or_default()
    }

    /// The etcd logs so far (every member's, for failure messages).
    pub fn log(&self) -> String {
        if self.members.len() == 1 {
            return self.member_log(0);
        }
        (0..self.members.len())
            .map(|i| format!("--- etcd member {i} ---\n{}", self.member_log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs `etcdctl` against this etcd (every member) and returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        etcdctl(&self.endpoint(), args)
    }

    /// Every key under `prefix` with its raw value, in key order.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        get_prefix(&self.endpoint(), prefix)
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(get_prefix_impl(&self.endpoint(), key, false)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v))
    }

    /// A connection through nubo's etcd layer (failover across members;
    /// its operations are retried).
    pub async fn store(&self) -> Result<nubo_store::Etcd> {
        let store =
            nubo_store::Etcd::connect(&nubo_store::EtcdConfig::new(self.endpoints())).await?;
        if self.members.len() > 1 {
            // Settles on a live member (a dead one fails the first request
            // and is taken out), so that plain calls on `client()` work too.
            let _ = tokio::time::timeout(Duration::from_secs(3), store.status()).await;
        }
        Ok(store)
    }

    /// A connected etcd client over nubo's failover channel, settled on a
    /// live member (its calls are not retried; see [`Etcd::store`]).
    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(self.store().await?.client().clone())
    }
}

/// Runs `etcdctl` (API v3) against `endpoints` (comma-separated URLs) and
/// returns stdout; fails with its stderr.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .context("running etcdctl (is Debian's etcd-client installed?)")?;
    if !out.status.success() {
        bail!(
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every key under `prefix` with its raw value, read with `etcdctl -w json`
/// (so values with newlines or binary bytes come back intact).
pub fn get_prefix(endpoints: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
    get_prefix_impl(endpoints, prefix, true)
}

fn get_prefix_impl(endpoints: &str, key: &str, prefix: bool) -> Result<Vec<(String, Vec<u8>)>> {
    let mut args = vec!["get", key, "-w", "json"];
    if prefix {
        args.push("--prefix");
    }
    let out = etcdctl(endpoints, &args)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("etcdctl json output: {out}"))?;
    let mut kvs = Vec::new();
    for kv in v
        .get("kvs")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
    {
        let field = |name: &str| -> Result<Vec<u8>> {
            base64_decode(kv.get(name).and_then(|x| x.as_str()).unwrap_or(""))
        };
        kvs.push((
            String::from_utf8_lossy(&field("key")?).into_owned(),
            field("value")?,
        ));
    }
    Ok(kvs)
}

/// Standard base64 (with padding), as etcdctl's JSON output uses.
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("invalid base64 {s:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Why [`poll_health`] gave up.
pub(crate) enum Unhealthy {
    /// The process exited.
    Exited(std::process::ExitStatus),
    /// No healthy answer before the deadline.
    Timeout,
}

impl Unhealthy {
    /// The error to report for `what` (e.g. `etcd member 2`), with its log.
    pub(crate) fn error(&self, what: &str, timeout: Duration, log: &str) -> anyhow::Error {
        match self {
            Unhealthy::Exited(status) => {
                anyhow::anyhow!("{what} exited early with {status}; log:\n{log}")
            }
            Unhealthy::Timeout => {
                anyhow::anyhow!("{what} not healthy after {timeout:?}; log:\n{log}")
            }
        }
    }
}

/// Polls etcd's `/health` at `url` (`curl` with `curl_args` first, e.g.
/// client certificates) every 100 ms until it answers healthy, the process
/// `child` exits, or `timeout` passes.
pub(crate) fn poll_health(
    mut child: Option<&mut Child>,
    url: &str,
    curl_args: &[std::ffi::OsString],
    timeout: Duration,
) -> Result<std::result::Result<(), Unhealthy>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.try_wait()? {
                return Ok(Err(Unhealthy::Exited(status)));
            }
        }
        let ok = Command::new("curl")
            .args(["-sf", "--max-time", "1"])
            .args(curl_args)
            .arg(url)
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true"))
            .unwrap_or(false);
        if ok {
            return Ok(Ok(()));
        }
        if Instant::now() > deadline {
            return Ok(Err(Unhealthy::Timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `etcd` from `PATH` (package etcd-server), or the binary named by
/// `NUBO_TEST_ETCD`.
fn etcd_command() -> Command {
    match std::env::var_os("NUBO_TEST_ETCD") {
        Some(path) => Command::new(path),
        None => Command::new("etcd"),
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_starts_answers_and_restarts_with_its_data() {
        let mut etcd = Etcd::start().unwrap();
        etcd.etcdctl(&["put", "/nbt/k", "v"]).unwrap();
        assert!(etcd.etcdctl(&["get", "/nbt/k"]).unwrap().contains('v'));
        etcd.restart().unwrap();
        assert!(etcd.etcdctl(&["get", "/nbt/k"]).unwrap().contains('v'));
        etcd.etcdctl(&["put", "/nbt/k2", "{\"a\":\n1}"]).unwrap();
        assert_eq!(
            etcd.get_prefix("/nbt/").unwrap(),
            vec![
                ("/nbt/k".to_string(), b"v".to_vec()),
                ("/nbt/k2".to_string(), b"{\"a\":\n1}".to_vec())
            ]
        );
        assert_eq!(etcd.get("/nbt/k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(etcd.get("/nbt/none").unwrap(), None);
    }

    #[test]
    fn a_three_member_cluster_survives_a_member_kill_and_takes_it_back() {
        let mut etcd = Etcd::start_cluster(3).unwrap();
        assert_eq!(etcd.endpoints().len(), 3);
        assert_eq!(etcd.endpoint().split(',').count(), 3);
        let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
        etcd.etcdctl(&["put", "/nbt/k", "v"]).unwrap();
        etcd.kill_member(leader);
        assert!(etcd.member_pid(leader).is_none());
        let next = etcd.wait_leader(Duration::from_secs(10)).unwrap();
        assert_ne!(next, leader, "a survivor leads");
        etcd.etcdctl(&["put", "/nbt/k2", "w"]).unwrap();
        etcd.restart_member(leader).unwrap();
        // The restarted member caught up with the write made without it.
        let only = etcdctl(
            &etcd.member_endpoint(leader),
            &["get", "/nbt/k2", "--print-value-only", "--consistency=s"],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = only.unwrap_or_default();
        while !got.contains('w') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            got = etcdctl(
                &etcd.member_endpoint(leader),
                &["get", "/nbt/k2", "--print-value-only", "--consistency=s"],
            )
            .unwrap_or_default();
        }
        assert!(got.contains('w'), "{got:?}");
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("L251Ym8vdjEv").unwrap(), b"/nubo/v1/");
        assert_eq!(base64_decode("").unwrap(), b"");
    }
}
