//! Finding extension images: the search directories in precedence order
//! (first wins per name), masking by an empty directory, symlinks resolved
//! inside `--root`, entry kinds (directory, `.raw` file, block device), the
//! on-disk format by magic number, and the verity sidecar files.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sysupdate::extension::ImageName;

use crate::root::{fd_path, Root};

/// Search directories, highest precedence first (systemd ≥ 254; 252 also
/// searched `/usr/local/lib/extensions` and `/usr/lib/extensions`).
pub const SEARCH_DIRS: [&str; 3] = ["/etc/extensions", "/run/extensions", "/var/lib/extensions"];

/// What kind of directory entry an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Directory,
    Raw,
    Block,
}

impl EntryKind {
    /// systemd's `image_type_to_string()` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Directory => "directory",
            EntryKind::Raw => "raw",
            EntryKind::Block => "block",
        }
    }
}

/// The content format of a raw file or block device, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Squashfs,
    Erofs,
    Ext4,
    /// A GPT disk image (a DDI).
    Gpt,
    Unknown,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Squashfs => "squashfs",
            Format::Erofs => "erofs",
            Format::Ext4 => "ext4",
            Format::Gpt => "gpt",
            Format::Unknown => "unknown",
        }
    }

    /// The kernel filesystem type to mount it with.
    pub fn fs_type(self) -> Option<&'static str> {
        match self {
            Format::Squashfs => Some("squashfs"),
            Format::Erofs => Some("erofs"),
            Format::Ext4 => Some("ext4"),
            Format::Gpt | Format::Unknown => None,
        }
    }

    /// Detects the format from the first 8 KiB (or less) of a device.
    pub fn detect(head: &[u8]) -> Format {
        let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
        if at(0, b"hsqs") {
            Format::Squashfs
        } else if at(1024, &0xE0F5_E1E2u32.to_le_bytes()) {
            Format::Erofs
        } else if at(512, b"EFI PART") || at(4096, b"EFI PART") {
            Format::Gpt
        } else if at(1080, &0xEF53u16.to_le_bytes()) {
            Format::Ext4
        } else {
            Format::Unknown
        }
    }

    /// Reads the head of `f` and detects its format.
    pub fn probe(f: &File) -> io::Result<Format> {
        use std::os::unix::fs::FileExt;
        let mut head = vec![0u8; 8192];
        let mut n = 0;
        while n < head.len() {
            match f.read_at(&mut head[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        head.truncate(n);
        Ok(Format::detect(&head))
    }
}

/// Verity files that sit next to a bare image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sidecars {
    /// `NAME.roothash` (or `NAME.usrhash`).
    pub roothash: Option<PathBuf>,
    /// `NAME.verity`.
    pub verity: Option<PathBuf>,
    /// `NAME.roothash.p7s` (or `NAME.usrhash.p7s`).
    pub signature: Option<PathBuf>,
}

impl Sidecars {
    pub fn is_empty(&self) -> bool {
        self.roothash.is_none() && self.verity.is_none() && self.signature.is_none()
    }

    /// Looks for sidecars of `image` (`dir/NAME.raw`) in its directory.
    pub fn find(image: &Path) -> Sidecars {
        let Some(dir) = image.parent() else {
            return Sidecars::default();
        };
        let Some(fname) = image.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            return Sidecars::default();
        };
        let stem = fname.strip_suffix(".raw").unwrap_or(&fname);
        let pick = |suffixes: &[&str]| {
            suffixes
                .iter()
                .map(|s| dir.join(format!("{stem}{s}")))
                .find(|p| p.is_file())
        };
        Sidecars {
            roothash: pick(&[".roothash", ".usrhash"]),
            verity: pick(&[".verity"]),
            signature: pick(&[".roothash.p7s", ".usrhash.p7s"]),
        }
    }
}

