//! The numbers: percentiles, throughput, and their table / JSON forms.

use std::time::Duration;

use serde_json::{json, Value};

/// The outcome of `nubo-bench place`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// etcd members.
    pub etcd_members: usize,
    /// Simulated nodes.
    pub nodes: usize,
    /// Creates requested.
    pub instances: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Creates the API accepted.
    pub accepted: usize,
    /// Creates that failed.
    pub errors: usize,
    /// Up to three distinct error messages.
    pub error_samples: Vec<String>,
    /// Assignments observed.
    pub placed: usize,
    /// placed / (last assignment − first request).
    pub placements_per_sec: f64,
    /// API latency of accepted creates.
    pub api_p50: Duration,
    /// API latency of accepted creates.
    pub api_p99: Duration,
    /// Instances whose running status committed.
    pub running: usize,
    /// Request sent → running status observed.
    pub running_p50: Duration,
    /// Request sent → running status observed.
    pub running_p99: Duration,
    /// Nodes holding more than capacity × ratio (must be 0).
    pub over_capacity: usize,
    /// Nodes whose usage record disagrees with their assignments.
    pub usage_mismatch: usize,
    /// Fewest instances on one node.
    pub min_per_node: u32,
    /// Most instances on one node.
    pub max_per_node: u32,
    /// Coordinator peak RSS (VmHWM), KiB.
    pub coordinator_hwm_kib: u64,
    /// Coordinator RSS at the end (VmRSS), KiB.
    pub coordinator_rss_kib: u64,
    /// CPU seconds the coordinator used during the load phase.
    pub coordinator_cpu_s: f64,
    /// CPU seconds etcd used during the load phase.
    pub etcd_cpu_s: f64,
    /// CPU seconds this benchmark (load + fake agents) used meanwhile.
    pub bench_cpu_s: f64,
    /// Duration of the load phase (first request → last running).
    pub wall: Duration,
}

/// Nearest-rank percentile of sorted samples (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

impl Report {
    /// The rows of the table: (metric, value).
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("etcd members", self.etcd_members.to_string()),
            ("nodes", self.nodes.to_string()),
            ("instances requested", self.instances.to_string()),
            ("concurrency", self.concurrency.to_string()),
            ("accepted", self.accepted.to_string()),
            ("errors", self.errors.to_string()),
            ("placed (assignments seen)", self.placed.to_string()),
            ("placements/s", format!("{:.1}", self.placements_per_sec)),
            ("API latency p50", format!("{} ms", ms(self.api_p50))),
            ("API latency p99", format!("{} ms", ms(self.api_p99))),
            ("running (status committed)", self.running.to_string()),
            ("create→running p50", format!("{} ms", ms(self.running_p50))),
            ("create→running p99", format!("{} ms", ms(self.running_p99))),
            ("over-capacity nodes", self.over_capacity.to_string()),
            (
                "usage/assignment mismatches",
                self.usage_mismatch.to_string(),
            ),
            (
                "instances per node min/max",
                format!("{}/{}", self.min_per_node, self.max_per_node),
            ),
            (
                "coordinator VmHWM",
                format!("{} MiB", mib(self.coordinator_hwm_kib)),
            ),
            (
                "coordinator VmRSS",
                format!("{} MiB", mib(self.coordinator_rss_kib)),
            ),
            (
                "CPU coordinator/etcd/bench",
                format!(
                    "{:.1} / {:.1} / {:.1} s",
                    self.coordinator_cpu_s, self.etcd_cpu_s, self.bench_cpu_s
                ),
            ),
            ("wall time", format!("{:.2} s", self.wall.as_secs_f64())),
        ]
    }

    /// Aligned two-column table, then the error samples.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let pad = w - k.chars().count();
            out.push_str(&format!("{k}{}  {v}\n", " ".repeat(pad)));
        }
        for e in &self.error_samples {
            out.push_str(&format!("error sample: {e}\n"));
        }
        out
    }

    /// The JSON document (`--json`); durations in milliseconds.
    pub fn json(&self) -> Value {
        json!({
            "etcd_members": self.etcd_members,
            "nodes": self.nodes,
            "instances": self.instances,
            "concurrency": self.concurrency,
            "accepted": self.accepted,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "placed": self.placed,
            "placements_per_sec": (self.placements_per_sec * 10.0).round() / 10.0,
            "api_latency_ms": { "p50": ms(self.api_p50), "p99": ms(self.api_p99) },
            "running": self.running,
            "create_to_running_ms": { "p50": ms(self.running_p50), "p99": ms(self.running_p99) },
            "over_capacity_nodes": self.over_capacity,
            "usage_mismatch_nodes": self.usage_mismatch,
            "instances_per_node": { "min": self.min_per_node, "max": self.max_per_node },
            "coordinator_kib": { "vm_hwm": self.coordinator_hwm_kib, "vm_rss": self.coordinator_rss_kib },
            "cpu_s": {
                "coordinator": (self.coordinator_cpu_s * 100.0).round() / 100.0,
                "etcd": (self.etcd_cpu_s * 100.0).round() / 100.0,
                "bench": (self.bench_cpu_s * 100.0).round() / 100.0,
            },
            "wall_s": (self.wall.as_secs_f64() * 100.0).round() / 100.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), d(50));
        assert_eq!(percentile(&v, 99.0), d(99));
        assert_eq!(percentile(&v, 100.0), d(100));
        assert_eq!(percentile(&[d(7)], 99.0), d(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn table_and_json_carry_the_numbers() {
        let r = Report {
            nodes: 50,
            instances: 500,
            accepted: 499,
            errors: 1,
            error_samples: vec!["no room".into()],
            placements_per_sec: 123.456,
            api_p99: Duration::from_micros(12_345),
            coordinator_hwm_kib: 51_200,
            ..Report::default()
        };
        let t = r.table();
        assert!(t.contains("placements/s                 123.5\n"), "{t}");
        assert!(t.contains("API latency p99              12.3 ms\n"), "{t}");
        assert!(t.contains("coordinator VmHWM            50 MiB\n"), "{t}");
        assert!(t.ends_with("error sample: no room\n"), "{t}");
        let j = r.json();
        assert_eq!(j["placements_per_sec"], 123.5);
        assert_eq!(j["api_latency_ms"]["p99"], 12.3);
        assert_eq!(j["errors"], 1);
    }
}
