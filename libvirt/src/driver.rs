//! [`LibvirtDriver`]: nubo's compute operations on one libvirt connection.
//!
//! libvirt calls block; every operation runs them on tokio's blocking pool.
//! Every mutating operation first checks that the domain carries the nubo
//! metadata element, so foreign domains are never touched.
//!
//! The connection survives libvirtd restarts: a call that finds it closed
//! opens a new one (attempts spaced by an exponential backoff, 100 ms up to
//! [`RECONNECT_MAX_DELAY`]), and every [`EventStream`] re-registers its
//! lifecycle callback on the new connection. Running domains are not
//! affected (QEMU keeps running while libvirtd restarts).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use virt_sys as sys;

use crate::disk::{parse_disks, volume_disk_xml, AttachedDisk, IoTune, VolumeDisk};
use crate::error::DriverError;
use crate::events::{self, DomainEvent, EventStream, Registration};
use crate::ffi::{affect_flags, Conn, Dom, VirError};
use crate::info::{DomainInfo, ForeignDomain, PowerState};
use crate::spec::{DomainSpec, Nic, DEFAULT_NAME_PREFIX};
use crate::stats::DomainStats;
use crate::xml::{domain_xml_with_prefix, NUBO_METADATA_NS};

/// How to reach libvirt and how nubo domains are named there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Connection URI, e.g. `qemu:///system` or
    /// `qemu+unix:///system?socket=/run/x/libvirt-sock`.
    pub uri: String,
    /// Domain name prefix (`nubo-`; tests use their own).
    pub name_prefix: String,
    /// Directory where libvirtd writes `<domain name>.pid` for QEMU
    /// (`/run/libvirt/qemu` for the system daemon).
    pub qemu_pid_dir: PathBuf,
}

impl DriverConfig {
    /// Defaults for the system libvirtd at `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        DriverConfig {
            uri: uri.into(),
            name_prefix: DEFAULT_NAME_PREFIX.to_owned(),
            qemu_pid_dir: PathBuf::from("/run/libvirt/qemu"),
        }
    }
}

/// How [`LibvirtDriver::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The domain was not running.
    AlreadyOff,
    /// The guest honoured the ACPI request in time.
    Graceful,
    /// The timeout passed and the domain was destroyed.
    Forced,
}

/// The longest wait between two reconnection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(100);
/// How often an [`EventStream`] checks that its connection is still open.
const EVENT_CONN_CHECK: Duration = Duration::from_millis(250);

/// The current connection, replaced when it closes.
#[derive(Debug)]
struct Shared {
    cfg: DriverConfig,
    conn: RwLock<Arc<Conn>>,
    /// Serializes reconnection attempts and spaces them out.
    backoff: Mutex<Backoff>,
}

/// When the next reconnection attempt may happen. Pure state machine.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    next_attempt: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    const fn new() -> Self {
        Backoff {
            next_attempt: None,
            delay: RECONNECT_MIN_DELAY,
        }
    }

    /// Whether an attempt may be made at `now`.
    fn may_try(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|t| now >= t)
    }

    /// Records a failed attempt at `now`: the next one waits twice as long.
    fn failed(&mut self, now: Instant) {
        self.next_attempt = Some(now + self.delay);
        self.delay = (self.delay * 2).min(RECONNECT_MAX_DELAY);
    }

    fn succeeded(&mut self) {
        *self = Backoff::new();
    }
}

fn open_conn(uri: &str) -> Result<Conn, DriverError> {
    let connect = |source| DriverError::Connect {
        uri: uri.to_owned(),
        source,
    };
    events::ensure_event_loop().map_err(DriverError::Events)?;
    let conn = Conn::open(uri).map_err(connect)?;
    conn.set_keepalive(5, 3).map_err(connect)?;
    Ok(conn)
}

