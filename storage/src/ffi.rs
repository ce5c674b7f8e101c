//! The only module with `unsafe` code: the subset of librados
//! (`librados.so.2`) and librbd (`librbd.so.1`, API 1.16 as in Debian 12 /
//! Ceph 16.2) that nubo uses, as a table of typed function pointers, and
//! owning handle types whose methods are safe.
//!
//! The libraries are loaded at run time (`dlopen` through `libloading`) the
//! first time a cluster handle is created ([`Api::get`]), not linked: linked,
//! they and what they pull in (libceph-common, boost, libstdc++, ibverbs,
//! rdmacm, fmt, …) were mapped into every agent at start, ~11 MB of its RSS
//! on nodes whose disks are local files (docs/benchmarks.md, "Compute"). Now
//! a process that never connects to Ceph never maps them, and a host without
//! the Ceph packages runs until RBD is configured, which then fails with
//! [`crate::Error::LibraryLoad`] naming the file and `dlerror`.
//!
//! Why not `rados-sys`/`rbd-sys`: their build script runs bindgen 0.73, which
//! currently resolves to `syn` 3 next to `prettyplease` 0.2 (syn 2) and does
//! not compile in this workspace. The declarations below are copied from
//! `/usr/include/rados/librados.h` and `/usr/include/rbd/librbd.h` (16.2.15);
//! the struct layouts are checked by the unit tests at the bottom.
//!
//! Conventions: every method returns `Result<_, Errno>` with the positive
//! errno of a failed call; callers (outside this module) add the operation
//! and the object to turn it into a [`crate::Error`].

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::{Arc, OnceLock};

use libloading::Library;

pub(crate) use sys::Api;

/// A positive errno value returned (negated) by a librados/librbd call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) i32);

impl Errno {
    /// `r` is a librados/librbd return code: negative errno on failure.
    fn check(r: c_int) -> Result<c_int, Errno> {
        if r < 0 {
            Err(Errno(-r))
        } else {
            Ok(r)
        }
    }
}

#[allow(non_camel_case_types)]
mod sys {
    use std::ffi::{c_char, c_int, c_void};

    pub type rados_t = *mut c_void;
    pub type rados_ioctx_t = *mut c_void;
    pub type rbd_image_t = *mut c_void;
    pub type rbd_image_options_t = *mut c_void;

    /// `rbd_image_spec_t`
    #[repr(C)]
    pub struct ImageSpec {
        pub id: *mut c_char,
        pub name: *mut c_char,
    }

    /// `rbd_linked_image_spec_t`
    #[repr(C)]
    pub struct LinkedImageSpec {
        pub pool_id: i64,
        pub pool_name: *mut c_char,
        pub pool_namespace: *mut c_char,
        pub image_id: *mut c_char,
        pub image_name: *mut c_char,
        pub trash: bool,
    }

    /// `rbd_snap_spec_t` (`namespace_type` is a C enum: `int`)
    #[repr(C)]
    pub struct SnapSpec {
        pub id: u64,
        pub namespace_type: c_int,
        pub name: *mut c_char,
    }

    /// `rbd_snap_info_t`
    #[repr(C)]
    pub struct SnapInfo {
        pub id: u64,
        pub size: u64,
        pub name: *const c_char,
    }

    /// `rbd_image_info_t`
    #[repr(C)]
    pub struct ImageInfo {
        pub size: u64,
        pub obj_size: u64,
        pub num_objs: u64,
        pub order: c_int,
        pub block_name_prefix: [c_char; 24],
        pub parent_pool: i64,
        pub parent_name: [c_char; 96],
    }

    /// `rbd_image_watcher_t`
    #[repr(C)]
    pub struct ImageWatcher {
        pub addr: *mut c_char,
        pub id: i64,
        pub cookie: u64,
    }

    pub const RBD_IMAGE_OPTION_FORMAT: c_int = 0;
    pub const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
    pub const RBD_IMAGE_OPTION_ORDER: c_int = 2;
    pub const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;
    pub const RBD_LOCK_MODE_SHARED: c_int = 1;

    /// File names `dlopen` looks up (the runtime packages' sonames:
    /// Debian `librados2`, `librbd1`).
    pub const LIBRADOS: &str = "librados.so.2";
    /// See [`LIBRADOS`].
    pub const LIBRBD: &str = "librbd.so.1";

