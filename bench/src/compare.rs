//! `nubo-bench place --baseline-bin OLD`: the same placement run against two
//! coordinator binaries, alternating (baseline, candidate, candidate,
//! baseline, …, so that a drift of the machine's load hits both alike),
//! each run on a fresh etcd. The verdict compares medians: placements/s
//! (higher is better) and the coordinator's CPU seconds per 1,000
//! placements (lower is better; far less sensitive than throughput to the
//! neighbours of a shared machine).

use serde_json::{json, Value};

use nubo_tests::stats::median;

use crate::report::Report;

/// Which binary a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `--baseline-bin`.
    Baseline,
    /// `--coordinator-bin` (the code under test).
    Candidate,
}

/// The order of `rounds` pairs of runs: baseline first in even rounds,
/// candidate first in odd ones.
pub fn schedule(rounds: usize) -> Vec<Side> {
    (0..rounds)
        .flat_map(|r| {
            if r % 2 == 0 {
                [Side::Baseline, Side::Candidate]
            } else {
                [Side::Candidate, Side::Baseline]
            }
        })
        .collect()
}

/// Coordinator CPU seconds per 1,000 placements of one run.
fn cpu_per_1000(r: &Report) -> f64 {
    if r.placed == 0 {
        return 0.0;
    }
    r.coordinator_cpu_s * 1000.0 / r.placed as f64
}

/// Medians of one side.
#[derive(Debug, Clone, PartialEq)]
pub struct SideSummary {
    /// Runs.
    pub runs: usize,
    /// Median placements/s.
    pub placements_per_sec: f64,
    /// Median coordinator CPU seconds per 1,000 placements.
    pub cpu_per_1000: f64,
    /// Every run's placements/s, in run order.
    pub each: Vec<f64>,
}

impl SideSummary {
    fn of(reports: &[&Report]) -> Self {
        Self {
            runs: reports.len(),
            placements_per_sec: median(
                &reports
                    .iter()
                    .map(|r| r.placements_per_sec)
                    .collect::<Vec<_>>(),
            ),
            cpu_per_1000: median(&reports.iter().map(|r| cpu_per_1000(r)).collect::<Vec<_>>()),
            each: reports.iter().map(|r| r.placements_per_sec).collect(),
        }
    }
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The baseline's medians.
    pub baseline: SideSummary,
    /// The candidate's medians.
    pub candidate: SideSummary,
}

impl Comparison {
    /// Pairs each run with the side it ran on.
    pub fn of(runs: &[(Side, Report)]) -> Self {
        let side = |s: Side| -> Vec<&Report> {
            runs.iter()
                .filter(|(k, _)| *k == s)
                .map(|(_, r)| r)
                .collect()
        };
        Self {
            baseline: SideSummary::of(&side(Side::Baseline)),
            candidate: SideSummary::of(&side(Side::Candidate)),
        }
    }

    /// Candidate ÷ baseline median placements/s (≥ 1: the candidate is
    /// at least as fast).
    pub fn throughput_ratio(&self) -> f64 {
        ratio(
            self.candidate.placements_per_sec,
            self.baseline.placements_per_sec,
        )
    }

    /// Baseline ÷ candidate median CPU per placement (≥ 1: the candidate
    /// costs no more CPU).
    pub fn cpu_ratio(&self) -> f64 {
        ratio(self.baseline.cpu_per_1000, self.candidate.cpu_per_1000)
    }

    /// The human-readable verdict.
    pub fn text(&self) -> String {
        let line = |name: &str, s: &SideSummary| {
            let each: Vec<String> = s.each.iter().map(|v| format!("{v:.0}")).collect();
            format!(
                "{name:<10} {} runs: median {:.1} placements/s, {:.3} coordinator CPU s per 1000 (runs: {})\n",
                s.runs,
                s.placements_per_sec,
                s.cpu_per_1000,
                each.join(", ")
            )
        };
        format!(
            "{}{}placements/s ratio candidate/baseline: {:.2}\nCPU efficiency ratio baseline/candidate: {:.2}\n",
            line("baseline", &self.baseline),
            line("candidate", &self.candidate),
            self.throughput_ratio(),
            self.cpu_ratio()
        )
    }

    /// The JSON form (`--json`).
    pub fn json(&self) -> Value {
        let side = |s: &SideSummary| {
            json!({
                "runs": s.runs,
                "median_placements_per_sec": (s.placements_per_sec * 10.0).round() / 10.0,
                "median_coordinator_cpu_s_per_1000": (s.cpu_per_1000 * 1000.0).round() / 1000.0,
                "placements_per_sec": s.each,
            })
        };
        json!({
            "baseline": side(&self.baseline),
            "candidate": side(&self.candidate),
            "placements_per_sec_ratio": (self.throughput_ratio() * 100.0).round() / 100.0,
            "cpu_efficiency_ratio": (self.cpu_ratio() * 100.0).round() / 100.0,
        })
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, cpu: f64) -> Report {
        Report {
            placed: 10_000,
            placements_per_sec: rate,
            coordinator_cpu_s: cpu,
            ..Report::default()
        }
    }

    #[test]
    fn runs_alternate_and_each_side_runs_as_often() {
        use Side::*;
        assert_eq!(
            schedule(3),
            vec![Baseline, Candidate, Candidate, Baseline, Baseline, Candidate]
        );
        assert!(schedule(0).is_empty());
    }

    #[test]
    fn the_verdict_compares_medians_of_each_side() {
        let runs = vec![
            (Side::Baseline, run(3000.0, 2.0)),
            (Side::Candidate, run(2400.0, 2.2)),
            (Side::Candidate, run(2700.0, 2.0)),
            (Side::Baseline, run(2000.0, 1.8)),
            (Side::Baseline, run(2600.0, 2.0)),
            (Side::Candidate, run(9000.0, 2.5)),
        ];
        let c = Comparison::of(&runs);
        assert_eq!(c.baseline.placements_per_sec, 2600.0);
        assert_eq!(c.candidate.placements_per_sec, 2700.0);
        assert!((c.throughput_ratio() - 2700.0 / 2600.0).abs() < 1e-9);
        // CPU per 1000: baseline median 0.2, candidate median 0.22.
        assert!((c.cpu_ratio() - 0.2 / 0.22).abs() < 1e-9);
        assert!(c.text().contains("ratio candidate/baseline: 1.04"));
        assert_eq!(c.json()["candidate"]["runs"], 3);
    }
}
