//! The node side of a transfer: the target directory with its installed
//! instances, hidden partial files, the `CurrentSymlink=` and its atomic
//! flip, vacuuming to `InstancesMax=`, and checking a downloaded image
//! under the node's verification policy before it may become current.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use signing::verity::ByteRange;
use sysupdate::candidates::Candidate;
use sysupdate::Version;

use super::definitions::Resolved;
use crate::discover::Sidecars;
use crate::root::{self, Root};
use crate::runtime::{self, Options};
use crate::verify::{self, Policy, TrustDecision};

/// Prefix of our hidden temporary files (skipped by discovery and by
/// systemd, which ignores names starting with `.#`).
pub const TEMP_PREFIX: &str = ".#sysext-";

/// An installed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub version: Version,
    pub name: String,
    pub path: PathBuf,
}

/// A `CurrentSymlink=`.
#[derive(Debug, Clone)]
pub struct Link {
    /// As configured (absolute inside the root).
    pub path: String,
    /// Its location on this system (parent resolved inside the root).
    pub host: PathBuf,
}

/// A transfer's target on this node.
#[derive(Debug, Clone)]
pub struct Target {
    pub transfer: Resolved,
    /// The target directory on this system (resolved inside the root; may
    /// not exist yet).
    pub dir: PathBuf,
    pub link: Option<Link>,
}

fn with_path(p: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

impl Target {
    pub fn open(root: &Root, t: &Resolved) -> io::Result<Target> {
        let dir = root
            .resolve_nonexistent(&t.target_path)
            .map_err(with_path(&root.join(&t.target_path)))?;
        let link = match &t.current_symlink {
            Some(l) => {
                let rel = Path::new(l);
                let name = rel.file_name().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("CurrentSymlink={l} has no file name"),
                    )
                })?;
                let parent = rel.parent().unwrap_or(Path::new("/"));
                let host_parent = root
                    .resolve_nonexistent(parent)
                    .map_err(with_path(&root.join(parent)))?;
                Some(Link {
                    path: l.clone(),
                    host: host_parent.join(name),
                })
            }
            None => None,
        };
        Ok(Target {
            transfer: t.clone(),
            dir,
            link,
        })
    }

    /// Creates the target directory.
    pub fn ensure_dir(&self) -> io::Result<()> {
        root::mkdir_p(&self.dir, 0o755).map_err(with_path(&self.dir))
    }

    /// The version a file name in the target directory stands for.
    pub fn version_of(&self, name: &str) -> Option<Version> {
        if name.starts_with('.') {
            return None;
        }
        self.transfer
            .target_patterns
            .iter()
            .find_map(|p| p.matches(name))
            .and_then(|c| c.version)
    }

    /// Installed instances (files matching a target pattern), newest first.
    pub fn instances(&self) -> io::Result<Vec<Instance>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(with_path(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(with_path(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(version) = self.version_of(&name) else {
                continue;
            };
            if !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            out.push(Instance {
                version,
                name,
                path: e.path(),
            });
        }
        out.sort_by(|a, b| b.version.cmp(&a.version));
        Ok(out)
    }

    /// The file name `c` is installed as (the first target pattern filled
    /// with what the source pattern captured).
    pub fn final_name(&self, c: &Candidate) -> Result<String, String> {
        let p = self
            .transfer
            .target_patterns
            .first()
            .ok_or("the transfer has no target MatchPattern=")?;
        let name = p.render(&c.captures).map_err(|e| {
            format!(
                "{}: cannot name the installed file: {e}",
                self.transfer.file.display()
            )
        })?;
        if name.contains('/') || name.starts_with('.') || name == ".." {
            return Err(format!(
                "target file name {name:?} is not a plain file name"
            ));
        }
        Ok(name)
    }

    /// The hidden partial file for `final_name`.
    pub fn partial_path(&self, final_name: &str) -> PathBuf {
        self.dir.join(format!("{TEMP_PREFIX}{final_name}.partial"))
    }

    /// The installed instance the current symlink points at (resolved
    /// inside the root), if it is one of ours.
    pub fn current(&self, root: &Root) -> Option<Instance> {
        let link = self.link.as_ref()?;
        let p = root.resolve(&link.path).ok()?;
        let dir = std::fs::canonicalize(&self.dir).ok()?;
        if p.parent()? != dir {
            return None;
        }
        let name = p.file_name()?.to_string_lossy().into_owned();
        let version = self.version_of(&name)?;
        Some(Instance {
            version,
            name,
            path: p,
        })
    }

    /// Removes instances until at most `keep` remain, never one in
    /// `protected` (paths) or whose version is `ProtectVersion=`; failed
    /// versions go first, then the oldest. Also removes stale partial files
    /// other than `keep_partial`. Returns what was removed.
    pub fn vacuum(
        &self,
        keep: u64,
        protected: &[PathBuf],
        failed: &dyn Fn(&Version) -> bool,
        keep_partial: Option<&Path>,
    ) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(TEMP_PREFIX)
                    && n.ends_with(".partial")
                    && Some(e.path().as_path()) != keep_partial
                {
                    std::fs::remove_file(e.path()).map_err(with_path(&e.path()))?;
                    removed.push(e.path());
                }
            }
        }
        let all = self.instances()?;
        let is_protected = |i: &Instance| {
            protected.iter().any(|p| p == &i.path)
                || self
                    .transfer
                    .protect_versions
                    .iter()
                    .any(|v| Version::new(v.as_str()).is_ok_and(|v| v.uapi_eq(&i.version)))
        };
        let mut removable: Vec<&Instance> = all.iter().filter(|i| !is_protected(i)).collect();
        // Failed first, then oldest first.
        removable.sort_by(|a, b| {
            failed(&b.version)
                .cmp(&failed(&a.version))
                .then_with(|| a.version.cmp(&b.version))
        });
        let mut count = all.len() as u64;
        for i in removable {
            if count <= keep {
                break;
            }
            std::fs::remove_file(&i.path).map_err(with_path(&i.path))?;
            removed.push(i.path.clone());
            count -= 1;
        }
        if !removed.is_empty() {
            super::fsync_dir(&self.dir).map_err(with_path(&self.dir))?;
        }
        Ok(removed)
    }
}

