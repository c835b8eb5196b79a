//! Building recipes by name with their remote inputs, end to end: find the
//! recipe (`kubernetes`, `kubernetes-v1.30`, or a directory), take the
//! versions and digests from its lock file (then nothing asks upstream) or
//! resolve them (versions from upstream, digests from the published
//! checksum files), notice when the output for exactly these inputs
//! already exists, fetch every input of every requested recipe and
//! architecture in parallel (verified, cached), unpack them safely per
//! architecture, build, and record the provenance.
//!
//! This module owns that orchestration, `bakery lock` (resolve, pin,
//! write the lock file), the input fingerprint, and the provenance file
//! written beside each image:
//!
//! `NAME-VERSION-ARCH.provenance.json` records the recipe, stream,
//! versions, every input's URL, sha256 and how it was verified (`lock`, a
//! checksum file's URL, or `unpinned`), `"unpinned": true` when a build
//! used `--allow-unpinned` downloads, the output files with their sha256,
//! and the input fingerprint: sha256 over this bakery's version, the
//! recipe directory (recipe.toml and files/), the architecture, the
//! versions, every input's URL and sha256, and the options that change
//! the output bytes (compression, level, block size, SOURCE_DATE_EPOCH,
//! seal format, signing certificate). A build whose fingerprint equals the
//! recorded one, and whose recorded outputs are all present with their
//! digests and listed in SHA256SUMS, rebuilds nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sysupdate::{Arch, Sha256Digest, Version};

use crate::build::{BuildError, BuildOptions, BuildReport, SHA256SUMS};
use crate::fetch::github::GithubApi;
use crate::fetch::{FetchError, FetchRequest, Fetcher, Url};
use crate::lock::{lock_path, Checked, LockError, LockFile, LockedInput};
use crate::recipe::{Recipe, RecipeError, RecipeTemplate, RECIPE_FILE};
use crate::source::{PlannedChecksum, PlannedInput, SourceError, Versions};
use crate::versions::{Discovery, Stream, VersionsError};

/// The directory of recipes, relative to the working directory.
pub const RECIPES_DIR: &str = "recipes";

/// Why a recipe could not be resolved, locked or built.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Versions(#[from] VersionsError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("no recipe {arg:?}: not a recipe directory, and {} has no recipe by that name (known: {known}); NAME-STREAM names a stream, e.g. kubernetes-v1.30", .recipes_dir.display())]
    NotFound {
        arg: String,
        recipes_dir: PathBuf,
        known: String,
    },
    #[error("{target}: {message}")]
    Plan { target: String, message: String },
    #[error(
        "{target}: input {source_name} for {arch} ({url}) has no published checksum and no lock \
         file pins it; run `bakery lock {target}` to pin it (it is downloaded once and its sha256 \
         recorded), or pass --allow-unpinned to build with an unverified download (recorded in \
         the provenance file)"
    )]
    Unpinned {
        target: String,
        source_name: String,
        arch: Arch,
        url: String,
    },
    #[error("{}: {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> InputsError {
    let path = path.to_path_buf();
    move |err| InputsError::Io { path, action, err }
}

// ---------------------------------------------------------------------------
// Finding recipes
// ---------------------------------------------------------------------------

/// A recipe and, for `NAME-STREAM`, the stream.
#[derive(Debug, Clone)]
pub struct RecipeRef {
    pub template: RecipeTemplate,
    pub stream: Option<Stream>,
}

impl RecipeRef {
    /// `NAME` or `NAME-STREAM`: what `bakery lock`/`build` are called with.
    pub fn target(&self) -> String {
        match &self.stream {
            Some(s) => format!("{}-{s}", self.template.name),
            None => self.template.name.to_string(),
        }
    }

    /// The lock file of this recipe or stream.
    pub fn lock_path(&self) -> PathBuf {
        lock_path(
            &self.template.dir,
            &self.template.name,
            self.stream.as_ref(),
        )
    }

    /// The lock file, if there is one.
    pub fn read_lock(&self) -> Result<Option<LockFile>, InputsError> {
        Ok(LockFile::read(&self.lock_path(), &self.target())?)
    }
}

fn is_recipe_dir(p: &Path) -> bool {
    p.join(RECIPE_FILE).is_file()
}

