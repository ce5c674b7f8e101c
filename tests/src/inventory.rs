//! The program inventory and the scanner that keeps it honest.
//!
//! `scripts/inventory` declares every external program that nubo's scripts,
//! daemons, harness and tests run, with the Debian package that provides it;
//! `scripts/deps.sh` installs exactly those packages and then checks that
//! every program resolves. [`scan_tree`] finds the programs the code really
//! runs, so a test can fail when one is missing from the inventory — even on
//! a machine where the program happens to be installed (that is how a
//! missing `keepalived` stayed hidden).
//!
//! What counts as "running a program":
//! - Rust: `Command::new("P")`; a call to one of the harness's runner
//!   functions ([`RUNNERS`]) whose program argument is a literal (or an array
//!   whose first element is); `"netns", "exec", NS, "P"` in an argument list;
//!   shell text handed to `sh -c`/`bash -c`, and literals that are shell
//!   scripts (they start with `set -e`). Rust is read with `proc-macro2`'s
//!   tokenizer, so strings, raw strings and comments are handled exactly.
//! - Shell (`*.sh`, `.ci/run`, `systemd/check-*`): the command word of every
//!   simple command, after assignments, redirections and wrappers such as
//!   `exec`, `timeout N` or `ip netns exec NS`; heredoc bodies (guest
//!   scripts, config files) are not commands of this machine and are skipped.
//!   There is no maintained shell parser crate that keeps line numbers for
//!   such a scan; the small one here is enough for the project's own scripts
//!   and is unit-tested below.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// One place where a program is run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    /// The program's name (as looked up on `PATH`).
    pub program: String,
    /// The file that runs it, relative to the scanned root.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One line of `scripts/inventory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The Debian package that provides the program.
    pub package: String,
    /// `Some(runner)` when nubo's code never runs the program itself but a
    /// program it runs does (e.g. `qemu-system-x86_64` via libvirtd): such an
    /// entry need not appear in the scan.
    pub via: Option<String>,
}

/// The declared inventory: programs → packages, plus packages that provide
/// no program (libraries and headers for the build).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Program → its entry.
    pub programs: BTreeMap<String, Entry>,
    /// Every package named, programs' and library-only ones.
    pub packages: BTreeSet<String>,
}

impl Inventory {
    /// Parses the inventory format: `PROGRAM PACKAGE [via:RUNNER] [# note]`
    /// per line, `-` as PROGRAM for a package that provides no program;
    /// blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut inv = Inventory::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let (program, package, rest) = match words.as_slice() {
                [p, k, rest @ ..] => (*p, *k, rest),
                _ => return Err(format!("line {}: expected `PROGRAM PACKAGE`", i + 1)),
            };
            let via = match rest {
                [] => None,
                [v] => match v.strip_prefix("via:") {
                    Some(r) if !r.is_empty() => Some(r.to_string()),
                    _ => return Err(format!("line {}: unexpected `{v}`", i + 1)),
                },
                _ => return Err(format!("line {}: too many fields", i + 1)),
            };
            inv.packages.insert(package.to_string());
            if program == "-" {
                continue;
            }
            let entry = Entry {
                package: package.to_string(),
                via,
            };
            if inv.programs.insert(program.to_string(), entry).is_some() {
                return Err(format!("line {}: `{program}` listed twice", i + 1));
            }
        }
        Ok(inv)
    }
}

/// Functions of the harness and the tests that run a program given as an
/// argument: `(name, is a method, argument)`. The program is argument
/// `Some(i)` (a literal, or the first element of an array), or with `None`
/// the first argument that is a string literal, else the first element of the
/// first array argument. [`unregistered_runners`] fails the inventory test
/// when a new such function appears without being listed here.
pub const RUNNERS: &[(&str, bool, Option<usize>)] = &[
    ("run", false, None), // tests/src/netns.rs; metadata/overlay/firewall/libvirt test helpers
    ("sh", false, None),  // dhcp/tests/common
    ("host_ok", true, None), // firewall/tests/common/lab.rs
    ("exec", true, None), // Host::exec, Guest::exec, Lab::exec
    ("spawn", true, None), // Guest::spawn, Lab::spawn
    ("cli", true, None),  // storage::testing::TestCluster::cli
    ("spawn", false, Some(1)), // Daemon::spawn(name, wrapper, ..): the wrapper's first element
    ("run_ok", false, None), // overlay/tests/real_netns.rs
    ("must", false, None), // firewall/tests/common/lab.rs
    ("guest_ok", true, None), // firewall/tests/common/lab.rs
    ("ok", true, None),   // Guest::ok (tests/src/net_e2e.rs)
];

