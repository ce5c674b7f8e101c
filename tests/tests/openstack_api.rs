//! The OpenStack API (issue 17) with the ecosystem's own clients from
//! PyPI (installed by scripts/deps.sh), against a real cluster
//! ([`OpenStackLab`]: etcd, a coordinator with a TLS API and token
//! authentication, an agent running real guests — network namespaces with
//! the netns driver, addressed by the agent's DHCP — and `nubo-openstack`
//! in front of the coordinator):
//!
//! - python-openstackclient with its own `clouds.yaml`: `server create
//!   --flavor --image --network --wait`, `server list/show/stop/start/
//!   reboot/resize (confirm, revert)/delete`, `server event list`,
//!   `flavor list`, `image list`, `network list`,
//!   `keypair create`, `security group (rule) create`, `image create
//!   --file`, `quota show`; the results agree with `nubo … -f json`, and
//!   the guest gets the address the API shows by DHCP;
//! - openstacksdk: a script creates a server, waits with
//!   `conn.compute.wait_for_server`, deletes it and waits for the delete;
//! - bad input answers in OpenStack's error format (`itemNotFound`,
//!   `badRequest`, 401 without a token, 406 beyond the microversion).
//!
//! Needs `cargo build --bins` and root (network namespaces).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use nubo_tests::netns::{need_root, netns_exec};
use nubo_tests::openstack_lab::{self, FrontEnd, OpenStackLab};
use nubo_tests::{list_items, wait_for, wait_until};
use serde_json::{json, Value};

/// `openstack --os-cloud nubo ARGS` ([`openstack_lab::openstack`]).
fn openstack(clouds: &Path, args: &[&str]) -> Result<Value> {
    openstack_lab::openstack(clouds, "nubo", args)
}

/// `curl` to the front end: (status, body).
fn curl(fe: &FrontEnd, url: &str, token: Option<&str>, headers: &[&str]) -> (u16, Value) {
    curl_req(fe, "GET", url, token, headers, None)
}