/// Every recipe directory in `recipes_dir`, sorted by name.
pub fn recipe_dirs(recipes_dir: &Path) -> Result<Vec<PathBuf>, InputsError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(recipes_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(recipes_dir, "cannot list the recipes directory")(e)),
    };
    for e in rd {
        let e = e.map_err(io_err(recipes_dir, "cannot list the recipes directory"))?;
        if is_recipe_dir(&e.path()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Finds a recipe: a directory holding recipe.toml, `NAME` under
/// `recipes_dir`, or `NAME-STREAM` (e.g. `kubernetes-v1.30`) for a recipe
/// with streams.
pub fn find_recipe(arg: &str, recipes_dir: &Path) -> Result<RecipeRef, InputsError> {
    let direct = Path::new(arg);
    // A path (it has a '/') is always a recipe directory: a missing one is
    // reported as such.
    if arg.contains('/') || (is_recipe_dir(direct) && !is_recipe_dir(&recipes_dir.join(arg))) {
        return Ok(RecipeRef {
            template: RecipeTemplate::load(direct)?,
            stream: None,
        });
    }
    let simple = !arg.is_empty() && !arg.contains('/') && arg != "." && arg != "..";
    if simple && is_recipe_dir(&recipes_dir.join(arg)) {
        return Ok(RecipeRef {
            template: RecipeTemplate::load(&recipes_dir.join(arg))?,
            stream: None,
        });
    }
    if simple {
        for (i, _) in arg.match_indices('-').rev() {
            let (name, stream) = (&arg[..i], &arg[i + 1..]);
            let Ok(stream) = stream.parse::<Stream>() else {
                continue;
            };
            let dir = recipes_dir.join(name);
            if !is_recipe_dir(&dir) {
                continue;
            }
            let template = RecipeTemplate::load(&dir)?;
            let has_streams = template
                .remote
                .as_ref()
                .and_then(|r| r.upstream.as_ref())
                .is_some_and(|u| u.streams.is_some());
            if !has_streams {
                return Err(VersionsError::NoStreams {
                    recipe: name.to_string(),
                }
                .into());
            }
            return Ok(RecipeRef {
                template,
                stream: Some(stream),
            });
        }
    }
    let known: Vec<String> = recipe_dirs(recipes_dir)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    Err(InputsError::NotFound {
        arg: arg.to_string(),
        recipes_dir: recipes_dir.to_path_buf(),
        known: if known.is_empty() {
            "none".into()
        } else {
            known.join(", ")
        },
    })
}

// ---------------------------------------------------------------------------
// Resolving
// ---------------------------------------------------------------------------

/// How a resolved input's digest is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// From this lock file.
    Lock(PathBuf),
    /// From this upstream checksum file.
    ChecksumFile(String),
    /// No digest: the download is not verified (`--allow-unpinned`).
    Unpinned,
}

impl Verified {
    fn as_text(&self) -> String {
        match self {
            Verified::Lock(p) => format!("lock {}", p.display()),
            Verified::ChecksumFile(u) => u.clone(),
            Verified::Unpinned => "unpinned".into(),
        }
    }
}

/// One input with its digest (if known before downloading).
#[derive(Debug, Clone)]
pub struct ResolvedInput {
    pub planned: PlannedInput,
    pub sha256: Option<Sha256Digest>,
    pub verified: Verified,
}

/// A recipe with its versions and inputs decided.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: RecipeRef,
    pub recipe: Recipe,
    pub versions: Versions,
    /// The lock file the versions and digests came from.
    pub from_lock: Option<PathBuf>,
    /// The architectures to build.
    pub arches: Vec<Arch>,
    pub inputs: Vec<ResolvedInput>,
}

/// What resolving may use.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Build this version instead of the locked or newest one.
    pub version: Option<Version>,
    /// Architectures; empty means the recipe's.
    pub arches: Vec<Arch>,
    /// Use the lock file when present (false for `bakery lock`).
    pub use_lock: bool,
    /// Accept inputs with no checksum and no pin.
    pub allow_unpinned: bool,
}

