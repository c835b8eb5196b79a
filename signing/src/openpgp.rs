//! OpenPGP for feed manifests: the key that signs `SHA256SUMS`, the detached
//! binary signature `SHA256SUMS.gpg` that `gpg --verify` and
//! systemd-sysupdate check, and the public keyring nodes install as
//! `/etc/systemd/import-pubring.gpg`.
//!
//! Keys are OpenPGP v4 (GnuPG does not accept v6): one primary key that
//! certifies and signs, Ed25519 (the "EdDSA legacy" encoding every GnuPG 2.2+
//! reads) or RSA. The secret key is stored ASCII-armored, unencrypted, in a
//! file created with mode 0600 and renamed into place; it is never printed
//! and `Debug` of [`OpenPgpSecretKey`] shows only the fingerprint.
//!
//! [`verify_detached`] is our own check of what gpg checks: the keyring's
//! self-signatures are valid, the key is not revoked, not expired when it
//! signed and allowed to sign, the signature is a binary or text document
//! signature with SHA-256 or stronger, and it verifies over the data.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, SubsecRound, Utc};
use pgp::composed::{
    ArmorOptions, Deserializable, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedPublicKey, SignedSecretKey, SubpacketConfig,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{SignatureType, Subpacket, SubpacketData};
use pgp::ser::Serialize;
use pgp::types::{KeyDetails, KeyVersion, Password, PublicKeyTrait};

use crate::keys::Secret;
use plumbing::atomic::{commit_all, AtomicFile};

/// File name of the armored secret key written by [`keygen`].
pub const SECRET_KEY_FILE_NAME: &str = "openpgp.key";
/// File name of the binary public keyring written by [`keygen`] (what
/// systemd-sysupdate reads from `/etc/systemd/import-pubring.gpg`).
pub const PUBRING_FILE_NAME: &str = "import-pubring.gpg";
/// File name of the detached manifest signature.
pub const SIGNATURE_FILE_NAME: &str = "SHA256SUMS.gpg";

/// The public-key algorithm of a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Ed25519 in the v4 "EdDSA legacy" encoding. Small and fast; signatures
    /// are deterministic.
    #[default]
    Ed25519,
    /// RSA with the given modulus size (2048..=4096).
    Rsa(u32),
}

/// Anything that can go wrong with OpenPGP keys and signatures. Messages
/// never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum OpenPgpError {
    #[error("invalid OpenPGP user ID {0:?}: use 1-128 printable characters, e.g. \"Example Feed <feed@example.org>\"")]
    BadUserId(String),
    #[error("unsupported RSA size {0}: use 2048, 3072 or 4096")]
    BadRsaSize(u32),
    #[error("generating the OpenPGP key failed: {0}")]
    Generate(String),
    #[error("{what}: not an OpenPGP secret key: {detail}")]
    BadSecretKey { what: String, detail: String },
    #[error("{what}: the secret key is protected by a passphrase, which is not supported; export it without one (gpg --export-secret-keys with an empty passphrase)")]
    Encrypted { what: String },
    #[error("{what}: the secret key is a v{version} key; only v4 keys work with GnuPG and systemd-sysupdate")]
    NotV4 { what: String, version: u8 },
    #[error("{path}: the secret key file is readable by group or others (mode {mode:04o}); run chmod 600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("public keyring: {0}")]
    BadKeyring(String),
    #[error("signature: {0}")]
    BadSignature(String),
    #[error("signature does not verify: {0}")]
    Invalid(String),
    #[error("no key in the keyring made this signature (issuer {0})")]
    UnknownSigner(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenPgpError + '_ {
    move |source| OpenPgpError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A secret signing key. `Debug` shows the fingerprint only.
#[derive(Clone)]
pub struct OpenPgpSecretKey {
    key: SignedSecretKey,
}

impl fmt::Debug for OpenPgpSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OpenPgpSecretKey({} <secret redacted>)",
            self.fingerprint()
        )
    }
}

fn valid_user_id(uid: &str) -> bool {
    !uid.trim().is_empty() && uid.chars().count() <= 128 && !uid.chars().any(char::is_control)
}

