//! `nubo-bench etcd-txn`: the etcd ceiling. The same number of
//! transactions as `place`, shaped like a placement transaction (4 compares,
//! 7 puts of realistic sizes), sent straight to a fresh etcd at the same
//! concurrency, without any coordinator. Whatever `place` reaches can never
//! exceed this rate on the same machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// What the raw loop measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawResult {
    /// Committed placements.
    pub committed: usize,
    /// Failed (error or compare) transactions.
    pub failed: usize,
    /// Elapsed time.
    pub elapsed: Duration,
}

impl RawResult {
    /// Committed placements per second.
    pub fn per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.committed as f64 / s
        } else {
            0.0
        }
    }
}

/// Sizes (bytes) of the values a placement writes: usage, assignment,
/// instance spec, IP allocation, MAC, port, port owner.
const VALUE_SIZES: [usize; 7] = [90, 130, 720, 90, 40, 420, 40];

/// The compares and puts of placement number `i` (on one of `nodes` nodes).
fn placement(i: usize, nodes: usize) -> (Vec<Compare>, Vec<TxnOp>) {
    let node = i % nodes.max(1);
    let keys = [
        format!("/raw/nodes/n{node}/usage"),
        format!("/raw/assignments/n{node}/{i}"),
        format!("/raw/instances/{i}"),
        format!("/raw/ipam/net/{i}"),
        format!("/raw/macs/{i}"),
        format!("/raw/ports/{i}"),
        format!("/raw/port-owners/{i}"),
    ];
    let compares = vec![
        // Always true, but evaluated like the usage revision compare.
        Compare::mod_revision(keys[0].as_str(), CompareOp::Less, i64::MAX),
        Compare::create_revision(keys[2].as_str(), CompareOp::Equal, 0),
        Compare::create_revision(keys[3].as_str(), CompareOp::Equal, 0),
        Compare::create_revision(keys[4].as_str(), CompareOp::Equal, 0),
    ];
    let ops: Vec<TxnOp> = keys
        .iter()
        .zip(VALUE_SIZES)
        .map(|(k, n)| TxnOp::put(k.as_str(), vec![b'x'; n], None))
        .collect();
    (compares, ops)
}

/// One transaction holding placements `first..first + group`.
pub fn txn(first: usize, group: usize, nodes: usize) -> Txn {
    let (mut compares, mut ops) = (Vec::new(), Vec::new());
    for i in first..first + group.max(1) {
        let (c, o) = placement(i, nodes);
        compares.extend(c);
        ops.extend(o);
    }
    Txn::new().when(compares).and_then(ops)
}

/// Sends `txns` placements, `concurrency` transactions at a time, `group`
/// placements per transaction.
pub async fn run(
    client: &Client,
    txns: usize,
    concurrency: usize,
    group: usize,
    nodes: usize,
) -> RawResult {
    let group = group.max(1);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut c = client.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0, 0);
            loop {
                let i = next.fetch_add(group, Ordering::Relaxed);
                if i >= txns {
                    return (ok, bad);
                }
                let n = group.min(txns - i);
                match c.txn(txn(i, n, nodes)).await {
                    Ok(r) if r.succeeded() => ok += n,
                    _ => bad += n,
                }
            }
        }));
    }
    let mut r = RawResult::default();
    for w in workers {
        if let Ok((ok, bad)) = w.await {
            r.committed += ok;
            r.failed += bad;
        }
    }
    r.elapsed = t0.elapsed();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_committed_over_elapsed() {
        let r = RawResult {
            committed: 500,
            failed: 0,
            elapsed: Duration::from_millis(250),
        };
        assert!((r.per_sec() - 2000.0).abs() < 1e-9);
        assert_eq!(RawResult::default().per_sec(), 0.0);
        assert_eq!(VALUE_SIZES.len(), 7);
    }
}
