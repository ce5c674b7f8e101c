//! What every command gets: the API connection and the output format, plus
//! helpers shared by the nouns.

use std::future::Future;

use anyhow::{bail, Result};

use crate::api::Api;
use crate::output::{self, Format};

/// Per-invocation context.
pub struct Ctx {
    /// The connected API.
    pub api: Api,
    /// `--format`.
    pub format: Format,
}

impl Ctx {
    /// Deletes every ref with `delete`, going on after failures (as the
    /// OpenStack client does). One ref: its error is the error. Several:
    /// each failure is printed, then a summary error is returned.
    pub async fn delete_all<F, Fut>(&self, kind: &str, refs: &[String], mut delete: F) -> Result<()>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut done = Vec::new();
        let mut failed = 0;
        for r in refs {
            match delete(r.clone()).await {
                Ok(()) => done.push(r.clone()),
                Err(e) if refs.len() == 1 => return Err(e),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    failed += 1;
                }
            }
        }
        output::deleted(self.format, &done)?;
        if failed > 0 {
            bail!("failed to delete {failed} of {} {kind}", refs.len());
        }
        Ok(())
    }
}

/// Renders an optional-looking string field: empty → `None` (JSON null).
pub fn opt(s: &str) -> serde_json::Value {
    if s.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::String(s.to_string())
    }
}