/// The `CurrentSymlink=` among `targets` configured as `path`.
pub fn find_link<'a>(targets: &'a [Target], path: &str) -> Option<&'a Link> {
    targets
        .iter()
        .filter_map(|t| t.link.as_ref())
        .find(|l| l.path == path)
}

impl Link {
    /// The link's text; `None` when it does not exist. An existing entry
    /// that is not a symlink is an error (we never replace real files).
    pub fn read(&self) -> io::Result<Option<String>> {
        match std::fs::symlink_metadata(&self.host) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = std::fs::read_link(&self.host).map_err(with_path(&self.host))?;
                Ok(Some(t.to_string_lossy().into_owned()))
            }
            Ok(_) => Err(io::Error::other(format!(
                "{} (CurrentSymlink=) exists and is not a symlink; move it away so that sysext update can manage it",
                self.host.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(with_path(&self.host)(e)),
        }
    }

    /// The text that makes the link point at `file` (a path on this
    /// system under the same root): relative, like systemd-sysupdate's.
    pub fn text_for(&self, file: &Path) -> io::Result<String> {
        let dir = self.host.parent().unwrap_or(Path::new("/"));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        Ok(relative_path(&dir, file).to_string_lossy().into_owned())
    }

    /// Sets (or, with `None`, removes) the link atomically: a new symlink
    /// under a temporary name, renamed over the old one, then the
    /// directory is fsynced.
    pub fn set(&self, text: Option<&str>) -> io::Result<()> {
        let dir = self.host.parent().unwrap_or(Path::new("/"));
        match text {
            Some(t) => {
                root::mkdir_p(dir, 0o755).map_err(with_path(dir))?;
                let mut tmp_name = OsString::from(TEMP_PREFIX);
                tmp_name.push(self.host.file_name().unwrap_or_default());
                tmp_name.push(".link");
                let tmp = dir.join(tmp_name);
                match std::fs::remove_file(&tmp) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(with_path(&tmp)(e)),
                }
                std::os::unix::fs::symlink(t, &tmp).map_err(with_path(&tmp))?;
                std::fs::rename(&tmp, &self.host).map_err(with_path(&self.host))?;
            }
            None => match std::fs::remove_file(&self.host) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(with_path(&self.host)(e)),
            },
        }
        super::fsync_dir(dir).map_err(with_path(dir))
    }

    /// Where a link text (relative to the link's directory, or absolute
    /// inside the root, as Ignition writes it) leads on this system.
    pub fn resolve_text(&self, root: &Root, text: &str) -> Option<PathBuf> {
        if text.starts_with('/') {
            root.resolve(text).ok()
        } else {
            let dir = self.host.parent()?;
            let p = std::fs::canonicalize(dir.join(text)).ok()?;
            p.starts_with(root.path()).then_some(p)
        }
    }

    /// The extension name the runtime will see for this link
    /// (`/etc/extensions/NAME.raw` → `NAME`).
    pub fn extension_name(&self) -> String {
        let n = self
            .host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        n.strip_suffix(".raw").map(str::to_string).unwrap_or(n)
    }
}

/// `to` relative to the directory `from` (both absolute and normalised).
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Sets the mode of an installed file.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(with_path(path))
}

/// What the pre-activation check found.
#[derive(Debug, Clone)]
pub struct ImageCheck {
    pub policy: Policy,
    pub decision: TrustDecision,
    pub root_hash: Option<String>,
    /// Data bytes hashed against the root hash.
    pub verified_bytes: u64,
}

/// Why the pre-activation check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageCheckError {
    /// The image itself is refused: the policy (unsigned under `signed`,
    /// no verity data under `verity`), its root-hash signature (untrusted
    /// or invalid), its format or its data blocks. Its sha256 matched the
    /// signed manifest, so downloading it again gives the same refusal.
    Refused(String),
    /// The check could not be made (the root or the node's policy file).
    Setup(String),
}

