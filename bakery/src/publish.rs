//! `bakery publish`: sealed images from `bakery build` into a feed — a
//! directory, optionally mirrored to GitHub Releases — through the
//! `releases` library.
//!
//! This module owns the step from files on disk to [`ImageToPublish`]:
//! - finding the images among the arguments (image files or build output
//!   directories) and their sidecar files, and splitting
//!   `NAME-VERSION-ARCH.raw` into its parts
//!   ([`releases::layout::split_image_file_name`]);
//! - checking each image before anything is published
//!   ([`check_image`]): the digest in the build's `SHA256SUMS` (when the
//!   image has one beside it), the dm-verity tree, and the root-hash
//!   signature against the certificate nodes will trust
//!   (`--verity-cert`). Unsigned images (bare, or sealed without a key)
//!   are refused unless explicitly allowed, so an unsigned image is not
//!   published by accident;
//! - turning the command line's choices into [`PublishOptions`] and
//!   calling [`releases::publish_dir`] and, for `--github`,
//!   [`releases::github::publish_github`].
//!
//! Feed layout, retention, ordering and idempotence are the `releases`
//! crate's.

use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use releases::github::{
    publish_github, Client, GithubConfig, GithubReport, GithubTarget, RepoSlug,
};
use releases::layout::split_image_file_name;
use releases::{
    publish_dir, BestBefore, ExtensionName, FeedEvent, FeedUrl, ImageToPublish, OpenPgpSigner,
    PublishOptions, PublishReport, Retention,
};
use signing::ddi::{verify_ddi, DdiError};
use signing::pkcs7::{Pkcs7Error, TrustedCerts};
use signing::sidecar::{verify_sidecar, SidecarError, SidecarPaths};
use signing::RootHash;
use sysupdate::{Arch, Date, Manifest, Sha256Digest, Version};

use crate::seal::{digest_file, SealError, SealFormat};

/// Environment variable naming the OpenPGP key file (`--pgp-key`).
pub const ENV_PGP_KEY: &str = "BAKERY_PGP_KEY";
/// Environment variable naming the verity certificate (`--verity-cert`).
pub const ENV_VERITY_CERT: &str = "BAKERY_VERITY_CERT";

/// Largest certificate file accepted.
const MAX_CERT_FILE: u64 = 1 << 20;

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{}: {reason}", .path.display())]
    Input { path: PathBuf, reason: String },
    #[error(
        "{}: the image is not signed ({what}); publish only signed images (bakery build --key), \
         or pass --allow-unsigned to publish it anyway",
        .path.display()
    )]
    Unsigned { path: PathBuf, what: &'static str },
    #[error(
        "{}: the image is signed, but no certificate to check it against was given: pass \
         --verity-cert (the signing.crt that nodes install in /etc/verity.d) or set {ENV_VERITY_CERT}",
        .path.display()
    )]
    NoTrust { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Ddi {
        path: PathBuf,
        #[source]
        source: Box<DdiError>,
    },
    #[error(transparent)]
    Sidecar(Box<SidecarError>),
    #[error("verity certificate: {0}")]
    Cert(#[from] Pkcs7Error),
    #[error("cannot read the verity certificate {}: {err}", .path.display())]
    CertRead { path: PathBuf, err: std::io::Error },
    #[error(
        "{}: {source}; give the OpenPGP key written by `bakery keygen` (openpgp.key)",
        .path.display()
    )]
    PgpKey {
        path: PathBuf,
        #[source]
        source: releases::SignError,
    },
    #[error(
        "no OpenPGP key to sign the manifests: pass --pgp-key PATH (openpgp.key from \
         `bakery keygen`) or set {ENV_PGP_KEY}"
    )]
    NoPgpKey,
    #[error("no feed URL: pass --base-url URL (where the feed directory is served) or --github OWNER/REPO")]
    NoBaseUrl,
    #[error(
        "--base-url and --github exclude each other: a GitHub feed is served from its releases' \
         download URLs"
    )]
    BaseUrlAndGithub,
    #[error(transparent)]
    BadUrl(#[from] releases::layout::BadFeedUrl),
    #[error("no images found in {}: expected NAME-VERSION-ARCH.raw files", .0.display())]
    NoImages(PathBuf),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("cannot publish to the feed directory: {0}")]
    Feed(#[from] releases::PublishError),
    #[error(
        "GitHub: {0}; the feed directory is complete, re-run the same command to finish the upload"
    )]
    Github(#[from] releases::github::GithubError),
    #[error("no GitHub token: set GITHUB_TOKEN to a token that may write releases of {0}")]
    NoToken(String),
    #[error("cannot determine today's date for BEST-BEFORE")]
    NoDate,
}

