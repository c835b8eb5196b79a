//! extension-release files: finding the one that belongs to an image
//! (exact name, else the single file marked with the xattr
//! `user.extension-release.strict=0`) and the host's os-release. The
//! compatibility rules themselves are [`sysupdate::extension`]'s
//! ([`check_compatible`], systemd's `extension_release_validate()`).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sysupdate::extension::{
    check_compatible, parse_boolean, Host, ImageName, Incompatible, OsRelease, Scope,
    EXTENSION_RELEASE_PREFIX,
};

use crate::root::Root;

/// Where extension-release files live inside an image.
pub const RELEASE_DIR: &str = sysupdate::extension::EXTENSION_RELEASE_DIR;
/// The xattr that lets a file with another name be used.
pub const STRICT_XATTR: &str = "user.extension-release.strict";

/// What the host says about itself (os-release of `--root`, plus uname and
/// initrd state of the running system, as systemd 252 takes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRelease {
    pub os_release_path: PathBuf,
    #[serde(flatten)]
    pub host: Host,
}

/// The host's os-release could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HostReleaseError {
    #[error("no os-release in {root}: neither etc/os-release nor usr/lib/os-release exists; an OS tree is required (check --root)")]
    Missing { root: PathBuf },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the ID= field is missing or empty; it is required to match extensions against the host")]
    NoId { path: PathBuf },
}

/// True when running inside an initrd (systemd's `in_initrd()` test on
/// `/etc/initrd-release` of the running system).
pub fn in_initrd() -> bool {
    Path::new("/etc/initrd-release").exists()
}

/// systemd's name for the architecture of the running kernel.
pub fn host_architecture() -> String {
    let uts = rustix::system::uname();
    let machine = uts.machine().to_string_lossy().into_owned();
    match sysupdate::Arch::from_uname(&machine) {
        Some(a) => a.as_str().to_string(),
        None => machine,
    }
}

impl HostRelease {
    /// Reads `etc/os-release`, else `usr/lib/os-release`, of `root`.
    pub fn load(root: &Root) -> Result<HostRelease, HostReleaseError> {
        let mut found = None;
        for rel in ["etc/os-release", "usr/lib/os-release"] {
            match root.resolve(rel) {
                Ok(p) => {
                    found = Some(p);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(HostReleaseError::Io {
                        path: root.join(rel),
                        source,
                    })
                }
            }
        }
        let path = found.ok_or_else(|| HostReleaseError::Missing {
            root: root.path().to_path_buf(),
        })?;
        let file = crate::osrelease::read(&path).map_err(|source| HostReleaseError::Io {
            path: path.clone(),
            source,
        })?;
        let scope = if in_initrd() {
            Scope::Initrd
        } else {
            Scope::System
        };
        let host = Host::from_os_release(&file, host_architecture(), scope)
            .map_err(|_| HostReleaseError::NoId { path: path.clone() })?;
        Ok(HostRelease {
            os_release_path: path,
            host,
        })
    }
}

/// Why an image does not fit the host: no usable extension-release, an
/// image that carries an os-release, or systemd's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// No extension-release file, or one systemd cannot read.
    #[error("no usable extension-release: {detail}")]
    NoRelease { detail: String },
    /// The image would replace the host's `/usr/lib/os-release`.
    #[error("the image contains usr/lib/os-release, which would replace the host's (it may carry etc/os-release instead)")]
    ContainsOsRelease,
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
}

/// Applies systemd's rules, in its order, to an extension-release file.
pub fn validate(ext: &OsRelease, host: &HostRelease) -> Result<(), Mismatch> {
    Ok(check_compatible(ext, &host.host)?)
}

/// The extension-release of an image, and which rule found it.
#[derive(Debug, Clone)]
pub struct FoundRelease {
    pub file: OsRelease,
    /// Where it was found (inside the mounted image).
    pub path: PathBuf,
    /// True when found through the `user.extension-release.strict=0`
    /// fallback rather than by the image's own name.
    pub via_xattr: bool,
}

fn read_regular(dir: &Path, name: &str) -> io::Result<Option<(Vec<u8>, std::fs::File)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.by_ref().take(1 << 20).read_to_end(&mut buf)?;
    Ok(Some((buf, f)))
}