/// Decides the versions and digests of `target`'s inputs.
pub async fn resolve(
    discovery: &Discovery,
    target: &RecipeRef,
    opts: &ResolveOptions,
) -> Result<Resolved, InputsError> {
    let name = target.target();
    let lock = if opts.use_lock {
        target
            .read_lock()?
            .filter(|l| opts.version.as_ref().is_none_or(|v| *v == l.versions.main))
    } else {
        None
    };
    let lock_file = target.lock_path();
    let versions = match &lock {
        Some(l) => {
            l.check_target(
                &target.template.name,
                target.stream.as_ref(),
                &lock_file,
                &name,
            )?;
            l.versions.clone()
        }
        None => {
            discovery
                .resolve(
                    &target.template,
                    target.stream.as_ref(),
                    opts.version.as_ref(),
                )
                .await?
        }
    };
    let recipe = target.template.instantiate(Some(&versions.main))?;
    let arches: Vec<Arch> = if opts.arches.is_empty() {
        recipe.architectures.clone()
    } else {
        let mut a = Vec::new();
        for x in &opts.arches {
            if !recipe.architectures.contains(x) {
                let supported: Vec<&str> =
                    recipe.architectures.iter().map(|a| a.as_str()).collect();
                return Err(
                    BuildError::Stage(crate::stage::StageError::UnsupportedArch {
                        location: recipe.architectures_location.clone(),
                        arch: *x,
                        supported: supported.join(", "),
                    })
                    .into(),
                );
            }
            if !a.contains(x) {
                a.push(*x);
            }
        }
        a
    };
    let mut planned = Vec::new();
    if let Some(remote) = &recipe.remote {
        for &arch in &arches {
            planned.extend(remote.plan(recipe.name.as_str(), &versions, arch).map_err(
                |message| InputsError::Plan {
                    target: name.clone(),
                    message,
                },
            )?);
        }
    }
    let mut inputs = Vec::new();
    if let Some(l) = &lock {
        for p in planned {
            let entry = l.pinned_for(&p, &lock_file, &name)?;
            inputs.push(ResolvedInput {
                sha256: Some(entry.sha256),
                verified: Verified::Lock(lock_file.clone()),
                planned: p,
            });
        }
    } else {
        // Checksum files are fetched in parallel.
        let mut set = tokio::task::JoinSet::new();
        for (i, p) in planned.iter().enumerate() {
            if let PlannedChecksum::File { url, name: file } = &p.checksum {
                let fetcher = discovery.fetcher.clone();
                let (url, file) = (url.clone(), file.clone());
                set.spawn(async move {
                    let parsed = crate::fetch::parse_url(&url);
                    let r = match parsed {
                        Ok(u) => fetcher.fetch_checksum(&u, &file).await,
                        Err(e) => Err(e),
                    };
                    (i, url, r)
                });
            }
        }
        let mut sums: BTreeMap<usize, (String, Sha256Digest)> = BTreeMap::new();
        let mut first_err: Option<(usize, FetchError)> = None;
        while let Some(j) = set.join_next().await {
            let (i, url, r) = j.map_err(|e| InputsError::Plan {
                target: name.clone(),
                message: format!("checksum task failed: {e}"),
            })?;
            match r {
                Ok(d) => {
                    sums.insert(i, (url, d));
                }
                Err(e) => {
                    if first_err.as_ref().is_none_or(|(k, _)| i < *k) {
                        first_err = Some((i, e));
                    }
                }
            }
        }
        if let Some((_, e)) = first_err {
            return Err(e.into());
        }
        for (i, p) in planned.into_iter().enumerate() {
            let (sha256, verified) = match sums.remove(&i) {
                Some((url, d)) => (Some(d), Verified::ChecksumFile(url)),
                None if opts.allow_unpinned => (None, Verified::Unpinned),
                None => {
                    return Err(InputsError::Unpinned {
                        target: name.clone(),
                        source_name: p.source.clone(),
                        arch: p.arch,
                        url: p.url.clone(),
                    })
                }
            };
            inputs.push(ResolvedInput {
                planned: p,
                sha256,
                verified,
            });
        }
    }
    Ok(Resolved {
        target: target.clone(),
        recipe,
        versions,
        from_lock: lock.map(|_| lock_file),
        arches,
        inputs,
    })
}

fn request(i: &ResolvedInput) -> Result<FetchRequest, FetchError> {
    let mut r = FetchRequest::new(&i.planned.url, i.sha256)?;
    r.label = format!("{} ({})", r.label, i.planned.arch);
    Ok(r)
}

