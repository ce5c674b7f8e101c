//! Several subnets per network and several fixed IPs per port, through the
//! API against a real etcd: a second subnet gets its own id (the first keeps
//! the network's), overlapping subnets of one network are refused, a port
//! takes an address from each subnet it names, a PUT of its fixed IPs moves
//! it to another subnet (the old address released in IPAM, the new one
//! reserved, never twice), a subnet holding addresses is not removed, the
//! first subnet's removal hands its place to the next, and a floating IP
//! maps to a chosen fixed IP of its port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::net::IpAddr;

use common::*;
use nubo_common::keys;
use nubo_common::proto as pb;
use nubo_common::NetworkId;
use nubo_tests::Etcd;
use tonic::Code;

fn refused<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    text: &str,
) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{}", e.message());
    assert!(
        e.message().contains(text),
        "{:?} lacks {text:?}",
        e.message()
    );
}

fn add_subnet(net: &str, cidr: &str) -> pb::SetSubnetRequest {
    pb::SetSubnetRequest {
        r#ref: net.into(),
        project: "p1".into(),
        cidr: cidr.into(),
        ..Default::default()
    }
}

fn fixed(subnet: &str, ip: &str) -> pb::FixedIp {
    pb::FixedIp {
        subnet_id: subnet.into(),
        ip: ip.into(),
    }
}

fn set_ips(port: &str, ips: Vec<pb::FixedIp>) -> pb::UpdatePortRequest {
    pb::UpdatePortRequest {
        r#ref: port.into(),
        project: "p1".into(),
        set_fixed_ips: true,
        fixed_ips: ips,
        ..Default::default()
    }
}

