//! End-to-end test against a private libvirtd (root only).
//!
//! Everything this test creates is named `nbt<token>…`: a network namespace
//! with a bridge and a tap, a libvirtd + virtlogd confined to that namespace
//! with private state directories (own mount namespace), and the domains.
//!
//! `/dev/kvm` is hidden from the private libvirtd (bind-mounted over with an
//! empty root-only 0600 file): this machine's paravirtual KVM cannot run
//! guests, and whenever `/dev/kvm` is accessible to the QEMU user while the
//! cached capabilities say "no KVM", libvirtd 9 re-probes QEMU on every
//! `define` (16-50 s each here). `/dev/null` is NOT a hiding place: it is
//! accessible, so the probe repeats. Hidden, libvirtd probes TCG once at
//! start and defines take ~20-60 ms. A private qemu.conf with
//! `namespaces = []` keeps libvirt from moving that bind mount into each
//! QEMU's private /dev (which fails with EINVAL).
//! [`Env`] (the harness's [`HostLibvirtd`] in a namespace of this run's
//! [`Names`]) tears it all down on drop, also when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nubo_libvirt::{
    DiskSpec, DomainEvent, DomainSpec, DomainType, DriverConfig, DriverError, EventStream,
    ImageCache, KernelBoot, LibvirtDriver, LifecycleEvent, Nic, PowerState, StopReason,
};
use nubo_tests::netns::{ip_batch, is_root, Names};
use nubo_tests::vm_e2e::{ensure_test_guest, guest_dir, HostLibvirtd};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(90);

fn run(cmd: &str, args: &[&str]) -> String {
    nubo_tests::netns::run(cmd, args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Per-run test environment: the harness's [`HostLibvirtd`] in a namespace
/// of this run's [`Names`]; torn down on drop (domains, QEMUs and daemons
/// first, then the namespace, then the directory).
struct Env {
    lv: HostLibvirtd,
    names: Names,
    dir: tempfile::TempDir,
}

impl Env {
    fn token(&self) -> &str {
        self.names.token()
    }
    fn ns(&self) -> String {
        self.names.prefix()
    }
    fn bridge(&self) -> String {
        self.names.name("b")
    }
    fn tap(&self) -> String {
        self.names.name("t0")
    }
    fn prefix(&self) -> String {
        format!("{}-", self.names.prefix())
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-c", self.lv.uri()];
        all.extend_from_slice(args);
        run("virsh", &all)
    }

    fn start() -> Env {
        assert!(is_root(), "the real libvirt test needs root");
        let names = Names::new().expect("names");
        let dir = tempfile::Builder::new()
            .prefix(&names.prefix())
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        for d in ["disks", "logs"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("mkdir");
        }
        std::fs::set_permissions(
            dir.path().join("logs"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod logs");
        let ns = names.add_netns("").expect("namespace");
        let (br, tap) = (names.name("b"), names.name("t0"));
        ip_batch(
            Some(&ns),
            &format!(
                "link add {br} type bridge\naddr add 10.77.0.1/24 dev {br}\nlink set {br} up\n\
                 tuntap add dev {tap} mode tap\nlink set {tap} master {br} up\n"
            ),
        )
        .expect("bridge and tap");
        let prefix = format!("{}-", names.prefix());
        let lv = HostLibvirtd::start_in(&ns, dir.path(), &prefix).expect("private libvirtd");
        Env { lv, names, dir }
    }

    /// Stops libvirtd (SIGTERM by pid; domains keep running) and starts it
    /// again.
    fn restart_libvirtd(&self) {
        self.lv.restart_in(&self.ns()).expect("restart libvirtd");
    }
}

fn guest_files() -> (PathBuf, PathBuf) {
    ensure_test_guest().expect("test guest");
    let dir = guest_dir();
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).matches(needle).count())
        .unwrap_or(0)
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_event(events: &mut EventStream, id: &str, want: LifecycleEvent) -> Vec<DomainEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                let hit = ev.instance_id == id && ev.event == want;
                seen.push(ev);
                if hit {
                    return seen;
                }
            }
            Ok(None) => panic!("event stream closed; seen {seen:?}"),
            Err(_) => panic!("no {want:?} for {id}; seen {seen:?}"),
        }
    }
}

