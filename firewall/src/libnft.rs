//! The only module with `unsafe` code: a hand-written `extern "C"` block for
//! the part of libnftables (`libnftables.so.1`, nftables 1.0.6 as in Debian
//! 12; declarations from `/usr/include/nftables/libnftables.h`) that nubo
//! uses, and [`Nft`], an owning context whose methods are safe.
//!
//! libnftables is what the `nft` program is a thin front end to: the same
//! parser, the same cache and the same single netlink batch per command
//! buffer, so a transaction run here is as atomic as `nft -f` of the same
//! text. Running it in process saves the program's start (4–12 ms here,
//! more under CPU pressure) on every apply.
//!
//! Rules the wrapper enforces, from the library's source:
//!
//! - The library has process-global state (a one-time init in
//!   `nft_ctx_new`, the interface cache released by every command and by
//!   `nft_ctx_free`), so every call into it, on any context, holds one
//!   process-wide lock (`LIBRARY`).
//! - `nft_ctx_new(NFT_CTX_DEFAULT)` opens the netfilter netlink socket at
//!   once, in the **creating thread's** network namespace, and calls
//!   `exit()` if that fails; [`Nft::new`] first opens (and closes) such a
//!   socket itself so that failure is an error instead, and the namespace
//!   the context acts on is the creator's ([`Nft::netns`]).
//! - That socket is opened without `O_CLOEXEC`; [`Nft::new`] sets it so
//!   programs the agent starts (`tcpdump`, `qemu-img`) do not inherit it.
//! - `nft_ctx_get_{output,error}_buffer` return a pointer into the
//!   context's buffer that the next command overwrites: both are copied
//!   before the lock is released, after every command (which also empties
//!   them).

