//! Publishing to a feed directory ([`publish_dir`]): copy new images in,
//! apply retention, write transfer files and snippets, sign and write the
//! manifest, the catalogue, and only then delete retired images.
//!
//! # Order, and what a client can observe
//!
//! Every file appears under its final name complete (temp file, fsync,
//! rename). The steps run in this order, so that at every instant each
//! manifest that verifies names only files that are present:
//!
//! 1. new images and sidecars are copied in (not yet listed anywhere);
//! 2. transfer files and snippets are rewritten (they only point at
//!    images that are present);
//! 3. per extension, `SHA256SUMS.gpg` is written, then `SHA256SUMS`. A
//!    client reads `SHA256SUMS` first and the signature second, so a new
//!    manifest is never visible before its signature; a client that read
//!    the old manifest just before the switch gets the new signature and
//!    fails verification — verifiably stale, it retries later. A crash
//!    between the two leaves that same detectable mismatch, which the next
//!    run repairs (it rewrites whatever does not match what it would write);
//! 4. `catalogue.json.gpg`, then `catalogue.json`;
//! 5. retired images, their sidecars and stale generated files are deleted.
//!
//! Re-running with the same inputs writes nothing: files are compared
//! before writing and an existing signature that still verifies is kept,
//! so bytes and mtimes stay put.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sysupdate::manifest::ManifestError;
use sysupdate::{Arch, Date, Manifest, ManifestName, Sha256Digest, Version};

use crate::catalogue::{
    Catalogue, CatalogueExtension, CatalogueFile, CatalogueImage, CatalogueSnippet,
    CatalogueStream, CATALOGUE_FILE, CATALOGUE_SIG_FILE, FORMAT,
};
use crate::fsutil::{self, io_err, FileDigests, IoError};
use crate::layout::{self, FeedUrl, Stream, StreamPolicy, SIDECAR_SUFFIXES};
use crate::name::{ExtensionName, FeedFileName};
use crate::retention::{newest_per_stream, retain, Retention};
use crate::signer::{ManifestSigner, SignError};
use crate::snippets::{node_config, SnippetInput};
use crate::transfer::{render_stream_transfer, stream_transfer};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "SHA256SUMS";
/// Its detached OpenPGP signature.
pub const MANIFEST_SIG_FILE: &str = "SHA256SUMS.gpg";

/// Extensions published in minor streams unless told otherwise.
pub const DEFAULT_MINOR_STREAM_EXTENSIONS: [&str; 3] = ["kubernetes", "k3s", "rke2"];

/// One sealed image to add to the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageToPublish {
    pub name: ExtensionName,
    pub version: Version,
    pub arch: Arch,
    /// The signed DDI (or bare image), published as `NAME-VERSION-ARCH.raw`.
    pub path: PathBuf,
    /// Sidecar files: (suffix from [`SIDECAR_SUFFIXES`], path), published
    /// as `NAME-VERSION-ARCH{suffix}` and listed in `SHA256SUMS`.
    pub sidecars: Vec<(String, PathBuf)>,
}

/// `BEST-BEFORE` in manifests: valid for `days` from `today`. An
/// unchanged manifest is re-signed only when less than half of its window
/// is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BestBefore {
    pub days: u32,
    pub today: Date,
}

/// A visible change to the feed, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A file appeared or was replaced under its final name.
    Wrote(PathBuf),
    /// A file was removed.
    Removed(PathBuf),
}

/// How to publish.
pub struct PublishOptions<'a> {
    pub url: FeedUrl,
    pub retention: Retention,
    /// `InstancesMax=` in transfer files (at least 2).
    pub instances_max: u64,
    /// Extensions published with minor streams.
    pub minor_streams: BTreeSet<ExtensionName>,
    pub best_before: Option<BestBefore>,
    pub signer: &'a dyn ManifestSigner,
    /// PEM certificate(s) for `/etc/verity.d/NAME.crt` in snippets.
    pub verity_certificate: Option<String>,
    pub observer: Option<&'a dyn Fn(&FeedEvent)>,
}

