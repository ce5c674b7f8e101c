//! Domain lifecycle events.
//!
//! libvirt's default event loop (`virEventRegisterDefaultImpl`) runs on one
//! dedicated thread per process (`virEventRunDefaultImpl` in a loop). A
//! lifecycle callback registered per connection forwards events of nubo
//! domains into a tokio channel. The driver keeps one registration per
//! stream on its current connection and registers again after a reconnect;
//! [`EventStream`] deregisters it on drop.

use std::ffi::{c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use virt_sys as sys;

use crate::ffi::{self, Conn, VirError};
use crate::info::PowerState;

/// Why a domain stopped (`virDomainEventStoppedDetailType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The guest shut down (or powered off) by itself or on request.
    Shutdown,
    /// Destroyed by the host.
    Destroyed,
    /// The guest crashed.
    Crashed,
    /// Migrated away.
    Migrated,
    /// Saved to a file.
    Saved,
    /// QEMU failed (died unexpectedly).
    Failed,
    /// Restored from a snapshot.
    FromSnapshot,
    /// A detail this crate does not know.
    Other(i32),
}

impl StopReason {
    fn from_raw(detail: c_int) -> Self {
        match u32::try_from(detail).unwrap_or(u32::MAX) {
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN => StopReason::Shutdown,
            sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED => StopReason::Destroyed,
            sys::VIR_DOMAIN_EVENT_STOPPED_CRASHED => StopReason::Crashed,
            sys::VIR_DOMAIN_EVENT_STOPPED_MIGRATED => StopReason::Migrated,
            sys::VIR_DOMAIN_EVENT_STOPPED_SAVED => StopReason::Saved,
            sys::VIR_DOMAIN_EVENT_STOPPED_FAILED => StopReason::Failed,
            sys::VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT => StopReason::FromSnapshot,
            _ => StopReason::Other(detail),
        }
    }
}

/// A lifecycle transition (`virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    /// Defined or redefined.
    Defined,
    /// Undefined.
    Undefined,
    /// Started (QEMU process launched).
    Started,
    /// Paused.
    Suspended,
    /// Resumed.
    Resumed,
    /// Stopped: the QEMU process is gone.
    Stopped(StopReason),
    /// The guest began shutting down (still running).
    Shutdown,
    /// Suspended by guest power management.
    PmSuspended,
    /// Crashed.
    Crashed,
    /// An event type this crate does not know.
    Other(i32),
}

impl LifecycleEvent {
    fn from_raw(event: c_int, detail: c_int) -> Self {
        match u32::try_from(event).unwrap_or(u32::MAX) {
            sys::VIR_DOMAIN_EVENT_DEFINED => LifecycleEvent::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => LifecycleEvent::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => LifecycleEvent::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => LifecycleEvent::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => LifecycleEvent::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => LifecycleEvent::Stopped(StopReason::from_raw(detail)),
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => LifecycleEvent::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => LifecycleEvent::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => LifecycleEvent::Crashed,
            _ => LifecycleEvent::Other(event),
        }
    }

    /// The power state the domain is in after this event, when the event
    /// implies one (`Defined`/`Undefined` do not).
    pub fn power_state(self) -> Option<PowerState> {
        match self {
            LifecycleEvent::Started | LifecycleEvent::Resumed => Some(PowerState::Running),
            LifecycleEvent::Suspended | LifecycleEvent::PmSuspended => Some(PowerState::Paused),
            LifecycleEvent::Stopped(_) => Some(PowerState::ShutOff),
            LifecycleEvent::Crashed => Some(PowerState::Crashed),
            // `Shutdown` is also emitted right before `Stopped` on destroy:
            // it implies no stable state.
            LifecycleEvent::Defined
            | LifecycleEvent::Undefined
            | LifecycleEvent::Shutdown
            | LifecycleEvent::Other(_) => None,
        }
    }
}

/// A lifecycle event of a nubo domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// Instance id (domain UUID).
    pub instance_id: String,
    /// What happened.
    pub event: LifecycleEvent,
}

static EVENT_LOOP: OnceLock<Result<(), VirError>> = OnceLock::new();

