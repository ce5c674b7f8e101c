//! Tempest (PyPI `tempest`, installed by scripts/deps.sh) against a real
//! cluster ([`OpenStackLab`]: a TLS, token-authenticated coordinator, one
//! netns-driver agent running real guests, `nubo-openstack` in front).
//! `#[ignore]`d: it runs for minutes (tens once most server tests run). The command (docs/openstack-
//! compatibility.md):
//!
//! ```sh
//! cargo build --bins
//! cargo test -p nubo-tests --test openstack_tempest -- --ignored --nocapture
//! ```
//!
//! It seeds the cloud (flavors `m1`/`m2`; project `tempest` with member
//! `tempest`, images `tempest-img`/`tempest-img-alt` made public by the
//! admin and network `tempest-net`; project `tempest-alt` with member
//! `tempest-alt` and its own `tempest-net` (Tempest's alt account); the
//! bootstrap admin as Tempest's admin), writes
//! `tempest.conf` and a pre-provisioned `accounts.yaml` (nubo's identity
//! API makes no users: no dynamic credentials), runs `tempest run
//! --subunit` on the API tests of compute (servers, flavors, keypairs,
//! server groups, volume attachments), network (networks, subnets, ports,
//! security groups, routers, floating IPs), image v2 and volume v3 (admin
//! tests excluded), and
//! prints `| area | passed | failed | skipped |` and one line per failure
//! with its reason. Everything is kept in
//! `target/tmp/tempest-last/` (`results.jsonl`, `report.md`,
//! `tempest.log`, the subunit stream). `NUBO_TEMPEST_REGEX` narrows the run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use nubo_tests::netns::need_root;
use nubo_tests::openstack_lab::OpenStackLab;
use nubo_tests::secure::ADMIN_PASSWORD;
use serde_json::Value;

/// The API tests of the areas issue 17 names, their admin tests among
/// them (compute: flavors, servers, hypervisors, services, quotas,
/// limits, availability zones, migrations, volume attachments; network:
/// networks, ports, routers, floating IPs, external networks; image v2;
/// volume v3).
const REGEX: &str = r"^tempest\.api\.(compute\.(servers|flavors|keypairs|volumes\.test_attach_volume|limits|test_quotas|admin\.(test_availability_zone|test_create_server|test_delete_server|test_flavors|test_hypervisor|test_keypairs_v210|test_live_migration|test_migrations|test_quotas|test_servers|test_services|test_volume))|network\.(admin\.)?(test_networks|test_ports|test_security_groups|test_routers|test_floating_ips|test_external_network)|image\.v2|volume)";
/// Admin test classes left out, each for a reason docs/openstack-
/// compatibility.md gives ("Admin tests left out").
const EXCLUDE: &str = r"\.admin\.(test_flavors_extra_specs|test_quotas|test_migrations|test_image_task|test_image_caching|test_images_metadefs|test_qos|test_volume_types|test_volume_type_access|test_group|test_backends_capabilities|test_volume_pools|test_volume_hosts|test_volume_services|test_user_messages|test_snapshot_manage|test_volume_manage|test_volume_retype|test_multi_backend|test_encrypted_volumes|test_volumes_backup|test_volume_quota_classes|test_routers_dvr)";

/// Reads a subunit v2 stream on stdin; prints one JSON line per test:
/// id, status, and the reason (a skip's reason, a failure's last
/// traceback line).
const PARSE_SUBUNIT: &str = r#"
import json, sys
import subunit, testtools
def done(t):
    details = t.get("details") or {}
    reason = ""
    for key in ("reason", "traceback"):
        if key in details:
            text = details[key].as_text().strip()
            lines = [l for l in text.splitlines() if l.strip()]
            reason = lines[-1] if lines else ""
            if key == "traceback":
                tail = [l for l in lines if "Details:" in l or "Body:" in l or "Response" in l]
                if tail: reason = reason + " | " + tail[-1].strip()
            break
    print(json.dumps({"id": t["id"], "status": t["status"], "reason": reason[:400]}))
stream = subunit.ByteStreamToStreamResult(sys.stdin.buffer, non_subunit_name="stdout")
result = testtools.StreamToDict(done)
result.startTestRun()
try:
    stream.run(result)
finally:
    result.stopTestRun()
"#;

