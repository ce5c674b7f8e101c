//! The connection to the nubo API and the translation of gRPC failures into
//! the one-line errors an operator reads.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use nubo_common::proto::{
    audit_client::AuditClient, identity_client::IdentityClient, quotas_client::QuotasClient,
    tokens_client::TokensClient,
};
use nubo_common::proto::{
    cluster_client::ClusterClient, flavors_client::FlavorsClient,
    floating_ips_client::FloatingIpsClient, images_client::ImagesClient,
    keypairs_client::KeypairsClient, migrations_client::MigrationsClient,
    networks_client::NetworksClient, nodes_client::NodesClient, ports_client::PortsClient,
    routers_client::RoutersClient, security_groups_client::SecurityGroupsClient,
    server_groups_client::ServerGroupsClient, servers_client::ServersClient, DeleteRequest,
    GetRequest, ListRequest,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Largest page the API serves; lists ask for full pages to make few calls.
pub const PAGE_SIZE: u32 = 1000;

/// The channel every authenticated call goes through.
pub type Chan = InterceptedService<Channel, AuthHeader>;

/// Adds `authorization: Bearer <token>` to every call when a token is
/// known: `NUBO_TOKEN`, else the file written by `nubo login`.
#[derive(Clone, Debug, Default)]
pub struct AuthHeader(Option<MetadataValue<Ascii>>);

impl AuthHeader {
    /// The token from `NUBO_TOKEN` or [`token_path`].
    pub fn from_env() -> Result<Self> {
        let token = match std::env::var("NUBO_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => token_path()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        Ok(Self(match token {
            None => None,
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                anyhow!("the token is not printable ASCII; run `nubo login` again")
            })?),
        }))
    }
}

impl Interceptor for AuthHeader {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Where `nubo login` keeps the token: `$XDG_CONFIG_HOME/nubo/token`, else
/// `~/.config/nubo/token`.
pub fn token_path() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if !d.is_empty() => std::path::PathBuf::from(d),
        _ => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("nubo").join("token"))
}

/// A connected API client plus the request context (project).
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    auth: AuthHeader,
    endpoint: String,
    /// Project sent with every request ("" = the server's default project).
    pub project: String,
}

