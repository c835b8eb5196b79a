//! The sidecar form of a sealed image: a bare filesystem image `NAME.raw`
//! with `NAME.verity` (hash device with superblock), `NAME.roothash` (hex
//! and a newline) and, when signed, `NAME.roothash.p7s` (DER PKCS#7) beside
//! it. File names follow systemd: a `.raw` suffix is replaced, any other
//! name gets the suffix appended (`foo.img` → `foo.img.verity`).
//!
//! The image itself is not modified, so it must already be a multiple of
//! 4096 bytes (bakery's image writers pad it); the writer refuses otherwise
//! rather than leave a tail unprotected.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::keys::SigningKey;
use crate::pkcs7::{
    self, Pkcs7Error, RootHashSignature, TrustedCerts, VerifiedSigner, MAX_SIGNATURE_SIZE,
};
use crate::verity::{self, build_tree, ByteRange, ReadAt, RootHash, VerityError, VerityParams};
use plumbing::atomic::{commit_all, AtomicFile};

/// Errors from writing or reading sidecar files.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Verity {
        path: PathBuf,
        #[source]
        source: VerityError,
    },
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Signature {
        path: PathBuf,
        #[source]
        source: Pkcs7Error,
    },
    #[error("{image} is not signed ({p7s} is missing), but a signature is required")]
    Unsigned { image: PathBuf, p7s: PathBuf },
}

/// The files that make up a sidecar-sealed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPaths {
    pub image: PathBuf,
    pub verity: PathBuf,
    pub roothash: PathBuf,
    pub signature: PathBuf,
}

impl SidecarPaths {
    /// systemd's naming: strip `.raw`, then append `.verity`, `.roothash`,
    /// `.roothash.p7s`.
    pub fn for_image(image: &Path) -> SidecarPaths {
        use std::os::unix::ffi::OsStrExt;
        let name = image.file_name().unwrap_or_default().as_bytes();
        let stem = match name.strip_suffix(b".raw") {
            Some(s) if !s.is_empty() => s,
            _ => name,
        };
        let stem = OsString::from(std::ffi::OsStr::from_bytes(stem));
        let with = |suffix: &str| {
            let mut n = stem.clone();
            n.push(suffix);
            image.with_file_name(n)
        };
        SidecarPaths {
            image: image.to_path_buf(),
            verity: with(".verity"),
            roothash: with(".roothash"),
            signature: with(".roothash.p7s"),
        }
    }
}

/// What [`write_sidecar`] wrote.
#[derive(Debug, Clone)]
pub struct SealedSidecar {
    pub paths: SidecarPaths,
    pub root_hash: RootHash,
    pub params: VerityParams,
    pub signed: bool,
}

/// Writes `NAME.verity`, `NAME.roothash` and (with a key) `NAME.roothash.p7s`
/// beside `image`. All files appear together or not at all; a stale
/// `.roothash.p7s` from an earlier signed build is removed when writing
/// unsigned. `verity: None` derives salt and UUID from the image content.
pub fn write_sidecar(
    image: &Path,
    key: Option<&SigningKey>,
    verity: Option<&VerityParams>,
) -> Result<SealedSidecar, SidecarError> {
    let paths = SidecarPaths::for_image(image);
    let f = File::open(image).map_err(|source| SidecarError::Io {
        context: format!("cannot open {}", image.display()),
        source,
    })?;
    let len = f
        .metadata()
        .map_err(|source| SidecarError::Io {
            context: format!("cannot stat {}", image.display()),
            source,
        })?
        .len();
    let range = ByteRange::new(0, len);
    let verr = |source| SidecarError::Verity {
        path: image.to_path_buf(),
        source,
    };
    let params = match verity {
        Some(p) => p.clone(),
        None => VerityParams::derive_from_content(&f, range).map_err(verr)?,
    };
    let tree = build_tree(&f, range, &params).map_err(verr)?;
    let root = tree.root_hash();

    let create = |path: &Path, bytes: &[u8]| -> Result<AtomicFile, SidecarError> {
        let werr = |source| SidecarError::Io {
            context: format!("cannot write {}", path.display()),
            source,
        };
        let mut a = AtomicFile::create(path, 0o644).map_err(werr)?;
        a.file_mut().write_all(bytes).map_err(werr)?;
        Ok(a)
    };
    let mut files = vec![
        create(&paths.verity, tree.hash_device())?,
        create(&paths.roothash, format!("{root}\n").as_bytes())?,
    ];
    if let Some(k) = key {
        let sig = pkcs7::sign_root_hash(&root, k).map_err(|source| SidecarError::Signature {
            path: paths.signature.clone(),
            source,
        })?;
        files.push(create(&paths.signature, sig.as_der())?);
    }
    commit_all(files, false).map_err(|source| SidecarError::Io {
        context: format!("cannot write the sidecar files of {}", image.display()),
        source,
    })?;
    if key.is_none() {
        match std::fs::remove_file(&paths.signature) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SidecarError::Io {
                    context: format!(
                        "cannot remove the stale signature {}",
                        paths.signature.display()
                    ),
                    source,
                })
            }
        }
    }
    Ok(SealedSidecar {
        paths,
        root_hash: root,
        params,
        signed: key.is_some(),
    })
}

