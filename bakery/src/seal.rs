//! Sealing what a build wrote: the step between the filesystem writer and
//! publishing.
//!
//! This module owns:
//! - choosing the signing key from flags or the environment
//!   ([`KeyArgs::load`]) and the output format ([`SealOptions::plan`]:
//!   `ddi` when a key is given, else `bare`, with a clear "unsigned: …"
//!   note whenever the result carries no signature);
//! - the pipeline types [`FsImage`] (an unsealed filesystem image in a
//!   build's staging directory) and [`SealedImage`]; [`seal`] consumes the
//!   former and returns the latter, so an unsealed image cannot be handed
//!   on by accident;
//! - the staging directory ([`Staging`]): a hidden temporary directory
//!   inside the output directory, so every output can be moved into place
//!   with a `rename` once all of them are complete, and nothing is left
//!   when a build fails;
//! - which files belong to one image name ([`image_family`]), so a rebuild
//!   in another format removes the stale sidecar files of the previous one.
//!
//! The sealing itself (verity tree with salt and UUID derived from the
//! filesystem's sha256, PKCS#7 signature, GPT layout) is the `signing`
//! crate's; this module only drives it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use signing::keys::{CertSource, KeyConfig, KeyError, KeySource, Secret, ENV_KEY};
use signing::seal::SealError as SigningSealError;
use signing::{RootHash, SealRequest, SigningKey};
use sysupdate::{Arch, Sha256Digest};

pub use signing::SealFormat;

/// The suffixes of the files that can belong to one image `NAME.raw`,
/// image first.
pub const FAMILY_SUFFIXES: [&str; 4] = [".raw", ".verity", ".roothash", ".roothash.p7s"];

/// Prefix of the staging directory inside the output directory.
pub const STAGING_PREFIX: &str = ".bakery-build-";

/// Largest passphrase file accepted.
const MAX_PASSPHRASE_FILE: u64 = 64 * 1024;

/// Why sealing (or choosing the key) failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Key(Box<KeyError>),
    #[error("--cert was given without a signing key: pass --key PATH (or set {ENV_KEY}) as well")]
    CertWithoutKey,
    #[error("cannot read the passphrase file {}: {err}", .path.display())]
    Passphrase { path: PathBuf, err: std::io::Error },
    #[error("cannot seal {}: {source}", .image.display())]
    Seal {
        image: PathBuf,
        #[source]
        source: Box<SigningSealError>,
    },
    #[error("{}: {action}: {err}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        err: std::io::Error,
    },
}

