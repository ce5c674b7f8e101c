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
        let child = Command::new(etcd_binary())
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
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
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

    /// A connected etcd client.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.endpoint()], None).await?)
    }
}

fn etcd_binary() -> String {
    std::env::var("NUBO_TEST_ETCD").unwrap_or_else(|_| "etcd".into())
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
    }
}
