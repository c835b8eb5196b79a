//! Staging: assembles the image root of a recipe as a [`StagedTree`].
//!
//! This module owns what goes into an image and how it is normalised and
//! linted: the recipe's `files/` tree copied verbatim (never following
//! symlinks), the generated `Upholds=` drop-ins for `[units] start`, and the
//! generated `usr/lib/extension-release.d/extension-release.NAME`.
//!
//! Normalisation: owner 0:0 (implied by [`StagedTree`]), directories 0755,
//! files 0755 if any execute bit is set and 0644 otherwise (setuid, setgid
//! and sticky bits are dropped), every mtime = `SOURCE_DATE_EPOCH`, entries
//! sorted by name bytes. Hard links in `files/` become independent files.
//!
//! Lint (each an error naming the offending path): only `usr/` and `opt/` at
//! the top of `files/`; no `usr/sbin` (a symlink to `bin` on Flatcar); no
//! `usr/lib/os-release`; no files in `usr/lib/extension-release.d/` (bakery
//! writes that); no device nodes, FIFOs or sockets; no symlink whose relative
//! target climbs above the image root; every unit in `[units] start` exists
//! under `usr/lib/systemd/system/` (or `usr/local/lib/systemd/system/`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sysupdate::extension::{extension_release_path, ExtensionRelease};
use sysupdate::Arch;

use crate::recipe::{Location, Recipe, UnitName};
use crate::tree::{DirNode, EntryName, FileContent, FileNode, Node, StagedTree, SymlinkNode};

/// Mode of every directory in an image.
pub const DIR_MODE: u16 = 0o755;
/// Mode of executable files.
pub const EXEC_MODE: u16 = 0o755;
/// Mode of other files.
pub const FILE_MODE: u16 = 0o644;

/// Where unit files are looked up for `[units] start`, in image paths.
pub const UNIT_DIRS: [&str; 2] = ["usr/lib/systemd/system", "usr/local/lib/systemd/system"];

/// The time stamp given to every inode: seconds since 1970, from the
/// `SOURCE_DATE_EPOCH` environment variable (default 0). Squashfs stores
/// 32-bit times, so the range is 0..=4294967295.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceDateEpoch(u32);

/// A `SOURCE_DATE_EPOCH` value that is not whole seconds in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SOURCE_DATE_EPOCH={0:?}: expected whole seconds since 1970 (digits only, \
     at most 4294967295, e.g. the last commit's time: git log -1 --format=%ct), or unset it for 0"
)]
pub struct BadSourceDateEpoch(pub String);

impl SourceDateEpoch {
    pub const ENV: &'static str = "SOURCE_DATE_EPOCH";

    pub const fn new(seconds: u32) -> Self {
        SourceDateEpoch(seconds)
    }

    pub fn seconds(self) -> u32 {
        self.0
    }

    /// Reads `SOURCE_DATE_EPOCH`; unset or empty means 0.
    pub fn from_env() -> Result<Self, BadSourceDateEpoch> {
        match std::env::var_os(Self::ENV) {
            None => Ok(SourceDateEpoch(0)),
            Some(v) if v.is_empty() => Ok(SourceDateEpoch(0)),
            Some(v) => match v.to_str() {
                Some(s) => s.parse(),
                None => Err(BadSourceDateEpoch(v.to_string_lossy().into_owned())),
            },
        }
    }
}

impl FromStr for SourceDateEpoch {
    type Err = BadSourceDateEpoch;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadSourceDateEpoch(s.to_string()));
        }
        s.parse::<u32>()
            .map(SourceDateEpoch)
            .map_err(|_| BadSourceDateEpoch(s.to_string()))
    }
}