impl Shared {
    fn current(&self) -> Arc<Conn> {
        match self.conn.read() {
            Ok(c) => Arc::clone(&c),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// An open connection: the current one, or a new one if it closed
    /// (libvirtd restarted). Blocking. Fails at once, without an attempt,
    /// while the backoff after a failed attempt runs.
    fn live_conn(&self) -> Result<Arc<Conn>, DriverError> {
        let conn = self.current();
        if conn.is_alive() {
            return Ok(conn);
        }
        let mut backoff = match self.backoff.lock() {
            Ok(b) => b,
            Err(p) => p.into_inner(),
        };
        // Another caller may have reconnected while we waited for the lock.
        let conn = self.current();
        if conn.is_alive() {
            return Ok(conn);
        }
        let now = Instant::now();
        if !backoff.may_try(now) {
            return Err(DriverError::Disconnected {
                uri: self.cfg.uri.clone(),
            });
        }
        match open_conn(&self.cfg.uri) {
            Ok(new) => {
                backoff.succeeded();
                let new = Arc::new(new);
                match self.conn.write() {
                    Ok(mut c) => *c = Arc::clone(&new),
                    Err(p) => *p.into_inner() = Arc::clone(&new),
                }
                tracing::info!(uri = %self.cfg.uri, "reconnected to libvirt");
                Ok(new)
            }
            Err(e) => {
                let retry_in = backoff.delay;
                backoff.failed(now);
                tracing::warn!(uri = %self.cfg.uri, error = %e, ?retry_in, "libvirt connection lost; reconnecting");
                Err(e)
            }
        }
    }
}

/// The libvirt compute driver. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct LibvirtDriver {
    shared: Arc<Shared>,
}

const UNDEFINE_FLAGS: u32 = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | sys::VIR_DOMAIN_UNDEFINE_NVRAM;

impl LibvirtDriver {
    /// Connects to `uri` with the default configuration.
    pub async fn connect(uri: &str) -> Result<Self, DriverError> {
        Self::connect_with(DriverConfig::new(uri)).await
    }

    /// Connects with an explicit configuration. Starts libvirt's event loop
    /// thread (once per process) and enables keepalives.
    pub async fn connect_with(cfg: DriverConfig) -> Result<Self, DriverError> {
        let uri = cfg.uri.clone();
        let conn = tokio::task::spawn_blocking(move || open_conn(&uri)).await??;
        Ok(LibvirtDriver {
            shared: Arc::new(Shared {
                cfg,
                conn: RwLock::new(Arc::new(conn)),
                backoff: Mutex::new(Backoff::new()),
            }),
        })
    }

    /// The configuration this driver was connected with.
    pub fn config(&self) -> &DriverConfig {
        &self.shared.cfg
    }

    /// Renders the domain XML exactly as [`Self::define_and_start`] defines it.
    pub fn domain_xml(&self, spec: &DomainSpec) -> String {
        domain_xml_with_prefix(spec, &self.shared.cfg.name_prefix)
    }