impl From<SidecarError> for PublishError {
    fn from(e: SidecarError) -> Self {
        PublishError::Sidecar(Box::new(e))
    }
}

// ---------------------------------------------------------------------------
// Finding images
// ---------------------------------------------------------------------------

/// An image file found among the arguments, not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundImage {
    pub path: PathBuf,
    pub name: ExtensionName,
    pub version: Version,
    pub arch: Arch,
}

/// The images named by `inputs`: `.raw` files, and every `*.raw` file in
/// a directory (hidden files skipped). Symlinks and other non-regular
/// files are refused.
pub fn find_images(
    inputs: &[PathBuf],
    name: Option<&ExtensionName>,
) -> Result<Vec<FoundImage>, PublishError> {
    let mut found: Vec<FoundImage> = Vec::new();
    let bad = |path: &Path, reason: String| PublishError::Input {
        path: path.to_path_buf(),
        reason,
    };
    for input in inputs {
        let md = std::fs::symlink_metadata(input).map_err(|e| bad(input, e.to_string()))?;
        let mut files = Vec::new();
        if md.is_dir() {
            let rd = std::fs::read_dir(input).map_err(|e| bad(input, e.to_string()))?;
            for ent in rd {
                let ent = ent.map_err(|e| bad(input, e.to_string()))?;
                let n = ent.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') || !n.ends_with(".raw") {
                    continue;
                }
                files.push(ent.path());
            }
            files.sort();
            if files.is_empty() {
                return Err(PublishError::NoImages(input.clone()));
            }
        } else {
            files.push(input.clone());
        }
        for f in files {
            let md = std::fs::symlink_metadata(&f).map_err(|e| bad(&f, e.to_string()))?;
            if !md.is_file() {
                return Err(bad(
                    &f,
                    "not a regular file (symlinks and devices are refused)".into(),
                ));
            }
            let file_name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (n, version, arch) =
                split_image_file_name(&file_name, name).map_err(|r| bad(&f, r.to_string()))?;
            if found.iter().any(|i| i.path == f) {
                continue;
            }
            found.push(FoundImage {
                path: f,
                name: n,
                version,
                arch,
            });
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------
// Checking images
// ---------------------------------------------------------------------------

/// An image that passed [`check_image`], ready for the feed.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    pub image: ImageToPublish,
    pub format: SealFormat,
    pub root_hash: Option<RootHash>,
    /// The trusted certificate that signed it.
    pub signer: Option<Sha256Digest>,
    pub size: u64,
    pub sha256: Sha256Digest,
}

const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();

fn is_bare_filesystem(path: &Path) -> Result<bool, PublishError> {
    let mut head = [0u8; 1028];
    let mut f = File::open(path).map_err(|e| PublishError::Input {
        path: path.to_path_buf(),
        reason: format!("cannot open: {e}"),
    })?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(PublishError::Input {
                    path: path.to_path_buf(),
                    reason: format!("cannot read: {e}"),
                })
            }
        }
    }
    Ok((n >= 4 && &head[..4] == SQUASHFS_MAGIC) || (n >= 1028 && head[1024..1028] == EROFS_MAGIC))
}