    /// Declares the librados/librbd functions nubo calls, per library:
    /// each becomes a typed function pointer field of [`Api`], resolved by
    /// `dlsym` in [`Api::load`]. The signatures are the C prototypes.
    macro_rules! ceph_api {
        ($($lib:ident: $file:ident {
            $(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*
        })*) => {
            /// The loaded Ceph client libraries and typed pointers to the
            /// functions nubo uses (valid while the libraries stay loaded:
            /// the one `Api` lives in a `static` and is never dropped).
            pub(crate) struct Api {
                $(
                    /// Keeps this library loaded for the pointers below
                    /// (held, never read).
                    #[allow(dead_code)]
                    $lib: libloading::Library,
                )*
                $($(
                    pub(crate) $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?,
                )*)*
            }

            impl Api {
                /// `dlopen`s the libraries (in order: librbd needs librados)
                /// and resolves every declared function.
                pub(super) fn load() -> Result<Api, crate::Error> {
                    $(
                        let $lib = super::open($file)?;
                    )*
                    Ok(Api {
                        $($(
                            // SAFETY: the field's type is the function's C
                            // prototype from librados.h/librbd.h.
                            $name: unsafe {
                                super::symbol(&$lib, $file, concat!(stringify!($name), "\0"))
                            }?,
                        )*)*
                        $($lib,)*
                    })
                }
            }
        };
    }

    ceph_api! {
        librados: LIBRADOS {
            fn rados_create2(
                cluster: *mut rados_t,
                clustername: *const c_char,
                name: *const c_char,
                flags: u64,
            ) -> c_int;
            fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
            fn rados_conf_set(
                cluster: rados_t,
                option: *const c_char,
                value: *const c_char,
            ) -> c_int;
            fn rados_connect(cluster: rados_t) -> c_int;
            fn rados_shutdown(cluster: rados_t);
            fn rados_cluster_fsid(cluster: rados_t, buf: *mut c_char, len: usize) -> c_int;
            fn rados_get_instance_id(cluster: rados_t) -> u64;
            fn rados_getaddrs(cluster: rados_t, addrs: *mut *mut c_char) -> c_int;
            fn rados_wait_for_latest_osdmap(cluster: rados_t) -> c_int;
            fn rados_pool_create(cluster: rados_t, pool_name: *const c_char) -> c_int;
            fn rados_pool_lookup(cluster: rados_t, pool_name: *const c_char) -> i64;
            fn rados_ioctx_create(
                cluster: rados_t,
                pool_name: *const c_char,
                ioctx: *mut rados_ioctx_t,
            ) -> c_int;
            fn rados_ioctx_destroy(io: rados_ioctx_t);
            fn rados_mon_command(
                cluster: rados_t,
                cmd: *const *const c_char,
                cmdlen: usize,
                inbuf: *const c_char,
                inbuflen: usize,
                outbuf: *mut *mut c_char,
                outbuflen: *mut usize,
                outs: *mut *mut c_char,
                outslen: *mut usize,
            ) -> c_int;
            fn rados_buffer_free(buf: *mut c_char);
        }

        librbd: LIBRBD {
            fn rbd_image_options_create(opts: *mut rbd_image_options_t);
            fn rbd_image_options_destroy(opts: rbd_image_options_t);
            fn rbd_image_options_set_uint64(
                opts: rbd_image_options_t,
                optname: c_int,
                optval: u64,
            ) -> c_int;
            fn rbd_pool_init(io: rados_ioctx_t, force: bool) -> c_int;
            fn rbd_create4(
                io: rados_ioctx_t,
                name: *const c_char,
                size: u64,
                opts: rbd_image_options_t,
            ) -> c_int;
            fn rbd_clone3(
                p_ioctx: rados_ioctx_t,
                p_name: *const c_char,
                p_snapname: *const c_char,
                c_ioctx: rados_ioctx_t,
                c_name: *const c_char,
                c_opts: rbd_image_options_t,
            ) -> c_int;
            fn rbd_remove(io: rados_ioctx_t, name: *const c_char) -> c_int;
            fn rbd_list2(io: rados_ioctx_t, images: *mut ImageSpec, max: *mut usize) -> c_int;
            fn rbd_image_spec_list_cleanup(images: *mut ImageSpec, num: usize);
            fn rbd_open(
                io: rados_ioctx_t,
                name: *const c_char,
                image: *mut rbd_image_t,
                snap_name: *const c_char,
            ) -> c_int;
            fn rbd_close(image: rbd_image_t) -> c_int;
            fn rbd_stat(image: rbd_image_t, info: *mut ImageInfo, infosize: usize) -> c_int;
            fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
            fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
            fn rbd_get_parent(
                image: rbd_image_t,
                parent_image: *mut LinkedImageSpec,
                parent_snap: *mut SnapSpec,
            ) -> c_int;
            fn rbd_linked_image_spec_cleanup(image: *mut LinkedImageSpec);
            fn rbd_snap_spec_cleanup(snap: *mut SnapSpec);
            fn rbd_list_children3(
                image: rbd_image_t,
                images: *mut LinkedImageSpec,
                max: *mut usize,
            ) -> c_int;
            fn rbd_linked_image_spec_list_cleanup(images: *mut LinkedImageSpec, num: usize);
            fn rbd_snap_list(image: rbd_image_t, snaps: *mut SnapInfo, max: *mut c_int) -> c_int;
            fn rbd_snap_list_end(snaps: *mut SnapInfo);
            fn rbd_snap_create(image: rbd_image_t, name: *const c_char) -> c_int;
            fn rbd_snap_remove(image: rbd_image_t, name: *const c_char) -> c_int;
            fn rbd_snap_rollback(image: rbd_image_t, name: *const c_char) -> c_int;
            fn rbd_snap_protect(image: rbd_image_t, name: *const c_char) -> c_int;
            fn rbd_flatten(image: rbd_image_t) -> c_int;
            fn rbd_snap_unprotect(image: rbd_image_t, name: *const c_char) -> c_int;
            fn rbd_snap_is_protected(
                image: rbd_image_t,
                name: *const c_char,
                is_protected: *mut c_int,
            ) -> c_int;
            fn rbd_read(image: rbd_image_t, ofs: u64, len: usize, buf: *mut c_char) -> isize;
            fn rbd_write(image: rbd_image_t, ofs: u64, len: usize, buf: *const c_char) -> isize;
            fn rbd_flush(image: rbd_image_t) -> c_int;
            fn rbd_is_exclusive_lock_owner(image: rbd_image_t, is_owner: *mut c_int) -> c_int;
            fn rbd_lock_acquire(image: rbd_image_t, mode: c_int) -> c_int;
            fn rbd_lock_release(image: rbd_image_t) -> c_int;
            fn rbd_lock_get_owners(
                image: rbd_image_t,
                mode: *mut c_int,
                owners: *mut *mut c_char,
                max: *mut usize,
            ) -> c_int;
            fn rbd_lock_get_owners_cleanup(owners: *mut *mut c_char, count: usize);
            fn rbd_lock_break(image: rbd_image_t, mode: c_int, owner: *const c_char) -> c_int;
            fn rbd_watchers_list(
                image: rbd_image_t,
                watchers: *mut ImageWatcher,
                max: *mut usize,
            ) -> c_int;
            fn rbd_watchers_list_cleanup(watchers: *mut ImageWatcher, num: usize);
        }
    }
}

/// `dlopen(file)`; a failure names the file and carries `dlerror()`.
fn open(file: &'static str) -> Result<Library, crate::Error> {
    // SAFETY: loading runs the library's initialisers; librados/librbd (and
    // what they link) are ordinary shared libraries whose constructors only
    // set up their own globals (QEMU's block-rbd module loads them this way).
    unsafe { Library::new(file) }.map_err(|e| crate::Error::LibraryLoad {
        file,
        dlerror: e.to_string(),
    })
}

/// `dlsym(name)` from `lib` (`file`) as a `T`; `name` ends with NUL.
///
/// # Safety
/// `T` must be the function pointer type of the C prototype of `name`.
unsafe fn symbol<T: Copy>(
    lib: &Library,
    file: &'static str,
    name: &'static str,
) -> Result<T, crate::Error> {
    // SAFETY: `T` matches the symbol's type per this function's contract;
    // the pointer is copied out and used only while `lib` stays loaded
    // (it is stored next to the pointers in the never-dropped `Api`).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|sym| *sym)
        .map_err(|e| crate::Error::LibraryLoad {
            file,
            dlerror: e.to_string(),
        })
}

/// The process-wide table, filled by the first successful [`Api::get`].
static API: OnceLock<Api> = OnceLock::new();

impl Api {
    /// The loaded librados/librbd table, loading it on first use. A failed
    /// load is not remembered: installing the packages and retrying works
    /// without a restart.
    pub(crate) fn get() -> Result<&'static Api, crate::Error> {
        if let Some(api) = API.get() {
            return Ok(api);
        }
        let api = Api::load()?;
        // Two threads may both load; the loser's handles just drop a
        // reference (`dlclose` of a library that stays loaded).
        let api = API.get_or_init(|| api);
        tracing::debug!("loaded {} and {}", sys::LIBRADOS, sys::LIBRBD);
        Ok(api)
    }
}

