//! `nubo application credential create|list|delete`: secrets for programs
//! (CI, agents) that `nubo login --application-credential-id ID
//! --secret-file F` exchanges for a token. A credential acts as the user who
//! created it, in that token's project, with at most its roles.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{
    application_credentials_client::ApplicationCredentialsClient, ApplicationCredential,
    CreateApplicationCredentialRequest, DeleteRequest, ListRequest,
};
use serde_json::{json, Value};

use crate::api::{Call, Chan};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// `nubo application …`.
#[derive(Debug, Subcommand)]
pub enum ApplicationCmd {
    /// Application credentials.
    #[command(subcommand)]
    Credential(CredentialCmd),
}

/// `nubo application credential …`.
#[derive(Debug, Subcommand)]
pub enum CredentialCmd {
    /// Create one; its secret is printed ONCE (only a hash is stored).
    Create {
        /// A name for people, e.g. "ci".
        name: String,
        /// Roles it gets (repeatable; default: every role of your token).
        /// At most the roles you hold.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Expiry, RFC 3339 (e.g. 2027-01-01T00:00:00Z); default: never.
        #[arg(long, default_value = "")]
        expires_at: String,
    },
    /// Your application credentials (a cloud admin: everyone's with
    /// --all-projects). Secrets are never shown again.
    List {
        /// Every user's (cloud admin).
        #[arg(long)]
        all_projects: bool,
    },
    /// Delete (revoke) application credentials.
    Delete {
        /// Credential ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn cred_json(c: &ApplicationCredential) -> Value {
    let mut v = json!({
        "id": c.id,
        "name": opt(&c.name),
        "user": c.user,
        "project": c.project,
        "roles": c.roles.join(","),
        "expires_at": opt(&c.expires_at),
        "created_at": opt(&c.created_at),
    });
    if !c.secret.is_empty() {
        v["secret"] = json!(c.secret);
    }
    v
}

fn client(ctx: &Ctx) -> ApplicationCredentialsClient<Chan> {
    ApplicationCredentialsClient::new(ctx.api.channel())
}

/// Runs `nubo application …`.
pub async fn run(cmd: ApplicationCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let ApplicationCmd::Credential(cmd) = cmd;
    match cmd {
        CredentialCmd::Create {
            name,
            roles,
            expires_at,
        } => {
            let c = client(ctx)
                .create(CreateApplicationCredentialRequest {
                    name,
                    roles,
                    expires_at,
                })
                .await
                .or_fail(api)?;
            eprintln!("the secret is shown only now: store it safely");
            output::show(ctx.format, &cred_json(&c))
        }
        CredentialCmd::List { all_projects } => {
            let items = client(ctx)
                .list(ListRequest {
                    all_projects,
                    ..Default::default()
                })
                .await
                .or_fail(api)?
                .application_credentials;
            let mut t = Table::new(&["ID", "Name", "User", "Project", "Roles", "Expires"]);
            for c in &items {
                t.row(vec![
                    c.id.clone(),
                    c.name.clone(),
                    c.user.clone(),
                    c.project.clone(),
                    c.roles.join(","),
                    c.expires_at.clone(),
                ]);
            }
            output::list(ctx.format, &t, items.iter().map(cred_json).collect())
        }
        CredentialCmd::Delete { ids } => {
            ctx.delete_all("application credentials", &ids, |id| async move {
                client(ctx)
                    .delete(DeleteRequest {
                        r#ref: id,
                        ..Default::default()
                    })
                    .await
                    .or_fail(api)?;
                Ok(())
            })
            .await
        }
    }
}