    /// Whether the current connection is open (a closed one is replaced
    /// by the next call).
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_alive()
    }

    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn, &DriverConfig) -> Result<T, DriverError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let conn = shared.live_conn()?;
            f(&conn, &shared.cfg)
        })
        .await?
    }

    /// Runs `f` on the blocking pool with an open connection; `f`'s own
    /// result is returned as it is.
    pub(crate) async fn blocking_raw<T, F>(&self, f: F) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> T + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let conn = shared.live_conn()?;
            Ok(f(&conn))
        })
        .await?
    }

    /// Every nubo-owned domain (those carrying the nubo metadata element).
    pub async fn list_nubo_domains(&self) -> Result<Vec<DomainInfo>, DriverError> {
        self.blocking(|conn, cfg| {
            let mut out = Vec::new();
            for dom in conn.list_all().map_err(DriverError::List)? {
                if let Some(info) = skip_vanished(nubo_info(&dom, cfg))? {
                    out.extend(info);
                }
            }
            out.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
            Ok(out)
        })
        .await
    }

    /// Every domain without nubo metadata, for reporting.
    pub async fn list_foreign_domains(&self) -> Result<Vec<ForeignDomain>, DriverError> {
        self.blocking(|conn, _| {
            let mut out = Vec::new();
            for dom in conn.list_all().map_err(DriverError::List)? {
                let foreign = (|| -> Result<Option<ForeignDomain>, VirError> {
                    if dom.metadata_element(NUBO_METADATA_NS)?.is_some() {
                        return Ok(None);
                    }
                    Ok(Some(ForeignDomain {
                        uuid: dom.uuid_string()?,
                        name: dom.name()?,
                        state: PowerState::from_raw(dom.state()?.0),
                    }))
                })();
                if let Some(f) = skip_vanished(foreign)? {
                    out.extend(f);
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    /// One nubo domain, or `None` if no domain has that UUID.
    pub async fn get(&self, instance_id: &str) -> Result<Option<DomainInfo>, DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, cfg| {
            let Some(dom) = lookup(conn, &id)? else {
                return Ok(None);
            };
            let info = nubo_info(&dom, cfg).map_err(|source| DriverError::Domain {
                instance_id: id.clone(),
                op: "inspect",
                source,
            })?;
            match info {
                Some(info) => Ok(Some(info)),
                None => Err(foreign(&dom, &id)),
            }
        })
        .await
    }

    /// Defines the domain (or updates its definition) and starts it unless
    /// it already runs. Idempotent.
    pub async fn define_and_start(&self, spec: &DomainSpec) -> Result<(), DriverError> {
        spec.validate()?;
        let spec = spec.clone();
        self.blocking(move |conn, cfg| {
            let id = spec.instance_id.as_str();
            let dom = define_owned(conn, cfg, &spec)?;
            if !dom.is_active().map_err(dom_err(id, "state"))? {
                dom.create().map_err(dom_err(id, "start"))?;
            }
            Ok(())
        })
        .await
    }

    /// Like [`Self::define_and_start`], but a domain this call starts is
    /// started with its vCPUs paused (QEMU holds the taps, the guest runs
    /// nothing until [`Self::resume`]). Returns whether it started it (a
    /// domain already active is left as it is). Idempotent.
    pub async fn define_and_start_paused(&self, spec: &DomainSpec) -> Result<bool, DriverError> {
        spec.validate()?;
        let spec = spec.clone();
        self.blocking(move |conn, cfg| {
            let id = spec.instance_id.as_str();
            let dom = define_owned(conn, cfg, &spec)?;
            if dom.is_active().map_err(dom_err(id, "state"))? {
                return Ok(false);
            }
            dom.create_paused().map_err(dom_err(id, "start paused"))?;
            Ok(true)
        })
        .await
    }

    /// Starts a defined domain with its vCPUs paused; no-op if it is active
    /// already. Returns whether it started it.
    pub async fn start_paused(&self, instance_id: &str) -> Result<bool, DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            if dom.is_active().map_err(dom_err(&id, "state"))? {
                return Ok(false);
            }
            dom.create_paused().map_err(dom_err(&id, "start paused"))?;
            Ok(true)
        })
        .await
    }

    /// Defines the domain (or updates the definition of a shut-off one)
    /// without starting it. Idempotent.
    pub async fn define(&self, spec: &DomainSpec) -> Result<(), DriverError> {
        spec.validate()?;
        let spec = spec.clone();
        self.blocking(move |conn, cfg| define_owned(conn, cfg, &spec).map(drop))
            .await
    }

    /// Freezes a running domain in memory; no-op if it is paused already.
    pub async fn suspend(&self, instance_id: &str) -> Result<(), DriverError> {
        let (from, to) = (PowerState::Running, PowerState::Paused);
        self.pause_toggle(instance_id, "suspend", from, to, "running", Dom::suspend)
            .await
    }

    /// Continues a paused domain; no-op if it runs.
    pub async fn resume(&self, instance_id: &str) -> Result<(), DriverError> {
        let (from, to) = (PowerState::Paused, PowerState::Running);
        self.pause_toggle(instance_id, "resume", from, to, "paused", Dom::resume)
            .await
    }

    /// Moves a domain from state `from` to `to` with `act`; a no-op if it is
    /// in `to` already, an error naming `needed` in any other state.
    async fn pause_toggle(
        &self,
        instance_id: &str,
        op: &'static str,
        from: PowerState,
        to: PowerState,
        needed: &'static str,
        act: fn(&Dom) -> Result<(), VirError>,
    ) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            match state_of(&dom, &id)? {
                state if state == to => Ok(()),
                state if state == from => act(&dom).map_err(dom_err(&id, op)),
                state => Err(DriverError::WrongState {
                    instance_id: id,
                    op,
                    needed,
                    state,
                }),
            }
        })
        .await
    }

    /// Replaces the definition of a shut-off domain (e.g. a resize).
    pub async fn redefine(&self, spec: &DomainSpec) -> Result<(), DriverError> {
        spec.validate()?;
        let spec = spec.clone();
        self.blocking(move |conn, cfg| {
            let id = spec.instance_id.as_str();
            let dom = owned(conn, id)?;
            let state = state_of(&dom, id)?;
            if state.is_active() {
                return Err(DriverError::WrongState {
                    instance_id: id.to_owned(),
                    op: "redefine",
                    needed: "shut off",
                    state,
                });
            }
            let xml = domain_xml_with_prefix(&spec, &cfg.name_prefix);
            conn.define_xml(&xml).map_err(dom_err(id, "define"))?;
            Ok(())
        })
        .await
    }

    /// Starts a defined domain; no-op if it runs already.
    pub async fn start(&self, instance_id: &str) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            if !dom.is_active().map_err(dom_err(&id, "state"))? {
                dom.create().map_err(dom_err(&id, "start"))?;
            }
            Ok(())
        })
        .await
    }

    /// Hard power-off; no-op if it is not running.
    pub async fn destroy(&self, instance_id: &str) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| destroy_if_active(&owned(conn, &id)?, &id))
            .await
    }

    /// Hard reset of a running domain (the guest reboots at once; the QEMU
    /// process stays the same). Guests that ignore ACPI reboot too.
    pub async fn reboot(&self, instance_id: &str) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let state = state_of(&dom, &id)?;
            if !state.is_active() {
                return Err(DriverError::WrongState {
                    instance_id: id,
                    op: "reboot",
                    needed: "running",
                    state,
                });
            }
            dom.reset().map_err(dom_err(&id, "reset"))
        })
        .await
    }

    /// Asks the guest to power off (ACPI), waits up to `timeout`, then
    /// destroys it.
    pub async fn shutdown(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<ShutdownOutcome, DriverError> {
        let id = instance_id.to_owned();
        let requested = self
            .blocking(move |conn, _| {
                let dom = owned(conn, &id)?;
                if !state_of(&dom, &id)?.is_active() {
                    return Ok(false);
                }
                match dom.shutdown() {
                    Ok(()) => Ok(true),
                    // It stopped between the check and the request.
                    Err(e) if e.is_operation_invalid() => Ok(false),
                    Err(e) => Err(dom_err(&id, "shutdown")(e)),
                }
            })
            .await?;
        if !requested {
            return Ok(ShutdownOutcome::AlreadyOff);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let active = self
                .get(instance_id)
                .await?
                .is_some_and(|d| d.state.is_active());
            if !active {
                return Ok(ShutdownOutcome::Graceful);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.destroy(instance_id).await?;
        Ok(ShutdownOutcome::Forced)
    }

    /// Removes the domain definition (and its nvram, managed save and
    /// snapshot metadata), destroying it first if it runs. No-op if it does
    /// not exist.
    pub async fn undefine(&self, instance_id: &str) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let Some(dom) = lookup(conn, &id)? else {
                return Ok(());
            };
            ensure_nubo(&dom, &id)?;
            destroy_if_active(&dom, &id)?;
            match dom.undefine(UNDEFINE_FLAGS) {
                Ok(()) => Ok(()),
                Err(e) if e.is_no_domain() => Ok(()),
                Err(e) => Err(dom_err(&id, "undefine")(e)),
            }
        })
        .await
    }

    /// Subscribes to lifecycle events of nubo domains (named
    /// `<prefix><uuid>`), e.g. a guest powering itself off. The callback is
    /// registered before this returns; when the connection closes (libvirtd
    /// restarted), a task of the stream reconnects with backoff and
    /// registers it again. Events while libvirtd is down are lost: callers
    /// resync from [`Self::list_nubo_domains`]. Needs a tokio runtime.
    pub async fn events(&self) -> Result<EventStream, DriverError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let first = self.register(tx.clone()).await?;
        let count = Arc::new(AtomicU64::new(1));
        let me = self.clone();
        let c = Arc::clone(&count);
        let supervisor = tokio::spawn(async move { me.keep_registered(first, tx, c).await });
        Ok(EventStream::new(rx, supervisor, count))
    }

    async fn register(
        &self,
        tx: mpsc::UnboundedSender<DomainEvent>,
    ) -> Result<Registration, DriverError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || {
            let conn = shared.live_conn()?;
            events::subscribe(conn, &shared.cfg.name_prefix, tx).map_err(DriverError::Events)
        })
        .await?
    }

    /// Keeps a callback registered on the current connection until the
    /// receiver is gone.
    async fn keep_registered(
        &self,
        mut reg: Registration,
        tx: mpsc::UnboundedSender<DomainEvent>,
        count: Arc<AtomicU64>,
    ) {
        loop {
            while reg.conn().is_alive() {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(EVENT_CONN_CHECK).await;
            }
            tracing::warn!(uri = %self.shared.cfg.uri, "libvirt connection closed; re-registering lifecycle events");
            drop(reg);
            reg = loop {
                if tx.is_closed() {
                    return;
                }
                match self.register(tx.clone()).await {
                    Ok(r) => break r,
                    // `live_conn` logs and spaces the attempts.
                    Err(_) => tokio::time::sleep(RECONNECT_MIN_DELAY).await,
                }
            };
            count.fetch_add(1, Ordering::SeqCst);
            tracing::info!(uri = %self.shared.cfg.uri, "lifecycle events registered on the new libvirt connection");
        }
    }
}