impl From<KeyError> for SealError {
    fn from(e: KeyError) -> Self {
        SealError::Key(Box::new(e))
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> SealError {
    let path = path.to_path_buf();
    move |err| SealError::Io { path, action, err }
}

// ---------------------------------------------------------------------------
// Key and format
// ---------------------------------------------------------------------------

/// The signing-key settings of a command line. Values of `key` and `cert`
/// are paths, or PEM text (starting with `-----BEGIN`); `pkcs11:` URIs are
/// reserved for tokens.
#[derive(Debug, Clone, Default)]
pub struct KeyArgs {
    /// `--key`: overrides `BAKERY_SIGNING_KEY`.
    pub key: Option<OsString>,
    /// `--cert`: default `BAKERY_SIGNING_CERT` when the key comes from the
    /// environment, else the key's path with the extension `.crt`.
    pub cert: Option<OsString>,
    /// `--passphrase-file`: overrides `BAKERY_SIGNING_KEY_PASSPHRASE`.
    pub passphrase_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the key from the flags, else from the environment
    /// (`BAKERY_SIGNING_KEY`, `BAKERY_SIGNING_CERT`,
    /// `BAKERY_SIGNING_KEY_PASSPHRASE`); `None` when neither names one.
    /// The certificate must belong to the key.
    pub fn load(&self) -> Result<Option<SigningKey>, SealError> {
        self.load_with(|name| std::env::var_os(name))
    }

    /// [`KeyArgs::load`] with a custom environment lookup.
    pub fn load_with(
        &self,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Option<SigningKey>, SealError> {
        let config = match &self.key {
            Some(key) => KeyConfig {
                key: KeySource::from_spec(key.clone(), "--key"),
                cert: self
                    .cert
                    .clone()
                    .map(|c| CertSource::from_spec(c, "--cert")),
                passphrase: env(signing::keys::ENV_PASSPHRASE).map(os_secret),
            },
            None => match KeyConfig::from_env_with(&env) {
                Some(mut c) => {
                    if let Some(cert) = &self.cert {
                        c.cert = Some(CertSource::from_spec(cert.clone(), "--cert"));
                    }
                    c
                }
                None if self.cert.is_some() => return Err(SealError::CertWithoutKey),
                None => return Ok(None),
            },
        };
        let mut config = config;
        if let Some(path) = &self.passphrase_file {
            config.passphrase = Some(read_passphrase(path)?);
        }
        Ok(Some(config.load()?))
    }
}

fn os_secret(v: OsString) -> Secret {
    use std::os::unix::ffi::OsStringExt;
    Secret::new(v.into_vec())
}

/// The first line of `path` (without its line end) as a passphrase.
fn read_passphrase(path: &Path) -> Result<Secret, SealError> {
    let err = |err| SealError::Passphrase {
        path: path.to_path_buf(),
        err,
    };
    let f = File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    f.take(MAX_PASSPHRASE_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_PASSPHRASE_FILE {
        buf.fill(0);
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 64 KiB; put only the passphrase in it",
        )));
    }
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let mut line = buf[..end].to_vec();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    buf.fill(0);
    Ok(Secret::new(line))
}

/// How a build seals its images: the requested format (`None`: the
/// default for whether there is a key) and the key.
#[derive(Debug, Clone, Default)]
pub struct SealOptions {
    pub format: Option<SealFormat>,
    pub key: Option<Arc<SigningKey>>,
}

impl SealOptions {
    /// Resolves the format and says what the result will (not) protect.
    pub fn plan(&self) -> SealPlan {
        let format = self
            .format
            .unwrap_or_else(|| SealFormat::default_for(self.key.is_some()));
        let key = match format {
            SealFormat::Bare => None,
            _ => self.key.clone(),
        };
        let unsigned = match (format, &self.key) {
            (SealFormat::Bare, None) => Some(Unsigned::NoKeyBare),
            (SealFormat::Bare, Some(_)) => Some(Unsigned::BareIgnoresKey),
            (SealFormat::Ddi, None) => Some(Unsigned::NoKeyDdi),
            (SealFormat::Sidecar, None) => Some(Unsigned::NoKeySidecar),
            (_, Some(_)) => None,
        };
        SealPlan {
            format,
            key,
            unsigned,
        }
    }
}

/// Why a build's images carry no signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsigned {
    /// No key and no format asked for: bare images.
    NoKeyBare,
    /// `--format bare` although a key was given.
    BareIgnoresKey,
    /// `--format ddi` without a key: verity, no signature partition.
    NoKeyDdi,
    /// `--format sidecar` without a key: `.verity` and `.roothash` only.
    NoKeySidecar,
}

impl fmt::Display for Unsigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unsigned::NoKeyBare => {
                "unsigned: no signing key given (--key or BAKERY_SIGNING_KEY), so the images \
                 are bare filesystems without dm-verity or a signature; create a key with \
                 `bakery keygen --out DIR` and pass --key DIR/signing.key to build signed DDIs"
            }
            Unsigned::BareIgnoresKey => {
                "unsigned: --format bare writes the filesystem alone, without dm-verity or a \
                 signature; the signing key was not used (use --format ddi or sidecar to sign)"
            }
            Unsigned::NoKeyDdi => {
                "unsigned: the DDIs carry a dm-verity tree but no signature partition; systemd \
                 accepts such verity-only images, but nothing proves who built them \
                 (pass --key to sign)"
            }
            Unsigned::NoKeySidecar => {
                "unsigned: the images come with .verity and .roothash files but no \
                 .roothash.p7s signature; nothing proves who built them (pass --key to sign)"
            }
        })
    }
}

/// A resolved [`SealOptions`].
#[derive(Debug, Clone)]
pub struct SealPlan {
    pub format: SealFormat,
    /// The key that signs (`None` for `bare` and when there is none).
    pub key: Option<Arc<SigningKey>>,
    /// Set when the images will carry no signature, and why.
    pub unsigned: Option<Unsigned>,
}

// ---------------------------------------------------------------------------
// Staging
// ---------------------------------------------------------------------------

/// A hidden temporary directory inside the output directory where a
/// build's files are written and sealed before they are renamed into
/// place. Dropping it removes it with everything still inside.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    output_dir: PathBuf,
}