impl fmt::Display for SourceDateEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a recipe's tree cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{}: {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
    /// A path in `files/` that may not be shipped.
    #[error("{}: {problem}", .path.display())]
    Lint { path: PathBuf, problem: String },
    #[error(
        "{location}: key `units.start`: unit {unit} is not shipped by the recipe: \
         expected {} (or a template {}); add the unit file or remove it from the list",
        .expected.display(),
        .template.as_deref().unwrap_or("-")
    )]
    MissingUnit {
        location: Location,
        unit: UnitName,
        expected: PathBuf,
        template: Option<String>,
    },
    #[error("{location}: architecture {arch} is not in this recipe's `architectures` ({supported}); build for one of those or add {arch} to the list")]
    UnsupportedArch {
        location: Location,
        arch: Arch,
        supported: String,
    },
}

/// A recipe's image root before the per-architecture extension-release is
/// added: `files/` plus generated drop-ins, normalised and linted, and the
/// per-architecture trees of its unpacked remote inputs.
#[derive(Debug, Clone)]
pub struct StagedRecipe<'r> {
    recipe: &'r Recipe,
    base: DirNode,
    /// Unpacked remote inputs per architecture (scanned and linted like
    /// `files/`), merged into `base` by [`StagedRecipe::tree_for`].
    inputs: BTreeMap<Arch, DirNode>,
    mtime: SourceDateEpoch,
}

/// Stages and lints `recipe`'s tree.
pub fn stage(recipe: &Recipe, mtime: SourceDateEpoch) -> Result<StagedRecipe<'_>, StageError> {
    stage_with_inputs(recipe, mtime, &BTreeMap::new())
}

/// Stages and lints `recipe`'s tree plus, per architecture, a directory of
/// unpacked remote inputs (the same rules as `files/` apply to it; a path
/// both place is an error). With inputs, `[units] start` is checked
/// against each architecture's merged tree.
pub fn stage_with_inputs<'r>(
    recipe: &'r Recipe,
    mtime: SourceDateEpoch,
    inputs: &BTreeMap<Arch, PathBuf>,
) -> Result<StagedRecipe<'r>, StageError> {
    let mut scanned = BTreeMap::new();
    for (arch, dir) in inputs {
        let node = match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => scan_root(dir)?,
            Ok(_) => {
                return Err(StageError::Lint {
                    path: dir.clone(),
                    problem: "is not a directory".into(),
                })
            }
            Err(err) => {
                return Err(StageError::Io {
                    path: dir.clone(),
                    action: "cannot read",
                    err,
                })
            }
        };
        scanned.insert(*arch, node);
    }
    let files = recipe.files_dir();
    let mut base = DirNode {
        mode: DIR_MODE,
        entries: Default::default(),
    };
    match fs::metadata(&files) {
        Ok(m) if m.is_dir() => {
            base = scan_root(&files)?;
        }
        Ok(_) => {
            return Err(StageError::Lint {
                path: files,
                problem:
                    "is not a directory; files/ must be a directory tree holding usr/ and/or opt/"
                        .into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(StageError::Io {
                path: files,
                action: "cannot read",
                err,
            })
        }
    }

    for link in &recipe.symlinks {
        insert_symlink(recipe, &mut base, link)?;
    }
    if scanned.is_empty() {
        check_units(recipe, &base)?;
    }
    add_upholds_dropins(recipe, &mut base)?;

    Ok(StagedRecipe {
        recipe,
        base,
        inputs: scanned,
        mtime,
    })
}

/// Places a `[[symlink]]` of the recipe.
fn insert_symlink(
    recipe: &Recipe,
    root: &mut DirNode,
    link: &crate::source::SymlinkSpec,
) -> Result<(), StageError> {
    let conflict = |what: &str| StageError::Lint {
        path: recipe.recipe_file(),
        problem: format!("{}: [[symlink]] {}: {what}", link.location, link.path),
    };
    let parts: Vec<&str> = link.path.split('/').collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(conflict("the path is empty"));
    };
    let parent_rel = dirs.join("/");
    check_symlink(&recipe.recipe_file(), &parent_rel, link.target.as_bytes())?;
    let mut dir = root;
    for part in dirs {
        let name = EntryName::new(part.as_bytes()).map_err(|e| conflict(&e.to_string()))?;
        let node = dir.entries.entry(name).or_insert_with(|| {
            Node::Dir(DirNode {
                mode: DIR_MODE,
                entries: Default::default(),
            })
        });
        dir = match node {
            Node::Dir(d) => d,
            _ => return Err(conflict(&format!("files/ has a non-directory at {part}"))),
        };
    }
    let name = EntryName::new(last.as_bytes()).map_err(|e| conflict(&e.to_string()))?;
    if dir.entries.contains_key(&name) {
        return Err(conflict("files/ already has this path; remove one of them"));
    }
    dir.entries.insert(
        name,
        Node::Symlink(SymlinkNode {
            target: link.target.as_bytes().to_vec(),
        }),
    );
    Ok(())
}

