//! Unit tests of every path, with the caller identity injected by hand.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use nubo_netid::MacAddr;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::router;
use crate::caller::CallerIdentity;
use crate::instance::{InstanceMeta, InstanceTable};

const BRIDGE: &str = "nb-7";
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 6);
const MAC_A: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0, 0, 5]);
const MAC_B: MacAddr = MacAddr([0xfa, 0x16, 0x3e, 0, 0, 6]);

fn instance_a() -> InstanceMeta {
    let mut meta = InstanceMeta::new("aaaaaaaa-0000-4000-8000-000000000001", IP_A, MAC_A);
    meta.name = "web-1".into();
    meta.hostname = "web-1.example".into();
    meta.project_id = "proj-1".into();
    meta.availability_zone = "zone-a".into();
    meta.public_keys = vec![
        ("alice".into(), "ssh-ed25519 AAAAalice alice@x".into()),
        ("bob".into(), "ssh-rsa AAAAbob bob@y".into()),
    ];
    meta.user_data = Some(b"#cloud-config\nhostname: web-1\n".to_vec());
    meta.network_data = json!({"links": [{"id": "tap1"}], "networks": [], "services": []});
    meta.vendor_data = json!({"cloud-init": "#cloud-config\n"});
    meta.launch_index = 2;
    meta.meta.insert("role".into(), "web".into());
    meta.instance_type = Some("m1.small".into());
    meta
}

fn instance_b() -> InstanceMeta {
    // No keys, no user data, null documents.
    InstanceMeta::new("bbbbbbbb-0000-4000-8000-000000000002", IP_B, MAC_B)
}

fn app() -> Router {
    let table = InstanceTable::new();
    table.insert(BRIDGE, instance_a());
    table.insert(BRIDGE, instance_b());
    router(Arc::new(table))
}

fn identity(ip: Ipv4Addr, mac: MacAddr) -> CallerIdentity {
    CallerIdentity {
        bridge: BRIDGE.into(),
        ip,
        mac: Some(mac),
    }
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

async fn send_request(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status,
        content_type,
        headers,
        body,
    }
}

async fn call_as(caller: Option<CallerIdentity>, method: Method, path: &str) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .expect("request");
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    send_request(app(), request).await
}

async fn get_a(path: &str) -> Reply {
    call_as(Some(identity(IP_A, MAC_A)), Method::GET, path).await
}

async fn get_b(path: &str) -> Reply {
    call_as(Some(identity(IP_B, MAC_B)), Method::GET, path).await
}

fn assert_ok_text(reply: &Reply, expected: &str) {
    assert_eq!(reply.status, StatusCode::OK, "body: {}", reply.text());
    assert_eq!(reply.text(), expected);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
}

#[tokio::test]
async fn openstack_version_listing() {
    let expected = "2012-08-10\n2013-04-04\n2013-10-17\n2015-10-15\n2016-06-30\n\
                    2016-10-06\n2017-02-22\n2018-08-27\n2020-10-14\nlatest";
    assert_ok_text(&get_a("/openstack").await, expected);
    assert_ok_text(&get_a("/openstack/").await, expected);
}

