//! The node API in the production configuration (issue 14): mutual TLS
//! with the cluster CA, console and capture streams only with a
//! single-use ticket the coordinator issues to someone who may see the
//! instance, relayed by the coordinator so that tenants never reach a
//! hypervisor, audited.
//!
//! Real etcd (client certificates, authentication on), a secure
//! coordinator (TLS, tokens), a fake-driver agent enrolled with
//! `nubo-coordinator node enroll` (its etcd role reads the public ticket
//! keys, never the private one), real `curl` for the clients without a
//! certificate. Needs `cargo build --bins` first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use nubo_common::model::TicketSigningKey;
use nubo_common::{InstanceId, NodeName};
use nubo_nodeapi::{
    ClientError, NodeApiAddr, NodeApiClient, StreamTarget, TicketClaims, TicketSigner, TlsFiles,
};
use nubo_tests::secure::SecureCloud;
use nubo_tests::{list_items, wait_for, Agent, Cli};
use serde_json::Value;

const NODE: &str = "node-1";

/// Everything `cli` printed, and whether it succeeded.
fn cli_out(cli: &Cli, args: &[&str]) -> Result<(bool, String, String)> {
    let out = cli.run(args)?;
    Ok((out.success(), out.stdout, out.stderr))
}

/// The coordinators' ticket key as stored (read with the operator's etcd
/// certificate): what a test needs to make tickets the node would accept
/// if it did not also check their target, age and single use.
fn stored_signer(cloud: &SecureCloud) -> Result<TicketSigner> {
    let root = cloud.etcd.root()?;
    let out = cloud.etcd.etcdctl_with(
        Some(&root),
        &[
            "get",
            &nubo_common::keys::ticket_signing_key(),
            "--print-value-only",
        ],
    )?;
    ensure!(out.status.success(), "etcdctl get the ticket key failed");
    let k: TicketSigningKey = serde_json::from_slice(&out.stdout).context("ticket key JSON")?;
    let pkcs8 = base64::engine::general_purpose::STANDARD.decode(k.pkcs8)?;
    Ok(TicketSigner::from_pkcs8(&k.kid, &pkcs8)?)
}

fn ticket(signer: &TicketSigner, instance: InstanceId, ttl_ms: u64) -> String {
    let now = nubo_nodeapi::ticket::now_ms();
    signer.sign(&TicketClaims {
        id: uuid::Uuid::new_v4().to_string(),
        node: NodeName::new(NODE).unwrap(),
        target: StreamTarget::Console { instance },
        issued_to: "test".into(),
        issued_at_ms: now,
        expires_at_ms: now + ttl_ms,
    })
}

