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
//! [`Env`]'s `Drop` tears it all down, also when an assertion fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nubo_libvirt::{
    DiskSpec, DomainEvent, DomainSpec, DomainType, DriverConfig, DriverError, EventStream,
    ImageCache, KernelBoot, LibvirtDriver, LifecycleEvent, Nic, PowerState, StopReason,
};
use sha2::{Digest, Sha256};

const GUEST_DIR: &str = "/var/cache/nubo/test-guest";
const WAIT: Duration = Duration::from_secs(90);

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Per-run test environment; torn down on drop.
struct Env {
    token: String,
    dir: tempfile::TempDir,
    uri: String,
}

impl Env {
    fn ns(&self) -> String {
        format!("nbt{}", self.token)
    }
    fn bridge(&self) -> String {
        format!("nbt{}b", self.token)
    }
    fn tap(&self) -> String {
        format!("nbt{}t0", self.token)
    }
    fn prefix(&self) -> String {
        format!("nbt{}-", self.token)
    }
    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-c", self.uri.as_str()];
        all.extend_from_slice(args);
        run("virsh", &all)
    }

    fn start() -> Env {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the real libvirt test needs root"
        );
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let token = format!("{:06x}", (std::process::id() ^ nanos) & 0xff_ffff);
        let dir = tempfile::Builder::new()
            .prefix(&format!("nbt{token}"))
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let base = dir.path().to_str().expect("utf8").to_owned();
        let uri = format!("qemu+unix:///system?socket={base}/run/libvirt-sock");
        let env = Env { token, dir, uri };
        for d in ["run", "etcq", "lib", "cache", "log", "disks", "logs"] {
            std::fs::create_dir_all(env.dir.path().join(d)).expect("mkdir");
        }
        std::fs::set_permissions(
            env.dir.path().join("logs"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("chmod logs");
        let (ns, br, tap) = (env.ns(), env.bridge(), env.tap());
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns, "link", "add", &br, "type", "bridge"]);
        run(
            "ip",
            &["-n", &ns, "addr", "add", "10.77.0.1/24", "dev", &br],
        );
        run("ip", &["-n", &ns, "link", "set", &br, "up"]);
        run(
            "ip",
            &["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"],
        );
        run("ip", &["-n", &ns, "link", "set", &tap, "master", &br, "up"]);
        env.launch(true);
        env
    }

    /// Starts libvirtd (and virtlogd when `with_virtlogd`) in the
    /// namespace, with the private state directories; waits until it answers.
    fn launch(&self, with_virtlogd: bool) {
        let base = self.dir.path().to_str().expect("utf8");
        let virtlogd = if with_virtlogd {
            "virtlogd -d -p /run/libvirt/virtlogd.pid && "
        } else {
            ""
        };
        let script = format!(
            "mkdir -p /run/libvirt /var/cache/libvirt /var/log/libvirt && mount --bind {base}/run /run/libvirt && mount --bind {base}/etcq /etc/libvirt/qemu \
             && mount --bind {base}/lib /var/lib/libvirt && mount --bind {base}/cache /var/cache/libvirt \
             && mount --bind {base}/log /var/log/libvirt \
             && : > {base}/nokvm && chmod 600 {base}/nokvm \
             && {{ [ ! -e /dev/kvm ] || mount --bind {base}/nokvm /dev/kvm; }} \
             && echo 'namespaces = []' > {base}/qemu.conf && mount --bind {base}/qemu.conf /etc/libvirt/qemu.conf \
             && {virtlogd}libvirtd -d -p /run/libvirt/libvirtd.pid"
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(),
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new("virsh")
                .args(["-c", &self.uri, "version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "private libvirtd did not come up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops libvirtd (SIGTERM by pid; domains keep running) and starts it
    /// again.
    fn restart_libvirtd(&self) {
        self.kill_pidfile("libvirtd.pid");
        self.launch(false);
    }

    fn kill_pidfile(&self, name: &str) {
        let Ok(pid) = std::fs::read_to_string(self.run_dir().join(name)) else {
            return;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            return;
        };
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "list", "--all", "--name"])
            .output()
        {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let name = name.trim();
                if name.starts_with(&format!("nbt{}", self.token)) {
                    let _ = Command::new("virsh")
                        .args(["-c", &self.uri, "destroy", name])
                        .output();
                    let _ = Command::new("virsh")
                        .args(["-c", &self.uri, "undefine", "--nvram", name])
                        .output();
                }
            }
        }
        // Any QEMU of ours that survived (found by our unique token).
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                let needle = format!("guest=nbt{}-", self.token);
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        self.kill_pidfile("libvirtd.pid");
        self.kill_pidfile("virtlogd.pid");
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns()])
            .output();
    }
}

fn guest_files() -> (PathBuf, PathBuf) {
    let dir = Path::new(GUEST_DIR);
    if !dir.join("vmlinuz").exists() || !dir.join("initrd.gz").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-guest.sh");
        run("bash", &[script.to_str().expect("utf8")]);
    }
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
        uri: env.uri.clone(),
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
            env.token
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
    assert_eq!(names, vec![format!("nbt{}-foreign", env.token)]);
    let err = driver.start(id).await.expect_err("gone");
    assert!(matches!(err, DriverError::NotFound(_)), "{err}");
    let link = run("ip", &["-n", &env.ns(), "-o", "link", "show", &env.tap()]);
    assert!(link.contains(&env.tap()), "nubo's tap must survive: {link}");
    drop(events);
}
