//! Nova's admin calls over nubo's own operations, with a cloud admin and
//! two member projects: a server's state reset by hand (`error` mark,
//! admin-only, audited, nothing written for its node beyond the spec),
//! `injectNetworkInfo` (changes nothing), the `same_host` /
//! `different_host` placement hints, and private flavors (seen and used
//! only by cloud admins and the projects they are shared with), and
//! Glance's `owner` (an admin makes an image in, or gives it to, another
//! project; its name index moves along).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::keys;
use nubo_common::model::{Instance, InstanceState};
use nubo_common::proto as pb;
use nubo_common::InstanceId;
use nubo_tests::Etcd;
use tonic::Code;

type Servers = pb::servers_client::ServersClient<tonic::transport::Channel>;

fn act(r: &str) -> pb::ServerActionRequest {
    pb::ServerActionRequest {
        r#ref: r.into(),
        project: String::new(),
    }
}

fn reset(r: &str, state: &str) -> pb::ResetServerStateRequest {
    pb::ResetServerStateRequest {
        r#ref: r.into(),
        project: String::new(),
        state: state.into(),
    }
}

async fn show(servers: &mut Servers, token: &str, id: &str) -> pb::Server {
    servers
        .get(authed(token, req::get(id)))
        .await
        .unwrap()
        .into_inner()
}

async fn spec(etcd: &Etcd, id: &str) -> (Instance, i64) {
    let id: InstanceId = id.parse().unwrap();
    let mut c = etcd.client().await.unwrap();
    let r = c.get(keys::instance(&id), None).await.unwrap();
    let kv = &r.kvs()[0];
    (
        serde_json::from_slice(kv.value()).unwrap(),
        kv.mod_revision(),
    )
}