impl<'a> PublishOptions<'a> {
    /// Defaults: keep 3 per stream, `InstancesMax=3`, minor streams for
    /// kubernetes, k3s and rke2, no BEST-BEFORE, no verity certificate.
    pub fn new(url: FeedUrl, signer: &'a dyn ManifestSigner) -> Self {
        PublishOptions {
            url,
            retention: Retention::default(),
            instances_max: 3,
            minor_streams: DEFAULT_MINOR_STREAM_EXTENSIONS
                .iter()
                .filter_map(|n| ExtensionName::new(*n).ok())
                .collect(),
            best_before: None,
            signer,
            verity_certificate: None,
            observer: None,
        }
    }

    fn policy(&self, name: &ExtensionName) -> StreamPolicy {
        if self.minor_streams.contains(name) {
            StreamPolicy::Minor
        } else {
            StreamPolicy::Single
        }
    }

    fn emit(&self, e: FeedEvent) {
        if let Some(o) = self.observer {
            o(&e);
        }
    }
}

/// What a publish did, per extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    pub extensions: Vec<ExtensionReport>,
    pub catalogue_written: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionReport {
    pub name: Option<ExtensionName>,
    /// Images and sidecars copied in.
    pub added: Vec<FeedFileName>,
    /// Images and sidecars deleted by retention.
    pub retired: Vec<FeedFileName>,
    /// Transfer files and snippets written.
    pub generated: Vec<FeedFileName>,
    pub manifest_written: bool,
}

impl PublishReport {
    /// Whether the run changed nothing.
    pub fn is_noop(&self) -> bool {
        !self.catalogue_written
            && self.extensions.iter().all(|e| {
                e.added.is_empty()
                    && e.retired.is_empty()
                    && e.generated.is_empty()
                    && !e.manifest_written
            })
    }
}

/// Why a publish stopped. Files already written are consistent (see the
/// module docs); re-run after fixing the cause.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path}: {reason}")]
    InvalidImage { path: PathBuf, reason: String },
    #[error("{file} is already published with sha256 {published} but {source_path} has sha256 {new}: a published version is immutable; bump the version (or delete the old file from the feed by hand if it was never served)")]
    ImageChanged {
        file: PathBuf,
        source_path: PathBuf,
        published: Sha256Digest,
        new: Sha256Digest,
    },
    #[error("{file}: {message}")]
    Corrupt { file: PathBuf, message: String },
    #[error("{0}; fix or delete the manifest (it is rebuilt from the images)")]
    Manifest(#[from] ManifestError),
    #[error("{file}: {source}")]
    Sign {
        file: PathBuf,
        #[source]
        source: SignError,
    },
}

/// One file of an extension's feed, with its digests.
#[derive(Debug, Clone)]
struct FeedFile {
    file: FeedFileName,
    digests: FileDigests,
}

#[derive(Debug, Clone)]
struct ImageState {
    image: FeedFile,
    sidecars: BTreeMap<&'static str, FeedFile>,
}

/// The state of one extension directory as the publish goes.
struct ExtState {
    name: ExtensionName,
    dir: PathBuf,
    policy: StreamPolicy,
    images: BTreeMap<(Version, Arch), ImageState>,
    orphans: Vec<FeedFileName>,
    keep: BTreeSet<(Version, Arch)>,
    generated: BTreeMap<FeedFileName, Vec<u8>>,
    report: ExtensionReport,
}

