//! A real Prometheus (Debian's `prometheus` package) for tests: started on
//! a free port with its own temporary directory (configuration, rules,
//! TSDB), killed by pid on drop. Queried through its HTTP API
//! (`/api/v1/query`, `/api/v1/alerts`) with `curl`.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use nubo_tests::prometheus::{Job, Prometheus, PrometheusOpts};
//! let prom = Prometheus::start(PrometheusOpts {
//!     jobs: vec![Job::plain("etcd", vec!["127.0.0.1:2379".into()])],
//!     ..Default::default()
//! })?;
//! let up = prom.query("up")?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::process::Daemon;

/// One scrape job.
#[derive(Debug, Clone)]
pub struct Job {
    /// `job_name`.
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Scrape over TLS, verifying the server with this CA (and this
    /// server name).
    pub tls_ca: Option<(PathBuf, String)>,
    /// A bearer token (written to a file Prometheus reads).
    pub bearer_token: Option<String>,
    /// `honor_labels` (nubo's agents: keep their `instance` label).
    pub honor_labels: bool,
}

impl Job {
    /// A plain-HTTP job without authentication.
    pub fn plain(name: &str, targets: Vec<String>) -> Self {
        Self {
            name: name.into(),
            targets,
            tls_ca: None,
            bearer_token: None,
            honor_labels: false,
        }
    }
}

/// How to start Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusOpts {
    /// `scrape_interval` (and `scrape_timeout`, capped at it).
    pub scrape_interval: Duration,
    /// `evaluation_interval` of the rules.
    pub evaluation_interval: Duration,
    /// Rule files, used as they are (not copied or edited).
    pub rule_files: Vec<PathBuf>,
    /// Scrape jobs.
    pub jobs: Vec<Job>,
}

impl Default for PrometheusOpts {
    fn default() -> Self {
        Self {
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_secs(1),
            rule_files: Vec::new(),
            jobs: Vec::new(),
        }
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` included when the query keeps it).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One active alert (`/api/v1/alerts`).
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Its labels (`alertname` included).
    pub labels: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
}

/// A running Prometheus (killed on drop).
pub struct Prometheus {
    daemon: Daemon,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The repository's `monitoring/` folder.
pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

impl Prometheus {
    /// Writes the configuration, starts `prometheus` and waits until it is
    /// ready (`/-/ready`).
    pub fn start(opts: PrometheusOpts) -> Result<Self> {
        let version = Command::new("prometheus")
            .arg("--version")
            .output()
            .context("running prometheus --version (Debian package `prometheus`: scripts/deps.sh installs it)")?;
        if !version.status.success() {
            bail!(
                "prometheus --version failed: {}",
                String::from_utf8_lossy(&version.stderr)
            );
        }
        let dir = tempfile::Builder::new().prefix("nbt-prom-").tempdir()?;
        let mut jobs = Vec::new();
        for (i, j) in opts.jobs.iter().enumerate() {
            let mut job = json!({
                "job_name": j.name,
                "honor_labels": j.honor_labels,
                "scrape_interval": secs(opts.scrape_interval),
                "scrape_timeout": secs(opts.scrape_interval),
                "static_configs": [{"targets": j.targets}],
            });
            if let Some((ca, server_name)) = &j.tls_ca {
                job["scheme"] = json!("https");
                job["tls_config"] = json!({"ca_file": ca, "server_name": server_name});
            }
            if let Some(token) = &j.bearer_token {
                let f = dir.path().join(format!("token-{i}"));
                std::fs::write(&f, token)?;
                job["authorization"] = json!({"type": "Bearer", "credentials_file": f});
            }
            jobs.push(job);
        }
        // JSON is YAML: no YAML writer needed.
        let cfg = json!({
            "global": {
                "scrape_interval": secs(opts.scrape_interval),
                "evaluation_interval": secs(opts.evaluation_interval),
            },
            "rule_files": opts.rule_files,
            "scrape_configs": jobs,
        });
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
        let port = crate::ports::free_port_on(Ipv4Addr::LOCALHOST.into());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let daemon = Daemon::spawn(
            "prometheus",
            Vec::new(),
            PathBuf::from("prometheus"),
            vec![
                format!("--config.file={}", cfg_path.display()),
                format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".into(),
            ],
            dir.path().join("prometheus.log"),
            &[],
        )?;
        let mut p = Self {
            daemon,
            addr,
            _dir: dir,
        };
        crate::wait_until(Duration::from_secs(30), "prometheus ready", || {
            p.daemon.check_running()?;
            Ok(curl(&[&format!("http://{addr}/-/ready")]).is_ok())
        })
        .with_context(|| format!("prometheus log:\n{}", p.daemon.log_tail()))?;
        Ok(p)
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tail of its log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// Evaluates `promql` now (`/api/v1/query`); the instant vector.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let body = curl(&[
            "-G",
            "--data-urlencode",
            &format!("query={promql}"),
            &format!("http://{}/api/v1/query", self.addr),
        ])?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("answer: {body}"))?;
        if v["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        if v["data"]["resultType"] != "vector" {
            bail!("query {promql:?} is not an instant vector: {body}");
        }
        let empty = Vec::new();
        v["data"]["result"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|r| {
                let labels = labels(&r["metric"]);
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .with_context(|| format!("no value in {r}"))?;
                Ok(Sample { labels, value })
            })
            .collect()
    }

    /// The single value of `promql` (an error when it has none or several).
    pub fn value(&self, promql: &str) -> Result<f64> {
        match self.query(promql)?.as_slice() {
            [s] => Ok(s.value),
            other => bail!("{promql:?}: expected one sample, got {other:?}"),
        }
    }

    /// The active alerts (pending and firing).
    pub fn alerts(&self) -> Result<Vec<Alert>> {
        let body = curl(&[&format!("http://{}/api/v1/alerts", self.addr)])?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("answer: {body}"))?;
        let empty = Vec::new();
        Ok(v["data"]["alerts"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|a| Alert {
                labels: labels(&a["labels"]),
                state: a["state"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// The state of alert `name` whose labels include `with`: `None` when
    /// inactive.
    pub fn alert_state(&self, name: &str, with: &[(&str, &str)]) -> Result<Option<String>> {
        Ok(self
            .alerts()?
            .into_iter()
            .find(|a| {
                a.labels.get("alertname").map(String::as_str) == Some(name)
                    && with
                        .iter()
                        .all(|(k, v)| a.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|a| a.state))
    }

    /// The pid of the process.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `curl -sS -f --max-time 10 ARGS`: the body of a 2xx answer.
fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10"])
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
