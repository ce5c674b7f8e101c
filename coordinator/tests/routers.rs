//! Routers and floating IPs through the API against a real etcd: gateways
//! and floating IPs only from external networks, addresses never handed
//! out twice, one router per network, one floating IP per port, and every
//! refusal the issue lists, with its message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use nubo_common::keys;
use nubo_common::model;
use nubo_common::proto as pb;
use nubo_common::NetworkId;
use nubo_tests::Etcd;
use tonic::Code;

/// An external network of the admin project, written as the admin's
/// `nubo network create ext --external` stores it.
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
        ..Default::default()
    }
}

fn by_port(router: &str, port: &str, p: &str) -> pb::RouterSubnetRequest {
    pb::RouterSubnetRequest {
        r#ref: router.into(),
        project: p.into(),
        port: port.into(),
        ..Default::default()
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
            ..Default::default()
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
                ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
        })
        .await
        .unwrap();
    let e = cl
        .routers
        .add_subnet(subnet("r2", "net1", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "is already attached to router");

    // Overlapping subnets in one project are fine (as in Neutron) until
    // both meet in one router: 400 naming both.
    let twin = network(&mut cl, "twin", "10.0.0.128/25", "p1").await;
    let e = cl
        .routers
        .add_subnet(subnet("r1", "twin", "p1"))
        .await
        .unwrap_err();
    refused(
        e,
        Code::InvalidArgument,
        "network \"twin\" (10.0.0.128/25) overlaps network \"net1\" (10.0.0.0/24) of router \"r1\"",
    );
    cl.networks
        .delete(pb::DeleteRequest {
            r#ref: twin.id,
            project: "p1".into(),
        })
        .await
        .unwrap();

    // Update: a taken name is refused and nothing changes; a free one and
    // the administrative state are kept.
    let upd = |name: Option<&str>, disabled: Option<bool>| pb::UpdateRouterRequest {
        r#ref: "r2".into(),
        project: "p1".into(),
        name: name.map(Into::into),
        disabled,
        external_gateway: None,
    };
    let e = cl
        .routers
        .update(upd(Some("r1"), Some(true)))
        .await
        .unwrap_err();
    refused(e, Code::AlreadyExists, "router \"r1\" already exists");
    let r2 = cl
        .routers
        .update(upd(None, Some(true)))
        .await
        .unwrap()
        .into_inner();
    assert!(r2.disabled);
    assert_eq!(r2.name, "r2");
    let r3 = cl
        .routers
        .update(pb::UpdateRouterRequest {
            r#ref: r2.id.clone(),
            project: "p1".into(),
            name: Some("r3".into()),
            disabled: Some(false),
            external_gateway: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r3.name.as_str(), r3.disabled), ("r3", false));
    let e = cl.routers.get(in_project("r2", "p1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "the old name is free");
    cl.routers
        .update(pb::UpdateRouterRequest {
            r#ref: r2.id.clone(),
            project: "p1".into(),
            name: Some("r2".into()),
            disabled: None,
            external_gateway: None,
        })
        .await
        .unwrap();
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
        Code::NotFound,
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
    // (Its unassociated floating IPs would go with it, as in Neutron.)
    refused(e, Code::FailedPrecondition, "associated with a port");

    // Deleting a port takes its floating IP's association with it.
    let doomed = port(&mut cl, "net1", "p1").await;
    cl.fips
        .set(set_port(&any.id, &doomed.id, "p1"))
        .await
        .unwrap();
    cl.ports.delete(req_del(&doomed.id, "p1")).await.unwrap();
    let left = cl
        .fips
        .get(in_project(&any.id, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((left.port_id.as_str(), left.fixed_ip.as_str()), ("", ""));
    assert_eq!(
        count(&etcd, &keys::floating_ip_port(&doomed.id.parse().unwrap())).await,
        0
    );

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

/// Every router SNAT record in etcd: (router, node) → (address, key).
async fn snats(etcd: &Etcd) -> Vec<model::RouterSnat> {
    prefix(etcd, &keys::router_snats_prefix())
        .await
        .into_iter()
        .map(|(k, v)| {
            let s: model::RouterSnat = model::decode(&k, &v).unwrap();
            assert_eq!(
                k,
                keys::router_snat(&s.node, &s.router),
                "record under its key"
            );
            s
        })
        .collect()
}

/// Waits (on etcd, polling) until the SNAT records satisfy `done`; returns them.
async fn wait_snats(
    etcd: &Etcd,
    what: &str,
    done: impl Fn(&[model::RouterSnat]) -> bool,
) -> Vec<model::RouterSnat> {
    let t = std::time::Instant::now();
    loop {
        let s = snats(etcd).await;
        if done(&s) {
            return s;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "{what}: never happened; records: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn on(s: &[model::RouterSnat], router: &str, node: &str) -> Option<model::RouterSnat> {
    s.iter()
        .find(|x| x.router.to_string() == router && x.node.as_str() == node)
        .cloned()
}

async fn ipam_holder(
    etcd: &Etcd,
    net: &NetworkId,
    ip: std::net::Ipv4Addr,
) -> Option<model::IpAllocation> {
    get(etcd, &keys::ipam(net, std::net::IpAddr::V4(ip))).await
}

async fn server_in(cl: &mut Clients, name: &str, net: &str, az: &str) -> pb::Server {
    let r = create_servers(
        cl,
        pb::CreateServerRequest {
            availability_zone: az.into(),
            ..server_req(name, &[net], 1)
        },
    )
    .await;
    created(&r, 0)
}

async fn router_with(cl: &mut Clients, name: &str, ext: &str, net: &str) -> pb::Router {
    cl.routers
        .create(pb::CreateRouterRequest {
            name: name.into(),
            project: String::new(),
            external_gateway: ext.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    cl.routers
        .add_subnet(subnet(name, net, ""))
        .await
        .unwrap()
        .into_inner()
}

/// The leader gives each (router, node) pair hosting a port of the
/// router's networks an address of its own on the external network, held
/// in the network's IPAM, shown by `router show`; releases it when the
/// node hosts no such port any more, when the router loses the network or
/// is deleted; a full external network is waited out, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_router_gets_its_own_snat_address() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    for (n, az) in [("hv-a", "az1"), ("hv-b", "az2"), ("hv-c", "az3")] {
        register_seen(&etcd, &c, n, res(8, 8192, 100), az).await;
    }
    // 10.78.0.0/29: .2–.6 usable (.1 is the upstream router): 5 addresses.
    let ext = put_external(&etcd, "ext", "10.78.0.0/29", "10.78.0.1").await;
    let ext2 = put_external(&etcd, "ext2", "10.79.0.0/24", "10.79.0.1").await;
    create_network(&mut cl, "net1", "10.0.0.0/24").await;
    create_network(&mut cl, "net2", "10.2.0.0/24").await;
    let r1 = router_with(&mut cl, "r1", "ext", "net1").await;
    assert!(r1.snat_addresses.is_empty(), "no port bound yet");

    // A port on a node: a record; one on each of two nodes: two distinct
    // addresses of ext, neither the upstream's nor the router's own, each
    // held in ext's IPAM by (r1, node).
    server_in(&mut cl, "s-a", "net1", "az1").await;
    server_in(&mut cl, "s-b", "net1", "az2").await;
    let s = wait_snats(&etcd, "records on hv-a and hv-b", |s| {
        on(s, &r1.id, "hv-a").is_some() && on(s, &r1.id, "hv-b").is_some()
    })
    .await;
    assert_eq!(s.len(), 2, "{s:?}");
    let (a, b) = (
        on(&s, &r1.id, "hv-a").unwrap(),
        on(&s, &r1.id, "hv-b").unwrap(),
    );
    assert_ne!(a.ip, b.ip);
    for x in [&a, &b] {
        assert_eq!(x.network, ext);
        assert!("10.78.0.0/29"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&x.ip));
        assert_ne!(x.ip.to_string(), r1.gateway_ip);
        assert_ne!(x.ip.to_string(), "10.78.0.1");
        let held = ipam_holder(&etcd, &ext, x.ip).await.expect("IPAM entry");
        assert_eq!(
            (
                held.router,
                held.snat_node.as_ref(),
                held.port,
                held.floating_ip
            ),
            (Some(x.router), Some(&x.node), None, None)
        );
    }
    // `router show` (and list) lists them, by node.
    let shown = cl
        .routers
        .get(in_project("r1", ""))
        .await
        .unwrap()
        .into_inner();
    let pairs: Vec<(String, String)> = shown
        .snat_addresses
        .iter()
        .map(|x| (x.node.clone(), x.ip.clone()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("hv-a".to_string(), a.ip.to_string()),
            ("hv-b".to_string(), b.ip.to_string())
        ]
    );
    let listed = cl
        .routers
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.routers[0].snat_addresses, shown.snat_addresses);
    // An external network with SNAT addresses on it is in use.
    let e = cl
        .networks
        .delete(req_del(&ext.to_string(), "admin"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "still has");

    // The last port on hv-b goes: hv-b's record and address go, hv-a's stay.
    cl.servers.delete(req_del("s-b", "")).await.unwrap();
    let s = wait_snats(&etcd, "hv-b released", |s| on(s, &r1.id, "hv-b").is_none()).await;
    assert_eq!(s, vec![a.clone()]);
    assert!(
        ipam_holder(&etcd, &ext, b.ip).await.is_none(),
        "address freed"
    );
    assert!(ipam_holder(&etcd, &ext, a.ip).await.is_some());

    // Exhaustion: fill ext with floating IPs (until the API says full).
    let mut fips = Vec::new();
    loop {
        match cl.fips.create(fip_req("ext", "", "")).await {
            Ok(f) => fips.push(f.into_inner()),
            Err(e) => {
                refused(e, Code::ResourceExhausted, "is full");
                break;
            }
        }
    }
    assert_eq!(fips.len(), 3, "5 addresses: the router's, hv-a's and these");
    // A port of net1 on hv-c, then one of net2 (behind r2, whose gateway
    // network has room) on hv-c: once r2's record on hv-c exists, the
    // leader has seen both ports (one watch, in order) and r1's could not
    // be given an address.
    let r2 = router_with(&mut cl, "r2", "ext2", "net2").await;
    server_in(&mut cl, "s-c", "net1", "az3").await;
    server_in(&mut cl, "s-c2", "net2", "az3").await;
    let s = wait_snats(&etcd, "r2 on hv-c", |s| on(s, &r2.id, "hv-c").is_some()).await;
    assert_eq!(on(&s, &r2.id, "hv-c").unwrap().network, ext2);
    assert!(on(&s, &r1.id, "hv-c").is_none(), "ext is full: {s:?}");
    assert!(c.is_leader(), "the coordinator still leads (no panic)");
    // An address frees up: hv-c gets it.
    cl.fips.delete(req_del(&fips[0].id, "")).await.unwrap();
    let s = wait_snats(&etcd, "r1 on hv-c once an address is free", |s| {
        on(s, &r1.id, "hv-c").is_some()
    })
    .await;
    let rc = on(&s, &r1.id, "hv-c").unwrap();
    assert_eq!(rc.ip.to_string(), fips[0].address);
    assert_eq!(
        ipam_holder(&etcd, &ext, rc.ip)
            .await
            .unwrap()
            .snat_node
            .unwrap()
            .as_str(),
        "hv-c"
    );

    // r2 loses its network (its port stays on hv-c): the leader releases.
    cl.routers
        .remove_subnet(subnet("r2", "net2", ""))
        .await
        .unwrap();
    wait_snats(&etcd, "r2 released", |s| on(s, &r2.id, "hv-c").is_none()).await;
    assert_eq!(
        count(&etcd, &keys::ipam_prefix(&ext2)).await,
        1,
        "r2's gateway only"
    );
    cl.routers.delete(req_del("r2", "")).await.unwrap();
    assert_eq!(count(&etcd, &keys::ipam_prefix(&ext2)).await, 0);

    // r1: off its network and deleted at once: when the delete returns,
    // every address of r1 is free (whoever released it: the loop or the
    // delete's own transaction) and ext holds only the floating IPs left.
    cl.routers
        .remove_subnet(subnet("r1", "net1", ""))
        .await
        .unwrap();
    cl.routers.delete(req_del("r1", "")).await.unwrap();
    assert!(snats(&etcd).await.is_empty());
    assert_eq!(count(&etcd, &keys::ipam_prefix(&ext)).await, 2);
    for f in &fips[1..] {
        cl.fips.delete(req_del(&f.id, "")).await.unwrap();
    }
    cl.networks
        .delete(req_del(&ext.to_string(), "admin"))
        .await
        .unwrap();
}

fn gateway_change(router: &str, gateway: &str, p: &str) -> pb::UpdateRouterRequest {
    pb::UpdateRouterRequest {
        r#ref: router.into(),
        project: p.into(),
        external_gateway: Some(gateway.into()),
        ..Default::default()
    }
}

/// A router's gateway set after creation, moved to another external
/// network (the old address released, a new one reserved in one
/// transaction), refused while a floating IP goes through it, and cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_gateway_is_set_changed_and_cleared() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    let ext1 = put_external(&etcd, "ext1", "10.77.0.0/24", "10.77.0.1").await;
    let ext2 = put_external(&etcd, "ext2", "10.78.0.0/24", "10.78.0.1").await;
    network(&mut cl, "net1", "10.1.0.0/24", "p1").await;
    let r = cl
        .routers
        .create(pb::CreateRouterRequest {
            name: "r1".into(),
            project: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.gateway_network_id, "");

    // Bad targets, each with its reason; the router is unchanged.
    let e = cl
        .routers
        .update(gateway_change("r1", "nosuch", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::NotFound, "nosuch");
    let e = cl
        .routers
        .update(gateway_change("r1", "net1", "p1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Set: the address is the router's in ext1's IPAM.
    let set = cl
        .routers
        .update(gateway_change("r1", "ext1", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.gateway_network_id, ext1.to_string());
    let ip1: std::net::Ipv4Addr = set.gateway_ip.parse().unwrap();
    let held = ipam_holder(&etcd, &ext1, ip1).await.unwrap();
    assert_eq!(held.router.map(|r| r.to_string()), Some(r.id.clone()));
    // The same network again: nothing changes.
    let same = cl
        .routers
        .update(gateway_change("r1", &ext1.to_string(), "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.gateway_ip, set.gateway_ip);

    // A floating IP through the router holds its gateway.
    cl.routers
        .add_subnet(subnet("r1", "net1", "p1"))
        .await
        .unwrap();
    let p = port(&mut cl, "net1", "p1").await;
    let fip = cl
        .fips
        .create(fip_req("ext1", "", "p1"))
        .await
        .unwrap()
        .into_inner();
    cl.fips.set(set_port(&fip.id, &p.id, "p1")).await.unwrap();
    let e = cl
        .routers
        .update(gateway_change("r1", "ext2", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, &fip.address);
    cl.fips.unset(in_project(&fip.id, "p1")).await.unwrap();

    // Change: ext1's address released, one of ext2's reserved.
    let moved = cl
        .routers
        .update(gateway_change("r1", "ext2", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.gateway_network_id, ext2.to_string());
    let ip2: std::net::Ipv4Addr = moved.gateway_ip.parse().unwrap();
    assert!(ipam_holder(&etcd, &ext1, ip1).await.is_none());
    assert!(ipam_holder(&etcd, &ext2, ip2).await.is_some());

    // Clear: no gateway, no address held.
    let cleared = cl
        .routers
        .update(gateway_change("r1", "", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            cleared.gateway_network_id.as_str(),
            cleared.gateway_ip.as_str()
        ),
        ("", "")
    );
    assert_eq!(count(&etcd, &keys::ipam_prefix(&ext2)).await, 0);
}

/// A router joins a network by one of its ports: it takes the port's
/// address, the port names the router, cannot be deleted or plugged
/// elsewhere, and goes with the interface; unfit ports are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_joins_a_network_by_a_port() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    network(&mut cl, "net1", "10.1.0.0/24", "p1").await;
    network(&mut cl, "net2", "10.2.0.0/24", "p1").await;
    for name in ["r1", "r2"] {
        cl.routers
            .create(pb::CreateRouterRequest {
                name: name.into(),
                project: "p1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let p = port(&mut cl, "net1", "p1").await;
    let r = cl
        .routers
        .add_subnet(by_port("r1", &p.id, "p1"))
        .await
        .unwrap()
        .into_inner();
    let net1 = cl
        .networks
        .get(in_project("net1", "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.subnet_ids, vec![net1.id.clone()]);
    assert_eq!(
        r.interface_ports,
        vec![pb::RouterInterfacePort {
            network_id: net1.id.clone(),
            port_id: p.id.clone(),
            ip: p.ip.clone(),
        }]
    );
    assert_ne!(p.ip, net1.gateway, "the port's address, not the gateway");
    let shown = cl
        .ports
        .get(in_project(&p.id, "p1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.router_id, r.id);
    // Again: nothing changes; another router or the subnet way: refused.
    cl.routers
        .add_subnet(by_port("r1", &p.id, "p1"))
        .await
        .unwrap();
    let e = cl
        .routers
        .add_subnet(by_port("r2", &p.id, "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "already a router's interface");
    let e = cl
        .routers
        .add_subnet(subnet("r1", "net1", "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "already has an interface");
    // The port is the router's: not deleted, not plugged into a server.
    let e = cl.ports.delete(req_del(&p.id, "p1")).await.unwrap_err();
    refused(e, Code::FailedPrecondition, "is an interface of router");
    // A port with a server is refused (positive control: the same
    // network's free port above was taken).
    let q = port(&mut cl, "net2", "p1").await;
    let qkey = keys::port(&q.id.parse().unwrap());
    let mut plugged: model::Port = get(&etcd, &qkey).await.unwrap();
    plugged.device = Some(nubo_common::InstanceId::new_random());
    etcd.client()
        .await
        .unwrap()
        .put(qkey, model::encode(&plugged), None)
        .await
        .unwrap();
    let e = cl
        .routers
        .add_subnet(by_port("r2", &q.id, "p1"))
        .await
        .unwrap_err();
    refused(e, Code::FailedPrecondition, "plugged into server");
    // Removing the interface deletes the port and frees its address.
    cl.routers
        .remove_subnet(subnet("r1", "net1", "p1"))
        .await
        .unwrap();
    let e = cl.ports.get(in_project(&p.id, "p1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let net1_id: NetworkId = net1.id.parse().unwrap();
    assert!(ipam_holder(&etcd, &net1_id, p.ip.parse().unwrap())
        .await
        .is_none());
    cl.routers.delete(req_del("r1", "p1")).await.unwrap();
}
