//! Opening one image file or block device for checking and mounting: its
//! format by magic number, the data window, and its verity material
//! (sidecars, or the partitions of a DDI through [`crate::ddi`]). Below
//! the runtime and the updater; what `ddi` shares with it is in
//! [`crate::opened`], below both.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::discover::{Format, Sidecars};
use crate::loopdev::Window;
pub use crate::opened::{Opened, Stage};
use crate::verify::{self, VerifyError};

/// An image could not be opened as one.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("size of {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a squashfs, erofs or ext4 filesystem nor a GPT disk image (no known magic number)")]
    UnknownFormat { path: PathBuf },
    /// The sidecars or the hash tree do not fit the image.
    #[error(transparent)]
    Verity(#[from] VerifyError),
    /// A DDI that cannot be used (its text comes from [`crate::ddi`]).
    #[error("{reason}")]
    Ddi { stage: Stage, reason: String },
}

impl OpenError {
    /// The step this refuses the image at.
    pub fn stage(&self) -> Stage {
        match self {
            OpenError::Open { .. }
            | OpenError::Size { .. }
            | OpenError::Read { .. }
            | OpenError::UnknownFormat { .. } => Stage::Format,
            OpenError::Verity(_) => Stage::Verity,
            OpenError::Ddi { stage, .. } => stage.clone(),
        }
    }
}

/// Opens a raw image or block device read-only and finds its verity
/// material (sidecars, or the partitions of a DDI).
pub fn open_image(path: &Path, sidecars: &Sidecars, block: bool) -> Result<Opened, OpenError> {
    let mut opened = open_image_unclipped(path, sidecars, block)?;
    // Expose only what the hash tree covers, like a dm-verity device: a
    // (partition) window may be larger for alignment. When it is smaller,
    // verification reports the size mismatch.
    if let Some(m) = &opened.material {
        let covered = verify::covered_data_len(m)?;
        if covered < opened.data.size_limit {
            opened.data.size_limit = covered;
            if let Some(m) = &mut opened.material {
                m.data.len = covered;
            }
        }
    }
    Ok(opened)
}

fn open_image_unclipped(
    path: &Path,
    sidecars: &Sidecars,
    block: bool,
) -> Result<Opened, OpenError> {
    let file = File::open(path).map_err(|source| OpenError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let size = if block {
        crate::loopdev::block_size_bytes(&file)
    } else {
        file.metadata().map(|m| m.len())
    }
    .map_err(|source| OpenError::Size {
        path: path.to_path_buf(),
        source,
    })?;
    let format = Format::probe(&file).map_err(|source| OpenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match format {
        Format::Squashfs | Format::Erofs | Format::Ext4 => {
            let material = verify::load_sidecars(sidecars, size)?;
            Ok(Opened {
                file,
                size,
                format,
                fs_format: format,
                data: Window {
                    offset: 0,
                    size_limit: size,
                },
                material,
            })
        }
        Format::Gpt => crate::ddi::open_ddi(path, file, size)
            .map_err(|(stage, reason)| OpenError::Ddi { stage, reason }),
        Format::Unknown => Err(OpenError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_format_says_it_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("junk.raw");
        std::fs::write(&p, vec![0x5au8; 65536]).unwrap();
        let e = match open_image(&p, &Sidecars::default(), false) {
            Err(e) => e,
            Ok(_) => panic!("junk opened as an image"),
        };
        assert_eq!(e.stage(), Stage::Format);
        let text = crate::chain::text(&e);
        assert_eq!(text.matches("not a squashfs").count(), 1, "{text}");
    }
}
