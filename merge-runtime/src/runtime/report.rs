//! The reports of `merge`, `refresh` and `unmerge` (serialised as JSON by
//! the CLI and, per image, recorded in the merge state).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::discover::{Image, Masked, Skipped};
use crate::image::Stage;
use crate::verify::{EffectivePolicy, VerityMode};

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    Merged,
    Refused { stage: Stage, reason: String },
}

/// One image in a merge report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: PathBuf,
    pub format: Option<String>,
    pub verification: VerityMode,
    pub root_hash: Option<String>,
    pub signer: Option<String>,
    #[serde(default)]
    pub reload_manager: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How the new overlay replaced the old one in a hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Swap {
    /// Nothing was merged there before: mounted.
    Mounted,
    /// Mounted beneath the old overlay, then the old one detached.
    Beneath,
    /// Kernel without `MOVE_MOUNT_BENEATH` (< 6.5): mounted on top of the
    /// old overlay, which stays covered until `unmerge` (no gap either).
    Stacked,
    /// The new set has nothing for this hierarchy: the old overlay was
    /// detached.
    Unmerged,
}

/// Result per hierarchy.
#[derive(Debug, Clone, Serialize)]
pub struct HierarchyReport {
    pub hierarchy: String,
    pub swap: Swap,
    /// The overlay layers, top first.
    pub layers: Vec<PathBuf>,
}

/// What a merge or refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Merged,
    /// Refresh found nothing changed and left the merge alone.
    Unchanged,
    /// No image could be used; nothing merged (and, on refresh, any old
    /// merge undone).
    NothingToMerge,
}

/// The report of `merge` and `refresh`.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub action: Action,
    /// Merged extension names in stack order (lowest first).
    pub extensions: Vec<String>,
    pub hierarchies: Vec<HierarchyReport>,
    pub images: Vec<ImageReport>,
    pub masked: Vec<Masked>,
    pub skipped: Vec<Skipped>,
    pub policy: EffectivePolicy,
    /// Hierarchies unmerged (refresh to an empty set).
    pub unmerged: Vec<String>,
    pub reloaded_manager: bool,
}

/// Result of `unmerge`.
#[derive(Debug, Clone, Serialize)]
pub struct UnmergeReport {
    pub unmerged: Vec<String>,
    pub reloaded_manager: bool,
}

impl ImageReport {
    /// A report for `img` before any check (merged until refused).
    pub fn new(img: &Image) -> ImageReport {
        ImageReport {
            name: img.name.to_string(),
            kind: img.kind.as_str().to_string(),
            path: img.path.clone(),
            format: None,
            verification: VerityMode::None,
            root_hash: None,
            signer: None,
            reload_manager: false,
            outcome: Outcome::Merged,
        }
    }
}

/// Does any merged image in `images` ask for a service-manager reload?
pub fn wants_reload(images: &[ImageReport]) -> bool {
    images
        .iter()
        .any(|i| i.reload_manager && i.outcome == Outcome::Merged)
}
