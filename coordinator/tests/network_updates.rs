//! Updating networks, subnets and security groups through the API (`auth =
//! "token"`, real etcd, the coordinator in-process): a rename keeps names
//! unique, subnet attributes (name, gateway, DNS, host routes, DHCP) change
//! in the stored record the agents read, a gateway that a port holds is
//! refused, and the project's "default" security group keeps its name.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::authed as req;
use common::{channel, issue_token, member_cloud};
use nubo_common::keys;
use nubo_common::model::Network;
use nubo_common::proto as pb;
use nubo_common::NetworkId;
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

fn update(net: &str) -> pb::UpdateNetworkRequest {
    pb::UpdateNetworkRequest {
        r#ref: net.into(),
        ..Default::default()
    }
}

fn route(d: &str, h: &str) -> pb::HostRoute {
    pb::HostRoute {
        destination: d.into(),
        nexthop: h.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_subnets_and_groups_are_updated_in_place() {
    let etcd = Etcd::start().unwrap();
    let c = member_cloud(&etcd, &[("alice", "p1")]).await;
    let ch = channel(&c).await;
    let mut tokens = pb::tokens_client::TokensClient::new(ch.clone());
    let mut nets = pb::networks_client::NetworksClient::new(ch.clone());
    let mut ports = pb::ports_client::PortsClient::new(ch.clone());
    let mut groups = pb::security_groups_client::SecurityGroupsClient::new(ch.clone());
    let alice = issue_token(&mut tokens, "alice", "pw").await;

    for (name, cidr) in [("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")] {
        nets.create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: name.into(),
                cidr: cidr.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    }
    // A subnet made with host routes and without DHCP.
    let bare = nets
        .create(req(
            &alice,
            pb::CreateNetworkRequest {
                name: "c".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let c_net = nets
        .set_subnet(req(
            &alice,
            pb::SetSubnetRequest {
                r#ref: bare.id.clone(),
                cidr: "10.3.0.0/24".into(),
                dhcp_disabled: true,
                host_routes: vec![route("10.20.0.0/32", "10.3.0.9")],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(c_net.dhcp_disabled);
    assert_eq!(c_net.host_routes, vec![route("10.20.0.0/32", "10.3.0.9")]);

    // Allocation pools: checked, then the only addresses IPAM hands out (a
    // port may still ask for another free host address).
    let pooled = |pools: Vec<(&str, &str)>| pb::SetSubnetRequest {
        r#ref: "d".into(),
        cidr: "10.4.0.0/24".into(),
        allocation_pools: pools
            .into_iter()
            .map(|(a, b)| pb::IpRange {
                start: a.into(),
                end: b.into(),
            })
            .collect(),
        ..Default::default()
    };
    nets.create(req(
        &alice,
        pb::CreateNetworkRequest {
            name: "d".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    for (bad, why) in [
        (vec![("10.4.0.1", "10.4.0.9")], "holds the gateway"),
        (
            vec![("10.4.0.9", "10.4.1.9")],
            "not a range of host addresses",
        ),
        (
            vec![("10.4.0.9", "10.4.0.20"), ("10.4.0.20", "10.4.0.30")],
            "overlap",
        ),
    ] {
        refused(
            nets.set_subnet(req(&alice, pooled(bad))).await,
            Code::InvalidArgument,
            why,
        );
    }
    let d = nets
        .set_subnet(req(&alice, pooled(vec![("10.4.0.10", "10.4.0.11")])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.allocation_pools.len(), 1);
    let port_on_d = |ip: &str| pb::CreatePortRequest {
        network_ref: "d".into(),
        ip: ip.into(),
        ..Default::default()
    };
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = ports
            .create(req(&alice, port_on_d("")))
            .await
            .unwrap()
            .into_inner();
        got.push(p.ip);
    }
    got.sort();
    assert_eq!(got, ["10.4.0.10", "10.4.0.11"]);
    refused(
        ports.create(req(&alice, port_on_d(""))).await,
        Code::ResourceExhausted,
        "is full",
    );
    let fixed = ports
        .create(req(&alice, port_on_d("10.4.0.50")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fixed.ip, "10.4.0.50");
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                gateway: Some("10.4.0.11".into()),
                ..update("d")
            },
        ))
        .await,
        Code::InvalidArgument,
        "inside an allocation pool",
    );

    // Rename: a taken name is refused and nothing changes.
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                name: Some("b".into()),
                ..update("a")
            },
        ))
        .await,
        Code::AlreadyExists,
        "network \"b\" already exists",
    );
    let a = nets
        .update(req(
            &alice,
            pb::UpdateNetworkRequest {
                name: Some("a2".into()),
                ..update("a")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.name, "a2");
    refused(
        nets.get(req(
            &alice,
            pb::GetRequest {
                r#ref: "a".into(),
                project: String::new(),
            },
        ))
        .await,
        Code::NotFound,
        "",
    );

    // Subnet attributes, stored where the agents read them.
    let a = nets
        .update(req(
            &alice,
            pb::UpdateNetworkRequest {
                subnet_name: Some("sa".into()),
                gateway: Some("10.1.0.2".into()),
                set_dns: true,
                dns: vec!["10.1.0.53".into()],
                set_host_routes: true,
                host_routes: vec![route("10.9.0.0/16", "10.1.0.5")],
                dhcp_disabled: Some(true),
                ..update("a2")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.subnet_name.as_str(), a.gateway.as_str(), a.dns.clone()),
        ("sa", "10.1.0.2", vec!["10.1.0.53".to_string()])
    );
    let id: NetworkId = a.id.parse().unwrap();
    let raw = etcd.get(&keys::network(&id)).unwrap().expect("stored");
    let stored: Network = serde_json::from_slice(&raw).unwrap();
    assert!(stored.dhcp_disabled);
    assert_eq!(stored.host_routes.len(), 1);
    assert_eq!(stored.gateway, Some("10.1.0.2".parse().unwrap()));
    // Cleared again: empty lists, DHCP back on.
    let a = nets
        .update(req(
            &alice,
            pb::UpdateNetworkRequest {
                set_dns: true,
                set_host_routes: true,
                dhcp_disabled: Some(false),
                ..update("a2")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(a.dns.is_empty() && a.host_routes.is_empty() && !a.dhcp_disabled);

    // Bad changes, each with its reason.
    let p = ports
        .create(req(
            &alice,
            pb::CreatePortRequest {
                network_ref: "a2".into(),
                ip: "10.1.0.7".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.ip, "10.1.0.7");
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                gateway: Some("10.1.0.7".into()),
                ..update("a2")
            },
        ))
        .await,
        Code::FailedPrecondition,
        "gateway 10.1.0.7 is allocated",
    );
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                gateway: Some("10.9.0.1".into()),
                ..update("a2")
            },
        ))
        .await,
        Code::InvalidArgument,
        "not a host address",
    );
    refused(
        nets.update(req(
            &alice,
            pb::UpdateNetworkRequest {
                set_host_routes: true,
                host_routes: vec![route("10.9.0.1/16", "10.1.0.5")],
                ..update("a2")
            },
        ))
        .await,
        Code::InvalidArgument,
        "host bits",
    );
    let unchanged = nets
        .get(req(
            &alice,
            pb::GetRequest {
                r#ref: "a2".into(),
                project: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged.gateway, "10.1.0.2");
    let none = nets
        .update(req(
            &alice,
            pb::UpdateNetworkRequest {
                gateway: Some("none".into()),
                ..update("a2")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.gateway, "");

    // Security groups: rename, description; "default" keeps its name.
    let g = groups
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
    let g2 = groups
        .update(req(
            &alice,
            pb::UpdateSecurityGroupRequest {
                r#ref: g.id.clone(),
                name: Some("web2".into()),
                description: Some("front".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (g2.name.as_str(), g2.description.as_str()),
        ("web2", "front")
    );
    // The port above made the project's default group.
    refused(
        groups
            .update(req(
                &alice,
                pb::UpdateSecurityGroupRequest {
                    r#ref: "default".into(),
                    name: Some("renamed".into()),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
        "cannot be renamed",
    );
    refused(
        groups
            .update(req(
                &alice,
                pb::UpdateSecurityGroupRequest {
                    r#ref: "web2".into(),
                    name: Some("default".into()),
                    ..Default::default()
                },
            ))
            .await,
        Code::AlreadyExists,
        "already exists",
    );
}
