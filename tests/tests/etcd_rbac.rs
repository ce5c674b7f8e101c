//! etcd's own permissions (issue 14): a real 3-member etcd with
//! `--client-cert-auth` and authentication enabled by `nubo-coordinator etcd-auth enable`, two
//! nodes enrolled by `nubo-coordinator node enroll`. With node n1's
//! certificate, through the etcd client and through `etcdctl`, every read
//! and write outside its role is refused with "permission denied", while
//! its own keys work and the coordinator reads everything. Then
//! `nubo-coordinator node revoke n1`: new requests are refused at once
//! (etcd and the coordinator keep running), the alive lease is gone, a
//! watch opened before keeps streaming until its connection closes (what
//! etcd 3.4 does: a watch's permission is checked when it is created),
//! and restarting the members one at a time cuts it for good.
//!
//! Needs the binaries: `cargo build --bins` before `cargo test -p nubo-tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use etcd_client::{GetOptions, PutOptions, WatchOptions, WatchStream};
use nubo_common::keys;
use nubo_common::model::UserName;
use nubo_common::{InstanceId, NetworkId, NodeName};
use nubo_tests::tls::{ClientFiles, TlsEtcd};

/// Fails unless `r` is etcd's "permission denied".
fn denied<T: std::fmt::Debug>(what: &str, r: Result<T, etcd_client::Error>) -> Result<()> {
    match r {
        Ok(v) => anyhow::bail!("{what}: allowed ({v:?})"),
        Err(e) => {
            ensure!(
                e.to_string().contains("permission denied"),
                "{what}: refused, but not for permission: {e}"
            );
            Ok(())
        }
    }
}

