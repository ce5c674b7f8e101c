//! Golden-file tests of `domain_xml` (`UPDATE_SNAPSHOTS=1` rewrites them),
//! plus schema validation with `virt-xml-validate` (libvirt-clients and
//! libxml2-utils must be installed: the test fails without them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use nubo_libvirt::{
    domain_xml, domain_xml_with_prefix, parse_disks, DiskSpec, DomainSpec, DomainType, IoTune,
    KernelBoot, MonHost, Nic, RbdDisk, SpecError, VolumeDisk,
};

fn full_spec() -> DomainSpec {
    DomainSpec {
        instance_id: "3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c".to_owned(),
        name: "web <1> & \"friends\"".to_owned(),
        vcpus: 2,
        memory_mb: 512,
        disk: DiskSpec::LocalQcow2 {
            path: "/var/lib/nubo/instances/3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c/disk.qcow2".into(),
        },
        volumes: vec![],
        kernel: Some(KernelBoot {
            kernel: "/var/cache/nubo/test-guest/vmlinuz".into(),
            initrd: Some("/var/cache/nubo/test-guest/initrd.gz".into()),
            cmdline: Some("console=ttyS0 panic=-1 nubo.ping=10.0.0.1 x='a&b'".to_owned()),
        }),
        nics: vec![
            Nic {
                tap: "tap3f2a9c1e-8b".to_owned(),
                mac: "FA:16:3E:00:00:01".to_owned(),
                mtu: Some(1450),
            },
            Nic {
                tap: "tap77aa0000-01".to_owned(),
                mac: "fa:16:3e:00:00:02".to_owned(),
                mtu: None,
            },
        ],
        console_log: "/var/log/nubo/console/3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c.log".into(),
        domain_type: DomainType::Kvm,
        vnc: true,
    }
}

fn minimal_spec() -> DomainSpec {
    DomainSpec {
        instance_id: "00000000-0000-4000-8000-000000000001".to_owned(),
        name: "tiny".to_owned(),
        vcpus: 1,
        memory_mb: 128,
        disk: DiskSpec::LocalQcow2 {
            path: "/srv/disk.qcow2".into(),
        },
        volumes: vec![],
        kernel: None,
        nics: vec![],
        console_log: "/srv/console.log".into(),
        domain_type: DomainType::Qemu,
        vnc: false,
    }
}

fn snapshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name)
}

fn assert_snapshot(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (UPDATE_SNAPSHOTS=1 rewrites it)",
        path.display()
    );
}

