//! Rate limiting for log lines a hostile guest can trigger at will.

use std::time::{Duration, Instant};

/// Allows at most `burst` events per `window`; counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed_before` events were swallowed since the last
    /// logged one (worth mentioning in the line when non-zero).
    Log {
        /// Events swallowed since the last logged one.
        suppressed_before: u64,
    },
    /// Stay quiet.
    Suppress,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            window,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Decides about one event happening at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            let suppressed_before = std::mem::take(&mut self.suppressed);
            Verdict::Log { suppressed_before }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports() {
        let mut l = LogLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(
            l.check(t0),
            Verdict::Log {
                suppressed_before: 0
            }
        );
        assert_eq!(
            l.check(t0),
            Verdict::Log {
                suppressed_before: 0
            }
        );
        for _ in 0..5 {
            assert_eq!(l.check(t0 + Duration::from_secs(1)), Verdict::Suppress);
        }
        assert_eq!(
            l.check(t0 + Duration::from_secs(10)),
            Verdict::Log {
                suppressed_before: 5
            }
        );
        assert_eq!(
            l.check(t0 + Duration::from_secs(11)),
            Verdict::Log {
                suppressed_before: 0
            }
        );
        assert_eq!(l.check(t0 + Duration::from_secs(12)), Verdict::Suppress);
    }
}