/// `curl -X METHOD` with an optional JSON body: the status and the JSON
/// answer (null when it is not JSON).
fn curl_req(
    fe: &FrontEnd,
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, Value) {
    let mut cmd = fe.curl();
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("X-Auth-Token: {t}")]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn openstack_client_and_sdk_drive_a_real_cluster() {
    if !need_root().unwrap() {
        return;
    }
    let os = OpenStackLab::start(1).unwrap();
    let admin = &os.lab.cli;
    admin
        .json(&[
            "flavor", "create", "tiny", "--vcpus", "1", "--ram", "256", "--disk", "1",
        ])
        .unwrap();
    admin
        .json(&[
            "flavor", "create", "tiny2", "--vcpus", "1", "--ram", "384", "--disk", "1",
        ])
        .unwrap();
    let alice = os.lab.member("alice", "team-a").unwrap();
    alice.json(&["image", "create", "cirros"]).unwrap();
    alice
        .json(&["network", "create", "net1", "--cidr", "10.20.0.0/24"])
        .unwrap();
    let fe = &os.front_end;
    let url = fe.url.clone();
    let clouds = os
        .front_end
        .clouds_yaml(&[
            ("nubo", "alice", "alice-password", "team-a"),
            (
                "nubo-admin",
                "admin",
                nubo_tests::secure::ADMIN_PASSWORD,
                "admin",
            ),
        ])
        .unwrap();
    let clouds = clouds.as_path();
    let dir = tempfile::Builder::new()
        .prefix("nbt-openstack-")
        .tempdir()
        .unwrap();

    // Discovery and the catalog.
    let issued = openstack(clouds, &["token", "issue", "-f", "json"]).unwrap();
    assert_eq!(issued["project_id"], "team-a", "{issued}");
    let token = issued["id"].as_str().unwrap().to_string();

    // Lists agree with nubo's.
    let flavors = openstack(clouds, &["flavor", "list", "-f", "json"]).unwrap();
    assert!(flavors.to_string().contains("tiny"), "{flavors}");
    let images = openstack(clouds, &["image", "list", "-f", "json"]).unwrap();
    assert!(images.to_string().contains("cirros"), "{images}");
    let nets = openstack(clouds, &["network", "list", "-f", "json"]).unwrap();
    assert!(nets.to_string().contains("net1"), "{nets}");

    // server create --wait, then show/list agree with nubo.
    let created = openstack(
        clouds,
        &[
            "server",
            "create",
            "--flavor",
            "tiny",
            "--image",
            "cirros",
            "--network",
            "net1",
            "--property",
            "role=web",
            "--wait",
            "-f",
            "json",
            "vm1",
        ],
    )
    .unwrap();
    assert_eq!(created["status"], "ACTIVE", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let ours = alice.json(&["server", "show", "vm1"]).unwrap();
    assert_eq!(ours["id"], id.as_str());
    assert_eq!(ours["state"], "running");
    // A real guest: its namespace on the host gets the address the API
    // shows from the agent's DHCP server.
    let guest = os.lab.guest_netns(1, &id);
    let script = os.lab.udhcpc_script().display().to_string();
    let lease = netns_exec(
        &guest,
        "busybox",
        &["udhcpc", "-i", "eth0", "-n", "-q", "-t", "5", "-s", &script],
    )
    .unwrap();
    assert!(lease.status.success(), "udhcpc in {guest}: {lease:?}");
    let shown = openstack(clouds, &["server", "show", "-f", "json", &id]).unwrap();
    let ip = ours["addresses"][0]["ip"].as_str().unwrap();
    assert!(
        shown["addresses"].to_string().contains(ip),
        "{shown} vs {ours}"
    );
    let addrs = netns_exec(&guest, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        addrs.contains(&format!("inet {ip}/24")),
        "guest has {addrs}, the API shows {ip}"
    );
    assert!(shown["flavor"].to_string().contains("tiny"), "{shown}");
    let listed = openstack(clouds, &["server", "list", "-f", "json"]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["ID"], id.as_str());

    // Rename (Nova's PUT /servers/{id}) and back.
    openstack(clouds, &["server", "set", "--name", "vm1-renamed", &id]).unwrap();
    assert_eq!(
        alice.json(&["server", "show", &id]).unwrap()["name"],
        "vm1-renamed"
    );
    let shown = openstack(clouds, &["server", "show", "-f", "json", &id]).unwrap();
    assert_eq!(shown["name"], "vm1-renamed", "{shown}");
    alice
        .json(&["server", "set", &id, "--name", "vm1"])
        .unwrap();
    assert_eq!(
        alice.json(&["server", "show", "vm1"]).unwrap()["id"],
        id.as_str()
    );

    // Metadata, while the guest holds its lease (a reboot of a netns
    // guest makes a fresh namespace).
    server_metadata(clouds, fe, &token, &alice, &guest, &id);
    server_interfaces(clouds, fe, &token, &alice, &guest, &id);
    port_fields(clouds, &alice);

    // stop / start: the desired power follows.
    openstack(clouds, &["server", "stop", &id]).unwrap();
    wait_for(Duration::from_secs(30), "vm1 stopped", || {
        let s = alice.json(&["server", "show", "vm1"])?;
        Ok(if s["state"] == "stopped" {
            Ok(())
        } else {
            Err(s)
        })
    })
    .unwrap();
    let shown = openstack(clouds, &["server", "show", "-f", "json", &id]).unwrap();
    assert_eq!(shown["status"], "SHUTOFF", "{shown}");
    openstack(clouds, &["server", "start", &id]).unwrap();
    wait_for(Duration::from_secs(30), "vm1 running again", || {
        let s = alice.json(&["server", "show", "vm1"])?;
        Ok(if s["state"] == "running" {
            Ok(())
        } else {
            Err(s)
        })
    })
    .unwrap();
    // reboot: the agent restarts the guest; ACTIVE again.
    openstack(clouds, &["server", "reboot", "--wait", &id]).unwrap();
    let shown = openstack(clouds, &["server", "show", "-f", "json", &id]).unwrap();
    assert_eq!(shown["status"], "ACTIVE", "{shown}");

    // resize: VERIFY_RESIZE with the new flavor (nubo keeps the old one)
    // until revert (old flavor back) or confirm; recorded as actions.
    let verify = |flavor: &str| {
        let shown = openstack(clouds, &["server", "show", "-f", "json", &id]).unwrap();
        assert_eq!(shown["status"], "VERIFY_RESIZE", "{shown}");
        assert!(shown["flavor"].to_string().contains(flavor), "{shown}");
        assert_eq!(
            alice.json(&["server", "show", "vm1"]).unwrap()["resized_from"],
            "tiny"
        );
    };
    let boots = || {
        os.lab.agents[0]
            .console(&id)
            .matches("booting in namespace")
            .count()
    };
    let booted = boots();
    assert!(booted >= 1, "{}", os.lab.agents[0].console(&id));
    openstack(
        clouds,
        &["server", "resize", "--flavor", "tiny2", "--wait", &id],
    )
    .unwrap();
    verify("tiny2");
    openstack(clouds, &["server", "resize", "revert", &id]).unwrap();
    let s = alice.json(&["server", "show", "vm1"]).unwrap();
    assert_eq!(
        (&s["flavor"], &s["resized_from"]),
        (&json!("tiny"), &Value::Null),
        "{s}"
    );
    openstack(
        clouds,
        &["server", "resize", "--flavor", "tiny2", "--wait", &id],
    )
    .unwrap();
    verify("tiny2");
    openstack(clouds, &["server", "resize", "confirm", &id]).unwrap();
    wait_for(Duration::from_secs(60), "vm1 ACTIVE with tiny2", || {
        let shown = openstack(clouds, &["server", "show", "-f", "json", &id])?;
        let s = alice.json(&["server", "show", "vm1"])?;
        Ok(
            if shown["status"] == "ACTIVE"
                && shown["flavor"].to_string().contains("tiny2")
                && s["state"] == "running"
            {
                Ok(())
            } else {
                Err(shown)
            },
        )
    })
    .unwrap();
    // The agent shut the guest down and booted it again with the new size
    // (the netns driver's record holds it; its console tells the boots).
    wait_for(Duration::from_secs(60), "vm1 redefined with tiny2", || {
        let st: Value = serde_json::from_str(&std::fs::read_to_string(
            os.lab.agents[0].state_dir().join("netns-guests.json"),
        )?)?;
        let rec = st["guests"]
            .as_object()
            .and_then(|g| g.values().find(|r| r["id"] == id.as_str()).cloned())
            .unwrap_or_default();
        Ok(if rec["size"] == json!([1, 384]) && boots() > booted {
            Ok(())
        } else {
            Err(rec)
        })
    })
    .unwrap();
    assert!(
        os.lab.agents[0].console(&id).contains("stopped: namespace"),
        "{}",
        os.lab.agents[0].console(&id)
    );
    let events = openstack(clouds, &["server", "event", "list", "-f", "json", &id]).unwrap();
    for a in ["resize", "revertResize", "confirmResize"] {
        assert!(
            events.to_string().contains(&format!("\"{a}\"")),
            "{a}: {events}"
        );
    }

    // Keypairs and security groups agree with nubo's.
    let key = dir.path().join("k1.pub");
    std::fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOF/1IwvkaqwaYxw5uqOXwU+yMz99O0NSqMQYWuHQD0 test@host\n",
    )
    .unwrap();
    openstack(
        clouds,
        &[
            "keypair",
            "create",
            "--public-key",
            &key.display().to_string(),
            "-f",
            "json",
            "k1",
        ],
    )
    .unwrap();
    let k = alice.json(&["keypair", "show", "k1"]).unwrap();
    assert!(
        k.to_string().contains("AAAAC3NzaC1lZDI1NTE5AAAAIMOF"),
        "{k}"
    );
    openstack(
        clouds,
        &["security", "group", "create", "-f", "json", "web"],
    )
    .unwrap();
    let rule = openstack(
        clouds,
        &[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "tcp",
            "--dst-port",
            "22",
            "--remote-ip",
            "10.0.0.0/8",
            "-f",
            "json",
            "web",
        ],
    )
    .unwrap();
    let g = alice.json(&["secgroup", "show", "web"]).unwrap();
    let rule_id = rule["id"].as_str().unwrap();
    assert!(g.to_string().contains(rule_id), "{g} lacks {rule}");
    assert!(g.to_string().contains("10.0.0.0/8"), "{g}");

    // image create --file: uploaded in chunks, nubo records its checksum.
    let file = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let made = openstack(
        clouds,
        &[
            "image",
            "create",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            &file.display().to_string(),
            "-f",
            "json",
            "disk2",
        ],
    )
    .unwrap();
    let img = alice.json(&["image", "show", "disk2"]).unwrap();
    assert_eq!(img["status"], "active", "{img} / {made}");
    assert_eq!(img["size_bytes"], data.len() as u64, "{img}");
    let sum = Command::new("sha256sum").arg(&file).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    let sum = sum.split_whitespace().next().unwrap();
    assert!(img.to_string().contains(sum), "{img} lacks sha256 {sum}");
    glance_chunked_upload_and_patch(clouds, fe, &token, &alice, &file, data.len());

    // Neutron's network-then-subnet creation, and a port, agree with nubo.
    let net2 = openstack(clouds, &["network", "create", "-f", "json", "net2"]).unwrap();
    let net2_id = net2["id"].as_str().unwrap().to_string();
    let ours = alice.json(&["network", "show", "net2"]).unwrap();
    assert_eq!(ours["id"], net2["id"], "{ours}");
    assert!(ours["cidr"].is_null(), "no subnet yet: {ours}");
    let sub2 = openstack(
        clouds,
        &[
            "subnet",
            "create",
            "-f",
            "json",
            "--network",
            "net2",
            "--subnet-range",
            "10.30.0.0/24",
            "--dns-nameserver",
            "10.30.0.53",
            "sub2",
        ],
    )
    .unwrap();
    assert_eq!(sub2["cidr"], "10.30.0.0/24", "{sub2}");
    assert_eq!(sub2["gateway_ip"], "10.30.0.1", "{sub2}");
    let ours = alice.json(&["network", "show", "net2"]).unwrap();
    assert_eq!(
        (
            &ours["cidr"],
            &ours["gateway"],
            &ours["subnet_name"],
            &ours["dns"][0]
        ),
        (
            &json!("10.30.0.0/24"),
            &json!("10.30.0.1"),
            &json!("sub2"),
            &json!("10.30.0.53")
        ),
        "{ours}"
    );
    let shown = openstack(clouds, &["subnet", "show", "-f", "json", "sub2"]).unwrap();
    assert_eq!(shown["network_id"], json!(net2_id), "{shown}");
    let pools = shown["allocation_pools"].to_string();
    assert!(
        pools.contains("10.30.0.2") && pools.contains("10.30.0.254"),
        "{shown}"
    );
    let port = openstack(
        clouds,
        &["port", "create", "-f", "json", "--network", "net2", "p2"],
    )
    .unwrap();
    let ours = alice.json(&["port", "show", "p2"]).unwrap();
    assert_eq!(port["id"], ours["id"], "{port} vs {ours}");
    assert_eq!(port["mac_address"], ours["mac"], "{port} vs {ours}");
    assert!(
        port["fixed_ips"]
            .to_string()
            .contains(ours["ip"].as_str().unwrap()),
        "{port} vs {ours}"
    );
    // A second subnet on one network has its own id; one overlapping the
    // network's is refused; the second goes again (no address in it).
    let sub3 = openstack(
        clouds,
        &[
            "subnet",
            "create",
            "-f",
            "json",
            "--network",
            "net2",
            "--subnet-range",
            "10.31.0.0/24",
            "sub3",
        ],
    )
    .unwrap();
    assert_eq!(sub3["network_id"], json!(net2_id), "{sub3}");
    assert_ne!(sub3["id"], json!(net2_id), "{sub3}");
    let ours = alice.json(&["network", "subnet", "list", "net2"]).unwrap();
    assert_eq!(ours.as_array().map(Vec::len), Some(2), "{ours}");
    let e = openstack(
        clouds,
        &[
            "subnet",
            "create",
            "--network",
            "net2",
            "--subnet-range",
            "10.31.0.128/25",
            "sub4",
        ],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("overlaps with another subnet"),
        "{e}"
    );
    openstack(clouds, &["subnet", "delete", "sub3"]).unwrap();
    // The subnet stays while the port uses it, then goes with the network.
    assert!(openstack(clouds, &["subnet", "delete", "sub2"]).is_err());
    openstack(clouds, &["port", "delete", "p2"]).unwrap();
    openstack(clouds, &["subnet", "delete", "sub2"]).unwrap();
    assert!(alice.json(&["network", "show", "net2"]).unwrap()["cidr"].is_null());
    openstack(clouds, &["network", "delete", "net2"]).unwrap();
    assert!(alice.json(&["network", "show", "net2"]).is_err());
    // Bad bodies are Neutron's 400s and change nothing.
    for body in [
        r#"{"network": {"name": "bad""#,
        r#"{"network": {"name": 7}}"#,
        r#"{"network": {"name": "bad", "color": "red"}}"#,
    ] {
        let (code, answer) = curl_req(
            fe,
            "POST",
            &format!("{url}/network/v2.0/networks"),
            Some(&token),
            &[],
            Some(body),
        );
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer["NeutronError"]["message"].is_string(), "{answer}");
    }
    assert!(alice.json(&["network", "show", "bad"]).is_err());

    // Token validation and revocation (Keystone's GET/DELETE
    // /v3/auth/tokens; `openstack token revoke`).
    let (code, body) = curl(
        fe,
        &format!("{url}/identity/v3/auth/tokens"),
        Some(&token),
        &[&format!("X-Subject-Token: {token}")],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["token"]["user"]["name"], "alice", "{body}");
    assert_eq!(body["token"]["project"]["id"], "team-a", "{body}");
    let other = openstack(clouds, &["token", "issue", "-f", "json"]).unwrap();
    let other = other["id"].as_str().unwrap().to_string();
    let servers_url = format!("{url}/compute/v2.1/servers");
    assert_eq!(curl(fe, &servers_url, Some(&other), &[]).0, 200);
    openstack(clouds, &["token", "revoke", &other]).unwrap();
    assert_eq!(curl(fe, &servers_url, Some(&other), &[]).0, 401);
    let (code, _) = curl(
        fe,
        &format!("{url}/identity/v3/auth/tokens"),
        Some(&token),
        &[&format!("X-Subject-Token: {other}")],
    );
    assert_eq!(code, 404, "a revoked token is not found");
    assert_eq!(curl(fe, &servers_url, Some(&token), &[]).0, 200);

    // The front end speaks TLS only, with a certificate of the lab's CA:
    // the request just served (curl trusting that CA) is refused by a
    // client that does not trust it (curl's exit status 60: certificate
    // problem), and plain HTTP on its port gets no API answer.
    let untrusted = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-H"])
        .arg(format!("X-Auth-Token: {token}"))
        .arg(&servers_url)
        .status()
        .unwrap();
    assert_eq!(untrusted.code(), Some(60), "{untrusted:?}");
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("X-Auth-Token: {token}"))
        .arg(servers_url.replacen("https://", "http://", 1))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "{plain:?}");

    // quota show: compute and network quotas, nubo's limits.
    let q = openstack(clouds, &["quota", "show", "-f", "json", "team-a"]).unwrap();
    let ours = alice.json(&["quota", "show"]).unwrap();
    let theirs: std::collections::BTreeMap<String, Value> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["Resource"].as_str().unwrap().to_string(),
                r["Limit"].clone(),
            )
        })
        .collect();
    for (os, nubo) in [
        ("instances", "instances"),
        ("cores", "vcpus"),
        ("ram", "ram_mb"),
        ("networks", "networks"),
        ("ports", "ports"),
        ("security_groups", "security_groups"),
        ("floating_ips", "floating_ips"),
        ("volumes", "volumes"),
        ("gigabytes", "gigabytes"),
    ] {
        assert!(ours[nubo]["limit"].is_u64(), "{ours}");
        assert_eq!(
            theirs.get(os),
            Some(&ours[nubo]["limit"]),
            "{os}: {q} vs {ours}"
        );
    }

    // Absolute limits: the member's quota and usage (one server).
    let limits = openstack(clouds, &["limits", "show", "--absolute", "-f", "json"]).unwrap();
    let limit_of = |name: &str| {
        limits
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Name"] == name)
            .map(|r| r["Value"].clone())
    };
    assert_eq!(
        limit_of("max_total_instances"),
        Some(ours["instances"]["limit"].clone()),
        "{limits}"
    );
    assert_eq!(limit_of("total_instances_used"), Some(json!(1)), "{limits}");
    // Hypervisors and compute services: the cluster's node, for admins only.
    let node = ours_server_node(&alice);
    let hvs = openstack(
        clouds,
        &[
            "--os-cloud",
            "nubo-admin",
            "hypervisor",
            "list",
            "-f",
            "json",
        ],
    )
    .unwrap();
    assert!(
        hvs.as_array()
            .unwrap()
            .iter()
            .any(|h| h["Hypervisor Hostname"] == json!(node)),
        "{hvs}"
    );
    let services = openstack(
        clouds,
        &[
            "--os-cloud",
            "nubo-admin",
            "compute",
            "service",
            "list",
            "-f",
            "json",
        ],
    )
    .unwrap();
    assert!(
        services
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Host"] == json!(node)
                && s["Binary"] == "nova-compute"
                && s["State"] == "up"),
        "{services}"
    );
    assert!(
        openstack(clouds, &["hypervisor", "list"]).is_err(),
        "a member sees no hypervisors"
    );

    openstack(clouds, &["server", "delete", "--wait", &id]).unwrap();
    let gone = alice.json(&["server", "list"]).unwrap();
    assert!(list_items(&gone).unwrap().is_empty(), "{gone}");

    // openstacksdk: create, wait_for_server, delete, wait_for_delete.
    let script = r#"