/// Validates against libvirt's RNG schema with `virt-xml-validate`, which
/// runs `xmllint`: both are part of the declared packages (libvirt-clients,
/// libxml2-utils; `scripts/deps.sh`), so a missing one fails the test
/// rather than skipping the check.
fn validate_with_libvirt(name: &str, xml: &str) {
    for (tool, package) in [
        ("virt-xml-validate", "libvirt-clients"),
        ("xmllint", "libxml2-utils"),
    ] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            panic!("{tool} ({package}, installed by scripts/deps.sh) cannot run: {e}");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    std::fs::write(&file, xml).expect("write xml");
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate");
    assert!(
        out.status.success(),
        "libvirt schema rejects {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn full_spec_snapshot() {
    let spec = full_spec();
    spec.validate().expect("valid spec");
    let xml = domain_xml(&spec);
    assert_snapshot("full.xml", &xml);
    validate_with_libvirt("full.xml", &xml);
}

#[test]
fn minimal_spec_snapshot() {
    let spec = minimal_spec();
    spec.validate().expect("valid spec");
    let xml = domain_xml(&spec);
    assert_snapshot("minimal.xml", &xml);
    validate_with_libvirt("minimal.xml", &xml);
}

#[test]
fn rendering_is_deterministic_and_prefix_only_changes_the_name() {
    let spec = full_spec();
    assert_eq!(domain_xml(&spec), domain_xml(&spec.clone()));
    let a = domain_xml(&spec);
    let b = domain_xml_with_prefix(&spec, "nbtx-");
    let diff: Vec<_> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
    assert_eq!(
        diff,
        vec![(
            "  <name>nubo-3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c</name>",
            "  <name>nbtx-3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c</name>"
        )]
    );
}

#[test]
fn invalid_specs_are_rejected_precisely() {
    let mut s = minimal_spec();
    s.instance_id = "not-a-uuid".to_owned();
    assert!(matches!(s.validate(), Err(SpecError::InstanceId(_))));

    let mut s = minimal_spec();
    s.vcpus = 0;
    assert!(matches!(s.validate(), Err(SpecError::NoVcpus(_))));

    let mut s = minimal_spec();
    s.memory_mb = 8;
    assert!(matches!(s.validate(), Err(SpecError::Memory { .. })));

    let mut s = full_spec();
    s.nics[0].tap = "tap-name-too-long".to_owned();
    assert!(matches!(s.validate(), Err(SpecError::TapName { .. })));

    let mut s = full_spec();
    s.nics[1].mac = "01:00:5e:00:00:01".to_owned();
    assert!(matches!(s.validate(), Err(SpecError::Mac { .. })));

    let mut s = full_spec();
    s.nics[0].mtu = Some(10);
    assert!(matches!(s.validate(), Err(SpecError::Mtu { .. })));

    let mut s = minimal_spec();
    s.console_log = "relative.log".into();
    assert!(matches!(
        s.validate(),
        Err(SpecError::Path {
            what: "console log",
            ..
        })
    ));
}

fn rbd(name: &str) -> RbdDisk {
    RbdDisk {
        name: name.to_owned(),
        hosts: vec![
            MonHost {
                host: "10.0.0.1".to_owned(),
                port: 6789,
            },
            MonHost {
                host: "10.0.0.2".to_owned(),
                port: 6789,
            },
        ],
        username: "nubo-agent".to_owned(),
        secret_uuid: "9f0b6a8e-1c2d-4e3f-8a9b-0c1d2e3f4a5b".to_owned(),
    }
}

/// Root disk on RBD (a clone) plus two volumes, one with QoS.
fn rbd_spec() -> DomainSpec {
    let mut s = minimal_spec();
    s.disk = DiskSpec::Rbd(rbd("vms/00000000-0000-4000-8000-000000000001-disk"));
    s.volumes = vec![
        VolumeDisk {
            target: "vdb".to_owned(),
            source: rbd("volumes/vol-7c9e6679-7425-40de-944b-e07fc1f90ae7"),
            serial: "7c9e6679742540de944b".to_owned(),
            iotune: IoTune {
                write_iops_sec: Some(200),
                read_bytes_sec: Some(10 << 20),
                ..IoTune::default()
            },
            read_only: false,
        },
        VolumeDisk {
            target: "vdc".to_owned(),
            source: rbd("volumes/vol-2"),
            serial: "vol2".to_owned(),
            iotune: IoTune::default(),
            read_only: false,
        },
    ];
    s
}

#[test]
fn rbd_spec_snapshot() {
    let spec = rbd_spec();
    spec.validate().expect("valid spec");
    let xml = domain_xml(&spec);
    assert_snapshot("rbd.xml", &xml);
    validate_with_libvirt("rbd.xml", &xml);
    let disks = parse_disks(&xml);
    let targets: Vec<&str> = disks.iter().map(|d| d.target.as_str()).collect();
    assert_eq!(targets, ["vda", "vdb", "vdc"]);
    assert_eq!(disks[1].iotune, spec.volumes[0].iotune);
}

#[test]
fn bad_volume_disks_are_rejected() {
    for (i, f) in [
        (|v: &mut VolumeDisk| v.target = "vda".into()) as fn(&mut VolumeDisk),
        |v| v.target = "sdb".into(),
        |v| v.serial = "x".repeat(21),
        |v| v.serial = "a b".into(),
        |v| v.source.name = "no-pool".into(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = rbd_spec();
        f(&mut s.volumes[0]);
        assert!(
            matches!(s.validate(), Err(SpecError::Volume { .. })),
            "case {i}"
        );
    }
    let mut s = rbd_spec();
    s.volumes[1].target = "vdb".into();
    assert!(matches!(s.validate(), Err(SpecError::Volume { .. })));
}
