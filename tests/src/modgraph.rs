//! Import cycles between the modules of one crate.
//!
//! Within every module, its child modules must form a directed acyclic
//! graph: if `api` uses `auth`, nothing under `auth` may use `api`. An edge
//! `a → b` between siblings exists when any file in `a`'s subtree names a
//! path into `b`'s subtree (`crate::…`, `super::…`, `self::…`, `use` trees
//! included). References to an ancestor's own items (`super::Thing`,
//! `crate::Error`) and to one's own children are not sibling edges.
//! `#[cfg(test)]` modules and files named `tests.rs`/`testutil.rs` are test
//! code and left out. Sources are read with `proc-macro2`'s tokenizer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// One reference from a file to a module path.
#[derive(Debug, Clone)]
struct Reference {
    /// Absolute module path it names (items at the end are harmless: only
    /// the module prefix that exists is used).
    target: Vec<String>,
    line: usize,
}

/// A cycle among the children of one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The crate (its directory name).
    pub krate: String,
    /// The module whose children form the cycle (`""` = crate root).
    pub parent: String,
    /// The sibling modules in the cycle.
    pub members: Vec<String>,
    /// One example reference per edge inside the cycle: `a → b at file:line`.
    pub evidence: Vec<String>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parent = if self.parent.is_empty() {
            "the crate root".to_string()
        } else {
            format!("`{}`", self.parent)
        };
        write!(
            f,
            "{}: modules {} under {} import each other ({})",
            self.krate,
            self.members.join(", "),
            parent,
            self.evidence.join("; ")
        )
    }
}

/// The module path of a source file below `src/` (`a/b.rs` and `a/b/mod.rs`
/// → `[a, b]`; `lib.rs`/`main.rs` → `[]`); `None` for other binaries'
/// roots (`bin/x.rs`) and test files.
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    let stem = file.strip_suffix(".rs")?.to_string();
    if stem == "tests" || stem == "testutil" {
        return None;
    }
    if !(parts.is_empty() && (stem == "lib" || stem == "main") || stem == "mod") {
        parts.push(stem);
    }
    Some(parts)
}

fn is_punct(tt: Option<&TokenTree>, c: char) -> bool {
    matches!(tt, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// `a :: b :: c` starting at `toks[i]` (an identifier): the names, and for
/// a trailing `:: { x, y::z }` group, each of its branches' first names.
fn path_at(toks: &[TokenTree], i: usize) -> Vec<Vec<String>> {
    let mut names = Vec::new();
    let mut j = i;
    loop {
        match toks.get(j) {
            Some(TokenTree::Ident(id)) => names.push(id.to_string()),
            Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                // `use crate::{a, b::c}`: one path per branch.
                let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                let mut out = Vec::new();
                let mut start = true;
                for (k, t) in inner.iter().enumerate() {
                    if start {
                        if let TokenTree::Ident(_) = t {
                            for tail in path_at(&inner, k) {
                                let mut p = names.clone();
                                p.extend(tail);
                                out.push(p);
                            }
                        }
                        start = false;
                    }
                    if is_punct(Some(t), ',') {
                        start = true;
                    }
                }
                return out;
            }
            _ => break,
        }
        if is_punct(toks.get(j + 1), ':') && is_punct(toks.get(j + 2), ':') {
            j += 3;
        } else {
            break;
        }
    }
    vec![names]
}

/// Every `crate::…`/`super::…`/`self::…` path of a token stream, resolved
/// against the file's module path; skips `#[cfg(test)] mod … { }`.
fn references(stream: TokenStream, here: &[String], out: &mut Vec<Reference>) {
    let toks: Vec<TokenTree> = stream.into_iter().collect();
    for (i, tt) in toks.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => {
                let preceded_by_test_mod = i >= 2
                    && matches!(toks.get(i - 2), Some(TokenTree::Ident(m)) if m == "mod")
                    && is_test_mod(&toks, i - 2);
                if !preceded_by_test_mod {
                    references(g.stream(), here, out);
                }
            }
            TokenTree::Ident(id) => {
                let first = id.to_string();
                let prev_is_colons =
                    i >= 2 && is_punct(toks.get(i - 1), ':') && is_punct(toks.get(i - 2), ':');
                if prev_is_colons || !["crate", "super", "self"].contains(&first.as_str()) {
                    continue;
                }
                if !(is_punct(toks.get(i + 1), ':') && is_punct(toks.get(i + 2), ':')) {
                    continue;
                }
                let line = id.span().start().line;
                for path in path_at(&toks, i) {
                    let mut base: Vec<String> = match first.as_str() {
                        "crate" => Vec::new(),
                        "self" => here.to_vec(),
                        _ => here[..here.len().saturating_sub(1)].to_vec(),
                    };
                    let mut rest = path.into_iter().skip(1).peekable();
                    // `super::super::x`
                    while rest.peek().is_some_and(|s| s == "super") {
                        rest.next();
                        base.pop();
                    }
                    base.extend(rest);
                    out.push(Reference { target: base, line });
                }
            }
            _ => {}
        }
    }
}