impl Staging {
    /// Creates `OUTPUT_DIR/.bakery-build-XXXXXX` (`output_dir` must exist).
    pub fn new(output_dir: &Path) -> Result<Staging, SealError> {
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(output_dir)
            .map_err(io(
                output_dir,
                "cannot create a staging directory in the output directory",
            ))?;
        Ok(Staging {
            dir,
            output_dir: output_dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn output_dir(&self) -> &Path {
        &self.output_dir
    }

    /// Creates the (empty) file for the unsealed filesystem image of the
    /// published image `STEM.raw`; the caller writes the filesystem into
    /// the returned file.
    pub fn create_fs_image(&self, stem: &str, arch: Arch) -> Result<(FsImage, File), SealError> {
        check_stem(stem)?;
        let path = self.path().join(format!("{stem}.fs"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path, "cannot create"))?;
        Ok((
            FsImage {
                arch,
                stem: stem.to_string(),
                path,
                final_dir: self.output_dir.clone(),
            },
            file,
        ))
    }
}

fn check_stem(stem: &str) -> Result<(), SealError> {
    let ok =
        !stem.is_empty() && !stem.starts_with('.') && !stem.contains('/') && !stem.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(SealError::Io {
            path: PathBuf::from(stem),
            action: "invalid image name",
            err: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an image name must be a plain file name",
            ),
        })
    }
}

// ---------------------------------------------------------------------------
// FsImage -> SealedImage
// ---------------------------------------------------------------------------

/// An unsealed filesystem image (squashfs or erofs) in a [`Staging`]
/// directory, to be published as `STEM.raw`. Only [`seal`] turns it into
/// something that can be moved into the output directory.
#[derive(Debug)]
pub struct FsImage {
    arch: Arch,
    stem: String,
    path: PathBuf,
    final_dir: PathBuf,
}

impl FsImage {
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The published name without `.raw` (`NAME-VERSION-ARCH`).
    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// Where the filesystem is being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One output file of a sealed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// The final path in the output directory.
    pub path: PathBuf,
    /// The file name (what `SHA256SUMS` lists).
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// Where the file is until it is moved into place.
    pub staged: PathBuf,
}

/// A sealed image, ready to be moved into the output directory: the image
/// `STEM.raw` and, for `sidecar`, its `.verity`, `.roothash` and
/// `.roothash.p7s` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedImage {
    pub arch: Arch,
    pub stem: String,
    pub format: SealFormat,
    /// `None` for `bare`.
    pub root_hash: Option<RootHash>,
    /// sha256 of the signer's certificate (DER) when signed.
    pub signer: Option<Sha256Digest>,
    /// The image `STEM.raw`.
    pub image: OutputFile,
    /// `.verity`, `.roothash` and `.roothash.p7s` (sidecar format only).
    pub sidecars: Vec<OutputFile>,
}

impl SealedImage {
    /// Every file, the image first.
    pub fn files(&self) -> impl Iterator<Item = &OutputFile> {
        std::iter::once(&self.image).chain(&self.sidecars)
    }

    pub fn is_signed(&self) -> bool {
        self.signer.is_some()
    }

    /// Files of the same image family (see [`image_family`]) that this
    /// image does not have, e.g. the `.verity` of an earlier sidecar build
    /// now that the image is a DDI.
    pub fn stale_names(&self) -> Vec<String> {
        image_family(&self.stem)
            .into_iter()
            .filter(|n| !self.files().any(|f| &f.name == n))
            .collect()
    }
}

/// The names of every file that can belong to the image `STEM.raw`.
pub fn image_family(stem: &str) -> Vec<String> {
    FAMILY_SUFFIXES
        .iter()
        .map(|s| format!("{stem}{s}"))
        .collect()
}

