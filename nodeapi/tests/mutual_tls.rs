//! The node API over mutual TLS, end to end on loopback: certificates of a
//! test CA (rcgen), the real server loop and client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use axum::routing::get;
use nubo_common::NodeName;
use nubo_nodeapi::{ClientError, NodeApiAddr, NodeApiClient, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf of `ca` named `cn` with DNS names `sans`, written to `dir`.
fn leaf(ca: &Ca, dir: &Path, cn: &str, sans: &[&str]) -> TlsFiles {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{cn}.crt")),
        key: dir.join(format!("{cn}.key")),
    };
    std::fs::write(&files.ca, ca.cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

async fn body(client: &NodeApiClient, node: &str, label: &str) -> Result<String, ClientError> {
    let mut s = client
        .get(&NodeName::new(node).unwrap(), label, "/hello", None)
        .await?;
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().await {
        out.extend_from_slice(&c?);
    }
    Ok(String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn only_clients_of_the_cluster_ca_reach_only_the_node_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = ca();
    let node = leaf(&cluster, dir.path(), "nubo-node-n1", &["n1"]);
    let coordinator = leaf(&cluster, dir.path(), "coordinator", &[]);
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = leaf(&ca(), other_dir.path(), "coordinator", &[]);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hello", get(|| async { "hi from n1" }));
    let tls = node.server_config().unwrap();
    let srv = tokio::spawn(nubo_nodeapi::server::serve(listener, app, Some(tls)));
    let label = NodeApiAddr::label(addr, true);

    let client = NodeApiClient::with_tls(&coordinator).unwrap();
    assert_eq!(body(&client, "n1", &label).await.unwrap(), "hi from n1");

    // The certificate is n1's: dialled as n2, the client refuses it.
    let e = body(&client, "n2", &label).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");

    // A client of another CA is refused by the node (and refuses it).
    let e = body(&NodeApiClient::with_tls(&stranger).unwrap(), "n1", &label)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Io { .. }), "{e}");

    // No certificate at all: a TLS node API is refused with a clear error,
    // and a raw TLS-less request gets nothing back.
    let e = body(&NodeApiClient::plain(), "n1", &label)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NoClientCertificate { .. }), "{e}");
    let e = body(&NodeApiClient::plain(), "n1", &addr.to_string())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Io { .. }), "{e}");

    // A TLS client never talks plain text to a node.
    let e = body(&client, "n1", &addr.to_string()).await.unwrap_err();
    assert!(matches!(e, ClientError::TlsRequired { .. }), "{e}");

    // A client that connects and never handshakes does not block others.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let ok = tokio::time::timeout(Duration::from_secs(5), body(&client, "n1", &label)).await;
    assert_eq!(ok.unwrap().unwrap(), "hi from n1");
    srv.abort();
}