/// Is `toks[m]` (the `mod` keyword) preceded by `#[cfg(test)]`?
fn is_test_mod(toks: &[TokenTree], m: usize) -> bool {
    // `# [cfg(test)] mod name { }` or with `pub` before `mod`.
    let mut k = m;
    while k > 0 && matches!(toks.get(k - 1), Some(TokenTree::Ident(v)) if v == "pub") {
        k -= 1;
    }
    k >= 2
        && is_punct(toks.get(k - 2), '#')
        && matches!(toks.get(k - 1), Some(TokenTree::Group(g)) if g.stream().to_string().replace(' ', "") == "cfg(test)")
}

/// Cycles among sibling modules of the crate whose sources are `src`.
pub fn crate_cycles(krate: &str, src: &Path) -> Result<Vec<Cycle>, String> {
    let mut files = Vec::new();
    collect_rs(src, &mut files).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut modules: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut refs: Vec<(Vec<String>, PathBuf, Reference)> = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(src).unwrap_or(path);
        let Some(here) = module_path(rel) else {
            continue;
        };
        modules.insert(here.clone());
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let stream = TokenStream::from_str(&text)
            .map_err(|e| format!("{}: cannot tokenize: {e}", path.display()))?;
        let mut found = Vec::new();
        references(stream, &here, &mut found);
        for r in found {
            refs.push((here.clone(), rel.to_path_buf(), r));
        }
    }
    // Sibling edges: parent → (from child, to child) → evidence.
    type Edges = BTreeMap<(String, String), String>;
    let mut graph: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    for (here, file, r) in refs {
        // The longest prefix of the target that is a module of the crate.
        let target: Vec<String> = (0..=r.target.len())
            .rev()
            .map(|n| r.target[..n].to_vec())
            .find(|p| modules.contains(p))
            .unwrap_or_default();
        let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
        if common >= here.len() || common >= target.len() {
            continue; // an ancestor's items, or one's own descendants
        }
        let parent = here[..common].to_vec();
        let edge = (here[common].clone(), target[common].clone());
        graph
            .entry(parent)
            .or_default()
            .entry(edge)
            .or_insert_with(|| {
                format!(
                    "{} → {} at {}:{}",
                    here[common],
                    target[common],
                    file.display(),
                    r.line
                )
            });
    }
    let mut cycles = Vec::new();
    for (parent, edges) in graph {
        for scc in strongly_connected(&edges) {
            if scc.len() < 2 {
                continue;
            }
            let evidence = edges
                .iter()
                .filter(|((a, b), _)| scc.contains(a) && scc.contains(b))
                .map(|(_, e)| e.clone())
                .collect();
            cycles.push(Cycle {
                krate: krate.to_string(),
                parent: parent.join("::"),
                members: scc.into_iter().collect(),
                evidence,
            });
        }
    }
    Ok(cycles)
}

/// Strongly connected components (Tarjan's algorithm would do; the graphs
/// are tiny, so reachability both ways is enough).
fn strongly_connected(edges: &BTreeMap<(String, String), String>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for (a, b) in edges.keys() {
                if *a == n && seen.insert(b.clone()) {
                    stack.push(b.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(*n) {
            continue;
        }
        let scc: BTreeSet<String> = nodes
            .iter()
            .filter(|m| *m == n || (reaches[n].contains(**m) && reaches[**m].contains(*n)))
            .map(|m| (*m).clone())
            .collect();
        done.extend(scc.iter().cloned());
        out.push(scc);
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect_rs(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
    }

    #[test]
    fn sibling_cycle_is_found_with_evidence() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            &[
                ("lib.rs", "mod api; mod auth; mod store; pub struct Error;"),
                (
                    "api/mod.rs",
                    "mod servers; use crate::Error; use self::servers::X;",
                ),
                (
                    "api/servers.rs",
                    "use super::Thing; use crate::{auth::check, store};",
                ),
                (
                    "auth.rs",
                    "fn f() { crate::api::servers::helper(); crate::store::get(); }",
                ),
                ("store.rs", "use crate::Error;"),
            ],
        );
        let cycles = crate_cycles("demo", d.path()).unwrap();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].members, ["api", "auth"]);
        assert_eq!(cycles[0].parent, "");
        let text = cycles[0].to_string();
        assert!(text.contains("api → auth at api/servers.rs:1"), "{text}");
        assert!(text.contains("auth → api at auth.rs:1"), "{text}");
    }

    #[test]
    fn test_modules_and_parent_references_are_not_edges() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            &[
                ("lib.rs", "mod a; mod b;"),
                (
                    "a.rs",
                    "use crate::b::x; #[cfg(test)] mod tests { use crate::a::y; }",
                ),
                ("b.rs", "#[cfg(test)]\nmod tests { use crate::a::z; }"),
                ("b/tests.rs", "use crate::a::w;"),
            ],
        );
        assert!(crate_cycles("demo", d.path()).unwrap().is_empty());
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            &[
                ("lib.rs", "mod net;"),
                (
                    "net/mod.rs",
                    "mod dhcp; mod metadata; pub use self::dhcp::Dhcp;",
                ),
                ("net/dhcp.rs", "use super::metadata::M;"),
                ("net/metadata.rs", "use super::super::net::dhcp::D;"),
            ],
        );
        let cycles = crate_cycles("demo", d.path()).unwrap();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(
            (cycles[0].parent.as_str(), cycles[0].members.clone()),
            ("net", vec!["dhcp".to_string(), "metadata".to_string()])
        );
    }
}