/// Fails unless `etcdctl` with `files` refuses `args` for permission.
fn etcdctl_denied(etcd: &TlsEtcd, files: &ClientFiles, args: &[&str]) -> Result<()> {
    let out = etcd.etcdctl_with(Some(files), args)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("permission denied"),
        "etcdctl {args:?}: {} / {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// `etcdctl` with `files` runs `args`; returns stdout.
fn etcdctl_ok(etcd: &TlsEtcd, files: &ClientFiles, args: &[&str]) -> Result<String> {
    let out = etcd.etcdctl_with(Some(files), args)?;
    ensure!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn prefix() -> Option<GetOptions> {
    Some(GetOptions::new().with_prefix())
}

/// The next watch response carrying an event (or the cancellation), at
/// most `wait`; `None` = the stream ended or broke.
async fn next_event(
    s: &mut WatchStream,
    wait: Duration,
) -> Result<Option<etcd_client::WatchResponse>> {
    loop {
        let m = tokio::time::timeout(wait, s.message())
            .await
            .context("no watch response in time")?;
        match m {
            Ok(Some(r)) if r.events().is_empty() && !r.canceled() => continue,
            Ok(Some(r)) => return Ok(Some(r)),
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}

fn event_keys(r: &etcd_client::WatchResponse) -> Vec<String> {
    r.events()
        .iter()
        .filter_map(|e| {
            e.kv()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        })
        .collect()
}

/// `etcdctl watch` running in the background; its output lines arrive on
/// a channel. Killed (by pid) on drop.
struct EtcdctlWatch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl EtcdctlWatch {
    fn start(etcd: &TlsEtcd, files: &ClientFiles, prefix: &str, rev: i64) -> Result<Self> {
        let mut child = etcd
            .etcdctl_command(Some(files))
            .args(["watch", "--prefix", prefix, &format!("--rev={rev}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting etcdctl watch")?;
        let (tx, lines) = mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self { child, lines })
    }

    /// Waits for a line containing `needle`.
    fn line(&self, needle: &str, wait: Duration) -> Result<()> {
        let end = std::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(()),
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        anyhow::bail!("etcdctl watch printed no {needle:?} in {wait:?}: {seen:?}")
    }

    /// Waits until the process exits.
    fn exited(&mut self, wait: Duration) -> Result<std::process::ExitStatus> {
        let end = std::time::Instant::now() + wait;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            ensure!(
                std::time::Instant::now() < end,
                "etcdctl watch still running after {wait:?}"
            );
            // Polls the process table (no event to wait on for a child's exit).
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdctlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_reaches_only_its_own_keys_until_revoked() -> Result<()> {
    let mut etcd = TlsEtcd::start_cluster(3)?;
    etcd.enable_auth()?;
    let n1 = NodeName::new("n1")?;
    let n2 = NodeName::new("n2")?;
    let n1_files = etcd.enroll("n1")?;
    etcd.enroll("n2")?;
    // Enrolling again (rotation) is accepted and changes nothing in etcd.
    let n1_files_again = etcd.enroll("n1")?;
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&n1_files.key)?.permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600, "the node's key file");

    // What the coordinator writes (as etcd user `coordinator`).
    let mut coord = etcd.client("coordinator").await?;
    let (i1, i2) = (InstanceId::new_random(), InstanceId::new_random());
    let net = NetworkId::new_random();
    let alice = keys::user(&UserName::new("alice")?);
    let seeded = [
        (keys::token_key(), r#"{"keys":["secret"]}"#.to_string()),
        (alice.clone(), r#"{"hash":"$argon2id$v=19$..."}"#.into()),
        (keys::instance(&i1), r#"{"user_data":"n1-secret"}"#.into()),
        (keys::instance(&i2), r#"{"user_data":"n2-secret"}"#.into()),
        (keys::assignment(&n1, &i1), "{}".into()),
        (keys::assignment(&n2, &i2), "{}".into()),
        (
            keys::node_spec(&n1, &i1),
            r#"{"user_data":"n1-secret"}"#.into(),
        ),
        (
            keys::node_spec(&n2, &i2),
            r#"{"user_data":"n2-secret"}"#.into(),
        ),
        (keys::node(&n2), "{}".into()),
        (keys::node_usage(&n1), "{}".into()),
        (keys::instance_status(&n2, &i2), "{}".into()),
        (keys::network(&net), "{}".into()),
    ];
    for (k, v) in &seeded {
        coord.put(k.as_str(), v.as_str(), None).await?;
    }
    // Positive control: the coordinator reads everything back.
    let all = coord.get(keys::ROOT, prefix()).await?;
    for (k, _) in &seeded {
        assert!(
            all.kvs().iter().any(|kv| kv.key() == k.as_bytes()),
            "the coordinator does not see {k}"
        );
    }

    let mut node = etcd.client_with(&n1_files).await?;
    // Reads outside its role.
    for (what, key, opts) in [
        ("the token key", keys::token_key(), None),
        ("a password hash", alice.clone(), None),
        ("every user", keys::users_prefix(), prefix()),
        (
            "another node's assignments",
            keys::assignments_prefix(&n2),
            prefix(),
        ),
        ("another node's copies", keys::host_prefix(&n2), prefix()),
        (
            "another node's instance's user data",
            keys::instance(&i2),
            None,
        ),
        ("its own instance's spec", keys::instance(&i1), None),
        (
            "another node's statuses",
            keys::node_owned_prefix(&n2),
            prefix(),
        ),
        ("everything", keys::ROOT.to_string(), prefix()),
    ] {
        denied(what, node.get(key.as_str(), opts).await)?;
    }
    // Writes outside its role.
    for (what, key) in [
        ("another node's alive key", keys::node_alive(&n2)),
        ("another node's record", keys::node(&n2)),
        ("another node's status", keys::instance_status(&n2, &i2)),
        ("an instance spec", keys::instance(&i1)),
        ("its own spec copy", keys::node_spec(&n1, &i1)),
        ("its own assignment", keys::assignment(&n1, &i1)),
        ("its own usage", keys::node_usage(&n1)),
        ("its admin switch", keys::node_admin(&n1)),
        ("a network", keys::network(&net)),
    ] {
        denied(what, node.put(key.as_str(), "{}", None).await)?;
    }
    denied(
        "deleting another node's status",
        node.delete(keys::instance_status(&n2, &i2), None).await,
    )?;
    // Positive controls: its own keys and the shared topology.
    let own = node.get(keys::assignments_prefix(&n1), prefix()).await?;
    assert_eq!(own.kvs().len(), 1, "its own assignment");
    let copy = node.get(keys::host_prefix(&n1), prefix()).await?;
    assert_eq!(copy.kvs()[0].value_str()?, r#"{"user_data":"n1-secret"}"#);
    assert_eq!(node.get(keys::network(&net), None).await?.kvs().len(), 1);
    // The peer list its witness and VTEPs come from: every node record.
    assert!(!node.get(keys::node(&n2), None).await?.kvs().is_empty());
    assert!(node.get(keys::nodes_prefix(), prefix()).await?.count() >= 2);
    node.put(keys::instance_status(&n1, &i1), "{}", None)
        .await?;
    node.put(keys::guest_stop(&n1, &i1), "{}", None).await?;
    node.put(keys::node(&n1), "{}", None).await?;
    let lease = node.lease_grant(30, None).await?.id();
    node.put(
        keys::node_alive(&n1),
        "{}",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await?;
    // The rotated certificate is the same user.
    let mut rotated = etcd.client_with(&n1_files_again).await?;
    rotated
        .put(keys::instance_status(&n1, &i1), "{}", None)
        .await?;
    denied(
        "the token key with the rotated certificate",
        rotated.get(keys::token_key(), None).await,
    )?;

    // The same through etcdctl, the operator's tool.
    let (get, put, pre, v) = ("get", "put", "--prefix", "{}");
    for args in [
        [get, &keys::token_key(), ""],
        [get, &alice, ""],
        [get, pre, &keys::assignments_prefix(&n2)],
        [get, pre, &keys::host_prefix(&n2)],
        [get, &keys::instance(&i2), ""],
        [put, &keys::node_alive(&n2), v],
        [put, &keys::instance_status(&n2, &i2), v],
        [put, &keys::instance(&i1), v],
        [put, &keys::node_usage(&n1), v],
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        etcdctl_denied(&etcd, &n1_files, &args)?;
    }
    let out = etcdctl_ok(
        &etcd,
        &n1_files,
        &["get", "--prefix", &keys::assignments_prefix(&n1)],
    )?;
    assert!(out.contains(&keys::assignment(&n1, &i1)), "{out}");
    etcdctl_ok(
        &etcd,
        &n1_files,
        &["put", &keys::instance_status(&n1, &i1), "{}"],
    )?;
    // A certificate of the CA whose CN is no etcd user is refused too.
    let cli = etcd.etcdctl_as(Some("cli"), &["get", &keys::network(&net)])?;
    assert!(!cli.status.success(), "an unknown user was served");
    // The operator (root) reads everything.
    let root = etcd.root()?;
    let out = etcdctl_ok(&etcd, &root, &["get", &keys::token_key()])?;
    assert!(out.contains("secret"), "{out}");

    // Revocation. Watches n1 opens now (the etcd client's and etcdctl's),
    // from the next revision, and a put they see (control).
    let next = coord
        .get(keys::ROOT, prefix())
        .await?
        .header()
        .context("header")?
        .revision()
        + 1;
    let mut watch = node
        .watch(
            keys::networks_prefix(),
            Some(WatchOptions::new().with_prefix().with_start_revision(next)),
        )
        .await?;
    let mut etcdctl_watch = EtcdctlWatch::start(&etcd, &n1_files, &keys::networks_prefix(), next)?;
    let net2 = NetworkId::new_random();
    coord.put(keys::network(&net2), "{}", None).await?;
    let r = next_event(&mut watch, Duration::from_secs(10))
        .await?
        .context("the watch ended before revocation")?;
    assert_eq!(event_keys(&r), [keys::network(&net2)]);
    etcdctl_watch.line(&keys::network(&net2), Duration::from_secs(10))?;

    let said = etcd.revoke("n1")?;
    assert!(
        said.contains("deleted") && said.contains("revoked"),
        "{said}"
    );
    // New requests, on the connection already open and on new ones, are
    // refused; etcd and the coordinator's connection keep working.
    denied(
        "a read after revocation",
        node.get(keys::network(&net), None).await,
    )?;
    denied(
        "its own status after revocation",
        node.put(keys::instance_status(&n1, &i1), "{}", None).await,
    )?;
    etcdctl_denied(&etcd, &n1_files, &["get", &keys::network(&net)])?;
    denied(
        "a new watch after revocation",
        match next_event(
            &mut node
                .watch(
                    keys::networks_prefix(),
                    Some(WatchOptions::new().with_prefix()),
                )
                .await?,
            Duration::from_secs(10),
        )
        .await?
        {
            Some(r) if r.canceled() => {
                Err(etcd_client::Error::WatchError(r.cancel_reason().into()))
            }
            other => Ok(other.map(|r| event_keys(&r))),
        },
    )?;
    assert!(
        coord
            .get(keys::node_alive(&n1), None)
            .await?
            .kvs()
            .is_empty(),
        "the alive key outlived the revocation (its lease is revoked)"
    );
    // etcd 3.4 grants a lease to any certificate of the CA, but the node
    // can no longer put its alive key on it.
    let lease = node.lease_grant(30, None).await?.id();
    denied(
        "its alive key after revocation",
        node.put(
            keys::node_alive(&n1),
            "{}",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await,
    )?;
    assert!(coord.get(keys::token_key(), None).await?.count() == 1);

    // etcd 3.4 checks a watch's permission when it is created: the watch
    // opened before the revocation keeps streaming…
    let net3 = NetworkId::new_random();
    coord.put(keys::network(&net3), "{}", None).await?;
    let r = next_event(&mut watch, Duration::from_secs(10))
        .await?
        .context("the old watch ended by itself")?;
    assert_eq!(
        event_keys(&r),
        [keys::network(&net3)],
        "etcd stopped an open watch of a revoked user: update docs/operator-guide.md"
    );
    etcdctl_watch.line(&keys::network(&net3), Duration::from_secs(10))?;
    // …until its connection closes: restarting the members one by one
    // (quorum kept) cuts it, and the client cannot open it again.
    etcd.restart()?;
    let after = next_event(&mut watch, Duration::from_secs(20)).await?;
    assert!(
        after.is_none() || after.as_ref().is_some_and(|r| r.canceled()),
        "the old watch survived a member restart: {after:?}"
    );
    // etcdctl re-creates its watch on another member: refused, it gives
    // up.
    let st = etcdctl_watch.exited(Duration::from_secs(20))?;
    assert!(!st.success());
    etcdctl_watch.line("permission denied", Duration::from_secs(5))?;
    let mut node = etcd.client_with(&n1_files).await?;
    denied(
        "a read after the restart",
        node.get(keys::network(&net), None).await,
    )?;
    let mut coord = etcd.client("coordinator").await?;
    assert_eq!(coord.get(keys::network(&net3), None).await?.kvs().len(), 1);

    // Revoking again is a no-op that says so; n2 is untouched.
    let said = etcd.revoke("n1")?;
    assert!(said.contains("absent"), "{said}");
    let mut n2c = etcd
        .client_with(&ClientFiles {
            cert: etcd.certs().dir().join("node-n2/etcd-client.crt"),
            key: etcd.certs().dir().join("node-n2/etcd-client.key"),
        })
        .await?;
    assert_eq!(
        n2c.get(keys::host_prefix(&n2), prefix()).await?.kvs().len(),
        1
    );
    Ok(())
}

/// Enrolment refuses bad input clearly, leaving nothing behind: a bad node
/// name, a CA key that is not the CA's, an administrator certificate that
/// is not etcd's root. Control: the same command with good input enrols.
#[test]
fn enrolment_refuses_bad_input_with_a_clear_error() -> Result<()> {
    let etcd = TlsEtcd::start()?;
    etcd.enable_auth()?;
    let dir = etcd.certs().dir().to_path_buf();
    let other = nubo_tests::tls::Certs::generate(&[])?;
    let enroll = |node: &str, ca_key: &std::path::Path, out: &str| {
        vec![
            "node".to_string(),
            "enroll".into(),
            node.into(),
            "--ca-cert".into(),
            etcd.certs().ca().display().to_string(),
            "--ca-key".into(),
            ca_key.display().to_string(),
            "--out".into(),
            dir.join(out).display().to_string(),
        ]
    };
    let run = |files: Option<&ClientFiles>, args: &[String]| -> Result<(bool, String)> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = match files {
            Some(f) => etcd.admin_command_as(f, &args)?,
            None => etcd.admin_command(&args)?,
        };
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let users = || -> Result<String> {
        Ok(String::from_utf8_lossy(
            &etcd
                .etcdctl_with(Some(&etcd.root()?), &["user", "list"])?
                .stdout,
        )
        .into_owned())
    };

    let (ok, out) = run(None, &enroll("bad/name", &dir.join("ca.key"), "bad"))?;
    assert!(!ok && out.contains("node name"), "{out}");
    let (ok, out) = run(None, &enroll("n3", &other.dir().join("ca.key"), "n3"))?;
    assert!(
        !ok && out.contains("does not belong to the CA certificate"),
        "{out}"
    );
    assert!(
        !dir.join("n3").exists(),
        "files written for a refused enrolment"
    );
    assert!(!users()?.contains("nubo-node-n3"), "{}", users()?);
    let (cert, key) = etcd.certs().client("coordinator");
    let (ok, out) = run(
        Some(&ClientFiles { cert, key }),
        &enroll("n3", &dir.join("ca.key"), "n3"),
    )?;
    assert!(
        !ok && out.contains("creating etcd user and role nubo-node-n3")
            && out.contains("permission denied"),
        "{out}"
    );
    assert!(
        !dir.join("n3").exists(),
        "files written for a refused enrolment"
    );
    // Control: the root certificate and the cluster CA's key enrol n3.
    let (ok, out) = run(None, &enroll("n3", &dir.join("ca.key"), "n3"))?;
    assert!(ok, "{out}");
    assert!(users()?.contains("nubo-node-n3"));
    assert!(dir.join("n3/etcd-client.key").exists());

    // Enrolling again brings a hand-widened role back to the node's grants.
    let root = etcd.root()?;
    let n3 = ClientFiles {
        cert: dir.join("n3/etcd-client.crt"),
        key: dir.join("n3/etcd-client.key"),
    };
    let role = |args: &[&str]| -> Result<String> {
        let out = etcd.etcdctl_with(Some(&root), args)?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let granted = role(&["role", "get", "nubo-node-n3"])?;
    role(&[
        "role",
        "grant-permission",
        "nubo-node-n3",
        "--prefix=true",
        "read",
        keys::PRIVATE,
    ])?;
    let widened = etcd.etcdctl_with(Some(&n3), &["get", &keys::token_key()])?;
    assert!(widened.status.success(), "the widened role (control)");
    let (ok, out) = run(None, &enroll("n3", &dir.join("ca.key"), "n3"))?;
    assert!(ok, "{out}");
    assert_eq!(role(&["role", "get", "nubo-node-n3"])?, granted);
    etcdctl_denied(&etcd, &n3, &["get", &keys::token_key()])?;
    Ok(())
}
