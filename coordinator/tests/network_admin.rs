//! Neutron's admin network calls through the API (`auth = "token"`, real
//! etcd, the coordinator in-process): networks without a name (referenced
//! by id, no name-index entry, several per project), `router:external`
//! changed by a cloud admin only and refused while in use (a router's
//! subnet cannot become external; a network holding routers' gateways or
//! floating IPs cannot become internal), and an external network deleted
//! with its unassociated floating IPs (released to their projects' quota);
//! a port bound to a host by an admin (`binding:host_id`): admins only, a
//! registered node, plugged only by a server on that node.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::{channel, count, flavor_and_image, issue_token, member_cloud, register_seen, res};
use nubo_common::keys;
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    text: &str,
) {
    match r {
        Ok(v) => panic!("accepted: {:?}", v.into_inner()),
        Err(e) => {
            assert_eq!(e.code(), code, "{e:?}");
            assert!(e.message().contains(text), "{:?}", e.message());
        }
    }
}

fn net(name: &str, cidr: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        name: name.into(),
        cidr: cidr.into(),
        ..Default::default()
    }
}

fn set_external(r: &str, on: bool) -> pb::UpdateNetworkRequest {
    pb::UpdateNetworkRequest {
        r#ref: r.into(),
        external: Some(on),
        ..Default::default()
    }
}

fn get(r: &str) -> pb::GetRequest {
    pb::GetRequest {
        r#ref: r.into(),
        ..Default::default()
    }
}

