//! `nubo volume …`: block devices on Ceph RBD, their snapshots, attach and
//! detach. Volume types are `nubo volume type …` ([`crate::volume_type`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use nubo_common::proto::{
    volumes_client::VolumesClient, AttachVolumeRequest, CreateVolumeRequest, DetachVolumeRequest,
    ResetSnapshotStatusRequest, ResetVolumeStatusRequest, ResizeVolumeRequest,
    UpdateSnapshotStatusRequest, UpdateVolumeRequest, UpdateVolumeSnapshotRequest, Volume,
    VolumeSnapshot, VolumeSnapshotRequest,
};
use serde_json::{json, Value};

use crate::api::{Api, Call, Chan};
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};
use crate::server::key_value;
use crate::volume_size::parse_size_gb;
use crate::volume_type::TypeCmd;

/// Volume commands.
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (blank, or a clone of an image with --image).
    Create(CreateArgs),
    /// List volumes.
    List {
        /// Every project's volumes (cloud admin).
        #[arg(long)]
        all_projects: bool,
    },
    /// Show one volume.
    Show {
        /// Volume name or id.
        volume: String,
    },
    /// Delete volumes (they must not be attached).
    Delete {
        /// Volume names or ids.
        #[arg(required = true)]
        volumes: Vec<String>,
        /// Whatever their status (cloud admin; any project's volume by
        /// id): RBD image, snapshots and record. Still not an attached one.
        #[arg(long)]
        force: bool,
    },
    /// Change a volume's name, description, metadata, marks or image
    /// metadata.
    Set(SetArgs),
    /// Grow a volume (it must not be attached).
    Resize {
        /// Volume name or id.
        volume: String,
        /// New size, e.g. 20G.
        #[arg(long, value_parser = parse_size_gb, allow_hyphen_values = true)]
        size: i64,
    },
    /// Attach a volume to a server (hot-plugged if it runs).
    Attach {
        /// Volume name or id.
        volume: String,
        /// Server name or id.
        server: String,
        /// Delete the volume when the server is deleted.
        #[arg(long)]
        delete_on_termination: bool,
        /// The guest device wanted (`vdc`); when it is taken, the lowest
        /// free one (the answer's `device` says which).
        #[arg(long)]
        device: Option<String>,
    },
    /// Detach a volume from its server.
    Detach {
        /// Volume name or id.
        volume: String,
        /// Whatever its recorded status (cloud admin; any project's volume
        /// by id).
        #[arg(long)]
        force: bool,
        /// Wait until the hypervisor let it go (status available).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120, requires = "wait")]
        timeout: u64,
    },
    /// Volume snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Make an image of a volume's data (crash-consistent now; the image
    /// is queued until copied, then active).
    UploadImage {
        /// Volume name or id.
        volume: String,
        /// The new image's name.
        name: String,
        /// raw or qcow2.
        #[arg(long, default_value = "raw")]
        disk_format: String,
        /// private, shared, community (public: cloud admin).
        #[arg(long, default_value = "")]
        visibility: String,
        /// Capture an in-use volume.
        #[arg(long)]
        force: bool,
    },
    /// Volume transfers to another project.
    #[command(subcommand)]
    Transfer(crate::volume_transfer::TransferCmd),
    /// Volume types (QoS classes).
    #[command(subcommand, name = "type")]
    Type(TypeCmd),
}

/// `nubo volume set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Volume name or id.
    pub volume: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// New description ("" clears it).
    #[arg(long)]
    pub description: Option<String>,
    /// Metadata item KEY=VALUE to set; repeatable.
    #[arg(long = "property", value_parser = key_value)]
    pub properties: Vec<(String, String)>,
    /// Metadata key to remove; repeatable.
    #[arg(long = "unset-property")]
    pub unset_properties: Vec<String>,
    /// Mark bootable (true) or not (false).
    #[arg(long)]
    pub bootable: Option<bool>,
    /// Attach read-only (true) or read-write (false); only while detached.
    #[arg(long)]
    pub read_only: Option<bool>,
    /// Image metadata item KEY=VALUE to set; repeatable.
    #[arg(long = "image-property", value_parser = key_value)]
    pub image_properties: Vec<(String, String)>,
    /// Image metadata key to remove; repeatable.
    #[arg(long = "unset-image-property")]
    pub unset_image_properties: Vec<String>,
    /// Cloud admin: set the recorded status (available, error,
    /// maintenance, …); nothing changes on Ceph or the server.
    #[arg(long)]
    pub state: Option<String>,
    /// Cloud admin, with --state: the attach status it must have
    /// (attached or detached; force-detach changes it).
    #[arg(long)]
    pub attach_state: Option<String>,
}

