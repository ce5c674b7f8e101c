//! `nubo flavor …`: instance sizes.

use anyhow::Result;
use clap::{Args, Subcommand};
use nubo_common::proto::{CreateFlavorRequest, Flavor, FlavorAccessRequest};
use serde_json::{json, Value};

use crate::api::Call;
use crate::ctx::{opt, Ctx};
use crate::output::{self, Table};

/// Flavor commands.
#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    /// Create a flavor.
    Create(CreateArgs),
    /// List the flavors your project may use (public ones, private ones
    /// shared with it).
    List {
        /// Cloud admins: every flavor, private ones not shared with your
        /// project too.
        #[arg(long)]
        all: bool,
    },
    /// Show one flavor.
    Show {
        /// Flavor name.
        name: String,
    },
    /// Delete flavors.
    Delete {
        /// Flavor names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Share a private flavor with a project, or stop sharing it (cloud
    /// admins).
    #[command(subcommand)]
    Access(AccessCmd),
}

/// `nubo flavor access …`.
#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// Let a project see and use a private flavor.
    Add {
        /// Flavor name.
        flavor: String,
        /// Project.
        project: String,
    },
    /// Stop sharing a private flavor with a project (its servers keep
    /// running with it).
    Remove {
        /// Flavor name.
        flavor: String,
        /// Project.
        project: String,
    },
}

/// `nubo flavor create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Flavor name, e.g. m1.small.
    pub name: String,
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: u32,
    /// Memory in MiB.
    #[arg(long)]
    pub ram: u64,
    /// Root disk in GiB.
    #[arg(long)]
    pub disk: u64,
    /// The name OpenStack clients show (default: the flavor's name, which
    /// is also its OpenStack id).
    #[arg(long)]
    pub display_name: Option<String>,
    /// Private: only cloud admins and the projects it is shared with
    /// (`nubo flavor access add`) see and use it.
    #[arg(long)]
    pub private: bool,
}

impl CreateArgs {
    /// The API request.
    pub fn request(&self) -> CreateFlavorRequest {
        CreateFlavorRequest {
            name: self.name.clone(),
            vcpus: self.vcpus,
            ram_mb: self.ram,
            disk_gb: self.disk,
            display_name: self.display_name.clone().unwrap_or_default(),
            private: self.private,
        }
    }
}

/// The JSON (and `show`) form of a flavor.
pub fn to_json(f: &Flavor) -> Value {
    json!({
        "name": f.name,
        "display_name": opt(&f.display_name),
        "vcpus": f.vcpus,
        "ram_mb": f.ram_mb,
        "disk_gb": f.disk_gb,
        "created_at": opt(&f.created_at),
        "private": f.private,
        "access_projects": f.access_projects,
    })
}

/// The `flavor list` table.
pub fn table(flavors: &[Flavor]) -> Table {
    let mut t = Table::new(&["Name", "VCPUs", "RAM (MiB)", "Disk (GiB)"]);
    for f in flavors {
        t.row(vec![
            f.name.clone(),
            f.vcpus.to_string(),
            f.ram_mb.to_string(),
            f.disk_gb.to_string(),
        ]);
    }
    t
}

/// Runs a flavor command.
pub async fn run(cmd: FlavorCmd, ctx: &Ctx) -> Result<()> {
    let api = &ctx.api;
    match cmd {
        FlavorCmd::Create(args) => {
            let f = api.flavors().create(args.request()).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&f))
        }
        FlavorCmd::List { all } => {
            let items = api
                .list_all(all, |req| {
                    let mut c = api.flavors();
                    async move {
                        let r = c.list(req).await?.into_inner();
                        Ok((r.flavors, r.next_page_token))
                    }
                })
                .await?;
            output::items(ctx.format, &items, table, to_json)
        }
        FlavorCmd::Show { name } => {
            let f = api.flavors().get(api.get_req(&name)).await.or_fail(api)?;
            output::show(ctx.format, &to_json(&f))
        }
        FlavorCmd::Access(cmd) => {
            let (flavor, project, add) = match cmd {
                AccessCmd::Add { flavor, project } => (flavor, project, true),
                AccessCmd::Remove { flavor, project } => (flavor, project, false),
            };
            let req = FlavorAccessRequest { flavor, project };
            let f = if add {
                api.flavors().add_access(req).await
            } else {
                api.flavors().remove_access(req).await
            }
            .or_fail(api)?;
            output::show(ctx.format, &to_json(&f))
        }
        FlavorCmd::Delete { names } => {
            ctx.delete_all("flavors", &names, |name| async move {
                let req = api.delete_req(&name);
                api.flavors().delete(req).await.or_fail(api).map(drop)
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_maps_flags_to_the_request() {
        let a = CreateArgs {
            name: "m1.small".into(),
            vcpus: 2,
            ram: 4096,
            disk: 20,
            display_name: None,
            private: true,
        };
        assert_eq!(
            a.request(),
            CreateFlavorRequest {
                name: "m1.small".into(),
                vcpus: 2,
                ram_mb: 4096,
                disk_gb: 20,
                display_name: String::new(),
                private: true,
            }
        );
    }

    #[test]
    fn json_is_stable() {
        let f = Flavor {
            name: "m1".into(),
            vcpus: 1,
            ram_mb: 512,
            disk_gb: 1,
            created_at: String::new(),
            display_name: String::new(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&to_json(&f)).unwrap(),
            r#"{"access_projects":[],"created_at":null,"disk_gb":1,"display_name":null,"name":"m1","private":false,"ram_mb":512,"vcpus":1}"#
        );
    }
}
