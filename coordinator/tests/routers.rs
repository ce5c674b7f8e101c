//! Routers and floating IPs through the API against a real etcd: gateways
//! and floating IPs only from external networks, addresses never handed
//! out twice, one router per network, one floating IP per port, and every
//! refusal the issue lists, with its message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::keys;
use nubo_common::model::{self, Network};
use nubo_common::proto as pb;
use nubo_common::{NetworkId, ProjectId};
use nubo_tests::Etcd;
use tonic::Code;

/// An external network of the admin project, written as the admin's
/// `nubo network create ext --external` stores it.
async fn put_external(etcd: &Etcd, name: &str, cidr: &str, gw: &str) -> NetworkId {
    let net = Network {
        id: NetworkId::new_random(),
        name: name.into(),
        project: ProjectId::new("admin").unwrap(),
        cidr: cidr.parse().unwrap(),
        gateway: Some(gw.parse().unwrap()),
        vni: 0,
        mtu: 0,
        dns: vec![],
        provider: None,
        external: true,
        shared: false,
        created_at: model::now(),
    };
    etcd.client()
        .await
        .unwrap()
        .put(keys::network(&net.id), model::encode(&net), None)
        .await
        .unwrap();
    net.id
}

fn in_project(r: &str, p: &str) -> pb::GetRequest {
    pb::GetRequest {
        r#ref: r.into(),
        project: p.into(),
    }
}

fn subnet(router: &str, net: &str, p: &str) -> pb::RouterSubnetRequest {
    pb::RouterSubnetRequest {
        r#ref: router.into(),
        project: p.into(),
        network: net.into(),
    }
}

fn fip_req(net: &str, addr: &str, p: &str) -> pb::CreateFloatingIpRequest {
    pb::CreateFloatingIpRequest {
        network: net.into(),
        project: p.into(),
        address: addr.into(),
    }
}

fn set_port(fip: &str, port: &str, p: &str) -> pb::SetFloatingIpRequest {
    pb::SetFloatingIpRequest {
        r#ref: fip.into(),
        project: p.into(),
        port: port.into(),
        ..Default::default()
    }
}