/// A discovered extension image.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub name: ImageName,
    pub kind: EntryKind,
    /// The path of the directory entry (under `--root`), as systemd shows it.
    pub path: PathBuf,
    /// Where it leads after resolving symlinks inside `--root`.
    pub target: PathBuf,
    /// The search directory it was found in (`/etc/extensions`, …).
    pub search_dir: &'static str,
    /// What systemd's `list` shows as time: mtime of raw files, creation
    /// time (btime) of directories.
    #[serde(skip)]
    pub mtime: Option<SystemTime>,
    /// Identity of the target: (st_dev, st_ino, size, mtime in ns).
    #[serde(skip)]
    pub identity: (u64, u64, u64, i128),
    /// Sidecars next to the entry (or, for a symlink, next to its target).
    pub sidecars: Sidecars,
}

/// A name hidden by an empty directory.
#[derive(Debug, Clone, Serialize)]
pub struct Masked {
    pub name: ImageName,
    pub path: PathBuf,
}

/// An entry that looked like an image but could not be used.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Everything found in the search directories.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Discovery {
    /// Images, sorted by name.
    pub images: Vec<Image>,
    pub masked: Vec<Masked>,
    pub skipped: Vec<Skipped>,
}

fn mtime_of(md: &std::fs::Metadata) -> (Option<SystemTime>, i128) {
    let ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
    let t = if md.mtime() >= 0 {
        Some(UNIX_EPOCH + Duration::new(md.mtime() as u64, md.mtime_nsec() as u32))
    } else {
        None
    };
    (t, ns)
}

fn btime_of(p: &Path) -> Option<SystemTime> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        p,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    if st.stx_mask & rustix::fs::StatxFlags::BTIME.bits() == 0 || st.stx_btime.tv_sec < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::new(st.stx_btime.tv_sec as u64, st.stx_btime.tv_nsec))
}

/// Discovers images under `root` in `dirs` (normally [`SEARCH_DIRS`]).
pub fn discover_in(root: &Root, dirs: &[&'static str]) -> io::Result<Discovery> {
    let mut out = Discovery::default();
    let mut seen = std::collections::BTreeSet::new();
    for &dir in dirs {
        let resolved = match root.resolve(dir) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", root.join(dir).display()),
                ))
            }
        };
        let rd = match std::fs::read_dir(&resolved) {
            Ok(rd) => rd,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", resolved.display()),
                ))
            }
        };
        let mut entries: Vec<String> = Vec::new();
        for e in rd {
            let e = e?;
            match e.file_name().into_string() {
                Ok(s) => entries.push(s),
                Err(os) => out.skipped.push(Skipped {
                    path: resolved.join(&os),
                    reason: "file name is not UTF-8".into(),
                }),
            }
        }
        entries.sort();
        for fname in entries {
            let entry_path = resolved.join(&fname);
            let rel = Path::new(dir).join(&fname);
            // Follow symlinks, but only inside the root.
            let fd = match root.open_in(&rel, true) {
                Ok(fd) => fd,
                // A transient answer (racing renames even after retries) is
                // no verdict on the image: fail the command rather than
                // drop the image, which would make a refresh unmerge it.
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("resolving {}: {e}; try again", entry_path.display()),
                    ))
                }
                Err(e) => {
                    let is_link = std::fs::symlink_metadata(&entry_path)
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(false);
                    if is_link {
                        out.skipped.push(Skipped {
                            path: entry_path,
                            reason: format!("symlink does not resolve inside the root: {e}"),
                        });
                    }
                    continue;
                }
            };
            let target = fd_path(&fd).unwrap_or_else(|_| entry_path.clone());
            let md = match std::fs::metadata(&target) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let ft = md.file_type();
            let (kind, name) = if ft.is_file() {
                match fname.strip_suffix(".raw") {
                    Some(stem) => (EntryKind::Raw, stem.to_string()),
                    None => continue,
                }
            } else if ft.is_dir() {
                (EntryKind::Directory, fname.clone())
            } else if ft.is_block_device() {
                (EntryKind::Block, fname.clone())
            } else {
                continue;
            };
            let Ok(name) = ImageName::new(name) else {
                out.skipped.push(Skipped {
                    path: entry_path,
                    reason: "not a valid image name".into(),
                });
                continue;
            };
            if !seen.insert(name.clone()) {
                continue; // A higher-precedence directory already has it.
            }
            if kind == EntryKind::Directory && crate::root::dir_is_empty(&target).unwrap_or(false) {
                out.masked.push(Masked {
                    name,
                    path: entry_path,
                });
                continue;
            }
            let (mtime, mtime_ns) = mtime_of(&md);
            let mut sidecars = Sidecars::default();
            if kind == EntryKind::Raw {
                sidecars = Sidecars::find(&entry_path);
                if sidecars.is_empty() && target != entry_path {
                    sidecars = Sidecars::find(&target);
                }
            }
            let time = match kind {
                EntryKind::Raw => mtime,
                EntryKind::Directory => btime_of(&target),
                EntryKind::Block => None,
            };
            out.images.push(Image {
                name,
                kind,
                path: entry_path,
                target,
                search_dir: dir,
                mtime: time,
                identity: (md.dev(), md.ino(), md.size(), mtime_ns),
                sidecars,
            });
        }
    }
    out.images.sort_by(|a, b| a.name.cmp(&b.name));
    out.masked.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Discovers images in the standard search directories under `root`.
