//! The locks that serialise everything that changes which extension images
//! are active, on one OS tree (`--root`); this module is their only owner
//! (the runtime and the updater both take them from here, neither from the
//! other):
//!
//! - `ROOT/run/sysext/lock`: held by `merge`, `refresh` and `unmerge` for
//!   their whole run, and by `update`/`rollback` from the symlink flip to
//!   the end of the health check (or rollback). An update and a refresh
//!   therefore never interleave.
//! - `ROOT/run/sysext/update.lock`: held by `update` and `rollback` for
//!   their whole run, so two updates serialise without blocking a refresh
//!   while a large image is downloading.
//! - `RUN_DIR/lock` ([`acquire_run_dir`]): the staging workspace lock of
//!   merge, refresh and unmerge.
//!
//! All are `flock(2)` locks, released by the kernel when the process dies
//! (even by SIGKILL). The update lock is always taken before the main
//! lock, so there is no lock-order inversion.
//!
//! A caller that already holds the main lock passes its [`Lock`] down
//! (`runtime::refresh_locked`) instead of taking it again. The locks are
//! also re-entrant per thread, as a safety net: a nested acquisition by the
//! thread that holds the lock is a no-op instead of a self-deadlock
//! (`flock` locks belong to open file descriptions, so a second `open` +
//! `flock` in the same process would block forever).

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

/// A lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the lock directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the lock file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a regular file; remove it")]
    NotRegular { path: PathBuf },
    #[error("cannot lock {path}")]
    Flock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

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
pub fn acquire(root: &Path) -> Result<Lock, LockError> {
    acquire_named(root, LOCK_FILE, &mut |_| {})
}

/// Takes the update lock of the tree at `root`.
pub fn acquire_update(root: &Path, waiting: &mut dyn FnMut(&Path)) -> Result<Lock, LockError> {
    acquire_named(root, UPDATE_LOCK_FILE, waiting)
}

/// Takes the main lock, calling `waiting` once if another process holds it.
pub fn acquire_main(root: &Path, waiting: &mut dyn FnMut(&Path)) -> Result<Lock, LockError> {
    acquire_named(root, LOCK_FILE, waiting)
}

/// Takes the lock of the staging workspaces in `run_dir` (created 0700).
pub fn acquire_run_dir(run_dir: &Path) -> Result<Lock, LockError> {
    root::mkdir_p(run_dir, 0o700).map_err(|source| LockError::Dir {
        path: run_dir.to_path_buf(),
        source,
    })?;
    lock_file(run_dir.join("lock"), &mut |_| {})
}

fn acquire_named(
    root_dir: &Path,
    name: &str,
    waiting: &mut dyn FnMut(&Path),
) -> Result<Lock, LockError> {
    let root = Root::open(root_dir).map_err(|source| LockError::Root {
        path: root_dir.to_path_buf(),
        source,
    })?;
    let dir = root
        .resolve_nonexistent(LOCK_DIR)
        .map_err(|source| LockError::Dir {
            path: root.join(LOCK_DIR),
            source,
        })?;
    root::mkdir_p(&dir, 0o755).map_err(|source| LockError::Dir {
        path: dir.clone(),
        source,
    })?;
    lock_file(dir.join(name), waiting)
}

fn lock_file(path: PathBuf, waiting: &mut dyn FnMut(&Path)) -> Result<Lock, LockError> {
    let open_err = |source| LockError::Open {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(open_err)?;
    let md = file.metadata().map_err(open_err)?;
    if !md.is_file() {
        return Err(LockError::NotRegular { path });
    }
    let key = (md.dev(), md.ino());
    if HELD.with(|h| h.borrow().contains(&key)) {
        return Ok(Lock {
            file: None,
            key,
            path,
        });
    }
    let flock_err = |e: rustix::io::Errno| LockError::Flock {
        path: path.clone(),
        source: e.into(),
    };
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            waiting(&path);
            rustix::fs::flock(&file, FlockOperation::LockExclusive).map_err(flock_err)?;
        }
        Err(e) => return Err(flock_err(e)),
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
