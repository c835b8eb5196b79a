//! The content-addressed download cache: `ROOT/sha256/ab/abcd…` holds the
//! bytes whose sha256 is `abcd…`. Downloads stream into `ROOT/tmp/` (same
//! filesystem) and are renamed into place only after their digest was
//! computed and checked, so a file under its final name always has the
//! digest it is named after. The default root is `$XDG_CACHE_HOME/bakery`
//! (or `~/.cache/bakery`).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;
use tempfile::NamedTempFile;

use super::error::FetchError;

/// A content-addressed store of verified downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// `$XDG_CACHE_HOME/bakery`, or `~/.cache/bakery`.
    pub fn default_root() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CACHE_HOME") {
            Some(dir) if !dir.is_empty() && Path::new(&dir).is_absolute() => PathBuf::from(dir),
            _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
        };
        Some(base.join("bakery"))
    }

    /// The cache at [`Cache::default_root`].
    pub fn open_default() -> Result<Cache, FetchError> {
        Cache::default_root().map(Cache::new).ok_or_else(|| {
            FetchError::Invalid(
                "cannot find a cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir"
                    .into(),
            )
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes with this digest live (whether or not they exist).
    pub fn path_for(&self, digest: &Sha256Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether an entry exists (without re-hashing it).
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.path_for(digest).is_file()
    }

    /// Returns the entry's path if it exists and still hashes to `digest`.
    /// An entry that was damaged on disk is deleted and reported as absent,
    /// so the caller downloads it again.
    pub fn lookup_verified(&self, digest: &Sha256Digest) -> Result<Option<PathBuf>, FetchError> {
        let path = self.path_for(digest);
        match sha256_file(&path) {
            Ok((actual, _)) if actual == *digest => Ok(Some(path)),
            Ok(_) => {
                fs::remove_file(&path)
                    .map_err(|e| FetchError::io(&path, "cannot remove a damaged cache entry", e))?;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FetchError::io(&path, "cannot read cache entry", e)),
        }
    }

    /// Returns the entry's path if it exists, without re-hashing.
    pub fn lookup_unverified(&self, digest: &Sha256Digest) -> Option<PathBuf> {
        let path = self.path_for(digest);
        path.is_file().then_some(path)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new temporary file inside the cache (deleted when dropped).
    pub(crate) fn new_temp(&self) -> Result<NamedTempFile, FetchError> {
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir)
            .map_err(|e| FetchError::io(&dir, "cannot create the cache directory", e))?;
        tempfile::Builder::new()
            .prefix("download-")
            .tempfile_in(&dir)
            .map_err(|e| FetchError::io(&dir, "cannot create a temporary file in the cache", e))
    }

    /// Moves a fully written temporary file whose digest the caller has
    /// computed (and checked) to its content address: fsync, read-only
    /// mode, rename, fsync of the directory.
    pub(crate) fn commit(
        &self,
        tmp: NamedTempFile,
        digest: &Sha256Digest,
    ) -> Result<PathBuf, FetchError> {
        let path = self.path_for(digest);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        fs::create_dir_all(&dir)
            .map_err(|e| FetchError::io(&dir, "cannot create the cache directory", e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| FetchError::io(tmp.path(), "cannot fsync download", e))?;
        set_read_only(tmp.path())
            .map_err(|e| FetchError::io(tmp.path(), "cannot set mode of download", e))?;
        tmp.persist(&path)
            .map_err(|e| FetchError::io(&path, "cannot move download into the cache", e.error))?;
        if let Ok(d) = File::open(&dir) {
            // Best effort: the rename is durable once the directory is synced.
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Copies a local file into the cache (e.g. an input a user supplies by
    /// hand on an air-gapped machine) and returns its digest and cache path.
    pub fn insert_file(&self, src: &Path) -> Result<(Sha256Digest, PathBuf), FetchError> {
        let tmp = self.new_temp()?;
        let mut input = File::open(src).map_err(|e| FetchError::io(src, "cannot open", e))?;
        let mut out = tmp.as_file();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| FetchError::io(src, "cannot read", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            io::Write::write_all(&mut out, &buf[..n])
                .map_err(|e| FetchError::io(tmp.path(), "cannot write", e))?;
        }
        let digest = Sha256Digest::from_bytes(hasher.finalize().into());
        let path = self.commit(tmp, &digest)?;
        Ok((digest, path))
    }
}

fn set_read_only(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
}

/// The sha256 and length of everything a reader yields.
pub fn sha256_reader(mut r: impl Read) -> io::Result<(Sha256Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((Sha256Digest::from_bytes(hasher.finalize().into()), total))
}

/// The sha256 and length of a file.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256Digest, u64)> {
    sha256_reader(File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_addressed_layout_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let src = dir.path().join("input");
        fs::write(&src, b"hello").unwrap();
        let (digest, path) = cache.insert_file(&src).unwrap();
        assert_eq!(
            digest.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            path,
            dir.path()
                .join("sha256/2c/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(cache.lookup_verified(&digest).unwrap(), Some(path.clone()));
        // Damage the entry: it is detected, removed, and reported absent.
        set_writable(&path);
        fs::write(&path, b"HELLO").unwrap();
        assert_eq!(cache.lookup_verified(&digest).unwrap(), None);
        assert!(!path.exists());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    fn set_writable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    }
}
