//! `bakery build`: a recipe directory into sealed `NAME-VERSION-ARCH.raw`
//! images (DDI, sidecar or bare; see [`crate::seal`]) and their
//! `SHA256SUMS` lines in an output directory.
//!
//! This module owns the build's all-or-nothing output: the recipe is loaded,
//! staged and linted for every requested architecture before the output
//! directory is touched; each filesystem image is written and sealed in a
//! hidden staging directory inside the output directory, and every output
//! file (images and sidecar files) is renamed into place only when all
//! images are complete; `SHA256SUMS` is rewritten the same way (other lines
//! kept, sorted by file name). On any error no new output file remains.
//! Sidecar files of an earlier build of the same image in another format
//! are removed (file and `SHA256SUMS` line) once the new outputs are in.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use signing::RootHash;
use sysupdate::{Arch, Sha256Digest, Version};

use crate::recipe::{ExtensionName, Recipe, RecipeError};
use crate::seal::{seal, OutputFile, SealError, SealFormat, SealOptions, Staging, Unsigned};
use crate::squashfs::{write_squashfs, Compression, SquashfsError, SquashfsOptions};
use crate::stage::{stage_with_inputs, SourceDateEpoch, StageError};
use crate::tree::StagedTree;

/// Name of the checksum manifest in the output directory.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// Mode of the files a build publishes.
const OUTPUT_MODE: u32 = 0o644;

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Architectures to build; empty means every architecture of the recipe.
    pub arches: Vec<Arch>,
    /// Output directory (created if missing).
    pub output_dir: PathBuf,
    pub squashfs: SquashfsOptions,
    pub source_date_epoch: SourceDateEpoch,
    /// Format and signing key (default: `bare`, unsigned).
    pub seal: SealOptions,
}

impl BuildOptions {
    /// Every recipe architecture into `output_dir`, default compression,
    /// mtime 0.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            arches: Vec::new(),
            output_dir: output_dir.into(),
            squashfs: SquashfsOptions::default(),
            source_date_epoch: SourceDateEpoch::default(),
            seal: SealOptions::default(),
        }
    }
}

/// One image a build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub arch: Arch,
    /// The image `NAME-VERSION-ARCH.raw`.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub format: SealFormat,
    /// The dm-verity root hash (`None` for `bare`).
    pub root_hash: Option<RootHash>,
    /// sha256 of the signer's certificate (DER) when signed.
    pub signer: Option<Sha256Digest>,
    /// The sidecar files (`.verity`, `.roothash`, `.roothash.p7s`) of the
    /// `sidecar` format, empty otherwise.
    pub sidecars: Vec<OutputFile>,
}

