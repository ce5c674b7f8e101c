//! A continuous ping from a namespace (`ping -n -D -O -i <interval>`):
//! one timestamped line per probe, answered (`bytes from`) or not (`no
//! answer yet`), for tests that measure how long a path was lost.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::net_e2e::Watched;

/// A running prober; killed on drop.
pub struct Prober {
    proc: Watched,
}

/// One probe's line: its timestamp (UNIX seconds) and whether it was an
/// answer.
fn parse(line: &str) -> Option<(f64, bool)> {
    let ts: f64 = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    Some((ts, line.contains("bytes from")))
}

/// The longest interval (seconds) between two consecutive answers among
/// `lines` timestamped in `[from, to]` (the first answer after `from`
/// counts from `from`, `to` from the last answer before it); `None`
/// without any answer in the window.
pub fn longest_silence(lines: &[String], from: f64, to: f64) -> Option<f64> {
    let answers: Vec<f64> = lines
        .iter()
        .filter_map(|l| parse(l))
        .filter(|(ts, answered)| *answered && *ts >= from && *ts <= to)
        .map(|(ts, _)| ts)
        .collect();
    let (first, last) = (*answers.first()?, *answers.last()?);
    let inner = answers
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    Some(inner.max(first - from).max(to - last))
}

/// The probes of `lines` as runs: `answered|silent <first ts>..<last ts> (n)`
/// one per line, for a failure message.
pub fn runs(lines: &[String]) -> String {
    let mut out: Vec<(bool, f64, f64, usize)> = Vec::new();
    for (ts, answered) in lines.iter().filter_map(|l| parse(l)) {
        match out.last_mut() {
            Some(run) if run.0 == answered => {
                run.2 = ts;
                run.3 += 1;
            }
            _ => out.push((answered, ts, ts, 1)),
        }
    }
    out.iter()
        .map(|(a, f, l, n)| {
            let what = if *a { "answered" } else { "silent" };
            format!("{what} {f:.3}..{l:.3} ({n})\n")
        })
        .collect()
}

impl Prober {
    /// Pings `ip` from namespace `ns` every `interval_ms` milliseconds.
    pub fn start(ns: &str, ip: Ipv4Addr, interval_ms: u32) -> Result<Self> {
        let mut cmd = std::process::Command::new("ip");
        let interval = format!("{:.3}", f64::from(interval_ms) / 1000.0);
        cmd.args([
            "netns", "exec", ns, "ping", "-n", "-D", "-O", "-i", &interval,
        ])
        .arg(ip.to_string());
        Ok(Prober {
            proc: Watched::spawn(cmd, "ping prober")?,
        })
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.proc.stdout_lines()
    }

    /// The first answer timestamped after `since` (UNIX seconds).
    pub fn first_answer_after(&self, since: f64) -> Option<f64> {
        self.lines()
            .iter()
            .filter_map(|l| parse(l))
            .find(|(ts, answered)| *ts > since && *answered)
            .map(|(ts, _)| ts)
    }

    /// Whether a probe sent after `since` went unanswered.
    pub fn silent_after(&self, since: f64) -> bool {
        self.lines()
            .iter()
            .filter_map(|l| parse(l))
            .any(|(ts, answered)| ts > since && !answered)
    }
}

/// The current time in UNIX seconds (what the prober's `-D` prints).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn longest_silence_counts_the_gap_between_answers_and_the_window_edges() {
        let l = lines(&[
            "PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.",
            "[100.00] 64 bytes from 10.0.0.1: icmp_seq=1 ttl=64 time=0.1 ms",
            "[100.01] 64 bytes from 10.0.0.1: icmp_seq=2 ttl=64 time=0.1 ms",
            "[100.02] no answer yet for icmp_seq=3",
            "[100.31] 64 bytes from 10.0.0.1: icmp_seq=33 ttl=64 time=0.1 ms",
            "[100.32] 64 bytes from 10.0.0.1: icmp_seq=34 ttl=64 time=0.1 ms",
        ]);
        let g = longest_silence(&l, 100.0, 100.32).unwrap();
        assert!((g - 0.30).abs() < 1e-6, "{g}");
        // The window's edges count: silent from 99.5 to the first answer.
        let g = longest_silence(&l, 99.5, 100.32).unwrap();
        assert!((g - 0.5).abs() < 1e-6, "{g}");
        // Nothing answered in the window.
        assert_eq!(longest_silence(&l, 101.0, 102.0), None);
    }
}
