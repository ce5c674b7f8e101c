//! A network created without a CIDR, then given its subnet (Neutron's
//! network-then-subnet creation, also `nubo network subnet set`), through
//! the API (`auth = "token"`, real etcd, the coordinator in-process): no
//! server on it before the subnet, ports without an address (Neutron's port
//! on a bare network) that no server can plug and that keep the network
//! from being deleted, a clear error for each bad request (a gateway
//! without a subnet, an overlap inside one network, a subnet removed while it
//! has ports), and the subnet removed when the network has no port left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::{channel, issue_token, member_cloud, register_node, res};
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

fn subnet(network: &str, cidr: &str) -> pb::SetSubnetRequest {
    pb::SetSubnetRequest {
        r#ref: network.into(),
        cidr: cidr.into(),
        ..Default::default()
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_gets_its_subnet_after_creation() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut ports = pb::ports_client::PortsClient::new(ch.clone());
    let mut servers = pb::servers_client::ServersClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;

    // A gateway or DNS servers without a CIDR make no sense.
    refused(
        nets.create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: "x".into(),
                gateway: "10.1.0.1".into(),
                ..Default::default()
            },
        ))
        .await,
        Code::InvalidArgument,
        "need a subnet",
    );
    let bare = nets
        .create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: "bare".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bare.cidr, "");
    assert_eq!(bare.gateway, "");
    assert_ne!(bare.vni, 0, "an overlay network has its VNI from the start");
    let other = nets
        .create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: "other".into(),
                cidr: "10.1.0.0/24".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();

    // A port before the subnet exists has no address; no server takes it
    // and no server is made on the network.
    let port_req = pb::CreatePortRequest {
        network_ref: "bare".into(),
        ..Default::default()
    };
    let bare_port = ports
        .create(req(&alice, port_req.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (bare_port.ip.as_str(), bare_port.network_id.as_str()),
        ("", bare.id.as_str())
    );
    assert!(bare_port.mac.starts_with("fa:16:3e:"), "{bare_port:?}");
    let shown_port = ports
        .get(req(
            &alice,
            pb::GetRequest {
                r#ref: bare_port.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown_port, bare_port);
    let net_del = pb::DeleteRequest {
        r#ref: "bare".into(),
        ..Default::default()
    };
    refused(
        nets.delete(req(&alice, net_del.clone())).await,
        Code::FailedPrecondition,
        "still has 1 ports",
    );
    common::flavor_and_image(&ch, &root, "m1", &alice).await;
    register_node(&etcd, "n0", res(8, 8 * 1024, 100), "nova").await;
    let mut server = common::server_req("vm", &["bare"], 1);
    server.flavor = "m1".into();
    let r = servers.create(req(&alice, server)).await;
    match r {
        Err(e) => {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("has no subnet yet"), "{e:?}");
        }
        Ok(r) => {
            let r = r.into_inner();
            let err = r.results[0].error.clone();
            assert!(r.results[0].server.is_none(), "{r:?}");
            assert!(format!("{err:?}").contains("has no subnet yet"), "{r:?}");
        }
    }

    // Bad subnets, each with its reason.
    refused(
        nets.set_subnet(req(&alice, subnet("bare", ""))).await,
        Code::InvalidArgument,
        "needs a CIDR",
    );
    refused(
        nets.set_subnet(req(&alice, subnet("bare", "10.2.0.0/30")))
            .await,
        Code::InvalidArgument,
        "too small",
    );
    refused(
        nets.set_subnet(req(
            &alice,
            pb::SetSubnetRequest {
                gateway: "10.3.0.1".into(),
                ..subnet("bare", "10.2.0.0/24")
            },
        ))
        .await,
        Code::InvalidArgument,
        "not a host address",
    );
    refused(
        nets.set_subnet(req(&alice, subnet("other", "10.1.0.128/25")))
            .await,
        Code::InvalidArgument,
        "overlaps with another subnet of network \"other\"",
    );
    refused(
        nets.set_subnet(req(&alice, subnet("nosuch", "10.5.0.0/24")))
            .await,
        Code::NotFound,
        "nosuch",
    );

    // The subnet: then ports and servers work.
    let set = nets
        .set_subnet(req(
            &alice,
            pb::SetSubnetRequest {
                dns: vec!["10.2.0.53".into()],
                name: "sub1".into(),
                ..subnet(&bare.id, "10.2.0.0/24")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.id, bare.id);
    assert_eq!(set.cidr, "10.2.0.0/24");
    assert_eq!(set.gateway, "10.2.0.1");
    assert_eq!(set.dns, vec!["10.2.0.53".to_string()]);
    assert_eq!(set.subnet_name, "sub1");
    let shown = nets
        .get(req(
            &alice,
            pb::GetRequest {
                r#ref: "bare".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown, set);
    refused(
        nets.set_subnet(req(&alice, subnet("bare", "10.2.0.0/16")))
            .await,
        Code::InvalidArgument,
        "overlaps with another subnet of network \"bare\"",
    );
    let port = ports
        .create(req(&alice, port_req))
        .await
        .unwrap()
        .into_inner();
    assert!(
        port.ip.starts_with("10.2.0."),
        "address from the new subnet: {port:?}"
    );
    // The address-less port stays so; a server refuses it, with the reason.
    let mut with_bare = common::server_req("vm2", &[], 1);
    with_bare.flavor = "m1".into();
    with_bare.ports = vec![bare_port.id.clone()];
    match servers.create(req(&alice, with_bare)).await {
        Err(e) => assert!(e.message().contains("has no fixed IP"), "{e:?}"),
        Ok(r) => {
            let r = r.into_inner();
            assert!(r.results[0].server.is_none(), "{r:?}");
            assert!(
                format!("{:?}", r.results[0].error).contains("has no fixed IP"),
                "{r:?}"
            );
        }
    }

    // Its subnet stays while a port uses it; goes once none is left.
    let del = pb::DeleteRequest {
        r#ref: "bare".into(),
        ..Default::default()
    };
    refused(
        nets.delete_subnet(req(&alice, del.clone())).await,
        Code::FailedPrecondition,
        "still has 1 ports",
    );
    ports
        .delete(req(
            &alice,
            pb::DeleteRequest {
                r#ref: port.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let cleared = nets
        .delete_subnet(req(&alice, del.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cleared.cidr.as_str(), cleared.subnet_name.as_str()),
        ("", "")
    );
    refused(
        nets.delete_subnet(req(&alice, del)).await,
        Code::NotFound,
        "has no subnet",
    );
    assert_eq!(other.cidr, "10.1.0.0/24");

    // The address-less port kept the network; once deleted, the network goes.
    refused(
        nets.delete(req(&alice, net_del.clone())).await,
        Code::FailedPrecondition,
        "still has 1 ports",
    );
    ports
        .delete(req(
            &alice,
            pb::DeleteRequest {
                r#ref: bare_port.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    nets.delete(req(&alice, net_del)).await.unwrap();
}