/// The area of a test id (setUpClass failures name their class). Pure.
fn area(id: &str) -> &'static str {
    let id = id
        .split_once('(')
        .map_or(id, |(_, class)| class.trim_end_matches(')'));
    let areas: &[(&str, &str)] = &[
        ("tempest.api.compute.admin.", "compute: admin"),
        (
            "tempest.api.compute.limits.",
            "compute: quotas, limits, zones",
        ),
        (
            "tempest.api.compute.test_quotas",
            "compute: quotas, limits, zones",
        ),
        (
            "tempest.api.compute.servers.test_availability_zone",
            "compute: quotas, limits, zones",
        ),
        ("tempest.api.network.admin.", "network: admin"),
        ("tempest.api.image.v2.admin.", "image v2: admin"),
        ("tempest.api.volume.admin.", "volume v3: admin"),
        (
            "tempest.api.compute.servers.test_server_group",
            "compute: server groups",
        ),
        ("tempest.api.compute.servers.", "compute: servers"),
        ("tempest.api.compute.flavors.", "compute: flavors"),
        ("tempest.api.compute.keypairs.", "compute: keypairs"),
        (
            "tempest.api.compute.volumes.",
            "compute: volume attachments",
        ),
        (
            "tempest.api.network.test_networks",
            "network: networks, subnets",
        ),
        ("tempest.api.network.test_ports", "network: ports"),
        (
            "tempest.api.network.test_security_groups",
            "network: security groups",
        ),
        ("tempest.api.network.test_routers", "network: routers"),
        (
            "tempest.api.network.test_floating_ips",
            "network: floating IPs",
        ),
        ("tempest.api.image.v2.", "image v2"),
        ("tempest.api.volume.", "volume v3"),
    ];
    areas
        .iter()
        .find(|(prefix, _)| id.starts_with(prefix))
        .map_or("other", |(_, a)| a)
}

/// The test id without its `[id-…,tags]` suffix. Pure.
fn short_id(id: &str) -> &str {
    id.split('[').next().unwrap_or(id)
}

/// The last final status of each test in the parser's JSON lines: the
/// stream also lists every test (`exists`) and its start (`inprogress`).
/// Pure.
fn final_results(jsonl: &str) -> Vec<Value> {
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for v in jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let status = v["status"].as_str().unwrap_or_default();
        if matches!(status, "exists" | "inprogress" | "") {
            continue;
        }
        last.insert(v["id"].as_str().unwrap_or_default().to_string(), v);
    }
    last.into_values().collect()
}

