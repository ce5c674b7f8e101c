//! A minimal safe wrapper over the libvirt C API (`virt-sys`).
//!
//! Only the calls the driver needs. Every pointer is owned by an RAII type
//! ([`Conn`], [`Dom`]); every failure is turned into a [`VirError`] read
//! from libvirt's thread-local last error on the calling thread.
//!
//! The `virt` crate 0.5 pins `libc = "=0.2.183"`, which conflicts with the
//! rest of the workspace, and has no domain event registration; hence this
//! thin layer over the raw bindings.

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::ptr::{self, NonNull};
use std::sync::Once;

use virt_sys as sys;

use crate::stats::ParamValue;

/// An error reported by libvirt (`virError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("libvirt error {code} (domain {domain}): {message}")]
pub struct VirError {
    /// `virErrorNumber` (e.g. 42 = no domain, 55 = operation invalid).
    pub code: i32,
    /// `virErrorDomain`: the libvirt subsystem that raised it.
    pub domain: i32,
    /// Human-readable message.
    pub message: String,
}

impl VirError {
    /// Reads (and clears) libvirt's last error of this thread.
    pub(crate) fn last() -> Self {
        // SAFETY: virGetLastError returns null or a pointer to this thread's
        // error object, valid until the next libvirt call on this thread.
        unsafe {
            let e = sys::virGetLastError();
            let err = if e.is_null() {
                VirError {
                    code: -1,
                    domain: -1,
                    message: "unknown libvirt error".to_owned(),
                }
            } else {
                let message = if (*e).message.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr((*e).message).to_string_lossy().into_owned()
                };
                VirError {
                    code: (*e).code,
                    domain: (*e).domain,
                    message,
                }
            };
            sys::virResetLastError();
            err
        }
    }

    fn is(&self, code: sys::virErrorNumber) -> bool {
        i64::from(self.code) == i64::from(code)
    }

    /// The domain does not exist.
    pub fn is_no_domain(&self) -> bool {
        self.is(sys::VIR_ERR_NO_DOMAIN)
    }

    /// The operation is invalid in the domain's current state (e.g. destroying
    /// a domain that is not running).
    pub fn is_operation_invalid(&self) -> bool {
        self.is(sys::VIR_ERR_OPERATION_INVALID)
    }
}

fn input_error(what: &str) -> VirError {
    VirError {
        code: -1,
        domain: -1,
        message: format!("{what} contains a NUL byte"),
    }
}

/// Error handler that drops libvirt's default stderr printing; errors are
/// reported through [`VirError`] instead.
unsafe extern "C" fn quiet_error_handler(_: *mut libc::c_void, _: sys::virErrorPtr) {}

/// Initialises libvirt once per process (thread-safety set-up and error
/// printing). Idempotent.
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // SAFETY: plain library initialisation calls with valid arguments.
        unsafe {
            sys::virInitialize();
            sys::virSetErrorFunc(ptr::null_mut(), Some(quiet_error_handler));
        }
    });
}

/// Takes ownership of a libvirt-allocated C string.
///
/// # Safety
/// `p` must be null or a string allocated by libvirt with `malloc`.
unsafe fn owned_cstring(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated and malloc'ed by libvirt (the
    // caller's contract); freed exactly once, after the copy.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { libc::free(p.cast()) };
    Some(s)
}

/// An open libvirt connection (`virConnectPtr`), closed on drop.
#[derive(Debug)]
pub(crate) struct Conn(NonNull<sys::virConnect>);

// SAFETY: libvirt connections are thread-safe (documented since 0.6.0);
// every call goes through libvirt's own locking.
unsafe impl Send for Conn {}
// SAFETY: as above.
unsafe impl Sync for Conn {}

impl Conn {
    /// Opens a read-write connection to `uri`.
    pub(crate) fn open(uri: &str) -> Result<Self, VirError> {
        init();
        let c = CString::new(uri).map_err(|_| input_error("URI"))?;
        // SAFETY: `c` is a valid NUL-terminated string.
        let p = unsafe { sys::virConnectOpen(c.as_ptr()) };
        NonNull::new(p).map(Conn).ok_or_else(VirError::last)
    }