/// Publishes `new_images` into the feed directory `feed` (created if
/// missing) and re-applies retention, transfer files, snippets, manifests
/// and the catalogue to every extension already in it.
pub fn publish_dir(
    feed: &Path,
    new_images: &[ImageToPublish],
    opts: &PublishOptions<'_>,
) -> Result<PublishReport, PublishError> {
    fs::create_dir_all(feed).map_err(io_err("creating", feed))?;
    fsutil::remove_stale_temps(feed)?;

    // Validate every input before touching the feed.
    let mut by_ext: BTreeMap<ExtensionName, Vec<&ImageToPublish>> = BTreeMap::new();
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    for img in new_images {
        validate_new(img, opts.policy(&img.name))?;
        let file = layout::image_file_name(&img.name, &img.version, img.arch);
        if let Some(prev) = seen.insert(file.clone(), &img.path) {
            if prev != img.path {
                return Err(PublishError::InvalidImage {
                    path: img.path.clone(),
                    reason: format!("{file} is given twice, also from {}", prev.display()),
                });
            }
            continue;
        }
        by_ext.entry(img.name.clone()).or_default().push(img);
    }
    for name in existing_extensions(feed)? {
        by_ext.entry(name).or_default();
    }

    // 1. Scan and copy images in.
    let mut exts = Vec::new();
    for (name, news) in &by_ext {
        let mut st = scan_extension(feed, name, opts.policy(name))?;
        for img in news {
            add_image(&mut st, img, opts)?;
        }
        exts.push(st);
    }

    // 2. Retention; transfer files and snippets.
    let keyring = opts.signer.public_keyring();
    for st in &mut exts {
        let all: Vec<(Version, Arch)> = st.images.keys().cloned().collect();
        st.keep = retain(st.policy, opts.retention, &all);
        generate_files(st, opts, &keyring)?;
        for (file, bytes) in &st.generated {
            let path = st.dir.join(file.as_str());
            if fsutil::write_if_changed(&path, bytes)? {
                opts.emit(FeedEvent::Wrote(path));
                st.report.generated.push(file.clone());
            }
        }
    }

    // 3. Manifests.
    for st in &mut exts {
        let mut m = Manifest::new();
        for (key, img) in &st.images {
            if !st.keep.contains(key) {
                continue;
            }
            for f in std::iter::once(&img.image).chain(img.sidecars.values()) {
                let n = ManifestName::new(f.file.as_str()).map_err(|e| PublishError::Corrupt {
                    file: st.dir.join(f.file.as_str()),
                    message: e.to_string(),
                })?;
                m.insert(n, f.digests.sha256);
            }
        }
        st.report.manifest_written = write_manifest(&st.dir, m, opts)?;
    }

    // 4. Catalogue.
    let cat = catalogue(&exts, opts)?;
    let catalogue_written = write_signed_pair(
        &feed.join(CATALOGUE_FILE),
        &feed.join(CATALOGUE_SIG_FILE),
        cat.to_json().as_bytes(),
        opts,
    )?;

    // 5. Retire.
    for st in &mut exts {
        let mut doomed: Vec<FeedFileName> = st.orphans.clone();
        for (key, img) in &st.images {
            if !st.keep.contains(key) {
                doomed.push(img.image.file.clone());
                doomed.extend(img.sidecars.values().map(|f| f.file.clone()));
            }
        }
        for f in doomed {
            let p = st.dir.join(f.as_str());
            if fsutil::remove_file(&p)? {
                opts.emit(FeedEvent::Removed(p));
                st.report.retired.push(f);
            }
        }
        for stale in stale_generated(st)? {
            let p = st.dir.join(&stale);
            if fsutil::remove_file(&p)? {
                opts.emit(FeedEvent::Removed(p));
            }
        }
    }

    Ok(PublishReport {
        extensions: exts.into_iter().map(|s| s.report).collect(),
        catalogue_written,
    })
}