/// Seals `image` as `plan` says, in its staging directory. The verity salt
/// and UUID are derived from the filesystem's content, so the same
/// filesystem and RSA key give the same bytes.
pub fn seal(image: FsImage, plan: &SealPlan) -> Result<SealedImage, SealError> {
    let FsImage {
        arch,
        stem,
        path,
        final_dir,
    } = image;
    let staging = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let raw = staging.join(format!("{stem}.raw"));
    // `bare` and `sidecar` publish the filesystem itself: rename it to its
    // name (the writer pads to 4096, so `signing` needs no copy); a DDI is a
    // new file that embeds it.
    let fs_image = match plan.format {
        SealFormat::Ddi => path.clone(),
        SealFormat::Sidecar | SealFormat::Bare => {
            fs::rename(&path, &raw).map_err(io(&raw, "cannot rename the filesystem image"))?;
            raw.clone()
        }
    };
    let req = SealRequest {
        fs_image: &fs_image,
        out_dir: &staging,
        name: &stem,
        arch,
        format: plan.format,
        key: plan.key.as_deref(),
    };
    let sealed = signing::seal(&req).map_err(|source| SealError::Seal {
        image: final_dir.join(format!("{stem}.raw")),
        source: Box::new(source),
    })?;
    if plan.format == SealFormat::Ddi {
        fs::remove_file(&path).map_err(io(&path, "cannot remove"))?;
    }
    let mut files = Vec::with_capacity(sealed.files.len());
    for staged in sealed.files {
        let name = staged
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (size, sha256) = digest_file(&staged)?;
        files.push(OutputFile {
            path: final_dir.join(&name),
            name,
            size,
            sha256,
            staged,
        });
    }
    let mut files = files.into_iter();
    let image = files.next().ok_or_else(|| SealError::Io {
        path: final_dir.join(format!("{stem}.raw")),
        action: "sealing produced no image",
        err: std::io::Error::other("the signing crate listed no output files"),
    })?;
    let signer = match (&plan.key, sealed.signed) {
        (Some(k), true) => Some(k.certificate_fingerprint()),
        _ => None,
    };
    Ok(SealedImage {
        arch,
        stem,
        format: plan.format,
        root_hash: sealed.root_hash,
        signer,
        image,
        sidecars: files.collect(),
    })
}

/// Size and sha256 of a file, read back from disk.
pub fn digest_file(path: &Path) -> Result<(u64, Sha256Digest), SealError> {
    let mut f = File::open(path).map_err(io(path, "cannot open"))?;
    f.seek(SeekFrom::Start(0))
        .map_err(io(path, "cannot seek"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(path, "cannot read back"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Sha256Digest::from_bytes(hasher.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_defaults_and_notes() {
        let p = SealOptions::default().plan();
        assert_eq!(p.format, SealFormat::Bare);
        assert_eq!(p.unsigned, Some(Unsigned::NoKeyBare));
        assert!(p.unsigned.unwrap().to_string().starts_with("unsigned: "));
        let p = SealOptions {
            format: Some(SealFormat::Ddi),
            key: None,
        }
        .plan();
        assert_eq!(p.format, SealFormat::Ddi);
        assert_eq!(p.unsigned, Some(Unsigned::NoKeyDdi));
        assert!(p.key.is_none());
    }

    #[test]
    fn family_and_stale_names() {
        assert_eq!(
            image_family("a-1-x86-64"),
            [
                "a-1-x86-64.raw",
                "a-1-x86-64.verity",
                "a-1-x86-64.roothash",
                "a-1-x86-64.roothash.p7s"
            ]
        );
        let file = |n: &str| OutputFile {
            path: PathBuf::from(n),
            name: n.to_string(),
            size: 0,
            sha256: Sha256Digest::from_bytes([0; 32]),
            staged: PathBuf::from(n),
        };
        let s = SealedImage {
            arch: Arch::X86_64,
            stem: "a-1-x86-64".into(),
            format: SealFormat::Sidecar,
            root_hash: None,
            signer: None,
            image: file("a-1-x86-64.raw"),
            sidecars: vec![file("a-1-x86-64.verity"), file("a-1-x86-64.roothash")],
        };
        assert_eq!(s.stale_names(), ["a-1-x86-64.roothash.p7s"]);
    }

    #[test]
    fn key_args_without_key_and_cert_only() {
        let none = |_: &str| None;
        assert!(KeyArgs::default().load_with(none).unwrap().is_none());
        let e = KeyArgs {
            cert: Some("/x.crt".into()),
            ..KeyArgs::default()
        }
        .load_with(none)
        .unwrap_err();
        assert!(matches!(e, SealError::CertWithoutKey), "{e}");
        let e = KeyArgs {
            key: Some("/nonexistent/k.pem".into()),
            ..KeyArgs::default()
        }
        .load_with(none)
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/k.pem"), "{e}");
    }

    #[test]
    fn passphrase_file_first_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        fs::write(&p, "secret\r\nignored\n").unwrap();
        assert_eq!(read_passphrase(&p).unwrap().expose(), b"secret");
    }
}
