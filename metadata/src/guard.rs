//! Per-guest fairness on one bridge: a cap on each client address's open
//! connections, a token bucket on its requests, and counters of what was
//! refused, summed up in one log line per interval.
//!
//! The caller's address is the TCP peer address, which anti-spoofing ties
//! to the port; a guest without port security could use many addresses,
//! but its new connections are rate-limited per tap in the kernel
//! (nubo-firewall) and the bridge-wide cap still holds.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Limits of one client address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientLimits {
    /// Connections one address may hold open at once.
    pub max_connections: usize,
    /// Sustained requests per second of one address.
    pub requests_per_second: f64,
    /// Requests one address may make at once.
    pub request_burst: f64,
}

impl Default for ClientLimits {
    /// 8 connections, 20 requests per second, bursts of 100 (cloud-init
    /// reads a few dozen documents in a row at boot).
    fn default() -> Self {
        ClientLimits {
            max_connections: 8,
            requests_per_second: 20.0,
            request_burst: 100.0,
        }
    }
}

/// Above this many tracked addresses, idle ones are forgotten.
const PRUNE_ABOVE: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Client {
    connections: usize,
    tokens: f64,
    at: Instant,
}

/// Counters of refusals on one bridge.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Connections closed because their address held too many.
    pub per_client: AtomicU64,
    /// Connections closed because the bridge held too many.
    pub per_bridge: AtomicU64,
    /// Requests answered 429 because their address was over its rate.
    pub rate: AtomicU64,
    /// Requests refused because the caller was not identified (404).
    pub unidentified: AtomicU64,
    /// Neighbour-table lookups that failed.
    pub lookup_errors: AtomicU64,
    /// The first reason of the interval for the two above.
    pub first: Mutex<Option<String>>,
}

/// One interval's refusals, from [`Refusals::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts {
    /// Connections over the per-client cap.
    pub per_client: u64,
    /// Connections over the bridge cap.
    pub per_bridge: u64,
    /// Requests over the rate.
    pub rate: u64,
    /// Unidentified callers.
    pub unidentified: u64,
    /// Failed neighbour lookups.
    pub lookup_errors: u64,
    /// The first reason noted for the last two.
    pub first: Option<String>,
}

impl RefusalCounts {
    /// Whether nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.per_client + self.per_bridge + self.rate + self.unidentified + self.lookup_errors == 0
    }
}

