//! CRUD of every resource, validation errors and pagination, against a real etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::req::{del, get};
use common::*;
use nubo_common::proto as pb;
use nubo_tests::Etcd;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flavors_images_keypairs_groups_crud_and_errors() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;

    setup_basics(&mut cl).await;
    let e = cl
        .flavors
        .create(pb::CreateFlavorRequest {
            name: "m1.small".into(),
            vcpus: 1,
            ram_mb: 1,
            disk_gb: 1,
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = cl.flavors.get(get("m9.huge")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "flavor \"m9.huge\" not found");
    let e = cl
        .flavors
        .create(pb::CreateFlavorRequest {
            name: "zero".into(),
            vcpus: 0,
            ram_mb: 1,
            disk_gb: 1,
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        cl.flavors
            .get(get("m1.small"))
            .await
            .unwrap()
            .into_inner()
            .ram_mb,
        512
    );

    let img = cl.images.get(get("cirros")).await.unwrap().into_inner();
    assert_eq!(
        cl.images.get(get(&img.id)).await.unwrap().into_inner().name,
        "cirros"
    );
    let e = cl
        .images
        .create(pb::CreateImageRequest {
            name: "cirros".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    // Same name in another project is fine.
    cl.images
        .create(pb::CreateImageRequest {
            name: "cirros".into(),
            project: "p2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let l = cl
        .images
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.images.len(), 1);
    let l = cl
        .images
        .list(pb::ListRequest {
            all_projects: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.images.len(), 2);

    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOF/1IwvkaqwaYxw5uqOXwU+yMz99O0NSqMQYWuHQD0 test@host";
    let k = cl
        .keypairs
        .create(pb::CreateKeypairRequest {
            name: "me".into(),
            project: String::new(),
            public_key: key.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        k.fingerprint,
        "SHA256:OdvSEa8Af8/xDsJIu8XQnvIr8tCQwVeX1Fkv4hkHNew"
    );
    let e = cl
        .keypairs
        .create(pb::CreateKeypairRequest {
            name: "bad".into(),
            project: String::new(),
            public_key: "ssh-rsa nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        cl.keypairs
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .keypairs
            .len(),
        1
    );

    let g = cl
        .groups
        .create(pb::CreateServerGroupRequest {
            name: "g1".into(),
            project: String::new(),
            policy: "anti-affinity".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cl.groups.get(get("g1")).await.unwrap().into_inner().id,
        g.id
    );
    let e = cl
        .groups
        .create(pb::CreateServerGroupRequest {
            name: "g2".into(),
            project: String::new(),
            policy: "nearby".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    cl.keypairs.delete(del("me")).await.unwrap();
    cl.groups.delete(del("g1")).await.unwrap();
    cl.images.delete(del("cirros")).await.unwrap();
    cl.flavors.delete(del("m1.small")).await.unwrap();
    assert_eq!(
        cl.flavors.delete(del("m1.small")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        cl.images.get(get("cirros")).await.unwrap_err().code(),
        Code::NotFound
    );

    let st = cl.cluster.status(pb::Empty {}).await.unwrap().into_inner();
    assert!(!st.coordinator_id.is_empty());
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_ports_secgroups_validation() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    let net = |name: &str, cidr: &str, project: &str| pb::CreateNetworkRequest {
        name: name.into(),
        project: project.into(),
        cidr: cidr.into(),
        ..Default::default()
    };
    let e = cl
        .networks
        .create(net("bad", "10.0.0.0/33", ""))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "cidr 10.0.0.0/33 is not a valid IPv4 network"
        )
    );
    let n1 = cl
        .networks
        .create(net("net1", "10.1.0.0/16", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n1.gateway, "10.1.0.1");
    // Overlapping subnets in one project are allowed (as in Neutron): only
    // a router refuses two of them (tests/routers.rs).
    let n2 = cl
        .networks
        .create(net("net2", "10.1.0.0/24", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n2.cidr, "10.1.0.0/24");
    cl.networks
        .delete(pb::DeleteRequest {
            r#ref: n2.id,
            ..Default::default()
        })
        .await
        .unwrap();
    // Overlap across projects is fine; duplicate names within one are not.
    cl.networks
        .create(net("net1", "10.1.0.0/24", "other"))
        .await
        .unwrap();
    assert_eq!(
        cl.networks
            .create(net("net1", "10.2.0.0/24", ""))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    // Ports: fixed and allocated addresses, default security group.
    let p1 = cl
        .ports
        .create(pb::CreatePortRequest {
            name: "p1".into(),
            network_ref: "net1".into(),
            ip: "10.1.0.10".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.ip, "10.1.0.10");
    assert!(p1.mac.starts_with("fa:16:3e:"));
    assert_eq!(p1.security_group_ids.len(), 1);
    let e = cl
        .ports
        .create(pb::CreatePortRequest {
            network_ref: "net1".into(),
            ip: "10.1.0.10".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = cl
        .ports
        .create(pb::CreatePortRequest {
            network_ref: "net1".into(),
            ip: "10.1.0.1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = cl
        .ports
        .create(pb::CreatePortRequest {
            network_ref: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Two ports named alike make the name ambiguous.
    let p2 = cl
        .ports
        .create(pb::CreatePortRequest {
            name: "p1".into(),
            network_ref: "net1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let e = cl.ports.get(get("p1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains(&p1.id) && e.message().contains(&p2.id),
        "{}",
        e.message()
    );
    // A network with ports cannot be deleted, and says how many it has.
    let e = cl.networks.delete(del("net1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("still has 2 ports"), "{}", e.message());

    // Security groups: rules, in-use deletion.
    let sg = cl
        .secgroups
        .create(pb::CreateSecurityGroupRequest {
            name: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rule = pb::SecurityGroupRule {
        direction: "ingress".into(),
        protocol: "tcp".into(),
        port_min: 80,
        port_max: 80,
        remote_cidr: "0.0.0.0/0".into(),
        ..Default::default()
    };
    let sg2 = cl
        .secgroups
        .add_rule(pb::AddRuleRequest {
            group_ref: "web".into(),
            project: String::new(),
            rule: Some(rule.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sg2.rules.len(), 1);
    assert_eq!(
        cl.secgroups
            .add_rule(pb::AddRuleRequest {
                group_ref: "web".into(),
                project: String::new(),
                rule: Some(rule)
            })
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    let bad = pb::SecurityGroupRule {
        direction: "up".into(),
        ..Default::default()
    };
    assert_eq!(
        cl.secgroups
            .add_rule(pb::AddRuleRequest {
                group_ref: "web".into(),
                project: String::new(),
                rule: Some(bad)
            })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    cl.ports
        .update(pb::UpdatePortRequest {
            r#ref: p2.id.clone(),
            project: String::new(),
            security_groups: vec!["web".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = cl.secgroups.delete(del("web")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    let sg3 = cl
        .secgroups
        .delete_rule(pb::DeleteRuleRequest {
            group_ref: sg.id.clone(),
            project: String::new(),
            rule_id: sg2.rules[0].id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sg3.rules.is_empty());
    let l = cl
        .secgroups
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.security_groups.len(), 2, "default + web");

    // Deleting a network with ports fails; after deleting the ports it works.
    let e = cl.networks.delete(del("net1")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("2 ports"), "{}", e.message());
    cl.ports.delete(del(&p1.id)).await.unwrap();
    cl.ports.delete(del(&p2.id)).await.unwrap();
    cl.secgroups.delete(del("web")).await.unwrap();
    cl.networks.delete(del("net1")).await.unwrap();
    assert_eq!(count(&etcd, "/nubo/v1/private/ipam/").await, 0);
    assert_eq!(count(&etcd, "/nubo/v1/private/macs/").await, 0);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate_across_pages_without_capping() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    for i in 0..250 {
        cl.flavors
            .create(pb::CreateFlavorRequest {
                name: format!("f{i:03}"),
                vcpus: 1,
                ram_mb: 1,
                disk_gb: 0,
                display_name: String::new(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = cl
            .flavors
            .list(pb::ListRequest {
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(r.flavors.into_iter().map(|f| f.name));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 250);
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(dedup, seen);
    // Default page size is 100 and a token is returned.
    let r = cl
        .flavors
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.flavors.len(), 100);
    assert!(!r.next_page_token.is_empty());
    let e = cl
        .flavors
        .list(pb::ListRequest {
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    c.shutdown().await.unwrap();
}

/// Images.Update: a rename moves the name index (the old name is free, the
/// new one taken, a taken name refused with nothing changed); minimum disk
/// and RAM change; absent fields stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_renamed_and_their_minimums_changed() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    let other = cl
        .images
        .create(pb::CreateImageRequest {
            name: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let upd = |name: Option<&str>, disk: Option<u64>| pb::UpdateImageRequest {
        r#ref: "cirros".into(),
        name: name.map(str::to_string),
        min_disk_gb: disk,
        ..Default::default()
    };
    let e = cl
        .images
        .update(upd(Some("other"), Some(9)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = cl
        .images
        .update(upd(Some("bad name!"), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let img = cl.images.get(get("cirros")).await.unwrap().into_inner();
    assert_eq!(img.min_disk_gb, 0, "a refused update changed nothing");
    let renamed = cl
        .images
        .update(upd(Some("cirros2"), Some(3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (renamed.id.as_str(), renamed.name.as_str()),
        (img.id.as_str(), "cirros2")
    );
    assert_eq!(
        (renamed.min_disk_gb, renamed.min_ram_mb),
        (3, img.min_ram_mb)
    );
    assert_eq!(
        cl.images.get(get("cirros2")).await.unwrap().into_inner().id,
        img.id
    );
    assert_eq!(
        cl.images.get(get("cirros")).await.unwrap_err().code(),
        Code::NotFound
    );
    // The old name is free again; the other image is untouched.
    cl.images
        .create(pb::CreateImageRequest {
            name: "cirros".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        cl.images.get(get("other")).await.unwrap().into_inner(),
        other
    );
    let e = cl
        .images
        .update(pb::UpdateImageRequest {
            r#ref: "absent".into(),
            min_ram_mb: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