impl Api {
    /// Connects to `endpoint` (e.g. `https://10.0.0.10:7400`); an
    /// `https://` endpoint needs `ca_cert` (PEM: the cluster's CA, e.g.
    /// `ca.crt` of `scripts/make-certs.sh`) to verify the coordinator.
    pub async fn connect(
        endpoint: &str,
        project: String,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Self> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("invalid endpoint {endpoint:?}: expected http://HOST:PORT");
        }
        let mut ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| anyhow!("invalid endpoint {endpoint:?}: {}", root_cause(&e)))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if endpoint.starts_with("https://") {
            let Some(p) = ca_cert else {
                bail!(
                    "{endpoint} is https: give the cluster's CA certificate with --ca-cert or NUBO_CA_CERT"
                );
            };
            let pem = std::fs::read(p)
                .map_err(|e| anyhow!("reading the CA certificate {}: {e}", p.display()))?;
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            ep = ep
                .tls_config(tls)
                .map_err(|e| anyhow!("TLS setup for {endpoint}: {}", root_cause(&e)))?;
        } else if ca_cert.is_some() {
            bail!("--ca-cert needs an https:// endpoint (got {endpoint})");
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| unreachable_error(endpoint, &e))?;
        Ok(Self {
            channel,
            auth: AuthHeader::from_env()?,
            endpoint: endpoint.to_string(),
            project,
        })
    }

    /// Converts a failed call into the error the user sees.
    pub fn error(&self, status: Status) -> anyhow::Error {
        status_error(&self.endpoint, &status)
    }

    /// Flavors service.
    pub fn flavors(&self) -> FlavorsClient<Chan> {
        FlavorsClient::new(self.chan())
    }
    /// Images service.
    pub fn images(&self) -> ImagesClient<Chan> {
        ImagesClient::new(self.chan())
    }
    /// The channel, sending the token (for services without a helper here).
    pub fn channel(&self) -> Chan {
        self.chan()
    }

    fn chan(&self) -> Chan {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    /// Tokens service (needs no token).
    pub fn tokens(&self) -> TokensClient<Channel> {
        TokensClient::new(self.channel.clone())
    }
    /// Quotas service.
    pub fn quotas(&self) -> QuotasClient<Chan> {
        QuotasClient::new(self.chan())
    }
    /// Audit service.
    pub fn audit(&self) -> AuditClient<Chan> {
        AuditClient::new(self.chan())
    }
    /// Identity service.
    pub fn identity(&self) -> IdentityClient<Chan> {
        IdentityClient::new(self.chan())
    }
    /// Networks service.
    pub fn networks(&self) -> NetworksClient<Chan> {
        NetworksClient::new(self.chan())
    }
    /// Ports service.
    pub fn ports(&self) -> PortsClient<Chan> {
        PortsClient::new(self.chan())
    }
    /// Security groups service.
    pub fn secgroups(&self) -> SecurityGroupsClient<Chan> {
        SecurityGroupsClient::new(self.chan())
    }
    /// Keypairs service.
    pub fn keypairs(&self) -> KeypairsClient<Chan> {
        KeypairsClient::new(self.chan())
    }
    /// Server groups service.
    pub fn server_groups(&self) -> ServerGroupsClient<Chan> {
        ServerGroupsClient::new(self.chan())
    }
    /// Routers service.
    pub fn routers(&self) -> RoutersClient<Chan> {
        RoutersClient::new(self.chan())
    }
    /// Floating IPs service.
    pub fn floating_ips(&self) -> FloatingIpsClient<Chan> {
        FloatingIpsClient::new(self.chan())
    }
    /// Servers service.
    pub fn servers(&self) -> ServersClient<Chan> {
        ServersClient::new(self.chan())
    }
    /// Nodes service.
    pub fn nodes(&self) -> NodesClient<Chan> {
        NodesClient::new(self.chan())
    }

    /// Migrations service.
    pub fn migrations(&self) -> MigrationsClient<Chan> {
        MigrationsClient::new(self.chan())
    }

    /// Cluster service.
    pub fn cluster(&self) -> ClusterClient<Chan> {
        ClusterClient::new(self.chan())
    }

    /// A `Get` request for `r` (id or name) in this project.
    pub fn get_req(&self, r: &str) -> GetRequest {
        GetRequest {
            r#ref: r.to_string(),
            project: self.project.clone(),
        }
    }

    /// A `Delete` request for `r` (id or name) in this project.
    pub fn delete_req(&self, r: &str) -> DeleteRequest {
        DeleteRequest {
            r#ref: r.to_string(),
            project: self.project.clone(),
        }
    }

    /// Lists every item of a kind, following pagination to the end.
    /// `fetch(request)` calls the kind's `List` and returns the page's items
    /// and `next_page_token`.
    pub async fn list_all<T, F, Fut>(&self, all_projects: bool, mut fetch: F) -> Result<Vec<T>>
    where
        F: FnMut(ListRequest) -> Fut,
        Fut: Future<Output = std::result::Result<(Vec<T>, String), Status>>,
    {
        let base = ListRequest {
            page_size: PAGE_SIZE,
            page_token: String::new(),
            project: self.project.clone(),
            all_projects,
        };
        all_pages(|page_token| {
            let page = fetch(ListRequest {
                page_token,
                ..base.clone()
            });
            async move { page.await.map_err(|s| self.error(s)) }
        })
        .await
    }
}

/// Unwraps a tonic response, turning a failure into the user-facing error.
pub trait Call<T> {
    /// The response body, or the one-line error.
    fn or_fail(self, api: &Api) -> Result<T>;
}

