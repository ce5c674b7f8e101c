//! Polling with a deadline: the only way tests wait for the system to converge.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// An error that ends a wait at once instead of counting as "not yet"
/// (e.g. the daemon being waited for has exited). Build it with [`fatal`].
#[derive(Debug)]
pub struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Wraps `e` so that [`wait_until`] / [`wait_for`] return it immediately.
pub fn fatal(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Fatal(format!("{e:#}")))
}

/// Interval between two polls.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Calls `check` until it returns `Ok(true)` or `timeout` elapses.
///
/// An `Err` from `check` counts as "not yet" (the system may still be
/// starting) unless built with [`fatal`], and is remembered: on timeout the error message names `what`,
/// the time waited and the last observation (`false`, or the last error).
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for(timeout, what, || {
        check().map(|b| b.then_some(()).ok_or(false))
    })
}

/// Calls `observe` until it returns `Ok(Ok(value))`, which is returned, or
/// `timeout` elapses.
///
/// `observe` returns `Ok(Err(observation))` while the condition does not hold
/// yet; the last observation (or the last error) is reported on timeout, so a
/// failing test says what it saw, not only that it waited.
pub fn wait_for<T, O: Debug>(
    timeout: Duration,
    what: &str,
    mut observe: impl FnMut() -> Result<std::result::Result<T, O>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match observe() {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(o)) => format!("{o:?}"),
            Err(e) if e.is::<Fatal>() => return Err(e),
            Err(e) => format!("error: {e:#}"),
        };
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:?} waiting for {what}; last observed: {last}",
                start.elapsed()
            );
        }
        std::thread::sleep(POLL_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_once_true() {
        let mut n = 0;
        wait_until(Duration::from_secs(10), "n reaches 3", || {
            n += 1;
            Ok(n >= 3)
        })
        .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn wait_for_reports_last_observation_on_timeout() {
        let mut n = 0;
        let err = wait_for::<(), _>(Duration::from_millis(300), "never", || {
            n += 1;
            Ok(Err(format!("seen {n}")))
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for never"), "{err}");
        assert!(err.contains(&format!("seen {n}")), "{err}");
    }

    #[test]
    fn fatal_errors_end_the_wait_at_once() {
        let mut n = 0;
        let err = wait_until(Duration::from_secs(60), "x", || {
            n += 1;
            Err(fatal(anyhow::anyhow!("daemon exited")))
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert!(err.to_string().contains("daemon exited"), "{err}");
    }

    #[test]
    fn wait_until_reports_last_error_on_timeout() {
        let err = wait_until(Duration::from_millis(300), "x", || anyhow::bail!("boom"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("error: boom"), "{err}");
    }
}
