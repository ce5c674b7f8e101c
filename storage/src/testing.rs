//! A throwaway single-node Ceph cluster for tests (feature `testing`).
//!
//! [`TestCluster::start`] runs `scripts/ceph-up.sh DIR` (1 mon, 1 mgr, 1
//! memstore OSD on 127.0.0.1 or the address given to
//! [`TestCluster::start_on`], cephx, ~12 s) and [`Drop`] runs
//! `scripts/ceph-down.sh DIR`, which kills the daemons by their PID files
//! and removes DIR. Only one such cluster runs per host at a time (fixed mon
//! ports; the script waits for a lock on `/run/nubo-ceph.lock`).
//!
//! A cluster that cannot start is an error naming what did not start and
//! why (missing binaries, or `ceph-up.sh`'s output with the tail of each
//! daemon's log): tests fail, they never pass without having run. The one
//! way to skip them is explicit: `NUBO_TEST_ALLOW_SKIP=ceph` (see
//! [`skip_allowed`]; CI never sets it) makes `start` print `SKIP: …` and
//! return `Ok(None)` when the Ceph binaries are missing.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::{Cluster, ConnectOptions, Error, RbdPools};

/// Binaries the cluster needs (packages ceph-mon ceph-mgr ceph-osd ceph-common).
pub const CEPH_BINARIES: &[&str] = &["ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd"];

/// A running throwaway cluster; stopped and wiped on drop.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    scripts: PathBuf,
}

static SHARED: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());
/// Why the shared cluster failed to start in this process: later callers
/// fail at once with the same reason instead of waiting out the timeouts
/// again.
static SHARED_FAILED: Mutex<Option<String>> = Mutex::new(None);
static SEQ: AtomicU32 = AtomicU32::new(0);

/// The environment variable that lists the components a test run may skip
/// when they are missing (comma-separated, e.g. `ceph` or `ceph,root`).
/// Unset (CI unsets it; `scripts/test.sh` warns when it is set), nothing is
/// skipped: a missing component fails the tests that need it.
pub const ALLOW_SKIP_ENV: &str = "NUBO_TEST_ALLOW_SKIP";

/// True when [`ALLOW_SKIP_ENV`] names `component`.
pub fn skip_allowed(component: &str) -> bool {
    std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v.split(',').any(|c| c.trim() == component))
}

/// True when `bin` is an executable file on `PATH`.
pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}

