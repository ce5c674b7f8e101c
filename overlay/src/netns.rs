//! Named network namespaces (`/run/netns/<name>`, as `ip netns` makes
//! them) and running code inside one.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;
use tracing::debug;

use crate::error::OverlayError;
use crate::netlink::Netlink;

/// Where named namespaces are bind-mounted (shared with iproute2).
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace, after validating the name.
pub(crate) fn netns_path(name: &str) -> Result<PathBuf, OverlayError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(OverlayError::InvalidNetnsName(name.to_string()));
    }
    Ok(Path::new(NETNS_DIR).join(name))
}

fn cstring(path: &Path) -> Result<CString, OverlayError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| OverlayError::InvalidNetnsName(path.display().to_string()))
}

fn last_os_error(what: impl Into<String>) -> OverlayError {
    OverlayError::sys(what, io::Error::last_os_error())
}

/// Makes `/run/netns` exist and be a shared mount point, so namespace
/// bind mounts propagate to every mount namespace (what `ip netns add`
/// does).
fn ensure_netns_dir() -> Result<(), OverlayError> {
    fs::create_dir_all(NETNS_DIR)
        .map_err(|e| OverlayError::sys(format!("create {NETNS_DIR}"), e))?;
    let dir = cstring(Path::new(NETNS_DIR))?;
    let none = c"none";
    let make_shared = || {
        // SAFETY: all pointers are valid NUL-terminated strings or null.
        unsafe {
            libc::mount(
                none.as_ptr(),
                dir.as_ptr(),
                none.as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        }
    };
    if make_shared() == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(OverlayError::sys(
            format!("make {NETNS_DIR} a shared mount"),
            err,
        ));
    }
    // Not a mount point yet: bind it onto itself, then share it.
    // SAFETY: valid NUL-terminated strings, null data.
    let rc = unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_os_error(format!("bind-mount {NETNS_DIR} onto itself")));
    }
    if make_shared() != 0 {
        return Err(last_os_error(format!("make {NETNS_DIR} a shared mount")));
    }
    Ok(())
}

/// Creates the named network namespace `name`, like `ip netns add`: a
/// helper thread unshares its network namespace and bind-mounts it on
/// `/run/netns/<name>`. The caller's namespace is untouched.
pub(crate) async fn create_netns(name: &str) -> Result<(), OverlayError> {
    let path = netns_path(name)?;
    ensure_netns_dir()?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => OverlayError::NetnsExists(name.to_string()),
            _ => OverlayError::sys(format!("create {}", path.display()), e),
        })?;
    let target = cstring(&path)?;
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("nubo-netns-add".into())
        .spawn(move || {
            let _ = tx.send(unshare_and_bind(&target));
        });
    let result = match spawned {
        Ok(_) => rx.await.unwrap_or_else(|_| {
            Err(OverlayError::Helper(
                "namespace creation thread exited without answering".into(),
            ))
        }),
        Err(e) => Err(OverlayError::sys("spawn namespace creation thread", e)),
    };
    if result.is_err() {
        let _ = fs::remove_file(&path);
    } else {
        debug!(netns = name, "network namespace created");
    }
    result
}

/// Runs on a throw-away thread: gives the thread a new network namespace
/// and pins it on `target`.
fn unshare_and_bind(target: &CString) -> Result<(), OverlayError> {
    // SAFETY: unshare affects only the calling (helper) thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(last_os_error("unshare(CLONE_NEWNET)"));
    }
    let source = c"/proc/thread-self/ns/net";
    let none = c"none";
    // SAFETY: valid NUL-terminated strings, null data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(last_os_error("bind-mount the new network namespace"));
    }
    Ok(())
}

/// Removes the named namespace (unmount + unlink, like `ip netns del`). The
/// namespace itself dies when nothing uses it any more. Missing is fine.
pub(crate) fn delete_netns(name: &str) -> Result<(), OverlayError> {
    let path = netns_path(name)?;
    if !path.exists() {
        return Ok(());
    }
    let target = cstring(&path)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (half-created); just remove the file.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(OverlayError::sys(
                format!("unmount {}", path.display()),
                err,
            ));
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OverlayError::sys(format!("remove {}", path.display()), e)),
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<(), OverlayError> {
    let file = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => OverlayError::NoSuchNetns(path.display().to_string()),
        _ => OverlayError::sys(format!("open {}", path.display()), e),
    })?;
    // SAFETY: the fd is valid for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(last_os_error(format!("setns into {}", path.display())));
    }
    Ok(())
}

/// Runs `f` inside the named network namespace `ns_name` (under
/// `/run/netns`): on a dedicated thread that enters the namespace and
/// drives a current-thread tokio runtime, with a [`Netlink`] handle opened
/// there. Everything `f` creates through that handle (or by opening
/// sockets) lives in that namespace. The calling thread is not moved.
///
/// A panic in `f` is reported as [`OverlayError::Helper`].
pub async fn run_in_netns<F, Fut, T>(ns_name: &str, f: F) -> Result<T, OverlayError>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let path = netns_path(ns_name)?;
    let (tx, rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("netns-{ns_name}"))
        .spawn(move || {
            let result = (|| {
                enter_netns(&path)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| OverlayError::sys("build tokio runtime", e))?;
                runtime.block_on(async move {
                    let netlink = Netlink::new()?;
                    Ok(f(netlink).await)
                })
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| OverlayError::sys("spawn namespace thread", e))?;
    match rx.await {
        Ok(result) => result,
        Err(_) => {
            // The sender was dropped: the closure panicked. The thread is
            // unwinding; joining it yields the panic message.
            let message = match thread.join() {
                Err(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into()),
                Ok(()) => "thread ended without a result".into(),
            };
            Err(OverlayError::Helper(format!(
                "code running in netns {ns_name} panicked: {message}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(matches!(
                netns_path(bad),
                Err(OverlayError::InvalidNetnsName(_))
            ));
        }
        assert_eq!(
            netns_path("nbt1234g1").unwrap(),
            Path::new("/run/netns/nbt1234g1")
        );
    }
}
