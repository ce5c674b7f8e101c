//! `nubo image …`: bootable images; `create --file` uploads the data.

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use nubo_common::proto::{
    CreateImageRequest, GetRequest, Image, ImageMember, ImageMemberRequest, UpdateImageRequest,
};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Register an image.
    Create(CreateArgs),
    /// List images.
    List,
    /// Show one image.
    Show {
        /// Image name or id.
        image: String,
    },
    /// Delete images.
    Delete {
        /// Image names or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Change an image's name, minimum disk/RAM, visibility, tags,
    /// properties and flags.
    Set(SetArgs),
    /// The projects a shared image is shared with.
    #[command(subcommand)]
    Member(MemberCmd),
}

/// `nubo image set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Image name or id.
    pub image: String,
    /// New name (unique in the project).
    #[arg(long)]
    pub name: Option<String>,
    /// Smallest root disk it needs, GiB.
    #[arg(long)]
    pub min_disk: Option<u64>,
    /// Least RAM it needs, MiB.
    #[arg(long)]
    pub min_ram: Option<u64>,
    /// Who sees it: its project (`private`), projects it is shared with
    /// (`shared`, see `image member`), any project asking by id
    /// (`community`), every project (`public`, cloud admins only).
    #[arg(long, value_parser = ["private", "shared", "community", "public"])]
    pub visibility: Option<String>,
    /// Add a tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Remove a tag (repeatable).
    #[arg(long = "remove-tag")]
    pub remove_tags: Vec<String>,
    /// Set a property `KEY=VALUE` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Remove a property (repeatable).
    #[arg(long = "remove-property")]
    pub remove_properties: Vec<String>,
    /// Refuse deletion until unprotected.
    #[arg(long, conflicts_with = "unprotected")]
    pub protected: bool,
    /// Allow deletion again.
    #[arg(long)]
    pub unprotected: bool,
    /// Leave it out of listings.
    #[arg(long, conflicts_with = "unhidden")]
    pub hidden: bool,
    /// List it again.
    #[arg(long)]
    pub unhidden: bool,
    /// Deactivate: no new server or volume from it, data served to admins only.
    #[arg(long, conflicts_with = "reactivate")]
    pub deactivate: bool,
    /// Reactivate a deactivated image.
    #[arg(long)]
    pub reactivate: bool,
    /// Cloud admins: give the image to this project (its name must be
    /// free there).
    #[arg(long)]
    pub owner: Option<String>,
}

/// `KEY=VALUE`.
fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// `Some(true)` / `Some(false)` / `None` from a pair of opposite flags.
fn flag(on: bool, off: bool) -> Option<bool> {
    match (on, off) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

impl SetArgs {
    /// The API request for `project`; an error when nothing changes.
    pub fn request(self, project: &str) -> Result<UpdateImageRequest> {
        let req = UpdateImageRequest {
            r#ref: self.image,
            project: project.to_string(),
            name: self.name,
            min_disk_gb: self.min_disk,
            min_ram_mb: self.min_ram,
            visibility: self.visibility,
            add_tags: self.tags,
            remove_tags: self.remove_tags,
            set_properties: self.properties.into_iter().collect(),
            remove_properties: self.remove_properties,
            protected: flag(self.protected, self.unprotected),
            hidden: flag(self.hidden, self.unhidden),
            deactivated: flag(self.deactivate, self.reactivate),
            owner: self.owner,
        };
        let unchanged = UpdateImageRequest {
            r#ref: req.r#ref.clone(),
            project: req.project.clone(),
            ..Default::default()
        };
        if req == unchanged {
            bail!("nothing to change: give --name, --min-disk, --min-ram, --visibility, --tag, --property, … (see --help)");
        }
        Ok(req)
    }
}

/// `nubo image member …` (Glance's image members).
#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// Share a `shared` image with a project (it then accepts or rejects).
    Add {
        /// Image id (or name, in the owner's project).
        image: String,
        /// The project to share it with.
        member: String,
    },
    /// The projects the image is shared with (a member sees only itself).
    List {
        /// Image id.
        image: String,
    },
    /// Answer as the member project (the `--project` of the call).
    Set {
        /// Image id.
        image: String,
        /// `accepted`, `rejected` or `pending`.
        #[arg(value_parser = ["accepted", "rejected", "pending"])]
        status: String,
    },
    /// Stop sharing with a project.
    Remove {
        /// Image id.
        image: String,
        /// The member project.
        member: String,
    },
}

/// The JSON form of an image member.
pub fn member_json(m: &ImageMember) -> Value {
    json!({
        "image": m.image,
        "member": m.member,
        "status": m.status,
        "created_at": opt(&m.created_at),
        "updated_at": opt(&m.updated_at),
    })
}

