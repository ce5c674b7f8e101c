//! Errors: one variant per errno meaning nubo acts on, each naming the
//! operation and the object (`pool/image@snap`, a client address, …).

use crate::ffi::Errno;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from librados/librbd calls and from this crate's own validation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// ENOENT: the pool, image, snapshot or client does not exist.
    #[error("{op} {object}: not found")]
    NotFound {
        /// Operation, e.g. `"open image"`.
        op: &'static str,
        /// Object, e.g. `"rbd/vm-1-disk"`.
        object: String,
    },
    /// EEXIST: the pool, image or snapshot already exists.
    #[error("{op} {object}: already exists")]
    AlreadyExists {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// EBUSY: the image is in use (has watchers, i.e. is open somewhere), or
    /// a snapshot that has clones cannot be unprotected.
    #[error("{op} {object}: busy (image open elsewhere, or snapshot has clones)")]
    Busy {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// Found by [`crate::BlockStore::delete`] before removing: the image is
    /// open by these clients (watcher addresses).
    #[error("{op} {object}: in use by {watchers:?}")]
    InUse {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// Watcher addresses (`ip:port/nonce`).
        watchers: Vec<String>,
    },
    /// The image's snapshots have COW clones (`pool/image`), so it cannot go.
    #[error("{op} {object}: has clone children {children:?}")]
    HasChildren {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// Children as `pool/image`.
        children: Vec<String>,
    },
    /// ENOTEMPTY: the image still has snapshots.
    #[error("{op} {object}: image has snapshots")]
    HasSnapshots {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// EBLOCKLISTED (= ESHUTDOWN): this client was fenced (blocklisted); the
    /// handle is dead, reconnect (if allowed) with a new `Cluster`.
    #[error("{op} {object}: this client is blocklisted (fenced)")]
    Blocklisted {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// EACCES/EPERM: wrong cephx key or missing caps for this client.
    #[error("{op} {object}: permission denied (wrong cephx key or missing caps)")]
    PermissionDenied {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// EROFS: the image is read-only here (opened at a snapshot, or another
    /// client holds the exclusive lock and refuses to hand it over).
    #[error("{op} {object}: read-only (snapshot, or exclusive lock held by another client)")]
    ReadOnly {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// ENOSPC/EDQUOT: the cluster or pool is full, or over quota.
    #[error("{op} {object}: no space left (cluster full or pool quota)")]
    NoSpace {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// ETIMEDOUT: the cluster did not answer in time (mons unreachable?).
    #[error("{op} {object}: timed out (cluster unreachable?)")]
    Timeout {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
    },
    /// Rejected by this crate's validation, or EINVAL from Ceph.
    #[error("{op} {object}: invalid argument: {reason}")]
    InvalidArgument {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// Any other errno, with Ceph's own message when it gave one.
    #[error("{op} {object}: {}{}", std::io::Error::from_raw_os_error(*errno), fmt_detail(detail))]
    Ceph {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// Positive errno.
        errno: i32,
        /// Ceph's status string (mon commands), may be empty.
        detail: String,
    },
    /// Reading the source of an import failed.
    #[error("{op} {object}: reading the source failed: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// The Ceph client library could not be loaded (it is `dlopen`ed at the
    /// first [`crate::Cluster::connect`], so only hosts using RBD need it):
    /// not installed (Debian `librados2`/`librbd1`), or lacking a function
    /// nubo calls (older than Ceph 16.2).
    #[error("cannot load the Ceph client library {file} (install librados2 and librbd1 for the RBD backend): {dlerror}")]
    LibraryLoad {
        /// The file `dlopen` was asked for, e.g. `"librados.so.2"`.
        file: &'static str,
        /// What `dlopen`/`dlsym` said (`dlerror()`).
        dlerror: String,
    },
    /// A mon command answered something this crate could not parse.
    #[error("{op} {object}: unexpected reply: {reason}")]
    Protocol {
        /// Operation.
        op: &'static str,
        /// Object.
        object: String,
        /// What did not parse.
        reason: String,
    },
}

fn fmt_detail(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl Error {
    /// Maps a failed call's errno to the variant naming its meaning.
    pub(crate) fn from_errno(
        errno: Errno,
        op: &'static str,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        let object = object.into();
        match errno.0 {
            libc::ENOENT => Error::NotFound { op, object },
            libc::EEXIST => Error::AlreadyExists { op, object },
            libc::EBUSY => Error::Busy { op, object },
            libc::ENOTEMPTY => Error::HasSnapshots { op, object },
            // Ceph's EBLOCKLISTED is defined as ESHUTDOWN.
            libc::ESHUTDOWN => Error::Blocklisted { op, object },
            libc::EACCES | libc::EPERM => Error::PermissionDenied { op, object },
            libc::EROFS => Error::ReadOnly { op, object },
            libc::ENOSPC | libc::EDQUOT => Error::NoSpace { op, object },
            libc::ETIMEDOUT => Error::Timeout { op, object },
            libc::EINVAL => Error::InvalidArgument {
                op,
                object,
                reason: {
                    let d = detail.into();
                    if d.is_empty() {
                        "rejected by Ceph (EINVAL)".to_owned()
                    } else {
                        d
                    }
                },
            },
            errno => Error::Ceph {
                op,
                object,
                errno,
                detail: detail.into(),
            },
        }
    }

    /// Our own validation failure.
    pub(crate) fn invalid(
        op: &'static str,
        object: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidArgument {
            op,
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// `Result<T, Errno>` → `Result<T, Error>` with context.
pub(crate) trait Context<T> {
    /// Adds the operation and the object to a failed call.
    fn ctx(self, op: &'static str, object: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, Errno> {
    fn ctx(self, op: &'static str, object: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::from_errno(e, op, object(), String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_meanings() {
        let e = |n| Error::from_errno(Errno(n), "remove image", "rbd/x", "");
        assert!(matches!(e(libc::ENOENT), Error::NotFound { .. }));
        assert!(matches!(e(libc::EEXIST), Error::AlreadyExists { .. }));
        assert!(matches!(e(libc::EBUSY), Error::Busy { .. }));
        assert!(matches!(e(libc::ENOTEMPTY), Error::HasSnapshots { .. }));
        assert!(matches!(e(libc::ESHUTDOWN), Error::Blocklisted { .. }));
        assert!(matches!(e(libc::EACCES), Error::PermissionDenied { .. }));
        assert!(matches!(e(libc::EPERM), Error::PermissionDenied { .. }));
        assert!(matches!(e(libc::ENOSPC), Error::NoSpace { .. }));
        assert!(matches!(e(libc::EINVAL), Error::InvalidArgument { .. }));
        let other = e(libc::EIO);
        assert!(matches!(
            other,
            Error::Ceph {
                errno: libc::EIO,
                ..
            }
        ));
        assert_eq!(
            other.to_string(),
            "remove image rbd/x: Input/output error (os error 5)"
        );
        assert_eq!(e(libc::ENOENT).to_string(), "remove image rbd/x: not found");
    }
}
