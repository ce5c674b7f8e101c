//! The secure default end to end (issue #7): etcd requires client
//! certificates; the coordinator runs WITHOUT `--insecure` (TLS API, token
//! authentication), bootstrapped by `nubo-coordinator bootstrap`; the CLI
//! talks TLS (`NUBO_CA_CERT`) with tokens from `nubo login` (password or
//! application credential); a fake-driver agent talks TLS to etcd with its
//! own client certificate and holds a node application credential.
//!
//! Needs the binaries: `cargo build --bins` before `cargo test -p nubo-tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use anyhow::{Context, Result};
use nubo_tests::secure::SecureCloud;
use nubo_tests::{list_items, wait_until, Agent, Cli};
use serde_json::Value;

/// Fails unless `cli` refuses `args`; returns its stderr.
fn refused(cli: &Cli, args: &[&str]) -> Result<String> {
    let out = cli.run(args)?;
    anyhow::ensure!(
        !out.success(),
        "`{}` succeeded: {}",
        out.command,
        out.stdout
    );
    // A batch create reports per-instance errors on stdout.
    Ok(format!("{}\n{}", out.stderr, out.stdout))
}

fn names(v: &Value) -> Result<Vec<String>> {
    Ok(list_items(v)?
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn secure_default_cluster_end_to_end() -> Result<()> {
    let cloud = SecureCloud::start()?;
    let admin = &cloud.admin;
    assert!(cloud.coordinator.endpoint().starts_with("https://"));
    assert!(
        !cloud.coordinator.log().contains("INSECURE"),
        "the secure default logged insecurity"
    );

    // etcd: no client certificate → refused; the CLI's certificate → served.
    let anonymous = cloud
        .etcd
        .etcdctl_as(None, &["get", "--prefix", "/nubo/v1/"])?;
    assert!(
        !anonymous.status.success(),
        "etcd served a client without a certificate"
    );
    let with_cert = cloud.etcd.etcdctl_as(
        Some("cli"),
        &["get", "--prefix", "/nubo/v1/private/secrets/", "--keys-only"],
    )?;
    assert!(with_cert.status.success());
    assert!(String::from_utf8_lossy(&with_cert.stdout).contains("token-key"));

    // The API: no token → refused; no CA → refused; plain text → refused.
    let nobody = cloud.anonymous_cli("nobody")?;
    let e = refused(&nobody, &["server", "list"])?;
    assert!(e.to_lowercase().contains("token"), "{e}");
    let no_ca = Cli::new(&cloud.coordinator.endpoint())?;
    let e = refused(&no_ca, &["flavor", "list"])?;
    assert!(e.contains("--ca-cert"), "{e}");
    let plain = cloud.coordinator.endpoint().replace("https://", "http://");
    refused(
        &Cli::new(&plain)?.with_env("NUBO_TOKEN", ""),
        &["flavor", "list"],
    )?;

    // A tenant: project, member, quota; everything through the CLI.
    admin.json(&[
        "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
    ])?;
    admin.json(&["project", "create", "team-a"])?;
    let pw = cloud.dir().join("alice-pw");
    std::fs::write(&pw, "alice-password\n")?;
    admin.json(&[
        "user",
        "create",
        "alice",
        "--password-file",
        &pw.display().to_string(),
    ])?;
    admin.json(&[
        "role", "grant", "member", "--user", "alice", "--in", "team-a",
    ])?;
    admin.json(&["quota", "set", "--project", "team-a", "--instances", "2"])?;
    let alice = cloud.login("alice", "alice-password")?;
    alice.json(&["image", "create", "cirros"])?;
    alice.json(&["network", "create", "net1", "--cidr", "10.20.0.0/24"])?;

    // The agent: TLS to etcd with its own certificate, a node credential.
    let cred = cloud.node_credential()?;
    let agent = Agent::start(cloud.agent_opts("node-1", &cred)?)?;
    assert!(agent.current_log().contains("nubo-agent ready"));
    wait_until(Duration::from_secs(60), "node-1 in the node list", || {
        Ok(names(&admin.json(&["node", "list"])?)? == ["node-1"])
    })?;

    // The member boots instances; the quota holds; the node runs them.
    let out = alice.json(&[
        "server",
        "create",
        "web",
        "--count",
        "2",
        "--wait",
        "--flavor",
        "tiny",
        "--image",
        "cirros",
        "--network",
        "net1",
    ])?;
    let servers = list_items(&alice.json(&["server", "list"])?)?;
    assert_eq!(servers.len(), 2, "{out}");
    for s in &servers {
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(s["node"], "node-1", "{s}");
    }
    let e = refused(
        &alice,
        &[
            "server",
            "create",
            "extra",
            "--flavor",
            "tiny",
            "--image",
            "cirros",
            "--network",
            "net1",
        ],
    )?;
    assert!(e.contains("quota exceeded for instances"), "{e}");

    // The node credential logs in (application credential) but may not
    // touch tenant resources.
    let node = cloud.anonymous_cli("node-login")?;
    let line = std::fs::read_to_string(&cred)?;
    let (id, secret) = line.trim().split_once(':').context("credential file")?;
    let secret_file = cloud.dir().join("node-secret");
    std::fs::write(&secret_file, format!("{secret}\n"))?;
    let t = node.json(&[
        "login",
        "--application-credential-id",
        id,
        "--secret-file",
        &secret_file.display().to_string(),
    ])?;
    assert_eq!(t["roles"], "node", "{t}");
    refused(&node, &["server", "list", "--all-projects"])?;
    refused(&node, &["server", "delete", "web-1", "--project", "team-a"])?;
    refused(&node, &["network", "create", "x", "--cidr", "10.21.0.0/24"])?;

    // Deletes, and the audit trail shows who did what.
    alice.json(&["server", "delete", "web-1", "web-2"])?;
    let audit = list_items(&admin.json(&["audit", "list"])?)?;
    let has = |user: &str, action: &str, outcome: &str| {
        audit
            .iter()
            .any(|r| r["user"] == user && r["action"] == action && r["outcome"] == outcome)
    };
    for (u, a, o) in [
        ("alice", "servers.create", "ok"),
        ("alice", "servers.delete", "ok"),
        ("admin", "identity.createproject", "ok"),
        ("nubo-node", "applicationcredentials.create", "ok"),
        ("nubo-node", "networks.create", "PermissionDenied"),
    ] {
        assert!(has(u, a, o), "no audit record {u} {a} {o} in {audit:#?}");
    }
    drop(agent);
    Ok(())
}
