//! nubo's libvirt compute driver.
//!
//! - [`DomainSpec`] + [`domain_xml`]: a pure, deterministic rendering of the
//!   domain nubo wants (direct kernel boot optional, virtio disk, taps owned
//!   by nubo, serial console to a file, `<nubo:instance>` metadata marking
//!   ownership).
//! - [`LibvirtDriver`]: define/start/stop/reboot/undefine, listing of nubo
//!   and foreign domains, lifecycle [`EventStream`].
//! - [`LibvirtDriver::all_domain_stats`]: the counters of every nubo domain
//!   in one bulk call (`virConnectGetAllDomainStats`), as [`DomainStats`].
//! - [`LibvirtDriver::migrate`]: peer-to-peer live migration with
//!   post-copy and abort within budgets ([`MigrateOptions`]).
//! - [`LibvirtDriver::backup_disk`]: a point-in-time copy of a running
//!   domain's disk (push-mode backup job).
//! - [`ImageCache`]: verified local base images and qcow2 overlays.
//!
//! This crate does not depend on the agent; the agent wraps it behind its
//! `Hypervisor` trait.

mod backup;
mod disk;
mod driver;
mod error;
mod escape;
mod events;
mod ffi;
mod image;
mod info;
mod migrate;
mod spec;
mod stats;
mod xml;

pub use backup::backup_xml;
pub use disk::{
    parse_disks, rbd_disk_xml, volume_disk_xml, AttachedDisk, IoTune, MonHost, RbdDisk, VolumeDisk,
};
pub use driver::{ceph_secret_xml, DriverConfig, LibvirtDriver, ShutdownOutcome};
pub use error::DriverError;
pub use events::{DomainEvent, EventStream, LifecycleEvent, StopReason};
pub use ffi::VirError;
pub use image::{image_info, ImageCache, ImageError, ImageInfo};
pub use info::{DomainInfo, ForeignDomain, PowerState};
pub use migrate::{migrate_flags, AbortReason, MigrateOptions, MigrationError, MigrationStats};
pub use spec::{DiskSpec, DomainSpec, DomainType, KernelBoot, Nic, SpecError, DEFAULT_NAME_PREFIX};
pub use stats::{BalloonStats, BlockStats, DomainStats, InterfaceStats, ParamValue, StatsError};
pub use xml::{
    domain_xml, domain_xml_with_prefix, interface_elements, interface_xml, NUBO_METADATA_NS,
};