/// The statistics groups of [`LibvirtDriver::all_domain_stats`].
const STATS_GROUPS: u32 = sys::VIR_DOMAIN_STATS_STATE
    | sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | sys::VIR_DOMAIN_STATS_BALLOON
    | sys::VIR_DOMAIN_STATS_VCPU
    | sys::VIR_DOMAIN_STATS_INTERFACE
    | sys::VIR_DOMAIN_STATS_BLOCK;

/// Bulk statistics.
impl LibvirtDriver {
    /// The counters of every active nubo domain (named with the configured
    /// prefix), in one `virConnectGetAllDomainStats` call: CPU time, memory,
    /// vCPUs, per-disk and per-interface counters. A domain in a job (a
    /// migration) answers what it can without waiting for it (`NOWAIT`). A
    /// domain whose parameters do not parse is logged and left out.
    pub async fn all_domain_stats(&self) -> Result<Vec<DomainStats>, DriverError> {
        self.blocking(|conn, cfg| {
            let flags = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                | sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
            let raw = conn
                .all_domain_stats(STATS_GROUPS, flags)
                .map_err(DriverError::Stats)?;
            Ok(raw
                .into_iter()
                .filter(|(_, name, _)| name.starts_with(&cfg.name_prefix))
                .filter_map(|(uuid, name, params)| {
                    DomainStats::from_params(&uuid, &name, &params)
                        .inspect_err(|e| tracing::warn!(instance = %uuid, error = %e, "domain statistics dropped"))
                        .ok()
                })
                .collect())
        })
        .await
    }
}

