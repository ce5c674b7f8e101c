//! The coordinator's metrics, scraped by a real Prometheus (Debian's
//! package) over TLS with a bearer token, with the shipped rules of
//! `monitoring/` loaded as they are: API requests by method and code,
//! placements, etcd latency, leadership, the leader's cluster gauges
//! (nodes, allocation, quotas; a follower exports none), etcd's own metrics, and the node-down,
//! fencing-failed and node-fenced alerts firing within their `for` when a
//! node dies (the fencer first refusing, then working).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nubo_common::model::{Quota, QuotaUsage};
use nubo_common::proto as pb;
use nubo_common::{keys, ProjectId};
use nubo_coordinator::{Config, RecordingFencer};
use nubo_metrics::EndpointConfig;
use nubo_tests::prometheus::{monitoring_dir, Job, Prometheus, PrometheusOpts};
use nubo_tests::Etcd;

/// A CA and a server certificate for `localhost` / 127.0.0.1; returns
/// (ca, cert, key).
fn tls_files(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "nubo metrics test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("metrics.pem"),
        dir.join("metrics.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Runs blocking Prometheus queries on this worker (the runtime has others
/// for the coordinator).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn wait_value(prom: &Prometheus, promql: &str, want: f64) {
    nubo_tests::wait_for(Duration::from_secs(30), promql, || {
        let v = prom.query(promql)?;
        Ok(match v.as_slice() {
            [s] if s.value == want => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\nprometheus log:\n{}", prom.log_tail()));
}

/// Waits for alert `name` (labels including `with`) to be `state`; returns
/// the time it was first seen so.
fn wait_alert(prom: &Prometheus, name: &str, with: &[(&str, &str)], state: &str, within: Duration) {
    nubo_tests::wait_for(within, &format!("alert {name} {with:?} {state}"), || {
        Ok(match prom.alert_state(name, with)? {
            Some(s) if s == state => Ok(()),
            other => Err(other),
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\nalerts: {:?}", prom.alerts()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_coordinator_and_the_shipped_alerts_fire() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, "scrape-secret\n").unwrap();
    let fencer = Arc::new(RecordingFencer::default());
    fencer.set_failing(true);
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.metrics = Some(EndpointConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(cert),
        tls_key: Some(key),
        client_ca: None,
        bearer_token_file: Some(token),
    });
    let c = nubo_coordinator::start_with_fencer(cfg, fencer.clone())
        .await
        .unwrap();
    let metrics = c.metrics_addr().unwrap().to_string();
    // A follower (plain HTTP): leader 0 and none of the leader's gauges.
    let mut fcfg = Config::for_tests(etcd.endpoint());
    fcfg.id = "follower".into();
    fcfg.metrics = Some(EndpointConfig::plain("127.0.0.1:0".parse().unwrap()));
    let follower = nubo_coordinator::start(fcfg).await.unwrap();
    let follower_metrics = follower.metrics_addr().unwrap().to_string();

    // Activity to count: a placement on n0 (the only node then), a call
    // that fails, a project near its quota.
    let mut cl = clients(&c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.61.0.0/24").await;
    let lease0 = register_seen(&etcd, &c, "n0", res(4, 4 * 512, 40), "nova").await;
    let r = create_servers(&mut cl, server_req("vm", &["net"], 1)).await;
    assert_eq!(created(&r, 0).node, "n0");
    let missing = cl
        .servers
        .get(pb::GetRequest {
            r#ref: "no-such-server".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    register_seen(&etcd, &c, "n1", res(4, 4 * 512, 40), "nova").await;
    {
        let p = ProjectId::new("p1").unwrap();
        let mut q = Quota::UNLIMITED;
        q.vcpus = Some(10);
        let used = QuotaUsage {
            vcpus: 9,
            ..Default::default()
        };
        let mut e = etcd.client().await.unwrap();
        e.put(keys::quota(&p), serde_json::to_vec(&q).unwrap(), None)
            .await
            .unwrap();
        e.put(
            keys::quota_usage(&p),
            serde_json::to_vec(&used).unwrap(),
            None,
        )
        .await
        .unwrap();
    }

    let etcd_target = etcd.endpoint().trim_start_matches("http://").to_string();
    let prom = blocking(|| {
        Prometheus::start(PrometheusOpts {
            rule_files: vec![monitoring_dir().join("nubo-rules.yml")],
            jobs: vec![
                Job {
                    tls_ca: Some((ca.clone(), "localhost".into())),
                    bearer_token: Some("scrape-secret".into()),
                    ..Job::plain("nubo-coordinator", vec![metrics.clone()])
                },
                // Negative control: the same endpoint, a wrong token.
                Job {
                    tls_ca: Some((ca.clone(), "localhost".into())),
                    bearer_token: Some("wrong".into()),
                    ..Job::plain("wrong-token", vec![metrics.clone()])
                },
                Job::plain("etcd", vec![etcd_target]),
                Job::plain("follower", vec![follower_metrics]),
            ],
            ..Default::default()
        })
    })
    .unwrap();

    // (query, value) once every target has been scraped; `J` is the
    // coordinator's job selector.
    let expected: &[(&str, f64)] = &[
        (r#"up{job="nubo-coordinator"}"#, 1.0),
        (r#"up{job="wrong-token"}"#, 0.0),
        (r#"up{job="etcd"}"#, 1.0),
        ("etcd_server_has_leader", 1.0),
        (r#"nubo_coordinator_leader{J}"#, 1.0),
        (r#"nubo_coordinator_leader_transitions_total{J}"#, 1.0),
        (
            r#"nubo_coordinator_api_requests_total{J,method="/nubo.v1.Servers/Create",code="OK"}"#,
            1.0,
        ),
        (
            r#"nubo_coordinator_api_requests_total{J,method="/nubo.v1.Servers/Get",code="NotFound"}"#,
            1.0,
        ),
        (
            r#"nubo_coordinator_api_request_duration_seconds_count{J,method="/nubo.v1.Servers/Create"}"#,
            1.0,
        ),
        (
            r#"nubo_coordinator_placements_total{J,result="placed"}"#,
            1.0,
        ),
        (
            r#"nubo_coordinator_etcd_request_duration_seconds_count{J,op="txn"} > bool 0"#,
            1.0,
        ),
        (
            r#"nubo_cluster_node_allocated{J,node="n0",resource="vcpus"}"#,
            1.0,
        ),
        (
            r#"nubo_cluster_node_capacity{J,node="n1",resource="ram_bytes"}"#,
            (4u64 << 29) as f64,
        ),
        (r#"sum(nubo_cluster_node_state{J,state="alive"})"#, 2.0),
        (r#"count(nubo_cluster_node_state{J})"#, 6.0),
        (
            r#"nubo_cluster_quota_used{J,project="p1",resource="vcpus"} / nubo_cluster_quota_limit"#,
            0.9,
        ),
        (r#"nubo_coordinator_leader{job="follower"}"#, 0.0),
    ];
    blocking(|| {
        for (q, v) in expected {
            wait_value(&prom, &q.replace("{J", r#"{job="nubo-coordinator""#), *v);
        }
        assert!(
            prom.query(r#"{job="follower",__name__=~"nubo_cluster_.*"}"#)
                .unwrap()
                .is_empty(),
            "a follower exports no cluster gauges"
        );
        // Healthy: none of the alerts the failure below raises is active.
        for a in ["NuboNodeDown", "NuboFencingFailed", "NuboNodeFenced"] {
            assert_eq!(prom.alert_state(a, &[]).unwrap(), None, "{a}");
        }
    });

    // n0 dies; the fencer refuses: dead, not fenced.
    revoke(&etcd, lease0).await;
    let died = Instant::now();
    blocking(|| {
        wait_value(
            &prom,
            r#"nubo_cluster_node_state{job="nubo-coordinator",node="n0",state="dead"}"#,
            1.0,
        );
        wait_alert(
            &prom,
            "NuboFencingFailed",
            &[("kind", "fence_failed")],
            "firing",
            Duration::from_secs(30),
        );
        // `for: 30s`: pending first, firing after 30 s (+ scrape and
        // evaluation intervals, and the leader's collection period).
        wait_alert(
            &prom,
            "NuboNodeDown",
            &[("node", "n0")],
            "pending",
            Duration::from_secs(20),
        );
        assert!(
            died.elapsed() < Duration::from_secs(30),
            "pending only after {:?}",
            died.elapsed()
        );
        wait_alert(
            &prom,
            "NuboNodeDown",
            &[("node", "n0")],
            "firing",
            Duration::from_secs(45),
        );
        let fired = died.elapsed();
        assert!(
            fired >= Duration::from_secs(30),
            "fired after {fired:?}, before its `for`"
        );
        eprintln!("NuboNodeDown firing {fired:?} after the node's lease was revoked (for: 30s)");
    });

    // Fencing works again: fenced, evacuated to n1, node-down resolved.
    fencer.set_failing(false);
    blocking(|| {
        wait_value(
            &prom,
            r#"nubo_cluster_node_state{job="nubo-coordinator",node="n0",state="fenced"}"#,
            1.0,
        );
        wait_alert(
            &prom,
            "NuboNodeFenced",
            &[("node", "n0")],
            "firing",
            Duration::from_secs(30),
        );
        nubo_tests::wait_until(Duration::from_secs(30), "NuboNodeDown resolved", || {
            Ok(prom
                .alert_state("NuboNodeDown", &[("node", "n0")])?
                .is_none())
        })
        .unwrap();
        wait_value(
            &prom,
            r#"nubo_coordinator_evacuations_total{job="nubo-coordinator",result="succeeded"}"#,
            1.0,
        );
        wait_value(
            &prom,
            r#"nubo_coordinator_fencing_events_total{job="nubo-coordinator",kind="fenced"}"#,
            1.0,
        );
        wait_value(
            &prom,
            r#"nubo_cluster_node_allocated{job="nubo-coordinator",node="n1",resource="vcpus"}"#,
            1.0,
        );
    });
    drop(prom);
    follower.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}
