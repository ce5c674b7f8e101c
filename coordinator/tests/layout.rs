//! A cluster written with the layout before keys were grouped by reader
//! (coordinator-private data directly under `/nubo/v1/`) is moved under
//! `/nubo/v1/private/` by the coordinators starting on it — two at once —
//! without losing or duplicating anything, and keeps working; starting
//! again moves nothing; a key found at both places with different values
//! is never overwritten. Real etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeMap;

use common::*;
use etcd_client::GetOptions;
use nubo_common::keys::{self, LEGACY_MOVES};
use nubo_common::model::{self, Quota, UserName};
use nubo_common::proto as pb;
use nubo_coordinator::api::bootstrap;
use nubo_coordinator::{AuthMode, Config, Coordinator};
use nubo_identity::Passwords;
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn cheap() -> Passwords {
    Passwords::with_params(64, 1, 1).unwrap()
}

fn token_cfg(etcd: &Etcd) -> Config {
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.auth = AuthMode::Token;
    cfg
}

fn authed<T>(token: &str, m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Every key-value under `p` with its mod revision, in key order.
async fn tree(etcd: &Etcd, p: &str) -> BTreeMap<String, (Vec<u8>, i64)> {
    let store = etcd.store().await.unwrap();
    store
        .get(p, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value().to_vec(), kv.mod_revision()),
            )
        })
        .collect()
}

fn values(t: &BTreeMap<String, (Vec<u8>, i64)>) -> BTreeMap<String, Vec<u8>> {
    t.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect()
}

/// Keys under any prefix of the old layout.
async fn old_keys(etcd: &Etcd) -> Vec<String> {
    let mut out = Vec::new();
    for m in LEGACY_MOVES {
        out.extend(tree(etcd, &m.old_prefix()).await.into_keys());
    }
    out
}

/// Rewrites the cluster to the old layout: every key under
/// `/nubo/v1/private/` goes back directly under `/nubo/v1/`.
async fn to_old_layout(etcd: &Etcd) -> BTreeMap<String, Vec<u8>> {
    let mut c = etcd.client().await.unwrap();
    let now = values(&tree(etcd, keys::PRIVATE).await);
    let mut old = BTreeMap::new();
    for (k, v) in &now {
        // Keys of kinds newer than the move (instance actions) never had
        // an old place: they stay.
        if !LEGACY_MOVES.iter().any(|m| k.starts_with(&m.new_prefix())) {
            continue;
        }
        let o = k.replacen(keys::PRIVATE, keys::ROOT, 1);
        c.put(o.as_str(), v.clone(), None).await.unwrap();
        c.delete(k.as_str(), None).await.unwrap();
        old.insert(o, v.clone());
    }
    old
}

/// The shared test clients, plus the two services they lack.
struct Api {
    tokens: pb::tokens_client::TokensClient<Channel>,
    quotas: pb::quotas_client::QuotasClient<Channel>,
    all: Clients,
}

async fn api(c: &Coordinator) -> Api {
    let ch = channel(c).await;
    Api {
        tokens: pb::tokens_client::TokensClient::new(ch.clone()),
        quotas: pb::quotas_client::QuotasClient::new(ch.clone()),
        all: clients_on(ch),
    }
}

