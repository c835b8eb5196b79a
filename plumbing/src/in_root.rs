//! Opening paths confined to a directory tree (`--root`) with
//! `openat2(RESOLVE_IN_ROOT)`, shared by the trust-store reader in `signing` and the
//! node runtime's discovery.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// How often an `openat2` that failed with `EAGAIN` is repeated before the
/// error is reported.
pub const EAGAIN_RETRIES: u32 = 1024;

/// `openat2(root, rel, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
///
/// With `RESOLVE_IN_ROOT` the kernel answers `EAGAIN` when a `..` component
/// was resolved while *any* rename or mount happened on the system (it
/// cannot prove `..` stayed inside the root). That is not an answer about
/// this path, so the call is repeated. Treating it as "does not resolve"
/// made discovery drop images under load, and a refresh then unmerged
/// everything.
pub fn openat2_in_root(root: impl AsFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            root.as_fd(),
            rel,
            flags,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            r => return r,
        }
    }
}