/// A sidecar-sealed image as found on disk.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub paths: SidecarPaths,
    pub root_hash: RootHash,
    pub signature: Option<RootHashSignature>,
}

fn read_small(path: &Path, limit: usize) -> Result<Option<Vec<u8>>, SidecarError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SidecarError::Io {
                context: format!("cannot open {}", path.display()),
                source,
            })
        }
    };
    let mut buf = Vec::new();
    f.take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|source| SidecarError::Io {
            context: format!("cannot read {}", path.display()),
            source,
        })?;
    if buf.len() > limit {
        return Err(SidecarError::Bad {
            path: path.to_path_buf(),
            what: format!("larger than {limit} bytes"),
        });
    }
    Ok(Some(buf))
}

/// Reads `NAME.roothash` (one line of hex) and `NAME.roothash.p7s` if
/// present, and checks that `NAME.verity` exists.
pub fn read_sidecar(image: &Path) -> Result<Sidecar, SidecarError> {
    let paths = SidecarPaths::for_image(image);
    let text = read_small(&paths.roothash, 1024)?.ok_or_else(|| SidecarError::Bad {
        path: paths.roothash.clone(),
        what: "missing: the image has no root hash file; seal it first".into(),
    })?;
    let line = std::str::from_utf8(&text).map_err(|_| SidecarError::Bad {
        path: paths.roothash.clone(),
        what: "not text".into(),
    })?;
    let root: RootHash = line
        .trim_end_matches('\n')
        .parse()
        .map_err(|e| SidecarError::Bad {
            path: paths.roothash.clone(),
            what: format!("{e}"),
        })?;
    if !paths.verity.is_file() {
        return Err(SidecarError::Bad {
            path: paths.verity.clone(),
            what: "missing: the hash device of the image is not there".into(),
        });
    }
    let signature =
        read_small(&paths.signature, MAX_SIGNATURE_SIZE)?.map(RootHashSignature::from_der);
    Ok(Sidecar {
        paths,
        root_hash: root,
        signature,
    })
}

/// A sidecar image that passed [`verify_sidecar`].
#[derive(Debug, Clone)]
pub struct VerifiedSidecar {
    pub sidecar: Sidecar,
    pub signer: Option<VerifiedSigner>,
}

/// Reads the sidecar files and checks in user space: with `trusted`, the
/// signature must be by one of those certificates; then the whole image is
/// checked against `NAME.verity` and the root hash.
pub fn verify_sidecar(
    image: &Path,
    trusted: Option<&TrustedCerts>,
) -> Result<VerifiedSidecar, SidecarError> {
    let sidecar = read_sidecar(image)?;
    let signer = match trusted {
        None => None,
        Some(t) => {
            let sig = sidecar
                .signature
                .as_ref()
                .ok_or_else(|| SidecarError::Unsigned {
                    image: image.to_path_buf(),
                    p7s: sidecar.paths.signature.clone(),
                })?;
            Some(
                pkcs7::verify_root_hash(&sidecar.root_hash, sig.as_der(), t).map_err(|source| {
                    SidecarError::Signature {
                        path: sidecar.paths.signature.clone(),
                        source,
                    }
                })?,
            )
        }
    };
    let open = |p: &Path| {
        File::open(p).map_err(|source| SidecarError::Io {
            context: format!("cannot open {}", p.display()),
            source,
        })
    };
    let data = open(image)?;
    let hash = open(&sidecar.paths.verity)?;
    let size = |f: &File, p: &Path| {
        f.size().map_err(|source| SidecarError::Io {
            context: format!("cannot stat {}", p.display()),
            source,
        })
    };
    let data_range = ByteRange::new(0, size(&data, image)?);
    let hash_range = ByteRange::new(0, size(&hash, &sidecar.paths.verity)?);
    verity::verify_tree(&data, data_range, &hash, hash_range, &sidecar.root_hash).map_err(
        |source| SidecarError::Verity {
            path: image.to_path_buf(),
            source,
        },
    )?;
    Ok(VerifiedSidecar { sidecar, signer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_systemd() {
        let p = SidecarPaths::for_image(Path::new("/x/foo_1.2_x86-64.raw"));
        assert_eq!(p.verity, Path::new("/x/foo_1.2_x86-64.verity"));
        assert_eq!(p.roothash, Path::new("/x/foo_1.2_x86-64.roothash"));
        assert_eq!(p.signature, Path::new("/x/foo_1.2_x86-64.roothash.p7s"));
        let q = SidecarPaths::for_image(Path::new("foo.squashfs"));
        assert_eq!(q.verity, Path::new("foo.squashfs.verity"));
    }
}