/// One server of `project`'s member (`token`) made from `r`; panics when
/// it was not created.
async fn one(servers: &mut Servers, token: &str, r: pb::CreateServerRequest) -> pb::Server {
    let out = servers.create(authed(token, r)).await.unwrap().into_inner();
    created(&out, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_state_marks_error_for_admins_only_and_inject_changes_nothing() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    flavor_and_image(&ch, &root, "m1.small", &alice).await;
    register_seen(&etcd, &c, "n0", res(8, 8192, 100), "nova").await;
    let mut servers = Servers::new(ch.clone());
    let vm = one(&mut servers, &alice, server_req("vm", &[], 1)).await;
    report_status(&etcd, &vm.id.parse().unwrap(), "n0", InstanceState::Running).await;
    assert_eq!(show(&mut servers, &alice, &vm.id).await.state, "running");

    // A member may not; a wrong state is refused whoever asks.
    let e = servers
        .reset_state(authed(&alice, reset(&vm.id, "error")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let admin_reset = |state: &str| pb::ResetServerStateRequest {
        project: "p1".into(),
        ..reset(&vm.id, state)
    };
    for bad in ["invalid", "ERROR ", "deleted", ""] {
        let e = servers
            .reset_state(authed(&root, admin_reset(bad)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("error or active"), "{e:?}");
    }
    let (before, _) = spec(&etcd, &vm.id).await;
    assert!(before.error_mark.is_none());

    // The admin marks it error: shown so, with who and when, to its owner
    // too; the spec keeps everything else (power, node, generation).
    let s = servers
        .reset_state(authed(&root, admin_reset("error")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, "error");
    assert!(
        s.last_error.starts_with("set to error by admin at "),
        "{s:?}"
    );
    let seen = show(&mut servers, &alice, &vm.id).await;
    assert_eq!(
        (seen.state.as_str(), seen.desired_power.as_str()),
        ("error", "running")
    );
    let (marked, rev) = spec(&etcd, &vm.id).await;
    assert_eq!(
        marked.error_mark.as_ref().map(|m| m.by.as_str()),
        Some("admin")
    );
    assert_eq!(
        (marked.power, marked.reboot_generation, marked.node.clone()),
        (before.power, before.reboot_generation, before.node.clone())
    );
    // The node's copy carries the same spec (one write for both).
    let node_copy: Instance = get(
        &etcd,
        &keys::node_spec(&"n0".parse().unwrap(), &vm.id.parse().unwrap()),
    )
    .await
    .unwrap();
    assert!(node_copy.error_mark.is_some());
    // Listed as error (the status filter of front ends reads this).
    let listed = servers
        .list(authed(&alice, pb::ListServersRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .servers;
    assert_eq!(
        listed.iter().find(|x| x.id == vm.id).unwrap().state,
        "error"
    );
    // Marking again writes nothing.
    servers
        .reset_state(authed(&root, admin_reset("error")))
        .await
        .unwrap();
    assert_eq!(spec(&etcd, &vm.id).await.1, rev);

    // injectNetworkInfo: admins only, the server must exist, nothing
    // is written.
    let e = servers
        .inject_network_info(authed(&alice, act(&vm.id)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let admin_act = |id: &str| pb::ServerActionRequest {
        r#ref: id.into(),
        project: "p1".into(),
    };
    let e = servers
        .inject_network_info(authed(
            &root,
            admin_act(&InstanceId::new_random().to_string()),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let before_inject = etcd.client().await.unwrap().get("/", None).await.unwrap();
    let s = servers
        .inject_network_info(authed(&root, admin_act(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.id, vm.id);
    assert_eq!(spec(&etcd, &vm.id).await.1, rev);
    // Nothing about the server was written (the audit record is; the
    // leader's node health may be, on its own schedule).
    let mut cl = etcd.client().await.unwrap();
    let changed = cl
        .get(
            "/nubo/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(before_inject.header().unwrap().revision() + 1),
            ),
        )
        .await
        .unwrap();
    let keys_written: Vec<String> = changed
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert!(
        keys_written.iter().any(|k| k.contains("/audit/"))
            && !keys_written.iter().any(|k| k.contains(vm.id.as_str())),
        "{keys_written:?}"
    );

    // While a migration holds the server: refused (abort it first).
    let vm_id: InstanceId = vm.id.parse().unwrap();
    let migration = format!("\"{}\"", uuid::Uuid::new_v4());
    cl.put(keys::instance_migration(&vm_id), migration, None)
        .await
        .unwrap();
    let e = servers
        .reset_state(authed(&root, admin_reset("active")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("being migrated"), "{e:?}");
    assert!(spec(&etcd, &vm.id).await.0.error_mark.is_some());
    cl.delete(keys::instance_migration(&vm_id), None)
        .await
        .unwrap();

    // `active` drops the mark: the agent's report shows again.
    let s = servers
        .reset_state(authed(&root, admin_reset("active")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.state.as_str(), s.last_error.as_str()), ("running", ""));
    assert!(spec(&etcd, &vm.id).await.0.error_mark.is_none());

    // The owner's reboot (or start, stop, rebuild) drops a mark too.
    servers
        .reset_state(authed(&root, admin_reset("error")))
        .await
        .unwrap();
    let s = servers
        .reboot(authed(&alice, act(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(s.state, "error");
    assert!(spec(&etcd, &vm.id).await.0.error_mark.is_none());

    // Audited, the refused call included.
    let trail: Vec<(String, String, String)> = pb::audit_client::AuditClient::new(ch)
        .list(authed(
            &root,
            pb::ListRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .map(|r| (r.user, r.action.to_lowercase(), r.outcome))
        .collect();
    for want in [
        ("admin", "servers.resetstate", "ok"),
        ("alice", "servers.resetstate", "PermissionDenied"),
        ("admin", "servers.resetstate", "InvalidArgument"),
    ] {
        let want = (want.0.to_string(), want.1.to_string(), want.2.to_string());
        assert!(trail.contains(&want), "{want:?} missing in {trail:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_and_different_host_hints_place_by_the_listed_servers() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1"), ("bob", "p2")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;
    flavor_and_image(&ch, &root, "m1.small", &alice).await;
    for n in ["a", "b", "c"] {
        register_seen(&etcd, &c, n, res(8, 8192, 100), "nova").await;
    }
    let mut servers = Servers::new(ch.clone());
    let first = one(&mut servers, &alice, server_req("first", &[], 1)).await;
    // same_host (by id or name): every new server on first's node.
    let near = servers
        .create(authed(
            &alice,
            pb::CreateServerRequest {
                same_host: vec![first.id.clone()],
                ..server_req("near", &[], 3)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(created(&near, i).node, first.node);
    }
    // different_host: never there; with two listed, on the third node.
    let second = one(
        &mut servers,
        &alice,
        pb::CreateServerRequest {
            different_host: vec!["first".into()],
            ..server_req("second", &[], 1)
        },
    )
    .await;
    assert_ne!(second.node, first.node);
    for _ in 0..3 {
        let s = one(
            &mut servers,
            &alice,
            pb::CreateServerRequest {
                different_host: vec![first.id.clone(), second.id.clone()],
                ..server_req("third", &[], 1)
            },
        )
        .await;
        assert!(s.node != first.node && s.node != second.node, "{s:?}");
    }
    // Both at once, contradicting: no node, and the error says why.
    let r = servers
        .create(authed(
            &alice,
            pb::CreateServerRequest {
                same_host: vec![first.id.clone()],
                different_host: vec![first.id.clone()],
                ..server_req("nowhere", &[], 1)
            },
        ))
        .await;
    let msg = match r {
        Ok(r) => r.into_inner().results[0].error.clone(),
        Err(e) => e.message().to_string(),
    };
    assert!(msg.contains("same_host/different_host hint"), "{msg}");
    // A server that does not exist, or of another project: a clear 400.
    let mut bob_image = pb::images_client::ImagesClient::new(ch.clone());
    bob_image
        .create(authed(
            &bob,
            pb::CreateImageRequest {
                name: "cirros".into(),
                disk_format: "qcow2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    for (token, hint) in [(&alice, "ghost"), (&bob, first.id.as_str())] {
        let e = servers
            .create(authed(
                token,
                pb::CreateServerRequest {
                    same_host: vec![hint.into()],
                    ..server_req("x", &[], 1)
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("scheduler hint same_host"), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_flavors_are_seen_and_used_only_where_shared() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1"), ("bob", "p2")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;
    flavor_and_image(&ch, &root, "m1.small", &alice).await;
    register_seen(&etcd, &c, "n0", res(8, 8192, 100), "nova").await;
    let mut flavors = pb::flavors_client::FlavorsClient::new(ch.clone());
    let f = flavors
        .create(authed(
            &root,
            pb::CreateFlavorRequest {
                name: "secret".into(),
                vcpus: 1,
                ram_mb: 256,
                disk_gb: 1,
                private: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(f.private && f.access_projects.is_empty());
    let lister = flavors.clone();
    let names = move |token: &str, all: bool| {
        let mut fl = lister.clone();
        let token = token.to_string();
        async move {
            let mut v: Vec<String> = fl
                .list(authed(
                    &token,
                    pb::ListRequest {
                        all_projects: all,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .flavors
                .into_iter()
                .map(|f| f.name)
                .collect();
            v.sort();
            v
        }
    };
    // Nobody's project has it: members neither list nor see it, admins
    // list it only when asking for all.
    assert_eq!(names(&alice, false).await, ["m1.small"]);
    assert_eq!(names(&alice, true).await, ["m1.small"]);
    assert_eq!(names(&root, false).await, ["m1.small"]);
    assert_eq!(names(&root, true).await, ["m1.small", "secret"]);
    let e = flavors
        .get(authed(&alice, req::get("secret")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut servers = Servers::new(ch.clone());
    let boot = || pb::CreateServerRequest {
        flavor: "secret".into(),
        ..server_req("vm", &[], 1)
    };
    let e = servers.create(authed(&alice, boot())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("private"), "{e:?}");

    // Members may not share it; admins share it with p1.
    let access = |project: &str| pb::FlavorAccessRequest {
        flavor: "secret".into(),
        project: project.into(),
    };
    let e = flavors
        .add_access(authed(&alice, access("p1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let f = flavors
        .add_access(authed(&root, access("p1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.access_projects, ["p1"]);
    let e = flavors
        .add_access(authed(&root, access("p1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // Alice sees and boots it (without the access list); Bob does not.
    assert_eq!(names(&alice, false).await, ["m1.small", "secret"]);
    let seen = flavors
        .get(authed(&alice, req::get("secret")))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.private && seen.access_projects.is_empty());
    let vm = one(&mut servers, &alice, boot()).await;
    assert_eq!(vm.flavor, "secret");
    assert_eq!(names(&bob, false).await, ["m1.small"]);
    let e = flavors
        .get(authed(&bob, req::get("secret")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Unshared: Alice's server keeps running with it, new ones are
    // refused; removing twice is NotFound; a public flavor has no list.
    let f = flavors
        .remove_access(authed(&root, access("p1")))
        .await
        .unwrap()
        .into_inner();
    assert!(f.access_projects.is_empty());
    let e = flavors
        .remove_access(authed(&root, access("p1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(show(&mut servers, &alice, &vm.id).await.flavor, "secret");
    let e = servers.create(authed(&alice, boot())).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = flavors
        .add_access(authed(
            &root,
            pb::FlavorAccessRequest {
                flavor: "m1.small".into(),
                project: "p2".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // A cloud admin boots it in its own project without being shared.
    let admin_image = pb::CreateImageRequest {
        name: "cirros".into(),
        disk_format: "qcow2".into(),
        ..Default::default()
    };
    pb::images_client::ImagesClient::new(ch.clone())
        .create(authed(&root, admin_image))
        .await
        .unwrap();
    let by_admin = one(&mut servers, &root, boot()).await;
    assert_eq!(by_admin.flavor, "secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_makes_and_gives_images_to_other_projects() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1"), ("bob", "p2")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;
    let mut images = pb::images_client::ImagesClient::new(ch.clone());
    let new = |project: &str| pb::CreateImageRequest {
        name: "base".into(),
        project: project.into(),
        disk_format: "raw".into(),
        visibility: "private".into(),
        ..Default::default()
    };
    // Glance's `owner` at creation: the admin makes it in p1.
    let img = images
        .create(authed(&root, new("p1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(img.project, "p1");
    // A member may not make one elsewhere.
    let e = images.create(authed(&bob, new("p1"))).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::NotFound),
        "{e:?}"
    );
    // Alice finds it by name in her project; Bob does not.
    let got = images
        .get(authed(&alice, req::get("base")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, img.id);
    assert!(images.get(authed(&bob, req::get(&img.id))).await.is_err());
    let give = |to: &str| pb::UpdateImageRequest {
        r#ref: img.id.clone(),
        project: "p1".into(),
        owner: Some(to.into()),
        ..Default::default()
    };
    // Only admins give images away.
    let e = images
        .update(authed(
            &alice,
            pb::UpdateImageRequest {
                project: String::new(),
                ..give("p2")
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Bob has an image of that name: the move is refused, nothing changes.
    images.create(authed(&bob, new(""))).await.unwrap();
    let e = images.update(authed(&root, give("p2"))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    images.delete(authed(&bob, req::del("base"))).await.unwrap();
    // Given to p2: its name moves along (Bob finds it, Alice no longer).
    let moved = images
        .update(authed(&root, give("p2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.project, "p2");
    let got = images
        .get(authed(&bob, req::get("base")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, img.id);
    assert!(images.get(authed(&alice, req::get("base"))).await.is_err());
}
