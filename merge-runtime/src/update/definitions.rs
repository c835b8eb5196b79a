//! Finding and reading the transfer definitions of a component, as
//! systemd-sysupdate does: `sysupdate.NAME.d/` under `/etc`, `/run`,
//! `/usr/local/lib` and `/usr/lib` (inside `--root`), a file in an earlier
//! directory overriding one of the same name in a later one, an empty file
//! or a symlink to `/dev/null` masking it. `*.transfer` files are read; only
//! when a component has none are `*.conf` files read (systemd ≤ 256's
//! suffix), with a warning. `--definitions DIR` reads only DIR — looked up
//! inside `--root`, as systemd 257 does.
//!
//! Then each transfer is made concrete for this node: `%` specifiers are
//! expanded (architecture, os-release fields of the root, machine ID, …),
//! and what `sysext update` does not handle is refused with a clear
//! message (only `url-file` sources into `regular-file` targets, which is
//! what a sysext feed publishes).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use sysupdate::specifier::SpecifierContext;
use sysupdate::transfer::{SourceType, TargetType};
use sysupdate::{Arch, MatchPattern, Transfer, Version};

use crate::root::Root;

/// The directories holding `sysupdate.NAME.d/`, highest priority first.
pub const DEFINITION_DIRS: [&str; 4] = ["/etc", "/run", "/usr/local/lib", "/usr/lib"];

/// The default `InstancesMax=` (systemd's).
pub const DEFAULT_INSTANCES_MAX: u64 = 2;

/// Why a component's definitions cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid component name {0:?}: use the NAME of /etc/sysupdate.NAME.d (no '/', not starting with '.')")]
    BadName(String),
    #[error(
        "no transfer definitions for component {name}: looked for *.transfer and *.conf in {dirs}"
    )]
    NotFound { name: String, dirs: String },
    #[error(transparent)]
    Transfer(#[from] sysupdate::transfer::TransferError),
    #[error("{file}: {msg}")]
    Invalid { file: PathBuf, msg: String },
}

/// A transfer made concrete for this node.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The definition file (under the root).
    pub file: PathBuf,
    /// `Verify=` (default yes).
    pub verify: bool,
    /// The source directory URL (`Path=` of `[Source]`).
    pub source_url: String,
    pub source_patterns: Vec<MatchPattern>,
    /// `Path=` of `[Target]`, absolute inside the root.
    pub target_path: String,
    pub target_patterns: Vec<MatchPattern>,
    /// `CurrentSymlink=`, absolute inside the root.
    pub current_symlink: Option<String>,
    pub instances_max: u64,
    /// Mode of installed files.
    pub mode: u32,
    pub min_version: Option<Version>,
    /// `ProtectVersion=`, expanded.
    pub protect_versions: Vec<String>,
}

/// A component: its name and transfers.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub transfers: Vec<Resolved>,
    /// Things worth saying (e.g. `.conf` files used).
    pub warnings: Vec<String>,
}

/// Validates a component name.
pub fn check_name(name: &str) -> Result<(), DefinitionError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.contains('/')
        && !name.starts_with('.')
        && !name.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(DefinitionError::BadName(name.to_string()))
    }
}

/// Every component with a `sysupdate.NAME.d/` directory under the root,
/// sorted.
pub fn component_names(root: &Root) -> Result<Vec<String>, DefinitionError> {
    let mut names = std::collections::BTreeSet::new();
    for d in DEFINITION_DIRS {
        let dir = match root.resolve(d) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DefinitionError::Io {
                    path: root.join(d),
                    source,
                })
            }
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DefinitionError::Io { path: dir, source }),
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = n
                .strip_prefix("sysupdate.")
                .and_then(|r| r.strip_suffix(".d"))
            {
                if check_name(name).is_ok() && e.path().is_dir() {
                    names.insert(name.to_string());
                }
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// Masked: an empty file or a symlink to /dev/null.
fn is_masked(p: &Path) -> bool {
    if let Ok(t) = std::fs::read_link(p) {
        if t == Path::new("/dev/null") {
            return true;
        }
    }
    std::fs::metadata(p).map(|m| m.len() == 0).unwrap_or(false)
}

/// The definition files of a component: (file name → path), per suffix.
fn collect(
    root: &Root,
    dirs: &[String],
) -> Result<[BTreeMap<String, PathBuf>; 2], DefinitionError> {
    let mut by_suffix: [BTreeMap<String, PathBuf>; 2] = Default::default();
    for d in dirs {
        let dir = match root.resolve(d) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(DefinitionError::Io {
                    path: root.join(d),
                    source,
                })
            }
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DefinitionError::Io { path: dir, source }),
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') {
                continue;
            }
            let idx = if n.ends_with(".transfer") {
                0
            } else if n.ends_with(".conf") {
                1
            } else {
                continue;
            };
            // Earlier directories win.
            by_suffix[idx].entry(n).or_insert_with(|| e.path());
        }
    }
    Ok(by_suffix)
}

