//! A throwaway etcd server (Debian's `etcd-server`) per test.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port_on;

/// A running etcd; stopped (SIGKILL, by pid) and its data removed on drop.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ip: IpAddr,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd listening on 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_on("127.0.0.1".parse()?)
    }

    /// Starts etcd listening on `ip` (e.g. an address on a test bridge that
    /// network namespaces can reach).
    pub fn start_on(ip: IpAddr) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("nbt-etcd-").tempdir()?;
        let client_port = free_port_on(ip);
        let peer_port = free_port_on(ip);
        let mut etcd = Self {
            child: None,
            dir,
            ip,
            client_port,
            peer_port,
        };
        etcd.spawn()?;
        Ok(etcd)
    }

    fn spawn(&mut self) -> Result<()> {
        let client = format!("http://{}:{}", self.ip, self.client_port);
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let child = etcd_command()
            .arg("--name=nbt")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=nbt={peer}"))
            .arg("--initial-cluster-state=new")
            // Faster leader election on a loaded 2-core machine.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--snapshot-count=100000")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (is Debian's etcd-server installed?)")?;
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(20))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.endpoint());
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("etcd exited early with {status}; log:\n{}", self.log());
                }
            }
            let ok = Command::new("curl")
                .args(["-sf", "--max-time", "1", &url])
                .output()
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("true"))
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy after {timeout:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:23791`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// The etcd process id (to stop or freeze it in chaos tests).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops etcd (SIGKILL) but keeps its data, for outage tests.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a stopped etcd on the same ports with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// The etcd log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The data directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs `etcdctl` against this server and returns stdout.
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

    /// A connected etcd client.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.endpoint()], None).await?)
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
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("L251Ym8vdjEv").unwrap(), b"/nubo/v1/");
        assert_eq!(base64_decode("").unwrap(), b"");
    }
}
