//! Images of servers whose root disk is on their node's local storage
//! (`Servers.CreateImage` without Ceph), coordinator side, against a real
//! etcd with the coordinator in-process; the test plays the node: it
//! reads the order (`hosts/<node>/captures/<image>`), writes the agent's
//! reports (`node-owned/<node>/captures/<image>`) and serves the copy on a
//! node API of its own, as the protocol says
//! (`nubo_common::model::capture`). Covered: the job and order recorded at
//! the request, a ready copy read with a ticket into the image store
//! (`active`, size and checksum of the bytes), a node's failure, a server
//! deleted before its disk was copied, a node down beyond the grace, and
//! the image's owner deleting it meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::time::Duration;

use common::*;
use nubo_common::keys;
use nubo_common::model::{
    self, CaptureJob, CaptureOrder, CapturePhase, CaptureReport, InstanceState, Node,
};
use nubo_common::proto as pb;
use nubo_common::{ImageId, InstanceId, NodeName};
use nubo_coordinator::Coordinator;
use nubo_tests::Etcd;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// One coordinator, flavor/image, network, server `vm` on n0 (reported
/// running). Returns the clients, the server's id and n0's lease.
async fn cloud(etcd: &Etcd, c: &Coordinator) -> (Clients, InstanceId, i64) {
    let mut cl = clients(c).await;
    setup_basics(&mut cl).await;
    create_network(&mut cl, "net", "10.61.0.0/24").await;
    let lease = register_seen(etcd, c, "n0", res(8, 8 * 512, 100), "nova").await;
    let r = create_servers(&mut cl, server_req("vm", &["net"], 1)).await;
    let id: InstanceId = created(&r, 0).id.parse().unwrap();
    report_status(etcd, &id, "n0", InstanceState::Running).await;
    (cl, id, lease)
}

