//! The gRPC API over TLS (`--tls-cert/--tls-key`) and etcd over mutual TLS
//! (`[etcd_tls]`), with `auth = "token"`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use nubo_common::model::UserName;
use nubo_common::proto as pb;
use nubo_coordinator::api::{bootstrap, Bootstrapped};
use nubo_coordinator::{AuthMode, Config, TlsPaths};
use nubo_identity::Passwords;
use nubo_tests::tls::TlsEtcd;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_over_tls_with_etcd_over_mtls() {
    let etcd = TlsEtcd::start().unwrap();
    let certs = etcd.certs();
    let (cert, key) = certs.client("coordinator");
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.etcd_tls = Some(TlsPaths {
        ca: Some(certs.ca()),
        cert: Some(cert),
        key: Some(key),
    });
    cfg.tls = Some((
        certs.dir().join("coordinator-server.crt"),
        certs.dir().join("coordinator-server.key"),
    ));
    cfg.auth = AuthMode::Token;
    // The production default: no development mode.
    cfg.insecure = false;
    let client = nubo_coordinator::connect_etcd(&cfg).await.unwrap();
    let store = client;
    let admin = UserName::new("admin").unwrap();
    let cheap = Passwords::with_params(64, 1, 1).unwrap();
    assert_eq!(
        bootstrap(&store, &admin, "pw", &cheap).await.unwrap(),
        Bootstrapped::Created
    );
    let c = nubo_coordinator::start(cfg).await.unwrap();
    assert!(c.endpoint().starts_with("https://"));

    let ca = std::fs::read(certs.ca()).unwrap();
    let ch = Channel::from_shared(c.endpoint())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let t = pb::tokens_client::TokensClient::new(ch.clone())
        .issue(pb::IssueTokenRequest {
            user: "admin".into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut r = tonic::Request::new(pb::Empty {});
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", t.token).parse().unwrap(),
    );
    pb::cluster_client::ClusterClient::new(ch)
        .status(r)
        .await
        .unwrap();

    // Plain HTTP/2 is refused: the server answers the client preface with
    // a fatal TLS alert record (content type 21, TLS 1.2 record version,
    // length 2, level 2 = fatal), and a plain-text gRPC call fails in the
    // transport (hyper/h2), never with an answer from the API.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(c.grpc_addr()).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut record = [0u8; 7];
        tcp.read_exact(&mut record).await.unwrap();
        assert_eq!(
            (record[0], record[1], record[3], record[4], record[5]),
            (21, 3, 0, 2, 2),
            "not a fatal TLS alert: {record:?}"
        );
    }
    let plain = format!("http://{}", c.grpc_addr());
    let res = async {
        let ch = Channel::from_shared(plain)?.connect().await?;
        pb::tokens_client::TokensClient::new(ch)
            .issue(pb::IssueTokenRequest::default())
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    let err = format!("{:?}", res.expect_err("plain text served"));
    assert!(
        err.contains("tonic::transport::Error(Transport"),
        "not refused in the transport: {err}"
    );
    c.shutdown().await.unwrap();
}

/// Without `insecure` (the default outside tests), a coordinator refuses to
/// serve plain text or without authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_default_refuses_plain_text_and_no_auth() {
    let etcd = nubo_tests::Etcd::start().unwrap();
    let mut cfg = Config::for_tests(etcd.endpoint());
    cfg.insecure = false;
    cfg.auth = AuthMode::Token;
    let err = |r: Result<nubo_coordinator::Coordinator, nubo_coordinator::ServeError>| match r {
        Ok(_) => panic!("an insecure configuration started"),
        Err(e) => e.to_string(),
    };
    let e = err(nubo_coordinator::start(cfg.clone()).await);
    assert!(e.contains("--tls-cert") && e.contains("--insecure"), "{e}");
    cfg.tls = Some(("/nonexistent.crt".into(), "/nonexistent.key".into()));
    cfg.auth = AuthMode::None;
    let e = err(nubo_coordinator::start(cfg).await);
    assert!(e.contains("--insecure"), "{e}");
}