/// The digest the build's `SHA256SUMS` beside `path` lists for it, if any.
fn listed_digest(path: &Path) -> Result<Option<Sha256Digest>, PublishError> {
    let sums = path.with_file_name("SHA256SUMS");
    let bytes = match std::fs::read(&sums) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishError::Input {
                path: sums,
                reason: format!("cannot read: {e}"),
            })
        }
    };
    let m = Manifest::parse_named(&bytes, &sums.display().to_string()).map_err(|e| {
        PublishError::Input {
            path: sums.clone(),
            reason: e.to_string(),
        }
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(m.get(&name).copied())
}

fn check_listed(path: &Path, actual: Sha256Digest) -> Result<(), PublishError> {
    match listed_digest(path)? {
        Some(listed) if listed != actual => Err(PublishError::Input {
            path: path.to_path_buf(),
            reason: format!(
                "sha256 {actual} differs from {listed} in the SHA256SUMS beside it: the file \
                 changed after the build; rebuild it"
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks one image: the digest its build listed, the verity tree, and
/// the signature against `trusted` (required for signed images). Bare and
/// unsigned images pass only with `allow_unsigned`.
pub fn check_image(
    found: FoundImage,
    trusted: Option<&TrustedCerts>,
    allow_unsigned: bool,
) -> Result<CheckedImage, PublishError> {
    let path = found.path.clone();
    let (size, sha256) = digest_file(&path)?;
    check_listed(&path, sha256)?;
    let sidecar = SidecarPaths::for_image(&path);
    let mut sidecars = Vec::new();
    let (format, root_hash, signer) = if sidecar.roothash.exists() {
        let has_sig = sidecar.signature.exists();
        if !has_sig && !allow_unsigned {
            return Err(PublishError::Unsigned {
                path,
                what: "sidecar form without .roothash.p7s",
            });
        }
        if has_sig && trusted.is_none() {
            return Err(PublishError::NoTrust { path });
        }
        let v = verify_sidecar(&path, if has_sig { trusted } else { None })?;
        for (suffix, p) in [
            (".verity", &sidecar.verity),
            (".roothash", &sidecar.roothash),
            (".roothash.p7s", &sidecar.signature),
        ] {
            if p.exists() {
                let (_, d) = digest_file(p)?;
                check_listed(p, d)?;
                sidecars.push((suffix.to_string(), p.clone()));
            }
        }
        (
            SealFormat::Sidecar,
            Some(v.sidecar.root_hash),
            v.signer.map(|s| s.fingerprint),
        )
    } else if is_bare_filesystem(&path)? {
        if !allow_unsigned {
            return Err(PublishError::Unsigned {
                path,
                what: "a bare filesystem without dm-verity",
            });
        }
        (SealFormat::Bare, None, None)
    } else {
        let ddi_err = |source: DdiError| PublishError::Ddi {
            path: path.clone(),
            source: Box::new(source),
        };
        let f = File::open(&path).map_err(|e| PublishError::Input {
            path: path.clone(),
            reason: format!("cannot open: {e}"),
        })?;
        let layout = signing::ddi::read_ddi(&f).map_err(ddi_err)?;
        if layout.arch != found.arch {
            return Err(PublishError::Input {
                path,
                reason: format!(
                    "the DDI holds {} partitions, but its name says {}",
                    layout.arch, found.arch
                ),
            });
        }
        let signed = layout.signature.is_some();
        if !signed && !allow_unsigned {
            return Err(PublishError::Unsigned {
                path,
                what: "a DDI without a signature partition",
            });
        }
        if signed && trusted.is_none() {
            return Err(PublishError::NoTrust { path });
        }
        let v = verify_ddi(&f, if signed { trusted } else { None }).map_err(ddi_err)?;
        (
            SealFormat::Ddi,
            Some(v.layout.root_hash),
            v.signer.map(|s| s.fingerprint),
        )
    };
    Ok(CheckedImage {
        image: ImageToPublish {
            name: found.name,
            version: found.version,
            arch: found.arch,
            path: found.path,
            sidecars,
        },
        format,
        root_hash,
        signer,
        size,
        sha256,
    })
}

/// Reads a PEM certificate file for the trust set and the snippets.
pub fn load_verity_cert(path: &Path) -> Result<(TrustedCerts, String), PublishError> {
    let err = |err| PublishError::CertRead {
        path: path.to_path_buf(),
        err,
    };
    let f = File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    f.take(MAX_CERT_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() as u64 > MAX_CERT_FILE {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB; not a PEM certificate",
        )));
    }
    let mut t = TrustedCerts::new();
    t.add_pem(&buf, path)?;
    let pem = String::from_utf8(buf).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not text; give the PEM certificate",
        ))
    })?;
    Ok((t, pem))
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

/// Where on GitHub to publish.
#[derive(Debug, Clone)]
pub struct GithubSettings {
    pub repo: RepoSlug,
    /// API base (default `https://api.github.com`; GHES: `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// Web base for download URLs (default `https://github.com`).
    pub web_url: Option<String>,
    /// Also keep one release per version for provenance.
    pub provenance: bool,
}

/// Everything `bakery publish` needs.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    /// The local feed directory (created if missing): the source of truth.
    pub feed_dir: PathBuf,
    /// Image files and build output directories.
    pub inputs: Vec<PathBuf>,
    /// The extension name, when it cannot be told from the file names.
    pub name: Option<ExtensionName>,
    /// Where the feed directory is served (`BASE/NAME/`); `{name}` may
    /// place the name elsewhere.
    pub base_url: Option<String>,
    pub github: Option<GithubSettings>,
    /// Versions kept per stream (default 3).
    pub keep: Option<NonZeroUsize>,
    /// `BEST-BEFORE` this many days from today in every manifest.
    pub best_before_days: Option<u32>,
    /// The OpenPGP secret key that signs manifests.
    pub pgp_key: Option<PathBuf>,
    /// The PEM certificate images must be signed by; shipped in snippets.
    pub verity_cert: Option<PathBuf>,
    pub allow_unsigned: bool,
}