/// `GET path` on the node with `client` and `ticket`: the body, or the
/// error.
async fn get(
    client: &NodeApiClient,
    label: &str,
    path: &str,
    ticket: Option<&str>,
) -> Result<String, ClientError> {
    let node = NodeName::new(NODE).unwrap();
    let mut s = client.get(&node, label, path, ticket).await?;
    let mut body = Vec::new();
    while let Some(c) = s.next_chunk().await {
        body.extend_from_slice(&c?);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn status(r: Result<String, ClientError>) -> (u16, String) {
    match r {
        Ok(b) => (200, b),
        Err(e) => (e.status().unwrap_or(0), e.to_string()),
    }
}

#[test]
fn console_streams_need_a_ticket_and_go_through_the_coordinator() -> Result<()> {
    let cloud = SecureCloud::start()?;
    let admin = &cloud.admin;
    admin.json(&[
        "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
    ])?;
    let alice = cloud.member("alice", "team-a")?;
    let bob = cloud.member("bob", "team-b")?;
    alice.json(&["image", "create", "cirros"])?;
    alice.json(&["network", "create", "net1", "--cidr", "10.20.0.0/24"])?;

    let cred = cloud.node_credential()?;
    let mut opts = cloud.agent_opts(NODE, &cred)?;
    opts.extra_args
        .extend(["--node-api-listen".into(), "127.0.0.1:0".into()]);
    let agent = Agent::start(opts)?;
    let node = wait_for(Duration::from_secs(60), "node-1 registered", || {
        let nodes = list_items(&admin.json(&["node", "list"])?)?;
        Ok(nodes
            .into_iter()
            .find(|n| n["name"] == NODE)
            .ok_or("absent"))
    })?;
    let label = node["labels"][nubo_common::model::NODE_API_LABEL]
        .as_str()
        .context("no node API label")?
        .to_string();
    assert!(label.starts_with("https://"), "node API not TLS: {label}");
    let hostport = NodeApiAddr::parse(&label)?.host_port().to_string();

    alice.json(&[
        "server",
        "create",
        "vm",
        "--wait",
        "--flavor",
        "tiny",
        "--image",
        "cirros",
        "--network",
        "net1",
    ])?;
    let vm: Value = alice.json(&["server", "show", "vm"])?;
    let id: InstanceId = vm["id"].as_str().context("server id")?.parse()?;
    std::fs::create_dir_all(agent.console_path(&id.to_string()).parent().unwrap())?;
    std::fs::write(
        agent.console_path(&id.to_string()),
        "Booting nbt guest\nNUBO-CONSOLE-MARK\n",
    )?;

    // The owner: through the coordinator, which relays the node's stream.
    let (ok, out, err) = cli_out(&alice, &["server", "console", "vm"])?;
    assert!(ok && out.contains("NUBO-CONSOLE-MARK"), "{out}{err}");
    // Another project's member: the server does not exist for them.
    let (ok, out, err) = cli_out(&bob, &["server", "console", &id.to_string()])?;
    assert!(!ok && !out.contains("NUBO-CONSOLE-MARK"), "{out}");
    assert!(err.contains("not found"), "{err}");

    // The audit trail: who opened which, on which node, with which ticket;
    // and who was refused.
    let audit = list_items(&admin.json(&["audit", "list"])?)?;
    let issued = audit
        .iter()
        .find(|r| r["user"] == "alice" && r["action"] == "servers.stream-ticket")
        .with_context(|| format!("no ticket record in {audit:#?}"))?;
    let what = issued["resource"].as_str().unwrap_or_default();
    assert!(
        what.contains(&format!("server {id} console on node {NODE}, ticket ")),
        "{issued}"
    );
    assert!(
        audit.iter().any(|r| r["user"] == "bob"
            && r["action"] == "servers.console"
            && r["outcome"] == "NotFound"),
        "bob's refusal not audited: {audit:#?}"
    );
    assert!(!audit
        .iter()
        .any(|r| r["user"] == "bob" && r["action"] == "servers.stream-ticket"));
    // The node logged who the stream was for.
    assert!(agent.current_log().contains("node API stream opened"));
    assert!(agent.current_log().contains("alice@"));

    // Straight to the node, as a cluster member (the coordinator's
    // certificate) but without the coordinator's ticket.
    let certs = cloud.etcd.certs();
    let (crt, key) = certs.client("coordinator");
    let member = NodeApiClient::with_tls(&TlsFiles {
        ca: certs.ca(),
        cert: crt,
        key,
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let path = nubo_nodeapi::console_path(&id, false);
    let (code, body) = status(rt.block_on(get(&member, &label, &path, None)));
    assert_eq!(code, 401, "no ticket: {body}");
    assert!(body.contains("ticket is required"), "{body}");

    // Tickets signed with the real key, refused for what they are not.
    let signer = stored_signer(&cloud)?;
    let other = InstanceId::new_random();
    let (code, body) = status(rt.block_on(get(
        &member,
        &label,
        &path,
        Some(&ticket(&signer, other, 15_000)),
    )));
    assert_eq!(code, 403, "another instance's ticket: {body}");
    assert!(body.contains("not this stream"), "{body}");
    let expired = ticket(&signer, id, 1);
    std::thread::sleep(Duration::from_millis(5));
    let (code, body) = status(rt.block_on(get(&member, &label, &path, Some(&expired))));
    assert_eq!(code, 403, "expired: {body}");
    assert!(body.contains("expired"), "{body}");
    let once = ticket(&signer, id, 15_000);
    let (code, body) = status(rt.block_on(get(&member, &label, &path, Some(&once))));
    assert_eq!(code, 200, "a valid ticket: {body}");
    assert!(body.contains("NUBO-CONSOLE-MARK"), "{body}");
    let (code, body) = status(rt.block_on(get(&member, &label, &path, Some(&once))));
    assert_eq!(code, 403, "reused: {body}");
    assert!(body.contains("already used"), "{body}");
    // A ticket of another key (not the coordinators').
    let (forger, _) = TicketSigner::generate()?;
    let (code, body) = status(rt.block_on(get(
        &member,
        &label,
        &path,
        Some(&ticket(&forger, id, 15_000)),
    )));
    assert_eq!(code, 403, "forged: {body}");

    // Without a certificate of the cluster CA nothing is answered, not even
    // the etcd status the fencing checks read (real curl: TLS without a
    // client certificate, and plain HTTP).
    for url in [
        format!("https://{hostport}/v1/etcd-status"),
        format!("https://{hostport}{path}"),
        format!("http://{hostport}/v1/etcd-status"),
    ] {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "-k", &url])
            .output()?;
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{url} answered without a client certificate: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // With the CA and a cluster certificate (what peer witnesses and the
    // unfence check present): answered.
    let st = rt.block_on(member.etcd_status(
        &NodeName::new(NODE).unwrap(),
        &label,
        Duration::from_secs(5),
    ))?;
    assert_eq!(st.node.as_str(), NODE);
    // A client dialling the address as another node refuses the answer.
    let e = rt
        .block_on(member.etcd_status(
            &NodeName::new("node-2").unwrap(),
            &label,
            Duration::from_secs(5),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    Ok(())
}
