//! `nubo volume type …`: volume types and their QoS (applied as libvirt
//! `<iotune>` on every disk of the type, including disks already attached).

use anyhow::Result;
use clap::{Args, Subcommand};
use nubo_common::proto::{
    volume_types_client::VolumeTypesClient, CreateVolumeTypeRequest, SetVolumeTypeQosRequest,
    VolumeQos, VolumeType,
};
use serde_json::{json, Value};

use crate::api::{Api, Call, Chan};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Volume type commands.
#[derive(Debug, Subcommand)]
pub enum TypeCmd {
    /// Create a volume type (cloud admin).
    Create {
        /// Type name, e.g. ssd-200iops.
        name: String,
        #[command(flatten)]
        qos: QosArgs,
    },
    /// Change a type's QoS (cloud admin); flags not given stay, 0 = unlimited.
    Set {
        /// Type name.
        name: String,
        #[command(flatten)]
        qos: QosArgs,
    },
    /// List volume types.
    List,
    /// Show one volume type.
    Show {
        /// Type name.
        name: String,
    },
    /// Delete volume types (refused while volumes use them).
    Delete {
        /// Type names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// QoS limits (per disk).
#[derive(Debug, Args)]
pub struct QosArgs {
    /// Read operations per second.
    #[arg(long)]
    pub read_iops: Option<u64>,
    /// Write operations per second.
    #[arg(long)]
    pub write_iops: Option<u64>,
    /// Read bytes per second.
    #[arg(long)]
    pub read_bytes: Option<u64>,
    /// Write bytes per second.
    #[arg(long)]
    pub write_bytes: Option<u64>,
}

impl QosArgs {
    /// The proto form (absent flags stay absent).
    pub fn to_pb(&self) -> VolumeQos {
        VolumeQos {
            read_iops_sec: self.read_iops,
            write_iops_sec: self.write_iops,
            read_bytes_sec: self.read_bytes,
            write_bytes_sec: self.write_bytes,
        }
    }
}

fn client(api: &Api) -> VolumeTypesClient<Chan> {
    VolumeTypesClient::new(api.channel())
}

fn limit(v: Option<u64>) -> Value {
    v.map_or(Value::Null, Value::from)
}

/// The JSON (and `show`) form of a volume type.
pub fn to_json(t: &VolumeType) -> Value {
    let q = t.qos.unwrap_or_default();
    json!({
        "name": t.name,
        "read_iops_sec": limit(q.read_iops_sec),
        "write_iops_sec": limit(q.write_iops_sec),
        "read_bytes_sec": limit(q.read_bytes_sec),
        "write_bytes_sec": limit(q.write_bytes_sec),
        "created_at": opt(&t.created_at),
    })
}

/// The `volume type list` table.
pub fn table(types: &[VolumeType]) -> Table {
    let cell = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
    let mut t = Table::new(&["Name", "Read IOPS", "Write IOPS", "Read B/s", "Write B/s"]);
    for ty in types {
        let q = ty.qos.unwrap_or_default();
        t.row(vec![
            ty.name.clone(),
            cell(q.read_iops_sec),
            cell(q.write_iops_sec),
            cell(q.read_bytes_sec),
            cell(q.write_bytes_sec),
        ]);
    }
    t
}

/// Runs a volume type command.
pub async fn run(cmd: TypeCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        TypeCmd::Create { name, qos } => {
            let t = client(api)
                .create(CreateVolumeTypeRequest {
                    name,
                    qos: Some(qos.to_pb()),
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&t))
        }
        TypeCmd::Set { name, qos } => {
            let t = client(api)
                .set_qos(SetVolumeTypeQosRequest {
                    name,
                    qos: Some(qos.to_pb()),
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&t))
        }
        TypeCmd::List => {
            let items = api
                .list_all(false, |req| {
                    let mut c = client(api);
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.volume_types, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        TypeCmd::Show { name } => {
            let t = client(api).get(api.get_req(&name)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&t))
        }
        TypeCmd::Delete { names } => {
            ctx.delete_all("volume types", &names, |n| async move {
                client(api)
                    .delete(api.delete_req(&n))
                    .await
                    .or_fail(api)
                    .map(drop)
            })
            .await
        }
    }
}
