//! [`LibvirtDriver`]: nubo's compute operations on one libvirt connection.
//!
//! libvirt calls block; every operation runs them on tokio's blocking pool.
//! Every mutating operation first checks that the domain carries the nubo
//! metadata element, so foreign domains are never touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use virt_sys as sys;

use crate::error::DriverError;
use crate::events::{self, EventStream};
use crate::ffi::{Conn, Dom, VirError};
use crate::info::{DomainInfo, ForeignDomain, PowerState};
use crate::spec::{DomainSpec, DEFAULT_NAME_PREFIX};
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

/// The libvirt compute driver. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct LibvirtDriver {
    conn: Arc<Conn>,
    cfg: Arc<DriverConfig>,
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
        let conn = tokio::task::spawn_blocking(move || {
            events::ensure_event_loop().map_err(DriverError::Events)?;
            let conn = Conn::open(&uri).map_err(|source| DriverError::Connect {
                uri: uri.clone(),
                source,
            })?;
            conn.set_keepalive(5, 3)
                .map_err(|source| DriverError::Connect { uri, source })?;
            Ok::<_, DriverError>(conn)
        })
        .await??;
        Ok(LibvirtDriver {
            conn: Arc::new(conn),
            cfg: Arc::new(cfg),
        })
    }

    /// The configuration this driver was connected with.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// Renders the domain XML exactly as [`Self::define_and_start`] defines it.
    pub fn domain_xml(&self, spec: &DomainSpec) -> String {
        domain_xml_with_prefix(spec, &self.cfg.name_prefix)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, DriverError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn, &DriverConfig) -> Result<T, DriverError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let cfg = Arc::clone(&self.cfg);
        tokio::task::spawn_blocking(move || f(&conn, &cfg)).await?
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
    /// `<prefix><uuid>`), e.g. a guest powering itself off.
    pub async fn events(&self) -> Result<EventStream, DriverError> {
        let conn = Arc::clone(&self.conn);
        let prefix = self.cfg.name_prefix.clone();
        tokio::task::spawn_blocking(move || events::subscribe(conn, &prefix))
            .await?
            .map_err(DriverError::Events)
    }
}

/// `Ok(None)` when the domain vanished while we looked at it.
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
    Ok(Some(DomainInfo {
        instance_id,
        name,
        state,
        qemu_pid,
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

fn dom_err<'a>(id: &'a str, op: &'static str) -> impl FnOnce(VirError) -> DriverError + 'a {
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
fn owned(conn: &Conn, id: &str) -> Result<Dom, DriverError> {
    let dom = lookup(conn, id)?.ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
    ensure_nubo(&dom, id)?;
    Ok(dom)
}

fn state_of(dom: &Dom, id: &str) -> Result<PowerState, DriverError> {
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