/// Runners whose program is fixed: `virsh(&[..])` runs `virsh`.
pub const FIXED_RUNNERS: &[(&str, &str)] =
    &[("virsh", "virsh"), ("ip", "ip"), ("etcdctl", "etcdctl")];

/// Shell words that are not external programs.
const SHELL_BUILTINS: &[&str] = &[
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "while",
    "until",
    "do",
    "done",
    "case",
    "esac",
    "in",
    "function",
    "select",
    "time",
    "!",
    "{",
    "}",
    "[[",
    "]]",
    "[",
    "]",
    "local",
    "export",
    "readonly",
    "declare",
    "typeset",
    "set",
    "unset",
    "shift",
    "return",
    "exit",
    "trap",
    "cd",
    "echo",
    "printf",
    "read",
    "wait",
    "test",
    "true",
    "false",
    ":",
    ".",
    "source",
    "eval",
    "break",
    "continue",
    "mapfile",
    "readarray",
    "type",
    "hash",
    "ulimit",
    "umask",
    "getopts",
    "let",
    "pushd",
    "popd",
    "builtin",
    "alias",
    "jobs",
    "disown",
    "kill",
    "command",
];

/// Wrappers whose next word (after their own options) is the real program:
/// `(wrapper, number of non-option arguments to skip)`.
const WRAPPERS: &[(&str, usize)] = &[
    ("exec", 0),
    ("sudo", 0),
    ("nohup", 0),
    ("setsid", 0),
    ("nice", 0),
    ("env", 0),
    ("timeout", 1),
    ("flock", 1),
];

fn program_like(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.+-".contains(c))
        && !word.starts_with("nbt")
        && !word.starts_with("nubo")
}

/// Programs run by one shell text, with 1-based line numbers relative to it.
pub fn scan_shell(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let functions: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("function ").trim_start();
            let (name, rest) = l.split_once("()")?;
            (rest.trim_start().starts_with('{') || rest.trim().is_empty())
                .then(|| name.trim().to_string())
                .filter(|n| !n.contains(' '))
        })
        .collect();
    let mut heredoc: Option<(String, bool)> = None;
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, line) in text.lines().enumerate() {
        if let Some((end, strip)) = &heredoc {
            let l = if *strip { line.trim_start() } else { line };
            if l == end {
                heredoc = None;
            }
            continue;
        }
        if pending.is_empty() {
            pending_line = i + 1;
        }
        let code = strip_comment(line);
        if let Some(marker) = heredoc_marker(&code) {
            heredoc = Some(marker);
        }
        if let Some(cont) = code.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(&code);
        if quote_open(&pending) {
            pending.push(' '); // a quoted word (an awk program) goes on
            continue;
        }
        for cmd in split_commands(&pending) {
            for p in command_programs(&cmd) {
                if !functions.contains(&p) {
                    found.push((p, pending_line));
                }
            }
        }
        pending.clear();
    }
    found
}

/// Whether a quote opened in `text` is still open at its end.
fn quote_open(text: &str) -> bool {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for c in text.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            _ => {}
        }
        prev = c;
    }
    single || double
}

/// The line without its `#` comment (a `#` that starts a word outside quotes).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && prev != '\\' => double = !double,
            '#' if !single && !double && (prev.is_whitespace() || prev == ';') => {
                return line[..i].trim_end().to_string()
            }
            _ => {}
        }
        prev = c;
    }
    line.trim_end().to_string()
}

fn heredoc_marker(code: &str) -> Option<(String, bool)> {
    let at = code.find("<<")?;
    let rest = &code[at + 2..];
    if rest.starts_with('<') {
        return None; // here-string
    }
    let strip = rest.starts_with('-');
    let rest = rest.trim_start_matches('-').trim_start();
    let word: String = rest
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!word.is_empty()).then_some((word, strip))
}

