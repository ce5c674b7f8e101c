//! Flavors, images, keypairs, server groups, nodes and cluster status.

use etcd_client::{Txn, TxnOp};
use nubo_common::keys::{self, NameKind};
use nubo_common::model::{
    self, DiskFormat, Flavor, Image, ImageStatus, Keypair, NodeAdmin, Resources, ServerGroup,
    ServerGroupPolicy,
};
use nubo_common::proto::{
    self as pb, cluster_server, flavors_server, images_server, keypairs_server, nodes_server,
    server_groups_server,
};
use nubo_common::{FlavorName, ImageId, NodeName, ServerGroupId};
use tonic::{Request, Response, Status};

use super::{reply, Ctx};
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::store::{self, absent, decode_or_skip, prefix_empty, put, unchanged, Versioned};
use crate::validate;

type R<T> = Result<Response<T>, Status>;

fn flavor_name(s: &str) -> ApiResult<FlavorName> {
    FlavorName::new(s.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

impl Ctx {
    pub(crate) async fn flavor(&self, r: &str) -> ApiResult<Versioned<Flavor>> {
        let name = flavor_name(r)?;
        self.store
            .get(&keys::flavor(&name))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("flavor {:?} not found", name.as_str())))
    }

    async fn create_flavor(&self, r: pb::CreateFlavorRequest) -> ApiResult<pb::Flavor> {
        let name = flavor_name(&r.name)?;
        if r.vcpus == 0 || r.ram_mb == 0 {
            return Err(ApiError::InvalidArgument(format!(
                "flavor {:?} needs at least 1 vCPU and 1 MiB of RAM",
                name.as_str()
            )));
        }
        let f = Flavor {
            name: name.clone(),
            resources: Resources {
                vcpus: r.vcpus,
                ram_mb: r.ram_mb,
                disk_gb: r.disk_gb,
            },
            extra: Default::default(),
            created_at: model::now(),
        };
        let key = keys::flavor(&name);
        let resp = self
            .store
            .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &f)]))
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "flavor {:?} already exists",
                name.as_str()
            )));
        }
        Ok(convert::flavor(&f))
    }

    async fn create_image(&self, r: pb::CreateImageRequest) -> ApiResult<pb::Image> {
        let project = validate::project(&r.project)?;
        validate::name("image", &r.name)?;
        let disk_format = match r.disk_format.to_ascii_lowercase().as_str() {
            "" | "qcow2" => DiskFormat::Qcow2,
            "raw" => DiskFormat::Raw,
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "disk_format {other:?} must be \"raw\" or \"qcow2\""
                )))
            }
        };
        let checksum = match r.checksum_sha256.trim() {
            "" => None,
            c if c.len() == 64 && c.chars().all(|x| x.is_ascii_hexdigit()) => {
                Some(c.to_ascii_lowercase())
            }
            c => {
                return Err(ApiError::InvalidArgument(format!(
                    "checksum_sha256 {c:?} is not 64 hex digits"
                )))
            }
        };
        let img = Image {
            id: ImageId::new_random(),
            name: r.name.clone(),
            project: project.clone(),
            disk_format,
            size_bytes: r.size_bytes,
            checksum_sha256: checksum,
            min_disk_gb: r.min_disk_gb,
            min_ram_mb: r.min_ram_mb,
            status: ImageStatus::Queued,
            created_at: model::now(),
            kernel_sha256: crate::image_store::optional_sha256("kernel_sha256", &r.kernel_sha256)?,
            initrd_sha256: crate::image_store::optional_sha256("initrd_sha256", &r.initrd_sha256)?,
            kernel_cmdline: Some(r.kernel_cmdline.trim().to_string()).filter(|c| !c.is_empty()),
            status_reason: None,
        };
        let idx = keys::name_index(NameKind::Image, &project, &img.name);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([absent(&idx)])
                    .and_then([put(&idx, &img.id), put(&keys::image(&img.id), &img)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "image {:?} already exists in project {project}",
                img.name
            )));
        }
        Ok(convert::image(&img))
    }

    pub(crate) async fn image(
        &self,
        project: &nubo_common::ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<Image>> {
        self.resolve(NameKind::Image, "image", project, r, |u| {
            keys::image(&ImageId::from_uuid(u))
        })
        .await
    }

    async fn delete_image(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        let img = self.image(&project, &r.r#ref).await?;
        let idx = keys::name_index(NameKind::Image, &project, &img.value.name);
        let key = keys::image(&img.value.id);
        self.store
            .txn(Txn::new().when([unchanged(&key, img.mod_rev)]).and_then([
                TxnOp::delete(key.as_str(), None),
                TxnOp::delete(idx.as_str(), None),
            ]))
            .await?;
        // Its data goes with it (hook of the image-data feature).
        crate::image_store::ImageStore::new(&self.cfg.image_dir)
            .remove(&img.value.id.to_string())
            .await?;
        Ok(pb::Empty {})
    }

    async fn create_keypair(&self, r: pb::CreateKeypairRequest) -> ApiResult<pb::Keypair> {
        let project = validate::project(&r.project)?;
        validate::name("keypair", &r.name)?;
        let (public_key, fingerprint) = validate::ssh_public_key(&r.public_key)?;
        let k = Keypair {
            name: r.name.clone(),
            project: project.clone(),
            public_key,
            fingerprint,
            created_at: model::now(),
        };
        let key = keys::keypair(&project, &k.name);
        let resp = self
            .store
            .txn(Txn::new().when([absent(&key)]).and_then([put(&key, &k)]))
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "keypair {:?} already exists in project {project}",
                k.name
            )));
        }
        Ok(convert::keypair(&k))
    }

    pub(crate) async fn keypair(
        &self,
        project: &nubo_common::ProjectId,
        name: &str,
    ) -> ApiResult<Versioned<Keypair>> {
        validate::name("keypair", name)?;
        self.store
            .get(&keys::keypair(project, name))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("keypair {name:?} not found in project {project}"))
            })
    }

    async fn create_server_group(
        &self,
        r: pb::CreateServerGroupRequest,
    ) -> ApiResult<pb::ServerGroup> {
        let project = validate::project(&r.project)?;
        validate::name("server group", &r.name)?;
        let policy = match r.policy.to_ascii_lowercase().as_str() {
            "affinity" => ServerGroupPolicy::Affinity,
            "anti-affinity" | "anti_affinity" => ServerGroupPolicy::AntiAffinity,
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "server group policy {other:?} must be \"affinity\" or \"anti-affinity\""
                )))
            }
        };
        let g = ServerGroup {
            id: ServerGroupId::new_random(),
            name: r.name.clone(),
            project: project.clone(),
            policy,
            created_at: model::now(),
        };
        let idx = keys::name_index(NameKind::ServerGroup, &project, &g.name);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([absent(&idx)])
                    .and_then([put(&idx, &g.id), put(&keys::server_group(&g.id), &g)]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::AlreadyExists(format!(
                "server group {:?} already exists in project {project}",
                g.name
            )));
        }
        Ok(convert::server_group(&g))
    }

    pub(crate) async fn server_group(
        &self,
        project: &nubo_common::ProjectId,
        r: &str,
    ) -> ApiResult<Versioned<ServerGroup>> {
        self.resolve(NameKind::ServerGroup, "server group", project, r, |u| {
            keys::server_group(&ServerGroupId::from_uuid(u))
        })
        .await
    }

    async fn delete_server_group(&self, r: pb::DeleteRequest) -> ApiResult<pb::Empty> {
        let project = validate::project(&r.project)?;
        let g = self.server_group(&project, &r.r#ref).await?;
        let key = keys::server_group(&g.value.id);
        let members = keys::server_group_members_prefix(&g.value.id);
        let idx = keys::name_index(NameKind::ServerGroup, &project, &g.value.name);
        let resp = self
            .store
            .txn(
                Txn::new()
                    .when([unchanged(&key, g.mod_rev), prefix_empty(&members)])
                    .and_then([
                        TxnOp::delete(key.as_str(), None),
                        TxnOp::delete(idx.as_str(), None),
                    ]),
            )
            .await?;
        if !resp.succeeded() {
            return Err(ApiError::FailedPrecondition(format!(
                "server group {:?} still has members; delete its servers first",
                g.value.name
            )));
        }
        Ok(pb::Empty {})
    }

    pub(crate) fn node_name(r: &str) -> ApiResult<NodeName> {
        NodeName::new(r.trim()).map_err(|e| ApiError::InvalidArgument(e.to_string()))
    }

    fn get_node(&self, r: &str) -> ApiResult<pb::Node> {
        let name = Self::node_name(r)?;
        match self.view.get(&name) {
            Some(st) if st.info.is_some() => Ok(convert::node(&name, &st, &self.ratios)),
            _ => Err(ApiError::NotFound(format!(
                "node {:?} not found",
                name.as_str()
            ))),
        }
    }

    fn list_nodes(&self, r: &pb::ListRequest) -> ApiResult<pb::ListNodesResponse> {
        let size = store::page_size_of(r.page_size)?;
        let after = match store::decode_token(&r.page_token, &keys::nodes_prefix())? {
            Some(raw) => {
                let k = String::from_utf8_lossy(&raw).into_owned();
                match keys::parse(&k) {
                    Some(keys::Key::Node(n)) => Some(n),
                    _ => {
                        return Err(ApiError::InvalidArgument(
                            "page_token is not valid for this list".into(),
                        ))
                    }
                }
            }
            None => None,
        };
        let (page, more) = self.view.page(after.as_ref(), size);
        let next = match (more, page.last()) {
            (true, Some((n, _))) => store::encode_token(keys::node(n).as_bytes()),
            _ => String::new(),
        };
        Ok(pb::ListNodesResponse {
            nodes: page
                .iter()
                .map(|(n, st)| convert::node(n, st, &self.ratios))
                .collect(),
            next_page_token: next,
        })
    }

    async fn set_node_enabled(&self, r: pb::SetNodeEnabledRequest) -> ApiResult<pb::Node> {
        let name = Self::node_name(&r.name)?;
        if self.view.get(&name).and_then(|s| s.info).is_none() {
            return Err(ApiError::NotFound(format!(
                "node {:?} not found",
                name.as_str()
            )));
        }
        let admin = NodeAdmin {
            enabled: r.enabled,
            reason: (!r.enabled).then(|| "disabled through the API".to_string()),
        };
        self.store
            .txn(Txn::new().and_then([put(&keys::node_admin(&name), &admin)]))
            .await?;
        self.view.set_admin(&name, admin);
        tracing::info!(node = %name, enabled = r.enabled, "node admin switch set");
        self.get_node(name.as_str())
    }
}

