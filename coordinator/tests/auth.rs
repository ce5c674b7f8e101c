//! `auth = "token"`: bootstrap, token issue, authentication and per-project
//! authorization, against a real etcd with the coordinator in-process.

mod common;

use common::register_node;
use common::res;
use etcd_client::PutOptions;
use nubo_common::keys;
use nubo_common::model::{encode, Project, Role, RoleAssignment, TokenKeySet, User, UserName};
use nubo_common::proto as pb;
use nubo_common::ProjectId;
use nubo_coordinator::api::{bootstrap, Bootstrapped};
use nubo_coordinator::{AuthMode, Config, Coordinator};
use nubo_identity::{Claims, Passwords, TokenSigner};
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn cheap() -> Passwords {
    Passwords::with_params(64, 1, 1).unwrap()
}

fn req<T>(token: &str, m: T) -> Request<T> {
    let mut r = Request::new(m);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
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
    let ch = Channel::from_shared(c.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
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
    let mut c = etcd.client().await.unwrap();
    let now = chrono::Utc::now();
    let hash = cheap().hash("pw").unwrap();
    for p in ["p1", "p2"] {
        let id = ProjectId::new(p).unwrap();
        let rec = Project {
            id: id.clone(),
            name: p.into(),
            description: String::new(),
            enabled: true,
            created_at: now,
        };
        c.put(keys::project(&id), encode(&rec), None::<PutOptions>)
            .await
            .unwrap();
    }
    for (u, p, role) in [
        ("alice", "p1", Role::Member),
        ("bob", "p2", Role::Member),
        ("rita", "p1", Role::Reader),
    ] {
        let name = UserName::new(u).unwrap();
        let user = User {
            name: name.clone(),
            password_hash: hash.clone(),
            enabled: true,
            created_at: now,
        };
        c.put(keys::user(&name), encode(&user), None).await.unwrap();
        let project = ProjectId::new(p).unwrap();
        let ra = RoleAssignment {
            user: name.clone(),
            project: Some(project.clone()),
            role,
        };
        c.put(keys::role(&name, Some(&project)), encode(&ra), None)
            .await
            .unwrap();
    }
}

async fn login(a: &mut Api, user: &str, password: &str) -> String {
    a.tokens
        .issue(pb::IssueTokenRequest {
            user: user.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

fn get(r: &str) -> pb::GetRequest {
    pb::GetRequest {
        r#ref: r.into(),
        project: String::new(),
    }
}
fn del(r: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        r#ref: r.into(),
        project: String::new(),
    }
}

/// A member's image, network, port and server in its own project.
async fn populate(a: &mut Api, tok: &str) -> (String, String, String) {
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
        .create(req(
            tok,
            pb::CreateServerRequest {
                name: "vm".into(),
                flavor: "m1.small".into(),
                image_ref: "cirros".into(),
                count: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let server = r.results[0]
        .server
        .clone()
        .unwrap_or_else(|| panic!("{r:?}"));
    (server.id, net.id, port.id)
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
    let store = nubo_coordinator::store::Store::new(etcd.client().await.unwrap());
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
    register_node(&etcd, "n0", res(64, 64 * 1024, 1000), "nova").await;
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
    let ch = Channel::from_shared(c.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
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
    let pruned = nubo_coordinator::audit::prune(&store, 3).await.unwrap();
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
    let store = nubo_coordinator::store::Store::new(etcd.client().await.unwrap());
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
    let ch = Channel::from_shared(c.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
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
    a.flavors
        .create(req(
            &root,
            pb::CreateFlavorRequest {
                name: "m1.small".into(),
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 1,
            },
        ))
        .await
        .unwrap();
    a.images
        .create(req(
            &alice,
            pb::CreateImageRequest {
                name: "cirros".into(),
                disk_format: "qcow2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    for i in 0..4 {
        register_node(&etcd, &format!("n{i}"), res(64, 64 * 1024, 1000), "nova").await;
    }
    for _ in 0..100 {
        let n = a
            .nodes
            .list(req(&root, pb::ListRequest::default()))
            .await
            .unwrap()
            .into_inner();
        if n.nodes.len() == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let results = futures::future::join_all((0..50).map(|i| {
        let mut s = a.servers.clone();
        let tok = alice.clone();
        async move {
            s.create(req(
                &tok,
                pb::CreateServerRequest {
                    name: format!("vm{i}"),
                    flavor: "m1.small".into(),
                    image_ref: "cirros".into(),
                    count: 1,
                    ..Default::default()
                },
            ))
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