/// `Ok(None)` when the domain vanished while we looked at it.
/// Disks and secrets: hot-plug of volumes, live I/O limits, the Ceph
/// secret QEMU authenticates with.
impl LibvirtDriver {
    /// The disks of a domain as libvirt shows them now (the live definition
    /// when it runs).
    pub async fn disks(&self, instance_id: &str) -> Result<Vec<AttachedDisk>, DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let xml = dom.xml_desc(false).map_err(dom_err(&id, "get XML"))?;
            Ok(parse_disks(&xml))
        })
        .await
    }

    /// Attaches a volume: live (hot-plug) and persistent when the domain
    /// runs, persistent only when it is shut off. A no-op if a disk with
    /// that target and serial is attached already.
    pub async fn attach_volume(
        &self,
        instance_id: &str,
        volume: &VolumeDisk,
    ) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        let volume = volume.clone();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let xml = dom.xml_desc(false).map_err(dom_err(&id, "get XML"))?;
            if parse_disks(&xml)
                .iter()
                .any(|d| d.target == volume.target && d.serial.as_deref() == Some(&volume.serial))
            {
                return Ok(());
            }
            let active = dom.is_active().map_err(dom_err(&id, "state"))?;
            dom.attach_device(&volume_disk_xml(&volume), affect_flags(active))
                .map_err(dom_err(&id, "attach disk"))
        })
        .await
    }

    /// Detaches the disk with guest device `target` (live and persistent).
    /// On a running domain the guest completes the unplug asynchronously:
    /// [`Self::disks`] shows the disk until it did. A no-op if no such disk
    /// is attached.
    pub async fn detach_disk(&self, instance_id: &str, target: &str) -> Result<(), DriverError> {
        let target = target.to_owned();
        self.detach_element(instance_id, "detach disk", move |xml| {
            disk_element(xml, &target).map(str::to_owned)
        })
        .await
    }

    /// Detaches the device element `find` picks from the domain XML (live
    /// when the domain runs, and from its persistent definition); a no-op
    /// when `find` finds none.
    async fn detach_element(
        &self,
        instance_id: &str,
        what: &'static str,
        find: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let active = dom.is_active().map_err(dom_err(&id, "state"))?;
            let detach = |inactive: bool, flags| -> Result<(), DriverError> {
                let xml = dom.xml_desc(inactive).map_err(dom_err(&id, "get XML"))?;
                let Some(elem) = find(&xml) else {
                    return Ok(());
                };
                match dom.detach_device(&elem, flags) {
                    // Gone already, or the guest has not acknowledged an
                    // earlier request yet.
                    Err(e) if e.is_device_missing() || e.is_unplug_pending() => Ok(()),
                    r => r.map_err(dom_err(&id, what)),
                }
            };
            if active {
                detach(false, affect_flags(true))?;
            }
            // The persistent definition too (a no-op when the flags above
            // already removed it there).
            detach(true, affect_flags(false))
        })
        .await
    }

    /// The taps of a domain's NICs, in their order (of the running domain
    /// when it runs, else of its definition).
    pub async fn interfaces(&self, instance_id: &str) -> Result<Vec<String>, DriverError> {
        let id = instance_id.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let xml = dom.xml_desc(false).map_err(dom_err(&id, "get XML"))?;
            Ok(crate::xml::interface_elements(&xml)
                .into_iter()
                .map(|(tap, _)| tap)
                .collect())
        })
        .await
    }

    /// Attaches a NIC: live (hot-plug) and persistent when the domain
    /// runs, persistent only when it is shut off. A no-op if a NIC with
    /// that tap is attached already. The tap must exist (`managed='no'`).
    pub async fn attach_interface(&self, instance_id: &str, nic: &Nic) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        let nic = nic.clone();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let xml = dom.xml_desc(false).map_err(dom_err(&id, "get XML"))?;
            if crate::xml::interface_elements(&xml)
                .iter()
                .any(|(tap, _)| *tap == nic.tap)
            {
                return Ok(());
            }
            let active = dom.is_active().map_err(dom_err(&id, "state"))?;
            dom.attach_device(&crate::xml::interface_xml(&nic), affect_flags(active))
                .map_err(dom_err(&id, "attach interface"))
        })
        .await
    }

    /// Detaches the NIC whose tap is `tap` (live and persistent). On a
    /// running domain the guest completes the unplug asynchronously:
    /// [`Self::interfaces`] shows the NIC until it did. A no-op if no such
    /// NIC is attached.
    pub async fn detach_interface(&self, instance_id: &str, tap: &str) -> Result<(), DriverError> {
        let tap = tap.to_owned();
        self.detach_element(instance_id, "detach interface", move |xml| {
            crate::xml::interface_elements(xml)
                .into_iter()
                .find(|(t, _)| *t == tap)
                .map(|(_, elem)| elem.to_owned())
        })
        .await
    }

    /// Changes the I/O limits of disk `target`, live when the domain runs
    /// and in its persistent definition.
    pub async fn set_disk_iotune(
        &self,
        instance_id: &str,
        target: &str,
        iotune: IoTune,
    ) -> Result<(), DriverError> {
        let id = instance_id.to_owned();
        let target = target.to_owned();
        self.blocking(move |conn, _| {
            let dom = owned(conn, &id)?;
            let active = dom.is_active().map_err(dom_err(&id, "state"))?;
            dom.set_block_iotune(&target, &iotune.params(), affect_flags(active))
                .map_err(dom_err(&id, "set block I/O tune"))
        })
        .await
    }

    /// Defines (once) the Ceph secret with usage `<usage>` and sets its
    /// value to the raw cephx `key`; returns its UUID. Idempotent: an
    /// existing secret of that usage keeps its UUID and gets the value.
    pub async fn ensure_ceph_secret(&self, usage: &str, key: &[u8]) -> Result<String, DriverError> {
        let usage = usage.to_owned();
        let key = key.to_vec();
        self.blocking(move |conn, _| {
            let err = |source| DriverError::Secret {
                usage: usage.clone(),
                source,
            };
            let secret = match conn.ceph_secret(&usage).map_err(err)? {
                Some(s) => s,
                None => conn.define_secret(&ceph_secret_xml(&usage)).map_err(err)?,
            };
            secret.set_value(&key).map_err(err)?;
            secret.uuid_string().map_err(err)
        })
        .await
    }
}