/// `bakery lock`: resolves `target` (asking upstream; an existing lock is
/// ignored), pins every input of every architecture — inputs without a
/// published checksum are downloaded once and their digest recorded — and
/// writes the lock file atomically. Returns it and its path.
pub fn lock(
    fetcher: &Fetcher,
    github: &GithubApi,
    target: &RecipeRef,
    version: Option<Version>,
) -> Result<(LockFile, PathBuf), InputsError> {
    let discovery = Discovery::new(fetcher.clone(), github.clone());
    let opts = ResolveOptions {
        version,
        arches: Vec::new(),
        use_lock: false,
        allow_unpinned: true,
    };
    let resolved = crate::fetch::block_on(async { resolve(&discovery, target, &opts).await })??;
    let unpinned: Vec<&ResolvedInput> = resolved
        .inputs
        .iter()
        .filter(|i| i.sha256.is_none())
        .collect();
    let reqs = unpinned
        .iter()
        .map(|i| request(i))
        .collect::<Result<Vec<_>, _>>()?;
    let fetched = crate::fetch::block_on(fetcher.try_fetch_all(&reqs))??;
    let mut pinned: BTreeMap<(String, Arch), Sha256Digest> = BTreeMap::new();
    for (i, f) in unpinned.iter().zip(&fetched) {
        pinned.insert((i.planned.source.clone(), i.planned.arch), f.digest);
    }
    let mut inputs = Vec::new();
    for i in &resolved.inputs {
        let (sha256, checked) = match (&i.sha256, &i.verified) {
            (Some(d), Verified::ChecksumFile(u)) => (*d, Checked::ChecksumFile(u.clone())),
            (Some(d), _) => (*d, Checked::Pinned),
            (None, _) => match pinned.get(&(i.planned.source.clone(), i.planned.arch)) {
                Some(d) => (*d, Checked::Pinned),
                None => {
                    return Err(InputsError::Plan {
                        target: target.target(),
                        message: format!("{} was not downloaded", i.planned.url),
                    })
                }
            },
        };
        inputs.push(LockedInput {
            source: i.planned.source.clone(),
            arch: i.planned.arch,
            version: i.planned.version.clone(),
            url: i.planned.url.clone(),
            sha256,
            checked,
        });
    }
    let lock = LockFile {
        recipe: resolved.recipe.name.clone(),
        stream: target.stream.clone(),
        versions: resolved.versions.clone(),
        inputs,
    };
    let path = target.lock_path();
    lock.write(&path, &target.target())?;
    Ok((lock, path))
}

// ---------------------------------------------------------------------------
// Fingerprints and provenance
// ---------------------------------------------------------------------------

fn hash_tree(h: &mut Sha256, dir: &Path, rel: &str) -> Result<(), InputsError> {
    let mut entries: Vec<(Vec<u8>, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| (e.file_name().as_bytes().to_vec(), e.path()))
                    .map_err(io_err(dir, "cannot list"))
            })
            .collect::<Result<_, _>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir, "cannot list")(e)),
    };
    entries.sort();
    for (name, path) in entries {
        let child = format!("{rel}/{}", String::from_utf8_lossy(&name));
        let m = fs::symlink_metadata(&path).map_err(io_err(&path, "cannot stat"))?;
        h.update(child.as_bytes());
        h.update([0]);
        if m.is_dir() {
            h.update(b"d");
            hash_tree(h, &path, &child)?;
        } else if m.file_type().is_symlink() {
            let t = fs::read_link(&path).map_err(io_err(&path, "cannot read symlink"))?;
            h.update(b"l");
            h.update(t.as_os_str().as_bytes());
        } else {
            h.update(if m.permissions().mode() & 0o111 != 0 {
                b"x"
            } else {
                b"f"
            });
            let mut f = fs::File::open(&path).map_err(io_err(&path, "cannot read"))?;
            let mut fh = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(io_err(&path, "cannot read"))?;
                if n == 0 {
                    break;
                }
                fh.update(&buf[..n]);
            }
            h.update(fh.finalize());
        }
        h.update([0]);
    }
    Ok(())
}

/// The input fingerprint of one architecture's image (see the module
/// docs). `None` if an input's digest is not known yet.
pub fn fingerprint(
    resolved: &Resolved,
    arch: Arch,
    digests: &BTreeMap<(String, Arch), Sha256Digest>,
    opts: &BuildOptions,
) -> Result<Sha256Digest, InputsError> {
    let mut h = Sha256::new();
    let mut field = |k: &str, v: &[u8]| {
        h.update(k.as_bytes());
        h.update([0]);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    };
    field("bakery", env!("CARGO_PKG_VERSION").as_bytes());
    field("recipe.toml", resolved.target.template.text().as_bytes());
    field("arch", arch.as_str().as_bytes());
    field("version", resolved.versions.main.as_str().as_bytes());
    for (k, v) in &resolved.versions.secondary {
        field(&format!("secondary.{k}"), v.as_str().as_bytes());
    }
    for i in resolved.inputs.iter().filter(|i| i.planned.arch == arch) {
        let d = digests
            .get(&(i.planned.source.clone(), arch))
            .copied()
            .or(i.sha256)
            .ok_or_else(|| InputsError::Plan {
                target: resolved.target.target(),
                message: format!("no digest for {}", i.planned.url),
            })?;
        field(
            "input",
            format!("{} {} {}", i.planned.source, i.planned.url, d).as_bytes(),
        );
    }
    let sq = &opts.squashfs;
    field(
        "squashfs",
        format!("{:?} {:?} {}", sq.compression, sq.level, sq.block_size).as_bytes(),
    );
    field(
        "source-date-epoch",
        opts.source_date_epoch.to_string().as_bytes(),
    );
    let plan = opts.seal.plan();
    field("seal", format!("{:?}", plan.format).as_bytes());
    if let Some(k) = &plan.key {
        field("signer", k.certificate_fingerprint().to_hex().as_bytes());
    }
    let mut tree = Sha256::new();
    hash_tree(&mut tree, &resolved.recipe.files_dir(), "files")?;
    field("files", &tree.finalize());
    Ok(Sha256Digest::from_bytes(h.finalize().into()))
}

