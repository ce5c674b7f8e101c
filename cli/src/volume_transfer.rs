//! `nubo volume transfer …`: offer a volume to another project, which
//! accepts it with the transfer's id and auth key.

use anyhow::Result;
use clap::Subcommand;
use nubo_common::proto::{
    volumes_client::VolumesClient, AcceptVolumeTransferRequest, CreateVolumeTransferRequest,
    VolumeTransfer,
};
use serde_json::{json, Value};

use crate::api::{Api, Call, Chan};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Volume transfer commands.
#[derive(Debug, Subcommand)]
pub enum TransferCmd {
    /// Offer an available volume for transfer; prints the auth key (shown only now).
    Create {
        /// Volume name or id.
        volume: String,
        /// Transfer name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List this project's pending transfers.
    List {
        /// Every project's transfers (cloud admin).
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one transfer.
    Show {
        /// Transfer id.
        id: String,
    },
    /// Take a volume into this project.
    Accept {
        /// Transfer id.
        id: String,
        /// The auth key given at creation.
        auth_key: String,
    },
    /// Withdraw transfers (their volumes are available again).
    Delete {
        /// Transfer ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn client(api: &Api) -> VolumesClient<Chan> {
    VolumesClient::new(api.channel())
}

fn to_json(t: &VolumeTransfer) -> Value {
    json!({
        "id": t.id,
        "name": opt(&t.name),
        "volume_id": t.volume_id,
        "project": t.project,
        "created_at": opt(&t.created_at),
        "auth_key": opt(&t.auth_key),
    })
}

fn table(ts: &[VolumeTransfer]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Volume", "Project", "Created"]);
    for x in ts {
        t.row(vec![
            x.id.clone(),
            x.name.clone(),
            x.volume_id.clone(),
            x.project.clone(),
            x.created_at.clone(),
        ]);
    }
    t
}

/// Runs a transfer command.
pub async fn run(cmd: TransferCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        TransferCmd::Create { volume, name } => {
            let t = client(api)
                .create_transfer(CreateVolumeTransferRequest {
                    project: api.project.clone(),
                    volume,
                    name,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&t))
        }
        TransferCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = client(api);
                    async move {
                        let r = c.list_transfers(req).await?.into_inner();
                        Ok((r.transfers, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        TransferCmd::Show { id } => {
            let t = client(api)
                .get_transfer(api.get_req(&id))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&t))
        }
        TransferCmd::Accept { id, auth_key } => {
            let r = client(api)
                .accept_transfer(AcceptVolumeTransferRequest {
                    project: api.project.clone(),
                    id,
                    auth_key,
                })
                .await
                .or_fail(api)?;
            // The volume as it is now, in this project.
            let v = r.volume.unwrap_or_default();
            output::show(
                ctx.format,
                &json!({
                    "id": v.id,
                    "name": v.name,
                    "project": v.project,
                    "status": v.status,
                    "size_gb": v.size_gb,
                    "created_by": opt(&v.created_by),
                    "transfer_id": r.transfer.map(|t| t.id).unwrap_or_default(),
                }),
            )
        }
        TransferCmd::Delete { ids } => {
            ctx.delete_all("volume transfers", &ids, |id| async move {
                client(api)
                    .delete_transfer(api.delete_req(&id))
                    .await
                    .or_fail(api)
                    .map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: TransferCmd,
    }

    #[test]
    fn transfer_commands_parse() {
        assert!(T::try_parse_from(["nubo", "create", "v", "--name", "x"]).is_ok());
        assert!(T::try_parse_from(["nubo", "accept", "id", "key"]).is_ok());
        assert!(T::try_parse_from(["nubo", "accept", "id"]).is_err());
        assert!(T::try_parse_from(["nubo", "delete"]).is_err());
    }
}
