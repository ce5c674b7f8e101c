//! Running the `nubo` CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::bin_path;

/// What one `nubo` invocation produced.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "`{}` did not print JSON on stdout:\n{}\nstderr: {}",
                self.command, self.stdout, self.stderr
            )
        })
    }

    /// Fails with the whole output unless the command succeeded.
    pub fn ok(self) -> Result<Self> {
        if !self.success() {
            bail!(
                "`{}` exited with {}\nstdout: {}\nstderr: {}",
                self.command,
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `nubo --endpoint <endpoint> -f json <args>`.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
    endpoint: String,
    timeout: Duration,
    envs: Vec<(String, String)>,
}

impl Cli {
    /// A CLI talking to `endpoint` (e.g. [`crate::Coordinator::endpoint`]).
    pub fn new(endpoint: &str) -> Result<Self> {
        Ok(Self {
            bin: bin_path("nubo")?,
            endpoint: endpoint.to_string(),
            timeout: Duration::from_secs(300),
            envs: Vec::new(),
        })
    }

    /// Sets an environment variable for every invocation (e.g.
    /// `NUBO_CA_CERT`, `NUBO_TOKEN`, or `XDG_CONFIG_HOME` so that
    /// `nubo login` keeps its token in a test directory).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// This CLI with its own token store under `home` (as
    /// `XDG_CONFIG_HOME`, created) and no token from the caller's
    /// environment: anonymous until [`Cli::login`].
    pub fn with_token_store(self, home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        Ok(self
            .with_env("XDG_CONFIG_HOME", &home.display().to_string())
            .with_env("NUBO_TOKEN", ""))
    }

    /// `nubo login --user USER --password-file FILE`, the password written
    /// to a new 0600 file `password-USER` in `dir`; the token goes to this
    /// CLI's token store ([`Cli::with_token_store`]).
    pub fn login(&self, user: &str, password: &str, dir: &Path) -> Result<Value> {
        let pw = dir.join(format!("password-{user}"));
        crate::secure::write_secret(&pw, &format!("{password}\n"))?;
        self.json(&[
            "login",
            "--user",
            user,
            "--password-file",
            &pw.display().to_string(),
        ])
    }

    /// Kill a command still running after `timeout` (default 300 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `nubo --endpoint … -f json <args>` and returns whatever it did,
    /// failing only if it could not be run or outlived the timeout.
    pub fn run(&self, args: &[&str]) -> Result<CliOutput> {
        let mut full = vec!["--endpoint", self.endpoint.as_str(), "-f", "json"];
        full.extend_from_slice(args);
        self.run_raw(&full)
    }

    /// Runs `nubo <args>` exactly as given (no endpoint or format flags).
    pub fn run_raw(&self, args: &[&str]) -> Result<CliOutput> {
        self.spawn_raw(args)?.wait(self.timeout)
    }

    /// Starts `nubo --endpoint … -f json <args>` in the background.
    pub fn spawn(&self, args: &[&str]) -> Result<Running> {
        let mut full = vec!["--endpoint", self.endpoint.as_str(), "-f", "json"];
        full.extend_from_slice(args);
        self.spawn_raw(&full)
    }

    /// Starts `nubo <args>` exactly as given, in the background.
    pub fn spawn_raw(&self, args: &[&str]) -> Result<Running> {
        let command = format!("nubo {}", args.join(" "));
        // Files, not pipes: a large listing must not block on a full pipe
        // while we wait with a timeout.
        let dir = tempfile::Builder::new().prefix("nbt-cli-").tempdir()?;
        let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
        let child = Command::new(&self.bin)
            .args(args)
            .env_remove("NUBO_ENDPOINT")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .spawn()
            .with_context(|| format!("running {}", self.bin.display()))?;
        Ok(Running {
            command,
            child,
            out_path,
            err_path,
            _dir: dir,
        })
    }

    /// Runs a command that must succeed and returns its JSON output.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        self.run(args)?.ok()?.json()
    }

    /// The endpoint the CLI talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// A `nubo` command running in the background; killed on drop.
#[derive(Debug)]
pub struct Running {
    command: String,
    child: std::process::Child,
    out_path: PathBuf,
    err_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    /// True while the command runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Waits for the command to end (killed after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Result<CliOutput> {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "`{}` still running after {timeout:?}; killed. stderr so far: {}",
                    self.command,
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        Ok(CliOutput {
            command: self.command.clone(),
            code: status.code().unwrap_or(-1),
            stdout: read(&self.out_path),
            stderr: read(&self.err_path),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The objects of a JSON listing: the array itself, or the first array
/// value of an object (e.g. `{"servers": [...], "next_page_token": ""}`).
pub fn list_items(v: &Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        Value::Object(o) => o
            .values()
            .find_map(|x| x.as_array().cloned())
            .with_context(|| format!("no list in JSON output: {v}")),
        _ => bail!("expected a JSON list, got: {v}"),
    }
}