impl OpenPgpSecretKey {
    /// Makes a new v4 key whose primary key certifies and signs.
    pub fn generate(user_id: &str, algorithm: Algorithm) -> Result<Self, OpenPgpError> {
        if !valid_user_id(user_id) {
            return Err(OpenPgpError::BadUserId(user_id.to_string()));
        }
        let key_type = match algorithm {
            Algorithm::Ed25519 => KeyType::Ed25519Legacy,
            Algorithm::Rsa(bits @ (2048 | 3072 | 4096)) => KeyType::Rsa(bits),
            Algorithm::Rsa(bits) => return Err(OpenPgpError::BadRsaSize(bits)),
        };
        let params = SecretKeyParamsBuilder::default()
            .version(KeyVersion::V4)
            .key_type(key_type)
            .can_certify(true)
            .can_sign(true)
            .can_encrypt(false)
            .primary_user_id(user_id.to_string())
            .preferred_hash_algorithms(
                [HashAlgorithm::Sha256, HashAlgorithm::Sha512]
                    .into_iter()
                    .collect(),
            )
            .build()
            .map_err(|e| OpenPgpError::Generate(e.to_string()))?;
        let mut rng = rand::thread_rng();
        let key = params
            .generate(&mut rng)
            .and_then(|k| k.sign(&mut rng, &Password::empty()))
            .map_err(|e| OpenPgpError::Generate(e.to_string()))?;
        Ok(OpenPgpSecretKey { key })
    }

    /// Reads an armored (or binary) secret key; `what` names its origin in
    /// errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, OpenPgpError> {
        let bad = |e: pgp::errors::Error| OpenPgpError::BadSecretKey {
            what: what.to_string(),
            detail: e.to_string(),
        };
        let trimmed = bytes.trim_ascii_start();
        let key = if trimmed.starts_with(b"-----BEGIN") {
            SignedSecretKey::from_armor_single(trimmed).map_err(bad)?.0
        } else {
            SignedSecretKey::from_bytes(trimmed).map_err(bad)?
        };
        key.verify().map_err(bad)?;
        if key.primary_key.version() != KeyVersion::V4 {
            return Err(OpenPgpError::NotV4 {
                what: what.to_string(),
                version: u8::from(key.primary_key.version()),
            });
        }
        if key.primary_key.secret_params().is_encrypted() {
            return Err(OpenPgpError::Encrypted {
                what: what.to_string(),
            });
        }
        Ok(OpenPgpSecretKey { key })
    }

    /// Loads a secret key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, OpenPgpError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(OpenPgpError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = Secret::new(std::fs::read(path).map_err(io_err(path))?);
        OpenPgpSecretKey::from_bytes(bytes.expose(), &path.display().to_string())
    }

    /// Writes the key armored to `path` with mode 0600, atomically; refuses
    /// to replace an existing file.
    pub fn save(&self, path: &Path) -> Result<(), OpenPgpError> {
        let f = self.secret_file(path)?;
        commit_all(vec![f], true).map_err(|e| map_exists(e, path))
    }

    fn secret_file(&self, path: &Path) -> Result<AtomicFile, OpenPgpError> {
        let armored = Secret::new(
            self.key
                .to_armored_bytes(ArmorOptions::default())
                .map_err(|e| OpenPgpError::Generate(e.to_string()))?,
        );
        let mut f = AtomicFile::create(path, 0o600).map_err(io_err(path))?;
        f.file_mut()
            .write_all(armored.expose())
            .map_err(io_err(path))?;
        Ok(f)
    }

    /// The primary key's fingerprint, 40 uppercase hex digits as gpg shows it.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(self.key.fingerprint().as_bytes())
    }

    /// The transferable public key (certificate).
    pub fn public_key(&self) -> SignedPublicKey {
        self.key.signed_public_key()
    }

    /// The public keyring in binary OpenPGP form, as
    /// `gpg --export` writes it and systemd-sysupdate reads it.
    pub fn public_keyring(&self) -> Result<Vec<u8>, OpenPgpError> {
        self.public_key()
            .to_bytes()
            .map_err(|e| OpenPgpError::Generate(e.to_string()))
    }

    /// The public key, ASCII-armored (for humans and key servers).
    pub fn public_key_armored(&self) -> Result<String, OpenPgpError> {
        self.public_key()
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| OpenPgpError::Generate(e.to_string()))
    }

    /// A detached binary signature over `data`, created now.
    pub fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>, OpenPgpError> {
        self.sign_detached_at(data, SystemTime::now())
    }

    /// A detached binary signature over `data` with the given creation time
    /// (e.g. `SOURCE_DATE_EPOCH`); with an Ed25519 key the output is then
    /// the same bytes every time.
    pub fn sign_detached_at(
        &self,
        data: &[u8],
        created: SystemTime,
    ) -> Result<Vec<u8>, OpenPgpError> {
        let created: DateTime<Utc> = DateTime::<Utc>::from(created).trunc_subsecs(0);
        let sub = |d| Subpacket::regular(d).map_err(|e| OpenPgpError::Sign(e.to_string()));
        let hashed = vec![
            sub(SubpacketData::SignatureCreationTime(created))?,
            sub(SubpacketData::IssuerFingerprint(self.key.fingerprint()))?,
        ];
        let unhashed = vec![sub(SubpacketData::Issuer(self.key.key_id()))?];
        let sig = DetachedSignature::sign_binary_data_with_subpackets(
            rand::thread_rng(),
            &self.key.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            data,
            SubpacketConfig::UserDefined { hashed, unhashed },
        )
        .map_err(|e| OpenPgpError::Sign(e.to_string()))?;
        sig.to_bytes()
            .map_err(|e| OpenPgpError::Sign(e.to_string()))
    }
}