/// Merges `other` (an input's tree) into `into`; the same non-directory
/// path in both is an error.
fn merge_into(
    into: &mut DirNode,
    other: &DirNode,
    rel: &str,
    recipe: &Recipe,
    arch: Arch,
) -> Result<(), StageError> {
    for (name, node) in &other.entries {
        let child_rel = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        match (into.entries.get_mut(name), node) {
            (None, n) => {
                into.entries.insert(name.clone(), n.clone());
            }
            (Some(Node::Dir(a)), Node::Dir(b)) => merge_into(a, b, &child_rel, recipe, arch)?,
            (Some(_), _) => {
                return Err(StageError::Lint {
                    path: recipe.files_dir().join(&child_rel),
                    problem: format!(
                    "both the recipe (files/, [[symlink]] or a generated file) and a downloaded \
                         input for {arch} place /{child_rel}; remove one of them"
                ),
                })
            }
        }
    }
    Ok(())
}

impl StagedRecipe<'_> {
    pub fn recipe(&self) -> &Recipe {
        self.recipe
    }

    /// The extension-release written into the image for `arch`.
    pub fn extension_release(&self, arch: Arch) -> ExtensionRelease {
        crate::release::for_recipe(self.recipe, arch)
    }

    /// Path of the extension-release file inside the image.
    pub fn extension_release_path(&self) -> String {
        extension_release_path(&self.recipe.name.to_image_name())
    }

    /// The complete tree of the image for `arch`.
    pub fn tree_for(&self, arch: Arch) -> Result<StagedTree, StageError> {
        if !self.recipe.architectures.contains(&arch) {
            let supported: Vec<&str> = self
                .recipe
                .architectures
                .iter()
                .map(|a| a.as_str())
                .collect();
            return Err(StageError::UnsupportedArch {
                location: self.recipe.architectures_location.clone(),
                arch,
                supported: supported.join(", "),
            });
        }
        let mut root = self.base.clone();
        if let Some(input) = self.inputs.get(&arch) {
            merge_into(&mut root, input, "", self.recipe, arch)?;
        }
        if !self.inputs.is_empty() {
            check_units(self.recipe, &root)?;
        }
        let path = self.extension_release_path();
        let content = self.extension_release(arch).render().into_bytes();
        insert_generated(self.recipe, &mut root, &path, FILE_MODE, content)?;
        Ok(StagedTree {
            root,
            mtime: self.mtime.seconds(),
        })
    }
}

/// Paths (relative to the image root) that `files/` may not contain.
fn forbidden(rel: &str) -> Option<&'static str> {
    match rel {
        "usr/sbin" => Some(
            "usr/sbin must not be shipped (it is a symlink to bin on Flatcar and merging over it breaks the host); \
             put programs in usr/bin",
        ),
        "usr/lib/os-release" => Some(
            "an extension must not contain usr/lib/os-release (systemd-sysext refuses such images); remove it",
        ),
        "usr/lib/extension-release.d" => Some(
            "bakery generates usr/lib/extension-release.d/ from recipe.toml; remove this directory from files/",
        ),
        _ => None,
    }
}