/// `(passed, failed, skipped)` per area and the failures
/// `(area, test, reason)`. Pure.
type Counts = BTreeMap<&'static str, (u32, u32, u32)>;
fn tally(results: &[Value]) -> (Counts, Vec<(&'static str, String, String)>) {
    let mut counts = Counts::new();
    let mut failures = Vec::new();
    // A test of a class whose setUpClass failed fails without details.
    let setup: BTreeMap<&str, &str> = results
        .iter()
        .filter_map(|r| {
            let class = r["id"].as_str()?.strip_prefix("setUpClass (")?;
            Some((class.trim_end_matches(')'), r["reason"].as_str()?))
        })
        .collect();
    for r in results {
        let id = r["id"].as_str().unwrap_or_default();
        let a = area(id);
        let c = counts.entry(a).or_default();
        match r["status"].as_str().unwrap_or_default() {
            "success" | "xfail" => c.0 += 1,
            "skip" => c.2 += 1,
            _ => {
                c.1 += 1;
                let mut why = r["reason"].as_str().unwrap_or_default().to_string();
                let class = short_id(id).rsplit_once('.').map_or("", |(c, _)| c);
                if let (true, Some(s)) = (why.is_empty(), setup.get(class)) {
                    why = format!("its class's setUpClass failed: {s}");
                }
                failures.push((a, short_id(id).to_string(), why));
            }
        }
    }
    (counts, failures)
}

fn tempest_conf(
    os: &OpenStackLab,
    accounts: &Path,
    locks: &Path,
    images: (&str, &str),
    public_network: &str,
) -> String {
    format!(
        r#"[DEFAULT]
log_file = tempest.log
use_stderr = false

[oslo_concurrency]
lock_path = {locks}

[auth]
use_dynamic_credentials = false
test_accounts_file = {accounts}
create_isolated_networks = false
default_credentials_domain_name = Default

[identity]
uri_v3 = {auth}
ca_certificates_file = {ca}
disable_ssl_certificate_validation = false
auth_version = v3
region = RegionOne
v3_endpoint_type = public

[identity-feature-enabled]
api_v2 = false
trust = false
access_rules = false

[compute]
image_ref = {img}
image_ref_alt = {img_alt}
flavor_ref = m1
flavor_ref_alt = m2
fixed_network_name = tempest-net
build_timeout = 90
min_microversion = 2.1
max_microversion = 2.1

[compute-feature-enabled]
disk_config = false
change_password = false
console_output = true
resize = true
pause = false
shelve = false
suspend = false
cold_migration = true
live_migration = true
block_migration_for_live_migration = false
metadata_service = false
vnc_console = false
spice_console = false
serial_console = false
rescue = false
enable_instance_password = false
interface_attach = true
snapshot = false
personality = false
attach_encrypted_volume = false
config_drive = false
swap_volume = false
volume_multiattach = false
ide_bus = false

[network]
project_network_cidr = 10.100.0.0/16
project_networks_reachable = false
build_timeout = 60
public_network_id = {public}
floating_network_name = public

[network-feature-enabled]
ipv6 = false
api_extensions = security-group,quotas,port-security,provider,external-net,binding,router,dvr,subnet-external-network
port_admin_state_change = true
port_security = false
floating_ips = true

[image]
container_formats = bare
disk_formats = raw,qcow2
build_timeout = 60

[image-feature-enabled]
import_image = false
os_glance_reserved = true
manage_locations = false
image_conversion = false
image_format_enforcement = false

[volume]
build_timeout = 60
storage_protocol = ceph
vendor_name = nubo

[volume-feature-enabled]
backup = false
manage_snapshot = false
manage_volume = false
extend_attached_volume = false
api_extensions = os-volume-actions,os-vol-image-meta,os-extended-snapshot-attributes,os-availability-zone,os-quota-sets

[validation]
run_validation = false

[service_available]
nova = true
neutron = true
glance = true
cinder = true
swift = false
horizon = false
"#,
        locks = locks.display(),
        accounts = accounts.display(),
        auth = os.front_end.auth_url(),
        ca = os.front_end.ca.display(),
        img = images.0,
        img_alt = images.1,
        public = public_network,
    )
}

#[test]
#[ignore = "long (minutes; tens once the server tests run): the Tempest run of docs/openstack-compatibility.md"]
fn tempest_api_tests_against_a_real_cluster() {
    if !need_root().unwrap() {
        return;
    }
    let os = OpenStackLab::start_with_ceph(1).unwrap();
    let admin = &os.lab.cli;
    for (name, ram) in [("m1", "64"), ("m2", "128")] {
        admin
            .json(&[
                "flavor", "create", name, "--vcpus", "1", "--ram", ram, "--disk", "1",
            ])
            .unwrap();
    }
    let member = os.lab.member("tempest", "tempest").unwrap();
    // Tempest's alt account: a member of a second project (image sharing,
    // cross-project negative tests).
    let alt = os.lab.member("tempest-alt", "tempest-alt").unwrap();
    // Room for the servers Tempest makes (and for those a failed class
    // leaves behind until its cleanup): the cloud-wide default, so that a
    // project's quota set equals the defaults (as Tempest checks).
    {
        admin
            .json(&[
                "quota",
                "set",
                "--default",
                "--instances",
                "200",
                "--vcpus",
                "400",
                "--ram-mb",
                "1048576",
                "--ports",
                "400",
                "--networks",
                "100",
                "--security-groups",
                "200",
            ])
            .unwrap();
    }
    // Tempest's project_reader: a second user of the project with nubo's
    // reader role.
    let pw = os.lab.dir.path().join("reader-password");
    std::fs::write(&pw, "tempest-reader-password\n").unwrap();
    admin
        .json(&[
            "user",
            "create",
            "tempest-reader",
            "--password-file",
            &pw.display().to_string(),
        ])
        .unwrap();
    admin
        .json(&[
            "role",
            "grant",
            "reader",
            "--user",
            "tempest-reader",
            "--in",
            "tempest",
        ])
        .unwrap();
    // With data (1 MiB of zeros, raw): volumes are cloned from it in Ceph
    // (boot from volume, volumes from images); the netns guests ignore it.
    let disk = os.lab.dir.path().join("tempest-img.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk = disk.display().to_string();
    let img = member
        .json(&[
            "image",
            "create",
            "tempest-img",
            "--file",
            &disk,
            "--disk-format",
            "raw",
        ])
        .unwrap();
    let img_alt = member
        .json(&[
            "image",
            "create",
            "tempest-img-alt",
            "--file",
            &disk,
            "--disk-format",
            "raw",
        ])
        .unwrap();
    // Either account may be Tempest's primary: both boot image_ref, so
    // the images are public (made so by the admin), and both projects
    // have a network named fixed_network_name.
    for i in [&img, &img_alt] {
        let id = i["id"].as_str().unwrap();
        let shown = admin
            .json(&[
                "--project",
                "tempest",
                "image",
                "set",
                id,
                "--visibility",
                "public",
            ])
            .unwrap();
        assert_eq!(shown["visibility"], "public", "{shown}");
        let seen = alt.json(&["image", "show", id]).unwrap();
        assert_eq!(seen["id"], i["id"], "{seen}");
    }
    member
        .json(&["network", "create", "tempest-net", "--cidr", "10.30.0.0/24"])
        .unwrap();
    alt.json(&["network", "create", "tempest-net", "--cidr", "10.31.0.0/24"])
        .unwrap();
    // Tempest's admin tests boot servers as the admin (project `admin`):
    // its own `fixed_network_name` network and room for their servers.
    admin
        .json(&[
            "--project",
            "admin",
            "network",
            "create",
            "tempest-net",
            "--cidr",
            "10.32.0.0/24",
        ])
        .unwrap();
    // The external network routers' gateways and floating IPs come from
    // (Tempest's public_network_id): the admin's, as in a deployment.
    let public = admin
        .json(&[
            "network",
            "create",
            "public",
            "--cidr",
            "10.77.0.0/24",
            "--external",
        ])
        .unwrap();

    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tempest-last");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let home = os.lab.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let ws = os.lab.dir.path().join("tempest");
    let init = Command::new("tempest")
        .env("HOME", &home)
        .arg("init")
        .arg(&ws)
        .output()
        .unwrap();
    assert!(init.status.success(), "tempest init: {init:?}");
    let accounts = ws.join("etc/accounts.yaml");
    std::fs::write(
        &accounts,
        format!(
            "- username: tempest\n  project_name: tempest\n  password: tempest-password\n  domain_name: Default\n  roles:\n  - member\n\
             - username: tempest-alt\n  project_name: tempest-alt\n  password: tempest-alt-password\n  domain_name: Default\n  roles:\n  - member\n\
             - username: tempest-reader\n  project_name: tempest\n  password: tempest-reader-password\n  domain_name: Default\n  roles:\n  - reader\n\
             - username: admin\n  project_name: admin\n  password: {ADMIN_PASSWORD}\n  domain_name: Default\n  roles:\n  - admin\n"
        ),
    )
    .unwrap();
    let locks = ws.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let conf = ws.join("etc/tempest.conf");
    std::fs::write(
        &conf,
        tempest_conf(
            &os,
            &accounts,
            &locks,
            (img["id"].as_str().unwrap(), img_alt["id"].as_str().unwrap()),
            public["id"].as_str().unwrap(),
        ),
    )
    .unwrap();
    std::fs::copy(&conf, out.join("tempest.conf")).unwrap();

    // One worker: the pre-provisioned accounts are one primary/alt pair.
    let regex = std::env::var("NUBO_TEMPEST_REGEX").unwrap_or_else(|_| REGEX.to_string());
    let subunit = out.join("results.subunit");
    let started = std::time::Instant::now();
    let run = Command::new("tempest")
        .env("HOME", &home)
        .current_dir(&ws)
        .args(["run", "--concurrency", "1", "--subunit", "--regex"])
        .arg(&regex)
        .args(["--exclude-regex", EXCLUDE])
        .stdout(std::fs::File::create(&subunit).unwrap())
        .stderr(std::fs::File::create(out.join("tempest-run.stderr")).unwrap())
        .status()
        .unwrap();
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let _ = std::fs::copy(ws.join("tempest.log"), out.join("tempest.log"));
    let _ = std::fs::copy(
        os.front_end.daemon.log_path(),
        out.join("nubo-openstack.log"),
    );

    let parsed = Command::new("openstack-python")
        .args(["-c", PARSE_SUBUNIT])
        .stdin(std::fs::File::open(&subunit).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(parsed.status.success(), "parsing the subunit stream failed");
    let text = String::from_utf8_lossy(&parsed.stdout).into_owned();
    std::fs::write(out.join("results.jsonl"), &text).unwrap();
    let results = final_results(&text);
    let (counts, failures) = tally(&results);

    let mut report = format!(
        "Tempest 47.0.0, {} tests in {minutes:.1} min (`tempest run` exit status {run}), regex `{regex}`, excluding `{EXCLUDE}`\n\n| area | passed | failed | skipped |\n|---|---|---|---|\n",
        results.len()
    );
    let mut total = (0, 0, 0);
    for (a, (p, f, s)) in &counts {
        report.push_str(&format!("| {a} | {p} | {f} | {s} |\n"));
        total = (total.0 + p, total.1 + f, total.2 + s);
    }
    report.push_str(&format!(
        "| **total** | {} | {} | {} |\n\n",
        total.0, total.1, total.2
    ));
    for (a, id, why) in &failures {
        report.push_str(&format!("- {a}: `{id}` → {why}\n"));
    }
    std::fs::write(out.join("report.md"), &report).unwrap();
    println!("{report}");
    println!("(kept in {})", out.display());

    assert!(
        !results.is_empty(),
        "tempest ran no test: see {}",
        out.display()
    );
    // The areas nubo serves today pass tests against the real cluster.
    for a in [
        "compute: servers",
        "compute: flavors",
        "compute: keypairs",
        "network: security groups",
        "image v2",
    ] {
        // An area the run did not select (NUBO_TEMPEST_REGEX narrowed
        // it) is not checked; in the full run every one must have run.
        let Some((p, _, _)) = counts.get(a).copied() else {
            assert!(
                std::env::var_os("NUBO_TEMPEST_REGEX").is_some(),
                "no test ran in {a}: {report}"
            );
            continue;
        };
        assert!(p > 0, "no passed test in {a}: {report}");
    }
}

#[test]
fn areas_and_tallies() {
    assert_eq!(
        area("tempest.api.compute.servers.test_server_group.ServerGroupTestJSON.test_x[id-1]"),
        "compute: server groups"
    );
    assert_eq!(
        area("setUpClass (tempest.api.network.test_ports.PortsTestJSON)"),
        "network: ports"
    );
    assert_eq!(area("tempest.api.volume.test_volumes_get.X.t"), "volume v3");
    assert_eq!(area("tempest.api.identity.v3.X.t"), "other");
    assert_eq!(
        area("tempest.api.compute.admin.test_hypervisor.HypervisorAdminTestJSON.t"),
        "compute: admin"
    );
    assert_eq!(
        area("tempest.api.volume.admin.test_volume_types.VolumeTypesTest.t"),
        "volume v3: admin"
    );
    assert_eq!(
        area("tempest.api.compute.limits.test_absolute_limits.AbsoluteLimitsTestJSON.t"),
        "compute: quotas, limits, zones"
    );
    let results: Vec<Value> = vec![
        serde_json::json!({"id": "tempest.api.image.v2.test_images.A.t1[id-1,smoke]", "status": "success", "reason": ""}),
        serde_json::json!({"id": "tempest.api.image.v2.test_images.A.t2[id-2]", "status": "fail", "reason": "404"}),
        serde_json::json!({"id": "tempest.api.image.v2.test_images.A.t3", "status": "skip", "reason": "off"}),
    ];
    let (counts, failures) = tally(&results);
    assert_eq!(counts["image v2"], (1, 1, 1));
    let listed = "{\"id\": \"a\", \"status\": \"exists\", \"reason\": \"\"}\n{\"id\": \"a\", \"status\": \"success\", \"reason\": \"\"}\n{\"id\": \"b\", \"status\": \"exists\", \"reason\": \"\"}\n";
    let r = final_results(listed);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["status"], "success");
    assert_eq!(
        failures,
        vec![(
            "image v2",
            "tempest.api.image.v2.test_images.A.t2".to_string(),
            "404".to_string()
        )]
    );
}