impl std::fmt::Display for ImageCheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageCheckError::Refused(r) | ImageCheckError::Setup(r) => f.write_str(r),
        }
    }
}

/// Checks an image file under the node's policy exactly as a merge
/// would, before it may become current: the policy (`signed`, `verity`,
/// `any`), the root-hash signature against `verity.d` under the root, and
/// every data block against the root hash, in user space. `sidecars` are
/// the bare-image sidecars being installed with it, if any.
pub fn verify_image(
    opts: &Options,
    image: &Path,
    sidecars: &Sidecars,
) -> Result<ImageCheck, ImageCheckError> {
    let root = Root::open(&opts.root).map_err(|e| {
        ImageCheckError::Setup(format!("opening root {}: {e}", opts.root.display()))
    })?;
    let policy = verify::load_policy(&root, opts.policy)
        .map_err(|e| ImageCheckError::Setup(e.to_string()))?;
    let refused = |e: String| ImageCheckError::Refused(e);
    let opened =
        runtime::open_image(image, sidecars, false).map_err(|e| refused(crate::chain::text(&e)))?;
    let what = image.display().to_string();
    let decision = verify::decide(policy.policy, opened.material.as_ref(), &what, || {
        signing::pkcs7::TrustedCerts::from_verity_d(root.path())
    })
    .map_err(|e| refused(e.to_string()))?;
    let mut verified_bytes = 0;
    let mut root_hash = None;
    if let Some(m) = &opened.material {
        let data = ByteRange::new(opened.data.offset, opened.data.size_limit);
        verify::verify_data(&opened.file, data, m).map_err(|e| match e {
            // Reading failed: not the image's fault.
            verify::VerifyError::Io { .. } => ImageCheckError::Setup(e.to_string()),
            e => refused(e.to_string()),
        })?;
        verified_bytes = data.len;
        root_hash = Some(m.root_hash.to_hex());
    }
    Ok(ImageCheck {
        policy: policy.policy,
        decision,
        root_hash,
        verified_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links() {
        assert_eq!(
            relative_path(
                Path::new("/r/etc/extensions"),
                Path::new("/r/opt/extensions/k/k-1.raw")
            ),
            Path::new("../../opt/extensions/k/k-1.raw")
        );
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/a/b")),
            Path::new("b")
        );
    }

    #[test]
    fn link_flip_and_vacuum() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("etc-os"), "").unwrap();
        let root = Root::open(t.path()).unwrap();
        let ctx = sysupdate::specifier::SpecifierContext::for_arch(sysupdate::Arch::X86_64);
        let tr = sysupdate::Transfer::parse(
            "[Source]\nType=url-file\nPath=http://h/k/\nMatchPattern=k-@v-%a.raw\n\
             [Target]\nPath=/opt/extensions/k\nCurrentSymlink=/etc/extensions/k.raw\nInstancesMax=3\n",
            Path::new("k.transfer"),
        )
        .unwrap();
        let r = super::super::definitions::resolve(Path::new("k.transfer"), &tr, &ctx).unwrap();
        let target = Target::open(&root, &r).unwrap();
        target.ensure_dir().unwrap();
        for v in ["1", "2", "3", "10"] {
            std::fs::write(target.dir.join(format!("k-{v}-x86-64.raw")), v).unwrap();
        }
        std::fs::write(target.dir.join(".#sysext-k-11-x86-64.raw.partial"), "x").unwrap();
        std::fs::write(target.dir.join("unrelated"), "x").unwrap();
        let link = target.link.as_ref().unwrap();
        assert_eq!(link.read().unwrap(), None);
        let text = link.text_for(&target.dir.join("k-1-x86-64.raw")).unwrap();
        assert_eq!(text, "../../opt/extensions/k/k-1-x86-64.raw");
        link.set(Some(&text)).unwrap();
        assert_eq!(link.read().unwrap().as_deref(), Some(text.as_str()));
        let cur = target.current(&root).unwrap();
        assert_eq!(cur.version.as_str(), "1");
        assert_eq!(link.extension_name(), "k");
        // Keep 2: current (1) is protected, "2" is failed so it goes first,
        // then the oldest unprotected (3); 10 stays.
        let failed = |v: &Version| v.as_str() == "2";
        let removed = target
            .vacuum(2, std::slice::from_ref(&cur.path), &failed, None)
            .unwrap();
        let names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".#sysext-k-11-x86-64.raw.partial",
                "k-2-x86-64.raw",
                "k-3-x86-64.raw"
            ]
        );
        let left: Vec<String> = target
            .instances()
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(left, ["k-10-x86-64.raw", "k-1-x86-64.raw"]);
        link.set(None).unwrap();
        assert_eq!(link.read().unwrap(), None);
        // A real file where the link should be is never replaced.
        std::fs::write(&link.host, "x").unwrap();
        assert!(link
            .read()
            .unwrap_err()
            .to_string()
            .contains("not a symlink"));
    }
}