/// One input as recorded in a provenance file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceInput {
    pub source: String,
    pub version: String,
    pub url: String,
    pub sha256: String,
    /// `lock PATH`, the checksum file's URL, or `unpinned`.
    pub verified: String,
}

/// One output file as recorded in a provenance file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceOutput {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `NAME-VERSION-ARCH.provenance.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub bakery: String,
    pub recipe: String,
    pub stream: Option<String>,
    pub version: String,
    pub secondary: BTreeMap<String, String>,
    pub arch: String,
    pub fingerprint: String,
    pub lock: Option<String>,
    /// True when an input was downloaded without any digest to check.
    pub unpinned: bool,
    pub inputs: Vec<ProvenanceInput>,
    pub outputs: Vec<ProvenanceOutput>,
}

/// The provenance file of an image file name (`X.raw` → `X.provenance.json`).
pub fn provenance_path(out_dir: &Path, image_file_name: &str) -> PathBuf {
    let stem = image_file_name
        .strip_suffix(".raw")
        .unwrap_or(image_file_name);
    out_dir.join(format!("{stem}.provenance.json"))
}

fn file_sha256(path: &Path) -> Option<(u64, Sha256Digest)> {
    let mut f = fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        n_total += n as u64;
        h.update(&buf[..n]);
    }
    Some((n_total, Sha256Digest::from_bytes(h.finalize().into())))
}

/// Whether the output recorded with fingerprint `fp` for this image is
/// complete and intact.
pub fn up_to_date(out_dir: &Path, image_file_name: &str, fp: &Sha256Digest) -> bool {
    let Ok(text) = fs::read_to_string(provenance_path(out_dir, image_file_name)) else {
        return false;
    };
    let Ok(p) = serde_json::from_str::<Provenance>(&text) else {
        return false;
    };
    if p.fingerprint != fp.to_hex() || p.outputs.is_empty() {
        return false;
    }
    let sums = fs::read_to_string(out_dir.join(SHA256SUMS)).unwrap_or_default();
    p.outputs.iter().all(|o| {
        let listed = sums
            .lines()
            .any(|l| l == format!("{}  {}", o.sha256, o.name));
        listed
            && file_sha256(&out_dir.join(&o.name))
                .is_some_and(|(size, d)| size == o.size && d.to_hex() == o.sha256)
    })
}

/// Replaces `path` with `bytes` (mode 0644) via [`plumbing::atomic`]:
/// temporary file in the same directory, fsync, rename, directory fsync.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InputsError> {
    plumbing::atomic::write_atomic(path, bytes, 0o644).map_err(io_err(path, "cannot write"))
}

// ---------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------

/// Options of [`cook`].
#[derive(Debug, Clone)]
pub struct CookOptions {
    /// Output directory, image and seal options; `arches` empty = the
    /// recipes' own.
    pub build: BuildOptions,
    pub allow_unpinned: bool,
    /// Build even if the output for these inputs exists.
    pub force: bool,
    /// Build this version (one recipe only).
    pub version: Option<Version>,
}

/// What happened to one recipe.
#[derive(Debug, Clone)]
pub enum Outcome {
    Built(BuildReport),
    /// The outputs for exactly these inputs exist; nothing was rebuilt.
    UpToDate(Vec<PathBuf>),
}

/// The result of building one recipe.
#[derive(Debug, Clone)]
pub struct CookReport {
    pub target: String,
    pub version: Version,
    pub from_lock: Option<PathBuf>,
    pub outcome: Outcome,
    /// Provenance files written (empty when up to date).
    pub provenance: Vec<PathBuf>,
    /// URLs downloaded without verification (`--allow-unpinned`).
    pub unpinned: Vec<String>,
    /// Inputs downloaded / taken from the cache.
    pub downloaded: usize,
    pub cached: usize,
}

