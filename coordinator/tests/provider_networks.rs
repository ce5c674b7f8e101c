//! Provider, external and shared networks through the API (`auth =
//! "token"`, real etcd, the coordinator in-process): admin only, every
//! malformed provider segment refused with a clear error, a VLAN id (or the
//! flat segment) used once per physical network, no VNI; a shared network
//! is listed, found and used (ports, servers) by another project, which can
//! neither delete it nor see the admin's other networks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::req::{del, get};
use common::{channel, created, issue_token, member_cloud, register_node, res};
use nubo_common::keys;
use nubo_common::model::{Network, ProviderType};
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::transport::Channel;
use tonic::Code;

fn net(name: &str, cidr: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        name: name.into(),
        cidr: cidr.into(),
        ..Default::default()
    }
}

fn vlan(name: &str, cidr: &str, physnet: &str, segment: u32) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        provider_type: "vlan".into(),
        physical_network: physnet.into(),
        segment,
        ..net(name, cidr)
    }
}

fn flat(name: &str, cidr: &str, physnet: &str) -> pb::CreateNetworkRequest {
    pb::CreateNetworkRequest {
        provider_type: "flat".into(),
        physical_network: physnet.into(),
        ..net(name, cidr)
    }
}

/// Creating `r` with token `tok` fails with `code` and a message
/// containing `text`.
async fn refused(
    nets: &mut pb::networks_client::NetworksClient<Channel>,
    tok: &str,
    r: pb::CreateNetworkRequest,
    code: Code,
    text: &str,
) {
    let what = format!("{r:?}");
    match nets.create(req(tok, r)).await {
        Ok(n) => panic!("{what} was accepted: {:?}", n.into_inner()),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(e.message().contains(text), "{what}: {:?}", e.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_external_and_shared_networks() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1"), ("bob", "p2")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut ports = pb::ports_client::PortsClient::new(ch.clone());
    let mut servers = pb::servers_client::ServersClient::new(ch.clone());
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    let root = issue_token(&mut tokens, "admin", "adminpw").await;
    let alice = issue_token(&mut tokens, "alice", "pw").await;
    let bob = issue_token(&mut tokens, "bob", "pw").await;

    // A member: provider, external and shared are admin only; a plain
    // network is fine (positive control).
    refused(
        &mut nets,
        &alice,
        vlan("x", "10.9.0.0/24", "physnet1", 120),
        Code::PermissionDenied,
        "only a cloud admin may create a provider network",
    )
    .await;
    refused(
        &mut nets,
        &alice,
        pb::CreateNetworkRequest {
            external: true,
            ..net("x", "10.9.0.0/24")
        },
        Code::PermissionDenied,
        "only a cloud admin may create an external network",
    )
    .await;
    refused(
        &mut nets,
        &alice,
        pb::CreateNetworkRequest {
            shared: true,
            ..net("x", "10.9.0.0/24")
        },
        Code::PermissionDenied,
        "only a cloud admin may create a shared network",
    )
    .await;
    let own = nets
        .create(req(&alice, net("own", "10.9.0.0/24")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(own.vni, 0, "an overlay network has a VNI");
    assert_eq!(own.provider_type, "");

    // Malformed segments, each with its reason.
    for (r, text) in [
        (
            vlan("bad", "10.50.0.0/24", "physnet1", 0),
            "a vlan network needs a VLAN id (--segment 1-4094)",
        ),
        (
            vlan("bad", "10.50.0.0/24", "physnet1", 4095),
            "VLAN id 4095 is out of range 1-4094",
        ),
        (
            vlan("bad", "10.50.0.0/24", "physnet1", 70000),
            "VLAN id 70000 is out of range 1-4094",
        ),
        (
            pb::CreateNetworkRequest {
                segment: 5,
                ..flat("bad", "10.50.0.0/24", "physnet1")
            },
            "a flat network has no segment (got 5)",
        ),
        (
            vlan("bad", "10.50.0.0/24", "", 120),
            "a provider network needs a physical network (--physical-network)",
        ),
        (
            pb::CreateNetworkRequest {
                provider_type: "vxlan".into(),
                physical_network: "physnet1".into(),
                ..net("bad", "10.50.0.0/24")
            },
            "unknown provider type \"vxlan\": use flat or vlan",
        ),
        (
            pb::CreateNetworkRequest {
                physical_network: "physnet1".into(),
                segment: 120,
                ..net("bad", "10.50.0.0/24")
            },
            "a physical network or segment needs --provider-type flat or vlan",
        ),
        (
            vlan("bad", "10.50.0.0/24", "phys/net", 120),
            "physical network name \"phys/net\"",
        ),
    ] {
        refused(&mut nets, &root, r, Code::InvalidArgument, text).await;
    }

    // The VLAN provider network: shared, external, the upstream router as
    // gateway, no VNI.
    let ext = nets
        .create(req(
            &root,
            pb::CreateNetworkRequest {
                gateway: "10.99.0.254".into(),
                external: true,
                shared: true,
                ..vlan("ext", "10.99.0.0/24", "physnet1", 120)
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            ext.provider_type.as_str(),
            ext.physical_network.as_str(),
            ext.segment,
            ext.vni,
            ext.external,
            ext.shared,
            ext.gateway.as_str()
        ),
        ("vlan", "physnet1", 120, 0, true, true, "10.99.0.254")
    );
    let stored: Network = common::get(&etcd, &keys::network(&ext.id.parse().unwrap()))
        .await
        .unwrap();
    let p = stored.provider.as_ref().unwrap();
    assert_eq!(
        (p.kind, p.physical_network.as_str(), p.segment),
        (ProviderType::Vlan, "physnet1", Some(120))
    );
    assert_eq!(
        common::get::<String>(&etcd, &keys::provider_segment("physnet1", Some(120))).await,
        Some(ext.id.clone())
    );
    assert_eq!(common::count(&etcd, &keys::vni(0)).await, 0, "no VNI taken");

    // VLAN 120 once per physical network; another VLAN or another
    // physical network is fine.
    refused(
        &mut nets,
        &root,
        vlan("ext2", "10.98.0.0/24", "physnet1", 120),
        Code::AlreadyExists,
        "VLAN 120 of physical network \"physnet1\" is already used by another network",
    )
    .await;
    nets.create(req(&root, vlan("ext3", "10.97.0.0/24", "physnet1", 121)))
        .await
        .unwrap();
    let other = nets
        .create(req(&root, vlan("ext4", "10.96.0.0/24", "physnet2", 120)))
        .await
        .unwrap()
        .into_inner();
    // One flat network per physical network.
    nets.create(req(&root, flat("flat1", "10.95.0.0/24", "physnet1")))
        .await
        .unwrap();
    refused(
        &mut nets,
        &root,
        flat("flat2", "10.94.0.0/24", "physnet1"),
        Code::AlreadyExists,
        "the flat segment of physical network \"physnet1\" is already used",
    )
    .await;
    nets.create(req(&root, flat("flat3", "10.94.0.0/24", "physnet2")))
        .await
        .unwrap();
    // Shared names are unique across projects.
    refused(
        &mut nets,
        &root,
        pb::CreateNetworkRequest {
            project: "p1".into(),
            shared: true,
            ..net("ext", "10.93.0.0/24")
        },
        Code::AlreadyExists,
        "a shared network named \"ext\" already exists",
    )
    .await;

    // Another project sees and uses the shared network, not the admin's
    // other ones.
    let listed: Vec<String> = nets
        .list(req(&bob, pb::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .networks
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(listed, ["ext"]);
    let seen = nets.get(req(&bob, get("ext"))).await.unwrap().into_inner();
    assert_eq!(seen.id, ext.id);
    nets.get(req(&bob, get(&ext.id))).await.unwrap();
    for r in ["ext4", other.id.as_str()] {
        let e = nets.get(req(&bob, get(r))).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{r}: {e:?}");
    }
    let port = ports
        .create(req(
            &bob,
            pb::CreatePortRequest {
                name: "p".into(),
                network_ref: "ext".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((port.project.as_str(), &port.network_id), ("p2", &ext.id));
    let e = ports
        .create(req(
            &bob,
            pb::CreatePortRequest {
                name: "p".into(),
                network_ref: "ext4".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    common::flavor_and_image(&ch, &root, "m1.small", &bob).await;
    register_node(&etcd, "n0", res(8, 8 * 1024, 100), "nova").await;
    // The node view is watch-fed: wait until the node is listed.
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
    for network in ["ext", ext.id.as_str()] {
        let r = servers
            .create(req(&bob, common::server_req("vm", &[network], 1)))
            .await
            .unwrap()
            .into_inner();
        let s = created(&r, 0);
        assert_eq!(s.project, "p2");
        assert_eq!(s.addresses.len(), 1, "{s:?}");
        assert_eq!(s.addresses[0].network_id, ext.id, "{s:?}");
    }
    let r = servers
        .create(req(&bob, common::server_req("vm2", &["ext4"], 1)))
        .await;
    match r {
        Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
        Ok(r) => {
            let r = r.into_inner();
            assert!(r.results[0].server.is_none(), "{r:?}");
        }
    }

    // Nobody but its project deletes it.
    let e = nets.delete(req(&bob, del("ext"))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = nets.delete(req(&bob, del(&ext.id))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    nets.get(req(&root, get("ext"))).await.unwrap();

    // Deleting a provider network frees its segment (and a shared one its
    // name).
    nets.delete(req(&root, del("ext4"))).await.unwrap();
    assert_eq!(
        common::count(&etcd, &keys::provider_segment("physnet2", Some(120))).await,
        0
    );
    nets.create(req(&root, vlan("ext5", "10.92.0.0/24", "physnet2", 120)))
        .await
        .unwrap();
}