impl SetArgs {
    /// True when an attribute (not the state) changes.
    pub fn changes_attributes(&self) -> bool {
        self.name.is_some()
            || self.description.is_some()
            || !self.properties.is_empty()
            || !self.unset_properties.is_empty()
            || self.bootable.is_some()
            || self.read_only.is_some()
            || !self.image_properties.is_empty()
            || !self.unset_image_properties.is_empty()
    }

    /// The status reset request for `project`, if --state or
    /// --attach-state is given.
    pub fn reset(&self, project: &str) -> Option<ResetVolumeStatusRequest> {
        if self.state.is_none() && self.attach_state.is_none() {
            return None;
        }
        Some(ResetVolumeStatusRequest {
            r#ref: self.volume.clone(),
            project: project.to_string(),
            status: self.state.clone().unwrap_or_default(),
            attach_status: self.attach_state.clone().unwrap_or_default(),
            migration_status: String::new(),
        })
    }

    /// The API request for `project`.
    pub fn request(&self, project: &str) -> UpdateVolumeRequest {
        UpdateVolumeRequest {
            r#ref: self.volume.clone(),
            project: project.to_string(),
            name: self.name.clone(),
            description: self.description.clone(),
            replace_metadata: false,
            metadata: self.properties.iter().cloned().collect(),
            remove_metadata: self.unset_properties.clone(),
            bootable: self.bootable,
            read_only: self.read_only,
            set_image_metadata: self.image_properties.iter().cloned().collect(),
            unset_image_metadata: self.unset_image_properties.clone(),
        }
    }
}

/// `nubo volume create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Volume name ("" or absent: volume-<id>).
    #[arg(default_value = "")]
    pub name: String,
    /// Size, e.g. 10G (GiB) or 1T.
    #[arg(long, value_parser = parse_size_gb, allow_hyphen_values = true)]
    pub size: i64,
    /// Volume type (QoS class).
    #[arg(long = "type")]
    pub volume_type: Option<String>,
    /// Image (name or id) to clone into the volume (a bootable volume).
    #[arg(long, conflicts_with_all = ["snapshot", "source"])]
    pub image: Option<String>,
    /// Snapshot (id) to copy into the volume.
    #[arg(long, conflicts_with = "source")]
    pub snapshot: Option<String>,
    /// Volume (name or id) to copy into the volume, as it is now.
    #[arg(long)]
    pub source: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
    /// Metadata item KEY=VALUE; repeatable.
    #[arg(long = "property", value_parser = key_value)]
    pub properties: Vec<(String, String)>,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: self.name.clone(),
            project: project.to_string(),
            size_gb: self.size,
            volume_type: self.volume_type.clone().unwrap_or_default(),
            image_ref: self.image.clone().unwrap_or_default(),
            description: self.description.clone().unwrap_or_default(),
            metadata: self.properties.iter().cloned().collect(),
            snapshot_id: self.snapshot.clone().unwrap_or_default(),
            source_volume: self.source.clone().unwrap_or_default(),
        }
    }
}

/// `nubo volume snapshot …`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a volume (crash-consistent if attached).
    Create {
        /// Volume name or id.
        volume: String,
        /// Snapshot name ("" : snapshot-<id>).
        name: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Metadata item KEY=VALUE; repeatable.
        #[arg(long = "property", value_parser = key_value)]
        properties: Vec<(String, String)>,
    },
    /// Show one snapshot by id.
    Show {
        /// Snapshot id.
        id: String,
    },
    /// Change a snapshot's name, description or metadata (or, cloud
    /// admin, its recorded status with --state).
    Set {
        /// Snapshot id.
        id: String,
        /// Cloud admin: set the recorded status (creating, available,
        /// deleting, error, error_deleting); the RBD snapshot is untouched.
        #[arg(long)]
        state: Option<String>,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        /// New description ("" clears it).
        #[arg(long)]
        description: Option<String>,
        /// Metadata item KEY=VALUE to set; repeatable.
        #[arg(long = "property", value_parser = key_value)]
        properties: Vec<(String, String)>,
        /// Metadata key to remove; repeatable.
        #[arg(long = "unset-property")]
        unset_properties: Vec<String>,
    },
    /// List a volume's snapshots, oldest first.
    List {
        /// Volume name or id.
        volume: String,
    },
    /// Delete snapshots of a volume.
    Delete {
        /// Volume name or id.
        volume: String,
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Whatever their status (cloud admin).
        #[arg(long)]
        force: bool,
    },
    /// Report a snapshot's progress (its owner; Cinder's
    /// os-update_snapshot_status): creating -> creating|available|error,
    /// deleting -> deleting|error_deleting.
    Progress {
        /// Snapshot id.
        id: String,
        /// The new status.
        #[arg(long)]
        state: String,
        /// Progress, e.g. 80%.
        #[arg(long, default_value = "")]
        progress: String,
    },
    /// Roll a (detached) volume back to a snapshot.
    Revert {
        /// Volume name or id.
        volume: String,
        /// Snapshot name.
        name: String,
    },
}