/// Splits a logical line into simple commands: at `;`, `&`, `|`, `(`, `)`
/// and backquotes outside single quotes, and out of `$( … )` substitutions
/// (also inside double quotes). `$((` arithmetic is not a command.
fn split_commands(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double) = (false, false);
    let chars: Vec<char> = line.chars().collect();
    let mut arith = 0usize;
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            '\'' if !double => {
                single = !single;
                cur.push(c);
            }
            '"' if !single => {
                double = !double;
                cur.push(c);
            }
            '\\' if !single => {
                cur.push(c);
                if let Some(n) = next {
                    cur.push(n);
                    i += 1;
                }
            }
            '$' if !single && next == Some('(') => {
                if chars.get(i + 2) == Some(&'(') {
                    arith += 1;
                    cur.push_str("$((");
                    i += 3;
                    continue;
                }
                out.push(std::mem::take(&mut cur));
                depth += 1;
                i += 2;
                continue;
            }
            ')' if arith > 0 && next == Some(')') => {
                arith -= 1;
                cur.push_str("))");
                i += 2;
                continue;
            }
            '(' if !single && !double && next == Some('(') => {
                arith += 1; // `(( … ))`
                cur.push_str("((");
                i += 2;
                continue;
            }
            '(' if !single && !double && cur.ends_with('=') => {
                // An array assignment `a=(x y)`: words, not a command.
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == ')')
                    .map_or(chars.len(), |p| i + p);
                cur.extend(&chars[i..close.min(chars.len())]);
                i = close + 1;
                continue;
            }
            '(' if !single && !double => {
                depth += 1;
                out.push(std::mem::take(&mut cur));
            }
            ')' if !single && depth == 0 && !double => {
                // An unbalanced `)` ends a case pattern (`help)`): not a command.
                cur.clear();
            }
            ';' | '&' | '|' | ')' | '`'
                if !single && (!double || c == '`' || (c == ')' && depth > 0)) =>
            {
                if c == ')' {
                    depth = depth.saturating_sub(1);
                }
                out.push(std::mem::take(&mut cur));
            }
            _ => cur.push(c),
        }
        i += 1;
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits a simple command into words (quotes removed, no expansion).
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                any = true;
            }
            None if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            None => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .trim_end_matches('+')
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '[' || c == ']')
    })
}

fn is_redirection(w: &str) -> bool {
    let w = w.trim_start_matches(|c: char| c.is_ascii_digit());
    w.starts_with('>') || w.starts_with('<')
}

/// The program(s) one simple command runs: its command word, and the one a
/// wrapper (`timeout 5 P`, `ip netns exec NS P`, `command -v P`) runs.
fn command_programs(cmd: &str) -> Vec<String> {
    let mut ws: Vec<String> = words(cmd);
    // A case pattern (`help)`, `*.txt)`) ends the word list before it.
    if let Some(first) = ws.first() {
        if first.ends_with(')') || first == ";;" {
            ws.remove(0);
        }
    }
    let mut it = ws.into_iter().peekable();
    let mut out = Vec::new();
    let mut skip_args = 0usize;
    while let Some(w) = it.next() {
        if is_assignment(&w) && w.contains("=(") && !w.ends_with(')') {
            // The rest of an array assignment `a=(x y z)`.
            for rest in it.by_ref() {
                if rest.ends_with(')') {
                    break;
                }
            }
            continue;
        }
        if is_assignment(&w) || is_redirection(&w) || w == "!" {
            continue;
        }
        if w.starts_with('-') {
            continue; // a wrapper's option
        }
        if skip_args > 0 {
            skip_args -= 1;
            continue;
        }
        if w == "command" {
            // `command -v P` checks for P: P is needed.
            if it.peek().is_some_and(|n| n == "-v") {
                it.next();
                if let Some(p) = it.next() {
                    if program_like(&p) {
                        out.push(p);
                    }
                }
            }
            break;
        }
        if let Some((_, n)) = WRAPPERS.iter().find(|(name, _)| *name == w) {
            if w != "exec" && program_like(&w) {
                out.push(w.clone());
            }
            skip_args = *n;
            continue;
        }
        if SHELL_BUILTINS.contains(&w.as_str()) || !program_like(&w) {
            // `if P …`, `while P …`, `then P …`, `! P`: the next word runs.
            if [
                "if", "then", "else", "elif", "while", "until", "do", "time", "{",
            ]
            .contains(&w.as_str())
            {
                continue;
            }
            break;
        }
        out.push(w.clone());
        // `ip netns exec NS P …`
        if w == "ip" {
            let rest: Vec<String> = it.collect();
            if let Some(pos) = rest
                .windows(2)
                .position(|p| p[0] == "netns" && p[1] == "exec")
            {
                if let Some(p) = rest.get(pos + 3).filter(|p| program_like(p)) {
                    out.push(p.clone());
                }
            }
            break;
        }
        break;
    }
    out
}

