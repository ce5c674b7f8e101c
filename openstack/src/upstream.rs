//! The coordinators' gRPC API as this front end reaches it: one channel,
//! typed clients that carry the caller's token.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use nubo_common::proto as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::ApiError;

/// Largest page asked of the gRPC API (lists are read to the end, then
/// paged here with `limit`/`marker`).
pub const PAGE_SIZE: u32 = 1000;

/// The gRPC channel plus how this front end is reached.
#[derive(Clone, Debug)]
pub struct Upstream {
    channel: Channel,
    /// The public base URL of this front end (`http://host:port`), the
    /// root of every catalog endpoint.
    pub public_url: Arc<str>,
}

/// Why the coordinators could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint is not a URL.
    #[error("invalid coordinator endpoint {0:?}")]
    Endpoint(String),
    /// Reading the CA certificate failed.
    #[error("reading the CA certificate {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// TLS setup or the connection failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` when the caller sent one, and
/// the request's id ([`crate::request_id`]) as the call's
/// (`x-nubo-request-id`).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>, Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.1 {
            req.metadata_mut().insert("x-nubo-request-id", v.clone());
        }
        Ok(req)
    }
}

/// A channel that sends the caller's token.
pub type Chan = InterceptedService<Channel, Bearer>;

impl Upstream {
    /// Connects (lazily) to the coordinators at `endpoint`; `https://`
    /// needs the cluster CA.
    pub fn new(
        endpoint: &str,
        ca_cert: Option<&std::path::Path>,
        public_url: &str,
    ) -> Result<Self, UpstreamError> {
        let mut ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|_| UpstreamError::Endpoint(endpoint.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|source| UpstreamError::Ca {
                path: path.display().to_string(),
                source,
            })?;
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|source| UpstreamError::Connect {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
        }
        Ok(Self {
            channel: ep.connect_lazy(),
            public_url: public_url.trim_end_matches('/').into(),
        })
    }

    /// A channel without a token (token issue).
    pub fn anonymous(&self) -> Channel {
        self.channel.clone()
    }

    /// A channel carrying the token of the request (`X-Auth-Token`); 401
    /// in the service's format when there is none.
    pub fn with_token(&self, headers: &HeaderMap) -> Result<Chan, ApiError> {
        let token = caller_token(headers).ok_or_else(ApiError::unauthenticated)?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ApiError::unauthenticated())?;
        let request_id = headers
            .get(crate::request_id::HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(InterceptedService::new(
            self.channel.clone(),
            Bearer(Some(value), request_id),
        ))
    }