/// Builds `targets`: resolves them (in parallel), skips those whose
/// outputs for exactly these inputs exist, starts every remaining input's
/// download at once, and unpacks and builds each recipe as soon as its
/// inputs are in. Any error stops the run; a failing recipe leaves nothing
/// in the output directory (recipes finished before stay). Reports come in
/// the order of `targets`.
pub fn cook(
    fetcher: &Fetcher,
    github: &GithubApi,
    targets: &[RecipeRef],
    opts: &CookOptions,
) -> Result<Vec<CookReport>, InputsError> {
    let discovery = Discovery::new(fetcher.clone(), github.clone());
    let ropts = ResolveOptions {
        version: opts.version.clone(),
        arches: opts.build.arches.clone(),
        use_lock: true,
        allow_unpinned: opts.allow_unpinned,
    };
    let resolved: Vec<Resolved> = crate::fetch::block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, t) in targets.iter().enumerate() {
            let (d, t, o) = (discovery.clone(), t.clone(), ropts.clone());
            set.spawn(async move { (i, resolve(&d, &t, &o).await) });
        }
        let mut out: Vec<Option<Result<Resolved, InputsError>>> =
            (0..targets.len()).map(|_| None).collect();
        while let Some(j) = set.join_next().await {
            match j {
                Ok((i, r)) => out[i] = Some(r),
                Err(e) => {
                    return Err(InputsError::Plan {
                        target: "(resolve)".into(),
                        message: format!("task failed: {e}"),
                    })
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(InputsError::Plan {
                        target: "(resolve)".into(),
                        message: "lost".into(),
                    })
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })??;

    let out_dir = &opts.build.output_dir;
    let no_digests = BTreeMap::new();
    // Skip recipes whose outputs exist for exactly these inputs.
    let mut reports: Vec<Option<CookReport>> = Vec::new();
    for r in &resolved {
        // Recipes without remote inputs have no provenance: always built.
        let mut done =
            !opts.force && r.recipe.remote.is_some() && r.inputs.iter().all(|i| i.sha256.is_some());
        let mut images = Vec::new();
        if done {
            for &arch in &r.arches {
                let name = r.recipe.image_file_name(arch);
                let fp = fingerprint(r, arch, &no_digests, &opts.build)?;
                if !up_to_date(out_dir, &name, &fp) {
                    done = false;
                    break;
                }
                images.push(out_dir.join(name));
            }
        }
        reports.push(done.then(|| CookReport {
            target: r.target.target(),
            version: r.versions.main.clone(),
            from_lock: r.from_lock.clone(),
            outcome: Outcome::UpToDate(images),
            provenance: Vec::new(),
            unpinned: Vec::new(),
            downloaded: 0,
            cached: 0,
        }));
    }

    // Every remaining recipe's downloads start at once (bounded by the
    // fetcher's concurrency); each recipe is built as soon as its own
    // inputs are in, while the others are still downloading. Builds run
    // one at a time (they share the output directory's SHA256SUMS).
    let built: BTreeMap<usize, CookReport> = crate::fetch::block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (ri, r) in resolved.iter().enumerate() {
            if reports[ri].is_some() {
                continue;
            }
            let reqs = r
                .inputs
                .iter()
                .map(request)
                .collect::<Result<Vec<_>, _>>()?;
            let f = fetcher.clone();
            set.spawn(async move { (ri, f.fetch_all(&reqs).await) });
        }
        let mut built = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            let (ri, results) = joined.map_err(|e| InputsError::Plan {
                target: "(fetch)".into(),
                message: format!("download task failed: {e}"),
            })?;
            // The first failure stops everything (dropping the set aborts
            // the other downloads); recipes already built stay built.
            let fetched = results.into_iter().collect::<Result<Vec<_>, _>>()?;
            let r = &resolved[ri];
            let report = tokio::task::block_in_place(|| build_one(r, &fetched, opts))?;
            built.insert(ri, report);
        }
        Ok::<_, InputsError>(built)
    })??;

    let mut built = built;
    let mut out = Vec::new();
    for (ri, rep) in reports.into_iter().enumerate() {
        match rep.or_else(|| built.remove(&ri)) {
            Some(r) => out.push(r),
            None => {
                return Err(InputsError::Plan {
                    target: resolved[ri].target.target(),
                    message: "was neither built nor up to date".into(),
                })
            }
        }
    }
    Ok(out)
}