/// Copies a C string owned by librados/librbd; `None` for NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the call.
unsafe fn string_from(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per this function's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Calls `fill(ptr, &mut n)` with a buffer of `n` default items, growing it
/// while the call answers `-ERANGE` (librbd then stores the needed count in
/// `n`). Returns the buffer and the count librbd filled in.
fn grow_until_fits<T>(
    first: usize,
    mut make: impl FnMut() -> T,
    mut fill: impl FnMut(*mut T, &mut usize) -> c_int,
) -> Result<(Vec<T>, usize), Errno> {
    let mut cap = first.max(1);
    loop {
        let mut buf: Vec<T> = (0..cap).map(|_| make()).collect();
        let mut n = cap;
        let r = fill(buf.as_mut_ptr(), &mut n);
        if r == -libc::ERANGE && n > cap {
            cap = n;
            continue;
        }
        Errno::check(r)?;
        return Ok((buf, n.min(cap)));
    }
}

fn cstring(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno(libc::EINVAL))
}

/// A `rados_t` cluster handle; shut down on drop (after every [`IoCtx`] and
/// [`Image`] made from it, which hold an `Arc` to it).
pub(crate) struct Rados {
    raw: sys::rados_t,
    api: &'static Api,
}

// SAFETY: librados cluster handles are internally synchronised and documented
// as usable from many threads at once (the Objecter and MonClient have their
// own locks); nubo shares one per process.
unsafe impl Send for Rados {}
// SAFETY: as above: concurrent calls on one `rados_t` are allowed.
unsafe impl Sync for Rados {}

impl Rados {
    /// `rados_create2("ceph", "client.<id>")`: not connected yet.
    pub(crate) fn create(api: &'static Api, client_id: &str) -> Result<Self, Errno> {
        let cluster = cstring("ceph")?;
        let name = cstring(&format!("client.{client_id}"))?;
        let mut raw: sys::rados_t = ptr::null_mut();
        // SAFETY: `raw` is a valid out pointer; the strings are NUL-terminated
        // and outlive the call.
        Errno::check(unsafe { (api.rados_create2)(&mut raw, cluster.as_ptr(), name.as_ptr(), 0) })?;
        Ok(Rados { raw, api })
    }