fn map_exists(e: std::io::Error, path: &Path) -> OpenPgpError {
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        OpenPgpError::Exists {
            path: path.to_path_buf(),
        }
    } else {
        OpenPgpError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// [`OpenPgpSecretKey::sign_detached`].
pub fn sign_detached(secret: &OpenPgpSecretKey, data: &[u8]) -> Result<Vec<u8>, OpenPgpError> {
    secret.sign_detached(data)
}

/// What [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedOpenPgpKey {
    pub secret_key_path: PathBuf,
    pub pubring_path: PathBuf,
    pub fingerprint: String,
}

/// Makes a new key and writes `out_dir/openpgp.key` (armored secret key,
/// mode 0600) and `out_dir/import-pubring.gpg` (binary public keyring,
/// mode 0644). `out_dir` is created (mode 0700) if missing. Refuses to
/// overwrite either file; on error neither is left behind.
pub fn keygen(
    out_dir: &Path,
    user_id: &str,
    algorithm: Algorithm,
) -> Result<GeneratedOpenPgpKey, OpenPgpError> {
    let secret_key_path = out_dir.join(SECRET_KEY_FILE_NAME);
    let pubring_path = out_dir.join(PUBRING_FILE_NAME);
    for p in [&secret_key_path, &pubring_path] {
        if p.symlink_metadata().is_ok() {
            return Err(OpenPgpError::Exists { path: p.clone() });
        }
    }
    let key = OpenPgpSecretKey::generate(user_id, algorithm)?;
    if !out_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(out_dir)
            .map_err(io_err(out_dir))?;
    }
    let secret = key.secret_file(&secret_key_path)?;
    let mut pubring = AtomicFile::create(&pubring_path, 0o644).map_err(io_err(&pubring_path))?;
    pubring
        .file_mut()
        .write_all(&key.public_keyring()?)
        .map_err(io_err(&pubring_path))?;
    commit_all(vec![secret, pubring], true).map_err(|e| map_exists(e, &secret_key_path))?;
    Ok(GeneratedOpenPgpKey {
        secret_key_path,
        pubring_path,
        fingerprint: key.fingerprint(),
    })
}

/// Who made a signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Fingerprint of the key (primary or subkey) that signed, uppercase hex.
    pub signer_fingerprint: String,
    /// Fingerprint of that key's primary key, uppercase hex.
    pub primary_fingerprint: String,
    pub created: Option<SystemTime>,
}

/// Parses a keyring: binary (`gpg --export`, one or more keys) or armored.
pub fn parse_keyring(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, OpenPgpError> {
    let bad = |e: pgp::errors::Error| OpenPgpError::BadKeyring(e.to_string());
    let trimmed = bytes.trim_ascii_start();
    let keys: Vec<SignedPublicKey> = if trimmed.starts_with(b"-----BEGIN") {
        SignedPublicKey::from_armor_many(trimmed)
            .map_err(bad)?
            .0
            .collect::<Result<_, _>>()
            .map_err(bad)?
    } else {
        SignedPublicKey::from_bytes_many(trimmed)
            .map_err(bad)?
            .collect::<Result<_, _>>()
            .map_err(bad)?
    };
    if keys.is_empty() {
        return Err(OpenPgpError::BadKeyring("no public key found".into()));
    }
    Ok(keys)
}

fn parse_signature(bytes: &[u8]) -> Result<DetachedSignature, OpenPgpError> {
    let bad = |e: pgp::errors::Error| OpenPgpError::BadSignature(e.to_string());
    let trimmed = bytes.trim_ascii_start();
    let mut sigs: Vec<DetachedSignature> = if trimmed.starts_with(b"-----BEGIN") {
        DetachedSignature::from_armor_many(trimmed)
            .map_err(bad)?
            .0
            .collect::<Result<_, _>>()
            .map_err(bad)?
    } else {
        DetachedSignature::from_bytes_many(trimmed)
            .map_err(bad)?
            .collect::<Result<_, _>>()
            .map_err(bad)?
    };
    match sigs.len() {
        1 => Ok(sigs.remove(0)),
        0 => Err(OpenPgpError::BadSignature(
            "no signature packet found".into(),
        )),
        n => Err(OpenPgpError::BadSignature(format!(
            "{n} signatures found; expected exactly one"
        ))),
    }
}

/// A key in the keyring that the signature names as its issuer.
struct Candidate<'a> {
    fingerprint: String,
    key: CandidateKey<'a>,
    can_sign: bool,
    expires: Option<DateTime<Utc>>,
}