/// Pools `<prefix>-images`, `<prefix>-vms` and `<prefix>-volumes`,
/// created unless they exist: one set per test, so tests sharing a cluster
/// do not see each other's images.
pub fn test_pools(admin: &Cluster, prefix: &str) -> crate::Result<RbdPools> {
    let p = RbdPools {
        images: format!("{prefix}-images"),
        disks: format!("{prefix}-vms"),
        volumes: format!("{prefix}-volumes"),
    };
    for name in [&p.images, &p.disks, &p.volumes] {
        match admin.create_pool(name) {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

impl TestCluster {
    /// Starts a new cluster in a fresh directory under the temp dir. When
    /// the Ceph binaries are missing: an error naming them, or `Ok(None)`
    /// (after printing `SKIP: …`) if `NUBO_TEST_ALLOW_SKIP` names `ceph`.
    pub fn start() -> io::Result<Option<TestCluster>> {
        Self::start_on(Ipv4Addr::LOCALHOST)
    }

    /// Like [`TestCluster::start`], with the daemons bound to `addr` instead
    /// of 127.0.0.1: pass an address of the test's `nbt` underlay bridge so
    /// that clients in the simulated hosts' network namespaces (agents,
    /// QEMU) reach the cluster. The cluster must be dropped before the
    /// bridge goes away.
    pub fn start_on(addr: Ipv4Addr) -> io::Result<Option<TestCluster>> {
        let missing: Vec<&str> = CEPH_BINARIES
            .iter()
            .copied()
            .filter(|b| !on_path(b))
            .collect();
        if !missing.is_empty() {
            let what = format!(
                "the throwaway Ceph cluster cannot start: {} not found on PATH \
                 (packages ceph-mon ceph-mgr ceph-osd ceph-common, installed by scripts/deps.sh)",
                missing.join(", ")
            );
            if skip_allowed("ceph") {
                eprintln!("SKIP ({ALLOW_SKIP_ENV}=ceph): {what}");
                return Ok(None);
            }
            return Err(io::Error::other(format!(
                "{what}; to skip the tests that need Ceph instead, set {ALLOW_SKIP_ENV}=ceph"
            )));
        }
        let scripts = std::env::var_os("NUBO_SCRIPTS_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts"),
            PathBuf::from,
        );
        let dir = std::env::temp_dir().join(format!(
            "nubo-ceph-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        // From here on, Drop cleans up whatever the script managed to start.
        let cluster = TestCluster { dir, scripts };
        // Output goes to a file, not a pipe: the daemons and the lock holder
        // outlive the script and would keep a pipe open.
        let log_path = cluster.dir.with_extension("up.log");
        let log = File::create(&log_path)?;
        let status = Command::new(cluster.scripts.join("ceph-up.sh"))
            .arg(&cluster.dir)
            .env("CEPH_ADDR", addr.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        if !status.success() {
            return Err(io::Error::other(format!(
                "the throwaway Ceph cluster did not start: ceph-up.sh {} failed ({status}):\n{output}",
                cluster.dir.display()
            )));
        }
        eprintln!("test ceph cluster up in {}", cluster.dir.display());
        Ok(Some(cluster))
    }

    /// One cluster shared by the tests of this process that overlap in
    /// time: the first caller starts it, it is torn down when the last `Arc`
    /// is dropped (a later caller then starts a new one). Once a start
    /// failed, every later call fails with the same reason.
    pub fn shared() -> io::Result<Option<Arc<TestCluster>>> {
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.upgrade() {
            return Ok(Some(c));
        }
        let mut failed = SHARED_FAILED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = failed.as_ref() {
            return Err(io::Error::other(format!(
                "(an earlier start in this test process failed) {why}"
            )));
        }
        let c = match TestCluster::start() {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(None),
            Err(e) => {
                *failed = Some(e.to_string());
                return Err(e);
            }
        };
        let c = Arc::new(c);
        *slot = Arc::downgrade(&c);
        Ok(Some(c))
    }

    /// The cluster's directory (daemon data, logs in `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ceph.conf`; pass as `CEPH_CONF` to `ceph`/`rbd`/`qemu-img`.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// `DIR/keyring`: `client.admin`'s key.
    pub fn admin_keyring(&self) -> PathBuf {
        self.dir.join("keyring")
    }

    /// Connect options for `client.admin`.
    pub fn admin_options(&self) -> ConnectOptions {
        ConnectOptions::new(self.conf_path(), self.admin_keyring(), "admin")
    }

    /// Connects as `client.admin`.
    pub fn admin(&self) -> crate::Result<Cluster> {
        Cluster::connect(&self.admin_options())
    }

    /// Creates (or fetches) cephx user `client.<id>` with `caps` (pairs like
    /// `("mon", "profile rbd")`), writes its keyring to `DIR/<id>.keyring`
    /// and returns options to connect as it.
    pub fn create_user(&self, id: &str, caps: &[(&str, &str)]) -> crate::Result<ConnectOptions> {
        let admin = self.admin()?;
        let caps: Vec<&str> = caps.iter().flat_map(|(k, v)| [*k, *v]).collect();
        let keyring = admin.mon_command(&serde_json::json!({
            "prefix": "auth get-or-create",
            "entity": format!("client.{id}"),
            "caps": caps,
        }))?;
        let path = self.dir.join(format!("{id}.keyring"));
        std::fs::write(&path, keyring).map_err(|source| crate::Error::Io {
            op: "write keyring",
            object: path.display().to_string(),
            source,
        })?;
        Ok(ConnectOptions::new(self.conf_path(), path, id))
    }

    /// Runs a CLI tool (`ceph`, `rbd`, `qemu-img`, …) against this cluster
    /// as admin; returns stdout, or an error with stderr.
    pub fn cli(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = Command::new(program)
            .args(args)
            .env("CEPH_CONF", self.conf_path())
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{program} {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl TestCluster {
    /// When the cluster is not `HEALTH_OK` (or does not answer within 10 s),
    /// writes `ceph health detail` and the tail of each daemon's log to the
    /// process's real standard error, past the test harness's capture: the
    /// test that saw a timeout may not be the one that drops the cluster,
    /// and without this the reason is gone with the directory.
    fn report_if_unhealthy(&self) {
        let health = Command::new("timeout")
            .args(["10", "ceph", "health", "detail"])
            .env("CEPH_CONF", self.conf_path())
            .stdin(Stdio::null())
            .output();
        let text = match &health {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => format!(
                "`ceph health detail` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("`ceph health detail` did not run: {e}"),
        };
        if text.starts_with("HEALTH_OK") {
            return;
        }
        let mut report = format!(
            "---- test ceph cluster {} unhealthy at teardown:\n{text}\n",
            self.dir.display()
        );
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for path in entries.flatten().map(|e| e.path()) {
                let Ok(log) = std::fs::read_to_string(&path) else {
                    continue;
                };
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                report.push_str(&format!("---- last lines of {}\n{tail}\n", path.display()));
            }
        }
        // fd 2 itself, not eprintln!: the harness captures eprintln! of a
        // passing test.
        use std::io::Write;
        use std::os::fd::AsFd;
        if let Ok(fd) = io::stderr().as_fd().try_clone_to_owned() {
            let _ = File::from(fd).write_all(report.as_bytes());
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.report_if_unhealthy();
        let down = self.scripts.join("ceph-down.sh");
        match Command::new(&down)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("{} {}: {s}", down.display(), self.dir.display()),
            Err(e) => eprintln!("{} {}: {e}", down.display(), self.dir.display()),
        }
    }
}