/// Programs run by one Rust source file, with 1-based line numbers.
///
/// A closure bound in the file under a runner's name (`let run = |args| …`,
/// a shorthand for the nubo CLI in several tests) shadows that runner.
pub fn scan_rust(text: &str) -> Result<Vec<(String, usize)>, String> {
    let stream = TokenStream::from_str(text).map_err(|e| format!("cannot tokenize: {e}"))?;
    let mut closures = BTreeSet::new();
    closure_names(stream.clone(), &mut closures);
    let mut found = Vec::new();
    walk(stream, &closures, &mut found);
    Ok(found)
}

/// Names bound to closures: `let NAME = |…` or `let NAME = move |…`.
fn closure_names(stream: TokenStream, out: &mut BTreeSet<String>) {
    let toks: Vec<TokenTree> = stream.into_iter().collect();
    for (i, tt) in toks.iter().enumerate() {
        if let TokenTree::Group(g) = tt {
            closure_names(g.stream(), out);
        }
        if !is_ident(Some(tt), "let") {
            continue;
        }
        if let (Some(TokenTree::Ident(name)), true) =
            (toks.get(i + 1), is_punct(toks.get(i + 2), '='))
        {
            let mut j = i + 3;
            if is_ident(toks.get(j), "move") {
                j += 1;
            }
            if is_punct(toks.get(j), '|') {
                out.insert(name.to_string());
            }
        }
    }
}

fn lit_value(tt: &TokenTree) -> Option<(String, usize)> {
    let TokenTree::Literal(l) = tt else {
        return None;
    };
    let line = l.span().start().line;
    match syn::Lit::new(l.clone()) {
        syn::Lit::Str(s) => Some((s.value(), line)),
        _ => None,
    }
}

