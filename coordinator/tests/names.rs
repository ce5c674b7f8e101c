//! Looking a server up by name reads the specs under `/instances/`, not
//! their `/status` sub-keys: no "skipping unreadable value" warning per
//! server, so the warning keeps meaning a corrupt record. Real etcd; the
//! coordinator's log is captured.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use nubo_common::model::{self, InstanceState, InstanceStatus};
use nubo_common::proto as pb;
use nubo_common::{keys, InstanceId, NodeName};
use nubo_tests::Etcd;

/// The log lines written so far.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn take(&self) -> String {
        let mut b = self.0.lock().unwrap();
        String::from_utf8_lossy(&std::mem::take(&mut *b)).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_found_by_name_logs_no_warning_for_its_status() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .init();
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    register_node(&etcd, "n0", res(8, 8 * 512, 100), "nova").await;
    wait_nodes(&mut cl, 1).await;
    let created = cl
        .servers
        .create(pb::CreateServerRequest {
            name: "web".into(),
            flavor: "m1.small".into(),
            image_ref: "cirros".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id: InstanceId = created.results[0]
        .server
        .as_ref()
        .unwrap()
        .id
        .parse()
        .unwrap();
    // Its agent reports it, as agents do.
    let status = InstanceStatus {
        state: InstanceState::Running,
        node: NodeName::new("n0").unwrap(),
        updated_at: model::now(),
        last_error: None,
        reboot_generation: 0,
        volumes: Vec::new(),
        size: None,
    };
    let mut e = etcd.client().await.unwrap();
    let status_key = keys::instance_status(&status.node, &id);
    e.put(status_key.as_str(), model::encode(&status), None)
        .await
        .unwrap();

    let by_name = |cl: &mut Clients| {
        let mut s = cl.servers.clone();
        async move {
            s.get(pb::GetRequest {
                r#ref: "web".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    logs.take();
    for _ in 0..3 {
        let s = by_name(&mut cl).await;
        assert_eq!((s.id, s.state.as_str()), (id.to_string(), "running"));
    }
    let out = logs.take();
    assert!(
        !out.contains("skipping unreadable value"),
        "a status was decoded as a server:\n{out}"
    );

    // A record that really is unreadable is still reported, by key.
    let junk = keys::instance(&InstanceId::new_random());
    e.put(junk.as_str(), "{not json", None).await.unwrap();
    let s = by_name(&mut cl).await;
    assert_eq!(s.id, id.to_string());
    let out = logs.take();
    assert!(
        out.contains("skipping unreadable value") && out.contains(&junk),
        "{out}"
    );
    assert!(!out.contains(&status_key), "{out}");
    c.shutdown().await.unwrap();
}
