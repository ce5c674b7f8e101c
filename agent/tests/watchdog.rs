//! The systemd watchdog keeps being fed through an etcd outage (the reconcile
//! loop runs from its cache). Its own test binary: it sets `NOTIFY_SOCKET`
//! and `WATCHDOG_USEC` for the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;
use nubo_agent::compute::hypervisor::ObservedPower;
use nubo_common::model::InstanceState;
use nubo_common::NodeName;
use nubo_tests::Etcd;

const T: Duration = Duration::from_secs(60);

/// Receives datagrams until one equals `want` (panics after `timeout`).
async fn expect(rx: &UnixDatagram, want: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 128];
    loop {
        match rx.recv(&mut buf) {
            Ok(n) if &buf[..n] == want.as_bytes() => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no {want:?} within {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

fn drain(rx: &UnixDatagram) {
    let mut buf = [0u8; 128];
    while rx.recv(&mut buf).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_is_fed_through_an_etcd_outage() {
    init_tracing();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("notify");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_nonblocking(true).unwrap();
    // The only test in this binary: nothing else reads the environment.
    std::env::set_var("NOTIFY_SOCKET", &sock);
    std::env::set_var("WATCHDOG_USEC", "1000000");
    std::env::remove_var("WATCHDOG_PID");

    let mut etcd = Etcd::start().unwrap();
    let c = etcd.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeName::new("wd-1").unwrap();
    let mut w = World::create(&c).await;
    let id = w.add_instance(&c, &node).await.id;
    let agent = InProcessAgent::start(config(&etcd.endpoint(), &node, dir.path()), Duration::ZERO);
    expect(&rx, "READY=1\n", T).await;
    expect(&rx, "WATCHDOG=1\n", T).await;
    wait_until(T, "running", || {
        all_in_state(&c, vec![id], &node, InstanceState::Running)
    })
    .await;

    etcd.stop();
    // Well past the lease TTL: the node has fenced itself…
    wait_until(T, "frozen", || async {
        agent.snapshot().await.instances[&id].power == ObservedPower::Paused
    })
    .await;
    // …and systemd is still being told the agent is alive: three pings
    // sent after the freeze (more than one 1 s watchdog period).
    drain(&rx);
    for _ in 0..3 {
        expect(&rx, "WATCHDOG=1\n", Duration::from_secs(10)).await;
    }
    assert!(agent.is_running());
    assert_eq!(
        agent.snapshot().await.instances[&id].power,
        ObservedPower::Paused,
        "still frozen while etcd is down"
    );

    etcd.restart().unwrap();
    wait_until(T, "resumed", || async {
        agent.snapshot().await.instances[&id].power == ObservedPower::Running
    })
    .await;
    agent.stop().await;
}
