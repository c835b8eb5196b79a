//! extension-release files: finding the one that belongs to an image
//! (exact name, else the single file marked with the xattr
//! `user.extension-release.strict=0`), the host's os-release, and the
//! compatibility rules in systemd's order (`extension_release_validate()`).

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::name::ExtensionName;
use crate::osrelease::ReleaseFile;
use crate::root::Root;

/// Where extension-release files live inside an image.
pub const RELEASE_DIR: &str = "usr/lib/extension-release.d";
/// The xattr that lets a file with another name be used.
pub const STRICT_XATTR: &str = "user.extension-release.strict";

/// What the host says about itself (os-release of `--root`, plus uname and
/// initrd state of the running system, as systemd 252 takes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostRelease {
    pub os_release_path: PathBuf,
    pub id: String,
    pub version_id: Option<String>,
    pub sysext_level: Option<String>,
    /// systemd's architecture name of `uname -m` (`x86-64`, …), or the raw
    /// machine string when systemd has no name for it.
    pub architecture: String,
    /// `initrd` inside an initrd, else `system`.
    pub scope: String,
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
        let file = ReleaseFile::read(&path).map_err(|source| HostReleaseError::Io {
            path: path.clone(),
            source,
        })?;
        let id = file
            .get_nonempty("ID")
            .ok_or_else(|| HostReleaseError::NoId { path: path.clone() })?
            .to_string();
        Ok(HostRelease {
            id,
            version_id: file.get_nonempty("VERSION_ID").map(str::to_string),
            sysext_level: file.get_nonempty("SYSEXT_LEVEL").map(str::to_string),
            architecture: host_architecture(),
            scope: if in_initrd() { "initrd" } else { "system" }.to_string(),
            os_release_path: path,
        })
    }
}

/// Why an image does not fit the host, in the order systemd checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Mismatch {
    /// No extension-release file, or one without any assignment.
    NoRelease {
        detail: String,
    },
    Scope {
        wanted: String,
        have: String,
    },
    Architecture {
        wanted: String,
        have: String,
    },
    NoId,
    Id {
        wanted: String,
        have: String,
    },
    SysextLevel {
        wanted: String,
        have: String,
    },
    NoVersionId {
        have: String,
    },
    VersionId {
        wanted: String,
        have: String,
    },
    /// The image would replace the host's `/usr/lib/os-release`.
    ContainsOsRelease,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::NoRelease { detail } => write!(f, "no usable extension-release: {detail}"),
            Mismatch::Scope { wanted, have } => write!(
                f,
                "SYSEXT_SCOPE={wanted:?} does not include the host scope {have:?}"
            ),
            Mismatch::Architecture { wanted, have } => write!(
                f,
                "built for ARCHITECTURE={wanted}, but the host is {have}"
            ),
            Mismatch::NoId => write!(f, "extension-release has no ID= (set ID=<host ID> or ID=_any)"),
            Mismatch::Id { wanted, have } => {
                write!(f, "built for ID={wanted}, but the host is ID={have}")
            }
            Mismatch::SysextLevel { wanted, have } => write!(
                f,
                "built for SYSEXT_LEVEL={wanted}, but the host has SYSEXT_LEVEL={have}"
            ),
            Mismatch::NoVersionId { have } => write!(
                f,
                "extension-release has no VERSION_ID= (nor a SYSEXT_LEVEL= shared with the host), but the host has VERSION_ID={have}"
            ),
            Mismatch::VersionId { wanted, have } => write!(
                f,
                "built for VERSION_ID={wanted}, but the host has VERSION_ID={have}"
            ),
            Mismatch::ContainsOsRelease => write!(
                f,
                "the image contains usr/lib/os-release, which would replace the host's (it may carry etc/os-release instead)"
            ),
        }
    }
}

/// Applies systemd's rules, in its order, to an extension-release file.
pub fn validate(ext: &ReleaseFile, host: &HostRelease) -> Result<(), Mismatch> {
    // 1. Nothing in it.
    if ext.is_empty() {
        return Err(Mismatch::NoRelease {
            detail: format!("{} holds no KEY=value assignment", ext.path.display()),
        });
    }
    // 2. Scope.
    let scope = ext.get("SYSEXT_SCOPE");
    let scopes: Vec<&str> = match scope {
        Some(s) => s.split_whitespace().collect(),
        None => vec!["system", "portable"],
    };
    if !scopes.contains(&host.scope.as_str()) {
        return Err(Mismatch::Scope {
            wanted: scope.unwrap_or_default().to_string(),
            have: host.scope.clone(),
        });
    }
    // 3. Architecture.
    if let Some(arch) = ext.get_nonempty("ARCHITECTURE") {
        if arch != "_any" && arch != host.architecture {
            return Err(Mismatch::Architecture {
                wanted: arch.to_string(),
                have: host.architecture.clone(),
            });
        }
    }
    // 4. ID required; _any matches every host without version checks.
    let Some(id) = ext.get_nonempty("ID") else {
        return Err(Mismatch::NoId);
    };
    if id == "_any" {
        return Ok(());
    }
    // 5. Same OS.
    if id != host.id {
        return Err(Mismatch::Id {
            wanted: id.to_string(),
            have: host.id.clone(),
        });
    }
    // 6. Rolling host.
    if host.version_id.is_none() && host.sysext_level.is_none() {
        return Ok(());
    }
    // 7. Both declare a sysext level: it decides.
    if let (Some(have), Some(wanted)) = (&host.sysext_level, ext.get_nonempty("SYSEXT_LEVEL")) {
        if have != wanted {
            return Err(Mismatch::SysextLevel {
                wanted: wanted.to_string(),
                have: have.clone(),
            });
        }
        return Ok(());
    }
    // 8. Otherwise the OS version.
    if let Some(have) = &host.version_id {
        let Some(wanted) = ext.get_nonempty("VERSION_ID") else {
            return Err(Mismatch::NoVersionId { have: have.clone() });
        };
        if wanted != have {
            return Err(Mismatch::VersionId {
                wanted: wanted.to_string(),
                have: have.clone(),
            });
        }
    }
    // 9.
    Ok(())
}

