//! [`PlugWaiters`]: the instances a driver started paused until their NICs
//! are plugged, shared by the libvirt driver (registers them, keeps them
//! paused) and the plug gate ([`crate::compute::plug_gate`], releases them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nubo_common::InstanceId;

/// While an instance waits for its NICs, the next pass comes at most this
/// long after the previous one.
pub const PLUG_RECHECK: Duration = Duration::from_secs(1);
/// Waiting longer than this is logged as a warning (once per instance) and
/// no longer shortens the pass interval (e.g. a network that cannot be
/// wired); the instance stays held until it is wired.
pub const PLUG_SLOW: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Held {
    since: Instant,
    /// Set by the gate just before it resumes the instance.
    released: bool,
    warned: bool,
}

/// Instances started paused that wait for their NICs to be plugged. Shared
/// by the libvirt driver (registers, honours) and [`PlugGate`](crate::compute::plug_gate::PlugGate) (releases).
#[derive(Debug, Default)]
pub struct PlugWaiters {
    held: Mutex<BTreeMap<InstanceId, Held>>,
}

impl PlugWaiters {
    /// An empty set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<InstanceId, Held>) -> T) -> T {
        match self.held.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Registers an instance just started paused.
    pub fn hold(&self, id: InstanceId) {
        self.with(|h| {
            h.insert(
                id,
                Held {
                    since: Instant::now(),
                    released: false,
                    warned: false,
                },
            )
        });
    }

    /// Whether the instance waits for its NICs (held and not released):
    /// it must stay paused.
    pub fn is_held(&self, id: &InstanceId) -> bool {
        self.with(|h| h.get(id).is_some_and(|w| !w.released))
    }

    /// Whether the instance is registered at all (released or not).
    pub fn contains(&self, id: &InstanceId) -> bool {
        self.with(|h| h.contains_key(id))
    }

    /// Allows (`true`) or again forbids (`false`) resuming a held instance.
    pub fn set_released(&self, id: &InstanceId, released: bool) {
        self.with(|h| {
            if let Some(w) = h.get_mut(id) {
                w.released = released;
            }
        });
    }

    /// Forgets the instance (resumed, stopped or destroyed).
    pub fn forget(&self, id: &InstanceId) {
        self.with(|h| h.remove(id));
    }

    /// The instances waiting (not released).
    pub fn waiting(&self) -> BTreeSet<InstanceId> {
        self.with(|h| {
            h.iter()
                .filter(|(_, w)| !w.released)
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Whether another pass should come soon ([`PLUG_RECHECK`]): some
    /// instance waits, and not for longer than [`PLUG_SLOW`].
    pub fn recheck_soon(&self) -> bool {
        self.with(|h| {
            h.values()
                .any(|w| !w.released && w.since.elapsed() <= PLUG_SLOW)
        })
    }

    /// Instances waiting longer than [`PLUG_SLOW`] not yet warned about
    /// (marked as warned).
    pub fn newly_slow(&self) -> Vec<InstanceId> {
        self.with(|h| {
            h.iter_mut()
                .filter(|(_, w)| !w.released && !w.warned && w.since.elapsed() > PLUG_SLOW)
                .map(|(id, w)| {
                    w.warned = true;
                    *id
                })
                .collect()
        })
    }
}