fn scan_root(files: &Path) -> Result<DirNode, StageError> {
    let mut root = DirNode {
        mode: DIR_MODE,
        entries: Default::default(),
    };
    for (name, path) in read_dir_sorted(files)? {
        let meta = symlink_metadata(&path)?;
        let top = name.as_bytes();
        if top != b"usr" && top != b"opt" {
            return Err(StageError::Lint {
                path,
                problem: "only usr/ and opt/ may be shipped (systemd-sysext merges nothing else); \
                          move it under usr/ (e.g. defaults in usr/share/NAME/ copied to /etc by a tmpfiles.d C line) \
                          or remove it"
                    .into(),
            });
        }
        if !meta.is_dir() {
            return Err(StageError::Lint {
                path,
                problem: "must be a directory, not a file or symlink".into(),
            });
        }
        let rel = name.to_string();
        let node = scan_dir(&path, &rel)?;
        root.entries.insert(name, Node::Dir(node));
    }
    Ok(root)
}

fn scan_dir(dir: &Path, rel: &str) -> Result<DirNode, StageError> {
    let mut out = DirNode {
        mode: DIR_MODE,
        entries: Default::default(),
    };
    for (name, path) in read_dir_sorted(dir)? {
        let child_rel = format!("{rel}/{name}");
        if let Some(problem) = forbidden(&child_rel) {
            return Err(StageError::Lint {
                path,
                problem: problem.into(),
            });
        }
        let meta = symlink_metadata(&path)?;
        let ft = meta.file_type();
        let node = if ft.is_dir() {
            Node::Dir(scan_dir(&path, &child_rel)?)
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                EXEC_MODE
            } else {
                FILE_MODE
            };
            Node::File(FileNode {
                mode,
                content: FileContent::Path(path.clone()),
            })
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|err| StageError::Io {
                path: path.clone(),
                action: "cannot read symlink",
                err,
            })?;
            let target = target.as_os_str().as_bytes().to_vec();
            check_symlink(&path, rel, &target)?;
            Node::Symlink(SymlinkNode { target })
        } else {
            let kind = if ft.is_block_device() || ft.is_char_device() {
                "a device node"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "of an unknown file type"
            };
            return Err(StageError::Lint {
                path,
                problem: format!(
                    "is {kind}; images may hold only directories, regular files and symlinks; remove it"
                ),
            });
        };
        out.entries.insert(name, node);
    }
    Ok(out)
}