#[tokio::test]
async fn openstack_version_directory() {
    let with_user_data =
        "meta_data.json\nnetwork_data.json\nuser_data\nvendor_data.json\nvendor_data2.json";
    assert_ok_text(&get_a("/openstack/latest").await, with_user_data);
    assert_ok_text(&get_a("/openstack/2018-08-27/").await, with_user_data);
    assert_ok_text(
        &get_b("/openstack/latest/").await,
        "meta_data.json\nnetwork_data.json\nvendor_data.json\nvendor_data2.json",
    );
    assert_eq!(
        get_a("/openstack/1999-01-01/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openstack_meta_data_json() {
    for version in ["latest", "2012-08-10", "2018-08-27", "2020-10-14"] {
        let reply = get_a(&format!("/openstack/{version}/meta_data.json")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            reply.json(),
            json!({
                "uuid": "aaaaaaaa-0000-4000-8000-000000000001",
                "name": "web-1",
                "hostname": "web-1.example",
                "project_id": "proj-1",
                "availability_zone": "zone-a",
                "launch_index": 2,
                "public_keys": {
                    "alice": "ssh-ed25519 AAAAalice alice@x",
                    "bob": "ssh-rsa AAAAbob bob@y"
                },
                "keys": [
                    {"name": "alice", "type": "ssh", "data": "ssh-ed25519 AAAAalice alice@x"},
                    {"name": "bob", "type": "ssh", "data": "ssh-rsa AAAAbob bob@y"}
                ],
                "meta": {"role": "web"},
                "devices": []
            })
        );
    }
    let b = get_b("/openstack/latest/meta_data.json").await.json();
    assert_eq!(b["uuid"], "bbbbbbbb-0000-4000-8000-000000000002");
    assert_eq!(b["public_keys"], json!({}));
    assert_eq!(b["keys"], json!([]));
    assert_eq!(
        get_a("/openstack/2011-01-01/meta_data.json").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openstack_user_data() {
    let reply = get_a("/openstack/latest/user_data").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, b"#cloud-config\nhostname: web-1\n");
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        get_b("/openstack/latest/user_data").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn openstack_network_and_vendor_data() {
    assert_eq!(
        get_a("/openstack/latest/network_data.json").await.json(),
        json!({"links": [{"id": "tap1"}], "networks": [], "services": []})
    );
    assert_eq!(
        get_a("/openstack/latest/vendor_data.json").await.json(),
        json!({"cloud-init": "#cloud-config\n"})
    );
    assert_eq!(
        get_a("/openstack/latest/vendor_data2.json").await.json(),
        json!({})
    );
    for file in ["network_data.json", "vendor_data.json", "vendor_data2.json"] {
        let reply = get_b(&format!("/openstack/2016-10-06/{file}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{file}");
        assert_eq!(reply.json(), json!({}), "{file}");
    }
    assert_eq!(
        get_a("/openstack/latest/password").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ec2_root_and_version_directories() {
    assert_ok_text(&get_a("/").await, "2009-04-04\nlatest");
    assert_ok_text(&get_a("/latest").await, "meta-data\nuser-data");
    assert_ok_text(&get_a("/2009-04-04/").await, "meta-data\nuser-data");
    assert_ok_text(&get_b("/latest/").await, "meta-data");
    assert_eq!(get_a("/2016-09-02/").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ec2_meta_data_listing() {
    let expected_a = "ami-launch-index\nhostname\ninstance-id\ninstance-type\n\
                      local-hostname\nlocal-ipv4\nmac\nplacement/\npublic-keys/";
    assert_ok_text(&get_a("/latest/meta-data/").await, expected_a);
    assert_ok_text(&get_a("/2009-04-04/meta-data").await, expected_a);
    assert_ok_text(
        &get_b("/latest/meta-data/").await,
        "ami-launch-index\nhostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nmac\nplacement/",
    );
    assert_eq!(
        get_a("/2018-09-24/meta-data/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ec2_meta_data_leaves() {
    for version in ["latest", "2009-04-04"] {
        let cases = [
            ("instance-id", "aaaaaaaa-0000-4000-8000-000000000001"),
            ("local-ipv4", "10.0.0.5"),
            ("hostname", "web-1.example"),
            ("local-hostname", "web-1.example"),
            ("mac", "fa:16:3e:00:00:05"),
            ("ami-launch-index", "2"),
            ("instance-type", "m1.small"),
            ("placement", "availability-zone"),
            ("placement/", "availability-zone"),
            ("placement/availability-zone", "zone-a"),
        ];
        for (path, expected) in cases {
            assert_ok_text(
                &get_a(&format!("/{version}/meta-data/{path}")).await,
                expected,
            );
        }
    }
    assert_ok_text(&get_b("/latest/meta-data/local-ipv4").await, "10.0.0.6");
    assert_eq!(
        get_b("/latest/meta-data/instance-type").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_a("/latest/meta-data/no-such-thing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ec2_public_keys() {
    assert_ok_text(
        &get_a("/latest/meta-data/public-keys/").await,
        "0=alice\n1=bob",
    );
    assert_ok_text(
        &get_a("/latest/meta-data/public-keys").await,
        "0=alice\n1=bob",
    );
    assert_ok_text(
        &get_a("/latest/meta-data/public-keys/1/").await,
        "openssh-key",
    );
    assert_ok_text(
        &get_a("/2009-04-04/meta-data/public-keys/0/openssh-key").await,
        "ssh-ed25519 AAAAalice alice@x",
    );
    assert_ok_text(
        &get_a("/latest/meta-data/public-keys/1/openssh-key").await,
        "ssh-rsa AAAAbob bob@y",
    );
    for bad in [
        "public-keys/2/openssh-key",
        "public-keys/01/openssh-key",
        "public-keys/+1/openssh-key",
        "public-keys/-1",
        "public-keys/0/other",
        "public-keys/99999999999999999999999/openssh-key",
    ] {
        assert_eq!(
            get_a(&format!("/latest/meta-data/{bad}")).await.status,
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
    assert_eq!(
        get_b("/latest/meta-data/public-keys/").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ec2_user_data() {
    let reply = get_a("/latest/user-data").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, b"#cloud-config\nhostname: web-1\n");
    assert_eq!(get_a("/2009-04-04/user-data").await.status, StatusCode::OK);
    assert_eq!(
        get_b("/latest/user-data").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn imdsv2_token() {
    let reply = call_as(
        Some(identity(IP_A, MAC_A)),
        Method::PUT,
        "/latest/api/token",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let token = reply.text();
    assert_eq!(token.len(), 32);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        reply.headers["x-aws-ec2-metadata-token-ttl-seconds"],
        "21600"
    );

    let mut request = Request::builder()
        .method(Method::PUT)
        .uri("/latest/api/token")
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .body(Body::empty())
        .expect("request");
    request.extensions_mut().insert(identity(IP_A, MAC_A));
    let reply = send_request(app(), request).await;
    assert_eq!(reply.headers["x-aws-ec2-metadata-token-ttl-seconds"], "60");

    // A token is never required.
    let mut request = Request::builder()
        .uri("/latest/meta-data/instance-id")
        .header("X-aws-ec2-metadata-token", "garbage")
        .body(Body::empty())
        .expect("request");
    request.extensions_mut().insert(identity(IP_A, MAC_A));
    assert_eq!(send_request(app(), request).await.status, StatusCode::OK);

    // The token endpoint is PUT-only.
    assert_eq!(
        get_a("/latest/api/token").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn head_is_served_without_body() {
    let reply = call_as(
        Some(identity(IP_A, MAC_A)),
        Method::HEAD,
        "/openstack/latest/meta_data.json",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn other_methods_are_refused() {
    for method in [Method::POST, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        for path in [
            "/openstack/latest/meta_data.json",
            "/latest/api/token",
            "/nope",
        ] {
            let reply = call_as(Some(identity(IP_A, MAC_A)), method.clone(), path).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(reply.headers[header::ALLOW], "GET, HEAD");
        }
    }
    let reply = call_as(
        Some(identity(IP_A, MAC_A)),
        Method::PUT,
        "/openstack/latest/meta_data.json",
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    for path in [
        "/nope",
        "/openstack/latest/meta_data.json/x",
        "/latest/nope",
    ] {
        let reply = get_a(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.text(), "not found\n");
    }
}

#[tokio::test]
async fn unidentified_or_unknown_callers_get_404() {
    let cases = [
        None,
        Some(identity(Ipv4Addr::new(10, 0, 0, 99), MAC_A)),
        Some(identity(IP_A, MAC_B)),
        Some(CallerIdentity {
            bridge: BRIDGE.into(),
            ip: IP_A,
            mac: None,
        }),
        Some(CallerIdentity {
            bridge: "nb-8".into(),
            ip: IP_A,
            mac: Some(MAC_A),
        }),
    ];
    for caller in cases {
        for path in [
            "/openstack/latest/meta_data.json",
            "/latest/meta-data/instance-id",
            "/",
        ] {
            let reply = call_as(caller.clone(), Method::GET, path).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{caller:?} {path}");
            assert_eq!(reply.text(), "not found\n");
        }
    }
}

#[tokio::test]
async fn guest_supplied_headers_do_not_change_the_caller() {
    let mut request = Request::builder()
        .uri("/latest/meta-data/instance-id")
        .header("X-Forwarded-For", "10.0.0.6")
        .header("X-Instance-ID", "bbbbbbbb-0000-4000-8000-000000000002")
        .header("X-Tenant-ID", "other")
        .header("X-Real-IP", "10.0.0.6")
        .header(header::HOST, "10.0.0.6")
        .body(Body::empty())
        .expect("request");
    request.extensions_mut().insert(identity(IP_A, MAC_A));
    assert_ok_text(
        &send_request(app(), request).await,
        "aaaaaaaa-0000-4000-8000-000000000001",
    );
}

#[tokio::test]
async fn table_updates_are_seen_immediately() {
    let table = InstanceTable::new();
    let app = router(Arc::new(table.clone()));
    let request = || {
        let mut request = Request::builder()
            .uri("/latest/meta-data/instance-id")
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(identity(IP_A, MAC_A));
        request
    };
    assert_eq!(
        send_request(app.clone(), request()).await.status,
        StatusCode::NOT_FOUND
    );
    table.insert(BRIDGE, instance_a());
    assert_ok_text(
        &send_request(app.clone(), request()).await,
        "aaaaaaaa-0000-4000-8000-000000000001",
    );
    table.remove(BRIDGE, IP_A);
    assert_eq!(
        send_request(app, request()).await.status,
        StatusCode::NOT_FOUND
    );
}

/// An in-memory password store.
#[derive(Default)]
struct MemPasswords(std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>);

impl crate::PasswordStore for MemPasswords {
    fn get<'a>(&'a self, uuid: &'a str) -> crate::PasswordFuture<'a, Vec<u8>> {
        let p = self.0.lock().expect("lock").get(uuid).cloned();
        Box::pin(async move { Ok(p.unwrap_or_default()) })
    }
    fn set<'a>(&'a self, uuid: &'a str, password: Vec<u8>) -> crate::PasswordFuture<'a, ()> {
        let mut m = self.0.lock().expect("lock");
        let r = if m.contains_key(uuid) {
            Err(crate::PasswordError::AlreadySet)
        } else {
            m.insert(uuid.to_string(), password);
            Ok(())
        };
        Box::pin(async move { r })
    }
}

#[tokio::test]
async fn guests_post_their_password_once() {
    let store: Arc<dyn crate::PasswordStore> = Arc::new(MemPasswords::default());
    let app = app().layer(axum::Extension(store));
    let call = |who: (Ipv4Addr, MacAddr), method: Method, body: Vec<u8>| {
        let mut r = Request::builder()
            .method(method)
            .uri("/openstack/latest/password")
            .body(Body::from(body))
            .expect("request");
        r.extensions_mut().insert(identity(who.0, who.1));
        send_request(app.clone(), r)
    };
    let a = (IP_A, MAC_A);
    assert_eq!(call(a, Method::GET, vec![]).await.body, b"");
    // Too large: refused, nothing stored.
    let big = call(a, Method::POST, vec![b'x'; crate::MAX_PASSWORD_BYTES + 1]).await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST);
    assert_eq!(call(a, Method::GET, vec![]).await.body, b"");
    let ok = call(a, Method::POST, vec![b'p'; crate::MAX_PASSWORD_BYTES]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        call(a, Method::GET, vec![]).await.body,
        vec![b'p'; crate::MAX_PASSWORD_BYTES]
    );
    // Write-once; the other instance has its own.
    let again = call(a, Method::POST, b"other".to_vec()).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(call((IP_B, MAC_B), Method::GET, vec![]).await.body, b"");
    // Without a store the route is not there.
    let bare = call_as(
        Some(identity(IP_A, MAC_A)),
        Method::GET,
        "/openstack/latest/password",
    )
    .await;
    assert_eq!(bare.status, StatusCode::NOT_FOUND);
}