    pub(crate) fn as_ptr(&self) -> sys::virConnectPtr {
        self.0.as_ptr()
    }

    /// Enables keepalive probes (needs the event loop to be running).
    pub(crate) fn set_keepalive(&self, interval_s: i32, count: u32) -> Result<(), VirError> {
        // SAFETY: valid connection.
        check(unsafe { sys::virConnectSetKeepAlive(self.as_ptr(), interval_s, count) })
    }

    /// Whether the connection is still open (`virConnectIsAlive`: a local
    /// check, no RPC). A connection whose daemon went away (restart, crash)
    /// is closed by libvirt's event loop and answers `false` for good.
    pub(crate) fn is_alive(&self) -> bool {
        // SAFETY: valid connection.
        unsafe { sys::virConnectIsAlive(self.as_ptr()) == 1 }
    }

    /// All domains, active and inactive.
    pub(crate) fn list_all(&self) -> Result<Vec<Dom>, VirError> {
        let mut arr: *mut sys::virDomainPtr = ptr::null_mut();
        // SAFETY: libvirt allocates `arr` with `n` owned domain pointers.
        let n = unsafe { sys::virConnectListAllDomains(self.as_ptr(), &mut arr, 0) };
        if n < 0 {
            return Err(VirError::last());
        }
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        if !arr.is_null() {
            for i in 0..usize::try_from(n).unwrap_or(0) {
                // SAFETY: `i < n`; each element is an owned reference.
                if let Some(d) = NonNull::new(unsafe { *arr.add(i) }) {
                    out.push(Dom(d));
                }
            }
            // SAFETY: the array itself was malloc'ed by libvirt.
            unsafe { libc::free(arr.cast()) };
        }
        Ok(out)
    }

    /// Looks a domain up by UUID; `Ok(None)` if it does not exist.
    pub(crate) fn lookup_uuid(&self, uuid: &str) -> Result<Option<Dom>, VirError> {
        let c = CString::new(uuid).map_err(|_| input_error("UUID"))?;
        // SAFETY: valid connection and string.
        let p = unsafe { sys::virDomainLookupByUUIDString(self.as_ptr(), c.as_ptr()) };
        found(p, Dom, VirError::is_no_domain)
    }

    /// Defines (or redefines) a persistent domain from XML.
    pub(crate) fn define_xml(&self, xml: &str) -> Result<Dom, VirError> {
        let c = CString::new(xml).map_err(|_| input_error("domain XML"))?;
        // SAFETY: valid connection and string.
        let p = unsafe { sys::virDomainDefineXML(self.as_ptr(), c.as_ptr()) };
        NonNull::new(p).map(Dom).ok_or_else(VirError::last)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the connection.
        unsafe { sys::virConnectClose(self.0.as_ptr()) };
    }
}

/// A reference to a libvirt domain (`virDomainPtr`), freed on drop.
#[derive(Debug)]
pub(crate) struct Dom(NonNull<sys::virDomain>);

// SAFETY: domain objects are reference counted and thread-safe in libvirt.
unsafe impl Send for Dom {}

fn check(rc: c_int) -> Result<(), VirError> {
    if rc < 0 {
        Err(VirError::last())
    } else {
        Ok(())
    }
}

impl Dom {
    fn as_ptr(&self) -> sys::virDomainPtr {
        self.0.as_ptr()
    }

    /// UUID in canonical string form.
    pub(crate) fn uuid_string(&self) -> Result<String, VirError> {
        uuid_of(self.as_ptr())
    }

    /// Domain name.
    pub(crate) fn name(&self) -> Result<String, VirError> {
        name_of(self.as_ptr())
    }

    /// `(virDomainState, reason)`.
    pub(crate) fn state(&self) -> Result<(c_int, c_int), VirError> {
        let (mut st, mut reason) = (0, 0);
        // SAFETY: valid domain, valid out pointers.
        check(unsafe { sys::virDomainGetState(self.as_ptr(), &mut st, &mut reason, 0) })?;
        Ok((st, reason))
    }