async fn capture(cl: &mut Clients, server: &str, name: &str, format: &str) -> pb::Image {
    cl.servers
        .create_image(pb::CreateServerImageRequest {
            server: server.into(),
            name: name.into(),
            disk_format: format.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn image(cl: &mut Clients, id: &str) -> Option<pb::Image> {
    cl.images
        .get(req::get(id))
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until image `id` is no longer queued; returns it.
async fn settled(cl: &mut Clients, id: &str) -> pb::Image {
    let until = tokio::time::Instant::now() + WAIT + Duration::from_secs(15);
    loop {
        let img = image(cl, id).await.expect("image exists");
        if img.status != "queued" {
            return img;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "image {id} still queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn report(etcd: &Etcd, node: &str, r: &CaptureReport) {
    let n = NodeName::new(node).unwrap();
    etcd.client()
        .await
        .unwrap()
        .put(
            keys::node_capture_report(&n, &r.image),
            model::encode(r),
            None,
        )
        .await
        .unwrap();
}

/// Waits until the job and the node's order of `image` are gone.
async fn job_gone(etcd: &Etcd, image: &ImageId) {
    let n0 = NodeName::new("n0").unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    while get::<CaptureJob>(etcd, &keys::capture_job(image))
        .await
        .is_some()
        || get::<CaptureOrder>(etcd, &keys::node_capture_order(&n0, image))
            .await
            .is_some()
    {
        assert!(tokio::time::Instant::now() < until, "job of {image} left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node API of n0 serving `body` at `/v1/disk-capture/<image>` to a
/// request carrying a stream ticket (published in n0's record). Returns
/// the requests it answered.
async fn serve_copy(
    etcd: &Etcd,
    image: ImageId,
    body: Vec<u8>,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let n0 = NodeName::new("n0").unwrap();
    let mut node: Node = get(etcd, &keys::node(&n0)).await.unwrap();
    node.labels
        .insert(model::NODE_API_LABEL.to_string(), addr.to_string());
    etcd.client()
        .await
        .unwrap()
        .put(keys::node(&n0), model::encode(&node), None)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let lower = head.to_ascii_lowercase();
            let ok = head.starts_with(&format!("GET /v1/disk-capture/{image} "))
                && lower.contains("authorization: ticket ");
            let resp = if ok {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            } else {
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
                    .to_vec()
            };
            let _ = s.write_all(&resp).await;
            let _ = tx.send(head);
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_copy_becomes_an_active_image_with_its_bytes() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let (mut cl, id, _) = cloud(&etcd, &c).await;

    let img = capture(&mut cl, "vm", "snap", "").await;
    assert_eq!(img.status, "queued");
    let image: ImageId = img.id.parse().unwrap();
    // The job and the node's order, recorded at the request.
    let job: CaptureJob = get(&etcd, &keys::capture_job(&image)).await.unwrap();
    assert_eq!(
        (job.instance, job.node.as_str(), job.image),
        (id, "n0", image)
    );
    let n0 = NodeName::new("n0").unwrap();
    let order: CaptureOrder = get(&etcd, &keys::node_capture_order(&n0, &image))
        .await
        .unwrap();
    assert_eq!((order.instance, order.disk_format.as_str()), (id, "raw"));
    assert_eq!(img.disk_format, "raw");
    assert_eq!(img.properties.get("instance_uuid"), Some(&id.to_string()));
    assert_eq!(
        img.properties.get("image_type").map(String::as_str),
        Some("snapshot")
    );

    // Copying: nothing happens to the image.
    report(
        &etcd,
        "n0",
        &CaptureReport::new(image, CapturePhase::Copying, None),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(image_status(&mut cl, &img.id).await, "queued");

    // Ready: read with a ticket from the node API into the store.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let mut requests = serve_copy(&etcd, image, bytes.clone()).await;
    report(
        &etcd,
        "n0",
        &CaptureReport {
            size_bytes: Some(bytes.len() as u64),
            ..CaptureReport::new(image, CapturePhase::Ready, None)
        },
    )
    .await;
    let done = settled(&mut cl, &img.id).await;
    assert_eq!(done.status, "active", "{}", done.status_reason);
    assert_eq!(done.size_bytes, bytes.len() as u64);
    assert_eq!(done.checksum_sha256, hex(&Sha256::digest(&bytes)));
    let head = requests.recv().await.unwrap();
    assert!(
        head.to_ascii_lowercase().contains("authorization: ticket "),
        "{head}"
    );
    job_gone(&etcd, &image).await;

    // The stored bytes are the node's copy.
    let mut data = pb::image_data_client::ImageDataClient::new(channel(&c).await)
        .download(pb::DownloadImageRequest {
            image_id: img.id.clone(),
            part: "disk".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = data.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert!(got == bytes, "downloaded {} bytes differ", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_a_deleted_server_or_image_end_the_capture() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let (mut cl, _id, _) = cloud(&etcd, &c).await;

    // The node fails it: error with the node's reason.
    let img = capture(&mut cl, "vm", "snap1", "qcow2").await;
    assert_eq!(img.disk_format, "qcow2");
    let image: ImageId = img.id.parse().unwrap();
    report(
        &etcd,
        "n0",
        &CaptureReport::new(
            image,
            CapturePhase::Failed,
            Some("qemu-img: no space left".into()),
        ),
    )
    .await;
    let done = settled(&mut cl, &img.id).await;
    assert_eq!(done.status, "error");
    assert!(
        done.status_reason.contains("qemu-img: no space left"),
        "{}",
        done.status_reason
    );
    job_gone(&etcd, &image).await;

    // A bad format is refused at once, nothing recorded.
    let e = cl
        .servers
        .create_image(pb::CreateServerImageRequest {
            server: "vm".into(),
            name: "snap-bad".into(),
            disk_format: "vmdk".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(count(&etcd, &keys::captures_prefix()).await, 0);

    // The image's owner deletes it meanwhile: the job ends, nothing else.
    let img = capture(&mut cl, "vm", "snap2", "").await;
    let image: ImageId = img.id.parse().unwrap();
    cl.images.delete(req::del(&img.id)).await.unwrap();
    job_gone(&etcd, &image).await;

    // The server is deleted before its disk was copied: error.
    let img = capture(&mut cl, "vm", "snap3", "").await;
    let image: ImageId = img.id.parse().unwrap();
    cl.servers.delete(req::del("vm")).await.unwrap();
    let done = settled(&mut cl, &img.id).await;
    assert_eq!(done.status, "error");
    assert!(
        done.status_reason.contains("deleted"),
        "{}",
        done.status_reason
    );
    job_gone(&etcd, &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_beyond_the_grace_fails_the_capture() {
    let etcd = Etcd::start().unwrap();
    let c = coordinator(&etcd).await;
    let (mut cl, _id, lease) = cloud(&etcd, &c).await;
    let img = capture(&mut cl, "vm", "snap", "").await;
    let image: ImageId = img.id.parse().unwrap();
    revoke(&etcd, lease).await;
    let down = tokio::time::Instant::now();
    let done = settled(&mut cl, &img.id).await;
    assert_eq!(done.status, "error");
    assert!(
        done.status_reason.contains("down"),
        "{}",
        done.status_reason
    );
    assert!(
        down.elapsed() >= nubo_coordinator::background::captures::NODE_DOWN_GRACE,
        "failed after {:?}, before the grace",
        down.elapsed()
    );
    job_gone(&etcd, &image).await;
}

async fn image_status(cl: &mut Clients, id: &str) -> String {
    image(cl, id).await.unwrap().status
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
