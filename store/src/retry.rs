//! Retries with exponential backoff, jitter and a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::classify::{classify, Class};
use crate::error::StoreError;

/// How an operation is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Bound of one attempt (a member that hangs is given up on).
    pub attempt_timeout: Duration,
    /// Total time for all attempts; after it the last error is returned.
    pub deadline: Duration,
    /// First pause between attempts (then doubled, with jitter).
    pub first_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 2 s per attempt, 15 s in all, pauses 25 ms doubling to 1 s. The
    /// deadline outlasts a leader election (≈ 1–2 election timeouts) with
    /// room to spare; the attempt bound is well above a loaded etcd's
    /// latency and well below etcd's own request timeout (5 s + 2 ×
    /// election timeout), which is what a follower that lost its leader
    /// makes a write wait.
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(15),
            first_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Exponential backoff with "equal jitter": each pause is drawn in
/// [d/2, d] where d doubles from `first` to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// From `first`, doubling to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            next: first,
            first,
            max,
        }
    }

    /// The backoff of a policy.
    pub fn of(p: &RetryPolicy) -> Self {
        Self::new(p.first_backoff, p.max_backoff)
    }

    /// The pause to make now.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// Back to the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client returned an error.
    Etcd(etcd_client::Error),
    /// The attempt timed out (outcome unknown).
    Timeout(Duration),
}

impl Failure {
    pub(crate) fn class(&self) -> Class {
        match self {
            Self::Etcd(e) => classify(e),
            Self::Timeout(_) => Class::Lost,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Etcd(e) => write!(f, "{e}"),
            Self::Timeout(d) => write!(f, "no answer within {d:?}"),
        }
    }
}

/// One attempt of `fut`, bounded by the policy's attempt timeout.
pub(crate) async fn attempt<T>(
    p: &RetryPolicy,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(p.attempt_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Etcd(e)),
        Err(_) => Err(Failure::Timeout(p.attempt_timeout)),
    }
}

/// The error returned for a failure that is not retried.
pub(crate) fn terminal(f: Failure) -> StoreError {
    match f.class() {
        Class::NoSpace => StoreError::NoSpace {
            detail: status_message(&f),
        },
        Class::Compacted => StoreError::Compacted(status_message(&f)),
        _ => match f {
            Failure::Etcd(etcd_client::Error::GRpcStatus(s))
                if s.code() == tonic::Code::PermissionDenied =>
            {
                StoreError::PermissionDenied {
                    detail: s.message().to_string(),
                }
            }
            Failure::Etcd(e) => StoreError::Etcd(e),
            Failure::Timeout(d) => StoreError::Unavailable {
                what: "request",
                attempts: 1,
                elapsed: d,
                last: format!("no answer within {d:?}"),
            },
        },
    }
}

fn status_message(f: &Failure) -> String {
    match f {
        Failure::Etcd(etcd_client::Error::GRpcStatus(s)) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// Runs `op` until it succeeds, retrying every error of class
/// [`Class::NotSent`] or [`Class::Lost`] with backoff until the policy's
/// deadline. Only for operations that may run twice: reads, puts of a
/// fixed value, deletes, lease grants/keep-alives/revokes, status.
pub async fn retry<T, F, Fut>(
    p: &RetryPolicy,
    what: &'static str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::of(p);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let f = match attempt(p, op()).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        if !matches!(f.class(), Class::NotSent | Class::Lost) {
            return Err(terminal(f));
        }
        let d = backoff.next_delay();
        if start.elapsed() + d >= p.deadline {
            return Err(StoreError::Unavailable {
                what,
                attempts,
                elapsed: start.elapsed(),
                last: f.to_string(),
            });
        }
        tracing::debug!(what, attempt = attempts, error = %f, retry_in = ?d, "etcd request failed; retrying");
        tokio::time::sleep(d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_doubles_within_jitter_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let within = |d: Duration, full: u64| {
            d >= Duration::from_millis(full / 2) && d <= Duration::from_millis(full)
        };
        assert!(within(b.next_delay(), 100));
        assert!(within(b.next_delay(), 200));
        assert!(within(b.next_delay(), 350));
        assert!(within(b.next_delay(), 350));
        b.reset();
        assert!(within(b.next_delay(), 100));
        // Jitter: many draws are not all equal.
        let draws: std::collections::HashSet<Duration> = (0..50)
            .map(|_| Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(draws.len() > 1);
    }

    fn unavailable(msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(msg))
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_millis(600),
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let n = AtomicU32::new(0);
        let r = retry(&fast(), "get", || async {
            match n.fetch_add(1, Ordering::SeqCst) {
                0 => Err(unavailable("etcdserver: leader changed")),
                1 => Err(unavailable("etcdserver: no leader")),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!((r, n.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn fatal_and_nospace_errors_are_returned_at_once() {
        let n = AtomicU32::new(0);
        let e = retry(&fast(), "put", || async {
            n.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(etcd_client::Error::GRpcStatus(
                tonic::Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
            ))
        })
        .await
        .unwrap_err();
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
        assert!(e.to_string().contains("out of space"), "{e}");
        let e = retry(&fast(), "put", || async {
            Err::<(), _>(etcd_client::Error::GRpcStatus(
                tonic::Status::permission_denied("etcdserver: permission denied"),
            ))
        })
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::PermissionDenied { .. }), "{e}");
        assert!(
            e.to_string().contains("permission denied") && e.to_string().contains("enroll"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn hanging_attempts_are_bounded_and_the_deadline_ends_the_retries() {
        let n = AtomicU32::new(0);
        let t = Instant::now();
        let e = retry(&fast(), "get", || async {
            n.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), etcd_client::Error>>().await
        })
        .await
        .unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        assert!(n.load(Ordering::SeqCst) >= 2, "retried after a timeout");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
