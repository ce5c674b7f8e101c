//! The shape of the code: within every crate, the children of each module
//! import each other without cycles (see `nubo_tests::modgraph`).

use std::path::Path;

use nubo_tests::modgraph::crate_cycles;

#[test]
fn no_import_cycle_between_modules_of_a_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Vec::new();
    let mut crates = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let dir = e.unwrap().path();
        let src = dir.join("src");
        if !dir.join("Cargo.toml").is_file() || !src.is_dir() {
            continue;
        }
        crates += 1;
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        for c in crate_cycles(&name, &src).unwrap() {
            report.push(c.to_string());
        }
    }
    assert!(
        crates >= 10,
        "only {crates} crates found under {}",
        root.display()
    );
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}
