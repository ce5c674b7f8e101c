//! Golden-file tests of `domain_xml` (`UPDATE_SNAPSHOTS=1` rewrites them),
//! plus schema validation with `virt-xml-validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use nubo_libvirt::{
    domain_xml, domain_xml_with_prefix, DiskSpec, DomainSpec, DomainType, KernelBoot, Nic,
    SpecError,
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

/// Validates against libvirt's RNG schema when `virt-xml-validate` exists.
fn validate_with_libvirt(name: &str, xml: &str) {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !have("virt-xml-validate") || !have("xmllint") {
        eprintln!("virt-xml-validate/xmllint (libvirt-clients, libxml2-utils) missing; schema check skipped");
        return;
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