fn server_req(token: &str) -> pb::CreateServerRequest {
    pb::CreateServerRequest {
        name: "web".into(),
        flavor: "m1.small".into(),
        image_ref: "cirros".into(),
        networks: vec!["net".into()],
        server_group: "g".into(),
        client_token: token.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_layout_cluster_is_moved_once_by_two_coordinators_and_keeps_working() {
    let etcd = Etcd::start().unwrap();
    let admin = UserName::new("admin").unwrap();
    bootstrap(&etcd.store().await.unwrap(), &admin, "adminpw", &cheap())
        .await
        .unwrap();
    register_node(&etcd, "n0", res(64, 64 * 512, 1000), "nova").await;

    // A cloud with something in every private prefix: identity, quota
    // usage, audit, names, IPAM, MACs, VNIs, port owners, server-group
    // members, client tokens, the evacuation switch.
    let a = nubo_coordinator::start(token_cfg(&etcd)).await.unwrap();
    let mut x = api(&a).await;
    let tok = issue_token(&mut x.tokens, "admin", "adminpw").await;
    x.all
        .flavors
        .create(authed(
            &tok,
            pb::CreateFlavorRequest {
                name: "m1.small".into(),
                vcpus: 1,
                ram_mb: 512,
                disk_gb: 1,
                display_name: String::new(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    x.all
        .images
        .create(authed(
            &tok,
            pb::CreateImageRequest {
                name: "cirros".into(),
                disk_format: "qcow2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let net = pb::CreateNetworkRequest {
        name: "net".into(),
        cidr: "10.9.0.0/24".into(),
        ..Default::default()
    };
    x.all
        .networks
        .create(authed(&tok, net.clone()))
        .await
        .unwrap();
    let fixed = pb::CreatePortRequest {
        name: "fixed".into(),
        network_ref: "net".into(),
        ip: "10.9.0.10".into(),
        ..Default::default()
    };
    x.all
        .ports
        .create(authed(&tok, fixed.clone()))
        .await
        .unwrap();
    x.all
        .groups
        .create(authed(
            &tok,
            pb::CreateServerGroupRequest {
                name: "g".into(),
                policy: "anti-affinity".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let web = x
        .all
        .servers
        .create(authed(&tok, server_req("tok-1")))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .server
        .clone()
        .expect("created")
        .id;
    pb::application_credentials_client::ApplicationCredentialsClient::new(channel(&a).await)
        .create(authed(
            &tok,
            pb::CreateApplicationCredentialRequest {
                name: "ci".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    x.all
        .nodes
        .set_evacuation_enabled(authed(
            &tok,
            pb::SetEvacuationEnabledRequest { enabled: false },
        ))
        .await
        .unwrap();
    a.shutdown().await.unwrap();

    // Enough records that both movers below overlap.
    let mut cl = etcd.client().await.unwrap();
    for i in 0..400 {
        let rec = model::AuditRecord {
            time: chrono::Utc::now(),
            user: Some(admin.clone()),
            project: None,
            acted_in: None,
            action: format!("test.{i}"),
            resource_kind: "test".into(),
            resource_id: None,
            outcome: model::AuditOutcome::Ok,
            request_id: format!("r{i}"),
        };
        cl.put(
            keys::audit(&format!("0000-{i:04}")),
            model::encode(&rec),
            None,
        )
        .await
        .unwrap();
    }
    let before = values(&tree(&etcd, keys::PRIVATE).await);
    for m in LEGACY_MOVES {
        let seg = m.new_prefix();
        assert!(
            before.keys().any(|k| k.starts_with(&seg)),
            "nothing under {seg}: the test would not show that it moves"
        );
    }
    let old = to_old_layout(&etcd).await;
    let newer: Vec<String> = tree(&etcd, keys::PRIVATE).await.into_keys().collect();
    assert_eq!(old.len() + newer.len(), before.len());
    assert!(
        newer
            .iter()
            .all(|k| k.starts_with(&format!("{}instance-actions/", keys::PRIVATE))),
        "{newer:?}"
    );

    // Two coordinators start on it at once.
    let (b, c) = tokio::join!(
        nubo_coordinator::start(token_cfg(&etcd)),
        nubo_coordinator::start(token_cfg(&etcd))
    );
    let (b, c) = (b.unwrap(), c.unwrap());
    assert_eq!(old_keys(&etcd).await, Vec::<String>::new());
    assert_eq!(
        values(&tree(&etcd, keys::PRIVATE).await),
        before,
        "every key moved once, with its value"
    );

    // And the cloud works as before, on both.
    for co in [&b, &c] {
        let mut y = api(co).await;
        let tok = issue_token(&mut y.tokens, "admin", "adminpw").await;
        let e = y
            .all
            .networks
            .create(authed(&tok, net.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        let e = y
            .all
            .ports
            .create(authed(&tok, fixed.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        let again = y
            .all
            .servers
            .create(authed(&tok, server_req("tok-1")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.results[0].server.as_ref().unwrap().id, web);
        let s = y
            .all
            .cluster
            .status(authed(&tok, pb::Empty {}))
            .await
            .unwrap()
            .into_inner();
        assert!(!s.evacuation_enabled);
        let q = y
            .quotas
            .get(authed(&tok, pb::GetRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(q.usage.unwrap().instances, Some(1));
    }

    // Starting again moves (and writes) nothing.
    let settled = tree(&etcd, keys::PRIVATE).await;
    let d = nubo_coordinator::start(token_cfg(&etcd)).await.unwrap();
    assert_eq!(tree(&etcd, keys::PRIVATE).await, settled);

    // A key at both places: the same value goes, another value stays and
    // the new key is left as it is.
    let default_quota = keys::quota_default();
    let moved_quota = default_quota.replacen(keys::PRIVATE, keys::ROOT, 1);
    let other = Quota {
        instances: Some(7),
        ..Quota::UNLIMITED
    };
    cl.put(moved_quota.as_str(), model::encode(&other), None)
        .await
        .unwrap();
    let token_key = keys::token_key();
    let old_token_key = token_key.replacen(keys::PRIVATE, keys::ROOT, 1);
    cl.put(old_token_key.as_str(), settled[&token_key].0.clone(), None)
        .await
        .unwrap();
    let e = nubo_coordinator::start(token_cfg(&etcd)).await.unwrap();
    assert_eq!(old_keys(&etcd).await, vec![moved_quota.clone()]);
    assert_eq!(
        tree(&etcd, keys::PRIVATE).await[&default_quota],
        settled[&default_quota],
        "the new key is never overwritten"
    );
    for co in [b, c, d, e] {
        co.shutdown().await.unwrap();
    }
}

/// Statuses at `/nubo/v1/instances/<id>/status` (the layout before nodes
/// had their own etcd roles) move to `/nubo/v1/node-owned/<node>/status/<id>`
/// and every placed instance gets its node copy, by two coordinators
/// starting at once: each status once with its value, each copy equal to
/// its spec at the spec's revision; an undecodable old status is left in
/// place; a second start writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_statuses_move_to_node_keys_and_specs_get_their_node_copies() {
    let etcd = Etcd::start().unwrap();
    register_node(&etcd, "n0", res(256, 256 * 512, 1000), "nova").await;
    let a = coordinator(&etcd).await;
    let mut cl = clients(&a).await;
    setup_basics(&mut cl).await;
    wait_nodes(&mut cl, 1).await;
    // More than one migration batch (50).
    let r = create_servers(&mut cl, common::server_req("web", &[], 60)).await;
    assert_eq!(r.results.len(), 60);
    a.shutdown().await.unwrap();

    // The old layout: statuses under the spec, no node copies.
    let mut c = etcd.client().await.unwrap();
    let n0 = nubo_common::NodeName::new("n0").unwrap();
    let mut old_statuses = BTreeMap::new();
    for res in &r.results {
        let id: nubo_common::InstanceId = res.server.as_ref().unwrap().id.parse().unwrap();
        let st = model::InstanceStatus {
            state: model::InstanceState::Running,
            node: n0.clone(),
            updated_at: model::now(),
            last_error: None,
            reboot_generation: 0,
            volumes: Vec::new(),
            size: None,
        };
        let v = model::encode(&st);
        c.put(keys::legacy_instance_status(&id), v.clone(), None)
            .await
            .unwrap();
        old_statuses.insert(id, v);
    }
    let junk = keys::legacy_instance_status(&nubo_common::InstanceId::new_random());
    c.put(junk.as_str(), "{not json", None).await.unwrap();
    c.delete(
        keys::all_hosts_prefix(),
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    assert!(tree(&etcd, &keys::all_hosts_prefix()).await.is_empty());

    let (b, d) = tokio::join!(coordinator(&etcd), coordinator(&etcd));
    for (id, v) in &old_statuses {
        let moved = tree(&etcd, &keys::instance_status(&n0, id)).await;
        assert_eq!(moved.values().next().map(|(v, _)| v), Some(v), "{id}");
        assert!(tree(&etcd, &keys::legacy_instance_status(id))
            .await
            .is_empty());
    }
    assert_eq!(
        tree(&etcd, &keys::node_statuses_prefix(&n0)).await.len(),
        60
    );
    assert_eq!(tree(&etcd, &junk).await.len(), 1, "the junk stays");
    assert_eq!(assert_node_copies(&etcd).await, 60);
    b.shutdown().await.unwrap();
    d.shutdown().await.unwrap();

    // Again: nothing to do, nothing written under /nubo/v1/ but the
    // coordinator's own registration and election.
    let data = |t: BTreeMap<String, (Vec<u8>, i64)>| -> BTreeMap<String, (Vec<u8>, i64)> {
        t.into_iter()
            .filter(|(k, _)| {
                !k.starts_with(&keys::coordinator(""))
                    && !k.starts_with(&keys::election())
                    && !k.starts_with(&keys::audit(""))
            })
            .collect()
    };
    let before = data(tree(&etcd, keys::ROOT).await);
    let e = coordinator(&etcd).await;
    assert_eq!(data(tree(&etcd, keys::ROOT).await), before);
    e.shutdown().await.unwrap();
}
