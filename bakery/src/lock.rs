//! Lock files: the exact inputs of a recipe (or of one of its streams) —
//! every input's URL and sha256 per architecture, and the versions they
//! belong to — so that a locked build downloads exactly those bytes and
//! asks upstream nothing.
//!
//! This module owns the lock format, reading it (errors name the file,
//! line and key), writing it (deterministic text, temp file in the same
//! directory, fsync, rename), and matching it against a recipe's plan: a
//! lock whose URLs no longer match the recipe is stale, and the error says
//! to run `bakery lock` again.
//!
//! `recipes/NAME/bakery.lock` locks the recipe; `recipes/NAME/NAME-STREAM.lock`
//! locks one stream (`kubernetes-v1.30.lock`).
//!
//! ```toml
//! lock-format = 1
//! recipe = "kubernetes"
//! stream = "v1.30"
//! version = "v1.30.4"
//!
//! [secondary]
//! cni = "v1.5.1"
//!
//! [[input]]
//! source = "kubelet"
//! arch = "x86-64"
//! version = "v1.30.4"
//! url = "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubelet"
//! sha256 = "…"
//! checked = "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubelet.sha256"
//! ```
//!
//! `checked` says where the digest came from at lock time: the checksum
//! file's URL, or `pinned` when upstream publishes no checksum and the
//! digest is that of the bytes downloaded by `bakery lock`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sysupdate::{Arch, Sha256Digest, Version};
use toml::Spanned;

use crate::recipe::ExtensionName;
use crate::source::{PlannedInput, Versions};
use crate::versions::Stream;

/// The lock format this bakery reads and writes.
pub const LOCK_FORMAT: i64 = 1;
/// The lock file of a recipe without a stream.
pub const LOCK_FILE: &str = "bakery.lock";
/// What `checked` says for inputs whose upstream publishes no checksum.
pub const PINNED: &str = "pinned";

/// The lock file path of `name` (and `stream`) in `recipe_dir`.
pub fn lock_path(recipe_dir: &Path, name: &ExtensionName, stream: Option<&Stream>) -> PathBuf {
    match stream {
        None => recipe_dir.join(LOCK_FILE),
        Some(s) => recipe_dir.join(format!("{name}-{s}.lock")),
    }
}

/// Where a locked digest came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Read from this checksum file at lock time.
    ChecksumFile(String),
    /// Computed from the bytes `bakery lock` downloaded (no published
    /// checksum).
    Pinned,
}

impl Checked {
    fn as_text(&self) -> &str {
        match self {
            Checked::ChecksumFile(u) => u,
            Checked::Pinned => PINNED,
        }
    }
}

/// One pinned input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedInput {
    pub source: String,
    pub arch: Arch,
    pub version: Version,
    pub url: String,
    pub sha256: Sha256Digest,
    pub checked: Checked,
}

/// A parsed lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFile {
    pub recipe: ExtensionName,
    pub stream: Option<Stream>,
    pub versions: Versions,
    pub inputs: Vec<LockedInput>,
}