/// The values `%` specifiers expand to on this node.
pub fn specifier_context(root: &Root) -> SpecifierContext {
    let mut ctx = match Arch::native() {
        Some(a) => SpecifierContext::for_arch(a),
        None => SpecifierContext::default(),
    };
    let os = ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| root.resolve(p).ok())
        .and_then(|p| crate::osrelease::read(&p).ok());
    if let Some(os) = os {
        for (c, key) in [
            ('o', "ID"),
            ('w', "VERSION_ID"),
            ('W', "VARIANT_ID"),
            ('B', "BUILD_ID"),
            ('M', "IMAGE_ID"),
            ('A', "IMAGE_VERSION"),
        ] {
            if let Some(v) = os.get_nonempty(key) {
                ctx.values.insert(c, v.to_string());
            }
        }
    }
    let read_trim = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(m) = root.resolve("etc/machine-id").ok().and_then(read_trim) {
        ctx.values.insert('m', m);
    }
    if let Some(b) = read_trim(PathBuf::from("/proc/sys/kernel/random/boot_id")) {
        ctx.values.insert('b', b.replace('-', ""));
    }
    let uts = rustix::system::uname();
    let host = uts.nodename().to_string_lossy().into_owned();
    ctx.values
        .insert('l', host.split('.').next().unwrap_or(&host).to_string());
    ctx.values.insert('H', host);
    ctx.values
        .insert('v', uts.release().to_string_lossy().into_owned());
    ctx.values.insert('T', "/tmp".into());
    ctx.values.insert('V', "/var/tmp".into());
    ctx
}