impl BuiltImage {
    pub fn is_signed(&self) -> bool {
        self.signer.is_some()
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub name: ExtensionName,
    pub version: Version,
    pub compression: Compression,
    pub source_date_epoch: SourceDateEpoch,
    pub images: Vec<BuiltImage>,
    /// The rewritten `SHA256SUMS`.
    pub sha256sums: PathBuf,
    pub format: SealFormat,
    /// Set when the images carry no signature, and why (print it).
    pub unsigned: Option<Unsigned>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{}: {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
    #[error("cannot write the squashfs image {}: {err}", .path.display())]
    Squashfs { path: PathBuf, err: SquashfsError },
    #[error(transparent)]
    Seal(Box<SealError>),
    #[error(transparent)]
    Lint(#[from] crate::lint::LintError),
    /// Image options that cannot work (checked before any output is made).
    #[error("{0}")]
    Options(SquashfsError),
    #[error(
        "{}:{line}: not a SHA256SUMS line (expected 64 lowercase hex digits, two spaces, a file name); \
         fix or remove the line, or use another --output directory",
        .path.display()
    )]
    BadSha256Sums { path: PathBuf, line: usize },
}

impl From<SealError> for BuildError {
    fn from(e: SealError) -> Self {
        BuildError::Seal(Box::new(e))
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |err| BuildError::Io { path, action, err }
}

/// Loads the recipe in `recipe_dir` and builds it.
pub fn build(recipe_dir: &Path, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let recipe = Recipe::load(recipe_dir)?;
    build_recipe(&recipe, opts)
}

/// Builds an already loaded recipe.
pub fn build_recipe(recipe: &Recipe, opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    build_recipe_with_inputs(recipe, opts, &BTreeMap::new())
}

/// Builds an already loaded recipe whose remote inputs were unpacked into
/// one directory per architecture (see [`crate::inputs`]).
pub fn build_recipe_with_inputs(
    recipe: &Recipe,
    opts: &BuildOptions,
    inputs: &BTreeMap<Arch, PathBuf>,
) -> Result<BuildReport, BuildError> {
    opts.squashfs.resolve().map_err(BuildError::Options)?;
    let staged = stage_with_inputs(recipe, opts.source_date_epoch, inputs)?;
    let mut arches: Vec<Arch> = Vec::new();
    let wanted = if opts.arches.is_empty() {
        &recipe.architectures
    } else {
        &opts.arches
    };
    for &a in wanted {
        if !arches.contains(&a) {
            arches.push(a);
        }
    }
    // Everything that can be wrong with the recipe is found before the
    // output directory is touched.
    let trees: Vec<(Arch, StagedTree)> = arches
        .iter()
        .map(|&a| staged.tree_for(a).map(|t| (a, t)))
        .collect::<Result<_, _>>()?;
    for (arch, tree) in &trees {
        crate::lint::lint_image(tree, *arch)?;
    }

    let out = &opts.output_dir;
    fs::create_dir_all(out).map_err(io(out, "cannot create output directory"))?;

    let plan = opts.seal.plan();
    let staging = Staging::new(out)?;
    let mut sealed = Vec::new();
    for (arch, tree) in &trees {
        let file_name = recipe.image_file_name(*arch);
        let stem = file_name.strip_suffix(".raw").unwrap_or(&file_name);
        let (fs_image, mut file) = staging.create_fs_image(stem, *arch)?;
        write_squashfs(tree, &mut file, &opts.squashfs).map_err(|err| BuildError::Squashfs {
            path: out.join(&file_name),
            err,
        })?;
        file.sync_all()
            .map_err(io(fs_image.path(), "cannot fsync"))?;
        drop(file);
        sealed.push(seal(fs_image, &plan)?);
    }

    // All images are sealed: move every file into place.
    let mut moved: Vec<PathBuf> = Vec::new();
    for f in sealed.iter().flat_map(|s| s.files()) {
        let placed = fs::set_permissions(&f.staged, fs::Permissions::from_mode(OUTPUT_MODE))
            .and_then(|()| fs::rename(&f.staged, &f.path));
        if let Err(err) = placed {
            remove_all(&moved);
            return Err(BuildError::Io {
                path: f.path.clone(),
                action: "cannot rename the finished file into place",
                err,
            });
        }
        moved.push(f.path.clone());
    }
    let sums_path = out.join(SHA256SUMS);
    let entries: Vec<(String, Sha256Digest)> = sealed
        .iter()
        .flat_map(|s| s.files())
        .map(|f| (f.name.clone(), f.sha256))
        .collect();
    let stale: Vec<String> = sealed.iter().flat_map(|s| s.stale_names()).collect();
    if let Err(e) =
        update_sha256sums_removing(&sums_path, &entries, &stale).and_then(|()| sync_dir(out))
    {
        remove_all(&moved);
        return Err(e);
    }
    drop(staging);
    // Sidecar files of an earlier build in another format no longer belong
    // to the image; they are out of SHA256SUMS already.
    for name in &stale {
        let p = out.join(name);
        if p.symlink_metadata().is_ok_and(|m| m.is_file()) {
            fs::remove_file(&p).map_err(io(&p, "cannot remove the stale file"))?;
        }
    }
    let images = sealed
        .into_iter()
        .map(|s| BuiltImage {
            arch: s.arch,
            path: s.image.path,
            size: s.image.size,
            sha256: s.image.sha256,
            format: s.format,
            root_hash: s.root_hash,
            signer: s.signer,
            sidecars: s.sidecars,
        })
        .collect();

    Ok(BuildReport {
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        compression: opts.squashfs.compression,
        source_date_epoch: opts.source_date_epoch,
        images,
        sha256sums: sums_path,
        format: plan.format,
        unsigned: plan.unsigned,
    })
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = fs::remove_file(p);
    }
}

fn sync_dir(dir: &Path) -> Result<(), BuildError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "cannot fsync directory"))
}