enum CandidateKey<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Sub(&'a pgp::packet::PublicSubkey),
}

/// Whether a key may sign according to its (valid) self-signatures.
fn may_sign(sigs: &[&pgp::packet::Signature]) -> bool {
    sigs.iter().any(|s| s.key_flags().sign())
}

/// Checks a detached signature over `data` against a public keyring.
pub fn verify_detached(
    pubring: &[u8],
    data: &[u8],
    signature: &[u8],
) -> Result<Verified, OpenPgpError> {
    let keys = parse_keyring(pubring)?;
    let sig = parse_signature(signature)?;
    let s = &sig.signature;
    match s.typ() {
        Some(SignatureType::Binary | SignatureType::Text) => {}
        other => {
            return Err(OpenPgpError::BadSignature(format!(
                "not a document signature (type {other:?})"
            )))
        }
    }
    match s.hash_alg() {
        Some(HashAlgorithm::Sha256 | HashAlgorithm::Sha384 | HashAlgorithm::Sha512) => {}
        other => {
            return Err(OpenPgpError::BadSignature(format!(
                "hash algorithm {other:?} is too weak; SHA-256 or stronger is required"
            )))
        }
    }
    let created = s.created().copied();
    let issuers_fp: Vec<Vec<u8>> = s
        .issuer_fingerprint()
        .iter()
        .map(|f| f.as_bytes().to_vec())
        .collect();
    let issuers_id: Vec<Vec<u8>> = s.issuer().iter().map(|k| k.as_ref().to_vec()).collect();
    let is_issuer = |fp: &[u8], id: &[u8]| {
        issuers_fp.iter().any(|f| f == fp)
            || (issuers_fp.is_empty() && issuers_id.iter().any(|i| i == id))
    };
    let issuer_text = issuers_fp
        .first()
        .or(issuers_id.first())
        .map(hex::encode_upper)
        .unwrap_or_else(|| "not stated".into());

    let mut last_error: Option<OpenPgpError> = None;
    for key in &keys {
        let primary_fp = hex::encode_upper(key.fingerprint().as_bytes());
        // Candidate signing keys: the primary, then its subkeys.
        let mut candidates: Vec<Candidate<'_>> = Vec::new();
        if is_issuer(key.fingerprint().as_bytes(), key.key_id().as_ref()) {
            let self_sigs: Vec<&pgp::packet::Signature> = key
                .details
                .users
                .iter()
                .flat_map(|u| u.signatures.iter())
                .chain(key.details.direct_signatures.iter())
                .collect();
            candidates.push(Candidate {
                fingerprint: primary_fp.clone(),
                key: CandidateKey::Primary(&key.primary_key),
                can_sign: may_sign(&self_sigs),
                expires: key.expires_at(),
            });
        }
        for sub in &key.public_subkeys {
            if is_issuer(sub.key.fingerprint().as_bytes(), sub.key.key_id().as_ref()) {
                let binding: Vec<&pgp::packet::Signature> = sub.signatures.iter().collect();
                let expires = binding
                    .iter()
                    .filter_map(|b| b.key_expiration_time())
                    .next()
                    .map(|d| *sub.key.created_at() + *d);
                candidates.push(Candidate {
                    fingerprint: hex::encode_upper(sub.key.fingerprint().as_bytes()),
                    key: CandidateKey::Sub(&sub.key),
                    can_sign: may_sign(&binding),
                    expires,
                });
            }
        }
        if candidates.is_empty() {
            continue;
        }
        if let Err(e) = key.verify() {
            last_error = Some(OpenPgpError::Invalid(format!(
                "key {primary_fp} has an invalid self-signature: {e}"
            )));
            continue;
        }
        if !key.details.revocation_signatures.is_empty() {
            last_error = Some(OpenPgpError::Invalid(format!(
                "key {primary_fp} is revoked"
            )));
            continue;
        }
        for Candidate {
            fingerprint: fp,
            key: signer,
            can_sign,
            expires,
        } in candidates
        {
            if !can_sign {
                last_error = Some(OpenPgpError::Invalid(format!(
                    "key {fp} is not allowed to sign"
                )));
                continue;
            }
            if let (Some(exp), Some(c)) = (expires, created) {
                if c >= exp {
                    last_error = Some(OpenPgpError::Invalid(format!(
                        "key {fp} had expired when it signed"
                    )));
                    continue;
                }
            }
            let checked = match signer {
                CandidateKey::Primary(k) => s.verify(k, data),
                CandidateKey::Sub(k) => s.verify(k, data),
            };
            match checked {
                Ok(()) => {
                    return Ok(Verified {
                        signer_fingerprint: fp,
                        primary_fingerprint: primary_fp,
                        created: created.map(SystemTime::from),
                    })
                }
                Err(e) => {
                    last_error = Some(OpenPgpError::Invalid(format!(
                        "BAD signature from {fp}: {e}"
                    )))
                }
            }
        }
    }
    Err(last_error.unwrap_or(OpenPgpError::UnknownSigner(issuer_text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_tamper() {
        let key =
            OpenPgpSecretKey::generate("Test Feed <feed@example.org>", Algorithm::Ed25519).unwrap();
        let ring = key.public_keyring().unwrap();
        let data = b"e3b0  x.raw\n";
        let sig = key.sign_detached(data).unwrap();
        let v = verify_detached(&ring, data, &sig).unwrap();
        assert_eq!(v.primary_fingerprint, key.fingerprint());
        let e = verify_detached(&ring, b"e3b0  y.raw\n", &sig).unwrap_err();
        assert!(e.to_string().contains("BAD signature"), "{e}");
        let other =
            OpenPgpSecretKey::generate("Other <o@example.org>", Algorithm::Ed25519).unwrap();
        let e = verify_detached(&other.public_keyring().unwrap(), data, &sig).unwrap_err();
        assert!(matches!(e, OpenPgpError::UnknownSigner(_)), "{e}");
        let armored = key.public_key_armored().unwrap();
        assert!(verify_detached(armored.as_bytes(), data, &sig).is_ok());
    }

    #[test]
    fn fixed_time_ed25519_signatures_are_reproducible() {
        let key = OpenPgpSecretKey::generate("Repro <r@example.org>", Algorithm::Ed25519).unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let a = key.sign_detached_at(b"data", t).unwrap();
        let b = key.sign_detached_at(b"data", t).unwrap();
        assert_eq!(a, b);
        let v = verify_detached(&key.public_keyring().unwrap(), b"data", &a).unwrap();
        assert_eq!(v.created, Some(t));
    }

    #[test]
    fn secret_key_file_is_0600_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let g = keygen(
            &dir.path().join("keys"),
            "K <k@example.org>",
            Algorithm::Ed25519,
        )
        .unwrap();
        let mode = std::fs::metadata(&g.secret_key_path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&g.secret_key_path).unwrap();
        assert!(
            text.starts_with("-----BEGIN PGP PRIVATE KEY BLOCK-----"),
            "armored"
        );
        let key = OpenPgpSecretKey::load(&g.secret_key_path).unwrap();
        assert_eq!(key.fingerprint(), g.fingerprint);
        let dbg = format!("{key:?}");
        assert!(
            dbg.contains("redacted") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
        // No temporary files left; refuses to overwrite.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let e = keygen(
            &dir.path().join("keys"),
            "K <k@example.org>",
            Algorithm::Ed25519,
        )
        .unwrap_err();
        assert!(matches!(e, OpenPgpError::Exists { .. }), "{e}");
        // Group-readable secret keys are refused.
        std::fs::set_permissions(&g.secret_key_path, std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let e = OpenPgpSecretKey::load(&g.secret_key_path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            OpenPgpSecretKey::generate("", Algorithm::Ed25519),
            Err(OpenPgpError::BadUserId(_))
        ));
        assert!(matches!(
            OpenPgpSecretKey::generate("x", Algorithm::Rsa(1024)),
            Err(OpenPgpError::BadRsaSize(1024))
        ));
        assert!(OpenPgpSecretKey::from_bytes(b"garbage", "test").is_err());
        assert!(verify_detached(b"", b"", b"").is_err());
        assert!(parse_keyring(b"\x99\x00").is_err());
    }
}
