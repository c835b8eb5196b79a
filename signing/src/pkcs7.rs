//! Root-hash signatures: detached PKCS#7 (DER) over the lowercase hex root
//! hash, made like `systemd-repart` makes them (`PKCS7_DETACHED |
//! PKCS7_NOATTR | PKCS7_BINARY`, signer certificate embedded), and their
//! check the way systemd checks them in user space: the signer must be one
//! of a set of trusted PEM certificates (`PKCS7_NOINTERN | PKCS7_NOVERIFY`:
//! no chain building, no date checks).
//!
//! [`TrustedCerts::from_verity_d`] loads the trusted set from the `verity.d`
//! directories below a root, with systemd's configuration-file semantics.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use rustix::fs::{Mode, OFlags};
use sysupdate::Sha256Digest;

use crate::keys::{cert_fingerprint, subject_of, SigningKey};
use crate::verity::RootHash;

/// The directories systemd reads verity certificates from, most important
/// first. A file name in an earlier directory hides the same name in later
/// ones.
pub const VERITY_D_DIRS: [&str; 4] = [
    "etc/verity.d",
    "run/verity.d",
    "usr/local/lib/verity.d",
    "usr/lib/verity.d",
];

/// Largest signature accepted (systemd's limit for the signature partition).
pub const MAX_SIGNATURE_SIZE: usize = 4 << 20;

/// Errors from signing or checking a root-hash signature.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs7Error {
    #[error("signing the root hash failed: {0}")]
    Sign(openssl::error::ErrorStack),
    #[error("the root hash signature is not a DER PKCS#7 structure: {0}")]
    Malformed(String),
    #[error("no trusted certificates: {0}")]
    NoTrustedCerts(String),
    #[error(
        "the root hash signature for {root_hash} is not valid or not made by a trusted \
         certificate ({trusted} trusted: {names}): {detail}"
    )]
    NotTrusted {
        root_hash: RootHash,
        trusted: usize,
        names: String,
        detail: String,
    },
    #[error("cannot read trusted certificates at {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM X.509 certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
}

/// A detached DER PKCS#7 signature over a root hash (the content of
/// `NAME.roothash.p7s`).
#[derive(Clone, PartialEq, Eq)]
pub struct RootHashSignature(Vec<u8>);

impl RootHashSignature {
    /// Wraps DER bytes (checked when verified).
    pub fn from_der(der: Vec<u8>) -> Self {
        RootHashSignature(der)
    }

    pub fn as_der(&self) -> &[u8] {
        &self.0
    }

    pub fn into_der(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for RootHashSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHashSignature({} bytes DER)", self.0.len())
    }
}

/// Signs the lowercase hex text of `root` (no newline) with `key`:
/// detached, binary, no signed attributes, signer certificate included.
/// With an RSA key the result is deterministic.
pub fn sign_root_hash(root: &RootHash, key: &SigningKey) -> Result<RootHashSignature, Pkcs7Error> {
    let certs = Stack::new().map_err(Pkcs7Error::Sign)?;
    let flags = Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::NOATTR;
    let p7 = Pkcs7::sign(
        key.certificate(),
        key.private_key(),
        &certs,
        root.to_hex().as_bytes(),
        flags,
    )
    .map_err(Pkcs7Error::Sign)?;
    Ok(RootHashSignature(p7.to_der().map_err(Pkcs7Error::Sign)?))
}

/// One trusted certificate and where it came from.
#[derive(Clone)]
pub struct TrustedCert {
    pub cert: X509,
    pub origin: PathBuf,
    pub fingerprint: Sha256Digest,
}

impl fmt::Debug for TrustedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedCert")
            .field("origin", &self.origin)
            .field("subject", &subject_of(&self.cert))
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// The certificates a root-hash signature may be made by.
#[derive(Debug, Clone, Default)]
pub struct TrustedCerts {
    certs: Vec<TrustedCert>,
}