    pub(crate) fn conf_read_file(&self, path: &str) -> Result<(), Errno> {
        let path = cstring(path)?;
        // SAFETY: `self.raw` is a live handle; `path` is NUL-terminated.
        Errno::check(unsafe { (self.api.rados_conf_read_file)(self.raw, path.as_ptr()) }).map(drop)
    }

    pub(crate) fn conf_set(&self, option: &str, value: &str) -> Result<(), Errno> {
        let (o, v) = (cstring(option)?, cstring(value)?);
        // SAFETY: live handle, NUL-terminated strings.
        Errno::check(unsafe { (self.api.rados_conf_set)(self.raw, o.as_ptr(), v.as_ptr()) })
            .map(drop)
    }

    pub(crate) fn connect(&self) -> Result<(), Errno> {
        // SAFETY: live, configured, not yet connected handle.
        Errno::check(unsafe { (self.api.rados_connect)(self.raw) }).map(drop)
    }

    pub(crate) fn fsid(&self) -> Result<String, Errno> {
        let mut buf = [0 as c_char; 64];
        // SAFETY: `buf` is writable for `buf.len()` bytes; librados NUL-terminates.
        Errno::check(unsafe {
            (self.api.rados_cluster_fsid)(self.raw, buf.as_mut_ptr(), buf.len())
        })?;
        // SAFETY: NUL-terminated by librados (the fsid is 36 chars).
        Ok(unsafe { string_from(buf.as_ptr()) }.unwrap_or_default())
    }

    pub(crate) fn instance_id(&self) -> u64 {
        // SAFETY: live, connected handle.
        unsafe { (self.api.rados_get_instance_id)(self.raw) }
    }

    pub(crate) fn addrs(&self) -> Result<String, Errno> {
        let mut p: *mut c_char = ptr::null_mut();
        // SAFETY: out pointer valid; on success librados strdup()s the string.
        Errno::check(unsafe { (self.api.rados_getaddrs)(self.raw, &mut p) })?;
        // SAFETY: NULL or a NUL-terminated string from strdup().
        let s = unsafe { string_from(p) };
        // SAFETY: `p` came from strdup() (librados' C API) and is freed once.
        unsafe { libc::free(p.cast::<c_void>()) };
        Ok(s.unwrap_or_default())
    }

    pub(crate) fn wait_for_latest_osdmap(&self) -> Result<(), Errno> {
        // SAFETY: live, connected handle.
        Errno::check(unsafe { (self.api.rados_wait_for_latest_osdmap)(self.raw) }).map(drop)
    }

    pub(crate) fn pool_create(&self, pool: &str) -> Result<(), Errno> {
        let pool = cstring(pool)?;
        // SAFETY: live handle, NUL-terminated name.
        Errno::check(unsafe { (self.api.rados_pool_create)(self.raw, pool.as_ptr()) }).map(drop)
    }

    /// Pool id, or `Err(ENOENT)`.
    pub(crate) fn pool_lookup(&self, pool: &str) -> Result<i64, Errno> {
        let pool = cstring(pool)?;
        // SAFETY: live handle, NUL-terminated name.
        let r = unsafe { (self.api.rados_pool_lookup)(self.raw, pool.as_ptr()) };
        if r < 0 {
            Err(Errno(i32::try_from(-r).unwrap_or(libc::EIO)))
        } else {
            Ok(r)
        }
    }

    /// Runs one JSON mon command; returns (output buffer, status string), or
    /// the errno with the status string (the monitor's error message).
    pub(crate) fn mon_command(
        &self,
        cmd: &str,
        input: &[u8],
    ) -> Result<(Vec<u8>, String), (Errno, String)> {
        let cmd = cstring(cmd).map_err(|e| (e, "command contains NUL".to_owned()))?;
        let cmds = [cmd.as_ptr()];
        let (mut outbuf, mut outbuflen) = (ptr::null_mut::<c_char>(), 0usize);
        let (mut outs, mut outslen) = (ptr::null_mut::<c_char>(), 0usize);
        // SAFETY: `cmds` holds one NUL-terminated string; `input` is readable
        // for its length; the out pointers are valid; librados allocates the
        // outputs, freed below with rados_buffer_free().
        let r = unsafe {
            (self.api.rados_mon_command)(
                self.raw,
                cmds.as_ptr(),
                cmds.len(),
                input.as_ptr().cast::<c_char>(),
                input.len(),
                &mut outbuf,
                &mut outbuflen,
                &mut outs,
                &mut outslen,
            )
        };
        let take = |p: *mut c_char, len: usize| -> Vec<u8> {
            if p.is_null() {
                return Vec::new();
            }
            // SAFETY: librados returned `len` readable bytes at `p`.
            let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
            // SAFETY: `p` was allocated by librados for this call; freed once.
            unsafe { (self.api.rados_buffer_free)(p) };
            v
        };
        let out = take(outbuf, outbuflen);
        let status = String::from_utf8_lossy(&take(outs, outslen)).into_owned();
        match Errno::check(r) {
            Ok(_) => Ok((out, status)),
            Err(e) => Err((e, status)),
        }
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create2 and every IoCtx/Image
        // using it holds an Arc<Rados>, so none is left when this runs.
        unsafe { (self.api.rados_shutdown)(self.raw) };
    }
}