/// Unpacks and builds one recipe whose inputs are `fetched` (in the order
/// of `r.inputs`), and writes the provenance files.
fn build_one(
    r: &Resolved,
    fetched: &[crate::fetch::Fetched],
    opts: &CookOptions,
) -> Result<CookReport, InputsError> {
    let target = r.target.target();
    let mut digests = BTreeMap::new();
    let (mut downloaded, mut cached) = (0, 0);
    for (i, f) in r.inputs.iter().zip(fetched) {
        digests.insert((i.planned.source.clone(), i.planned.arch), f.digest);
        if f.from_cache {
            cached += 1;
        } else {
            downloaded += 1;
        }
    }
    let out_dir = &opts.build.output_dir;
    // With unpinned inputs the fingerprint is known only now.
    if !opts.force && r.inputs.iter().any(|i| i.sha256.is_none()) {
        let mut images = Vec::new();
        let mut all = true;
        for &arch in &r.arches {
            let name = r.recipe.image_file_name(arch);
            if !up_to_date(
                out_dir,
                &name,
                &fingerprint(r, arch, &digests, &opts.build)?,
            ) {
                all = false;
                break;
            }
            images.push(out_dir.join(name));
        }
        if all {
            return Ok(CookReport {
                target,
                version: r.versions.main.clone(),
                from_lock: r.from_lock.clone(),
                outcome: Outcome::UpToDate(images),
                provenance: Vec::new(),
                unpinned: Vec::new(),
                downloaded,
                cached,
            });
        }
    }

    // Unpack every input into its architecture's directory.
    let work = tempfile::Builder::new()
        .prefix(".bakery-inputs-")
        .tempdir()
        .map_err(io_err(
            &std::env::temp_dir(),
            "cannot create a temporary directory",
        ))?;
    let mut dirs: BTreeMap<Arch, PathBuf> = BTreeMap::new();
    if let Some(remote) = &r.recipe.remote {
        for &arch in &r.arches {
            let dir = work.path().join(arch.as_str());
            fs::create_dir_all(&dir).map_err(io_err(&dir, "cannot create"))?;
            dirs.insert(arch, dir);
        }
        if fetched.len() != r.inputs.len() {
            return Err(InputsError::Plan {
                target: target.clone(),
                message: "not every input was fetched".into(),
            });
        }
        for (i, f) in r.inputs.iter().zip(fetched) {
            let source = remote
                .sources
                .get(i.planned.index)
                .ok_or_else(|| InputsError::Plan {
                    target: target.clone(),
                    message: format!("no source #{}", i.planned.index),
                })?;
            let dir = dirs.get(&i.planned.arch).ok_or_else(|| InputsError::Plan {
                target: target.clone(),
                message: format!("no directory for {}", i.planned.arch),
            })?;
            source.unpack_into(&f.path, &i.planned, dir)?;
        }
    }
    let mut bopts = opts.build.clone();
    bopts.arches = r.arches.clone();
    let report = crate::build::build_recipe_with_inputs(&r.recipe, &bopts, &dirs)?;
    if r.recipe.remote.is_none() {
        return Ok(CookReport {
            target,
            version: r.versions.main.clone(),
            from_lock: None,
            outcome: Outcome::Built(report),
            provenance: Vec::new(),
            unpinned: Vec::new(),
            downloaded,
            cached,
        });
    }

    // Provenance beside every image.
    let unpinned: Vec<String> = r
        .inputs
        .iter()
        .filter(|i| i.verified == Verified::Unpinned)
        .map(|i| i.planned.url.clone())
        .collect();
    let mut provenance = Vec::new();
    for img in &report.images {
        let arch = img.arch;
        let fp = fingerprint(r, arch, &digests, &opts.build)?;
        let mut outputs = vec![ProvenanceOutput {
            name: r.recipe.image_file_name(arch),
            size: img.size,
            sha256: img.sha256.to_hex(),
        }];
        outputs.extend(img.sidecars.iter().map(|s| ProvenanceOutput {
            name: s.name.clone(),
            size: s.size,
            sha256: s.sha256.to_hex(),
        }));
        let p = Provenance {
            bakery: env!("CARGO_PKG_VERSION").to_string(),
            recipe: r.recipe.name.to_string(),
            stream: r.target.stream.as_ref().map(|s| s.to_string()),
            version: r.versions.main.to_string(),
            secondary: r
                .versions
                .secondary
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            arch: arch.to_string(),
            fingerprint: fp.to_hex(),
            lock: r.from_lock.as_ref().map(|p| p.display().to_string()),
            unpinned: r
                .inputs
                .iter()
                .any(|i| i.planned.arch == arch && i.verified == Verified::Unpinned),
            inputs: r
                .inputs
                .iter()
                .filter(|i| i.planned.arch == arch)
                .map(|i| ProvenanceInput {
                    source: i.planned.source.clone(),
                    version: i.planned.version.to_string(),
                    url: i.planned.url.clone(),
                    sha256: digests
                        .get(&(i.planned.source.clone(), arch))
                        .copied()
                        .or(i.sha256)
                        .map(|d| d.to_hex())
                        .unwrap_or_default(),
                    verified: i.verified.as_text(),
                })
                .collect(),
            outputs,
        };
        let path = provenance_path(out_dir, &r.recipe.image_file_name(arch));
        let mut json = serde_json::to_vec_pretty(&p).map_err(|e| InputsError::Plan {
            target: target.clone(),
            message: format!("cannot encode provenance: {e}"),
        })?;
        json.push(b'\n');
        write_atomic(&path, &json)?;
        provenance.push(path);
    }
    Ok(CookReport {
        target,
        version: r.versions.main.clone(),
        from_lock: r.from_lock.clone(),
        outcome: Outcome::Built(report),
        provenance,
        unpinned,
        downloaded,
        cached,
    })
}