fn is_punct(tt: Option<&TokenTree>, c: char) -> bool {
    matches!(tt, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

fn is_ident(tt: Option<&TokenTree>, name: &str) -> bool {
    matches!(tt, Some(TokenTree::Ident(i)) if i == name)
}

/// The top-level, comma-separated items of a group's stream.
fn split_args(stream: TokenStream) -> Vec<Vec<TokenTree>> {
    let mut args = vec![Vec::new()];
    for tt in stream {
        if is_punct(Some(&tt), ',') {
            args.push(Vec::new());
        } else if let Some(last) = args.last_mut() {
            last.push(tt);
        }
    }
    args.retain(|a| !a.is_empty());
    args
}

/// The first string literal of an argument: `"p"`, `"p".into()`,
/// `&["p", ..]`, `vec!["p".into(), ..]`; `None` for `&format!(..)` etc.
fn arg_program(arg: &[TokenTree], allow_array: bool) -> Option<(String, usize)> {
    let mut toks = arg.iter().filter(|t| !is_punct(Some(t), '&'));
    let first = toks.next()?;
    if let Some(v) = lit_value(first) {
        return Some(v);
    }
    if !allow_array {
        return None;
    }
    let group = match first {
        TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => g.clone(),
        TokenTree::Ident(i) if i == "vec" => match (toks.next(), toks.next()) {
            (Some(b), Some(TokenTree::Group(g))) if is_punct(Some(b), '!') => g.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let items = split_args(group.stream());
    items.first().and_then(|a| a.first()).and_then(lit_value)
}

/// The string literal of an argument that is a string or `format!("…")`.
fn arg_text(arg: &[TokenTree]) -> Option<TokenTree> {
    let toks: Vec<&TokenTree> = arg.iter().filter(|t| !is_punct(Some(t), '&')).collect();
    match toks.as_slice() {
        [t @ TokenTree::Literal(_), ..] => Some((*t).clone()),
        [TokenTree::Ident(i), b, TokenTree::Group(g), ..]
            if i == "format" && is_punct(Some(b), '!') =>
        {
            split_args(g.stream()).first()?.first().cloned()
        }
        _ => None,
    }
}

/// Scans a literal holding shell text. Its lines map one to one onto source
/// lines when the literal spans them, else all onto the literal's line
/// (`"a\nb"`).
fn shell_text(lit: &TokenTree, found: &mut Vec<(String, usize)>) {
    let Some((text, line)) = lit_value(lit) else {
        return;
    };
    let span = lit.span();
    let spans_lines = span.end().line > span.start().line;
    for (p, l) in scan_shell(&text) {
        found.push((p, if spans_lines { line + l - 1 } else { line }));
    }
}

fn walk(stream: TokenStream, closures: &BTreeSet<String>, found: &mut Vec<(String, usize)>) {
    let toks: Vec<TokenTree> = stream.into_iter().collect();
    for (i, tt) in toks.iter().enumerate() {
        match tt {
            TokenTree::Group(g) => {
                let args = split_args(g.stream());
                list_patterns(&args, found);
                walk(g.stream(), closures, found);
            }
            TokenTree::Ident(id) => {
                let Some(TokenTree::Group(g)) = toks.get(i + 1) else {
                    continue;
                };
                if g.delimiter() != Delimiter::Parenthesis {
                    continue;
                }
                let name = id.to_string();
                if closures.contains(&name) {
                    continue;
                }
                let method = is_punct(i.checked_sub(1).and_then(|j| toks.get(j)), '.');
                let args = split_args(g.stream());
                if name == "new"
                    && i >= 3
                    && is_ident(toks.get(i - 3), "Command")
                    && is_punct(toks.get(i - 1), ':')
                {
                    if let Some(v) = args.first().and_then(|a| arg_program(a, false)) {
                        found.push(v);
                    }
                } else if let Some((_, p)) = FIXED_RUNNERS.iter().find(|(n, _)| *n == name) {
                    if !method || name == "virsh" {
                        found.push((p.to_string(), id.span().start().line));
                    }
                } else if let Some((_, _, at)) =
                    RUNNERS.iter().find(|(n, m, _)| *n == name && *m == method)
                {
                    let prog = match at {
                        Some(i) => args.get(*i).and_then(|a| arg_program(a, true)),
                        None => args
                            .iter()
                            .find_map(|a| arg_program(a, false))
                            .or_else(|| args.iter().find_map(|a| arg_program(a, true))),
                    };
                    if let Some(v) = prog {
                        found.push(v);
                    }
                }
            }
            TokenTree::Literal(_) => {
                if lit_value(tt).is_some_and(|(text, _)| text.trim_start().starts_with("set -e")) {
                    shell_text(tt, found);
                }
            }
            TokenTree::Punct(_) => {}
        }
    }
}

/// Patterns inside one argument list: `"netns", "exec", NS, "P"` and
/// `"sh"|"bash" …, "-c", SCRIPT`.
fn list_patterns(args: &[Vec<TokenTree>], found: &mut Vec<(String, usize)>) {
    let lits: Vec<Option<(String, usize)>> = args.iter().map(|a| arg_program(a, false)).collect();
    let is = |i: usize, s: &str| {
        lits.get(i)
            .and_then(|l| l.as_ref())
            .is_some_and(|l| l.0 == s)
    };
    let mut shell = false;
    for i in 0..args.len() {
        if is(i, "netns") && is(i + 1, "exec") {
            if let Some(Some(p)) = lits.get(i + 3) {
                found.push(p.clone());
            }
        }
        if is(i, "sh") || is(i, "bash") {
            shell = true;
        }
        if shell && is(i, "-c") {
            if let Some(lit) = args.get(i + 1).and_then(|a| arg_text(a)) {
                // A `set -e` script is scanned where the literal is met.
                if !lit_value(&lit).is_some_and(|(t, _)| t.trim_start().starts_with("set -e")) {
                    shell_text(&lit, found);
                }
            }
        }
    }
}

/// Functions that pass one of their own parameters to `Command::new` (they
/// run a program their callers choose) without being listed in [`RUNNERS`]:
/// `(name, line)`. Functions that spawn a path they compute themselves (a
/// nubo binary, a script of the repository) are not runners.
pub fn unregistered_runners(text: &str) -> Result<Vec<(String, usize)>, String> {
    let stream = TokenStream::from_str(text).map_err(|e| format!("cannot tokenize: {e}"))?;
    let mut out = Vec::new();
    find_fns(stream, &mut out);
    Ok(out)
}

/// Parameter names of a `fn`'s parenthesised signature that can hold a
/// program name: identifiers followed by a single `:`, except those typed
/// `Path`/`PathBuf` (a nubo binary or a script of the repository by path).
fn param_names(sig: TokenStream) -> BTreeSet<String> {
    split_args(sig)
        .into_iter()
        .filter_map(|param| match param.as_slice() {
            [TokenTree::Ident(id), colon, ty @ ..]
                if is_punct(Some(colon), ':') && !is_punct(ty.first(), ':') =>
            {
                let by_path = ty
                    .iter()
                    .any(|t| is_ident(Some(t), "Path") || is_ident(Some(t), "PathBuf"));
                (!by_path).then(|| id.to_string())
            }
            _ => None,
        })
        .collect()
}

/// Does the body pass one of `params` (e.g. `program`, `args[0]`,
/// `&self.program`) to `Command::new`?
fn spawns_param(body: TokenStream, params: &BTreeSet<String>) -> bool {
    let toks: Vec<TokenTree> = body.into_iter().collect();
    toks.iter().enumerate().any(|(i, tt)| match tt {
        TokenTree::Group(g) => spawns_param(g.stream(), params),
        TokenTree::Ident(id) if id == "new" && i >= 3 && is_ident(toks.get(i - 3), "Command") => {
            let Some(TokenTree::Group(g)) = toks.get(i + 1) else {
                return false;
            };
            // `p`, `&p`, `args[0]`: the parameter itself, not a path built from it.
            let arg: Vec<TokenTree> = g
                .stream()
                .into_iter()
                .skip_while(|t| is_punct(Some(t), '&') || is_punct(Some(t), '*'))
                .collect();
            match arg.as_slice() {
                [TokenTree::Ident(p)] => params.contains(&p.to_string()),
                [TokenTree::Ident(p), TokenTree::Group(ix)] => {
                    ix.delimiter() == Delimiter::Bracket && params.contains(&p.to_string())
                }
                _ => false,
            }
        }
        _ => false,
    })
}

fn find_fns(stream: TokenStream, out: &mut Vec<(String, usize)>) {
    let toks: Vec<TokenTree> = stream.into_iter().collect();
    for (i, tt) in toks.iter().enumerate() {
        if let TokenTree::Group(g) = tt {
            find_fns(g.stream(), out);
        }
        if !is_ident(Some(tt), "fn") {
            continue;
        }
        let Some(TokenTree::Ident(name)) = toks.get(i + 1) else {
            continue;
        };
        let rest = &toks[i + 2..];
        let sig = rest.iter().find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis => Some(g.stream()),
            _ => None,
        });
        let body = rest.iter().find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => Some(g.stream()),
            _ => None,
        });
        let (Some(sig), Some(body)) = (sig, body) else {
            continue;
        };
        let name_s = name.to_string();
        let known = RUNNERS.iter().any(|(n, _, _)| *n == name_s)
            || FIXED_RUNNERS.iter().any(|(n, _)| *n == name_s);
        if !known && spawns_param(body, &param_names(sig)) {
            out.push((name_s, name.span().start().line));
        }
    }
}