    /// `(vCPUs, maximum memory in KiB)` of the domain (`virDomainGetInfo`;
    /// for a shut-off domain, its definition's).
    pub(crate) fn size(&self) -> Result<(u32, u64), VirError> {
        let mut info = sys::_virDomainInfo {
            state: 0,
            maxMem: 0,
            memory: 0,
            nrVirtCpu: 0,
            cpuTime: 0,
        };
        // SAFETY: valid domain, valid out pointer.
        check(unsafe { sys::virDomainGetInfo(self.as_ptr(), &mut info) })?;
        // `c_ulong` is `u64` here but `u32` on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let max_kib = u64::from(info.maxMem);
        Ok((u32::from(info.nrVirtCpu), max_kib))
    }

    /// Whether the domain is running (or paused).
    pub(crate) fn is_active(&self) -> Result<bool, VirError> {
        // SAFETY: valid domain.
        let rc = unsafe { sys::virDomainIsActive(self.as_ptr()) };
        if rc < 0 {
            Err(VirError::last())
        } else {
            Ok(rc == 1)
        }
    }

    /// The custom metadata element in namespace `ns`, if present.
    pub(crate) fn metadata_element(&self, ns: &str) -> Result<Option<String>, VirError> {
        let c = CString::new(ns).map_err(|_| input_error("namespace"))?;
        // SAFETY: valid domain and string; the result is malloc'ed.
        let p = unsafe {
            sys::virDomainGetMetadata(
                self.as_ptr(),
                sys::VIR_DOMAIN_METADATA_ELEMENT as c_int,
                c.as_ptr(),
                0,
            )
        };
        // SAFETY: null or a libvirt-allocated string.
        match unsafe { owned_cstring(p) } {
            Some(s) => Ok(Some(s)),
            None => {
                let e = VirError::last();
                if e.is(sys::VIR_ERR_NO_DOMAIN_METADATA) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Starts the defined domain.
    pub(crate) fn create(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainCreate(self.as_ptr()) })
    }

    /// Starts the defined domain with its vCPUs paused
    /// (`virDomainCreateWithFlags(VIR_DOMAIN_START_PAUSED)`): QEMU runs and
    /// holds its devices (taps), the guest executes nothing until resumed.
    pub(crate) fn create_paused(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainCreateWithFlags(self.as_ptr(), sys::VIR_DOMAIN_START_PAUSED) })
    }

    /// Hard power-off.
    pub(crate) fn destroy(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainDestroy(self.as_ptr()) })
    }

    /// Asks the guest to shut down (ACPI power button).
    pub(crate) fn shutdown(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainShutdown(self.as_ptr()) })
    }

    /// Freezes the vCPUs (virDomainSuspend).
    pub(crate) fn suspend(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainSuspend(self.as_ptr()) })
    }

    /// Continues a suspended domain (virDomainResume).
    pub(crate) fn resume(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainResume(self.as_ptr()) })
    }

    /// Hard reset (like pressing the reset button).
    pub(crate) fn reset(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainReset(self.as_ptr(), 0) })
    }

    /// Removes the persistent definition with `flags`.
    pub(crate) fn undefine(&self, flags: c_uint) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainUndefineFlags(self.as_ptr(), flags) })
    }
}

impl Drop for Dom {
    fn drop(&mut self) {
        // SAFETY: we own one reference to the domain.
        unsafe { sys::virDomainFree(self.0.as_ptr()) };
    }
}

/// UUID string of a borrowed domain pointer (no RPC: cached client-side).
pub(crate) fn uuid_of(dom: sys::virDomainPtr) -> Result<String, VirError> {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `buf` has VIR_UUID_STRING_BUFLEN bytes as the API requires.
    check(unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) })?;
    // SAFETY: libvirt NUL-terminated the buffer.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Name of a borrowed domain pointer (no RPC: cached client-side).
