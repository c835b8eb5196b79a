//! One entry point for turning a filesystem image into the files that get
//! published: [`SealFormat`] (`ddi`, `sidecar`, `bare`) and [`seal`], which
//! writes `OUT_DIR/NAME.raw` (plus the sidecar files) and lists every file
//! it produced, for `SHA256SUMS`.
//!
//! - `ddi`: a GPT disk image with the filesystem, its verity tree and, with
//!   a key, the signature partition ([`crate::ddi::write_ddi`]).
//! - `sidecar`: the filesystem zero-padded to 4096 bytes as `NAME.raw`, with
//!   `NAME.verity`, `NAME.roothash` and, with a key, `NAME.roothash.p7s`.
//! - `bare`: the filesystem alone as `NAME.raw` (zero-padded to 4096 bytes).
//!
//! Without a key the default is `bare` ([`SealFormat::default_for`]); with
//! one it is `ddi`. Every output is written atomically.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sysupdate::Arch;

use crate::ddi::{write_ddi, DdiError, DdiOptions};
use crate::keys::SigningKey;
use crate::sidecar::{write_sidecar, SidecarError, SidecarPaths};
use crate::verity::RootHash;
use plumbing::atomic::AtomicFile;

/// How a filesystem image is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealFormat {
    Ddi,
    Sidecar,
    Bare,
}

impl SealFormat {
    pub const ALL: [SealFormat; 3] = [SealFormat::Ddi, SealFormat::Sidecar, SealFormat::Bare];

    /// `ddi` when a signing key is available, else `bare`.
    pub fn default_for(have_key: bool) -> SealFormat {
        if have_key {
            SealFormat::Ddi
        } else {
            SealFormat::Bare
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SealFormat::Ddi => "ddi",
            SealFormat::Sidecar => "sidecar",
            SealFormat::Bare => "bare",
        }
    }
}

impl fmt::Display for SealFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A format name that is not `ddi`, `sidecar` or `bare`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?}: expected ddi, sidecar or bare")]
pub struct UnknownFormat(pub String);

impl FromStr for SealFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SealFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// Errors from [`seal`].
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Ddi(#[from] DdiError),
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid output name {0:?}: it must be a plain file name without '/' and not start with '.'")]
    BadName(String),
}

/// What to seal.
#[derive(Debug, Clone, Copy)]
pub struct SealRequest<'a> {
    /// The filesystem image (squashfs or erofs).
    pub fs_image: &'a Path,
    /// Directory the outputs go to.
    pub out_dir: &'a Path,
    /// File name stem: the image becomes `NAME.raw`.
    pub name: &'a str,
    pub arch: Arch,
    pub format: SealFormat,
    /// Signing key; ignored for `bare`.
    pub key: Option<&'a SigningKey>,
}

/// What [`seal`] produced.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub format: SealFormat,
    /// Every file written, image first: what `SHA256SUMS` must list.
    pub files: Vec<PathBuf>,
    /// The verity root hash (`None` for `bare`).
    pub root_hash: Option<RootHash>,
    pub signed: bool,
}

/// Seals `req.fs_image` into `req.out_dir` in `req.format`.
pub fn seal(req: &SealRequest<'_>) -> Result<Sealed, SealError> {
    let name_ok = !req.name.is_empty()
        && !req.name.contains('/')
        && !req.name.starts_with('.')
        && !req.name.contains('\0');
    if !name_ok {
        return Err(SealError::BadName(req.name.to_string()));
    }
    let image = req.out_dir.join(format!("{}.raw", req.name));
    match req.format {
        SealFormat::Ddi => {
            let sealed = write_ddi(
                req.fs_image,
                &image,
                &DdiOptions {
                    arch: req.arch,
                    key: req.key,
                    verity: None,
                },
            )?;
            Ok(Sealed {
                format: req.format,
                files: vec![image],
                root_hash: Some(sealed.root_hash),
                signed: sealed.signature.is_some(),
            })
        }
        SealFormat::Sidecar => {
            copy_padded(req.fs_image, &image)?;
            let sealed = write_sidecar(&image, req.key, None)?;
            let SidecarPaths {
                image,
                verity,
                roothash,
                signature,
            } = sealed.paths;
            let mut files = vec![image, verity, roothash];
            if sealed.signed {
                files.push(signature);
            }
            Ok(Sealed {
                format: req.format,
                files,
                root_hash: Some(sealed.root_hash),
                signed: sealed.signed,
            })
        }
        SealFormat::Bare => {
            copy_padded(req.fs_image, &image)?;
            Ok(Sealed {
                format: req.format,
                files: vec![image],
                root_hash: None,
                signed: false,
            })
        }
    }
}

/// Copies `src` to `dest` atomically, zero-padded to a multiple of 4096
/// bytes (a no-op when `src` is `dest` and already aligned).
fn copy_padded(src: &Path, dest: &Path) -> Result<(), SealError> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let io = |context: String| move |source| SealError::Io { context, source };
    let mut input = File::open(src).map_err(io(ctx("cannot open", src)))?;
    let len = input.metadata().map_err(io(ctx("cannot stat", src)))?.len();
    let padded = len.div_ceil(4096) * 4096;
    let same = match (src.canonicalize(), dest.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same && padded == len {
        return Ok(());
    }
    let mut out = AtomicFile::create(dest, 0o644).map_err(io(ctx("cannot write", dest)))?;
    let copied = io::copy(&mut (&mut input).take(len), out.file_mut())
        .map_err(io(ctx("cannot copy into", dest)))?;
    if copied != len {
        return Err(SealError::Io {
            context: ctx("reading", src),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being copied",
            ),
        });
    }
    let pad = vec![0u8; (padded - len) as usize];
    out.file_mut()
        .write_all(&pad)
        .map_err(io(ctx("cannot write", dest)))?;
    out.commit().map_err(io(ctx("cannot write", dest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_default() {
        assert_eq!("ddi".parse::<SealFormat>().unwrap(), SealFormat::Ddi);
        assert_eq!(
            "sidecar".parse::<SealFormat>().unwrap(),
            SealFormat::Sidecar
        );
        assert!("DDI"
            .parse::<SealFormat>()
            .unwrap_err()
            .to_string()
            .contains("ddi, sidecar or bare"));
        assert_eq!(SealFormat::default_for(false), SealFormat::Bare);
        assert_eq!(SealFormat::default_for(true), SealFormat::Ddi);
    }

    #[test]
    fn bare_pads_and_sidecar_lists_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let fs_image = dir.path().join("fs.img");
        std::fs::write(&fs_image, vec![7u8; 5000]).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let req = SealRequest {
            fs_image: &fs_image,
            out_dir: &out,
            name: "demo_1_x86-64",
            arch: Arch::X86_64,
            format: SealFormat::Bare,
            key: None,
        };
        let s = seal(&req).unwrap();
        assert_eq!(s.files, vec![out.join("demo_1_x86-64.raw")]);
        assert_eq!(std::fs::metadata(&s.files[0]).unwrap().len(), 8192);
        let s = seal(&SealRequest {
            format: SealFormat::Sidecar,
            ..req
        })
        .unwrap();
        let names: Vec<_> = s
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "demo_1_x86-64.raw",
                "demo_1_x86-64.verity",
                "demo_1_x86-64.roothash"
            ]
        );
        assert!(s.root_hash.is_some() && !s.signed);
        assert!(seal(&SealRequest {
            name: "../x",
            ..req
        })
        .is_err());
    }
}