async fn network(cl: &mut Clients, name: &str, cidr: &str, p: &str) -> pb::Network {
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: name.into(),
            project: p.into(),
            cidr: cidr.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn port(cl: &mut Clients, net: &str, p: &str) -> pb::Port {
    cl.ports
        .create(pb::CreatePortRequest {
            project: p.into(),
            network_ref: net.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn refused(e: tonic::Status, code: Code, text: &str) {
    assert_eq!(e.code(), code, "{}", e.message());
    assert!(
        e.message().contains(text),
        "{:?} lacks {text:?}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_and_floating_ips_keep_their_invariants() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    let ext = put_external(&etcd, "ext", "10.77.0.0/24", "10.77.0.1").await;
    // Two projects with the same tenant CIDR.
    network(&mut cl, "net1", "10.0.0.0/24", "p1").await;
    network(&mut cl, "net1", "10.0.0.0/24", "p2").await;
    network(&mut cl, "lonely", "10.1.0.0/24", "p1").await;
    let p1_port = port(&mut cl, "net1", "p1").await;
    let lonely_port = port(&mut cl, "lonely", "p1").await;

    // A gateway on a tenant network is refused; on the external one the
    // router gets an address of it (not the upstream router's).
    let e = cl
        .routers
        .create(pb::CreateRouterRequest {
            name: "bad".into(),
            project: "p1".into(),
            external_gateway: "lonely".into(),
        })
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "is not external");
    let mut routers = Vec::new();
    for p in ["p1", "p2"] {
        let r = cl
            .routers
            .create(pb::CreateRouterRequest {
                name: "r1".into(),
                project: p.into(),
                external_gateway: "ext".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.gateway_network_id, ext.to_string());
        let ip: std::net::Ipv4Addr = r.gateway_ip.parse().unwrap();
        assert!(
            ip.octets()[..3] == [10, 77, 0] && ip.octets()[3] > 1,
            "{ip}"
        );
        routers.push(r);
    }
    assert_ne!(routers[0].gateway_ip, routers[1].gateway_ip);
    let e = cl
        .routers
        .create(pb::CreateRouterRequest {
            name: "r1".into(),
            project: "p1".into(),
            external_gateway: String::new(),
        })
        .await
        .unwrap_err();
    refused(e, Code::AlreadyExists, "router \"r1\" already exists");

    // Subnets: each network in one router only; same CIDR in two projects'
    // routers is fine.
    for p in ["p1", "p2"] {
        let r = cl
            .routers
            .add_subnet(subnet("r1", "net1", p))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.subnet_ids.len(), 1);
    }
    cl.routers
        .create(pb::CreateRouterRequest {
            name: "r2".into(),
            project: "p1".into(),
            external_gateway: "ext".into(),
        })
        .await
        .unwrap();
    let e = cl
        .routers
        .add_subnet(subnet("r2", "net1", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "is already attached to router");
    let e = cl
        .routers
        .add_subnet(subnet("r2", "ext", "p1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "another project's network");

    // Floating IPs: only from external networks, only usable free addresses.
    let e = cl.fips.create(fip_req("net1", "", "p1")).await.unwrap_err();
    refused(e, Code::InvalidArgument, "is not external");
    for (addr, text) in [
        ("10.78.0.5", "is not a usable address of network \"ext\""),
        ("10.77.0.1", "is not a usable address"),
        ("10.77.0.255", "is not a usable address"),
        ("nonsense", "is not an IPv4 address"),
    ] {
        let e = cl
            .fips
            .create(fip_req("ext", addr, "p1"))
            .await
            .unwrap_err();
        refused(e, Code::InvalidArgument, text);
    }
    let e = cl
        .fips
        .create(fip_req("ext", &routers[0].gateway_ip, "p1"))
        .await
        .unwrap_err();
    refused(
        e,
        Code::AlreadyExists,
        "is already in use on network \"ext\"",
    );
    let f = cl
        .fips
        .create(fip_req("ext", "10.77.0.50", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.address.as_str(), f.port_id.as_str()), ("10.77.0.50", ""));
    let e = cl
        .fips
        .create(fip_req(&ext.to_string(), "10.77.0.50", "p2"))
        .await
        .unwrap_err();
    refused(e, Code::AlreadyExists, "already in use");
    let any = cl
        .fips
        .create(fip_req("ext", "", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(any.address, f.address);

    // Association: through a router to the floating IP's network only; one
    // floating IP per port.
    let e = cl
        .fips
        .set(set_port("10.77.0.50", &lonely_port.id, "p1"))
        .await
        .unwrap_err();
    refused(
        e,
        Code::FailedPrecondition,
        "is not connected to the floating IP's external network by a router",
    );
    let set = cl
        .fips
        .set(set_port("10.77.0.50", &p1_port.id, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.port_id, p1_port.id);
    assert_eq!(set.fixed_ip, p1_port.ip);
    assert_eq!(set.router_id, routers[0].id);
    let e = cl
        .fips
        .set(set_port(&any.id, &p1_port.id, "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "already has a floating IP");
    let e = cl
        .fips
        .set(pb::SetFloatingIpRequest {
            r#ref: any.id.clone(),
            project: "p1".into(),
            port: p1_port.id.clone(),
            network: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(e, Code::InvalidArgument, "--network goes with --server");
    // Another project does not see it.
    let e = cl
        .fips
        .get(in_project("10.77.0.50", "p2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // What must go first.
    let e = cl
        .routers
        .remove_subnet(subnet("r1", "net1", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "10.77.0.50");
    let e = cl.routers.delete(req_del("r1", "p1")).await.unwrap_err();
    refused(e, Code::FailedPrecondition, "still has 1 network");
    let e = cl.networks.delete(req_del("net1", "p1")).await.unwrap_err();
    refused(e, Code::FailedPrecondition, "is attached to a router");
    let e = cl
        .networks
        .delete(req_del(&ext.to_string(), "admin"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "still has");

    // Undo in order: everything is released.
    cl.fips.unset(in_project("10.77.0.50", "p1")).await.unwrap();
    cl.routers
        .remove_subnet(subnet("r1", "net1", "p1"))
        .await
        .unwrap();
    cl.fips
        .set(set_port(&any.id, &p1_port.id, "p1"))
        .await
        .unwrap_err();
    for r in ["r1", "r2"] {
        cl.routers.delete(req_del(r, "p1")).await.unwrap();
    }
    cl.routers
        .remove_subnet(subnet("r1", "net1", "p2"))
        .await
        .unwrap();
    cl.routers.delete(req_del("r1", "p2")).await.unwrap();
    for f in ["10.77.0.50", any.id.as_str()] {
        cl.fips.delete(req_del(f, "p1")).await.unwrap();
    }
    assert_eq!(count(&etcd, &keys::ipam_prefix(&ext)).await, 0);
    assert_eq!(count(&etcd, &keys::floating_ips_prefix()).await, 0);
    assert_eq!(count(&etcd, &keys::routers_prefix()).await, 0);
    cl.networks
        .delete(req_del(&ext.to_string(), "admin"))
        .await
        .unwrap();
}

fn req_del(r: &str, p: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        r#ref: r.into(),
        project: p.into(),
    }
}