/// Rewrites `path` atomically with `entries` replacing lines for the same
/// file names; other lines are kept; lines are sorted by file name.
pub fn update_sha256sums(
    path: &Path,
    entries: &[(String, Sha256Digest)],
) -> Result<(), BuildError> {
    update_sha256sums_removing(path, entries, &[])
}

/// [`update_sha256sums`] that also drops the lines for the file names in
/// `remove`.
pub fn update_sha256sums_removing(
    path: &Path,
    entries: &[(String, Sha256Digest)],
    remove: &[String],
) -> Result<(), BuildError> {
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    match fs::read_to_string(path) {
        Ok(text) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let name = parse_sums_line(line).ok_or_else(|| BuildError::BadSha256Sums {
                    path: path.to_path_buf(),
                    line: i + 1,
                })?;
                lines.insert(name.to_string(), line.to_string());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(BuildError::Io {
                path: path.to_path_buf(),
                action: "cannot read",
                err,
            })
        }
    }
    for name in remove {
        lines.remove(name);
    }
    for (name, digest) in entries {
        lines.insert(name.clone(), format!("{digest}  {name}"));
    }
    let mut text = String::new();
    for line in lines.values() {
        text.push_str(line);
        text.push('\n');
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".SHA256SUMS.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir, "cannot create a temporary file"))?;
    tmp.write_all(text.as_bytes())
        .map_err(io(tmp.path(), "cannot write"))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(OUTPUT_MODE))
        .map_err(io(tmp.path(), "cannot set permissions"))?;
    tmp.as_file()
        .sync_all()
        .map_err(io(tmp.path(), "cannot fsync"))?;
    tmp.persist(path).map_err(|e| BuildError::Io {
        path: path.to_path_buf(),
        action: "cannot rename into place",
        err: e.error,
    })?;
    Ok(())
}

/// The file name of a `sha256sum` line (`HEX  NAME` or `HEX *NAME`).
fn parse_sums_line(line: &str) -> Option<&str> {
    let hex = line.get(..64)?;
    hex.parse::<Sha256Digest>().ok()?;
    let rest = line.get(64..)?;
    let name = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: u8) -> Sha256Digest {
        Sha256Digest::from_bytes([b; 32])
    }

    #[test]
    fn sums_keep_other_lines_and_sort() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(SHA256SUMS);
        let other = format!("{}  zzz-1-x86-64.raw\n{} *aaa.raw\n", digest(1), digest(2));
        fs::write(&p, &other).unwrap();
        update_sha256sums(
            &p,
            &[
                ("mmm.raw".into(), digest(3)),
                ("zzz-1-x86-64.raw".into(), digest(4)),
            ],
        )
        .unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            format!(
                "{} *aaa.raw\n{}  mmm.raw\n{}  zzz-1-x86-64.raw\n",
                digest(2),
                digest(3),
                digest(4)
            )
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn sums_refuse_garbage() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(SHA256SUMS);
        fs::write(&p, format!("{}  ok.raw\nnot a line\n", digest(1))).unwrap();
        let e = update_sha256sums(&p, &[("x.raw".into(), digest(3))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SHA256SUMS:2: not a SHA256SUMS line"), "{e}");
    }
}