fn client(api: &Api) -> VolumesClient<Chan> {
    VolumesClient::new(api.channel())
}

fn snap_req(api: &Api, volume: &str, name: &str) -> VolumeSnapshotRequest {
    VolumeSnapshotRequest {
        r#ref: volume.to_string(),
        project: api.project.clone(),
        name: name.to_string(),
        ..Default::default()
    }
}

/// The JSON (and `show`) form of a volume.
pub fn to_json(v: &Volume) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "project": v.project,
        "size_gb": v.size_gb,
        "status": v.status,
        "status_reason": opt(&v.status_reason),
        "status_reset": opt(&v.status_reset),
        "type": opt(&v.volume_type),
        "attached_to": opt(&v.attached_to),
        "device": opt(&v.device),
        "boot": v.boot,
        "delete_on_termination": v.delete_on_termination,
        "source_image": opt(&v.source_image),
        "source_volume": opt(&v.source_volume),
        "source_snapshot": opt(&v.source_snapshot),
        "description": opt(&v.description),
        "metadata": v.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "image_metadata": v.image_metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "bootable": v.bootable,
        "read_only": v.read_only.unwrap_or(false),
        "rbd_image": opt(&v.rbd_image),
        "serial": v.serial,
        "created_by": opt(&v.created_by),
        "created_at": opt(&v.created_at),
    })
}

/// The `volume list` table (as `openstack volume list`).
pub fn table(vols: &[Volume]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Status", "Size", "Type", "Attached to"]);
    for v in vols {
        t.row(vec![
            v.id.clone(),
            v.name.clone(),
            v.status.clone(),
            format!("{}G", v.size_gb),
            v.volume_type.clone(),
            if v.attached_to.is_empty() {
                String::new()
            } else if v.boot {
                format!("{} (boot)", v.attached_to)
            } else {
                v.attached_to.clone()
            },
        ]);
    }
    t
}

fn snap_json(s: &VolumeSnapshot) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": opt(&s.description),
        "metadata": s.metadata.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "volume_id": s.volume_id,
        "size_gb": s.size_gb,
        "status": s.status,
        "progress": opt(&s.progress),
        "status_reset": opt(&s.status_reset),
        "created_at": opt(&s.created_at),
    })
}

fn snap_table(snaps: &[VolumeSnapshot]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Volume", "Size", "Created"]);
    for s in snaps {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.volume_id.clone(),
            format!("{}G", s.size_gb),
            s.created_at.clone(),
        ]);
    }
    t
}