#[tonic::async_trait]
impl flavors_server::Flavors for Ctx {
    async fn create(&self, r: Request<pb::CreateFlavorRequest>) -> R<pb::Flavor> {
        reply(self.create_flavor(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Flavor> {
        reply(
            self.flavor(&r.into_inner().r#ref)
                .await
                .map(|f| convert::flavor(&f.value)),
        )
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListFlavorsResponse> {
        let r = r.into_inner();
        reply(
            self.store
                .list_page(&keys::flavors_prefix(), r.page_size, &r.page_token, |kv| {
                    decode_or_skip::<Flavor>(kv).map(|f| convert::flavor(&f))
                })
                .await
                .map(|(flavors, next_page_token)| pb::ListFlavorsResponse {
                    flavors,
                    next_page_token,
                }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let go = async {
            let name = flavor_name(&r.into_inner().r#ref)?;
            let resp = self
                .store
                .txn(Txn::new().and_then([TxnOp::delete(keys::flavor(&name), None)]))
                .await?;
            let deleted = match resp.op_responses().into_iter().next() {
                Some(etcd_client::TxnOpResponse::Delete(d)) => d.deleted(),
                _ => 0,
            };
            if deleted == 0 {
                return Err(ApiError::NotFound(format!(
                    "flavor {:?} not found",
                    name.as_str()
                )));
            }
            Ok(pb::Empty {})
        };
        reply(go.await)
    }
}

#[tonic::async_trait]
impl images_server::Images for Ctx {
    async fn create(&self, r: Request<pb::CreateImageRequest>) -> R<pb::Image> {
        reply(self.create_image(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::image(&self.image(&p, &r.r#ref).await?.value))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListImagesResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::images_prefix(), &r, convert::image)
            .await;
        reply(
            page.map(|(images, next_page_token)| pb::ListImagesResponse {
                images,
                next_page_token,
            }),
        )
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_image(r.into_inner()).await)
    }
}

#[tonic::async_trait]
impl keypairs_server::Keypairs for Ctx {
    async fn create(&self, r: Request<pb::CreateKeypairRequest>) -> R<pb::Keypair> {
        reply(self.create_keypair(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Keypair> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::keypair(
                &self.keypair(&p, r.r#ref.trim()).await?.value,
            ))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListKeypairsResponse> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            let (keypairs, next_page_token) = self
                .store
                .list_page(
                    &keys::keypairs_prefix(&p),
                    r.page_size,
                    &r.page_token,
                    |kv| decode_or_skip::<Keypair>(kv).map(|k| convert::keypair(&k)),
                )
                .await?;
            Ok(pb::ListKeypairsResponse {
                keypairs,
                next_page_token,
            })
        };
        reply(go.await)
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            let k = self.keypair(&p, r.r#ref.trim()).await?;
            let key = keys::keypair(&p, &k.value.name);
            self.store
                .txn(Txn::new().and_then([TxnOp::delete(key, None)]))
                .await?;
            Ok(pb::Empty {})
        };
        reply(go.await)
    }
}

#[tonic::async_trait]
impl server_groups_server::ServerGroups for Ctx {
    async fn create(&self, r: Request<pb::CreateServerGroupRequest>) -> R<pb::ServerGroup> {
        reply(self.create_server_group(r.into_inner()).await)
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::ServerGroup> {
        let r = r.into_inner();
        let go = async {
            let p = validate::project(&r.project)?;
            Ok(convert::server_group(
                &self.server_group(&p, &r.r#ref).await?.value,
            ))
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListServerGroupsResponse> {
        let r = r.into_inner();
        let page = self
            .list_scoped(&keys::server_groups_prefix(), &r, convert::server_group)
            .await;
        reply(page.map(
            |(server_groups, next_page_token)| pb::ListServerGroupsResponse {
                server_groups,
                next_page_token,
            },
        ))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        reply(self.delete_server_group(r.into_inner()).await)
    }
}

#[tonic::async_trait]
impl nodes_server::Nodes for Ctx {
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Node> {
        reply(self.get_node(&r.into_inner().r#ref))
    }
    async fn list(&self, r: Request<pb::ListRequest>) -> R<pb::ListNodesResponse> {
        reply(self.list_nodes(&r.into_inner()))
    }
    async fn set_enabled(&self, r: Request<pb::SetNodeEnabledRequest>) -> R<pb::Node> {
        reply(self.set_node_enabled(r.into_inner()).await)
    }
    async fn evacuate(&self, r: Request<pb::EvacuateNodeRequest>) -> R<pb::EvacuateNodeResponse> {
        reply(self.evacuate_node(r.into_inner()).await)
    }
    async fn drain(&self, r: Request<pb::DrainNodeRequest>) -> R<pb::DrainNodeResponse> {
        reply(self.drain_node(r.into_inner()).await)
    }
    async fn set_evacuation_enabled(
        &self,
        r: Request<pb::SetEvacuationEnabledRequest>,
    ) -> R<pb::EvacuationSettings> {
        reply(self.set_evacuation_enabled(r.into_inner()).await)
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for Ctx {
    async fn status(&self, _r: Request<pb::Empty>) -> R<pb::ClusterStatus> {
        let evacuation_enabled = crate::failover::evacuation_enabled(self)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::ClusterStatus {
            coordinator_id: self.cfg.id.clone(),
            is_leader: self.leader.is_leader(),
            leader_id: self.leader.leader_id(),
            version: env!("CARGO_PKG_VERSION").into(),
            evacuation_enabled,
        }))
    }
}
