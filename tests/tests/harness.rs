//! The process guards report failures usefully and clean up after themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use nubo_tests::{pid_alive, Agent, AgentOpts, Coordinator, CoordinatorOpts, Etcd};

#[test]
fn a_daemon_that_fails_to_start_is_reported_with_its_log_tail() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CoordinatorOpts::new(&etcd.endpoint(), "broken");
    opts.extra_args = vec!["--no-such-flag".into()];
    let err = format!(
        "{:#}",
        Coordinator::start_with(opts, dir.path()).err().unwrap()
    );
    assert!(err.contains("exited with"), "{err}");
    assert!(err.contains("--no-such-flag"), "no log tail in: {err}");

    let mut opts = AgentOpts::fake("broken", &etcd.endpoint());
    opts.extra_args = vec!["--no-such-flag".into()];
    let err = format!("{:#}", Agent::start(opts).err().unwrap());
    assert!(err.contains("--no-such-flag"), "no log tail in: {err}");
}

#[test]
fn guards_kill_their_processes_on_drop_and_agents_restart_in_place() {
    let etcd = Etcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::start(&etcd.endpoint(), "c1", dir.path()).unwrap();
    assert_eq!(c.readyz().unwrap(), "leader");
    let cpid = c.pid().unwrap();
    let mut a = Agent::start(AgentOpts::fake("n1", &etcd.endpoint())).unwrap();
    let state = a.state_dir();
    let first = a.pid().unwrap();
    a.restart().unwrap();
    let second = a.pid().unwrap();
    assert_ne!(first, second);
    assert!(!pid_alive(first));
    assert_eq!(a.state_dir(), state);
    // Ready may have been seen through the alive key first; the log follows.
    nubo_tests::wait_until(std::time::Duration::from_secs(30), "ready line", || {
        Ok(a.current_log().contains("nubo-agent ready node=n1"))
    })
    .unwrap();
    drop(a);
    drop(c);
    assert!(!pid_alive(second), "agent survived its guard");
    assert!(!pid_alive(cpid), "coordinator survived its guard");
    assert!(!state.exists(), "agent state dir left behind");
}