pub fn discover(root: &Root) -> io::Result<Discovery> {
    discover_in(root, &SEARCH_DIRS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magic() {
        let mut h = vec![0u8; 8192];
        assert_eq!(Format::detect(&h), Format::Unknown);
        h[..4].copy_from_slice(b"hsqs");
        assert_eq!(Format::detect(&h), Format::Squashfs);
        let mut h = vec![0u8; 8192];
        h[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        assert_eq!(Format::detect(&h), Format::Erofs);
        let mut h = vec![0u8; 8192];
        h[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(Format::detect(&h), Format::Gpt);
        assert_eq!(Format::detect(b"hs"), Format::Unknown);
    }

    #[test]
    fn precedence_masking_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in [
            "etc/extensions",
            "run/extensions",
            "var/lib/extensions",
            "opt/store",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        // b: in /var/lib and /run; /run wins.
        std::fs::write(r.join("var/lib/extensions/b.raw"), b"x").unwrap();
        std::fs::write(r.join("run/extensions/b.raw"), b"y").unwrap();
        // c: masked in /etc by an empty directory.
        std::fs::create_dir(r.join("etc/extensions/c")).unwrap();
        std::fs::write(r.join("var/lib/extensions/c.raw"), b"z").unwrap();
        // a: symlink with an absolute target, resolved inside the root.
        std::fs::write(r.join("opt/store/a-1.raw"), b"a").unwrap();
        std::fs::write(r.join("opt/store/a-1.roothash"), b"00").unwrap();
        std::os::unix::fs::symlink("/opt/store/a-1.raw", r.join("etc/extensions/a.raw")).unwrap();
        // d: a directory image; e: not .raw, ignored.
        std::fs::create_dir_all(r.join("var/lib/extensions/d/usr")).unwrap();
        std::fs::write(r.join("var/lib/extensions/e.img"), b"").unwrap();
        // escaping symlink: clamped to ROOT/etc/shadow, which is absent.
        std::os::unix::fs::symlink("../../../../../etc/shadow", r.join("etc/extensions/x.raw"))
            .unwrap();

        let root = Root::open(r).unwrap();
        let d = discover(&root).unwrap();
        let names: Vec<&str> = d.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
        let canon = std::fs::canonicalize(r).unwrap();
        assert_eq!(d.images[0].target, canon.join("opt/store/a-1.raw"));
        assert_eq!(
            d.images[0].sidecars.roothash,
            Some(canon.join("opt/store/a-1.roothash"))
        );
        assert_eq!(d.images[1].path, canon.join("run/extensions/b.raw"));
        assert_eq!(d.images[2].kind, EntryKind::Directory);
        assert_eq!(d.masked.len(), 1);
        assert_eq!(d.masked[0].name.as_str(), "c");
        assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
    }
}
