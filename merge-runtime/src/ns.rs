//! The private staging mount namespace: the calling *thread* moves into a
//! new copy of its mount namespace (`unshare(CLONE_NEWNS)`, which also
//! gives it its own root/cwd) made a downstream (slave) copy, so nothing
//! mounted or unmounted in it leaks back. The runtime does its staging on
//! a dedicated thread and lets the thread end instead of switching back
//! with `setns()` (which fails as soon as any thread shares the staging
//! thread's filesystem context). Detached mounts
//! (`open_tree(OPEN_TREE_CLONE)`) made inside are plain file descriptors
//! and survive; everything else mounted inside vanishes with the namespace
//! when the last thread in it ends.

#![allow(unsafe_code)]

use std::io;

use rustix::mount::{mount_change, MountPropagationFlags};
use rustix::thread::UnshareFlags;

fn unshare_mount_ns() -> io::Result<()> {
    // SAFETY: only CLONE_NEWNS (which implies CLONE_FS) is unshared. That
    // gives this thread its own mount namespace and cwd/root; it does not
    // unshare the file descriptor table, so no fd visibility invariant of
    // other threads is affected (the hazard `unshare_unsafe` documents).
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }.map_err(io::Error::from)
}

/// Moves the calling thread into a new, downstream-only copy of its mount
/// namespace, for good. Call it on a thread of its own. Threads this thread
/// spawns afterwards inherit the namespace (and keep it alive), so pools
/// such as rayon's must be started before.
pub fn enter_staging_namespace() -> io::Result<()> {
    unshare_mount_ns()
        .map_err(|e| io::Error::new(e.kind(), format!("unshare(CLONE_NEWNS): {e}")))?;
    mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(|e| io::Error::other(format!("making the staging namespace a slave copy: {e}")))?;
    Ok(())
}