/// The extension-release of an image, and which rule found it.
#[derive(Debug, Clone)]
pub struct FoundRelease {
    pub file: ReleaseFile,
    /// True when found through the `user.extension-release.strict=0`
    /// fallback rather than by the image's own name.
    pub via_xattr: bool,
}

fn read_regular(dir: &Path, name: &str) -> io::Result<Option<(String, std::fs::File)>> {
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
    Ok(Some((String::from_utf8_lossy(&buf).into_owned(), f)))
}

/// Finds and reads the extension-release of image `name` mounted at `tree`.
/// `Ok(Err(detail))` when there is none, or several fallback candidates.
pub fn find_extension_release(
    tree: &Path,
    name: &ExtensionName,
) -> io::Result<Result<FoundRelease, String>> {
    let root = Root::open(tree)?;
    let exact = format!("{RELEASE_DIR}/extension-release.{name}");
    match root.resolve(&exact) {
        Ok(path) => {
            let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let fname = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return match read_regular(&dir, &fname)? {
                Some((text, _)) => Ok(Ok(FoundRelease {
                    file: ReleaseFile::parse(tree.join(&exact), &text),
                    via_xattr: false,
                })),
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
        let Some(suffix) = fname.strip_prefix("extension-release.") else {
            continue;
        };
        if ExtensionName::new(suffix).is_err() {
            continue;
        }
        let Some((text, f)) = read_regular(&dir, &fname)? else {
            continue;
        };
        let mut buf = [0u8; 64];
        let strict = match rustix::fs::fgetxattr(&f, STRICT_XATTR, &mut buf[..]) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => continue,
        };
        // systemd's parse_boolean(): only an explicit "false" value allows it.
        if !matches!(
            strict.trim_end_matches('\0'),
            "0" | "no" | "n" | "false" | "f" | "off"
        ) {
            continue;
        }
        candidates.push((fname, text));
    }
    match candidates.len() {
        0 => Ok(Err(format!(
            "{exact} does not exist and no other extension-release file carries {STRICT_XATTR}=0"
        ))),
        1 => {
            let (fname, text) = candidates.remove(0);
            Ok(Ok(FoundRelease {
                file: ReleaseFile::parse(tree.join(RELEASE_DIR).join(fname), &text),
                via_xattr: true,
            }))
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

    fn host(id: &str, ver: Option<&str>, level: Option<&str>) -> HostRelease {
        HostRelease {
            os_release_path: PathBuf::from("/etc/os-release"),
            id: id.into(),
            version_id: ver.map(Into::into),
            sysext_level: level.map(Into::into),
            architecture: "x86-64".into(),
            scope: "system".into(),
        }
    }

    fn ext(s: &str) -> ReleaseFile {
        ReleaseFile::parse("ext", s)
    }

    #[test]
    fn rules_in_systemd_order() {
        let h = host("debian", Some("12"), None);
        assert!(validate(&ext("ID=debian\nVERSION_ID=12\n"), &h).is_ok());
        assert!(validate(&ext("ID=_any\n"), &h).is_ok());
        assert!(matches!(
            validate(&ext(""), &h),
            Err(Mismatch::NoRelease { .. })
        ));
        assert!(matches!(
            validate(
                &ext("ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd portable\n"),
                &h
            ),
            Err(Mismatch::Scope { .. })
        ));
        // Architecture is checked before ID, so even ID=_any is refused.
        assert!(matches!(
            validate(&ext("ID=_any\nARCHITECTURE=arm64\n"), &h),
            Err(Mismatch::Architecture { .. })
        ));
        assert!(validate(&ext("ID=_any\nARCHITECTURE=_any\n"), &h).is_ok());
        assert!(matches!(
            validate(&ext("VERSION_ID=12\n"), &h),
            Err(Mismatch::NoId)
        ));
        assert!(matches!(
            validate(&ext("ID=fedora\nVERSION_ID=12\n"), &h),
            Err(Mismatch::Id { .. })
        ));
        assert!(matches!(
            validate(&ext("ID=debian\n"), &h),
            Err(Mismatch::NoVersionId { .. })
        ));
        assert!(matches!(
            validate(&ext("ID=debian\nVERSION_ID=11\n"), &h),
            Err(Mismatch::VersionId { .. })
        ));
    }

    #[test]
    fn sysext_level_overrides_version() {
        let h = host("flatcar", Some("3815.2.0"), Some("1.0"));
        assert!(validate(&ext("ID=flatcar\nSYSEXT_LEVEL=1.0\n"), &h).is_ok());
        assert!(matches!(
            validate(
                &ext("ID=flatcar\nSYSEXT_LEVEL=2.0\nVERSION_ID=3815.2.0\n"),
                &h
            ),
            Err(Mismatch::SysextLevel { .. })
        ));
        // Extension without a level falls back to VERSION_ID.
        assert!(validate(&ext("ID=flatcar\nVERSION_ID=3815.2.0\n"), &h).is_ok());
        // Rolling host: ID suffices.
        assert!(validate(&ext("ID=arch\n"), &host("arch", None, None)).is_ok());
    }

    #[test]
    fn lookup_exact_then_xattr() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(RELEASE_DIR);
        std::fs::create_dir_all(&d).unwrap();
        let name = ExtensionName::new("foo").unwrap();
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
    }
}
