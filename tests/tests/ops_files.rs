//! The operator files under `systemd/` are valid: the units pass
//! `systemd-analyze verify` (package `systemd`), the keepalived example
//! passes `keepalived -t` (package `keepalived`; validation only, keepalived
//! is never started), and `check-coordinator URL` tells a serving
//! coordinator from a dead one. Needs `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use nubo_tests::{bin_path, Coordinator, Etcd};

fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn need(tool: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()?
        .status
        .success();
    anyhow::ensure!(found, "`{tool}` not found: apt-get install {package}");
    Ok(())
}

fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `systemd-analyze verify` on copies of the units whose ExecStart points
/// at the built binaries (the units name `/usr/local/bin/nubo-*`, which a
/// test must not create). Everything else in the units is checked as is.
#[test]
fn systemd_units_verify() -> Result<()> {
    need("systemd-analyze", "systemd")?;
    let tmp = tempfile::Builder::new().prefix("nbt-units-").tempdir()?;
    let mut units = Vec::new();
    for name in ["nubo-agent.service", "nubo-coordinator.service"] {
        let text = std::fs::read_to_string(ops_dir().join(name))?;
        let bin = name.trim_end_matches(".service");
        let installed = format!("/usr/local/bin/{bin}");
        anyhow::ensure!(
            text.contains(&format!("ExecStart={installed} ")),
            "{name}: ExecStart does not run {installed}"
        );
        let built = bin_path(bin)?.display().to_string();
        let path = tmp.path().join(name);
        std::fs::write(&path, text.replace(&installed, &built))?;
        units.push(path.display().to_string());
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .context("running systemd-analyze")?;
    let text = output_text(&out);
    println!("systemd-analyze verify: {}\n{text}", out.status);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // Our units must not produce warnings either (other units on the
    // machine may; only lines naming ours count).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("nubo-agent.service") || l.contains("nubo-coordinator.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "warnings about our units:\n{}",
        ours.join("\n")
    );
    Ok(())
}

/// `keepalived -t` on the example with the check script path pointing at a
/// root-owned copy of `systemd/check-coordinator` (the example names its
/// installed path; `enable_script_security` disables a missing script).
#[test]
fn keepalived_example_validates() -> Result<()> {
    need("keepalived", "keepalived")?;
    let installed = "/usr/local/lib/nubo/check-coordinator";
    let text = std::fs::read_to_string(ops_dir().join("keepalived.conf.example"))?;
    anyhow::ensure!(
        text.contains(installed),
        "the example no longer runs {installed}"
    );
    let tmp = tempfile::Builder::new().prefix("nbt-ka-").tempdir()?;
    let script = tmp.path().join("check-coordinator");
    std::fs::copy(ops_dir().join("check-coordinator"), &script)?;
    let conf = tmp.path().join("keepalived.conf");
    std::fs::write(
        &conf,
        text.replace(installed, &script.display().to_string()),
    )?;
    let out = Command::new("keepalived")
        .arg("-t")
        .arg("-f")
        .arg(&conf)
        .output()
        .context("running keepalived -t")?;
    let log = output_text(&out);
    println!("keepalived -t: {}\n{log}", out.status);
    assert!(out.status.success(), "keepalived -t failed:\n{log}");
    assert!(!log.contains("Disabling track script"), "{log}");
    Ok(())
}

/// `check-coordinator URL` exits 0 against a serving coordinator's health
/// address and non-zero once it is killed.
#[test]
fn check_coordinator_follows_the_coordinator() -> Result<()> {
    need("curl", "curl")?;
    let etcd = Etcd::start()?;
    let dir = tempfile::Builder::new().prefix("nbt-check-").tempdir()?;
    let mut c = Coordinator::start(&etcd.endpoint(), "c1", dir.path())?;
    let url = format!("http://{}", c.health_addr());
    let check = || -> Result<std::process::Output> {
        Ok(Command::new(ops_dir().join("check-coordinator"))
            .arg(&url)
            .output()?)
    };
    let up = check()?;
    assert!(up.status.success(), "serving: {}", output_text(&up));
    c.kill9();
    let down = check()?;
    println!("after kill -9: {} {}", down.status, output_text(&down));
    assert!(
        !down.status.success(),
        "check passed against a dead coordinator"
    );
    Ok(())
}
