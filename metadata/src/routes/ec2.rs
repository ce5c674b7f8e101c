//! The EC2 layout: `/<version>/meta-data/...`, `/<version>/user-data` and
//! the IMDSv2 token endpoint.

use axum::extract::{Extension, Path};
use axum::http::{header::HeaderName, HeaderMap, HeaderValue};
use axum::response::Response;

use super::{listing, not_found, text, user_data, Caller};
use crate::instance::InstanceMeta;

/// Dated EC2 metadata versions served; `latest` is served in addition.
/// Only the oldest one is offered so cloud-init does not expect the
/// extended (network interfaces) tree of newer versions.
pub const EC2_VERSIONS: &[&str] = &["2009-04-04"];

const TOKEN_TTL_HEADER: HeaderName =
    HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const MAX_TOKEN_TTL_SECONDS: u32 = 21_600;

fn is_version(version: &str) -> bool {
    version == "latest" || EC2_VERSIONS.contains(&version)
}

/// `GET /`: the EC2 versions.
pub(super) async fn versions() -> Response {
    listing(EC2_VERSIONS.iter().copied().chain(["latest"]))
}

/// `GET /<version>/`.
pub(super) async fn version_dir(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    let mut entries = vec!["meta-data"];
    if meta.user_data.is_some() {
        entries.push("user-data");
    }
    listing(entries)
}

/// `GET /<version>/meta-data/`.
pub(super) async fn meta_data_root(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    render(meta_data_node(&meta, ""))
}

/// `GET /<version>/meta-data/<path>`.
pub(super) async fn meta_data(
    Extension(Caller(meta)): Extension<Caller>,
    Path((version, path)): Path<(String, String)>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    render(meta_data_node(&meta, &path))
}

/// `GET /<version>/user-data`.
pub(super) async fn user_data_file(
    Extension(Caller(meta)): Extension<Caller>,
    Path(version): Path<String>,
) -> Response {
    if !is_version(&version) {
        return not_found();
    }
    user_data(&meta)
}

/// `PUT /latest/api/token`: hands out an IMDSv2 session token. Tokens are
/// accepted but never required (the caller is known from the connection).
pub(super) async fn token(headers: HeaderMap) -> Response {
    let ttl = headers
        .get(&TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|ttl| (1..=MAX_TOKEN_TTL_SECONDS).contains(ttl))
        .unwrap_or(MAX_TOKEN_TTL_SECONDS);
    let token = format!("{:032x}", rand::random::<u128>());
    let mut response = text(token);
    response
        .headers_mut()
        .insert(TOKEN_TTL_HEADER, HeaderValue::from(ttl));
    response
}

/// A node of the `meta-data/` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory: its entries, sub-directories ending in `/`.
    Dir(Vec<String>),
    /// A leaf value.
    Leaf(String),
}

fn render(node: Option<Node>) -> Response {
    match node {
        Some(Node::Dir(entries)) => listing(entries),
        Some(Node::Leaf(value)) => text(value),
        None => not_found(),
    }
}

/// Looks up `path` (relative to `meta-data/`, trailing `/` optional) in the
/// instance's EC2 meta-data tree.
pub(crate) fn meta_data_node(meta: &InstanceMeta, path: &str) -> Option<Node> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let leaf = |s: &str| Some(Node::Leaf(s.to_owned()));
    match path {
        "" => {
            let mut entries = vec![
                "ami-launch-index",
                "hostname",
                "instance-id",
                "local-hostname",
                "local-ipv4",
                "mac",
                "placement/",
            ];
            if meta.instance_type.is_some() {
                entries.push("instance-type");
            }
            if !meta.public_keys.is_empty() {
                entries.push("public-keys/");
            }
            entries.sort_unstable();
            Some(Node::Dir(entries.into_iter().map(String::from).collect()))
        }
        "ami-launch-index" => leaf(&meta.launch_index.to_string()),
        "hostname" | "local-hostname" => leaf(&meta.hostname),
        "instance-id" => leaf(&meta.uuid),
        "instance-type" => meta.instance_type.as_deref().and_then(leaf),
        "local-ipv4" => leaf(&meta.local_ipv4.to_string()),
        "mac" => leaf(&meta.mac.to_string()),
        "placement" => Some(Node::Dir(vec!["availability-zone".into()])),
        "placement/availability-zone" => leaf(&meta.availability_zone),
        "public-keys" if !meta.public_keys.is_empty() => Some(Node::Dir(
            meta.public_keys
                .iter()
                .enumerate()
                .map(|(i, (name, _))| format!("{i}={name}"))
                .collect(),
        )),
        _ => public_key_node(meta, path.strip_prefix("public-keys/")?),
    }
}

/// `public-keys/<index>` and `public-keys/<index>/openssh-key`.
fn public_key_node(meta: &InstanceMeta, rest: &str) -> Option<Node> {
    let (index, file) = match rest.split_once('/') {
        Some((index, file)) => (index, Some(file)),
        None => (rest, None),
    };
    // Only canonical decimal indices ("0", "1", ... no "+1" or "01").
    if index.is_empty()
        || !index.bytes().all(|b| b.is_ascii_digit())
        || (index.len() > 1 && index.starts_with('0'))
    {
        return None;
    }
    let (_, key) = meta.public_keys.get(index.parse::<usize>().ok()?)?;
    match file {
        None => Some(Node::Dir(vec!["openssh-key".into()])),
        Some("openssh-key") => Some(Node::Leaf(key.clone())),
        Some(_) => None,
    }
}
