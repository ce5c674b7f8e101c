//! A port's own fields through the API, against a real etcd: name and
//! description set at creation and changed alone, the administrative state
//! (created down, enabled, disabled), a chosen MAC (unique in the cluster
//! through its `private/macs` index, 409 when taken, 400 when malformed,
//! free again once its port is gone), and "no security group" told apart
//! from "the default group"; an etcd value written before these fields
//! existed still loads (up, no description).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::req::{del, get};
use common::*;
use nubo_common::proto as pb;
use nubo_common::{keys, PortId};
use nubo_tests::Etcd;
use tonic::Code;

fn port(name: &str) -> pb::CreatePortRequest {
    pb::CreatePortRequest {
        name: name.into(),
        network_ref: "pnet".into(),
        ..Default::default()
    }
}

fn update(r: &str) -> pb::UpdatePortRequest {
    pb::UpdatePortRequest {
        r#ref: r.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_description_state_mac_and_no_security_group() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    cl.networks
        .create(pb::CreateNetworkRequest {
            name: "pnet".into(),
            cidr: "10.5.0.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Created down, with a description, a chosen MAC and no group.
    let p = cl
        .ports
        .create(pb::CreatePortRequest {
            description: "the db port".into(),
            disabled: true,
            mac: "02:AB:00:00:00:0A".into(),
            no_security_groups: true,
            ..port("p1")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            p.name.as_str(),
            p.description.as_str(),
            p.admin_state_up,
            p.mac.as_str()
        ),
        ("p1", "the db port", false, "02:ab:00:00:00:0a")
    );
    assert!(p.security_group_ids.is_empty(), "{p:?}");
    assert!(p.port_security, "no group is not no port security");
    let mut kv = etcd.client().await.unwrap();
    let mac_key = keys::mac(&"02:ab:00:00:00:0a".parse().unwrap());
    let held = kv.get(mac_key.as_str(), None).await.unwrap();
    assert_eq!(held.kvs().len(), 1, "the MAC index holds it");
    assert!(held.kvs()[0].value_str().unwrap().contains(&p.id));

    // The MAC is taken (whatever its case); bad MACs are refused clearly.
    for mac in ["02:ab:00:00:00:0a", "02:AB:00:00:00:0A"] {
        let e = cl
            .ports
            .create(pb::CreatePortRequest {
                mac: mac.into(),
                ..port("p2")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
        assert!(e.message().contains("02:ab:00:00:00:0a"), "{}", e.message());
    }
    for (mac, why) in [
        ("02:ab:00:00:00", "not a MAC address"),
        ("01:00:5e:00:00:01", "not a unicast address"),
        ("00:00:00:00:00:00", "not a unicast address"),
        ("fa:16:3f:00:00:01", "router range"),
    ] {
        let e = cl
            .ports
            .create(pb::CreatePortRequest {
                mac: mac.into(),
                ..port("p2")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{mac}: {}", e.message());
        assert!(e.message().contains(why), "{mac}: {}", e.message());
    }
    // "No group" and groups exclude each other; absent = the default group.
    let e = cl
        .ports
        .create(pb::CreatePortRequest {
            no_security_groups: true,
            security_groups: vec!["default".into()],
            ..port("p2")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let p2 = cl.ports.create(port("p2")).await.unwrap().into_inner();
    assert_eq!(p2.security_group_ids.len(), 1, "the default group");
    assert!(p2.admin_state_up && p2.description.is_empty());
    assert!(p2.mac.starts_with("fa:16:3e:"), "{}", p2.mac);
    let default_group = p2.security_group_ids[0].clone();

    // A rename changes the name only.
    let r = cl
        .ports
        .update(pb::UpdatePortRequest {
            name: Some("p1-renamed".into()),
            ..update(&p.id)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.name.as_str(), r.description.as_str(), r.admin_state_up),
        ("p1-renamed", "the db port", false)
    );
    assert!(r.security_group_ids.is_empty(), "groups untouched: {r:?}");
    assert_eq!(r.mac, p.mac);
    // Enabled, described anew, given a group; then no group again, down.
    let r = cl
        .ports
        .update(pb::UpdatePortRequest {
            admin_state_up: Some(true),
            description: Some(String::new()),
            security_groups: vec!["default".into()],
            ..update("p1-renamed")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.admin_state_up && r.description.is_empty());
    assert_eq!(r.security_group_ids, vec![default_group.clone()]);
    let r = cl
        .ports
        .update(pb::UpdatePortRequest {
            admin_state_up: Some(false),
            no_security_groups: true,
            ..update(&p.id)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.admin_state_up && r.security_group_ids.is_empty());
    assert_eq!(r.name, "p1-renamed");
    let shown = cl.ports.get(get(&p.id)).await.unwrap().into_inner();
    assert_eq!(shown, r, "stored as answered");
    // Bad changes change nothing.
    for bad in [
        pb::UpdatePortRequest {
            name: Some("x".repeat(64)),
            ..update(&p.id)
        },
        pb::UpdatePortRequest {
            description: Some("d".repeat(256)),
            ..update(&p.id)
        },
        pb::UpdatePortRequest {
            no_security_groups: true,
            security_groups: vec!["default".into()],
            ..update(&p.id)
        },
    ] {
        let e = cl.ports.update(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
    assert_eq!(cl.ports.get(get(&p.id)).await.unwrap().into_inner(), r);
    let e = cl
        .ports
        .update(pb::UpdatePortRequest {
            name: Some("n".into()),
            ..update("nope")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Deleting the port frees its MAC for another one.
    cl.ports.delete(del(&p.id)).await.unwrap();
    assert!(kv
        .get(mac_key.as_str(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
    let again = cl
        .ports
        .create(pb::CreatePortRequest {
            mac: "02:ab:00:00:00:0a".into(),
            ..port("p3")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.mac, "02:ab:00:00:00:0a");
    assert!(again.admin_state_up);

    // A port stored before these fields existed: up, no description.
    let key = keys::port(&p2.id.parse::<PortId>().unwrap());
    let stored = kv.get(key.as_str(), None).await.unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(stored.kvs()[0].value()).unwrap();
    let obj = v.as_object_mut().unwrap();
    assert!(!obj.contains_key("description"), "empty: not written");
    assert_eq!(obj.remove("admin_state_up"), Some(serde_json::json!(true)));
    kv.put(key.as_str(), serde_json::to_vec(&v).unwrap(), None)
        .await
        .unwrap();
    let old = cl.ports.get(get(&p2.id)).await.unwrap().into_inner();
    assert!(old.admin_state_up && old.description.is_empty(), "{old:?}");
}
