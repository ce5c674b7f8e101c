//! The secure default end to end (issue #7): etcd requires client
//! certificates and its authentication is on (issue 14: the coordinator is
//! etcd user `coordinator`, the agent the user of its enrolment, with the
//! node's role only); the coordinator runs WITHOUT `--insecure` (TLS API, token
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

    // etcd: no client certificate → refused; a certificate of the CA
    // whose CN is no etcd user → refused; the operator's (root) → served.
    let secrets = [
        "get",
        "--prefix",
        "/nubo/v1/private/secrets/",
        "--keys-only",
    ];
    let anonymous = cloud.etcd.etcdctl_as(None, &secrets)?;
    assert!(
        !anonymous.status.success(),
        "etcd served a client without a certificate"
    );
    let no_user = cloud.etcd.etcdctl_as(Some("cli"), &secrets)?;
    assert!(
        !no_user.status.success()
            && String::from_utf8_lossy(&no_user.stderr).contains("permission denied"),
        "etcd served a certificate without an etcd user"
    );
    let root = cloud.etcd.root()?;
    let with_cert = cloud.etcd.etcdctl_with(Some(&root), &secrets)?;
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
    let e = refused(
        &Cli::new(&plain)?.with_env("NUBO_TOKEN", ""),
        &["flavor", "list"],
    )?;
    assert!(
        e.starts_with(&format!(
            "error: the connection to the nubo API at {plain} failed: "
        )) && e.contains("a coordinator serving TLS breaks plain-text connections"),
        "{e}"
    );

    // A tenant: project, member, quota; everything through the CLI.
    admin.json(&[
        "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
    ])?;
    let alice = cloud.member("alice", "team-a")?;
    admin.json(&["quota", "set", "--project", "team-a", "--instances", "2"])?;
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
    for (args, want) in [
        (
            &["server", "list", "--all-projects"][..],
            "user nubo-node (no role in project admin) may not read servers",
        ),
        (
            &["server", "delete", "web-1", "--project", "team-a"],
            "user nubo-node (no role in project admin) may not read servers",
        ),
        (
            &["network", "create", "x", "--cidr", "10.21.0.0/24"],
            "user nubo-node (no role in project admin) may not change networks",
        ),
    ] {
        let e = refused(&node, args)?;
        assert!(e.starts_with(&format!("error: {want}\n")), "{args:?}: {e}");
    }

    // The agent works under its node's etcd role: it registered, reported
    // the statuses above and sees the deletes below; its certificate
    // reads none of the cloud's secrets.
    let node_files = nubo_tests::tls::ClientFiles {
        cert: cloud.etcd.certs().dir().join("node-node-1/etcd-client.crt"),
        key: cloud.etcd.certs().dir().join("node-node-1/etcd-client.key"),
    };
    let stolen = cloud.etcd.etcdctl_with(Some(&node_files), &secrets)?;
    assert!(
        String::from_utf8_lossy(&stolen.stderr).contains("permission denied"),
        "the node's certificate read the secrets: {}",
        String::from_utf8_lossy(&stolen.stdout)
    );

    // Deletes, and the audit trail shows who did what.
    alice.json(&["server", "delete", "web-1", "web-2"])?;
    assert!(
        !agent.current_log().contains("permission denied"),
        "the agent hit its role's limits: {}",
        agent.current_log()
    );
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

    // Revoking the node (cloud and etcd keep running): its alive key goes
    // with its lease, and the agent's next writes are refused.
    let said = cloud.etcd.revoke("node-1")?;
    assert!(said.contains("deleted"), "{said}");
    wait_until(Duration::from_secs(30), "node-1 not alive", || {
        let nodes = list_items(&admin.json(&["node", "list"])?)?;
        Ok(nodes.iter().all(|n| n["alive"] == false))
    })?;
    wait_until(Duration::from_secs(30), "the agent refused by etcd", || {
        Ok(agent
            .current_log()
            .contains("etcd refused this client's user (etcdserver: permission denied)"))
    })?;
    drop(agent);
    Ok(())
}

/// The CLI refuses a coordinator whose certificate it cannot trust: one
/// from another CA, or one of the cluster CA for another name. The
/// controls: the same CLI reaches the genuine coordinator, and the
/// coordinator with the wrong name is reached by a client told that name.
#[test]
fn cli_refuses_a_coordinator_certificate_from_another_ca_or_for_another_name() -> Result<()> {
    let cloud = SecureCloud::start()?;
    let endpoint = cloud.coordinator.endpoint();
    // Control: a CLI trusting the cluster CA reaches the coordinator (and
    // is asked for a token: TLS passed).
    let trusting = cloud.anonymous_cli("trusting")?;
    let e = refused(&trusting, &["flavor", "list"])?;
    assert!(e.to_lowercase().contains("token"), "{e}");
    cloud.admin.json(&["flavor", "list"])?;

    // Another CA: the same coordinator, the CLI given another cluster's CA
    // (also made by make-certs.sh, so also named CN=nubo-ca: the issuer is
    // found by name and its signature does not verify).
    let other = nubo_tests::tls::Certs::generate(&[])?;
    let foreign = cloud
        .anonymous_cli("foreign-ca")?
        .with_env("NUBO_CA_CERT", &other.ca().display().to_string());
    let e = refused(&foreign, &["flavor", "list"])?;
    assert!(
        e.contains(&format!("cannot reach the nubo API at {endpoint}"))
            && e.contains("invalid peer certificate: BadSignature"),
        "{e}"
    );

    // Another name: a coordinator of this cloud whose certificate (from the
    // cluster CA) names only other.example, reached as 127.0.0.1.
    let (crt, key) = cloud
        .etcd
        .certs()
        .server_cert_for("coordinator-other-name", "DNS:other.example")?;
    let misnamed = cloud.coordinator_with_cert("secure-2", crt, key)?;
    let to_misnamed = Cli::new(&misnamed.endpoint())?
        .with_env(
            "NUBO_CA_CERT",
            &cloud.etcd.certs().ca().display().to_string(),
        )
        .with_token_store(&cloud.dir().join("home-to-misnamed"))?;
    let e = refused(&to_misnamed, &["flavor", "list"])?;
    let want = "invalid peer certificate: certificate not valid for name \"127.0.0.1\"; \
                certificate is only valid for DnsName(\"other.example\")";
    assert!(
        e.contains(&format!(
            "cannot reach the nubo API at {}",
            misnamed.endpoint()
        )) && e.contains(want),
        "{e}"
    );
    // Control: a client verifying the name other.example against the
    // cluster CA is served by that coordinator (a token for the admin).
    let ca = std::fs::read(cloud.etcd.certs().ca())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt.block_on(async {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let ch = Channel::from_shared(misnamed.endpoint())?
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("other.example"),
            )?
            .connect()
            .await?;
        let t = nubo_common::proto::tokens_client::TokensClient::new(ch)
            .issue(nubo_common::proto::IssueTokenRequest {
                user: "admin".into(),
                password: nubo_tests::secure::ADMIN_PASSWORD.into(),
                ..Default::default()
            })
            .await?;
        anyhow::Ok(t.into_inner().token)
    })?;
    assert!(!token.is_empty());
    Ok(())
}