impl Refusals {
    /// Counts `counter` and keeps `reason` if it is the interval's first.
    pub fn note(&self, counter: &AtomicU64, reason: impl FnOnce() -> String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(reason());
        }
    }

    /// The counts so far, reset to zero.
    pub fn take(&self) -> RefusalCounts {
        RefusalCounts {
            per_client: self.per_client.swap(0, Ordering::Relaxed),
            per_bridge: self.per_bridge.swap(0, Ordering::Relaxed),
            rate: self.rate.swap(0, Ordering::Relaxed),
            unidentified: self.unidentified.swap(0, Ordering::Relaxed),
            lookup_errors: self.lookup_errors.swap(0, Ordering::Relaxed),
            first: self
                .first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address already holds its maximum of connections.
    Client,
    /// The bridge already holds its maximum of connections.
    Bridge,
}

/// The per-address state of one bridge.
#[derive(Debug)]
pub struct Guard {
    limits: ClientLimits,
    max_bridge: usize,
    state: Mutex<GuardState>,
    /// What was refused since the last report.
    pub refusals: Refusals,
}

#[derive(Debug, Default)]
struct GuardState {
    clients: HashMap<Ipv4Addr, Client>,
    open: usize,
}

/// An admitted connection; releases its slots when dropped.
#[derive(Debug)]
pub struct Admitted {
    guard: Arc<Guard>,
    ip: Ipv4Addr,
}

impl Guard {
    /// A guard with `limits` per address and `max_bridge` connections in
    /// all.
    pub fn new(limits: ClientLimits, max_bridge: usize) -> Arc<Self> {
        Arc::new(Guard {
            limits,
            max_bridge: max_bridge.max(1),
            state: Mutex::new(GuardState::default()),
            refusals: Refusals::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `ip` at `now`, or says which cap it
    /// hit (the caller closes it at once).
    pub fn admit(self: &Arc<Self>, ip: Ipv4Addr, now: Instant) -> Result<Admitted, Refused> {
        let mut state = self.lock();
        let burst = self.limits.request_burst;
        if state.clients.len() > PRUNE_ABOVE {
            let rate = self.limits.requests_per_second;
            state
                .clients
                .retain(|_, c| c.connections > 0 || refill(c, now, rate, burst) < burst);
        }
        let held = state.clients.get(&ip).map_or(0, |c| c.connections);
        if held >= self.limits.max_connections {
            self.refusals.per_client.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Client);
        }
        if state.open >= self.max_bridge {
            self.refusals.per_bridge.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Bridge);
        }
        state.open += 1;
        state
            .clients
            .entry(ip)
            .or_insert(Client {
                connections: 0,
                tokens: burst,
                at: now,
            })
            .connections += 1;
        Ok(Admitted {
            guard: Arc::clone(self),
            ip,
        })
    }

    /// Takes one request token of `ip` at `now`; `false` (counted) when it
    /// is over its rate.
    pub fn allow_request(&self, ip: Ipv4Addr, now: Instant) -> bool {
        let mut state = self.lock();
        let (rate, burst) = (self.limits.requests_per_second, self.limits.request_burst);
        let client = state.clients.entry(ip).or_insert(Client {
            connections: 0,
            tokens: burst,
            at: now,
        });
        client.tokens = refill(client, now, rate, burst);
        client.at = now;
        if client.tokens >= 1.0 {
            client.tokens -= 1.0;
            true
        } else {
            self.refusals.rate.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Connections open on the bridge.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn release(&self, ip: Ipv4Addr) {
        let mut state = self.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(c) = state.clients.get_mut(&ip) {
            c.connections = c.connections.saturating_sub(1);
        }
    }
}

/// The tokens of `c` at `now`.
fn refill(c: &Client, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(c.at).as_secs_f64();
    (c.tokens + elapsed * rate).min(burst)
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.guard.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);

    #[test]
    fn one_address_cannot_take_the_bridge() {
        let limits = ClientLimits {
            max_connections: 3,
            ..ClientLimits::default()
        };
        let g = Guard::new(limits, 5);
        let now = Instant::now();
        let held: Vec<Admitted> = (0..3).map(|_| g.admit(A, now).unwrap()).collect();
        assert_eq!(g.admit(A, now).unwrap_err(), Refused::Client);
        // B still gets in, up to the bridge-wide cap.
        let b: Vec<Admitted> = (0..2).map(|_| g.admit(B, now).unwrap()).collect();
        assert_eq!(
            g.admit(Ipv4Addr::new(10, 0, 0, 7), now).unwrap_err(),
            Refused::Bridge
        );
        assert_eq!(g.open(), 5);
        drop(held);
        assert_eq!(g.open(), 2);
        assert!(g.admit(A, now).is_ok());
        let r = g.refusals.take();
        assert_eq!((r.per_client, r.per_bridge, r.rate), (1, 1, 0));
        assert!(g.refusals.take().is_empty());
        g.refusals
            .note(&g.refusals.unidentified, || "first".to_string());
        g.refusals
            .note(&g.refusals.unidentified, || unreachable!("kept once"));
        let r = g.refusals.take();
        assert_eq!((r.unidentified, r.first.as_deref()), (2, Some("first")));
        drop(b);
    }

    #[test]
    fn requests_are_rate_limited_per_address() {
        let limits = ClientLimits {
            requests_per_second: 10.0,
            request_burst: 5.0,
            ..ClientLimits::default()
        };
        let g = Guard::new(limits, 10);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| g.allow_request(A, t0)).count(), 5);
        assert!(g.allow_request(B, t0), "B has its own bucket");
        assert!(g.allow_request(A, t0 + Duration::from_millis(100)));
        assert!(!g.allow_request(A, t0 + Duration::from_millis(100)));
        assert_eq!(g.refusals.take().rate, 4);
    }

    #[test]
    fn idle_addresses_are_forgotten_when_many() {
        let g = Guard::new(ClientLimits::default(), 10);
        let t0 = Instant::now();
        for i in 0..=PRUNE_ABOVE as u32 {
            assert!(g.allow_request(Ipv4Addr::from(0x0a00_0000 + i), t0));
        }
        let later = t0 + Duration::from_secs(60);
        let _c = g.admit(A, later).unwrap();
        assert!(g.lock().clients.len() <= 2, "{}", g.lock().clients.len());
    }
}
