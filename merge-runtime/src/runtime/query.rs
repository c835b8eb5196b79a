//! The commands that only look: `status` (what is merged, since when, by
//! whom), `list` (the images found, with their verity facts) and
//! `verify IMAGE` (a complete user-space check of one image file).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::discover::{discover, EntryKind, Format, Masked, Sidecars, Skipped};
use crate::image::open_image;
use crate::mounts::{self, is_merged_tree, MARKER_DIR};
use crate::root::Root;
use crate::verify::{self, EffectivePolicy, VerityMode};

use super::error::{io_ctx, root_err, RuntimeError};
use super::options::Options;
use super::report::{ImageReport, Outcome};
use super::state::read_state;

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct HierarchyStatus {
    pub hierarchy: String,
    /// systemd prints `"none"` for an unmerged hierarchy; so do we.
    pub extensions: serde_json::Value,
    /// When the merge was made (µs since the epoch), like systemd's `since`.
    pub since: Option<u64>,
    /// `sysext-forge` when we merged it (we then know how each image was
    /// verified), `systemd-sysext` otherwise.
    pub merged_by: Option<String>,
    pub images: Vec<ImageReport>,
}

/// The report of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub hierarchies: Vec<HierarchyStatus>,
    pub policy: EffectivePolicy,
    pub kernel_dm_verity: bool,
}

/// `sysext status`: per hierarchy, the merged extensions and since when.
pub fn status(opts: &Options) -> Result<StatusReport, RuntimeError> {
    let root = Root::open(&opts.root).map_err(root_err(&opts.root))?;
    let policy = verify::load_policy(&root, opts.policy)?;
    let mut rows = Vec::new();
    for h in &opts.hierarchies {
        let target = match root.resolve(h) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_ctx(format!("resolving {}", root.join(h).display()))(e)),
        };
        let merged =
            is_merged_tree(&target).map_err(io_ctx(format!("checking {}", target.display())))?;
        if !merged {
            rows.push(HierarchyStatus {
                hierarchy: h.clone(),
                extensions: serde_json::Value::String("none".into()),
                since: None,
                merged_by: None,
                images: Vec::new(),
            });
            continue;
        }
        let names = mounts::read_extensions_marker(&target).map_err(io_ctx(format!(
            "reading {}/{MARKER_DIR}/extensions",
            target.display()
        )))?;
        let since = std::fs::metadata(&target)
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64);
        let state = read_state(&target);
        rows.push(HierarchyStatus {
            hierarchy: h.clone(),
            extensions: serde_json::json!(names),
            since,
            merged_by: Some(
                if state.is_some() {
                    "sysext-forge"
                } else {
                    "systemd-sysext"
                }
                .into(),
            ),
            images: state
                .map(|s| {
                    s.images
                        .into_iter()
                        .filter(|i| i.outcome == Outcome::Merged)
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    rows.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
    Ok(StatusReport {
        hierarchies: rows,
        policy,
        kernel_dm_verity: verify::kernel_dm_verity_present(),
    })
}

/// One row of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    /// Modification time (µs), for raw images, like systemd's `time`.
    pub time: Option<u64>,
    pub target: PathBuf,
    pub format: Option<String>,
    pub verity: bool,
    pub signed: bool,
}

/// The report of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub images: Vec<ListEntry>,
    pub masked: Vec<Masked>,
    pub skipped: Vec<Skipped>,
}

/// `sysext list`: the images found, with type, path and verity facts.
pub fn list(opts: &Options) -> Result<ListReport, RuntimeError> {
    let root = Root::open(&opts.root).map_err(root_err(&opts.root))?;
    let disc = discover(&root).map_err(RuntimeError::Discover)?;
    let mut images = Vec::new();
    for img in &disc.images {
        let mut e = ListEntry {
            name: img.name.to_string(),
            kind: img.kind.as_str().to_string(),
            path: img.path.clone(),
            time: img
                .mtime
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_micros() as u64),
            target: img.target.clone(),
            format: None,
            verity: false,
            signed: false,
        };
        if img.kind != EntryKind::Directory {
            if let Ok(o) = open_image(&img.target, &img.sidecars, img.kind == EntryKind::Block) {
                e.format = Some(o.format.as_str().to_string());
                e.verity = o.material.is_some();
                e.signed = o.material.as_ref().is_some_and(|m| m.signature.is_some());
            } else if let Ok(f) = File::open(&img.target) {
                e.format = Format::probe(&f).ok().map(|f| f.as_str().to_string());
            }
        }
        images.push(e);
    }
    Ok(ListReport {
        images,
        masked: disc.masked,
        skipped: disc.skipped,
    })
}

/// The report of `verify IMAGE`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    pub format: String,
    pub root_hash: String,
    pub root_hash_origin: String,
    pub signer: Option<String>,
    pub signer_fingerprint: Option<String>,
    pub policy: EffectivePolicy,
    pub data_bytes: u64,
    pub verification: VerityMode,
}

/// `sysext verify IMAGE`: checks an image file completely in user space —
/// policy, signature against `verity.d` under `--root`, and every data
/// block against the root hash — without mounting anything.
pub fn verify_image(opts: &Options, image: &Path) -> Result<VerifyReport, RuntimeError> {
    let root = Root::open(&opts.root).map_err(root_err(&opts.root))?;
    let policy = verify::load_policy(&root, opts.policy)?;
    let path =
        std::fs::canonicalize(image).map_err(io_ctx(format!("opening {}", image.display())))?;
    let md = std::fs::metadata(&path).map_err(io_ctx(format!("stat {}", path.display())))?;
    use std::os::unix::fs::FileTypeExt;
    let block = md.file_type().is_block_device();
    let mut sidecars = Sidecars::find(image);
    if sidecars.is_empty() {
        sidecars = Sidecars::find(&path);
    }
    let opened = open_image(&path, &sidecars, block)?;
    let decision = verify::decide(
        policy.policy,
        opened.material.as_ref(),
        &path.display().to_string(),
        || signing::pkcs7::TrustedCerts::from_verity_d(root.path()),
    )
    .map_err(|source| RuntimeError::Verify {
        path: path.clone(),
        source: Box::new(source),
    })?;
    let Some(material) = opened.material else {
        return Err(RuntimeError::Unsupported(path));
    };
    let data = signing::verity::ByteRange::new(opened.data.offset, opened.data.size_limit);
    verify::verify_data(&opened.file, data, &material).map_err(|source| RuntimeError::Verify {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Ok(VerifyReport {
        path,
        format: opened.fs_format.as_str().to_string(),
        root_hash: material.root_hash.to_hex(),
        root_hash_origin: material.root_hash_origin,
        signer: decision.signer,
        signer_fingerprint: decision.signer_fingerprint,
        policy,
        data_bytes: data.len,
        verification: VerityMode::UserSpace,
    })
}