async fn run_member(cmd: MemberCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    let req = |image: String, member: String, status: String| ImageMemberRequest {
        image,
        project: api.project.clone(),
        member,
        status,
    };
    match cmd {
        MemberCmd::Add { image, member } => {
            let m = api
                .images()
                .add_member(req(image, member, String::new()))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &member_json(&m))
        }
        MemberCmd::List { image } => {
            let r = api
                .images()
                .list_members(GetRequest {
                    r#ref: image,
                    project: api.project.clone(),
                })
                .await
                .or_fail(api)?;
            let mut t = Table::new(&["Image", "Member", "Status"]);
            for m in &r.members {
                t.row(vec![m.image.clone(), m.member.clone(), m.status.clone()]);
            }
            output::list(ctx.format, &t, r.members.iter().map(member_json).collect())
        }
        MemberCmd::Set { image, status } => {
            // The member answers for itself: "" is the call's project.
            let m = api
                .images()
                .set_member_status(req(image, String::new(), status))
                .await
                .or_fail(api)?;
            output::show(ctx.format, &member_json(&m))
        }
        MemberCmd::Remove { image, member } => {
            api.images()
                .remove_member(req(image, member, String::new()))
                .await
                .or_fail(api)?;
            Ok(())
        }
    }
}

/// Image data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskFormat {
    /// Raw disk image.
    Raw,
    /// qcow2 disk image.
    Qcow2,
}

/// `nubo image create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image name.
    pub name: String,
    /// Format of the image data (default: detected from `--file`, else raw).
    #[arg(long, value_enum)]
    pub disk_format: Option<DiskFormat>,
    /// Smallest root disk (GiB) the image fits on.
    #[arg(long, default_value_t = 0)]
    pub min_disk: u64,
    /// Smallest memory (MiB) the image boots with.
    #[arg(long, default_value_t = 0)]
    pub min_ram: u64,
    /// Size of the image data in bytes.
    #[arg(long, default_value_t = 0)]
    pub size: u64,
    /// SHA-256 of the image data (64 hex digits).
    #[arg(long)]
    pub checksum: Option<String>,
    /// Disk data to upload (raw or qcow2; the format is detected unless
    /// `--disk-format` is given); size and checksum are computed.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Kernel for direct kernel boot (uploaded with the image).
    #[arg(long, requires = "file")]
    pub kernel: Option<std::path::PathBuf>,
    /// Initrd for direct kernel boot.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<std::path::PathBuf>,
    /// Kernel command line for direct kernel boot.
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// Who sees it (default private; `public` for cloud admins only).
    #[arg(long, value_parser = ["private", "shared", "community", "public"])]
    pub visibility: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A property `KEY=VALUE` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

impl CreateArgs {
    /// The API request for `project`.
    pub fn request(&self, project: &str) -> Result<CreateImageRequest> {
        let checksum = match &self.checksum {
            None => String::new(),
            Some(c) if c.len() == 64 && c.chars().all(|ch| ch.is_ascii_hexdigit()) => {
                c.to_ascii_lowercase()
            }
            Some(c) => bail!("--checksum {c:?} is not a SHA-256 (64 hex digits)"),
        };
        Ok(CreateImageRequest {
            name: self.name.clone(),
            project: project.to_string(),
            disk_format: match self.disk_format {
                None | Some(DiskFormat::Raw) => "raw",
                Some(DiskFormat::Qcow2) => "qcow2",
            }
            .to_string(),
            size_bytes: self.size,
            checksum_sha256: checksum,
            min_disk_gb: self.min_disk,
            min_ram_mb: self.min_ram,
            kernel_sha256: String::new(),
            initrd_sha256: String::new(),
            kernel_cmdline: self.cmdline.clone().unwrap_or_default(),
            visibility: self.visibility.clone().unwrap_or_default(),
            tags: self.tags.clone(),
            properties: self.properties.iter().cloned().collect(),
            protected: false,
            hidden: false,
        })
    }
}

/// The JSON (and `show`) form of an image.
pub fn to_json(i: &Image) -> Value {
    json!({
        "id": i.id,
        "name": i.name,
        "project": i.project,
        "disk_format": i.disk_format,
        "size_bytes": i.size_bytes,
        "checksum_sha256": opt(&i.checksum_sha256),
        "min_disk_gb": i.min_disk_gb,
        "min_ram_mb": i.min_ram_mb,
        "status": i.status,
        "status_reason": opt(&i.status_reason),
        "kernel_sha256": opt(&i.kernel_sha256),
        "initrd_sha256": opt(&i.initrd_sha256),
        "kernel_cmdline": opt(&i.kernel_cmdline),
        "created_at": opt(&i.created_at),
        "visibility": i.visibility,
        "member_status": opt(&i.member_status),
        "tags": i.tags,
        "properties": i.properties.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "protected": i.protected,
        "hidden": i.hidden,
        "deactivated": i.deactivated,
    })
}

/// The `image list` table.
pub fn table(images: &[Image]) -> Table {
    let mut t = Table::new(&["ID", "Name", "Status", "Visibility", "Disk Format", "Size"]);
    for i in images {
        t.row(vec![
            i.id.clone(),
            i.name.clone(),
            i.status.clone(),
            i.visibility.clone(),
            i.disk_format.clone(),
            i.size_bytes.to_string(),
        ]);
    }
    t
}