/// The XML of a private, persistent Ceph secret with usage `usage`. Pure.
pub fn ceph_secret_xml(usage: &str) -> String {
    format!(
        "<secret ephemeral='no' private='yes'>\n  <usage type='ceph'>\n    <name>{}</name>\n  </usage>\n</secret>\n",
        crate::escape::esc(usage)
    )
}

/// The `<disk>…</disk>` element of `domain_xml` whose target is `target`.
fn disk_element<'a>(domain_xml: &'a str, target: &str) -> Option<&'a str> {
    crate::disk::disk_elements(domain_xml)
        .into_iter()
        .find(|elem| {
            parse_disks(elem)
                .first()
                .is_some_and(|d| d.target == target)
        })
}

fn skip_vanished<T>(r: Result<T, VirError>) -> Result<Option<T>, DriverError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_no_domain() => Ok(None),
        Err(e) => Err(DriverError::List(e)),
    }
}

/// Info for a nubo domain, `None` for a foreign one.
fn nubo_info(dom: &Dom, cfg: &DriverConfig) -> Result<Option<DomainInfo>, VirError> {
    if dom.metadata_element(NUBO_METADATA_NS)?.is_none() {
        return Ok(None);
    }
    let instance_id = dom.uuid_string()?;
    let name = dom.name()?;
    let state = PowerState::from_raw(dom.state()?.0);
    let qemu_pid = if state.is_active() {
        qemu_pid(cfg, &name, &instance_id)
    } else {
        None
    };
    let (vcpus, memory_kib) = dom.size()?;
    Ok(Some(DomainInfo {
        instance_id,
        name,
        state,
        qemu_pid,
        vcpus,
        memory_mb: memory_kib / 1024,
    }))
}

