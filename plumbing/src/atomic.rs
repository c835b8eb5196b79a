//! Crash-safe file replacement, the one implementation every crate of the
//! workspace uses: an output is created as a temporary file in the
//! destination's directory, filled, fsynced and then renamed to its final
//! name, and the directory is fsynced too. If anything fails before the
//! rename, dropping the [`AtomicFile`] removes the temporary file, so no
//! half-written output ever appears under a final name.
//!
//! - [`write_atomic`]: replace one file with a byte string
//!   ([`write_atomic_with_prefix`] to choose the temporary name's prefix).
//! - [`AtomicFile`]: stream into a file, then [`AtomicFile::commit`] it;
//!   [`commit_all`] commits several files as one unit (optionally refusing
//!   to replace existing ones).
//! - [`sync_parent`]: make a rename or unlink in a directory durable.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// Atomically replaces `dest` with `bytes`: a temporary file beside it,
/// created with permission bits `mode` (never wider, not even briefly),
/// written, set to exactly `mode` (whatever the umask), fsynced, renamed
/// over `dest`; then the directory is fsynced.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_with_prefix(dest, bytes, mode, ".")
}

/// [`write_atomic`] with the temporary file named `{prefix}NAME.XXXXXX.tmp`
/// (see [`AtomicFile::create_with_prefix`]).
pub fn write_atomic_with_prefix(
    dest: &Path,
    bytes: &[u8],
    mode: u32,
    prefix: &str,
) -> io::Result<()> {
    let mut f = AtomicFile::create_with_prefix(dest, mode, prefix)?;
    f.file_mut().write_all(bytes)?;
    f.file().set_permissions(Permissions::from_mode(mode))?;
    f.commit()
}

/// fsyncs the directory holding `path`, making a rename or unlink there
/// durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_of(path))?.sync_all()
}

/// A file being written that becomes visible under `dest` only on commit.
pub struct AtomicFile {
    tmp: NamedTempFile,
    dest: PathBuf,
}

fn parent_of(dest: &Path) -> &Path {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

impl AtomicFile {
    /// Creates the temporary file beside `dest` with permission bits `mode`
    /// from the start (so a 0600 file is never readable by others, not even
    /// briefly; the umask may narrow it). The temporary name is
    /// `.NAME.XXXXXX.tmp`.
    pub fn create(dest: &Path, mode: u32) -> io::Result<Self> {
        Self::create_with_prefix(dest, mode, ".")
    }

    /// Like [`AtomicFile::create`], with the temporary name
    /// `{prefix}NAME.XXXXXX.tmp`, for callers that find and remove
    /// leftovers of an interrupted run by their prefix.
    pub fn create_with_prefix(dest: &Path, mode: u32, prefix: &str) -> io::Result<Self> {
        let name = dest.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "output path has no file name")
        })?;
        let mut prefix = std::ffi::OsString::from(prefix);
        prefix.push(name);
        prefix.push(".");
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(parent_of(dest))?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary file's current path (for error messages).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    pub fn file_mut(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// fsync, rename over `dest` (replacing it), fsync the directory.
    pub fn commit(self) -> io::Result<()> {
        commit_all(vec![self], false)
    }
}

/// Commits several files as one unit: all are fsynced first, then renamed.
/// With `no_clobber`, an existing destination is an `AlreadyExists` error.
/// If a rename fails, the files already renamed by this call are removed
/// again, so either all outputs appear or none.
pub fn commit_all(files: Vec<AtomicFile>, no_clobber: bool) -> io::Result<()> {
    for f in &files {
        f.tmp.as_file().sync_all()?;
    }
    let mut done: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for f in files {
        let dest = f.dest.clone();
        let result = if no_clobber {
            f.tmp.persist_noclobber(&dest).map(drop)
        } else {
            f.tmp.persist(&dest).map(drop)
        };
        if let Err(e) = result {
            for d in &done {
                let _ = std::fs::remove_file(d);
            }
            return Err(e.error);
        }
        let dir = parent_of(&dest).to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        done.push(dest);
    }
    for dir in dirs {
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_visible_until_commit_and_nothing_left_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let mut f = AtomicFile::create(&dest, 0o600).unwrap();
        f.file_mut().write_all(b"hello").unwrap();
        assert!(!dest.exists());
        drop(f);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut f = AtomicFile::create(&dest, 0o600).unwrap();
        let mode = f.file().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        f.file_mut().write_all(b"hello").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
    }

    #[test]
    fn no_clobber_refuses_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&b, b"old").unwrap();
        let fa = AtomicFile::create(&a, 0o644).unwrap();
        let fb = AtomicFile::create(&b, 0o644).unwrap();
        let e = commit_all(vec![fa, fb], true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(!a.exists(), "a must be rolled back");
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_atomic_replaces_with_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o444).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn prefix_names_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = AtomicFile::create_with_prefix(&dir.path().join("x"), 0o644, ".pfx-").unwrap();
        let name = f.temp_path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".pfx-x."), "{name}");
        assert_eq!(f.dest(), dir.path().join("x"));
    }
}
