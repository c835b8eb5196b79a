//! What opening an image yields ([`Opened`]: file, formats, data window,
//! verity material) and [`Stage`], the step at which an image is refused.
//! Plain data below [`crate::image`] and [`crate::ddi`], which both use
//! it, so neither needs the other's items.

use std::fs::File;

use serde::{Deserialize, Serialize};

use crate::discover::Format;
use crate::loopdev::Window;
use crate::verify::VerityMaterial;

/// At which step an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Format,
    Policy,
    Signature,
    Verity,
    Mount,
    Release,
    Compatibility,
}

/// The verity material and data window of a raw image or block device.
pub struct Opened {
    pub file: File,
    pub size: u64,
    pub format: Format,
    /// Filesystem format of the data (differs from `format` for a DDI).
    pub fs_format: Format,
    pub data: Window,
    pub material: Option<VerityMaterial>,
}
