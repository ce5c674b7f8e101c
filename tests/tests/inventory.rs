//! Every external program that nubo's scripts, daemons, harness and tests run
//! is declared in `scripts/inventory` with the Debian package that provides
//! it (and `scripts/deps.sh` installs exactly those). The scan is of the
//! source, not of this machine: a program installed here by hand or by an
//! earlier run does not hide a missing entry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nubo_tests::inventory::{scan_tree, Inventory, Use};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inventory() -> Inventory {
    let path = root().join("scripts/inventory");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Inventory::parse(&text).unwrap_or_else(|e| panic!("scripts/inventory: {e}"))
}

/// Every program the code runs is in the inventory.
#[test]
fn every_program_run_is_in_the_inventory() {
    let inv = inventory();
    let (uses, _) = scan_tree(&root()).expect("scan");
    assert!(
        uses.len() > 50,
        "the scan found only {} uses: is it broken?",
        uses.len()
    );
    let mut missing: BTreeMap<&str, Vec<&Use>> = BTreeMap::new();
    for u in &uses {
        if !inv.programs.contains_key(&u.program) {
            missing.entry(&u.program).or_default().push(u);
        }
    }
    let report: Vec<String> = missing
        .iter()
        .map(|(p, at)| {
            let places: Vec<String> = at.iter().take(3).map(|u| u.to_string()).collect();
            format!(
                "program `{p}` is run by {}{} but is not in scripts/inventory: add `{p} <debian package>` so that scripts/deps.sh installs it",
                places.join(", "),
                if at.len() > 3 { format!(" (and {} more)", at.len() - 3) } else { String::new() }
            )
        })
        .collect();
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

/// Every program of the inventory is still run somewhere (directly, or by
/// the program its `via:` names), so the inventory stays the truth.
#[test]
fn every_inventory_program_is_used() {
    let inv = inventory();
    let (uses, _) = scan_tree(&root()).expect("scan");
    let stale: Vec<String> = inv
        .programs
        .iter()
        .filter(|(p, e)| {
            let used = |name: &str| uses.iter().any(|u| u.program == name);
            match &e.via {
                Some(runner) => !used(runner),
                None => !used(p),
            }
        })
        .map(|(p, e)| {
            format!(
                "`{p}` ({}) is in scripts/inventory but nothing runs it",
                e.package
            )
        })
        .collect();
    assert!(stale.is_empty(), "\n{}", stale.join("\n"));
}

/// A function that spawns a program passed to it must be a registered runner,
/// or its callers' programs would escape the scan.
#[test]
fn every_runner_function_is_registered() {
    let (_, unregistered) = scan_tree(&root()).expect("scan");
    let report: Vec<String> = unregistered
        .iter()
        .map(|u| format!("{u}: fn `{}` runs a program given to it; add it to RUNNERS (or NOT_RUNNERS) in tests/src/inventory.rs", u.program))
        .collect();
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

#[test]
#[ignore = "prints the scan (for editing scripts/inventory)"]
fn print_scan() {
    let (uses, unregistered) = scan_tree(&root()).expect("scan");
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in &uses {
        by.entry(&u.program).or_default().push(u.to_string());
    }
    for (p, at) in by {
        println!(
            "{p:20} {}",
            at.iter().take(2).cloned().collect::<Vec<_>>().join(" ")
        );
    }
    for u in unregistered {
        println!("UNREGISTERED {} at {u}", u.program);
    }
}