use std::ffi::{c_char, c_int, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::debug;

use crate::error::FirewallError;

#[allow(non_camel_case_types)]
mod sys {
    use std::ffi::{c_char, c_int, c_uint};

    /// `struct nft_ctx` (opaque).
    #[repr(C)]
    pub struct nft_ctx {
        _private: [u8; 0],
    }

    /// `NFT_CTX_DEFAULT`: a context that talks to the kernel.
    pub const NFT_CTX_DEFAULT: u32 = 0;
    /// `NFT_CTX_OUTPUT_JSON`: print (and accept) JSON.
    pub const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

    #[link(name = "nftables")]
    extern "C" {
        pub fn nft_ctx_new(flags: u32) -> *mut nft_ctx;
        pub fn nft_ctx_free(ctx: *mut nft_ctx);
        pub fn nft_ctx_output_get_flags(ctx: *mut nft_ctx) -> c_uint;
        pub fn nft_ctx_output_set_flags(ctx: *mut nft_ctx, flags: c_uint);
        pub fn nft_ctx_buffer_output(ctx: *mut nft_ctx) -> c_int;
        pub fn nft_ctx_buffer_error(ctx: *mut nft_ctx) -> c_int;
        pub fn nft_ctx_get_output_buffer(ctx: *mut nft_ctx) -> *const c_char;
        pub fn nft_ctx_get_error_buffer(ctx: *mut nft_ctx) -> *const c_char;
        pub fn nft_run_cmd_from_buffer(ctx: *mut nft_ctx, buf: *const c_char) -> c_int;
    }
}

/// Serializes every call into libnftables in this process (see the module
/// documentation). Holds no data: a poisoned lock is simply taken over.
static LIBRARY: Mutex<()> = Mutex::new(());

fn library() -> MutexGuard<'static, ()> {
    LIBRARY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Identity of a network namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetnsId {
    dev: u64,
    ino: u64,
}

impl NetnsId {
    /// The calling thread's network namespace.
    pub fn of_current_thread() -> Result<Self, FirewallError> {
        let path = "/proc/thread-self/ns/net";
        let meta = std::fs::metadata(path).map_err(|source| FirewallError::Netns {
            name: path.to_owned(),
            source,
        })?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// One libnftables context (`struct nft_ctx`) with buffered output and
/// error streams, acting on the network namespace of the thread that
/// created it.
///
/// `Send` (the context is plain heap memory and a socket, not tied to its
/// creating thread) but not `Sync`: methods take `&mut self`, and every
/// library call additionally holds the process-wide library lock.
#[derive(Debug)]
pub struct Nft {
    ctx: NonNull<sys::nft_ctx>,
    netns: NetnsId,
}

// SAFETY: the context is only reached through `&mut self` (or by value in
// `drop`), so one thread at a time uses it; the library's global state is
// guarded by `LIBRARY` on every call.
unsafe impl Send for Nft {}

impl Nft {
    /// A context in the calling thread's network namespace, printing the
    /// standard text format.
    pub fn new() -> Result<Self, FirewallError> {
        let netns = NetnsId::of_current_thread()?;
        // libnftables exit()s the process when it cannot open its socket.
        probe_netfilter_socket()?;
        let lock = library();
        // SAFETY: plain constructor; NULL is handled below.
        let raw = unsafe { sys::nft_ctx_new(sys::NFT_CTX_DEFAULT) };
        let ctx = NonNull::new(raw).ok_or(FirewallError::Context("nft_ctx_new returned NULL"))?;
        // From here on `nft` frees the context on every error path (its
        // Drop takes the lock, so release ours first).
        let nft = Self { ctx, netns };
        // SAFETY: valid context, lock held.
        let (out, err) = unsafe {
            (
                sys::nft_ctx_buffer_output(ctx.as_ptr()),
                sys::nft_ctx_buffer_error(ctx.as_ptr()),
            )
        };
        set_netfilter_sockets_cloexec();
        drop(lock);
        if out != 0 || err != 0 {
            return Err(FirewallError::Context(
                "cannot buffer libnftables output (fopencookie failed)",
            ));
        }
        Ok(nft)
    }

    /// The network namespace this context acts on.
    pub fn netns(&self) -> NetnsId {
        self.netns
    }

    /// Switches between nft's text format and JSON (`nft -j`), for both
    /// the commands accepted and the output printed.
    pub fn set_json(&mut self, json: bool) {
        let _lock = library();
        // SAFETY: valid context, lock held.
        unsafe {
            let flags = sys::nft_ctx_output_get_flags(self.ctx.as_ptr());
            let flags = if json {
                flags | sys::NFT_CTX_OUTPUT_JSON
            } else {
                flags & !sys::NFT_CTX_OUTPUT_JSON
            };
            sys::nft_ctx_output_set_flags(self.ctx.as_ptr(), flags);
        }
    }

    /// Runs `commands` (what `nft -f` would read: one or more commands,
    /// all sent to the kernel as one netlink batch, i.e. one transaction)
    /// and returns what nft printed. `what` names the operation in errors.
    ///
    /// On failure the error carries libnftables' own error text (what
    /// `nft` prints on stderr). Warnings printed on success are logged.
    pub fn run(&mut self, what: &'static str, commands: &str) -> Result<String, FirewallError> {
        let text = CString::new(commands).map_err(|e| FirewallError::NulInCommand {
            what,
            position: e.nul_position(),
        })?;
        let (rc, output, errors) = {
            let _lock = library();
            // SAFETY: valid context and NUL-terminated buffer, lock held.
            // The buffers returned below stay valid until the next library
            // call on this context, which cannot happen before they are
            // copied (lock held, `&mut self`).
            unsafe {
                let rc = sys::nft_run_cmd_from_buffer(self.ctx.as_ptr(), text.as_ptr());
                let output = copy(sys::nft_ctx_get_output_buffer(self.ctx.as_ptr()));
                let errors = copy(sys::nft_ctx_get_error_buffer(self.ctx.as_ptr()));
                (rc, output, errors)
            }
        };
        let errors = String::from_utf8_lossy(&errors).trim().to_owned();
        if rc != 0 {
            return Err(FirewallError::Nft {
                what,
                code: rc,
                message: if errors.is_empty() {
                    "(libnftables printed no error)".to_owned()
                } else {
                    errors
                },
            });
        }
        if !errors.is_empty() {
            debug!(what, message = %errors, "libnftables printed diagnostics");
        }
        String::from_utf8(output).map_err(|_| FirewallError::BadOutput { what })
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _lock = library();
        // SAFETY: the context came from nft_ctx_new and is freed once; this
        // also closes its socket and buffers.
        unsafe { sys::nft_ctx_free(self.ctx.as_ptr()) }
    }
}

/// Copies a NUL-terminated buffer returned by libnftables (NULL: empty).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for this call.
unsafe fn copy(p: *const c_char) -> Vec<u8> {
    if p.is_null() {
        Vec::new()
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(p) }.to_bytes().to_vec()
    }
}

/// Opens and closes a netfilter netlink socket in the calling thread's
/// namespace, as `nft_ctx_new` is about to (which would `exit()` on
/// failure).
fn probe_netfilter_socket() -> Result<(), FirewallError> {
    // SAFETY: plain socket(2); the fd is owned (and closed) below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(FirewallError::Netlink {
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

/// Marks every netfilter netlink socket of the process close-on-exec.
/// Called with the library lock held right after `nft_ctx_new`, which
/// opens one without `O_CLOEXEC`; nothing else in nubo opens such sockets,
/// and close-on-exec is what they should all have anyway. Best effort.
fn set_netfilter_sockets_cloexec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<c_int>().ok())
        else {
            continue;
        };
        if is_netfilter_socket(fd) {
            // SAFETY: F_GETFD/F_SETFD on an fd number; a closed or reused
            // number at worst gets a harmless close-on-exec flag.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
}

fn is_netfilter_socket(fd: c_int) -> bool {
    let opt = |name: c_int| -> Option<c_int> {
        let mut value: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: getsockopt with a correctly sized out-parameter; fails
        // harmlessly (ENOTSOCK, EBADF) on anything but a socket.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    opt(libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
        && opt(libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
}

/// Runs `f` on a new thread that has entered the network namespace named
/// `name` (a file under `/run/netns`, as `ip netns add` creates); the
/// calling thread is not moved. Everything `f` opens (an [`Nft`] context,
/// `/proc/sys/net/…` files) belongs to that namespace.
pub fn in_named_netns<T: Send>(
    name: &str,
    f: impl FnOnce() -> Result<T, FirewallError> + Send,
) -> Result<T, FirewallError> {
    let netns_err = |source| FirewallError::Netns {
        name: name.to_owned(),
        source,
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(netns_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace name",
        )));
    }
    let file = std::fs::File::open(format!("/run/netns/{name}")).map_err(netns_err)?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("nubo-nft-netns".into())
            .spawn_scoped(s, move || {
                // SAFETY: setns on a valid namespace fd; moves only this
                // (throw-away) thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(netns_err(io::Error::last_os_error()));
                }
                f()
            })
            .map_err(|e| FirewallError::Thread(format!("spawn: {e}")))?;
        handle
            .join()
            .map_err(|_| FirewallError::Thread("the namespace thread panicked".into()))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn syntax_errors_carry_the_library_text() {
        if !root() {
            eprintln!("skipped: needs root (libnftables opens a netlink socket)");
            return;
        }
        let mut nft = Nft::new().expect("context");
        // Parsing fails before anything reaches the kernel.
        let err = nft
            .run("check", "add tabel inet nbt_never\n")
            .expect_err("syntax error");
        let FirewallError::Nft {
            what,
            code,
            message,
        } = &err
        else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(*what, "check");
        assert_ne!(*code, 0);
        assert!(message.contains("syntax error"), "{message}");
        assert!(err.to_string().contains("tabel"), "{err}");
        // The error buffer was emptied: the next command is clean.
        let out = nft.run("noop", "").expect("empty input");
        assert_eq!(out, "");
    }

    #[test]
    fn nul_bytes_are_refused_before_the_library() {
        if !root() {
            return;
        }
        let mut nft = Nft::new().expect("context");
        let err = nft.run("apply", "add table\0").expect_err("NUL");
        assert!(matches!(
            err,
            FirewallError::NulInCommand {
                what: "apply",
                position: 9
            }
        ));
    }

    #[test]
    fn the_context_socket_is_close_on_exec() {
        if !root() {
            return;
        }
        let _nft = Nft::new().expect("context");
        // Contexts other tests create are marked under the same lock.
        let _lock = library();
        let dir = std::fs::read_dir("/proc/self/fd").expect("fds");
        let mut found = 0;
        for entry in dir.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<c_int>() else {
                continue;
            };
            if is_netfilter_socket(fd) {
                found += 1;
                // SAFETY: F_GETFD on an fd number.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                assert!(flags & libc::FD_CLOEXEC != 0, "fd {fd} lacks FD_CLOEXEC");
            }
        }
        assert!(found >= 1, "the context's socket exists");
    }

    #[test]
    fn bad_namespace_names_are_refused() {
        for name in ["", "a/b", "..", "nbt-does-not-exist-0000"] {
            let err = in_named_netns(name, || Ok(())).expect_err(name);
            assert!(matches!(err, FirewallError::Netns { .. }), "{name}: {err}");
        }
    }
}