import openstack, sys
conn = openstack.connect(cloud="nubo")
net = conn.network.find_network("net1")
img = conn.image.find_image("cirros")
s = conn.compute.create_server(name="sdk-vm", flavor_id="tiny", image_id=img.id, networks=[{"uuid": net.id}])
s = conn.compute.wait_for_server(s, wait=60)
print("ACTIVE" if s.status == "ACTIVE" else s.status, s.id)
conn.compute.delete_server(s)
conn.compute.wait_for_delete(s, wait=60)
print("DELETED")
"#;
    let out = Command::new("openstack-python")
        .env("OS_CLIENT_CONFIG_FILE", clouds)
        .args(["-c", script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("ACTIVE") && text.contains("DELETED"),
        "openstacksdk script: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad input in OpenStack's formats.
    let (code, body) = curl(
        fe,
        &format!("{url}/compute/v2.1/servers/nope"),
        Some(&token),
        &[],
    );
    assert_eq!(code, 404, "{body}");
    assert!(body["itemNotFound"]["message"].is_string(), "{body}");
    let (code, body) = curl(fe, &format!("{url}/compute/v2.1/servers"), None, &[]);
    assert_eq!(code, 401, "{body}");
    let (code, _) = curl(
        fe,
        &format!("{url}/compute/v2.1/servers"),
        Some(&token),
        &["OpenStack-API-Version: compute 2.95"],
    );
    assert_eq!(code, 406);
    let (code, body) = curl(
        fe,
        &format!("{url}/compute/v2.1/servers?marker=nope"),
        Some(&token),
        &[],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body["badRequest"].is_object(), "{body}");
}

/// The node `vm1` runs on, as nubo shows it.
/// Server metadata on `vm1` (created with `--property role=web`): both
/// views show it, `openstack server set/unset --property` and `nubo server
/// set/unset` change it, the guest reads it as `meta` in `meta_data.json`,
/// and Nova's limits refuse bad input (400/403/404) without changing it.
/// The guest's NIC `ifname`: its MAC, `None` when it has none.
fn guest_nic_mac(guest: &str, ifname: &str) -> Option<String> {
    netns_exec(guest, "cat", &[&format!("/sys/class/net/{ifname}/address")])
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Nova's `os-interface` on the running netns guest: `openstack server
/// add port` / `remove port` (POST with port_id, DELETE) hot-plug and
/// unplug a NIC of the real guest; POST with net_id + fixed_ips makes a
/// port at that address; list and show agree with nubo; bad bodies 400,
/// an unplugged port 404, a plugged one 409.
fn server_interfaces(
    clouds: &Path,
    fe: &FrontEnd,
    token: &str,
    alice: &nubo_tests::Cli,
    guest: &str,
    id: &str,
) {
    let base = format!("{}/compute/v2.1/servers/{id}/os-interface", fe.url);
    let (code, listed) = curl(fe, &base, Some(token), &[]);
    assert_eq!(code, 200, "{listed}");
    let first = listed["interfaceAttachments"].as_array().unwrap();
    assert_eq!(first.len(), 1, "{listed}");
    assert_eq!(first[0]["port_state"], "ACTIVE", "{listed}");
    let net = first[0]["net_id"].as_str().unwrap().to_string();
    // No eth1 before (the positive control is the hot-plug below).
    assert_eq!(guest_nic_mac(guest, "eth1"), None);

    let port = openstack(
        clouds,
        &["port", "create", "--network", "net1", "-f", "json", "extra"],
    )
    .unwrap();
    let (pid, mac) = (
        port["id"].as_str().unwrap().to_string(),
        port["mac_address"].as_str().unwrap().to_string(),
    );
    openstack(clouds, &["server", "add", "port", id, &pid]).unwrap();
    wait_until(Duration::from_secs(30), "eth1 hot-plugged", || {
        Ok(guest_nic_mac(guest, "eth1").as_deref() == Some(mac.as_str()))
    })
    .unwrap();
    let (code, shown) = curl(fe, &format!("{base}/{pid}"), Some(token), &[]);
    assert_eq!(code, 200, "{shown}");
    let a = &shown["interfaceAttachment"];
    assert_eq!(
        (
            a["port_id"].as_str(),
            a["net_id"].as_str(),
            a["mac_addr"].as_str()
        ),
        (Some(pid.as_str()), Some(net.as_str()), Some(mac.as_str())),
        "{shown}"
    );
    let ours = alice.json(&["server", "show", id]).unwrap();
    assert_eq!(ours["addresses"].as_array().unwrap().len(), 2, "{ours}");
    // Plugged already: 409.
    let b = json!({"interfaceAttachment": {"port_id": pid}}).to_string();
    let (code, answer) = curl_req(fe, "POST", &base, Some(token), &[], Some(&b));
    assert_eq!(code, 409, "{answer}");
    openstack(clouds, &["server", "remove", "port", id, &pid]).unwrap();
    wait_until(Duration::from_secs(30), "eth1 unplugged", || {
        Ok(guest_nic_mac(guest, "eth1").is_none())
    })
    .unwrap();
    let kept = openstack(clouds, &["port", "show", "-f", "json", &pid]).unwrap();
    assert_eq!(kept["device_id"], "", "{kept}");
    let (code, answer) = curl(fe, &format!("{base}/{pid}"), Some(token), &[]);
    assert_eq!(code, 404, "{answer}");
    openstack(clouds, &["port", "delete", &pid]).unwrap();

    // By network at a chosen address: a port made for the server.
    let b = json!({"interfaceAttachment": {"net_id": net,
        "fixed_ips": [{"ip_address": "10.20.0.77"}]}})
    .to_string();
    let (code, made) = curl_req(fe, "POST", &base, Some(token), &[], Some(&b));
    assert_eq!(code, 200, "{made}");
    let a = &made["interfaceAttachment"];
    assert_eq!(a["fixed_ips"][0]["ip_address"], "10.20.0.77", "{made}");
    let made_id = a["port_id"].as_str().unwrap().to_string();
    let made_mac = a["mac_addr"].as_str().unwrap().to_string();
    wait_until(
        Duration::from_secs(30),
        "eth1 hot-plugged by net_id",
        || Ok(guest_nic_mac(guest, "eth1").as_deref() == Some(made_mac.as_str())),
    )
    .unwrap();
    let (code, _) = curl_req(
        fe,
        "DELETE",
        &format!("{base}/{made_id}"),
        Some(token),
        &[],
        None,
    );
    assert_eq!(code, 202);
    wait_until(Duration::from_secs(30), "eth1 unplugged again", || {
        Ok(guest_nic_mac(guest, "eth1").is_none())
    })
    .unwrap();
    // The port made for it went with it.
    let (code, _) = curl(
        fe,
        &format!("{}/network/v2.0/ports/{made_id}", fe.url),
        Some(token),
        &[],
    );
    assert_eq!(code, 404);
    for bad in [
        json!({}),
        json!({"interfaceAttachment": {"port_id": "a", "net_id": "b"}}),
        json!({"interfaceAttachment": {"fixed_ips": [{"ip_address": "10.20.0.78"}]}}),
    ] {
        let (code, answer) = curl_req(fe, "POST", &base, Some(token), &[], Some(&bad.to_string()));
        assert_eq!(code, 400, "{bad}: {answer}");
    }
}

fn server_metadata(
    clouds: &Path,
    fe: &FrontEnd,
    token: &str,
    alice: &nubo_tests::Cli,
    guest: &str,
    id: &str,
) {
    let url = &fe.url;
    let meta = |want: Value| {
        let ours = alice.json(&["server", "show", "vm1"]).unwrap();
        assert_eq!(ours["metadata"], want, "{ours}");
        let (code, body) = curl(
            fe,
            &format!("{url}/compute/v2.1/servers/{id}/metadata"),
            Some(token),
            &[],
        );
        assert_eq!((code, &body["metadata"]), (200, &want), "{body}");
        // The guest's metadata service follows (the agent reconciles).
        wait_for(Duration::from_secs(30), "the guest's meta", || {
            let out = netns_exec(
                guest,
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "5",
                    "-f",
                    "http://169.254.169.254/openstack/latest/meta_data.json",
                ],
            )?;
            let md: Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| json!({"curl": String::from_utf8_lossy(&out.stderr)}));
            Ok(if md["meta"] == want { Ok(()) } else { Err(md) })
        })
        .unwrap();
    };
    let shown = openstack(clouds, &["server", "show", "-f", "json", id]).unwrap();
    assert!(shown["properties"].to_string().contains("web"), "{shown}");
    meta(json!({"role": "web"}));
    openstack(clouds, &["server", "set", "--property", "tier=db", id]).unwrap();
    openstack(clouds, &["server", "unset", "--property", "role", id]).unwrap();
    meta(json!({"tier": "db"}));
    alice
        .json(&[
            "server",
            "set",
            "vm1",
            "--property",
            "x=1",
            "--property",
            "y=a=b",
        ])
        .unwrap();
    alice
        .json(&["server", "unset", "vm1", "--property", "x"])
        .unwrap();
    meta(json!({"tier": "db", "y": "a=b"}));

    // Bad input: Nova's status codes, nothing changed.
    let base = format!("{url}/compute/v2.1/servers/{id}/metadata");
    let too_many: serde_json::Map<String, Value> =
        (0..129).map(|i| (format!("k{i}"), json!("v"))).collect();
    let long = "k".repeat(256);
    for (method, path, body, want) in [
        (
            "PUT",
            base.clone(),
            json!({"metadata": too_many.clone()}),
            403,
        ),
        ("POST", base.clone(), json!({"metadata": too_many}), 403),
        (
            "POST",
            base.clone(),
            json!({"metadata": {long.clone(): "v"}}),
            400,
        ),
        ("POST", base.clone(), json!({"metadata": {"k": long}}), 400),
        ("POST", base.clone(), json!({"metadata": {"": "v"}}), 400),
        ("POST", base.clone(), json!({"metadata": {"k": 1}}), 400),
        ("PUT", base.clone(), json!({"meta": {"k": "v"}}), 400),
        ("PUT", format!("{base}/k"), json!({"meta": {"j": "v"}}), 400),
        ("DELETE", format!("{base}/absent"), Value::Null, 404),
        ("GET", format!("{base}/absent"), Value::Null, 404),
    ] {
        let b = (!body.is_null()).then(|| body.to_string());
        let (code, answer) = curl_req(fe, method, &path, Some(token), &[], b.as_deref());
        assert_eq!(code, want, "{method} {path}: {answer}");
    }
    // The limit itself fits: 128 items replace all, then back.
    let full: serde_json::Map<String, Value> =
        (0..128).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (code, answer) = curl_req(
        fe,
        "PUT",
        &base,
        Some(token),
        &[],
        Some(&json!({"metadata": full}).to_string()),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["metadata"].as_object().unwrap().len(), 128);
    let (code, answer) = curl_req(
        fe,
        "PUT",
        &base,
        Some(token),
        &[],
        Some(r#"{"metadata": {"tier": "db", "y": "a=b"}}"#),
    );
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = curl_req(
        fe,
        "PUT",
        &format!("{base}/tier"),
        Some(token),
        &[],
        Some(r#"{"meta": {"tier": "app"}}"#),
    );
    assert_eq!(
        (code, &answer["meta"]["tier"]),
        (200, &json!("app")),
        "{answer}"
    );
    meta(json!({"tier": "app", "y": "a=b"}));
}

/// Glance: an upload without `Content-Length` (chunked, as Tempest
/// sends) stores the whole image; `openstack image set --name --min-disk`
/// (a JSON patch) renames it and changes its minimum, `--tag` and
/// `--property` set nubo's tags and properties, `--public` by a member and
/// a patch nubo cannot apply are a 4xx with the image unchanged.
fn glance_chunked_upload_and_patch(
    clouds: &Path,
    fe: &FrontEnd,
    token: &str,
    alice: &nubo_tests::Cli,
    file: &Path,
    len: usize,
) {
    let url = &fe.url;
    let (code, made) = curl_req(
        fe,
        "POST",
        &format!("{url}/image/v2/images"),
        Some(token),
        &[],
        Some(r#"{"name": "chunked", "disk_format": "raw", "container_format": "bare"}"#),
    );
    assert_eq!(code, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let out = fe
        .curl()
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args(["-H", &format!("X-Auth-Token: {token}")])
        .args(["-H", "Content-Type: application/octet-stream"])
        .args(["-H", "Transfer-Encoding: chunked"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{url}/image/v2/images/{id}/file"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204", "{out:?}");
    let img = alice.json(&["image", "show", "chunked"]).unwrap();
    assert_eq!(
        (&img["status"], &img["size_bytes"]),
        (&json!("active"), &json!(len)),
        "{img}"
    );
    openstack(
        clouds,
        &["image", "set", "--name", "chunked2", "--min-disk", "2", &id],
    )
    .unwrap();
    let img = alice.json(&["image", "show", "chunked2"]).unwrap();
    assert_eq!(
        (&img["id"], &img["min_disk_gb"]),
        (&json!(id), &json!(2)),
        "{img}"
    );
    assert!(alice.json(&["image", "show", "chunked"]).is_err());
    // Tags and free properties are nubo's: `nubo image show` has them.
    openstack(
        clouds,
        &["image", "set", "--tag", "t", "--property", "k=v", &id],
    )
    .unwrap();
    let img = alice.json(&["image", "show", "chunked2"]).unwrap();
    assert_eq!(
        (&img["tags"], &img["properties"]["k"]),
        (&json!(["t"]), &json!("v")),
        "{img}"
    );
    // Public is a cloud admin's call: a member's is refused, nothing
    // changes.
    assert!(openstack(clouds, &["image", "set", "--public", &id]).is_err());
    assert_eq!(
        alice.json(&["image", "show", "chunked2"]).unwrap()["visibility"],
        "shared"
    );
    let patch = |body: &str| {
        let out = fe
            .curl()
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PATCH"])
            .args(["-H", &format!("X-Auth-Token: {token}")])
            .args([
                "-H",
                "Content-Type: application/openstack-images-v2.1-json-patch",
            ])
            .args(["--data-binary", body])
            .arg(format!("{url}/image/v2/images/{id}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        patch(r#"[{"op": "replace", "path": "/status", "value": "queued"}]"#),
        "403"
    );
    assert_eq!(
        patch(
            r#"[{"op": "replace", "path": "/min_ram", "value": 64}, {"op": "add", "path": "/tags/-", "value": "t"}]"#
        ),
        "400"
    );
    let img = alice.json(&["image", "show", "chunked2"]).unwrap();
    assert_eq!(
        (&img["status"], &img["min_ram_mb"], &img["min_disk_gb"]),
        (&json!("active"), &json!(0), &json!(2)),
        "refusals changed nothing: {img}"
    );
    assert_eq!(
        patch(r#"[{"op": "replace", "path": "/min_ram", "value": 64}]"#),
        "200"
    );
    assert_eq!(
        alice.json(&["image", "show", "chunked2"]).unwrap()["min_ram_mb"],
        64
    );

    // Lists page with limit/marker (never a silent cap) and filter.
    let list = |q: &str| curl(fe, &format!("{url}/image/v2/images{q}"), Some(token), &[]).1;
    let all = list("")["images"].as_array().unwrap().len();
    assert!(all >= 2, "{all}");
    let mut seen = 0;
    let mut next = Some("/v2/images?limit=1".to_string());
    while let Some(q) = next {
        let page = list(q.trim_start_matches("/v2/images"));
        assert_eq!(page["images"].as_array().unwrap().len(), 1, "{page}");
        seen += 1;
        next = page["next"].as_str().map(str::to_string);
    }
    assert_eq!(seen, all);
    let small = list(&format!("?size_max={len}&status=active"));
    assert!(small.to_string().contains("chunked2"), "{small}");
    let queued = list("?status=queued");
    assert!(
        queued["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "queued"),
        "{queued}"
    );
}

fn ours_server_node(cli: &nubo_tests::Cli) -> String {
    let s = cli.json(&["server", "show", "vm1"]).unwrap();
    s["node"].as_str().unwrap().to_string()
}

/// A port's own fields through python-openstackclient, checked against
/// `nubo port show`: made down (`--disable`) with a chosen MAC, no
/// security group and a description; the same MAC again is refused (409);
/// renamed and enabled by `port set`, given a group and none again.
fn port_fields(clouds: &Path, alice: &nubo_tests::Cli) {
    let mac = "fa:16:3e:0a:0b:0c";
    let made = openstack(
        clouds,
        &[
            "port",
            "create",
            "-f",
            "json",
            "--network",
            "net1",
            "--disable",
            "--mac-address",
            mac,
            "--no-security-group",
            "--description",
            "made down",
            "pf",
        ],
    )
    .unwrap();
    let ours = alice.json(&["port", "show", "pf"]).unwrap();
    assert_eq!(made["id"], ours["id"], "{made} vs {ours}");
    assert_eq!(
        (
            &ours["mac"],
            &ours["admin_state_up"],
            &ours["description"],
            &ours["security_group_ids"]
        ),
        (&json!(mac), &json!(false), &json!("made down"), &json!([])),
        "{ours}"
    );
    let e = openstack(
        clouds,
        &[
            "port",
            "create",
            "--network",
            "net1",
            "--mac-address",
            mac,
            "pf-2",
        ],
    )
    .unwrap_err();
    assert!(e.to_string().contains("already in use"), "{e}");
    openstack(
        clouds,
        &[
            "port",
            "set",
            "--name",
            "pf-renamed",
            "--enable",
            "--security-group",
            "default",
            "pf",
        ],
    )
    .unwrap();
    let ours = alice.json(&["port", "show", "pf-renamed"]).unwrap();
    assert_eq!(ours["admin_state_up"], true, "{ours}");
    assert_eq!(ours["description"], "made down", "{ours}");
    assert_eq!(
        ours["security_group_ids"].as_array().unwrap().len(),
        1,
        "{ours}"
    );
    openstack(
        clouds,
        &[
            "port",
            "set",
            "--no-security-group",
            "--disable",
            "pf-renamed",
        ],
    )
    .unwrap();
    let ours = alice.json(&["port", "show", "pf-renamed"]).unwrap();
    assert_eq!(
        (&ours["admin_state_up"], &ours["security_group_ids"]),
        (&json!(false), &json!([])),
        "{ours}"
    );
    openstack(clouds, &["port", "delete", "pf-renamed"]).unwrap();
}