fn validate_new(img: &ImageToPublish, policy: StreamPolicy) -> Result<(), PublishError> {
    let bad = |reason: String| PublishError::InvalidImage {
        path: img.path.clone(),
        reason,
    };
    let v = img.version.as_str();
    if !sysupdate::pattern::is_sysupdate_version(v) {
        return Err(bad(format!(
            "version {v:?} of {} cannot be published: systemd-sysupdate accepts only [A-Za-z0-9.,_+-] in versions (no '~' or '^')",
            img.name
        )));
    }
    let file = layout::image_file_name(&img.name, &img.version, img.arch);
    FeedFileName::new(&file).map_err(|e| bad(e.to_string()))?;
    if policy == StreamPolicy::Minor && layout::minor_line(&img.version).is_none() {
        return Err(bad(format!(
            "{} is published in minor streams, but version {v:?} has no vMAJOR.MINOR.PATCH form",
            img.name
        )));
    }
    if layout::parse_image_file_name(&img.name, &file) != Some((img.version.clone(), img.arch)) {
        return Err(bad(format!(
            "{file} would not parse back to version {v} and {}",
            img.arch
        )));
    }
    let mut suffixes = BTreeSet::new();
    for (suffix, path) in &img.sidecars {
        if !SIDECAR_SUFFIXES.contains(&suffix.as_str()) {
            return Err(PublishError::InvalidImage {
                path: path.clone(),
                reason: format!(
                    "unknown sidecar suffix {suffix:?}: expected one of {SIDECAR_SUFFIXES:?}"
                ),
            });
        }
        if !suffixes.insert(suffix) {
            return Err(PublishError::InvalidImage {
                path: path.clone(),
                reason: format!("sidecar {suffix} given twice"),
            });
        }
    }
    Ok(())
}

