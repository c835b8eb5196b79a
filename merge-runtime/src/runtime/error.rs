//! [`RuntimeError`]: what stops a whole runtime command (a single bad
//! image never does; that is a [`super::plan::Refusal`] in the report).

use std::io;
use std::path::PathBuf;

use crate::image::OpenError;
use crate::lock::LockError;
use crate::release::HostReleaseError;
use crate::verify::{PolicyError, VerifyError};

/// Errors that stop a whole command. Each message names what was being
/// done; the cause is in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("need to be privileged (root, CAP_SYS_ADMIN) to {0}")]
    NotPrivileged(&'static str),
    #[error("cannot open root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hierarchy {0} is already merged; use `sysext refresh` to re-merge, or `sysext unmerge` first")]
    AlreadyMerged(String),
    #[error("invalid hierarchy {0:?} in $SYSTEMD_SYSEXT_HIERARCHIES: expected absolute paths without `..`, separated by `:`")]
    Hierarchy(String),
    #[error("taking the sysext lock")]
    Lock(#[source] LockError),
    #[error("discovering extension images")]
    Discover(#[source] io::Error),
    #[error(transparent)]
    Host(#[from] HostReleaseError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// `verify IMAGE`: not readable as an image.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// `verify IMAGE`: the policy, signature or data check failed.
    #[error("{path} does not pass verification")]
    Verify {
        path: PathBuf,
        #[source]
        source: Box<VerifyError>,
    },
    #[error("{0}: not an image this tool can check (expected a squashfs, erofs or ext4 image with verity sidecars, or a GPT disk image)")]
    Unsupported(PathBuf),
    /// The staging thread panicked.
    #[error("staging the merge failed unexpectedly (the staging thread panicked)")]
    StagingPanicked,
    /// A file system or mount operation (named by `context`) failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl From<LockError> for RuntimeError {
    fn from(e: LockError) -> RuntimeError {
        RuntimeError::Lock(e)
    }
}

/// `map_err` for an I/O step named `context`.
pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// `map_err` for a syscall step named `context`.
pub(crate) fn errno_ctx(
    context: impl Into<String>,
) -> impl FnOnce(rustix::io::Errno) -> RuntimeError {
    let context = context.into();
    move |e| RuntimeError::Io {
        context,
        source: e.into(),
    }
}

/// `map_err` for opening the root.
pub(crate) fn root_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Root {
        path: path.to_path_buf(),
        source,
    }
}

/// Fails unless the process is privileged.
pub(crate) fn require_root(what: &'static str) -> Result<(), RuntimeError> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(RuntimeError::NotPrivileged(what))
    }
}
