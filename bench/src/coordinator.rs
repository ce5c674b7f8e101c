//! The `nubo-coordinator` process under test: started with its flags, waited
//! for until `/readyz` answers 200, measured (`/proc/<pid>/status`) and
//! killed by pid on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Overcommit ratios the coordinator is started with (and checked against).
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    /// vCPU overcommit.
    pub cpu: f64,
    /// Memory overcommit.
    pub ram: f64,
    /// Disk overcommit.
    pub disk: f64,
}

/// A running coordinator.
pub struct Coordinator {
    child: Child,
    log: PathBuf,
}

impl Coordinator {
    /// Starts `bin` against `etcd_endpoint`, logging to `log`, and waits
    /// (up to 60 s) until it reports ready.
    pub fn start(
        bin: &Path,
        etcd_endpoint: &str,
        grpc: SocketAddr,
        health: SocketAddr,
        ratios: Ratios,
        log: PathBuf,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .arg("--etcd-endpoints")
            .arg(etcd_endpoint)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--health-listen")
            .arg(health.to_string())
            .arg("--cpu-ratio")
            .arg(ratios.cpu.to_string())
            .arg("--ram-ratio")
            .arg(ratios.ram.to_string())
            .arg("--disk-ratio")
            .arg(ratios.disk.to_string())
            // The benchmarks measure placement and the data path, not
            // authentication: plain text without tokens (development mode).
            .args(["--insecure", "--auth", "none"])
            // Per-request info logs would cost the coordinator CPU it shares
            // with the benchmark; keep them unless the caller asks.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut c = Self { child, log };
        c.wait_ready(health, Duration::from_secs(60))?;
        Ok(c)
    }

    fn wait_ready(&mut self, health: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "nubo-coordinator exited with {status}; log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if readyz(health).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nubo-coordinator not ready after {timeout:?}; log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmHWM, VmRSS) in KiB, from `/proc/<pid>/status`.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Ok((proc_field(&text, "VmHWM:")?, proc_field(&text, "VmRSS:")?))
    }

    /// The last lines of the coordinator's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        // Child::kill signals this pid only (SIGKILL).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /readyz` answered 200.
fn readyz(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    Ok(buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200"))
}

/// The KiB value of a `Name:   1234 kB` line.
fn proc_field(status: &str, name: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name} in /proc status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields_are_parsed() {
        let s = "Name:\tnubo\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(proc_field(s, "VmHWM:").unwrap(), 51200);
        assert_eq!(proc_field(s, "VmRSS:").unwrap(), 40960);
        assert!(proc_field(s, "VmSwap:").is_err());
    }
}