async fn held(etcd: &Etcd, net: &str, ip: &str) -> bool {
    let net: NetworkId = net.parse().unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    !etcd
        .client()
        .await
        .unwrap()
        .get(keys::ipam(&net, ip), None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
}

/// An external network of the admin project, as `nubo network create ext
/// --external` stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_hold_addresses_of_several_subnets_and_move_between_them() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    let net = cl
        .networks
        .create(pb::CreateNetworkRequest {
            name: "net1".into(),
            project: "p1".into(),
            cidr: "10.0.0.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(net.subnets.len(), 1);
    assert_eq!(
        net.subnets[0].id, net.id,
        "the first subnet has the network's id"
    );

    // A second subnet: its own id; one overlapping the network's is refused
    // with the words Tempest looks for.
    refused(
        cl.networks
            .set_subnet(add_subnet("net1", "10.0.0.128/25"))
            .await,
        Code::InvalidArgument,
        "overlaps with another subnet of network \"net1\"",
    );
    let net = cl
        .networks
        .set_subnet(pb::SetSubnetRequest {
            name: "second".into(),
            ..add_subnet("net1", "10.1.0.0/24")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(net.subnets.len(), 2);
    let (s1, s2) = (net.subnets[0].id.clone(), net.subnets[1].id.clone());
    assert_ne!(s2, net.id);
    assert_eq!(
        (
            net.subnets[1].cidr.as_str(),
            net.subnets[1].gateway.as_str(),
            net.subnets[1].name.as_str()
        ),
        ("10.1.0.0/24", "10.1.0.1", "second")
    );
    let shown = cl
        .networks
        .get_subnet(pb::GetRequest {
            r#ref: s2.clone(),
            project: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.id, net.id);

    // A port with an address in each subnet (one picked, one asked for).
    let port = cl
        .ports
        .create(pb::CreatePortRequest {
            project: "p1".into(),
            network_ref: "net1".into(),
            fixed_ips: vec![fixed(&s1, ""), fixed("", "10.1.0.50")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(port.fixed_ips.len(), 2, "{port:?}");
    assert_eq!(port.fixed_ips[0].subnet_id, s1);
    assert!(port.fixed_ips[0].ip.starts_with("10.0.0."), "{port:?}");
    assert_eq!(port.fixed_ips[1], fixed(&s2, "10.1.0.50"));
    assert_eq!(port.ip, port.fixed_ips[0].ip);
    let first_ip = port.fixed_ips[0].ip.clone();
    assert!(held(&etcd, &net.id, &first_ip).await);
    assert!(held(&etcd, &net.id, "10.1.0.50").await);
    // Taken, outside the network, or a gateway: refused, nothing reserved.
    for (ips, code, text) in [
        (
            vec![fixed("", "10.1.0.50")],
            Code::AlreadyExists,
            "already in use",
        ),
        (
            vec![fixed("", "10.2.0.9")],
            Code::InvalidArgument,
            "in no subnet",
        ),
        (
            vec![fixed(&s2, "10.1.0.1")],
            Code::InvalidArgument,
            "not an assignable",
        ),
    ] {
        refused(
            cl.ports
                .create(pb::CreatePortRequest {
                    project: "p1".into(),
                    network_ref: "net1".into(),
                    fixed_ips: ips,
                    ..Default::default()
                })
                .await,
            code,
            text,
        );
    }

    // Back to one address (the one it had in the first subnet), then to the
    // second subnet only (a new address there is fine too), then both.
    let one = cl
        .ports
        .update(set_ips(&port.id, vec![fixed(&s1, "")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.fixed_ips, vec![fixed(&s1, &first_ip)]);
    assert!(!held(&etcd, &net.id, "10.1.0.50").await, "released");
    let moved = cl
        .ports
        .update(set_ips(&port.id, vec![fixed(&s2, "")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.fixed_ips.len(), 1);
    assert_eq!(moved.fixed_ips[0].subnet_id, s2);
    assert_eq!(moved.ip, moved.fixed_ips[0].ip);
    assert!(!held(&etcd, &net.id, &first_ip).await, "released");
    assert!(held(&etcd, &net.id, &moved.ip).await);
    let both = cl
        .ports
        .update(set_ips(&port.id, vec![fixed(&s1, ""), fixed(&s2, "")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.fixed_ips.len(), 2);
    assert_eq!(both.fixed_ips[1].ip, moved.ip, "kept its address in s2");
    refused(
        cl.ports.update(set_ips(&port.id, Vec::new())).await,
        Code::InvalidArgument,
        "at least one fixed IP",
    );

    // A subnet holding addresses stays.
    refused(
        cl.networks
            .delete_subnet(pb::DeleteRequest {
                r#ref: s2.clone(),
                project: "p1".into(),
            })
            .await,
        Code::FailedPrecondition,
        "still has 1 ports",
    );
    refused(
        cl.networks
            .delete_subnet(pb::DeleteRequest {
                r#ref: "net1".into(),
                project: "p1".into(),
            })
            .await,
        Code::InvalidArgument,
        "has 2 subnets",
    );

    // A floating IP at the port's second address, then moved to its first.
    put_external(&etcd, "ext", "10.77.0.0/24", "10.77.0.1").await;
    cl.routers
        .create(pb::CreateRouterRequest {
            name: "r1".into(),
            project: "p1".into(),
            external_gateway: "ext".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    cl.routers
        .add_subnet(pb::RouterSubnetRequest {
            r#ref: "r1".into(),
            project: "p1".into(),
            network: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let fip = cl
        .fips
        .create(pb::CreateFloatingIpRequest {
            network: "ext".into(),
            project: "p1".into(),
            address: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let assoc = |fixed_ip: &str| pb::SetFloatingIpRequest {
        r#ref: fip.id.clone(),
        project: "p1".into(),
        port: port.id.clone(),
        fixed_ip: fixed_ip.into(),
        ..Default::default()
    };
    let f = cl.fips.set(assoc(&moved.ip)).await.unwrap().into_inner();
    assert_eq!(f.fixed_ip, moved.ip);
    let f = cl
        .fips
        .set(assoc(&both.fixed_ips[0].ip))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.fixed_ip, both.fixed_ips[0].ip);
    refused(
        cl.fips.set(assoc("10.0.0.254")).await,
        Code::InvalidArgument,
        "is not a fixed IP of port",
    );
    // The address the floating IP maps to cannot be dropped.
    refused(
        cl.ports
            .update(set_ips(&port.id, vec![fixed(&s2, "")]))
            .await,
        Code::FailedPrecondition,
        "disassociate it first",
    );

    // Without the port, the second subnet goes; removing the first hands
    // its place (and the network's own fields) to the next, keeping ids.
    cl.fips
        .unset(pb::GetRequest {
            r#ref: fip.id.clone(),
            project: "p1".into(),
        })
        .await
        .unwrap();
    cl.routers
        .remove_subnet(pb::RouterSubnetRequest {
            r#ref: "r1".into(),
            project: "p1".into(),
            network: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    cl.ports
        .delete(pb::DeleteRequest {
            r#ref: port.id.clone(),
            project: "p1".into(),
        })
        .await
        .unwrap();
    let left = cl
        .networks
        .delete_subnet(pb::DeleteRequest {
            r#ref: s1.clone(),
            project: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.subnets.len(), 1);
    assert_eq!(left.subnets[0].id, s2);
    assert_eq!(left.cidr, "10.1.0.0/24");
    let p = cl
        .ports
        .create(pb::CreatePortRequest {
            project: "p1".into(),
            network_ref: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.fixed_ips[0].subnet_id, s2);
    assert!(p.ip.starts_with("10.1.0."), "{p:?}");
}