/// Reads libvirtd's pid file and checks the process is QEMU for this UUID.
fn qemu_pid(cfg: &DriverConfig, name: &str, uuid: &str) -> Option<u32> {
    let path = cfg.qemu_pid_dir.join(format!("{name}.pid"));
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = uuid.as_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == needle)
        .then_some(pid)
}

pub(crate) fn dom_err<'a>(
    id: &'a str,
    op: &'static str,
) -> impl FnOnce(VirError) -> DriverError + 'a {
    move |source| DriverError::Domain {
        instance_id: id.to_owned(),
        op,
        source,
    }
}

/// Defines the domain of `spec` (or updates its definition), refusing to
/// touch a domain of that uuid that nubo does not own.
fn define_owned(conn: &Conn, cfg: &DriverConfig, spec: &DomainSpec) -> Result<Dom, DriverError> {
    let id = spec.instance_id.as_str();
    if let Some(existing) = lookup(conn, id)? {
        ensure_nubo(&existing, id)?;
    }
    let xml = domain_xml_with_prefix(spec, &cfg.name_prefix);
    conn.define_xml(&xml).map_err(dom_err(id, "define"))
}

fn lookup(conn: &Conn, id: &str) -> Result<Option<Dom>, DriverError> {
    conn.lookup_uuid(id).map_err(dom_err(id, "lookup"))
}