/// The files [`scan_tree`] reads: Rust sources and shell scripts of the
/// repository (no `target/`, no `.git/`).
pub fn source_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if e.file_type()?.is_dir() {
                if !["target", ".git", "node_modules"].contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if path.ends_with("tests/src/inventory.rs") {
                // This scanner: its unit tests' fixtures are not programs run.
            } else if is_rust(&path) || is_shell(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_rust(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "rs")
}

fn is_shell(path: &Path) -> bool {
    if path.extension().is_some_and(|x| x == "sh") {
        return true;
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.starts_with("#!") && l.contains("sh"))
        })
        .unwrap_or(false)
}

/// Every program run by the repository under `root`, and every function
/// that spawns a variable program without being a registered runner.
pub fn scan_tree(root: &Path) -> Result<(Vec<Use>, Vec<Use>), String> {
    let mut uses = Vec::new();
    let mut unregistered = Vec::new();
    let files = source_files(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for path in files {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let found = if is_rust(&path) {
            for (name, line) in
                unregistered_runners(&text).map_err(|e| format!("{}: {e}", rel.display()))?
            {
                unregistered.push(Use {
                    program: name,
                    file: rel.clone(),
                    line,
                });
            }
            scan_rust(&text).map_err(|e| format!("{}: {e}", rel.display()))?
        } else {
            scan_shell(&text)
        };
        uses.extend(
            found
                .into_iter()
                .filter(|(p, _)| program_like(p))
                .map(|(program, line)| Use {
                    program,
                    file: rel.clone(),
                    line,
                }),
        );
    }
    uses.sort();
    uses.dedup();
    Ok((uses, unregistered))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progs(v: Vec<(String, usize)>) -> Vec<String> {
        v.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn shell_command_words() {
        let text = r#"#!/usr/bin/env bash
set -euo pipefail
X=1 curl -fsS "$URL" | jq . >/dev/null 2>&1
for f in a b; do rbd ls; done
if ! command -v cpio >/dev/null; then apt-get install -y cpio; fi
ts() { local d=1; printf '%s' "$d"; }
ok() { dpkg-query -W "$1" | grep -q ok; }
echo "error: (package $p) does not resolve"
ts "mon started"
out=$(ceph osd dump -f json); echo "$(( 1 + 2 ))"
timeout 5 nc -z 10.0.0.1 22 && ip netns exec nbt-x udhcpc -q
cat > f <<'EOF'
insmod virtio.ko
EOF
"$(dirname "$0")/ceph-down.sh" x   # comment: tcpdump
case "$a" in
  help) usage ;;
esac
if (($(now) > end)); then clients=(coordinator cli); fi
awk '
  /^x/ { next }
' file
"#;
        assert_eq!(
            progs(scan_shell(text)),
            [
                "curl",
                "jq",
                "rbd",
                "cpio",
                "apt-get",
                "dpkg-query",
                "grep",
                "ceph",
                "timeout",
                "nc",
                "ip",
                "udhcpc",
                "cat",
                "dirname",
                "usage",
                "now",
                "awk"
            ]
        );
    }

    #[test]
    fn shell_line_numbers_and_continuations() {
        let found = scan_shell("echo a\nqemu-img convert \\\n  -O raw a b\n\nrbd ls\n");
        assert_eq!(found, [("qemu-img".to_string(), 2), ("rbd".to_string(), 5)]);
    }

    #[test]
    fn rust_call_sites() {
        let text = r##"
fn f() {
    let _ = Command::new("qemu-img").arg("info");
    run("tcpdump", &["-i", "x"]);
    sh(&["dhclient", "-v"]);
    host.exec("udhcpc", &["-q"]);
    lab.exec(&ns, &["iperf3", "-s"]);
    run("ip", &["netns", "exec", ns, "unshare", "-m", "sh", "-c", "mount -t tmpfs x /y; virtlogd -d"]);
    let s = format!("set -e\nmkdir -p /run/x\nlibvirtd -d\n");
    cli.run(&["server", "create"]); // the nubo CLI: not a program
    let c = r#"Command::new("not-code")"#;
    // Command::new("commented-out")
    Daemon::spawn("agent", vec!["nsenter".into(), x], bin, args);
    virsh(&["list"]);
}
"##;
        let found = scan_rust(text).unwrap();
        assert_eq!(
            progs(found.clone()),
            [
                "qemu-img", "tcpdump", "dhclient", "udhcpc", "iperf3", "ip", "unshare", "mount",
                "virtlogd", "mkdir", "libvirtd", "nsenter", "virsh"
            ]
        );
        assert_eq!(found[0].1, 3);
        assert_eq!(found.iter().find(|(p, _)| p == "libvirtd").unwrap().1, 9);
        let multi = scan_rust("fn f() {\n    let s = \"set -e\n\nrbd ls\n\";\n}\n").unwrap();
        assert_eq!(multi, [("rbd".to_string(), 4)]);
    }

    #[test]
    fn unregistered_runner_is_reported() {
        let text = "fn helper(p: &str) { Command::new(p).status(); }
fn run(p: &str) { Command::new(p); }
fn first(args: &[&str]) { Command::new(&args[0]); }
fn script(dir: &Path) { Command::new(dir.join(\"x.sh\")); }
fn ok() { Command::new(\"ip\"); }";
        let names: Vec<String> = unregistered_runners(text)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["helper", "first"]);
    }

    #[test]
    fn inventory_format() {
        let inv = Inventory::parse(
            "# comment\netcd etcd-server\nqemu-system-x86_64 qemu-system-x86 via:libvirtd # note\n- libvirt-dev\n",
        )
        .unwrap();
        assert_eq!(inv.programs.len(), 2);
        assert_eq!(
            inv.programs["qemu-system-x86_64"].via.as_deref(),
            Some("libvirtd")
        );
        assert!(inv.packages.contains("libvirt-dev"));
        assert!(Inventory::parse("etcd\n").is_err());
        assert!(Inventory::parse("etcd a\netcd b\n").is_err());
        assert!(Inventory::parse("etcd a b\n").is_err());
    }
}
