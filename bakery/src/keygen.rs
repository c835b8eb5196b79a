//! `bakery keygen`: every key a publisher needs, in one directory.
//!
//! This module owns putting the two key pairs side by side and the
//! all-or-nothing rule for the directory: the X.509 certificate and RSA key
//! that sign verity root hashes (`signing.crt`, `signing.key`, from
//! [`signing::keys::keygen`]) and the OpenPGP key that signs feed manifests
//! (`openpgp.key`, `import-pubring.gpg`, from [`signing::openpgp::keygen`]).
//! Private keys are created with mode 0600 and never printed; nothing is
//! overwritten; if the second pair cannot be made, the first is removed
//! again, so the directory gets all four files or none.

use std::path::{Path, PathBuf};

use signing::keys::{self, KeyError, CERT_FILE_NAME, KEY_FILE_NAME};
use signing::openpgp::{self, Algorithm, OpenPgpError, PUBRING_FILE_NAME, SECRET_KEY_FILE_NAME};
use sysupdate::Sha256Digest;

/// Common name (and OpenPGP user ID) when none is given.
pub const DEFAULT_NAME: &str = "sysext images signing key";

/// Why keygen failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error(
        "{} already exists; keygen never overwrites keys: choose another --out directory \
         or move the old keys away",
        .0.display()
    )]
    Exists(PathBuf),
    #[error(
        "invalid key name {0:?}: use 1 to 64 printable characters (it becomes the \
         certificate's common name and the OpenPGP user ID)"
    )]
    BadName(String),
    #[error(transparent)]
    X509(#[from] KeyError),
    #[error(transparent)]
    OpenPgp(#[from] OpenPgpError),
}

/// What keygen wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKeys {
    /// Private RSA key for root-hash signatures (0600).
    pub signing_key: PathBuf,
    /// Its self-signed certificate: install on nodes as
    /// `/etc/verity.d/NAME.crt`.
    pub certificate: PathBuf,
    pub certificate_fingerprint: Sha256Digest,
    /// Private OpenPGP key for `SHA256SUMS.gpg` (0600).
    pub openpgp_key: PathBuf,
    /// The public keyring for `/etc/systemd/import-pubring.gpg`.
    pub pubring: PathBuf,
    pub openpgp_fingerprint: String,
}

/// The four file names keygen writes into its directory.
pub const FILE_NAMES: [&str; 4] = [
    KEY_FILE_NAME,
    CERT_FILE_NAME,
    SECRET_KEY_FILE_NAME,
    PUBRING_FILE_NAME,
];

/// Makes both key pairs in `out_dir` (created with mode 0700 if missing)
/// with `name` as the certificate's common name and the OpenPGP user ID.
pub fn keygen(out_dir: &Path, name: &str) -> Result<GeneratedKeys, KeygenError> {
    keygen_with(out_dir, name, keys::KeygenOptions::default())
}

/// [`keygen`] with a chosen RSA size (tests use smaller, faster keys).
pub fn keygen_with(
    out_dir: &Path,
    name: &str,
    x509: keys::KeygenOptions,
) -> Result<GeneratedKeys, KeygenError> {
    let name_ok = !name.trim().is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(char::is_control);
    if !name_ok {
        return Err(KeygenError::BadName(name.to_string()));
    }
    for f in FILE_NAMES {
        let p = out_dir.join(f);
        if p.symlink_metadata().is_ok() {
            return Err(KeygenError::Exists(p));
        }
    }
    let x = keys::keygen_with(out_dir, name, x509)?;
    let pgp = match openpgp::keygen(out_dir, name, Algorithm::Ed25519) {
        Ok(p) => p,
        Err(e) => {
            // Only the files this call just created are removed.
            let _ = std::fs::remove_file(&x.key_path);
            let _ = std::fs::remove_file(&x.cert_path);
            return Err(e.into());
        }
    };
    Ok(GeneratedKeys {
        signing_key: x.key_path,
        certificate: x.cert_path,
        certificate_fingerprint: x.certificate_fingerprint,
        openpgp_key: pgp.secret_key_path,
        pubring: pgp.pubring_path,
        openpgp_fingerprint: pgp.fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn small() -> keys::KeygenOptions {
        keys::KeygenOptions {
            rsa_bits: 2048,
            ..keys::KeygenOptions::default()
        }
    }

    #[test]
    fn writes_four_files_and_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("keys");
        let g = keygen_with(&out, "test key", small()).unwrap();
        for p in [&g.signing_key, &g.openpgp_key] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let mut names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = FILE_NAMES.to_vec();
        want.sort();
        assert_eq!(names, want);
        let before = std::fs::read(&g.signing_key).unwrap();
        let e = keygen_with(&out, "test key", small()).unwrap_err();
        assert!(matches!(e, KeygenError::Exists(_)), "{e}");
        assert_eq!(std::fs::read(&g.signing_key).unwrap(), before);
    }

    #[test]
    fn any_existing_file_or_a_bad_name_is_refused_before_anything_is_made() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PUBRING_FILE_NAME), b"x").unwrap();
        let e = keygen_with(d.path(), "k", small()).unwrap_err();
        assert!(e.to_string().contains(PUBRING_FILE_NAME), "{e}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e = keygen_with(&d.path().join("new"), "   ", small()).unwrap_err();
        assert!(matches!(e, KeygenError::BadName(_)), "{e}");
        assert!(!d.path().join("new").exists());
    }
}
