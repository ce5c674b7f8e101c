//! systemd watchdog (`WatchdogSec=` → `WATCHDOG_USEC`): `WATCHDOG=1` every
//! half period, but only while the agent's reconcile loop is alive — it
//! [`Heartbeat::beat`]s at every pass and every [`beat_interval`] while
//! idle. A timer alone would keep a wedged agent (a hypervisor call that
//! never returns) alive forever; the loop runs from the cache whether or not
//! etcd answers, so an etcd outage never makes systemd kill the agent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::fencing::rules::Clock;

/// The main loop's last sign of life.
#[derive(Clone)]
pub struct Heartbeat {
    last: Arc<Mutex<Instant>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("last", &self.last())
            .finish()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            last: Arc::new(Mutex::new(clock.now())),
            clock,
        }
    }

    /// Records that the main loop is alive now.
    pub fn beat(&self) {
        let now = self.clock.now();
        if let Ok(mut l) = self.last.lock() {
            *l = now;
        }
    }

    /// When the main loop last beat.
    pub fn last(&self) -> Instant {
        self.last
            .lock()
            .map(|l| *l)
            .unwrap_or_else(|e| *e.into_inner())
    }
}

/// How often the main loop beats while idle: a quarter of the watchdog
/// period, at most 1 s (1 s without a watchdog).
pub fn beat_interval(period: Option<Duration>) -> Duration {
    period
        .map_or(Duration::from_secs(1), |p| {
            (p / 4).min(Duration::from_secs(1))
        })
        .max(Duration::from_millis(10))
}

/// Whether to ping systemd at `now`: the loop beat within the last half
/// period. Pure.
pub fn should_ping(now: Instant, last_beat: Instant, period: Duration) -> bool {
    now.saturating_duration_since(last_beat) < period / 2
}

/// Sends `WATCHDOG=1` to systemd's notify socket (`$NOTIFY_SOCKET`).
pub fn ping_systemd() -> std::io::Result<()> {
    sd_notify::notify(&[sd_notify::NotifyState::Watchdog])
}

/// Calls `ping` ([`ping_systemd`] in the agent) every half `period` while
/// the heartbeat is fresh. Runs until dropped.
pub async fn run(heartbeat: Heartbeat, period: Duration, ping: impl Fn() -> std::io::Result<()>) {
    info!(?period, "systemd watchdog enabled");
    let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tick.tick().await;
        let last = heartbeat.last();
        if should_ping(heartbeat.clock.now(), last, period) {
            if stalled {
                info!("main loop alive again; watchdog pings resumed");
                stalled = false;
            }
            if let Err(e) = ping() {
                warn!(error = %e, "watchdog ping failed");
            }
        } else if !stalled {
            stalled = true;
            warn!(since = ?last.elapsed(), "reconcile loop stalled; withholding WATCHDOG=1 (systemd will restart the agent)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fencing::rules::{ManualClock, MonotonicClock};
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn pings_only_while_the_loop_beat_recently() {
        let clock = Arc::new(ManualClock::new(Instant::now()));
        let hb = Heartbeat::new(clock.clone());
        let period = Duration::from_secs(30);
        assert!(should_ping(clock.now(), hb.last(), period));
        clock.advance(Duration::from_secs(15));
        assert!(!should_ping(clock.now(), hb.last(), period));
        hb.beat();
        assert!(should_ping(clock.now(), hb.last(), period));
        assert_eq!(beat_interval(Some(period)), Duration::from_secs(1));
        assert_eq!(
            beat_interval(Some(Duration::from_secs(2))),
            Duration::from_millis(500)
        );
        assert_eq!(beat_interval(None), Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pings_stop_when_the_heartbeat_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hb = Heartbeat::new(Arc::new(MonotonicClock));
        let period = Duration::from_millis(400);
        let beating = {
            let hb = hb.clone();
            tokio::spawn(async move {
                loop {
                    hb.beat();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let tx = UnixDatagram::unbound().unwrap();
        let ping = move || tx.send_to(b"WATCHDOG=1\n", &path).map(|_| ());
        let task = tokio::spawn(run(hb.clone(), period, ping));
        let rx = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let n = rx.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"WATCHDOG=1\n");
            }
            rx
        })
        .await
        .unwrap();
        beating.abort();
        let _ = beating.await;
        let stopped = hb.last();
        // Wait until the heartbeat is stale, then drain what was sent before.
        while Instant::now().saturating_duration_since(stopped) <= period {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while rx.recv(&mut buf).is_ok() {}
        tokio::time::sleep(period * 2).await;
        assert!(
            rx.recv(&mut buf).is_err(),
            "pinged although the loop stopped beating"
        );
        task.abort();
    }
}