fn del(r: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        r#ref: r.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_without_a_name_are_referenced_by_id() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let names = "/nubo/v1/private/names/network/p1/";

    // Two networks without a name in one project: both made, no index entry.
    let a = nets
        .create(req(&alice, net("", "10.1.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    let b = nets
        .create(req(&alice, net("", "10.2.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(a.id, b.id);
    assert_eq!((a.name.as_str(), b.name.as_str()), ("", ""));
    assert_eq!(count(&etcd, names).await, 0);
    let shown = nets
        .get(req(&alice, get(&a.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (shown.id.as_str(), shown.cidr.as_str()),
        (a.id.as_str(), "10.1.0.0/24")
    );
    // A name is still checked, and an empty reference is no reference.
    refused(
        nets.create(req(&alice, net("-bad", "10.3.0.0/24"))).await,
        Code::InvalidArgument,
        "must start with a letter or digit",
    );
    refused(
        nets.get(req(&alice, get(""))).await,
        Code::InvalidArgument,
        "required",
    );

    // Naming one indexes it; the name is unique; clearing it frees the name.
    let named = pb::UpdateNetworkRequest {
        r#ref: a.id.clone(),
        name: Some("x".into()),
        ..Default::default()
    };
    nets.update(req(&alice, named.clone())).await.unwrap();
    assert_eq!(count(&etcd, names).await, 1);
    assert_eq!(
        nets.get(req(&alice, get("x")))
            .await
            .unwrap()
            .into_inner()
            .id,
        a.id
    );
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                r#ref: b.id.clone(),
                ..named.clone()
            },
        ))
        .await,
        Code::AlreadyExists,
        "already exists",
    );
    let cleared = nets
        .update(req(
            &alice,
            pb::UpdateNetworkRequest {
                name: Some(String::new()),
                ..named.clone()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.name, "");
    assert_eq!(count(&etcd, names).await, 0);
    refused(
        nets.get(req(&alice, get("x"))).await,
        Code::NotFound,
        "not found",
    );
    nets.update(req(
        &alice,
        pb::UpdateNetworkRequest {
            r#ref: b.id.clone(),
            ..named
        },
    ))
    .await
    .unwrap();

    // Deleting by id leaves no index entry and no record behind.
    for n in [&a, &b] {
        nets.delete(req(&alice, del(&n.id))).await.unwrap();
    }
    assert_eq!(count(&etcd, names).await, 0);
    assert_eq!(count(&etcd, &keys::networks_prefix()).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_external_is_changed_by_admins_and_refused_while_in_use() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut routers = pb::routers_client::RoutersClient::new(ch.clone());
    let mut fips = pb::floating_ips_client::FloatingIpsClient::new(ch.clone());
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let admin = issue_token(&mut tokens, "admin", "adminpw").await;

    // A member may not change it, not even on its own network.
    let own = nets
        .create(req(&alice, net("own", "10.9.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    refused(
        nets.update(req(&alice, set_external(&own.id, true))).await,
        Code::PermissionDenied,
        "only a cloud admin",
    );
    assert!(
        !nets
            .get(req(&alice, get("own")))
            .await
            .unwrap()
            .into_inner()
            .external
    );

    // The admin makes a network external; members then see it and take a
    // floating IP and a router gateway from it.
    let ext = nets
        .create(req(&admin, net("", "10.50.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    assert!(!ext.external);
    let made = nets
        .update(req(&admin, set_external(&ext.id, true)))
        .await
        .unwrap()
        .into_inner();
    assert!(made.external);
    let fip = fips
        .create(req(
            &alice,
            pb::CreateFloatingIpRequest {
                network: ext.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let gw = routers
        .create(req(
            &alice,
            pb::CreateRouterRequest {
                name: "r1".into(),
                external_gateway: ext.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    // Making it internal is refused while the gateway and the floating IP
    // are on it, naming them; unchanged meanwhile.
    refused(
        nets.update(req(&admin, set_external(&ext.id, false))).await,
        Code::FailedPrecondition,
        &gw.id,
    );
    assert!(
        nets.get(req(&admin, get(&ext.id)))
            .await
            .unwrap()
            .into_inner()
            .external
    );
    // Deleting it is refused while the router's gateway is on it.
    refused(
        nets.delete(req(&admin, del(&ext.id))).await,
        Code::FailedPrecondition,
        "besides its 1 floating IPs",
    );
    routers.delete(req(&alice, del(&gw.id))).await.unwrap();
    refused(
        nets.update(req(&admin, set_external(&ext.id, false))).await,
        Code::FailedPrecondition,
        "1 floating IPs",
    );

    // A router's subnet cannot become external.
    let inner = nets
        .create(req(&admin, net("inner", "10.60.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    let r2 = routers
        .create(req(
            &admin,
            pb::CreateRouterRequest {
                name: "r2".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    routers
        .add_subnet(req(
            &admin,
            pb::RouterSubnetRequest {
                r#ref: r2.id.clone(),
                network: inner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    refused(
        nets.update(req(&admin, set_external(&inner.id, true)))
            .await,
        Code::FailedPrecondition,
        "router's subnet",
    );
    assert!(
        !nets
            .get(req(&admin, get("inner")))
            .await
            .unwrap()
            .into_inner()
            .external
    );

    // The external network goes with its unassociated floating IP (alice's).
    nets.delete(req(&admin, del(&ext.id))).await.unwrap();
    refused(
        fips.get(req(&alice, get(&fip.id))).await,
        Code::NotFound,
        "not found",
    );
    assert_eq!(count(&etcd, &keys::floating_ips_prefix()).await, 0);
    let ext_id: nubo_common::NetworkId = ext.id.parse().unwrap();
    assert_eq!(count(&etcd, &keys::ipam_prefix(&ext_id)).await, 0);

    // Internal again once nothing external is on it.
    let e2 = nets
        .create(req(&admin, net("e2", "10.70.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    nets.update(req(&admin, set_external(&e2.id, true)))
        .await
        .unwrap();
    let back = nets
        .update(req(&admin, set_external(&e2.id, false)))
        .await
        .unwrap()
        .into_inner();
    assert!(!back.external);
}

fn port_on(net: &str, host: &str) -> pb::CreatePortRequest {
    pb::CreatePortRequest {
        network_ref: net.into(),
        host: host.into(),
        ..Default::default()
    }
}

fn set_host(port: &str, host: &str) -> pb::UpdatePortRequest {
    pb::UpdatePortRequest {
        r#ref: port.into(),
        host: Some(host.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_bound_to_a_host_is_plugged_only_by_a_server_there() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    // hv1 takes the server; hv2 is registered but too small for it.
    register_seen(&etcd, &c, "nbt-hv1", res(8, 8192, 100), "nova").await;
    register_seen(&etcd, &c, "nbt-hv2", res(1, 64, 1), "nova").await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut ports = pb::ports_client::PortsClient::new(ch.clone());
    let mut servers = pb::servers_client::ServersClient::new(ch.clone());
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let admin = issue_token(&mut tokens, "admin", "adminpw").await;
    flavor_and_image(&ch, &admin, "m1.small", &admin).await;
    nets.create(req(&alice, net("a", "10.1.0.0/24")))
        .await
        .unwrap();
    nets.create(req(&admin, net("n", "10.2.0.0/24")))
        .await
        .unwrap();

    // Members may not bind; an unknown or malformed host is refused.
    refused(
        ports.create(req(&alice, port_on("a", "nbt-hv1"))).await,
        Code::PermissionDenied,
        "only a cloud admin",
    );
    let plain = ports
        .create(req(&alice, port_on("a", "")))
        .await
        .unwrap()
        .into_inner();
    refused(
        ports
            .update(req(&alice, set_host(&plain.id, "nbt-hv1")))
            .await,
        Code::PermissionDenied,
        "only a cloud admin",
    );
    refused(
        ports.create(req(&admin, port_on("n", "nbt-nowhere"))).await,
        Code::InvalidArgument,
        "not a registered node",
    );
    refused(
        ports.create(req(&admin, port_on("n", "bad host!"))).await,
        Code::InvalidArgument,
        "host",
    );

    // Bound to hv2: shown as such, and no server elsewhere may plug it.
    let p = ports
        .create(req(&admin, port_on("n", "nbt-hv2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (p.requested_host.as_str(), p.node.as_str()),
        ("nbt-hv2", "")
    );
    let shown = ports
        .get(req(&admin, get(&p.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.requested_host, "nbt-hv2");
    let boot = pb::CreateServerRequest {
        name: "s".into(),
        flavor: "m1.small".into(),
        image_ref: "cirros".into(),
        ports: vec![p.id.clone()],
        count: 1,
        ..Default::default()
    };
    let r = servers
        .create(req(&admin, boot.clone()))
        .await
        .map(|r| r.into_inner());
    let err = match r {
        Ok(r) => r.results[0].error.clone(),
        Err(s) => s.message().to_string(),
    };
    // Placed only on the port's host, which is too small: the scheduler
    // says why every node was left out.
    assert!(
        err.contains("excluded by the same_host/different_host hint or a port's binding:host_id")
            && err.contains("1 full"),
        "{err}"
    );
    let after = ports
        .get(req(&admin, get(&p.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.device_id.as_str(), after.requested_host.as_str()),
        ("", "nbt-hv2")
    );

    // Cleared, then bound to hv1: the server there plugs it, and the
    // binding is the server's node from then on.
    let cleared = ports
        .update(req(&admin, set_host(&p.id, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.requested_host, "");
    ports
        .update(req(&admin, set_host(&p.id, "nbt-hv1")))
        .await
        .unwrap();
    let made = servers
        .create(req(&admin, boot))
        .await
        .unwrap()
        .into_inner();
    assert!(made.results[0].error.is_empty(), "{:?}", made.results[0]);
    let plugged = ports
        .get(req(&admin, get(&p.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plugged.node.as_str(), plugged.requested_host.as_str()),
        ("nbt-hv1", "")
    );
    assert!(!plugged.device_id.is_empty());
    // A plugged port's binding follows its server.
    refused(
        ports.update(req(&admin, set_host(&p.id, "nbt-hv2"))).await,
        Code::FailedPrecondition,
        "follows the server",
    );
}
