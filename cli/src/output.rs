//! Output: `--format table|json`, the aligned-columns table renderer and
//! writing to stdout without panicking on a closed pipe.

use std::io::{ErrorKind, Write};

use anyhow::Result;
use clap::ValueEnum;
use serde_json::Value;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// One JSON document on stdout (machine-readable, stable keys).
    Json,
}

/// A table with a header row, rendered in the OpenStack client's box style.
/// Cells may span several lines (`\n`).
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Renders the table, one `\n`-terminated line per text line.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                for line in cell.lines() {
                    *w = (*w).max(line.chars().count());
                }
            }
        }
        let rule: String = widths.iter().fold(String::from("+"), |mut s, w| {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
            s
        });
        let mut out = String::new();
        out.push_str(&rule);
        out.push('\n');
        push_row(&mut out, &widths, &self.headers);
        out.push_str(&rule);
        out.push('\n');
        for row in &self.rows {
            push_row(&mut out, &widths, row);
        }
        if !self.rows.is_empty() {
            out.push_str(&rule);
            out.push('\n');
        }
        out
    }
}

fn push_row(out: &mut String, widths: &[usize], cells: &[String]) {
    let split: Vec<Vec<&str>> = cells.iter().map(|c| c.lines().collect()).collect();
    let height = split.iter().map(Vec::len).max().unwrap_or(0).max(1);
    for i in 0..height {
        out.push('|');
        for (w, lines) in widths.iter().zip(&split) {
            let text = lines.get(i).copied().unwrap_or("");
            let pad = w - text.chars().count();
            out.push(' ');
            out.push_str(text);
            out.push_str(&" ".repeat(pad + 1));
            out.push('|');
        }
        out.push('\n');
    }
}

/// Renders a JSON value as a table cell: strings bare, lists one item per
/// line, objects as `key=value` pairs, null as empty.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("\n"),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The `Field | Value` table `show` commands print, from a JSON object
/// (fields in the object's key order, which is alphabetical).
pub fn fields_table(obj: &Value) -> Table {
    let mut t = Table::new(&["Field", "Value"]);
    if let Value::Object(map) = obj {
        for (k, v) in map {
            t.row(vec![k.clone(), cell(v)]);
        }
    }
    t
}

/// Writes `text` to stdout. A closed pipe (`nubo server list | head`) is
/// not an error.
pub fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Writes one pretty-printed JSON document to stdout.
pub fn emit_json(v: &Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    emit(&s)
}

/// Prints one resource: a `Field | Value` table or its JSON object.
pub fn show(format: Format, obj: &Value) -> Result<()> {
    match format {
        Format::Table => emit(&fields_table(obj).render()),
        Format::Json => emit_json(obj),
    }
}

/// Prints a list: `table` in table format, the array of JSON objects otherwise.
pub fn list(format: Format, table: &Table, objs: Vec<Value>) -> Result<()> {
    match format {
        Format::Table => emit(&table.render()),
        Format::Json => emit_json(&Value::Array(objs)),
    }
}

/// Prints a list of resources: the table `table` makes of them, or the array
/// of their `json` objects.
pub fn items<T>(
    format: Format,
    items: &[T],
    table: impl Fn(&[T]) -> Table,
    json: impl Fn(&T) -> Value,
) -> Result<()> {
    list(format, &table(items), items.iter().map(json).collect())
}

/// Confirms deletions: nothing in table format (as the OpenStack client),
/// `{"deleted": [...]}` in JSON so scripts always get a document.
pub fn deleted(format: Format, refs: &[String]) -> Result<()> {
    match format {
        Format::Table => Ok(()),
        Format::Json => emit_json(&serde_json::json!({ "deleted": refs })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_and_multiline_cells() {
        let mut t = Table::new(&["Name", "Networks"]);
        t.row(vec!["web-1".into(), "a=10.0.0.5\nb=10.1.0.7".into()]);
        t.row(vec!["x".into()]);
        let got = t.render();
        assert_eq!(
            got,
            "\
+-------+------------+
| Name  | Networks   |
+-------+------------+
| web-1 | a=10.0.0.5 |
|       | b=10.1.0.7 |
| x     |            |
+-------+------------+
"
        );
    }

    #[test]
    fn empty_table_has_only_headers() {
        let t = Table::new(&["ID", "Name"]);
        assert_eq!(t.render(), "+----+------+\n| ID | Name |\n+----+------+\n");
    }

    #[test]
    fn cells_render_json_values() {
        assert_eq!(cell(&json!(null)), "");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(["a", "b"])), "a\nb");
        assert_eq!(cell(&json!({"b": 1, "a": "x"})), "a=x, b=1");
    }

    #[test]
    fn fields_table_lists_keys_alphabetically() {
        let t = fields_table(&json!({"vcpus": 2, "name": "m1"}));
        assert_eq!(
            t.render(),
            "\
+-------+-------+
| Field | Value |
+-------+-------+
| name  | m1    |
| vcpus | 2     |
+-------+-------+
"
        );
    }
}