impl PublishSettings {
    /// Fills `pgp_key` and `verity_cert` from `BAKERY_PGP_KEY` and
    /// `BAKERY_VERITY_CERT` when they are not set.
    pub fn with_env_defaults(mut self) -> Self {
        if self.pgp_key.is_none() {
            self.pgp_key = std::env::var_os(ENV_PGP_KEY)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
        }
        if self.verity_cert.is_none() {
            self.verity_cert = std::env::var_os(ENV_VERITY_CERT)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
        }
        self
    }
}

/// What a publish did.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    pub images: Vec<CheckedImage>,
    /// The URL directory pattern of the feed.
    pub feed_url: String,
    pub feed: PublishReport,
    pub github: Option<GithubReport>,
    /// The manifest signer's OpenPGP fingerprint.
    pub pgp_fingerprint: String,
}

/// Checks every image, then publishes them into the feed directory and,
/// with GitHub settings, mirrors the feed to GitHub Releases. Nothing is
/// published unless every image passes. `observer` sees every file the
/// directory publisher writes or removes.
pub fn publish(
    s: &PublishSettings,
    observer: Option<&dyn Fn(&FeedEvent)>,
) -> Result<PublishOutcome, PublishError> {
    // Settings first, so a mistake costs no hashing.
    let pgp_path = s.pgp_key.as_ref().ok_or(PublishError::NoPgpKey)?;
    let (url, target) = match (&s.base_url, &s.github) {
        (Some(_), Some(_)) => return Err(PublishError::BaseUrlAndGithub),
        (None, None) => return Err(PublishError::NoBaseUrl),
        (Some(u), None) => (FeedUrl::new(u.clone())?, None),
        (None, Some(g)) => {
            let mut t = GithubTarget::new(g.repo.clone());
            if let Some(w) = &g.web_url {
                t.web_url = w.clone();
            }
            t.provenance = g.provenance;
            (t.feed_url()?, Some(t))
        }
    };
    let client = match (&s.github, &target) {
        (Some(g), Some(_)) => {
            let mut cfg = GithubConfig::from_env();
            if let Some(api) = &g.api_url {
                cfg.api_url = api.clone();
            }
            if cfg.token.is_none() {
                return Err(PublishError::NoToken(g.repo.to_string()));
            }
            Some(Client::new(cfg)?)
        }
        _ => None,
    };
    let signer = OpenPgpSigner::load(pgp_path).map_err(|source| PublishError::PgpKey {
        path: pgp_path.clone(),
        source,
    })?;
    let (trusted, cert_pem) = match &s.verity_cert {
        Some(p) => {
            let (t, pem) = load_verity_cert(p)?;
            (Some(t), Some(pem))
        }
        None => (None, None),
    };
    let best_before = match s.best_before_days {
        Some(days) => Some(BestBefore {
            days,
            today: Date::today_utc().ok_or(PublishError::NoDate)?,
        }),
        None => None,
    };

    let found = find_images(&s.inputs, s.name.as_ref())?;
    let images = found
        .into_iter()
        .map(|f| check_image(f, trusted.as_ref(), s.allow_unsigned))
        .collect::<Result<Vec<_>, _>>()?;

    let mut opts = PublishOptions::new(url.clone(), &signer);
    if let Some(k) = s.keep {
        opts.retention = Retention { keep_per_stream: k };
    }
    opts.best_before = best_before;
    opts.verity_certificate = cert_pem;
    opts.observer = observer;
    let to_publish: Vec<ImageToPublish> = images.iter().map(|c| c.image.clone()).collect();
    let feed = publish_dir(&s.feed_dir, &to_publish, &opts)?;
    let github = match (&client, &target) {
        (Some(c), Some(t)) => Some(publish_github(c, &s.feed_dir, t)?),
        _ => None,
    };
    Ok(PublishOutcome {
        images,
        feed_url: url.as_str().to_string(),
        feed,
        github,
        pgp_fingerprint: signer.fingerprint(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_unsigned_images_are_refused_by_default() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x-1-x86-64.raw");
        let mut bytes = b"hsqs".to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&p, &bytes).unwrap();
        let found = find_images(&[d.path().to_path_buf()], None).unwrap();
        assert_eq!(found.len(), 1);
        let e = check_image(found[0].clone(), None, false).unwrap_err();
        assert!(matches!(e, PublishError::Unsigned { .. }), "{e}");
        assert!(e.to_string().contains("--allow-unsigned"), "{e}");
        let ok = check_image(found[0].clone(), None, true).unwrap();
        assert_eq!(ok.format, SealFormat::Bare);
        // A changed file no longer matches the build's SHA256SUMS.
        std::fs::write(
            d.path().join("SHA256SUMS"),
            format!("{}  x-1-x86-64.raw\n", "00".repeat(32)),
        )
        .unwrap();
        let e = check_image(found[0].clone(), None, true).unwrap_err();
        assert!(e.to_string().contains("changed after the build"), "{e}");
    }
}
