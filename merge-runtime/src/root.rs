//! Paths inside an operating-system tree (`--root`): resolving them with
//! symlinks confined to the tree (`openat2(RESOLVE_IN_ROOT)`, like systemd's
//! `chase_symlinks(..., CHASE_PREFIX_ROOT)`), and small file helpers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// An opened directory tree that relative paths are resolved in.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// The canonical path that an fd refers to, from `/proc/self/fd`.
pub fn fd_path(fd: impl AsFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

impl Root {
    /// Opens `path` (made absolute and canonical) as the tree root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let path = fd_path(&fd)?;
        Ok(Root { fd, path })
    }

    /// The canonical absolute path of the root (`/` for the host).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_host(&self) -> bool {
        self.path == Path::new("/")
    }

    /// `rel` ("/usr", "etc/extensions/x.raw") as a path below the root,
    /// without resolving anything (for messages and for creating).
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Opens `rel` with `O_PATH`, following symlinks but never leaving the
    /// root (absolute link targets and `..` are taken relative to it).
    pub fn open_in(&self, rel: impl AsRef<Path>, follow_last: bool) -> io::Result<OwnedFd> {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let mut flags = OFlags::PATH | OFlags::CLOEXEC;
        if !follow_last {
            flags |= OFlags::NOFOLLOW;
        }
        // Retries EAGAIN from a racing rename/mount (see `plumbing::in_root`
        // and the regression test below).
        Ok(plumbing::in_root::openat2_in_root(&self.fd, rel, flags)?)
    }

    /// Resolves `rel` inside the root to a canonical absolute path
    /// (`ENOENT` when it does not exist).
    pub fn resolve(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        fd_path(self.open_in(rel, true)?)
    }

    /// Like [`Root::resolve`], but a missing last component is allowed
    /// (systemd's `CHASE_NONEXISTENT`, for mount points to be created): the
    /// parent is resolved and the name appended.
    pub fn resolve_nonexistent(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let rel = rel.as_ref();
        match self.resolve(rel) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = rel.parent().unwrap_or(Path::new(""));
                let Some(name) = rel.file_name() else {
                    return Err(e);
                };
                Ok(self.resolve_nonexistent(parent)?.join(name))
            }
            other => other,
        }
    }
}

/// Resolves `rel` inside `tree` (which need not be a [`Root`] yet).
pub fn resolve_in(tree: &Path, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
    Root::open(tree)?.resolve(rel)
}

/// True when `path` is a directory with no entries at all (hidden ones
/// count, like systemd's `dir_is_empty(.., ignore_hidden_or_backup=false)`).
pub fn dir_is_empty(path: &Path) -> io::Result<bool> {
    Ok(std::fs::read_dir(path)?.next().is_none())
}

/// fsyncs a directory (after a rename or unlink in it).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates a directory and its parents with `mode` for the new ones.
pub fn mkdir_p(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// Refuses paths with `..` (used for names that come from outside).
pub fn is_plain_relative(p: &Path) -> bool {
    p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Writes `data` to `path` atomically with exactly `mode`: temporary file
/// in the same directory (named `.#NAME.…`, which systemd ignores), fsync,
/// rename, fsync of the directory (the workspace's one implementation,
/// [`plumbing::atomic`]). Nothing half-written appears under `path`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    plumbing::atomic::write_atomic_with_prefix(path, data, mode, ".#")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/extensions")).unwrap();
        std::fs::create_dir_all(r.join("opt/ext")).unwrap();
        std::fs::write(r.join("opt/ext/a.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("/opt/ext/a.raw", r.join("etc/extensions/a.raw")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../etc/passwd",
            r.join("etc/extensions/b.raw"),
        )
        .unwrap();
        let root = Root::open(r).unwrap();
        let canon = std::fs::canonicalize(r).unwrap();
        assert_eq!(
            root.resolve("/etc/extensions/a.raw").unwrap(),
            canon.join("opt/ext/a.raw")
        );
        // `..` is clamped at the root: this is ROOT/etc/passwd, which is absent.
        let e = root.resolve("etc/extensions/b.raw").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(root.resolve_nonexistent("/usr").unwrap(), canon.join("usr"));
    }

    /// Regression: `openat2(RESOLVE_IN_ROOT)` fails with EAGAIN when a
    /// `..` is resolved while anything on the system renames a file. A
    /// relative link such as `sysext update` writes
    /// (`../../opt/extensions/app/app_2.raw`) must still resolve every
    /// time while another thread renames files.
    #[test]
    fn dotdot_links_resolve_during_concurrent_renames() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        std::fs::create_dir_all(r.join("etc/extensions")).unwrap();
        std::fs::create_dir_all(r.join("opt/ext")).unwrap();
        std::fs::write(r.join("opt/ext/a.raw"), b"x").unwrap();
        std::os::unix::fs::symlink("../../opt/ext/a.raw", r.join("etc/extensions/a.raw")).unwrap();
        let storm = t.path().join("storm");
        std::fs::create_dir_all(&storm).unwrap();
        std::fs::write(storm.join("a"), b"").unwrap();
        let stop = AtomicBool::new(false);
        let root = Root::open(&r).unwrap();
        let want = std::fs::canonicalize(&r).unwrap().join("opt/ext/a.raw");
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(storm.join("a"), storm.join("b")).unwrap();
                    std::fs::rename(storm.join("b"), storm.join("a")).unwrap();
                }
            });
            let mut failures = Vec::new();
            for _ in 0..20_000 {
                match root.resolve("/etc/extensions/a.raw") {
                    Ok(p) => assert_eq!(p, want),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert!(
                failures.is_empty(),
                "{} of 20000 resolutions failed, e.g. {}",
                failures.len(),
                failures[0]
            );
        });
    }

    #[test]
    fn atomic_write_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }
}