impl<T> Call<T> for std::result::Result<tonic::Response<T>, Status> {
    fn or_fail(self, api: &Api) -> Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| api.error(s))
    }
}

/// Follows `next_page_token` until the last page and returns every item.
/// `fetch(token)` returns one page and the next token ("" = done).
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token.clone()).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        if next == token {
            bail!("the server returned the same page token twice ({next:?}); refusing to loop");
        }
        token = next;
    }
}

/// The error for a gRPC status: the server's message on one line, or the
/// "cannot reach" sentence when the failure is the connection itself.
pub fn status_error(endpoint: &str, status: &Status) -> anyhow::Error {
    if let Some(src) = status.source() {
        if status.code() == Code::Unavailable {
            return unreachable_error(endpoint, src);
        }
        if src.downcast_ref::<tonic::transport::Error>().is_some() {
            // No answer from the API: the connection broke (e.g. a TLS
            // coordinator answering plain text with an alert).
            let hint = if endpoint.starts_with("http://") {
                "; a coordinator serving TLS breaks plain-text connections: use its https:// endpoint and --ca-cert"
            } else {
                ""
            };
            return anyhow!(
                "the connection to the nubo API at {endpoint} failed: {}{hint}",
                root_cause(src)
            );
        }
    }
    let msg = one_line(status.message());
    if msg.is_empty() {
        anyhow!(
            "the nubo API returned {:?} without a message",
            status.code()
        )
    } else {
        anyhow!(msg)
    }
}

/// "cannot reach the nubo API at URL: REASON (set --endpoint or NUBO_ENDPOINT)"
pub fn unreachable_error(endpoint: &str, err: &(dyn StdError + 'static)) -> anyhow::Error {
    anyhow!(
        "cannot reach the nubo API at {endpoint}: {} (set --endpoint or NUBO_ENDPOINT)",
        root_cause(err)
    )
}

/// The most specific reason in an error chain, phrased for people:
/// `connection refused` rather than `Connection refused (os error 111)`.
fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cur: &(dyn StdError + 'static) = err;
    loop {
        if let Some(io) = cur.downcast_ref::<io::Error>() {
            return io_reason(io);
        }
        match cur.source() {
            Some(next) => cur = next,
            None => return one_line(&cur.to_string()),
        }
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::TimedOut => "connection timed out".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => {
            // Strip the " (os error N)" suffix std adds.
            let s = e.to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            one_line(&s)
        }
    }
}

/// Collapses whitespace runs (including newlines) into single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn all_pages_follows_tokens_to_the_end() {
        let calls = AtomicUsize::new(0);
        let items = all_pages(|token| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(match token.as_str() {
                    "" => (vec![1, 2], "p2".to_string()),
                    "p2" => (vec![3], "p3".to_string()),
                    "p3" => (vec![4], String::new()),
                    other => panic!("unexpected token {other}"),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3, 4]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn all_pages_refuses_a_token_loop() {
        let err = all_pages(|_token| async { Ok((vec![1], "same".to_string())) })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("same page token"), "{err}");
    }

    #[test]
    fn server_messages_become_one_line() {
        let e = status_error(
            "http://x",
            &Status::not_found("flavor \"m9.huge\"\n not found"),
        );
        assert_eq!(e.to_string(), "flavor \"m9.huge\" not found");
        let e = status_error("http://x", &Status::new(Code::Internal, ""));
        assert_eq!(
            e.to_string(),
            "the nubo API returned Internal without a message"
        );
    }

    #[test]
    fn io_errors_are_phrased_for_people() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            unreachable_error("http://127.0.0.1:1", &refused).to_string(),
            "cannot reach the nubo API at http://127.0.0.1:1: connection refused \
             (set --endpoint or NUBO_ENDPOINT)"
        );
        let other = io::Error::other("name resolution\nfailed");
        assert_eq!(root_cause(&other), "name resolution failed");
    }
}