/// A `rados_ioctx_t` for one pool; destroyed on drop.
pub(crate) struct IoCtx {
    raw: sys::rados_ioctx_t,
    api: &'static Api,
    _cluster: Arc<Rados>,
}

// SAFETY: an ioctx may be used from any thread; nubo never changes its
// snapshot context or namespace after creation, and `&IoCtx` only reaches
// librbd calls that copy what they need from it.
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

/// Image creation parameters passed through `rbd_image_options_t`.
pub(crate) struct CreateOpts {
    pub(crate) features: u64,
    pub(crate) order: Option<u8>,
}

/// An `rbd_image_options_t`, destroyed on drop.
struct ImageOptions {
    raw: sys::rbd_image_options_t,
    api: &'static Api,
}

impl ImageOptions {
    fn new(api: &'static Api, o: &CreateOpts) -> Result<Self, Errno> {
        let mut raw: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: valid out pointer.
        unsafe { (api.rbd_image_options_create)(&mut raw) };
        let opts = ImageOptions { raw, api };
        opts.set(sys::RBD_IMAGE_OPTION_FORMAT, 2)?;
        opts.set(sys::RBD_IMAGE_OPTION_FEATURES, o.features)?;
        if let Some(order) = o.order {
            opts.set(sys::RBD_IMAGE_OPTION_ORDER, u64::from(order))?;
        }
        Ok(opts)
    }

    fn set(&self, opt: c_int, value: u64) -> Result<(), Errno> {
        // SAFETY: live options handle.
        Errno::check(unsafe { (self.api.rbd_image_options_set_uint64)(self.raw, opt, value) })
            .map(drop)
    }
}

impl Drop for ImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create, destroyed once.
        unsafe { (self.api.rbd_image_options_destroy)(self.raw) };
    }
}

/// Parent of a clone: pool, image and snapshot names.
pub(crate) struct RawParent {
    pub(crate) pool: String,
    pub(crate) image: String,
    pub(crate) snap: String,
}

impl IoCtx {
    pub(crate) fn create(cluster: &Arc<Rados>, pool: &str) -> Result<Self, Errno> {
        let name = cstring(pool)?;
        let mut raw: sys::rados_ioctx_t = ptr::null_mut();
        // SAFETY: live cluster handle, NUL-terminated name, valid out pointer.
        Errno::check(unsafe {
            (cluster.api.rados_ioctx_create)(cluster.raw, name.as_ptr(), &mut raw)
        })?;
        Ok(IoCtx {
            raw,
            api: cluster.api,
            _cluster: Arc::clone(cluster),
        })
    }

    pub(crate) fn pool_init(&self) -> Result<(), Errno> {
        // SAFETY: live ioctx.
        Errno::check(unsafe { (self.api.rbd_pool_init)(self.raw, false) }).map(drop)
    }

    pub(crate) fn create_image(&self, name: &str, size: u64, o: &CreateOpts) -> Result<(), Errno> {
        let name = cstring(name)?;
        let opts = ImageOptions::new(self.api, o)?;
        // SAFETY: live ioctx and options, NUL-terminated name.
        Errno::check(unsafe { (self.api.rbd_create4)(self.raw, name.as_ptr(), size, opts.raw) })
            .map(drop)
    }

    pub(crate) fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child_io: &IoCtx,
        child: &str,
        o: &CreateOpts,
    ) -> Result<(), Errno> {
        let (p, s, c) = (cstring(parent)?, cstring(snap)?, cstring(child)?);
        let opts = ImageOptions::new(self.api, o)?;
        // SAFETY: live ioctxs and options, NUL-terminated names.
        Errno::check(unsafe {
            (self.api.rbd_clone3)(
                self.raw,
                p.as_ptr(),
                s.as_ptr(),
                child_io.raw,
                c.as_ptr(),
                opts.raw,
            )
        })
        .map(drop)
    }

    pub(crate) fn remove_image(&self, name: &str) -> Result<(), Errno> {
        let name = cstring(name)?;
        // SAFETY: live ioctx, NUL-terminated name.
        Errno::check(unsafe { (self.api.rbd_remove)(self.raw, name.as_ptr()) }).map(drop)
    }

    pub(crate) fn list_images(&self) -> Result<Vec<String>, Errno> {
        let (mut buf, n) = grow_until_fits(
            16,
            || sys::ImageSpec {
                id: ptr::null_mut(),
                name: ptr::null_mut(),
            },
            // SAFETY: `p` points to `*n` writable specs (grow_until_fits).
            |p, n| unsafe { (self.api.rbd_list2)(self.raw, p, n) },
        )?;
        let names = buf[..n]
            .iter()
            // SAFETY: librbd filled the first `n` entries with strdup()ed strings.
            .filter_map(|s| unsafe { string_from(s.name) })
            .collect();
        // SAFETY: frees exactly the `n` entries librbd filled in.
        unsafe { (self.api.rbd_image_spec_list_cleanup)(buf.as_mut_ptr(), n) };
        Ok(names)
    }

    /// Opens `name` at its head (`snap == None`) or read-only at a snapshot.
    pub(crate) fn open_image(&self, name: &str, snap: Option<&str>) -> Result<Image, Errno> {
        let name = cstring(name)?;
        let snap = snap.map(cstring).transpose()?;
        let snap_ptr = snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut raw: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: live ioctx, NUL-terminated strings (or NULL snap), valid out
        // pointer. librbd keeps its own copy of the ioctx.
        Errno::check(unsafe { (self.api.rbd_open)(self.raw, name.as_ptr(), &mut raw, snap_ptr) })?;
        Ok(Image {
            raw,
            api: self.api,
            _cluster: Arc::clone(&self._cluster),
        })
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed once; images opened
        // from it hold their own copy.
        unsafe { (self.api.rados_ioctx_destroy)(self.raw) };
    }
}