/// Runs an image command.
pub async fn run(cmd: ImageCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        ImageCmd::Create(args) => {
            let mut req = args.request(&api.project)?;
            let mut parts = Vec::new();
            if let Some(file) = &args.file {
                let (sum, size) = crate::image_upload::hash_file(file)?;
                if !req.checksum_sha256.is_empty() && req.checksum_sha256 != sum {
                    bail!(
                        "--checksum does not match {} (sha256 {sum})",
                        file.display()
                    );
                }
                req.checksum_sha256 = sum;
                req.size_bytes = size;
                if args.disk_format.is_none() {
                    req.disk_format = crate::image_upload::sniff_format(file)?.to_string();
                }
                parts.push(("disk", file.clone()));
                if let Some(k) = &args.kernel {
                    req.kernel_sha256 = crate::image_upload::hash_file(k)?.0;
                    parts.push(("kernel", k.clone()));
                }
                if let Some(i) = &args.initrd {
                    req.initrd_sha256 = crate::image_upload::hash_file(i)?.0;
                    parts.push(("initrd", i.clone()));
                }
            }
            let mut i = api.images().create(req).await.or_fail(api)?;
            for (part, path) in parts {
                i = crate::image_upload::upload(api, &i.id, part, &path).await?;
            }
            output::show(ctx.format, &to_json(&i))
        }
        ImageCmd::List => {
            let items = api
                .list_all(false, |req| {
                    let mut c = api.images();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.images, r.next_page_token))
                    }
                })
                .await?;
            output::list(
                ctx.format,
                &table(&items),
                items.iter().map(to_json).collect(),
            )
        }
        ImageCmd::Show { image } => {
            let i = api.images().get(api.get_req(&image)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&i))
        }
        ImageCmd::Set(args) => {
            let req = args.request(&api.project)?;
            let i = api.images().update(req).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&i))
        }
        ImageCmd::Member(m) => run_member(m, ctx).await,
        ImageCmd::Delete { images } => {
            ctx.delete_all("images", &images, |r| async move {
                let req = api.delete_req(&r);
                api.images().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(checksum: Option<&str>) -> CreateArgs {
        CreateArgs {
            name: "cirros".into(),
            disk_format: Some(DiskFormat::Qcow2),
            min_disk: 1,
            min_ram: 64,
            size: 12_345,
            checksum: checksum.map(str::to_string),
            file: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            visibility: None,
            tags: vec![],
            properties: vec![],
        }
    }

    #[test]
    fn create_maps_flags_to_the_request() {
        let sum = "AB".repeat(32);
        let r = args(Some(&sum)).request("p1").unwrap();
        assert_eq!(
            r,
            CreateImageRequest {
                name: "cirros".into(),
                project: "p1".into(),
                disk_format: "qcow2".into(),
                size_bytes: 12_345,
                checksum_sha256: "ab".repeat(32),
                min_disk_gb: 1,
                min_ram_mb: 64,
                kernel_sha256: String::new(),
                initrd_sha256: String::new(),
                kernel_cmdline: String::new(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn set_maps_flags_and_refuses_nothing_to_change() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            set: SetArgs,
        }
        let parse = |args: &[&str]| T::try_parse_from(args).map(|t| t.set);
        let r = parse(&[
            "x",
            "img",
            "--visibility",
            "shared",
            "--tag",
            "a",
            "--remove-tag",
            "b",
            "--property",
            "k=v=w",
            "--remove-property",
            "old",
            "--protected",
            "--unhidden",
            "--deactivate",
        ])
        .unwrap()
        .request("p1")
        .unwrap();
        assert_eq!(
            (
                r.r#ref.as_str(),
                r.project.as_str(),
                r.visibility.as_deref()
            ),
            ("img", "p1", Some("shared"))
        );
        assert_eq!(
            (r.add_tags, r.remove_tags),
            (vec!["a".to_string()], vec!["b".to_string()])
        );
        assert_eq!(r.set_properties.get("k").map(String::as_str), Some("v=w"));
        assert_eq!(r.remove_properties, ["old"]);
        assert_eq!(
            (r.protected, r.hidden, r.deactivated),
            (Some(true), Some(false), Some(true))
        );
        let e = parse(&["x", "img"]).unwrap().request("").unwrap_err();
        assert!(e.to_string().starts_with("nothing to change"), "{e}");
        for bad in [
            &["x", "img", "--visibility", "world"][..],
            &["x", "img", "--property", "novalue"],
            &["x", "img", "--protected", "--unprotected"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_checksum_is_refused_before_calling_the_api() {
        let err = args(Some("abc")).request("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--checksum \"abc\" is not a SHA-256 (64 hex digits)"
        );
        assert_eq!(args(None).request("").unwrap().checksum_sha256, "");
    }
}
