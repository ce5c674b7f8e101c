//! Locating the workspace binaries and guarding the daemons the harness starts.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The path of the workspace binary `name` (e.g. `nubo-agent`).
///
/// Looked up in `$NUBO_BIN_DIR/` (relative to the workspace; e.g.
/// `target/release` for benchmarks) when set, then in
/// `$CARGO_TARGET_DIR/debug/` when that variable is set, else in
/// the directory two levels above the running test executable (which is
/// `target/debug/deps/<test>-<hash>`), then its parent (for `target/debug/<x>`
/// executables). Fails with a message asking for `cargo build --bins` when
/// the binary does not exist: `cargo test` does not build other crates' bins.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    // Explicit override, e.g. `NUBO_BIN_DIR=target/release` for benchmarks.
    if let Some(dir) = std::env::var_os("NUBO_BIN_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_relative() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
        } else {
            dir
        };
        candidates.push(dir.join(name));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        let dir = if dir.is_relative() {
            // Relative target dirs are relative to where cargo ran: the
            // workspace root, two levels above this crate's manifest.
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir)
        } else {
            dir
        };
        candidates.push(dir.join("debug").join(name));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    if let Some(parent) = exe.parent() {
        if parent.file_name().is_some_and(|n| n == "deps") {
            if let Some(debug) = parent.parent() {
                candidates.push(debug.join(name));
            }
        } else {
            candidates.push(parent.join(name));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    );
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    bail!(
        "binary `{name}` not found (looked at {}); run `cargo build --bins` first",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// True when a process with this pid exists (and is not a zombie we reaped).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // A zombie still answers kill(0); look at its state too.
    // SAFETY: kill with signal 0 only checks for existence/permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // Format: "pid (comm) S ...": the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Removes ANSI escape sequences (colours) from a log text.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `lines` lines of a text.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process started by the harness with its output appended to a
/// log file. Killed (SIGKILL, by its pid) and reaped on drop.
pub struct Daemon {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    prefix: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
    /// Byte offset in the log file where the current incarnation starts.
    log_start: u64,
}

impl Daemon {
    /// Starts `prefix... program args...` (the prefix is e.g.
    /// `ip netns exec <ns>`, which execs the program so the pid stays the
    /// daemon's), with stdout and stderr appended to `log_path`.
    pub fn spawn(
        name: &str,
        prefix: Vec<String>,
        program: PathBuf,
        args: Vec<String>,
        log_path: PathBuf,
        envs: &[(&str, &str)],
    ) -> Result<Self> {
        let mut d = Self {
            name: name.to_string(),
            program,
            args,
            prefix,
            log_path,
            child: None,
            log_start: 0,
        };
        d.start(envs)?;
        Ok(d)
    }

    /// (Re)starts the process with the same command line.
    pub fn start(&mut self, envs: &[(&str, &str)]) -> Result<()> {
        self.kill9();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        self.log_start = log.metadata()?.len();
        let mut cmd = match self.prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Plain logs (tracing-subscriber honours NO_COLOR).
        cmd.env("NO_COLOR", "1");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} ({} {})",
                self.name,
                self.program.display(),
                self.args.join(" ")
            )
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// The pid of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status if the process has exited (and reaps it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True when the process is running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Sends SIGKILL to the process (by pid) and reaps it. Idempotent.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill sends SIGKILL to exactly this pid; errors mean it
            // already exited, which is what we want.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The whole log file (every incarnation), without colour codes.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| strip_ansi(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }

    /// The log of the current incarnation only (since the last start),
    /// without colour codes.
    pub fn current_log(&self) -> String {
        let mut buf = Vec::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            if f.seek(SeekFrom::Start(self.log_start)).is_ok() {
                let _ = f.read_to_end(&mut buf);
            }
        }
        strip_ansi(&String::from_utf8_lossy(&buf))
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), 40)
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            None => bail!("{} is not running (killed)", self.name),
            Some(Ok(Some(status))) => bail!(
                "{} exited with {status}; log tail ({}):\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail()
            ),
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => bail!("{}: waiting on it failed: {e}", self.name),
        }
    }

    /// Waits until the current incarnation's log contains `needle`, failing
    /// at once (with the log tail) if the process exits meanwhile.
    pub fn wait_for_log(&mut self, needle: &str, timeout: std::time::Duration) -> Result<()> {
        let what = format!("{} logs {needle:?}", self.name);
        crate::wait::wait_until(timeout, &what, || {
            self.check_running().map_err(crate::wait::fatal)?;
            Ok(self.current_log().contains(needle))
        })
        .with_context(|| format!("log tail:\n{}", self.log_tail()))
    }

    /// The daemon's name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m ready"),
            "2026  INFO ready"
        );
    }

    #[test]
    fn missing_binary_asks_for_cargo_build() {
        let err = bin_path("nubo-no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --bins"), "{err}");
    }

    #[test]
    fn daemon_logs_and_is_killed_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::spawn(
            "sleeper",
            vec![],
            "/bin/sh".into(),
            vec!["-c".into(), "echo hello; exec sleep 600".into()],
            dir.path().join("s.log"),
            &[],
        )
        .unwrap();
        let pid = d.pid().unwrap();
        crate::wait_until(std::time::Duration::from_secs(10), "echo", || {
            Ok(d.log().contains("hello"))
        })
        .unwrap();
        assert!(pid_alive(pid));
        d.kill9();
        assert!(!pid_alive(pid));
        assert!(d.check_running().is_err());
    }
}
