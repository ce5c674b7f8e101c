//! Servers: placement under concurrency with two coordinators, IPAM under
//! contention, batch failures without leaks, power actions, garbage values.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use futures::StreamExt;
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

async fn all_servers(cl: &mut Clients) -> Vec<pb::Server> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = cl
            .servers
            .list(pb::ListServersRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.servers);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_fill_exactly_to_capacity() {
    let etcd = Etcd::start().unwrap();
    let (a, b) = (coordinator(&etcd).await, coordinator(&etcd).await);
    let (mut ca, mut cb) = (clients(&a).await, clients(&b).await);
    setup_basics(&mut ca).await;
    // 10 nodes x 100 instances of 512 MiB = exactly 1000.
    for i in 0..10 {
        register_node(&etcd, &format!("n{i}"), res(100, 100 * 512, 1000), "nova").await;
    }
    wait_nodes(&mut ca, 10).await;
    wait_nodes(&mut cb, 10).await;
    let sa = ca.servers.clone();
    let sb = cb.servers.clone();
    let results: Vec<_> = futures::stream::iter(0..1000)
        .map(|i| {
            let mut s = if i % 2 == 0 { sa.clone() } else { sb.clone() };
            async move { s.create(server_req(&format!("vm{i}"), &[], 1)).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut placed = 0;
    for r in results {
        let r = r.unwrap().into_inner();
        assert_eq!(r.results.len(), 1);
        assert!(r.results[0].server.is_some(), "{:?}", r.results[0]);
        placed += 1;
    }
    assert_eq!(placed, 1000);
    let mut total = 0;
    for i in 0..10 {
        let u = usage(&etcd, &format!("n{i}")).await;
        assert!(u.used.ram_mb <= 100 * 512, "n{i} over capacity: {u:?}");
        assert_eq!(u.used.ram_mb, u64::from(u.instances) * 512);
        total += u.instances;
    }
    assert_eq!(total, 1000);
    assert_eq!(count(&etcd, "/nubo/v1/assignments/").await, 1000);
    let r = cb
        .servers
        .create(server_req("one-more", &[], 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results[0].code, "ResourceExhausted");
    assert!(
        r.results[0].error.starts_with("no capacity"),
        "{}",
        r.results[0].error
    );
    // Exactly one leader.
    let la = ca.cluster.status(pb::Empty {}).await.unwrap().into_inner();
    let lb = cb.cluster.status(pb::Empty {}).await.unwrap().into_inner();
    assert!(la.is_leader ^ lb.is_leader, "{la:?} {lb:?}");
    assert_eq!(la.leader_id, lb.leader_id);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_port_creates_never_share_an_address() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: "small".into(),
            cidr: "10.9.0.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ports = cl.ports.clone();
    let results: Vec<_> = futures::stream::iter(0..500)
        .map(|_| {
            let mut p = ports.clone();
            async move {
                p.create(pb::CreatePortRequest {
                    network_ref: "small".into(),
                    ..Default::default()
                })
                .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut ips = HashSet::new();
    let mut full = 0;
    for r in results {
        match r {
            Ok(p) => assert!(ips.insert(p.into_inner().ip), "address handed out twice"),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                assert_eq!(
                    e.message(),
                    "subnet 10.9.0.0/24 of network \"small\" is full: all 253 addresses are in use"
                );
                full += 1;
            }
        }
    }
    assert_eq!(ips.len(), 253);
    assert_eq!(full, 247);
    assert!(!ips.contains("10.9.0.1") && !ips.contains("10.9.0.0") && !ips.contains("10.9.0.255"));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_beyond_network_size_fails_cleanly_and_delete_releases_everything() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    for i in 0..4 {
        register_node(&etcd, &format!("n{i}"), res(64, 64 * 1024, 1000), "nova").await;
    }
    wait_nodes(&mut cl, 4).await;
    // A /25 has 125 assignable addresses; 25 pre-existing ports leave 100.
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: "n100".into(),
            cidr: "10.5.0.0/25".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pre = Vec::new();
    for _ in 0..25 {
        pre.push(
            cl.ports
                .create(pb::CreatePortRequest {
                    network_ref: "n100".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let r = create_servers(&mut cl, server_req("batch", &["n100"], 120)).await;
    assert_eq!(r.results.len(), 120);
    let ok: Vec<_> = r.results.iter().filter(|x| x.server.is_some()).collect();
    let bad: Vec<_> = r.results.iter().filter(|x| x.server.is_none()).collect();
    assert_eq!(ok.len(), 100);
    assert_eq!(bad.len(), 20);
    for b in &bad {
        assert_eq!(b.code, "ResourceExhausted");
        assert_eq!(
            b.error,
            "subnet 10.5.0.0/25 of network \"n100\" is full: all 125 addresses are in use"
        );
    }
    let names: HashSet<_> = ok
        .iter()
        .map(|x| x.server.as_ref().unwrap().name.clone())
        .collect();
    assert!(names.contains("batch-1") || names.contains("batch-120"));
    // Nothing leaked: 125 addresses, 125 ports, 100 instances, 100 assignments.
    assert_eq!(count(&etcd, "/nubo/v1/private/ipam/").await, 125);
    assert_eq!(count(&etcd, "/nubo/v1/ports/").await, 125);
    assert_eq!(count(&etcd, "/nubo/v1/private/macs/").await, 125);
    assert_eq!(count(&etcd, "/nubo/v1/assignments/").await, 100);
    let mut used = 0;
    for i in 0..4 {
        used += usage(&etcd, &format!("n{i}")).await.instances;
    }
    assert_eq!(used, 100);

    // Plug a pre-existing port into a server in another network-less batch: it is kept on delete.
    let e = cl
        .servers
        .create(pb::CreateServerRequest {
            ports: vec![pre[0].clone()],
            count: 2,
            ..server_req("x", &[], 2)
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let plugged = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            ports: vec![pre[0].clone()],
            ..server_req("plug", &[], 1)
        },
    )
    .await;
    let plugged = plugged.results[0].server.clone().unwrap();
    assert_eq!(plugged.addresses[0].port_id, pre[0]);
    let e = cl
        .ports
        .delete(pb::DeleteRequest {
            r#ref: pre[0].clone(),
            project: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Power actions.
    let s = cl
        .servers
        .stop(pb::ServerActionRequest {
            r#ref: plugged.id.clone(),
            project: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.desired_power, "stopped");
    let s = cl
        .servers
        .start(pb::ServerActionRequest {
            r#ref: plugged.id.clone(),
            project: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.desired_power, "running");
    cl.servers
        .reboot(pb::ServerActionRequest {
            r#ref: plugged.id.clone(),
            project: String::new(),
        })
        .await
        .unwrap();
    let spec = etcd
        .etcdctl(&[
            "get",
            "--print-value-only",
            &format!("/nubo/v1/instances/{}", plugged.id),
        ])
        .unwrap();
    assert!(spec.contains("\"reboot_generation\":1"), "{spec}");

    // Delete everything: usage back to 0, only the 25 pre-existing ports remain (unplugged).
    let servers = Arc::new(all_servers(&mut cl).await);
    assert_eq!(servers.len(), 101);
    let srv = cl.servers.clone();
    let results: Vec<_> =
        futures::stream::iter(servers.iter().map(|s| s.id.clone()).collect::<Vec<_>>())
            .map(|id| {
                let mut s = srv.clone();
                async move {
                    s.delete(pb::DeleteRequest {
                        r#ref: id,
                        project: String::new(),
                    })
                    .await
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    for r in results {
        r.unwrap();
    }
    for i in 0..4 {
        let u = usage(&etcd, &format!("n{i}")).await;
        assert_eq!(
            (u.instances, u.used.ram_mb, u.used.vcpus),
            (0, 0, 0),
            "n{i}"
        );
    }
    assert_eq!(count(&etcd, "/nubo/v1/instances/").await, 0);
    assert_eq!(count(&etcd, "/nubo/v1/assignments/").await, 0);
    assert_eq!(count(&etcd, "/nubo/v1/private/ipam/").await, 25);
    let p = cl
        .ports
        .get(pb::GetRequest {
            r#ref: pre[0].clone(),
            project: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(p.device_id.is_empty() && p.node.is_empty());
    for id in pre {
        cl.ports
            .delete(pb::DeleteRequest {
                r#ref: id,
                project: String::new(),
            })
            .await
            .unwrap();
    }
    assert_eq!(count(&etcd, "/nubo/v1/private/ipam/").await, 0);
    assert_eq!(count(&etcd, "/nubo/v1/private/macs/").await, 0);
    assert_eq!(count(&etcd, "/nubo/v1/private/port-owners/").await, 0);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_filters_and_server_groups_and_node_api() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "a", res(8, 8192, 100), "az1").await;
    register_node(&etcd, "b", res(8, 8192, 100), "az1").await;
    register_node(&etcd, "c", res(8, 8192, 100), "az2").await;
    wait_nodes(&mut cl, 3).await;
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            availability_zone: "az2".into(),
            ..server_req("z", &[], 3)
        },
    )
    .await;
    assert!(
        r.results
            .iter()
            .all(|x| x.server.as_ref().is_some_and(|s| s.node == "c")),
        "{r:?}"
    );
    cl.groups
        .create(pb::CreateServerGroupRequest {
            name: "apart".into(),
            project: String::new(),
            policy: "anti-affinity".into(),
        })
        .await
        .unwrap();
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            server_group: "apart".into(),
            ..server_req("g", &[], 4)
        },
    )
    .await;
    let nodes: Vec<_> = r
        .results
        .iter()
        .filter_map(|x| x.server.as_ref().map(|s| s.node.clone()))
        .collect();
    assert_eq!(nodes.len(), 3, "{r:?}");
    assert_eq!(nodes.iter().collect::<HashSet<_>>().len(), 3);
    let failed = r.results.iter().find(|x| x.server.is_none()).unwrap();
    assert!(failed.error.contains("server group"), "{}", failed.error);
    let e = cl
        .groups
        .delete(pb::DeleteRequest {
            r#ref: "apart".into(),
            project: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Disabling a node keeps new servers off it.
    let n = cl
        .nodes
        .set_enabled(pb::SetNodeEnabledRequest {
            name: "a".into(),
            enabled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!n.enabled);
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            availability_zone: "az1".into(),
            ..server_req("d", &[], 5)
        },
    )
    .await;
    assert!(
        r.results
            .iter()
            .all(|x| x.server.as_ref().is_some_and(|s| s.node == "b")),
        "{r:?}"
    );
    let node = cl
        .nodes
        .get(pb::GetRequest {
            r#ref: "b".into(),
            project: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.instances, 6);
    assert_eq!(node.usage.unwrap().ram_mb, 6 * 512);
    assert_eq!(
        cl.nodes
            .get(pb::GetRequest {
                r#ref: "zz".into(),
                project: String::new()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let page = cl
        .nodes
        .list(pb::ListRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.nodes.len(), 2);
    let page2 = cl
        .nodes
        .list(pb::ListRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.nodes.len(), 1);
    assert!(page2.next_page_token.is_empty());
    // Filters of the server list.
    let on_c = cl
        .servers
        .list(pb::ListServersRequest {
            node: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_c.servers.len(), 4);
    let named = cl
        .servers
        .list(pb::ListServersRequest {
            name_prefix: "d-".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(named.servers.len(), 5);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_values_are_skipped_and_reported() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "a", res(8, 8192, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let ok = create_servers(&mut cl, server_req("good", &[], 1)).await;
    assert!(ok.results[0].server.is_some());
    let bad = uuid::Uuid::new_v4().to_string();
    etcd.etcdctl(&["put", &format!("/nubo/v1/instances/{bad}"), "garbage"])
        .unwrap();
    etcd.etcdctl(&["put", "/nubo/v1/flavors/junk", "{not json"])
        .unwrap();
    etcd.etcdctl(&["put", "/nubo/v1/nodes/b", "garbage"])
        .unwrap();
    let l = all_servers(&mut cl).await;
    assert_eq!(l.len(), 1);
    let e = cl
        .servers
        .get(pb::GetRequest {
            r#ref: bad.clone(),
            project: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(&bad) && e.message().contains("unreadable"),
        "{}",
        e.message()
    );
    let f = cl
        .flavors
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.flavors.len(), 1);
    // Still serving, still placing.
    let again = create_servers(&mut cl, server_req("good2", &[], 1)).await;
    assert!(again.results[0].server.is_some(), "{again:?}");
    let http = reqwest_like_get(c.health_addr(), "/readyz").await;
    assert!(
        http.contains("leader") || http.contains("follower"),
        "{http}"
    );
    c.shutdown().await.unwrap();
}

/// Minimal HTTP GET (no client crate needed).
async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Server metadata: set at create, merged or replaced, removed by key, kept
/// by a rename (Servers.Update, with the access addresses);
/// Nova's limits (keys 1-255, values up to 255 characters, 128 items)
/// refuse bad input with the spec unchanged; the node's copy of the spec
/// (what its agent serves as `meta`) carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metadata_is_stored_within_novas_limits() {
    use std::collections::HashMap;

    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "a", res(8, 8192, 100), "az1").await;
    wait_nodes(&mut cl, 1).await;
    let m = |items: &[(&str, &str)]| -> HashMap<String, String> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let r = create_servers(
        &mut cl,
        pb::CreateServerRequest {
            metadata: m(&[("role", "web")]),
            ..server_req("md", &[], 1)
        },
    )
    .await;
    let s = created(&r, 0);
    assert_eq!(s.metadata, m(&[("role", "web")]));
    let set = |items: HashMap<String, String>, replace: bool| pb::SetServerMetadataRequest {
        r#ref: "md".into(),
        project: String::new(),
        metadata: items,
        replace,
    };
    let unset = |keys: &[&str]| pb::UnsetServerMetadataRequest {
        r#ref: "md".into(),
        project: String::new(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
    };
    // Merge, then replace, then remove.
    let s = cl
        .servers
        .set_metadata(set(m(&[("tier", "db"), ("role", "app")]), false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata, m(&[("role", "app"), ("tier", "db")]));
    let s = cl
        .servers
        .set_metadata(set(m(&[("a", "1"), ("b", "2")]), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata, m(&[("a", "1"), ("b", "2")]));
    let s = cl
        .servers
        .unset_metadata(unset(&["a"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata, m(&[("b", "2")]));

    // Refusals: each names the problem and changes nothing.
    let long = "x".repeat(256);
    let full: HashMap<String, String> =
        (0..128).map(|i| (format!("k{i}"), String::new())).collect();
    let too_many: HashMap<String, String> =
        (0..129).map(|i| (format!("k{i}"), String::new())).collect();
    let e = cl
        .servers
        .set_metadata(set(too_many.clone(), true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("at most 128"), "{e:?}");
    // 127 new ones merged into the one there: 128, fits; one more does not.
    let merged: HashMap<String, String> =
        (0..127).map(|i| (format!("k{i}"), String::new())).collect();
    let s = cl
        .servers
        .set_metadata(set(merged, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata.len(), 128);
    let e = cl
        .servers
        .set_metadata(set(m(&[("one-more", "v")]), false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let s = cl
        .servers
        .set_metadata(set(m(&[("b", "2")]), true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata, m(&[("b", "2")]));
    for (items, text) in [
        (m(&[("", "v")]), "may not be empty"),
        (m(&[(&long, "v")]), "key"),
        (m(&[("k", &long)]), "value"),
    ] {
        let e = cl
            .servers
            .set_metadata(set(items, false))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(text), "{e:?}");
    }
    let e = cl
        .servers
        .unset_metadata(unset(&["b", "absent"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let mut bad = server_req("md2", &[], 1);
    bad.metadata = too_many;
    let e = cl.servers.create(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let mut bad = server_req("md2", &[], 1);
    bad.access_ipv4 = "not-an-ip".into();
    let e = cl.servers.create(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut ok = server_req("md3", &[], 1);
    ok.metadata = full;
    ok.access_ipv6 = "2001:db8::3".into();
    let r = create_servers(&mut cl, ok).await;
    assert_eq!(created(&r, 0).metadata.len(), 128);
    assert_eq!(created(&r, 0).access_ipv6, "2001:db8::3");
    let s = cl
        .servers
        .get(pb::GetRequest {
            r#ref: "md".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.metadata, m(&[("b", "2")]), "refusals changed nothing");

    // A rename and access addresses keep the metadata; bad values are
    // refused with nothing changed.
    let upd = |name: Option<&str>, v4: Option<&str>, v6: Option<&str>| pb::UpdateServerRequest {
        r#ref: "md".into(),
        project: String::new(),
        name: name.map(str::to_string),
        access_ipv4: v4.map(str::to_string),
        access_ipv6: v6.map(str::to_string),
    };
    for bad in [
        upd(Some("bad\nname"), None, None),
        upd(Some("ok"), Some("::1"), None),
        upd(None, None, Some("10.0.0.1")),
    ] {
        let e = cl.servers.update(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let renamed = cl
        .servers
        .update(upd(Some("md-new"), Some("192.0.2.7"), Some("2001:db8::7")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (renamed.id.as_str(), renamed.name.as_str()),
        (s.id.as_str(), "md-new")
    );
    assert_eq!(
        (renamed.access_ipv4.as_str(), renamed.access_ipv6.as_str()),
        ("192.0.2.7", "2001:db8::7")
    );
    assert_eq!(renamed.metadata, m(&[("b", "2")]));
    let cleared = cl
        .servers
        .update(pb::UpdateServerRequest {
            r#ref: s.id.clone(),
            access_ipv6: Some(String::new()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            cleared.name.as_str(),
            cleared.access_ipv4.as_str(),
            cleared.access_ipv6.as_str()
        ),
        ("md-new", "192.0.2.7", "")
    );

    // The node's copy of the spec carries it (the agent serves that).
    let id: nubo_common::InstanceId = s.id.parse().unwrap();
    let node = nubo_common::NodeName::new("a").unwrap();
    let copy = etcd
        .client()
        .await
        .unwrap()
        .get(nubo_common::keys::node_spec(&node, &id), None)
        .await
        .unwrap();
    let spec: nubo_common::model::Instance = serde_json::from_slice(copy.kvs()[0].value()).unwrap();
    assert_eq!(spec.metadata.get("b").map(String::as_str), Some("2"));
    assert_eq!(spec.name, "md-new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_security_groups_and_password() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "a", res(8, 8192, 100), "az1").await;
    wait_nodes(&mut cl, 1).await;
    create_network(&mut cl, "n1", "10.61.0.0/24").await;
    create_network(&mut cl, "n2", "10.62.0.0/24").await;
    let web = cl
        .secgroups
        .create(pb::CreateSecurityGroupRequest {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let s = created(
        &create_servers(&mut cl, server_req("sg", &["n1", "n2"], 1)).await,
        0,
    );
    let names = |s: &pb::Server| -> Vec<String> {
        s.security_groups.iter().map(|g| g.name.clone()).collect()
    };
    assert_eq!(names(&s), ["default"]);
    let req = |g: &str| pb::ServerSecurityGroupRequest {
        r#ref: "sg".into(),
        project: String::new(),
        security_group: g.into(),
    };
    let s = cl
        .servers
        .add_security_group(req("web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&s), ["default", "web"]);
    // Every port carries it (the spec the agents' firewalls read).
    for a in &s.addresses {
        let p = cl
            .ports
            .get(pb::GetRequest {
                r#ref: a.port_id.clone(),
                project: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(p.security_group_ids.contains(&web.id), "{p:?}");
    }
    // Adding it again changes nothing; an unknown group is NotFound.
    let again = cl
        .servers
        .add_security_group(req("web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&again), ["default", "web"]);
    let e = cl
        .servers
        .add_security_group(req("nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Removing every group leaves the ports with none.
    for g in ["default", "web"] {
        cl.servers.remove_security_group(req(g)).await.unwrap();
    }
    let s = cl
        .servers
        .get(pb::GetRequest {
            r#ref: "sg".into(),
            project: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.security_groups.is_empty(), "{s:?}");
    let e = cl
        .servers
        .remove_security_group(req("web"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The password its guest posted (the agent's node-owned key): read,
    // then cleared.
    let get = pb::GetRequest {
        r#ref: "sg".into(),
        project: String::new(),
    };
    let pw = |r: tonic::Response<pb::ServerPassword>| r.into_inner().password;
    assert_eq!(pw(cl.servers.get_password(get.clone()).await.unwrap()), "");
    let id: nubo_common::InstanceId = s.id.parse().unwrap();
    let node: nubo_common::NodeName = s.node.parse().unwrap();
    let mut kv = etcd.client().await.unwrap();
    kv.put(
        nubo_common::keys::instance_password(&node, &id),
        "c2VjcmV0",
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        pw(cl.servers.get_password(get.clone()).await.unwrap()),
        "c2VjcmV0"
    );
    cl.servers
        .clear_password(pb::ServerActionRequest {
            r#ref: "sg".into(),
            project: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(pw(cl.servers.get_password(get).await.unwrap()), "");
}

/// `changes_since`: the servers whose spec was written (or whose state was
/// reported) at or after the time, then the servers deleted since (state
/// "deleted", their last spec); a future time lists nothing, a bad one is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_lists_changed_and_deleted_servers() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "a", res(8, 8192, 100), "az1").await;
    wait_nodes(&mut cl, 1).await;
    for name in ["keep", "rename", "gone"] {
        created(&create_servers(&mut cl, server_req(name, &[], 1)).await, 0);
    }
    let list = |since: &str| pb::ListServersRequest {
        changes_since: since.to_string(),
        ..Default::default()
    };
    let names = |r: pb::ListServersResponse| -> Vec<(String, String)> {
        r.servers.into_iter().map(|s| (s.name, s.state)).collect()
    };
    // Every server changed since a time before them (positive control).
    let all = names(
        cl.servers
            .list(list("2000-01-01T00:00:00Z"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(all.len(), 3, "{all:?}");

    let t0 = chrono::Utc::now().to_rfc3339();
    cl.servers
        .update(pb::UpdateServerRequest {
            r#ref: "rename".into(),
            name: Some("renamed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    cl.servers.delete(common::req::del("gone")).await.unwrap();
    let since = names(cl.servers.list(list(&t0)).await.unwrap().into_inner());
    assert_eq!(
        since,
        vec![
            ("renamed".to_string(), "pending".to_string()),
            ("gone".to_string(), "deleted".to_string())
        ]
    );
    // Without the filter, deleted servers are not listed.
    let plain = names(cl.servers.list(list("")).await.unwrap().into_inner());
    assert_eq!(plain.len(), 2, "{plain:?}");
    let future = cl.servers.list(list("2051-01-01T12:34:00Z")).await.unwrap();
    assert!(future.into_inner().servers.is_empty());
    let e = cl.servers.list(list("2011/01/01")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("changes_since"), "{}", e.message());
    // What is left is leased: etcd drops it after the retention.
    let mut kv = etcd.client().await.unwrap();
    let left = kv
        .get(
            nubo_common::keys::deleted_servers_prefix(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_ne!(left.kvs()[0].lease(), 0, "the record must be leased");
    c.shutdown().await.unwrap();
}
