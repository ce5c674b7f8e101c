//! A cloud admin acts on any project's resource by its id (`auth =
//! "token"`, real etcd, the coordinator in-process): with an empty project
//! the request is served in the owner's project (servers, networks, ports,
//! routers, security groups, floating IPs), the audit record names the
//! project acted in; a port the admin creates on a member's network is the
//! network owner's; names stay scoped to the caller's project; an explicit
//! project is honoured as given; members are unchanged (another project's
//! resource is not found), except external networks, which every project
//! sees by id (as in Neutron).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::req::{del, get};
use common::{channel, created, issue_token, member_cloud, put_external, register_node, res};
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

fn action(r: &str) -> pb::ServerActionRequest {
    pb::ServerActionRequest {
        r#ref: r.into(),
        project: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_acts_on_another_projects_resources_by_id() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1"), ("bob", "p2")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut ports = pb::ports_client::PortsClient::new(ch.clone());
    let mut servers = pb::servers_client::ServersClient::new(ch.clone());
    let mut routers = pb::routers_client::RoutersClient::new(ch.clone());
    let mut sgs = pb::security_groups_client::SecurityGroupsClient::new(ch.clone());
    let mut fips = pb::floating_ips_client::FloatingIpsClient::new(ch.clone());
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    let mut audit = pb::audit_client::AuditClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;

    // Alice's resources in p1.
    let net = nets
        .create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: "net".into(),
                cidr: "10.7.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let port = ports
        .create(req(
            &alice,
            pb::CreatePortRequest {
                name: "pa".into(),
                network_ref: "net".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ext = put_external(&etcd, "public", "10.98.0.0/24", "10.98.0.1").await;
    let router = routers
        .create(req(
            &alice,
            pb::CreateRouterRequest {
                name: "r1".into(),
                external_gateway: ext.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sg = sgs
        .create(req(
            &alice,
            pb::CreateSecurityGroupRequest {
                name: "web".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    common::flavor_and_image(&ch, &root, "m1.small", &alice).await;
    register_node(&etcd, "n0", res(8, 8 * 1024, 100), "nova").await;
    for i in 0.. {
        let listed = nodes
            .list(req(&root, pb::ListRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .nodes;
        if !listed.is_empty() {
            break;
        }
        assert!(i < 400, "node n0 never listed");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let r = servers
        .create(req(&alice, common::server_req("vm", &["net"], 1)))
        .await
        .unwrap()
        .into_inner();
    let vm = created(&r, 0);
    assert_eq!(vm.project, "p1");

    // The admin (token of project "admin", no project in the request)
    // sees each of them by id, in p1.
    let s = servers
        .get(req(&root, get(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.id.as_str(), s.project.as_str()), (vm.id.as_str(), "p1"));
    let n = nets
        .get(req(&root, get(&net.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.project, "p1");
    let p = ports
        .get(req(&root, get(&port.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.project, "p1");
    let rt = routers
        .get(req(&root, get(&router.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rt.project, "p1");
    let g = sgs.get(req(&root, get(&sg.id))).await.unwrap().into_inner();
    assert_eq!(g.project, "p1");
    // Names stay scoped to the caller's project: only ids cross.
    for e in [
        servers.get(req(&root, get("vm"))).await.unwrap_err(),
        nets.get(req(&root, get("net"))).await.unwrap_err(),
        routers.get(req(&root, get("r1"))).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("in project admin"), "{e:?}");
    }
    // An explicit project is honoured as given.
    let e = servers
        .get(req(
            &root,
            pb::GetRequest {
                r#ref: vm.id.clone(),
                project: "admin".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A member of another project: unchanged, not found.
    let e = servers.get(req(&bob, get(&vm.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("in project p2"), "{e:?}");
    let e = nets.get(req(&bob, get(&net.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = servers.stop(req(&bob, action(&vm.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // ... but every project sees an external network by id (Neutron).
    let shown = nets
        .get(req(&bob, get(&ext.to_string())))
        .await
        .unwrap()
        .into_inner();
    assert!(shown.external);
    assert_eq!(shown.project, "admin");

    // The admin acts: stops the server, renames the router, creates a
    // port on Alice's network (Alice's port: the network's project).
    let s = servers
        .stop(req(&root, action(&vm.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.project.as_str(), s.desired_power.as_str()),
        ("p1", "stopped")
    );
    let rt = routers
        .update(req(
            &root,
            pb::UpdateRouterRequest {
                r#ref: router.id.clone(),
                name: Some("r1-renamed".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rt.name.as_str(), rt.project.as_str()),
        ("r1-renamed", "p1")
    );
    // The name index is the owner's: Alice finds it by its new name.
    routers.get(req(&alice, get("r1-renamed"))).await.unwrap();
    let admin_port = ports
        .create(req(
            &root,
            pb::CreatePortRequest {
                name: "by-admin".into(),
                network_ref: net.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admin_port.project, "p1");
    assert_eq!(admin_port.network_id, net.id);
    ports.get(req(&alice, get("by-admin"))).await.unwrap();
    // A member cannot put a port on another project's network.
    let e = ports
        .create(req(
            &bob,
            pb::CreatePortRequest {
                name: "x".into(),
                network_ref: net.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Floating IPs: the admin allocates one for p1 (project given),
    // associates it with Alice's port by id, and lists every project's;
    // Alice lists hers only, Bob none of them.
    let fip = fips
        .create(req(
            &root,
            pb::CreateFloatingIpRequest {
                network: ext.to_string(),
                project: "p1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fip.project, "p1");
    let own_fip = fips
        .create(req(
            &root,
            pb::CreateFloatingIpRequest {
                network: ext.to_string(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own_fip.project, "admin");
    // The admin routes Alice's network through her router (both by id).
    let rt = routers
        .add_subnet(req(
            &root,
            pb::RouterSubnetRequest {
                r#ref: router.id.clone(),
                network: net.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rt.project, "p1");
    let set = fips
        .set(req(
            &root,
            pb::SetFloatingIpRequest {
                r#ref: fip.id.clone(),
                port: port.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.port_id, port.id);
    let shown = fips
        .get(req(&root, get(&fip.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (shown.project.as_str(), shown.port_id.as_str()),
        ("p1", port.id.as_str())
    );
    let listed = |all: bool| pb::ListRequest {
        all_projects: all,
        ..Default::default()
    };
    let ids = |l: pb::ListFloatingIpsResponse| -> Vec<String> {
        l.floating_ips.into_iter().map(|f| f.id).collect()
    };
    let admin_all = ids(fips
        .list(req(&root, listed(true)))
        .await
        .unwrap()
        .into_inner());
    assert!(
        admin_all.contains(&fip.id) && admin_all.contains(&own_fip.id),
        "{admin_all:?}"
    );
    let alice_sees = ids(fips
        .list(req(&alice, listed(true)))
        .await
        .unwrap()
        .into_inner());
    assert_eq!(alice_sees, vec![fip.id.clone()]);
    let bob_sees = ids(fips
        .list(req(&bob, listed(true)))
        .await
        .unwrap()
        .into_inner());
    assert!(bob_sees.is_empty(), "{bob_sees:?}");
    let e = fips.get(req(&bob, get(&fip.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // The audit trail names the project the admin acted in.
    let records = audit
        .list(req(&root, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .records;
    let stop = records
        .iter()
        .find(|r| r.action == "servers.stop" && r.user == "admin")
        .expect("the admin's stop is audited");
    assert_eq!(
        (stop.project.as_str(), stop.acted_in_project.as_str()),
        ("admin", "p1")
    );
    let set = records
        .iter()
        .find(|r| r.action == "floatingips.set" && r.user == "admin")
        .expect("the admin's association is audited");
    assert_eq!(set.acted_in_project, "p1");
    // A project given explicitly, or the admin's own: no override noted.
    let creates: Vec<_> = records
        .iter()
        .filter(|r| r.action == "floatingips.create" && r.user == "admin")
        .collect();
    assert_eq!(creates.len(), 2, "{records:?}");
    assert!(
        creates.iter().all(|r| r.acted_in_project.is_empty()),
        "{creates:?}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.user == "alice")
            .all(|r| r.acted_in_project.is_empty()),
        "{records:?}"
    );

    // The native CLI: `nubo server show ID` without --project, as the
    // admin (Alice's server) and as Bob (not found); `nubo audit list`.
    let dir = tempfile::tempdir().unwrap();
    let login = |user: &str, pw: &str| {
        let cli = nubo_tests::Cli::new(&c.endpoint())
            .and_then(|cli| cli.with_token_store(&dir.path().join(format!("home-{user}"))))
            .unwrap();
        cli.login(user, pw, dir.path()).unwrap();
        cli
    };
    tokio::task::block_in_place(|| {
        let admin_cli = login("admin", "adminpw");
        let shown = admin_cli
            .run(&["server", "show", &vm.id])
            .unwrap()
            .ok()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            (shown["id"].as_str(), shown["project"].as_str()),
            (Some(vm.id.as_str()), Some("p1"))
        );
        let bob_cli = login("bob", "pw");
        let out = bob_cli.run(&["server", "show", &vm.id]).unwrap();
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains("not found in project p2"), "{out:?}");
        let trail = admin_cli
            .run(&["audit", "list"])
            .unwrap()
            .ok()
            .unwrap()
            .json()
            .unwrap();
        assert!(
            trail
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["action"] == "servers.stop" && r["acted_in_project"] == "p1"),
            "{trail}"
        );
    });

    // The admin deletes Alice's floating IP, port, router and server by id.
    fips.delete(req(&root, del(&fip.id))).await.unwrap();
    ports.delete(req(&root, del(&admin_port.id))).await.unwrap();
    routers
        .remove_subnet(req(
            &root,
            pb::RouterSubnetRequest {
                r#ref: router.id.clone(),
                network: net.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    routers.delete(req(&root, del(&router.id))).await.unwrap();
    servers.delete(req(&root, del(&vm.id))).await.unwrap();
    let e = routers
        .get(req(&alice, get("r1-renamed")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = fips.get(req(&alice, get(&fip.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    c.shutdown().await.unwrap();
}
