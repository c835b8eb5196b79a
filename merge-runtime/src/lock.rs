//! The locks that serialise everything that changes which extension images
//! are active, on one OS tree (`--root`):
//!
//! - `ROOT/run/sysext/lock`: held by `merge`, `refresh` and `unmerge` for
//!   their whole run, and by `update`/`rollback` from the symlink flip to
//!   the end of the health check (or rollback). An update and a refresh
//!   therefore never interleave.
//! - `ROOT/run/sysext/update.lock`: held by `update` and `rollback` for
//!   their whole run, so two updates serialise without blocking a refresh
//!   while a large image is downloading.
//!
//! Both are `flock(2)` locks, released by the kernel when the process dies
//! (even by SIGKILL). The update lock is always taken before the main
//! lock, so there is no lock-order inversion.
//!
//! The locks are re-entrant per thread: `update` holds the main lock and
//! then calls the runtime's `refresh`, which takes it again; that nested
//! acquisition is a no-op instead of a self-deadlock (`flock` locks belong
//! to open file descriptions, so a second `open` + `flock` in the same
//! process would block forever).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::root::{self, Root};

/// Directory of the lock files, relative to the root.
pub const LOCK_DIR: &str = "run/sysext";
/// The main lock (merge, refresh, unmerge, activation).
pub const LOCK_FILE: &str = "lock";
/// The update lock (a whole `update` or `rollback`).
pub const UPDATE_LOCK_FILE: &str = "update.lock";

thread_local! {
    /// (st_dev, st_ino) of the lock files this thread holds.
    static HELD: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
}

/// A held lock; dropping it releases the lock (unless it was a nested
/// acquisition by the thread that already held it).
#[derive(Debug)]
pub struct Lock {
    /// `Some` for the outermost holder: closing it unlocks.
    file: Option<File>,
    key: (u64, u64),
    path: PathBuf,
}

impl Lock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            HELD.with(|h| h.borrow_mut().retain(|k| *k != self.key));
        }
    }
}

/// Takes the main lock of the tree at `root` (merge, refresh, unmerge and
/// the activation step of an update), waiting as long as needed.
pub fn acquire(root: &Path) -> io::Result<Lock> {
    acquire_named(root, LOCK_FILE, &mut |_| {})
}

/// Takes the update lock of the tree at `root`.
pub fn acquire_update(root: &Path, waiting: &mut dyn FnMut(&Path)) -> io::Result<Lock> {
    acquire_named(root, UPDATE_LOCK_FILE, waiting)
}

/// Takes the main lock, calling `waiting` once if another process holds it.
pub fn acquire_main(root: &Path, waiting: &mut dyn FnMut(&Path)) -> io::Result<Lock> {
    acquire_named(root, LOCK_FILE, waiting)
}

fn acquire_named(root_dir: &Path, name: &str, waiting: &mut dyn FnMut(&Path)) -> io::Result<Lock> {
    let root = Root::open(root_dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("opening root {}: {e}", root_dir.display()),
        )
    })?;
    let dir = root.resolve_nonexistent(LOCK_DIR).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("resolving {}: {e}", root.join(LOCK_DIR).display()),
        )
    })?;
    root::mkdir_p(&dir, 0o755)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let md = file.metadata()?;
    if !md.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file; remove it",
            path.display()
        )));
    }
    let key = (md.dev(), md.ino());
    if HELD.with(|h| h.borrow().contains(&key)) {
        return Ok(Lock {
            file: None,
            key,
            path,
        });
    }
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            waiting(&path);
            rustix::fs::flock(&file, FlockOperation::LockExclusive)
                .map_err(|e| io::Error::other(format!("locking {}: {e}", path.display())))?;
        }
        Err(e) => return Err(io::Error::other(format!("locking {}: {e}", path.display()))),
    }
    HELD.with(|h| h.borrow_mut().push(key));
    Ok(Lock {
        file: Some(file),
        key,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reentrant_in_a_thread_exclusive_across_threads() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let outer = acquire(&root).unwrap();
        // Nested: would deadlock without re-entrancy.
        let inner = acquire(&root).unwrap();
        assert!(inner.file.is_none());
        drop(inner);
        // Another thread must wait until `outer` is gone.
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = root.clone();
        let h = std::thread::spawn(move || {
            let mut waited = false;
            let _l = acquire_main(&r2, &mut |_| waited = true).unwrap();
            tx.send(waited).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            rx.try_recv().is_err(),
            "the second thread got the lock while it was held"
        );
        drop(outer);
        assert!(
            rx.recv().unwrap(),
            "the second thread was told it had to wait"
        );
        h.join().unwrap();
        assert!(root.join("run/sysext/lock").is_file());
    }
}
