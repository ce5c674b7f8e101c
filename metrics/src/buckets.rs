//! Histogram bucket layouts, in seconds (Prometheus base unit), shared so
//! that the same kind of duration is comparable across daemons.

/// Request latencies (API calls, etcd requests): 0.5 ms … ~8 s.
pub fn request_seconds() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15)
}

/// Work passes (a reconcile pass, an nftables apply, a stats collection):
/// 1 ms … ~33 s.
pub fn pass_seconds() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_grow_and_cover_their_range() {
        for (b, lo, hi) in [
            (request_seconds().collect::<Vec<_>>(), 0.0005, 8.0),
            (pass_seconds().collect::<Vec<_>>(), 0.001, 30.0),
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
            assert!(b[0] <= lo && *b.last().unwrap() >= hi, "{b:?}");
        }
    }
}
