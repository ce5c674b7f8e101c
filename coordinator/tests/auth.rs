//! `auth = "token"`: bootstrap, token issue, authentication and per-project
//! authorization, against a real etcd with the coordinator in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::req::{del, get};
use common::res;
use common::{channel, created, issue_token, put_project, put_user, register_seen, server_req};
use nubo_common::keys;
use nubo_common::model::{encode, Role, TokenKeySet, UserName};
use nubo_common::proto as pb;
use nubo_common::ProjectId;
use nubo_coordinator::api::{bootstrap, Bootstrapped};
use nubo_coordinator::{AuthMode, Config, Coordinator};
use nubo_identity::{Claims, Passwords, TokenSigner};
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::Code;

fn cheap() -> Passwords {
    Passwords::with_params(64, 1, 1).unwrap()
}

struct Api {
    tokens: pb::tokens_client::TokensClient<Channel>,
    flavors: pb::flavors_client::FlavorsClient<Channel>,
    images: pb::images_client::ImagesClient<Channel>,
    networks: pb::networks_client::NetworksClient<Channel>,
    ports: pb::ports_client::PortsClient<Channel>,
    servers: pb::servers_client::ServersClient<Channel>,
    nodes: pb::nodes_client::NodesClient<Channel>,
}

async fn api(c: &Coordinator) -> Api {
    let ch = channel(c).await;
    Api {
        tokens: pb::tokens_client::TokensClient::new(ch.clone()),
        flavors: pb::flavors_client::FlavorsClient::new(ch.clone()),
        images: pb::images_client::ImagesClient::new(ch.clone()),
        networks: pb::networks_client::NetworksClient::new(ch.clone()),
        ports: pb::ports_client::PortsClient::new(ch.clone()),
        servers: pb::servers_client::ServersClient::new(ch.clone()),
        nodes: pb::nodes_client::NodesClient::new(ch),
    }
}

/// Projects p1, p2; alice member of p1, bob member of p2, rita reader of p1.
async fn add_people(etcd: &Etcd) {
    let hash = cheap().hash("pw").unwrap();
    for p in ["p1", "p2"] {
        put_project(etcd, p).await;
    }
    for (u, p, role) in [
        ("alice", "p1", Role::Member),
        ("bob", "p2", Role::Member),
        ("rita", "p1", Role::Reader),
    ] {
        put_user(etcd, u, &hash, Some(p), role).await;
    }
}

async fn login(a: &mut Api, user: &str, password: &str) -> String {
    issue_token(&mut a.tokens, user, password).await
}

