//! `nubo keypair …`: SSH public keys served to instances by the metadata service.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{CreateKeypairRequest, Keypair};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Keypair commands.
#[derive(Debug, Subcommand)]
pub enum KeypairCmd {
    /// Import a public key.
    Create(CreateArgs),
    /// List keypairs.
    List,
    /// Show one keypair.
    Show {
        /// Keypair name.
        name: String,
    },
    /// Delete keypairs.
    Delete {
        /// Keypair names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `nubo keypair create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Keypair name.
    pub name: String,
    /// File holding the OpenSSH public key line, or "-" for stdin.
    #[arg(long)]
    pub public_key: PathBuf,
}

impl CreateArgs {
    /// Reads the key and builds the API request for `project`.
    pub fn request(&self, project: &str) -> Result<CreateKeypairRequest> {
        let raw = if self.public_key.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the public key from stdin")?;
            s
        } else {
            std::fs::read_to_string(&self.public_key)
                .with_context(|| format!("reading {}", self.public_key.display()))?
        };
        Ok(CreateKeypairRequest {
            name: self.name.clone(),
            project: project.to_string(),
            public_key: key_line(&raw)?,
        })
    }
}

/// The single key line of a public key file (blank lines and comments skipped).
fn key_line(raw: &str) -> Result<String> {
    let mut lines = raw
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match (lines.next(), lines.next()) {
        (Some(l), None) => Ok(l.to_string()),
        (None, _) => bail!("the public key file is empty"),
        (Some(_), Some(_)) => bail!("the public key file holds more than one key"),
    }
}

/// The JSON (and `show`) form of a keypair.
pub fn to_json(k: &Keypair) -> Value {
    json!({
        "name": k.name,
        "project": k.project,
        "public_key": k.public_key,
        "fingerprint": k.fingerprint,
        "created_at": opt(&k.created_at),
    })
}

/// The `keypair list` table.
pub fn table(keys: &[Keypair]) -> Table {
    let mut t = Table::new(&["Name", "Fingerprint"]);
    for k in keys {
        t.row(vec![k.name.clone(), k.fingerprint.clone()]);
    }
    t
}

/// Runs a keypair command.
pub async fn run(cmd: KeypairCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        KeypairCmd::Create(args) => {
            let req = args.request(&api.project)?;
            let k = api.keypairs().create(req).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&k))
        }
        KeypairCmd::List => {
            let items = api
                .list_all(false, |req| {
                    let mut c = api.keypairs();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.keypairs, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        KeypairCmd::Show { name } => {
            let k = api.keypairs().get(api.get_req(&name)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&k))
        }
        KeypairCmd::Delete { names } => {
            ctx.delete_all("keypairs", &names, |r| async move {
                let req = api.delete_req(&r);
                api.keypairs().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_line_takes_the_one_key() {
        assert_eq!(
            key_line("\n# mine\nssh-ed25519 AAAA me@host\n").unwrap(),
            "ssh-ed25519 AAAA me@host"
        );
        assert!(key_line("  \n").is_err());
        assert!(key_line("ssh-rsa A\nssh-rsa B\n").is_err());
    }

    #[test]
    fn create_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("nubo-cli-key-{}", std::process::id()));
        std::fs::write(&dir, "ssh-ed25519 AAAAC3 op@laptop\n").unwrap();
        let a = CreateArgs {
            name: "op".into(),
            public_key: dir.clone(),
        };
        let r = a.request("p").unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            r,
            CreateKeypairRequest {
                name: "op".into(),
                project: "p".into(),
                public_key: "ssh-ed25519 AAAAC3 op@laptop".into(),
            }
        );
        let missing = CreateArgs {
            name: "op".into(),
            public_key: "/nonexistent/key.pub".into(),
        };
        assert!(format!("{:#}", missing.request("p").unwrap_err()).contains("/nonexistent/key.pub"));
    }
}