/// `bakery versions`: the versions of a recipe (of its stream, if the
/// reference names one), newest first.
pub fn versions(
    fetcher: &Fetcher,
    github: &GithubApi,
    target: &RecipeRef,
) -> Result<Vec<Version>, InputsError> {
    let discovery = Discovery::new(fetcher.clone(), github.clone());
    let all = crate::fetch::block_on(discovery.versions(&target.template))??;
    Ok(match &target.stream {
        Some(s) => all.into_iter().filter(|v| s.contains(v)).collect(),
        None => all,
    })
}

/// A parsed URL for messages and tests.
pub fn url(u: &str) -> Result<Url, FetchError> {
    crate::fetch::parse_url(u)
}

/// One line of `bakery list`.
#[derive(Debug, Clone)]
pub struct RecipeSummary {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    pub architectures: Vec<Arch>,
    /// "per minor (NAME-vX.Y)" or none.
    pub streams: Option<&'static str>,
    /// Where versions come from, or the fixed version.
    pub versions_from: String,
    /// Lock files: (target, locked version).
    pub locks: Vec<(String, Version)>,
}

/// `bakery list`: every recipe in `recipes_dir` with its architectures,
/// streams and lock files (read offline).
pub fn list(recipes_dir: &Path) -> Result<Vec<RecipeSummary>, InputsError> {
    let mut out = Vec::new();
    for dir in recipe_dirs(recipes_dir)? {
        let t = RecipeTemplate::load(&dir)?;
        let up = t.remote.as_ref().and_then(|r| r.upstream.as_ref());
        let versions_from = match (up, &t.fixed_version) {
            (Some(u), _) => match &u.source {
                crate::source::VersionSource::Github { owner, repo } => {
                    format!("GitHub releases {owner}/{repo}")
                }
                crate::source::VersionSource::Listing { url, .. } => format!("listing {url}"),
                crate::source::VersionSource::KubernetesSchedule { url } => {
                    format!("Kubernetes schedule {url}")
                }
                crate::source::VersionSource::VersionUrl { url } => url.to_string(),
            },
            (None, Some(v)) => format!("fixed {v}"),
            (None, None) => "-".into(),
        };
        let mut locks = Vec::new();
        let rd = fs::read_dir(&dir).map_err(io_err(&dir, "cannot list"))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lock"))
            .collect();
        names.sort();
        for n in names {
            let stream = if n == crate::lock::LOCK_FILE {
                None
            } else {
                n.strip_suffix(".lock")
                    .and_then(|s| s.strip_prefix(&format!("{}-", t.name)))
                    .and_then(|s| s.parse::<Stream>().ok())
            };
            let r = RecipeRef {
                template: t.clone(),
                stream,
            };
            if let Ok(Some(l)) = LockFile::read(&dir.join(&n), &r.target()) {
                locks.push((r.target(), l.versions.main));
            }
        }
        out.push(RecipeSummary {
            name: t.name.to_string(),
            dir: dir.clone(),
            description: t.description.clone(),
            architectures: t.architectures.clone(),
            streams: up
                .and_then(|u| u.streams)
                .map(|_| "per minor (NAME-vMAJOR.MINOR)"),
            versions_from,
            locks,
        });
    }
    Ok(out)
}
