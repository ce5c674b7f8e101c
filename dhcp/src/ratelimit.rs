//! What a hostile guest must not be able to make the server do without
//! bound: answer (a token bucket per client MAC, [`Quotas`]) and log (one
//! aggregated line per interval, [`Tally`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nubo_netid::MacAddr;

/// Requests one client MAC may have answered: `per_second` on average, up
/// to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: f64,
}

impl Default for Quota {
    /// 10 requests per second, bursts of 20: a client needs 2 per lease.
    fn default() -> Self {
        Quota {
            per_second: 10.0,
            burst: 20.0,
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client MAC. Only MACs with a lease get a bucket
/// (unknown ones are dropped before), so the map is bounded by the lease
/// table; [`Quotas::retain`] forgets MACs that left it.
#[derive(Debug)]
pub struct Quotas {
    quota: Quota,
    buckets: HashMap<MacAddr, Bucket>,
}

impl Quotas {
    /// Empty buckets map with `quota` for every MAC.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token of `mac`'s bucket at `now`; `false` when it is empty.
    pub fn allow(&mut self, mac: MacAddr, now: Instant) -> bool {
        let q = self.quota;
        let b = self.buckets.entry(mac).or_insert(Bucket {
            tokens: q.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * q.per_second).min(q.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets the buckets of MACs for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&MacAddr) -> bool) {
        self.buckets.retain(|m, _| keep(m));
    }

    /// Number of MACs with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no MAC has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Events a guest can cause at will, counted per kind; summed up in one
/// line per interval by the caller, never logged one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// Malformed datagram or not a client request.
    Malformed,
    /// Request from a MAC without a lease on this bridge.
    UnknownMac,
    /// Request over its MAC's quota.
    OverQuota,
    /// A well-formed request deliberately not answered (RELEASE, DECLINE,
    /// another server selected, ...).
    Unanswered,
    /// DHCPNAK sent.
    Nak,
    /// Receive or send failure.
    IoError,
}

impl Event {
    const ALL: [Event; 6] = [
        Event::Malformed,
        Event::UnknownMac,
        Event::OverQuota,
        Event::Unanswered,
        Event::Nak,
        Event::IoError,
    ];

    fn index(self) -> usize {
        match self {
            Event::Malformed => 0,
            Event::UnknownMac => 1,
            Event::OverQuota => 2,
            Event::Unanswered => 3,
            Event::Nak => 4,
            Event::IoError => 5,
        }
    }

    /// Name used in the summary line.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Malformed => "malformed",
            Event::UnknownMac => "unknown_mac",
            Event::OverQuota => "over_quota",
            Event::Unanswered => "unanswered",
            Event::Nak => "nak",
            Event::IoError => "io_error",
        }
    }
}

/// Counts of [`Event`]s over one interval, with the first detail seen.
#[derive(Debug)]
pub struct Tally {
    interval: Duration,
    started: Option<Instant>,
    counts: [u64; 6],
    first: Option<String>,
}

/// One interval's summary: `(event, count)` for every non-zero count,
/// plus the first detail noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Non-zero counts.
    pub counts: Vec<(Event, u64)>,
    /// The detail of the first event of the interval, if one was given.
    pub first: Option<String>,
}

impl Summary {
    /// `malformed=3 over_quota=120` (the fields of the log line).
    pub fn fields(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .map(|(e, n)| format!("{}={n}", e.as_str()))
            .collect();
        parts.join(" ")
    }
}

impl Tally {
    /// A tally summed up every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            started: None,
            counts: [0; 6],
            first: None,
        }
    }

    /// Counts one event at `now`; `detail` (built only when needed) is kept
    /// for the first event of the interval.
    pub fn note(&mut self, event: Event, now: Instant, detail: impl FnOnce() -> String) {
        if self.started.is_none() {
            self.started = Some(now);
        }
        if self.first.is_none() {
            self.first = Some(detail());
        }
        if let Some(c) = self.counts.get_mut(event.index()) {
            *c += 1;
        }
    }

    /// The summary of the interval if it is over at `now` (and something
    /// was counted); the tally starts afresh.
    pub fn flush(&mut self, now: Instant) -> Option<Summary> {
        let started = self.started?;
        if now.saturating_duration_since(started) < self.interval {
            return None;
        }
        let counts = Event::ALL
            .into_iter()
            .filter_map(|e| {
                let n = self.counts.get(e.index()).copied().unwrap_or(0);
                (n > 0).then_some((e, n))
            })
            .collect();
        let first = self.first.take();
        self.counts = [0; 6];
        self.started = None;
        Some(Summary { counts, first })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    #[test]
    fn each_mac_has_its_own_bucket() {
        let mut q = Quotas::new(Quota {
            per_second: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        assert!((0..3).all(|_| q.allow(A, t0)));
        assert!(!q.allow(A, t0), "A's burst is spent");
        // B is untouched by A's flood.
        assert!((0..3).all(|_| q.allow(B, t0)));
        // Refill at 2/s: one more after 0.5 s, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(q.allow(A, t1));
        assert!(!q.allow(A, t1));
        // Never more than the burst after a long pause.
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| q.allow(A, t2)).count(), 3);
        q.retain(|m| *m == B);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_tally_sums_an_interval_in_one_summary() {
        let mut t = Tally::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.flush(t0), None);
        t.note(Event::OverQuota, t0, || "first".into());
        for _ in 0..999 {
            t.note(Event::OverQuota, t0, || unreachable!("detail built once"));
        }
        t.note(Event::Malformed, t0 + Duration::from_secs(1), || {
            unreachable!("detail built once")
        });
        assert_eq!(
            t.flush(t0 + Duration::from_secs(9)),
            None,
            "interval not over"
        );
        let s = t.flush(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(s.fields(), "malformed=1 over_quota=1000");
        assert_eq!(s.first.as_deref(), Some("first"));
        // Nothing since: nothing to say.
        assert_eq!(t.flush(t0 + Duration::from_secs(30)), None);
    }
}