pub(crate) fn name_of(dom: sys::virDomainPtr) -> Result<String, VirError> {
    // SAFETY: the returned string belongs to the domain object.
    let p = unsafe { sys::virDomainGetName(dom) };
    if p.is_null() {
        return Err(VirError::last());
    }
    // SAFETY: non-null NUL-terminated string owned by `dom`.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

// ---- Disks (hot-plug, I/O limits) and secrets --------------------------

/// `VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG` when the domain runs,
/// `VIR_DOMAIN_AFFECT_CONFIG` alone otherwise.
pub(crate) fn affect_flags(active: bool) -> c_uint {
    if active {
        sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG
    } else {
        sys::VIR_DOMAIN_AFFECT_CONFIG
    }
}

impl VirError {
    /// An unplug of that device was requested before and is not finished.
    pub fn is_unplug_pending(&self) -> bool {
        self.message.contains("already in the process of unplug")
            || self.message.contains("unplug already in progress")
    }

    /// The device is not (or no longer) attached.
    pub fn is_device_missing(&self) -> bool {
        self.is(sys::VIR_ERR_DEVICE_MISSING)
            || (self.is(sys::VIR_ERR_OPERATION_FAILED) && self.message.contains("not found"))
            || self.message.contains("no target device")
    }
}

impl Dom {
    /// The domain XML: the live one when running, else the persistent one
    /// (`flags` 0), or the inactive definition (`VIR_DOMAIN_XML_INACTIVE`).
    pub(crate) fn xml_desc(&self, inactive: bool) -> Result<String, VirError> {
        let flags = if inactive {
            sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        // SAFETY: valid domain; the result is malloc'ed.
        let p = unsafe { sys::virDomainGetXMLDesc(self.as_ptr(), flags) };
        // SAFETY: null or a libvirt-allocated string.
        unsafe { owned_cstring(p) }.ok_or_else(VirError::last)
    }

    /// Hot-plugs (and persists) a device.
    pub(crate) fn attach_device(&self, xml: &str, flags: c_uint) -> Result<(), VirError> {
        let c = CString::new(xml).map_err(|_| input_error("device XML"))?;
        // SAFETY: valid domain and string.
        check(unsafe { sys::virDomainAttachDeviceFlags(self.as_ptr(), c.as_ptr(), flags) })
    }

    /// Asks for a device's removal (the guest acknowledges asynchronously).
    pub(crate) fn detach_device(&self, xml: &str, flags: c_uint) -> Result<(), VirError> {
        let c = CString::new(xml).map_err(|_| input_error("device XML"))?;
        // SAFETY: valid domain and string.
        check(unsafe { sys::virDomainDetachDeviceFlags(self.as_ptr(), c.as_ptr(), flags) })
    }

    /// Sets I/O limits of disk `target` (`virDomainSetBlockIoTune`); each
    /// `(name, value)` is a typed `unsigned long long` parameter, 0 = none.
    pub(crate) fn set_block_iotune(
        &self,
        target: &str,
        params: &[(&str, u64)],
        flags: c_uint,
    ) -> Result<(), VirError> {
        let disk = CString::new(target).map_err(|_| input_error("disk target"))?;
        let mut tp = TypedParams::default();
        for (name, value) in params {
            tp.add_ullong(name, *value)?;
        }
        // SAFETY: valid domain and string; `tp` holds `n` initialised params.
        check(unsafe {
            sys::virDomainSetBlockIoTune(self.as_ptr(), disk.as_ptr(), tp.ptr, tp.n, flags)
        })
    }
}

/// A libvirt-allocated typed-parameter array, freed on drop.
struct TypedParams {
    ptr: sys::virTypedParameterPtr,
    n: c_int,
    max: c_int,
}

impl Default for TypedParams {
    fn default() -> Self {
        TypedParams {
            ptr: ptr::null_mut(),
            n: 0,
            max: 0,
        }
    }
}

impl TypedParams {
    fn add_ullong(&mut self, name: &str, value: u64) -> Result<(), VirError> {
        let c = CString::new(name).map_err(|_| input_error("parameter name"))?;
        // SAFETY: the three out-pointers describe the array libvirt grows.
        check(unsafe {
            sys::virTypedParamsAddULLong(
                &mut self.ptr,
                &mut self.n,
                &mut self.max,
                c.as_ptr(),
                value,
            )
        })
    }
}

impl Drop for TypedParams {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: allocated by virTypedParamsAdd*, `n` entries.
            unsafe { sys::virTypedParamsFree(self.ptr, self.n) };
        }
    }
}