/// A relative target may not climb above the image root (`dir_rel` is the
/// image path of the directory holding the link). Absolute targets resolve
/// on the host the image is merged into and are allowed.
fn check_symlink(path: &Path, dir_rel: &str, target: &[u8]) -> Result<(), StageError> {
    if target.is_empty() {
        return Err(StageError::Lint {
            path: path.to_path_buf(),
            problem: "is a symlink with an empty target; remove it".into(),
        });
    }
    if target.starts_with(b"/") {
        return Ok(());
    }
    let mut depth = dir_rel.split('/').filter(|c| !c.is_empty()).count();
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    return Err(StageError::Lint {
                        path: path.to_path_buf(),
                        problem: format!(
                            "is a symlink to {:?}, which points outside the image root; \
                             use a target inside the image (or an absolute path such as /usr/bin/x)",
                            String::from_utf8_lossy(target)
                        ),
                    });
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<(EntryName, PathBuf)>, StageError> {
    let rd = fs::read_dir(dir).map_err(|err| StageError::Io {
        path: dir.to_path_buf(),
        action: "cannot list directory",
        err,
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|err| StageError::Io {
            path: dir.to_path_buf(),
            action: "cannot list directory",
            err,
        })?;
        let path = entry.path();
        let name = EntryName::new(entry.file_name().as_bytes()).map_err(|e| StageError::Lint {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

fn symlink_metadata(path: &Path) -> Result<fs::Metadata, StageError> {
    fs::symlink_metadata(path).map_err(|err| StageError::Io {
        path: path.to_path_buf(),
        action: "cannot stat",
        err,
    })
}

fn lookup<'a>(root: &'a DirNode, rel: &str) -> Option<&'a Node> {
    let mut parts = rel.split('/').peekable();
    let mut dir = root;
    while let Some(part) = parts.next() {
        let name = EntryName::new(part.as_bytes()).ok()?;
        let node = dir.entries.get(&name)?;
        if parts.peek().is_none() {
            return Some(node);
        }
        match node {
            Node::Dir(d) => dir = d,
            _ => return None,
        }
    }
    None
}

fn check_units(recipe: &Recipe, root: &DirNode) -> Result<(), StageError> {
    for start in &recipe.units.start {
        let unit = &start.unit;
        let mut candidates = vec![unit.as_str().to_string()];
        candidates.extend(unit.template());
        let found = UNIT_DIRS.iter().any(|dir| {
            candidates.iter().any(|c| {
                matches!(
                    lookup(root, &format!("{dir}/{c}")),
                    Some(Node::File(_) | Node::Symlink(_))
                )
            })
        });
        if !found {
            return Err(StageError::MissingUnit {
                location: start.location.clone(),
                unit: unit.clone(),
                expected: recipe.files_dir().join(UNIT_DIRS[0]).join(unit.as_str()),
                template: unit.template(),
            });
        }
    }
    Ok(())
}

/// `usr/lib/systemd/system/TARGET.d/10-NAME.conf` with one `Upholds=` line
/// per unit started by that target, in declared order.
fn add_upholds_dropins(recipe: &Recipe, root: &mut DirNode) -> Result<(), StageError> {
    let mut targets: Vec<&'static str> = Vec::new();
    for s in &recipe.units.start {
        let t = s.unit.kind().upheld_by();
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    for target in targets {
        let mut text = format!(
            "# Generated by bakery from [units] start in {}'s recipe.toml.\n[Unit]\n",
            recipe.name
        );
        for s in recipe
            .units
            .start
            .iter()
            .filter(|s| s.unit.kind().upheld_by() == target)
        {
            text.push_str(&format!("Upholds={}\n", s.unit));
        }
        let path = format!("usr/lib/systemd/system/{target}.d/10-{}.conf", recipe.name);
        insert_generated(recipe, root, &path, FILE_MODE, text.into_bytes())?;
    }
    Ok(())
}

/// Places a generated file at `rel`, creating directories; refuses to
/// overwrite or descend through anything `files/` put there.
fn insert_generated(
    recipe: &Recipe,
    root: &mut DirNode,
    rel: &str,
    mode: u16,
    content: Vec<u8>,
) -> Result<(), StageError> {
    let conflict = |what: &str| StageError::Lint {
        path: recipe.files_dir().join(rel),
        problem: format!(
            "bakery generates this file from recipe.toml, but {what}; remove it from files/"
        ),
    };
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(conflict("its path is empty"));
    };
    let mut dir = root;
    for part in dirs {
        let name = EntryName::new(part.as_bytes()).map_err(|_| conflict("its path is invalid"))?;
        let node = dir.entries.entry(name).or_insert_with(|| {
            Node::Dir(DirNode {
                mode: DIR_MODE,
                entries: Default::default(),
            })
        });
        dir = match node {
            Node::Dir(d) => d,
            _ => {
                return Err(conflict(&format!(
                    "files/ has a non-directory at its parent {part}"
                )))
            }
        };
    }
    let name = EntryName::new(last.as_bytes()).map_err(|_| conflict("its path is invalid"))?;
    if dir.entries.contains_key(&name) {
        return Err(conflict("files/ already has it"));
    }
    dir.entries.insert(
        name,
        Node::File(FileNode {
            mode,
            content: FileContent::Bytes(content),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn recipe_in(dir: &Path, extra: &str) -> Recipe {
        let text = format!("name = \"demo\"\nversion = \"1\"\ndescription = \"d\"\n{extra}");
        fs::write(dir.join("recipe.toml"), &text).unwrap();
        Recipe::load(dir).unwrap()
    }

    fn write(dir: &Path, rel: &str, body: &str, mode: u32) {
        let p = dir.join("files").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn file<'a>(tree: &'a StagedTree, rel: &str) -> &'a FileNode {
        match lookup(&tree.root, rel) {
            Some(Node::File(f)) => f,
            other => panic!("{rel}: {other:?}"),
        }
    }

    fn bytes(f: &FileNode) -> String {
        match &f.content {
            FileContent::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            FileContent::Path(p) => fs::read_to_string(p).unwrap(),
        }
    }

    #[test]
    fn stages_normalises_and_generates() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "usr/bin/demo", "#!/bin/sh\n", 0o4711);
        write(t.path(), "usr/share/demo/conf", "x", 0o600);
        write(
            t.path(),
            "usr/lib/systemd/system/demo.service",
            "[Service]\n",
            0o644,
        );
        write(
            t.path(),
            "usr/lib/systemd/system/demo.socket",
            "[Socket]\n",
            0o644,
        );
        write(t.path(), "opt/demo/data", "d", 0o640);
        symlink("../share/demo/conf", t.path().join("files/usr/bin/conf")).unwrap();
        let r = recipe_in(
            t.path(),
            "reload-manager = true\narchitectures = [\"arm64\"]\n[units]\nstart = [\"demo.service\", \"demo.socket\"]\n",
        );
        let staged = stage(&r, SourceDateEpoch::new(42)).unwrap();
        let tree = staged.tree_for(Arch::Arm64).unwrap();
        assert_eq!(tree.mtime, 42);
        assert_eq!(file(&tree, "usr/bin/demo").mode, 0o755);
        assert_eq!(file(&tree, "usr/share/demo/conf").mode, 0o644);
        assert_eq!(file(&tree, "opt/demo/data").mode, 0o644);
        assert!(
            matches!(lookup(&tree.root, "usr/bin/conf"), Some(Node::Symlink(s)) if s.target == b"../share/demo/conf")
        );
        let rel = bytes(file(
            &tree,
            "usr/lib/extension-release.d/extension-release.demo",
        ));
        assert_eq!(
            rel,
            "ID=_any\nARCHITECTURE=arm64\nSYSEXT_SCOPE=system\nEXTENSION_RELOAD_MANAGER=1\n\
             SYSEXT_ID=demo\nSYSEXT_VERSION_ID=1\nSYSEXT_PRETTY_NAME=\"demo 1\"\n"
        );
        let m = bytes(file(
            &tree,
            "usr/lib/systemd/system/multi-user.target.d/10-demo.conf",
        ));
        assert!(m.ends_with("[Unit]\nUpholds=demo.service\n"), "{m}");
        let s = bytes(file(
            &tree,
            "usr/lib/systemd/system/sockets.target.d/10-demo.conf",
        ));
        assert!(s.ends_with("[Unit]\nUpholds=demo.socket\n"), "{s}");
        let err = staged.tree_for(Arch::X86_64).unwrap_err().to_string();
        assert!(
            err.contains("recipe.toml:5:17: architecture x86-64 is not in"),
            "{err}"
        );
    }

    #[test]
    fn no_files_dir_is_fine() {
        let t = tempfile::tempdir().unwrap();
        let r = recipe_in(t.path(), "");
        let tree = stage(&r, SourceDateEpoch::default())
            .unwrap()
            .tree_for(Arch::X86_64)
            .unwrap();
        assert_eq!(tree.root.entries.len(), 1);
    }

    fn lint_err(setup: impl FnOnce(&Path), extra: &str) -> String {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("files")).unwrap();
        setup(t.path());
        let r = recipe_in(t.path(), extra);
        stage(&r, SourceDateEpoch::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn lints() {
        let e = lint_err(|d| write(d, "etc/demo.conf", "x", 0o644), "");
        assert!(e.contains("files/etc: only usr/ and opt/"), "{e}");
        let e = lint_err(|d| write(d, "usr/sbin/x", "x", 0o755), "");
        assert!(e.contains("files/usr/sbin: usr/sbin must not"), "{e}");
        let e = lint_err(|d| write(d, "usr/lib/os-release", "ID=x", 0o644), "");
        assert!(e.contains("files/usr/lib/os-release:"), "{e}");
        let e = lint_err(
            |d| {
                write(
                    d,
                    "usr/lib/extension-release.d/extension-release.demo",
                    "ID=x",
                    0o644,
                )
            },
            "",
        );
        assert!(
            e.contains("files/usr/lib/extension-release.d: bakery generates"),
            "{e}"
        );
        let e = lint_err(
            |d| {
                fs::create_dir_all(d.join("files/usr/bin")).unwrap();
                symlink("../../../etc/shadow", d.join("files/usr/bin/x")).unwrap();
            },
            "",
        );
        assert!(
            e.contains(
                "files/usr/bin/x: is a symlink to \"../../../etc/shadow\", which points outside"
            ),
            "{e}"
        );
        let e = lint_err(
            |d| {
                fs::create_dir_all(d.join("files/usr")).unwrap();
                rustix_mkfifo(&d.join("files/usr/fifo"));
            },
            "",
        );
        assert!(e.contains("files/usr/fifo: is a FIFO"), "{e}");
        let e = lint_err(
            |d| write(d, "usr/bin/x", "x", 0o755),
            "[units]\nstart = [\"demo.service\"]\n",
        );
        assert!(
            e.contains("recipe.toml:5:10: key `units.start`: unit demo.service is not shipped"),
            "{e}"
        );
        let e = lint_err(
            |d| {
                write(d, "usr/lib/systemd/system/demo.service", "x", 0o644);
                write(
                    d,
                    "usr/lib/systemd/system/multi-user.target.d/10-demo.conf",
                    "x",
                    0o644,
                );
            },
            "[units]\nstart = [\"demo.service\"]\n",
        );
        assert!(
            e.contains("10-demo.conf: bakery generates this file"),
            "{e}"
        );
    }

    #[test]
    fn template_units_and_local_dir() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            "usr/lib/systemd/system/getty@.service",
            "x",
            0o644,
        );
        write(
            t.path(),
            "usr/local/lib/systemd/system/k.service",
            "x",
            0o644,
        );
        let r = recipe_in(
            t.path(),
            "[units]\nstart = [\"getty@tty9.service\", \"k.service\"]\n",
        );
        stage(&r, SourceDateEpoch::default()).unwrap();
    }

    #[test]
    fn symlink_escape_rules() {
        let p = Path::new("x");
        assert!(check_symlink(p, "usr/bin", b"../lib/x").is_ok());
        assert!(check_symlink(p, "usr/bin", b"../../x").is_ok());
        assert!(check_symlink(p, "usr/bin", b"../../../x").is_err());
        assert!(check_symlink(p, "usr/bin", b"./a/../../../..").is_err());
        assert!(check_symlink(p, "usr/bin", b"/opt/x").is_ok());
        assert!(check_symlink(p, "usr/bin", b"").is_err());
    }

    #[test]
    fn source_date_epoch_parsing() {
        assert_eq!("0".parse::<SourceDateEpoch>().unwrap().seconds(), 0);
        assert_eq!(
            "1700000000".parse::<SourceDateEpoch>().unwrap().seconds(),
            1_700_000_000
        );
        for bad in ["", "-1", "1.5", "abc", "4294967296", " 1"] {
            let e = bad.parse::<SourceDateEpoch>().unwrap_err();
            assert!(e.to_string().contains("SOURCE_DATE_EPOCH"), "{e}");
        }
    }

    fn rustix_mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