fn foreign(dom: &Dom, id: &str) -> DriverError {
    DriverError::Foreign {
        instance_id: id.to_owned(),
        name: dom.name().unwrap_or_default(),
    }
}

fn ensure_nubo(dom: &Dom, id: &str) -> Result<(), DriverError> {
    match dom
        .metadata_element(NUBO_METADATA_NS)
        .map_err(dom_err(id, "get metadata"))?
    {
        Some(_) => Ok(()),
        None => Err(foreign(dom, id)),
    }
}

/// Looks up a domain that must exist and be nubo's.
pub(crate) fn owned(conn: &Conn, id: &str) -> Result<Dom, DriverError> {
    let dom = lookup(conn, id)?.ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
    ensure_nubo(&dom, id)?;
    Ok(dom)
}

pub(crate) fn state_of(dom: &Dom, id: &str) -> Result<PowerState, DriverError> {
    Ok(PowerState::from_raw(
        dom.state().map_err(dom_err(id, "get state"))?.0,
    ))
}

fn destroy_if_active(dom: &Dom, id: &str) -> Result<(), DriverError> {
    if !dom.is_active().map_err(dom_err(id, "state"))? {
        return Ok(());
    }
    match dom.destroy() {
        Ok(()) => Ok(()),
        // It stopped by itself in the meantime.
        Err(e) if e.is_operation_invalid() => Ok(()),
        Err(e) => Err(dom_err(id, "destroy")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_attempts_back_off_exponentially_and_reset() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert!(b.may_try(t0));
        b.failed(t0);
        assert!(!b.may_try(t0 + Duration::from_millis(50)));
        assert!(b.may_try(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        b.failed(t1);
        assert!(!b.may_try(t1 + Duration::from_millis(150)));
        assert!(b.may_try(t1 + Duration::from_millis(200)));
        for _ in 0..10 {
            b.failed(t1);
        }
        assert_eq!(b.delay, RECONNECT_MAX_DELAY);
        assert!(b.may_try(t1 + RECONNECT_MAX_DELAY));
        b.succeeded();
        assert!(b.may_try(t1));
        assert_eq!(b.delay, RECONNECT_MIN_DELAY);
    }
}