/// The object a libvirt lookup returned (`p`, wrapped by `wrap`), `None`
/// when it failed with an error `absent` says means "not there", or that
/// error.
fn found<P, T>(
    p: *mut P,
    wrap: impl FnOnce(NonNull<P>) -> T,
    absent: impl FnOnce(&VirError) -> bool,
) -> Result<Option<T>, VirError> {
    match NonNull::new(p) {
        Some(p) => Ok(Some(wrap(p))),
        None => {
            let e = VirError::last();
            if absent(&e) {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// A libvirt secret (`virSecretPtr`), freed on drop.
#[derive(Debug)]
pub(crate) struct Secret(NonNull<sys::virSecret>);

impl Secret {
    /// Its UUID.
    pub(crate) fn uuid_string(&self) -> Result<String, VirError> {
        let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
        // SAFETY: `buf` has VIR_UUID_STRING_BUFLEN bytes as the API requires.
        check(unsafe { sys::virSecretGetUUIDString(self.0.as_ptr(), buf.as_mut_ptr()) })?;
        // SAFETY: NUL-terminated by libvirt.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Its usage ID (for a Ceph secret, the name it is looked up by).
    pub(crate) fn usage_id(&self) -> Result<String, VirError> {
        // SAFETY: valid secret; the string belongs to the secret object.
        let p = unsafe { sys::virSecretGetUsageID(self.0.as_ptr()) };
        if p.is_null() {
            return Err(VirError::last());
        }
        // SAFETY: non-null and NUL-terminated, alive while `self` is.
        Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// Stores the secret's value.
    pub(crate) fn set_value(&self, value: &[u8]) -> Result<(), VirError> {
        // SAFETY: valid secret; `value` is readable for its length.
        check(unsafe { sys::virSecretSetValue(self.0.as_ptr(), value.as_ptr(), value.len(), 0) })
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY: we own one reference.
        unsafe { sys::virSecretFree(self.0.as_ptr()) };
    }
}

impl Conn {
    /// The Ceph secret with usage `usage`, if defined.
    pub(crate) fn ceph_secret(&self, usage: &str) -> Result<Option<Secret>, VirError> {
        let c = CString::new(usage).map_err(|_| input_error("secret usage"))?;
        // SAFETY: valid connection and string.
        let p = unsafe {
            sys::virSecretLookupByUsage(
                self.as_ptr(),
                sys::VIR_SECRET_USAGE_TYPE_CEPH as c_int,
                c.as_ptr(),
            )
        };
        found(p, Secret, |e| e.is(sys::VIR_ERR_NO_SECRET))
    }

    /// The secret with UUID `uuid`, if defined.
    pub(crate) fn secret_by_uuid(&self, uuid: &str) -> Result<Option<Secret>, VirError> {
        let c = CString::new(uuid).map_err(|_| input_error("secret UUID"))?;
        // SAFETY: valid connection and string.
        let p = unsafe { sys::virSecretLookupByUUIDString(self.as_ptr(), c.as_ptr()) };
        found(p, Secret, |e| e.is(sys::VIR_ERR_NO_SECRET))
    }

    /// Defines a secret from XML.
    pub(crate) fn define_secret(&self, xml: &str) -> Result<Secret, VirError> {
        let c = CString::new(xml).map_err(|_| input_error("secret XML"))?;
        // SAFETY: valid connection and string.
        let p = unsafe { sys::virSecretDefineXML(self.as_ptr(), c.as_ptr(), 0) };
        NonNull::new(p).map(Secret).ok_or_else(VirError::last)
    }
}

// ---- Migration -----------------------------------------------------------

impl TypedParams {
    fn add_string(&mut self, name: &CStr, value: &str) -> Result<(), VirError> {
        let v = CString::new(value).map_err(|_| input_error("parameter value"))?;
        // SAFETY: the three out-pointers describe the array libvirt grows;
        // libvirt copies the strings.
        check(unsafe {
            sys::virTypedParamsAddString(
                &mut self.ptr,
                &mut self.n,
                &mut self.max,
                name.as_ptr(),
                v.as_ptr(),
            )
        })
    }

    fn get_string(&self, name: &CStr) -> Option<String> {
        let mut v: *const c_char = ptr::null();
        // SAFETY: `ptr` holds `n` initialised params (or is null with n =
        // 0); the string stays owned by the array, copied out at once.
        let rc = unsafe { sys::virTypedParamsGetString(self.ptr, self.n, name.as_ptr(), &mut v) };
        (rc == 1 && !v.is_null())
            // SAFETY: a NUL-terminated string inside the array.
            .then(|| unsafe { CStr::from_ptr(v) }.to_string_lossy().into_owned())
    }

    fn get_ullong(&self, name: &CStr) -> Option<u64> {
        let mut v: std::ffi::c_ulonglong = 0;
        // SAFETY: `ptr` holds `n` initialised params (or is null with n = 0).
        let rc = unsafe { sys::virTypedParamsGetULLong(self.ptr, self.n, name.as_ptr(), &mut v) };
        (rc == 1).then_some(v)
    }
}

/// A migration parameter value ([`Dom::migrate_to_uri3`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MigrateParam {
    /// A string (`VIR_MIGRATE_PARAM_URI`, `VIR_MIGRATE_PARAM_DEST_XML`, …).
    Str(&'static CStr, String),
    /// An unsigned 64-bit number (`VIR_MIGRATE_PARAM_BANDWIDTH`, …).
    ULLong(&'static CStr, u64),
}

/// The numbers of a migration job libvirt reports (`virDomainGetJobStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawJobStats {
    pub(crate) downtime_ms: Option<u64>,
    pub(crate) elapsed_ms: Option<u64>,
    pub(crate) data_total: Option<u64>,
    pub(crate) data_remaining: Option<u64>,
    pub(crate) memory_iteration: Option<u64>,
    /// `virDomainJobType`: 0 none, 1 bounded, 2 unbounded, 3 completed…
    pub(crate) job_type: i32,
}

impl Dom {
    /// Peer-to-peer migration to the libvirtd at `dconnuri`
    /// (`virDomainMigrateToURI3`). Blocks until the job ends.
    pub(crate) fn migrate_to_uri3(
        &self,
        dconnuri: &str,
        params: &[MigrateParam],
        flags: c_uint,
    ) -> Result<(), VirError> {
        let uri = CString::new(dconnuri).map_err(|_| input_error("destination URI"))?;
        let mut tp = TypedParams::default();
        for p in params {
            match p {
                MigrateParam::Str(name, value) => tp.add_string(name, value)?,
                MigrateParam::ULLong(name, value) => {
                    let n = name.to_str().map_err(|_| input_error("parameter name"))?;
                    tp.add_ullong(n, *value)?
                }
            }
        }
        let n = c_uint::try_from(tp.n).unwrap_or(0);
        // SAFETY: valid domain and string; `tp` holds `n` initialised params.
        check(unsafe { sys::virDomainMigrateToURI3(self.as_ptr(), uri.as_ptr(), tp.ptr, n, flags) })
    }

    /// Switches a running migration to post-copy
    /// (`virDomainMigrateStartPostCopy`).
    pub(crate) fn migrate_start_postcopy(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainMigrateStartPostCopy(self.as_ptr(), 0) })
    }

    /// Aborts the domain's current job (`virDomainAbortJob`).
    pub(crate) fn abort_job(&self) -> Result<(), VirError> {
        // SAFETY: valid domain.
        check(unsafe { sys::virDomainAbortJob(self.as_ptr()) })
    }

    /// The current job's statistics, or the last completed job's
    /// (`VIR_DOMAIN_JOB_STATS_COMPLETED`).
    pub(crate) fn job_stats(&self, completed: bool) -> Result<RawJobStats, VirError> {
        let mut tp = TypedParams::default();
        let mut job_type: c_int = 0;
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        // SAFETY: valid domain; libvirt allocates the array into `tp`
        // (freed by its Drop with `n` entries).
        check(unsafe {
            sys::virDomainGetJobStats(self.as_ptr(), &mut job_type, &mut tp.ptr, &mut tp.n, flags)
        })?;
        tp.max = tp.n;
        Ok(RawJobStats {
            downtime_ms: tp.get_ullong(sys::VIR_DOMAIN_JOB_DOWNTIME),
            elapsed_ms: tp.get_ullong(sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
            data_total: tp.get_ullong(sys::VIR_DOMAIN_JOB_DATA_TOTAL),
            data_remaining: tp.get_ullong(sys::VIR_DOMAIN_JOB_DATA_REMAINING),
            memory_iteration: tp.get_ullong(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
            job_type,
        })
    }

    /// The migratable definition (`VIR_DOMAIN_XML_MIGRATABLE`), inactive
    /// or live.
    pub(crate) fn migratable_xml(&self, inactive: bool) -> Result<String, VirError> {
        let mut flags = sys::VIR_DOMAIN_XML_MIGRATABLE;
        if inactive {
            flags |= sys::VIR_DOMAIN_XML_INACTIVE;
        }
        // SAFETY: valid domain; the result is malloc'ed.
        let p = unsafe { sys::virDomainGetXMLDesc(self.as_ptr(), flags) };
        // SAFETY: null or a libvirt-allocated string.
        unsafe { owned_cstring(p) }.ok_or_else(VirError::last)
    }
}

impl Dom {
    /// Starts a backup job described by `xml` (`virDomainBackupBegin`, no
    /// checkpoint). Returns at once; the job runs in QEMU.
    pub(crate) fn backup_begin(&self, xml: &str) -> Result<(), VirError> {
        let c = CString::new(xml).map_err(|_| input_error("backup XML"))?;
        // SAFETY: valid domain and string; no checkpoint XML.
        check(unsafe { sys::virDomainBackupBegin(self.as_ptr(), c.as_ptr(), ptr::null(), 0) })
    }

    /// The job running now (`virDomainJobType`: 0 none, 1 bounded,
    /// 2 unbounded), or with `completed` the last one that ended (3
    /// completed, 4 failed, 5 cancelled) and its error message.
    pub(crate) fn job_outcome(&self, completed: bool) -> Result<(i32, Option<String>), VirError> {
        let mut tp = TypedParams::default();
        let mut job_type: c_int = 0;
        let flags = if completed {
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED
        } else {
            0
        };
        // SAFETY: as in `job_stats`.
        check(unsafe {
            sys::virDomainGetJobStats(self.as_ptr(), &mut job_type, &mut tp.ptr, &mut tp.n, flags)
        })?;
        tp.max = tp.n;
        Ok((job_type, tp.get_string(sys::VIR_DOMAIN_JOB_ERRMSG)))
    }
}

impl VirError {
    /// The job was aborted (`VIR_ERR_OPERATION_ABORTED`).
    pub fn is_aborted(&self) -> bool {
        self.is(sys::VIR_ERR_OPERATION_ABORTED)
    }
}

// ---- Bulk statistics -------------------------------------------------------

/// One domain's record of a bulk statistics call: its UUID, name and
/// parameters, copied out of libvirt's memory.
pub(crate) type RawDomainStats = (String, String, Vec<(String, ParamValue)>);

/// Copies `n` typed parameters out of `params`.
///
/// # Safety
/// `params` must be null (with any `n`) or point to `n` initialised
/// parameters, alive for the call.
unsafe fn typed_params_vec(
    params: sys::virTypedParameterPtr,
    n: c_int,
) -> Vec<(String, ParamValue)> {
    let n = usize::try_from(n).unwrap_or(0);
    if params.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: the caller's contract.
    let slice = unsafe { std::slice::from_raw_parts(params, n) };
    let mut out = Vec::with_capacity(n);
    for p in slice {
        // `field` is a fixed array; libvirt NUL-terminates it, but bound
        // the read to its length anyway.
        let bytes: Vec<u8> = p
            .field
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        let name = String::from_utf8_lossy(&bytes).into_owned();
        // SAFETY: `type_` says which union member libvirt wrote.
        let value = unsafe {
            match u32::try_from(p.type_).unwrap_or(0) {
                sys::VIR_TYPED_PARAM_INT => ParamValue::Int(p.value.i),
                sys::VIR_TYPED_PARAM_UINT => ParamValue::UInt(p.value.ui),
                sys::VIR_TYPED_PARAM_LLONG => ParamValue::LLong(p.value.l),
                sys::VIR_TYPED_PARAM_ULLONG => ParamValue::ULLong(p.value.ul),
                sys::VIR_TYPED_PARAM_DOUBLE => ParamValue::Double(p.value.d),
                sys::VIR_TYPED_PARAM_BOOLEAN => ParamValue::Boolean(p.value.b != 0),
                sys::VIR_TYPED_PARAM_STRING if !p.value.s.is_null() => {
                    ParamValue::String(CStr::from_ptr(p.value.s).to_string_lossy().into_owned())
                }
                // An unknown type (or a null string) is skipped.
                _ => continue,
            }
        };
        out.push((name, value));
    }
    out
}

impl Conn {
    /// `virConnectGetAllDomainStats`: the statistics groups `stats`
    /// (`VIR_DOMAIN_STATS_*`) of every domain matching `flags`, in one RPC.
    pub(crate) fn all_domain_stats(
        &self,
        stats: c_uint,
        flags: c_uint,
    ) -> Result<Vec<RawDomainStats>, VirError> {
        let mut records: *mut sys::virDomainStatsRecordPtr = ptr::null_mut();
        // SAFETY: valid connection; libvirt allocates a NULL-terminated
        // array of records into `records`.
        let n =
            unsafe { sys::virConnectGetAllDomainStats(self.as_ptr(), stats, &mut records, flags) };
        if n < 0 {
            return Err(VirError::last());
        }
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        if records.is_null() {
            return Ok(out);
        }
        let mut result = Ok(());
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: `i < n` entries, each a valid record owned by the list.
            let rec = unsafe { *records.add(i) };
            if rec.is_null() {
                break;
            }
            // SAFETY: a record from the list, alive until it is freed below.
            let (dom, params, nparams) = unsafe { ((*rec).dom, (*rec).params, (*rec).nparams) };
            let ids = uuid_of(dom).and_then(|u| Ok((u, name_of(dom)?)));
            match ids {
                Ok((uuid, name)) => {
                    // SAFETY: `params` holds `nparams` parameters of the record.
                    let params = unsafe { typed_params_vec(params, nparams) };
                    out.push((uuid, name, params));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // SAFETY: the list (records, their parameters and domain
        // references) was allocated by virConnectGetAllDomainStats and is
        // freed exactly once, after everything was copied out.
        unsafe { sys::virDomainStatsRecordListFree(records) };
        result.map(|()| out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_parameters_are_copied_with_their_types() {
        // Built by libvirt's own helpers (no daemon needed).
        init();
        let mut tp = TypedParams::default();
        tp.add_ullong("block.0.rd.bytes", 4096).unwrap();
        tp.add_string(c"block.0.name", "vda").unwrap();
        tp.add_ullong("cpu.time", u64::MAX).unwrap();
        // SAFETY: `tp` holds `n` parameters built above.
        let v = unsafe { typed_params_vec(tp.ptr, tp.n) };
        assert_eq!(
            v,
            vec![
                ("block.0.rd.bytes".to_owned(), ParamValue::ULLong(4096)),
                ("block.0.name".to_owned(), ParamValue::String("vda".into())),
                ("cpu.time".to_owned(), ParamValue::ULLong(u64::MAX)),
            ]
        );
        // SAFETY: null with any count is an empty list.
        assert!(unsafe { typed_params_vec(ptr::null_mut(), 3) }.is_empty());
    }
}