/// A lock file that cannot be read, or does not fit the recipe.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: cannot {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}{message}; fix the file or run `bakery lock {target}` to write it again", .path.display(), key = .key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
        target: String,
    },
    #[error(
        "{}: is stale: {message}; the recipe changed since it was written — run `bakery lock {target}` to refresh it",
        .path.display()
    )]
    Stale {
        path: PathBuf,
        message: String,
        target: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLock {
    lock_format: Spanned<i64>,
    recipe: Spanned<String>,
    stream: Option<Spanned<String>>,
    version: Spanned<String>,
    #[serde(default)]
    secondary: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    input: Vec<Spanned<RawInput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawInput {
    source: Spanned<String>,
    arch: Spanned<String>,
    version: Spanned<String>,
    url: Spanned<String>,
    sha256: Spanned<String>,
    checked: Spanned<String>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

impl LockFile {
    /// Reads a lock file; `Ok(None)` if it does not exist. `target` is the
    /// `bakery lock` argument that rewrites it (for messages).
    pub fn read(path: &Path, target: &str) -> Result<Option<LockFile>, LockError> {
        match std::fs::read_to_string(path) {
            Ok(text) => LockFile::parse(&text, path, target).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(LockError::Io {
                path: path.to_path_buf(),
                action: "read the lock file",
                err,
            }),
        }
    }

    /// Parses lock text (`path` and `target` are for messages).
    pub fn parse(text: &str, path: &Path, target: &str) -> Result<LockFile, LockError> {
        let invalid = |offset: usize, key: Option<&str>, message: String| {
            let (line, column) = line_col(text, offset);
            LockError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: key.map(str::to_string),
                message,
                target: target.to_string(),
            }
        };
        let raw: RawLock = toml::from_str(text).map_err(|e| {
            let off = e.span().map_or(0, |s| s.start);
            invalid(off, None, e.message().trim().to_string())
        })?;
        if *raw.lock_format.get_ref() != LOCK_FORMAT {
            return Err(invalid(
                raw.lock_format.span().start,
                Some("lock-format"),
                format!(
                    "format {} is not the one this bakery reads ({LOCK_FORMAT})",
                    raw.lock_format.get_ref()
                ),
            ));
        }
        let recipe = ExtensionName::new(raw.recipe.get_ref().clone())
            .map_err(|e| invalid(raw.recipe.span().start, Some("recipe"), e.to_string()))?;
        let stream = raw
            .stream
            .as_ref()
            .map(|s| {
                s.get_ref()
                    .parse::<Stream>()
                    .map_err(|e| invalid(s.span().start, Some("stream"), e.to_string()))
            })
            .transpose()?;
        let version = |v: &Spanned<String>, key: &str| {
            Version::new(v.get_ref().clone())
                .map_err(|e| invalid(v.span().start, Some(key), e.to_string()))
        };
        let main = version(&raw.version, "version")?;
        let mut secondary = BTreeMap::new();
        for (k, v) in &raw.secondary {
            secondary.insert(k.clone(), version(v, &format!("secondary.{k}"))?);
        }
        let mut inputs: Vec<LockedInput> = Vec::new();
        for (i, item) in raw.input.iter().enumerate() {
            let key = |k: &str| format!("input[{}].{k}", i + 1);
            let r = item.get_ref();
            let arch: Arch =
                r.arch
                    .get_ref()
                    .parse()
                    .map_err(|e: sysupdate::arch::UnknownArch| {
                        invalid(r.arch.span().start, Some(&key("arch")), e.to_string())
                    })?;
            let sha256: Sha256Digest = r.sha256.get_ref().parse().map_err(|_| {
                invalid(
                    r.sha256.span().start,
                    Some(&key("sha256")),
                    "not a sha256 digest (64 lowercase hex digits)".into(),
                )
            })?;
            crate::fetch::parse_url(r.url.get_ref())
                .map_err(|e| invalid(r.url.span().start, Some(&key("url")), e.to_string()))?;
            let checked = match r.checked.get_ref().as_str() {
                PINNED => Checked::Pinned,
                u => Checked::ChecksumFile(u.to_string()),
            };
            let input = LockedInput {
                source: r.source.get_ref().clone(),
                arch,
                version: version(&r.version, &key("version"))?,
                url: r.url.get_ref().clone(),
                sha256,
                checked,
            };
            if inputs
                .iter()
                .any(|o| o.source == input.source && o.arch == input.arch)
            {
                return Err(invalid(
                    item.span().start,
                    Some(&key("source")),
                    format!("{} for {} is locked twice", input.source, input.arch),
                ));
            }
            inputs.push(input);
        }
        Ok(LockFile {
            recipe,
            stream,
            versions: Versions { main, secondary },
            inputs,
        })
    }

    /// The lock text: deterministic for the same content.
    pub fn render(&self, target: &str) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# Written by `bakery lock {target}`: the exact inputs of {target}.\n\
             # `bakery build {target}` downloads these URLs, checks these sha256\n\
             # digests, and asks upstream nothing. Refresh: `bakery lock {target}`."
        );
        let _ = writeln!(t, "lock-format = {LOCK_FORMAT}");
        let _ = writeln!(t, "recipe = {}", q(self.recipe.as_str()));
        if let Some(s) = &self.stream {
            let _ = writeln!(t, "stream = {}", q(s.as_str()));
        }
        let _ = writeln!(t, "version = {}", q(self.versions.main.as_str()));
        if !self.versions.secondary.is_empty() {
            let _ = writeln!(t, "\n[secondary]");
            for (k, v) in &self.versions.secondary {
                let _ = writeln!(t, "{k} = {}", q(v.as_str()));
            }
        }
        for i in &self.inputs {
            let _ = writeln!(t, "\n[[input]]");
            let _ = writeln!(t, "source = {}", q(&i.source));
            let _ = writeln!(t, "arch = {}", q(i.arch.as_str()));
            let _ = writeln!(t, "version = {}", q(i.version.as_str()));
            let _ = writeln!(t, "url = {}", q(&i.url));
            let _ = writeln!(t, "sha256 = {}", q(&i.sha256.to_string()));
            let _ = writeln!(t, "checked = {}", q(i.checked.as_text()));
        }
        t
    }

    /// Writes the lock atomically (temp file in the same directory, fsync,
    /// rename, fsync of the directory).
    pub fn write(&self, path: &Path, target: &str) -> Result<(), LockError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |err| LockError::Io { path, action, err }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".bakery-lock.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io("create a temporary file beside the lock file"))?;
        tmp.write_all(self.render(target).as_bytes())
            .map_err(io("write the lock file"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io("set the lock file's mode"))?;
        }
        tmp.as_file()
            .sync_all()
            .map_err(io("fsync the lock file"))?;
        tmp.persist(path).map_err(|e| LockError::Io {
            path: path.to_path_buf(),
            action: "rename the lock file into place",
            err: e.error,
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the lock file's directory"))?;
        Ok(())
    }

    /// The locked entry for a planned input; an entry that is missing or
    /// whose URL or version differs makes the lock stale.
    pub fn pinned_for(
        &self,
        planned: &PlannedInput,
        path: &Path,
        target: &str,
    ) -> Result<&LockedInput, LockError> {
        let stale = |message: String| LockError::Stale {
            path: path.to_path_buf(),
            message,
            target: target.to_string(),
        };
        let entry = self
            .inputs
            .iter()
            .find(|i| i.source == planned.source && i.arch == planned.arch)
            .ok_or_else(|| {
                stale(format!(
                    "it has no input {:?} for {}",
                    planned.source, planned.arch
                ))
            })?;
        if entry.url != planned.url {
            return Err(stale(format!(
                "input {:?} for {} is locked at {}, but the recipe now says {}",
                planned.source, planned.arch, entry.url, planned.url
            )));
        }
        Ok(entry)
    }

    /// Checks the lock belongs to this recipe and stream.
    pub fn check_target(
        &self,
        name: &ExtensionName,
        stream: Option<&Stream>,
        path: &Path,
        target: &str,
    ) -> Result<(), LockError> {
        if &self.recipe != name || self.stream.as_ref() != stream {
            return Err(LockError::Stale {
                path: path.to_path_buf(),
                message: format!(
                    "it locks {}{}, not {target}",
                    self.recipe,
                    self.stream
                        .as_ref()
                        .map(|s| format!("-{s}"))
                        .unwrap_or_default()
                ),
                target: target.to_string(),
            });
        }
        if let Some(s) = stream {
            if !s.contains(&self.versions.main) {
                return Err(LockError::Stale {
                    path: path.to_path_buf(),
                    message: format!("its version {} is not in stream {s}", self.versions.main),
                    target: target.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LockFile {
        LockFile {
            recipe: ExtensionName::new("kubernetes").unwrap(),
            stream: Some("v1.30".parse().unwrap()),
            versions: Versions {
                main: Version::new("v1.30.4").unwrap(),
                secondary: [("cni".to_string(), Version::new("v1.5.1").unwrap())]
                    .into_iter()
                    .collect(),
            },
            inputs: vec![
                LockedInput {
                    source: "kubelet".into(),
                    arch: Arch::X86_64,
                    version: Version::new("v1.30.4").unwrap(),
                    url: "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubelet".into(),
                    sha256: Sha256Digest::from_bytes([7; 32]),
                    checked: Checked::ChecksumFile(
                        "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubelet.sha256".into(),
                    ),
                },
                LockedInput {
                    source: "docker".into(),
                    arch: Arch::Arm64,
                    version: Version::new("27.1.1").unwrap(),
                    url: "ftp://download.docker.com/x.tgz".into(),
                    sha256: Sha256Digest::from_bytes([9; 32]),
                    checked: Checked::Pinned,
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let l = sample();
        let text = l.render("kubernetes-v1.30");
        let back = LockFile::parse(&text, Path::new("x.lock"), "kubernetes-v1.30");
        // The second URL is not http(s): refused with its line.
        let e = back.unwrap_err().to_string();
        assert!(e.contains("x.lock:") && e.contains("input[2].url"), "{e}");
        let mut l = sample();
        l.inputs[1].url =
            "https://download.docker.com/linux/static/stable/aarch64/docker-27.1.1.tgz".into();
        let text = l.render("kubernetes-v1.30");
        let back = LockFile::parse(&text, Path::new("x.lock"), "kubernetes-v1.30").unwrap();
        assert_eq!(back, l);
        assert_eq!(back.render("kubernetes-v1.30"), text);
    }

    #[test]
    fn errors_name_line_and_key() {
        let mut l = sample();
        l.inputs.truncate(1);
        let text = l.render("k").replace(&"07".repeat(32), "xyz");
        let e = LockFile::parse(&text, Path::new("k.lock"), "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `input[1].sha256`"), "{e}");
        assert!(e.contains("run `bakery lock k`"), "{e}");
        let line = text.lines().position(|l| l.starts_with("sha256")).unwrap() + 1;
        assert!(e.starts_with(&format!("k.lock:{line}:")), "{e}");
        let e = LockFile::parse(
            "lock-format = 2\nrecipe = \"a\"\nversion = \"1\"\n",
            Path::new("k.lock"),
            "k",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("k.lock:1:15: key `lock-format`"), "{e}");
        let e = LockFile::parse(
            "lock-format = 1\nrecipe = \"a\"\nversion = \"1\"\nextra = 1\n",
            Path::new("k.lock"),
            "k",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("k.lock:4:1"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,50}(\n\\PC{0,50}){0,8}") {
            if let Err(LockError::Invalid { line, .. }) = LockFile::parse(&text, Path::new("x.lock"), "x") {
                proptest::prop_assert!(line >= 1 && line <= text.split('\n').count().max(1));
            }
        }
    }

    #[test]
    fn writes_atomically() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("bakery.lock");
        let mut l = sample();
        l.inputs.truncate(1);
        l.write(&p, "kubernetes-v1.30").unwrap();
        let back = LockFile::read(&p, "kubernetes-v1.30").unwrap().unwrap();
        assert_eq!(back, l);
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(LockFile::read(&t.path().join("none.lock"), "x")
            .unwrap()
            .is_none());
    }
}