/// An open `rbd_image_t`; closed on drop (which flushes and releases a held
/// exclusive lock).
pub(crate) struct Image {
    raw: sys::rbd_image_t,
    api: &'static Api,
    _cluster: Arc<Rados>,
}

// SAFETY: librbd's ImageCtx is protected by its own locks and may be used
// from another thread than the one that opened it. It is not declared `Sync`:
// nubo's `Image` methods take `&mut self` for state-changing calls anyway.
unsafe impl Send for Image {}

/// `rbd_stat` result.
pub(crate) struct RawInfo {
    pub(crate) size: u64,
    pub(crate) obj_size: u64,
    pub(crate) num_objs: u64,
    pub(crate) order: i32,
}

/// One snapshot: id, size, name, protected flag.
pub(crate) struct RawSnap {
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) name: String,
}

/// Lock mode as librbd encodes it.
pub(crate) fn lock_mode(exclusive: bool) -> c_int {
    if exclusive {
        sys::RBD_LOCK_MODE_EXCLUSIVE
    } else {
        sys::RBD_LOCK_MODE_SHARED
    }
}

impl Image {
    fn with_name(
        &self,
        name: &str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *const c_char) -> c_int,
    ) -> Result<(), Errno> {
        let name = cstring(name)?;
        // SAFETY: `f` is one of the librbd functions taking (image, name);
        // live image, NUL-terminated name.
        Errno::check(unsafe { f(self.raw, name.as_ptr()) }).map(drop)
    }

    pub(crate) fn stat(&self) -> Result<RawInfo, Errno> {
        // SAFETY: all-zero is a valid ImageInfo (integers, char arrays).
        let mut info: sys::ImageInfo = unsafe { std::mem::zeroed() };
        // SAFETY: live image; `info` is writable for its size.
        Errno::check(unsafe {
            (self.api.rbd_stat)(self.raw, &mut info, std::mem::size_of::<sys::ImageInfo>())
        })?;
        Ok(RawInfo {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: info.order,
        })
    }

    pub(crate) fn features(&self) -> Result<u64, Errno> {
        let mut f = 0u64;
        // SAFETY: live image, valid out pointer.
        Errno::check(unsafe { (self.api.rbd_get_features)(self.raw, &mut f) })?;
        Ok(f)
    }

    pub(crate) fn flatten(&self) -> Result<(), Errno> {
        // SAFETY: live image.
        Errno::check(unsafe { (self.api.rbd_flatten)(self.raw) }).map(drop)
    }

    pub(crate) fn resize(&self, size: u64) -> Result<(), Errno> {
        // SAFETY: live image.
        Errno::check(unsafe { (self.api.rbd_resize)(self.raw, size) }).map(drop)
    }

    pub(crate) fn parent(&self) -> Result<RawParent, Errno> {
        let mut img = sys::LinkedImageSpec {
            pool_id: 0,
            pool_name: ptr::null_mut(),
            pool_namespace: ptr::null_mut(),
            image_id: ptr::null_mut(),
            image_name: ptr::null_mut(),
            trash: false,
        };
        let mut snap = sys::SnapSpec {
            id: 0,
            namespace_type: 0,
            name: ptr::null_mut(),
        };
        // SAFETY: live image; both out structs are valid for writes.
        Errno::check(unsafe { (self.api.rbd_get_parent)(self.raw, &mut img, &mut snap) })?;
        // SAFETY: on success librbd filled the strings (strdup) and we read
        // them before the cleanup calls free them.
        let parent = unsafe {
            RawParent {
                pool: string_from(img.pool_name).unwrap_or_default(),
                image: string_from(img.image_name).unwrap_or_default(),
                snap: string_from(snap.name).unwrap_or_default(),
            }
        };
        // SAFETY: filled by rbd_get_parent, cleaned up once each.
        unsafe {
            (self.api.rbd_linked_image_spec_cleanup)(&mut img);
            (self.api.rbd_snap_spec_cleanup)(&mut snap);
        }
        Ok(parent)
    }

    /// Children (clones) of all of this image's snapshots: `pool/image`.
    pub(crate) fn children(&self) -> Result<Vec<String>, Errno> {
        let (mut buf, n) = grow_until_fits(
            8,
            || sys::LinkedImageSpec {
                pool_id: 0,
                pool_name: ptr::null_mut(),
                pool_namespace: ptr::null_mut(),
                image_id: ptr::null_mut(),
                image_name: ptr::null_mut(),
                trash: false,
            },
            // SAFETY: `p` points to `*n` writable specs.
            |p, n| unsafe { (self.api.rbd_list_children3)(self.raw, p, n) },
        )?;
        let children = buf[..n]
            .iter()
            .map(|c| {
                // SAFETY: entries filled by librbd with strdup()ed strings.
                let (pool, image) =
                    unsafe { (string_from(c.pool_name), string_from(c.image_name)) };
                format!(
                    "{}/{}{}",
                    pool.unwrap_or_default(),
                    image.unwrap_or_default(),
                    if c.trash { " (in trash)" } else { "" }
                )
            })
            .collect();
        // SAFETY: frees exactly the `n` filled entries.
        unsafe { (self.api.rbd_linked_image_spec_list_cleanup)(buf.as_mut_ptr(), n) };
        Ok(children)
    }

    pub(crate) fn snap_list(&self) -> Result<Vec<RawSnap>, Errno> {
        let mut cap: c_int = 8;
        loop {
            let len = usize::try_from(cap).map_err(|_| Errno(libc::EOVERFLOW))?;
            let mut buf: Vec<sys::SnapInfo> = (0..len)
                .map(|_| sys::SnapInfo {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            let mut max = cap;
            // SAFETY: `buf` holds `max` writable entries; librbd writes at
            // most `max` (count + a NULL-name terminator) or answers -ERANGE.
            let r = unsafe { (self.api.rbd_snap_list)(self.raw, buf.as_mut_ptr(), &mut max) };
            if r == -libc::ERANGE && max > cap {
                cap = max;
                continue;
            }
            let n = usize::try_from(Errno::check(r)?).unwrap_or(0);
            let snaps = buf[..n.min(len)]
                .iter()
                .map(|s| RawSnap {
                    id: s.id,
                    size: s.size,
                    // SAFETY: filled entries carry strdup()ed names.
                    name: unsafe { string_from(s.name) }.unwrap_or_default(),
                })
                .collect();
            // SAFETY: the list is terminated by an entry with a NULL name,
            // which librbd wrote; frees each name once.
            unsafe { (self.api.rbd_snap_list_end)(buf.as_mut_ptr()) };
            return Ok(snaps);
        }
    }

    pub(crate) fn snap_create(&self, name: &str) -> Result<(), Errno> {
        self.with_name(name, self.api.rbd_snap_create)
    }
    pub(crate) fn snap_remove(&self, name: &str) -> Result<(), Errno> {
        self.with_name(name, self.api.rbd_snap_remove)
    }
    pub(crate) fn snap_rollback(&self, name: &str) -> Result<(), Errno> {
        self.with_name(name, self.api.rbd_snap_rollback)
    }
    pub(crate) fn snap_protect(&self, name: &str) -> Result<(), Errno> {
        self.with_name(name, self.api.rbd_snap_protect)
    }
    pub(crate) fn snap_unprotect(&self, name: &str) -> Result<(), Errno> {
        self.with_name(name, self.api.rbd_snap_unprotect)
    }

    pub(crate) fn snap_is_protected(&self, name: &str) -> Result<bool, Errno> {
        let name = cstring(name)?;
        let mut p: c_int = 0;
        // SAFETY: live image, NUL-terminated name, valid out pointer.
        Errno::check(unsafe { (self.api.rbd_snap_is_protected)(self.raw, name.as_ptr(), &mut p) })?;
        Ok(p != 0)
    }

    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        // SAFETY: live image; `buf` is writable for `buf.len()` bytes.
        let r = unsafe {
            (self.api.rbd_read)(
                self.raw,
                offset,
                buf.len(),
                buf.as_mut_ptr().cast::<c_char>(),
            )
        };
        usize::try_from(r).map_err(|_| Errno(i32::try_from(-r).unwrap_or(libc::EIO)))
    }

    pub(crate) fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        // SAFETY: live image; `data` is readable for `data.len()` bytes.
        let r = unsafe {
            (self.api.rbd_write)(self.raw, offset, data.len(), data.as_ptr().cast::<c_char>())
        };
        usize::try_from(r).map_err(|_| Errno(i32::try_from(-r).unwrap_or(libc::EIO)))
    }

    pub(crate) fn flush(&self) -> Result<(), Errno> {
        // SAFETY: live image.
        Errno::check(unsafe { (self.api.rbd_flush)(self.raw) }).map(drop)
    }

    pub(crate) fn is_exclusive_lock_owner(&self) -> Result<bool, Errno> {
        let mut owner: c_int = 0;
        // SAFETY: live image, valid out pointer.
        Errno::check(unsafe { (self.api.rbd_is_exclusive_lock_owner)(self.raw, &mut owner) })?;
        Ok(owner != 0)
    }

    pub(crate) fn lock_acquire(&self, mode: c_int) -> Result<(), Errno> {
        // SAFETY: live image; mode is an rbd_lock_mode_t value.
        Errno::check(unsafe { (self.api.rbd_lock_acquire)(self.raw, mode) }).map(drop)
    }

    pub(crate) fn lock_release(&self) -> Result<(), Errno> {
        // SAFETY: live image.
        Errno::check(unsafe { (self.api.rbd_lock_release)(self.raw) }).map(drop)
    }

    /// (exclusive?, owners); no owner is `Ok((_, vec![]))`.
    pub(crate) fn lock_owners(&self) -> Result<(bool, Vec<String>), Errno> {
        let mut mode: c_int = sys::RBD_LOCK_MODE_EXCLUSIVE;
        let res = grow_until_fits(
            4,
            ptr::null_mut::<c_char>,
            // SAFETY: `p` points to `*n` writable pointers; `mode` is valid.
            |p, n| unsafe { (self.api.rbd_lock_get_owners)(self.raw, &mut mode, p, n) },
        );
        let (mut buf, n) = match res {
            Ok(v) => v,
            Err(Errno(libc::ENOENT)) => return Ok((true, Vec::new())),
            Err(e) => return Err(e),
        };
        let owners = buf[..n]
            .iter()
            // SAFETY: filled entries are strdup()ed strings.
            .filter_map(|p| unsafe { string_from(*p) })
            .collect();
        // SAFETY: frees exactly the `n` filled entries.
        unsafe { (self.api.rbd_lock_get_owners_cleanup)(buf.as_mut_ptr(), n) };
        Ok((mode == sys::RBD_LOCK_MODE_EXCLUSIVE, owners))
    }

    pub(crate) fn lock_break(&self, mode: c_int, owner: &str) -> Result<(), Errno> {
        let owner = cstring(owner)?;
        // SAFETY: live image, NUL-terminated owner string.
        Errno::check(unsafe { (self.api.rbd_lock_break)(self.raw, mode, owner.as_ptr()) }).map(drop)
    }

    /// Watchers: (address, client id, cookie).
    pub(crate) fn watchers(&self) -> Result<Vec<(String, i64, u64)>, Errno> {
        let (mut buf, n) = grow_until_fits(
            4,
            || sys::ImageWatcher {
                addr: ptr::null_mut(),
                id: 0,
                cookie: 0,
            },
            // SAFETY: `p` points to `*n` writable entries.
            |p, n| unsafe { (self.api.rbd_watchers_list)(self.raw, p, n) },
        )?;
        let out = buf[..n]
            .iter()
            // SAFETY: filled entries carry strdup()ed addresses.
            .map(|w| {
                (
                    unsafe { string_from(w.addr) }.unwrap_or_default(),
                    w.id,
                    w.cookie,
                )
            })
            .collect();
        // SAFETY: frees exactly the `n` filled entries.
        unsafe { (self.api.rbd_watchers_list_cleanup)(buf.as_mut_ptr(), n) };
        Ok(out)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open, closed exactly once. A failure (e.g.
        // blocklisted client) still frees the handle; nothing to do with it.
        let r = unsafe { (self.api.rbd_close)(self.raw) };
        if r < 0 {
            tracing::debug!(errno = -r, "rbd_close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sys;
    use std::mem::{offset_of, size_of};

    #[test]
    fn missing_library_names_the_file_and_dlerror() {
        let Err(e) = super::open("libnubo-no-such-library.so.0") else {
            panic!("loaded a library that does not exist");
        };
        assert!(matches!(
            &e,
            crate::Error::LibraryLoad {
                file: "libnubo-no-such-library.so.0",
                dlerror,
            } if dlerror.contains("cannot open shared object file")
        ));
        let msg = e.to_string();
        assert!(msg.starts_with("cannot load the Ceph client library libnubo-no-such-library.so.0 (install librados2 and librbd1"), "{msg}");
    }

    #[test]
    fn missing_symbol_names_the_symbol() {
        let lib = super::open("libc.so.6").expect("libc");
        // SAFETY: never called; the lookup fails.
        let r =
            unsafe { super::symbol::<extern "C" fn()>(&lib, "libc.so.6", "nubo_no_such_symbol\0") };
        let Err(crate::Error::LibraryLoad { file, dlerror }) = r else {
            panic!("found a symbol that does not exist");
        };
        assert_eq!(file, "libc.so.6");
        assert!(dlerror.contains("nubo_no_such_symbol"), "{dlerror}");
    }

    /// The only test in this binary that loads Ceph: nothing of it is mapped
    /// before the first `Api::get` (it is not linked), all of it after.
    #[test]
    fn ceph_is_mapped_on_first_use_only() {
        let mapped = |lib: &str| {
            std::fs::read_to_string("/proc/self/maps")
                .expect("maps")
                .contains(lib)
        };
        for lib in ["librados.so", "librbd.so", "libceph-common"] {
            assert!(!mapped(lib), "{lib} mapped before first use");
        }
        let api = super::Api::get().expect("librados2 and librbd1 are installed");
        for lib in ["librados.so", "librbd.so", "libceph-common"] {
            assert!(mapped(lib), "{lib} not mapped after Api::get");
        }
        let again = super::Api::get().expect("second get");
        assert!(std::ptr::eq(api, again), "loaded twice");
    }

    /// Layouts as computed by the C compiler for librbd.h 16.2 on x86_64.
    #[test]
    fn struct_layouts_match_librbd_h() {
        assert_eq!(size_of::<sys::ImageInfo>(), 160);
        assert_eq!(offset_of!(sys::ImageInfo, order), 24);
        assert_eq!(offset_of!(sys::ImageInfo, parent_pool), 56);
        assert_eq!(size_of::<sys::LinkedImageSpec>(), 48);
        assert_eq!(offset_of!(sys::LinkedImageSpec, trash), 40);
        assert_eq!(size_of::<sys::SnapSpec>(), 24);
        assert_eq!(offset_of!(sys::SnapSpec, name), 16);
        assert_eq!(size_of::<sys::SnapInfo>(), 24);
        assert_eq!(size_of::<sys::ImageWatcher>(), 24);
        assert_eq!(size_of::<sys::ImageSpec>(), 16);
    }
}
