use std::time::Instant;
use nubo_libvirt::*;
#[tokio::main]
async fn main() {
    let uri = "qemu+unix:///system?socket=/tmp/nbtdiag/run/ns-nbtdiag/run/libvirt-sock";
    let mut cfg = DriverConfig::new(uri);
    cfg.name_prefix = "nbtdiag-".into();
    let d = LibvirtDriver::connect_with(cfg).await.unwrap();
    let id = "3f2a9c1e-8b7d-4e6f-a5c4-1d2e3f4a5b6c";
    let t = Instant::now(); d.destroy(id).await.unwrap(); println!("destroy {:?}", t.elapsed());
    let t = Instant::now(); d.start(id).await.unwrap(); println!("start {:?}", t.elapsed());
    let t = Instant::now(); let l = d.list_nubo_domains().await.unwrap(); println!("list {:?} {:?}", t.elapsed(), l);
    let t = Instant::now(); d.destroy(id).await.unwrap(); println!("destroy {:?}", t.elapsed());
}
