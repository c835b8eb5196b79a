//! A private staging mount namespace for the calling thread: entered with
//! `unshare(CLONE_NEWNS)` and made a downstream (slave) copy so nothing
//! mounted or unmounted in it leaks back, then left with `setns()` to the
//! original namespace. Detached mounts (`open_tree(OPEN_TREE_CLONE)`) made
//! inside survive leaving and can be attached in the original namespace;
//! everything else mounted inside vanishes with the namespace.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{mount_change, MountPropagationFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// Guard for the staging namespace; dropping it returns to the original
/// namespace (best effort; use [`StagingNs::leave`] to see errors).
#[derive(Debug)]
pub struct StagingNs {
    orig_ns: OwnedFd,
    cwd: OwnedFd,
    left: bool,
}

fn unshare_mount_ns() -> io::Result<()> {
    // SAFETY: only CLONE_NEWNS (which implies CLONE_FS) is unshared. That
    // gives this thread its own mount namespace and cwd/root; it does not
    // unshare the file descriptor table, so no fd visibility invariant of
    // other threads is affected (the hazard `unshare_unsafe` documents).
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }.map_err(io::Error::from)
}

impl StagingNs {
    /// Moves the calling thread into a new, downstream-only copy of its
    /// mount namespace.
    pub fn enter() -> io::Result<StagingNs> {
        let orig_ns = rustix::fs::open(
            "/proc/thread-self/ns/mnt",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::other(format!("opening /proc/thread-self/ns/mnt: {e}")))?;
        let cwd = rustix::fs::open(
            ".",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        unshare_mount_ns()
            .map_err(|e| io::Error::new(e.kind(), format!("unshare(CLONE_NEWNS): {e}")))?;
        let guard = StagingNs {
            orig_ns,
            cwd,
            left: false,
        };
        mount_change(
            "/",
            MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
        )
        .map_err(|e| io::Error::other(format!("making the staging namespace a slave copy: {e}")))?;
        Ok(guard)
    }

    /// Returns to the original namespace (and working directory).
    pub fn leave(mut self) -> io::Result<()> {
        self.do_leave()
    }

    fn do_leave(&mut self) -> io::Result<()> {
        if self.left {
            return Ok(());
        }
        self.left = true;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&self.orig_ns),
            Some(LinkNameSpaceType::Mount),
        )
        .map_err(|e| {
            io::Error::other(format!("setns back to the original mount namespace: {e}"))
        })?;
        rustix::process::fchdir(&self.cwd)?;
        Ok(())
    }
}

impl Drop for StagingNs {
    fn drop(&mut self) {
        let _ = self.do_leave();
    }
}