struct Fixture {
    env: Env,
    cache: ImageCache,
    base: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

impl Fixture {
    async fn spec(&self, id: &str, nics: Vec<Nic>, extra_cmdline: &str) -> DomainSpec {
        let disk = self
            .cache
            .create_overlay(&self.base, id, 1)
            .await
            .expect("overlay");
        DomainSpec {
            instance_id: id.to_owned(),
            name: format!("test {id}"),
            vcpus: 1,
            memory_mb: 192,
            disk: DiskSpec::LocalQcow2 { path: disk },
            volumes: vec![],
            kernel: Some(KernelBoot {
                kernel: self.kernel.clone(),
                initrd: Some(self.initrd.clone()),
                cmdline: Some(format!("console=ttyS0 panic=-1 quiet {extra_cmdline}")),
            }),
            nics,
            console_log: self.env.dir.path().join("logs").join(format!("{id}.log")),
            domain_type: DomainType::Qemu,
            vnc: true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_private_libvirtd() {
    let (kernel, initrd) = guest_files();
    let env = Env::start();
    let cache = ImageCache::new(env.dir.path().join("disks"));
    let raw = env.dir.path().join("empty.raw");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(64 << 20))
        .expect("raw base");
    let sha: String = Sha256::digest(std::fs::read(&raw).expect("read raw"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = cache
        .ensure_base("empty", &raw, &sha)
        .await
        .expect("ensure_base");
    let fx = Fixture {
        cache,
        base,
        kernel,
        initrd,
        env,
    };
    let env = &fx.env;

    let driver = LibvirtDriver::connect_with(DriverConfig {
        uri: env.lv.uri().to_string(),
        name_prefix: env.prefix(),
        qemu_pid_dir: env.run_dir().join("qemu"),
    })
    .await
    .expect("connect");
    let mut events = driver.events().await.expect("events");

    // A foreign domain: listed as such, never touched.
    let foreign_uuid = "0f0f0f0f-0000-4000-8000-000000000001";
    let foreign_xml = env.dir.path().join("foreign.xml");
    std::fs::write(
        &foreign_xml,
        format!(
            "<domain type='qemu'><name>nbt{}-foreign</name><uuid>{foreign_uuid}</uuid>\
             <memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>",
            env.token()
        ),
    )
    .expect("write foreign");
    env.virsh(&["define", foreign_xml.to_str().expect("utf8")]);
    let foreign = driver.list_foreign_domains().await.expect("foreign");
    assert_eq!(foreign.len(), 1, "{foreign:?}");
    assert_eq!(foreign[0].uuid, foreign_uuid);
    assert!(driver.list_nubo_domains().await.expect("list").is_empty());
    let err = driver.destroy(foreign_uuid).await.expect_err("foreign");
    assert!(matches!(err, DriverError::Foreign { .. }), "{err}");

    // Boot a VM with a nubo-owned tap on the bridge.
    let id = "7b0c1a2e-1111-4000-8000-0000000000a1";
    let spec = fx
        .spec(
            id,
            vec![Nic {
                tap: env.tap(),
                mac: "52:54:00:77:00:01".to_owned(),
                mtu: Some(1400),
            }],
            "",
        )
        .await;
    driver
        .define_and_start(&spec)
        .await
        .expect("define_and_start");
    wait_event(&mut events, id, LifecycleEvent::Started).await;
    wait_until("NUBO-GUEST: init", || {
        count_in(&spec.console_log, "NUBO-GUEST: init") >= 1
    })
    .await;
    let listed = driver.list_nubo_domains().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].instance_id, id);
    assert_eq!(listed[0].name, format!("{}{id}", env.prefix()));
    assert_eq!(listed[0].state, PowerState::Running);
    let pid = listed[0].qemu_pid.expect("qemu pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("qemu alive");
    assert!(String::from_utf8_lossy(&cmdline).contains("qemu-system"));
    // The tap is the one we created, attached to our bridge and still there.
    let link = run("ip", &["-n", &env.ns(), "-o", "link", "show", &env.tap()]);
    assert!(link.contains(&format!("master {}", env.bridge())), "{link}");
    // Idempotent: a second define_and_start keeps the same QEMU.
    driver.define_and_start(&spec).await.expect("again");
    let again = driver.get(id).await.expect("get").expect("exists");
    assert_eq!(again.qemu_pid, Some(pid));

    // Bulk statistics: one record for the running nubo domain (the foreign
    // one is neither running nor named with our prefix), its disk by target
    // and its tap, CPU time rising between two calls.
    let stats = driver.all_domain_stats().await.expect("bulk stats");
    assert_eq!(stats.len(), 1, "{stats:?}");
    let s = &stats[0];
    assert_eq!(s.uuid, id);
    assert_eq!(s.name, format!("{}{id}", env.prefix()));
    assert_eq!(s.state, Some(PowerState::Running));
    assert_eq!(s.vcpus, Some(1));
    assert_eq!(s.balloon.available_bytes(), Some(192 << 20), "{s:?}");
    assert!(s.balloon.used_bytes().is_some_and(|u| u > 0), "{s:?}");
    let disks: Vec<&str> = s.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(disks, ["vda"], "{s:?}");
    let taps: Vec<&str> = s.interfaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(taps, [env.tap().as_str()], "{s:?}");
    let cpu0 = s.cpu_time_ns.expect("cpu.time");
    assert!(cpu0 > 0, "{s:?}");
    let t0 = Instant::now();
    let cpu1 = loop {
        let now = driver.all_domain_stats().await.expect("bulk stats");
        let cpu = now[0].cpu_time_ns.expect("cpu.time");
        if cpu > cpu0 || t0.elapsed() > WAIT {
            break cpu;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(cpu1 > cpu0, "CPU time did not rise: {cpu0} -> {cpu1}");

    // Resizing needs the domain shut off.
    let mut bigger = spec.clone();
    bigger.memory_mb = 256;
    let err = driver.redefine(&bigger).await.expect_err("running");
    assert!(matches!(err, DriverError::WrongState { .. }), "{err}");

    // Reboot (hard reset): the guest boots again in the same QEMU.
    driver.reboot(id).await.expect("reboot");
    wait_until("second NUBO-GUEST: init", || {
        count_in(&spec.console_log, "NUBO-GUEST: init") >= 2
    })
    .await;
    assert_eq!(
        driver.get(id).await.expect("get").expect("exists").qemu_pid,
        Some(pid)
    );

    // The tiny guest ignores ACPI: shutdown falls back to destroy.
    let outcome = driver
        .shutdown(id, Duration::from_secs(3))
        .await
        .expect("shutdown");
    eprintln!("shutdown outcome: {outcome:?}");
    let info = driver.get(id).await.expect("get").expect("exists");
    assert_eq!(info.state, PowerState::ShutOff);
    assert_eq!(info.qemu_pid, None);
    wait_event(
        &mut events,
        id,
        LifecycleEvent::Stopped(StopReason::Destroyed),
    )
    .await;
    let err = driver.reboot(id).await.expect_err("not running");
    assert!(matches!(err, DriverError::WrongState { .. }), "{err}");

    // Resize while stopped, start again.
    driver.redefine(&bigger).await.expect("redefine");
    let dumped = env.virsh(&["dumpxml", &format!("{}{id}", env.prefix())]);
    assert!(
        dumped.contains("<memory unit='KiB'>262144</memory>"),
        "{dumped}"
    );
    let t0 = Instant::now();
    driver.start(id).await.expect("start");
    let before = count_in(&spec.console_log, "NUBO-GUEST: init");
    wait_until("init after start", || {
        count_in(&spec.console_log, "NUBO-GUEST: init") > before
    })
    .await;
    eprintln!("start -> NUBO-GUEST: init after {:?}", t0.elapsed());
    let info = driver.get(id).await.expect("get").expect("exists");
    assert_eq!((info.vcpus, info.memory_mb), (bigger.vcpus, 256));
    let pid = info.qemu_pid.expect("qemu pid");

    // libvirtd restarts: the domain keeps running, the driver reconnects
    // on its next call and the event stream registers again.
    env.restart_libvirtd();
    // Calls fail fast (no attempt) while the backoff after a failed
    // reconnection runs, then reconnect.
    let deadline = Instant::now() + WAIT;
    let info = loop {
        match driver.get(id).await {
            Ok(info) => break info,
            Err(e @ (DriverError::Disconnected { .. } | DriverError::Connect { .. })) => {
                assert!(Instant::now() < deadline, "no reconnection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("get after libvirtd restart: {e}"),
        }
    };
    assert_eq!(info.and_then(|i| i.qemu_pid), Some(pid), "QEMU survives");
    assert!(driver.is_connected());
    // NIC hot-plug, on the reconnected driver: a second pre-created tap
    // gets an <interface> in the running guest (QEMU opens it: carrier),
    // and is unplugged again. Late in the test on purpose: after a
    // hot-unplug the tiny guest may answer the ACPI shutdown above (a
    // guest shutdown instead of the destroy that step waits for).
    let tap2 = env.names.name("t1");
    ip_batch(
        Some(&env.ns()),
        &format!(
            "tuntap add dev {tap2} mode tap\nlink set {tap2} master {} up\n",
            env.bridge()
        ),
    )
    .expect("second tap");
    let carrier = |tap: &str| {
        !run("ip", &["-n", &env.ns(), "-o", "link", "show", tap]).contains("NO-CARRIER")
    };
    assert!(!carrier(&tap2), "nothing has opened {tap2} yet");
    assert_eq!(driver.interfaces(id).await.expect("nics"), [env.tap()]);
    let nic2 = Nic {
        tap: tap2.clone(),
        mac: "52:54:00:77:00:02".to_owned(),
        mtu: Some(1400),
    };
    driver
        .attach_interface(id, &nic2)
        .await
        .expect("attach nic");
    driver
        .attach_interface(id, &nic2)
        .await
        .expect("attach nic again: no-op");
    assert_eq!(
        driver.interfaces(id).await.expect("nics"),
        [env.tap(), tap2.clone()]
    );
    wait_until("QEMU opened the hot-plugged tap", || carrier(&tap2)).await;
    driver
        .detach_interface(id, &tap2)
        .await
        .expect("detach nic");
    let mut left = Vec::new();
    for _ in 0..600 {
        left = driver.interfaces(id).await.expect("nics");
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, [env.tap()], "the guest did not release the NIC");
    driver
        .detach_interface(id, &tap2)
        .await
        .expect("detach again: no-op");
    // The stream registers again on the new connection; a destroy through
    // it is seen there.
    wait_until("events registered again", || events.registrations() >= 2).await;
    driver.destroy(id).await.expect("destroy");
    wait_event(
        &mut events,
        id,
        LifecycleEvent::Stopped(StopReason::Destroyed),
    )
    .await;
    driver.destroy(id).await.expect("destroy is idempotent");

    // A guest that powers itself off is seen through the event stream.
    let off = "7b0c1a2e-3333-4000-8000-0000000000f1";
    let off_spec = fx.spec(off, vec![], "nubo.nonet nubo.poweroff").await;
    driver
        .define_and_start(&off_spec)
        .await
        .expect("poweroff guest");
    let seen = wait_event(
        &mut events,
        off,
        LifecycleEvent::Stopped(StopReason::Shutdown),
    )
    .await;
    assert!(
        seen.iter()
            .any(|e| e.instance_id == off && e.event.power_state() == Some(PowerState::Running)),
        "{seen:?}"
    );
    let info = driver.get(off).await.expect("get").expect("exists");
    assert_eq!(info.state, PowerState::ShutOff);

    // Undefine leaves nothing of ours behind.
    for i in [id, off] {
        driver.undefine(i).await.expect("undefine");
        driver.undefine(i).await.expect("undefine is idempotent");
        fx.cache.remove_overlay(i).await.expect("rm overlay");
    }
    assert!(driver.list_nubo_domains().await.expect("list").is_empty());
    let all = env.virsh(&["list", "--all", "--name"]);
    let names: Vec<&str> = all
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(names, vec![format!("nbt{}-foreign", env.token())]);
    let err = driver.start(id).await.expect_err("gone");
    assert!(matches!(err, DriverError::NotFound(_)), "{err}");
    let link = run("ip", &["-n", &env.ns(), "-o", "link", "show", &env.tap()]);
    assert!(link.contains(&env.tap()), "nubo's tap must survive: {link}");
    drop(events);
}
