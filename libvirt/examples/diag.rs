use std::time::Instant;
use nubo_libvirt::*;
#[tokio::main]
async fn main() {
    let uri = "qemu+unix:///system?socket=/tmp/nbtdiag/run/ns-nbtdiag/run/libvirt-sock";
    let mut cfg = DriverConfig::new(uri);
    cfg.name_prefix = "nbtdiag-".into();
    let d = LibvirtDriver::connect_with(cfg).await.unwrap();
    for (i, mem) in [(1u32, 512u64), (2, 192), (3, 192)] {
        let id = format!("3f2a9c1e-8b7d-4e6f-a5c4-00000000000{i}");
        let spec = DomainSpec { instance_id: id.clone(), name: "x".into(), vcpus: 1, memory_mb: mem,
            disk: DiskSpec::LocalQcow2 { path: "/tmp/nbtdiag/d.qcow2".into() },
            kernel: Some(KernelBoot { kernel: "/var/cache/nubo/test-guest/vmlinuz".into(), initrd: Some("/var/cache/nubo/test-guest/initrd.gz".into()), cmdline: Some("console=ttyS0 panic=-1 quiet".into()) }),
            nics: vec![], console_log: format!("/tmp/nbtdiag/logs/{id}.log").into(), domain_type: DomainType::Qemu, vnc: true };
        if i == 1 { std::fs::write(format!("/tmp/nbtdiag/logs/{id}.log"), b"").unwrap(); }
        let t = Instant::now(); d.define_and_start(&spec).await.unwrap(); println!("fresh define_and_start mem={mem} {:?}", t.elapsed());
        d.undefine(&id).await.unwrap();
    }
}