/// Registers libvirt's default event loop and starts its thread, once per
/// process. Must run before a connection is opened for that connection to
/// deliver events and keepalives.
pub(crate) fn ensure_event_loop() -> Result<(), VirError> {
    EVENT_LOOP
        .get_or_init(|| {
            ffi::init();
            // SAFETY: plain registration call, made once.
            if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
                return Err(VirError::last());
            }
            std::thread::Builder::new()
                .name("libvirt-events".to_owned())
                .spawn(|| loop {
                    // SAFETY: the default implementation was registered above.
                    if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                        tracing::warn!(error = %VirError::last(), "libvirt event loop iteration failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(|_| ())
                .map_err(|e| VirError {
                    code: -1,
                    domain: -1,
                    message: format!("cannot spawn the libvirt event thread: {e}"),
                })
        })
        .clone()
}

/// State shared with the C callback; freed by libvirt through `free_ctx`.
struct CallbackCtx {
    tx: mpsc::UnboundedSender<DomainEvent>,
    prefix: String,
}

type LifecycleCb =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type GenericCb = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

unsafe extern "C" fn lifecycle_cb(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // Never unwind into C.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `opaque` is the CallbackCtx we registered; libvirt keeps it
        // alive until `free_ctx` runs after deregistration.
        let ctx = unsafe { &*(opaque as *const CallbackCtx) };
        let (Ok(uuid), Ok(name)) = (ffi::uuid_of(dom), ffi::name_of(dom)) else {
            return;
        };
        // Ownership by naming convention: the callback runs on the event-loop
        // thread, where an RPC (metadata lookup) is best avoided.
        if name.strip_prefix(ctx.prefix.as_str()) != Some(uuid.as_str()) {
            return;
        }
        let _ = ctx.tx.send(DomainEvent {
            instance_id: uuid,
            event: LifecycleEvent::from_raw(event, detail),
        });
    }));
    0
}

unsafe extern "C" fn free_ctx(opaque: *mut c_void) {
    // SAFETY: `opaque` came from Box::into_raw in `subscribe`, freed once.
    drop(unsafe { Box::from_raw(opaque as *mut CallbackCtx) });
}

/// A stream of lifecycle events of nubo domains. It outlives libvirtd
/// restarts: the driver re-registers the callback on every new connection
/// (see [`crate::LibvirtDriver::events`]). Dropping it deregisters the
/// callback and stops that supervision.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<DomainEvent>,
    supervisor: tokio::task::JoinHandle<()>,
    registrations: Arc<AtomicU64>,
}

impl EventStream {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<DomainEvent>,
        supervisor: tokio::task::JoinHandle<()>,
        registrations: Arc<AtomicU64>,
    ) -> Self {
        EventStream {
            rx,
            supervisor,
            registrations,
        }
    }

    /// How many times the callback has been registered: 1, plus one per
    /// reconnection to libvirtd.
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::SeqCst)
    }

    /// Waits for the next event; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<DomainEvent> {
        self.rx.recv().await
    }

    /// Returns an already queued event without waiting.
    pub fn try_recv(&mut self) -> Option<DomainEvent> {
        self.rx.try_recv().ok()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // The supervisor owns the current [`Registration`]: aborting it
        // drops (deregisters) that.
        self.supervisor.abort();
    }
}

/// One lifecycle callback registered on one connection; deregistered on
/// drop.
#[derive(Debug)]
pub(crate) struct Registration {
    conn: Arc<Conn>,
    callback_id: c_int,
}

impl Registration {
    /// The connection the callback is registered on.
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: valid connection and an id returned by RegisterAny.
        let rc = unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.callback_id)
        };
        // On a closed connection the callback is gone with it.
        if rc < 0 && self.conn.is_alive() {
            tracing::warn!(error = %VirError::last(), "cannot deregister libvirt event callback");
        }
    }
}

/// Registers a lifecycle callback on `conn` forwarding events of every
/// domain named `<prefix><uuid>` into `tx`.
pub(crate) fn subscribe(
    conn: Arc<Conn>,
    prefix: &str,
    tx: mpsc::UnboundedSender<DomainEvent>,
) -> Result<Registration, VirError> {
    ensure_event_loop()?;
    let ctx = Box::into_raw(Box::new(CallbackCtx {
        tx,
        prefix: prefix.to_owned(),
    }));
    // SAFETY: libvirt calls back with the lifecycle signature for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE; the generic type is only the carrier
    // (this is libvirt's VIR_DOMAIN_EVENT_CALLBACK cast).
    let generic = unsafe { std::mem::transmute::<LifecycleCb, GenericCb>(lifecycle_cb) };
    // SAFETY: valid connection; `ctx` is owned by libvirt from here on and
    // released through `free_ctx`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(generic),
            ctx.cast(),
            Some(free_ctx),
        )
    };
    if id < 0 {
        let err = VirError::last();
        // SAFETY: registration failed, so libvirt did not take ownership.
        drop(unsafe { Box::from_raw(ctx) });
        return Err(err);
    }
    Ok(Registration {
        conn,
        callback_id: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_events_to_power_states() {
        let stopped = LifecycleEvent::from_raw(
            sys::VIR_DOMAIN_EVENT_STOPPED as c_int,
            sys::VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN as c_int,
        );
        assert_eq!(stopped, LifecycleEvent::Stopped(StopReason::Shutdown));
        assert_eq!(stopped.power_state(), Some(PowerState::ShutOff));
        let started = LifecycleEvent::from_raw(sys::VIR_DOMAIN_EVENT_STARTED as c_int, 0);
        assert_eq!(started.power_state(), Some(PowerState::Running));
        assert_eq!(LifecycleEvent::from_raw(99, 0), LifecycleEvent::Other(99));
        assert_eq!(LifecycleEvent::Undefined.power_state(), None);
        assert_eq!(LifecycleEvent::Shutdown.power_state(), None);
    }
}