/// Reads the definitions of component `name`: from `definitions` (a
/// directory inside the root) when given, else from the standard places.
pub fn load(
    root: &Root,
    name: &str,
    definitions: Option<&Path>,
    ctx: &SpecifierContext,
) -> Result<Component, DefinitionError> {
    check_name(name)?;
    let dirs: Vec<String> = match definitions {
        Some(d) => vec![d.to_string_lossy().into_owned()],
        None => DEFINITION_DIRS
            .iter()
            .map(|d| format!("{d}/sysupdate.{name}.d"))
            .collect(),
    };
    let [transfers, confs] = collect(root, &dirs)?;
    let mut warnings = Vec::new();
    let files = if !transfers.is_empty() {
        transfers
    } else {
        if !confs.is_empty() {
            warnings.push(format!(
                "component {name}: reading *.conf transfer files; systemd ≥ 257 reads *.transfer (the feed publishes both: install the .transfer file)"
            ));
        }
        confs
    };
    let files: Vec<PathBuf> = files.into_values().filter(|p| !is_masked(p)).collect();
    if files.is_empty() {
        return Err(DefinitionError::NotFound {
            name: name.to_string(),
            dirs: dirs
                .iter()
                .map(|d| root.join(d).display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut out = Vec::new();
    for f in files {
        let t = Transfer::read(&f)?;
        out.push(resolve(&f, &t, ctx)?);
    }
    Ok(Component {
        name: name.to_string(),
        transfers: out,
        warnings,
    })
}

/// Makes one parsed transfer concrete, refusing what we do not handle.
pub fn resolve(
    file: &Path,
    t: &Transfer,
    ctx: &SpecifierContext,
) -> Result<Resolved, DefinitionError> {
    let invalid = |msg: String| DefinitionError::Invalid {
        file: file.to_path_buf(),
        msg,
    };
    t.validate().map_err(invalid)?;
    if t.source.kind != SourceType::UrlFile {
        return Err(invalid(format!(
            "[Source] Type={}: sysext update handles url-file sources (what a sysext feed publishes); use systemd-sysupdate for this transfer",
            t.source.kind
        )));
    }
    if !matches!(t.target.kind, None | Some(TargetType::RegularFile)) {
        return Err(invalid(format!(
            "[Target] Type={}: sysext update installs regular-file targets only",
            t.target.kind.map(|k| k.as_str()).unwrap_or("?")
        )));
    }
    if t.target
        .path_relative_to
        .is_some_and(|r| r != sysupdate::transfer::PathRelativeTo::Root)
    {
        return Err(invalid(
            "[Target] PathRelativeTo= other than root is not supported by sysext update".into(),
        ));
    }
    let expand = |key: &str, v: &str| {
        sysupdate::specifier::expand(v, ctx).map_err(|e| invalid(format!("{key}: {e}")))
    };
    let source_url = expand("[Source] Path=", &t.source.path)?;
    let target_path = expand("[Target] Path=", &t.target.path)?;
    if target_path == "auto" || !target_path.starts_with('/') {
        return Err(invalid(format!(
            "[Target] Path={target_path}: must be an absolute directory (Path=auto is for partitions)"
        )));
    }
    let pats = |list: &[sysupdate::PatternTemplate], key: &str| {
        list.iter()
            .map(|p| {
                p.resolve(ctx)
                    .map_err(|e| invalid(format!("{key} MatchPattern={p}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let source_patterns = pats(&t.source.patterns, "[Source]")?;
    let target_patterns = pats(t.effective_target_patterns(), "[Target]")?;
    for p in &target_patterns {
        if p.as_str().contains('/') {
            return Err(invalid(format!(
                "[Target] MatchPattern={}: a regular-file target pattern must be a plain file name",
                p.as_str()
            )));
        }
    }
    let current_symlink = match &t.target.current_symlink {
        Some(l) => {
            let l = expand("CurrentSymlink=", l)?;
            // A relative CurrentSymlink= is relative to the target directory.
            let abs = if l.starts_with('/') {
                l
            } else {
                format!("{}/{l}", target_path.trim_end_matches('/'))
            };
            if abs.split('/').any(|c| c == "..") {
                return Err(invalid(format!(
                    "CurrentSymlink={abs}: must not contain .."
                )));
            }
            Some(abs)
        }
        None => None,
    };
    let mut mode = t.target.mode.unwrap_or(0o444);
    if t.target.read_only.unwrap_or(false) {
        mode &= !0o222;
    }
    let protect_versions = t
        .transfer
        .protect_versions
        .iter()
        .map(|v| expand("ProtectVersion=", v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Resolved {
        file: file.to_path_buf(),
        verify: t.transfer.verify.unwrap_or(true),
        source_url,
        source_patterns,
        target_path,
        target_patterns,
        current_symlink,
        instances_max: t
            .target
            .instances_max
            .unwrap_or(DEFAULT_INSTANCES_MAX)
            .max(2),
        mode,
        min_version: t.transfer.min_version.clone(),
        protect_versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "[Source]\nType=url-file\nPath=http://127.0.0.1:1/k/\nMatchPattern=k-@v-%a.raw\n\
                     [Target]\nType=regular-file\nPath=/opt/extensions/k\nCurrentSymlink=/etc/extensions/k.raw\n";

    #[test]
    fn precedence_masking_and_suffixes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("usr/lib/sysupdate.k.d/k.conf", T);
        w("etc/os-release", "ID=test\n");
        let root = Root::open(r).unwrap();
        let ctx = specifier_context(&root);
        assert_eq!(component_names(&root).unwrap(), ["k"]);
        let c = load(&root, "k", None, &ctx).unwrap();
        assert_eq!(c.transfers.len(), 1);
        assert!(c.warnings[0].contains(".conf"), "{:?}", c.warnings);
        // A .transfer anywhere wins over .conf files.
        w(
            "usr/lib/sysupdate.k.d/k.transfer",
            &T.replace("/k/", "/lib/"),
        );
        w("etc/sysupdate.k.d/k.transfer", &T.replace("/k/", "/etc/"));
        let c = load(&root, "k", None, &ctx).unwrap();
        assert!(c.warnings.is_empty());
        assert_eq!(c.transfers.len(), 1);
        assert_eq!(c.transfers[0].source_url, "http://127.0.0.1:1/etc/");
        let arch = Arch::native().unwrap();
        assert_eq!(
            c.transfers[0].source_patterns[0].as_str(),
            format!("k-@v-{arch}.raw")
        );
        assert_eq!(c.transfers[0].mode, 0o444);
        assert_eq!(c.transfers[0].instances_max, 2);
        // Masked by an empty file in /etc: the /usr/lib one is hidden too.
        w("etc/sysupdate.k.d/k.transfer", "");
        let e = load(&root, "k", None, &ctx).unwrap_err().to_string();
        assert!(e.contains("no transfer definitions for component k"), "{e}");
        assert!(load(&root, "../x", None, &ctx).is_err());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let ctx = SpecifierContext::for_arch(Arch::X86_64);
        let f = Path::new("/etc/sysupdate.k.d/k.transfer");
        let t = Transfer::parse(
            &T.replace("Type=url-file", "Type=url-tar")
                .replace("Type=regular-file", "Type=directory"),
            f,
        )
        .unwrap();
        let e = resolve(f, &t, &ctx).unwrap_err().to_string();
        assert!(
            e.contains("url-tar") && e.contains("systemd-sysupdate"),
            "{e}"
        );
        let t = Transfer::parse(
            &T.replace("MatchPattern=k-@v-%a.raw", "MatchPattern=k-@v-%w.raw"),
            f,
        )
        .unwrap();
        let e = resolve(f, &t, &ctx).unwrap_err().to_string();
        assert!(e.contains("k.transfer") && e.contains("%w"), "{e}");
    }
}