/// Parses a found file; one systemd would refuse counts as none.
fn found(path: PathBuf, bytes: &[u8], via_xattr: bool) -> Result<FoundRelease, String> {
    match crate::osrelease::parse(&path, bytes) {
        Ok(file) => Ok(FoundRelease {
            file,
            path,
            via_xattr,
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// Finds and reads the extension-release of image `name` mounted at `tree`.
/// `Ok(Err(detail))` when there is none, or several fallback candidates.
pub fn find_extension_release(
    tree: &Path,
    name: &ImageName,
) -> io::Result<Result<FoundRelease, String>> {
    let root = Root::open(tree)?;
    let exact = sysupdate::extension::extension_release_path(name);
    match root.resolve(&exact) {
        Ok(path) => {
            let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let fname = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return match read_regular(&dir, &fname)? {
                Some((bytes, _)) => Ok(found(tree.join(&exact), &bytes, false)),
                None => Ok(Err(format!("{exact} is not a regular file"))),
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = match root.resolve(RELEASE_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Err(format!("neither {exact} nor {RELEASE_DIR}/ exists")))
        }
        Err(e) => return Err(e),
    };
    let mut candidates = Vec::new();
    let mut entries: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for fname in entries {
        let Some(suffix) = fname.strip_prefix(EXTENSION_RELEASE_PREFIX) else {
            continue;
        };
        if ImageName::new(suffix).is_err() {
            continue;
        }
        let Some((bytes, f)) = read_regular(&dir, &fname)? else {
            continue;
        };
        let mut buf = [0u8; 64];
        let strict = match rustix::fs::fgetxattr(&f, STRICT_XATTR, &mut buf[..]) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => continue,
        };
        // systemd's parse_boolean(): only an explicit "false" value allows it.
        if parse_boolean(strict.trim_end_matches('\0')) != Some(false) {
            continue;
        }
        candidates.push((fname, bytes));
    }
    match candidates.len() {
        0 => Ok(Err(format!(
            "{exact} does not exist and no other extension-release file carries {STRICT_XATTR}=0"
        ))),
        1 => {
            let (fname, bytes) = candidates.remove(0);
            Ok(found(tree.join(RELEASE_DIR).join(fname), &bytes, true))
        }
        _ => Ok(Err(format!(
            "{exact} does not exist and several files carry {STRICT_XATTR}=0 ({}); exactly one is allowed",
            candidates
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// True when `tree` contains `usr/lib/os-release` (resolved inside it).
pub fn contains_os_release(tree: &Path) -> io::Result<bool> {
    match Root::open(tree)?.resolve("usr/lib/os-release") {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_exact_then_xattr() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(RELEASE_DIR);
        std::fs::create_dir_all(&d).unwrap();
        let name = ImageName::new("foo").unwrap();
        let r = find_extension_release(t.path(), &name).unwrap();
        assert!(r.is_err());
        std::fs::write(d.join("extension-release.other"), "ID=_any\n").unwrap();
        assert!(find_extension_release(t.path(), &name).unwrap().is_err());
        let set = rustix::fs::setxattr(
            d.join("extension-release.other"),
            STRICT_XATTR,
            b"0",
            rustix::fs::XattrFlags::empty(),
        );
        if set.is_ok() {
            let found = find_extension_release(t.path(), &name).unwrap().unwrap();
            assert!(found.via_xattr);
            assert_eq!(found.file.get("ID"), Some("_any"));
        }
        std::fs::write(d.join("extension-release.foo"), "ID=debian\n").unwrap();
        let found = find_extension_release(t.path(), &name).unwrap().unwrap();
        assert!(!found.via_xattr);
        assert_eq!(found.file.get("ID"), Some("debian"));
        assert_eq!(
            found.path,
            t.path().join(RELEASE_DIR).join("extension-release.foo")
        );
        // A file systemd refuses (here: a NUL byte) is no release at all.
        std::fs::write(d.join("extension-release.foo"), "ID=debian\0\n").unwrap();
        let detail = find_extension_release(t.path(), &name)
            .unwrap()
            .unwrap_err();
        assert!(detail.contains("NUL byte"), "{detail}");
    }
}