/// Subdirectories of `feed` that are extension feeds (hold a manifest),
/// sorted. Symlinks to directories are not followed.
pub(crate) fn existing_extensions(feed: &Path) -> Result<Vec<ExtensionName>, IoError> {
    let mut out = Vec::new();
    for ent in fs::read_dir(feed).map_err(io_err("listing", feed))? {
        let ent = ent.map_err(io_err("listing", feed))?;
        let Some(name) = ent
            .file_name()
            .to_str()
            .and_then(|n| ExtensionName::new(n).ok())
        else {
            continue;
        };
        let ft = ent.file_type().map_err(io_err("inspecting", &ent.path()))?;
        if ft.is_dir() && ent.path().join(MANIFEST_FILE).is_file() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

fn scan_extension(
    feed: &Path,
    name: &ExtensionName,
    policy: StreamPolicy,
) -> Result<ExtState, PublishError> {
    let dir = feed.join(name.as_str());
    match fs::symlink_metadata(&dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(PublishError::Corrupt {
                file: dir,
                message: "is not a directory (symlinked feed directories are refused)".into(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
        }
        Err(e) => return Err(io_err("inspecting", &dir)(e).into()),
    }
    fsutil::remove_stale_temps(&dir)?;

    let old_manifest = match fsutil::read_regular_if_exists(&dir.join(MANIFEST_FILE))? {
        Some(b) => Some(Manifest::parse_named(
            &b,
            &dir.join(MANIFEST_FILE).display().to_string(),
        )?),
        None => None,
    };

    let mut images: BTreeMap<(Version, Arch), ImageState> = BTreeMap::new();
    let mut sidecars: Vec<((Version, Arch), &'static str, FeedFile)> = Vec::new();
    let mut names: Vec<(String, fs::FileType)> = Vec::new();
    for ent in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
        let ent = ent.map_err(io_err("listing", &dir))?;
        let ft = ent.file_type().map_err(io_err("inspecting", &ent.path()))?;
        if let Some(n) = ent.file_name().to_str() {
            names.push((n.to_string(), ft));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (n, ft) in names {
        let image = layout::parse_image_file_name(name, &n);
        let sidecar = layout::parse_sidecar_file_name(name, &n);
        if image.is_none() && sidecar.is_none() {
            continue;
        }
        let path = dir.join(&n);
        if !ft.is_file() {
            return Err(PublishError::Corrupt {
                file: path,
                message: "is named like an image but is not a regular file (symlinks and devices are never published); remove it".into(),
            });
        }
        let Ok(file) = FeedFileName::new(n.as_str()) else {
            continue;
        };
        let digests = fsutil::digest_file(&path)?;
        if let Some(old) = &old_manifest {
            if let Some(listed) = old.get(&n) {
                if *listed != digests.sha256 {
                    return Err(PublishError::Corrupt {
                        file: path,
                        message: format!(
                            "has sha256 {} but SHA256SUMS lists {listed}: the feed was changed behind our back; restore the file or delete it",
                            digests.sha256
                        ),
                    });
                }
            }
        }
        let ff = FeedFile { file, digests };
        if let Some((v, a)) = image {
            images.insert(
                (v, a),
                ImageState {
                    image: ff,
                    sidecars: BTreeMap::new(),
                },
            );
        } else if let Some((v, a, suffix)) = sidecar {
            sidecars.push(((v, a), suffix, ff));
        }
    }
    let mut orphans = Vec::new();
    for (key, suffix, ff) in sidecars {
        match images.get_mut(&key) {
            Some(img) => {
                img.sidecars.insert(suffix, ff);
            }
            None => orphans.push(ff.file),
        }
    }
    Ok(ExtState {
        name: name.clone(),
        dir,
        policy,
        images,
        orphans,
        keep: BTreeSet::new(),
        generated: BTreeMap::new(),
        report: ExtensionReport {
            name: Some(name.clone()),
            ..ExtensionReport::default()
        },
    })
}

/// Copies one new image (and sidecars) in, or checks that the copy already
/// there is the same.
fn add_image(
    st: &mut ExtState,
    img: &ImageToPublish,
    opts: &PublishOptions<'_>,
) -> Result<(), PublishError> {
    let key = (img.version.clone(), img.arch);
    let file = FeedFileName::new(layout::image_file_name(&img.name, &img.version, img.arch))
        .map_err(|e| PublishError::InvalidImage {
            path: img.path.clone(),
            reason: e.to_string(),
        })?;
    let existing_image = st.images.get(&key).map(|s| s.image.clone());
    let image = place(st, &file, &img.path, existing_image.as_ref(), opts)?;
    let mut sidecars = st
        .images
        .get(&key)
        .map(|s| s.sidecars.clone())
        .unwrap_or_default();
    for (suffix, path) in &img.sidecars {
        let Some(suffix) = SIDECAR_SUFFIXES.iter().find(|s| **s == suffix.as_str()) else {
            continue;
        };
        let sfile = FeedFileName::new(layout::sidecar_file_name(
            &img.name,
            &img.version,
            img.arch,
            suffix,
        ))
        .map_err(|e| PublishError::InvalidImage {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let existing = sidecars.get(suffix).cloned();
        let placed = place(st, &sfile, path, existing.as_ref(), opts)?;
        sidecars.insert(suffix, placed);
    }
    st.orphans
        .retain(|o| !sidecars.values().any(|s| &s.file == o));
    st.images.insert(key, ImageState { image, sidecars });
    Ok(())
}

fn place(
    st: &mut ExtState,
    file: &FeedFileName,
    src: &Path,
    existing: Option<&FeedFile>,
    opts: &PublishOptions<'_>,
) -> Result<FeedFile, PublishError> {
    let dest = st.dir.join(file.as_str());
    if let Some(old) = existing {
        let new = fsutil::digest_input(src)?;
        if new.sha256 != old.digests.sha256 {
            return Err(PublishError::ImageChanged {
                file: dest,
                source_path: src.to_path_buf(),
                published: old.digests.sha256,
                new: new.sha256,
            });
        }
        return Ok(old.clone());
    }
    let digests = fsutil::copy_atomic(src, &dest)?;
    opts.emit(FeedEvent::Wrote(dest));
    st.report.added.push(file.clone());
    Ok(FeedFile {
        file: file.clone(),
        digests,
    })
}

fn streams_with_newest(st: &ExtState) -> BTreeMap<Stream, BTreeMap<Arch, Version>> {
    let kept: Vec<(Version, Arch)> = st.keep.iter().cloned().collect();
    newest_per_stream(st.policy, &kept)
}

fn generate_files(
    st: &mut ExtState,
    opts: &PublishOptions<'_>,
    keyring: &[u8],
) -> Result<(), PublishError> {
    let mut out = BTreeMap::new();
    let fname = |s: String, st: &ExtState| {
        FeedFileName::new(s).map_err(|e| PublishError::Corrupt {
            file: st.dir.clone(),
            message: e.to_string(),
        })
    };
    for (stream, newest) in streams_with_newest(st) {
        let stem = stream.stem(&st.name);
        let t = stream_transfer(&st.name, &stream, &opts.url, opts.instances_max).map_err(|e| {
            PublishError::Corrupt {
                file: st.dir.clone(),
                message: e.to_string(),
            }
        })?;
        let text = render_stream_transfer(&st.name, &stream, &t);
        for suffix in sysupdate::transfer::SUFFIXES {
            out.insert(
                fname(format!("{stem}{suffix}"), st)?,
                text.clone().into_bytes(),
            );
        }
        for (arch, version) in newest {
            let Some(img) = st.images.get(&(version.clone(), arch)) else {
                continue;
            };
            let url = opts.url.file_url(&st.name, &img.image.file);
            let sha512 = img.image.digests.sha512_hex();
            let cfg = node_config(&SnippetInput {
                name: &st.name,
                stream_stem: &stem,
                stream_id: stream.id(),
                arch: arch.as_str(),
                image_file: img.image.file.as_str(),
                image_url: &url,
                image_sha512_hex: &sha512,
                transfer: &text,
                keyring,
                verity_certificate: opts.verity_certificate.as_deref(),
            });
            let comment = format!(
                "Butane fragment (variant flatcar): the {} system extension, stream {}, {arch}.\n\
                 Installs {} and keeps it updated with systemd-sysupdate.\n\
                 Merge it into your config, or merge {stem}-{arch}.ign by URL.",
                st.name,
                stream.id(),
                img.image.file
            );
            out.insert(
                fname(format!("{stem}-{arch}.bu"), st)?,
                cfg.to_butane(&comment).into_bytes(),
            );
            out.insert(
                fname(format!("{stem}-{arch}.ign"), st)?,
                cfg.to_ignition_json().into_bytes(),
            );
        }
    }
    st.generated = out;
    Ok(())
}

/// Generated-looking files (`.conf`, `.transfer`, `.bu`, `.ign` starting
/// with the extension name) this run did not generate.
fn stale_generated(st: &ExtState) -> Result<Vec<String>, PublishError> {
    let mut out = Vec::new();
    for ent in fs::read_dir(&st.dir).map_err(io_err("listing", &st.dir))? {
        let ent = ent.map_err(io_err("listing", &st.dir))?;
        let Some(n) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let ours = n.starts_with(st.name.as_str())
            && [".conf", ".transfer", ".bu", ".ign"]
                .iter()
                .any(|s| n.ends_with(s));
        let generated = FeedFileName::new(n.as_str()).is_ok_and(|f| st.generated.contains_key(&f));
        if ours && !generated && ent.file_type().is_ok_and(|t| t.is_file()) {
            out.push(n);
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the manifest pair unless the feed already holds an equivalent,
/// correctly signed one. Returns whether it wrote.
fn write_manifest(
    dir: &Path,
    mut m: Manifest,
    opts: &PublishOptions<'_>,
) -> Result<bool, PublishError> {
    let path = dir.join(MANIFEST_FILE);
    if let Some(bb) = opts.best_before {
        let old = fsutil::read_regular_if_exists(&path)?.and_then(|b| Manifest::parse(&b).ok());
        let fresh = bb.today.add_days(i64::from(bb.days));
        let min_left = bb.today.add_days(i64::from(bb.days.div_ceil(2)));
        let keep_old = old.as_ref().and_then(|o| {
            let same = o.entries().eq(m.entries());
            match (same, o.best_before(), min_left) {
                (true, Some(d), Some(min)) if d >= min => Some(d),
                _ => None,
            }
        });
        m.set_best_before(keep_old.or(fresh));
    }
    write_signed_pair(
        &path,
        &dir.join(MANIFEST_SIG_FILE),
        m.render().as_bytes(),
        opts,
    )
}

/// Writes `sig` then `data` (see the module docs), skipping both when the
/// data is unchanged and the present signature verifies.
fn write_signed_pair(
    data_path: &Path,
    sig_path: &Path,
    data: &[u8],
    opts: &PublishOptions<'_>,
) -> Result<bool, PublishError> {
    let old = fsutil::read_regular_if_exists(data_path)?;
    let old_sig = fsutil::read_regular_if_exists(sig_path)?;
    let sig_ok = old_sig
        .as_deref()
        .is_some_and(|s| opts.signer.verify_detached(data, s));
    if old.as_deref() == Some(data) && sig_ok {
        return Ok(false);
    }
    if !sig_ok {
        let sig = opts
            .signer
            .sign_detached(data)
            .map_err(|source| PublishError::Sign {
                file: sig_path.to_path_buf(),
                source,
            })?;
        fsutil::write_atomic(sig_path, &sig)?;
        opts.emit(FeedEvent::Wrote(sig_path.to_path_buf()));
    }
    if fsutil::write_if_changed(data_path, data)? {
        opts.emit(FeedEvent::Wrote(data_path.to_path_buf()));
    }
    Ok(true)
}

fn catalogue(exts: &[ExtState], opts: &PublishOptions<'_>) -> Result<Catalogue, PublishError> {
    let mut out = Vec::new();
    for st in exts {
        if st.keep.is_empty() {
            continue;
        }
        let mut streams = Vec::new();
        for (stream, newest) in streams_with_newest(st) {
            let stem = stream.stem(&st.name);
            let mut transfer_files = Vec::new();
            for suffix in sysupdate::transfer::SUFFIXES {
                if let Ok(f) = FeedFileName::new(format!("{stem}{suffix}")) {
                    transfer_files.push(f);
                }
            }
            let mut snippets = BTreeMap::new();
            for arch in newest.keys() {
                let (Ok(bu), Ok(ign)) = (
                    FeedFileName::new(format!("{stem}-{arch}.bu")),
                    FeedFileName::new(format!("{stem}-{arch}.ign")),
                ) else {
                    continue;
                };
                let Some(bytes) = st.generated.get(&ign) else {
                    continue;
                };
                snippets.insert(
                    *arch,
                    CatalogueSnippet {
                        butane: bu,
                        ignition: ign,
                        ignition_sha512: FileDigests::of_bytes(bytes).sha512_hex(),
                    },
                );
            }
            streams.push(CatalogueStream {
                id: stream.id().to_string(),
                pattern: stream.pattern(&st.name),
                transfer_files,
                newest,
                snippets,
            });
        }
        let images = st
            .images
            .iter()
            .filter(|(k, _)| st.keep.contains(*k))
            .map(|((v, a), img)| CatalogueImage {
                file: img.image.file.clone(),
                version: v.clone(),
                arch: *a,
                size: img.image.digests.size,
                sha256: img.image.digests.sha256,
                sha512: img.image.digests.sha512_hex(),
                streams: layout::streams_of(st.policy, v)
                    .iter()
                    .map(|s| s.id().to_string())
                    .collect(),
                sidecars: img
                    .sidecars
                    .values()
                    .map(|f| CatalogueFile {
                        file: f.file.clone(),
                        size: f.digests.size,
                        sha256: f.digests.sha256,
                    })
                    .collect(),
            })
            .collect();
        out.push(CatalogueExtension {
            name: st.name.clone(),
            url: opts.url.for_extension(&st.name),
            streams,
            images,
        });
    }
    Ok(Catalogue {
        format: FORMAT.to_string(),
        extensions: out,
    })
}