    /// Servers.
    pub fn servers(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::servers_client::ServersClient<Chan>, ApiError> {
        Ok(pb::servers_client::ServersClient::new(self.with_token(h)?))
    }
    /// Flavors.
    pub fn flavors(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::flavors_client::FlavorsClient<Chan>, ApiError> {
        Ok(pb::flavors_client::FlavorsClient::new(self.with_token(h)?))
    }
    /// Images.
    pub fn images(&self, h: &HeaderMap) -> Result<pb::images_client::ImagesClient<Chan>, ApiError> {
        Ok(pb::images_client::ImagesClient::new(self.with_token(h)?))
    }
    /// Keypairs.
    pub fn keypairs(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::keypairs_client::KeypairsClient<Chan>, ApiError> {
        Ok(pb::keypairs_client::KeypairsClient::new(
            self.with_token(h)?,
        ))
    }
    /// Security groups.
    pub fn security_groups(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::security_groups_client::SecurityGroupsClient<Chan>, ApiError> {
        Ok(pb::security_groups_client::SecurityGroupsClient::new(
            self.with_token(h)?,
        ))
    }
    /// Image data.
    pub fn image_data(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::image_data_client::ImageDataClient<Chan>, ApiError> {
        Ok(pb::image_data_client::ImageDataClient::new(
            self.with_token(h)?,
        ))
    }
    /// Nodes (admin only in nubo).
    pub fn nodes(&self, h: &HeaderMap) -> Result<pb::nodes_client::NodesClient<Chan>, ApiError> {
        Ok(pb::nodes_client::NodesClient::new(self.with_token(h)?))
    }
    /// Migrations (admin only in nubo).
    pub fn migrations(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::migrations_client::MigrationsClient<Chan>, ApiError> {
        Ok(pb::migrations_client::MigrationsClient::new(
            self.with_token(h)?,
        ))
    }
    /// Quotas.
    pub fn quotas(&self, h: &HeaderMap) -> Result<pb::quotas_client::QuotasClient<Chan>, ApiError> {
        Ok(pb::quotas_client::QuotasClient::new(self.with_token(h)?))
    }
    /// Volumes.
    pub fn volumes(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::volumes_client::VolumesClient<Chan>, ApiError> {
        Ok(pb::volumes_client::VolumesClient::new(self.with_token(h)?))
    }
    /// Volume types.
    pub fn volume_types(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::volume_types_client::VolumeTypesClient<Chan>, ApiError> {
        Ok(pb::volume_types_client::VolumeTypesClient::new(
            self.with_token(h)?,
        ))
    }
    /// Ports.
    pub fn ports(&self, h: &HeaderMap) -> Result<pb::ports_client::PortsClient<Chan>, ApiError> {
        Ok(pb::ports_client::PortsClient::new(self.with_token(h)?))
    }
    /// Server groups.
    pub fn server_groups(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::server_groups_client::ServerGroupsClient<Chan>, ApiError> {
        Ok(pb::server_groups_client::ServerGroupsClient::new(
            self.with_token(h)?,
        ))
    }
    /// Routers.
    pub fn routers(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::routers_client::RoutersClient<Chan>, ApiError> {
        Ok(pb::routers_client::RoutersClient::new(self.with_token(h)?))
    }
    /// Floating IPs.
    pub fn floating_ips(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::floating_ips_client::FloatingIpsClient<Chan>, ApiError> {
        Ok(pb::floating_ips_client::FloatingIpsClient::new(
            self.with_token(h)?,
        ))
    }
    /// Networks.
    pub fn networks(
        &self,
        h: &HeaderMap,
    ) -> Result<pb::networks_client::NetworksClient<Chan>, ApiError> {
        Ok(pb::networks_client::NetworksClient::new(
            self.with_token(h)?,
        ))
    }
}

/// A `GetRequest` for `r` (an id or a unique name) in the caller's project.
pub fn get_req(r: String) -> pb::GetRequest {
    pb::GetRequest {
        r#ref: r,
        project: String::new(),
    }
}

/// A `DeleteRequest` for `r` in the caller's project.
pub fn delete_req(r: String) -> pb::DeleteRequest {
    pb::DeleteRequest {
        r#ref: r,
        project: String::new(),
    }
}

/// The caller's token: `X-Auth-Token` (what every OpenStack client sends).
pub fn caller_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Reads every page of a gRPC list: `call(page_token)` returns the items
/// and the next token ("" = done).
pub async fn all_pages<T, F, Fut>(mut call: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = call(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// Every item of a gRPC list that takes a `ListRequest`:
/// `list_all!(client, field, service)` calls `client.list` page after page
/// and returns `Result<Vec<_>, ApiError>` (the response's `field`);
/// `list_all!(client, field, service, first)` starts from the request
/// `first` (its project and `all_projects`).
#[macro_export]
macro_rules! list_all {
    ($client:expr, $field:ident, $service:expr) => {
        $crate::list_all!(
            $client,
            $field,
            $service,
            nubo_common::proto::ListRequest::default()
        )
    };
    ($client:expr, $field:ident, $service:expr, $first:expr) => {{
        let client = $client;
        let first: nubo_common::proto::ListRequest = $first;
        $crate::error::StatusExt::api(
            $crate::upstream::all_pages(|token| {
                let mut c = client.clone();
                let first = first.clone();
                async move {
                    let r = c
                        .list(nubo_common::proto::ListRequest {
                            page_size: $crate::upstream::PAGE_SIZE,
                            page_token: token,
                            ..first
                        })
                        .await?
                        .into_inner();
                    Ok((r.$field, r.next_page_token))
                }
            })
            .await,
            $service,
        )
    }};
}