/// Runs a volume command.
pub async fn run(cmd: VolumeCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        VolumeCmd::Create(args) => {
            let v = client(api)
                .create(args.request(&api.project))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&v))
        }
        VolumeCmd::List { all_projects } => {
            let items = api
                .list_all(all_projects, |req| {
                    let mut c = client(api);
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.volumes, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        VolumeCmd::Show { volume } => {
            let v = client(api).get(api.get_req(&volume)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&v))
        }
        VolumeCmd::Delete { volumes, force } => {
            ctx.delete_all("volumes", &volumes, |r| async move {
                let mut c = client(api);
                let req = api.delete_req(&r);
                let done = if force {
                    c.force_delete(req).await
                } else {
                    c.delete(req).await
                };
                done.or_fail(api).map(drop)
            })
            .await
        }
        VolumeCmd::Set(args) => {
            let mut v = None;
            if args.changes_attributes() || args.reset(&api.project).is_none() {
                v = Some(
                    client(api)
                        .update(args.request(&api.project))
                        .await
                        .or_fail(api)?,
                );
            }
            if let Some(r) = args.reset(&api.project) {
                v = Some(client(api).reset_status(r).await.or_fail(api)?);
            }
            match v {
                Some(v) => output::show(ctx.format, &to_json(&v)),
                None => bail!("nothing to change"),
            }
        }
        VolumeCmd::Resize { volume, size } => {
            let v = client(api)
                .resize(ResizeVolumeRequest {
                    r#ref: volume,
                    project: api.project.clone(),
                    size_gb: size,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&v))
        }
        VolumeCmd::Attach {
            volume,
            server,
            delete_on_termination,
            device,
        } => {
            let v = client(api)
                .attach(AttachVolumeRequest {
                    r#ref: volume,
                    project: api.project.clone(),
                    server_ref: server,
                    delete_on_termination,
                    device: device.unwrap_or_default(),
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&v))
        }
        VolumeCmd::Detach {
            volume,
            force,
            wait,
            timeout,
        } => {
            let req = DetachVolumeRequest {
                r#ref: volume.clone(),
                project: api.project.clone(),
                if_attached: false,
            };
            let mut c = client(api);
            let mut v = if force {
                c.force_detach(req).await
            } else {
                c.detach(req).await
            }
            .or_fail(api)?;
            if wait {
                v = wait_available(api, &v.id, Duration::from_secs(timeout)).await?;
            }
            output::show(ctx.format, &to_json(&v))
        }
        VolumeCmd::Snapshot(c) => snapshot(c, ctx).await,
        VolumeCmd::UploadImage {
            volume,
            name,
            disk_format,
            visibility,
            force,
        } => {
            let i = client(api)
                .upload_to_image(nubo_common::proto::UploadVolumeToImageRequest {
                    project: api.project.clone(),
                    volume,
                    image_name: name,
                    disk_format,
                    visibility,
                    force,
                    properties: Default::default(),
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &crate::image::to_json(&i))
        }
        VolumeCmd::Transfer(c) => crate::volume_transfer::run(c, ctx).await,
        VolumeCmd::Type(c) => crate::volume_type::run(c, ctx).await,
    }
}

/// Polls until the volume is available again (after a detach).
async fn wait_available(api: &Api, id: &str, timeout: Duration) -> Result<Volume> {
    let start = Instant::now();
    loop {
        let v = client(api).get(api.get_req(id)).await.or_fail(api)?;
        match v.status.as_str() {
            "available" => return Ok(v),
            "detaching" => {}
            other => bail!(
                "volume {id} is {other} instead of available: {}",
                v.status_reason
            ),
        }
        if start.elapsed() > timeout {
            bail!(
                "volume {id} is still detaching after {} s (the server's node has not released it)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn snapshot(cmd: SnapshotCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        SnapshotCmd::Create {
            volume,
            name,
            description,
            properties,
        } => {
            let s = client(api)
                .create_snapshot(VolumeSnapshotRequest {
                    description,
                    metadata: properties.into_iter().collect(),
                    ..snap_req(api, &volume, &name)
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &snap_json(&s))
        }
        SnapshotCmd::Show { id } => {
            let s = client(api)
                .get_snapshot(api.get_req(&id))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &snap_json(&s))
        }
        SnapshotCmd::Set {
            id,
            state: Some(state),
            name: None,
            description: None,
            properties,
            unset_properties,
        } if properties.is_empty() && unset_properties.is_empty() => {
            let s = client(api)
                .reset_snapshot_status(ResetSnapshotStatusRequest {
                    r#ref: id,
                    project: api.project.clone(),
                    status: state,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &snap_json(&s))
        }
        SnapshotCmd::Set { state: Some(_), .. } => {
            bail!("--state is set alone (a cloud admin's status reset); change the other attributes in another call")
        }
        SnapshotCmd::Set {
            id,
            state: None,
            name,
            description,
            properties,
            unset_properties,
        } => {
            let s = client(api)
                .update_snapshot(UpdateVolumeSnapshotRequest {
                    id,
                    project: api.project.clone(),
                    name,
                    description,
                    replace_metadata: false,
                    metadata: properties.into_iter().collect(),
                    remove_metadata: unset_properties,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &snap_json(&s))
        }
        SnapshotCmd::List { volume } => {
            let l = client(api)
                .list_snapshots(api.get_req(&volume))
                .await
                .or_fail(api)?;
            output::items(ctx.format, &l.snapshots, snap_table, snap_json)
        }
        SnapshotCmd::Delete {
            volume,
            names,
            force,
        } => {
            let volume = &volume;
            let snaps = if force {
                client(api)
                    .list_snapshots(api.get_req(volume))
                    .await
                    .or_fail(api)?
                    .snapshots
            } else {
                Vec::new()
            };
            let snaps = &snaps;
            ctx.delete_all("snapshots", &names, |n| async move {
                if !force {
                    return client(api)
                        .delete_snapshot(snap_req(api, volume, &n))
                        .await
                        .or_fail(api)
                        .map(drop);
                }
                let Some(s) = snaps.iter().find(|s| s.name == n || s.id == n) else {
                    bail!("volume {volume} has no snapshot named {n:?}");
                };
                client(api)
                    .force_delete_snapshot(api.delete_req(&s.id))
                    .await
                    .or_fail(api)
                    .map(drop)
            })
            .await
        }
        SnapshotCmd::Progress {
            id,
            state,
            progress,
        } => {
            let s = client(api)
                .update_snapshot_status(UpdateSnapshotStatusRequest {
                    r#ref: id,
                    project: api.project.clone(),
                    status: state,
                    progress,
                })
                .await
                .or_fail(api)?;
            output::show(ctx.format, &snap_json(&s))
        }
        SnapshotCmd::Revert { volume, name } => {
            let v = client(api)
                .revert_snapshot(snap_req(api, &volume, &name))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &to_json(&v))
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
        cmd: VolumeCmd,
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let t = T::try_parse_from([
            "nubo", "create", "data", "--size", "10G", "--type", "ssd", "--image", "cirros",
        ])
        .unwrap();
        let VolumeCmd::Create(a) = t.cmd else {
            panic!("not create")
        };
        assert_eq!(
            a.request("p1"),
            CreateVolumeRequest {
                name: "data".into(),
                project: "p1".into(),
                size_gb: 10,
                volume_type: "ssd".into(),
                image_ref: "cirros".into(),
                ..Default::default()
            }
        );
        let t = T::try_parse_from([
            "nubo",
            "create",
            "--size",
            "2G",
            "--snapshot",
            "s-id",
            "--property",
            "a=b=c",
            "--description",
            "copy",
        ])
        .unwrap();
        let VolumeCmd::Create(a) = t.cmd else {
            panic!("not create")
        };
        let r = a.request("p1");
        assert_eq!(
            (
                r.name.as_str(),
                r.snapshot_id.as_str(),
                r.metadata["a"].as_str()
            ),
            ("", "s-id", "b=c")
        );
        assert!(T::try_parse_from([
            "nubo", "create", "x", "--size", "1G", "--image", "i", "--source", "v"
        ])
        .is_err());
        let t = T::try_parse_from([
            "nubo",
            "set",
            "v",
            "--bootable",
            "true",
            "--unset-property",
            "k",
            "--property",
            "x=1",
        ])
        .unwrap();
        let VolumeCmd::Set(a) = t.cmd else {
            panic!("not set")
        };
        let r = a.request("p1");
        assert_eq!(
            (r.bootable, r.remove_metadata.clone(), r.name.clone()),
            (Some(true), vec!["k".to_string()], None)
        );
        assert_eq!(r.metadata["x"], "1");
        // A negative size reaches the API, which refuses it with its reason.
        let t = T::try_parse_from(["nubo", "create", "d", "--size", "-1G"]).unwrap();
        assert!(matches!(
            t.cmd,
            VolumeCmd::Create(CreateArgs { size: -1, .. })
        ));
        assert!(T::try_parse_from(["nubo", "create", "d", "--size", "1.5G"]).is_err());
    }

    #[test]
    fn snapshot_and_type_commands_parse() {
        assert!(T::try_parse_from(["nubo", "snapshot", "create", "v", "s1"]).is_ok());
        assert!(T::try_parse_from(["nubo", "snapshot", "revert", "v", "s1"]).is_ok());
        assert!(T::try_parse_from(["nubo", "detach", "v", "--wait"]).is_ok());
        assert!(
            T::try_parse_from(["nubo", "type", "create", "ssd", "--write-iops", "200"]).is_ok()
        );
    }
}
