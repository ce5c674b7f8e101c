//! The agent's image download as production runs it: TLS to a coordinator
//! started without `--insecure` (the CA from `api_ca_cert`) and a token
//! issued for the node's application credential (`api_credential_file`);
//! refused without the credential or the CA, and refused — by the agent —
//! when the coordinator's certificate is from another CA or for another
//! name.
//!
//! Needs the binaries: `cargo build --bins`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use nubo_agent::config::ApiAuth;
use nubo_agent::storage::images::{FetchError, ImageFetcher};
use nubo_common::model::Image;
use nubo_tests::secure::SecureCloud;

#[test]
fn image_download_over_tls_with_the_node_credential() {
    let cloud = SecureCloud::start().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let file = cloud.dir().join("disk.raw");
    std::fs::write(&file, &data).unwrap();
    let shown = cloud
        .admin
        .json(&[
            "image",
            "create",
            "tiny",
            "--disk-format",
            "raw",
            "--file",
            &file.display().to_string(),
        ])
        .unwrap();
    assert_eq!(shown["status"], "active", "{shown}");
    let id = shown["id"].as_str().unwrap().to_string();
    let cred = cloud.node_credential().unwrap();
    let ca = cloud.etcd.certs().ca();
    let endpoint = cloud.coordinator.endpoint();
    // A second coordinator of the cloud, its certificate (from the cluster
    // CA) valid only for other.example.
    let (crt, key) = cloud
        .etcd
        .certs()
        .server_cert_for("coordinator-other-name", "DNS:other.example")
        .unwrap();
    let misnamed = cloud.coordinator_with_cert("secure-2", crt, key).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kv = cloud.etcd.client("coordinator").await.unwrap();
        let key = nubo_common::keys::image(&id.parse().unwrap());
        let resp = kv.get(key.as_str(), None).await.unwrap();
        let img: Image = nubo_common::model::decode(&key, resp.kvs()[0].value()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let fetcher = ImageFetcher::new(endpoint.clone(), dir.path()).with_auth(ApiAuth {
            ca_cert: Some(ca.clone()),
            credential_file: Some(cred.clone()),
        });
        let local = fetcher.ensure(&img).await.unwrap();
        assert_eq!(std::fs::read(&local.disk).unwrap(), data);

        // Without the credential the coordinator refuses; without the CA
        // the agent refuses the coordinator.
        for (auth, want) in [
            (
                ApiAuth {
                    ca_cert: Some(ca.clone()),
                    credential_file: None,
                },
                "token",
            ),
            (
                ApiAuth {
                    ca_cert: None,
                    credential_file: Some(cred.clone()),
                },
                "api_ca_cert",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let f = ImageFetcher::new(endpoint.clone(), dir.path()).with_auth(auth);
            match f.ensure(&img).await {
                Err(e @ FetchError::Download { .. }) => {
                    assert!(e.to_string().contains(want), "{e}")
                }
                other => panic!("expected a refused download, got {other:?}"),
            }
        }

        // The agent refuses a coordinator certificate from another CA (a
        // make-certs.sh CA too, same name CN=nubo-ca: its signature does
        // not verify)…
        let other = nubo_tests::tls::Certs::generate(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = ImageFetcher::new(endpoint.clone(), dir.path()).with_auth(ApiAuth {
            ca_cert: Some(other.ca()),
            credential_file: Some(cred.clone()),
        });
        refused(
            f.ensure(&img).await,
            "invalid peer certificate: BadSignature",
        );
        // …and one of the cluster CA for another name (reached as
        // 127.0.0.1, valid only for other.example).
        let misnamed = misnamed.endpoint();
        let dir = tempfile::tempdir().unwrap();
        let f = ImageFetcher::new(misnamed, dir.path()).with_auth(ApiAuth {
            ca_cert: Some(ca.clone()),
            credential_file: Some(cred.clone()),
        });
        refused(
            f.ensure(&img).await,
            "invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
        );
    });
}

/// A download refused with `want` in its message (and nothing cached).
fn refused(r: Result<nubo_agent::storage::images::LocalImage, FetchError>, want: &str) {
    match r {
        Err(e @ FetchError::Download { .. }) => {
            assert!(e.to_string().contains(want), "no {want:?} in: {e}")
        }
        other => panic!("expected a refused download, got {other:?}"),
    }
}