/// Flavor `name` (1 GiB disk), made by the admin token `root`.
async fn create_flavor(a: &mut Api, root: &str, name: &str, vcpus: u32, ram_mb: u64) {
    a.flavors
        .create(req(
            root,
            pb::CreateFlavorRequest {
                name: name.into(),
                vcpus,
                ram_mb,
                disk_gb: 1,
                display_name: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

/// Image "cirros" (qcow2, no data) in the token's project.
async fn create_image(a: &mut Api, tok: &str) {
    a.images
        .create(req(
            tok,
            pb::CreateImageRequest {
                name: "cirros".into(),
                disk_format: "qcow2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

/// Waits until the admin `root` lists `n` nodes.
async fn wait_listed(a: &mut Api, root: &str, n: usize) {
    for _ in 0..200 {
        let l = a
            .nodes
            .list(req(root, pb::ListRequest::default()))
            .await
            .unwrap()
            .into_inner();
        if l.nodes.len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{n} nodes not listed");
}

/// A member's image, network, port and server in its own project.
async fn populate(a: &mut Api, tok: &str) -> (String, String, String) {
    create_image(a, tok).await;
    let net = a
        .networks
        .create(req(
            tok,
            pb::CreateNetworkRequest {
                name: "net".into(),
                cidr: "10.1.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let port = a
        .ports
        .create(req(
            tok,
            pb::CreatePortRequest {
                name: "port".into(),
                network_ref: "net".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let r = a
        .servers
        .create(req(tok, server_req("vm", &[], 1)))
        .await
        .unwrap()
        .into_inner();
    (created(&r, 0).id, net.id, port.id)
}

async fn server_names(a: &mut Api, tok: &str, all: bool) -> Vec<String> {
    let mut names: Vec<String> = a
        .servers
        .list(req(
            tok,
            pb::ListServersRequest {
                all_projects: all,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .servers
        .into_iter()
        .map(|s| format!("{}/{}", s.project, s.name))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_project_isolation() {
    let etcd = Etcd::start().unwrap();
    let store = etcd.store().await.unwrap();
    let admin = UserName::new("admin").unwrap();
    assert_eq!(
        bootstrap(&store, &admin, "adminpw", &cheap())
            .await
            .unwrap(),
        Bootstrapped::Created
    );
    // A second bootstrap changes nothing.
    assert!(matches!(
        bootstrap(&store, &admin, "other", &cheap()).await.unwrap(),
        Bootstrapped::AlreadyDone(k) if k.len() == 5
    ));
    add_people(&etcd).await;
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = AuthMode::Token;
    let c = nubo_coordinator::start(cfg).await.unwrap();
    let mut a = api(&c).await;

    // Authentication.
    let e = a
        .tokens
        .issue(pb::IssueTokenRequest {
            user: "admin".into(),
            password: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let root = login(&mut a, "admin", "adminpw").await;
    let alice = login(&mut a, "alice", "pw").await;
    let bob = login(&mut a, "bob", "pw").await;
    let rita = login(&mut a, "rita", "pw").await;
    let list = || pb::ListServersRequest::default();
    let e = a.servers.list(req("", list())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = a.servers.list(req("x.y", list())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let forged = TokenSigner::new(&[7; 32]).unwrap().sign(&Claims::new(
        admin.clone(),
        ProjectId::new("admin").unwrap(),
        vec![Role::Admin],
        chrono::Utc::now(),
        600,
    ));
    let e = a.servers.list(req(&forged, list())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let set: TokenKeySet = common::get(&etcd, &keys::token_key()).await.unwrap();
    let expired = TokenSigner::from_key_set(&set).unwrap().sign(&Claims::new(
        admin.clone(),
        ProjectId::new("admin").unwrap(),
        vec![Role::Admin],
        chrono::Utc::now() - chrono::Duration::hours(2),
        600,
    ));
    let e = a.servers.list(req(&expired, list())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());

    // Cloud-wide kinds are admin-only.
    let flavor = pb::CreateFlavorRequest {
        name: "m1.small".into(),
        vcpus: 1,
        ram_mb: 512,
        disk_gb: 1,
        display_name: String::new(),
        ..Default::default()
    };
    let e = a
        .flavors
        .create(req(&alice, flavor.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = a
        .nodes
        .list(req(&alice, pb::ListRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    a.flavors.create(req(&root, flavor)).await.unwrap();
    a.flavors.get(req(&alice, get("m1.small"))).await.unwrap();
    register_seen(&etcd, &c, "n0", res(64, 64 * 1024, 1000), "nova").await;
    for _ in 0..100 {
        let n = a
            .nodes
            .list(req(&root, pb::ListRequest::default()))
            .await
            .unwrap()
            .into_inner();
        if !n.nodes.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let (sa, na, pa) = populate(&mut a, &alice).await;
    let (sb, nb, pb_) = populate(&mut a, &bob).await;

    // Each member sees only its project.
    assert_eq!(server_names(&mut a, &alice, false).await, ["p1/vm"]);
    assert_eq!(server_names(&mut a, &bob, false).await, ["p2/vm"]);
    // all_projects is only honoured for a cloud admin.
    assert_eq!(server_names(&mut a, &alice, true).await, ["p1/vm"]);
    assert_eq!(server_names(&mut a, &root, true).await, ["p1/vm", "p2/vm"]);
    // The reader reads.
    assert_eq!(server_names(&mut a, &rita, false).await, ["p1/vm"]);

    // Cross-project: NotFound, by id, and by naming the other project.
    let e = a.servers.get(req(&alice, get(&sb))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .servers
        .get(req(
            &alice,
            pb::GetRequest {
                r#ref: "vm".into(),
                project: "p2".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(!e.message().contains("p2"), "{}", e.message());
    let e = a.servers.delete(req(&alice, del(&sb))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a.networks.get(req(&bob, get(&na))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a.networks.delete(req(&bob, del(&na))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a.ports.get(req(&bob, get(&pa))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a.ports.delete(req(&bob, del(&pa))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Attaching to the other project's network or port: NotFound too.
    let e = a
        .ports
        .create(req(
            &bob,
            pb::CreatePortRequest {
                name: "sneak".into(),
                network_ref: na.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    for (networks, ports) in [(vec![na.clone()], vec![]), (vec![], vec![pa.clone()])] {
        let r = a
            .servers
            .create(req(
                &bob,
                pb::CreateServerRequest {
                    networks,
                    ports,
                    ..server_req("sneak", &[], 1)
                },
            ))
            .await;
        match r {
            Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            Ok(r) => panic!("bob attached to p1's network/port: {:?}", r.into_inner()),
        }
    }
    let e = a
        .ports
        .update(req(
            &bob,
            pb::UpdatePortRequest {
                r#ref: pa.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = a
        .networks
        .list(req(
            &alice,
            pb::ListRequest {
                project: "p2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let nets = a
        .networks
        .list(req(&alice, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .networks;
    assert_eq!(nets.len(), 1);
    assert_eq!(nets[0].id, na);

    // The reader may not mutate.
    let e = a
        .networks
        .create(req(
            &rita,
            pb::CreateNetworkRequest {
                name: "x".into(),
                cidr: "10.2.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = a.servers.delete(req(&rita, del(&sa))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    // The admin sees and deletes in other projects by naming them.
    let in_p2 = |r: &str| pb::GetRequest {
        r#ref: r.into(),
        project: "p2".into(),
    };
    a.servers.get(req(&root, in_p2(&sb))).await.unwrap();
    a.networks.get(req(&root, in_p2(&nb))).await.unwrap();
    a.ports.get(req(&root, in_p2(&pb_))).await.unwrap();
    a.servers
        .delete(req(
            &root,
            pb::DeleteRequest {
                r#ref: sb.clone(),
                project: "p2".into(),
            },
        ))
        .await
        .unwrap();
    // Owners delete their own.
    a.servers.delete(req(&alice, del(&sa))).await.unwrap();
    a.ports.delete(req(&alice, del(&pa))).await.unwrap();

    // The audit trail: who created and deleted what, and the refusals.
    let ch = channel(&c).await;
    let mut audit = pb::audit_client::AuditClient::new(ch);
    let e = audit
        .list(req(&alice, pb::ListRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let trail: Vec<(String, String, String, String)> = audit
        .list(req(&root, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| (r.user, r.action, r.resource_id, r.outcome))
        .collect();
    let has = |u: &str, act: &str, res: &str, out: &str| {
        trail.iter().any(|t| {
            t == &(
                u.to_string(),
                act.to_string(),
                res.to_string(),
                out.to_string(),
            )
        })
    };
    assert!(has("alice", "servers.create", "vm", "ok"), "{trail:#?}");
    assert!(has("bob", "networks.create", "net", "ok"), "{trail:#?}");
    assert!(has("alice", "servers.delete", &sa, "ok"), "{trail:#?}");
    assert!(has("admin", "servers.delete", &sb, "ok"), "{trail:#?}");
    assert!(
        has("alice", "servers.delete", &sb, "NotFound"),
        "{trail:#?}"
    );
    assert!(
        has("rita", "networks.create", "x", "PermissionDenied"),
        "{trail:#?}"
    );
    assert!(
        has("alice", "flavors.create", "m1.small", "PermissionDenied"),
        "{trail:#?}"
    );
    assert!(!trail
        .iter()
        .any(|t| t.1.ends_with(".list") || t.1.ends_with(".get")));
    // Retention keeps the newest.
    let pruned = nubo_coordinator::operations::audit::prune(&store, 3)
        .await
        .unwrap();
    assert_eq!(pruned as usize, trail.len() - 3);
    let left = audit
        .list(req(&root, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(left.len(), 3);
    assert_eq!(left[2].resource_id, pa, "the newest is kept");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_mode_refuses_to_start_without_bootstrap() {
    let etcd = Etcd::start().unwrap();
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = AuthMode::Token;
    let e = match nubo_coordinator::start(cfg).await {
        Ok(_) => panic!("started without a token key"),
        Err(e) => e,
    };
    assert!(e.to_string().contains("bootstrap"), "{e}");
}

async fn token_cloud(etcd: &Etcd) -> (Coordinator, Api, String) {
    let store = etcd.store().await.unwrap();
    let admin = UserName::new("admin").unwrap();
    bootstrap(&store, &admin, "adminpw", &cheap())
        .await
        .unwrap();
    add_people(etcd).await;
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = AuthMode::Token;
    let c = nubo_coordinator::start(cfg).await.unwrap();
    let mut a = api(&c).await;
    let root = login(&mut a, "admin", "adminpw").await;
    (c, a, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_holds_under_concurrent_creates() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let alice = login(&mut a, "alice", "pw").await;
    let ch = channel(&c).await;
    let mut quotas = pb::quotas_client::QuotasClient::new(ch);
    let set = pb::SetQuotaRequest {
        project: "p1".into(),
        limits: Some(pb::QuotaSet {
            instances: Some(10),
            ..Default::default()
        }),
    };
    let e = quotas.set(req(&alice, set.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    quotas.set(req(&root, set)).await.unwrap();
    create_flavor(&mut a, &root, "m1.small", 1, 512).await;
    create_image(&mut a, &alice).await;
    for i in 0..4 {
        register_seen(
            &etcd,
            &c,
            &format!("n{i}"),
            res(64, 64 * 1024, 1000),
            "nova",
        )
        .await;
    }
    wait_listed(&mut a, &root, 4).await;
    let results = futures::future::join_all((0..50).map(|i| {
        let mut s = a.servers.clone();
        let tok = alice.clone();
        async move {
            s.create(req(&tok, server_req(&format!("vm{i}"), &[], 1)))
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
        }
    }))
    .await;
    let mut ids = Vec::new();
    for r in &results {
        match &r.server {
            Some(s) => ids.push(s.id.clone()),
            None => {
                assert_eq!(r.code, "ResourceExhausted", "{r:?}");
                assert!(
                    r.error
                        .starts_with("quota exceeded for instances in project \"p1\": limit 10"),
                    "{}",
                    r.error
                );
            }
        }
    }
    assert_eq!(ids.len(), 10, "{results:?}");
    let q = quotas.get(req(&alice, get(""))).await.unwrap().into_inner();
    assert_eq!(q.project, "p1");
    let u = q.usage.unwrap();
    assert_eq!(
        (u.instances, u.vcpus, u.ram_mb),
        (Some(10), Some(10), Some(5120))
    );
    // Bob cannot read p1's quota.
    let bob = login(&mut a, "bob", "pw").await;
    let e = quotas
        .get(req(
            &bob,
            pb::GetRequest {
                r#ref: String::new(),
                project: "p1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    futures::future::join_all(ids.iter().map(|id| {
        let mut s = a.servers.clone();
        let tok = alice.clone();
        async move { s.delete(req(&tok, del(id))).await.unwrap() }
    }))
    .await;
    let u = quotas
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .usage
        .unwrap();
    assert_eq!(
        (u.instances, u.vcpus, u.ram_mb),
        (Some(0), Some(0), Some(0))
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_credentials_issue_tokens() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, _root) = token_cloud(&etcd).await;
    let (secret, hash) = nubo_identity::appcred::new_secret();
    let cred = nubo_common::model::ApplicationCredential {
        id: nubo_common::model::AppCredId::new_random(),
        user: UserName::new("rita").unwrap(),
        project: ProjectId::new("p1").unwrap(),
        secret_hash: hash,
        expires_at: None,
        // rita is only a reader: the member role is not granted.
        roles: vec![Role::Member, Role::Reader],
        name: "old".into(),
        created_at: None,
    };
    let mut kv = etcd.client().await.unwrap();
    kv.put(keys::app_cred(&cred.id), encode(&cred), None)
        .await
        .unwrap();
    let issue = |secret: &str| pb::IssueTokenRequest {
        application_credential_id: cred.id.to_string(),
        application_credential_secret: secret.into(),
        ..Default::default()
    };
    let e = a.tokens.issue(issue("wrong")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let t = a.tokens.issue(issue(&secret)).await.unwrap().into_inner();
    assert_eq!((t.user.as_str(), t.project.as_str()), ("rita", "p1"));
    assert_eq!(t.roles, ["reader"]);
    a.servers
        .list(req(&t.token, pb::ListServersRequest::default()))
        .await
        .unwrap();
    let e = a
        .networks
        .create(req(
            &t.token,
            pb::CreateNetworkRequest {
                name: "n".into(),
                cidr: "10.3.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    c.shutdown().await.unwrap();
}

fn app_creds(
    c: &Channel,
) -> pb::application_credentials_client::ApplicationCredentialsClient<Channel> {
    pb::application_credentials_client::ApplicationCredentialsClient::new(c.clone())
}

fn new_cred(name: &str, roles: &[&str]) -> pb::CreateApplicationCredentialRequest {
    pb::CreateApplicationCredentialRequest {
        name: name.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expires_at: String::new(),
    }
}

async fn issue_with(a: &mut Api, id: &str, secret: &str) -> Result<pb::Token, tonic::Status> {
    a.tokens
        .issue(pb::IssueTokenRequest {
            application_credential_id: id.into(),
            application_credential_secret: secret.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_credentials_api_create_list_login_delete() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let ch = channel(&c).await;
    let mut ac = app_creds(&ch);
    let alice = login(&mut a, "alice", "pw").await;
    let bob = login(&mut a, "bob", "pw").await;
    let rita = login(&mut a, "rita", "pw").await;

    // Unauthenticated: refused.
    let e = ac.create(req("", new_cred("x", &[]))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // alice (member of p1): default = the token's roles; secret shown once.
    let cred = ac
        .create(req(&alice, new_cred("ci", &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cred.user.as_str(), cred.project.as_str()), ("alice", "p1"));
    assert_eq!(cred.roles, ["member"]);
    assert_eq!(cred.secret.len(), 43);
    // Stored hashed, never in clear.
    let mut kv = etcd.client().await.unwrap();
    let stored = kv
        .get(keys::app_cred(&cred.id.parse().unwrap()), None)
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(stored.kvs()[0].value()).into_owned();
    assert!(!raw.contains(&cred.secret), "{raw}");
    assert!(raw.contains("sha256:"), "{raw}");

    // More roles than the creator holds: refused; a subset is fine.
    for (tok, roles) in [(&alice, &["admin"][..]), (&rita, &["member"][..])] {
        let e = ac
            .create(req(tok, new_cred("up", roles)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    let ro = ac
        .create(req(&rita, new_cred("ro", &["reader"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ro.roles, ["reader"]);
    let e = ac
        .create(req(
            &alice,
            pb::CreateApplicationCredentialRequest {
                expires_at: "2001-01-01T00:00:00Z".into(),
                ..new_cred("old", &[])
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Each user lists only its own, without secrets; the admin sees all.
    let list = |all| pb::ListRequest {
        all_projects: all,
        ..Default::default()
    };
    let mine = ac
        .list(req(&alice, list(false)))
        .await
        .unwrap()
        .into_inner()
        .application_credentials;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, cred.id);
    assert!(mine[0].secret.is_empty());
    let bobs = ac.list(req(&bob, list(true))).await.unwrap().into_inner();
    assert!(bobs.application_credentials.is_empty());
    let all = ac.list(req(&root, list(true))).await.unwrap().into_inner();
    assert_eq!(all.application_credentials.len(), 2);

    // Login with it: alice's project and role.
    let t = issue_with(&mut a, &cred.id, &cred.secret).await.unwrap();
    assert_eq!((t.user.as_str(), t.project.as_str()), ("alice", "p1"));
    assert_eq!(t.roles, ["member"]);
    a.networks
        .create(req(
            &t.token,
            pb::CreateNetworkRequest {
                name: "by-cred".into(),
                cidr: "10.4.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let e = issue_with(&mut a, &cred.id, &ro.secret).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // A credential's token may not mint more credentials.
    let e = ac
        .create(req(&t.token, new_cred("more", &[])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Someone else's: NotFound; the owner deletes it, then it is useless.
    let e = ac.delete(req(&bob, del(&cred.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ac.delete(req(&rita, del(&cred.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ac.delete(req(&alice, del(&cred.id))).await.unwrap();
    let e = issue_with(&mut a, &cred.id, &cred.secret)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = ac.delete(req(&alice, del(&cred.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Audited.
    let trail: Vec<(String, String, String)> = pb::audit_client::AuditClient::new(ch)
        .list(req(&root, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| (r.user, r.action, r.outcome))
        .collect();
    for want in [
        ("alice", "applicationcredentials.create", "ok"),
        ("alice", "applicationcredentials.delete", "ok"),
        ("bob", "applicationcredentials.delete", "NotFound"),
        ("alice", "networks.create", "ok"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(trail.contains(&want), "{want:?} missing in {trail:#?}");
    }
    c.shutdown().await.unwrap();
}

/// An agent's credential: a user with the cloud-wide `node` role gets an
/// application credential and may download image data, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_credential_reads_image_data_only() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let node_pw = cheap().hash("nodepw").unwrap();
    put_user(&etcd, "nubo-node", &node_pw, None, Role::Node).await;
    let ch = channel(&c).await;
    // alice's image with data, network and server in p1.
    create_flavor(&mut a, &root, "m1.small", 1, 512).await;
    register_seen(&etcd, &c, "n0", res(64, 64 * 1024, 1000), "nova").await;
    let alice = login(&mut a, "alice", "pw").await;
    let (server, net, port) = populate(&mut a, &alice).await;
    let mut data = pb::image_data_client::ImageDataClient::new(ch.clone());
    let chunk = pb::ImageChunk {
        image: "cirros".into(),
        project: String::new(),
        part: "disk".into(),
        size_bytes: 5,
        data: b"hello".to_vec(),
    };
    // Data that does not match its declared size is refused, nothing kept.
    for (declared, text) in [(10, "ended after 5 of its declared 10"), (3, "larger")] {
        let wrong = pb::ImageChunk {
            size_bytes: declared,
            ..chunk.clone()
        };
        let e = data
            .upload(req(&alice, tokio_stream::iter(vec![wrong])))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(text), "{e:?}");
    }
    let img = data
        .upload(req(&alice, tokio_stream::iter(vec![chunk])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((img.status.as_str(), img.size_bytes), ("active", 5));

    // The node user makes its own application credential (as an operator
    // would for the agents) and logs in with it.
    let node = login(&mut a, "nubo-node", "nodepw").await;
    let cred = app_creds(&ch)
        .create(req(&node, new_cred("agents", &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cred.roles, ["node"]);
    let t = issue_with(&mut a, &cred.id, &cred.secret).await.unwrap();
    assert_eq!(t.roles, ["node"]);
    let node = t.token;

    // Image data of another project: yes.
    let mut got = Vec::new();
    let mut s = data
        .download(req(
            &node,
            pb::DownloadImageRequest {
                image_id: img.id.clone(),
                part: "disk".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(c) = s.message().await.unwrap() {
        got.extend(c.data);
    }
    assert_eq!(got, b"hello");

    // A member of another project cannot fetch alice's image data: it
    // answers like a missing image.
    let bob = login(&mut a, "bob", "pw").await;
    let foreign = data
        .download(req(
            &bob,
            pb::DownloadImageRequest {
                image_id: img.id.clone(),
                part: "disk".into(),
            },
        ))
        .await
        .map(drop);
    match foreign {
        Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
        Ok(()) => panic!("bob downloaded alice's image"),
    }

    // Anything else: no, neither reading nor changing tenant resources.
    let denied = |r: Result<(), tonic::Status>, what: &str| match r {
        Ok(()) => panic!("the node credential could {what}"),
        Err(e) => assert!(
            matches!(e.code(), Code::PermissionDenied | Code::NotFound),
            "{what}: {e:?}"
        ),
    };
    let in_p1 = |r: &str| pb::DeleteRequest {
        r#ref: r.into(),
        project: "p1".into(),
    };
    denied(
        a.servers.delete(req(&node, in_p1(&server))).await.map(drop),
        "delete a server",
    );
    denied(
        a.servers.delete(req(&node, del(&server))).await.map(drop),
        "delete a server in its own project",
    );
    denied(
        a.networks.delete(req(&node, in_p1(&net))).await.map(drop),
        "delete a network",
    );
    denied(
        a.ports.delete(req(&node, in_p1(&port))).await.map(drop),
        "delete a port",
    );
    denied(
        a.networks
            .create(req(
                &node,
                pb::CreateNetworkRequest {
                    name: "n".into(),
                    cidr: "10.5.0.0/24".into(),
                    project: "p1".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        "create a network",
    );
    denied(
        a.servers
            .list(req(&node, pb::ListServersRequest::default()))
            .await
            .map(drop),
        "list servers",
    );
    denied(
        a.images
            .list(req(&node, pb::ListRequest::default()))
            .await
            .map(drop),
        "list images",
    );
    denied(
        a.nodes
            .list(req(&node, pb::ListRequest::default()))
            .await
            .map(drop),
        "list nodes",
    );
    let stream = tokio_stream::iter(vec![pb::ImageChunk {
        image: img.id.clone(),
        project: "p1".into(),
        part: "disk".into(),
        size_bytes: 1,
        data: b"x".to_vec(),
    }]);
    denied(
        data.upload(req(&node, stream)).await.map(drop),
        "upload image data",
    );
    // alice's server is untouched.
    a.servers.get(req(&alice, get(&server))).await.unwrap();
    c.shutdown().await.unwrap();
}

/// Volumes follow the same isolation: another project's volume is NotFound
/// for get, delete, resize and attach; a reader may not delete; the admin
/// sees it. (The record is written directly: no Ceph here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_isolated_between_projects() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let p1 = ProjectId::new("p1").unwrap();
    let vol = nubo_common::model::Volume {
        id: nubo_common::VolumeId::new_random(),
        name: "data".into(),
        project: p1.clone(),
        size_gb: 1,
        volume_type: None,
        status: nubo_common::model::VolumeStatus::Available,
        attached_to: None,
        source_image: None,
        status_reason: None,
        created_by: None,
        created_at: chrono::Utc::now(),
        description: None,
        metadata: Default::default(),
        bootable: None,
        read_only: None,
        image_metadata: Default::default(),
        source_volume: None,
        source_snapshot: None,
        device: None,
        status_reset: None,
    };
    let mut kv = etcd.client().await.unwrap();
    kv.put(keys::volume(&vol.id), encode(&vol), None)
        .await
        .unwrap();
    let id = vol.id.to_string();
    let ch = channel(&c).await;
    let mut v = pb::volumes_client::VolumesClient::new(ch);
    let alice = login(&mut a, "alice", "pw").await;
    let bob = login(&mut a, "bob", "pw").await;
    let rita = login(&mut a, "rita", "pw").await;
    let mut bob_codes = None;

    // A record without `created_by` (written before nubo recorded
    // creators) reads back with an empty creator.
    let shown = v.get(req(&alice, get(&id))).await.unwrap().into_inner();
    assert_eq!(
        (shown.name.as_str(), shown.created_by.as_str()),
        ("data", "")
    );
    let e = v.get(req(&bob, get(&id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let listed = v
        .list(req(&bob, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert!(listed.is_empty(), "{listed:?}");
    // Mutations of another project's volume answer exactly what they
    // answer for a volume that does not exist (NotFound with Ceph;
    // FailedPrecondition "volumes need Ceph" here): existence never leaks.
    let missing = nubo_common::VolumeId::new_random().to_string();
    for r in [&id, &missing] {
        let attach = pb::AttachVolumeRequest {
            r#ref: r.clone(),
            server_ref: "vm".into(),
            ..Default::default()
        };
        let resize = pb::ResizeVolumeRequest {
            r#ref: r.clone(),
            size_gb: 2,
            ..Default::default()
        };
        let codes = [
            v.delete(req(&bob, del(r))).await.map(drop),
            v.attach(req(&bob, attach)).await.map(drop),
            v.resize(req(&bob, resize)).await.map(drop),
        ]
        .map(|res| match res {
            Ok(()) => panic!("bob changed volume {r}"),
            Err(e) => e.code(),
        });
        for code in codes {
            assert!(
                matches!(code, Code::NotFound | Code::FailedPrecondition),
                "{code:?}"
            );
        }
        if r == &id {
            bob_codes = Some(codes);
        } else {
            assert_eq!(
                Some(codes),
                bob_codes,
                "a foreign volume differs from a missing one"
            );
        }
    }
    let e = v.delete(req(&rita, del(&id))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let in_p1 = pb::GetRequest {
        r#ref: id.clone(),
        project: "p1".into(),
    };
    v.get(req(&root, in_p1)).await.unwrap();
    c.shutdown().await.unwrap();
}

/// A CLI against `c` with its own token store in `dir`, after
/// `nubo login --user USER --password-file …`.
fn cli_as(c: &Coordinator, dir: &std::path::Path, user: &str, password: &str) -> nubo_tests::Cli {
    let cli = nubo_tests::Cli::new(&c.endpoint())
        .and_then(|cli| cli.with_token_store(&dir.join(format!("home-{user}"))))
        .unwrap();
    cli.login(user, password, dir)
        .unwrap_or_else(|e| panic!("nubo login as {user}: {e:#}"));
    cli
}

/// The sentence of a quota refusal in project p1.
fn over_quota(resource: &str, limit: u64, in_use: u64, requested: u64) -> String {
    format!(
        "quota exceeded for {resource} in project \"p1\": limit {limit}, in use {in_use}, requested {requested}"
    )
}

/// `nubo ARGS` refused: exit code 1, `error: WANT` on stderr.
fn cli_refused(cli: &nubo_tests::Cli, args: &[&str], want: &str) {
    let out = tokio::task::block_in_place(|| cli.run(args)).unwrap();
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "`nubo {}` exit code: {text}", args.join(" "));
    assert_eq!(
        out.stderr,
        format!("error: {want}\n"),
        "`nubo {}`",
        args.join(" ")
    );
}

/// `nubo server create NAME --flavor F …` refused: exit code 1, the batch
/// row carries `want` and its code, stderr says the batch failed.
fn cli_create_refused(cli: &nubo_tests::Cli, name: &str, flavor: &str, want: &str) {
    let args = [
        "server",
        "create",
        name,
        "--flavor",
        flavor,
        "--image",
        "cirros",
        "--network",
        "n1",
    ];
    let out = tokio::task::block_in_place(|| cli.run(&args)).unwrap();
    let text = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "create {name}: {text}");
    let v = out.json().unwrap();
    let row = &v["servers"][0];
    assert_eq!(
        (row["code"].as_str(), row["error"].as_str()),
        (Some("ResourceExhausted"), Some(want)),
        "create {name}: {text}"
    );
    assert!(
        out.stderr.ends_with("error: 1 of 1 instances failed\n"),
        "{text}"
    );
}

/// Every quota of servers, ports, networks and security groups — and a
/// resize — is refused through the API (ResourceExhausted) and through the
/// CLI (exit code 1), and the error names the quota, the limit, the usage
/// and the request. (Volumes and gigabytes: `volumes.rs`, on real Ceph.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_quota_is_refused_with_its_numbers_through_the_api_and_the_cli() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let alice = login(&mut a, "alice", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let (admin_cli, alice_cli) = tokio::task::block_in_place(|| {
        (
            cli_as(&c, dir.path(), "admin", "adminpw"),
            cli_as(&c, dir.path(), "alice", "pw"),
        )
    });
    // The limits, set through the CLI, read back through the API.
    let set = tokio::task::block_in_place(|| {
        admin_cli.json(&[
            "quota",
            "set",
            "--project",
            "p1",
            "--instances",
            "3",
            "--vcpus",
            "6",
            "--ram-mb",
            "2000",
            "--ports",
            "5",
            "--networks",
            "1",
            "--security-groups",
            "2",
        ])
    })
    .unwrap();
    assert_eq!(set["vcpus"]["limit"], 6, "{set}");
    let ch = channel(&c).await;
    let mut quotas = pb::quotas_client::QuotasClient::new(ch.clone());
    let limits = quotas
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(
        (limits.instances, limits.vcpus, limits.ram_mb, limits.ports),
        (Some(3), Some(6), Some(2000), Some(5))
    );
    for (name, vcpus, ram_mb) in [
        ("small", 1, 256),
        ("wide", 4, 256),
        ("fat", 1, 2048),
        ("mid", 2, 512),
    ] {
        create_flavor(&mut a, &root, name, vcpus, ram_mb).await;
    }
    create_image(&mut a, &alice).await;
    register_seen(&etcd, &c, "n0", res(64, 64 * 1024, 1000), "nova").await;
    wait_listed(&mut a, &root, 1).await;

    // Networks: 1.
    let net = |name: &str, cidr: &str| {
        req(
            &alice,
            pb::CreateNetworkRequest {
                name: name.into(),
                cidr: cidr.into(),
                ..Default::default()
            },
        )
    };
    a.networks.create(net("n1", "10.60.0.0/24")).await.unwrap();
    let e = a
        .networks
        .create(net("n2", "10.61.0.0/24"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), over_quota("networks", 1, 1, 1));
    cli_refused(
        &alice_cli,
        &["network", "create", "n2", "--cidr", "10.61.0.0/24"],
        &over_quota("networks", 1, 1, 1),
    );

    // Servers: vCPUs, RAM, instances (checked in that order).
    let server = |name: &str, flavor: &str| {
        req(
            &alice,
            pb::CreateServerRequest {
                name: name.into(),
                flavor: flavor.into(),
                image_ref: "cirros".into(),
                networks: vec!["n1".into()],
                count: 1,
                ..Default::default()
            },
        )
    };
    let mut servers = a.servers.clone();
    let mut create = async |name: &str, flavor: &str| {
        servers
            .create(server(name, flavor))
            .await
            .unwrap()
            .into_inner()
            .results
            .remove(0)
    };
    let refused_row = |r: &pb::ServerResult, want: &str| {
        assert!(r.server.is_none(), "{r:?}");
        assert_eq!(r.code, "ResourceExhausted", "{r:?}");
        assert_eq!(r.error, want, "{r:?}");
    };
    let small_a = create("a", "small").await.server.expect("a").id;
    assert!(create("w", "wide").await.server.is_some());
    // 1 + 4 vCPUs in use.
    refused_row(&create("w2", "wide").await, &over_quota("vcpus", 6, 5, 4));
    cli_create_refused(&alice_cli, "w2", "wide", &over_quota("vcpus", 6, 5, 4));
    // 256 + 256 MiB in use.
    refused_row(
        &create("f", "fat").await,
        &over_quota("ram_mb", 2000, 512, 2048),
    );
    cli_create_refused(
        &alice_cli,
        "f",
        "fat",
        &over_quota("ram_mb", 2000, 512, 2048),
    );
    assert!(create("s3", "small").await.server.is_some());
    refused_row(
        &create("s4", "small").await,
        &over_quota("instances", 3, 3, 1),
    );
    cli_create_refused(&alice_cli, "s4", "small", &over_quota("instances", 3, 3, 1));

    // Ports: the 3 servers hold 3, two more fit.
    let port = |name: &str| {
        req(
            &alice,
            pb::CreatePortRequest {
                name: name.into(),
                network_ref: "n1".into(),
                ..Default::default()
            },
        )
    };
    for p in ["p1", "p2"] {
        a.ports.create(port(p)).await.unwrap();
    }
    let e = a.ports.create(port("p3")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), over_quota("ports", 5, 5, 1));
    cli_refused(
        &alice_cli,
        &["port", "create", "p3", "--network", "n1"],
        &over_quota("ports", 5, 5, 1),
    );

    // Security groups: 2 (the project's default group is not counted).
    let mut sgs = pb::security_groups_client::SecurityGroupsClient::new(ch.clone());
    let sg = |name: &str| {
        req(
            &alice,
            pb::CreateSecurityGroupRequest {
                name: name.into(),
                ..Default::default()
            },
        )
    };
    for g in ["sg1", "sg2"] {
        sgs.create(sg(g)).await.unwrap();
    }
    let e = sgs.create(sg("sg3")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), over_quota("security_groups", 2, 2, 1));
    cli_refused(
        &alice_cli,
        &["secgroup", "create", "sg3"],
        &over_quota("security_groups", 2, 2, 1),
    );

    // Resize: server a (1 vCPU) to 2 vCPUs; the others hold 5 of 6. It
    // is stopped first (the agent's report played by the test).
    a.servers
        .stop(req(
            &alice,
            pb::ServerActionRequest {
                r#ref: small_a.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let id: nubo_common::InstanceId = small_a.parse().unwrap();
    let status: nubo_common::model::InstanceStatus = serde_json::from_value(serde_json::json!({
        "state": "stopped",
        "node": "n0",
        "updated_at": nubo_common::model::now(),
    }))
    .unwrap();
    etcd.client()
        .await
        .unwrap()
        .put(
            keys::instance_status(&status.node, &id),
            encode(&status),
            None,
        )
        .await
        .unwrap();
    let e = a
        .servers
        .resize(req(
            &alice,
            pb::ResizeServerRequest {
                r#ref: small_a.clone(),
                flavor: "mid".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(e.message(), over_quota("vcpus", 6, 5, 2));
    cli_refused(
        &alice_cli,
        &["server", "resize", &small_a, "--flavor", "mid"],
        &over_quota("vcpus", 6, 5, 2),
    );

    // Nothing refused was counted: the usage is what exists.
    let shown = tokio::task::block_in_place(|| alice_cli.json(&["quota", "show"])).unwrap();
    for (k, used) in [
        ("instances", 3),
        ("vcpus", 6),
        ("ram_mb", 768),
        ("ports", 5),
        ("networks", 1),
        ("security_groups", 2),
    ] {
        assert_eq!(shown[k]["in_use"], used, "{k}: {shown}");
    }
    c.shutdown().await.unwrap();
}

fn subject(token: &str) -> pb::SubjectTokenRequest {
    pb::SubjectTokenRequest {
        token: token.into(),
    }
}

/// `Tokens.Validate` and `Tokens.Revoke`: a user validates and revokes its
/// own tokens only (another's is NotFound, as an invalid one), an admin
/// anyone's; a revoked token is refused at once by the coordinator that
/// revoked it, by a second coordinator (watch), and by one started after
/// the revocation (listing at start), while the user's other token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_validated_and_revoked_on_every_coordinator() {
    let etcd = Etcd::start().unwrap();
    let (_c1, mut a, root) = token_cloud(&etcd).await;
    let alice = login(&mut a, "alice", "pw").await;
    let alice2 = login(&mut a, "alice", "pw").await;
    let bob = login(&mut a, "bob", "pw").await;
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = AuthMode::Token;
    let c2 = nubo_coordinator::start(cfg.clone()).await.unwrap();
    let mut b = api(&c2).await;

    let v = a
        .tokens
        .validate(req(&alice, subject(&alice)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.user.as_str(), v.project.as_str()), ("alice", "p1"));
    let v = a
        .tokens
        .validate(req(&root, subject(&bob)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.user, "bob", "an admin validates anyone's token");
    for (caller, subj) in [(&alice, bob.as_str()), (&alice, "garbage.token")] {
        let e = a
            .tokens
            .validate(req(caller, subject(subj)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let e = a
        .tokens
        .revoke(req(&alice, subject(&bob)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "alice may not revoke bob's token");
    let e = a
        .tokens
        .validate(tonic::Request::new(subject(&alice)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "validation needs a caller");

    // Bob's token still works on both coordinators (positive control).
    let list = |t: &str| req(t, pb::ListRequest::default());
    a.networks.list(list(&bob)).await.unwrap();
    b.networks.list(list(&bob)).await.unwrap();
    a.tokens.revoke(req(&alice, subject(&alice))).await.unwrap();
    let e = a.networks.list(list(&alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("revoked"), "{e:?}");
    let mut seen = false;
    for _ in 0..200 {
        match b.networks.list(list(&alice)).await {
            Err(e) if e.code() == Code::Unauthenticated => {
                seen = true;
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(
        seen,
        "the second coordinator never refused the revoked token"
    );
    let e = b
        .tokens
        .validate(req(&root, subject(&alice)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    a.networks.list(list(&alice2)).await.unwrap();
    b.networks.list(list(&alice2)).await.unwrap();

    // A coordinator started now knows it from its first call on.
    let c3 = nubo_coordinator::start(cfg).await.unwrap();
    let mut c = api(&c3).await;
    let e = c.networks.list(list(&alice)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    c.networks.list(list(&alice2)).await.unwrap();
    let rec = etcd
        .store()
        .await
        .unwrap()
        .list_all(&keys::revoked_tokens_prefix(), |kv| Some(kv.lease()))
        .await
        .unwrap();
    assert_eq!(rec.len(), 1);
    assert_ne!(rec[0], 0, "the record is leased until the token's expiry");
}

/// The image `id` as `tok` gets it, or the refusal's code.
async fn image_as(a: &mut Api, tok: &str, id: &str) -> Result<pb::Image, Code> {
    a.images
        .get(req(tok, get(id)))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.code())
}

/// The ids of the images `tok` lists.
async fn image_ids(a: &mut Api, tok: &str) -> Vec<String> {
    a.images
        .list(req(tok, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// A server of `tok`'s project from image `image`: the created server's
/// id, or the refusal (of the call or of its one result).
async fn boot_from(a: &mut Api, tok: &str, name: &str, image: &str) -> Result<String, String> {
    let r = pb::CreateServerRequest {
        image_ref: image.into(),
        ..server_req(name, &["net"], 1)
    };
    match a.servers.create(req(tok, r)).await {
        Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
        Ok(r) => {
            let r = r.into_inner();
            match &r.results[0].server {
                Some(s) => Ok(s.id.clone()),
                None => Err(format!("{:?}", r.results[0])),
            }
        }
    }
}

/// Image visibility and members: a private image is its project's only;
/// shared with a member project it is usable there by id (listed once
/// accepted); only the member answers, only the owner shares, only an
/// admin makes an image public; a protected image is not deleted; a
/// deactivated one boots nothing and its data is not served to tenants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_shared_between_projects_by_visibility_and_members() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    create_flavor(&mut a, &root, "m1.small", 1, 512).await;
    register_seen(&etcd, &c, "n0", res(64, 64 * 1024, 1000), "nova").await;
    let alice = login(&mut a, "alice", "pw").await;
    let bob = login(&mut a, "bob", "pw").await;
    create_image(&mut a, &alice).await;
    for tok in [&alice, &bob] {
        a.networks
            .create(req(
                tok,
                pb::CreateNetworkRequest {
                    name: "net".into(),
                    cidr: "10.1.0.0/24".into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }
    let img = image_as(&mut a, &alice, "cirros").await.unwrap();
    let id = img.id.clone();
    assert_eq!((img.visibility.as_str(), img.owned), ("private", true));
    // Positive control: alice boots it; bob neither sees nor boots it.
    boot_from(&mut a, &alice, "a1", &id).await.unwrap();
    assert_eq!(
        image_as(&mut a, &bob, &id).await.unwrap_err(),
        Code::NotFound
    );
    assert!(!image_ids(&mut a, &bob).await.contains(&id));
    let e = boot_from(&mut a, &bob, "b1", &id).await.unwrap_err();
    assert!(e.contains("not found"), "{e}");

    let set = |tok: &str, r: pb::UpdateImageRequest| {
        req(
            tok,
            pb::UpdateImageRequest {
                r#ref: id.clone(),
                ..r
            },
        )
    };
    let member = |tok: &str, m: &str, status: &str| {
        req(
            tok,
            pb::ImageMemberRequest {
                image: id.clone(),
                member: m.into(),
                status: status.into(),
                ..Default::default()
            },
        )
    };
    // Only a shared image has members.
    let e = a
        .images
        .add_member(member(&alice, "p2", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let vis = |v: &str| pb::UpdateImageRequest {
        visibility: Some(v.into()),
        ..Default::default()
    };
    a.images.update(set(&alice, vis("shared"))).await.unwrap();
    // Bob cannot share alice's image; alice shares it with p2.
    let e = a
        .images
        .add_member(member(&bob, "p2", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let m = a
        .images
        .add_member(member(&alice, "p2", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.member.as_str(), m.status.as_str()), ("p2", "pending"));
    let e = a
        .images
        .add_member(member(&alice, "p2", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Pending: bob sees it by id (member_status pending) and boots it.
    let seen = image_as(&mut a, &bob, &id).await.unwrap();
    assert_eq!(
        (seen.member_status.as_str(), seen.owned),
        ("pending", false)
    );
    boot_from(&mut a, &bob, "b2", &id).await.unwrap();
    // Only the member answers, and only with a known status.
    let e = a
        .images
        .set_member_status(member(&alice, "p2", "accepted"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = a
        .images
        .set_member_status(member(&bob, "", "maybe"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let m = a
        .images
        .set_member_status(member(&bob, "", "accepted"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.member.as_str(), m.status.as_str()), ("p2", "accepted"));
    // The owner lists every member, the member only itself.
    let listed = |tok: &str| req(tok, get(&id));
    let ms = a
        .images
        .list_members(listed(&alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ms.members.len(), 1);
    assert_eq!(ms.members[0].status, "accepted");
    let e = a
        .images
        .remove_member(member(&bob, "p2", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    a.images
        .remove_member(member(&alice, "p2", ""))
        .await
        .unwrap();
    assert_eq!(
        image_as(&mut a, &bob, &id).await.unwrap_err(),
        Code::NotFound
    );

    // Public: the admin's call only; then every project lists it.
    let e = a
        .images
        .update(set(&alice, vis("public")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    a.images
        .update(req(
            &root,
            pb::UpdateImageRequest {
                r#ref: id.clone(),
                project: "p1".into(),
                visibility: Some("public".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert!(image_ids(&mut a, &bob).await.contains(&id));
    boot_from(&mut a, &bob, "b3", &id).await.unwrap();
    // Bob may use it, not change it.
    let e = a
        .images
        .update(set(
            &bob,
            pb::UpdateImageRequest {
                min_ram_mb: Some(1),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Tags, properties, protection.
    let i = a
        .images
        .update(set(
            &alice,
            pb::UpdateImageRequest {
                add_tags: vec!["t1".into()],
                set_properties: [("kernel_id".to_string(), "k".to_string())].into(),
                protected: Some(true),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (i.tags, i.properties["kernel_id"].as_str(), i.protected),
        (vec!["t1".to_string()], "k", true)
    );
    let e = a
        .images
        .update(set(
            &alice,
            pb::UpdateImageRequest {
                set_properties: [("visibility".to_string(), "x".to_string())].into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = a.images.delete(req(&alice, del(&id))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("protected"), "{e:?}");

    // Deactivated: only an active image (this one has no data).
    let deact = |d: bool| pb::UpdateImageRequest {
        deactivated: Some(d),
        ..Default::default()
    };
    let e = a.images.update(set(&alice, deact(true))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let mut data = pb::image_data_client::ImageDataClient::new(channel(&c).await);
    let chunk = pb::ImageChunk {
        image: id.clone(),
        project: String::new(),
        part: "disk".into(),
        size_bytes: 5,
        data: b"hello".to_vec(),
    };
    data.upload(req(&alice, tokio_stream::iter(vec![chunk])))
        .await
        .unwrap();
    let download = |tok: &str| {
        req(
            tok,
            pb::DownloadImageRequest {
                image_id: id.clone(),
                part: "disk".into(),
            },
        )
    };
    // Positive control: bob fetches the public image's data.
    data.download(download(&bob)).await.unwrap();
    a.images.update(set(&alice, deact(true))).await.unwrap();
    let e = data.download(download(&bob)).await.map(drop).unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    data.download(download(&root)).await.unwrap();
    let e = boot_from(&mut a, &bob, "b4", &id).await.unwrap_err();
    assert!(e.contains("deactivated"), "{e}");
    a.images.update(set(&alice, deact(false))).await.unwrap();
    boot_from(&mut a, &bob, "b4", &id).await.unwrap();

    // Nameless images (Glance has them): several in one project, each
    // found and deleted by id.
    let mut nameless = Vec::new();
    for _ in 0..2 {
        let i = a
            .images
            .create(req(&alice, pb::CreateImageRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(i.name, "");
        nameless.push(i.id);
    }
    for n in &nameless {
        image_as(&mut a, &alice, n).await.unwrap();
        a.images.delete(req(&alice, del(n))).await.unwrap();
        assert_eq!(
            image_as(&mut a, &alice, n).await.unwrap_err(),
            Code::NotFound
        );
    }

    // The same through the CLI: share, answer, list.
    let dir = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| {
        let alice_cli = cli_as(&c, dir.path(), "alice", "pw");
        let bob_cli = cli_as(&c, dir.path(), "bob", "pw");
        let img = alice_cli.json(&["image", "create", "shared-img"]).unwrap();
        let sid = img["id"].as_str().unwrap();
        assert_eq!(img["visibility"], "private", "{img}");
        let img = alice_cli
            .json(&[
                "image",
                "set",
                "shared-img",
                "--visibility",
                "shared",
                "--tag",
                "t",
            ])
            .unwrap();
        assert_eq!(
            (&img["visibility"], &img["tags"]),
            (&serde_json::json!("shared"), &serde_json::json!(["t"])),
            "{img}"
        );
        // Only the owner shares (bob: refused; alice below).
        let out = bob_cli.run(&["image", "member", "add", sid, "p2"]).unwrap();
        assert!(out.code == 1 && out.stderr.contains("not found"), "{out:?}");
        let m = alice_cli
            .json(&["image", "member", "add", "shared-img", "p2"])
            .unwrap();
        // Named by its name, answered with its id.
        assert_eq!(
            (&m["image"], &m["member"], &m["status"]),
            (
                &serde_json::json!(sid),
                &serde_json::json!("p2"),
                &serde_json::json!("pending")
            ),
            "{m}"
        );
        let m = bob_cli
            .json(&["image", "member", "set", sid, "accepted"])
            .unwrap();
        assert_eq!(
            (&m["member"], &m["status"]),
            (&serde_json::json!("p2"), &serde_json::json!("accepted")),
            "{m}"
        );
        let ms = alice_cli.json(&["image", "member", "list", sid]).unwrap();
        assert_eq!(ms[0]["status"], "accepted", "{ms}");
        let listed = bob_cli.json(&["image", "list"]).unwrap();
        let row = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == sid)
            .unwrap_or_else(|| panic!("bob does not list {sid}: {listed}"));
        assert_eq!(row["member_status"], "accepted", "{row}");
        alice_cli
            .run(&["image", "member", "remove", sid, "p2"])
            .unwrap()
            .ok()
            .unwrap();
        let listed = bob_cli.json(&["image", "list"]).unwrap();
        assert!(!listed.to_string().contains(sid), "{listed}");
    });
    c.shutdown().await.unwrap();
}

/// `ref` of a server action request.
fn act(r: &str) -> pb::ServerActionRequest {
    pb::ServerActionRequest {
        r#ref: r.into(),
        project: String::new(),
    }
}

/// Writes the status the agent of `node` reports for `id` after acting on
/// reboot generation `generation` (running).
async fn report_running(etcd: &Etcd, id: &str, node: &str, generation: u64) {
    let status = serde_json::json!({"state": "running", "node": node,
        "updated_at": nubo_common::model::now(), "reboot_generation": generation});
    let id: nubo_common::InstanceId = id.parse().unwrap();
    let node = nubo_common::NodeName::new(node).unwrap();
    let mut c = etcd.client().await.unwrap();
    c.put(keys::instance_status(&node, &id), status.to_string(), None)
        .await
        .unwrap();
}

/// Locks refuse changes to members (not to admins), rebuilds wait for the
/// agent, every change is an instance action under the caller's request
/// id, zones are listed for readers (nodes are not), server group names
/// repeat, and min_count keeps all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_rebuilds_actions_zones_groups_and_min_count() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let (alice, rita) = (
        login(&mut a, "alice", "pw").await,
        login(&mut a, "rita", "pw").await,
    );
    create_flavor(&mut a, &root, "m1.small", 1, 512).await;
    create_image(&mut a, &alice).await;
    register_seen(&etcd, &c, "n0", res(64, 64 * 1024, 1000), "az-1").await;
    wait_listed(&mut a, &root, 1).await;

    // Zones for a reader; the nodes themselves stay admin-only.
    let zones = a
        .servers
        .list_zones(req(&rita, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .zones;
    assert_eq!(
        zones
            .iter()
            .map(|z| (z.name.as_str(), z.available))
            .collect::<Vec<_>>(),
        [("az-1", true)]
    );
    let e = a.nodes.list(req(&rita, pb::ListRequest::default())).await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);

    // A create under the caller's request id (a Unicode display name).
    let mut create = req(&alice, server_req("vm-₡", &[], 1));
    create
        .metadata_mut()
        .insert("x-nubo-request-id", "req-test-1".parse().unwrap());
    let r = a.servers.create(create).await.unwrap().into_inner();
    let vm = created(&r, 0);
    assert_eq!(vm.name, "vm-₡");
    report_running(&etcd, &vm.id, "n0", 0).await;

    // Locked: the member is refused, the admin is not.
    let lock = pb::LockServerRequest {
        r#ref: vm.id.clone(),
        project: String::new(),
        reason: "audit".into(),
    };
    let s = a
        .servers
        .lock(req(&alice, lock))
        .await
        .unwrap()
        .into_inner();
    assert!(s.locked && s.locked_reason == "audit", "{s:?}");
    for e in [
        a.servers.stop(req(&alice, act(&vm.id))).await.unwrap_err(),
        a.servers
            .delete(req(&alice, del(&vm.id)))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("locked (audit)"), "{e:?}");
    }
    let admin_stop = pb::ServerActionRequest {
        r#ref: vm.id.clone(),
        project: "p1".into(),
    };
    a.servers.stop(req(&root, admin_stop)).await.unwrap();
    let s = a
        .servers
        .unlock(req(&alice, act(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.locked);
    a.servers.start(req(&alice, act(&vm.id))).await.unwrap();

    // Rebuild: refused from an image that is not active, then
    // `rebuilding` until the agent reports the generation done.
    let rebuild = pb::RebuildServerRequest {
        r#ref: vm.id.clone(),
        image: "cirros".into(),
        name: Some("vm-2".into()),
        ..Default::default()
    };
    let e = a
        .servers
        .rebuild(req(&alice, rebuild.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let images = common::prefix(&etcd, &keys::images_prefix()).await;
    let (key, raw) = images
        .iter()
        .find(|(_, v)| {
            serde_json::from_slice::<serde_json::Value>(v).is_ok_and(|v| v["name"] == "cirros")
        })
        .unwrap();
    let mut img: serde_json::Value = serde_json::from_slice(raw).unwrap();
    img["status"] = "active".into();
    let mut ec = etcd.client().await.unwrap();
    ec.put(key.as_str(), img.to_string(), None).await.unwrap();
    let s = a
        .servers
        .rebuild(req(&alice, rebuild))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.state.as_str(), s.name.as_str()), ("rebuilding", "vm-2"));
    let spec: nubo_common::model::Instance =
        common::get(&etcd, &keys::instance(&vm.id.parse().unwrap()))
            .await
            .unwrap();
    assert_eq!(spec.rebuild_generation, spec.reboot_generation);
    report_running(&etcd, &vm.id, "n0", spec.rebuild_generation).await;
    let s = a
        .servers
        .get(req(&alice, get(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, "running");

    // Every change, in order, with who and under which request id.
    let acts = a
        .servers
        .list_actions(req(&rita, get(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acts.server_id, vm.id);
    let names: Vec<(&str, &str)> = acts
        .actions
        .iter()
        .map(|x| (x.action.as_str(), x.user.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("create", "alice"),
            ("lock", "alice"),
            ("stop", "admin"),
            ("unlock", "alice"),
            ("start", "alice"),
            ("rebuild", "alice")
        ]
    );
    assert_eq!(acts.actions[0].request_id, "req-test-1");
    assert_ne!(acts.actions[1].request_id, "req-test-1");

    // Server group names repeat; a shared name is ambiguous, ids are not.
    let mut groups = pb::server_groups_client::ServerGroupsClient::new(channel(&c).await);
    let group = || pb::CreateServerGroupRequest {
        name: "g".into(),
        project: String::new(),
        policy: "anti-affinity".into(),
    };
    let g1 = groups
        .create(req(&alice, group()))
        .await
        .unwrap()
        .into_inner();
    let g2 = groups
        .create(req(&alice, group()))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(g1.id, g2.id);
    let e = groups.get(req(&alice, get("g"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    groups.delete(req(&alice, del(&g1.id))).await.unwrap();
    assert_eq!(
        groups
            .get(req(&alice, get("g")))
            .await
            .unwrap()
            .into_inner()
            .id,
        g2.id
    );

    // min_count: with room for one more server, 2 of 2 fails and leaves
    // nothing; 1 of 2 creates one.
    let mut quotas = pb::quotas_client::QuotasClient::new(channel(&c).await);
    let set = pb::SetQuotaRequest {
        project: "p1".into(),
        limits: Some(pb::QuotaSet {
            instances: Some(2),
            ..Default::default()
        }),
    };
    quotas.set(req(&root, set)).await.unwrap();
    let batch = |min_count| pb::CreateServerRequest {
        min_count,
        ..server_req("batch", &[], 2)
    };
    let e = a.servers.create(req(&alice, batch(2))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(server_names(&mut a, &alice, false).await, ["p1/vm-2"]);
    let r = a
        .servers
        .create(req(&alice, batch(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.iter().filter(|x| x.server.is_some()).count(), 1);
    assert_eq!(server_names(&mut a, &alice, false).await.len(), 2);
}

/// `Quotas.Update` changes the named limits and keeps the others (a
/// project without its own quota starts from the default), `Reset` gives
/// the default back, `GetDefault` is readable by members; updating and
/// resetting are admin-only, an unknown resource is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_update_merges_and_reset_restores_the_default() {
    let etcd = Etcd::start().unwrap();
    let (c, mut a, root) = token_cloud(&etcd).await;
    let alice = login(&mut a, "alice", "pw").await;
    let mut quotas = pb::quotas_client::QuotasClient::new(channel(&c).await);
    let default = quotas
        .get_default(req(&alice, pb::Empty {}))
        .await
        .unwrap()
        .into_inner();
    let d = default.limits.unwrap();
    assert_eq!((d.instances, d.vcpus), (Some(10), Some(20)), "{d:?}");
    let update = |limits: pb::QuotaSet, unlimited: &[&str]| pb::UpdateQuotaRequest {
        project: "p1".into(),
        limits: Some(limits),
        unlimited: unlimited.iter().map(|s| s.to_string()).collect(),
    };
    let ram = pb::QuotaSet {
        ram_mb: Some(5120),
        ..Default::default()
    };
    let e = quotas
        .update(req(&alice, update(ram, &[])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let q = quotas
        .update(req(&root, update(ram, &["instances"])))
        .await
        .unwrap()
        .into_inner();
    let l = q.limits.unwrap();
    assert_eq!(
        (l.ram_mb, l.instances, l.vcpus, l.ports),
        (Some(5120), None, d.vcpus, d.ports),
        "{l:?}"
    );
    // A second update keeps the first one's changes.
    let cores = pb::QuotaSet {
        vcpus: Some(2),
        ..Default::default()
    };
    let l = quotas
        .update(req(&root, update(cores, &[])))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(
        (l.ram_mb, l.instances, l.vcpus),
        (Some(5120), None, Some(2))
    );
    let e = quotas
        .update(req(&root, update(pb::QuotaSet::default(), &["cpus"])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"cpus\""), "{}", e.message());
    let e = quotas
        .update(req(&root, update(cores, &["vcpus"])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = quotas.reset(req(&alice, get_in("p1"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let l = quotas
        .reset(req(&root, get_in("p1")))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(l, d);
    // What alice reads is the default again.
    let l = quotas
        .get(req(&alice, get("")))
        .await
        .unwrap()
        .into_inner()
        .limits
        .unwrap();
    assert_eq!(l, d);
    c.shutdown().await.unwrap();
}

fn get_in(project: &str) -> pb::GetRequest {
    pb::GetRequest {
        r#ref: String::new(),
        project: project.into(),
    }
}
