//! `Servers`: the gRPC adapter of [`crate::operations::servers`],
//! [`crate::operations::server_create`] and [`crate::operations::resize`].

use nubo_common::proto::{self as pb, servers_server};
use tonic::Request;

use super::{convert, owner, project, reply, R};
use crate::operations::lookup::ById;
use crate::operations::server_create::{self, Created, NewServers};
use crate::operations::servers::{self, ListServers};
use crate::operations::{
    instance_actions, node_streams, resize, server_ports, server_secgroups, PageRequest, Scope,
};
use crate::state::Ctx;

fn result_pb(c: Created) -> pb::ServerResult {
    match c.result {
        Ok(s) => pb::ServerResult {
            server: Some(convert::server(&s)),
            error: String::new(),
            code: String::new(),
            index: c.index,
        },
        Err(e) => pb::ServerResult {
            server: None,
            error: e.to_string(),
            code: e.code_name().into(),
            index: c.index,
        },
    }
}

impl Ctx {
    async fn server_secgroup(
        &self,
        r: pb::ServerSecurityGroupRequest,
        change: server_secgroups::Change,
    ) -> R<pb::Server> {
        let go = async {
            let p = owner(self, &r.project, ById::Server, &r.r#ref).await?;
            server_secgroups::change(self, &p, &r.r#ref, &r.security_group, change).await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
}

#[tonic::async_trait]
impl servers_server::Servers for Ctx {
    type ConsoleStream = super::streams::Relay;

    async fn console(
        &self,
        r: Request<pb::ConsoleRequest>,
    ) -> Result<tonic::Response<Self::ConsoleStream>, tonic::Status> {
        let r = r.into_inner();
        let stream = node_streams::console(
            self,
            &owner(self, &r.project, ById::Server, &r.r#ref).await?,
            &r.r#ref,
            r.follow,
        )
        .await?;
        Ok(tonic::Response::new(super::streams::relay(stream)))
    }

    async fn create(&self, r: Request<pb::CreateServerRequest>) -> R<pb::CreateServerResponse> {
        let r = r.into_inner();
        let go = async {
            let new = NewServers {
                project: project(&r.project)?,
                name: r.name,
                flavor: r.flavor,
                image_ref: r.image_ref,
                networks: r.networks,
                ports: r.ports,
                security_groups: r.security_groups,
                key_name: r.key_name,
                user_data: r.user_data,
                count: r.count,
                min_count: r.min_count,
                availability_zone: r.availability_zone,
                server_group: r.server_group,
                same_host: r.same_host,
                different_host: r.different_host,
                stopped: r.stopped,
                evacuation_policy: r.evacuation_policy,
                client_token: r.client_token,
                volumes: r.volumes,
                boot_volume: r.boot_volume,
                boot_from_volume_size_gb: r.boot_from_volume_size_gb,
                delete_on_termination: r.delete_on_termination,
                metadata: r.metadata.into_iter().collect(),
                access_ipv4: r.access_ipv4,
                access_ipv6: r.access_ipv6,
            };
            server_create::create(self, new).await
        };
        reply(go.await.map(|created| pb::CreateServerResponse {
            results: created.into_iter().map(result_pb).collect(),
        }))
    }
    async fn get(&self, r: Request<pb::GetRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            let s = servers::get(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await?;
            let usage = match &s.instance.node {
                Some(n) => crate::operations::usage::of_instance(self, n, &s.instance.id).await,
                None => None,
            };
            let mut pb = convert::server(&s);
            pb.observed_usage = usage.map(|(at, u)| convert::server_usage(&at, &u));
            Ok(pb)
        };
        reply(go.await)
    }
    async fn list(&self, r: Request<pb::ListServersRequest>) -> R<pb::ListServersResponse> {
        let r = r.into_inner();
        let go = async {
            let l = ListServers {
                scope: Scope {
                    project: project(&r.project)?,
                    all_projects: r.all_projects && crate::caller::may_see_all(),
                },
                page: PageRequest {
                    size: r.page_size,
                    token: r.page_token,
                },
                node: r.node,
                name_prefix: r.name_prefix,
                changes_since: crate::validate::optional_time("changes_since", &r.changes_since)?,
            };
            servers::list(self, &l).await
        };
        reply(go.await.map(|p| pb::ListServersResponse {
            servers: p.items.iter().map(convert::server).collect(),
            next_page_token: p.next,
        }))
    }
    async fn delete(&self, r: Request<pb::DeleteRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            servers::delete(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn start(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::start(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn stop(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::stop(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn lock(&self, r: Request<pb::LockServerRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::lock(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &r.reason,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn rebuild(&self, r: Request<pb::RebuildServerRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            let rb = servers::Rebuild {
                image: r.image,
                name: r.name,
                metadata: r.replace_metadata.then(|| r.metadata.into_iter().collect()),
            };
            servers::rebuild(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &rb,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn get_password(&self, r: Request<pb::GetRequest>) -> R<pb::ServerPassword> {
        let r = r.into_inner();
        let go = async {
            servers::password(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|password| pb::ServerPassword { password }))
    }
    async fn clear_password(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            servers::clear_password(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn add_security_group(
        &self,
        r: Request<pb::ServerSecurityGroupRequest>,
    ) -> R<pb::Server> {
        self.server_secgroup(r.into_inner(), server_secgroups::Change::Add)
            .await
    }
    async fn remove_security_group(
        &self,
        r: Request<pb::ServerSecurityGroupRequest>,
    ) -> R<pb::Server> {
        self.server_secgroup(r.into_inner(), server_secgroups::Change::Remove)
            .await
    }
    async fn add_port(&self, r: Request<pb::ServerPortRequest>) -> R<pb::Port> {
        let r = r.into_inner();
        let go = async {
            let what = match (r.port.trim().is_empty(), r.network.trim().is_empty()) {
                (false, true) if r.fixed_ip.trim().is_empty() => server_ports::Plug::Port(r.port),
                (true, false) => server_ports::Plug::Network {
                    network: r.network,
                    fixed_ip: r.fixed_ip,
                },
                (false, true) => {
                    return Err(crate::error::ApiError::InvalidArgument(
                        "fixed_ip goes with network, not with port".into(),
                    ))
                }
                _ => {
                    return Err(crate::error::ApiError::InvalidArgument(
                        "give either a port or a network".into(),
                    ))
                }
            };
            server_ports::add(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                what,
            )
            .await
        };
        reply(go.await.map(|p| convert::port(&p)))
    }
    async fn remove_port(&self, r: Request<pb::ServerPortRequest>) -> R<pb::Empty> {
        let r = r.into_inner();
        let go = async {
            if r.port.trim().is_empty() {
                return Err(crate::error::ApiError::InvalidArgument(
                    "the port to remove is missing".into(),
                ));
            }
            server_ports::remove(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &r.port,
            )
            .await
        };
        reply(go.await.map(|()| pb::Empty {}))
    }
    async fn reset_state(&self, r: Request<pb::ResetServerStateRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::reset_state(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &r.state,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }

    async fn inject_network_info(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::inject_network_info(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }

    async fn unlock(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::unlock(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn list_actions(&self, r: Request<pb::GetRequest>) -> R<pb::ListServerActionsResponse> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Server, &r.r#ref).await?;
            let (id, actions) = instance_actions::list(self, &p, &r.r#ref).await?;
            Ok(pb::ListServerActionsResponse {
                server_id: id.to_string(),
                actions: actions
                    .into_iter()
                    .map(|a| pb::ServerAction {
                        action: a.action,
                        request_id: a.request_id,
                        user: a.user.unwrap_or_default(),
                        project: a.project.to_string(),
                        start_time: a
                            .start_time
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    })
                    .collect(),
            })
        };
        reply(go.await)
    }
    async fn list_zones(&self, r: Request<pb::ListRequest>) -> R<pb::ListZonesResponse> {
        // Scoped like every call (a valid caller of some project).
        let r = r.into_inner();
        let go = async {
            project(&r.project)?;
            Ok(servers::zones(self))
        };
        reply(go.await.map(|zones| {
            pb::ListZonesResponse {
                zones: zones
                    .into_iter()
                    .map(|z| pb::Zone {
                        name: z.name,
                        available: z.available,
                    })
                    .collect(),
            }
        }))
    }
    async fn reboot(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::reboot(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn set_metadata(&self, r: Request<pb::SetServerMetadataRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            let items = r.metadata.into_iter().collect();
            servers::set_metadata(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &items,
                r.replace,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn unset_metadata(&self, r: Request<pb::UnsetServerMetadataRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            servers::unset_metadata(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &r.keys,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn update(&self, r: Request<pb::UpdateServerRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            let changes = servers::ServerChanges {
                name: r.name,
                access_ipv4: r.access_ipv4,
                access_ipv6: r.access_ipv6,
            };
            servers::update(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &changes,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn resize(&self, r: Request<pb::ResizeServerRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            resize::resize(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                &r.flavor,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn confirm_resize(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            resize::run(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                resize::Step::Confirm,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn revert_resize(&self, r: Request<pb::ServerActionRequest>) -> R<pb::Server> {
        let r = r.into_inner();
        let go = async {
            resize::run(
                self,
                &owner(self, &r.project, ById::Server, &r.r#ref).await?,
                &r.r#ref,
                resize::Step::Revert,
            )
            .await
        };
        reply(go.await.map(|s| convert::server(&s)))
    }
    async fn create_image(&self, r: Request<pb::CreateServerImageRequest>) -> R<pb::Image> {
        let r = r.into_inner();
        let go = async {
            let p = owner(self, &r.project, ById::Server, &r.server).await?;
            let c = crate::operations::image_capture::Capture {
                name: r.name,
                disk_format: r.disk_format,
                visibility: String::new(),
                properties: r.properties.into_iter().collect(),
            };
            crate::operations::image_capture::from_server(self, &p, &r.server, c)
                .await
                .map(|i| convert::image_for(&i, &p))
        };
        reply(go.await)
    }
}