impl TrustedCerts {
    pub fn new() -> Self {
        TrustedCerts::default()
    }

    /// Adds the first certificate in `pem` (as systemd's `PEM_read_X509`
    /// does); `origin` names it in messages.
    pub fn add_pem(&mut self, pem: &[u8], origin: &Path) -> Result<(), Pkcs7Error> {
        let cert = X509::from_pem(pem).map_err(|e| Pkcs7Error::BadCert {
            path: origin.to_path_buf(),
            detail: e.to_string(),
        })?;
        let fingerprint = cert_fingerprint(&cert).map_err(|e| Pkcs7Error::BadCert {
            path: origin.to_path_buf(),
            detail: e.to_string(),
        })?;
        self.certs.push(TrustedCert {
            cert,
            origin: origin.to_path_buf(),
            fingerprint,
        });
        Ok(())
    }

    /// Adds a PEM certificate file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), Pkcs7Error> {
        let read_err = |source| Pkcs7Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut pem = Vec::new();
        f.take(1 << 20).read_to_end(&mut pem).map_err(read_err)?;
        self.add_pem(&pem, path)
    }

    /// Loads `*.crt` from `etc/verity.d`, `run/verity.d`,
    /// `usr/local/lib/verity.d` and `usr/lib/verity.d` below `root` (`/` on
    /// a running node), like systemd: a name in an earlier directory hides
    /// the same name in later ones, empty files and symlinks to `/dev/null`
    /// mask, anything not a regular file is skipped. Paths resolve inside
    /// `root` (symlinks cannot escape it). Missing directories are fine; a
    /// file that is not a certificate is an error naming it.
    pub fn from_verity_d(root: &Path) -> Result<TrustedCerts, Pkcs7Error> {
        let read_err = |path: PathBuf| {
            move |e: rustix::io::Errno| Pkcs7Error::Read {
                path,
                source: e.into(),
            }
        };
        let root_fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(read_err(root.to_path_buf()))?;
        let open_in_root = |rel: &str, flags: OFlags| -> rustix::io::Result<OwnedFd> {
            plumbing::in_root::openat2_in_root(
                root_fd.as_fd(),
                std::path::Path::new(rel),
                flags | OFlags::CLOEXEC | OFlags::NOCTTY,
            )
        };
        // file name -> path relative to root, first directory wins.
        let mut chosen: BTreeMap<String, String> = BTreeMap::new();
        for dir in VERITY_D_DIRS {
            let dir_fd = match open_in_root(dir, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                Err(e) => return Err(read_err(root.join(dir))(e)),
            };
            let entries = rustix::fs::Dir::read_from(&dir_fd).map_err(read_err(root.join(dir)))?;
            for entry in entries {
                let entry = entry.map_err(read_err(root.join(dir)))?;
                let Ok(name) = entry.file_name().to_str() else {
                    continue;
                };
                if name.starts_with('.') || !name.ends_with(".crt") {
                    continue;
                }
                chosen
                    .entry(name.to_string())
                    .or_insert_with(|| format!("{dir}/{name}"));
            }
        }
        let mut trusted = TrustedCerts::new();
        for rel in chosen.values() {
            let shown = root.join(rel);
            let fd = match open_in_root(rel, OFlags::RDONLY | OFlags::NONBLOCK) {
                Ok(fd) => fd,
                // A dangling symlink: nothing to trust.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(read_err(shown)(e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(read_err(shown.clone()))?;
            let is_regular = rustix::fs::FileType::from_raw_mode(st.st_mode)
                == rustix::fs::FileType::RegularFile;
            if !is_regular || st.st_size == 0 {
                continue; // masked (/dev/null or empty) or not a file
            }
            let mut pem = Vec::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_end(&mut pem)
                .map_err(|source| Pkcs7Error::Read {
                    path: shown.clone(),
                    source,
                })?;
            trusted.add_pem(&pem, &shown)?;
        }
        Ok(trusted)
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TrustedCert> {
        self.certs.iter()
    }

    fn names(&self) -> String {
        self.certs
            .iter()
            .map(|c| c.origin.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The trusted certificate that made a signature.
#[derive(Debug, Clone)]
pub struct VerifiedSigner {
    pub origin: PathBuf,
    pub subject: String,
    pub fingerprint: Sha256Digest,
}

/// Checks that `signature` is a valid detached PKCS#7 signature over the hex
/// text of `root` by one of `trusted` (`PKCS7_NOINTERN | PKCS7_NOVERIFY`:
/// certificates embedded in the signature are ignored for finding the
/// signer, no chain or date checks). Returns which certificate signed.
pub fn verify_root_hash(
    root: &RootHash,
    signature: &[u8],
    trusted: &TrustedCerts,
) -> Result<VerifiedSigner, Pkcs7Error> {
    if trusted.is_empty() {
        return Err(Pkcs7Error::NoTrustedCerts(
            "install the signer's certificate as /etc/verity.d/NAME.crt (PEM)".into(),
        ));
    }
    if signature.len() > MAX_SIGNATURE_SIZE {
        return Err(Pkcs7Error::Malformed(format!(
            "{} bytes is larger than the {MAX_SIGNATURE_SIZE}-byte limit",
            signature.len()
        )));
    }
    let p7 = Pkcs7::from_der(signature).map_err(|e| Pkcs7Error::Malformed(e.to_string()))?;
    let not_trusted = |detail: String| Pkcs7Error::NotTrusted {
        root_hash: *root,
        trusted: trusted.len(),
        names: trusted.names(),
        detail,
    };
    let mut stack = Stack::new().map_err(|e| not_trusted(e.to_string()))?;
    for c in &trusted.certs {
        stack
            .push(c.cert.clone())
            .map_err(|e| not_trusted(e.to_string()))?;
    }
    let store = X509StoreBuilder::new()
        .map_err(|e| not_trusted(e.to_string()))?
        .build();
    let flags = Pkcs7Flags::NOINTERN | Pkcs7Flags::NOVERIFY;
    p7.verify(&stack, &store, Some(root.to_hex().as_bytes()), None, flags)
        .map_err(|e| not_trusted(e.to_string()))?;
    let signers = p7
        .signers(&stack, flags)
        .map_err(|e| not_trusted(e.to_string()))?;
    // PKCS7_verify succeeded, so every signer is in `stack`; report the first.
    let signer_der = signers
        .iter()
        .next()
        .and_then(|s| s.to_der().ok())
        .ok_or_else(|| not_trusted("the signature names no signer".into()))?;
    let cert = trusted
        .certs
        .iter()
        .find(|c| c.cert.to_der().ok().as_deref() == Some(signer_der.as_slice()))
        .ok_or_else(|| not_trusted("the signer is not among the trusted certificates".into()))?;
    Ok(VerifiedSigner {
        origin: cert.origin.clone(),
        subject: subject_of(&cert.cert),
        fingerprint: cert.fingerprint,
    })
}

/// Fingerprints (sha256 of DER) of the certificates embedded in a signature.
/// Informational: trust never comes from embedded certificates.
pub fn embedded_cert_fingerprints(signature: &[u8]) -> Result<Vec<Sha256Digest>, Pkcs7Error> {
    let p7 = Pkcs7::from_der(signature).map_err(|e| Pkcs7Error::Malformed(e.to_string()))?;
    let Some(signed) = p7.signed() else {
        return Err(Pkcs7Error::Malformed("not a signedData structure".into()));
    };
    let Some(certs) = signed.certificates() else {
        return Ok(Vec::new());
    };
    certs
        .iter()
        .map(|c| cert_fingerprint(c).map_err(|e| Pkcs7Error::Malformed(e.to_string())))
        .collect()
}
