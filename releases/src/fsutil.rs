//! Crash-safe file operations for the feed directory: every file appears
//! under its final name only complete and on disk (temporary file in the
//! same directory, fsync, rename, fsync of the directory — done by
//! [`plumbing::atomic`], the workspace's one implementation; this module
//! adds feed-specific temporary names, modes and error context), and
//! digests are computed while the bytes stream through.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use plumbing::atomic::AtomicFile;
use sha2::{Digest, Sha256, Sha512};
use sysupdate::Sha256Digest;

/// Prefix of every temporary file this crate creates in a feed directory;
/// leftovers from an interrupted run are removed by the next one.
pub const TEMP_PREFIX: &str = ".releases-tmp-";

/// An I/O failure, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub(crate) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IoError + 'a {
    move |source| IoError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 and SHA-512 of a file's bytes, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    pub size: u64,
    pub sha256: Sha256Digest,
    /// For Ignition's `verification.hash` (`sha512-…`), which every
    /// Ignition 3.x accepts.
    pub sha512: [u8; 64],
}

impl FileDigests {
    pub fn sha512_hex(&self) -> String {
        hex::encode(self.sha512)
    }

    pub fn of_bytes(bytes: &[u8]) -> FileDigests {
        let mut h = Hasher::default();
        h.update(bytes);
        h.finish()
    }
}

#[derive(Default)]
struct Hasher {
    size: u64,
    s256: Sha256,
    s512: Sha512,
}

impl Hasher {
    fn update(&mut self, b: &[u8]) {
        self.size += b.len() as u64;
        self.s256.update(b);
        self.s512.update(b);
    }
    fn finish(self) -> FileDigests {
        let s256: [u8; 32] = self.s256.finalize().into();
        let s512: [u8; 64] = self.s512.finalize().into();
        FileDigests {
            size: self.size,
            sha256: Sha256Digest::from_bytes(s256),
            sha512: s512,
        }
    }
}

const BUF: usize = 1 << 20;

/// Reads a regular file (symlinks are not followed) and digests it.
pub fn digest_file(path: &Path) -> Result<FileDigests, IoError> {
    digest_reader(open_regular_nofollow(path)?, path)
}

/// Digests everything `reader` (the file at `path`) yields.
fn digest_reader(mut reader: impl Read, path: &Path) -> Result<FileDigests, IoError> {
    let mut h = Hasher::default();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = reader.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Opens `path` for reading, refusing symlinks, devices, FIFOs and
/// directories.
pub fn open_regular_nofollow(path: &Path) -> Result<File, IoError> {
    let md = fs::symlink_metadata(path).map_err(io_err("inspecting", path))?;
    if !md.file_type().is_file() {
        return Err(IoError {
            action: "refusing",
            path: path.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (symlinks, devices and directories are never published)",
            ),
        });
    }
    File::open(path).map_err(io_err("opening", path))
}

/// Opens an input the caller named (following symlinks), but only if it
/// ends at a regular file.
pub fn open_regular(path: &Path) -> Result<File, IoError> {
    let md = fs::metadata(path).map_err(io_err("inspecting", path))?;
    if !md.file_type().is_file() {
        return Err(IoError {
            action: "refusing",
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    File::open(path).map_err(io_err("opening", path))
}

/// A temporary file beside `dest` named with [`TEMP_PREFIX`] (so
/// [`remove_stale_temps`] finds leftovers), created with `mode`.
fn temp_for(dest: &Path, mode: u32) -> Result<AtomicFile, IoError> {
    AtomicFile::create_with_prefix(dest, mode, TEMP_PREFIX).map_err(io_err(
        "creating a temporary file in",
        dest.parent().unwrap_or(Path::new(".")),
    ))
}

/// Sets exactly `mode` (whatever the umask), then fsyncs, renames over
/// `dest` and fsyncs the directory.
fn persist(tmp: AtomicFile, mode: u32, dest: &Path) -> Result<(), IoError> {
    set_mode(tmp.file(), mode, dest)?;
    tmp.commit().map_err(io_err("renaming into place", dest))
}

/// fsyncs the directory holding `path`, making a rename or unlink durable.
pub fn sync_parent(path: &Path) -> Result<(), IoError> {
    plumbing::atomic::sync_parent(path).map_err(io_err(
        "syncing directory",
        path.parent().unwrap_or(Path::new(".")),
    ))
}

/// Atomically replaces `dest` with `bytes`, file mode 0644.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), IoError> {
    plumbing::atomic::write_atomic_with_prefix(dest, bytes, 0o644, TEMP_PREFIX)
        .map_err(io_err("writing", dest))
}

/// Writes `bytes` to `dest` unless it already holds exactly them (so
/// mtimes do not move on a re-run). Returns whether it wrote.
pub fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<bool, IoError> {
    match read_regular_if_exists(dest)? {
        Some(old) if old == bytes => Ok(false),
        _ => {
            write_atomic(dest, bytes)?;
            Ok(true)
        }
    }
}

/// Reads `path` if it exists (it must be a regular file), `None` if not.
pub fn read_regular_if_exists(path: &Path) -> Result<Option<Vec<u8>>, IoError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("inspecting", path)(e)),
        Ok(_) => {
            let mut f = open_regular_nofollow(path)?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(io_err("reading", path))?;
            Ok(Some(v))
        }
    }
}

/// Copies `src` to `dest` (same directory temp file, fsync, rename),
/// returning the digests of the bytes copied. Mode 0444.
pub fn copy_atomic(src: &Path, dest: &Path) -> Result<FileDigests, IoError> {
    let mut input = open_regular(src)?;
    let mut tmp = temp_for(dest, 0o444)?;
    let mut h = Hasher::default();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = input.read(&mut buf).map_err(io_err("reading", src))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        tmp.file_mut()
            .write_all(&buf[..n])
            .map_err(io_err("writing", tmp.temp_path()))?;
    }
    persist(tmp, 0o444, dest)?;
    Ok(h.finish())
}

/// Digests an input file the caller named (following symlinks).
pub fn digest_input(src: &Path) -> Result<FileDigests, IoError> {
    digest_reader(open_regular(src)?, src)
}

fn set_mode(f: &File, mode: u32, dest: &Path) -> Result<(), IoError> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", dest))
}

/// Removes `path` if present and makes the removal durable.
pub fn remove_file(path: &Path) -> Result<bool, IoError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_parent(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

/// Removes temporary files left in `dir` by an interrupted run.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let mut removed = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    for ent in rd {
        let ent = ent.map_err(io_err("listing", dir))?;
        let name = ent.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            let p = ent.path();
            remove_file(&p)?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values() {
        let d = FileDigests::of_bytes(b"");
        assert_eq!(
            d.sha256.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(d.sha512_hex().starts_with("cf83e1357eefb8bd"));
    }

    #[test]
    fn write_if_changed_keeps_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, b"a").unwrap());
        let m1 = fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!write_if_changed(&p, b"a").unwrap());
        assert_eq!(fs::metadata(&p).unwrap().modified().unwrap(), m1);
        assert!(write_if_changed(&p, b"b").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"b");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        let e = digest_file(&p).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
