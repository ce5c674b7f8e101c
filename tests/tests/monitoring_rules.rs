//! The alert rules shipped in `monitoring/`: `promtool check rules` and
//! `promtool test rules` (every alert has a case where it fires and one
//! where it must not), the example scrape configuration passes
//! `promtool check config`, every alert has its unit test, and every nubo
//! metric a rule uses is in the contract table of docs/metrics.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use nubo_tests::prometheus::monitoring_dir;

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool runs (Debian package `prometheus`: scripts/deps.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rules() -> PathBuf {
    monitoring_dir().join("nubo-rules.yml")
}

fn rule_tests() -> PathBuf {
    monitoring_dir().join("tests/nubo-rules.test.yml")
}

fn alert_names(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|n| n.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn the_rules_pass_promtool_check() {
    let (ok, out) = promtool(&["check", "rules", rules().to_str().unwrap()]);
    assert!(ok, "{out}");
    let n = alert_names(&std::fs::read_to_string(rules()).unwrap(), "alert:").len();
    assert!(out.contains(&format!("{n} rules found")), "{out}");
}

#[test]
fn every_alert_fires_and_stays_quiet_in_promtool_unit_tests() {
    let (ok, out) = promtool(&["test", "rules", rule_tests().to_str().unwrap()]);
    assert!(ok, "{out}");
    let alerts = alert_names(&std::fs::read_to_string(rules()).unwrap(), "alert:");
    let tests = std::fs::read_to_string(rule_tests()).unwrap();
    let tested = alert_names(&tests, "alertname:");
    assert!(alerts.len() >= 20, "{alerts:?}");
    let untested: Vec<_> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test: {untested:?}"
    );
    // Each alert has an evaluation that expects nothing and one that
    // expects it firing.
    for a in &alerts {
        let evals: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|e| e.contains(&format!("alertname: {a}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "{a}: no case where it must not fire"
        );
        assert!(
            evals.iter().any(|e| e.contains("exp_labels:")),
            "{a}: no case where it must fire"
        );
    }
}

/// The unit tests can fail: the same tests against rules whose `for` is
/// shortened and whose fenced-node expression is always true do fail.
#[test]
fn the_unit_tests_catch_a_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    let broken = std::fs::read_to_string(rules())
        .unwrap()
        .replacen("for: 30s", "for: 5s", 1)
        .replace(
            r#"nubo_cluster_node_state{state="fenced"} == 1"#,
            r#"nubo_cluster_node_state{state="fenced"} >= 0"#,
        );
    assert_ne!(broken, std::fs::read_to_string(rules()).unwrap());
    std::fs::write(dir.path().join("nubo-rules.yml"), broken).unwrap();
    let t = dir.path().join("tests/nubo-rules.test.yml");
    std::fs::copy(rule_tests(), &t).unwrap();
    let (ok, out) = promtool(&["test", "rules", t.to_str().unwrap()]);
    assert!(!ok, "the unit tests passed against broken rules:\n{out}");
    assert!(out.contains("alertname: NuboNodeDown"), "{out}");
    assert!(out.contains("alertname: NuboNodeFenced"), "{out}");
}

#[test]
fn the_example_scrape_config_passes_promtool_check() {
    // The example names files under /etc/prometheus: give them a home.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let text = std::fs::read_to_string(monitoring_dir().join("prometheus.yml"))
        .unwrap()
        .replace("/etc/prometheus/", &format!("{d}/"))
        .replace("/etc/nubo/", &format!("{d}/"));
    for f in [
        "nubo-metrics.token",
        "nubo-ca.pem",
        "etcd-ca.pem",
        "etcd-client.pem",
        "etcd-client.key",
    ] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    std::fs::copy(rules(), dir.path().join("nubo-rules.yml")).unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(&cfg, text).unwrap();
    let (ok, out) = promtool(&["check", "config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SUCCESS: 24 rules found") || out.contains("rules found"),
        "{out}"
    );
}

/// Every `nubo_…` name a rule uses (histogram suffixes stripped) is a row
/// of the contract table in docs/metrics.md.
#[test]
fn every_metric_a_rule_uses_is_in_the_contract() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .unwrap();
    let rules = std::fs::read_to_string(rules()).unwrap();
    let used: BTreeSet<String> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .flat_map(|l| {
            l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("nubo_"))
                .map(|w| w.trim_end_matches("_bucket").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<_> = used
        .iter()
        .filter(|m| !doc.contains(&format!("| `{m}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by rules but not in docs/metrics.md: {missing:?}"
    );
}
